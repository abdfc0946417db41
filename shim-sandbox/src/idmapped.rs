//! Idmapped bind mounts (OCI `uidMappings`/`gidMappings` on a mount, or its `idmap`/`ridmap`
//! option), which containerd 2's CRI gives every volume and pod file (/etc/hosts, hostname,
//! resolv.conf) of a user-namespaced pod. libcontainer 0.7 refuses any of them ("idmapped
//! mount is not supported"), so the shim makes them: an idmapped clone of the source, staged
//! in the bundle with the others (`volumes`), and the spec's entry made a plain bind of that.
//! A bind of an idmapped mount carries its idmap.
use std::collections::HashMap;
use std::path::Path;

pub use libshim::mount::idmap::in_user_namespace;
use libshim::mount::idmap::{
    bind_idmapped, is_idmapped, oci_mappings, CloneOptions, IdMapping, Userns,
};
use libshim::BackendError;
use serde_json::Value;

/// What an idmapped mount maps, and how deep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idmap {
    pub uids: Vec<IdMapping>,
    pub gids: Vec<IdMapping>,
    /// `ridmap`: every mount under the source too.
    pub recursive: bool,
}

/// The idmap mount `m` asks for, if any. Without mappings of its own it takes the container's
/// (runtime-spec 1.2's `idmap` option alone).
pub fn wanted(spec: &Value, m: &Value) -> Result<Option<Idmap>, BackendError> {
    if !is_idmapped(m) {
        return Ok(None);
    }
    let recursive = m["options"]
        .as_array()
        .is_some_and(|o| o.iter().any(|o| o == "ridmap"));
    let has_own = !m["uidMappings"].is_null() || !m["gidMappings"].is_null();
    let dest = m["destination"].as_str().unwrap_or_default();
    let (uids, gids) = if has_own {
        (&m["uidMappings"], &m["gidMappings"])
    } else {
        (
            spec.pointer("/linux/uidMappings").unwrap_or(&Value::Null),
            spec.pointer("/linux/gidMappings").unwrap_or(&Value::Null),
        )
    };
    match (oci_mappings(uids), oci_mappings(gids)) {
        (Some(uids), Some(gids)) => Ok(Some(Idmap {
            uids,
            gids,
            recursive,
        })),
        _ => Err(BackendError::InvalidArgument(format!(
            "create: mount {dest} is idmapped but has no valid uidMappings and gidMappings \
             (nor has the container): got {uids} and {gids}"
        ))),
    }
}

/// Takes the idmap out of a staged mount's entry: it is a plain bind of an idmapped clone now.
pub fn strip(m: &mut Value) {
    if let Some(obj) = m.as_object_mut() {
        obj.remove("uidMappings");
        obj.remove("gidMappings");
    }
    if let Some(opts) = m["options"].as_array_mut() {
        opts.retain(|o| o != "idmap" && o != "ridmap");
    }
}

/// Strips the idmap from every mount of `spec`; whether there was one.
pub fn strip_all(spec: &mut Value) -> bool {
    let Some(mounts) = spec["mounts"].as_array_mut() else {
        return false;
    };
    let mut any = false;
    for m in mounts.iter_mut().filter(|m| is_idmapped(m)) {
        strip(m);
        any = true;
    }
    any
}

/// The user namespaces made for one create's idmapped mounts, one per distinct mapping.
#[derive(Default)]
pub struct Namespaces(HashMap<(Vec<IdMapping>, Vec<IdMapping>), Userns>);

impl Namespaces {
    /// Attaches an idmapped clone of `source` at `target`.
    pub fn bind(
        &mut self,
        source: &Path,
        target: &Path,
        recursive_tree: bool,
        idmap: &Idmap,
    ) -> std::io::Result<()> {
        let key = (idmap.uids.clone(), idmap.gids.clone());
        let userns = match self.0.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Userns::new(&idmap.uids, &idmap.gids)?)
            }
        };
        let opts = CloneOptions {
            recursive_tree,
            recursive_idmap: idmap.recursive,
            ..Default::default()
        };
        bind_idmapped(source, target, userns, opts)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(host_id: u32) -> IdMapping {
        IdMapping {
            container_id: 0,
            host_id,
            size: 65536,
        }
    }

    #[test]
    fn a_mount_with_mappings_is_idmapped() {
        let spec = json!({});
        let m = json!({"destination": "/v", "type": "bind", "options": ["rbind"],
            "uidMappings": [{"containerID": 0, "hostID": 165536, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 231072, "size": 65536}]});
        let idmap = wanted(&spec, &m).unwrap().expect("idmapped");
        assert_eq!(idmap.uids, vec![map(165536)]);
        assert_eq!(idmap.gids, vec![map(231072)]);
        assert!(!idmap.recursive);
        assert_eq!(wanted(&spec, &json!({"options": ["rbind"]})).unwrap(), None);
    }

    #[test]
    fn the_idmap_option_alone_takes_the_containers_mappings() {
        let spec = json!({"linux": {
            "uidMappings": [{"containerID": 0, "hostID": 165536, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 165536, "size": 65536}]}});
        let m = json!({"destination": "/v", "options": ["rbind", "ridmap"]});
        let idmap = wanted(&spec, &m).unwrap().expect("idmapped");
        assert_eq!(idmap.uids, vec![map(165536)]);
        assert!(idmap.recursive);
        // Neither the mount nor the container has mappings: refused, naming the mount.
        let err = wanted(&json!({}), &m).unwrap_err().to_string();
        assert!(err.contains("/v"), "{err}");
    }

    #[test]
    fn strip_leaves_a_plain_bind() {
        let mut m = json!({"destination": "/v", "options": ["rbind", "idmap", "ro"],
            "uidMappings": [], "gidMappings": []});
        strip(&mut m);
        assert_eq!(m, json!({"destination": "/v", "options": ["rbind", "ro"]}));
    }
}
