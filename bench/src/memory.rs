//! Memory of shim processes: RSS, PSS and USS from /proc/PID/smaps_rollup, and threads; also
//! the CPU a new serving shim spent bringing its container up (its start-up, Create, Start).
use integration::{spec, Client, Containerd};
use serde_json::{json, Value};

#[derive(Default)]
pub struct Sample {
    pub rss: f64,
    pub pss: f64,
    pub uss: f64,
    pub threads: f64,
    pub cpu_ms: f64,
}

/// RSS, PSS and USS (KiB), threads and CPU (ms) of process `pid`.
pub fn sample(pid: u32) -> Option<Sample> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.count() as f64;
    Some(Sample {
        rss: field("Rss:"),
        pss: field("Pss:"),
        uss: field("Private_Clean:") + field("Private_Dirty:"),
        threads,
        cpu_ms: crate::procfs::cpu_ms(pid).unwrap_or(0.0),
    })
}

/// Starts `n` sleeping containers (one shim each, or all in one shim when `grouped`), lets them
/// settle, and averages the memory of their shims.
pub async fn per_shim(containerd: &Containerd, c: &Client, n: usize, grouped: bool) -> Value {
    let tag = format!("{}-{n}-{grouped}", c.shim.binary_name());
    let ids: Vec<String> = (0..n).map(|i| format!("mem-{tag}-{i}")).collect();
    for id in &ids {
        let mut s = spec::spec(&["sleep", "1000"]);
        if grouped {
            s = spec::annotate(s, "io.kubernetes.cri.sandbox-id", &tag);
        }
        c.create_container(id, &s).await.expect("create container");
        c.create_task(id, None, false).await.expect("create task");
        c.start(id, "").await.expect("start");
    }
    // Let lazily started threads and allocations settle, as on an idle node.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut pids: Vec<u32> = ids
        .iter()
        .filter_map(|id| containerd.shim_pid_of(id))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    let samples: Vec<Sample> = pids.iter().filter_map(|&p| sample(p)).collect();
    let k = samples.len().max(1) as f64;
    let avg = |f: fn(&Sample) -> f64| samples.iter().map(f).sum::<f64>() / k;
    let result = json!({
        "shims": samples.len(),
        "containers": n,
        "rss_kib": avg(|s| s.rss),
        "pss_kib": avg(|s| s.pss),
        "uss_kib": avg(|s| s.uss),
        "threads": avg(|s| s.threads),
        "serving_cpu_ms": avg(|s| s.cpu_ms),
    });
    for id in &ids {
        c.remove(id).await;
    }
    result
}
