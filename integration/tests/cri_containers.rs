//! CRI: containers on every runtime handler: lifecycle and status (exit code, reason, times),
//! ExecSync (output, exit code, timeout), logs in CRI format and their reopening, stats,
//! resource updates, OOM kills, volumes.
use std::path::Path;
use std::time::{Duration, Instant};

use integration::cri::api::*;
use integration::cri::client::*;
use integration::cri::tonic;
use integration::cri_tests;

cri_tests!(container_lifecycle_and_status, |ctx| {
    let pod = ctx.run_pod(ctx.pod_config("ctr")).await;
    let id = pod
        .create(container_config(
            "exit3",
            &["sh", "-c", "echo started; sleep 0.5; exit 3"],
        ))
        .await
        .expect("CreateContainer");
    let s = pod.status(&id).await;
    assert_eq!(s.state, ContainerState::ContainerCreated as i32, "{s:?}");
    assert!(s.created_at > 0 && s.started_at == 0, "{s:?}");
    assert_eq!(s.metadata.as_ref().unwrap().name, "exit3");
    assert!(s.image_ref.starts_with("sha256:"), "{s:?}");

    ctx.cri.start_container(&id).await.expect("StartContainer");
    let s = pod.status(&id).await;
    assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{s:?}");
    assert!(s.started_at >= s.created_at, "{s:?}");

    let s = pod.wait_exited(&id, Duration::from_secs(10)).await;
    assert_eq!(s.exit_code, 3, "{s:?}");
    assert_eq!(s.reason, "Error", "{s:?}");
    assert!(s.finished_at >= s.started_at + 400_000_000, "{s:?}");

    // A clean exit is "Completed".
    let ok = pod.run(container_config("exit0", &["true"])).await;
    let s = pod.wait_exited(&ok, Duration::from_secs(10)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"), "{s:?}");

    ctx.cri
        .remove_container(&id)
        .await
        .expect("RemoveContainer");
    let gone = ctx.cri.container_status(&id).await;
    assert_eq!(gone.err().map(|e| e.code()), Some(tonic::Code::NotFound));
    let listed = ctx.cri.list_containers(&pod.id).await.unwrap();
    assert!(listed.iter().all(|c| c.id != id), "{listed:?}");
    assert!(listed.iter().any(|c| c.id == ok), "{listed:?}");
});

cri_tests!(stop_container_sigterm_then_sigkill, |ctx| {
    let pod = ctx.run_pod(ctx.pod_config("stop")).await;
    // A process that handles SIGTERM: stopped at once, with its own exit code.
    let trap = pod
        .run(container_config(
            "trap",
            &[
                "sh",
                "-c",
                "trap 'exit 42' TERM; echo ready; while :; do sleep 0.1; done",
            ],
        ))
        .await;
    pod.wait_log("trap", "ready", Duration::from_secs(10)).await;
    let start = Instant::now();
    ctx.cri
        .stop_container(&trap, 30)
        .await
        .expect("StopContainer");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let s = pod.status(&trap).await;
    assert_eq!(
        (s.state, s.exit_code),
        (ContainerState::ContainerExited as i32, 42),
        "{s:?}"
    );

    // pid 1 of its namespace ignores an unhandled SIGTERM: SIGKILL after the timeout.
    let stubborn = pod.run(sleeper("stubborn")).await;
    let start = Instant::now();
    ctx.cri
        .stop_container(&stubborn, 1)
        .await
        .expect("StopContainer");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(15),
        "{took:?}"
    );
    let s = pod.status(&stubborn).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "Error"), "{s:?}");
    // Stopping again is fine.
    ctx.cri
        .stop_container(&stubborn, 1)
        .await
        .expect("StopContainer again");
});

cri_tests!(exec_sync_output_exit_code_and_environment, |ctx| {
    let pod = ctx.run_pod(ctx.pod_config("exec")).await;
    let mut config = sleeper("app");
    config.envs.push(KeyValue {
        key: "FROM_CONFIG".into(),
        value: "cri value".into(),
    });
    config.working_dir = "/tmp".into();
    let c = pod.run(config).await;

    let (out, err, code) = pod
        .exec(&c, &["sh", "-c", "echo out; echo err >&2; exit 7"])
        .await;
    assert_eq!((out.as_str(), err.as_str(), code), ("out\n", "err\n", 7));
    assert_eq!(
        pod.exec_ok(&c, &["sh", "-c", "echo \"$FROM_CONFIG\"; pwd"])
            .await,
        "cri value\n/tmp\n"
    );
    // 256 KiB through ExecSync, exactly.
    let big = pod
        .exec_ok(&c, &["sh", "-c", "head -c 262144 /dev/zero | tr '\\0' x"])
        .await;
    assert_eq!(big.len(), 262144);
    assert!(big.bytes().all(|b| b == b'x'));
    // Killed by a signal: 128 + signal, as a shell reports it.
    let (_, _, code) = pod.exec(&c, &["sh", "-c", "kill -9 $$"]).await;
    assert_eq!(code, 137);
    // Many in a row, each with its own output.
    for i in 0..20 {
        assert_eq!(
            pod.exec_ok(&c, &["echo", &i.to_string()]).await,
            format!("{i}\n")
        );
    }
});

cri_tests!(exec_sync_of_a_missing_program_fails_at_once, |ctx| {
    let pod = ctx.run_pod(ctx.pod_config("nocmd")).await;
    let c = pod.run(sleeper("app")).await;
    // A CRI error naming the program, at once; the container runs on. containerd deletes the
    // failed exec with a kill that waits for the exec's exit (its 1-minute clean-up timeout):
    // the shim must answer Wait for an exec that never started.
    let start = Instant::now();
    let missing = tokio::time::timeout(
        Duration::from_secs(10),
        ctx.cri.exec_sync(&c, &["/no/such/program"], 10),
    )
    .await;
    match missing {
        Ok(Err(e)) => assert!(e.message().contains("/no/such/program"), "{e:?}"),
        Ok(Ok(r)) => assert_ne!(r.exit_code, 0, "exec of a missing program succeeded: {r:?}"),
        Err(_) => panic!("no answer after {:?}", start.elapsed()),
    }
    assert_eq!(pod.exec_ok(&c, &["echo", "alive"]).await, "alive\n");
});

cri_tests!(exec_sync_timeout, |ctx| {
    let pod = ctx.run_pod(ctx.pod_config("timeout")).await;
    let c = pod.run(sleeper("app")).await;
    let start = Instant::now();
    let r = ctx.cri.exec_sync(&c, &["sleep", "77"], 1).await;
    let took = start.elapsed();
    match r {
        Err(e) => assert!(
            e.message().contains("timeout") || e.code() == tonic::Code::DeadlineExceeded,
            "{e:?}"
        ),
        Ok(r) => panic!("ExecSync past its timeout answered {r:?}"),
    }
    assert!(took < Duration::from_secs(15), "the timeout took {took:?}");
    // The timed-out process is gone; the container runs on.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ps = pod.exec_ok(&c, &["ps", "-o", "args"]).await;
        if !ps.contains("sleep 77") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the timed-out exec is still running: {ps}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = pod.status(&c).await;
    assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{s:?}");
});

cri_tests!(logs_in_cri_format, |ctx| {
    let pod = ctx.run_pod(ctx.pod_config("logs")).await;
    let script = "echo line one; echo to stderr >&2; printf 'no newline yet'; sleep 0.2; \
                  echo ' and done'; head -c 20000 /dev/zero | tr '\\0' y; echo; echo last";
    let c = pod
        .run(container_config("talk", &["sh", "-c", script]))
        .await;
    pod.wait_exited(&c, Duration::from_secs(10)).await;
    let s = pod.status(&c).await;
    assert_eq!(Path::new(&s.log_path), pod.log_path("talk"), "{s:?}");
    let raw = std::fs::read_to_string(pod.log_path("talk")).expect("log file");
    // Every line: "<RFC 3339 time with nanoseconds> <stream> <P|F> <text>".
    for line in raw.lines() {
        let parts: Vec<&str> = line.splitn(4, ' ').collect();
        assert!(parts.len() >= 3, "{line:?}");
        assert!(
            parts[0].len() >= 20 && parts[0].contains('T') && parts[0].contains('.'),
            "timestamp of {line:?}"
        );
        assert!(["stdout", "stderr"].contains(&parts[1]), "{line:?}");
        assert!(["P", "F"].contains(&parts[2]), "{line:?}");
    }
    // A line longer than containerd's 16 KiB limit is split into partial (P) lines.
    assert!(
        raw.lines().any(|l| l.split(' ').nth(2) == Some("P")),
        "no partial line: {raw}"
    );
    let lines = pod.log_lines("talk");
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|(s, _)| s == "stdout")
        .map(|(_, m)| m.as_str())
        .collect();
    assert_eq!(stdout.len(), 4, "{stdout:?}");
    assert_eq!(stdout[0], "line one");
    assert_eq!(stdout[1], "no newline yet and done");
    assert_eq!(stdout[2], "y".repeat(20000));
    assert_eq!(stdout[3], "last");
    assert!(
        lines.contains(&("stderr".into(), "to stderr".into())),
        "{lines:?}"
    );
});

cri_tests!(reopen_container_log, |ctx| {
    let pod = ctx.run_pod(ctx.pod_config("reopen")).await;
    let c = pod
        .run(container_config(
            "ticker",
            &[
                "sh",
                "-c",
                "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.05; done",
            ],
        ))
        .await;
    let path = pod.log_path("ticker");
    pod.wait_log("ticker", "tick 3", Duration::from_secs(10))
        .await;
    // As a log rotator does: rename, then ask the runtime to reopen the path.
    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    ctx.cri.reopen_log(&c).await.expect("ReopenContainerLog");
    pod.wait_log("ticker", "tick", Duration::from_secs(10))
        .await;
    let old_len = std::fs::metadata(&rotated).unwrap().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        std::fs::metadata(&rotated).unwrap().len(),
        old_len,
        "the rotated file still grows"
    );
    // Nothing lost or repeated across the rotation.
    let mut ticks: Vec<u64> = Vec::new();
    let tick = |m: &str| m.strip_prefix("tick ").and_then(|n| n.parse::<u64>().ok());
    for file in [&rotated, &path] {
        let text = std::fs::read_to_string(file).unwrap();
        ticks.extend(parse_cri_log(&text).iter().filter_map(|(_, m)| tick(m)));
    }
    let expected: Vec<u64> = (0..ticks.len() as u64).collect();
    assert_eq!(ticks, expected, "ticks across the rotation");
    // A stopped container's log cannot be reopened.
    ctx.cri.stop_container(&c, 0).await.expect("StopContainer");
    let err = ctx.cri.reopen_log(&c).await.expect_err("reopen after stop");
    assert!(err.message().contains("not running"), "{err:?}");
});

cri_tests!(container_stats, |ctx| {
    if !ctx.has_controllers(&["memory", "cpu", "cpuacct"]) {
        return;
    }
    let pod = ctx.run_pod(ctx.pod_config("stats")).await;
    // Busy for a while, then holds 16 MiB of tmpfs (charged to its memory cgroup).
    let busy = pod
        .run(container_config(
            "busy",
            &[
                "sh",
                "-c",
                "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; \
                 head -c 16777216 /dev/zero > /dev/shm/fill; echo filled; sleep 3600",
            ],
        ))
        .await;
    let idle = pod.run(sleeper("idle")).await;
    pod.wait_log("busy", "filled", Duration::from_secs(30))
        .await;
    let stats = ctx
        .cri
        .container_stats(&busy)
        .await
        .expect("ContainerStats");
    assert_eq!(stats.attributes.as_ref().unwrap().id, busy);
    let cpu = stats.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds);
    assert!(cpu.is_some_and(|v| v.value > 10_000_000), "cpu: {stats:?}");
    let working_set = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value)
        .unwrap_or(0);
    assert!(
        working_set >= 16 << 20,
        "working set {working_set}: {stats:?}"
    );
    let all = ctx
        .cri
        .list_container_stats(&pod.id)
        .await
        .expect("ListContainerStats");
    let ids: Vec<&str> = all
        .iter()
        .filter_map(|s| s.attributes.as_ref().map(|a| a.id.as_str()))
        .collect();
    assert!(
        ids.contains(&busy.as_str()) && ids.contains(&idle.as_str()),
        "{ids:?}"
    );
});

/// The container's cgroup v1 directory for `controller` (cgroupfs: parent/id).
fn cgroup_dir(pod: &Pod, controller: &str, id: &str) -> std::path::PathBuf {
    let parent = &pod.config.linux.as_ref().unwrap().cgroup_parent;
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(parent.trim_start_matches('/'))
        .join(id)
}

cri_tests!(update_container_resources, |ctx| {
    if ctx.daemon.cgroup_v2() {
        integration::runtime::skip(
            "checks cgroup v1 files; the v2 view has no memory or cpu controller",
        );
        return;
    }
    let pod = ctx.run_pod(ctx.pod_config("update")).await;
    let mut config = sleeper("app");
    resources(&mut config).memory_limit_in_bytes = 128 << 20;
    let c = pod.run(config).await;
    let memory = cgroup_dir(&pod, "memory", &c);
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    assert_eq!(
        read(memory.join("memory.limit_in_bytes")),
        (128u64 << 20).to_string()
    );
    ctx.cri
        .update_resources(
            &c,
            LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                cpu_period: 100_000,
                cpu_quota: 50_000,
                cpu_shares: 512,
                ..Default::default()
            },
        )
        .await
        .expect("UpdateContainerResources");
    assert_eq!(
        read(memory.join("memory.limit_in_bytes")),
        (64u64 << 20).to_string()
    );
    let cpu = cgroup_dir(&pod, "cpu", &c);
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read(cpu.join("cpu.shares")), "512");
    // The container sees its new limit, and runs on.
    assert_eq!(
        pod.exec_ok(&c, &["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"])
            .await
            .trim(),
        (64u64 << 20).to_string()
    );
    // A limit below what the container uses is refused, naming the cause.
    let shrink = ctx
        .cri
        .update_resources(
            &c,
            LinuxContainerResources {
                memory_limit_in_bytes: 4096,
                ..Default::default()
            },
        )
        .await;
    if let Err(e) = shrink {
        assert!(!e.message().is_empty(), "{e:?}");
    }
    let s = pod.status(&c).await;
    assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{s:?}");
});

cri_tests!(oom_killed_with_exit_137, |ctx| {
    if !ctx.has_controllers(&["memory"]) {
        return;
    }
    let pod = ctx.run_pod(ctx.pod_config("oom")).await;
    let mut config = container_config(
        "hog",
        // dd allocates its 256 MiB block and fills it from /dev/zero.
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
    );
    resources(&mut config).memory_limit_in_bytes = 32 << 20;
    resources(&mut config).memory_swap_limit_in_bytes = 32 << 20;
    let c = pod.run(config).await;
    let s = pod.wait_exited(&c, Duration::from_secs(30)).await;
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (137, "OOMKilled"),
        "{s:?}"
    );
});

cri_tests!(volumes_including_a_symlinked_host_path, |ctx| {
    let base = ctx.daemon.dir().join("volumes").join(ctx.unique("vol"));
    let real = base.join("real");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::write(real.join("hello"), "from the host\n").unwrap();
    std::os::unix::fs::symlink(&real, base.join("link")).unwrap();
    std::fs::write(base.join("file"), "a single file\n").unwrap();
    let mount = |container: &str, host: &Path, readonly: bool| Mount {
        container_path: container.into(),
        host_path: host.to_string_lossy().into_owned(),
        readonly,
        ..Default::default()
    };
    let pod = ctx.run_pod(ctx.pod_config("vol")).await;
    let mut config = sleeper("app");
    config.mounts = vec![
        mount("/data", &real, false),
        mount("/via-link", &base.join("link"), false),
        mount("/ro", &real, true),
        mount("/etc/single", &base.join("file"), true),
    ];
    let c = pod.run(config).await;
    assert_eq!(
        pod.exec_ok(&c, &["cat", "/data/hello"]).await,
        "from the host\n"
    );
    assert_eq!(
        pod.exec_ok(&c, &["cat", "/via-link/hello"]).await,
        "from the host\n"
    );
    assert_eq!(
        pod.exec_ok(&c, &["cat", "/etc/single"]).await,
        "a single file\n"
    );
    pod.exec_ok(&c, &["sh", "-c", "echo written > /via-link/back"])
        .await;
    assert_eq!(
        std::fs::read_to_string(real.join("back")).unwrap(),
        "written\n"
    );
    let (_, err, code) = pod.exec(&c, &["touch", "/ro/nope"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("Read-only file system"), "{err}");
    // The status lists the mounts with the symlink resolved.
    let s = pod.status(&c).await;
    let via = s
        .mounts
        .iter()
        .find(|m| m.container_path == "/via-link")
        .expect("mount listed");
    assert!(
        Path::new(&via.host_path) == real || Path::new(&via.host_path) == base.join("link"),
        "{via:?}"
    );
});
