//! The container's seccomp profile, applied to every exec'd process.
//!
//! libcontainer 0.7's tenant builder rebuilds the spec's `linux` section for an exec from the
//! namespaces, cgroup path, personality and time offsets alone, so `seccomp` is dropped and an
//! exec (`kubectl exec`, exec probes) would run unconfined while the container's init is
//! confined (docs/upstream/libcontainer-tenant-seccomp.md). The shim installs the profile
//! itself, from the executor that runs in the exec'd process just before `execve`:
//!
//! - with `noNewPrivileges`, as late as possible, as runc does;
//! - without it, installing a filter needs CAP_SYS_ADMIN, which runc still has at that point
//!   (it installs the filter before dropping capabilities). libcontainer offers no hook there,
//!   so the exec's process spec lends the process CAP_SYS_ADMIN and CAP_SETPCAP where it lacks
//!   them, and the executor hands them back: from the bounding set first (SETPCAP allows
//!   that), then it installs the filter, then it drops them from the effective and permitted
//!   sets. The program that is exec'd never holds a lent capability.
use std::path::Path;
use std::sync::Arc;

use libcontainer::oci_spec::runtime::LinuxSeccomp;
use libshim::BackendError;
use serde_json::Value;

/// The capabilities installing a filter without `noNewPrivileges` needs.
const NEEDED: [&str; 2] = ["CAP_SYS_ADMIN", "CAP_SETPCAP"];
/// The capability sets libcontainer applies before the executor runs; inheritable and
/// ambient are left alone (nothing is lent there).
const LENT_SETS: [&str; 3] = ["bounding", "effective", "permitted"];

/// What the executor does in the exec'd process.
#[derive(Debug)]
pub struct Plan {
    profile: LinuxSeccomp,
    /// (set name, capability name) pairs added to the process spec, to be handed back.
    lent: Vec<(&'static str, &'static str)>,
}

/// The container's spec, from its bundle's config.json.
pub fn container_config(bundle: &Path) -> Result<Value, BackendError> {
    let path = bundle.join("config.json");
    let data = std::fs::read(&path)
        .map_err(|e| BackendError::io(format!("exec: read {}", path.display()), e))?;
    serde_json::from_slice(&data).map_err(|e| {
        BackendError::InvalidArgument(format!("exec: {} is not JSON: {e}", path.display()))
    })
}

/// The container's seccomp profile, from its spec.
pub fn container_profile(config: &Value) -> Result<Option<LinuxSeccomp>, BackendError> {
    match config.pointer("/linux/seccomp") {
        None | Some(Value::Null) => Ok(None),
        Some(profile) => serde_json::from_value(profile.clone())
            .map(Some)
            .map_err(|e| {
                BackendError::InvalidArgument(format!(
                    "exec: the container's seccomp profile (config.json): {e}"
                ))
            }),
    }
}

/// Where needed, lends the exec's `process` (its OCI process JSON, about to be handed to
/// libcontainer) what installing the container's `profile` takes.
pub fn plan(
    profile: Option<LinuxSeccomp>,
    process: &mut Value,
) -> Result<Option<Arc<Plan>>, BackendError> {
    let Some(profile) = profile else {
        return Ok(None);
    };
    if profile.listener_path().is_some() {
        return Err(BackendError::InvalidArgument(
            "exec: the container's seccomp profile sends notifications to a listener \
             (listenerPath), which execs in this shim do not support"
                .into(),
        ));
    }
    let no_new_privileges = process["noNewPrivileges"].as_bool().unwrap_or(false);
    let mut lent = Vec::new();
    // No `capabilities` at all: libcontainer keeps the process's full set; nothing to lend.
    if !no_new_privileges && process["capabilities"].is_object() {
        for set in LENT_SETS {
            let list = &mut process["capabilities"][set];
            if !list.is_array() {
                *list = Value::Array(Vec::new());
            }
            let list = list.as_array_mut().expect("made an array above");
            for cap in NEEDED {
                if !list.iter().any(|c| c.as_str() == Some(cap)) {
                    list.push(Value::String(cap.into()));
                    lent.push((set, cap));
                }
            }
        }
    }
    Ok(Some(Arc::new(Plan { profile, lent })))
}

/// Installs the filter alone, for an exec whose capabilities are set afterwards from scratch
/// (`exec_userns`): nothing lent needs handing back then.
pub fn install(plan: &Plan) -> Result<(), String> {
    libcontainer::seccomp::initialize_seccomp(&plan.profile)
        .map(drop)
        .map_err(|e| format!("install the container's seccomp profile: {e}"))
}

/// Runs in the exec'd process, after libcontainer set its user and capabilities and just
/// before `execve`.
pub fn apply(plan: &Plan) -> Result<(), String> {
    let lent = |set: &'static str| {
        plan.lent
            .iter()
            .filter(move |(s, _)| *s == set)
            .map(|(_, cap)| {
                cap.parse::<caps::Capability>()
                    .expect("a known capability name")
            })
    };
    for cap in lent("bounding") {
        caps::drop(None, caps::CapSet::Bounding, cap)
            .map_err(|e| format!("hand back {cap} (bounding set) after seccomp: {e}"))?;
    }
    libcontainer::seccomp::initialize_seccomp(&plan.profile)
        .map_err(|e| format!("install the container's seccomp profile: {e}"))?;
    for (set, cap_set) in [
        ("effective", caps::CapSet::Effective),
        ("permitted", caps::CapSet::Permitted),
    ] {
        for cap in lent(set) {
            caps::drop(None, cap_set, cap)
                .map_err(|e| format!("hand back {cap} ({set} set) after seccomp: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn profile(v: Value) -> Option<LinuxSeccomp> {
        Some(serde_json::from_value(v).unwrap())
    }

    fn deny_mkdir() -> Option<LinuxSeccomp> {
        profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO"}]}))
    }

    #[test]
    fn lends_only_what_the_process_lacks_and_only_without_no_new_privileges() {
        let mut process = json!({"capabilities": {
            "bounding": ["CAP_CHOWN", "CAP_SETPCAP"], "effective": ["CAP_CHOWN"]
        }});
        let lending = plan(deny_mkdir(), &mut process).unwrap().unwrap();
        assert_eq!(
            lending.lent,
            [
                ("bounding", "CAP_SYS_ADMIN"),
                ("effective", "CAP_SYS_ADMIN"),
                ("effective", "CAP_SETPCAP"),
                ("permitted", "CAP_SYS_ADMIN"),
                ("permitted", "CAP_SETPCAP"),
            ]
        );
        assert_eq!(
            process["capabilities"]["bounding"],
            json!(["CAP_CHOWN", "CAP_SETPCAP", "CAP_SYS_ADMIN"])
        );

        let mut nnp = json!({"noNewPrivileges": true, "capabilities": {"effective": []}});
        let no_lending = plan(deny_mkdir(), &mut nnp).unwrap().unwrap();
        assert!(no_lending.lent.is_empty());
        assert_eq!(nnp["capabilities"]["effective"], json!([]));
    }

    #[test]
    fn no_profile_no_plan_and_listeners_are_refused() {
        assert!(plan(None, &mut json!({})).unwrap().is_none());
        let with_listener = profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/seccomp.sock"
        }));
        let err = plan(with_listener, &mut json!({})).unwrap_err().to_string();
        assert!(err.contains("listenerPath"), "{err}");
    }

    #[test]
    fn the_profile_is_read_from_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let write = |v: Value| std::fs::write(dir.path().join("config.json"), v.to_string());
        let read = || container_profile(&container_config(dir.path()).unwrap());
        write(json!({"linux": {}})).unwrap();
        assert!(read().unwrap().is_none());
        write(json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO"}}})).unwrap();
        assert!(read().unwrap().is_some());
        write(json!({"linux": {"seccomp": {"defaultAction": 7}}})).unwrap();
        let err = read().unwrap_err().to_string();
        assert!(err.contains("seccomp profile"), "{err}");
    }
}
