//! The per-container phases: lifecycle latency, throughput and shim CPU per lifecycle,
//! through containerd's API (no CRI).
use std::time::{Duration, Instant, SystemTime};

use futures::stream::{self, StreamExt};
use integration::events::{Event, Recorder};
use integration::{spec, Client, Containerd};
use serde_json::{json, Value};

use crate::percentile;
use crate::procfs::{children_cpu_ms, cpu_ms};

/// One create → start → exit → delete of /bin/true through the containerd API.
pub async fn lifecycle(c: &Client, id: &str) -> Duration {
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

pub async fn latency(clients: &[Client], runs: usize) -> Value {
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

pub async fn throughput(c: &Client, n: usize, concurrency: usize, tag: &str) -> f64 {
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

/// Waits (up to 10 s) until no shim of this containerd is running.
pub async fn wait_no_shims(containerd: &Containerd) {
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
pub async fn cpu_per_lifecycle(
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
