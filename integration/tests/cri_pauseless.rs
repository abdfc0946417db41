//! CRI pods without a pause container (containerd 2.x, `sandboxer = "shim"`): the pod is held
//! by the shim itself through the Sandbox API. The rest of the CRI suite runs in this mode too
//! (`INTEGRATION_CRI_SANDBOXER=shim`); these cases check what only this mode has.
use std::time::{Duration, Instant};

use integration::cri::client::*;
use integration::cri::{pauseless, Ctx, Handler};

async fn run(handler: Handler, body: impl AsyncFnOnce(Ctx)) {
    pauseless::force();
    integration::cri::run(handler, |ctx| async move {
        if !ctx.pauseless() {
            integration::runtime::skip(&format!(
                "pods without a pause container need containerd 2.x (this is {}.{})",
                ctx.daemon.version().0,
                ctx.daemon.version().1
            ));
            return;
        }
        body(ctx).await
    })
    .await
}

/// A pod's bundle in containerd's sandbox controller state, as seen from here.
fn pod_bundle(ctx: &Ctx, pod: &str) -> std::path::PathBuf {
    let state = ctx
        .daemon
        .dir()
        .join("state/io.containerd.sandbox.controller.v1.shim/k8s.io");
    ctx.daemon.seen_from_here(&state).join(pod)
}

/// The mounts of a pod's shm still in containerd's mount namespace.
fn shm_mounts(ctx: &Ctx, pod: &str) -> Vec<String> {
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", ctx.daemon.pid())).unwrap();
    let needle = format!("{pod}/pod/shm");
    mounts
        .lines()
        .filter(|l| l.contains(&needle))
        .map(String::from)
        .collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// No pause container, no pause image used; the pod's shim holds its namespaces, its
/// containers share them and the pod's files; stopping and removing the pod leaves nothing.
async fn pod_without_a_pause_container(ctx: Ctx) {
    let mut config = ctx.pod_config("nopause");
    config.dns_config = Some(integration::cri::api::DnsConfig {
        servers: vec!["10.77.0.10".into()],
        searches: vec!["pods.test".into()],
        ..Default::default()
    });
    let hostname = config.hostname.clone();
    let pod = ctx.run_pod(config).await;
    let a = pod.run(sleeper("a")).await;
    let b = pod.run(sleeper("b")).await;

    let holder = pod.sandbox_pid().await;
    assert_eq!(comm(holder), "pod-ns-holder", "the pod's pid {holder}");
    let shim = ppid(holder);
    assert_eq!(exe_name(shim), ctx.handler.shim_binary());
    for c in [&a, &b] {
        let pid = pod.container_pid(c).await;
        assert_eq!(
            ppid(pid),
            shim,
            "container {c} is not served by the pod's shim"
        );
        for kind in ["net", "ipc", "uts"] {
            assert_eq!(
                ns_link(&pid.to_string(), kind),
                ns_link(&holder.to_string(), kind),
                "container {c}'s {kind} namespace"
            );
        }
    }
    // containerd has no container, no snapshot and no process for a pause container.
    let containers = ctx.daemon.ctr(&["containers", "ls", "-q"]);
    let containers = String::from_utf8_lossy(&containers.stdout);
    assert!(
        containers.contains(&a),
        "ctr lists no app container: {containers}"
    );
    assert!(
        !containers.contains(&pod.id),
        "a pause container exists: {containers}"
    );
    let snapshots = ctx.daemon.ctr(&["snapshots", "ls"]);
    let snapshots = String::from_utf8_lossy(&snapshots.stdout);
    assert!(
        !snapshots.contains(&pod.id),
        "a pause snapshot exists: {snapshots}"
    );
    let pauses: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        // Processes come and go while /proc is read: one that is gone is no pause.
        .filter(|pid| comm(*pid) == "pause" && parent(*pid) == Some(shim))
        .collect();
    assert!(
        pauses.is_empty(),
        "pause processes under the pod's shim: {pauses:?}"
    );

    // The pod's files, as CRI gives them with a pause container.
    assert_eq!(
        pod.exec_ok(&a, &["cat", "/etc/hostname"]).await.trim(),
        hostname
    );
    let resolv = pod.exec_ok(&a, &["cat", "/etc/resolv.conf"]).await;
    assert_eq!(resolv, "search pods.test\nnameserver 10.77.0.10\n");
    pod.exec_ok(&a, &["sh", "-c", "echo shared > /dev/shm/from-a"])
        .await;
    assert_eq!(
        pod.exec_ok(&b, &["cat", "/dev/shm/from-a"]).await.trim(),
        "shared"
    );

    let bundle = pod_bundle(&ctx, &pod.id);
    assert!(
        bundle.join("pod/shm").is_dir(),
        "no pod files in {}",
        bundle.display()
    );
    ctx.cri.stop_pod(&pod.id).await.expect("StopPodSandbox");
    wait_gone(holder, "the pod's namespace holder after StopPodSandbox").await;
    let left = shm_mounts(&ctx, &pod.id);
    assert!(left.is_empty(), "the pod's shm stays mounted: {left:#?}");
    ctx.cri.remove_pod(&pod.id).await.expect("RemovePodSandbox");
    wait_gone(shim, "the pod's shim after RemovePodSandbox").await;
    assert!(
        !bundle.exists(),
        "the pod's bundle {} is left",
        bundle.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_without_a_pause_container_runc_rs() {
    run(Handler::RuncRsRunc, pod_without_a_pause_container).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_without_a_pause_container_sandbox() {
    run(Handler::Sandbox, pod_without_a_pause_container).await
}

/// The pod's shim killed mid-pod: its holder goes with it, CRI sees the pod not ready, and
/// stopping and removing the pod works and leaves no process, mount or bundle.
async fn killed_pod_shim(ctx: Ctx) {
    let pod = ctx.run_pod(ctx.pod_config("shimkill")).await;
    let a = pod.run(sleeper("a")).await;
    let holder = pod.sandbox_pid().await;
    let shim = ppid(holder);
    let app = pod.container_pid(&a).await;
    let bundle = pod_bundle(&ctx, &pod.id);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    wait_gone(holder, "the namespace holder of a killed shim").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = ctx
            .cri
            .pod_status(&pod.id)
            .await
            .expect("PodSandboxStatus")
            .status
            .unwrap()
            .state;
        if state == integration::cri::api::PodSandboxState::SandboxNotready as i32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pod stays ready after its shim was killed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The container dies with the pod (the pod's `delete` clean-up kills it); CRI hears of it
    // through its own retries of the container's exit (containerd can no longer delete the
    // task through the dead shim), so it may still call it running for a moment.
    wait_gone(app, "the pod's container after its shim died").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = ctx
            .cri
            .container_status(&a)
            .await
            .expect("ContainerStatus")
            .status
            .unwrap()
            .state;
        if state == integration::cri::api::ContainerState::ContainerExited as i32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "CRI still calls the dead pod's container {state}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ctx.cri
        .stop_pod(&pod.id)
        .await
        .expect("StopPodSandbox after the shim died");
    ctx.cri
        .remove_pod(&pod.id)
        .await
        .expect("RemovePodSandbox after the shim died");
    let left = shm_mounts(&ctx, &pod.id);
    assert!(
        left.is_empty(),
        "the dead pod's shm stays mounted: {left:#?}"
    );
    assert!(
        !bundle.exists(),
        "the dead pod's bundle {} is left",
        bundle.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pod_shim_runc_rs() {
    run(Handler::RuncRsRunc, killed_pod_shim).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pod_shim_sandbox() {
    run(Handler::Sandbox, killed_pod_shim).await
}
