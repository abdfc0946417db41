//! Pods, the unit a Kubernetes node pays for: one containerd with its CRI plugin (the test
//! suite's fixture, `integration::cri`: CNI bridge in a private network namespace, local pause
//! and busybox images), a runtime handler per shim: `go-runc` (containerd's Go shim, the
//! reference), `runc-rs` (ours with runc), `sandbox` (ours, libcontainer in-process).
//!
//! - Start latency: RunPodSandbox → CreateContainer → StartContainer of one app container
//!   (`sleep`), as kubelet does it, and teardown: StopPodSandbox + RemovePodSandbox; handlers
//!   interleaved A B C A B C so a change in the host's load hits them alike.
//! - Memory and CPU ([`usage`]): pods of one handler started one after another and kept
//!   alive together.
mod settings;
mod usage;

use std::time::{Duration, Instant};

use integration::cri::api::{IdMapping, NamespaceMode, PodSandboxConfig, UserNamespace};
use integration::cri::client::verbose_info;
use integration::cri::{sleeper, Cri, CriDaemon, Ctx, Handler};
use integration::Shim;
use serde_json::{json, Value};

use crate::args::Config;
use crate::percentile;
pub use settings::use_settings;

/// A pod with its app container running.
pub struct Started {
    pub id: String,
    /// Its cgroup parent (cgroupfs syntax): its containers' cgroups are below.
    pub cgroup: String,
    pub pause: u32,
    pub app: u32,
    /// RunPodSandbox, CreateContainer, StartContainer (ms).
    pub calls_ms: [f64; 3],
    /// From RunPodSandbox's request to StartContainer's answer (ms).
    pub start_ms: f64,
}

fn handler(shim: Shim) -> Handler {
    match shim {
        Shim::GoRunc => Handler::GoRunc,
        Shim::RuncRs => Handler::RuncRsRunc,
        Shim::Sandbox => Handler::Sandbox,
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// A pod config of the suite's (own cgroup below the daemon's parent, pod network, a PID
/// namespace per container), on the node's network when `host_network`.
pub fn pod_config(ctx: &Ctx, base: &str, host_network: bool) -> PodSandboxConfig {
    let mut config = ctx.pod_config(base);
    if host_network {
        let ns = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
            .expect("the suite's pod config has namespace options");
        ns.network = NamespaceMode::Node as i32;
        // The node's UTS namespace comes with its network (kubelet sends no hostname).
        config.hostname.clear();
    }
    config
}

/// The pod user-namespaced (`hostUsers: false`): kubelet's mode POD with a 65536-id range.
fn user_namespaced(mut config: PodSandboxConfig) -> PodSandboxConfig {
    let map = IdMapping {
        host_id: 165536,
        container_id: 0,
        length: 65536,
    };
    integration::cri::client::pod_namespaces(&mut config).userns_options = Some(UserNamespace {
        mode: NamespaceMode::Pod as i32,
        uids: vec![map],
        gids: vec![map],
    });
    config
}

/// RunPodSandbox, CreateContainer and StartContainer of a `sleep` app container, each timed.
/// The app shares the pod's user namespace, if it has one.
pub async fn start(ctx: &Ctx, config: PodSandboxConfig) -> Started {
    let cri = &ctx.cri;
    let name = ctx.handler.name();
    let mut app = sleeper("app");
    let pod_userns = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .and_then(|n| n.userns_options.clone());
    if let Some(userns) = pod_userns {
        let ns = integration::cri::client::security(&mut app)
            .namespace_options
            .get_or_insert_with(Default::default);
        ns.userns_options = Some(userns);
        ns.pid = NamespaceMode::Container as i32;
    }
    let t0 = Instant::now();
    let t = Instant::now();
    let id = cri
        .run_pod_sandbox(config.clone(), name)
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox on {name}: {e:?}"));
    let run = ms(t);
    let t = Instant::now();
    let app = cri
        .create_container(&id, app, &config)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer on {name}: {e:?}"));
    let create = ms(t);
    let t = Instant::now();
    cri.start_container(&app)
        .await
        .unwrap_or_else(|e| panic!("StartContainer on {name}: {e:?}"));
    let start = ms(t);
    let start_ms = ms(t0);
    // Not timed: the pids, for the memory and CPU of the pod's processes.
    let pid = |info: Value| info["pid"].as_u64().unwrap_or(0) as u32;
    let pause = cri
        .pod_status(&id)
        .await
        .map(|r| pid(verbose_info(&r.info)));
    let app_pid = cri.container_status(&app).await;
    let app_pid = app_pid.map(|r| pid(verbose_info(&r.info)));
    Started {
        id,
        cgroup: config.linux.map(|l| l.cgroup_parent).unwrap_or_default(),
        pause: pause.unwrap_or(0),
        app: app_pid.unwrap_or(0),
        calls_ms: [run, create, start],
        start_ms,
    }
}

/// StopPodSandbox + RemovePodSandbox; the time they took (ms).
pub async fn teardown(cri: &Cri, id: &str) -> f64 {
    let t = Instant::now();
    cri.stop_pod(id).await.expect("StopPodSandbox");
    cri.remove_pod(id).await.expect("RemovePodSandbox");
    ms(t)
}

fn stats(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({
        "median_ms": percentile(&v, 0.5),
        "p90_ms": percentile(&v, 0.9),
        "p99_ms": percentile(&v, 0.99),
        "runs": v.len(),
    })
}

/// A latency column: a handler, its pods user-namespaced or not.
struct Column<'a> {
    ctx: &'a Ctx,
    userns: bool,
}

impl Column<'_> {
    fn name(&self) -> String {
        match self.userns {
            false => self.ctx.handler.name().to_string(),
            true => format!("{}-userns", self.ctx.handler.name()),
        }
    }

    fn pod_config(&self, base: &str) -> PodSandboxConfig {
        let config = pod_config(self.ctx, base, false);
        match self.userns {
            false => config,
            true => user_namespaced(config),
        }
    }
}

/// Start and teardown latency over `runs` pods per column, interleaved.
async fn latency(columns: &[Column<'_>], runs: usize) -> serde_json::Map<String, Value> {
    let mut start_ms = vec![Vec::new(); columns.len()];
    let mut calls_ms = vec![[Vec::new(), Vec::new(), Vec::new()]; columns.len()];
    let mut teardown_ms = vec![Vec::new(); columns.len()];
    for _ in 0..runs {
        for (i, column) in columns.iter().enumerate() {
            let ctx = column.ctx;
            let pod = start(ctx, column.pod_config("lat")).await;
            start_ms[i].push(pod.start_ms);
            for (all, one) in calls_ms[i].iter_mut().zip(pod.calls_ms) {
                all.push(one);
            }
            teardown_ms[i].push(teardown(&ctx.cri, &pod.id).await);
            // What a teardown leaves running (the shim's exit, containerd's `delete` run of
            // the shim binary, snapshot garbage collection) must not slow the next handler's
            // start: the Go shim's leftovers would otherwise weigh on ours, which follow it.
            usage::settle(ctx.daemon, Duration::from_millis(100)).await;
        }
    }
    let mut out = serde_json::Map::new();
    for (i, column) in columns.iter().enumerate() {
        let [run, create, start] = std::mem::take(&mut calls_ms[i]);
        out.insert(
            column.name(),
            json!({
                "start": stats(std::mem::take(&mut start_ms[i])),
                "run_pod_sandbox": stats(run),
                "create_container": stats(create),
                "start_container": stats(start),
                "teardown": stats(std::mem::take(&mut teardown_ms[i])),
            }),
        );
    }
    out
}

/// The pods phase: its own containerd with CRI; the handlers of `cfg.shims`.
pub async fn run(cfg: &Config) -> Value {
    if cfg.daemon.cgroup_v2 && !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        // CRI gives every pod cpu shares, and the v2 view of a hybrid host has no cpu
        // controller (v1 holds it): no pod starts there on any runtime.
        eprintln!("pods: skipped on the cgroup v2 view (no cpu controller for pod cpu shares)");
        return Value::Null;
    }
    if cfg.pauseless {
        integration::cri::pauseless::force();
    }
    eprintln!("pods: starting containerd with CRI");
    let daemon = tokio::task::block_in_place(CriDaemon::shared);
    if cfg.pauseless && !daemon.pauseless(Handler::RuncRsRunc) {
        eprintln!(
            "shim-bench: --pauseless needs containerd 2.x (sandboxer = \"shim\"); this is {}.{}",
            daemon.version().0,
            daemon.version().1
        );
        std::process::exit(2);
    }
    let cri = Cri::connect(&daemon.socket()).await;
    let ctxs: Vec<Ctx> = cfg
        .shims
        .iter()
        .map(|&s| Ctx {
            handler: handler(s),
            daemon,
            cri: cri.clone(),
        })
        .collect();
    let accounting = usage::Accounting::new(daemon);
    let mut columns: Vec<Column> = ctxs
        .iter()
        .map(|ctx| Column { ctx, userns: false })
        .collect();
    if cfg.userns {
        if daemon.version().0 < 2 {
            eprintln!("shim-bench: --userns needs containerd 2.x (idmapped rootfs and mounts)");
            std::process::exit(2);
        }
        match ctxs.iter().find(|c| c.handler == Handler::Sandbox) {
            Some(ctx) => columns.push(Column { ctx, userns: true }),
            None => eprintln!("pods: --userns times the sandbox shim, which --shims leaves out"),
        }
    }
    // Warm caches (binaries, image snapshots, CNI) before measuring.
    for column in &columns {
        let ctx = column.ctx;
        let pod = start(ctx, column.pod_config("warm")).await;
        teardown(&ctx.cri, &pod.id).await;
        usage::settle(ctx.daemon, Duration::from_millis(100)).await;
    }
    eprintln!("pods: {} interleaved pod starts per column", cfg.pod_runs);
    let mut latency = latency(&columns, cfg.pod_runs).await;
    eprintln!(
        "pods: memory and CPU, {} pods alive per handler",
        cfg.pods_alive
    );
    let mut out = serde_json::Map::new();
    for ctx in &ctxs {
        let mut m = latency.remove(ctx.handler.name()).unwrap_or(json!({}));
        let u = usage::measure(ctx, &accounting, cfg.pods_alive).await;
        m["usage"] = u;
        m["runtime_type"] = json!(ctx.handler.runtime_type());
        m["pauseless"] = json!(daemon.pauseless(ctx.handler));
        out.insert(ctx.handler.name().into(), m);
    }
    // The user-namespaced column: latency only (its memory and CPU are the shim's as above).
    for column in columns.iter().filter(|c| c.userns) {
        let mut m = latency.remove(&column.name()).unwrap_or(json!({}));
        m["runtime_type"] = json!(column.ctx.handler.runtime_type());
        m["user_namespaced"] = json!(true);
        m["pauseless"] = json!(daemon.pauseless(column.ctx.handler));
        eprintln!(
            "pods: {}: start median {:.1} ms (without a user namespace: {:.1} ms)",
            column.name(),
            m["start"]["median_ms"].as_f64().unwrap_or(f64::NAN),
            out[column.ctx.handler.name()]["start"]["median_ms"]
                .as_f64()
                .unwrap_or(f64::NAN)
        );
        out.insert(column.name(), m);
    }
    let version = daemon.version();
    // containerd and whatever is left go now, not at exit (the fixture's own teardown).
    tokio::task::block_in_place(|| daemon.teardown());
    json!({
        "containerd_version": format!("{}.{}", version.0, version.1),
        "pod_runs": cfg.pod_runs,
        "pods_alive": cfg.pods_alive,
        "handlers": out,
    })
}
