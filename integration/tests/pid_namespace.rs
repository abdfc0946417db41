//! containerd in a PID namespace of its own (kind, k3d, containerd in a container): a container
//! that joins another container's PID namespace by path (a pod's app containers and its pause
//! container under `shareProcessNamespace`), with containerd's default cgroup mount at
//! /sys/fs/cgroup. libcontainer 0.7 looked the joining init's own pid (as numbered in the joined
//! namespace) up in the shim's /proc to mount cgroup v1, and failed ("failed to prepare rootfs")
//! when no process had that pid there (docs/upstream/libcontainer-pid-namespace-cgroup-mount.md).
//! The same case with containerd in the host's PID namespace must keep working.
use std::path::PathBuf;
use std::sync::OnceLock;

use integration::runtime::{shim_bin_dir, Ctx};
use integration::{spec, Binary, Client, Containerd, Shim};
use serde_json::json;

/// A `containerd` that runs the real one as pid 1 of a new PID namespace with its own /proc
/// (`unshare --pid --fork --mount-proc`). unshare ignores SIGTERM, so the wrapper passes the
/// harness's SIGTERM on to containerd; when containerd (the namespace's init) ends, the kernel
/// ends every shim and container in the namespace, and `--kill-child` ends it if unshare dies.
fn wrapper() -> &'static PathBuf {
    static WRAPPER: OnceLock<PathBuf> = OnceLock::new();
    WRAPPER.get_or_init(|| {
        let real = std::env::var("CONTAINERD_BIN").unwrap_or_else(|_| "/usr/bin/containerd".into());
        // Kept with the build (one per real containerd), not in /tmp.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pidns-containerd");
        std::fs::create_dir_all(&dir).expect("wrapper dir");
        let path = dir.join(format!("containerd-{:x}", hash(&real)));
        let tmp = dir.join(format!(".containerd-{}", std::process::id()));
        let script = format!(
            "#!/bin/sh\n\
             unshare --pid --fork --kill-child --mount-proc --propagation private {real} \"$@\" &\n\
             u=$!\n\
             trap 'pkill -TERM -P $u' TERM INT\n\
             wait $u\n\
             wait $u\n"
        );
        std::fs::write(&tmp, script).expect("write wrapper");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::rename(&tmp, &path).expect("install wrapper");
        path
    })
}

fn hash(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// The environment variable `CONTAINERD_BIN` is the process's: one start at a time.
static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `runtime::run` with containerd in a PID namespace of its own when `own_pid_namespace`.
async fn run_in<F, Fut>(own_pid_namespace: bool, shim: Shim, binary: Binary, body: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if !integration::is_root() {
        return;
    }
    assert!(
        shim_bin_dir().join(shim.binary_name()).exists(),
        "shim binary not found (run `cargo build --workspace --bins`)"
    );
    let containerd = {
        let _one = STARTING.lock().await;
        let wrapper = wrapper().clone();
        let before = std::env::var_os("CONTAINERD_BIN");
        if own_pid_namespace {
            std::env::set_var("CONTAINERD_BIN", &wrapper);
        }
        let c = Containerd::start().await;
        match before {
            Some(v) => std::env::set_var("CONTAINERD_BIN", v),
            None => std::env::remove_var("CONTAINERD_BIN"),
        }
        c
    };
    let client = Client::new(&containerd, shim, binary).await;
    body(Ctx {
        shim,
        binary,
        containerd,
        client,
    })
    .await
}

/// A (own PID namespace) runs; B joins A's PID namespace by the path the shim sees, with the
/// default spec's cgroup mount, and sees A as pid 1 and its own cgroups under /sys/fs/cgroup.
async fn joiner_sees_the_first_and_its_cgroups(ctx: Ctx, own_pid_namespace: bool) {
    let c = &ctx.client;
    // With containerd in a PID namespace of its own, the pids of that namespace are few (and
    // its threads' ids resolve in /proc as well): A forks a few hundred processes first, so
    // that B's pid in A's namespace is one the shim's /proc has no process for.
    let a = if own_pid_namespace {
        spec::sh("for i in $(seq 400); do (exit 0) & done; wait; exec sleep 1000")
    } else {
        spec::spec(&["sleep", "1000"])
    };
    c.create_container("a", &a).await.unwrap();
    let a_io = c.io("a", false);
    // The pid in the task's answer is the shim's (containerd's) view: what CRI puts in the path.
    let a_pid = c.create_task("a", Some(&a_io), false).await.unwrap();
    c.start("a", "").await.unwrap();
    if own_pid_namespace {
        for n in 0.. {
            let (_, cmdline) = c
                .exec_run("a", &format!("probe{n}"), &["cat", "/proc/1/cmdline"])
                .await;
            if cmdline.starts_with("sleep") {
                break;
            }
            assert!(n < 100, "a did not get to its sleep: {cmdline:?}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    if own_pid_namespace {
        // shim_pids: as this (the host's) PID namespace numbers them.
        let shim = ctx.containerd.shim_pids()[0];
        // NSpid: its pid in each PID namespace it is in, outermost first.
        let status = std::fs::read_to_string(format!("/proc/{shim}/status")).unwrap();
        let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
        assert_eq!(
            nspid.split_whitespace().count(),
            3,
            "the shim should run in containerd's PID namespace: {nspid}"
        );
    }

    let mut b = spec::sh(
        "tr '\\0' ' ' < /proc/1/cmdline; echo; \
         test -e /sys/fs/cgroup/memory/memory.limit_in_bytes && echo memory; \
         test -e /sys/fs/cgroup/pids/pids.max && echo pids; \
         grep -qx $$ /sys/fs/cgroup/pids/cgroup.procs && echo own; \
         mkdir /sys/fs/cgroup/pids/probe 2>/dev/null || echo ro",
    );
    // CRI's cgroup mount (`ctr oci spec` has none).
    b["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/sys/fs/cgroup",
        "type": "cgroup",
        "source": "cgroup",
        "options": ["ro", "nosuid", "noexec", "nodev"],
    }));
    let namespaces = b["linux"]["namespaces"].as_array_mut().unwrap();
    for n in namespaces.iter_mut() {
        if n["type"] == "pid" {
            *n = json!({ "type": "pid", "path": format!("/proc/{a_pid}/ns/pid") });
        }
    }
    c.create_container("b", &b).await.unwrap();
    let mut b_io = c.io("b", false);
    c.create_task("b", Some(&b_io), false)
        .await
        .expect("create b, which joins a's PID namespace");
    c.start("b", "").await.unwrap();
    assert_eq!(c.wait("b", "").await.unwrap(), 0);
    let out = b_io.stdout_text();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first().map(|l| l.trim()), Some("sleep 1000"), "{out}");
    if !ctx.lacks_controller("memory") && ctx.containerd.cgroup_v2_controllers().is_none() {
        assert!(
            ["memory", "pids", "own", "ro"]
                .iter()
                .all(|l| lines.contains(l)),
            "{out}"
        );
    }
    c.delete_task("b").await.unwrap();
    c.delete_container("b").await.unwrap();
    c.kill("a", "", 9, false).await.unwrap();
    c.wait("a", "").await.unwrap();
    c.delete_task("a").await.unwrap();
    c.delete_container("a").await.unwrap();
}

macro_rules! arms {
    ($name:ident, $own:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sandbox() {
                run_in($own, Shim::Sandbox, Binary::Runc, |ctx| {
                    joiner_sees_the_first_and_its_cgroups(ctx, $own)
                })
                .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn runc_rs_runc() {
                run_in($own, Shim::RuncRs, Binary::Runc, |ctx| {
                    joiner_sees_the_first_and_its_cgroups(ctx, $own)
                })
                .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn runc_rs_crun() {
                run_in($own, Shim::RuncRs, Binary::Crun, |ctx| {
                    joiner_sees_the_first_and_its_cgroups(ctx, $own)
                })
                .await
            }
        }
    };
}

arms!(a_joined_pid_namespace_with_containerd_in_its_own, true);
arms!(a_joined_pid_namespace_with_containerd_in_the_hosts, false);
