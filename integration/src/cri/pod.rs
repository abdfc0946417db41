//! A pod a CRI test runs: its containers, execs and logs; stopped and removed when dropped,
//! also when the test panics.
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use containerd_client::tonic::{self, Status};
use k8s_cri::v1::*;

use super::builders::verbose_info;
use super::client::Cri;
use super::daemon::CriDaemon;

/// A pod sandbox of a test; stopped and removed when dropped.
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
    pub log_dir: PathBuf,
    pub cri: Cri,
    pub(super) daemon: &'static CriDaemon,
    pub(super) containers: std::sync::Mutex<Vec<String>>,
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
