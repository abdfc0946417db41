//! Requests as containerd's own clients send them, where they differ from what the OCI spec
//! alone would suggest.
use integration::shim_tests;
use integration::spec;

/// 1 MiB of `a`, written only if stdin is a terminal.
const THROUGH_THE_PTY: &str = "tty >/dev/null && head -c 1048576 /dev/zero | tr '\\0' a";

shim_tests!(exec_terminal_asked_in_the_request_alone, |ctx| {
    let c = &ctx.client;
    let _io = c.run("ptyhost", &spec::spec(&["sleep", "1000"])).await;
    for i in 0..100 {
        let id = format!("t{i}");
        let mut io = c.io(&format!("ptyhost-{id}"), false);
        // cio.WithTerminal sets the request's flag and leaves the process spec's false.
        let process = spec::process(&["sh", "-c", THROUGH_THE_PTY], false);
        c.exec("ptyhost", &id, &process, Some(&io), true)
            .await
            .unwrap_or_else(|e| panic!("exec {id}: {e}"));
        c.start("ptyhost", &id)
            .await
            .unwrap_or_else(|e| panic!("start {id}: {e}"));
        assert_eq!(c.wait("ptyhost", &id).await.unwrap(), 0, "exec {id}");
        c.delete_process("ptyhost", &id).await.unwrap();
        let out = io.stdout.take().unwrap().output();
        assert_eq!(out.len(), 1 << 20, "exec {id}: bytes through the pty");
        assert!(out.iter().all(|b| *b == b'a'), "exec {id}: content");
    }
    c.remove("ptyhost").await;
});

// Kubernetes and containerd's clients may send any signal, real-time ones included.
shim_tests!(a_real_time_signal_reaches_an_exec, |ctx| {
    let c = &ctx.client;
    let _io = c.run("rt", &spec::spec(&["sleep", "1000"])).await;
    let io = c.io("rt-e", false);
    let process = spec::process(
        &[
            "sh",
            "-c",
            "trap 'exit 9' 40; echo ready; while :; do sleep 0.05; done",
        ],
        false,
    );
    c.exec("rt", "e", &process, Some(&io), false).await.unwrap();
    c.start("rt", "e").await.unwrap();
    // Give sh the moment it needs to install its trap.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    c.kill("rt", "e", 40, false).await.unwrap();
    let waited = tokio::time::timeout(std::time::Duration::from_secs(10), c.wait("rt", "e")).await;
    assert_eq!(waited.expect("the exec got signal 40").unwrap(), 9);
    // Once it is gone, a signal to it is NotFound (the pidfd knows, whatever has its pid now).
    integration::client::assert_code(
        c.kill("rt", "e", 15, false).await,
        containerd_client::tonic::Code::NotFound,
        "finished",
    );
    c.remove("rt").await;
});

// CRI gives every container an oomScoreAdj (1000 for a BestEffort pod); the shim keeps its own
// (containerd's + 1), so the kernel does not pick it with the container.
shim_tests!(the_shim_keeps_its_own_oom_score, |ctx| {
    let c = &ctx.client;
    let mut s = spec::spec(&["sleep", "1000"]);
    s["process"]["oomScoreAdj"] = serde_json::json!(999);
    let _io = c.run("oom", &s).await;
    let shim = ctx.containerd.shim_pid_of("oom").expect("serving shim");
    let score = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    let before = score(shim);
    let mut process = s["process"].clone();
    process["args"] = serde_json::json!(["cat", "/proc/self/oom_score_adj"]);
    let mut io = c.io("oom-e", false);
    c.exec("oom", "e", &process, Some(&io), false)
        .await
        .unwrap();
    c.start("oom", "e").await.unwrap();
    c.wait("oom", "e").await.unwrap();
    c.delete_process("oom", "e").await.unwrap();
    // crun 1.8 leaves an exec the score it was started with; runc and libcontainer apply it.
    if ctx.binary != integration::Binary::Crun {
        assert_eq!(
            io.stdout_text().trim(),
            "999",
            "the exec has the container's score"
        );
    }
    let init = c.wait_for_pids("oom", 1).await[0];
    assert_eq!(
        score(init).trim(),
        "999",
        "the init has the container's score"
    );
    assert_eq!(
        score(shim),
        before,
        "the shim's own is untouched by create and exec"
    );
    assert_ne!(before.trim(), "999");
    c.remove("oom").await;
});

// An exec whose program does not exist fails to start; containerd's clients then wait for its
// exit before they delete it (CRI's ExecSync does, with a minute's context): it must come.
shim_tests!(an_exec_that_fails_to_start_can_be_waited_for, |ctx| {
    let c = &ctx.client;
    let _io = c.run("nostart", &spec::spec(&["sleep", "1000"])).await;
    let process = spec::process(&["/no/such/program"], false);
    c.exec("nostart", "e", &process, None, false).await.unwrap();
    assert!(c.start("nostart", "e").await.is_err(), "a missing program");
    let waited = tokio::time::timeout(std::time::Duration::from_secs(5), c.wait("nostart", "e"))
        .await
        .expect("Wait answers for an exec that never started");
    assert!(waited.is_ok(), "{waited:?}");
    integration::client::assert_code(
        c.kill("nostart", "e", 9, false).await,
        containerd_client::tonic::Code::NotFound,
        "",
    );
    c.delete_process("nostart", "e").await.unwrap();
    c.remove("nostart").await;
});

// containerd's CRI runs the pause image's `/pause` with the image's environment, which has no
// PATH: a program named by its path needs none.
shim_tests!(a_program_named_by_its_path_runs_without_path, |ctx| {
    let c = &ctx.client;
    let mut s = spec::spec(&["/bin/sh", "-c", "echo ran"]);
    s["process"]["env"] = serde_json::json!([]);
    c.create_container("nopath", &s).await.unwrap();
    let mut io = c.io("nopath", false);
    c.create_task("nopath", Some(&io), false).await.unwrap();
    c.start("nopath", "").await.unwrap();
    assert_eq!(c.wait("nopath", "").await.unwrap(), 0);
    assert_eq!(io.stdout_text(), "ran\n");
    c.delete_task("nopath").await.unwrap();
    c.delete_container("nopath").await.unwrap();
});
