//! Memory and CPU per pod, for one handler: `n` pods started one after another, then alive
//! together (as on a node), then torn down.
//!
//! CPU per pod start, by process, over the window of the `n` starts:
//! - containerd: its own user + system time (`/proc/PID/stat`, exited threads included: its
//!   CRI plugin ends a locked OS thread per network namespace it makes).
//! - the processes containerd reaps: the shims' `start` processes and the CNI plugins. Both
//!   are in containerd's cutime/cstime; they are told apart by a calibration window of
//!   pods on the node's network, which run no CNI plugin: their growth per pod is `start`.
//! - the serving shim: the scheduler's run time of its threads (nanoseconds), all of it (it
//!   was born in the window).
//! - the OCI runtime: runc's processes (create, start of both containers; `runc init`'s
//!   helper stages) or libcontainer's intermediate processes. They are the shim's children,
//!   but the shim's cutime is in 10 ms ticks, truncated once per shim: a pod's runtime work is
//!   a few ticks, so the error would be 10-50%. Instead, by cgroup (nanoseconds): containerd
//!   is moved into a cpuacct cgroup of its own before the pods start, so it, the shims and the
//!   runtime's processes are charged there; what is neither containerd, what it reaped, nor
//!   the serving shims' own time is the runtime's. The runtime's helpers that join the pod's
//!   cgroup before they exit (runc's init stages, libcontainer's intermediate) are charged to
//!   the pod: the pod cgroup's usage less its two container processes' own time.
//! - pause and app: their processes' run time, which includes the runtime's work in them
//!   before they exec'd the program (`runc init` is a Go program; libcontainer's init is a
//!   clone of the shim).
//!
//! Memory: `/proc/PID/smaps_rollup` of each pod's shim and pause process, 2 s after the last
//! start (a shim trims its idle code pages 1 s after a Start).
use std::path::{Path, PathBuf};
use std::time::Duration;

use integration::cri::{CriDaemon, Ctx};
use integration::daemon::processes_with_arg;
use serde_json::{json, Value};

use super::{pod_config, start, teardown, Started};
use crate::memory::sample;
use crate::procfs::{children_cpu_ms, cpu_ms, own_ticks_ms, parent};

/// CPU accounting of containerd and everything it starts.
pub struct Accounting {
    containerd: u32,
    /// The hierarchy the pods' cgroups are read in: cgroup v1's cpuacct, or v2.
    root: PathBuf,
    v2: bool,
    /// containerd's own cgroup (relative to `root`), if it could be moved into one.
    cgroup: Option<PathBuf>,
}

/// containerd's CPU and the CPU charged to its cgroup at one moment.
#[derive(Clone, Copy)]
struct Snapshot {
    own: f64,
    children: f64,
    cgroup: Option<f64>,
}

impl Accounting {
    /// Moves containerd into a cgroup of its own below the daemon's pod parent, where the
    /// fixture's teardown removes it with the pods' cgroups.
    pub fn new(daemon: &CriDaemon) -> Self {
        let v2 = daemon.cgroup_v2();
        let root = if v2 {
            integration::daemon::host_cgroup_v2_root()
        } else {
            ["/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/cpu,cpuacct"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.join("cpuacct.usage").exists())
                .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup/cpuacct"))
        };
        let rel =
            Path::new(daemon.cgroup_parent().trim_start_matches('/')).join("bench-containerd");
        let dir = root.join(&rel);
        let moved = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join("cgroup.procs"), daemon.pid().to_string()));
        if let Err(e) = &moved {
            eprintln!(
                "pods: cannot account CPU by cgroup ({}: {e}); the runtime's CPU is left out",
                dir.display()
            );
        }
        Accounting {
            containerd: daemon.pid(),
            root,
            v2,
            cgroup: moved.ok().map(|()| rel),
        }
    }

    /// CPU (ms) charged to cgroup `rel` (cgroupfs syntax or a relative path) and below.
    fn usage_ms(&self, rel: &Path) -> Option<f64> {
        let dir = self.root.join(rel.strip_prefix("/").unwrap_or(rel));
        if self.v2 {
            let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
            let usec = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?;
            Some(usec.trim().parse::<f64>().ok()? / 1e3)
        } else {
            let ns = std::fs::read_to_string(dir.join("cpuacct.usage")).ok()?;
            Some(ns.trim().parse::<f64>().ok()? / 1e6)
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            own: own_ticks_ms(self.containerd).unwrap_or(f64::NAN),
            children: children_cpu_ms(self.containerd).unwrap_or(f64::NAN),
            cgroup: self.cgroup.as_deref().and_then(|c| self.usage_ms(c)),
        }
    }
}

/// Waits (up to 10 s) until no shim process of this containerd is left (serving, `start` or
/// `delete`), then `pause` for containerd's garbage collection of what was removed, so
/// neither lands in what is measured next.
pub async fn settle(daemon: &CriDaemon, pause: Duration) {
    let address = daemon.socket().to_string_lossy().into_owned();
    for _ in 0..200 {
        let shims = processes_with_arg(&address)
            .into_iter()
            .filter(|(_, argv)| argv.first().is_some_and(|a| a.contains("containerd-shim")))
            .count();
        if shims == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(pause).await;
}

/// One pod's processes and their CPU (ms) when its start is done.
struct PodProcs {
    shim: u32,
    shim_cpu: f64,
    shim_children: f64,
    pause_cpu: f64,
    app_cpu: f64,
    /// All CPU charged to the pod's cgroup.
    cgroup_cpu: Option<f64>,
}

fn procs(acc: &Accounting, pod: &Started) -> PodProcs {
    // The pause process is the shim's child (runc's init is reparented to the shim, its
    // subreaper; libcontainer's init too).
    let shim = parent(pod.pause).unwrap_or(0);
    let exe = std::fs::read_link(format!("/proc/{shim}/exe")).unwrap_or_default();
    assert!(
        exe.to_string_lossy().contains("containerd-shim"),
        "pod {}: the pause process's parent {shim} is not a shim ({})",
        pod.id,
        exe.display()
    );
    PodProcs {
        shim,
        shim_cpu: cpu_ms(shim).unwrap_or(f64::NAN),
        shim_children: children_cpu_ms(shim).unwrap_or(f64::NAN),
        pause_cpu: cpu_ms(pod.pause).unwrap_or(f64::NAN),
        app_cpu: cpu_ms(pod.app).unwrap_or(f64::NAN),
        cgroup_cpu: acc.usage_ms(Path::new(&pod.cgroup)),
    }
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    sum / n.max(1) as f64
}

/// Memory and CPU per pod of `ctx`'s handler, `n` pods alive.
pub async fn measure(ctx: &Ctx, acc: &Accounting, n: usize) -> Value {
    settle(ctx.daemon, Duration::from_millis(500)).await;
    // Calibration: pods on the node's network, whose starts run no CNI plugin. Not where
    // containerd cannot run them (2.0–2.2 panic on host-network pods of a `sandboxer = "shim"`
    // handler): the shim's `start` and CNI then stay one figure.
    let k = (n / 2).max(1);
    let start_process = match ctx.host_network_refusal() {
        Some(why) => {
            eprintln!(
                "pods: {}: CNI and the shim's start not told apart: {why}",
                ctx.handler.name()
            );
            None
        }
        None => {
            let before = acc.snapshot();
            let mut calibration = Vec::new();
            for _ in 0..k {
                calibration.push(start(ctx, pod_config(ctx, "cal", true)).await);
            }
            let after = acc.snapshot();
            for pod in &calibration {
                teardown(&ctx.cri, &pod.id).await;
            }
            settle(ctx.daemon, Duration::from_millis(500)).await;
            Some((after.children - before.children) / k as f64)
        }
    };

    let before = acc.snapshot();
    let mut pods = Vec::new();
    for _ in 0..n {
        pods.push(start(ctx, pod_config(ctx, "mem", false)).await);
    }
    let after = acc.snapshot();
    let p: Vec<PodProcs> = pods.iter().map(|pod| procs(acc, pod)).collect();
    let per = |d: f64| d / n as f64;
    let containerd = per(after.own - before.own);
    let reaped = per(after.children - before.children);
    let shim = mean(p.iter().map(|x| x.shim_cpu));
    let pause = mean(p.iter().map(|x| x.pause_cpu));
    let app = mean(p.iter().map(|x| x.app_cpu));
    let in_pods = p
        .iter()
        .map(|x| x.cgroup_cpu.map(|c| c - x.pause_cpu - x.app_cpu))
        .sum::<Option<f64>>()
        .map(per);
    let runtime = match (after.cgroup, before.cgroup, in_pods) {
        (Some(a), Some(b), Some(in_pods)) => {
            Some(per(a - b) - containerd - reaped - shim + in_pods)
        }
        _ => None,
    };
    let total = runtime.map(|r| containerd + reaped + shim + r + pause + app);

    // As on an idle node: the shims' trimming of idle code pages (1 s after a Start) done.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut shims: Vec<u32> = p.iter().map(|x| x.shim).collect();
    shims.sort_unstable();
    shims.dedup();
    let shim_mem: Vec<_> = shims.iter().filter_map(|&s| sample(s)).collect();
    let pause_mem: Vec<_> = pods.iter().filter_map(|pod| sample(pod.pause)).collect();
    let per_pod = |v: f64| v / n as f64;
    let shim_rss = per_pod(shim_mem.iter().map(|s| s.rss).sum());
    let shim_pss = per_pod(shim_mem.iter().map(|s| s.pss).sum());
    let pause_rss = per_pod(pause_mem.iter().map(|s| s.rss).sum());
    let pause_pss = per_pod(pause_mem.iter().map(|s| s.pss).sum());
    let result = json!({
        "pods": n,
        "shims": shims.len(),
        "memory_kib_per_pod": {
            "rss": shim_rss + pause_rss,
            "pss": shim_pss + pause_pss,
            "shim_rss": shim_rss,
            "shim_pss": shim_pss,
            "shim_uss": per_pod(shim_mem.iter().map(|s| s.uss).sum()),
            "pause_rss": pause_rss,
            "pause_pss": pause_pss,
        },
        "shim_threads": mean(shim_mem.iter().map(|s| s.threads)),
        "cpu_ms_per_pod_start": {
            "containerd": containerd,
            "cni": start_process.map(|s| reaped - s),
            "shim_start": start_process,
            "cni_and_shim_start": reaped,
            "shim_serving": shim,
            "shim": start_process.map(|s| shim + s),
            "runtime": runtime,
            "pause": pause,
            "app": app,
            "total": total,
        },
        // The runtime's CPU the other way: the shims' cutime + cstime, in 10 ms ticks
        // truncated once per shim (so low by up to 10 ms per pod).
        "runtime_by_shim_cutime_ms": mean(p.iter().map(|x| x.shim_children)),
        "runtime_in_pod_cgroups_ms": in_pods,
        "calibration_pods": k,
    });
    for pod in &pods {
        teardown(&ctx.cri, &pod.id).await;
    }
    result
}
