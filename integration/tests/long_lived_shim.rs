//! A shim that outlives what it started with: a group whose first container goes first, and a
//! container exec'd into again and again (a readiness probe), which must not pile up state.
use std::path::{Path, PathBuf};
use std::time::Duration;

use integration::runtime::Ctx;
use integration::{shim_tests, spec};

const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

fn member(args: &[&str]) -> serde_json::Value {
    spec::annotate(spec::spec(args), SANDBOX_ID, "pod-a")
}

/// The address of the shim serving `id`, as containerd recorded it in the bundle.
fn shim_address(ctx: &Ctx, id: &str) -> String {
    ctx.containerd.shim_address(id)
}

/// Exec `args` in `id`, with or without a terminal; returns the exit status and output. A
/// request that never returns (a shim whose handler panicked) fails the test.
async fn exec(ctx: &Ctx, id: &str, exec_id: &str, args: &[&str], terminal: bool) -> (u32, String) {
    let c = &ctx.client;
    let mut io = c.io(&format!("{id}-{exec_id}"), false);
    let process = spec::process(args, terminal);
    let run = async {
        c.exec(id, exec_id, &process, Some(&io), terminal)
            .await
            .unwrap_or_else(|e| panic!("exec {exec_id} in {id}: {e}"));
        c.start(id, exec_id).await.expect("start exec");
        c.wait(id, exec_id).await.expect("wait exec")
    };
    let status = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap_or_else(|_| panic!("exec {exec_id} in {id}: no answer in 30 s"));
    let out = io.stdout_text();
    c.delete_process(id, exec_id).await.expect("delete exec");
    (status, out)
}

// The serving shim was forked by the first container's `start`, with that container's bundle
// as its working directory; containerd removes the bundle with the container. The shim must
// go on creating containers and exec'ing: libcontainer calls getcwd, and a failed one fails a
// create or exec, or with a terminal panics the handler (the exec is never answered).
shim_tests!(group_outlives_its_first_container, |ctx| {
    let c = &ctx.client;
    let _first = c.run("first", &member(&["sleep", "1000"])).await;
    let _second = c.run("second", &member(&["sleep", "1000"])).await;
    let address = shim_address(&ctx, "first");
    assert_eq!(
        address,
        shim_address(&ctx, "second"),
        "one shim serves the group"
    );
    let first_bundle = ctx.containerd.bundle("first");
    c.remove("first").await;
    assert!(
        !first_bundle.exists(),
        "containerd removes {}",
        first_bundle.display()
    );

    // Still the group's shim: it serves "second", whose task would be gone with it.
    let mut third = c.run("third", &member(&["echo", "third"])).await;
    assert_eq!(shim_address(&ctx, "third"), address);
    assert_eq!(c.wait("third", "").await.unwrap(), 0);
    assert_eq!(third.stdout_text(), "third\n", "the new container ran");
    c.remove("third").await;
    assert_eq!(
        exec(&ctx, "second", "plain", &["echo", "hi"], false).await,
        (0, "hi\n".into())
    );
    let (status, out) = exec(&ctx, "second", "tty", &["tty"], true).await;
    assert_eq!(status, 0);
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    c.remove("second").await;
});

const EXECS: usize = 5;

/// The names in the container's runtime state directory.
fn state_of(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// An exec probe every 10 s must not leave a file per exec in the runtime's state directory
// (libcontainer's tenant builder leaves its notify socket and console-socket link there).
shim_tests!(execs_leave_no_runtime_state, |ctx| {
    let c = &ctx.client;
    let _io = c.run("probed", &spec::spec(&["sleep", "1000"])).await;
    let dir: PathBuf = Path::new(ctx.shim.default_state_root())
        .join(&ctx.containerd.namespace)
        .join("probed");
    let before = state_of(&dir);
    for i in 0..EXECS {
        for (kind, terminal) in [("plain", false), ("tty", true)] {
            let exec_id = format!("{kind}-{i}");
            let (status, _) = exec(&ctx, "probed", &exec_id, &["true"], terminal).await;
            assert_eq!(status, 0, "{exec_id}");
        }
    }
    let after = state_of(&dir);
    assert_eq!(after, before, "{} after {} execs", dir.display(), 2 * EXECS);
    c.remove("probed").await;
});
