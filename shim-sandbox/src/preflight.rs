//! What the shim settles in a bundle before libcontainer creates the container: containerd's
//! CRI writes `rootfsPropagation` as runc names it ("rshared", "rslave", "rprivate"), which
//! libcontainer 0.7 refuses deep in the container's init ("failed to prepare rootfs", no
//! cause); it is rewritten in the form libcontainer takes, with the same effect. The cgroup
//! mount of a container that joins a PID namespace is resolved here on cgroup v1
//! (`cgroup_mount`). (What both
//! shims check in every bundle, bind mount sources among it, is libshim's `check_bundle`.)
use std::path::Path;

use libshim::BackendError;
use serde_json::Value;

/// runc's names for the root's propagation, and libcontainer's for the same mount flags:
/// libcontainer always applies its propagation recursively (MS_REC), so its "shared" is runc's
/// "rshared" (docs/upstream/libcontainer-rootfs-propagation.md).
const PROPAGATION: [(&str, &str); 3] = [
    ("rshared", "shared"),
    ("rslave", "slave"),
    ("rprivate", "private"),
];
const LIBCONTAINER_PROPAGATION: [&str; 4] = ["shared", "slave", "private", "unbindable"];

/// Rewrites the bundle's propagation name if needed; refuses one nobody knows.
pub fn check_bundle(bundle: &Path) -> Result<(), BackendError> {
    let path = bundle.join("config.json");
    let data = std::fs::read(&path)
        .map_err(|e| BackendError::io(format!("create: read {}", path.display()), e))?;
    let mut spec: Value = serde_json::from_slice(&data).map_err(|e| {
        BackendError::InvalidArgument(format!("create: {} is not JSON: {e}", path.display()))
    })?;
    let renamed = normalize_propagation(&mut spec)?;
    // Not `||`: both run.
    let rewritten = crate::cgroup_mount::rewrite(&mut spec)?;
    if renamed || rewritten {
        let data = serde_json::to_vec(&spec).map_err(|e| {
            BackendError::InvalidArgument(format!("create: {}: {e}", path.display()))
        })?;
        let tmp = bundle.join(".config.json.tmp");
        std::fs::write(&tmp, data)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| BackendError::io(format!("create: rewrite {}", path.display()), e))?;
    }
    Ok(())
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
