//! containerd 2.x's Sandbox API (`containerd.runtime.sandbox.v1.Sandbox`): the pod without a
//! pause container. With `sandboxer = "shim"` on a runtime handler, CRI starts this shim for
//! the pod and calls CreateSandbox/StartSandbox here, then creates the pod's containers through
//! the task service on the same socket; they join the namespaces of the pid StartSandbox and
//! SandboxStatus report (`/proc/<pid>/ns/*`).
//!
//! One sandbox per shim. Its namespaces are held by a child of the shim ([`holder`]), the
//! files the pod's containers share are in the sandbox bundle ([`pod_files`]); both backends
//! get the same pod, since containers join it through their specs alone.
mod adaptor;
pub(crate) mod holder;
pub mod pod_config;
pub mod pod_files;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use protobuf::MessageField;
use protos::sandbox_api::*;
use tokio::sync::{watch, Mutex};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::events::timestamp;
use crate::process::ExitInfo;
use crate::service::TaskService;
use pod_config::PodConfig;
use pod_files::PodFiles;

/// How long a shim started for a sandbox waits for its CreateSandbox (or, after a failed one,
/// for containerd's ShutdownSandbox) before it ends itself: containerd does not always tell
/// a shim whose sandbox never came to be to exit.
const UNCLAIMED_LIMIT: Duration = Duration::from_secs(60);
const FAILED_CREATE_LIMIT: Duration = Duration::from_secs(10);

enum Phase {
    Created,
    Running { pid: u32, pidfd: OwnedFd },
    Stopped,
}

struct Pod {
    id: String,
    netns_path: String,
    config: PodConfig,
    /// What the holder is to do, checked at Create (the netns held open since), taken at Start.
    setup: Option<crate::sys::ns_holder::HolderSetup>,
    files: Arc<PodFiles>,
    created_at: SystemTime,
    phase: Phase,
}

struct Inner<B> {
    task: TaskService<B>,
    runtime_type: &'static str,
    pod: Mutex<Option<Pod>>,
    /// The holder's exit, once it has exited.
    exit: watch::Sender<Option<ExitInfo>>,
}

/// The ttrpc Sandbox service. Cheap to clone.
pub struct SandboxService<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for SandboxService<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<B: Backend> SandboxService<B> {
    /// `started_for_sandbox`: containerd's sandbox controller started this shim, so it ends
    /// itself if no sandbox is created on it in time.
    pub fn new(
        task: TaskService<B>,
        runtime_type: &'static str,
        started_for_sandbox: bool,
    ) -> Self {
        let service = Self {
            inner: Arc::new(Inner {
                task,
                runtime_type,
                pod: Mutex::new(None),
                exit: watch::channel(None).0,
            }),
        };
        if started_for_sandbox {
            service.end_if_unclaimed(UNCLAIMED_LIMIT);
        }
        service
    }

    fn end_if_unclaimed(&self, after: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if this.inner.pod.lock().await.is_none() {
                log::warn!("no sandbox was created on this shim within {after:?}: exiting");
                this.inner.task.request_shutdown();
            }
        });
    }

    async fn create(&self, req: CreateSandboxRequest) -> Result<()> {
        crate::service::validate_id(&req.sandbox_id)?;
        let mut slot = self.inner.pod.lock().await;
        if let Some(pod) = slot.as_ref() {
            return Err(if pod.id == req.sandbox_id {
                Error::AlreadyExists(format!("sandbox {:?} already exists", req.sandbox_id))
            } else {
                Error::FailedPrecondition(format!(
                    "this shim serves sandbox {:?}, not {:?}",
                    pod.id, req.sandbox_id
                ))
            });
        }
        let result = self.prepare(&req);
        match result {
            Ok(pod) => {
                self.inner.task.hold_pod(Some(pod.files.clone()));
                *slot = Some(pod);
                Ok(())
            }
            Err(e) => {
                drop(slot);
                self.end_if_unclaimed(FAILED_CREATE_LIMIT);
                Err(e)
            }
        }
    }

    fn prepare(&self, req: &CreateSandboxRequest) -> Result<Pod> {
        let config = match req.options.as_ref() {
            Some(any) if !any.value.is_empty() => PodConfig::decode(&any.type_url, &any.value)?,
            _ => PodConfig::default(),
        };
        // Checked now so that a bad netns or sysctl fails CreateSandbox, before anything is made.
        let setup = holder::setup(&config, &req.netns_path)?;
        if req.bundle_path.is_empty() {
            return Err(Error::InvalidArgument(
                "CreateSandbox: empty bundle_path".into(),
            ));
        }
        let files = PodFiles::prepare(&req.sandbox_id, &PathBuf::from(&req.bundle_path), &config)?;
        Ok(Pod {
            id: req.sandbox_id.clone(),
            netns_path: req.netns_path.clone(),
            config,
            setup: Some(setup),
            files: Arc::new(files),
            created_at: SystemTime::now(),
            phase: Phase::Created,
        })
    }

    async fn start(&self, id: &str) -> Result<StartSandboxResponse> {
        let mut slot = self.inner.pod.lock().await;
        let pod = known(&mut slot, id)?;
        let setup = match (&pod.phase, pod.setup.take()) {
            (Phase::Created, Some(setup)) => setup,
            _ => {
                return Err(Error::FailedPrecondition(format!(
                    "sandbox {id:?} was already started"
                )))
            }
        };
        let (pid, exited) = self
            .inner
            .task
            .spawn_watched(|| holder::spawn(&setup, &pod.config, &pod.netns_path))?;
        let pidfd = crate::sys::pidfd_open(pid)
            .map_err(|e| Error::io(format!("open a pidfd for the pod's holder {pid}"), e))?;
        let exit = self.inner.exit.clone();
        tokio::spawn(async move {
            if let Ok(e) = exited.await {
                exit.send_replace(Some(ExitInfo {
                    status: e.status,
                    at: e.at,
                }));
            }
        });
        pod.phase = Phase::Running { pid, pidfd };
        log::info!("sandbox {id}: namespaces held by pid {pid}");
        Ok(StartSandboxResponse {
            pid,
            created_at: MessageField::some(timestamp(pod.created_at)),
            spec: MessageField::some(pod_spec(pod, pid)),
            ..Default::default()
        })
    }

    /// Stops the pod's containers (SIGTERM, then SIGKILL after `grace`) and its holder.
    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let mut slot = self.inner.pod.lock().await;
        let pod = known(&mut slot, id)?;
        self.inner.task.stop_all(grace).await;
        if let Phase::Running { pidfd, pid } = &pod.phase {
            let _ = crate::sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
            let mut exit = self.inner.exit.subscribe();
            let gone =
                tokio::time::timeout(Duration::from_secs(10), exit.wait_for(Option::is_some));
            if gone.await.is_err() {
                return Err(Error::FailedPrecondition(format!(
                    "sandbox {id:?}: its namespace holder {pid} did not exit after SIGKILL"
                )));
            }
        }
        pod.files.release();
        pod.phase = Phase::Stopped;
        Ok(())
    }

    async fn wait(&self, id: &str) -> Result<WaitSandboxResponse> {
        known(&mut *self.inner.pod.lock().await, id)?;
        let mut exit = self.inner.exit.subscribe();
        let info = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::NotFound(format!("sandbox {id:?} went away")))?
            .expect("waited for Some");
        Ok(WaitSandboxResponse {
            exit_status: info.status,
            exited_at: MessageField::some(timestamp(info.at)),
            ..Default::default()
        })
    }

    async fn status(&self, id: &str, verbose: bool) -> Result<SandboxStatusResponse> {
        let mut slot = self.inner.pod.lock().await;
        let pod = known(&mut slot, id)?;
        let exit = *self.inner.exit.borrow();
        let pid = match &pod.phase {
            Phase::Running { pid, .. } => *pid,
            _ => 0,
        };
        let ready = pid != 0 && exit.is_none();
        let mut resp = SandboxStatusResponse {
            sandbox_id: pod.id.clone(),
            pid,
            state: if ready {
                "SANDBOX_READY"
            } else {
                "SANDBOX_NOTREADY"
            }
            .to_string(),
            created_at: MessageField::some(timestamp(pod.created_at)),
            exited_at: exit.map(|e| timestamp(e.at)).into(),
            ..Default::default()
        };
        if verbose {
            let info = serde_json::json!({
                "pid": pid,
                "sandboxer": "shim",
                "runtimeType": self.inner.runtime_type,
                "netNamespacePath": pod.netns_path,
                "hostname": pod.config.hostname,
                "cgroupParent": pod.config.cgroup_parent,
            });
            resp.info.insert("info".to_string(), info.to_string());
        }
        Ok(resp)
    }

    async fn shutdown(&self, id: &str) -> Result<()> {
        {
            let mut slot = self.inner.pod.lock().await;
            known(&mut slot, id)?;
        }
        self.stop(id, Duration::ZERO).await?;
        // Containers containerd did not delete (it removes them before it shuts a pod down)
        // would otherwise keep their rootfs mounted.
        self.inner.task.delete_all().await;
        self.inner.task.hold_pod(None);
        self.inner.task.request_shutdown();
        Ok(())
    }

    async fn metrics(&self, id: &str) -> Result<SandboxMetricsResponse> {
        let parent = {
            let mut slot = self.inner.pod.lock().await;
            known(&mut slot, id)?.config.cgroup_parent.clone()
        };
        let cgroup = crate::metrics::Cgroup::of_pod(&parent).ok_or_else(|| {
            Error::NotFound(format!(
                "sandbox {id:?}: pod cgroup {parent:?} does not exist"
            ))
        })?;
        let mut resp = SandboxMetricsResponse::new();
        let metric = resp.mut_metrics();
        metric.timestamp = MessageField::some(timestamp(SystemTime::now()));
        metric.id = id.to_string();
        metric.data = MessageField::some(cgroup.stats()?);
        Ok(resp)
    }

    async fn ping(&self, id: &str) -> Result<()> {
        known(&mut *self.inner.pod.lock().await, id).map(|_| ())
    }
}

/// containerd's type URL for an OCI runtime spec (typeurl: JSON inside the Any).
const OCI_SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// The pod as an OCI runtime spec, which containerd 2.3+ keeps as the sandbox's spec (NRI
/// plugins read it): its hostname, cgroup parent and the namespaces its containers join.
fn pod_spec(pod: &Pod, pid: u32) -> protobuf::well_known_types::any::Any {
    use pod_config::NamespaceMode;
    let mut namespaces = Vec::new();
    if pod.config.network != NamespaceMode::Node {
        namespaces.push(serde_json::json!({"type": "network", "path": pod.netns_path}));
        namespaces.push(serde_json::json!({"type": "uts", "path": format!("/proc/{pid}/ns/uts")}));
    }
    if pod.config.ipc != NamespaceMode::Node {
        namespaces.push(serde_json::json!({"type": "ipc", "path": format!("/proc/{pid}/ns/ipc")}));
    }
    if pod.config.pid != NamespaceMode::Node {
        namespaces.push(serde_json::json!({"type": "pid", "path": format!("/proc/{pid}/ns/pid")}));
    }
    if pod.config.user_namespace {
        namespaces
            .push(serde_json::json!({"type": "user", "path": format!("/proc/{pid}/ns/user")}));
    }
    let spec = serde_json::json!({
        "ociVersion": "1.2.0",
        "hostname": pod.config.hostname,
        "linux": {
            "cgroupsPath": pod.config.cgroup_parent,
            "namespaces": namespaces,
            "sysctl": pod.config.sysctls,
        },
    });
    protobuf::well_known_types::any::Any {
        type_url: OCI_SPEC_TYPE.to_string(),
        value: spec.to_string().into_bytes(),
        ..Default::default()
    }
}

fn known<'a>(slot: &'a mut Option<Pod>, id: &str) -> Result<&'a mut Pod> {
    match slot {
        Some(pod) if pod.id == id => Ok(pod),
        _ => Err(Error::NotFound(format!(
            "sandbox {id:?} not found (not created on this shim)"
        ))),
    }
}

/// containerd's name for this machine's architecture (Go's GOARCH).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_spec_names_the_namespaces_containers_join() {
        let pod = Pod {
            id: "p".into(),
            netns_path: "/run/netns/cni-1".into(),
            config: PodConfig {
                hostname: "web-0".into(),
                cgroup_parent: "/kubepods/pod1".into(),
                ..Default::default()
            },
            setup: None,
            files: Arc::new(PodFiles::detached("p")),
            created_at: SystemTime::now(),
            phase: Phase::Created,
        };
        let any = pod_spec(&pod, 42);
        assert_eq!(any.type_url, OCI_SPEC_TYPE);
        let spec: serde_json::Value = serde_json::from_slice(&any.value).unwrap();
        assert_eq!(spec["hostname"], "web-0");
        assert_eq!(spec["linux"]["cgroupsPath"], "/kubepods/pod1");
        let ns = spec["linux"]["namespaces"].as_array().unwrap();
        let path = |t: &str| {
            ns.iter()
                .find(|n| n["type"] == t)
                .map(|n| n["path"].clone())
        };
        assert_eq!(path("network").unwrap(), "/run/netns/cni-1");
        assert_eq!(path("ipc").unwrap(), "/proc/42/ns/ipc");
        assert_eq!(path("pid").unwrap(), "/proc/42/ns/pid");
    }
}
