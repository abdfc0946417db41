//! The cause of a create that libcontainer failed without naming one.
//!
//! libcontainer's init sends its error to the shim as `e.to_string()`, which drops the error's
//! sources (`process/container_intermediate_process.rs`): a sysctl the kernel refuses arrives
//! as "failed to set sysctl", a missing one as "open subpath in procfs failed", any mount that
//! failed as "failed to prepare rootfs"; which sysctl or mount, and why, is lost
//! (docs/upstream/libcontainer-init-error-causes.md). After such a failure the shim redoes the
//! step's check itself, without effect on the container's or the host's namespaces, and names
//! what it finds; when it finds nothing, libcontainer's message stands.
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use libshim::BackendError;
use nix::sched::CloneFlags;
use serde_json::Value;

/// What libcontainer's message says when the sysctl step failed.
const SYSCTL_FAILED: [&str; 2] = ["failed to set sysctl", "open subpath in procfs failed"];
const ROOTFS_FAILED: &str = "failed to prepare rootfs";

/// The cause of a failed create, from libcontainer's `message` and the bundle's `spec`.
pub fn cause(spec: &Value, bundle: &Path, message: &str) -> Option<BackendError> {
    if SYSCTL_FAILED.iter().any(|m| message.contains(m)) {
        return sysctl(spec);
    }
    if message.contains(ROOTFS_FAILED) {
        return bind_mount(spec, bundle);
    }
    None
}

/// The namespace a sysctl lives in (those libcontainer's validator lets through).
fn namespace_of(key: &str) -> Option<(CloneFlags, &'static str)> {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if key.starts_with("net.") {
        Some((CloneFlags::CLONE_NEWNET, "net"))
    } else if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        Some((CloneFlags::CLONE_NEWIPC, "ipc"))
    } else if key == "kernel.domainname" || key == "kernel.hostname" {
        Some((CloneFlags::CLONE_NEWUTS, "uts"))
    } else {
        None
    }
}

/// The first of the spec's sysctls (in key order) the kernel refuses. Each is written in a new
/// namespace of its kind, which this thread enters for the write and leaves again: /proc/sys
/// shows the writing thread's namespaces, a new one checks names and values as the
/// container's does, and nothing the container or the host sees changes.
fn sysctl(spec: &Value) -> Option<BackendError> {
    let sysctls = spec.pointer("/linux/sysctl")?.as_object()?;
    let mut keys: Vec<&String> = sysctls.keys().collect();
    keys.sort();
    for key in keys {
        let value = sysctls[key].as_str().unwrap_or_default();
        let Some((kind, name)) = namespace_of(key) else {
            continue;
        };
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        if let Some(Err(e)) = write_in_new_namespace(kind, name, &path, value) {
            return Some(BackendError::InvalidArgument(format!(
                "create: sysctl {key}={value:?}: write {}: {e}",
                path.display()
            )));
        }
    }
    None
}

/// Writes `value` to `path` in a new namespace of `kind`; None if the namespace could not be
/// made (nothing learnt).
fn write_in_new_namespace(
    kind: CloneFlags,
    name: &str,
    path: &Path,
    value: &str,
) -> Option<std::io::Result<()>> {
    let own = std::fs::File::open(format!("/proc/thread-self/ns/{name}")).ok()?;
    nix::sched::unshare(kind).ok()?;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    if let Err(e) = nix::sched::setns(&own, kind) {
        // Cannot happen to root with an open namespace fd; the new namespace stays in use.
        log::error!("return to the shim's own {name} namespace after a sysctl check: {e}");
    }
    Some(written)
}

/// libcontainer's `is_bind`.
fn is_bind(m: &Value) -> bool {
    m["type"] == "bind"
        || m["options"]
            .as_array()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

/// The first bind mount whose source and destination in the image are not both directories
/// or both not: the kernel binds a directory on a directory and a file on a file only
/// (ENOTDIR). A destination at or below an earlier mount's is skipped: what is there then is
/// that mount's, not the image's.
fn bind_mount(spec: &Value, bundle: &Path) -> Option<BackendError> {
    let root = bundle.join(spec.pointer("/root/path")?.as_str()?);
    let mounts = spec["mounts"].as_array()?;
    for (i, m) in mounts.iter().enumerate() {
        let (Some(dest), Some(source)) = (m["destination"].as_str(), m["source"].as_str()) else {
            continue;
        };
        let covered = mounts[..i].iter().any(|earlier| {
            earlier["destination"]
                .as_str()
                .is_some_and(|e| Path::new(dest).starts_with(e))
        });
        if !is_bind(m) || covered {
            continue;
        }
        let Ok(source_meta) = std::fs::metadata(source) else {
            continue;
        };
        let Some(Ok(dest_meta)) = resolve_in(&root, dest).map(std::fs::metadata) else {
            continue;
        };
        let kind = |dir: bool| {
            if dir {
                "a directory"
            } else {
                "not a directory"
            }
        };
        if source_meta.is_dir() != dest_meta.is_dir() {
            return Some(BackendError::InvalidArgument(format!(
                "create: mount {dest}: its source {source} is {} and {dest} in the image is {}: \
                 a bind mount needs a directory on a directory or a file on a file (ENOTDIR)",
                kind(source_meta.is_dir()),
                kind(dest_meta.is_dir()),
            )));
        }
    }
    None
}

/// `path` resolved inside `root`, symlinks included, as the container will see it (an
/// absolute link target starts again at `root`, `..` stops there). None if a component is
/// missing or the links loop.
fn resolve_in(root: &Path, path: &str) -> Option<PathBuf> {
    let mut todo: Vec<PathBuf> = vec![PathBuf::from(path)];
    let mut at = PathBuf::new();
    let mut links = 0;
    while let Some(next) = todo.pop() {
        let mut parts = next.components();
        let Some(first) = parts.next() else {
            continue;
        };
        let rest = parts.as_path().to_path_buf();
        if !rest.as_os_str().is_empty() {
            todo.push(rest);
        }
        match first {
            Component::RootDir => at = PathBuf::new(),
            Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                at.pop();
            }
            Component::Normal(name) => {
                let candidate = at.join(name);
                let full = root.join(&candidate);
                let meta = std::fs::symlink_metadata(&full).ok()?;
                if meta.file_type().is_symlink() {
                    links += 1;
                    if links > 40 {
                        return None;
                    }
                    todo.push(std::fs::read_link(&full).ok()?);
                } else {
                    at = candidate;
                }
            }
        }
    }
    Some(root.join(at))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("srv/dir")).unwrap();
        std::os::unix::fs::symlink("/srv", r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../srv", r.join("srv/up")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert_eq!(resolve_in(r, "/abs/dir"), Some(r.join("srv/dir")));
        assert_eq!(resolve_in(r, "/srv/up/dir"), Some(r.join("srv/dir")));
        assert_eq!(resolve_in(r, "/srv/missing"), None);
        assert_eq!(resolve_in(r, "/loop"), None);
    }

    #[test]
    fn a_bind_of_a_file_on_an_image_directory_is_named() {
        let bundle = tempfile::tempdir().unwrap();
        let b = bundle.path();
        std::fs::create_dir_all(b.join("rootfs/srv/dir")).unwrap();
        std::fs::create_dir_all(b.join("rootfs/etc")).unwrap();
        std::fs::write(b.join("rootfs/etc/file"), "").unwrap();
        std::fs::write(b.join("file"), "").unwrap();
        std::fs::create_dir(b.join("dir")).unwrap();
        let spec = |mounts: Value| json!({"root": {"path": "rootfs"}, "mounts": mounts});
        let bind = |src: &str, dest: &str| {
            json!({"destination": dest, "type": "bind", "source": b.join(src),
                   "options": ["rbind"]})
        };
        let err = cause(
            &spec(json!([bind("dir", "/srv"), bind("file", "/srv/dir")])),
            b,
            "failed to prepare rootfs",
        );
        // Below an earlier mount: the image's /srv/dir is not what the mount would meet.
        assert!(err.is_none(), "{err:?}");
        let err = cause(
            &spec(json!([bind("file", "/srv/dir")])),
            b,
            "failed to prepare rootfs",
        )
        .expect("a cause")
        .to_string();
        assert!(
            err.contains("mount /srv/dir") && err.contains("ENOTDIR"),
            "{err}"
        );
        let err = cause(
            &spec(json!([bind("dir", "/etc/file")])),
            b,
            "failed to prepare rootfs",
        )
        .expect("a cause")
        .to_string();
        assert!(err.contains("/etc/file"), "{err}");
        // Kinds that match, or a destination the image lacks: no finding.
        let fine = spec(json!([bind("dir", "/srv/dir"), bind("file", "/new")]));
        assert!(cause(&fine, b, "failed to prepare rootfs").is_none());
    }

    #[test]
    fn a_sysctl_the_kernel_refuses_is_named_and_nothing_changes() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let net = || std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let before = net();
        let range = "/proc/sys/net/ipv4/ip_local_port_range";
        let host_range = std::fs::read_to_string(range).unwrap();
        let spec = |k: &str, v: &str| json!({"linux": {"sysctl": {k: v}}});
        let err = cause(
            &spec("net.ipv4.ip_local_port_range", "not numbers"),
            Path::new("/"),
            "failed to set sysctl",
        )
        .expect("a cause")
        .to_string();
        assert!(
            err.contains("net.ipv4.ip_local_port_range") && err.contains("Invalid argument"),
            "{err}"
        );
        let err = cause(
            &spec("net.ipv4.no_such_sysctl", "1"),
            Path::new("/"),
            "open subpath in procfs failed",
        )
        .expect("a cause")
        .to_string();
        assert!(err.contains("No such file"), "{err}");
        // A value the kernel takes is written in a namespace of its own, not here.
        let other = "40000 50000";
        assert!(cause(
            &spec("net.ipv4.ip_local_port_range", other),
            Path::new("/"),
            "failed to set sysctl"
        )
        .is_none());
        assert_eq!(std::fs::read_to_string(range).unwrap(), host_range);
        assert_eq!(net(), before);
    }
}
