//! Publishing task events to containerd (`Events.Forward` over ttrpc at TTRPC_ADDRESS).
//!
//! Events go through one queue and one sender task, so containerd receives them in the order
//! the service emitted them, each once: an event is retried until containerd takes it before
//! the next one is touched. containerd may be away for a long time (restarted, upgraded,
//! stopped for maintenance): nothing is dropped while the shim lives. The queue stays small by
//! construction: while containerd is away no request can start a process, so what queues up is
//! at most one exit per process the shim tracks, and one pending OOM event per container
//! (OOM reports of a container coalesce while one is still unsent).
//!
//! Only an event containerd itself refuses (a bad namespace or topic: it will never take it) is
//! dropped, after a few tries, so that it cannot hold back every event behind it.
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::{Message, MessageField};
use protos::shim::event::Envelope;
use protos::shim::events::ForwardRequest;
use protos::shim_async::{Client, EventsClient};
use tokio::sync::{mpsc, oneshot};

/// The proto package of containerd's task events.
const EVENTS_PACKAGE: &str = "containerd.events";
/// Retries start fast (a busy containerd answers soon) and settle at a pace that finds a
/// restarted containerd within half a second while costing nothing measurable meanwhile.
const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_millis(500);
/// How often a long outage is logged again.
const REPORT_EVERY: Duration = Duration::from_secs(60);
/// Tries of an event containerd answers with a permanent refusal.
const REFUSED_ATTEMPTS: u32 = 6;
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

enum Item {
    Event {
        envelope: Envelope,
        /// Set for an event that coalesces with an identical one still queued.
        coalesce_key: Option<String>,
    },
    Flush(oneshot::Sender<()>),
}

/// A cheap handle to the event queue.
#[derive(Clone)]
pub struct Publisher {
    namespace: String,
    queue: mpsc::UnboundedSender<Item>,
    /// Keys of queued, not yet delivered coalescing events.
    unsent: Arc<Mutex<HashSet<String>>>,
}

impl Publisher {
    /// Starts the sender task. With no address (a shim run by hand) events are dropped.
    pub fn start(address: Option<String>, namespace: String) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let unsent = Arc::new(Mutex::new(HashSet::new()));
        tokio::spawn(send_loop(address, rx, unsent.clone()));
        Self {
            namespace,
            queue,
            unsent,
        }
    }

    /// Queues a task event (a message of package `containerd.events`).
    pub fn publish<M: Message>(&self, topic: &str, event: &M) {
        if let Some(envelope) = self.envelope(topic, event) {
            let _ = self.queue.send(Item::Event {
                envelope,
                coalesce_key: None,
            });
        }
    }

    /// Queues an event unless one of the same topic about the same `subject` is still waiting
    /// to be delivered: for reports that say "this happened again" and mean the same to
    /// containerd once as many times (TaskOOM of a container).
    pub fn publish_coalesced<M: Message>(&self, topic: &str, subject: &str, event: &M) {
        let Some(envelope) = self.envelope(topic, event) else {
            return;
        };
        let key = format!("{topic} {subject}");
        if !self
            .unsent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone())
        {
            return;
        }
        let _ = self.queue.send(Item::Event {
            envelope,
            coalesce_key: Some(key),
        });
    }

    fn envelope<M: Message>(&self, topic: &str, event: &M) -> Option<Envelope> {
        let value = match event.write_to_bytes() {
            Ok(v) => v,
            Err(e) => {
                log::error!("encode {topic} event: {e}");
                return None;
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
        Some(Envelope {
            timestamp: MessageField::some(timestamp(SystemTime::now())),
            namespace: self.namespace.clone(),
            topic: topic.to_string(),
            event: MessageField::some(event),
            ..Default::default()
        })
    }

    /// Waits until every event queued so far was delivered (or refused), at most `limit`.
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

async fn send_loop(
    address: Option<String>,
    mut rx: mpsc::UnboundedReceiver<Item>,
    unsent: Arc<Mutex<HashSet<String>>>,
) {
    let mut client: Option<EventsClient> = None;
    while let Some(item) = rx.recv().await {
        let (envelope, coalesce_key) = match item {
            Item::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Item::Event {
                envelope,
                coalesce_key,
            } => (envelope, coalesce_key),
        };
        if let Some(address) = address.as_deref() {
            let request = ForwardRequest {
                envelope: MessageField::some(envelope),
                ..Default::default()
            };
            deliver(&mut client, address, &request).await;
        }
        if let Some(key) = coalesce_key {
            unsent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
    }
}

/// Sends one event, retrying until containerd takes it; gives up only on a permanent refusal.
async fn deliver(client: &mut Option<EventsClient>, address: &str, request: &ForwardRequest) {
    let topic = &request.envelope.topic;
    let mut delay = FIRST_RETRY;
    let mut refusals = 0;
    let mut outage: Option<(Instant, Instant)> = None; // (since, last reported)
    loop {
        let failure = match send(client, address, request).await {
            Ok(()) => {
                if let Some((since, _)) = outage {
                    log::info!(
                        "event {topic} delivered after containerd was unreachable for {:.1}s",
                        since.elapsed().as_secs_f64()
                    );
                }
                return;
            }
            Err(f) => f,
        };
        // Reconnect on the next attempt: the connection may be what failed.
        *client = None;
        match failure {
            Failure::Refused(e) => {
                refusals += 1;
                if refusals >= REFUSED_ATTEMPTS {
                    log::error!("drop event {topic}: containerd refuses it: {e}");
                    return;
                }
                log::warn!("send event {topic} (refused {refusals} times): {e}");
            }
            Failure::Unreachable(e) => {
                let now = Instant::now();
                match &mut outage {
                    None => {
                        log::warn!("send event {topic}: {e}; retrying until containerd answers");
                        outage = Some((now, now));
                    }
                    Some((since, reported)) if now - *reported >= REPORT_EVERY => {
                        log::warn!(
                            "containerd unreachable for {}s, event {topic} waits: {e}",
                            (now - *since).as_secs()
                        );
                        *reported = now;
                    }
                    Some(_) => {}
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(LAST_RETRY);
    }
}

enum Failure {
    /// containerd answered and will never take this event.
    Refused(String),
    /// containerd is away, busy or restarting: worth waiting for.
    Unreachable(String),
}

async fn send(
    client: &mut Option<EventsClient>,
    address: &str,
    request: &ForwardRequest,
) -> Result<(), Failure> {
    if client.is_none() {
        let c = Client::connect(&unix_uri(address))
            .await
            .map_err(|e| Failure::Unreachable(format!("connect to {address}: {e}")))?;
        *client = Some(EventsClient::new(c));
    }
    let c = client.as_ref().expect("connected above");
    let ctx = ttrpc::context::with_timeout(SEND_TIMEOUT.as_nanos() as i64);
    match c.forward(ctx, request).await {
        Ok(_) => Ok(()),
        Err(ttrpc::Error::RpcStatus(status)) if is_permanent(status.code()) => {
            Err(Failure::Refused(status.message().to_string()))
        }
        Err(e) => Err(Failure::Unreachable(e.to_string())),
    }
}

/// Codes by which containerd says the event itself is wrong; anything else (a closed
/// connection, a timeout, UNAVAILABLE while it shuts down) may pass with time.
fn is_permanent(code: ttrpc::Code) -> bool {
    use ttrpc::Code::*;
    matches!(
        code,
        INVALID_ARGUMENT | NOT_FOUND | ALREADY_EXISTS | PERMISSION_DENIED | UNIMPLEMENTED
    )
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
    use protos::events::task::{TaskExit, TaskOOM, TaskStart};
    use ttrpc::r#async::TtrpcContext;

    use super::*;

    /// A containerd stand-in that answers its first `fail` requests with `code`.
    struct FlakyEvents {
        fail: AtomicU32,
        code: ttrpc::Code,
        topics: Mutex<Vec<String>>,
    }

    impl FlakyEvents {
        fn new(fail: u32, code: ttrpc::Code) -> Arc<Self> {
            Arc::new(Self {
                fail: AtomicU32::new(fail),
                code,
                topics: Mutex::new(Vec::new()),
            })
        }

        fn topics(&self) -> Vec<String> {
            self.topics.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl protos::shim_async::Events for FlakyEvents {
        async fn forward(&self, _: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(self.code, "no")));
            }
            let env = req.envelope.unwrap();
            assert_eq!(env.namespace, "ns");
            // containerd's typeurl registry knows events by their bare proto names.
            let expected = match env.topic.as_str() {
                "/tasks/start" => "containerd.events.TaskStart",
                "/tasks/oom" => "containerd.events.TaskOOM",
                _ => "containerd.events.TaskExit",
            };
            assert_eq!(env.event.type_url, expected);
            self.topics.lock().unwrap().push(env.topic);
            Ok(Empty::new())
        }
    }

    async fn serve(sock: &std::path::Path, events: Arc<FlakyEvents>) -> ttrpc::r#async::Server {
        let mut server = ttrpc::asynchronous::Server::new()
            .bind(&unix_uri(&sock.to_string_lossy()))
            .unwrap()
            .register_service(protos::shim_async::create_events(events));
        server.start().await.unwrap();
        server
    }

    fn publish_four(publisher: &Publisher) {
        for topic in ["/tasks/start", "/tasks/exit", "/tasks/start", "/tasks/exit"] {
            if topic == "/tasks/start" {
                publisher.publish(topic, &TaskStart::new());
            } else {
                publisher.publish(topic, &TaskExit::new());
            }
        }
    }

    const FOUR: [&str; 4] = ["/tasks/start", "/tasks/exit", "/tasks/start", "/tasks/exit"];

    #[tokio::test(flavor = "current_thread")]
    async fn events_are_retried_and_stay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("events.sock");
        let events = FlakyEvents::new(2, ttrpc::Code::UNAVAILABLE);
        let mut server = serve(&sock, events.clone()).await;
        let publisher = Publisher::start(Some(sock.to_string_lossy().into_owned()), "ns".into());
        publish_four(&publisher);
        publisher.flush(Duration::from_secs(10)).await;
        assert_eq!(events.topics(), FOUR);
        assert_eq!(
            events.fail.load(Ordering::SeqCst),
            0,
            "the failures were retried"
        );
        server.shutdown().await.unwrap();
    }

    /// containerd down for longer than any fixed retry budget (the old one gave up after
    /// 1.55 s): every event arrives once it is back, in order, once each.
    #[tokio::test(flavor = "current_thread")]
    async fn nothing_is_dropped_while_containerd_is_away() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("events.sock");
        let publisher = Publisher::start(Some(sock.to_string_lossy().into_owned()), "ns".into());
        publish_four(&publisher);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let events = FlakyEvents::new(0, ttrpc::Code::OK);
        let mut server = serve(&sock, events.clone()).await;
        let back = Instant::now();
        publisher.flush(Duration::from_secs(10)).await;
        assert_eq!(events.topics(), FOUR);
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "found containerd again soon"
        );
        server.shutdown().await.unwrap();
    }

    /// An event containerd will never take does not hold back the ones behind it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_event_is_dropped_after_a_few_tries() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("events.sock");
        let events = FlakyEvents::new(REFUSED_ATTEMPTS, ttrpc::Code::INVALID_ARGUMENT);
        let mut server = serve(&sock, events.clone()).await;
        let publisher = Publisher::start(Some(sock.to_string_lossy().into_owned()), "ns".into());
        publish_four(&publisher);
        publisher.flush(Duration::from_secs(10)).await;
        assert_eq!(events.topics(), &FOUR[1..]);
        server.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn repeated_reports_coalesce_while_unsent() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("events.sock");
        let publisher = Publisher::start(Some(sock.to_string_lossy().into_owned()), "ns".into());
        for _ in 0..5 {
            publisher.publish_coalesced("/tasks/oom", "c1", &TaskOOM::new());
        }
        publisher.publish_coalesced("/tasks/oom", "c2", &TaskOOM::new());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let events = FlakyEvents::new(0, ttrpc::Code::OK);
        let mut server = serve(&sock, events.clone()).await;
        publisher.flush(Duration::from_secs(10)).await;
        assert_eq!(events.topics(), ["/tasks/oom", "/tasks/oom"]);
        // Once delivered, the next report of the same container goes out again.
        publisher.publish_coalesced("/tasks/oom", "c1", &TaskOOM::new());
        publisher.flush(Duration::from_secs(10)).await;
        assert_eq!(events.topics().len(), 3);
        server.shutdown().await.unwrap();
    }
}
