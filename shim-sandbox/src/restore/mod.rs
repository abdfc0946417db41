//! Restore from a CRIU image, which libcontainer 0.7 lacks (docs/upstream/
//! libcontainer-restore.md): runc's steps, through CRIU's RPC, ending with the state
//! libcontainer itself would have written, so every other call treats the container as one
//! it created.
//!
//! Steps, each undone if a later one fails (a failed restore leaves no process, mount,
//! cgroup or state directory): the state directory; the rootfs bound on `criu-root` there
//! (CRIU's root must be a mount point with a parent not overmounted); `criu swrk`, moved into
//! the container's cgroup with the spec's limits before it forks the restored tree
//! (runc's criuApplyCgroups); the restore, running the prestart and createRuntime hooks once
//! CRIU has made the namespaces; libcontainer's state.
use std::fmt::Display;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcgroups::common::{AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt};
use libcontainer::config::YoukiConfig;
use libcontainer::container::{Container, ContainerStatus, State};
use libcontainer::oci_spec::runtime::Spec;
use libshim::backend::ProcessIo;
use libshim::{BackendError, CheckpointRequest, ContainerInfo};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use rust_criu::rust_criu_protobuf::rpc;

use crate::call::{dev_null, failed, state_root, RUNTIME};

mod plan;
mod swrk;

/// CRIU's log, in the work directory; libshim keeps it as the bundle's criu-restore.log.
const LOG_FILE: &str = "restore.log";

/// A restore error naming its step.
pub(crate) fn fail(step: &str, cause: impl Display) -> BackendError {
    BackendError::Runtime {
        runtime: RUNTIME.to_string(),
        action: "restore",
        message: format!("{step}: {cause}"),
    }
}

/// What a restore made so far; dropped before [`Undo::done`], it takes it all back.
struct Undo {
    state_dir: PathBuf,
    root: Option<PathBuf>,
    cgroup: Option<AnyCgroupManager>,
    pid: Option<i32>,
    done: bool,
}

impl Undo {
    fn done(mut self) {
        self.done = true;
    }

    fn unmount_root(&mut self) {
        if let Some(root) = self.root.take() {
            let _ = umount2(&root, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&root);
        }
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        self.unmount_root();
        if self.done {
            return;
        }
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // libcgroups retries while killed tasks leave the cgroup.
        if let Some(m) = self.cgroup.take() {
            if let Err(e) = m.remove() {
                log::warn!("restore: remove the container's cgroup: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// criu's stdio (the restored process inherits the image's piped ones from them) and the
/// console socket a terminal's new master goes to.
fn stdio_of(io: ProcessIo) -> Result<([OwnedFd; 3], Option<PathBuf>), BackendError> {
    Ok(match io {
        ProcessIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => (
            [
                stdin.map_or_else(dev_null, Ok)?,
                stdout.map_or_else(dev_null, Ok)?,
                stderr.map_or_else(dev_null, Ok)?,
            ],
            None,
        ),
        ProcessIo::Terminal { console_socket } => (
            [dev_null()?, dev_null()?, dev_null()?],
            Some(console_socket),
        ),
    })
}

fn dir_fd(path: &Path, what: &str) -> Result<std::fs::File, BackendError> {
    std::fs::File::open(path)
        .map_err(|e| BackendError::io(format!("open {what} {}", path.display()), e))
}

/// Restores `info`'s container from `request.image_path`; returns the restored init's pid
/// (a child of the shim, as CRIU restores it as criu's sibling).
pub fn restore(
    info: &ContainerInfo,
    io: ProcessIo,
    request: &CheckpointRequest,
) -> Result<u32, BackendError> {
    if request.parent.is_some() {
        return Err(BackendError::NotImplemented(
            "restore of an incremental checkpoint (a parent image)",
        ));
    }
    let spec_path = info.bundle.join("config.json");
    let spec = Spec::load(&spec_path).map_err(|e| {
        BackendError::InvalidArgument(format!("restore: load {}: {e}", spec_path.display()))
    })?;
    let config = YoukiConfig::from_spec(&spec, &info.id).map_err(failed("restore"))?;
    let root_path = spec.root().as_ref().map(|r| r.path().clone());
    let rootfs = info
        .bundle
        .join(root_path.unwrap_or_else(|| "rootfs".into()));
    let rootfs = rootfs
        .canonicalize()
        .map_err(|e| BackendError::io(format!("restore: rootfs {}", rootfs.display()), e))?;
    let images = dir_fd(&request.image_path, "the checkpoint")?;
    let work = dir_fd(&request.work_path, "CRIU's work directory")?;
    let inherit_stdio = plan::inherited_stdio(&request.image_path)?;
    let namespaces = plan::external_namespaces(&spec)?;
    let (stdio, console) = stdio_of(io)?;

    let state_dir = state_root(&info.options, &info.namespace).join(&info.id);
    if state_dir.exists() {
        return Err(BackendError::InvalidArgument(format!(
            "restore: container {:?} already exists in {}",
            info.id,
            state_dir.display()
        )));
    }
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| BackendError::io(format!("create {}", state_dir.display()), e))?;
    let mut undo = Undo {
        state_dir: state_dir.clone(),
        root: None,
        cgroup: None,
        pid: None,
        done: false,
    };
    let criu_root = state_dir.join("criu-root");
    std::fs::create_dir(&criu_root)
        .map_err(|e| BackendError::io(format!("create {}", criu_root.display()), e))?;
    mount(
        Some(&rootfs),
        &criu_root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| fail(&format!("bind the rootfs on {}", criu_root.display()), e))?;
    undo.root = Some(criu_root.clone());
    plan::make_mountpoints(&spec, &rootfs)?;

    let ns_fds: Vec<OwnedFd> = namespaces
        .iter()
        .map(|(f, _)| f.try_clone().map(OwnedFd::from))
        .collect::<Result<_, _>>()
        .map_err(|e| BackendError::io("duplicate a namespace descriptor", e))?;
    let swrk = swrk::spawn(stdio, &ns_fds.iter().collect::<Vec<_>>())?;
    let criu_pid = swrk.pid();
    let mut opts = rpc::Criu_opts::new();
    let prepared = (|| {
        let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path: config.cgroup_path.clone(),
            systemd_cgroup: info.options.systemd_cgroup,
            container_name: info.id.clone(),
        })
        .map_err(|e| fail("the container's cgroup", e))?;
        let placed = manager.add_task(nix_cgroups::unistd::Pid::from_raw(criu_pid as i32));
        undo.cgroup = Some(manager);
        placed.map_err(|e| {
            fail(
                &format!("move criu into {}", config.cgroup_path.display()),
                e,
            )
        })?;
        if let Some(resources) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
            let limits = ControllerOpt {
                resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            };
            let applied = undo.cgroup.as_ref().map(|m| m.apply(&limits));
            if let Some(Err(e)) = applied {
                return Err(fail("apply the spec's cgroup limits", e));
            }
        }
        let proc_cgroup = std::fs::read_to_string(format!("/proc/{criu_pid}/cgroup"))
            .map_err(|e| BackendError::io(format!("read /proc/{criu_pid}/cgroup"), e))?;
        opts.cg_root = plan::cgroup_roots(&proc_cgroup);
        opts.ext_mnt = plan::external_mounts(&spec, &proc_cgroup)?;
        Ok(())
    })();
    if let Err(e) = prepared {
        swrk.abort();
        return Err(e);
    }
    opts.set_images_dir_fd(images.as_raw_fd());
    opts.set_work_dir_fd(work.as_raw_fd());
    opts.set_log_level(4);
    opts.set_log_file(LOG_FILE.into());
    opts.set_root(criu_root.to_string_lossy().into_owned());
    opts.set_rst_sibling(true);
    opts.set_evasive_devices(true);
    opts.set_manage_cgroups(true);
    // CRIU already runs in the container's cgroups (made, limited and joined above), and the
    // restored tasks stay where CRIU is. Unless containerd asks for a mode, CRIU is told to
    // leave cgroups alone: on a hybrid host it otherwise recreates the dumped container's v2
    // cgroup by its old path, which fails once that container is gone ("bad cgroup path:
    // unified///<old>/cgroup.subtree_control").
    opts.set_manage_cgroups_mode(
        cgroup_mode(&request.cgroups_mode).unwrap_or(rpc::Criu_cg_mode::IGNORE),
    );
    opts.set_notify_scripts(true);
    opts.set_orphan_pts_master(true);
    opts.set_shell_job(request.terminal);
    opts.set_ext_unix_sk(request.external_unix_sockets);
    opts.set_tcp_established(request.open_tcp);
    opts.set_file_locks(request.file_locks);
    opts.inherit_fd = inherit_stdio;
    for ((_, key), fd) in namespaces.iter().zip(&ns_fds) {
        let mut i = rpc::Inherit_fd::new();
        i.set_key(key.clone());
        i.set_fd(fd.as_raw_fd());
        opts.inherit_fd.push(i);
    }
    let mut hooks = |pid| run_hooks(info, &spec, &state_dir, pid);
    let restored = swrk.restore(opts, console.as_deref(), &mut hooks)?;
    undo.pid = Some(restored.pid);
    undo.unmount_root();
    save_state(info, &spec, &config, &state_dir, restored.pid)?;
    undo.done();
    Ok(restored.pid as u32)
}

/// The prestart and createRuntime hooks, run as runc runs them on a restore: once the
/// namespaces exist, with the restored init's pid in the state.
fn run_hooks(info: &ContainerInfo, spec: &Spec, dir: &Path, pid: i32) -> Result<(), BackendError> {
    let Some(hooks) = spec.hooks().as_ref() else {
        return Ok(());
    };
    let state = State::new(
        &info.id,
        ContainerStatus::Creating,
        Some(pid),
        info.bundle.clone(),
    );
    for (name, list) in [
        ("prestart", hooks.prestart()),
        ("createRuntime", hooks.create_runtime()),
    ] {
        libcontainer::hooks::run_hooks(
            list.as_ref(),
            Some(&state),
            Some(dir),
            Some(nix_cgroups::unistd::Pid::from_raw(pid)),
            None,
        )
        .map_err(|e| fail(&format!("{name} hook"), libshim::error_chain(&e)))?;
    }
    Ok(())
}

fn cgroup_mode(mode: &str) -> Option<rpc::Criu_cg_mode> {
    Some(match mode {
        "soft" => rpc::Criu_cg_mode::SOFT,
        "full" => rpc::Criu_cg_mode::FULL,
        "strict" => rpc::Criu_cg_mode::STRICT,
        "ignore" => rpc::Criu_cg_mode::IGNORE,
        _ => return None,
    })
}

/// The state libcontainer's create and start would have left: state.json (running, with the
/// restored pid) and youki_config.json (hooks, cgroup path).
fn save_state(
    info: &ContainerInfo,
    spec: &Spec,
    config: &YoukiConfig,
    dir: &Path,
    pid: i32,
) -> Result<(), BackendError> {
    config
        .save(dir)
        .map_err(failed("restore (save the config)"))?;
    let mut c = Container::new(
        &info.id,
        ContainerStatus::Created,
        Some(pid),
        &info.bundle,
        dir,
    )
    .map_err(failed("restore (the state)"))?;
    c.set_status(ContainerStatus::Created) // stamps the creation time
        .set_status(ContainerStatus::Running)
        .set_systemd(info.options.systemd_cgroup)
        .set_creator(nix::unistd::geteuid().as_raw())
        .set_annotations(spec.annotations().clone());
    c.save().map_err(failed("restore (save the state)"))
}
