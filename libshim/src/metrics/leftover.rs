//! A container's cgroup v2 directory that the runtime's delete left behind. runc before 1.2
//! SIGKILLs what is still in the cgroup and then tries `rmdir` once: while those processes
//! are still exiting it fails with EBUSY, runc only warns, and the directory stays for good
//! (runc#4047). On v1 runc retries the removal itself; libcontainer retries on both.
use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;

use super::Cgroup;

/// How long the processes the runtime killed get to exit: 20 × 10 ms.
const TRIES: u32 = 20;
const PAUSE: Duration = Duration::from_millis(10);

impl Cgroup {
    /// The v2 cgroup a bundle's spec names (`linux.cgroupsPath`, a path below the hierarchy)
    /// on a host where `/sys/fs/cgroup` is the v2 hierarchy; for the `delete` action, which has
    /// no live process to find it from.
    pub fn v2_of_bundle(bundle: &Path) -> Option<Self> {
        let root = Path::new("/sys/fs/cgroup");
        if !root.join("cgroup.controllers").exists() {
            return None;
        }
        let data = std::fs::read(bundle.join("config.json")).ok()?;
        let spec: serde_json::Value = serde_json::from_slice(&data).ok()?;
        let path = spec.pointer("/linux/cgroupsPath")?.as_str()?;
        // "slice:prefix:name" is systemd's form, and a relative path is the runtime's to place.
        let relative = path
            .strip_prefix('/')
            .filter(|p| !p.is_empty() && !p.contains(':'))?;
        Some(Cgroup::V2(root.join(relative)))
    }

    /// Removes the container's v2 cgroup, and any cgroups below it, if the runtime left them.
    /// Costs one `stat` when it did not. A cgroup that will not go is logged, not an error:
    /// the runtime has deleted the container by then.
    pub async fn remove_leftover(&self) {
        let Cgroup::V2(dir) = self else {
            return;
        };
        for attempt in 1..=TRIES {
            match remove_tree(dir) {
                Ok(()) => return,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < TRIES => {
                    tokio::time::sleep(PAUSE).await
                }
                Err(e) => {
                    log::warn!("cgroup {} left after delete: {e}", dir.display());
                    return;
                }
            }
        }
    }
}

/// `rmdir` of `dir` after its child cgroups, deepest first; a directory already gone is fine.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_nested_directories_and_accepts_a_missing_one() {
        // Plain directories stand in for cgroups: rmdir semantics are the same when empty.
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("c1");
        std::fs::create_dir_all(dir.join("child/grandchild")).unwrap();
        remove_tree(&dir).unwrap();
        assert!(!dir.exists());
        remove_tree(&dir).unwrap();
    }
}
