//! The Sandbox API (containerd 2.x's `sandboxer = "shim"`) spoken to each shim directly, as
//! containerd's sandbox controller speaks it: the start protocol for a pod's shim, every method,
//! the errors of bad input, and what a stopped, shut down or killed pod leaves (nothing). The
//! CRI suite runs the same through containerd (`INTEGRATION_CRI_SANDBOXER=shim`).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration::runtime::shim_bin_dir;
use k8s_cri::v1 as cri;
use prost::Message as _;
use protobuf::well_known_types::any::Any;
use protos::sandbox_api::*;
use protos::sandbox_async::SandboxClient;
use ttrpc::context;
use ttrpc::Code;

const SHIMS: [&str; 2] = ["containerd-shim-runc-rs-v2", "containerd-shim-sandbox-v2"];
const NAMESPACE: &str = "it-sbx";

/// A pod's shim as containerd's sandbox controller starts it: in a bundle under the
/// controller's state directory, without config.json.
struct PodShim {
    dir: tempfile::TempDir,
    id: String,
    bundle: PathBuf,
    address: String,
    client: SandboxClient,
    /// A process in a network namespace of its own: the pod's netns, as CRI makes one.
    netns_owner: Child,
}

impl PodShim {
    async fn start(binary: &str, id: &str) -> PodShim {
        let dir = tempfile::Builder::new()
            .prefix("it-sbx-")
            .tempdir()
            .unwrap();
        let bundle = dir
            .path()
            .join("io.containerd.sandbox.controller.v1.shim")
            .join(NAMESPACE)
            .join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        let out = Command::new(shim_bin_dir().join(binary))
            .args(["-namespace", NAMESPACE, "-id", id, "-address"])
            .arg(dir.path().join("containerd.sock"))
            .arg("start")
            .current_dir(&bundle)
            .env("TTRPC_ADDRESS", dir.path().join("containerd.sock.ttrpc"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "start: {out:?}");
        // A pod's shim answers containerd 2.0–2.2 with bootstrap parameters: task API 3.
        let params: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("start's output is not JSON ({e}): {out:?}"));
        assert_eq!(params["version"], 3, "{params}");
        assert_eq!(params["protocol"], "ttrpc", "{params}");
        let address = params["address"].as_str().unwrap().to_string();
        let client = SandboxClient::new(ttrpc::r#async::Client::connect(&address).await.unwrap());
        let netns_owner = Command::new("unshare")
            .args(["--net", "sleep", "600"])
            .spawn()
            .unwrap();
        let netns = format!("/proc/{}/ns/net", netns_owner.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(&netns).ok() == std::fs::read_link("/proc/self/ns/net").ok() {
            assert!(
                Instant::now() < deadline,
                "unshare made no network namespace"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        PodShim {
            dir,
            id: id.to_string(),
            bundle,
            address,
            client,
            netns_owner,
        }
    }

    fn netns(&self) -> String {
        format!("/proc/{}/ns/net", self.netns_owner.id())
    }

    fn shim_pid(&self) -> u32 {
        std::fs::read_to_string(self.bundle.join("shim.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn create_request(&self, netns: &str) -> CreateSandboxRequest {
        let config = cri::PodSandboxConfig {
            hostname: "sbx-host".into(),
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.9.9.9".into()],
                ..Default::default()
            }),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                sysctls: [("net.ipv4.ip_unprivileged_port_start".into(), "80".into())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        CreateSandboxRequest {
            sandbox_id: self.id.clone(),
            bundle_path: self.bundle.display().to_string(),
            netns_path: netns.to_string(),
            options: protobuf::MessageField::some(Any {
                type_url: "runtime.v1.PodSandboxConfig".into(),
                value: config.encode_to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn shm_mounted(&self) -> bool {
        let target = self.bundle.join("pod/shm").display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
    }
}

impl Drop for PodShim {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.bundle.join("shim.pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        let _ = self.netns_owner.kill();
        let _ = self.netns_owner.wait();
        let _ = nix::mount::umount2(
            &self.bundle.join("pod/shm"),
            nix::mount::MntFlags::MNT_DETACH,
        );
        let _ = std::fs::remove_file(self.address.trim_start_matches("unix://"));
        let _ = self.dir.path();
    }
}

fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(20).as_nanos() as i64)
}

fn code_of(e: ttrpc::Error) -> (Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
        other => panic!("not a status: {other:?}"),
    }
}

fn wait_gone(pid: u32, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        assert!(
            Instant::now() < deadline,
            "{what} (pid {pid}) still there after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}

fn ns(pid: u32, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_through_every_method_and_its_bad_input() {
    if !integration::is_root() {
        return;
    }
    for binary in SHIMS {
        let pod = PodShim::start(binary, &format!("sbx-life-{}", binary.len())).await;
        let c = &pod.client;

        // Nothing before CreateSandbox.
        let start = StartSandboxRequest {
            sandbox_id: pod.id.clone(),
            ..Default::default()
        };
        let (code, msg) = code_of(c.start_sandbox(ctx(), &start).await.unwrap_err());
        assert_eq!(
            code,
            Code::NOT_FOUND,
            "{binary}: StartSandbox before Create: {msg}"
        );

        // A netns that does not exist: named, and nothing is made.
        let bad = pod.create_request("/run/netns/it-sbx-no-such-netns");
        let (code, msg) = code_of(c.create_sandbox(ctx(), &bad).await.unwrap_err());
        assert_eq!(code, Code::INVALID_ARGUMENT, "{binary}: {msg}");
        assert!(
            msg.contains("/run/netns/it-sbx-no-such-netns"),
            "{binary}: {msg}"
        );
        assert!(
            !pod.bundle.join("pod").exists(),
            "{binary}: a refused pod made files"
        );

        c.create_sandbox(ctx(), &pod.create_request(&pod.netns()))
            .await
            .unwrap();
        let (code, msg) = code_of(
            c.create_sandbox(ctx(), &pod.create_request(&pod.netns()))
                .await
                .unwrap_err(),
        );
        assert_eq!(
            code,
            Code::ALREADY_EXISTS,
            "{binary}: second CreateSandbox: {msg}"
        );
        assert!(pod.shm_mounted(), "{binary}: no pod shm");
        let resolv = std::fs::read_to_string(pod.bundle.join("pod/resolv.conf")).unwrap();
        assert_eq!(resolv, "nameserver 10.9.9.9\n", "{binary}");

        let started = c.start_sandbox(ctx(), &start).await.unwrap();
        let holder = started.pid;
        assert!(holder > 0, "{binary}: {started:?}");
        assert_eq!(
            std::fs::read_to_string(format!("/proc/{holder}/comm"))
                .unwrap()
                .trim(),
            "pod-ns-holder"
        );
        assert_eq!(
            ns(holder, "net"),
            std::fs::read_link(pod.netns()).unwrap(),
            "{binary}"
        );
        for kind in ["uts", "ipc", "pid"] {
            assert_ne!(
                ns(holder, kind),
                ns(std::process::id(), kind),
                "{binary}: {kind}"
            );
        }
        let hostname = Command::new("nsenter")
            .args(["-t", &holder.to_string(), "-u", "hostname"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&hostname.stdout).trim(), "sbx-host");
        let sysctl = Command::new("nsenter")
            .args(["-t", &holder.to_string(), "-n", "cat"])
            .arg("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&sysctl.stdout).trim(),
            "80",
            "{binary}"
        );
        let (code, _) = code_of(c.start_sandbox(ctx(), &start).await.unwrap_err());
        assert_eq!(
            code,
            Code::FAILED_PRECONDITION,
            "{binary}: a second StartSandbox"
        );

        let status_req = SandboxStatusRequest {
            sandbox_id: pod.id.clone(),
            verbose: true,
            ..Default::default()
        };
        let status = c.sandbox_status(ctx(), &status_req).await.unwrap();
        assert_eq!(status.state, "SANDBOX_READY", "{binary}");
        assert_eq!(status.pid, holder, "{binary}");
        let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
        assert_eq!(info["pid"], holder, "{binary}: {info}");

        let platform = c
            .platform(
                ctx(),
                &PlatformRequest {
                    sandbox_id: pod.id.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(platform.platform.os, "linux");
        assert!(!platform.platform.architecture.is_empty());
        c.ping_sandbox(
            ctx(),
            &PingRequest {
                sandbox_id: pod.id.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let other = PingRequest {
            sandbox_id: "someone-else".into(),
            ..Default::default()
        };
        let (code, _) = code_of(c.ping_sandbox(ctx(), &other).await.unwrap_err());
        assert_eq!(code, Code::NOT_FOUND, "{binary}: another sandbox's id");

        // WaitSandbox returns when the pod is stopped; the namespaces and the shm go.
        let waiter = {
            let c = c.clone();
            let req = WaitSandboxRequest {
                sandbox_id: pod.id.clone(),
                ..Default::default()
            };
            tokio::spawn(async move { c.wait_sandbox(context::Context::default(), &req).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !waiter.is_finished(),
            "{binary}: WaitSandbox returned while the pod runs"
        );
        let stop = StopSandboxRequest {
            sandbox_id: pod.id.clone(),
            ..Default::default()
        };
        c.stop_sandbox(ctx(), &stop).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("WaitSandbox returns after StopSandbox")
            .unwrap()
            .unwrap();
        assert_eq!(waited.exit_status, 137, "{binary}: {waited:?}");
        assert!(waited.exited_at.is_some());
        wait_gone(holder, "the pod's namespace holder", Duration::from_secs(5));
        assert!(
            !pod.shm_mounted(),
            "{binary}: the pod's shm is still mounted"
        );
        let status = c.sandbox_status(ctx(), &status_req).await.unwrap();
        assert_eq!(status.state, "SANDBOX_NOTREADY", "{binary}");
        c.stop_sandbox(ctx(), &stop)
            .await
            .expect("StopSandbox again is fine");

        let shim = pod.shim_pid();
        let shutdown = ShutdownSandboxRequest {
            sandbox_id: pod.id.clone(),
            ..Default::default()
        };
        c.shutdown_sandbox(ctx(), &shutdown).await.unwrap();
        wait_gone(
            shim,
            "the pod's shim after ShutdownSandbox",
            Duration::from_secs(10),
        );
        assert!(
            !Path::new(pod.address.trim_start_matches("unix://")).exists(),
            "{binary}: the shim's socket is left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pod_shim_leaves_nothing() {
    if !integration::is_root() {
        return;
    }
    for binary in SHIMS {
        let pod = PodShim::start(binary, &format!("sbx-kill-{}", binary.len())).await;
        let c = &pod.client;
        c.create_sandbox(ctx(), &pod.create_request(&pod.netns()))
            .await
            .unwrap();
        let start = StartSandboxRequest {
            sandbox_id: pod.id.clone(),
            ..Default::default()
        };
        let holder = c.start_sandbox(ctx(), &start).await.unwrap().pid;
        let shim = pod.shim_pid();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(shim as i32),
            nix::sys::signal::SIGKILL,
        )
        .unwrap();
        // The holder dies with its shim: the pod's namespaces are released.
        wait_gone(
            holder,
            "the namespace holder of a killed shim",
            Duration::from_secs(5),
        );
        // containerd's clean-up after a dead shim: the `delete` action in the bundle.
        let out = Command::new(shim_bin_dir().join(binary))
            .args(["-namespace", NAMESPACE, "-id", &pod.id, "-address"])
            .arg(pod.dir.path().join("containerd.sock"))
            .arg("delete")
            .current_dir(&pod.bundle)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{binary}: delete: {out:?}");
        assert!(
            !pod.shm_mounted(),
            "{binary}: a dead pod's shm stays mounted after delete"
        );
        assert!(
            !Path::new(pod.address.trim_start_matches("unix://")).exists(),
            "{binary}: a dead shim's socket is left after delete"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_shim_whose_sandbox_failed_ends_itself() {
    if !integration::is_root() {
        return;
    }
    let pod = PodShim::start(SHIMS[0], "sbx-failed").await;
    let bad = pod.create_request("/run/netns/it-sbx-no-such-netns");
    let (code, _) = code_of(pod.client.create_sandbox(ctx(), &bad).await.unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);
    // containerd 2.1 asks a shim whose CreateSandbox failed to shut down, but not every
    // failure path does: the shim does not wait for that forever.
    wait_gone(
        pod.shim_pid(),
        "a shim whose sandbox failed",
        Duration::from_secs(20),
    );
}
