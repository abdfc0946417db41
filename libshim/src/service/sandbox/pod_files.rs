//! The files a pod's containers share: /etc/hostname, /etc/hosts, /etc/resolv.conf and the
//! pod's /dev/shm. With a pause container containerd's CRI makes them and mounts them into
//! every container; with `sandboxer = "shim"` it mounts them only if it finds them in its own
//! sandbox directory, which nothing fills. So the sandbox writes them into its bundle and adds
//! the mounts to each of its containers' specs at Create, as CRI would have: the same files, the
//! same contents (the host's hosts file, the pod's DNS config or the host's resolv.conf), the
//! same 64 MiB shm.
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::pod_config::{NamespaceMode, PodConfig};
use crate::error::{Error, Result};
use crate::options::RuntimeOptions;

/// CRI's annotations naming a container's pod and kind.
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// Where the pod's containers are recorded, one file per container holding its bundle path.
const CONTAINERS: &str = "containers";

/// CRI's size for a pod's /dev/shm.
const SHM_OPTIONS: &str = "mode=1777,size=67108864";

/// The pod's shared files, in `<sandbox bundle>/pod/`.
#[derive(Debug)]
pub struct PodFiles {
    sandbox_id: String,
    dir: PathBuf,
    /// Whether `dir/shm` is a tmpfs of ours (not with the host's IPC namespace).
    shm: bool,
}

impl PodFiles {
    /// Writes the files and mounts the shm.
    pub fn prepare(sandbox_id: &str, bundle: &Path, pod: &PodConfig) -> Result<Self> {
        let dir = bundle.join("pod");
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::io(
                format!("create the pod's file directory {}", dir.display()),
                e,
            )
        })?;
        let hostname = if pod.hostname.is_empty() {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map_err(|e| Error::io("read the host's name for the pod", e))?
                .trim()
                .to_string()
        } else {
            pod.hostname.clone()
        };
        write(&dir.join("hostname"), &format!("{hostname}\n"))?;
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        write(&dir.join("hosts"), &hosts)?;
        let resolv = if pod.dns_servers.is_empty()
            && pod.dns_searches.is_empty()
            && pod.dns_options.is_empty()
        {
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
        } else {
            resolv_conf(pod)
        };
        write(&dir.join("resolv.conf"), &resolv)?;
        let shm = pod.ipc != NamespaceMode::Node;
        let files = Self {
            sandbox_id: sandbox_id.to_string(),
            dir,
            shm,
        };
        if shm {
            let target = files.dir.join("shm");
            std::fs::create_dir_all(&target)
                .map_err(|e| Error::io(format!("create {}", target.display()), e))?;
            use nix::mount::MsFlags;
            nix::mount::mount(
                Some("shm"),
                &target,
                Some("tmpfs"),
                MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(SHM_OPTIONS),
            )
            .map_err(|e| {
                Error::io(
                    format!("mount the pod's shm at {}", target.display()),
                    e.into(),
                )
            })?;
        }
        Ok(files)
    }

    /// Files of a pod that were never written (unit tests).
    #[cfg(test)]
    pub fn detached(sandbox_id: &str) -> Self {
        Self {
            sandbox_id: sandbox_id.to_string(),
            dir: PathBuf::from("/nonexistent"),
            shm: false,
        }
    }

    /// Unmounts the shm; the files go with the bundle. Harmless twice.
    pub fn release(&self) {
        if self.shm {
            release_dir(&self.dir);
        }
    }

    /// Whether `spec` is a container of this pod (CRI's annotations say).
    pub fn is_member(&self, spec: &Value) -> bool {
        let annotations = &spec["annotations"];
        annotations[SANDBOX_ID_ANNOTATION] == self.sandbox_id.as_str()
            && annotations[CONTAINER_TYPE_ANNOTATION] == "container"
    }

    /// Notes a container of the pod, for the clean-up after a dead shim: containerd connects
    /// a pod's containers to the pod's shim without a `start` of their own, so when the shim
    /// dies it runs `delete` for the pod only, never for them. The record keeps the
    /// container's options too: containerd may remove the container's bundle first.
    pub fn record_container(
        &self,
        id: &str,
        bundle: &Path,
        options: &RuntimeOptions,
    ) -> Result<()> {
        let dir = self.dir.join(CONTAINERS).join(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        write(&dir.join("bundle"), &bundle.display().to_string())?;
        options.save(&dir)
    }

    /// Forgets a container the task service deleted.
    pub fn forget_container(&self, id: &str) {
        let _ = std::fs::remove_dir_all(self.dir.join(CONTAINERS).join(id));
    }

    /// Adds the pod's files to the spec of one of its containers; mounts the spec already has
    /// at those paths stay. Returns whether the spec changed.
    pub fn add_to(&self, spec: &mut Value) -> bool {
        if !self.is_member(spec) {
            return false;
        }
        let readonly = spec["root"]["readonly"].as_bool().unwrap_or(false);
        let joins_pod_ipc = spec["linux"]["namespaces"].as_array().is_some_and(|ns| {
            ns.iter()
                .any(|n| n["type"] == "ipc" && n["path"].is_string())
        });
        let idmap = container_id_mappings(spec);
        let Some(mounts) = spec["mounts"].as_array_mut() else {
            return false;
        };
        let mut changed = false;
        for (file, destination) in [
            ("hostname", "/etc/hostname"),
            ("hosts", "/etc/hosts"),
            ("resolv.conf", "/etc/resolv.conf"),
        ] {
            if mounts.iter().all(|m| m["destination"] != destination) {
                let mut m = bind(&self.dir.join(file), destination, readonly);
                // In a user namespace, idmapped to the container's ids as CRI mounts them:
                // the container's root owns them.
                if let Some((uids, gids)) = &idmap {
                    m["uidMappings"] = uids.clone();
                    m["gidMappings"] = gids.clone();
                }
                mounts.push(m);
                changed = true;
            }
        }
        if self.shm && joins_pod_ipc {
            // CRI's default spec gives each container a tmpfs of its own; the pod's replaces it.
            let own_tmpfs = |m: &Value| m["destination"] == "/dev/shm" && m["type"] == "tmpfs";
            if let Some(m) = mounts.iter_mut().find(|m| own_tmpfs(m)) {
                *m = bind(&self.dir.join("shm"), "/dev/shm", false);
                changed = true;
            }
        }
        changed
    }
}

/// The id mappings of a container with a user namespace, if it has both.
fn container_id_mappings(spec: &Value) -> Option<(Value, Value)> {
    use crate::mount::idmap::{in_user_namespace, oci_mappings};
    let (uids, gids) = (&spec["linux"]["uidMappings"], &spec["linux"]["gidMappings"]);
    let valid = oci_mappings(uids).is_some() && oci_mappings(gids).is_some();
    (in_user_namespace(spec) && valid).then(|| (uids.clone(), gids.clone()))
}

/// A container a dead pod shim left (see [`PodFiles::record_container`]).
pub struct RecordedContainer {
    pub id: String,
    /// Its bundle, as containerd made it (it may be gone).
    pub bundle: PathBuf,
    /// Where its record is: its options, and a directory to run its runtime in.
    pub record: PathBuf,
    pub options: RuntimeOptions,
}

/// The containers a dead pod shim left.
pub fn recorded_containers(dir: &Path) -> Vec<RecordedContainer> {
    let Ok(entries) = std::fs::read_dir(dir.join(CONTAINERS)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let record = e.path();
            let bundle = std::fs::read_to_string(record.join("bundle")).ok()?;
            Some(RecordedContainer {
                id: e.file_name().to_str()?.to_string(),
                bundle: PathBuf::from(bundle),
                options: RuntimeOptions::load(&record),
                record,
            })
        })
        .collect()
}

/// Unmounts `<dir>/shm` if it is mounted (the `delete` action after a shim died uses it too).
pub fn release_dir(dir: &Path) {
    let target = dir.join("shm");
    match nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => log::warn!("unmount the pod's shm {}: {e}", target.display()),
    }
}

fn bind(source: &Path, destination: &str, readonly: bool) -> Value {
    let mut options = vec!["rbind", "rprivate"];
    options.push(if readonly { "ro" } else { "rw" });
    json!({
        "destination": destination,
        "type": "bind",
        "source": source.display().to_string(),
        "options": options,
    })
}

/// resolv.conf from the pod's DNS config, as CRI writes it.
fn resolv_conf(pod: &PodConfig) -> String {
    let mut out = String::new();
    if !pod.dns_searches.is_empty() {
        out += &format!("search {}\n", pod.dns_searches.join(" "));
    }
    for server in &pod.dns_servers {
        out += &format!("nameserver {server}\n");
    }
    if !pod.dns_options.is_empty() {
        out += &format!("options {}\n", pod.dns_options.join(" "));
    }
    out
}

fn write(path: &Path, content: &str) -> Result<()> {
    std::fs::write(path, content).map_err(|e| Error::io(format!("write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(shm: bool) -> PodFiles {
        PodFiles {
            sandbox_id: "pod1".into(),
            dir: PathBuf::from("/b/pod"),
            shm,
        }
    }

    fn app_spec(sandbox: &str) -> Value {
        json!({
            "annotations": {
                SANDBOX_ID_ANNOTATION: sandbox,
                CONTAINER_TYPE_ANNOTATION: "container",
            },
            "root": {"path": "rootfs", "readonly": true},
            "linux": {"namespaces": [{"type": "ipc", "path": "/proc/9/ns/ipc"}]},
            "mounts": [
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/vol/hosts"},
            ],
        })
    }

    #[test]
    fn a_container_of_the_pod_gets_the_pod_files() {
        let mut spec = app_spec("pod1");
        assert!(files(true).add_to(&mut spec));
        let mounts = spec["mounts"].as_array().unwrap();
        let find = |d: &str| mounts.iter().find(|m| m["destination"] == d).unwrap();
        assert_eq!(find("/etc/hostname")["source"], "/b/pod/hostname");
        assert_eq!(find("/etc/hostname")["options"][2], "ro", "readonly rootfs");
        assert_eq!(find("/etc/resolv.conf")["source"], "/b/pod/resolv.conf");
        assert_eq!(
            find("/etc/hosts")["source"],
            "/vol/hosts",
            "the user's mount stays"
        );
        assert_eq!(find("/dev/shm")["source"], "/b/pod/shm");
        assert_eq!(find("/dev/shm")["type"], "bind");
    }

    #[test]
    fn other_pods_and_host_ipc_are_left_alone() {
        let mut spec = app_spec("pod2");
        let before = spec.clone();
        assert!(!files(true).add_to(&mut spec));
        assert_eq!(spec, before);

        let mut spec = app_spec("pod1");
        assert!(files(false).add_to(&mut spec));
        let shm = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/dev/shm")
            .unwrap()
            .clone();
        assert_eq!(shm["type"], "tmpfs", "no pod shm with the host's IPC");
    }

    #[test]
    fn a_user_namespaced_container_gets_them_idmapped_to_its_ids() {
        let map = json!([{"containerID": 0, "hostID": 165536, "size": 65536}]);
        let mut spec = app_spec("pod1");
        spec["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user", "path": "/proc/9/ns/user"}));
        spec["linux"]["uidMappings"] = map.clone();
        spec["linux"]["gidMappings"] = map.clone();
        assert!(files(true).add_to(&mut spec));
        let mounts = spec["mounts"].as_array().unwrap();
        let find = |d: &str| mounts.iter().find(|m| m["destination"] == d).unwrap();
        for file in ["/etc/hostname", "/etc/resolv.conf"] {
            assert_eq!(find(file)["uidMappings"], map, "{file}");
            assert_eq!(find(file)["gidMappings"], map, "{file}");
        }
        // The shm is a tmpfs open to all (not every kernel idmaps tmpfs).
        assert!(find("/dev/shm")["uidMappings"].is_null());
        // Without a user namespace, no mappings.
        let mut plain = app_spec("pod1");
        assert!(files(true).add_to(&mut plain));
        let mounts = plain["mounts"].as_array().unwrap();
        assert!(mounts.iter().all(|m| m["uidMappings"].is_null()));
    }

    #[test]
    fn resolv_conf_from_dns_config() {
        let pod = PodConfig {
            dns_servers: vec!["10.0.0.10".into(), "10.0.0.11".into()],
            dns_searches: vec!["a.local".into(), "b.local".into()],
            dns_options: vec!["ndots:5".into()],
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(&pod),
            "search a.local b.local\nnameserver 10.0.0.10\nnameserver 10.0.0.11\noptions ndots:5\n"
        );
    }
}
