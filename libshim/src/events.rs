//! Publishing task events to containerd (`Events.Forward` over ttrpc at TTRPC_ADDRESS).
//!
//! Events go through one queue and one sender task, so containerd receives them in the order
//! the service emitted them; a failed send is retried before the next event is touched.
use std::time::{Duration, SystemTime};

use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::{Message, MessageField};
use protos::shim::event::Envelope;
use protos::shim::events::ForwardRequest;
use protos::shim_async::{Client, EventsClient};
use tokio::sync::{mpsc, oneshot};

const SEND_ATTEMPTS: u32 = 6;
/// The proto package of containerd's task events.
const EVENTS_PACKAGE: &str = "containerd.events";
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

enum Item {
    Event(Envelope),
    Flush(oneshot::Sender<()>),
}

/// A cheap handle to the event queue.
#[derive(Clone)]
pub struct Publisher {
    namespace: String,
    queue: mpsc::UnboundedSender<Item>,
}

impl Publisher {
    /// Starts the sender task. With no address (a shim run by hand) events are dropped.
    pub fn start(address: Option<String>, namespace: String) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_loop(address, rx));
        Self { namespace, queue }
    }

    /// Queues a task event (a message of package `containerd.events`).
    pub fn publish<M: Message>(&self, topic: &str, event: &M) {
        let value = match event.write_to_bytes() {
            Ok(v) => v,
            Err(e) => {
                log::error!("encode {topic} event: {e}");
                return;
            }
        };
        // containerd's typeurl registry names types by their full proto name alone. Built from
        // the message name rather than its descriptor: loading descriptors costs heap in
        // every shim.
        let event = Any {
            type_url: format!("{EVENTS_PACKAGE}.{}", M::NAME),
            value,
            ..Default::default()
        };
        let envelope = Envelope {
            timestamp: MessageField::some(timestamp(SystemTime::now())),
            namespace: self.namespace.clone(),
            topic: topic.to_string(),
            event: MessageField::some(event),
            ..Default::default()
        };
        let _ = self.queue.send(Item::Event(envelope));
    }

    /// Waits until every event queued so far was sent (or given up on), at most `limit`.
    pub async fn flush(&self, limit: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Item::Flush(tx)).is_ok() {
            let _ = tokio::time::timeout(limit, rx).await;
        }
    }
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

async fn send_loop(address: Option<String>, mut rx: mpsc::UnboundedReceiver<Item>) {
    let mut client: Option<EventsClient> = None;
    while let Some(item) = rx.recv().await {
        let envelope = match item {
            Item::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Item::Event(e) => e,
        };
        let Some(address) = address.as_deref() else {
            continue;
        };
        let request = ForwardRequest {
            envelope: MessageField::some(envelope),
            ..Default::default()
        };
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=SEND_ATTEMPTS {
            match send(&mut client, address, &request).await {
                Ok(()) => break,
                Err(e) => {
                    // Reconnect on the next attempt: the connection may be what failed.
                    client = None;
                    if attempt == SEND_ATTEMPTS {
                        log::error!("drop event {}: {e}", request.envelope.topic);
                    } else {
                        log::warn!(
                            "send event {} (attempt {attempt}): {e}",
                            request.envelope.topic
                        );
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    }
                }
            }
        }
    }
}

async fn send(
    client: &mut Option<EventsClient>,
    address: &str,
    request: &ForwardRequest,
) -> Result<(), String> {
    if client.is_none() {
        let c = Client::connect(&unix_uri(address))
            .await
            .map_err(|e| format!("connect to {address}: {e}"))?;
        *client = Some(EventsClient::new(c));
    }
    let c = client.as_ref().expect("connected above");
    let ctx = ttrpc::context::with_timeout(SEND_TIMEOUT.as_nanos() as i64);
    c.forward(ctx, request)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// containerd passes a bare socket path in TTRPC_ADDRESS; ttrpc wants a URI.
pub fn unix_uri(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("unix://{address}")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use protobuf::well_known_types::empty::Empty;
    use protos::events::task::{TaskExit, TaskStart};
    use ttrpc::r#async::TtrpcContext;

    use super::*;

    /// A containerd stand-in that refuses its first `fail` requests.
    struct FlakyEvents {
        fail: AtomicU32,
        topics: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl protos::shim_async::Events for FlakyEvents {
        async fn forward(&self, _: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::UNAVAILABLE,
                    "busy",
                )));
            }
            let env = req.envelope.unwrap();
            assert_eq!(env.namespace, "ns");
            // containerd's typeurl registry knows events by their bare proto names.
            let expected = match env.topic.as_str() {
                "/tasks/start" => "containerd.events.TaskStart",
                _ => "containerd.events.TaskExit",
            };
            assert_eq!(env.event.type_url, expected);
            self.topics.lock().unwrap().push(env.topic);
            Ok(Empty::new())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn events_are_retried_and_stay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("events.sock");
        let events = Arc::new(FlakyEvents {
            fail: AtomicU32::new(2),
            topics: Mutex::new(Vec::new()),
        });
        let mut server = ttrpc::asynchronous::Server::new()
            .bind(&unix_uri(&sock.to_string_lossy()))
            .unwrap()
            .register_service(protos::shim_async::create_events(events.clone()));
        server.start().await.unwrap();

        let publisher = Publisher::start(Some(sock.to_string_lossy().into_owned()), "ns".into());
        for topic in ["/tasks/start", "/tasks/exit", "/tasks/start", "/tasks/exit"] {
            if topic == "/tasks/start" {
                publisher.publish(topic, &TaskStart::new());
            } else {
                publisher.publish(topic, &TaskExit::new());
            }
        }
        publisher.flush(Duration::from_secs(10)).await;
        assert_eq!(
            *events.topics.lock().unwrap(),
            ["/tasks/start", "/tasks/exit", "/tasks/start", "/tasks/exit"]
        );
        assert_eq!(
            events.fail.load(Ordering::SeqCst),
            0,
            "the failures were retried"
        );
        server.shutdown().await.unwrap();
    }
}
