//! The spec's cgroup mount of a container that joins another's PID namespace, on cgroup v1.
//!
//! libcontainer 0.7 mounts cgroup v1 in the container's init, after it has entered the
//! container's PID namespace, and looks up "the runtime's root cgroups" as
//! `/proc/<getppid() or, when that is 0, getpid()>` in the shim's /proc
//! (`rootfs/mount.rs`, `mount_cgroup_v1`). A joining init's parent is outside the namespace, so
//! it uses its own pid as numbered in the joined namespace, which means nothing in the shim's
//! /proc: in the host's PID namespace it reads some unrelated process (pid 2, kthreadd, in a
//! pod) and works by accident; with containerd in a PID namespace of its own (kind, k3d) there is
//! often no such process and create fails with "failed to prepare rootfs"
//! (docs/upstream/libcontainer-pid-namespace-cgroup-mount.md).
//!
//! For such a container the shim writes the mount as what libcontainer would have made of it,
//! resolved here, where the pids are the shim's own: a tmpfs at the destination and, for each v1
//! hierarchy under /sys/fs/cgroup, a bind of the container's directory in it (the cgroups path
//! for hierarchies libcgroups manages, the shim's own cgroup, which the init inherits, for the
//! others such as name=systemd). A co-mounted hierarchy (`cpu,cpuacct`) is bound under each of
//! its names as well, where libcontainer makes symlinks. The binds are read-only when the spec's
//! mount is (libcontainer's own emulation leaves them writable). Other containers, and cgroup v2,
//! stay with libcontainer.
use std::path::{Path, PathBuf};

use libcgroups::common::{get_cgroup_setup, CgroupSetup};
use libshim::BackendError;
use serde_json::{json, Value};

use crate::cgroup_dirs;

/// libcontainer's filter of the host's v1 mounts (`DEFAULT_CGROUP_ROOT`).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A v1 hierarchy as the shim sees it.
#[derive(Debug, PartialEq)]
struct Hierarchy {
    mount_point: PathBuf,
    /// The cgroup the mount shows at its mount point (mountinfo's root).
    root: PathBuf,
    /// The super options: controllers, `name=...`, flags.
    options: Vec<String>,
}

/// Rewrites the spec's cgroup mount if the container joins a PID namespace by path on cgroup
/// v1; returns whether it changed anything.
pub fn rewrite(spec: &mut Value) -> Result<bool, BackendError> {
    if !joins_a_pid_namespace(spec) || !has_cgroup_mount(spec) {
        return Ok(false);
    }
    match get_cgroup_setup() {
        Ok(CgroupSetup::Legacy | CgroupSetup::Hybrid) => {}
        _ => return Ok(false),
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| BackendError::io("create: read /proc/self/mountinfo", e))?;
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| BackendError::io("create: read /proc/self/cgroup", e))?;
    rewrite_with(spec, &hierarchies(&mountinfo), &own)
}

fn joins_a_pid_namespace(spec: &Value) -> bool {
    spec.pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n["type"] == "pid" && n["path"].as_str().is_some_and(|p| !p.is_empty()))
        })
}

fn has_cgroup_mount(spec: &Value) -> bool {
    spec["mounts"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["type"] == "cgroup"))
}

fn rewrite_with(
    spec: &mut Value,
    hierarchies: &[Hierarchy],
    own: &str,
) -> Result<bool, BackendError> {
    let cgroups_path = spec
        .pointer("/linux/cgroupsPath")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(managed_rel) = cgroup_dirs::relative(Path::new(&cgroups_path)) else {
        // A systemd or relative cgroups path: where libcgroups puts it is libcgroups' to say.
        return Ok(false);
    };
    let Some(mounts) = spec["mounts"].as_array() else {
        return Ok(false);
    };
    let mut out = Vec::with_capacity(mounts.len() + hierarchies.len() * 2);
    for m in mounts {
        if m["type"] != "cgroup" {
            out.push(m.clone());
            continue;
        }
        let Some(dest) = m["destination"].as_str() else {
            return Err(BackendError::InvalidArgument(
                "create: a cgroup mount without a destination".into(),
            ));
        };
        let opts: Vec<&str> = m["options"]
            .as_array()
            .map(|o| o.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let ro = opts.iter().rev().find(|o| **o == "ro" || **o == "rw") == Some(&"ro");
        out.push(json!({
            "destination": dest,
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["noexec", "nosuid", "nodev", "mode=755"],
        }));
        let mut bind_opts = vec!["rbind", "nosuid", "noexec", "nodev"];
        bind_opts.push(if ro { "ro" } else { "rw" });
        for h in hierarchies {
            let Some(name) = h.mount_point.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let managed = h
                .options
                .iter()
                .any(|o| cgroup_dirs::V1_CONTROLLERS.contains(&o.as_str()));
            let source = if managed {
                h.mount_point.join(managed_rel)
            } else {
                match own_cgroup(own, h) {
                    Some(rel) => h.mount_point.join(rel),
                    None => continue,
                }
            };
            let mut names = vec![name];
            if name.contains(',') {
                names.extend(name.split(','));
            }
            for n in names {
                out.push(json!({
                    "destination": Path::new(dest).join(n),
                    "type": "bind",
                    "source": source,
                    "options": bind_opts,
                }));
            }
        }
    }
    spec["mounts"] = Value::Array(out);
    Ok(true)
}

/// The shim's cgroup in hierarchy `h`, relative to what its mount shows.
fn own_cgroup(own: &str, h: &Hierarchy) -> Option<PathBuf> {
    own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.is_empty()
            || !controllers
                .split(',')
                .all(|c| h.options.iter().any(|o| o == c))
        {
            return None;
        }
        let rel = Path::new(path).strip_prefix(&h.root).ok()?;
        cgroup_dirs::relative(&Path::new("/").join(rel)).map(Path::to_path_buf)
    })
}

/// The v1 hierarchies mounted under /sys/fs/cgroup, from mountinfo's text.
fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        let Some((mount, fs)) = line.split_once(" - ") else {
            continue;
        };
        let mut fs = fs.split(' ');
        let (Some("cgroup"), Some(_source), Some(options)) = (fs.next(), fs.next(), fs.next())
        else {
            continue;
        };
        let mut fields = mount.split(' ');
        let (Some(root), Some(point)) = (fields.nth(3), fields.next()) else {
            continue;
        };
        let mount_point = PathBuf::from(cgroup_dirs::unescape(point));
        if !mount_point.starts_with(CGROUP_ROOT) || out.iter().any(|h| h.mount_point == mount_point)
        {
            continue;
        }
        out.push(Hierarchy {
            mount_point,
            root: PathBuf::from(cgroup_dirs::unescape(root)),
            options: options.split(',').map(String::from).collect(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
24 1 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
25 24 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
26 24 0:24 /kind /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
27 24 0:25 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
28 24 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
29 24 0:26 / /mnt/memory rw - cgroup cgroup rw,memory
";
    const OWN: &str = "\
12:memory:/shim
3:cpu,cpuacct:/shim
1:name=systemd:/kind/system.slice/containerd.service
0::/
";

    fn spec(pid: Value) -> Value {
        json!({
            "linux": {
                "cgroupsPath": "/k8s.io/b",
                "namespaces": [pid, {"type": "mount"}],
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": ["ro", "nosuid", "noexec", "nodev"]},
                {"destination": "/etc/hosts", "type": "bind", "source": "/x/hosts"},
            ],
        })
    }

    fn mounts(spec: &Value) -> Vec<(String, String, String)> {
        spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["destination"].as_str().unwrap().to_string(),
                    m["type"].as_str().unwrap().to_string(),
                    m["source"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn a_joining_container_gets_binds_of_its_own_cgroups() {
        let mut s = spec(json!({"type": "pid", "path": "/proc/42/ns/pid"}));
        assert!(joins_a_pid_namespace(&s) && has_cgroup_mount(&s));
        assert!(rewrite_with(&mut s, &hierarchies(MOUNTINFO), OWN).unwrap());
        let t = |d: &str, ty: &str, s: &str| (d.to_string(), ty.to_string(), s.to_string());
        assert_eq!(
            mounts(&s),
            [
                t("/proc", "proc", "proc"),
                t("/sys/fs/cgroup", "tmpfs", "tmpfs"),
                t(
                    "/sys/fs/cgroup/systemd",
                    "bind",
                    "/sys/fs/cgroup/systemd/system.slice/containerd.service"
                ),
                t(
                    "/sys/fs/cgroup/cpu,cpuacct",
                    "bind",
                    "/sys/fs/cgroup/cpu,cpuacct/k8s.io/b"
                ),
                t(
                    "/sys/fs/cgroup/cpu",
                    "bind",
                    "/sys/fs/cgroup/cpu,cpuacct/k8s.io/b"
                ),
                t(
                    "/sys/fs/cgroup/cpuacct",
                    "bind",
                    "/sys/fs/cgroup/cpu,cpuacct/k8s.io/b"
                ),
                t(
                    "/sys/fs/cgroup/memory",
                    "bind",
                    "/sys/fs/cgroup/memory/k8s.io/b"
                ),
                t("/etc/hosts", "bind", "/x/hosts"),
            ]
        );
        assert_eq!(
            s["mounts"][3]["options"],
            json!(["rbind", "nosuid", "noexec", "nodev", "ro"])
        );
    }

    #[test]
    fn other_containers_stay_with_libcontainer() {
        assert!(!joins_a_pid_namespace(&spec(json!({"type": "pid"}))));
        assert!(!joins_a_pid_namespace(&spec(
            json!({"type": "pid", "path": ""})
        )));
        assert!(!joins_a_pid_namespace(&spec(
            json!({"type": "ipc", "path": "/proc/1/ns/ipc"})
        )));
        let mut systemd = spec(json!({"type": "pid", "path": "/proc/42/ns/pid"}));
        systemd["linux"]["cgroupsPath"] = json!("system.slice:cri:b");
        let before = systemd.clone();
        assert!(!rewrite_with(&mut systemd, &hierarchies(MOUNTINFO), OWN).unwrap());
        assert_eq!(systemd, before);
    }
}
