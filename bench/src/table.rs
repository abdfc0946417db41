//! The report as a Markdown table, with our shims' ratios to the Go shim.
use integration::Shim;
use serde_json::Value;

use crate::args::SHIMS;

/// The report as a Markdown table, with our shims' ratios to the Go shim.
pub fn table(r: &Value) -> String {
    let go = Shim::GoRunc.runtime_type();
    let mut rows = vec![(
        "metric".to_string(),
        SHIMS
            .iter()
            .map(|s| s.runtime_type().to_string())
            .collect::<Vec<_>>(),
    )];
    // Rows of phases that did not run are left out.
    let mut add = |name: String, get: &dyn Fn(&str) -> Option<f64>, unit: &str| {
        if SHIMS.iter().all(|s| get(s.runtime_type()).is_none()) {
            return;
        }
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
    let pod = |s: &str| pod_of(r, s);
    for (what, key) in [
        ("pod start", "start"),
        ("pod RunPodSandbox", "run_pod_sandbox"),
        ("pod CreateContainer", "create_container"),
        ("pod StartContainer", "start_container"),
        ("pod teardown", "teardown"),
    ] {
        let stats: &[&str] = if key == "start" || key == "teardown" {
            &["median_ms", "p90_ms", "p99_ms"]
        } else {
            &["median_ms"]
        };
        for &p in stats {
            add(format!("{what} {p}"), &|s| pod(s)[key][p].as_f64(), "ms");
        }
    }
    for part in [
        "containerd",
        "cni",
        "shim_start",
        "shim_serving",
        "runtime",
        "pause",
        "app",
        "total",
    ] {
        add(
            format!("CPU per pod start: {part}"),
            &|s| pod(s)["usage"]["cpu_ms_per_pod_start"][part].as_f64(),
            "ms",
        );
    }
    for part in [
        "rss",
        "pss",
        "shim_rss",
        "shim_pss",
        "pause_rss",
        "pause_pss",
    ] {
        add(
            format!("memory per pod: {part}"),
            &|s| pod(s)["usage"]["memory_kib_per_pod"][part].as_f64(),
            "KiB",
        );
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

/// The pods phase's entry of the handler whose shim is `runtime_type` (entries are keyed by
/// CRI handler, each naming its runtime type; the user-namespaced column is not a shim's).
pub fn pod_of(r: &Value, runtime_type: &str) -> Value {
    r["pods"]["handlers"]
        .as_object()
        .and_then(|h| {
            h.values()
                .find(|v| v["runtime_type"] == runtime_type && v["user_namespaced"] != true)
        })
        .cloned()
        .unwrap_or(Value::Null)
}
