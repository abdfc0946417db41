//! Garbage on the shim's ttrpc socket: whatever arrives, the shim answers with the code
//! containerd's ttrpc would, keeps serving its containers and gives back what it took.
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use integration::shim_tests;
use integration::spec;
use protobuf::Message;
use ttrpc::Code;

/// The shim's socket path, from the bundle's `address` file.
fn shim_socket(ctx: &integration::runtime::Ctx, id: &str) -> String {
    ctx.containerd
        .shim_socket(id)
        .to_string_lossy()
        .into_owned()
}

fn connect(path: &str) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect to the shim");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn header(len: u32, stream_id: u32, type_: u8) -> Vec<u8> {
    let mut h = len.to_be_bytes().to_vec();
    h.extend_from_slice(&stream_id.to_be_bytes());
    h.extend_from_slice(&[type_, 0]);
    h
}

fn request(service: &str, method: &str, payload: &[u8]) -> Vec<u8> {
    let mut r = ttrpc::Request::new();
    r.service = service.to_string();
    r.method = method.to_string();
    r.payload = payload.to_vec();
    r.write_to_bytes().unwrap()
}

/// Reads one response frame; its stream id and status.
fn read_response(s: &mut UnixStream) -> (u32, Code, String) {
    let mut h = [0u8; 10];
    s.read_exact(&mut h).expect("a response header");
    let len = u32::from_be_bytes(h[..4].try_into().unwrap()) as usize;
    let stream_id = u32::from_be_bytes(h[4..8].try_into().unwrap());
    assert_eq!(h[8], 2, "a response frame");
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    let r = ttrpc::Response::parse_from_bytes(&payload).expect("a ttrpc Response");
    (stream_id, r.status.code(), r.status.message.clone())
}

/// Sends one frame and returns the answer.
fn call(path: &str, stream_id: u32, payload: &[u8]) -> (u32, Code, String) {
    let mut s = connect(path);
    s.write_all(&header(payload.len() as u32, stream_id, 1))
        .unwrap();
    s.write_all(payload).unwrap();
    read_response(&mut s)
}

/// The shim's anonymous resident memory (heap and stacks; code pages are the binary's and are
/// shared and dropped on their own schedule).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

shim_tests!(garbage_on_the_socket_gets_the_right_codes, |ctx| {
    let c = &ctx.client;
    let _io = c.run("victim", &spec::spec(&["sleep", "1000"])).await;
    let path = shim_socket(&ctx, "victim");
    let task = "containerd.task.v2.Task";

    // An unknown service and an unknown method: UNIMPLEMENTED, as containerd's ttrpc says.
    let unknown_service = request("containerd.runtime.sandbox.v1.Sandbox", "Ping", b"");
    let (id, code, msg) = call(&path, 1, &unknown_service);
    assert_eq!(
        (id, code),
        (1, Code::UNIMPLEMENTED),
        "unknown service: {msg}"
    );
    let (id, code, msg) = call(&path, 3, &request(task, "Teleport", b""));
    assert_eq!(
        (id, code),
        (3, Code::UNIMPLEMENTED),
        "unknown method: {msg}"
    );

    // A request that is not a ttrpc Request, and a method request whose payload is cut short.
    let (_, code, msg) = call(&path, 5, &[0x0a, 0x40, b'x']);
    assert_eq!(code, Code::INVALID_ARGUMENT, "truncated request: {msg}");
    let state = protos::api::StateRequest {
        id: "victim".into(),
        ..Default::default()
    }
    .write_to_bytes()
    .unwrap();
    let cut = request(task, "State", &state[..state.len() - 2]);
    let (_, code, msg) = call(&path, 7, &cut);
    assert_eq!(code, Code::INVALID_ARGUMENT, "truncated payload: {msg}");

    // A message over the 4 MiB limit: RESOURCE_EXHAUSTED, and the connection goes on.
    let mut s = connect(&path);
    let big = 5 << 20;
    s.write_all(&header(big as u32, 9, 1)).unwrap();
    s.write_all(&vec![0u8; big]).unwrap();
    let (id, code, msg) = read_response(&mut s);
    assert_eq!(
        (id, code),
        (9, Code::RESOURCE_EXHAUSTED),
        "oversized: {msg}"
    );
    let whole = request(task, "State", &state);
    s.write_all(&header(whole.len() as u32, 11, 1)).unwrap();
    s.write_all(&whole).unwrap();
    let (id, code, msg) = read_response(&mut s);
    assert_eq!(
        (id, code),
        (11, Code::OK),
        "the same connection after it: {msg}"
    );

    // Random bytes, then a hang-up.
    let mut noise = connect(&path);
    let mut x: u32 = 0x2545_f491;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let _ = noise.write_all(&bytes);
    drop(noise);

    // The shim serves on: a request through containerd and an exec work.
    assert_eq!(c.status("victim", "").await.unwrap(), "RUNNING");
    let (status, out) = c.exec_run("victim", "after", &["echo", "still here"]).await;
    assert_eq!((status, out.as_str()), (0, "still here\n"));
    c.remove("victim").await;
});

shim_tests!(idle_connections_are_given_back, |ctx| {
    let c = &ctx.client;
    let _io = c.run("idle", &spec::spec(&["sleep", "1000"])).await;
    let path = shim_socket(&ctx, "idle");
    let shim = ctx.containerd.shim_pid_of("idle").expect("serving shim");
    // Settle first: the shim drops the code pages a Start faulted in a second after it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (rss_before, fds_before) = (rss_kib(shim), fds(shim));
    let conns: Vec<UnixStream> = (0..500).map(|_| connect(&path)).collect();
    // Every connection is accepted: each answers a request.
    let state = protos::api::StateRequest {
        id: "idle".into(),
        ..Default::default()
    }
    .write_to_bytes()
    .unwrap();
    let whole = request("containerd.task.v2.Task", "State", &state);
    for (i, mut s) in conns.iter().enumerate() {
        s.write_all(&header(whole.len() as u32, 1 + 2 * i as u32, 1))
            .unwrap();
        s.write_all(&whole).unwrap();
    }
    for s in &conns {
        let (_, code, msg) = read_response(&mut s.try_clone().unwrap());
        assert_eq!(code, Code::OK, "{msg}");
    }
    let rss_busy = rss_kib(shim);
    drop(conns);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while fds(shim) > fds_before && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The shim trims its heap half a second after connections stop closing.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_after = rss_kib(shim);
    eprintln!("shim anonymous RSS: {rss_before} KiB idle, {rss_busy} KiB with 500 connections, {rss_after} KiB after");
    assert_eq!(fds(shim), fds_before, "every connection's fd is closed");
    assert!(
        rss_after <= rss_before + 256,
        "RSS {rss_before} → {rss_busy} → {rss_after} KiB: the connections' memory stayed"
    );
    assert_eq!(c.status("idle", "").await.unwrap(), "RUNNING");
    c.remove("idle").await;
});
