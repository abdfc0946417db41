//! CRI: streaming Exec, Attach and PortForward through containerd's streaming server
//! (WebSocket, `v4.channel.k8s.io`), with and without a tty: what the client writes reaches the
//! process, its stdout and stderr come back apart, exit codes arrive in the status, resizes
//! reach the terminal (ResizePty), hanging up ends stdin (CloseIO), and port-forwarded bytes
//! round-trip.
use std::time::{Duration, Instant};

use integration::cri::api::*;
use integration::cri::client::*;
use integration::cri::streaming::*;
use integration::cri_tests;

const T: Duration = Duration::from_secs(20);

fn exec_req(id: &str, cmd: &[&str], stdin: bool, tty: bool) -> ExecRequest {
    ExecRequest {
        container_id: id.to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        // A tty merges stderr into stdout: CRI refuses both.
        stderr: !tty,
    }
}

async fn exec(ctx: &integration::cri::Ctx, req: ExecRequest) -> RemoteCommand {
    let url = ctx.cri.exec(req).await.expect("Exec");
    RemoteCommand::open(ctx.daemon, &url).await
}

/// Sends `line` until `channel` shows `needle`: a resize travels apart from stdin, so the
/// command that reports it may run before it lands.
async fn poll(s: &mut RemoteCommand, line: &str, needle: &str) {
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        s.write_stdin(line.as_bytes()).await;
        if s.saw(STDOUT, needle, Duration::from_millis(500)).await {
            return;
        }
    }
    panic!(
        "no {needle:?} after {T:?} of {line:?}: {:?}",
        s.text(STDOUT)
    );
}

/// Waits until ExecSync of `cmd` in `id` prints `want`.
async fn wait_exec_output(pod: &Pod, id: &str, cmd: &[&str], want: &str) {
    let deadline = Instant::now() + T;
    loop {
        let (out, _, _) = pod.exec(id, cmd).await;
        if out == want {
            return;
        }
        assert!(Instant::now() < deadline, "{cmd:?} printed {out:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

cri_tests!(exec_streams_output_and_exit_codes, |ctx| {
    let pod = ctx.run_pod(ctx.pod_config("sexec")).await;
    let c = pod.run(sleeper("app")).await;

    let cmd = [
        "sh",
        "-c",
        "echo out-$((6*7)); echo err-$((2*3)) >&2; exit 3",
    ];
    let done = exec(&ctx, exec_req(&c, &cmd, false, false))
        .await
        .finish(T)
        .await;
    assert_eq!(
        (done.stdout.as_str(), done.stderr.as_str()),
        ("out-42\n", "err-6\n"),
        "{done:?}"
    );
    assert_eq!(done.exit_code(), Some(3), "{done:?}");

    let done = exec(&ctx, exec_req(&c, &["echo", "fine"], false, false))
        .await
        .finish(T)
        .await;
    assert_eq!(done.stdout, "fine\n", "{done:?}");
    assert_eq!(done.status["status"], "Success", "{done:?}");

    // Killed by a signal: 128 + signal, as for ExecSync.
    let done = exec(
        &ctx,
        exec_req(&c, &["sh", "-c", "kill -9 $$"], false, false),
    )
    .await
    .finish(T)
    .await;
    assert_eq!(done.exit_code(), Some(137), "{done:?}");
});

cri_tests!(exec_pipes_stdin_and_hanging_up_closes_it, |ctx| {
    let pod = ctx.run_pod(ctx.pod_config("sstdin")).await;
    let c = pod.run(sleeper("app")).await;
    let cmd = ["sh", "-c", "cat; echo eof > /tmp/stdin-closed"];
    let mut s = exec(&ctx, exec_req(&c, &cmd, true, false)).await;
    s.write_stdin(b"ping-1\n").await;
    s.expect(STDOUT, "ping-1\n", T).await;
    // 256 KiB through cat and back, byte for byte, while the session stays open.
    let big: Vec<u8> = (0..256 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    for chunk in big.chunks(16 * 1024) {
        s.write_stdin(chunk).await;
    }
    let want = format!("ping-1\n{}", String::from_utf8_lossy(&big));
    s.expect(STDOUT, &want, T).await;
    assert_eq!(s.text(STDOUT), want);
    assert_eq!(s.text(STDERR), "");
    // With no half-close in these protocols, only the end of the connection ends stdin:
    // containerd then closes the exec's stdin (CloseIO) and cat sees EOF.
    s.hang_up().await;
    wait_exec_output(&pod, &c, &["cat", "/tmp/stdin-closed"], "eof\n").await;
});

cri_tests!(exec_with_a_tty_and_resize, |ctx| {
    let pod = ctx.run_pod(ctx.pod_config("stty")).await;
    let c = pod.run(sleeper("app")).await;
    let cmd = [
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo is-a-tty; while read x; do stty size; done; exit 4",
    ];
    let mut s = exec(&ctx, exec_req(&c, &cmd, true, true)).await;
    // The terminal's output processing turns "\n" into "\r\n".
    s.expect(STDOUT, "is-a-tty\r\n", T).await;
    s.resize(100, 40).await;
    poll(&mut s, "\n", "40 100\r\n").await;
    s.resize(132, 50).await;
    poll(&mut s, "\n", "50 132\r\n").await;
    // Ctrl-D at the start of a line: end of input through the terminal.
    s.write_stdin(b"\x04").await;
    let done = s.finish(T).await;
    assert_eq!(done.exit_code(), Some(4), "{done:?}");
});

/// A container that reads its stdin from an Attach, once.
fn attachable(name: &str, cmd: &[&str], tty: bool) -> ContainerConfig {
    let mut config = container_config(name, cmd);
    config.stdin = true;
    config.stdin_once = true;
    config.tty = tty;
    config
}

cri_tests!(attach_without_tty, |ctx| {
    let pod = ctx.run_pod(ctx.pod_config("sattach")).await;
    let script = "echo ready; while read l; do echo \"out:$l\"; echo \"err:$l\" >&2; done; \
                  echo stdin-closed; exit 7";
    let c = pod
        .run(attachable("reader", &["sh", "-c", script], false))
        .await;
    pod.wait_log("reader", "ready", T).await;
    let req = AttachRequest {
        container_id: c.clone(),
        stdin: true,
        tty: false,
        stdout: true,
        stderr: true,
    };
    let url = ctx.cri.attach(req).await.expect("Attach");
    let mut s = RemoteCommand::open(ctx.daemon, &url).await;
    s.write_stdin(b"hello\n").await;
    s.expect(STDOUT, "out:hello\n", T).await;
    s.expect(STDERR, "err:hello\n", T).await;
    // What happened before the attach is in the log only.
    assert!(!s.text(STDOUT).contains("ready"), "{}", s.text(STDOUT));
    // stdin_once: the first attach's end closes the container's stdin (CloseIO).
    s.hang_up().await;
    let status = pod.wait_exited(&c, T).await;
    assert_eq!(status.exit_code, 7, "{status:?}");
    let log = pod.log_lines("reader");
    assert!(
        log.contains(&("stdout".into(), "out:hello".into()))
            && log.contains(&("stderr".into(), "err:hello".into()))
            && log.contains(&("stdout".into(), "stdin-closed".into())),
        "{log:?}"
    );
});

cri_tests!(attach_with_tty_and_resize, |ctx| {
    let pod = ctx.run_pod(ctx.pod_config("sattty")).await;
    let c = pod.run(attachable("shell", &["sh"], true)).await;
    let req = AttachRequest {
        container_id: c.clone(),
        stdin: true,
        tty: true,
        stdout: true,
        stderr: false,
    };
    let url = ctx.cri.attach(req).await.expect("Attach");
    let mut s = RemoteCommand::open(ctx.daemon, &url).await;
    // The container's own terminal (its init process), resized through ResizePty.
    s.resize(90, 30).await;
    poll(&mut s, "stty size\n", "30 90\r\n").await;
    s.write_stdin(b"echo out-$((6*7))\n").await;
    s.expect(STDOUT, "out-42\r\n", T).await;
    s.write_stdin(b"exit 5\n").await;
    let status = pod.wait_exited(&c, T).await;
    assert_eq!(status.exit_code, 5, "{status:?}");
});

/// A pod whose container echoes on 9090 (`nc -ll -e cat`) and serves HTTP on 8080.
async fn listening_pod(ctx: &integration::cri::Ctx, base: &str) -> (Pod, String) {
    let pod = ctx.run_pod(ctx.pod_config(base)).await;
    let script = "echo pf-page > /tmp/index.html && httpd -p 8080 -h /tmp && \
                  exec nc -ll -p 9090 -e /bin/cat";
    let c = pod
        .run(container_config("server", &["sh", "-c", script]))
        .await;
    let deadline = Instant::now() + T;
    loop {
        let listening = pod.exec_ok(&c, &["netstat", "-ltn"]).await;
        if listening.contains(":8080 ") && listening.contains(":9090 ") {
            break;
        }
        assert!(Instant::now() < deadline, "not listening: {listening}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (pod, c)
}

cri_tests!(port_forward_round_trips_bytes, |ctx| {
    let (pod, _) = listening_pod(&ctx, "spf").await;
    let url = ctx
        .cri
        .port_forward(&pod.id, &[9090, 8080])
        .await
        .expect("PortForward");
    let mut pf = PortForward::open(ctx.daemon, &url, &[9090, 8080]).await;

    pf.send(9090, b"hello-pf\n").await;
    assert_eq!(pf.receive(9090, 9, "", T).await, b"hello-pf\n");
    // Every byte value, 64 KiB, back exactly.
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    pf.send(9090, &data).await;
    let back = pf.receive(9090, data.len(), "", T).await;
    assert!(back == data, "{} bytes back, differing", back.len());

    pf.send(8080, b"GET /index.html HTTP/1.0\r\n\r\n").await;
    let page = pf.receive(8080, 0, "pf-page", T).await;
    assert!(
        String::from_utf8_lossy(&page).starts_with("HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&page)
    );
    assert_eq!(pf.channels.received(1), b"", "error of 9090");
    assert_eq!(pf.channels.received(3), b"", "error of 8080");
    pf.channels.close().await;
});

cri_tests!(port_forward_to_a_closed_port_reports_an_error, |ctx| {
    // Only the pause container: nothing listens in the pod's network namespace.
    let pod = ctx.run_pod(ctx.pod_config("spfno")).await;
    let url = ctx
        .cri
        .port_forward(&pod.id, &[9999])
        .await
        .expect("PortForward");
    let mut pf = PortForward::open(ctx.daemon, &url, &[9999]).await;
    let error = pf.error_after_close(9999, T).await;
    assert!(
        error.contains("9999") && error.contains("connect"),
        "{error:?}"
    );
    assert_eq!(pf.channels.received(0), b"");
});
