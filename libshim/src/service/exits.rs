//! Matching reaped exits to processes, including exits that arrive before their pid is known.
//!
//! A process started by a runtime (an exec of /bin/true, say) can exit and be reaped before
//! the runtime has told us its pid. While any start is in flight, unmatched exits are kept;
//! the start then claims its own. Once no start is in flight they are dropped: they belonged
//! to runtime helpers, not to any process of ours.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::reaper::Exit;

/// Which process a pid belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub container_id: String,
    pub exec_id: String,
}

#[derive(Default)]
struct Table {
    owners: HashMap<u32, Owner>,
    early: HashMap<u32, Exit>,
    starting: usize,
}

/// Shared between the exit loop and the request handlers.
#[derive(Clone, Default)]
pub struct ExitTable(Arc<Mutex<Table>>);

/// Keeps early exits buffered while alive; see the module doc.
pub struct StartGuard(ExitTable);

impl Drop for StartGuard {
    fn drop(&mut self) {
        let mut t = self.0.lock();
        t.starting -= 1;
        if t.starting == 0 {
            t.early.clear();
        }
    }
}

impl ExitTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Call before asking the runtime for a new process; hold the guard until `register`.
    pub fn begin_start(&self) -> StartGuard {
        self.lock().starting += 1;
        StartGuard(self.clone())
    }

    /// Records the owner of a new pid. Returns its exit if it already happened.
    pub fn register(&self, pid: u32, owner: Owner) -> Option<Exit> {
        let mut t = self.lock();
        if let Some(exit) = t.early.remove(&pid) {
            return Some(exit);
        }
        t.owners.insert(pid, owner);
        None
    }

    /// Forgets a pid whose process is gone without an exit of its own to report.
    pub fn forget(&self, pid: u32) {
        self.lock().owners.remove(&pid);
    }

    /// The owner of an exited pid, or `None` (the exit is buffered if a start is in flight).
    pub fn claim(&self, exit: Exit) -> Option<Owner> {
        let mut t = self.lock();
        if let Some(owner) = t.owners.remove(&exit.pid) {
            return Some(owner);
        }
        if t.starting > 0 {
            t.early.insert(exit.pid, exit);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn exit(pid: u32, status: u32) -> Exit {
        Exit {
            pid,
            status,
            at: SystemTime::now(),
        }
    }

    fn owner(e: &str) -> Owner {
        Owner {
            container_id: "c".into(),
            exec_id: e.into(),
        }
    }

    #[test]
    fn exit_before_pid_is_known_is_matched() {
        let t = ExitTable::default();
        let guard = t.begin_start();
        assert_eq!(t.claim(exit(42, 0)), None);
        assert_eq!(t.register(42, owner("e")).map(|e| e.status), Some(0));
        drop(guard);
    }

    #[test]
    fn exit_after_register_finds_owner() {
        let t = ExitTable::default();
        let guard = t.begin_start();
        assert_eq!(t.register(7, owner("e")), None);
        drop(guard);
        assert_eq!(t.claim(exit(7, 1)), Some(owner("e")));
        assert_eq!(t.claim(exit(7, 1)), None, "claimed once");
    }

    #[test]
    fn strays_are_dropped_when_no_start_is_in_flight() {
        let t = ExitTable::default();
        assert_eq!(t.claim(exit(9, 0)), None);
        let g = t.begin_start();
        assert_eq!(
            t.register(9, owner("x")),
            None,
            "an old stray is not matched"
        );
        drop(g);
    }
}
