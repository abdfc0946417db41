//! Deleting a stopped container, the common case (its init has exited), without a libcgroups
//! manager: building a v1 manager reads /proc/self/mountinfo and /proc/self/cgroup once per
//! controller, which was a third of the shim's CPU per container lifecycle on a cgroup v1 host.
//! The steps are libcontainer's own delete for that state: remove the cgroup (killing what is
//! left in it), run the poststop hooks, remove the state directory. The v1 hierarchies are
//! read from mountinfo once per shim. Anything else goes through libcontainer's delete.
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use libcgroups::common::{get_cgroup_setup, CgroupSetup};
use libcontainer::config::YoukiConfig;
use libcontainer::container::{Container, ContainerStatus};
use libshim::BackendError;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::call::failed;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The v1 controllers libcgroups manages; a hierarchy with none of them (name=systemd) holds
/// no directory of the container's.
const V1_CONTROLLERS: [&str; 12] = [
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

/// Deletes `c` if it is stopped and its cgroup is one this module can find on its own.
/// Returns false, having changed nothing, when libcontainer's delete should do it.
pub fn delete(c: &mut Container) -> Result<bool, BackendError> {
    c.refresh_status().map_err(failed("delete"))?;
    let simple = c.status() == ContainerStatus::Stopped
        && !c.systemd()
        && c.intel_rdt_dir().is_none()
        && c.intel_rdt_monitoring_dir().is_none();
    if !simple {
        return Ok(false);
    }
    if !c.root.exists() {
        return Ok(true);
    }
    let Ok(config) = YoukiConfig::load(&c.root) else {
        return Ok(false);
    };
    let Some(dirs) = cgroup_dirs(&config.cgroup_path) else {
        return Ok(false);
    };
    for dir in dirs.iter().filter(|d| d.exists()) {
        remove_cgroup(dir)?;
    }
    if let Some(hooks) = &config.hooks {
        libcontainer::hooks::run_hooks(hooks.poststop().as_ref(), Some(&c.state), None, None, None)
            .map_err(failed("delete (poststop hooks)"))?;
    }
    std::fs::remove_dir_all(&c.root)
        .map_err(|e| BackendError::io(format!("remove {}", c.root.display()), e))?;
    Ok(true)
}

/// The directories of the cgroup at `path` (absolute, as containerd gives it) on this host,
/// where libcgroups would have created them; None for a path or a host it does not handle.
fn cgroup_dirs(path: &Path) -> Option<Vec<PathBuf>> {
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    let rel = path.strip_prefix("/").ok().filter(|_| plain)?;
    match get_cgroup_setup().ok()? {
        CgroupSetup::Unified => Some(vec![Path::new(CGROUP_ROOT).join(rel)]),
        CgroupSetup::Legacy | CgroupSetup::Hybrid => {
            static HIERARCHIES: OnceLock<Vec<PathBuf>> = OnceLock::new();
            let roots = HIERARCHIES.get_or_init(|| {
                let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
                v1_hierarchies(&text)
            });
            (!roots.is_empty()).then(|| roots.iter().map(|r| r.join(rel)).collect())
        }
    }
}

/// Mount points of the v1 hierarchies holding a controller libcgroups manages.
fn v1_hierarchies(mountinfo: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for line in mountinfo.lines() {
        let Some((mount, fs)) = line.split_once(" - ") else {
            continue;
        };
        let mut fs = fs.split(' ');
        let (Some("cgroup"), Some(_source), Some(options)) = (fs.next(), fs.next(), fs.next())
        else {
            continue;
        };
        let managed = options.split(',').any(|o| V1_CONTROLLERS.contains(&o));
        if let (true, Some(point)) = (managed, mount.split(' ').nth(4)) {
            let point = PathBuf::from(unescape(point));
            if !out.contains(&point) {
                out.push(point);
            }
        }
    }
    out
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes.
fn unescape(s: &str) -> String {
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

/// Kills what is left in the cgroup at `dir` and removes it, retrying while the killed
/// processes exit (as libcgroups does: 10, 20, 60 ms apart).
fn remove_cgroup(dir: &Path) -> Result<(), BackendError> {
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() {
        let _ = std::fs::write(&kill_file, "1");
    } else {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let mut delay = Duration::from_millis(10);
    for attempt in 1..=4u32 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if attempt == 4 => {
                return Err(BackendError::io(
                    format!("remove cgroup {}", dir.display()),
                    e,
                ))
            }
            Err(_) => {
                std::thread::sleep(delay);
                delay = (delay * attempt).min(Duration::from_millis(100));
            }
        }
    }
    Ok(())
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
        assert_eq!(
            v1_hierarchies(mountinfo),
            [
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/memory",
                "/mnt/with space",
                "/sys/fs/cgroup/net_cls,net_prio",
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn leaves_relative_and_climbing_paths_to_libcontainer() {
        assert_eq!(cgroup_dirs(Path::new("relative/id")), None);
        assert_eq!(cgroup_dirs(Path::new("/ns/../../etc")), None);
    }
}
