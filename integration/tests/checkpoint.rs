//! Checkpoint and restore for real, with CRIU (scripts/fetch-criu provides one that works here).
use std::time::Duration;

use containerd_client::tonic::Code;
use integration::client::{options_any, Options};
use integration::criu::{criu_available, last_count, runtime_checkpoints, COUNTER};
use integration::shim_tests;
use integration::spec;

shim_tests!(checkpoint_and_restore_continue_the_process, |ctx| {
    if !criu_available() || !runtime_checkpoints(ctx.binary) {
        return;
    }
    let c = &ctx.client;
    let images = tempfile::tempdir().unwrap();
    let live = images.path().join("live");
    let mut io = c.run("cr", &spec::sh(COUNTER)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Leave-running checkpoint: the process goes on.
    let keep = protos::shim::oci::CheckpointOptions {
        image_path: live.to_string_lossy().into_owned(),
        ..Default::default()
    };
    let stored = c.checkpoint("cr", &keep).await.unwrap();
    assert_eq!(c.status("cr", "").await.unwrap(), "RUNNING");
    assert!(live.join("inventory.img").exists());
    if c.shim == integration::Shim::Sandbox {
        // containerd 1.x takes ImagePath itself only for io.containerd.runc.* types; for
        // others it stores its own directory as content, which must hold the image too.
        // containerd 2 honours ImagePath for every runtime and stores nothing.
        if ctx.containerd.major_version() < 2 {
            let criu = stored.iter().find(|d| d.media_type.contains("criu"));
            assert!(criu.is_some_and(|d| d.size > 4096), "{stored:?}");
        } else {
            assert!(stored.is_empty(), "{stored:?}");
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.kill("cr", "", libc::SIGKILL as u32, true).await.unwrap();
    c.wait("cr", "").await.unwrap();
    // (The fifo's text is complete once the process is gone.)
    let original = last_count(&io.stdout_text());
    c.delete_task("cr").await.unwrap();

    // Restore into the same container through Create (CriuImagePath, as containerd's
    // WithRestoreImagePath sets it): the counter goes on from the checkpoint.
    let opts = Options {
        criu_image_path: live.to_string_lossy().into_owned(),
        ..c.options()
    };
    let mut io = c.io("cr-restored", false);
    c.create_task_with("cr", Some(&io), false, Some(options_any(&opts)))
        .await
        .unwrap();
    let pid = c.start("cr", "").await.unwrap();
    assert!(pid > 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(c.status("cr", "").await.unwrap(), "RUNNING");
    c.kill("cr", "", libc::SIGKILL as u32, true).await.unwrap();
    c.wait("cr", "").await.unwrap();
    let out = io.stdout_text();
    let first: u64 = out
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .expect("the restored process printed");
    // The original ran on after the checkpoint (500 ms: about ten counts) and the restored
    // one took up where the image has it, not from the start.
    assert!(
        first > 3 && first + 5 < original,
        "the restored counter ({first}) continues from the checkpoint (the original: {original})"
    );
    c.delete_task("cr").await.unwrap();
});

shim_tests!(
    checkpoint_into_containerds_image_and_restore_from_it,
    |ctx| {
        if !criu_available() || !runtime_checkpoints(ctx.binary) {
            return;
        }
        let c = &ctx.client;
        let mut io = c.run("img", &spec::sh(COUNTER)).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        // No image path: the shim writes to containerd's directory, containerd stores it as content.
        let exit = protos::shim::oci::CheckpointOptions {
            exit: true,
            ..Default::default()
        };
        let descriptors = c.checkpoint("img", &exit).await.unwrap();
        let criu = descriptors
            .into_iter()
            .find(|d| d.media_type.contains("criu"))
            .expect("a CRIU checkpoint among the descriptors");
        c.wait("img", "").await.unwrap();
        let before = last_count(&io.stdout_text());
        c.delete_task("img").await.unwrap();

        let mut io = c.io("img-restored", false);
        c.create_task_from("img", &io, criu).await.unwrap();
        c.start("img", "").await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.kill("img", "", libc::SIGKILL as u32, true).await.unwrap();
        c.wait("img", "").await.unwrap();
        let first: u64 = io
            .stdout_text()
            .lines()
            .find_map(|l| l.trim().parse().ok())
            .expect("the restored process printed");
        assert!(
            first > before,
            "restored counter {first} continues after {before}"
        );
        c.delete_task("img").await.unwrap();
    }
);

shim_tests!(failed_checkpoint_keeps_the_criu_log, |ctx| {
    if !criu_available() || !runtime_checkpoints(ctx.binary) {
        return;
    }
    let c = &ctx.client;
    let _io = c.run("nodump", &spec::spec(&["sleep", "1000"])).await;
    // An image directory with room for runc's descriptors.json but not for CRIU's images,
    // mounted in containerd's (and so CRIU's) mount namespace: the dump itself fails.
    let images = tempfile::tempdir().unwrap();
    let dir = images.path().to_string_lossy().into_owned();
    let in_containerd_ns = |args: &[&str]| {
        let pid = ctx.containerd.pid().to_string();
        let status = std::process::Command::new("nsenter")
            .args(["-t", &pid, "-m", "--"])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "nsenter {args:?}");
    };
    in_containerd_ns(&["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", &dir]);
    let opts = protos::shim::oci::CheckpointOptions {
        image_path: dir.clone(),
        ..Default::default()
    };
    let err = c.checkpoint("nodump", &opts).await;
    in_containerd_ns(&["umount", &dir]);
    let err = err.expect_err("dump should fail");
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("CRIU log:"), "{}", err.message());
    let log = ctx.containerd.bundle("nodump").join("criu-dump.log");
    let text = std::fs::read_to_string(&log).expect("CRIU's log kept in the bundle");
    assert!(text.contains("Error"), "the log says what failed:\n{text}");
    // The container was not harmed.
    assert_eq!(c.status("nodump", "").await.unwrap(), "RUNNING");
    c.remove("nodump").await;
});
