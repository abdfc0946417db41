//! Execs into a user-namespaced container join its user namespace.
//!
//! libcontainer 0.7's tenant builder joins the init's ipc, uts, net, pid, mnt, cgroup and time
//! namespaces but never its user namespace (`NAMESPACE_TYPES` in container/tenant_builder.rs),
//! so an exec into such a container (`kubectl exec`, exec probes) would run as the host's root
//! with the host's capabilities inside the container's other namespaces: an escape
//! (docs/upstream/libcontainer-tenant-userns.md). The shim makes it join:
//!
//! - libcontainer is handed the process as uid 0 with CAP_SYS_ADMIN, which joining a user
//!   namespace takes;
//! - the executor, in the exec'd process just before `execve` (and after every other
//!   namespace was joined), enters the init's user namespace through an fd the shim opened,
//!   which gives it a fresh, full capability set there; then it takes the process's own
//!   groups, gid, uid and capability sets from the spec, as libcontainer would have.
//!
//! The container's seccomp profile goes in between as runc orders it: before the credentials
//! without `noNewPrivileges` (installing it needs CAP_SYS_ADMIN, held in the namespace then),
//! after them with it.
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use libcontainer::oci_spec::runtime::LinuxCapabilities;
use libcontainer::syscall::linux::LinuxSyscall;
use libcontainer::syscall::Syscall;
use libshim::BackendError;
use nix::sched::CloneFlags;
// libcontainer's Syscall takes its own nix's ids (0.29, as `nix-cgroups`).
use nix_cgroups::unistd::{Gid, Uid};
use serde_json::Value;

/// What the executor does in the exec'd process.
#[derive(Debug)]
pub struct Plan {
    userns: OwnedFd,
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
    capabilities: Option<LinuxCapabilities>,
    pub no_new_privileges: bool,
}

/// Where the container is user-namespaced (`config`, its bundle's spec), rewrites the exec's
/// `process` for libcontainer as above and returns what the executor finishes with.
/// `init_pid` is asked for only then (it loads the container's state).
pub fn plan(
    config: &Value,
    bundle: &Path,
    init_pid: impl FnOnce() -> Result<u32, BackendError>,
    process: &mut Value,
) -> Result<Option<Plan>, BackendError> {
    if !crate::idmapped::in_user_namespace(config) {
        return Ok(None);
    }
    let path = format!("/proc/{}/ns/user", init_pid()?);
    let userns = std::fs::File::open(&path)
        .map(OwnedFd::from)
        .map_err(|e| BackendError::io(format!("exec: open the container's {path}"), e))?;
    let bad = |what: &str, e: serde_json::Error| {
        BackendError::InvalidArgument(format!("exec: process {what}: {e}"))
    };
    let user = process["user"].take();
    let uid = user["uid"].as_u64().unwrap_or(0) as u32;
    let gid = user["gid"].as_u64().unwrap_or(0) as u32;
    let additional_gids = match &user["additionalGids"] {
        Value::Null => Vec::new(),
        v => serde_json::from_value(v.clone()).map_err(|e| bad("user.additionalGids", e))?,
    };
    let capabilities = match &process["capabilities"] {
        Value::Null => None,
        v => Some(serde_json::from_value(v.clone()).map_err(|e| bad("capabilities", e))?),
    };
    let mut for_libcontainer = serde_json::json!({"uid": 0, "gid": 0});
    if let Some(umask) = user.get("umask") {
        for_libcontainer["umask"] = umask.clone();
    }
    process["user"] = for_libcontainer;
    if process["capabilities"].is_object() {
        for set in ["bounding", "effective", "permitted"] {
            let list = &mut process["capabilities"][set];
            if !list.is_array() {
                *list = Value::Array(Vec::new());
            }
            if let Some(list) = list.as_array_mut() {
                if !list.iter().any(|c| c == "CAP_SYS_ADMIN") {
                    list.push("CAP_SYS_ADMIN".into());
                }
            }
        }
    }
    // libcontainer sets HOME from the passwd entry of the uid it is given (0) where the
    // environment has none: the real user's is set here instead.
    if uid != 0 && !has_home(process) {
        if let Some(home) = home_of(&rootfs(config, bundle).join("etc/passwd"), uid) {
            if let Some(env) = process["env"].as_array_mut() {
                env.push(Value::String(format!("HOME={home}")));
            } else {
                process["env"] = serde_json::json!([format!("HOME={home}")]);
            }
        }
    }
    Ok(Some(Plan {
        userns,
        uid,
        gid,
        additional_gids,
        capabilities,
        no_new_privileges: process["noNewPrivileges"].as_bool().unwrap_or(false),
    }))
}

fn has_home(process: &Value) -> bool {
    process["env"].as_array().is_some_and(|env| {
        env.iter()
            .any(|e| e.as_str().is_some_and(|e| e.starts_with("HOME=")))
    })
}

fn rootfs(config: &Value, bundle: &Path) -> std::path::PathBuf {
    bundle.join(config["root"]["path"].as_str().unwrap_or("rootfs"))
}

/// The home directory of `uid` in a passwd file.
fn home_of(passwd: &Path, uid: u32) -> Option<String> {
    let text = std::fs::read_to_string(passwd).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 6 && fields[2].parse() == Ok(uid)).then(|| fields[5].to_string())
    })
}

impl Plan {
    /// Enters the container's user namespace: full capabilities there, none outside.
    pub fn join(&self) -> Result<(), String> {
        nix::sched::setns(self.userns.as_fd(), CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("join the container's user namespace: {e}"))
    }

    /// The process's groups, ids and capabilities, as libcontainer sets them.
    pub fn set_credentials(&self) -> Result<(), String> {
        let sys = LinuxSyscall;
        let groups: Vec<Gid> = self
            .additional_gids
            .iter()
            .map(|g| Gid::from_raw(*g))
            .collect();
        sys.set_groups(&groups)
            .map_err(|e| format!("set additional gids {:?}: {e}", self.additional_gids))?;
        sys.set_id(Uid::from_raw(self.uid), Gid::from_raw(self.gid))
            .map_err(|e| format!("set uid {} and gid {}: {e}", self.uid, self.gid))?;
        if let Some(caps) = &self.capabilities {
            libcontainer::capabilities::drop_privileges(caps, &sys)
                .map_err(|e| format!("set capabilities: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_container_without_a_user_namespace_is_left_alone() {
        let mut process = json!({"user": {"uid": 5, "gid": 6}});
        let config = json!({"linux": {"namespaces": [{"type": "pid"}]}});
        let plan = plan(&config, Path::new("/"), || Ok(1), &mut process).unwrap();
        assert!(plan.is_none());
        assert_eq!(process["user"]["uid"], 5);
    }

    #[test]
    fn libcontainer_gets_root_with_sys_admin_and_the_plan_the_real_user() {
        let bundle = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(bundle.path().join("rootfs/etc")).unwrap();
        std::fs::write(
            bundle.path().join("rootfs/etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nweb:x:33:33:web:/var/www:/bin/sh\n",
        )
        .unwrap();
        let config = json!({"root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "user", "path": "/proc/1/ns/user"}]}});
        let mut process = json!({
            "user": {"uid": 33, "gid": 33, "additionalGids": [4, 5], "umask": 18},
            "env": ["PATH=/bin"],
            "noNewPrivileges": true,
            "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"]},
        });
        let plan = plan(
            &config,
            bundle.path(),
            || Ok(std::process::id()),
            &mut process,
        )
        .unwrap()
        .expect("userns plan");
        assert_eq!(process["user"], json!({"uid": 0, "gid": 0, "umask": 18}));
        assert_eq!(
            process["capabilities"]["bounding"],
            json!(["CAP_CHOWN", "CAP_SYS_ADMIN"])
        );
        assert_eq!(
            process["capabilities"]["permitted"],
            json!(["CAP_SYS_ADMIN"])
        );
        assert_eq!(process["env"], json!(["PATH=/bin", "HOME=/var/www"]));
        assert_eq!((plan.uid, plan.gid), (33, 33));
        assert_eq!(plan.additional_gids, vec![4, 5]);
        assert!(plan.no_new_privileges);
        let caps = plan.capabilities.expect("capabilities");
        assert_eq!(caps.bounding().as_ref().map(|b| b.len()), Some(1));
    }
}
