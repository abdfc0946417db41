//! A CRI client (the `k8s-cri` crate's tonic clients over containerd's unix socket) and what
//! a test body gets ([`Ctx`]); the pods it runs are in `pod.rs`, config builders in
//! `builders.rs`, /proc readers in `procfs.rs` (all re-exported here).
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Status;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;

use super::daemon::{CriDaemon, Handler};
use super::image;

/// How long any one CRI call may take before the test fails.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

/// Runs a CRI call with [`CALL_TIMEOUT`]; a timeout is a `DEADLINE_EXCEEDED` status.
macro_rules! call {
    ($client:expr, $method:ident, $req:expr) => {{
        let mut c = $client.clone();
        match tokio::time::timeout(CALL_TIMEOUT, c.$method($req)).await {
            Ok(r) => r.map(|r| r.into_inner()),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "{} took longer than {:?}",
                stringify!($method),
                CALL_TIMEOUT
            ))),
        }
    }};
}

impl Cri {
    pub async fn connect(socket: &Path) -> Self {
        let channel = containerd_client::connect(socket)
            .await
            .expect("connect to containerd's CRI socket");
        Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        }
    }

    /// Ok when the runtime and the network are ready and both images are known.
    pub async fn ready(&self) -> Result<(), String> {
        let status = call!(self.runtime, status, StatusRequest { verbose: false })
            .map_err(|e| format!("Status: {e}"))?;
        let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
        for kind in ["RuntimeReady", "NetworkReady"] {
            let ok = conditions.iter().any(|c| c.r#type == kind && c.status);
            if !ok {
                return Err(format!("{kind} is not true: {conditions:?}"));
            }
        }
        for name in [image::BUSYBOX, image::PAUSE, image::NO_ENV] {
            let req = ImageStatusRequest {
                image: Some(ImageSpec {
                    image: name.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            };
            let found = call!(self.images, image_status, req).map_err(|e| e.to_string())?;
            if found.image.is_none() {
                return Err(format!("image {name} not known to CRI yet"));
            }
        }
        Ok(())
    }

    pub async fn run_pod_sandbox(
        &self,
        config: PodSandboxConfig,
        handler: &str,
    ) -> Result<String, Status> {
        let req = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: handler.to_string(),
        };
        call!(self.runtime, run_pod_sandbox, req).map(|r| r.pod_sandbox_id)
    }

    pub async fn stop_pod(&self, id: &str) -> Result<(), Status> {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        call!(self.runtime, stop_pod_sandbox, req).map(|_| ())
    }

    pub async fn remove_pod(&self, id: &str) -> Result<(), Status> {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        call!(self.runtime, remove_pod_sandbox, req).map(|_| ())
    }

    pub async fn pod_status(&self, id: &str) -> Result<PodSandboxStatusResponse, Status> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: true,
        };
        call!(self.runtime, pod_sandbox_status, req)
    }

    pub async fn list_pods(&self) -> Result<Vec<PodSandbox>, Status> {
        let req = ListPodSandboxRequest { filter: None };
        call!(self.runtime, list_pod_sandbox, req).map(|r| r.items)
    }

    pub async fn create_container(
        &self,
        pod_id: &str,
        config: ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String, Status> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        };
        call!(self.runtime, create_container, req).map(|r| r.container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<(), Status> {
        let req = StartContainerRequest {
            container_id: id.to_string(),
        };
        call!(self.runtime, start_container, req).map(|_| ())
    }

    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<(), Status> {
        let req = StopContainerRequest {
            container_id: id.to_string(),
            timeout,
        };
        call!(self.runtime, stop_container, req).map(|_| ())
    }

    pub async fn remove_container(&self, id: &str) -> Result<(), Status> {
        let req = RemoveContainerRequest {
            container_id: id.to_string(),
        };
        call!(self.runtime, remove_container, req).map(|_| ())
    }

    pub async fn container_status(&self, id: &str) -> Result<ContainerStatusResponse, Status> {
        let req = ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: true,
        };
        call!(self.runtime, container_status, req)
    }

    pub async fn list_containers(&self, pod_id: &str) -> Result<Vec<Container>, Status> {
        let req = ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod_id.to_string(),
                ..Default::default()
            }),
        };
        call!(self.runtime, list_containers, req).map(|r| r.containers)
    }

    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<ExecSyncResponse, Status> {
        let req = ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        call!(self.runtime, exec_sync, req)
    }

    pub async fn exec(&self, req: ExecRequest) -> Result<String, Status> {
        call!(self.runtime, exec, req).map(|r| r.url)
    }

    pub async fn attach(&self, req: AttachRequest) -> Result<String, Status> {
        call!(self.runtime, attach, req).map(|r| r.url)
    }

    pub async fn port_forward(&self, pod_id: &str, ports: &[i32]) -> Result<String, Status> {
        let req = PortForwardRequest {
            pod_sandbox_id: pod_id.to_string(),
            port: ports.to_vec(),
        };
        call!(self.runtime, port_forward, req).map(|r| r.url)
    }

    pub async fn reopen_log(&self, id: &str) -> Result<(), Status> {
        let req = ReopenContainerLogRequest {
            container_id: id.to_string(),
        };
        call!(self.runtime, reopen_container_log, req).map(|_| ())
    }

    pub async fn container_stats(&self, id: &str) -> Result<ContainerStats, Status> {
        let req = ContainerStatsRequest {
            container_id: id.to_string(),
        };
        call!(self.runtime, container_stats, req)
            .map(|r| r.stats.expect("ContainerStats without stats"))
    }

    pub async fn list_container_stats(&self, pod_id: &str) -> Result<Vec<ContainerStats>, Status> {
        let req = ListContainerStatsRequest {
            filter: Some(ContainerStatsFilter {
                pod_sandbox_id: pod_id.to_string(),
                ..Default::default()
            }),
        };
        call!(self.runtime, list_container_stats, req).map(|r| r.stats)
    }

    pub async fn update_resources(
        &self,
        id: &str,
        resources: LinuxContainerResources,
    ) -> Result<(), Status> {
        let req = UpdateContainerResourcesRequest {
            container_id: id.to_string(),
            linux: Some(resources),
            ..Default::default()
        };
        call!(self.runtime, update_container_resources, req).map(|_| ())
    }
}

/// What a CRI test body gets.
pub struct Ctx {
    pub handler: Handler,
    pub daemon: &'static CriDaemon,
    pub cri: Cri,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Ctx {
    /// A unique pod name for this test (`base`, the handler, a sequence number).
    pub fn unique(&self, base: &str) -> String {
        format!(
            "{base}-{}-{}",
            self.handler.name(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        )
    }

    /// A pod config: unique name and uid, its own log directory, cgroups below the suite's
    /// parent, pod network, pod-level PID namespace off (each container its own).
    pub fn pod_config(&self, base: &str) -> PodSandboxConfig {
        let name = self.unique(base);
        let log_dir = self.daemon.dir().join("logs").join(&name);
        std::fs::create_dir_all(&log_dir).expect("pod log dir");
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.clone(),
                uid: format!("uid-{name}"),
                namespace: "cri-it".to_string(),
                attempt: 0,
            }),
            hostname: name.chars().take(63).collect(),
            log_directory: log_dir.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/{name}", self.daemon.cgroup_parent()),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Runs a pod of `config` on this test's handler; panics with CRI's error.
    pub async fn run_pod(&self, config: PodSandboxConfig) -> Pod {
        match self.try_run_pod(config).await {
            Ok(pod) => pod,
            Err(e) => panic!("RunPodSandbox on {}: {e:?}", self.handler.name()),
        }
    }

    pub async fn try_run_pod(&self, config: PodSandboxConfig) -> Result<Pod, Status> {
        let id = self
            .cri
            .run_pod_sandbox(config.clone(), self.handler.name())
            .await?;
        Ok(Pod {
            id,
            log_dir: PathBuf::from(&config.log_directory),
            config,
            cri: self.cri.clone(),
            daemon: self.daemon,
            containers: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Records a failure this handler is known to have (reported, not fixed by the suite),
    /// with the error's text, as a skip: the run stays green and its summary lists it. A test
    /// calls it only for that exact error; any other failure still fails.
    pub fn known_failure(&self, what: &str, error: &str) {
        crate::runtime::skip(&format!(
            "known failure on {}: {what}: {error}",
            self.handler.name()
        ));
    }

    /// Whether this containerd's cgroups offer `controllers`; records a skip when not (the
    /// cgroup v2 view of a hybrid host has none: v1 holds them).
    pub fn has_controllers(&self, controllers: &[&str]) -> bool {
        if !self.daemon.cgroup_v2() {
            return true;
        }
        let root = crate::daemon::host_cgroup_v2_root();
        let have = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        match controllers
            .iter()
            .find(|c| !have.split_whitespace().any(|h| h == **c))
        {
            Some(missing) => {
                crate::runtime::skip(&format!("cgroup v2 offers no {missing} controller here"));
                false
            }
            None => true,
        }
    }
}

pub use super::builders::*;
pub use super::pod::{parse_cri_log, Pod};
pub use super::procfs::*;
