//! Execs, quick exits, exit matching and the subreaper.
use std::time::Duration;

use containerd_client::tonic::Code;
use integration::client::{assert_code, zombie_children};
use integration::events::Recorder;
use integration::shim_tests;
use integration::spec;

shim_tests!(quick_exits_are_all_attributed, |ctx| {
    let c = &ctx.client;
    let events = Recorder::start(c).await;
    // An init that exits at once.
    c.create_container("fast", &spec::spec(&["true"]))
        .await
        .unwrap();
    c.create_task("fast", None, false).await.unwrap();
    c.start("fast", "").await.unwrap();
    assert_eq!(c.wait("fast", "").await.unwrap(), 0);
    c.delete_task("fast").await.unwrap();

    // Execs of /bin/true and of quick failures into a sleeping container.
    let _io = c.run("host", &spec::spec(&["sleep", "1000"])).await;
    for i in 0..20 {
        let id = format!("e{i}");
        let code = (i % 3) as u32;
        let (status, _) = c
            .exec_run("host", &id, &["sh", "-c", &format!("exit {code}")])
            .await;
        assert_eq!(status, code, "exec {id}");
    }
    for i in 0..20 {
        let id = format!("e{i}");
        assert_eq!(
            events.topics_of("host", &id),
            ["exec-added", "exec-started", "exit"],
            "events of {id}"
        );
    }
    let shim = ctx.containerd.shim_pids();
    assert_eq!(shim.len(), 1, "one shim for one container: {shim:?}");
    assert_eq!(
        zombie_children(shim[0]),
        Vec::<u32>::new(),
        "zombies under the shim"
    );
    c.remove("host").await;
});

shim_tests!(exec_output_status_and_pids, |ctx| {
    let c = &ctx.client;
    let _io = c.run("x", &spec::spec(&["sleep", "1000"])).await;
    let (status, out) = c
        .exec_run("x", "hello", &["sh", "-c", "echo from exec; exit 7"])
        .await;
    assert_eq!((status, out.as_str()), (7, "from exec\n"));

    c.exec(
        "x",
        "sleeper",
        &spec::process(&["sleep", "1000"], false),
        None,
        false,
    )
    .await
    .unwrap();
    let exec_pid = c.start("x", "sleeper").await.unwrap();
    let pids = c.pids("x").await.unwrap();
    assert!(pids.len() >= 2, "{pids:?}");
    assert!(
        pids.contains(&(exec_pid, "sleeper".to_string())),
        "exec id attached to its pid: {pids:?}"
    );

    // A duplicate exec id is refused; the first one is untouched.
    let dup = c
        .exec(
            "x",
            "sleeper",
            &spec::process(&["true"], false),
            None,
            false,
        )
        .await;
    assert_code(dup, Code::AlreadyExists, "sleeper");
    assert_eq!(c.status("x", "sleeper").await.unwrap(), "RUNNING");

    // An exec the runtime refuses (its working directory does not exist) fails the request.
    let mut lost = spec::process(&["true"], false);
    lost["cwd"] = serde_json::json!("/does/not/exist");
    let failed = match c.exec("x", "lost", &lost, None, false).await {
        Ok(()) => c.start("x", "lost").await.map(drop),
        Err(e) => Err(e),
    };
    assert!(failed.is_err(), "an exec in a missing directory must fail");
    // Whatever happened, the process files handed to the runtime are gone from the bundle.
    let left: Vec<String> = std::fs::read_dir(ctx.containerd.bundle("x"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".exec-"))
        .collect();
    assert!(left.is_empty(), "left in the bundle: {left:?}");

    // Kill with all takes the execs with the init.
    c.kill("x", "", libc::SIGKILL as u32, true).await.unwrap();
    assert_eq!(c.wait("x", "sleeper").await.unwrap(), 137);
    assert_eq!(c.wait("x", "").await.unwrap(), 137);
    c.delete_process("x", "sleeper").await.unwrap();
    c.delete_task("x").await.unwrap();
});

shim_tests!(init_exit_waits_for_exec_exits, |ctx| {
    let c = &ctx.client;
    let events = Recorder::start(c).await;
    let _io = c.run("pair", &spec::spec(&["sleep", "1000"])).await;
    c.exec(
        "pair",
        "child",
        &spec::process(&["sleep", "1000"], false),
        None,
        false,
    )
    .await
    .unwrap();
    c.start("pair", "child").await.unwrap();
    c.kill("pair", "", libc::SIGKILL as u32, false)
        .await
        .unwrap();
    c.wait("pair", "").await.unwrap();
    let ev = events
        .wait_for("both exits", |e| {
            e.iter().filter(|e| e.topic == "/tasks/exit").count() == 2
        })
        .await;
    let exits: Vec<&str> = ev
        .iter()
        .filter(|e| e.topic == "/tasks/exit")
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(exits, ["child", "pair"], "the init's exit comes last");
    c.delete_process("pair", "child").await.unwrap();
    c.delete_task("pair").await.unwrap();
});

shim_tests!(pause_and_resume, |ctx| {
    let c = &ctx.client;
    let events = Recorder::start(c).await;
    // A counter the container rewrites every 20 ms in its own /dev/shm, read through its root.
    let counter = "i=0; while true; do i=$((i+1)); echo $i > /dev/shm/n; sleep 0.02; done";
    let _io = c.run("p", &spec::sh(counter)).await;
    let pid = c.pids("p").await.unwrap()[0].0;
    let read =
        || std::fs::read_to_string(format!("/proc/{pid}/root/dev/shm/n")).unwrap_or_default();
    let changes = |from: String| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while read() == from {
            assert!(
                std::time::Instant::now() < deadline,
                "the counter stays at {from:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    changes(String::new()).await;
    c.pause("p").await.unwrap();
    assert_eq!(c.status("p", "").await.unwrap(), "PAUSED");
    // Frozen for real: the counter stands still while paused.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let paused_at = read();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(read(), paused_at, "the container ran while paused");
    // Pausing twice is a state error, not a runtime failure.
    assert_code(c.pause("p").await, Code::FailedPrecondition, "paused");
    c.resume("p").await.unwrap();
    assert_eq!(c.status("p", "").await.unwrap(), "RUNNING");
    changes(paused_at).await;
    events
        .wait_for("resumed", |e| e.iter().any(|e| e.topic == "/tasks/resumed"))
        .await;
    assert_eq!(
        events.topics_of("p", ""),
        ["create", "start", "paused", "resumed"]
    );
    c.remove("p").await;
});

shim_tests!(kill_all_ends_a_paused_container, |ctx| {
    let c = &ctx.client;
    let _io = c.run("frozen", &spec::sh("sleep 1000 & sleep 1000")).await;
    let bg = spec::process(&["sleep", "1000"], false);
    c.exec("frozen", "bg", &bg, None, false).await.unwrap();
    c.start("frozen", "bg").await.unwrap();
    assert!(c.pids("frozen").await.unwrap().len() >= 3);
    c.pause("frozen").await.unwrap();
    // containerd's forced removal of a paused task: SIGKILL to every process. A frozen
    // process only dies once thawed, so the runtime must thaw after signalling.
    c.kill("frozen", "", libc::SIGKILL as u32, true)
        .await
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(10), c.wait("frozen", "")).await;
    let Ok(status) = waited else {
        // Thaw first so the fixture can clean up, then fail.
        let _ = c.resume("frozen").await;
        panic!("the paused container did not end after kill --all");
    };
    let status = status.unwrap();
    assert_eq!(status, 137);
    c.remove("frozen").await;
});

shim_tests!(kill_all_signals_every_process, |ctx| {
    let c = &ctx.client;
    // The init is pid 1 of its namespace with no TERM handler: a TERM for it alone is dropped.
    // A kill-all also reaches the sleep it waits for, after which it exits with 7.
    let _io = c.run("tree", &spec::sh("sleep 1000; exit 7")).await;
    c.wait_for_pids("tree", 2).await;
    c.kill("tree", "", libc::SIGTERM as u32, false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.status("tree", "").await.unwrap(), "RUNNING");
    c.kill("tree", "", libc::SIGTERM as u32, true)
        .await
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(10), c.wait("tree", "")).await;
    assert_eq!(
        waited.expect("kill --all did not reach the sleep").unwrap(),
        7
    );
    c.remove("tree").await;
});

shim_tests!(kill_all_in_a_joined_pid_namespace, |ctx| {
    let c = &ctx.client;
    let _owner_io = c.run("owner", &spec::spec(&["sleep", "1000"])).await;
    let owner = c.pids("owner").await.unwrap()[0].0;
    // A second container in the owner's PID namespace: its init is not that namespace's pid 1,
    // so killing the init alone would leave its child running; a kill-all must take both.
    let mut member = spec::sh("sleep 1000 & sleep 1000");
    for ns in member["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "pid" {
            ns["path"] = serde_json::json!(format!("/proc/{owner}/ns/pid"));
        }
    }
    let _member_io = c.run("member", &member).await;
    let pids = c.wait_for_pids("member", 2).await;
    c.kill("member", "", libc::SIGKILL as u32, true)
        .await
        .unwrap();
    assert_eq!(c.wait("member", "").await.unwrap(), 137);
    // Gone or a zombie (the namespace's init, the owner's sleep, does not reap).
    let alive = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let left: Vec<&u32> = pids.iter().filter(|p| alive(p)).collect();
    assert!(left.is_empty(), "still running after kill --all: {left:?}");
    assert_eq!(c.status("owner", "").await.unwrap(), "RUNNING");
    c.delete_task("member").await.unwrap();
    c.remove("owner").await;
});

shim_tests!(kill_signals_and_errors, |ctx| {
    let c = &ctx.client;
    let _io = c
        .run(
            "k",
            &spec::sh("trap 'exit 42' TERM; while true; do sleep 0.1; done"),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_code(
        c.kill("k", "", 1000, false).await,
        Code::InvalidArgument,
        "1000",
    );
    assert_code(c.kill("k", "nope", 15, false).await, Code::NotFound, "nope");
    c.kill("k", "", libc::SIGTERM as u32, false).await.unwrap();
    assert_eq!(c.wait("k", "").await.unwrap(), 42);
    c.delete_task("k").await.unwrap();
});

shim_tests!(terminal_and_resize, |ctx| {
    let c = &ctx.client;
    let mut s = spec::sh("sleep 0.5; stty size");
    s["process"]["terminal"] = serde_json::json!(true);
    c.create_container("tty", &s).await.unwrap();
    let mut io = c.io("tty", false);
    c.create_task("tty", Some(&io), true).await.unwrap();
    c.resize("tty", "", 91, 37).await.unwrap();
    c.start("tty", "").await.unwrap();
    assert_eq!(c.wait("tty", "").await.unwrap(), 0);
    assert_eq!(io.stdout_text().trim(), "37 91");

    // An exec with a terminal.
    let _host = c.run("tty2", &spec::spec(&["sleep", "1000"])).await;
    let mut eio = c.io("tty2-e", false);
    c.exec(
        "tty2",
        "t",
        &spec::process(&["sh", "-c", "tty"], true),
        Some(&eio),
        true,
    )
    .await
    .unwrap();
    c.start("tty2", "t").await.unwrap();
    assert_eq!(c.wait("tty2", "t").await.unwrap(), 0);
    assert!(eio.stdout_text().starts_with("/dev/pts/"));
    // No terminal, nothing to resize: containerd's clients send it anyway, and the Go shim
    // answers OK; an unknown process is still NotFound.
    c.resize("tty2", "", 10, 10).await.unwrap();
    assert_code(
        c.resize("tty2", "ghost", 10, 10).await,
        Code::NotFound,
        "ghost",
    );
    c.remove("tty2").await;
    c.delete_task("tty").await.unwrap();
});

shim_tests!(update_applies_new_resources, |ctx| {
    if !ctx.has_controllers(&["memory"]) {
        return;
    }
    let c = &ctx.client;
    let _io = c.run("upd", &spec::spec(&["sleep", "1000"])).await;
    c.update(
        "upd",
        &serde_json::json!({ "memory": { "limit": 67108864 } }),
    )
    .await
    .unwrap();
    let ns = &ctx.containerd.namespace;
    let v1 = format!("/sys/fs/cgroup/memory/{ns}/upd/memory.limit_in_bytes");
    let v2 = integration::daemon::host_cgroup_v2_root().join(format!("{ns}/upd/memory.max"));
    let limit = std::fs::read_to_string(&v1)
        .or_else(|_| std::fs::read_to_string(&v2))
        .expect("the container's memory cgroup");
    assert_eq!(limit.trim(), "67108864");
    c.remove("upd").await;
});

shim_tests!(stats_reach_ctr_task_metrics, |ctx| {
    let c = &ctx.client;
    let _io = c.run("st", &spec::spec(&["sleep", "1000"])).await;
    // Start returns once the runtime let the init go: until it has exec'd `sleep`, runc's
    // `runc init` (five threads, each counted by pids.current) is what the cgroup holds.
    let init = c.wait_for_pids("st", 1).await[0];
    for _ in 0..250 {
        let comm = std::fs::read_to_string(format!("/proc/{init}/comm")).unwrap_or_default();
        if comm.trim() == "sleep" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let out = ctx.containerd.ctr(&["task", "metrics", "st"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ctr decodes the Any by its type URL and prints the fields of the matching version, one
    // "name value" row each. The container is one `sleep` that has run.
    let metric = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    if ctx.containerd.cgroup_v2_controllers().is_none() {
        assert!(metric("memory.usage_in_bytes ") > 0, "{text}");
        assert!(metric("cpuacct.usage ") > 0, "{text}");
        assert_eq!(metric("pids.current "), 1, "{text}");
    } else {
        // cpu.stat is there without any controller; the others only with theirs.
        assert!(metric("cpu.usage_usec ") > 0, "{text}");
        if !ctx.lacks_controller("memory") {
            assert!(metric("memory.usage ") > 0, "{text}");
        }
        if !ctx.lacks_controller("pids") {
            assert_eq!(metric("pids.current "), 1, "{text}");
        }
    }
    c.remove("st").await;
    // After delete the container is unknown.
    let out = ctx.containerd.ctr(&["task", "metrics", "st"]);
    assert!(!out.status.success());
});

shim_tests!(oom_kill_is_reported_before_the_exit, |ctx| {
    if !ctx.has_controllers(&["memory"]) {
        return;
    }
    let c = &ctx.client;
    let events = Recorder::start(c).await;
    let mut s = spec::spec(&["tail", "/dev/zero"]);
    s["linux"]["resources"]["memory"] = serde_json::json!({ "limit": 16777216, "swap": 16777216 });
    c.create_container("oom", &s).await.unwrap();
    c.create_task("oom", None, false).await.unwrap();
    c.start("oom", "").await.unwrap();
    assert_eq!(c.wait("oom", "").await.unwrap(), 137);
    let ev = events
        .wait_for("oom and exit", |e| {
            e.iter().any(|e| e.topic == "/tasks/exit") && e.iter().any(|e| e.topic == "/tasks/oom")
        })
        .await;
    let topics: Vec<&str> = ev.iter().map(|e| e.topic.as_str()).collect();
    let oom = topics.iter().position(|t| *t == "/tasks/oom").unwrap();
    let exit = topics.iter().position(|t| *t == "/tasks/exit").unwrap();
    assert!(oom < exit, "TaskOOM must precede TaskExit: {topics:?}");
    c.delete_task("oom").await.unwrap();
});

/// Resident size (KiB) of the shim binary's own code mapping.
fn text_rss_kib(pid: u32) -> u64 {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut in_text = false;
    let mut total = 0;
    for line in smaps.lines() {
        if line.contains('-') && line.split_whitespace().count() >= 5 && !line.ends_with("kB") {
            let f: Vec<&str> = line.split_whitespace().collect();
            in_text = f[1].contains('x') && f.get(5) == Some(&exe.to_str().unwrap());
        } else if in_text && line.starts_with("Rss:") {
            total += line
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap();
        }
    }
    total
}

shim_tests!(shim_serves_on_after_dropping_idle_code_pages, |ctx| {
    let c = &ctx.client;
    let _io = c.run("idle", &spec::spec(&["sleep", "1000"])).await;
    let shim = ctx.containerd.shim_pid_of("idle").unwrap();
    let busy = text_rss_kib(shim);
    // A second after a Start the shim drops the code pages it faulted in.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idle = text_rss_kib(shim);
    assert!(
        idle < busy,
        "code pages mapped: {busy} KiB busy, {idle} KiB idle"
    );
    // Everything refaults on demand.
    let (status, out) = c.exec_run("idle", "after", &["echo", "still here"]).await;
    assert_eq!((status, out.as_str()), (0, "still here\n"));
    assert!(!c.pids("idle").await.unwrap().is_empty());
    c.pause("idle").await.unwrap();
    c.resume("idle").await.unwrap();
    c.remove("idle").await;
});
