//! What the shim settles in a bundle before libcontainer creates the container: containerd's
//! CRI writes `rootfsPropagation` as runc names it ("rshared", "rslave", "rprivate"), which
//! libcontainer 0.7 refuses deep in the container's init ("failed to prepare rootfs", no
//! cause); it is rewritten in the form libcontainer takes, with the same effect. The cgroup
//! mount of a container that joins a PID namespace is resolved here on cgroup v1
//! (`cgroup_mount`), and the sources of bind mounts with a propagation option are staged
//! (`volumes`) for the create only. (What both shims check in every bundle, bind mount sources
//! among it, is libshim's `check_bundle`.)
use std::path::{Path, PathBuf};

use libshim::BackendError;
use serde_json::Value;

use crate::{idmapped, volumes};

/// runc's names for the root's propagation, and libcontainer's for the same mount flags:
/// libcontainer always applies its propagation recursively (MS_REC), so its "shared" is runc's
/// "rshared" (docs/upstream/libcontainer-rootfs-propagation.md).
const PROPAGATION: [(&str, &str); 3] = [
    ("rshared", "shared"),
    ("rslave", "slave"),
    ("rprivate", "private"),
];
const LIBCONTAINER_PROPAGATION: [&str; 4] = ["shared", "slave", "private", "unbindable"];

/// A bundle made ready for libcontainer's create.
pub struct Prepared {
    /// The spec as it stays in the bundle (sources not staged).
    spec: Value,
    /// Staged sources and the spec to write back after the create, if any were staged.
    staged: Option<(volumes::Staged, Vec<u8>)>,
    config: PathBuf,
}

impl Prepared {
    /// The spec, once the create is over (whatever its outcome; see `Drop`).
    pub fn finish(mut self) -> Value {
        std::mem::take(&mut self.spec)
    }
}

impl Drop for Prepared {
    /// The staged sources detached and the spec without them back in the bundle, for later
    /// readers (execs, checkpoints); a failed write leaves the staged names, empty places.
    fn drop(&mut self) {
        if let Some((staged, data)) = self.staged.take() {
            drop(staged);
            if let Err(e) = write(&self.config, &data) {
                log::warn!("{e}");
            }
        }
    }
}

/// Rewrites the bundle's propagation name if needed, refuses one nobody knows, and stages bind
/// sources with a propagation option.
pub fn check_bundle(bundle: &Path) -> Result<Prepared, BackendError> {
    let path = bundle.join("config.json");
    let data = std::fs::read(&path)
        .map_err(|e| BackendError::io(format!("create: read {}", path.display()), e))?;
    let mut spec: Value = serde_json::from_slice(&data).map_err(|e| {
        BackendError::InvalidArgument(format!("create: {} is not JSON: {e}", path.display()))
    })?;
    let renamed = normalize_propagation(&mut spec)?;
    // Not `||`: both run.
    let rewritten = crate::cgroup_mount::rewrite(&mut spec)?;
    // Staging reads the idmaps; the spec kept afterwards lists those mounts as the plain binds
    // of idmapped clones they are made as (libcontainer validates it again at every exec).
    let mut for_create = spec.clone();
    let unmapped = idmapped::strip_all(&mut spec);
    let encode = |spec: &Value| {
        serde_json::to_vec(spec)
            .map_err(|e| BackendError::InvalidArgument(format!("create: {}: {e}", path.display())))
    };
    let kept = if renamed || rewritten || unmapped {
        let data = encode(&spec)?;
        write(&path, &data)?;
        data
    } else {
        data
    };
    let staged = match volumes::stage(bundle, &mut for_create)? {
        Some(staged) => {
            write(&path, &encode(&for_create)?)?;
            Some((staged, kept))
        }
        None => None,
    };
    Ok(Prepared {
        spec,
        staged,
        config: path,
    })
}

/// Replaces `path` (config.json) with `data`, atomically.
fn write(path: &Path, data: &[u8]) -> Result<(), BackendError> {
    let tmp = path.with_file_name(".config.json.tmp");
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            BackendError::io(format!("create: rewrite {}", path.display()), e)
        })
}

/// Renames runc's propagation names; refuses unknown ones. Returns whether it changed anything.
fn normalize_propagation(spec: &mut Value) -> Result<bool, BackendError> {
    let Some(value) = spec.pointer_mut("/linux/rootfsPropagation") else {
        return Ok(false);
    };
    let Some(name) = value.as_str() else {
        return Ok(false);
    };
    if let Some((_, ours)) = PROPAGATION.iter().find(|(runc, _)| *runc == name) {
        *value = Value::String((*ours).to_string());
        return Ok(true);
    }
    if name.is_empty() || LIBCONTAINER_PROPAGATION.contains(&name) {
        return Ok(false);
    }
    Err(BackendError::InvalidArgument(format!(
        "create: linux.rootfsPropagation {name:?} is none of shared, slave, private, \
         unbindable, rshared, rslave, rprivate"
    )))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn runc_propagation_names_become_libcontainers() {
        for (runc, ours) in PROPAGATION {
            let mut spec = json!({"linux": {"rootfsPropagation": runc}});
            assert!(normalize_propagation(&mut spec).unwrap());
            assert_eq!(spec["linux"]["rootfsPropagation"], ours);
        }
        let mut slave = json!({"linux": {"rootfsPropagation": "slave"}});
        assert!(!normalize_propagation(&mut slave).unwrap());
        assert!(!normalize_propagation(&mut json!({})).unwrap());
        let err = normalize_propagation(&mut json!({"linux": {"rootfsPropagation": "sideways"}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sideways"), "{err}");
    }
}
