//! Checkpoint of a paused task, as runc does it: CRIU dumps the frozen cgroup and leaves it
//! frozen (a paused task stays paused), or with `exit` the task stops. The image restores with
//! the runc shim (the sandbox shim's own restore is tested in checkpoint.rs).
use std::time::Duration;

use integration::client::{options_any, Options};
use integration::criu::{criu_available, last_count, runtime_checkpoints};
use integration::runtime::skip;
use integration::{shim_tests, spec, Shim};

/// Counts on stdout and in /tmp/n (a tmpfs), which the host reads through /proc while the
/// task runs: the stdout fifo is only complete once the process is gone.
const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i; echo $i >/tmp/n; sleep 0.05; done";
const TICKS: Duration = Duration::from_millis(500);

fn counter() -> serde_json::Value {
    let mut s = spec::sh(COUNTER);
    s["mounts"].as_array_mut().unwrap().push(serde_json::json!({
        "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]
    }));
    s
}

/// The live count of task `id`, read from its init's /tmp/n.
async fn count(c: &integration::Client, id: &str) -> u64 {
    let pids = c.pids(id).await.unwrap();
    pids.iter()
        .filter_map(|(pid, _)| std::fs::read_to_string(format!("/proc/{pid}/root/tmp/n")).ok())
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

shim_tests!(paused_task_checkpoints_and_stays_paused, |ctx| {
    if !criu_available() || !runtime_checkpoints(ctx.binary) {
        return;
    }
    let c = &ctx.client;
    let images = tempfile::tempdir().unwrap();
    let _io = c.run("cp", &counter()).await;
    tokio::time::sleep(TICKS).await;
    c.pause("cp").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let paused_at = count(c, "cp").await;
    assert!(
        paused_at > 2,
        "the counter ran before the pause: {paused_at}"
    );

    // Leave-running: the image is written and the task is still paused, frozen.
    let live = images.path().join("live");
    let keep = protos::shim::oci::CheckpointOptions {
        image_path: live.to_string_lossy().into_owned(),
        ..Default::default()
    };
    c.checkpoint("cp", &keep)
        .await
        .expect("checkpoint of a paused task");
    assert!(live.join("inventory.img").exists());
    assert_eq!(c.status("cp", "").await.unwrap(), "PAUSED");
    tokio::time::sleep(TICKS).await;
    let after = count(c, "cp").await;
    assert_eq!(
        after, paused_at,
        "a paused task does not run after checkpoint"
    );

    // Resume works and the counter goes on.
    c.resume("cp").await.expect("resume after checkpoint");
    assert_eq!(c.status("cp", "").await.unwrap(), "RUNNING");
    tokio::time::sleep(TICKS).await;
    let resumed = count(c, "cp").await;
    assert!(
        resumed > after + 2,
        "counter {resumed} continues after {after}"
    );

    c.remove("cp").await;

    // With exit: the paused task stops. (A fresh container: containerd 1.x stores a second
    // checkpoint of one container for a non-runc runtime type as content, and its spec blob
    // "already exists".)
    let mut io = c.run("cpx", &counter()).await;
    tokio::time::sleep(TICKS).await;
    c.pause("cpx").await.unwrap();
    let exited = images.path().join("exit");
    let exit = protos::shim::oci::CheckpointOptions {
        exit: true,
        image_path: exited.to_string_lossy().into_owned(),
        ..Default::default()
    };
    c.checkpoint("cpx", &exit)
        .await
        .expect("exit checkpoint of a paused task");
    tokio::time::timeout(Duration::from_secs(10), c.wait("cpx", ""))
        .await
        .expect("the task exits after an exit checkpoint")
        .unwrap();
    assert_eq!(c.status("cpx", "").await.unwrap(), "STOPPED");
    let before = last_count(&io.stdout_text());
    c.delete_task("cpx").await.unwrap();
    c.delete_container("cpx").await.unwrap();

    if ctx.containerd.cgroup_v2_controllers().is_some() {
        // (checkpoint.rs's restore fails here too, earlier: its running dump fails.)
        skip(
            "restore on the cgroup v2 view: CRIU puts the restored tasks back in the dumped \
             container's cgroup, where runc (ps, kill) does not look",
        );
        return;
    }

    // The image restores with the runc shim and runc, whichever shim wrote it.
    let opts = Options {
        binary_name: "runc".into(),
        criu_image_path: exited.to_string_lossy().into_owned(),
        ..Default::default()
    };
    c.create_container_as(
        "cp-restored",
        &counter(),
        Shim::RuncRs.runtime_type(),
        Some(options_any(&Options {
            binary_name: "runc".into(),
            ..Default::default()
        })),
    )
    .await
    .unwrap();
    let mut io = c.io("cp-restored", false);
    c.create_task_with("cp-restored", Some(&io), false, Some(options_any(&opts)))
        .await
        .expect("restore of a paused task's image");
    c.start("cp-restored", "").await.unwrap();
    tokio::time::sleep(TICKS).await;
    let restored_at = count(c, "cp-restored").await;
    tokio::time::sleep(TICKS).await;
    assert!(
        count(c, "cp-restored").await > restored_at,
        "the restored task runs"
    );
    c.remove("cp-restored").await;
    let first: u64 = io
        .stdout_text()
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .expect("the restored process printed");
    assert!(
        first > before,
        "the restored counter continues ({first}) from where it stopped ({before})"
    );
});
