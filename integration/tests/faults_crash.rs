//! A serving shim SIGKILLed with containers and an exec running, and a full disk under the
//! files a shim and its runtime write: containerd's clean-up (the shim binary's `delete`
//! action) leaves nothing behind, and a request that cannot be served says why and leaves
//! nothing behind either.
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::tonic::Code;
use containerd_client::types::Mount;
use integration::daemon::Settings;
use integration::inspect::{alive, cgroups_of, mounts_under, names_in, settle, shim_socket};
use integration::runtime::Ctx;
use integration::{rootfs, shim_tests, spec, Binary, Client, Containerd, Shim};

/// The annotation containerd's CRI plugin groups a pod's containers by (one shim per pod).
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// `sh -c script` in the pod `pod`, on the rootfs the shim mounts at the bundle's `rootfs`.
fn pod_member(script: &str, pod: &str) -> serde_json::Value {
    let mut s = spec::annotate(spec::sh(script), SANDBOX_ID, pod);
    s["root"]["path"] = serde_json::json!("rootfs");
    s
}

/// The busybox rootfs as a bind mount, as containerd passes a snapshot's mounts.
fn rootfs_mounts() -> Vec<Mount> {
    vec![Mount {
        r#type: "bind".into(),
        source: rootfs::busybox().to_string_lossy().into_owned(),
        target: String::new(),
        options: vec!["rbind".into(), "rw".into()],
    }]
}

async fn run_mounted(c: &Client, id: &str, spec: &serde_json::Value) {
    c.create_container(id, spec)
        .await
        .expect("create container");
    c.create_task_with_rootfs(id, None, rootfs_mounts())
        .await
        .unwrap_or_else(|e| panic!("create task {id}: {e}"));
    c.start(id, "").await.expect("start");
}

/// Where the container's runtime keeps its state (the Root option is not set).
fn runtime_state(ctx: &Ctx, id: &str) -> PathBuf {
    Path::new(ctx.shim.default_state_root())
        .join(&ctx.containerd.namespace)
        .join(id)
}

/// Everything a container may leave on the host after its shim died: live processes of the
/// recorded ones, mounts under its bundle, runtime state, cgroups; and the shim's socket.
fn leftovers(ctx: &Ctx, ids: &[&str], pids: &[u32], socket: &Path) -> Vec<String> {
    let mut left: Vec<String> = pids
        .iter()
        .filter(|p| alive(**p))
        .map(|p| format!("process {p}"))
        .collect();
    for id in ids {
        let bundle = ctx.containerd.bundle(id);
        left.extend(
            mounts_under(ctx.containerd.pid(), &bundle)
                .into_iter()
                .map(|m| format!("mount {m}")),
        );
        let state = runtime_state(ctx, id);
        if state.exists() {
            left.push(format!("runtime state {}", state.display()));
        }
        let cgroups = cgroups_of(&ctx.containerd.namespace, id);
        left.extend(cgroups.iter().map(|d| format!("cgroup {}", d.display())));
    }
    if socket.exists() {
        left.push(format!("socket {}", socket.display()));
    }
    left
}

// Two containers of one pod, each on a rootfs the shim mounted: "own" in its own PID
// namespace with a background child and an exec running, "shared" in the host's PID
// namespace with a background child (which only a kill of the whole cgroup ends). The shim
// serving both is SIGKILLed. containerd runs the shim binary's `delete` for each: every
// process is gone, and every mount, runtime state directory, cgroup and the shim's socket;
// containerd then deletes what it knew, and the same ids run again in the same pod.
shim_tests!(a_killed_shim_leaves_nothing_behind, |ctx| {
    let c = &ctx.client;
    let ids = ["own", "shared"];
    run_mounted(c, "own", &pod_member("sleep 1000 & wait", "crash")).await;
    let mut shared = pod_member("sleep 1000 & wait", "crash");
    shared["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "pid");
    run_mounted(c, "shared", &shared).await;
    let exec = spec::process(&["sleep", "1000"], false);
    c.exec("own", "probe", &exec, None, false).await.unwrap();
    c.start("own", "probe").await.unwrap();
    let mut pids = c.wait_for_pids("own", 3).await;
    pids.extend(c.wait_for_pids("shared", 2).await);
    let shim = ctx.containerd.shim_pid_of("own").expect("serving shim");
    let socket = shim_socket(&ctx.containerd, "own");
    assert_eq!(
        shim_socket(&ctx.containerd, "shared"),
        socket,
        "one shim for the pod"
    );
    assert_eq!(ctx.containerd.shim_pids(), [shim], "one shim for the pod");
    // Everything the check looks for is there before the kill: each process, each
    // container's rootfs mount and runtime state, cgroups, the socket.
    let before = leftovers(&ctx, &ids, &pids, &socket);
    let count = |kind: &str| before.iter().filter(|l| l.starts_with(kind)).count();
    let seen = [
        count("process"),
        count("mount"),
        count("runtime state"),
        count("socket"),
    ];
    assert_eq!(
        seen,
        [pids.len(), 2, 2, 1],
        "what the check sees: {before:?}"
    );
    assert!(count("cgroup") >= 2, "what the check sees: {before:?}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let left = settle(
        Duration::from_secs(15),
        || async { leftovers(&ctx, &ids, &pids, &socket) },
        |l| l.is_empty(),
    )
    .await;
    eprintln!(
        "{} things before the kill, cleaned up in {:.1?}",
        before.len(),
        started.elapsed()
    );
    assert_eq!(left, Vec::<String>::new(), "left after the shim was killed");
    assert!(!alive(shim));

    // containerd has forgotten the tasks (or deletes them now); the containers delete.
    for id in ids {
        match c.delete_task(id).await {
            Ok(_) => {}
            Err(e) => assert_eq!(e.code(), Code::NotFound, "delete {id}: {e}"),
        }
        c.delete_container(id).await.expect("delete container");
        let bundle = ctx.containerd.bundle(id);
        assert!(!bundle.exists(), "{} left", bundle.display());
    }
    // Nothing stale stands in the way of the pod's next shim.
    c.create_container("own", &pod_member("echo again", "crash"))
        .await
        .unwrap();
    let mut io = c.io("own-again", false);
    c.create_task_with_rootfs("own", Some(&io), rootfs_mounts())
        .await
        .expect("create task again");
    c.start("own", "").await.unwrap();
    let status = c.wait("own", "").await.unwrap();
    let err = io.stderr.take().unwrap().text();
    assert_eq!(
        (status, io.stdout_text(), err),
        (0, "again\n".into(), String::new())
    );
    c.remove("own").await;
    let shims = settle(
        Duration::from_secs(5),
        || async { ctx.containerd.shim_pids() },
        Vec::is_empty,
    )
    .await;
    assert_eq!(shims, Vec::<u32>::new(), "shims left");
});

/// Fills the filesystem at `dir` (as seen from here) with a file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create the filler");
    let chunk = vec![0u8; 1 << 16];
    loop {
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(
                e.raw_os_error(),
                Some(libc::ENOSPC),
                "fill {}: {e}",
                dir.display()
            );
            return path;
        }
    }
}

/// Asserts a request failed for want of space, saying so and naming a file under `dir`.
fn assert_no_space<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, containerd_client::tonic::Status>,
    dir: &Path,
) {
    let s = r.expect_err(&format!("{what} with the disk full"));
    let message = s.message().to_lowercase();
    eprintln!("{what} with the disk full: {:?}: {}", s.code(), s.message());
    assert!(
        matches!(
            s.code(),
            Code::Unknown | Code::Internal | Code::ResourceExhausted
        ),
        "{what}: code {:?}: {}",
        s.code(),
        s.message()
    );
    assert!(
        message.contains("no space left on device"),
        "{what}: {}",
        s.message()
    );
    assert!(
        s.message().contains(&*dir.to_string_lossy()),
        "{what} should name the file under {}: {}",
        dir.display(),
        s.message()
    );
}

// containerd's state (the bundles, where the shims write each exec's process file) and
// /run/containerd (the runtimes' state, the shims' sockets) each on a tmpfs of 8 MiB in
// containerd's mount namespace. With the bundle's filesystem full, an Exec fails saying
// which file could not be written and why, and leaves no file and no process; with the
// runtime's state filesystem full, a Create fails likewise and leaves no state, cgroup,
// shim or bundle. Once there is space again, both work.
shim_tests!(
    a_full_disk_fails_exec_and_create_and_leaves_nothing,
    |ctx| {
        let settings = Settings {
            state_on_tmpfs: true,
            ..Default::default()
        };
        let cd = Containerd::start_with(settings).await;
        let c = Client::new(&cd, ctx.shim, ctx.binary).await;
        let run = Path::new("/run/containerd");
        cd.resize_tmpfs(&cd.state_dir(), "8m");
        cd.resize_tmpfs(run, "8m");
        let _io = c.run("full", &spec::spec(&["sleep", "1000"])).await;
        let bundle = cd.bundle("full");
        let bundle_before = names_in(&bundle);
        let bundle_in_ns = cd
            .state_dir()
            .join("io.containerd.runtime.v2.task")
            .join(&cd.namespace)
            .join("full");

        let filler = fill(&cd.seen_from_here(&cd.state_dir()));
        let io = c.io("full-x", false);
        let echo = spec::process(&["echo", "exec'd"], false);
        // The process file is written when the exec starts.
        c.exec("full", "x", &echo, Some(&io), false).await.unwrap();
        let started = c.start("full", "x").await;
        assert_no_space("Start of an exec", started, &bundle_in_ns);
        // The exec ends there, and deletes.
        assert_eq!(c.status("full", "x").await.unwrap(), "STOPPED");
        c.delete_process("full", "x").await.unwrap();
        assert_eq!(
            names_in(&bundle),
            bundle_before,
            "files in the bundle after a failed exec"
        );
        assert_eq!(c.pids("full").await.unwrap().len(), 1, "only the init runs");
        std::fs::remove_file(&filler).unwrap();
        let mut io = c.io("full-y", false);
        c.exec("full", "y", &echo, Some(&io), false)
            .await
            .expect("exec with space again");
        c.start("full", "y").await.unwrap();
        assert_eq!(c.wait("full", "y").await.unwrap(), 0);
        c.delete_process("full", "y").await.unwrap();
        assert_eq!(io.stdout_text(), "exec'd\n");

        let shims = cd.shim_pids();
        let filler = fill(&cd.seen_from_here(run));
        c.create_container("late", &spec::sh("echo created"))
            .await
            .unwrap();
        let state_in_ns = Path::new(ctx.shim.default_state_root()).join(&cd.namespace);
        let created = c.create_task("late", None, false).await;
        if ctx.binary == Binary::Runc && ctx.shim != Shim::Sandbox {
            // runc 1.1 before 1.1.6 loses the cause of a failed state write
            // ("unable to store init state: %!w(<nil>)"); the shim passes on what runc says.
            let s = created.expect_err("Create with the disk full");
            eprintln!("Create with the disk full: {:?}: {}", s.code(), s.message());
            assert!(
                s.message().contains("no space left on device")
                    || s.message().contains("unable to store init state"),
                "Create: {}",
                s.message()
            );
        } else {
            assert_no_space("Create", created, &state_in_ns);
        }
        let state = cd.seen_from_here(&state_in_ns.join("late"));
        assert!(
            !state.exists(),
            "runtime state left at {}: {:?}",
            state.display(),
            names_in(&state)
        );
        assert!(!cd.bundle("late").exists(), "bundle left");
        assert_eq!(cgroups_of(&cd.namespace, "late"), Vec::<PathBuf>::new());
        let left = settle(
            Duration::from_secs(5),
            || async { cd.shim_pids() },
            |s| *s == shims,
        )
        .await;
        assert_eq!(left, shims, "only the first container's shim is left");
        std::fs::remove_file(&filler).unwrap();
        let mut io = c.io("late", false);
        c.create_task("late", Some(&io), false)
            .await
            .expect("create with space again");
        c.start("late", "").await.unwrap();
        assert_eq!(c.wait("late", "").await.unwrap(), 0);
        assert_eq!(io.stdout_text(), "created\n");
        c.remove("late").await;
        c.remove("full").await;
    }
);
