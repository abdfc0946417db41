//! Records containerd's task events for one namespace, to check their order.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_client::services::v1::SubscribeRequest;
use containerd_client::tonic::Request;
use prost::Message;

/// One event: its topic and the decoded fields tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub topic: String,
    pub container_id: String,
    /// The exec id, or the container id for the init process (TaskExit's `id`).
    pub id: String,
    pub pid: u32,
    pub exit_status: u32,
    /// When the shim published it (the envelope's timestamp).
    pub at: Option<std::time::SystemTime>,
}

#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Event>>>);

impl Recorder {
    /// Subscribes to `/tasks/` events of `namespace`; events arrive in the background.
    pub async fn start(client: &crate::Client) -> Self {
        let rec = Recorder::default();
        let mut events = client.raw().events();
        let req = SubscribeRequest {
            filters: vec![format!(
                "namespace==\"{}\",topic~=\"/tasks/\"",
                client.namespace()
            )],
        };
        let sink = rec.clone();
        // containerd sends the stream's headers with its first event, so the call itself only
        // returns then: subscribe in the background.
        tokio::spawn(async move {
            let Ok(resp) = events.subscribe(Request::new(req)).await else {
                return;
            };
            let mut stream = resp.into_inner();
            while let Ok(Some(env)) = stream.message().await {
                if let Some(any) = env.event {
                    let mut event = decode(&env.topic, &any.value);
                    event.at = env.timestamp.and_then(|t| {
                        let since_epoch = Duration::new(t.seconds as u64, t.nanos as u32);
                        std::time::UNIX_EPOCH.checked_add(since_epoch)
                    });
                    sink.0.lock().unwrap().push(event);
                }
            }
        });
        // Subscriptions take effect asynchronously; give it a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        rec
    }

    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the recorded events (at most 10 s).
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        for _ in 0..200 {
            let ev = self.events();
            if pred(&ev) {
                return ev;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}; events: {:#?}", self.events());
    }

    /// Topics (without `/tasks/`) of the events of one process, in order.
    pub fn topics_of(&self, container_id: &str, exec_id: &str) -> Vec<String> {
        self.events()
            .into_iter()
            .filter(|e| e.container_id == container_id)
            .filter(|e| match e.topic.as_str() {
                "/tasks/exec-added" | "/tasks/exec-started" => e.id == exec_id,
                "/tasks/exit" => e.id == exec_id || (exec_id.is_empty() && e.id == container_id),
                _ => exec_id.is_empty(),
            })
            .map(|e| e.topic.trim_start_matches("/tasks/").to_string())
            .collect()
    }
}

fn decode(topic: &str, bytes: &[u8]) -> Event {
    use containerd_client::events::*;
    let mut e = Event {
        topic: topic.to_string(),
        container_id: String::new(),
        id: String::new(),
        pid: 0,
        exit_status: 0,
        at: None,
    };
    match topic {
        "/tasks/create" => {
            if let Ok(m) = TaskCreate::decode(bytes) {
                e.container_id = m.container_id;
                e.pid = m.pid;
            }
        }
        "/tasks/start" => {
            if let Ok(m) = TaskStart::decode(bytes) {
                e.container_id = m.container_id;
                e.pid = m.pid;
            }
        }
        "/tasks/exit" => {
            if let Ok(m) = TaskExit::decode(bytes) {
                e.container_id = m.container_id;
                e.id = m.id;
                e.pid = m.pid;
                e.exit_status = m.exit_status;
            }
        }
        "/tasks/delete" => {
            if let Ok(m) = TaskDelete::decode(bytes) {
                e.container_id = m.container_id;
                e.pid = m.pid;
                e.exit_status = m.exit_status;
            }
        }
        "/tasks/exec-added" => {
            if let Ok(m) = TaskExecAdded::decode(bytes) {
                e.container_id = m.container_id;
                e.id = m.exec_id;
            }
        }
        "/tasks/exec-started" => {
            if let Ok(m) = TaskExecStarted::decode(bytes) {
                e.container_id = m.container_id;
                e.id = m.exec_id;
                e.pid = m.pid;
            }
        }
        "/tasks/oom" => {
            if let Ok(m) = TaskOom::decode(bytes) {
                e.container_id = m.container_id;
            }
        }
        "/tasks/paused" => {
            if let Ok(m) = TaskPaused::decode(bytes) {
                e.container_id = m.container_id;
            }
        }
        "/tasks/resumed" => {
            if let Ok(m) = TaskResumed::decode(bytes) {
                e.container_id = m.container_id;
            }
        }
        _ => {}
    }
    e
}
