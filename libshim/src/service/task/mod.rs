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
    pidfd: Option<std::os::fd::OwnedFd>,
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
    /// The shim holds a pod (Sandbox API): it stays while it does, with or without tasks.
    holds_pod: std::sync::atomic::AtomicBool,
    /// The files the pod's containers share, added to their specs at Create.
    pod_files: Mutex<Option<Arc<crate::service::sandbox::pod_files::PodFiles>>>,
    /// Pids whose exit goes to one waiter (the pod's namespace holder).
    watched: Mutex<HashMap<u32, tokio::sync::oneshot::Sender<Exit>>>,
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
                holds_pod: Default::default(),
                pod_files: Mutex::new(None),
                watched: Mutex::new(HashMap::new()),
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
}

mod adaptor;
pub(crate) mod bundle;
pub(crate) mod control;
mod create;
mod criu;
mod delete;
mod on_exit;
mod pod;
mod query;
mod start;

use bundle::{check_bundle, mapped_root, outlives_init};
pub use bundle::{validate_id, validate_namespace};
use criu::{criu_work_path, restores_from, with_criu_log};
