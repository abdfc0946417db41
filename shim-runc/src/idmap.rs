//! Idmapped mounts need the runtime's support: runc before 1.2 and crun without a `features`
//! command do not report it, and a runc-compatible runtime ignores mount fields it does not
//! know, so the mount would come up unmapped (files owned by the wrong ids in a volume).
//! containerd 2 checks the `features` document itself before it creates a task; 1.x does not,
//! so Create checks the same entry (containerd's `supportsIDMapMounts`) before the runtime runs.
use std::path::Path;

use libshim::{BackendError, RuntimeOptions};
use serde_json::Value;

use crate::cli::{os, Runtime};

/// The destination of the first mount that asks for an idmapped mount (per-mount uid/gid
/// mappings, or the `idmap`/`ridmap` option), as containerd's `usesIDMapMounts` decides.
pub fn idmapped_mount(spec: &Value) -> Option<String> {
    let mounts = spec["mounts"].as_array()?;
    mounts
        .iter()
        .find(|m| libshim::mount::idmap::is_idmapped(m))
        .map(|m| m["destination"].as_str().unwrap_or("?").to_string())
}

/// Whether a features document says idmapped mounts are enabled.
pub fn supported(features: &Value) -> bool {
    features["linux"]["mountExtensions"]["idmap"]["enabled"] == Value::Bool(true)
}

/// Refuses a container with an idmapped mount when the runtime does not report support.
pub async fn check(options: &RuntimeOptions, bundle: &Path) -> Result<(), BackendError> {
    let config = bundle.join("config.json");
    let text = std::fs::read(&config)
        .map_err(|e| BackendError::io(format!("read {}", config.display()), e))?;
    let spec: Value = serde_json::from_slice(&text).map_err(|e| {
        BackendError::InvalidArgument(format!("{}: not an OCI spec: {e}", config.display()))
    })?;
    let Some(dest) = idmapped_mount(&spec) else {
        return Ok(());
    };
    let rt = Runtime::new(options, "default", None);
    let features = rt.run("features", vec![os("features")], None, None).await;
    let features: Option<Value> = features
        .ok()
        .and_then(|out| serde_json::from_slice(&out).ok());
    if features.as_ref().is_some_and(supported) {
        return Ok(());
    }
    let version = version(&rt, features.as_ref()).await;
    let why = match features {
        Some(_) => "its `features` document has no linux.mountExtensions.idmap.enabled = true",
        None => "it has no `features` command to report linux.mountExtensions.idmap",
    };
    Err(BackendError::InvalidArgument(format!(
        "mount {dest:?} is an idmapped mount (uidMappings/gidMappings or idmap option), which \
         runtime {} {version} does not support: {why}; nothing was created (a runtime without \
         it would mount the volume unmapped)",
        rt.binary
    )))
}

/// The runtime's version: runc's `features` annotation, else the first line of `--version`.
async fn version(rt: &Runtime, features: Option<&Value>) -> String {
    let annotated = features
        .and_then(|f| f["annotations"]["org.opencontainers.runc.version"].as_str())
        .map(str::to_string);
    if let Some(v) = annotated {
        return v;
    }
    match rt.run("version", vec![os("--version")], None, None).await {
        Ok(out) => version_of(&String::from_utf8_lossy(&out)),
        Err(_) => "(version unknown)".to_string(),
    }
}

/// "crun version 1.8.1\ncommit: ..." -> "1.8.1".
fn version_of(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.split_once("version ")
        .map(|(_, v)| v.trim())
        .unwrap_or(line.trim())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn idmapped_mounts_are_found_as_containerd_finds_them() {
        let plain = json!({"mounts": [{"destination": "/v", "options": ["rbind"]}]});
        assert_eq!(idmapped_mount(&plain), None);
        let mapped = json!({"mounts": [{"destination": "/v", "uidMappings": [], "type": "bind"}]});
        assert_eq!(idmapped_mount(&mapped).as_deref(), Some("/v"));
        let option = json!({"mounts": [{"destination": "/w", "options": ["ridmap"]}]});
        assert_eq!(idmapped_mount(&option).as_deref(), Some("/w"));
    }

    #[test]
    fn support_is_the_enabled_entry() {
        let on = json!({"linux": {"mountExtensions": {"idmap": {"enabled": true}}}});
        assert!(supported(&on));
        let off = json!({"linux": {"mountExtensions": {"idmap": {"enabled": false}}}});
        assert!(!supported(&off));
        assert!(!supported(&json!({"linux": {}})));
    }

    #[test]
    fn versions_from_version_output() {
        assert_eq!(version_of("crun version 1.8.1\ncommit: f8a0"), "1.8.1");
        assert_eq!(version_of("runc version 1.1.5+ds1\n"), "1.1.5+ds1");
    }
}
