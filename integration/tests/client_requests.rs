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
