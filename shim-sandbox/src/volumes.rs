//! Bind mounts with a propagation option (CRI gives every volume one: `rprivate`, `rslave` or
//! `rshared`) get that propagation, as runc gives it.
//!
//! libcontainer 0.7 parses the propagation options as flags to clear (`MountOption::Rprivate(
//! true, ..)` in `syscall/linux.rs`) and never applies them: its `open_tree` clone of the
//! source keeps the propagation the source has in the container's mount namespace, where the
//! root was made rslave (rshared with an rshared volume). So a private volume received mounts
//! the host made under its source after the start, and next to an rshared volume a private or
//! rslave one sent the container's mounts back to the host. runc binds and then sets the
//! option's propagation on the new mount (docs/upstream/libcontainer-mount-propagation.md).
//!
//! The shim hands libcontainer a source that already has the propagation: before the create
//! it binds each such source at `<bundle>/.volumes/<n>` (recursively for `rbind`), sets the
//! propagation there and names that in the spec. libcontainer's clone of a private mount is
//! private, of a slave a slave of the same master, of a shared one a peer. `.volumes` is a
//! private mount itself, so none of this reaches other mount namespaces, and it is detached
//! right after the create (the container holds clones), or by [`clear`] after a crash.
use std::path::{Path, PathBuf};

use libshim::BackendError;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde_json::Value;

/// The staging directory's name in the bundle.
const STAGING: &str = ".volumes";

/// The propagation an OCI mount option asks for, if it is one libcontainer leaves out.
fn propagation(option: &str) -> Option<MsFlags> {
    let rec = MsFlags::MS_REC;
    Some(match option {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | rec,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | rec,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | rec,
        _ => return None,
    })
}

/// A bind mount's bind flags and requested propagation (the last option wins, as in runc).
fn staged_flags(m: &Value) -> Option<(MsFlags, MsFlags)> {
    let options: Vec<&str> = m["options"]
        .as_array()
        .map(|o| o.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let rbind = options.contains(&"rbind");
    // libcontainer's is_bind: `type: bind` is taken as a bind too.
    if !(rbind || options.contains(&"bind") || m["type"] == "bind") {
        return None;
    }
    let wanted = options.iter().rev().find_map(|o| propagation(o))?;
    let bind = if rbind {
        MsFlags::MS_BIND | MsFlags::MS_REC
    } else {
        MsFlags::MS_BIND
    };
    Some((bind, wanted))
}

/// The staged sources of one create; dropping it detaches them.
pub struct Staged {
    dir: PathBuf,
}

impl Drop for Staged {
    fn drop(&mut self) {
        clear(&self.dir);
    }
}

/// Detaches and removes a staging directory (a crashed create's too).
fn clear(dir: &Path) {
    if !dir.exists() {
        return;
    }
    // EINVAL: not a mount point (a create that failed before the first mount).
    if let Err(e) = umount2(dir, MntFlags::MNT_DETACH) {
        if e != nix::errno::Errno::EINVAL {
            log::warn!("detach {}: {e}", dir.display());
        }
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        log::warn!("remove {}: {e}", dir.display());
    }
}

/// Removes what a create of this bundle staged and did not take back (a killed shim).
pub fn clear_bundle(bundle: &Path) {
    clear(&bundle.join(STAGING));
}

/// Stages the sources of `spec`'s bind mounts that ask for a propagation and points the spec
/// at them. None when there are none.
pub fn stage(bundle: &Path, spec: &mut Value) -> Result<Option<Staged>, BackendError> {
    let Some(mounts) = spec["mounts"].as_array_mut() else {
        return Ok(None);
    };
    let wanted: Vec<(usize, MsFlags, MsFlags)> = mounts
        .iter()
        .enumerate()
        .filter_map(|(i, m)| staged_flags(m).map(|(bind, prop)| (i, bind, prop)))
        .collect();
    if wanted.is_empty() {
        return Ok(None);
    }
    let dir = bundle.join(STAGING);
    clear(&dir);
    let io = |what: String, e: std::io::Error| BackendError::io(format!("create: {what}"), e);
    std::fs::create_dir(&dir).map_err(|e| io(format!("mkdir {}", dir.display()), e))?;
    let staged = Staged { dir: dir.clone() };
    let none: Option<&str> = None;
    mount(Some(&dir), &dir, none, MsFlags::MS_BIND, none)
        .and_then(|()| mount(none, &dir, none, MsFlags::MS_PRIVATE, none))
        .map_err(|e| io(format!("make {} a private mount", dir.display()), e.into()))?;
    for (i, bind, prop) in wanted {
        let m = &mut mounts[i];
        let Some(source) = m["source"].as_str().map(PathBuf::from) else {
            continue;
        };
        let dest = m["destination"].as_str().unwrap_or_default().to_string();
        // A missing source is libshim's check_bundle's to report; libcontainer canonicalises
        // the source, so a symlink is followed here too.
        let Ok(meta) = std::fs::metadata(&source) else {
            continue;
        };
        let target = dir.join(i.to_string());
        let made = if meta.is_dir() {
            std::fs::create_dir(&target)
        } else {
            std::fs::File::create(&target).map(drop)
        };
        made.map_err(|e| io(format!("create {}", target.display()), e))?;
        mount(Some(&source), &target, none, bind, none)
            .and_then(|()| mount(none, &target, none, prop, none))
            .map_err(|e| {
                io(
                    format!(
                        "mount {dest}: bind {} with its propagation at {}",
                        source.display(),
                        target.display()
                    ),
                    e.into(),
                )
            })?;
        m["source"] = Value::String(target.to_string_lossy().into_owned());
    }
    Ok(Some(staged))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn binds_with_a_propagation_option_are_staged() {
        let flags = |m: Value| staged_flags(&m);
        let rec = MsFlags::MS_BIND | MsFlags::MS_REC;
        assert_eq!(
            flags(json!({"type": "bind", "options": ["rbind", "rprivate", "rw"]})),
            Some((rec, MsFlags::MS_PRIVATE | MsFlags::MS_REC))
        );
        assert_eq!(
            flags(json!({"options": ["bind", "rslave"]})),
            Some((MsFlags::MS_BIND, MsFlags::MS_SLAVE | MsFlags::MS_REC))
        );
        // The last propagation option wins.
        assert_eq!(
            flags(json!({"type": "bind", "options": ["rshared", "private"]})),
            Some((MsFlags::MS_BIND, MsFlags::MS_PRIVATE))
        );
        // No propagation asked for, or not a bind: libcontainer's own handling.
        assert_eq!(
            flags(json!({"type": "bind", "options": ["rbind", "ro"]})),
            None
        );
        assert_eq!(
            flags(json!({"type": "tmpfs", "options": ["rprivate"]})),
            None
        );
    }

    #[test]
    fn a_private_source_is_staged_and_taken_back() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        // A private mount namespace of its own would need a single-threaded process; the
        // staging is private, so this leaves nothing in the host's.
        let bundle = tempfile::tempdir().unwrap();
        let source = bundle.path().join("src");
        std::fs::create_dir(&source).unwrap();
        std::fs::write(source.join("file"), "x").unwrap();
        let mut spec = json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": source,
             "options": ["rbind", "rprivate"]},
        ]});
        let staged = stage(bundle.path(), &mut spec).unwrap().expect("staged");
        let at = PathBuf::from(spec["mounts"][1]["source"].as_str().unwrap());
        assert_eq!(at, bundle.path().join(".volumes/1"));
        assert_eq!(std::fs::read_to_string(at.join("file")).unwrap(), "x");
        assert_eq!(spec["mounts"][0]["source"], "proc");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(&at.to_string_lossy()))
            .expect("staged mount");
        // Private: no shared:/master: tag among the optional fields.
        assert!(
            !line.contains("shared:") && !line.contains("master:"),
            "{line}"
        );
        drop(staged);
        assert!(!bundle.path().join(".volumes").exists());
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mountinfo.contains(".volumes"), "{mountinfo}");
    }
}
