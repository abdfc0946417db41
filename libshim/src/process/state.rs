//! The process state machine: one enum and one transition table.
//!
//! ```text
//!   Created ──start──▶ Running ◀──resume── Paused
//!      │                 │  └────pause────▶  │
//!      └──────exit───────┴──────exit─────────┴──▶ Stopped ──delete──▶ Deleted
//!   Created ──delete──▶ Deleted
//! ```
//! An exit may arrive in any live state (the kernel does not ask); deleting a live process
//! is refused unless forced, which the service does by killing it first.
use protos::types::task::Status as TaskStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Paused,
    Stopped,
    Deleted,
}

/// What happened to the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Start,
    Pause,
    Resume,
    Exit,
    Delete,
}

impl State {
    /// The state after `event`, or `None` when the event is not legal now.
    pub fn next(self, event: Event) -> Option<State> {
        use Event as E;
        use State as S;
        match (self, event) {
            (S::Created, E::Start) => Some(S::Running),
            (S::Running, E::Pause) => Some(S::Paused),
            (S::Paused, E::Resume) => Some(S::Running),
            (S::Created | S::Running | S::Paused, E::Exit) => Some(S::Stopped),
            (S::Created | S::Stopped, E::Delete) => Some(S::Deleted),
            _ => None,
        }
    }

    pub fn is_live(self) -> bool {
        matches!(self, State::Created | State::Running | State::Paused)
    }

    pub fn as_task_status(self) -> TaskStatus {
        match self {
            State::Created => TaskStatus::CREATED,
            State::Running => TaskStatus::RUNNING,
            State::Paused => TaskStatus::PAUSED,
            State::Stopped | State::Deleted => TaskStatus::STOPPED,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopped => "stopped",
            State::Deleted => "deleted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Event as E, State as S};

    #[test]
    fn legal_paths() {
        assert_eq!(S::Created.next(E::Start), Some(S::Running));
        assert_eq!(S::Running.next(E::Pause), Some(S::Paused));
        assert_eq!(S::Paused.next(E::Resume), Some(S::Running));
        assert_eq!(S::Paused.next(E::Exit), Some(S::Stopped));
        assert_eq!(S::Stopped.next(E::Delete), Some(S::Deleted));
        assert_eq!(S::Created.next(E::Delete), Some(S::Deleted));
    }

    #[test]
    fn illegal_moves_are_refused() {
        assert_eq!(S::Running.next(E::Start), None);
        assert_eq!(S::Created.next(E::Pause), None);
        assert_eq!(S::Running.next(E::Delete), None);
        assert_eq!(S::Stopped.next(E::Exit), None);
        assert_eq!(S::Deleted.next(E::Delete), None);
        assert_eq!(S::Stopped.next(E::Resume), None);
    }
}
