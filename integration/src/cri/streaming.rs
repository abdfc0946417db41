//! A client of containerd's CRI streaming server (kubelet's, copied or vendored into
//! containerd): Exec, Attach and PortForward over WebSocket with the `v4.channel.k8s.io`
//! subprotocol, the one protocol every release from 1.6 to 2.1 serves that needs no SPDY.
//!
//! Every binary message starts with its channel byte. Exec and Attach: 0 stdin, 1 stdout,
//! 2 stderr, 3 the final status (a JSON `metav1.Status`), 4 resize (JSON `{"Width","Height"}`).
//! PortForward: channels `2i` (data) and `2i+1` (error) for the i-th requested port, each
//! opened by the port as two little-endian bytes. These releases serve no `v5.channel.k8s.io`,
//! so stdin cannot be half-closed: it ends only with the connection ([`RemoteCommand::hang_up`]).
//!
//! The server listens on 127.0.0.1 of containerd's own network namespace: the TCP socket is
//! made and connected in that namespace by a thread of its own, and keeps it afterwards.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::daemon::CriDaemon;

/// The subprotocol asked for: binary frames, the status as JSON on channel 3.
pub const PROTOCOL: &str = "v4.channel.k8s.io";
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STATUS: u8 = 3;
pub const RESIZE: u8 = 4;

/// A TCP connection to `addr` made inside the network namespace of process `pid`.
pub fn connect_in_netns(pid: u32, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    // A network namespace is per thread: this thread enters it and ends, the test's threads
    // stay where they are.
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
    })
    .join()
    .expect("netns connect thread")
}

/// A WebSocket session with the streaming server, its received bytes kept per channel.
pub struct Channels {
    ws: WebSocketStream<tokio::net::TcpStream>,
    bufs: HashMap<u8, Vec<u8>>,
    closed: bool,
}

impl Channels {
    /// Opens `url` (as CRI's Exec, Attach or PortForward returned it) from inside
    /// containerd's network namespace.
    pub async fn open(daemon: &CriDaemon, url: &str) -> Channels {
        let rest = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("streaming URL is not http://: {url}"));
        let host = rest.split('/').next().unwrap_or_default();
        let addr: SocketAddr = host
            .parse()
            .unwrap_or_else(|e| panic!("streaming URL {url}: host {host:?}: {e}"));
        let pid = daemon.pid();
        let std = tokio::task::spawn_blocking(move || connect_in_netns(pid, addr))
            .await
            .expect("connect task")
            .unwrap_or_else(|e| panic!("connect to {addr} in containerd's netns: {e}"));
        std.set_nonblocking(true).expect("nonblocking socket");
        let tcp = tokio::net::TcpStream::from_std(std).expect("tokio socket");
        let mut req = format!("ws://{rest}")
            .into_client_request()
            .expect("websocket request");
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
        let (ws, resp) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_tungstenite::client_async(req, tcp),
        )
        .await
        .unwrap_or_else(|_| panic!("websocket handshake with {url} timed out"))
        .unwrap_or_else(|e| panic!("websocket handshake with {url}: {e}"));
        let chosen = resp.headers().get("Sec-WebSocket-Protocol");
        assert_eq!(
            chosen.and_then(|v| v.to_str().ok()),
            Some(PROTOCOL),
            "{resp:?}"
        );
        Channels {
            ws,
            bufs: HashMap::new(),
            closed: false,
        }
    }

    /// Sends `data` on `channel`.
    pub async fn send(&mut self, channel: u8, data: &[u8]) {
        let mut frame = Vec::with_capacity(data.len() + 1);
        frame.push(channel);
        frame.extend_from_slice(data);
        self.ws
            .send(Message::Binary(frame.into()))
            .await
            .unwrap_or_else(|e| panic!("send on channel {channel}: {e}"));
    }

    /// What `channel` has received so far (and not taken).
    pub fn received(&self, channel: u8) -> &[u8] {
        self.bufs
            .get(&channel)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Takes what `channel` has received so far.
    pub fn take(&mut self, channel: u8) -> Vec<u8> {
        self.bufs.remove(&channel).unwrap_or_default()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Receives until `done` holds or the server closed the connection (true if `done`
    /// held), for at most `timeout`.
    pub async fn recv_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Channels) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if self.closed {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => self.closed = true,
                Ok(Some(Ok(Message::Binary(b)))) => {
                    if let Some((&channel, data)) = b.split_first() {
                        self.bufs
                            .entry(channel)
                            .or_default()
                            .extend_from_slice(data);
                    }
                }
                // Pings are answered by tungstenite; text frames belong to base64 protocols.
                Ok(Some(Ok(_))) => {}
            }
        }
        true
    }

    /// Receives until the server closes the connection; panics after `timeout`.
    pub async fn wait_closed(&mut self, timeout: Duration) {
        self.recv_until(timeout, |c| c.closed).await;
        assert!(
            self.closed,
            "the streaming connection is still open after {timeout:?}; received {}",
            self.dump()
        );
    }

    /// Closes the connection: the server ends stdin (and every stream) of the session.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Everything received so far, per channel, for failure messages.
    pub fn dump(&self) -> String {
        let mut chans: Vec<_> = self.bufs.iter().collect();
        chans.sort_by_key(|(c, _)| **c);
        chans
            .iter()
            .map(|(c, b)| format!("[{c}] {:?}", String::from_utf8_lossy(b)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// An Exec or Attach session.
pub struct RemoteCommand(pub Channels);

/// What an Exec session ended with.
#[derive(Debug)]
pub struct Finished {
    pub stdout: String,
    pub stderr: String,
    /// The `metav1.Status` of channel 3 (`{"status":"Success"}` or a failure).
    pub status: serde_json::Value,
}

impl Finished {
    /// The exit code the status reports: 0 on success, the `ExitCode` cause of a
    /// `NonZeroExitCode` failure, None for any other status.
    pub fn exit_code(&self) -> Option<i32> {
        if self.status["status"] == "Success" {
            return Some(0);
        }
        if self.status["reason"] != "NonZeroExitCode" {
            return None;
        }
        self.status["details"]["causes"]
            .as_array()?
            .iter()
            .find(|c| c["reason"] == "ExitCode")?["message"]
            .as_str()?
            .parse()
            .ok()
    }
}

impl RemoteCommand {
    pub async fn open(daemon: &CriDaemon, url: &str) -> RemoteCommand {
        RemoteCommand(Channels::open(daemon, url).await)
    }

    pub async fn write_stdin(&mut self, data: &[u8]) {
        self.0.send(STDIN, data).await
    }

    /// Asks for a terminal of `width` columns and `height` rows.
    pub async fn resize(&mut self, width: u16, height: u16) {
        let size = serde_json::json!({"Width": width, "Height": height});
        self.0.send(RESIZE, size.to_string().as_bytes()).await
    }

    /// The text `channel` has received so far.
    pub fn text(&self, channel: u8) -> String {
        String::from_utf8_lossy(self.0.received(channel)).into_owned()
    }

    /// Whether `channel`'s text contains `needle` within `timeout`.
    pub async fn saw(&mut self, channel: u8, needle: &str, timeout: Duration) -> bool {
        self.0
            .recv_until(timeout, |c| {
                String::from_utf8_lossy(c.received(channel)).contains(needle)
            })
            .await
    }

    /// Waits until `channel`'s text contains `needle`; panics after `timeout`.
    pub async fn expect(&mut self, channel: u8, needle: &str, timeout: Duration) {
        if !self.saw(channel, needle, timeout).await {
            panic!(
                "no {needle:?} on channel {channel} within {timeout:?} (closed: {}); received {}",
                self.0.is_closed(),
                self.0.dump()
            );
        }
    }

    /// Waits for the server to end the session; its output and status.
    pub async fn finish(mut self, timeout: Duration) -> Finished {
        self.0.wait_closed(timeout).await;
        let raw = self.text(STATUS);
        let status = serde_json::from_str(&raw)
            .unwrap_or_else(|e| panic!("status {raw:?} is not JSON: {e}; {}", self.0.dump()));
        Finished {
            stdout: self.text(STDOUT),
            stderr: self.text(STDERR),
            status,
        }
    }

    /// Closes the connection, which ends the session's stdin.
    pub async fn hang_up(self) {
        self.0.close().await
    }
}

/// A PortForward session: one TCP connection into the pod per requested port.
pub struct PortForward {
    pub channels: Channels,
    ports: Vec<u16>,
}

impl PortForward {
    /// Opens `url` for `ports` (in the order of the PortForward request) and checks that
    /// each port's channels start with that port.
    pub async fn open(daemon: &CriDaemon, url: &str, ports: &[u16]) -> PortForward {
        let mut channels = Channels::open(daemon, url).await;
        let n = ports.len() as u8;
        let all = |c: &Channels| (0..2 * n).all(|ch| c.received(ch).len() >= 2);
        assert!(
            channels.recv_until(Duration::from_secs(30), all).await,
            "port prefixes not received; {}",
            channels.dump()
        );
        for (i, port) in ports.iter().enumerate() {
            for ch in [2 * i as u8, 2 * i as u8 + 1] {
                let buf = channels.bufs.get_mut(&ch).expect("prefixed channel");
                let got: Vec<u8> = buf.drain(..2).collect();
                assert_eq!(got, port.to_le_bytes(), "prefix of channel {ch}");
            }
        }
        PortForward {
            channels,
            ports: ports.to_vec(),
        }
    }

    fn index(&self, port: u16) -> u8 {
        let i = self.ports.iter().position(|p| *p == port);
        2 * i.unwrap_or_else(|| panic!("port {port} was not requested")) as u8
    }

    /// Sends `data` to `port` in the pod.
    pub async fn send(&mut self, port: u16, data: &[u8]) {
        let ch = self.index(port);
        self.channels.send(ch, data).await
    }

    /// Waits until `port` has sent at least `len` bytes (or its text contains `needle` when
    /// `len` is 0); what it sent; panics after `timeout`.
    pub async fn receive(
        &mut self,
        port: u16,
        len: usize,
        needle: &str,
        timeout: Duration,
    ) -> Vec<u8> {
        let ch = self.index(port);
        let done = |c: &Channels| {
            let got = c.received(ch);
            got.len() >= len.max(1) && String::from_utf8_lossy(got).contains(needle)
        };
        if !self.channels.recv_until(timeout, done).await {
            panic!(
                "port {port}: no {len} bytes / {needle:?} within {timeout:?}; received {}",
                self.channels.dump()
            );
        }
        self.channels.take(ch)
    }

    /// The error text of `port` once the server has closed the session.
    pub async fn error_after_close(&mut self, port: u16, timeout: Duration) -> String {
        let ch = self.index(port) + 1;
        self.channels.wait_closed(timeout).await;
        String::from_utf8_lossy(self.channels.received(ch)).into_owned()
    }
}
