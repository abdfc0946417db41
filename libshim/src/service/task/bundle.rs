//! What the service reads from a bundle's config.json, and containerd's identifier rule.
use super::*;

/// A container or exec id, by containerd's identifier rule.
pub fn validate_id(id: &str) -> Result<()> {
    validate_identifier("id", id)
}

/// A namespace: containerd names them by the same rule. The shim makes directories named
/// after it (the runtime's state root), so a bad one is refused before any is made.
pub fn validate_namespace(namespace: &str) -> Result<()> {
    validate_identifier("namespace", namespace)
}

/// containerd's identifier rule: alphanumerics joined by single `.`, `_` or `-`, at most 76.
fn validate_identifier(what: &str, id: &str) -> Result<()> {
    let bad = |why: &str| Error::InvalidArgument(format!("invalid {what} {id:?}: {why}"));
    if id.is_empty() {
        return Err(bad("empty"));
    }
    if id.len() > 76 {
        return Err(bad("longer than 76 characters"));
    }
    let mut prev_sep = true;
    for ch in id.chars() {
        let sep = matches!(ch, '.' | '_' | '-');
        if !(ch.is_ascii_alphanumeric() || sep) || (sep && prev_sep) {
            return Err(bad(
                "must be alphanumerics joined by single '.', '_' or '-'",
            ));
        }
        prev_sep = sep;
    }
    if prev_sep {
        return Err(bad("must not end with a separator"));
    }
    Ok(())
}

/// Whether the container's processes outlive its init: without a PID namespace of its own
/// (none in the spec: the host's; or one joined by path) the kernel does not end them with it.
pub fn outlives_init(spec: &serde_json::Value) -> bool {
    let own_pid_namespace = spec["linux"]["namespaces"].as_array().is_some_and(|all| {
        all.iter()
            .any(|n| n["type"] == "pid" && n["path"].as_str().unwrap_or("").is_empty())
    });
    !own_pid_namespace
}

/// The host uid and gid the container's root maps to (0, 0 without a user namespace).
pub fn mapped_root(spec: &serde_json::Value) -> (u32, u32) {
    let host_of_root = |key: &str| {
        spec.pointer(&format!("/linux/{key}"))
            .and_then(crate::mount::idmap::oci_mappings)
            .and_then(|maps| maps.into_iter().find(|m| m.container_id == 0))
            .map_or(0, |m| m.host_id)
    };
    (host_of_root("uidMappings"), host_of_root("gidMappings"))
}

/// Refuses a bundle the runtime would fail on less clearly; returns its config.
pub fn check_bundle(bundle: &std::path::Path) -> Result<serde_json::Value> {
    let config = bundle.join("config.json");
    let data = std::fs::read(&config).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(format!("bundle has no {}", config.display()))
        } else {
            Error::io(format!("read {}", config.display()), e)
        }
    })?;
    let spec: serde_json::Value = serde_json::from_slice(&data).map_err(|e| {
        Error::InvalidArgument(format!("{} is not valid JSON: {e}", config.display()))
    })?;
    let args = spec.pointer("/process/args").and_then(|a| a.as_array());
    if args.is_some_and(|a| a.is_empty()) {
        return Err(Error::InvalidArgument(format!(
            "{}: process.args is empty",
            config.display()
        )));
    }
    check_bind_sources(&spec)?;
    if let Some(root) = spec.pointer("/root/path").and_then(|r| r.as_str()) {
        let root = bundle.join(root);
        if !root.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "rootfs {} does not exist",
                root.display()
            )));
        }
    }
    Ok(spec)
}

/// A bind mount whose source does not exist fails deep in the runtime's init (libcontainer
/// says only "failed to prepare rootfs"); name it here, before anything is made.
fn check_bind_sources(spec: &serde_json::Value) -> Result<()> {
    let Some(mounts) = spec["mounts"].as_array() else {
        return Ok(());
    };
    for m in mounts {
        let is_bind = m["type"] == "bind"
            || m["options"]
                .as_array()
                .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"));
        let (Some(source), Some(destination)) = (m["source"].as_str(), m["destination"].as_str())
        else {
            continue;
        };
        if is_bind && std::fs::symlink_metadata(source).is_err() {
            return Err(Error::InvalidArgument(format!(
                "the source {source:?} of the bind mount at {destination:?} does not exist"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{mapped_root, outlives_init, validate_id, validate_namespace};

    #[test]
    pub(super) fn only_an_own_pid_namespace_ends_everything_with_the_init() {
        let with = |namespaces: serde_json::Value| {
            outlives_init(&serde_json::json!({"linux": {"namespaces": namespaces}}))
        };
        assert!(!with(
            serde_json::json!([{"type": "mount"}, {"type": "pid"}])
        ));
        assert!(with(serde_json::json!([{"type": "mount"}])), "the host's");
        assert!(
            with(serde_json::json!([{"type": "pid", "path": "/proc/42/ns/pid"}])),
            "joined"
        );
        assert!(outlives_init(&serde_json::json!({})), "no linux section");
    }

    #[test]
    pub(super) fn stdio_goes_to_the_mapped_root() {
        let spec = serde_json::json!({"linux": {
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}]
        }});
        assert_eq!(mapped_root(&spec), (100000, 200000));
        assert_eq!(mapped_root(&serde_json::json!({"linux": {}})), (0, 0));
    }

    #[test]
    pub(super) fn ids() {
        for ok in ["a", "abc-1", "a.b_c-d", "X9"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "a/b", "a b", &"x".repeat(77)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
        let err = validate_namespace(&"n".repeat(78)).unwrap_err().to_string();
        assert!(err.starts_with("invalid namespace"), "{err}");
        assert!(validate_namespace("k8s.io").is_ok());
    }

    #[test]
    fn a_missing_bind_source_is_named() {
        let spec = serde_json::json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": "/nonexistent/x", "options": ["rbind"]}
        ]});
        let err = super::check_bind_sources(&spec).unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/x") && err.contains("/data"),
            "{err}"
        );
        let fine = serde_json::json!({"mounts": [{"destination": "/d", "source": "/tmp", "options": ["rbind"]}]});
        super::check_bind_sources(&fine).unwrap();
    }
}
