//! CRI pods across a containerd restart (SIGKILL, then containerd again, as a node's service
//! manager restarts it): nothing is lost. On containerd 2.x the pods run without a pause
//! container (`sandboxer = "shim"`, the shim's Sandbox API), on 1.x with one. One test, the
//! handlers one after the other: a restart must not cut into another case.
use std::time::Duration;

use integration::cri::api::*;
use integration::cri::client::*;
use integration::cri::{pauseless, Cri, Handler};

async fn survives_a_restart(ctx: integration::cri::Ctx) {
    if integration::cri::pidns::requested() {
        integration::runtime::skip("restarting containerd in a PID namespace of its own ends it");
        return;
    }
    let pod = ctx.run_pod(ctx.pod_config("restart")).await;
    let counter = pod
        .run(container_config(
            "counter",
            &[
                "sh",
                "-c",
                "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done",
            ],
        ))
        .await;
    let sandbox_pid = pod.sandbox_pid().await;
    let shim = ppid(sandbox_pid);
    let app = pod.container_pid(&counter).await;
    pod.wait_log("counter", "tick-3", Duration::from_secs(10))
        .await;

    let before_restart = ctx.daemon.pid();
    ctx.daemon.restart();
    assert_ne!(
        ctx.daemon.pid(),
        before_restart,
        "containerd was not restarted"
    );
    assert!(!std::path::Path::new(&format!("/proc/{before_restart}")).exists());
    let cri = Cri::connect(&ctx.daemon.socket()).await;

    // The pod, its shim and its container are the same processes, and CRI knows them.
    let status = cri
        .pod_status(&pod.id)
        .await
        .expect("PodSandboxStatus after the restart");
    assert_eq!(
        status.status.unwrap().state,
        PodSandboxState::SandboxReady as i32,
        "the pod after containerd's restart"
    );
    assert_eq!(pod.sandbox_pid().await, sandbox_pid);
    assert_eq!(ppid(sandbox_pid), shim);
    let c = cri
        .container_status(&counter)
        .await
        .expect("ContainerStatus")
        .status
        .unwrap();
    assert_eq!(c.state, ContainerState::ContainerRunning as i32, "{c:?}");
    assert_eq!(pod.container_pid(&counter).await, app);
    // Its output still reaches the log, and it can be exec'd into.
    let before = pod.log_lines("counter").len();
    pod.wait_log(
        "counter",
        &format!("tick-{}", before + 3),
        Duration::from_secs(10),
    )
    .await;
    let resp = cri
        .exec_sync(&counter, &["cat", "/proc/1/cmdline"], 10)
        .await
        .expect("ExecSync after the restart");
    assert_eq!(resp.exit_code, 0);
    // A new container joins the pod, served by the same shim.
    let second = pod.run(sleeper("second")).await;
    assert_eq!(ppid(pod.container_pid(&second).await), shim);

    cri.stop_pod(&pod.id)
        .await
        .expect("StopPodSandbox after the restart");
    wait_gone(app, "the pod's container").await;
    wait_gone(sandbox_pid, "the pod's sandbox process").await;
    cri.remove_pod(&pod.id)
        .await
        .expect("RemovePodSandbox after the restart");
    wait_gone(shim, "the pod's shim").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_survive_a_containerd_restart() {
    pauseless::force();
    for handler in [Handler::RuncRsRunc, Handler::Sandbox] {
        integration::cri::run(handler, survives_a_restart).await;
    }
}
