//! The command line: what to measure, how much, and how containerd runs.
use std::path::PathBuf;

use integration::daemon::Settings;
use integration::Shim;

pub const SHIMS: [Shim; 3] = [Shim::GoRunc, Shim::RuncRs, Shim::Sandbox];

pub struct Config {
    pub daemon: Settings,
    pub shims: Vec<Shim>,
    pub phases: Vec<String>,
    pub runs: usize,
    pub memory_counts: Vec<usize>,
    pub throughput_containers: usize,
    pub throughput_rounds: usize,
    pub concurrency: usize,
    /// Pods started (and torn down) per handler for the pod latency.
    pub pod_runs: usize,
    /// Pods alive at once per handler for pod memory and CPU.
    pub pods_alive: usize,
    /// Our handlers run pods without a pause container (`sandboxer = "shim"`, containerd
    /// 2.x); the Go shim keeps its pause container, the reference.
    pub pauseless: bool,
    /// One more latency column: the sandbox shim's pods user-namespaced (`hostUsers: false`,
    /// containerd 2.x), what that costs per pod.
    pub userns: bool,
    pub out: PathBuf,
}

const USAGE: &str =
    "usage: shim-bench [--quick] [--pods [--pauseless] [--userns]] [--runs N] [--pod-runs N] [--out DIR] \
                     [--shims LIST] [--phases LIST] [--containerd-debug] [--state-on-disk] \
                     [--cgroup-v2]";
pub const PHASES: [&str; 5] = ["latency", "throughput", "cpu", "memory", "pods"];

/// Ends the run on a command line it cannot follow, naming what is wrong.
fn refuse(what: &str) -> ! {
    eprintln!("shim-bench: {what}\n{USAGE}");
    std::process::exit(2);
}

fn count(v: &str, flag: &str) -> usize {
    v.parse()
        .ok()
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| refuse(&format!("{flag} wants a positive count, not {v:?}")))
}

pub fn config() -> Config {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--quick" | "--pods" | "--pauseless" | "--userns" | "--containerd-debug"
            | "--state-on-disk" | "--cgroup-v2" => {}
            "--runs" | "--pod-runs" | "--out" | "--shims" | "--phases" if rest.next().is_some() => {
            }
            _ => refuse(&format!("unexpected argument {a:?}")),
        }
    }
    let flag = |f: &str| args.iter().any(|a| a == f);
    let quick = flag("--quick");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let list =
        |flag: &str| value(flag).map(|v| v.split(',').map(str::to_string).collect::<Vec<_>>());
    let shims = match list("--shims") {
        None => SHIMS.to_vec(),
        Some(names) => names
            .iter()
            .map(|n| {
                SHIMS
                    .into_iter()
                    .find(|s| s.runtime_type() == format!("io.containerd.{n}"))
                    .unwrap_or_else(|| refuse(&format!("unknown shim {n:?} in --shims")))
            })
            .collect(),
    };
    // `--pods` is the pods phase alone (its own containerd with CRI; the plain one not started).
    let phases = match (list("--phases"), flag("--pods")) {
        (Some(_), true) => refuse("--pods is --phases pods: give one of them"),
        (None, true) => vec!["pods".to_string()],
        (Some(p), false) => p,
        (None, false) => PHASES.map(String::from).to_vec(),
    };
    if let Some(p) = phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
        refuse(&format!("unknown phase {p:?} in --phases"));
    }
    let runs = value("--runs").map_or(if quick { 5 } else { 100 }, |v| count(&v, "--runs"));
    let pod_runs =
        value("--pod-runs").map_or(if quick { 5 } else { 50 }, |v| count(&v, "--pod-runs"));
    Config {
        daemon: Settings {
            log_level: if flag("--containerd-debug") {
                "debug"
            } else {
                "info"
            },
            state_on_tmpfs: !flag("--state-on-disk"),
            cgroup_v2: flag("--cgroup-v2"),
        },
        shims,
        phases,
        runs,
        memory_counts: if quick { vec![3] } else { vec![10, 50] },
        throughput_containers: if quick { 8 } else { 50 },
        throughput_rounds: if quick { 1 } else { 3 },
        concurrency: 8,
        pod_runs,
        pods_alive: if quick { 3 } else { 20 },
        pauseless: flag("--pauseless"),
        userns: flag("--userns"),
        out: PathBuf::from(value("--out").unwrap_or_else(|| "target/bench".into())),
    }
}
