//! `shim-bench`: our shims against containerd's Go runc shim, interleaved in one run against
//! one private containerd. Prints a table, writes JSON and an SVG chart.
//!
//! Usage: shim-bench [--quick] [--runs N] [--out DIR] [--shims LIST] [--phases LIST]
//!                   [--containerd-debug] [--state-on-disk] [--cgroup-v2]
//! LIST is comma-separated: shims among runc.v2,runc.rs-v2,sandbox.v2 (runtime type without
//! `io.containerd.`), phases among latency,throughput,cpu,memory. All by default; a subset is
//! for profiling one part (e.g. `perf record -a` around `--shims sandbox.v2 --phases throughput`).
//!
//! containerd runs as it does in production: log level info, its state and `/run/containerd`
//! on a tmpfs (mounted in its own mount namespace, as `/run` is on any systemd host).
//! `--containerd-debug` and `--state-on-disk` measure with debug logs (which also reach the
//! shims as `-debug`) and with the state on this machine's own `/run` and `/tmp` instead.
//! `--cgroup-v2` shows containerd (and so the shims and runc) the cgroup v2 hierarchy alone on
//! a hybrid host: a pure v2 host's code paths, without the controllers v1 holds.
mod chart;
mod memory;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use futures::stream::{self, StreamExt};
use integration::daemon::Settings;
use integration::events::{Event, Recorder};
use integration::{spec, Binary, Client, Containerd, Shim};
use serde_json::{json, Value};

const SHIMS: [Shim; 3] = [Shim::GoRunc, Shim::RuncRs, Shim::Sandbox];

struct Config {
    daemon: Settings,
    shims: Vec<Shim>,
    phases: Vec<String>,
    runs: usize,
    memory_counts: Vec<usize>,
    throughput_containers: usize,
    throughput_rounds: usize,
    concurrency: usize,
    out: PathBuf,
}

const USAGE: &str = "usage: shim-bench [--quick] [--runs N] [--out DIR] [--shims LIST] \
                     [--phases LIST] [--containerd-debug] [--state-on-disk] [--cgroup-v2]";
const PHASES: [&str; 4] = ["latency", "throughput", "cpu", "memory"];

/// Ends the run on a command line it cannot follow, naming what is wrong.
fn refuse(what: &str) -> ! {
    eprintln!("shim-bench: {what}\n{USAGE}");
    std::process::exit(2);
}

fn config() -> Config {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--quick" | "--containerd-debug" | "--state-on-disk" | "--cgroup-v2" => {}
            "--runs" | "--out" | "--shims" | "--phases" if rest.next().is_some() => {}
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
    let phases = list("--phases").unwrap_or_else(|| PHASES.map(String::from).to_vec());
    if let Some(p) = phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
        refuse(&format!("unknown phase {p:?} in --phases"));
    }
    let runs = match value("--runs") {
        None => {
            if quick {
                5
            } else {
                100
            }
        }
        Some(v) => v
            .parse()
            .ok()
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| refuse(&format!("--runs wants a positive count, not {v:?}"))),
    };
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
        out: PathBuf::from(value("--out").unwrap_or_else(|| "target/bench".into())),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

/// One create → start → exit → delete of /bin/true through the containerd API.
async fn lifecycle(c: &Client, id: &str) -> Duration {
    let t0 = Instant::now();
    c.create_container(id, &spec::spec(&["true"]))
        .await
        .expect("create container");
    c.create_task(id, None, false).await.expect("create task");
    c.start(id, "").await.expect("start");
    c.wait(id, "").await.expect("wait");
    c.delete_task(id).await.expect("delete task");
    c.delete_container(id).await.expect("delete container");
    t0.elapsed()
}

async fn latency(clients: &[Client], runs: usize) -> Value {
    let events = Recorder::start(&clients[0]).await;
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
    let mut started: Vec<Vec<(String, SystemTime)>> = vec![Vec::new(); clients.len()];
    // Interleaved A B A B, back to back, so drift on a shared machine hits both alike.
    for run in 0..runs {
        for (i, c) in clients.iter().enumerate() {
            let id = format!("lat-{i}-{run}");
            started[i].push((id.clone(), SystemTime::now()));
            let d = lifecycle(c, &id).await;
            samples[i].push(d.as_secs_f64() * 1000.0);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let recorded = events.events();
    let mut out = serde_json::Map::new();
    for ((c, mut s), started) in clients.iter().zip(samples).zip(started) {
        s.sort_by(f64::total_cmp);
        out.insert(
            c.shim.runtime_type().into(),
            json!({
                "median_ms": percentile(&s, 0.5),
                "p90_ms": percentile(&s, 0.9),
                "p99_ms": percentile(&s, 0.99),
                "runs": s.len(),
                "phases_median_ms": phases(&recorded, &started),
            }),
        );
    }
    Value::Object(out)
}

/// Median time between a lifecycle's steps, from the timestamps of the events the shim
/// published: `create` is request → TaskCreate (shim start-up and the runtime's create),
/// `start` TaskCreate → TaskStart, `exit` TaskStart → TaskExit, `delete` TaskExit → TaskDelete.
fn phases(events: &[Event], started: &[(String, SystemTime)]) -> Value {
    let at = |id: &str, topic: &str| {
        events
            .iter()
            .find(|e| e.container_id == id && e.topic == topic)
            .and_then(|e| e.at)
    };
    let ms = |from: SystemTime, to: SystemTime| {
        to.duration_since(from)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let mut steps: [Vec<f64>; 4] = Default::default();
    for (id, t0) in started {
        let (Some(create), Some(start), Some(exit), Some(delete)) = (
            at(id, "/tasks/create"),
            at(id, "/tasks/start"),
            at(id, "/tasks/exit"),
            at(id, "/tasks/delete"),
        ) else {
            continue;
        };
        for (step, v) in steps.iter_mut().zip([
            ms(*t0, create),
            ms(create, start),
            ms(start, exit),
            ms(exit, delete),
        ]) {
            step.push(v);
        }
    }
    let mut out = serde_json::Map::new();
    for (name, mut v) in ["create", "start", "exit", "delete"].into_iter().zip(steps) {
        v.sort_by(f64::total_cmp);
        out.insert(name.into(), json!(percentile(&v, 0.5)));
    }
    Value::Object(out)
}

async fn throughput(c: &Client, n: usize, concurrency: usize, tag: &str) -> f64 {
    let ids: Vec<String> = (0..n).map(|i| format!("tp-{tag}-{i}")).collect();
    for id in &ids {
        c.create_container(id, &spec::spec(&["sleep", "1000"]))
            .await
            .expect("create container");
    }
    let t0 = Instant::now();
    stream::iter(ids.iter())
        .for_each_concurrent(concurrency, |id| async move {
            c.create_task(id, None, false).await.expect("create task");
            c.start(id, "").await.expect("start");
        })
        .await;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    for id in &ids {
        c.remove(id).await;
    }
    rate
}

/// CPU time (ms) of a whole process: the scheduler's nanosecond run time of each of its
/// threads (/proc/PID/task/TID/schedstat), or, where the kernel does not keep it, user +
/// system time from /proc/PID/stat, whose 10 ms ticks only suit sums over many runs.
pub fn cpu_ms(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    if ns > 0 {
        return Some(ns as f64 / 1e6);
    }
    stat_ticks_ms(pid, 11)
}

/// CPU time (ms) of the reaped children of a process: for containerd, the shims' `start` (and
/// any `delete`) processes it ran, which exit and are reaped by it.
fn children_cpu_ms(pid: u32) -> Option<f64> {
    stat_ticks_ms(pid, 13)
}

/// Two consecutive /proc/PID/stat tick counters from field index `at` (after the command),
/// summed, in ms: 11/12 are utime/stime, 13/14 cutime/cstime.
fn stat_ticks_ms(pid: u32, at: usize) -> Option<f64> {
    const TICK_MS: f64 = 10.0; // USER_HZ is 100 on Linux
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.rsplit(") ").next()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(at)?.parse::<f64>().ok()? + f.get(at + 1)?.parse::<f64>().ok()?;
    Some(ticks * TICK_MS)
}

/// Waits (up to 10 s) until no shim of this containerd is running.
async fn wait_no_shims(containerd: &Containerd) {
    for _ in 0..200 {
        if containerd.shim_pids().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Shim CPU per lifecycle, as `{serving, start, total}` in ms. A keeper container holds the
/// shim of a group alive while `runs` lifecycles of other containers in that group go through
/// it, so the serving process's CPU can be read before and after. The `start` process each
/// Create spawns (and any `delete` call) is a child containerd reaps: counted from containerd's
/// children CPU over the same window. The runtime binary (runc) is not a shim process and is
/// not counted; for the sandbox, libcontainer's work in the shim is (its clone's work before
/// exec runs in the container's processes and is not).
async fn cpu_per_lifecycle(
    containerd: &Containerd,
    c: &Client,
    runs: usize,
    tag: &str,
) -> Option<Value> {
    let group = |s| spec::annotate(s, "io.containerd.runc.v2.group", &format!("cpu-{tag}"));
    let keeper = format!("cpu-keeper-{tag}");
    // Shims of earlier measurements must be gone: containerd reaps the ones that end (they are
    // orphans it adopts), so their CPU would land in this window's containerd children time.
    wait_no_shims(containerd).await;
    c.create_container(&keeper, &group(spec::spec(&["sleep", "1000"])))
        .await
        .ok()?;
    c.create_task(&keeper, None, false).await.ok()?;
    c.start(&keeper, "").await.ok()?;
    let pid = containerd.shim_pid_of(&keeper)?;
    let before = cpu_ms(pid)?;
    let children_before = children_cpu_ms(containerd.pid())?;
    for run in 0..runs {
        let id = format!("cpu-{tag}-{run}");
        c.create_container(&id, &group(spec::spec(&["true"])))
            .await
            .ok()?;
        c.create_task(&id, None, false).await.ok()?;
        c.start(&id, "").await.ok()?;
        c.wait(&id, "").await.ok()?;
        c.delete_task(&id).await.ok()?;
        c.delete_container(&id).await.ok()?;
    }
    let after = cpu_ms(pid)?;
    let children_after = children_cpu_ms(containerd.pid())?;
    c.remove(&keeper).await;
    wait_no_shims(containerd).await;
    let serving = (after - before) / runs as f64;
    let start = (children_after - children_before) / runs as f64;
    Some(json!({ "serving": serving, "start": start, "total": serving + start }))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cfg = config();
    std::fs::create_dir_all(&cfg.out).expect("create output dir");
    let containerd = Containerd::start_with(cfg.daemon).await;
    let mut clients = Vec::new();
    for &shim in &cfg.shims {
        clients.push(Client::new(&containerd, shim, Binary::Runc).await);
    }
    // Warm caches (binaries, rootfs) before measuring.
    for (i, c) in clients.iter().enumerate() {
        lifecycle(c, &format!("warm-{i}")).await;
    }

    let run = |phase: &str| cfg.phases.iter().any(|p| p == phase);
    let mut latency_out = json!({});
    if run("latency") {
        eprintln!("latency: {} interleaved runs per shim", cfg.runs);
        latency_out = latency(&clients, cfg.runs).await;
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
                let rate = throughput(c, cfg.throughput_containers, cfg.concurrency, &tag).await;
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
    }
    for (i, c) in clients.iter().enumerate().filter(|_| run("cpu")) {
        let cpu = cpu_per_lifecycle(&containerd, c, cfg.runs.min(50), &i.to_string()).await;
        cpu_out.insert(c.shim.runtime_type().into(), json!(cpu));
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

    let report = json!({
        "machine": machine(),
        "containerd": containerd_version(),
        "containerd_log_level": cfg.daemon.log_level,
        "containerd_state_on_tmpfs": cfg.daemon.state_on_tmpfs,
        "cgroup_v2_view": cfg.daemon.cgroup_v2,
        "latency": latency_out,
        "throughput_containers_per_s": throughput_out,
        "throughput_rounds_containers_per_s": throughput_rounds,
        "throughput_ratio_to_go_shim": throughput_ratio,
        "shim_cpu_ms_per_lifecycle": cpu_out,
        "memory": memory_out,
    });
    let json_path = cfg.out.join("bench.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    let svg_path = cfg.out.join("bench.svg");
    std::fs::write(&svg_path, chart::svg(&report)).unwrap();
    print!("{}", table(&report));
    eprintln!("wrote {} and {}", json_path.display(), svg_path.display());
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

/// The report as a Markdown table, with our shims' ratios to the Go shim.
fn table(r: &Value) -> String {
    let go = Shim::GoRunc.runtime_type();
    let mut rows = vec![(
        "metric".to_string(),
        SHIMS
            .iter()
            .map(|s| s.runtime_type().to_string())
            .collect::<Vec<_>>(),
    )];
    let mut add = |name: String, get: &dyn Fn(&str) -> Option<f64>, unit: &str| {
        let base = get(go);
        let cells = SHIMS
            .iter()
            .map(|s| match (get(s.runtime_type()), base) {
                (Some(v), Some(b)) if s.runtime_type() != go && b > 0.0 => {
                    format!("{v:.2} {unit} ({:.2}x)", v / b)
                }
                (Some(v), _) => format!("{v:.2} {unit}"),
                (None, _) => "n/a".into(),
            })
            .collect();
        rows.push((name, cells));
    };
    for p in ["median_ms", "p90_ms", "p99_ms"] {
        add(
            format!("lifecycle {p}"),
            &|s| r["latency"][s][p].as_f64(),
            "ms",
        );
    }
    for phase in ["create", "start", "exit", "delete"] {
        add(
            format!("phase {phase} (median, event timestamps)"),
            &|s| r["latency"][s]["phases_median_ms"][phase].as_f64(),
            "ms",
        );
    }
    add(
        "throughput (median round)".into(),
        &|s| r["throughput_containers_per_s"][s].as_f64(),
        "ctr/s",
    );
    add(
        "throughput ratio to the Go shim (median of the rounds' ratios)".into(),
        &|s| r["throughput_ratio_to_go_shim"][s].as_f64(),
        "",
    );
    for (part, name) in [
        ("serving", "serving shim CPU per lifecycle"),
        ("start", "start process CPU per lifecycle"),
        ("total", "all shim CPU per lifecycle"),
    ] {
        add(
            name.into(),
            &|s| r["shim_cpu_ms_per_lifecycle"][s][part].as_f64(),
            "ms",
        );
    }
    if let Some(mem) = r["memory"].as_object() {
        let mut keys: Vec<String> = mem
            .keys()
            .filter_map(|k| k.split_once('@').map(|(_, n)| n.to_string()))
            .collect();
        keys.dedup();
        keys.sort();
        keys.dedup();
        for n in keys {
            for field in ["rss_kib", "pss_kib", "uss_kib", "threads", "serving_cpu_ms"] {
                let unit = match field {
                    "threads" => "",
                    "serving_cpu_ms" => "ms",
                    _ => "KiB",
                };
                add(
                    format!("{field} per shim ({n})"),
                    &|s| r["memory"][format!("{s}@{n}")][field].as_f64(),
                    unit,
                );
            }
        }
    }
    let mut out = String::new();
    for (i, (name, cells)) in rows.iter().enumerate() {
        out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
        if i == 0 {
            out.push_str(&format!("|---|{}\n", "---|".repeat(cells.len())));
        }
    }
    out
}
