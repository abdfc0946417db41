//! One process of a container (its init or an exec): bookkeeping only, no runtime actions.
pub mod exit_record;
pub mod state;

use std::time::SystemTime;

use tokio::sync::watch;

pub use state::{Event, State};

use crate::error::{Error, Result};
use crate::stdio::{Stdio, StdioRequest};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub status: u32,
    pub at: SystemTime,
}

pub struct Process {
    pub container_id: String,
    /// Empty for the init process.
    pub exec_id: String,
    pub pid: u32,
    state: State,
    pub stdio_request: StdioRequest,
    pub stdio: Option<Stdio>,
    /// The OCI process spec (JSON) of an exec, kept until Start.
    pub spec: Vec<u8>,
    /// Names the process for good from its start until its exit is recorded: a signal through
    /// it cannot reach a later process given the same pid. `None` where the kernel has no
    /// pidfds (before 5.3) or the process had exited before it could be opened.
    pub pidfd: Option<std::os::fd::OwnedFd>,
    exit: watch::Sender<Option<ExitInfo>>,
}

impl Process {
    pub fn new(container_id: &str, exec_id: &str, stdio_request: StdioRequest) -> Self {
        Self {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            pid: 0,
            state: State::Created,
            stdio_request,
            stdio: None,
            spec: Vec::new(),
            pidfd: None,
            exit: watch::channel(None).0,
        }
    }

    pub fn is_init(&self) -> bool {
        self.exec_id.is_empty()
    }

    /// The name containerd's events use for this process: the exec id, or the container id.
    pub fn event_id(&self) -> &str {
        if self.is_init() {
            &self.container_id
        } else {
            &self.exec_id
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Moves the state machine on, or explains why `event` is not legal now.
    pub fn apply(&mut self, event: Event) -> Result<()> {
        match self.state.next(event) {
            Some(next) => {
                self.state = next;
                Ok(())
            }
            None => Err(Error::FailedPrecondition(format!(
                "cannot {} process {:?} of container {:?}: it is {}",
                verb(event),
                self.event_id(),
                self.container_id,
                self.state.name()
            ))),
        }
    }

    /// Records the exit and wakes every Wait. Returns false if it had already exited.
    pub fn set_exited(&mut self, status: u32, at: SystemTime) -> bool {
        if self.apply(Event::Exit).is_err() {
            return false;
        }
        self.pidfd = None;
        self.exit.send_replace(Some(ExitInfo { status, at }));
        true
    }

    pub fn exit_info(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// A handle that resolves once the process has exited.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exit.subscribe()
    }
}

fn verb(event: Event) -> &'static str {
    match event {
        Event::Start => "start",
        Event::Pause => "pause",
        Event::Resume => "resume",
        Event::Exit => "record the exit of",
        Event::Delete => "delete",
    }
}

/// Waits for the exit a watch reports.
pub async fn wait_exit(mut rx: watch::Receiver<Option<ExitInfo>>) -> Option<ExitInfo> {
    rx.wait_for(|e| e.is_some()).await.ok().and_then(|e| *e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn exit_wakes_waiters_once() {
        let mut p = Process::new("c", "", StdioRequest::default());
        p.apply(Event::Start).unwrap();
        let w = p.exit_watch();
        let now = SystemTime::now();
        assert!(p.set_exited(3, now));
        assert!(!p.set_exited(4, now), "a second exit is ignored");
        assert_eq!(wait_exit(w).await.map(|e| e.status), Some(3));
        assert_eq!(p.state(), State::Stopped);
    }

    #[test]
    fn illegal_move_names_the_state() {
        let mut p = Process::new("c", "e1", StdioRequest::default());
        let err = p.apply(Event::Pause).unwrap_err().to_string();
        assert!(err.contains("created") && err.contains("e1"), "{err}");
    }
}
