//! Restored tasks, for every shim: after an exit checkpoint into a new container id and
//! again into the same one, each restored task handled as a created one (state, pids, exec,
//! pause, update, kill with all, delete, another checkpoint), its cgroup the new container's
//! with the spec's limits; and a failed restore keeps CRIU's log and leaves nothing behind.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_client::tonic::{Code, Status};
use integration::client::{options_any, Client, Options, TaskIo};
use integration::criu::{criu_available, runtime_checkpoints, COUNTER};
use integration::inspect::{cgroups_of, mounts_under};
use integration::runtime::skip;
use integration::{shim_tests, spec, Shim};
use serde_json::json;

/// runc on the cgroup v2 view of a hybrid host: CRIU puts the restored tasks back in the
/// dumped container's cgroup, where runc's ps and kill do not look (a Kill then never ends
/// the task: the case would hang).
fn restores_on_this_view(ctx: &integration::runtime::Ctx) -> bool {
    let runc_on_v2_view =
        ctx.shim == integration::Shim::RuncRs && ctx.containerd.cgroup_v2_controllers().is_some();
    if runc_on_v2_view {
        skip(
            "runc restore on the cgroup v2 view: CRIU puts the restored tasks back in the \
             dumped container's cgroup, where runc (ps, kill) does not look",
        );
    }
    !runc_on_v2_view
}

const MEMORY_LIMIT: u64 = 64 << 20;

fn counts(text: &str) -> Vec<u64> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn limited_counter() -> serde_json::Value {
    let mut s = spec::sh(COUNTER);
    s["linux"]["resources"]["memory"] = json!({ "limit": MEMORY_LIMIT });
    s
}

/// The memory limit of `pid`'s cgroup, and that cgroup's path.
fn memory_limit(pid: u32) -> (u64, String) {
    let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v1 = table.lines().find_map(|l| {
        let mut f = l.splitn(3, ':').skip(1);
        let (ctrls, path) = (f.next()?, f.next()?);
        ctrls
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.to_string())
    });
    let (file, path) = match v1 {
        Some(p) => (format!("/sys/fs/cgroup/memory{p}/memory.limit_in_bytes"), p),
        None => {
            let p = table.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
            (
                format!("/sys/fs/cgroup/unified{p}/memory.max"),
                p.to_string(),
            )
        }
    };
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    (text.trim().parse().unwrap_or(u64::MAX), path)
}

/// Where the shim's runtime keeps the container's state, seen from here.
fn runtime_state(ctx: &integration::runtime::Ctx, id: &str) -> PathBuf {
    let root = match ctx.shim {
        Shim::Sandbox => "/run/containerd/sandbox",
        _ => "/run/containerd/runc",
    };
    let path = Path::new(root).join(ctx.client.namespace()).join(id);
    ctx.containerd.seen_from_here(&path)
}

async fn restore(c: &Client, id: &str, image: &Path, io: &TaskIo) -> Result<u32, Status> {
    let opts = Options {
        criu_image_path: image.to_string_lossy().into_owned(),
        ..c.options()
    };
    c.create_task_with(id, Some(io), false, Some(options_any(&opts)))
        .await?;
    let started = Instant::now();
    let pid = c.start(id, "").await;
    eprintln!(
        "restore of {id} ({:?}/{:?}) took {:?}",
        c.shim,
        c.binary,
        started.elapsed()
    );
    pid
}

/// Exit checkpoint, then waits for the task's exit; returns the counts it printed (a fifo's
/// text is read once, when its writers are gone).
async fn checkpoint_exit(c: &Client, id: &str, image: &Path, io: &mut TaskIo) -> Vec<u64> {
    let exit = protos::shim::oci::CheckpointOptions {
        exit: true,
        image_path: image.to_string_lossy().into_owned(),
        ..Default::default()
    };
    c.checkpoint(id, &exit).await.unwrap();
    c.wait(id, "").await.unwrap();
    let printed = counts(&io.stdout_text());
    c.delete_task(id).await.unwrap();
    printed
}

/// Kills the restored task `id` (all its processes), checks that its counter went on from
/// `before` on its new stdio and deletes the task.
async fn kill_and_check_counter(c: &Client, id: &str, io: &mut TaskIo, before: u64) {
    c.kill(id, "", libc::SIGKILL as u32, true).await.unwrap();
    c.wait(id, "").await.unwrap();
    continues(&counts(&io.stdout_text()), before);
    c.delete_task(id).await.unwrap();
}

/// `printed` counts on from `last` without a gap.
fn continues(printed: &[u64], last: u64) {
    let expected: Vec<u64> = (last + 1..).take(printed.len()).collect();
    assert!(
        printed.len() > 3 && printed == expected,
        "the counter goes on from {last} in the new fifo: {printed:?}"
    );
}

/// Everything a created task supports, on a restored one.
async fn restored_task_is_a_task(c: &Client, id: &str, pid: u32) {
    assert_eq!(c.status(id, "").await.unwrap(), "RUNNING");
    let pids: Vec<u32> = c.pids(id).await.unwrap().into_iter().map(|p| p.0).collect();
    assert!(pids.contains(&pid), "{pid} among the task's pids {pids:?}");
    let (status, out) = c.exec_run(id, "e1", &["cat", "/proc/1/cmdline"]).await;
    assert_eq!(status, 0, "exec in the restored container: {out}");
    assert!(
        out.contains("while true"),
        "the exec sees the restored init: {out:?}"
    );
    c.pause(id).await.unwrap();
    assert_eq!(c.status(id, "").await.unwrap(), "PAUSED");
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.resume(id).await.unwrap();
    assert_eq!(c.status(id, "").await.unwrap(), "RUNNING");
    c.update(id, &json!({ "memory": { "limit": 2 * MEMORY_LIMIT } }))
        .await
        .unwrap();
    assert_eq!(
        memory_limit(pid).0,
        2 * MEMORY_LIMIT,
        "Update reached the cgroup"
    );
    c.update(id, &json!({ "memory": { "limit": MEMORY_LIMIT } }))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
}

shim_tests!(restore_into_a_new_id_and_again_into_the_same, |ctx| {
    if !criu_available() || !runtime_checkpoints(ctx.binary) || !restores_on_this_view(&ctx) {
        return;
    }
    if ctx.lacks_controller("memory") {
        skip("no memory controller in this cgroup view");
        return;
    }
    let c = &ctx.client;
    let ns = c.namespace().to_string();
    let images = tempfile::tempdir().unwrap();
    let mut io = c.run("ex", &limited_counter()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let first_image = images.path().join("first");
    let before = *checkpoint_exit(c, "ex", &first_image, &mut io)
        .await
        .last()
        .unwrap();
    assert!(
        before > 3,
        "the counter ran before the checkpoint: {before}"
    );
    c.delete_container("ex").await.unwrap();
    assert!(
        cgroups_of(&ns, "ex").is_empty(),
        "the checkpointed container's cgroup went"
    );

    // Into a new container id: its own cgroup, with its spec's limits.
    c.create_container("ex2", &limited_counter()).await.unwrap();
    let mut io = c.io("ex2", false);
    let pid = restore(c, "ex2", &first_image, &io).await.unwrap();
    let (limit, cgroup) = memory_limit(pid);
    assert!(
        cgroup.ends_with(&format!("/{ns}/ex2")),
        "restored into {cgroup}"
    );
    assert_eq!(limit, MEMORY_LIMIT);
    // (runc 1.1 on this hybrid host lets CRIU remake the old cgroup in the hierarchies it
    // does not manage, name=systemd and the v2 one, in about 1 run in 5.)
    let old = cgroups_of(&ns, "ex");
    if c.shim == Shim::Sandbox {
        assert!(old.is_empty(), "nothing made in the old cgroup: {old:?}");
    }
    restored_task_is_a_task(c, "ex2", pid).await;

    // Checkpointed again (exit) and restored into the same id.
    let second_image = images.path().join("second");
    let printed = checkpoint_exit(c, "ex2", &second_image, &mut io).await;
    continues(&printed, before);
    let before = *printed.last().unwrap();
    let mut io = c.io("ex2-again", false);
    let pid = restore(c, "ex2", &second_image, &io).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(memory_limit(pid).0, MEMORY_LIMIT);

    // Kill with all, delete: nothing left.
    kill_and_check_counter(c, "ex2", &mut io, before).await;
    assert!(
        cgroups_of(&ns, "ex2").is_empty(),
        "{:?}",
        cgroups_of(&ns, "ex2")
    );
    assert!(!runtime_state(&ctx, "ex2").exists());
    c.delete_container("ex2").await.unwrap();
});

shim_tests!(
    failed_restore_keeps_the_criu_log_and_leaves_nothing,
    |ctx| {
        if !criu_available() || !runtime_checkpoints(ctx.binary) || !restores_on_this_view(&ctx) {
            return;
        }
        let c = &ctx.client;
        let ns = c.namespace().to_string();
        let images = tempfile::tempdir().unwrap();
        let image = images.path().join("img");
        let mut io = c.run("bad", &spec::sh(COUNTER)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        checkpoint_exit(c, "bad", &image, &mut io).await;
        // Without the task's core (registers, credentials) CRIU fails after the shim made the
        // cgroup, the state directory and the root mount. (Emptied page images make criu 4.1
        // spin, writing its log without end, instead of failing.)
        for entry in std::fs::read_dir(&image).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("core-") {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
        let io = c.io("bad-restored", false);
        let err = restore(c, "bad", &image, &io)
            .await
            .expect_err("a restore of a broken image");
        assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
        assert!(err.message().contains("restore"), "{}", err.message());
        assert!(err.message().contains("CRIU log:"), "{}", err.message());
        let log = ctx.containerd.bundle("bad").join("criu-restore.log");
        let text = std::fs::read_to_string(&log).expect("CRIU's log kept in the bundle");
        assert!(text.contains("Error"), "the log says what failed:\n{text}");
        assert!(
            cgroups_of(&ns, "bad").is_empty(),
            "{:?}",
            cgroups_of(&ns, "bad")
        );
        assert!(
            !runtime_state(&ctx, "bad").exists(),
            "no runtime state left"
        );
        let mounts = mounts_under(ctx.containerd.pid(), Path::new("/"));
        assert!(
            !mounts.iter().any(|m| m.contains("criu-root")),
            "no CRIU root left mounted: {mounts:?}"
        );
        let _ = c.delete_task("bad").await;
        c.delete_container("bad").await.unwrap();
    }
);

shim_tests!(restore_with_a_terminal, |ctx| {
    if !criu_available() || !runtime_checkpoints(ctx.binary) || !restores_on_this_view(&ctx) {
        return;
    }
    let c = &ctx.client;
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("tty");
    let mut s = spec::sh(COUNTER);
    s["process"]["terminal"] = json!(true);
    c.create_container("tty", &s).await.unwrap();
    let mut io = c.io("tty", false);
    c.create_task("tty", Some(&io), true).await.unwrap();
    c.start("tty", "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = *checkpoint_exit(c, "tty", &image, &mut io)
        .await
        .last()
        .expect("the counter printed on its terminal");
    let opts = Options {
        criu_image_path: image.to_string_lossy().into_owned(),
        ..c.options()
    };
    let mut io = c.io("tty-restored", false);
    c.create_task_with("tty", Some(&io), true, Some(options_any(&opts)))
        .await
        .unwrap();
    c.start("tty", "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.resize("tty", "", 100, 30).await.unwrap();
    kill_and_check_counter(c, "tty", &mut io, before).await;
    c.delete_container("tty").await.unwrap();
});

shim_tests!(restore_an_image_the_other_shim_wrote, |ctx| {
    if !criu_available() || !runtime_checkpoints(ctx.binary) || !restores_on_this_view(&ctx) {
        return;
    }
    let c = &ctx.client;
    // The sandbox shim restores what the runc shim dumped, and the runc shims the reverse.
    let writer = match c.shim {
        Shim::Sandbox => Shim::RuncRs,
        _ => Shim::Sandbox,
    };
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("other");
    let opts = Some(options_any(&c.options()));
    let s = spec::sh(COUNTER);
    c.create_container_as("w", &s, writer.runtime_type(), opts)
        .await
        .unwrap();
    let mut io = c.io("w", false);
    c.create_task("w", Some(&io), false).await.unwrap();
    c.start("w", "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = *checkpoint_exit(c, "w", &image, &mut io)
        .await
        .last()
        .unwrap();
    c.delete_container("w").await.unwrap();

    c.create_container("r", &s).await.unwrap();
    let mut io = c.io("r", false);
    restore(c, "r", &image, &io).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    kill_and_check_counter(c, "r", &mut io, before).await;
    c.delete_container("r").await.unwrap();
});

shim_tests!(restore_runs_the_create_hooks_with_the_restored_pid, |ctx| {
    if !criu_available() || !runtime_checkpoints(ctx.binary) || !restores_on_this_view(&ctx) {
        return;
    }
    let c = &ctx.client;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hook.log");
    let image = dir.path().join("img");
    // Each run appends the state it was given, one line.
    let script = format!("cat >> {0}; echo >> {0}", log.display());
    let mut s = spec::sh(COUNTER);
    s["hooks"] = json!({ "createRuntime": [{
        "path": "/bin/sh", "args": ["sh", "-c", script], "env": ["PATH=/bin:/usr/bin"]
    }] });
    c.create_container("hk", &s).await.unwrap();
    let mut io = c.io("hk", false);
    c.create_task("hk", Some(&io), false).await.unwrap();
    c.start("hk", "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    checkpoint_exit(c, "hk", &image, &mut io).await;
    let io = c.io("hk-restored", false);
    let pid = restore(c, "hk", &image, &io).await.unwrap_or_else(|e| {
        let kept = ctx.containerd.bundle("hk").join("criu-restore.log");
        let log = std::fs::read_to_string(kept).unwrap_or_default();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("Error")).collect();
        panic!(
            "restore: {}\nCRIU's errors:\n{}",
            e.message(),
            errors.join("\n")
        )
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let runs: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(runs.len(), 2, "one run at create, one at restore: {text}");
    assert!(
        runs[1].contains(&format!("\"pid\":{pid}")),
        "the restore's hook got the restored pid {pid}: {}",
        runs[1]
    );
    c.remove("hk").await;
});
