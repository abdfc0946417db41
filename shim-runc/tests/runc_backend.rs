//! End to end against the real runc on this machine: needs root, runc on PATH and a static
//! busybox at /bin/busybox; skips (passes with a message) otherwise.
//!
//! The reaper is process-global (one waitpid(-1) loop, one channel of unclaimed exits), so the
//! tests take turns through `SERIAL` and each starts the reaper on its own runtime.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use libshim::reaper::{self, Exit};
use libshim::{Backend, BackendError, ContainerInfo, ProcessIo, RuntimeOptions};
use shim_runc::RuncBackend;
use tokio::sync::mpsc::UnboundedReceiver;

const BUSYBOX: &str = "/bin/busybox";
const NAMESPACE: &str = "shim-runc-test";

// A tokio mutex: the guard is held across awaits, and it works from every test's runtime.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn usable() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root");
        return false;
    }
    if !Path::new(BUSYBOX).exists() {
        eprintln!("skipped: no {BUSYBOX}");
        return false;
    }
    true
}

/// A bundle and a runtime root in one temporary directory, and a container id no other run
/// shares. Dropping it force-deletes the container so a failed assertion leaks nothing.
struct Fixture {
    dir: tempfile::TempDir,
    info: ContainerInfo,
}

impl Fixture {
    async fn new(name: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        make_rootfs(&bundle.join("rootfs"));
        write_config(&bundle, args).await;
        let options = RuntimeOptions {
            root: dir.path().join("state").to_string_lossy().into_owned(),
            ..Default::default()
        };
        let info = ContainerInfo {
            id: format!("{name}-{}", std::process::id()),
            namespace: NAMESPACE.into(),
            bundle,
            options,
        };
        Self { dir, info }
    }

    fn state_root(&self) -> PathBuf {
        self.dir.path().join("state").join(NAMESPACE)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Drop cannot await, so this one cleanup command waits for itself; on a current-thread
        // runtime the reaper loop cannot run (and steal the exit) until Drop returns.
        let _ = Command::new("runc")
            .arg("--root")
            .arg(self.state_root())
            .args(["delete", "--force", &self.info.id])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn make_rootfs(rootfs: &Path) {
    for dir in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "true"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
}

/// `runc spec`, edited: the given args, no terminal, an absolute rootfs path.
async fn write_config(bundle: &Path, args: &[&str]) {
    let mut cmd = Command::new("runc");
    cmd.arg("spec").arg("--bundle").arg(bundle);
    let out = reaper::run(&mut cmd).await.unwrap();
    assert!(out.success(), "runc spec: {out:?}");
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["args"] = serde_json::json!(args);
    spec["process"]["terminal"] = false.into();
    spec["root"]["path"] = bundle.join("rootfs").to_string_lossy().into();
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}

fn null_io() -> ProcessIo {
    ProcessIo::Pipes {
        stdin: None,
        stdout: None,
        stderr: None,
    }
}

/// Becomes a subreaper (so the container's processes, orphaned by runc, are ours to reap) and
/// starts the reaper, returning the exits no command claimed.
fn start_reaper() -> UnboundedReceiver<Exit> {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    reaper::start().unwrap()
}

async fn wait_for_exit(exits: &mut UnboundedReceiver<Exit>, pid: u32) -> Exit {
    let wait = async {
        loop {
            let exit = exits.recv().await.expect("reaper stopped");
            if exit.pid == pid {
                return exit;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("pid {pid} did not exit"))
}

#[tokio::test(flavor = "current_thread")]
async fn init_runs_and_its_exit_status_arrives() {
    if !usable() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut exits = start_reaper();
    let fx = Fixture::new("exit7", &["sh", "-c", "exit 7"]).await;
    let backend = RuncBackend::new();

    let pid = backend.create(&fx.info, null_io()).await.unwrap();
    assert!(pid > 1);
    backend.start(&fx.info).await.unwrap();
    let exit = wait_for_exit(&mut exits, pid).await;
    assert_eq!(exit.status, 7);

    backend.delete(&fx.info, false).await.unwrap();
    // Deleting again is not an error: the container is already gone.
    backend.delete(&fx.info, false).await.unwrap();
    let info = &fx.info;
    backend
        .cleanup(&info.id, NAMESPACE, &info.bundle, &info.options)
        .await
        .unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn exec_pids_and_kill() {
    if !usable() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut exits = start_reaper();
    let fx = Fixture::new("exec", &["sleep", "60"]).await;
    let backend = RuncBackend::new();

    let init = backend.create(&fx.info, null_io()).await.unwrap();
    backend.start(&fx.info).await.unwrap();

    let spec = serde_json::json!({
        "args": ["sh", "-c", "exit 3"],
        "cwd": "/",
        "env": ["PATH=/bin"],
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
    });
    let spec = serde_json::to_vec(&spec).unwrap();
    let pid = backend
        .exec(&fx.info, "e1", &spec, null_io())
        .await
        .unwrap();
    assert_eq!(wait_for_exit(&mut exits, pid).await.status, 3);
    let leftovers: Vec<_> = std::fs::read_dir(&fx.info.bundle)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("e1"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "exec left {leftovers:?} in the bundle"
    );

    assert!(backend.pids(&fx.info).await.unwrap().contains(&init));
    backend.kill(&fx.info, 9, false).await.unwrap();
    assert_eq!(wait_for_exit(&mut exits, init).await.status, 128 + 9);
    backend.delete(&fx.info, false).await.unwrap();

    let err = backend.kill(&fx.info, 9, false).await.unwrap_err();
    assert!(matches!(err, BackendError::NotFound(_)), "{err}");
}

#[tokio::test(flavor = "current_thread")]
async fn create_failure_carries_runcs_reason() {
    if !usable() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let _exits = start_reaper();
    let fx = Fixture::new("noexec", &["/no-such-binary"]).await;

    let err = RuncBackend::new()
        .create(&fx.info, null_io())
        .await
        .unwrap_err();
    match &err {
        BackendError::Runtime {
            runtime,
            action,
            message,
        } => {
            assert_eq!((runtime.as_str(), *action), ("runc", "create"));
            assert!(message.contains("no-such-binary"), "{message}");
        }
        other => panic!("expected a runtime error, got {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn unrunnable_binary_is_missing_binary() {
    if !usable() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let _exits = start_reaper();
    let mut fx = Fixture::new("nobinary", &["true"]).await;
    fx.info.options.binary_name = "/nonexistent/runc".into();

    let err = RuncBackend::new()
        .create(&fx.info, null_io())
        .await
        .unwrap_err();
    match err {
        BackendError::MissingBinary { binary, .. } => assert_eq!(binary, "/nonexistent/runc"),
        other => panic!("expected MissingBinary, got {other:?}"),
    }
}

/// The clean-up after a task delete (which containerd runs every time) must not execute the
/// runtime when it holds no state for the container: here the runtime cannot even be run.
#[tokio::test(flavor = "current_thread")]
async fn cleanup_without_runtime_state_runs_nothing() {
    let root = tempfile::tempdir().unwrap();
    let options = RuntimeOptions {
        binary_name: "/nonexistent/runc".into(),
        root: root.path().to_string_lossy().into_owned(),
        ..Default::default()
    };
    let bundle = root.path().join("bundle");
    let r = RuncBackend::new()
        .cleanup("gone", NAMESPACE, &bundle, &options)
        .await;
    assert!(r.is_ok(), "{r:?}");
    // With state present, the runtime is executed (and here cannot be).
    std::fs::create_dir_all(root.path().join(NAMESPACE).join("left")).unwrap();
    let r = RuncBackend::new()
        .cleanup("left", NAMESPACE, &bundle, &options)
        .await;
    assert!(
        matches!(r, Err(BackendError::MissingBinary { .. })),
        "{r:?}"
    );
}

/// The init exits between the shim's state check and runc's: runc answers "container not
/// running", which must be NotFound (containerd ignores it when stopping a task), not a failure.
#[tokio::test(flavor = "current_thread")]
async fn kill_of_an_exited_init_is_not_found() {
    if !usable() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut exits = start_reaper();
    let fx = Fixture::new("exited", &["true"]).await;
    let backend = RuncBackend::new();

    let init = backend.create(&fx.info, null_io()).await.unwrap();
    backend.start(&fx.info).await.unwrap();
    assert_eq!(wait_for_exit(&mut exits, init).await.status, 0);

    let err = backend.kill(&fx.info, 9, false).await.unwrap_err();
    assert!(matches!(err, BackendError::NotFound(_)), "{err}");
    // With --all runc signals what is left in the cgroup: nothing, and that is no error.
    backend.kill(&fx.info, 9, true).await.unwrap();
    backend.delete(&fx.info, false).await.unwrap();
}
