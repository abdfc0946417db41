//! `shim-bench`: our shims against containerd's Go runc shim, interleaved in one run against
//! one private containerd. Prints a table, writes JSON and an SVG chart.
//!
//! Usage: shim-bench [--quick] [--pods [--pauseless] [--userns]] [--runs N] [--pod-runs N] [--out DIR]
//!                   [--shims LIST] [--phases LIST] [--containerd-debug] [--state-on-disk]
//!                   [--cgroup-v2]
//! LIST is comma-separated: shims among runc.v2,runc.rs-v2,sandbox.v2 (runtime type without
//! `io.containerd.`), phases among latency,throughput,cpu,memory,pods. All by default; a subset
//! is for profiling one part (e.g. `perf record -a` around `--shims sandbox.v2 --phases
//! throughput`). `--pods` is `--phases pods`: Kubernetes pods through containerd's CRI plugin,
//! one runtime handler per shim, in a containerd of its own ([`pods`]); with `--pauseless`
//! (containerd 2.x) our handlers run pods without a pause container (`sandboxer = "shim"`);
//! with `--userns` (2.x) the sandbox shim's pods are timed once more user-namespaced.
//!
//! containerd runs as it does in production: log level info, its state and `/run/containerd`
//! on a tmpfs (mounted in its own mount namespace, as `/run` is on any systemd host).
//! `--containerd-debug` and `--state-on-disk` measure with debug logs (which also reach the
//! shims as `-debug`) and with the state on this machine's own `/run` and `/tmp` instead.
//! `--cgroup-v2` shows containerd (and so the shims and runc) the cgroup v2 hierarchy alone on
//! a hybrid host: a pure v2 host's code paths, without the controllers v1 holds.
mod args;
mod chart;
mod containers;
mod memory;
mod pods;
mod procfs;
mod table;

use integration::{Binary, Client, Containerd, Shim};
use serde_json::{json, Value};

use args::Config;

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

fn main() {
    let cfg = args::config();
    std::fs::create_dir_all(&cfg.out).expect("create output dir");
    // Read before the pods phase points CONTAINERD_BIN at its wrapper.
    let version = containerd_version();
    if cfg.phases.iter().any(|p| p == "pods") {
        // Still one thread: the environment is changed before anything can read it.
        pods::use_settings(&cfg);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut report = runtime.block_on(containers_phases(&cfg));
    report["machine"] = json!(machine());
    report["containerd"] = json!(version);
    report["containerd_log_level"] = json!(cfg.daemon.log_level);
    report["containerd_state_on_tmpfs"] = json!(cfg.daemon.state_on_tmpfs);
    report["cgroup_v2_view"] = json!(cfg.daemon.cgroup_v2);
    if cfg.phases.iter().any(|p| p == "pods") {
        report["pods"] = runtime.block_on(pods::run(&cfg));
    }
    let json_path = cfg.out.join("bench.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    let svg_path = cfg.out.join("bench.svg");
    std::fs::write(&svg_path, chart::svg(&report)).unwrap();
    print!("{}", table::table(&report));
    eprintln!("wrote {} and {}", json_path.display(), svg_path.display());
}

/// The phases that run containers through containerd's API, against one containerd without
/// CRI, stopped when they are done.
async fn containers_phases(cfg: &Config) -> Value {
    let run = |phase: &str| cfg.phases.iter().any(|p| p == phase);
    if !["latency", "throughput", "cpu", "memory"]
        .into_iter()
        .any(run)
    {
        return json!({});
    }
    let containerd = Containerd::start_with(cfg.daemon).await;
    let mut clients = Vec::new();
    for &shim in &cfg.shims {
        clients.push(Client::new(&containerd, shim, Binary::Runc).await);
    }
    // Warm caches (binaries, rootfs) before measuring.
    for (i, c) in clients.iter().enumerate() {
        containers::lifecycle(c, &format!("warm-{i}")).await;
    }

    let mut latency_out = json!({});
    if run("latency") {
        eprintln!("latency: {} interleaved runs per shim", cfg.runs);
        latency_out = containers::latency(&clients, cfg.runs).await;
    }

    let mut throughput_out = serde_json::Map::new();
    let mut throughput_rounds = serde_json::Map::new();
    let mut throughput_ratio = serde_json::Map::new();
    if run("throughput") {
        eprintln!(
            "throughput: {} containers, {} at a time, {} interleaved rounds",
            cfg.throughput_containers, cfg.concurrency, cfg.throughput_rounds
        );
        // Rounds interleaved A B C A B C, so a change in the host's load hits every shim;
        // the median round is reported.
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
        for round in 0..cfg.throughput_rounds {
            for (i, c) in clients.iter().enumerate() {
                let tag = format!("{i}-{round}");
                let n = cfg.throughput_containers;
                let rate = containers::throughput(c, n, cfg.concurrency, &tag).await;
                rates[i].push(rate);
            }
        }
        let go = clients.iter().position(|c| c.shim == Shim::GoRunc);
        for (i, c) in clients.iter().enumerate() {
            let name = c.shim.runtime_type();
            throughput_rounds.insert(name.into(), json!(rates[i]));
            let mut sorted = rates[i].clone();
            sorted.sort_by(f64::total_cmp);
            throughput_out.insert(name.into(), json!(percentile(&sorted, 0.5)));
            // Each round's ratio pairs runs a few seconds apart; their median is the figure.
            if let Some(go) = go {
                let mut ratios: Vec<f64> = rates[i]
                    .iter()
                    .zip(&rates[go])
                    .map(|(r, g)| r / g)
                    .collect();
                ratios.sort_by(f64::total_cmp);
                throughput_ratio.insert(name.into(), json!(percentile(&ratios, 0.5)));
            }
        }
    }

    let mut cpu_out = serde_json::Map::new();
    if run("cpu") {
        eprintln!("cpu per lifecycle");
        for (i, c) in clients.iter().enumerate() {
            let runs = cfg.runs.min(50);
            let cpu = containers::cpu_per_lifecycle(&containerd, c, runs, &i.to_string()).await;
            cpu_out.insert(c.shim.runtime_type().into(), json!(cpu));
        }
    }

    let mut memory_out = serde_json::Map::new();
    if run("memory") {
        eprintln!("memory");
        for &n in &cfg.memory_counts {
            for c in &clients {
                let m = memory::per_shim(&containerd, c, n, false).await;
                memory_out.insert(format!("{}@{n}", c.shim.runtime_type()), m);
            }
        }
        for c in &clients {
            let m = memory::per_shim(&containerd, c, 10, true).await;
            memory_out.insert(format!("{}@grouped10", c.shim.runtime_type()), m);
        }
    }
    json!({
        "latency": latency_out,
        "throughput_containers_per_s": throughput_out,
        "throughput_rounds_containers_per_s": throughput_rounds,
        "throughput_ratio_to_go_shim": throughput_ratio,
        "shim_cpu_ms_per_lifecycle": cpu_out,
        "memory": memory_out,
    })
}

fn containerd_version() -> String {
    let bin = std::env::var("CONTAINERD_BIN").unwrap_or_else(|_| "/usr/bin/containerd".into());
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, kernel {}", kernel.trim())
}
