//! Exits: matching the reaper's exits to processes, holding the init's back, OOM reports.
use super::*;
use crate::process::exit_record;

impl<B: Backend> TaskService<B> {
    pub(super) async fn exit_loop(self, mut exits: mpsc::UnboundedReceiver<Exit>) {
        while let Some(exit) = exits.recv().await {
            if let Some(owner) = self.inner.exits.claim(exit) {
                // Each exit waits for its container's lock on its own, so a slow request on
                // one container does not hold up exits of the others.
                let this = self.clone();
                tokio::spawn(async move { this.handle_exit(owner, exit).await });
            }
        }
    }

    pub(super) async fn handle_exit(&self, owner: Owner, exit: Exit) {
        if owner.container_id == pod::WATCHED {
            self.deliver_watched(exit);
            return;
        }
        let Ok(c) = self.container(&owner.container_id) else {
            return;
        };
        let mut c = c.lock().await;
        self.apply_exit(&mut c, &owner.exec_id, exit).await;
    }

    /// Records an exit and publishes it, holding the init's back while execs run.
    pub(super) async fn apply_exit(&self, c: &mut Container, exec_id: &str, exit: Exit) {
        // An OOM kill must be reported before the exit it caused.
        self.report_oom(c);
        if exec_id.is_empty() {
            // Kept in the bundle first: if this shim dies from here on, containerd's `delete`
            // action still reports what really happened.
            let record = ExitInfo {
                status: exit.status,
                at: exit.at,
            };
            if let Err(e) = exit_record::write(&c.info.bundle, exit.pid, record) {
                log::warn!("container {}: record the init's exit: {e}", c.info.id);
            }
            // With its own PID namespace the kernel takes every process with the init.
            // Without one, containerd expects them gone before it hears of the exit.
            if c.kill_all_on_exit {
                self.kill_remaining(&c.info).await;
            }
            if c.running_execs() > 0 {
                log::debug!(
                    "container {}: init exited, waiting for its execs",
                    c.info.id
                );
                c.held_init_exit = Some(exit);
                return;
            }
            self.finish_exit(&mut c.init, exit);
            return;
        }
        let Some(p) = c.execs.get_mut(exec_id) else {
            return;
        };
        self.finish_exit(p, exit);
        if c.running_execs() == 0 {
            if let Some(init_exit) = c.held_init_exit.take() {
                self.finish_exit(&mut c.init, init_exit);
            }
        }
    }

    /// Publishes TaskOOM if the kernel OOM-killed a process of the container since last time.
    pub(super) fn report_oom(&self, c: &mut Container) {
        let Some(kills) = c.cgroup.as_ref().map(Cgroup::oom_kills) else {
            return;
        };
        if kills > c.oom_kills_reported {
            c.oom_kills_reported = kills;
            // While containerd is away, repeated kills in one container make one report.
            self.inner.publisher.publish_coalesced(
                topics::TASK_OOM_EVENT_TOPIC,
                &c.info.id,
                &TaskOOM {
                    container_id: c.info.id.clone(),
                    ..Default::default()
                },
            );
        }
    }

    /// Reports OOM kills as they happen, until the cgroup goes away.
    /// A Create and Start fault in much code (the sandbox backend's libcontainer most of all)
    /// that an idle shim never runs again. A second after a Start, drop it from the mappings
    /// (one timer however many Starts come in between; later requests refault what they use).
    pub(super) fn trim_when_settled(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.trim_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(TRIM_AFTER_START).await;
            this.inner.trim_pending.store(false, Ordering::SeqCst);
            crate::sys::trim_code_pages();
        });
    }

    pub(super) fn watch_oom(&self, id: &str, cgroup: &Cgroup) -> Option<AbortOnDrop> {
        let mut watcher = match cgroup.watch_oom() {
            Ok(w) => w,
            Err(e) => {
                log::warn!("container {id}: no OOM events: {e}");
                return None;
            }
        };
        let this = self.clone();
        let id = id.to_string();
        let task = tokio::spawn(async move {
            while watcher.next().await.is_some() {
                let Ok(c) = this.container(&id) else {
                    return;
                };
                this.report_oom(&mut *c.lock().await);
            }
        });
        Some(AbortOnDrop(task.abort_handle()))
    }

    pub(super) fn finish_exit(&self, p: &mut Process, exit: Exit) {
        if !p.set_exited(exit.status, exit.at) {
            return;
        }
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            &TaskExit {
                container_id: p.container_id.clone(),
                id: p.event_id().to_string(),
                pid: exit.pid,
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            },
        );
    }

    /// SIGKILL to every process of the container (the runtime's kill --all).
    pub(super) async fn kill_remaining(&self, info: &ContainerInfo) {
        let killed = self
            .inner
            .backend
            .kill(info, libc::SIGKILL as u32, true)
            .await;
        if let Err(e) = killed {
            log::warn!("container {}: kill what the init left: {e}", info.id);
        }
    }
}
