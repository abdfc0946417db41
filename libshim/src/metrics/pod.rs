//! A pod's cgroup, from CRI's `cgroup_parent`: kubelet names it in cgroupfs form
//! (`/kubepods/burstable/pod<uid>`) or, with the systemd driver, as a slice
//! (`kubepods-burstable-pod<uid>.slice`), which lives at the path systemd derives from its name.
use std::path::Path;

use super::{is_unified, Cgroup, CGROUP_ROOT};

impl Cgroup {
    /// The cgroup at `parent` (either form), if it exists in some hierarchy.
    pub fn of_pod(parent: &str) -> Option<Self> {
        let rel = cgroupfs_path(parent)?;
        let root = Path::new(CGROUP_ROOT);
        // This process's own cgroup lines name the hierarchies; the pod's path replaces its own.
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let text: String = own
            .lines()
            .filter_map(|l| {
                l.rsplit_once(':')
                    .map(|(head, _)| format!("{head}:{rel}\n"))
            })
            .collect();
        let cgroup = Cgroup::parse(&text, root, is_unified(root));
        let exists = match &cgroup {
            Cgroup::V1(dirs) => dirs.values().any(|d| d.is_dir()),
            Cgroup::V2(dir) => dir.is_dir(),
        };
        exists.then_some(cgroup)
    }
}

/// The cgroupfs path of a cgroupfs or systemd-slice parent; `None` if empty.
pub fn cgroupfs_path(parent: &str) -> Option<String> {
    if parent.is_empty() {
        return None;
    }
    let Some(name) = parent
        .strip_suffix(".slice")
        .filter(|_| !parent.contains('/'))
    else {
        return Some(format!("/{}", parent.trim_start_matches('/')));
    };
    // systemd: "a-b-c.slice" lives at /a.slice/a-b.slice/a-b-c.slice.
    let mut path = String::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push_str(&format!("/{prefix}.slice"));
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_of_a_pod_cgroup() {
        assert_eq!(
            cgroupfs_path("/kubepods/pod1").as_deref(),
            Some("/kubepods/pod1")
        );
        assert_eq!(
            cgroupfs_path("kubepods-burstable-pod1.slice").as_deref(),
            Some("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice")
        );
        assert_eq!(cgroupfs_path(""), None);
    }

    #[test]
    fn this_process_cgroup_parent_is_found() {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = own
            .lines()
            .last()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .1
            .to_string();
        assert!(Cgroup::of_pod(&path).is_some(), "{path}");
        assert!(Cgroup::of_pod("/no-such-pod-cgroup-here").is_none());
    }
}
