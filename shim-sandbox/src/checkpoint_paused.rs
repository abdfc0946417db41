//! Checkpoint of a paused container. libcontainer's `checkpoint` refuses any status but
//! running, and never tells CRIU the container's freezer cgroup; CRIU can only seize frozen
//! tasks through that cgroup (ptrace alone waits forever on a task in the refrigerator). So,
//! as runc does, the dump is driven here with `freeze_cgroup` set: CRIU finds the cgroup
//! already frozen, seizes the tasks, and leaves it frozen after a leave-running dump. The rest
//! mirrors libcontainer 0.7's `container_checkpoint.rs` (same images, restorable by runc).
use std::fs::{DirBuilder, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use libcontainer::container::{CheckpointOptions, Container, ContainerStatus};
use libcontainer::oci_spec::runtime::{LinuxNamespaceType, Spec};
use libcontainer::rootfs::utils::is_bind;
use libshim::{BackendError, CheckpointRequest};

use crate::call::{failed, guarded, RUNTIME};
use crate::{cgroup_dirs, freezer};

fn refused(message: String) -> BackendError {
    BackendError::Runtime {
        runtime: RUNTIME.to_string(),
        action: "checkpoint",
        message,
    }
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> BackendError {
    let context = format!("checkpoint: {what} {}", path.display());
    move |e| BackendError::io(context, e)
}

/// Dumps paused `c`; false, having done nothing, when `c` is not paused.
pub fn dump(c: &mut Container, request: &CheckpointRequest) -> Result<bool, BackendError> {
    c.refresh_status().map_err(failed("checkpoint"))?;
    if c.status() != ContainerStatus::Paused {
        return Ok(false);
    }
    if request.parent.is_some() {
        return Err(BackendError::NotImplemented(
            "incremental checkpoint (a parent image)",
        ));
    }
    let opts = crate::checkpoint::options(request);
    let freezer = freezer_dir(c)?;
    guarded(|| criu_dump(c, &opts, &freezer))?;
    if !opts.leave_running {
        // As libcontainer after an exit dump: CRIU killed the tasks; the state goes.
        c.set_status(ContainerStatus::Stopped)
            .save()
            .map_err(failed("checkpoint"))?;
        guarded(|| c.delete(true)).map_err(failed("checkpoint"))?;
    }
    Ok(true)
}

/// The frozen cgroup CRIU is to seize the tasks through: v1's freezer, or the v2 cgroup.
fn freezer_dir(c: &Container) -> Result<PathBuf, BackendError> {
    if let Some(dir) = freezer::v1_dir(c) {
        return Ok(dir);
    }
    let path = c.spec().map_err(failed("checkpoint"))?.cgroup_path;
    match cgroup_dirs::all(&path) {
        Some(dirs) if dirs.len() == 1 && !c.systemd() => Ok(dirs[0].clone()),
        _ => Err(refused(format!(
            "cannot checkpoint paused container {}: its frozen cgroup {} is not a plain v1 \
             freezer or v2 directory this shim can hand to CRIU",
            c.id(),
            path.display()
        ))),
    }
}

fn criu_dump(c: &Container, opts: &CheckpointOptions, freezer: &Path) -> Result<(), BackendError> {
    let spec_path = c.bundle().join("config.json");
    let spec = Spec::load(&spec_path).map_err(failed("checkpoint"))?;
    let mut criu = rust_criu::Criu::new()
        .map_err(|e| refused(format!("cannot run criu (criu swrk from PATH): {e}")))?;
    // Bind mounts come from outside the container; restore finds them in config.json again.
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination().to_string_lossy().into_owned();
        if is_bind(m) {
            criu.set_external_mount(dest.clone(), dest);
        } else if m.typ().as_deref() == Some("cgroup") {
            for mp in libcgroups::v1::util::list_subsystem_mount_points().unwrap_or_default() {
                if mp.starts_with("/sys/fs/cgroup") {
                    let mp = mp.to_string_lossy().into_owned();
                    criu.set_external_mount(mp.clone(), mp);
                }
            }
        }
    }
    mkdir(&opts.image_path)?;
    let images = File::open(&opts.image_path).map_err(io("open", &opts.image_path))?;
    criu.set_images_dir_fd(images.as_raw_fd());
    // Kept open until the dump is done: CRIU gets the descriptor.
    let _work = match &opts.work_path {
        Some(wp) => {
            mkdir(wp)?;
            let work = File::open(wp).map_err(io("open", wp))?;
            criu.set_work_dir_fd(work.as_raw_fd());
            Some(work)
        }
        None => None,
    };
    let pid = c
        .pid()
        .ok_or_else(|| refused(format!("container {} has no init pid in its state", c.id())))?
        .as_raw();
    write_descriptors(pid, &opts.image_path)?;
    criu.set_log_file("dump.log".to_string());
    criu.set_log_level(4);
    criu.set_pid(pid);
    criu.set_leave_running(opts.leave_running);
    criu.set_ext_unix_sk(opts.ext_unix_sk);
    criu.set_shell_job(opts.shell_job);
    criu.set_tcp_established(opts.tcp_established);
    criu.set_file_locks(opts.file_locks);
    criu.set_orphan_pts_master(true);
    criu.set_manage_cgroups(true);
    criu.set_root(c.bundle().to_string_lossy().into_owned());
    criu.cgroups_mode(opts.manage_cgroups_mode.clone());
    criu.set_link_remap(opts.link_remap);
    criu.set_freeze_cgroup(freezer.to_string_lossy().into_owned());
    for ns in [LinuxNamespaceType::Network, LinuxNamespaceType::Pid] {
        external_namespace(&mut criu, &spec, ns)?;
    }
    criu.dump().map_err(|e| {
        refused(format!(
            "criu dump of paused container {} (frozen cgroup {}) failed: {e}",
            c.id(),
            freezer.display()
        ))
    })
}

fn mkdir(dir: &Path) -> Result<(), BackendError> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io("create", dir)(e)),
        _ => Ok(()),
    }
}

/// descriptors.json: what the init's stdio was, which a restore reopens (runc's format).
fn write_descriptors(pid: i32, images: &Path) -> Result<(), BackendError> {
    let fds: Vec<String> = (0..3)
        .map(|n| {
            std::fs::read_link(format!("/proc/{pid}/fd/{n}"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "/dev/null".to_string())
        })
        .collect();
    let path = images.join("descriptors.json");
    let json = serde_json::to_vec(&fds).unwrap_or_default();
    std::fs::write(&path, json).map_err(io("write", &path))
}

/// A namespace the container joined by path (a pod's network) is external to CRIU: it stores
/// a reference, and a restore passes the namespace in (runc's key names).
fn external_namespace(
    criu: &mut rust_criu::Criu,
    spec: &Spec,
    ns: LinuxNamespaceType,
) -> Result<(), BackendError> {
    let path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|all| all.iter().find(|n| n.typ() == ns))
        .and_then(|n| n.path().clone());
    let Some(path) = path else { return Ok(()) };
    let name = match ns {
        LinuxNamespaceType::Network => "net",
        _ => "pid",
    };
    let st = nix::sys::stat::stat(&path)
        .map_err(|e| io("stat namespace", &path)(std::io::Error::from(e)))?;
    let key = rust_criu::criu_ns_to_key(name);
    criu.add_external(format!("{name}[{}]:{key}", st.st_ino));
    Ok(())
}
