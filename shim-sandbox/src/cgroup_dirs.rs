//! Where libcgroups puts a container's cgroup directories, found without building its manager:
//! a v1 manager reads /proc/self/mountinfo and /proc/self/cgroup once per controller (about a
//! millisecond each time on a v1 host). The v1 hierarchies are read from mountinfo once per
//! shim. Only absolute, plain paths (what containerd gives) on a non-systemd host are handled;
//! for anything else the callers go through libcgroups.
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use libcgroups::common::{get_cgroup_setup, CgroupSetup};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The v1 controllers libcgroups manages; a hierarchy with none of them (name=systemd) holds
/// no directory of the container's.
pub(crate) const V1_CONTROLLERS: [&str; 12] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// A mounted v1 hierarchy and the managed controllers it carries.
#[derive(Debug, PartialEq)]
struct Hierarchy {
    mount_point: PathBuf,
    controllers: Vec<String>,
}

/// Every directory of the cgroup at `path` on this host.
pub fn all(path: &Path) -> Option<Vec<PathBuf>> {
    let rel = relative(path)?;
    match get_cgroup_setup().ok()? {
        CgroupSetup::Unified => Some(vec![Path::new(CGROUP_ROOT).join(rel)]),
        CgroupSetup::Legacy | CgroupSetup::Hybrid => {
            let roots = v1_hierarchies();
            (!roots.is_empty()).then(|| roots.iter().map(|h| h.mount_point.join(rel)).collect())
        }
    }
}

/// The directory of the cgroup at `path` in the v1 hierarchy of `controller`; None on a
/// cgroup v2 host or where that controller is not mounted.
pub fn v1(path: &Path, controller: &str) -> Option<PathBuf> {
    let rel = relative(path)?;
    match get_cgroup_setup().ok()? {
        CgroupSetup::Unified => None,
        CgroupSetup::Legacy | CgroupSetup::Hybrid => v1_hierarchies()
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
            .map(|h| h.mount_point.join(rel)),
    }
}

/// `path` below the hierarchy roots, if it is absolute and does not climb (no `..`).
pub(crate) fn relative(path: &Path) -> Option<&Path> {
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    path.strip_prefix("/").ok().filter(|_| plain)
}

fn v1_hierarchies() -> &'static [Hierarchy] {
    static HIERARCHIES: OnceLock<Vec<Hierarchy>> = OnceLock::new();
    HIERARCHIES.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        parse_v1_hierarchies(&text)
    })
}

/// The v1 hierarchies holding a controller libcgroups manages, from mountinfo's text.
fn parse_v1_hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
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
        let controllers: Vec<String> = options
            .split(',')
            .filter(|o| V1_CONTROLLERS.contains(o))
            .map(String::from)
            .collect();
        let Some(point) = mount.split(' ').nth(4) else {
            continue;
        };
        let mount_point = PathBuf::from(unescape(point));
        if !controllers.is_empty() && !out.iter().any(|h| h.mount_point == mount_point) {
            out.push(Hierarchy {
                mount_point,
                controllers,
            });
        }
    }
    out
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes.
pub(crate) fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(b) => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_managed_v1_hierarchies() {
        let mountinfo = "\
24 1 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
25 24 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
26 24 0:24 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
27 24 0:25 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
28 24 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
29 24 0:26 / /mnt/with\\040space rw - cgroup cgroup rw,memory
30 24 0:27 / /sys/fs/cgroup/net_cls,net_prio rw shared:9 - cgroup cgroup rw,net_cls,net_prio
";
        let found = parse_v1_hierarchies(mountinfo);
        let points: Vec<&Path> = found.iter().map(|h| h.mount_point.as_path()).collect();
        assert_eq!(
            points,
            [
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/memory",
                "/mnt/with space",
                "/sys/fs/cgroup/net_cls,net_prio",
            ]
            .map(Path::new)
        );
        assert_eq!(found[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(found[3].controllers, ["net_cls", "net_prio"]);
    }

    #[test]
    fn leaves_relative_and_climbing_paths_to_libcgroups() {
        assert_eq!(all(Path::new("relative/id")), None);
        assert_eq!(all(Path::new("/ns/../../etc")), None);
        assert_eq!(v1(Path::new("/ns/../id"), "freezer"), None);
    }
}
