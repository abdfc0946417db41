//! The shim's ttrpc server: the wire protocol served directly on the shim's socket.
//!
//! Written here rather than taken from the `ttrpc` crate's server, which answers an unknown
//! service and an oversized message with INVALID_ARGUMENT where containerd's ttrpc (and so
//! containerd's expectations) say UNIMPLEMENTED and RESOURCE_EXHAUSTED, and whose per-connection
//! buffers and tasks outlive a burst of connections (RSS 1.8 → 4.6 MiB after 500 idle
//! connections, never returned). The generated services and handlers are the crate's.
//!
//! Per connection: one task reads frames in order; each request runs as its own task (a slow
//! request does not hold up the next), and its response is written whole under the
//! connection's write lock. Unary requests only: the task API has no streams.
mod dispatch;
mod frame;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, Notify};
use ttrpc::proto::{Codec, ResponseInit, MESSAGE_TYPE_REQUEST};
use ttrpc::{Code, Response};

pub use dispatch::Services;

/// Serves `services` on `listener` until [`Server::stop`].
pub struct Server {
    shared: Arc<Shared>,
}

struct Shared {
    services: Services,
    /// Requests being handled or answered, so a stop lets them finish.
    in_flight: AtomicUsize,
    idle: Notify,
    connections: AtomicUsize,
    trim_pending: AtomicBool,
}

/// How long after a connection closes the heap is trimmed.
const TRIM_AFTER_CLOSE: Duration = Duration::from_millis(500);

impl Server {
    pub fn start(listener: UnixListener, services: Services) -> Self {
        let shared = Arc::new(Shared {
            services,
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            connections: AtomicUsize::new(0),
            trim_pending: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        accepting.connections.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(serve_connection(accepting.clone(), stream));
                    }
                    // EMFILE and the like: the listener stays; try again shortly.
                    Err(e) => {
                        log::warn!("accept on the shim socket: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Self { shared }
    }

    /// Lets the requests in flight (the Shutdown that asked for this, say) finish and answer,
    /// then lets the clients hang up, for at most `limit` in all. A client is not cut off
    /// right after its last answer: Go's ttrpc client, seeing the connection close while an
    /// answer waits to be read, may report the call as failed ("ttrpc: closed"), and
    /// containerd's sandbox controller fails RemovePodSandbox on that error.
    pub async fn stop(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let idle = self.shared.idle.notified();
                if self.shared.in_flight.load(Ordering::SeqCst) == 0
                    && self.shared.connections.load(Ordering::SeqCst) == 0
                {
                    return;
                }
                idle.await;
            }
        })
        .await;
    }
}

async fn serve_connection(shared: Arc<Shared>, stream: UnixStream) {
    let (mut reader, writer) = stream.into_split();
    let writer = Arc::new(Mutex::new(writer));
    if let Err(e) = read_requests(&shared, &mut reader, &writer).await {
        log::debug!("ttrpc connection closed: {e}");
    }
    if shared.connections.fetch_sub(1, Ordering::SeqCst) == 1 {
        shared.idle.notify_waiters();
    }
    trim_when_quiet(&shared);
}

/// Once connections stop closing for a moment, gives the memory they took back to the
/// system (one timer for a whole burst): containerd keeps its own connection open, so the
/// count never falls to zero to say the burst is over.
fn trim_when_quiet(shared: &Arc<Shared>) {
    if shared.trim_pending.swap(true, Ordering::SeqCst) {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(TRIM_AFTER_CLOSE).await;
        shared.trim_pending.store(false, Ordering::SeqCst);
        crate::sys::trim_heap();
    });
}

async fn read_requests(
    shared: &Arc<Shared>,
    reader: &mut tokio::net::unix::OwnedReadHalf,
    writer: &Arc<Mutex<OwnedWriteHalf>>,
) -> std::io::Result<()> {
    while let Some(header) = frame::read_header(reader).await? {
        let len = header.length as usize;
        if len > frame::MESSAGE_LENGTH_MAX {
            frame::discard(reader, len).await?;
            if header.type_ == MESSAGE_TYPE_REQUEST {
                let message = format!(
                    "message length {len} exceeds the maximum message size of {}",
                    frame::MESSAGE_LENGTH_MAX
                );
                let response =
                    Response::init_status(ttrpc::get_status(Code::RESOURCE_EXHAUSTED, message));
                write_response(writer, header.stream_id, &response).await?;
            }
            continue;
        }
        let payload = frame::read_payload(reader, len).await?;
        // Other message types (stream data) belong to streams, which this server does not
        // serve; like Go's ttrpc, ignore them for compatibility.
        if header.type_ != MESSAGE_TYPE_REQUEST {
            continue;
        }
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let (shared, writer) = (shared.clone(), writer.clone());
        tokio::spawn(async move {
            let response = dispatch::dispatch(&shared.services, header, &payload).await;
            drop(payload);
            if let Err(e) = write_response(&writer, header.stream_id, &response).await {
                log::debug!("answer ttrpc request: {e}");
            }
            if shared.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
                shared.idle.notify_waiters();
            }
        });
    }
    Ok(())
}

async fn write_response(
    writer: &Mutex<OwnedWriteHalf>,
    stream_id: u32,
    response: &Response,
) -> std::io::Result<()> {
    let payload = match Codec::encode(response) {
        Ok(p) if p.len() <= frame::MESSAGE_LENGTH_MAX => p,
        // A response too large to send is answered as Go's ttrpc does.
        Ok(p) => {
            let message = format!(
                "response of {} bytes exceeds the maximum message size",
                p.len()
            );
            let status = ttrpc::get_status(Code::RESOURCE_EXHAUSTED, message);
            Codec::encode(&Response::init_status(status)).map_err(std::io::Error::other)?
        }
        Err(e) => return Err(std::io::Error::other(e)),
    };
    let frame = frame::response(stream_id, &payload);
    writer.lock().await.write_all(&frame).await
}
