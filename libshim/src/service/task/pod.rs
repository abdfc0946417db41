//! What the Sandbox service asks of the task service: the pod's files in its containers'
//! specs, a process whose exit is told to it alone, stopping and deleting every container,
//! and a shim that stays while it holds a pod.
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use super::*;
use crate::service::sandbox::pod_files::PodFiles;

/// The owner recorded for a pid watched by [`TaskService::spawn_watched`]: no container can
/// have an empty id.
pub(super) const WATCHED: &str = "";

impl<B: Backend> TaskService<B> {
    /// The pod this shim holds (its containers get its files), or none any more.
    pub(crate) fn hold_pod(&self, files: Option<Arc<PodFiles>>) {
        self.inner
            .holds_pod
            .store(files.is_some(), Ordering::SeqCst);
        *self
            .inner
            .pod_files
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = files;
    }

    fn pod(&self) -> Option<Arc<PodFiles>> {
        self.inner
            .pod_files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds the pod's files to the spec of a container of the pod, rewriting its config.json.
    pub(super) fn add_pod_files(
        &self,
        bundle: &std::path::Path,
        spec: &mut serde_json::Value,
    ) -> Result<()> {
        let Some(files) = self.pod() else {
            return Ok(());
        };
        if !files.add_to(spec) {
            return Ok(());
        }
        let path = bundle.join("config.json");
        let text = serde_json::to_vec(spec)
            .map_err(|e| Error::io("encode config.json", std::io::Error::other(e)))?;
        std::fs::write(&path, text)
            .map_err(|e| Error::io(format!("add the pod's files to {}", path.display()), e))
    }

    /// Records a container of the pod with the pod (for the clean-up after a dead shim).
    pub(super) fn record_pod_container(
        &self,
        info: &ContainerInfo,
        spec: &serde_json::Value,
    ) -> Result<()> {
        match self.pod() {
            Some(files) if files.is_member(spec) => {
                files.record_container(&info.id, &info.bundle, &info.options)
            }
            _ => Ok(()),
        }
    }

    /// A deleted container is no longer the pod's to clean up.
    pub(super) fn forget_pod_container(&self, id: &str) {
        if let Some(files) = self.pod() {
            files.forget_container(id);
        }
    }

    /// Starts a process with `start` (which returns its pid) and returns a receiver of its exit,
    /// which the exit loop hands to nobody else.
    pub(crate) fn spawn_watched(
        &self,
        start: impl FnOnce() -> Result<u32>,
    ) -> Result<(u32, oneshot::Receiver<Exit>)> {
        let _guard = self.inner.exits.begin_start();
        let pid = start()?;
        let (tx, rx) = oneshot::channel();
        let owner = Owner {
            container_id: WATCHED.to_string(),
            exec_id: String::new(),
        };
        let mut watched = self.inner.watched.lock().unwrap_or_else(|e| e.into_inner());
        match self.inner.exits.register(pid, owner) {
            Some(exit) => {
                let _ = tx.send(exit);
            }
            None => {
                watched.insert(pid, tx);
            }
        }
        Ok((pid, rx))
    }

    /// Hands a watched pid's exit to its watcher.
    pub(super) fn deliver_watched(&self, exit: Exit) {
        let tx = self
            .inner
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&exit.pid);
        if let Some(tx) = tx {
            let _ = tx.send(exit);
        }
    }

    fn container_refs(&self) -> Vec<(String, ContainerRef)> {
        self.inner
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, c)| (id.clone(), c.clone()))
            .collect()
    }

    /// Stops every container: SIGTERM to all its processes, SIGKILL to what is left after
    /// `grace`; returns once every init has exited (or 10 s after the SIGKILL).
    pub(crate) async fn stop_all(&self, grace: Duration) {
        let mut watches = Vec::new();
        for (id, c) in self.container_refs() {
            let watch = c.lock().await.init.exit_watch();
            if watch.borrow().is_none() {
                watches.push((id, watch));
            }
        }
        if watches.is_empty() {
            return;
        }
        let all_exited =
            |watches: &Vec<(String, tokio::sync::watch::Receiver<Option<ExitInfo>>)>| {
                watches.iter().all(|(_, w)| w.borrow().is_some())
            };
        for signal in [libc::SIGTERM, libc::SIGKILL] {
            if signal == libc::SIGTERM && grace.is_zero() {
                continue;
            }
            for (id, _) in &watches {
                let kill = KillRequest {
                    id: id.clone(),
                    signal: signal as u32,
                    all: true,
                    ..Default::default()
                };
                if let Err(e) = self.do_kill(kill).await {
                    log::debug!("stop container {id}: {e}");
                }
            }
            let limit = if signal == libc::SIGTERM {
                grace
            } else {
                Duration::from_secs(10)
            };
            let deadline = tokio::time::Instant::now() + limit;
            for (_, w) in watches.iter_mut() {
                let _ = tokio::time::timeout_at(deadline, w.wait_for(Option::is_some)).await;
            }
            if all_exited(&watches) {
                return;
            }
        }
    }

    /// Deletes every container (after [`Self::stop_all`]): their rootfs unmounted, their
    /// runtime state gone.
    pub(crate) async fn delete_all(&self) {
        for (id, _) in self.container_refs() {
            let req = DeleteRequest {
                id: id.clone(),
                ..Default::default()
            };
            if let Err(e) = self.do_delete(req).await {
                log::warn!("delete container {id} at the pod's shutdown: {e}");
            }
        }
    }

    /// Ends the shim once it has no container and holds no pod.
    pub(crate) fn request_shutdown(&self) {
        let idle = self
            .inner
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
            && self
                .inner
                .creating
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            && !self.inner.holds_pod.load(Ordering::SeqCst);
        if idle {
            self.inner.shutdown.notify_one();
        }
    }
}
