//! Create → start → output → exit → delete, and the events containerd receives on the way.
use integration::events::Recorder;
use integration::shim_tests;
use integration::spec;

shim_tests!(exit_status_output_and_event_order, |ctx| {
    let c = &ctx.client;
    let events = Recorder::start(c).await;
    let mut io = c
        .run("c1", &spec::sh("echo hello; echo oops >&2; exit 3"))
        .await;
    assert_eq!(c.wait("c1", "").await.unwrap(), 3);
    assert_eq!(io.stdout_text(), "hello\n");
    assert_eq!(io.stderr.take().unwrap().text(), "oops\n");
    assert_eq!(c.delete_task("c1").await.unwrap(), 3);
    c.delete_container("c1").await.unwrap();
    events
        .wait_for("delete event", |e| {
            e.iter().any(|e| e.topic == "/tasks/delete")
        })
        .await;
    assert_eq!(
        events.topics_of("c1", ""),
        ["create", "start", "exit", "delete"]
    );
    let exit = events
        .events()
        .into_iter()
        .find(|e| e.topic == "/tasks/exit")
        .unwrap();
    assert_eq!(exit.exit_status, 3);
    assert_eq!(exit.id, "c1");
});

shim_tests!(ctr_run_prints_output, |ctx| {
    let out = ctx.ctr_run("ctr1", &[], &["sh", "-c", "echo hello from ctr"]);
    assert_eq!(out, "hello from ctr\n");
});

shim_tests!(large_output_is_not_truncated, |ctx| {
    let c = &ctx.client;
    // 4 MiB of text through the stdout fifo.
    let mut io = c
        .run("big", &spec::sh("yes 0123456789abcdef | head -c 4194304"))
        .await;
    assert_eq!(c.wait("big", "").await.unwrap(), 0);
    let out = io.stdout_text();
    assert_eq!(out.len(), 4 * 1024 * 1024);
    assert!(out.starts_with("0123456789abcdef\n"));
    c.delete_task("big").await.unwrap();
});

shim_tests!(stdin_reaches_the_process_and_close_io_ends_it, |ctx| {
    let c = &ctx.client;
    c.create_container("cat", &spec::spec(&["cat"]))
        .await
        .unwrap();
    let mut io = c.io("cat", true);
    c.create_task("cat", Some(&io), false).await.unwrap();
    c.start("cat", "").await.unwrap();
    let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    // The client writes and closes its end of the fifo: the process sees EOF.
    integration::fifo::write_all_and_close(io.stdin.clone().unwrap(), data.clone())
        .join()
        .unwrap();
    c.close_stdin("cat", "").await.unwrap();
    assert_eq!(c.wait("cat", "").await.unwrap(), 0);
    assert_eq!(io.stdout.take().unwrap().output(), data);
    c.delete_task("cat").await.unwrap();
});

shim_tests!(close_io_alone_gives_eof, |ctx| {
    let c = &ctx.client;
    c.create_container("cat2", &spec::spec(&["cat"]))
        .await
        .unwrap();
    let io = c.io("cat2", true);
    c.create_task("cat2", Some(&io), false).await.unwrap();
    c.start("cat2", "").await.unwrap();
    // Hold the client's end open: only CloseIO can end the process's stdin.
    let _writer = std::fs::OpenOptions::new()
        .write(true)
        .open(io.stdin.as_ref().unwrap())
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(c.status("cat2", "").await.unwrap(), "RUNNING");
    c.close_stdin("cat2", "").await.unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), c.wait("cat2", ""))
        .await
        .expect("cat should exit after CloseIO");
    assert_eq!(status.unwrap(), 0);
    c.delete_task("cat2").await.unwrap();
});

shim_tests!(absent_stdio_is_dev_null, |ctx| {
    let c = &ctx.client;
    c.create_container(
        "quiet",
        &spec::sh("ls -l /proc/self/fd/0 /proc/self/fd/1; exit 0"),
    )
    .await
    .unwrap();
    c.create_task("quiet", None, false).await.unwrap();
    c.start("quiet", "").await.unwrap();
    assert_eq!(c.wait("quiet", "").await.unwrap(), 0);
    c.delete_task("quiet").await.unwrap();
});

shim_tests!(no_fd_leaks_into_containers, |ctx| {
    let c = &ctx.client;
    let _io = c.run("fds", &spec::spec(&["sleep", "1000"])).await;
    // The init holds exactly its stdio.
    let (status, out) = c.exec_run("fds", "init-fds", &["ls", "/proc/1/fd"]).await;
    assert_eq!(status, 0);
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["0", "1", "2"]);
    // So does an exec (3 is the directory `ls` itself opened).
    let (_, out) = c.exec_run("fds", "own-fds", &["ls", "/proc/self/fd"]).await;
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2", "3"]
    );
    c.remove("fds").await;
});

shim_tests!(seccomp_and_signal_state_reach_the_process, |ctx| {
    let c = &ctx.client;
    // A profile that refuses mkdir: it must be enforced, never skipped.
    let mut s =
        spec::sh("grep -E '^SigIgn' /proc/self/status | cut -f2; mkdir /tmp/denied; echo mkdir=$?");
    s["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{ "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }]
    });
    let mut io = c.run("sc", &s).await;
    assert_eq!(c.wait("sc", "").await.unwrap(), 0);
    let out = io.stdout_text();
    let (ignored, rest) = out.split_once('\n').unwrap();
    assert_eq!(rest, "mkdir=1\n");
    // The shim ignores SIGPIPE; the container's process must not inherit that.
    let ignored = u64::from_str_radix(ignored, 16).unwrap();
    assert_eq!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "SigIgn {ignored:x}"
    );
    c.delete_task("sc").await.unwrap();
});

shim_tests!(shim_log_reaches_containerd, |ctx| {
    let c = &ctx.client;
    let io = c.run("logged", &spec::spec(&["true"])).await;
    c.wait("logged", "").await.unwrap();
    drop(io);
    c.delete_task("logged").await.unwrap();
    // containerd copies the shim's `log` fifo into its own log (at debug level here).
    let log = ctx.containerd.log();
    assert!(
        log.contains("serving task API for logged"),
        "shim log line missing from containerd's log"
    );
});

shim_tests!(log_uris_binary_and_file, |ctx| {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    // A logging binary as containerd documents them: output on fds 3 and 4, ready on fd 5.
    let logger = dir.path().join("logger.sh");
    std::fs::write(
        &logger,
        "#!/bin/sh\nout=$2\necho \"$CONTAINER_NAMESPACE $CONTAINER_ID\" > \"$out/env\"\n\
         cat <&3 5>&- > \"$out/stdout\" &\ncat <&4 5>&- > \"$out/stderr\" &\nexec 5>&-\nwait\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&logger, std::fs::Permissions::from_mode(0o755)).unwrap();
    let uri = format!("binary://{}?dir={d}", logger.display());
    ctx.ctr_run(
        "logged",
        &["--log-uri", &uri],
        &["sh", "-c", "echo to-out; echo to-err >&2"],
    );
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
    assert_eq!(read("stdout"), "to-out\n");
    assert_eq!(read("stderr"), "to-err\n");
    assert_eq!(
        read("env"),
        format!("{} logged\n", ctx.containerd.namespace)
    );

    // file:// appends both streams to one file.
    let file = dir.path().join("c.log");
    let uri = format!("file://{}", file.display());
    ctx.ctr_run("filed", &["--log-uri", &uri], &["sh", "-c", "echo one"]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "one\n");
});

shim_tests!(
    init_exit_takes_what_it_left_and_delete_runs_poststop_hooks,
    |ctx| {
        let c = &ctx.client;
        let ns = &ctx.containerd.namespace;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        // Without a pid namespace of its own the kernel does not end a background child with the
        // init; the shim kills it before the exit is reported, as containerd's Go shim does.
        let mut s = spec::sh("sleep 1000 </dev/null >/dev/null 2>&1 & echo $!");
        s["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "pid");
        s["hooks"] = serde_json::json!({ "poststop": [{
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}", state.display())],
        }]});
        let mut io = c.run("hooked", &s).await;
        assert_eq!(c.wait("hooked", "").await.unwrap(), 0);
        let child: u32 = io.stdout_text().trim().parse().unwrap();
        let alive = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.rsplit(") ").next().unwrap_or("").starts_with('Z'))
        };
        // SIGKILLed before Wait returned; give it the moment it takes to die.
        for _ in 0..100 {
            if !alive(child) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(
            !alive(child),
            "the init's background child is killed with it"
        );
        assert!(!state.exists(), "poststop ran before delete");

        c.delete_task("hooked").await.unwrap();
        // The hook got the container's state on stdin.
        let hook_input: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&state).expect("poststop hook ran"))
                .unwrap();
        assert_eq!(hook_input["id"], "hooked");
        let left: Vec<String> = std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .map(|h| h.path().join(ns.as_str()).join("hooked"))
            .chain([std::path::Path::new("/sys/fs/cgroup")
                .join(ns.as_str())
                .join("hooked")])
            .filter(|d| d.exists())
            .map(|d| d.display().to_string())
            .collect();
        assert!(left.is_empty(), "cgroups left: {left:?}");
        c.delete_container("hooked").await.unwrap();
    }
);
