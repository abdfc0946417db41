//! A container's cgroup: where it is, its statistics in containerd's metrics types, and its
//! OOM-kill counter. Works on cgroup v1 (and hybrid hosts) and on pure cgroup v2.
/// Copies entries of "key value" lines into u64 fields: `field` from the key of the same name,
/// `field = "key"` where the kernel's name differs. Written out rather than by reflection, which
/// would make rust-protobuf build descriptors (heap) in every shim that serves Stats.
macro_rules! copy_fields {
    ($msg:expr, $kv:expr; $($field:ident $(= $key:literal)?),* $(,)?) => {
        $( $msg.$field = $kv[copy_fields!(@key $field $(, $key)?)]; )*
    };
    (@key $field:ident) => { stringify!($field) };
    (@key $field:ident, $key:literal) => { $key };
}

mod leftover;
mod oom;
mod pod;
mod v1;
mod v2;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use protobuf::well_known_types::any::Any;
use protobuf::Message;

pub use oom::OomWatcher;

use crate::error::{Error, Result};

/// The containerd typeurl names of the two metrics types.
pub const V1_METRICS_TYPE: &str = "io.containerd.cgroups.v1.Metrics";
pub const V2_METRICS_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A process's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroup {
    /// Controller name (e.g. "memory", "cpuacct") to that controller's directory.
    V1(HashMap<String, PathBuf>),
    V2(PathBuf),
}

impl Cgroup {
    /// The cgroup of `pid`, read from /proc/PID/cgroup.
    pub fn for_pid(pid: u32) -> Result<Self> {
        let path = format!("/proc/{pid}/cgroup");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound(format!("process {pid} is gone: no cgroup to read"))
            } else {
                Error::io(format!("read {path}"), e)
            }
        })?;
        Ok(Self::parse(
            &text,
            Path::new(CGROUP_ROOT),
            is_unified(Path::new(CGROUP_ROOT)),
        ))
    }

    /// Parses /proc/PID/cgroup. On a v1 or hybrid host the v1 controllers are used; `unified`
    /// says /sys/fs/cgroup itself is a cgroup2 mount.
    pub fn parse(text: &str, root: &Path, unified: bool) -> Self {
        let mut v1 = HashMap::new();
        let mut v2 = None;
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let rel = path.trim_start_matches('/');
            if controllers.is_empty() {
                v2 = Some(root.join(rel));
                continue;
            }
            // A joint mount such as "cpu,cpuacct" lives in a directory of that name.
            let dir = controllers.trim_start_matches("name=");
            for c in controllers.split(',') {
                v1.insert(c.to_string(), root.join(dir).join(rel));
            }
        }
        match v2 {
            Some(p) if unified || v1.is_empty() => Cgroup::V2(p),
            _ => Cgroup::V1(v1),
        }
    }

    /// The statistics as the Any containerd's clients decode (`ctr task metrics`).
    pub fn stats(&self) -> Result<Any> {
        let (type_url, encoded) = match self {
            Cgroup::V1(dirs) => (V1_METRICS_TYPE, v1::metrics(dirs)?.write_to_bytes()),
            Cgroup::V2(dir) => (V2_METRICS_TYPE, v2::metrics(dir)?.write_to_bytes()),
        };
        Ok(Any {
            type_url: type_url.to_string(),
            value: encoded.map_err(|e| Error::io("encode metrics", std::io::Error::other(e)))?,
            ..Default::default()
        })
    }

    /// How many processes of this cgroup the kernel has OOM-killed so far.
    pub fn oom_kills(&self) -> u64 {
        match self {
            Cgroup::V1(dirs) => dirs
                .get("memory")
                .map(|d| key_values(&read(&d.join("memory.oom_control")))["oom_kill"])
                .unwrap_or(0),
            Cgroup::V2(dir) => key_values(&read(&dir.join("memory.events")))["oom_kill"],
        }
    }

    /// Watches for OOM kills (v1: eventfd on memory.oom_control; v2: inotify on memory.events).
    pub fn watch_oom(&self) -> Result<OomWatcher> {
        OomWatcher::new(self)
    }
}

/// Moves `pid` into the cgroup at `path` (relative to the hierarchy roots): on v2 the one
/// directory, on v1 every controller hierarchy where that directory exists.
pub fn join(path: &str, pid: u32) -> Result<()> {
    let root = Path::new(CGROUP_ROOT);
    let rel = path.trim_start_matches('/');
    let targets: Vec<PathBuf> = if is_unified(root) {
        vec![root.join(rel)]
    } else {
        std::fs::read_dir(root)
            .map_err(|e| Error::io(format!("list {CGROUP_ROOT}"), e))?
            .flatten()
            .map(|h| h.path().join(rel))
            .filter(|d| d.is_dir())
            .collect()
    };
    if targets.is_empty() || !targets.iter().all(|d| d.is_dir()) {
        return Err(Error::NotFound(format!("cgroup {path:?} does not exist")));
    }
    for dir in targets {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .map_err(|e| Error::io(format!("add {pid} to {}", procs.display()), e))?;
    }
    Ok(())
}

fn is_unified(root: &Path) -> bool {
    nix::sys::statfs::statfs(root)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// A cgroup file's contents; a missing file reads as empty (not every controller has all).
fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn read_u64(path: &Path) -> u64 {
    parse_u64(read(path).trim())
}

/// A number, or "max" (no limit) as u64::MAX.
fn parse_u64(s: &str) -> u64 {
    if s == "max" {
        u64::MAX
    } else {
        s.parse().unwrap_or(0)
    }
}

/// "key value" lines. Missing keys read as 0.
#[derive(Default)]
struct KeyValues(HashMap<String, u64>);

impl std::ops::Index<&str> for KeyValues {
    type Output = u64;
    fn index(&self, key: &str) -> &u64 {
        self.0.get(key).unwrap_or(&0)
    }
}

fn key_values(text: &str) -> KeyValues {
    KeyValues(
        text.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.to_string(), parse_u64(it.next()?)))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_hybrid_and_v2() {
        let hybrid = "12:memory:/ns/c1\n4:cpu,cpuacct:/ns/c1\n1:name=systemd:/ns/c1\n0::/ns/c1\n";
        let root = Path::new("/sys/fs/cgroup");
        let Cgroup::V1(dirs) = Cgroup::parse(hybrid, root, false) else {
            panic!("hybrid host uses v1 controllers");
        };
        assert_eq!(dirs["memory"], root.join("memory/ns/c1"));
        assert_eq!(dirs["cpuacct"], root.join("cpu,cpuacct/ns/c1"));
        assert_eq!(
            Cgroup::parse("0::/k8s/pod1/c1\n", root, true),
            Cgroup::V2(root.join("k8s/pod1/c1"))
        );
    }

    #[test]
    fn max_is_unlimited() {
        assert_eq!(parse_u64("max"), u64::MAX);
        assert_eq!(parse_u64("42"), 42);
        assert_eq!(key_values("a 1\nb max\n")["b"], u64::MAX);
        assert_eq!(key_values("")["missing"], 0);
    }
}
