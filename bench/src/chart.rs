//! The comparison as an SVG bar chart: each metric of our shims as a ratio to the Go shim
//! (1.0 = same; lower is better for all but throughput).
use serde_json::Value;

const GO: &str = "io.containerd.runc.v2";

fn metrics(r: &Value) -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    let mut push = |label: &str, get: &dyn Fn(&str) -> Option<f64>| {
        let Some(base) = get(GO).filter(|b| *b > 0.0) else {
            return;
        };
        for shim in ["io.containerd.runc.rs-v2", "io.containerd.sandbox.v2"] {
            if let Some(v) = get(shim) {
                out.push((label.to_string(), shim.to_string(), v / base));
            }
        }
    };
    push("lifecycle median", &|s| {
        r["latency"][s]["median_ms"].as_f64()
    });
    push("lifecycle p99", &|s| r["latency"][s]["p99_ms"].as_f64());
    // The paired rounds' ratio (the Go shim's own is 1), else the plain rates.
    push("throughput (higher is better)", &|s| {
        r["throughput_ratio_to_go_shim"][s]
            .as_f64()
            .or_else(|| r["throughput_containers_per_s"][s].as_f64())
    });
    push("all shim CPU", &|s| {
        r["shim_cpu_ms_per_lifecycle"][s]["total"].as_f64()
    });
    if let Some(mem) = r["memory"].as_object() {
        let largest = mem
            .keys()
            .filter_map(|k| k.split_once('@')?.1.parse::<u32>().ok())
            .max();
        if let Some(n) = largest {
            for f in ["rss_kib", "pss_kib", "uss_kib"] {
                push(&format!("{f} ({n} shims)"), &|s| {
                    r["memory"][format!("{s}@{n}")][f].as_f64()
                });
            }
        }
    }
    let pod = |s: &str| crate::table::pod_of(r, s);
    push("pod start median", &|s| {
        pod(s)["start"]["median_ms"].as_f64()
    });
    push("pod start p99", &|s| pod(s)["start"]["p99_ms"].as_f64());
    push("pod teardown median", &|s| {
        pod(s)["teardown"]["median_ms"].as_f64()
    });
    push("CPU per pod start", &|s| {
        pod(s)["usage"]["cpu_ms_per_pod_start"]["total"].as_f64()
    });
    for f in ["rss", "pss"] {
        push(&format!("{f} per pod (shim + pause)"), &|s| {
            pod(s)["usage"]["memory_kib_per_pod"][f].as_f64()
        });
    }
    out
}

pub fn svg(r: &Value) -> String {
    let rows = metrics(r);
    let (row_h, left, width) = (28.0, 260.0, 420.0);
    let max = rows.iter().map(|r| r.2).fold(1.0f64, f64::max).max(1.0);
    let height = 60.0 + row_h * rows.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"14\">Ratio to containerd's Go shim (1.0 = same)</text>\n",
        left + width + 80.0
    );
    let x1 = left + width / max;
    svg += &format!(
        "<line x1=\"{x1}\" y1=\"30\" x2=\"{x1}\" y2=\"{}\" stroke=\"#888\" stroke-dasharray=\"4\"/>\n",
        height - 10.0
    );
    for (i, (label, shim, ratio)) in rows.iter().enumerate() {
        let y = 40.0 + row_h * i as f64;
        let w = width * ratio / max;
        let color = if shim.contains("sandbox") {
            "#e67e22"
        } else {
            "#2e86c1"
        };
        svg += &format!(
            "<text x=\"10\" y=\"{}\">{label}</text>\n<rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" \
             height=\"18\" fill=\"{color}\"/>\n<text x=\"{:.1}\" y=\"{}\">{ratio:.2}x</text>\n",
            y + 13.0,
            left + w + 5.0,
            y + 13.0
        );
    }
    svg + "</svg>\n"
}
