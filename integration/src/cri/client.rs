//! A CRI client (the `k8s-cri` crate's tonic clients over containerd's unix socket), the pods
//! a test runs (removed when dropped, also when the test panics) and config builders.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{self, Status};
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

/// A pod sandbox of a test; stopped and removed when dropped.
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
    pub log_dir: PathBuf,
    pub cri: Cri,
    daemon: &'static CriDaemon,
    containers: std::sync::Mutex<Vec<String>>,
}

/// A container config running `cmd` in the busybox image, logging to `<name>.log`, in a PID
/// namespace of its own.
pub fn container_config(name: &str, cmd: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image::BUSYBOX.to_string(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources::default()),
            // As kubelet sends it: a PID namespace of the container's own.
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// A container that sleeps until stopped.
pub fn sleeper(name: &str) -> ContainerConfig {
    container_config(name, &["sleep", "3600"])
}

/// The security context of a container config, created if absent.
pub fn security(config: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The resources of a container config, created if absent.
pub fn resources(config: &mut ContainerConfig) -> &mut LinuxContainerResources {
    config
        .linux
        .get_or_insert_with(Default::default)
        .resources
        .get_or_insert_with(Default::default)
}

/// The pod-level security context of a pod config, created if absent.
pub fn pod_security(config: &mut PodSandboxConfig) -> &mut LinuxSandboxSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The pod-level namespace options, created if absent.
pub fn pod_namespaces(config: &mut PodSandboxConfig) -> &mut NamespaceOption {
    pod_security(config)
        .namespace_options
        .get_or_insert_with(Default::default)
}

pub fn seccomp(kind: security_profile::ProfileType, localhost: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: localhost.to_string(),
    })
}

/// The `info` JSON of a verbose status response.
pub fn verbose_info(info: &HashMap<String, String>) -> serde_json::Value {
    info.get("info")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null)
}

impl Pod {
    pub fn name(&self) -> &str {
        &self.config.metadata.as_ref().expect("metadata").name
    }

    pub async fn create(&self, config: ContainerConfig) -> Result<String, Status> {
        let id = self
            .cri
            .create_container(&self.id, config, &self.config)
            .await?;
        self.containers.lock().unwrap().push(id.clone());
        Ok(id)
    }

    /// Creates and starts a container; panics with CRI's error.
    pub async fn run(&self, config: ContainerConfig) -> String {
        let name = config.metadata.as_ref().map(|m| m.name.clone());
        let id = match self.create(config).await {
            Ok(id) => id,
            Err(e) => panic!("CreateContainer {name:?}: {e:?}"),
        };
        if let Err(e) = self.cri.start_container(&id).await {
            panic!("StartContainer {name:?}: {e:?}");
        }
        id
    }

    pub async fn status(&self, id: &str) -> ContainerStatus {
        self.cri
            .container_status(id)
            .await
            .expect("ContainerStatus")
            .status
            .expect("ContainerStatus without status")
    }

    /// The container's init pid here (verbose ContainerStatus, which has containerd's).
    pub async fn container_pid(&self, id: &str) -> u32 {
        let resp = self
            .cri
            .container_status(id)
            .await
            .expect("ContainerStatus");
        let info = verbose_info(&resp.info);
        let pid = info["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("no pid in the verbose status: {info}"));
        self.daemon.host_pid(pid as u32)
    }

    /// The pause container's pid here (verbose PodSandboxStatus, which has containerd's).
    pub async fn sandbox_pid(&self) -> u32 {
        let resp = self
            .cri
            .pod_status(&self.id)
            .await
            .expect("PodSandboxStatus");
        let info = verbose_info(&resp.info);
        let pid = info["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("no pid in the verbose status: {info}"));
        self.daemon.host_pid(pid as u32)
    }

    pub async fn ip(&self) -> String {
        let resp = self
            .cri
            .pod_status(&self.id)
            .await
            .expect("PodSandboxStatus");
        resp.status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default()
    }

    /// Waits until the container has exited; returns its status.
    pub async fn wait_exited(&self, id: &str, timeout: Duration) -> ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(id).await;
            if status.state == ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} still not exited after {timeout:?}: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// ExecSync, panicking on a CRI error; (stdout, stderr, exit code).
    pub async fn exec(&self, id: &str, cmd: &[&str]) -> (String, String, i32) {
        match self.cri.exec_sync(id, cmd, 30).await {
            Ok(r) => (
                String::from_utf8_lossy(&r.stdout).into_owned(),
                String::from_utf8_lossy(&r.stderr).into_owned(),
                r.exit_code,
            ),
            Err(e) => panic!("ExecSync {cmd:?} in {id}: {e:?}"),
        }
    }

    /// ExecSync that must exit 0; its stdout.
    pub async fn exec_ok(&self, id: &str, cmd: &[&str]) -> String {
        let (out, err, code) = self.exec(id, cmd).await;
        assert_eq!(code, 0, "ExecSync {cmd:?} exited {code}: {out}{err}");
        out
    }

    /// The log file of container `name` (as `container_config` names it).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// The messages of a CRI log file ("<time> <stream> <P|F> <message>" lines), as
    /// (stream, message) with partial lines joined.
    pub fn log_lines(&self, name: &str) -> Vec<(String, String)> {
        parse_cri_log(&std::fs::read_to_string(self.log_path(name)).unwrap_or_default())
    }

    /// Waits until container `name`'s log has a line containing `needle`; returns the log.
    pub async fn wait_log(&self, name: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log of {name} after {timeout:?}: {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// containerd's log lines about this pod and its containers.
    pub fn daemon_log(&self) -> String {
        let ids: Vec<String> = std::iter::once(self.id.clone())
            .chain(self.containers.lock().unwrap().iter().cloned())
            .collect();
        self.daemon
            .log()
            .lines()
            .filter(|l| ids.iter().any(|id| l.contains(id.as_str())))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Parses a CRI log: `<RFC3339Nano time> <stdout|stderr> <P|F> <message>` per line, P lines
/// continued by the next line of the same stream.
pub fn parse_cri_log(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut partial: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(_time), Some(stream), Some(tag), msg) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let acc = partial.entry(stream.to_string()).or_default();
        acc.push_str(msg.unwrap_or(""));
        if tag == "F" {
            out.push((stream.to_string(), std::mem::take(acc)));
        }
    }
    out
}

impl Drop for Pod {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- containerd log about pod {} ----\n{}\n---- end ----",
                self.id,
                self.daemon_log()
            );
        }
        let id = self.id.clone();
        let socket = self.daemon.socket();
        // A runtime of its own: the test's may be shutting down or blocked on this thread.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let cri = Cri::connect(&socket).await;
                let mut err = None;
                for _ in 0..3 {
                    let stopped = cri.stop_pod(&id).await;
                    let removed = match stopped {
                        Ok(()) => cri.remove_pod(&id).await,
                        Err(e) => Err(e),
                    };
                    match removed {
                        Ok(()) => return None,
                        Err(e) if e.code() == tonic::Code::NotFound => return None,
                        Err(e) => err = Some(e),
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                err
            })
        })
        .join();
        match done {
            Ok(None) => {}
            Ok(Some(e)) => {
                let msg = format!("cleanup: removing pod {} failed: {e:?}", self.id);
                if std::thread::panicking() {
                    eprintln!("{msg}");
                } else {
                    panic!("{msg}");
                }
            }
            Err(_) => eprintln!("cleanup of pod {} panicked", self.id),
        }
    }
}

/// The parent pid of `pid` (from `/proc/PID/stat`).
pub fn ppid(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "pid (comm) state ppid ...": comm may hold spaces, so split after its closing paren.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no parent pid for {pid}: {stat:?}"))
}

/// The file name of the program `pid` runs (`/proc/PID/exe`).
pub fn exe_name(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

/// The namespace link of `pid` (`/proc/PID/ns/KIND`), as `readlink` prints it.
pub fn ns_link(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| panic!("readlink /proc/{pid}/ns/{kind}: {e}"))
}

/// The value of `field` in a `/proc/PID/status` text ("Seccomp", "CapEff", "Groups", ...).
pub fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field}: in {status:?}"))
}

/// A hexadecimal capability set of `/proc/PID/status` as a number.
pub fn cap_set(status: &str, field: &str) -> u64 {
    u64::from_str_radix(&status_field(status, field), 16).expect("capability set")
}
