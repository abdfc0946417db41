//! Faults a node lives through: containerd killed and restarted while containers exit, a
//! serving shim killed, requests no real containerd would send. Nothing may be lost.
use std::time::{Duration, Instant};

use integration::events::Recorder;
use integration::shim_tests;
use integration::spec;
use integration::Client;

/// An init that exits with `code` on SIGTERM (its `sleep` goes with its PID namespace).
fn exits_on_term_with(code: u32) -> serde_json::Value {
    spec::sh(&format!("trap 'exit {code}' TERM; sleep 1000 & wait"))
}

/// The `/tasks/exit` events containerd's log says it took from shims for `namespace` in `log`.
fn forwarded_exits(log: &str, namespace: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("event forwarded") && l.contains("topic=/tasks/exit"))
        .filter(|l| l.split_whitespace().any(|w| w == format!("ns={namespace}")))
        .count()
}

shim_tests!(
    exits_while_containerd_is_down_reach_it_after_restart,
    |ctx| {
        let mut ctx = ctx;
        let ids = ["down1", "down2", "down3"];
        let mut inits = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let c = &ctx.client;
            c.create_container(id, &exits_on_term_with(11 + i as u32))
                .await
                .unwrap();
            c.create_task(id, None, false).await.unwrap();
            inits.push(c.start(id, "").await.unwrap());
            c.wait_for_pids(id, 2).await;
        }
        ctx.containerd.kill();
        // Each init exits while containerd is away, for longer than the retry budget our shim
        // had (1.6 s); the Go shim's is about 20 s.
        for (id, init) in ids.iter().zip(&inits) {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*init as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap_or_else(|e| panic!("signal the init of {id}: {e}"));
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        let offset = ctx.containerd.restart("trace").await;

        // Every exit reaches the restarted containerd, each once.
        let namespace = ctx.containerd.namespace.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        while forwarded_exits(&ctx.containerd.log()[offset..], &namespace) < ids.len() {
            assert!(
                Instant::now() < deadline,
                "exit events after the restart: {} of {}\n{}",
                forwarded_exits(&ctx.containerd.log()[offset..], &namespace),
                ids.len(),
                &ctx.containerd.log()[offset..]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            forwarded_exits(&ctx.containerd.log()[offset..], &namespace),
            ids.len(),
            "each exit once"
        );

        let c = Client::new(&ctx.containerd, ctx.shim, ctx.binary).await;
        for (i, id) in ids.iter().enumerate() {
            if ctx.containerd.version() >= (1, 7) {
                // containerd 1.7+, starting, shuts down the shim of every task that has no
                // process left and is not a sandbox (its leaked-shim clean-up, containerd#6860),
                // so only the events tell what happened: the shims delivered them after that
                // Shutdown, once containerd took events again.
                integration::client::assert_code(
                    c.wait(id, "").await,
                    containerd_client::tonic::Code::NotFound,
                    "",
                );
            } else {
                // The restarted containerd knows each task's real exit and can delete it.
                assert_eq!(c.wait(id, "").await.unwrap(), 11 + i as u32, "{id}");
                assert_eq!(c.delete_task(id).await.unwrap(), 11 + i as u32, "{id}");
            }
            c.delete_container(id).await.unwrap();
        }
    }
);

shim_tests!(delete_after_a_shim_crash_reports_the_real_exit, |ctx| {
    let c = &ctx.client;
    let events = Recorder::start(c).await;
    c.create_container("crashed", &spec::sh("exit 7"))
        .await
        .unwrap();
    c.create_task("crashed", None, false).await.unwrap();
    c.start("crashed", "").await.unwrap();
    assert_eq!(c.wait("crashed", "").await.unwrap(), 7);
    // Wait answers as the exit is recorded; its event may still be on its way. Events still
    // queued in a shim that is killed die with it, so let this one arrive first.
    events
        .wait_for("the shim's own TaskExit", |ev| {
            ev.iter()
                .any(|e| e.topic == "/tasks/exit" && e.container_id == "crashed")
        })
        .await;
    let shim = ctx.containerd.shim_pid_of("crashed").expect("serving shim");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // containerd sees the shim gone, runs its `delete` action and publishes the exit that
    // action reports: the init's real one, not a SIGKILL made up after the fact.
    let seen = events
        .wait_for("the exit containerd publishes after the shim died", |ev| {
            ev.iter()
                .filter(|e| e.topic == "/tasks/exit" && e.container_id == "crashed")
                .count()
                >= 2
        })
        .await;
    let statuses: Vec<u32> = seen
        .iter()
        .filter(|e| e.topic == "/tasks/exit" && e.container_id == "crashed")
        .map(|e| e.exit_status)
        .collect();
    assert_eq!(
        statuses,
        [7, 7],
        "the shim's exit, then containerd's after the crash"
    );
    let _ = c.delete_task("crashed").await;
    c.delete_container("crashed").await.unwrap();
});

/// A shim asked to serve a namespace containerd could never have (78 characters) refuses
/// before it makes anything named after it.
#[test]
fn an_invalid_namespace_is_refused_before_anything_is_made() {
    if !integration::is_root() {
        return;
    }
    let namespace = "n".repeat(78);
    for shim in [integration::Shim::RuncRs, integration::Shim::Sandbox] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let mut child = std::process::Command::new(
            integration::runtime::shim_bin_dir().join(shim.binary_name()),
        )
        .args(["-namespace", &namespace, "-id", "x", "-address", "/nowhere"])
        .arg("-socket")
        .arg(&socket)
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let served = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !served && !out.status.success(),
            "{shim:?} served {namespace}"
        );
        assert!(stderr.contains("invalid namespace"), "{shim:?}: {stderr}");
        assert!(!socket.exists(), "{shim:?} bound its socket");
        let state = std::path::Path::new(shim.default_state_root()).join(&namespace);
        assert!(!state.exists(), "{shim:?} made {}", state.display());
    }
}
