//! The task service: containerd's Task API on top of a [`Backend`].
//!
//! Locking: the container map is a plain mutex held only for lookups. Each container has an
//! async mutex held for the whole of a request on it (backend calls included), so requests on
//! one container are serialised while containers of a group proceed independently.
//!
//! Event order (containerd's runtime-v2 contract): a process's start event is queued while its
//! container lock is held and before its exit can be handled (exits take the same lock), and
//! the init's exit is held back until the exits of its running execs are out.
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::empty::Empty;
use protobuf::{Message, MessageField};
use protos::api::*;
use protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use protos::shim::oci::ProcessDetails;
use protos::topics;
use tokio::sync::{mpsc, Mutex as AsyncMutex, Notify};
use ttrpc::r#async::TtrpcContext;

use super::exits::{ExitTable, Owner};
use crate::backend::{Backend, CheckpointRequest, ContainerInfo};
use crate::error::{Error, Result};
use crate::events::{timestamp, Publisher};
use crate::metrics::Cgroup;
use crate::mount;
use crate::options::RuntimeOptions;
use crate::process::{wait_exit, Event, ExitInfo, Process, State};
use crate::reaper::Exit;
use crate::stdio::{Owner as StdioOwner, Stdio, StdioRequest};

/// How long Delete waits for a process's output to drain before closing its stdio.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

struct Container {
    info: ContainerInfo,
    init: Process,
    execs: HashMap<String, Process>,
    /// The init's exit, held back until no exec is running.
    held_init_exit: Option<Exit>,
    /// Whether the container's processes outlive its init (see [`outlives_init`]): then they
    /// are killed when it exits, as containerd's Go shim does.
    kill_all_on_exit: bool,
    /// The container's cgroup, for Stats and OOM events; found from the init's pid.
    cgroup: Option<Cgroup>,
    /// The cgroup's OOM-kill count already reported as TaskOOM.
    oom_kills_reported: u64,
    /// Set when the container is to be restored from a checkpoint at Start.
    restore: Option<CheckpointRequest>,
    /// Ends the OOM watcher with the container: a removed v2 cgroup need not wake inotify.
    oom_watch: Option<AbortOnDrop>,
}

/// How long after a Start the code pages it faulted in are dropped.
const TRIM_AFTER_START: Duration = Duration::from_secs(1);

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Container {
    fn process(&self, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| unknown_exec(&self.info.id, exec_id))
    }

    fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        let id = self.info.id.clone();
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| unknown_exec(&id, exec_id))
    }

    fn running_execs(&self) -> usize {
        self.execs
            .values()
            .filter(|p| p.state().is_live() && p.pid != 0)
            .count()
    }
}

fn unknown_exec(id: &str, exec_id: &str) -> Error {
    Error::NotFound(format!("exec {exec_id:?} not found in container {id:?}"))
}

type ContainerRef = Arc<AsyncMutex<Container>>;

/// A process the runtime just started, with the exit it may already have had.
struct Launched {
    stdio: Stdio,
    pid: u32,
    early: Option<Exit>,
}

struct Inner<B> {
    backend: B,
    namespace: String,
    publisher: Publisher,
    exits: ExitTable,
    containers: Mutex<HashMap<String, ContainerRef>>,
    /// Ids whose Create is in flight, so a duplicate is refused before any work.
    creating: Mutex<HashSet<String>>,
    shutdown: Arc<Notify>,
    /// A trim of the code pages is scheduled (see [`TaskService::trim_when_settled`]).
    trim_pending: std::sync::atomic::AtomicBool,
}

/// The ttrpc Task service. Cheap to clone.
pub struct TaskService<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for TaskService<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<B: Backend> TaskService<B> {
    /// Creates the service and starts matching the reaper's unclaimed exits to processes.
    pub fn new(
        backend: B,
        namespace: String,
        publisher: Publisher,
        exits: mpsc::UnboundedReceiver<Exit>,
        shutdown: Arc<Notify>,
    ) -> Self {
        let service = Self {
            inner: Arc::new(Inner {
                backend,
                namespace,
                publisher,
                exits: ExitTable::default(),
                containers: Mutex::new(HashMap::new()),
                creating: Mutex::new(HashSet::new()),
                shutdown,
                trim_pending: Default::default(),
            }),
        };
        tokio::spawn(service.clone().exit_loop(exits));
        service
    }

    fn container(&self, id: &str) -> Result<ContainerRef> {
        self.inner
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))
    }

    fn publish<M: protobuf::Message>(&self, topic: &str, event: &M) {
        self.inner.publisher.publish(topic, event);
    }

    async fn exit_loop(self, mut exits: mpsc::UnboundedReceiver<Exit>) {
        while let Some(exit) = exits.recv().await {
            if let Some(owner) = self.inner.exits.claim(exit) {
                // Each exit waits for its container's lock on its own, so a slow request on
                // one container does not hold up exits of the others.
                let this = self.clone();
                tokio::spawn(async move { this.handle_exit(owner, exit).await });
            }
        }
    }

    async fn handle_exit(&self, owner: Owner, exit: Exit) {
        let Ok(c) = self.container(&owner.container_id) else {
            return;
        };
        let mut c = c.lock().await;
        self.apply_exit(&mut c, &owner.exec_id, exit).await;
    }

    /// Records an exit and publishes it, holding the init's back while execs run.
    async fn apply_exit(&self, c: &mut Container, exec_id: &str, exit: Exit) {
        // An OOM kill must be reported before the exit it caused.
        self.report_oom(c);
        if exec_id.is_empty() {
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
    fn report_oom(&self, c: &mut Container) {
        let Some(kills) = c.cgroup.as_ref().map(Cgroup::oom_kills) else {
            return;
        };
        if kills > c.oom_kills_reported {
            c.oom_kills_reported = kills;
            self.publish(
                topics::TASK_OOM_EVENT_TOPIC,
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
    fn trim_when_settled(&self) {
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

    fn watch_oom(&self, id: &str, cgroup: &Cgroup) -> Option<AbortOnDrop> {
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

    fn finish_exit(&self, p: &mut Process, exit: Exit) {
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
    async fn kill_remaining(&self, info: &ContainerInfo) {
        let killed = self
            .inner
            .backend
            .kill(info, libc::SIGKILL as u32, true)
            .await;
        if let Err(e) = killed {
            log::warn!("container {}: kill what the init left: {e}", info.id);
        }
    }

    // ---- Create ----

    async fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        validate_id(&req.id)?;
        {
            let containers = self
                .inner
                .containers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let mut creating = self
                .inner
                .creating
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if containers.contains_key(&req.id) || !creating.insert(req.id.clone()) {
                return Err(Error::AlreadyExists(format!(
                    "container {:?} already exists",
                    req.id
                )));
            }
        }
        let result = self.create_container(&req).await;
        self.inner
            .creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&req.id);
        let (mut container, pid) = result?;
        if let Some(cgroup) = container.cgroup.clone() {
            container.oom_watch = self.watch_oom(&req.id, &cgroup);
        }
        self.inner
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req.id.clone(), Arc::new(AsyncMutex::new(container)));
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn create_container(&self, req: &CreateTaskRequest) -> Result<(Container, u32)> {
        let bundle = PathBuf::from(&req.bundle);
        let spec = check_bundle(&bundle)?;
        let kill_all_on_exit = outlives_init(&spec);
        let mut options = RuntimeOptions::from_any(req.options.as_ref())?;
        // In a user namespace the container's root is some other host user: it must be able
        // to use its stdio.
        if options.io_uid == 0 && options.io_gid == 0 {
            (options.io_uid, options.io_gid) = mapped_root(&spec);
        }
        let info = ContainerInfo {
            id: req.id.clone(),
            namespace: self.inner.namespace.clone(),
            bundle: bundle.clone(),
            options,
        };
        if restores_from(req, &info).is_some() && !self.inner.backend.can_restore() {
            // Refused before anything is mounted: nothing to undo.
            return Err(crate::BackendError::NotImplemented(
                "restore from a checkpoint (this backend can checkpoint, not restore)",
            )
            .into());
        }
        info.options.save(&bundle)?;
        let rootfs = info.rootfs();
        if !req.rootfs.is_empty() {
            std::fs::create_dir_all(&rootfs)
                .map_err(|e| Error::io(format!("create {}", rootfs.display()), e))?;
        }
        mount::mount_rootfs(&req.rootfs, &rootfs)?;
        let stdio_request = StdioRequest {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut init = Process::new(&req.id, "", stdio_request.clone());
        // A checkpoint to restore from (containerd's checkpoint, or the CriuImagePath option
        // its clients set for a restore): the runtime restores at Start instead of creating.
        if let Some(image_path) = restores_from(req, &info) {
            let restore = CheckpointRequest {
                image_path,
                work_path: criu_work_path(&info),
                parent: (!req.parent_checkpoint.is_empty())
                    .then(|| PathBuf::from(&req.parent_checkpoint)),
                terminal: req.terminal,
                ..Default::default()
            };
            let container = Container {
                info,
                init,
                execs: HashMap::new(),
                held_init_exit: None,
                kill_all_on_exit,
                cgroup: None,
                oom_kills_reported: 0,
                restore: Some(restore),
                oom_watch: None,
            };
            self.publish_create(req, 0);
            return Ok((container, 0));
        }
        let created = self
            .launch(&info, "", stdio_request, |io| async {
                self.inner
                    .backend
                    .create(&info, io)
                    .await
                    .map_err(Error::from)
            })
            .await;
        let Launched { stdio, pid, early } = match created {
            Ok(v) => v,
            Err(e) => {
                // Whatever the runtime got to create goes, and so does the rootfs mount.
                let _ = self.inner.backend.delete(&info, true).await;
                let _ = mount::unmount_rootfs(&rootfs);
                return Err(e);
            }
        };
        init.pid = pid;
        init.stdio = Some(stdio);
        let cgroup = Cgroup::for_pid(pid)
            .inspect_err(|e| log::warn!("container {}: cgroup not found: {e}", req.id))
            .ok();
        let oom_kills_reported = cgroup.as_ref().map_or(0, Cgroup::oom_kills);
        let mut container = Container {
            info,
            init,
            execs: HashMap::new(),
            held_init_exit: None,
            kill_all_on_exit,
            cgroup,
            oom_kills_reported,
            restore: None,
            oom_watch: None,
        };
        self.publish_create(req, pid);
        if let Some(exit) = early {
            self.apply_exit(&mut container, "", exit).await;
        }
        Ok((container, pid))
    }

    /// Starts a process the shim will own: prepares its stdio, asks the backend for it (`spawn`)
    /// with early exits buffered, registers its pid and takes its terminal. A process whose
    /// terminal cannot be served is killed rather than left behind.
    async fn launch<F, Fut>(
        &self,
        info: &ContainerInfo,
        exec_id: &str,
        stdio_request: StdioRequest,
        spawn: F,
    ) -> Result<Launched>
    where
        F: FnOnce(crate::backend::ProcessIo) -> Fut,
        Fut: std::future::Future<Output = Result<u32>>,
    {
        let owner = StdioOwner {
            container_id: &info.id,
            namespace: &info.namespace,
        };
        let (mut stdio, io) = Stdio::prepare(
            stdio_request,
            owner,
            info.options.io_uid,
            info.options.io_gid,
        )
        .await?;
        let guard = self.inner.exits.begin_start();
        let pid = spawn(io).await?;
        let early = self.inner.exits.register(
            pid,
            Owner {
                container_id: info.id.clone(),
                exec_id: exec_id.to_string(),
            },
        );
        drop(guard);
        if let Err(e) = stdio.attach_console().await {
            self.inner.exits.forget(pid);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(e);
        }
        Ok(Launched { stdio, pid, early })
    }

    fn publish_create(&self, req: &CreateTaskRequest, pid: u32) {
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            &TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            },
        );
    }

    // ---- Start ----

    /// Start of a container created from a checkpoint: the runtime restores it now.
    async fn restore_init(&self, c: &mut Container, request: CheckpointRequest) -> Result<()> {
        let info = c.info.clone();
        std::fs::create_dir_all(&request.work_path).map_err(|e| {
            Error::io(
                format!("create CRIU work dir {}", request.work_path.display()),
                e,
            )
        })?;
        let Launched { stdio, pid, early } = self
            .launch(&info, "", c.init.stdio_request.clone(), |io| async {
                let restored = self.inner.backend.restore(&info, io, &request).await;
                restored.map_err(|e| with_criu_log(e.into(), &request.work_path, &info, "restore"))
            })
            .await?;
        c.init.pid = pid;
        c.init.stdio = Some(stdio);
        c.cgroup = Cgroup::for_pid(pid).ok();
        c.oom_kills_reported = c.cgroup.as_ref().map_or(0, Cgroup::oom_kills);
        if let Some(cgroup) = c.cgroup.clone() {
            c.oom_watch = self.watch_oom(&info.id, &cgroup);
        }
        c.init.apply(Event::Start)?;
        self.publish(
            topics::TASK_START_EVENT_TOPIC,
            &TaskStart {
                container_id: info.id.clone(),
                pid,
                ..Default::default()
            },
        );
        if let Some(exit) = early {
            self.apply_exit(c, "", exit).await;
        }
        Ok(())
    }

    async fn do_start(&self, req: StartRequest) -> Result<StartResponse> {
        let c = self.container(&req.id)?;
        let mut c = c.lock().await;
        let pid = if req.exec_id.is_empty() {
            if c.init.state() != State::Created {
                return Err(c.init.apply(Event::Start).unwrap_err());
            }
            if let Some(request) = c.restore.take() {
                self.restore_init(&mut c, request).await?;
                return Ok(StartResponse {
                    pid: c.init.pid,
                    ..Default::default()
                });
            }
            self.inner.backend.start(&c.info).await?;
            c.init.apply(Event::Start)?;
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                &TaskStart {
                    container_id: req.id.clone(),
                    pid: c.init.pid,
                    ..Default::default()
                },
            );
            c.init.pid
        } else {
            self.start_exec(&mut c, &req.exec_id).await?
        };
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start_exec(&self, c: &mut Container, exec_id: &str) -> Result<u32> {
        if !matches!(c.init.state(), State::Running | State::Paused) {
            return Err(Error::FailedPrecondition(format!(
                "cannot start exec {exec_id:?}: container {:?} is {}",
                c.info.id,
                c.init.state().name()
            )));
        }
        let info = c.info.clone();
        let p = c.process_mut(exec_id)?;
        if p.state() != State::Created || p.pid != 0 {
            return Err(Error::FailedPrecondition(format!(
                "exec {exec_id:?} of container {:?} was already started",
                info.id
            )));
        }
        let spec = p.spec.clone();
        let Launched { stdio, pid, early } = self
            .launch(&info, exec_id, p.stdio_request.clone(), |io| async {
                let pid = self.inner.backend.exec(&info, exec_id, &spec, io).await;
                pid.map_err(Error::from)
            })
            .await?;
        p.pid = pid;
        p.stdio = Some(stdio);
        p.apply(Event::Start)?;
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            &TaskExecStarted {
                container_id: info.id.clone(),
                exec_id: exec_id.to_string(),
                pid,
                ..Default::default()
            },
        );
        if let Some(exit) = early {
            self.apply_exit(c, exec_id, exit).await;
        }
        Ok(pid)
    }

    // ---- Delete ----

    async fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        let cref = self.container(&req.id)?;
        let mut c = cref.lock().await;
        if !req.exec_id.is_empty() {
            let p = c.process_mut(&req.exec_id)?;
            p.apply(Event::Delete)?;
            if let Some(mut stdio) = p.stdio.take() {
                stdio.wait_drained(DRAIN_LIMIT).await;
            }
            let response = delete_response(p);
            self.inner.exits.forget(p.pid);
            c.execs.remove(&req.exec_id);
            return Ok(response);
        }
        if c.init.state() != State::Created && c.init.state() != State::Stopped {
            return Err(c.init.apply(Event::Delete).unwrap_err());
        }
        if c.running_execs() > 0 {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} still has running execs",
                req.id
            )));
        }
        self.inner.backend.delete(&c.info, true).await?;
        // A systemd scope is systemd's to remove.
        if let (Some(cgroup), false) = (&c.cgroup, c.info.options.systemd_cgroup) {
            cgroup.remove_leftover().await;
        }
        c.init.apply(Event::Delete)?;
        if let Some(mut stdio) = c.init.stdio.take() {
            stdio.wait_drained(DRAIN_LIMIT).await;
        }
        for p in c.execs.values_mut() {
            p.stdio.take();
        }
        mount::unmount_rootfs(&c.info.rootfs())?;
        let response = delete_response(&c.init);
        self.inner.exits.forget(c.init.pid);
        self.inner
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&req.id);
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            &TaskDelete {
                container_id: req.id.clone(),
                pid: response.pid,
                exit_status: response.exit_status,
                exited_at: response.exited_at.clone(),
                id: req.id.clone(),
                ..Default::default()
            },
        );
        Ok(response)
    }

    // ---- Exec ----

    async fn do_exec(&self, req: ExecProcessRequest) -> Result<()> {
        validate_id(&req.exec_id)?;
        let c = self.container(&req.id)?;
        let mut c = c.lock().await;
        if c.execs.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {:?} already exists in container {:?}",
                req.exec_id, req.id
            )));
        }
        if !c.init.state().is_live() {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} is {}: cannot exec in it",
                req.id,
                c.init.state().name()
            )));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|s| s.value.clone())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Error::InvalidArgument("exec request carries no process spec".into()))?;
        serde_json::from_slice::<serde_json::Value>(&spec)
            .map_err(|e| Error::InvalidArgument(format!("exec process spec is not JSON: {e}")))?;
        let mut p = Process::new(
            &req.id,
            &req.exec_id,
            StdioRequest {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
        );
        p.spec = spec;
        c.execs.insert(req.exec_id.clone(), p);
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            &TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        );
        Ok(())
    }

    // ---- Kill ----

    async fn do_kill(&self, req: KillRequest) -> Result<()> {
        if req.signal == 0 || req.signal > libc::SIGRTMAX() as u32 {
            return Err(Error::InvalidArgument(format!(
                "signal {} is out of range 1..={}",
                req.signal,
                libc::SIGRTMAX()
            )));
        }
        let c = self.container(&req.id)?;
        let c = c.lock().await;
        let p = c.process(&req.exec_id)?;
        if p.is_init() {
            if !p.state().is_live() {
                return Err(Error::NotFound(format!(
                    "process {:?} already finished",
                    req.id
                )));
            }
            self.inner
                .backend
                .kill(&c.info, req.signal, req.all)
                .await?;
            return Ok(());
        }
        if !p.state().is_live() || p.pid == 0 {
            return Err(Error::NotFound(format!(
                "exec {:?} is not running",
                req.exec_id
            )));
        }
        let signal = nix::sys::signal::Signal::try_from(req.signal as i32).ok();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid as i32), signal)
            .map_err(|e| Error::io(format!("signal exec {:?}", req.exec_id), e.into()))
    }

    // ---- Pause / Resume ----

    async fn do_pause(&self, id: &str, pause: bool) -> Result<()> {
        let c = self.container(id)?;
        let mut c = c.lock().await;
        let event = if pause { Event::Pause } else { Event::Resume };
        if c.init.state().next(event).is_none() {
            return Err(c.init.apply(event).unwrap_err());
        }
        if pause {
            self.inner.backend.pause(&c.info).await?;
        } else {
            self.inner.backend.resume(&c.info).await?;
        }
        c.init.apply(event)?;
        if pause {
            self.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                &TaskPaused {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            );
        } else {
            self.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                &TaskResumed {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            );
        }
        Ok(())
    }

    // ---- Pids ----

    async fn do_pids(&self, id: &str) -> Result<PidsResponse> {
        let c = self.container(id)?;
        let c = c.lock().await;
        let pids = self.inner.backend.pids(&c.info).await?;
        let exec_of: HashMap<u32, &str> = c
            .execs
            .values()
            .filter(|p| p.pid != 0)
            .map(|p| (p.pid, p.exec_id.as_str()))
            .collect();
        let processes = pids
            .into_iter()
            .map(|pid| {
                let info = exec_of.get(&pid).map(|exec_id| {
                    let details = ProcessDetails {
                        exec_id: exec_id.to_string(),
                        ..Default::default()
                    };
                    Any {
                        type_url: protos::type_urls::RUNC_PROCESS_DETAILS.to_string(),
                        value: details.write_to_bytes().unwrap_or_default(),
                        ..Default::default()
                    }
                });
                ProcessInfo {
                    pid,
                    info: info.into(),
                    ..Default::default()
                }
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    // ---- the small ones ----

    async fn do_state(&self, req: StateRequest) -> Result<StateResponse> {
        let c = self.container(&req.id)?;
        let c = c.lock().await;
        let p = c.process(&req.exec_id)?;
        let exit = p.exit_info();
        Ok(StateResponse {
            id: p.event_id().to_string(),
            bundle: c.info.bundle.to_string_lossy().into_owned(),
            pid: p.pid,
            status: p.state().as_task_status().into(),
            stdin: p.stdio_request.stdin.clone(),
            stdout: p.stdio_request.stdout.clone(),
            stderr: p.stdio_request.stderr.clone(),
            terminal: p.stdio_request.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or_default(),
            exited_at: exit.map(|e| timestamp(e.at)).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn do_resize(&self, req: ResizePtyRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let c = c.lock().await;
        let p = c.process(&req.exec_id)?;
        let pty = p.stdio.as_ref().and_then(|s| s.pty()).ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "process {:?} of container {:?} has no terminal to resize",
                p.event_id(),
                req.id
            ))
        })?;
        pty.resize(req.width, req.height)
    }

    async fn do_close_io(&self, req: CloseIORequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let mut c = c.lock().await;
        let p = c.process_mut(&req.exec_id)?;
        if req.stdin {
            if let Some(stdio) = p.stdio.as_mut() {
                stdio.close_stdin();
            }
        }
        Ok(())
    }

    async fn do_wait(&self, req: WaitRequest) -> Result<WaitResponse> {
        let watch = {
            let c = self.container(&req.id)?;
            let c = c.lock().await;
            c.process(&req.exec_id)?.exit_watch()
        };
        let ExitInfo { status, at } = wait_exit(watch).await.ok_or_else(|| {
            Error::NotFound(format!("process {:?} went away before exiting", req.id))
        })?;
        Ok(WaitResponse {
            exit_status: status,
            exited_at: MessageField::some(timestamp(at)),
            ..Default::default()
        })
    }

    async fn do_stats(&self, id: &str) -> Result<StatsResponse> {
        let c = self.container(id)?;
        let c = c.lock().await;
        let cgroup = c.cgroup.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(format!("container {id:?} has no cgroup to read stats from"))
        })?;
        Ok(StatsResponse {
            stats: MessageField::some(cgroup.stats()?),
            ..Default::default()
        })
    }

    async fn do_update(&self, req: UpdateTaskRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let c = c.lock().await;
        let resources = req
            .resources
            .as_ref()
            .map(|r| r.value.clone())
            .unwrap_or_default();
        self.inner.backend.update(&c.info, &resources).await?;
        Ok(())
    }

    async fn do_checkpoint(&self, req: CheckpointTaskRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let c = c.lock().await;
        if !matches!(c.init.state(), State::Running | State::Paused) {
            return Err(Error::FailedPrecondition(format!(
                "cannot checkpoint container {:?}: it is {}",
                req.id,
                c.init.state().name()
            )));
        }
        let mut request = crate::options::checkpoint_request(req.options.as_ref())?;
        if request.image_path.as_os_str().is_empty() {
            request.image_path = PathBuf::from(&req.path);
        }
        if request.work_path.as_os_str().is_empty() {
            request.work_path = criu_work_path(&c.info);
        }
        request.terminal |= c.init.stdio_request.terminal;
        for dir in [&request.image_path, &request.work_path] {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
        if let Err(e) = self.inner.backend.checkpoint(&c.info, &request).await {
            return Err(with_criu_log(e.into(), &request.work_path, &c.info, "dump"));
        }
        // containerd honours ImagePath itself only for `io.containerd.runc.*` runtime types
        // (it then passes that same path here); for others it archives its own directory
        // into the content store, so the image must be there too.
        let containerds = PathBuf::from(&req.path);
        let nested = containerds.starts_with(&request.image_path)
            || request.image_path.starts_with(&containerds);
        if !req.path.is_empty() && !nested {
            link_tree(&request.image_path, &containerds)?;
        }
        Ok(())
    }

    async fn do_connect(&self, req: ConnectRequest) -> Result<ConnectResponse> {
        let task_pid = match self.container(&req.id) {
            Ok(c) => c.lock().await.init.pid,
            Err(_) => 0,
        };
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn do_shutdown(&self) {
        let empty = self
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
                .is_empty();
        if empty {
            self.inner.publisher.flush(Duration::from_secs(2)).await;
            self.inner.shutdown.notify_one();
        }
    }
}

/// CRIU's work directory: the CriuWorkPath option, or one in the bundle.
fn criu_work_path(info: &ContainerInfo) -> PathBuf {
    if info.options.criu_work_path.is_empty() {
        info.bundle.join("criu-work")
    } else {
        PathBuf::from(&info.options.criu_work_path)
    }
}

/// Hard-links (copies across filesystems) the files of `from` into `to`, recursively.
fn link_tree(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    let io = |what: &str, p: &std::path::Path, e| Error::io(format!("{what} {}", p.display()), e);
    std::fs::create_dir_all(to).map_err(|e| io("create", to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| io("read", from, e))? {
        let entry = entry.map_err(|e| io("read", from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            link_tree(&src, &dst)?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(|e| io("copy", &src, e))?;
        }
    }
    Ok(())
}

/// The checkpoint a Create restores from: containerd's checkpoint, or the CriuImagePath option.
fn restores_from(req: &CreateTaskRequest, info: &ContainerInfo) -> Option<PathBuf> {
    [
        req.checkpoint.as_str(),
        info.options.criu_image_path.as_str(),
    ]
    .into_iter()
    .find(|p| !p.is_empty())
    .map(PathBuf::from)
}

/// Keeps CRIU's log of a failed dump or restore where the user can read it (the bundle's
/// `criu-<action>.log`) and says so in the error.
fn with_criu_log(err: Error, work: &std::path::Path, info: &ContainerInfo, action: &str) -> Error {
    let log = work.join(format!("{action}.log"));
    let kept = info.bundle.join(format!("criu-{action}.log"));
    match std::fs::copy(&log, &kept) {
        Ok(_) => Error::FailedPrecondition(format!("{err}; CRIU log: {}", kept.display())),
        Err(_) => err,
    }
}

fn delete_response(p: &Process) -> DeleteResponse {
    let exit = p.exit_info();
    DeleteResponse {
        pid: p.pid,
        exit_status: exit.map(|e| e.status).unwrap_or_default(),
        exited_at: exit
            .map(|e| timestamp(e.at))
            .or_else(|| Some(timestamp(SystemTime::now())))
            .into(),
        ..Default::default()
    }
}

/// containerd's identifier rule: alphanumerics joined by single `.`, `_` or `-`, at most 76.
pub fn validate_id(id: &str) -> Result<()> {
    let bad = |why: &str| Error::InvalidArgument(format!("invalid id {id:?}: {why}"));
    if id.is_empty() {
        return Err(bad("empty"));
    }
    if id.len() > 76 {
        return Err(bad("longer than 76 characters"));
    }
    let mut prev_sep = true;
    for ch in id.chars() {
        let sep = matches!(ch, '.' | '_' | '-');
        if !(ch.is_ascii_alphanumeric() || sep) || (sep && prev_sep) {
            return Err(bad(
                "must be alphanumerics joined by single '.', '_' or '-'",
            ));
        }
        prev_sep = sep;
    }
    if prev_sep {
        return Err(bad("must not end with a separator"));
    }
    Ok(())
}

/// The host uid and gid the container's root maps to (0, 0 without a user namespace).
/// Whether the container's processes outlive its init: without a PID namespace of its own
/// (none in the spec: the host's; or one joined by path) the kernel does not end them with it.
fn outlives_init(spec: &serde_json::Value) -> bool {
    let own_pid_namespace = spec["linux"]["namespaces"].as_array().is_some_and(|all| {
        all.iter()
            .any(|n| n["type"] == "pid" && n["path"].as_str().unwrap_or("").is_empty())
    });
    !own_pid_namespace
}

fn mapped_root(spec: &serde_json::Value) -> (u32, u32) {
    let host_of_root = |key: &str| {
        spec.pointer(&format!("/linux/{key}"))
            .and_then(|m| m.as_array())
            .and_then(|maps| {
                maps.iter().find_map(|m| {
                    let (inside, host, size) = (
                        m["containerID"].as_u64()?,
                        m["hostID"].as_u64()?,
                        m["size"].as_u64()?,
                    );
                    (inside == 0 && size > 0).then_some(host as u32)
                })
            })
            .unwrap_or(0)
    };
    (host_of_root("uidMappings"), host_of_root("gidMappings"))
}

/// Refuses a bundle the runtime would fail on less clearly; returns its config.
fn check_bundle(bundle: &std::path::Path) -> Result<serde_json::Value> {
    let config = bundle.join("config.json");
    let data = std::fs::read(&config).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(format!("bundle has no {}", config.display()))
        } else {
            Error::io(format!("read {}", config.display()), e)
        }
    })?;
    let spec: serde_json::Value = serde_json::from_slice(&data).map_err(|e| {
        Error::InvalidArgument(format!("{} is not valid JSON: {e}", config.display()))
    })?;
    let args = spec.pointer("/process/args").and_then(|a| a.as_array());
    if args.is_some_and(|a| a.is_empty()) {
        return Err(Error::InvalidArgument(format!(
            "{}: process.args is empty",
            config.display()
        )));
    }
    if let Some(root) = spec.pointer("/root/path").and_then(|r| r.as_str()) {
        let root = bundle.join(root);
        if !root.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "rootfs {} does not exist",
                root.display()
            )));
        }
    }
    Ok(spec)
}

#[async_trait]
impl<B: Backend> protos::shim_async::Task for TaskService<B> {
    async fn state(&self, _: &TtrpcContext, r: StateRequest) -> ttrpc::Result<StateResponse> {
        Ok(self.do_state(r).await?)
    }
    async fn create(
        &self,
        _: &TtrpcContext,
        r: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        Ok(self.do_create(r).await?)
    }
    async fn start(&self, _: &TtrpcContext, r: StartRequest) -> ttrpc::Result<StartResponse> {
        let response = self.do_start(r).await?;
        self.trim_when_settled();
        Ok(response)
    }
    async fn delete(&self, _: &TtrpcContext, r: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        Ok(self.do_delete(r).await?)
    }
    async fn pids(&self, _: &TtrpcContext, r: PidsRequest) -> ttrpc::Result<PidsResponse> {
        Ok(self.do_pids(&r.id).await?)
    }
    async fn pause(&self, _: &TtrpcContext, r: PauseRequest) -> ttrpc::Result<Empty> {
        self.do_pause(&r.id, true).await?;
        Ok(Empty::new())
    }
    async fn resume(&self, _: &TtrpcContext, r: ResumeRequest) -> ttrpc::Result<Empty> {
        self.do_pause(&r.id, false).await?;
        Ok(Empty::new())
    }
    async fn checkpoint(&self, _: &TtrpcContext, r: CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        self.do_checkpoint(r).await?;
        Ok(Empty::new())
    }
    async fn kill(&self, _: &TtrpcContext, r: KillRequest) -> ttrpc::Result<Empty> {
        self.do_kill(r).await?;
        Ok(Empty::new())
    }
    async fn exec(&self, _: &TtrpcContext, r: ExecProcessRequest) -> ttrpc::Result<Empty> {
        self.do_exec(r).await?;
        Ok(Empty::new())
    }
    async fn resize_pty(&self, _: &TtrpcContext, r: ResizePtyRequest) -> ttrpc::Result<Empty> {
        self.do_resize(r).await?;
        Ok(Empty::new())
    }
    async fn close_io(&self, _: &TtrpcContext, r: CloseIORequest) -> ttrpc::Result<Empty> {
        self.do_close_io(r).await?;
        Ok(Empty::new())
    }
    async fn update(&self, _: &TtrpcContext, r: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        self.do_update(r).await?;
        Ok(Empty::new())
    }
    async fn wait(&self, _: &TtrpcContext, r: WaitRequest) -> ttrpc::Result<WaitResponse> {
        Ok(self.do_wait(r).await?)
    }
    async fn stats(&self, _: &TtrpcContext, r: StatsRequest) -> ttrpc::Result<StatsResponse> {
        Ok(self.do_stats(&r.id).await?)
    }
    async fn connect(&self, _: &TtrpcContext, r: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        Ok(self.do_connect(r).await?)
    }
    async fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> ttrpc::Result<Empty> {
        self.do_shutdown().await;
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::{mapped_root, outlives_init, validate_id};

    #[test]
    fn only_an_own_pid_namespace_ends_everything_with_the_init() {
        let with = |namespaces: serde_json::Value| {
            outlives_init(&serde_json::json!({"linux": {"namespaces": namespaces}}))
        };
        assert!(!with(
            serde_json::json!([{"type": "mount"}, {"type": "pid"}])
        ));
        assert!(with(serde_json::json!([{"type": "mount"}])), "the host's");
        assert!(
            with(serde_json::json!([{"type": "pid", "path": "/proc/42/ns/pid"}])),
            "joined"
        );
        assert!(outlives_init(&serde_json::json!({})), "no linux section");
    }

    #[test]
    fn stdio_goes_to_the_mapped_root() {
        let spec = serde_json::json!({"linux": {
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}]
        }});
        assert_eq!(mapped_root(&spec), (100000, 200000));
        assert_eq!(mapped_root(&serde_json::json!({"linux": {}})), (0, 0));
    }

    #[test]
    fn ids() {
        for ok in ["a", "abc-1", "a.b_c-d", "X9"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "a/b", "a b", &"x".repeat(77)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
