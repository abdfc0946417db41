//! The sandbox shim under load: many containers created and deleted concurrently through one
//! grouped shim, which calls libcontainer (clone, waitpid on its intermediate process) for each
//! while it keeps serving the others.
use futures::future::join_all;
use integration::runtime::{run, Ctx};
use integration::{spec, Binary, Shim};

const CONTAINERS: usize = 200;

async fn lifecycle(ctx: &Ctx, id: String) -> i32 {
    let c = &ctx.client;
    let s = spec::annotate(spec::sh("exit 7"), "io.containerd.runc.v2.group", "stress");
    c.create_container(&id, &s).await.expect("create container");
    c.create_task(&id, None, false).await.expect("create task");
    c.start(&id, "").await.expect("start");
    let status = c.wait(&id, "").await.expect("wait");
    c.delete_task(&id).await.expect("delete task");
    c.delete_container(&id).await.expect("delete container");
    status as i32
}

/// State of every process whose parent is `ppid` ("Z" for a zombie).
fn children_of(ppid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": the fields after the last ')'.
        let mut rest = stat
            .rsplit_once(')')
            .map(|r| r.1)
            .unwrap_or("")
            .split_whitespace();
        let (state, parent) = (rest.next(), rest.next().and_then(|p| p.parse().ok()));
        if parent == Some(ppid) {
            out.push((pid, state.unwrap_or("?").to_string()));
        }
    }
    out
}

async fn stress(ctx: Ctx) {
    // A long-lived container keeps the group's shim up (it exits once its last one is gone).
    let keep = spec::annotate(
        spec::spec(&["sleep", "1000"]),
        "io.containerd.runc.v2.group",
        "stress",
    );
    let _keeper_io = ctx.client.run("keeper", &keep).await;
    let keeper = ctx.client.pids("keeper").await.unwrap()[0].0;
    let ids: Vec<String> = (0..CONTAINERS).map(|i| format!("stress-{i}")).collect();
    let statuses = join_all(ids.iter().map(|id| lifecycle(&ctx, id.clone()))).await;
    assert!(statuses.iter().all(|&s| s == 7), "{statuses:?}");

    // One shim served them all, and it is still alive and serving.
    let shims = ctx.containerd.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let s = spec::annotate(
        spec::sh("echo still serving"),
        "io.containerd.runc.v2.group",
        "stress",
    );
    let mut io = ctx.client.run("last", &s).await;
    assert_eq!(ctx.client.wait("last", "").await.unwrap(), 0);
    assert_eq!(io.stdout_text(), "still serving\n");
    ctx.client.delete_task("last").await.unwrap();

    // Nothing left behind: no child but the keeper (no zombie), no state, no rootfs mount,
    // no cgroup.
    let children = children_of(shims[0]);
    assert_eq!(children.len(), 1, "children of the shim: {children:?}");
    assert_eq!(children[0].0, keeper, "children of the shim: {children:?}");
    assert_ne!(children[0].1, "Z");
    ctx.client.remove("keeper").await;
    let ns = &ctx.containerd.namespace;
    let state = std::path::Path::new(Shim::Sandbox.default_state_root()).join(ns);
    let left = std::fs::read_dir(&state).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "container state left in {}", state.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("/{ns}/stress-")),
        "rootfs mounts left"
    );
    for controller in ["memory", "pids", "cpu", "devices", "freezer"] {
        let dir = format!("/sys/fs/cgroup/{controller}/{ns}");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "cgroups left in {dir}: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_containers_through_one_grouped_shim() {
    run(Shim::Sandbox, Binary::Runc, stress).await
}

/// SystemdCgroup asks for systemd's cgroup manager; without systemd the Create is refused with
/// a clear error instead of silently using cgroupfs, and nothing is left behind.
async fn systemd_cgroup_needs_systemd(ctx: Ctx) {
    if std::path::Path::new("/run/systemd/system").exists() {
        eprintln!("skipped: systemd runs here, the refusal cannot be observed");
        return;
    }
    let c = &ctx.client;
    let opts = integration::client::Options {
        systemd_cgroup: true,
        ..c.options()
    };
    let any = integration::client::options_any(&opts);
    c.create_container_with("sd", &spec::spec(&["true"]), Some(any.clone()))
        .await
        .unwrap();
    let r = c.create_task_with("sd", None, false, Some(any)).await;
    integration::client::assert_code(
        r,
        containerd_client::tonic::Code::InvalidArgument,
        "systemd is not running",
    );
    let state = std::path::Path::new(Shim::Sandbox.default_state_root())
        .join(&ctx.containerd.namespace)
        .join("sd");
    assert!(!state.exists(), "state left at {}", state.display());
    c.delete_container("sd").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_cgroup_without_systemd_is_refused() {
    run(Shim::Sandbox, Binary::Runc, systemd_cgroup_needs_systemd).await
}
