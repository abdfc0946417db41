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
//!
//! A container in a user namespace has every bind source staged: libcontainer opens the
//! sources from inside that namespace, as the container's root, which may not pass through
//! containerd's directories (its CRI sandbox dirs are 0700); the bundle is open to the
//! container's root group (containerd makes it 0710 for it). Idmapped mounts are staged as
//! idmapped clones (`idmapped`).
use std::path::{Path, PathBuf};

use libshim::BackendError;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde_json::Value;

use crate::idmapped;

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

/// A bind mount's bind flags (libcontainer's is_bind: `type: bind` is taken as a bind too).
fn bind_flags(m: &Value) -> Option<MsFlags> {
    let options: Vec<&str> = m["options"]
        .as_array()
        .map(|o| o.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if options.contains(&"rbind") {
        Some(MsFlags::MS_BIND | MsFlags::MS_REC)
    } else if options.contains(&"bind") || m["type"] == "bind" {
        Some(MsFlags::MS_BIND)
    } else {
        None
    }
}

/// The propagation a mount asks for (the last option wins, as in runc).
fn wanted_propagation(m: &Value) -> Option<MsFlags> {
    m["options"]
        .as_array()?
        .iter()
        .rev()
        .find_map(|o| o.as_str().and_then(propagation))
}

/// How one bind mount's source is staged.
struct Plan {
    index: usize,
    bind: MsFlags,
    propagation: Option<MsFlags>,
    idmap: Option<idmapped::Idmap>,
}

/// The bind mounts of `spec` that are staged: those with a propagation option or an idmap,
/// and every one of a user-namespaced container.
fn plans(spec: &Value) -> Result<Vec<Plan>, BackendError> {
    let userns = idmapped::in_user_namespace(spec);
    let mut plans = Vec::new();
    for (index, m) in spec["mounts"].as_array().into_iter().flatten().enumerate() {
        let Some(bind) = bind_flags(m) else {
            continue;
        };
        let propagation = wanted_propagation(m);
        let idmap = idmapped::wanted(spec, m)?;
        if propagation.is_some() || idmap.is_some() || userns {
            plans.push(Plan {
                index,
                bind,
                propagation,
                idmap,
            });
        }
    }
    Ok(plans)
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

/// Stages the sources of `spec`'s bind mounts that need it (see [`plans`]) and points the
/// spec at them. None when there are none.
pub fn stage(bundle: &Path, spec: &mut Value) -> Result<Option<Staged>, BackendError> {
    let plans = plans(spec)?;
    if plans.is_empty() {
        return Ok(None);
    }
    let Some(mounts) = spec["mounts"].as_array_mut() else {
        return Ok(None);
    };
    let dir = bundle.join(STAGING);
    clear(&dir);
    let io = |what: String, e: std::io::Error| BackendError::io(format!("create: {what}"), e);
    std::fs::create_dir(&dir).map_err(|e| io(format!("mkdir {}", dir.display()), e))?;
    let staged = Staged { dir: dir.clone() };
    let none: Option<&str> = None;
    mount(Some(&dir), &dir, none, MsFlags::MS_BIND, none)
        .and_then(|()| mount(none, &dir, none, MsFlags::MS_PRIVATE, none))
        .map_err(|e| io(format!("make {} a private mount", dir.display()), e.into()))?;
    let mut namespaces = idmapped::Namespaces::default();
    for plan in plans {
        let m = &mut mounts[plan.index];
        let Some(source) = m["source"].as_str().map(PathBuf::from) else {
            continue;
        };
        let dest = m["destination"].as_str().unwrap_or_default().to_string();
        // A missing source is libshim's check_bundle's to report; libcontainer canonicalises
        // the source, so a symlink is followed here too.
        let Ok(meta) = std::fs::metadata(&source) else {
            continue;
        };
        let target = dir.join(plan.index.to_string());
        let made = if meta.is_dir() {
            std::fs::create_dir(&target)
        } else {
            std::fs::File::create(&target).map(drop)
        };
        made.map_err(|e| io(format!("create {}", target.display()), e))?;
        let recursive = plan.bind.contains(MsFlags::MS_REC);
        let (how, bound) = match &plan.idmap {
            Some(idmap) => (
                "an idmapped clone of",
                namespaces.bind(&source, &target, recursive, idmap),
            ),
            None => (
                "bind",
                mount(Some(&source), &target, none, plan.bind, none).map_err(Into::into),
            ),
        };
        let propagated = bound.and_then(|()| match plan.propagation {
            Some(prop) => mount(none, &target, none, prop, none).map_err(Into::into),
            None => Ok(()),
        });
        propagated.map_err(|e| {
            io(
                format!(
                    "mount {dest}: stage {how} {} at {}",
                    source.display(),
                    target.display()
                ),
                e,
            )
        })?;
        m["source"] = Value::String(target.to_string_lossy().into_owned());
        idmapped::strip(m);
    }
    Ok(Some(staged))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The bind flags and propagation of a staged mount, as the old single-purpose check.
    fn staged_flags(m: &Value) -> Option<(MsFlags, MsFlags)> {
        Some((bind_flags(m)?, wanted_propagation(m)?))
    }

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
    fn a_user_namespaced_container_has_every_bind_staged() {
        let idmapped = json!({"destination": "/v", "type": "bind", "source": "/v",
            "options": ["rbind"],
            "uidMappings": [{"containerID": 0, "hostID": 165536, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 165536, "size": 65536}]});
        let plain = json!({"destination": "/etc/hosts", "type": "bind", "source": "/h",
            "options": ["rbind", "ro"]});
        let proc = json!({"destination": "/proc", "type": "proc", "source": "proc"});
        let staged = |spec: Value| -> Vec<(usize, bool)> {
            plans(&spec)
                .unwrap()
                .iter()
                .map(|p| (p.index, p.idmap.is_some()))
                .collect()
        };
        let mounts = json!([proc, plain, idmapped]);
        // Host user namespace: only the idmapped one.
        assert_eq!(staged(json!({"mounts": mounts})), vec![(2, true)]);
        // Its own: every bind, libcontainer opens sources as the container's root.
        let userns = json!({"mounts": mounts, "linux": {"namespaces": [{"type": "user"}]}});
        assert_eq!(staged(userns), vec![(1, false), (2, true)]);
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
