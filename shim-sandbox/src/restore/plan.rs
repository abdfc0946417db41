//! What a restore tells CRIU besides the image, as runc's Restore does: the mounts that come
//! from outside the container, the namespaces it joins, the stdio it inherits and the cgroups
//! it lands in. Keys are the ones a dump by this shim (libcontainer) or by runc wrote.
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use libcontainer::oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};
use libshim::BackendError;
use rust_criu::rust_criu_protobuf::rpc;

use super::fail;

/// Where the host's cgroup v1 hierarchies are mounted (libcontainer's DEFAULT_CGROUP_ROOT).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Written next to the images by every dump: the init's fds 0-2 as readlink saw them.
const DESCRIPTORS: &str = "descriptors.json";

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

fn ext_mount(key: impl Into<String>, val: impl Into<String>) -> rpc::Ext_mount_map {
    let mut m = rpc::Ext_mount_map::new();
    m.set_key(key.into());
    m.set_val(val.into());
    m
}

/// `id:controllers:path` lines of /proc/<pid>/cgroup.
fn cgroup_lines(proc_cgroup: &str) -> impl Iterator<Item = (&str, &str)> {
    proc_cgroup.lines().filter_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        Some((ctrls, path))
    })
}

/// CRIU's cgroup roots: each controller's cgroup of `criu` (already moved into the
/// container's), so the dumped cgroups map onto the new container's whatever its id.
pub fn cgroup_roots(proc_cgroup: &str) -> Vec<rpc::Cgroup_root> {
    cgroup_lines(proc_cgroup)
        .flat_map(|(ctrls, path)| ctrls.split(',').map(move |c| (c, path)))
        .map(|(ctrl, path)| {
            let mut root = rpc::Cgroup_root::new();
            // The v2 line ("0::/path") names no controller: its root goes unset, which CRIU
            // takes as the root of every hierarchy not named (the v2 one, which it calls
            // "unified"). An empty name would match none, and CRIU would restore into the
            // dumped container's old v2 cgroup ("bad cgroup path: unified///<old>/...").
            if !ctrl.is_empty() {
                root.set_ctrl(ctrl.to_string());
            }
            root.set_path(path.to_string());
            root
        })
        .collect()
}

/// Mounts the container gets from the host: bind mounts (to their current source), the
/// cgroup v1 hierarchies (to the new container's cgroup in each), /dev/null behind masked
/// paths and device nodes (runc marks both external when it dumps).
pub fn external_mounts(
    spec: &Spec,
    proc_cgroup: &str,
) -> Result<Vec<rpc::Ext_mount_map>, BackendError> {
    let mut out = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination().to_string_lossy().into_owned();
        if is_bind(m) {
            let source = m.source().clone().unwrap_or_default();
            out.push(ext_mount(dest, source.to_string_lossy()));
        } else if m.typ().as_deref() == Some("cgroup") {
            out.extend(cgroup_v1_mounts(m, proc_cgroup)?);
        }
    }
    let linux = spec.linux().as_ref();
    if linux
        .and_then(|l| l.masked_paths().as_ref())
        .is_some_and(|p| !p.is_empty())
    {
        out.push(ext_mount("/dev/null", "/dev/null"));
    }
    for d in linux
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        let path = d.path().to_string_lossy().into_owned();
        out.push(ext_mount(path.clone(), path));
    }
    Ok(out)
}

/// On v1 a container's /sys/fs/cgroup is a bind of each hierarchy's container cgroup (what
/// libcontainer mounts at create and lists as external at dump).
fn cgroup_v1_mounts(m: &Mount, proc_cgroup: &str) -> Result<Vec<rpc::Ext_mount_map>, BackendError> {
    use libcgroups::common::CgroupSetup;
    let setup = libcgroups::common::get_cgroup_setup().map_err(|e| fail("cgroup setup", e))?;
    if matches!(setup, CgroupSetup::Unified) {
        return Ok(Vec::new());
    }
    let points = libcgroups::v1::util::list_subsystem_mount_points()
        .map_err(|e| fail("list the cgroup v1 mounts", e))?;
    let mut out = Vec::new();
    for mp in points.iter().filter(|p| p.starts_with(CGROUP_ROOT)) {
        let Some(name) = mp.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let cgroup = cgroup_lines(proc_cgroup)
            .find(|(ctrls, _)| *ctrls == name || ctrls.strip_prefix("name=") == Some(&name))
            .map_or("/", |(_, path)| path);
        let source = mp.join(cgroup.trim_start_matches('/'));
        // libcontainer keys them by the host's mount point, runc by the destination: the
        // same paths for the usual destination, /sys/fs/cgroup.
        let key = m.destination().join(&name);
        out.push(ext_mount(key.to_string_lossy(), source.to_string_lossy()));
    }
    Ok(out)
}

/// The namespaces the spec names by path (a CRI pod's network, a shared PID namespace), which
/// the dump recorded as external (`extRoot<Type>NS`): criu inherits them open.
pub fn external_namespaces(spec: &Spec) -> Result<Vec<(File, String)>, BackendError> {
    let mut out = Vec::new();
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    for ns in namespaces.into_iter().flatten() {
        let name = match ns.typ() {
            LinuxNamespaceType::Network => "net",
            LinuxNamespaceType::Pid => "pid",
            _ => continue,
        };
        if let Some(path) = ns.path() {
            let f = File::open(path).map_err(|e| {
                BackendError::io(format!("open the {name} namespace {}", path.display()), e)
            })?;
            out.push((f, rust_criu::criu_ns_to_key(name)));
        }
    }
    Ok(out)
}

/// The image's stdio that were pipes: CRIU connects them to criu's own 0-2 (the new fifos'
/// pipes), keyed by the `pipe:[inode]` the dump saw.
pub fn inherited_stdio(image: &Path) -> Result<Vec<rpc::Inherit_fd>, BackendError> {
    let path = image.join(DESCRIPTORS);
    let text = std::fs::read(&path)
        .map_err(|e| BackendError::io(format!("read {}", path.display()), e))?;
    let fds: Vec<String> = serde_json::from_slice(&text)
        .map_err(|e| BackendError::InvalidArgument(format!("{}: {e}", path.display())))?;
    Ok(fds
        .into_iter()
        .take(3)
        .enumerate()
        .filter(|(_, key)| key.contains("pipe:"))
        .map(|(fd, key)| {
            let mut i = rpc::Inherit_fd::new();
            i.set_key(key);
            i.set_fd(fd as i32);
            i
        })
        .collect())
}

/// Makes the mount points CRIU mounts on (runc's makeCriuRestoreMountpoints): a fresh rootfs
/// lacks those the first create made, except below a tmpfs, which the image refills.
pub fn make_mountpoints(spec: &Spec, rootfs: &Path) -> Result<(), BackendError> {
    let mounts: Vec<&Mount> = spec.mounts().iter().flatten().collect();
    let tmpfs: Vec<&PathBuf> = mounts
        .iter()
        .filter(|m| m.typ().as_deref() == Some("tmpfs"))
        .map(|m| m.destination())
        .collect();
    for m in mounts {
        let dest = m.destination();
        if tmpfs.iter().any(|t| dest.starts_with(t) && dest != *t) {
            continue;
        }
        let Some(target) = inside(rootfs, dest) else {
            continue;
        };
        if target.exists() {
            continue;
        }
        let file = is_bind(m) && m.source().as_ref().is_some_and(|s| s.is_file());
        let made = match (file, target.parent()) {
            (true, Some(parent)) => {
                std::fs::create_dir_all(parent).and_then(|_| File::create(&target).map(drop))
            }
            _ => std::fs::create_dir_all(&target),
        };
        made.map_err(|e| BackendError::io(format!("create mount point {}", target.display()), e))?;
    }
    Ok(())
}

/// `dest` under `rootfs`, when no existing component on the way is a symlink (one could lead
/// out of the rootfs; CRIU then reports the missing mount point itself).
fn inside(rootfs: &Path, dest: &Path) -> Option<PathBuf> {
    let mut path = rootfs.to_path_buf();
    for c in dest.components() {
        match c {
            Component::Normal(n) => path.push(n),
            Component::RootDir | Component::CurDir => continue,
            _ => return None,
        }
        if path
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            return None;
        }
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_roots_follow_each_controller() {
        let roots = cgroup_roots("5:cpu,cpuacct:/default/x\n1:name=systemd:/s\n0::/u\n");
        let pairs: Vec<(&str, &str)> = roots.iter().map(|r| (r.ctrl(), r.path())).collect();
        assert_eq!(
            pairs,
            [
                ("cpu", "/default/x"),
                ("cpuacct", "/default/x"),
                ("name=systemd", "/s"),
                ("", "/u")
            ]
        );
        // The v2 root is CRIU's default root, not a controller named "".
        assert!(!roots[3].has_ctrl(), "{:?}", roots[3]);
        assert!(roots[..3].iter().all(|r| r.has_ctrl()));
    }

    #[test]
    fn only_piped_stdio_is_inherited() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(DESCRIPTORS),
            r#"["/dev/null","pipe:[12]","pipe:[13]"]"#,
        )
        .unwrap();
        let fds = inherited_stdio(dir.path()).unwrap();
        let got: Vec<(i32, &str)> = fds.iter().map(|f| (f.fd(), f.key())).collect();
        assert_eq!(got, [(1, "pipe:[12]"), (2, "pipe:[13]")]);
        assert!(inherited_stdio(&dir.path().join("none")).is_err());
    }

    #[test]
    fn mount_points_never_follow_symlinks() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", root.path().join("out")).unwrap();
        assert!(inside(root.path(), Path::new("/out/etc")).is_none());
        assert_eq!(
            inside(root.path(), Path::new("/a/b")).unwrap(),
            root.path().join("a/b")
        );
        assert!(inside(root.path(), Path::new("/a/../b")).is_none());
    }
}
