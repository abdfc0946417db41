//! The one trait a low-level runtime implements.
//!
//! libshim owns everything else: the ttrpc service, process bookkeeping and state machine,
//! stdio, exits and events. A backend only turns "create/start/exec/signal/... this container"
//! into runtime actions, whether by executing a CLI (runc, crun) or in-process (libcontainer).
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::error::BackendError;
use crate::options::RuntimeOptions;

/// How a new process gets its stdio.
#[derive(Debug)]
pub enum ProcessIo {
    /// The child ends of the pipes the shim copies from and to; `None` means /dev/null.
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
    /// The process gets a terminal; the backend sends its master fd over this unix socket
    /// (runc's `--console-socket` protocol: one SCM_RIGHTS message).
    Terminal { console_socket: PathBuf },
}

/// What a backend needs to know about a container for every call.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    pub namespace: String,
    pub bundle: PathBuf,
    pub options: RuntimeOptions,
}

impl ContainerInfo {
    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }
}

/// A file in the bundle that one runtime call reads (an exec's process, an update's
/// resources) or writes (an exec's pid file); removed when dropped, however the call ends.
#[derive(Debug)]
pub struct BundleFile(PathBuf);

impl BundleFile {
    /// Writes `data` to `path`. A write that fails (ENOSPC) removes the file it created.
    pub fn write(path: PathBuf, data: &[u8]) -> Result<Self, BackendError> {
        let file = Self(path);
        std::fs::write(&file.0, data)
            .map_err(|e| BackendError::io(format!("write {}", file.0.display()), e))?;
        Ok(file)
    }

    /// A path the runtime is to create.
    pub fn to_be_written(path: PathBuf) -> Self {
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for BundleFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A checkpoint to write, or to restore from (CRIU's options, as containerd sends them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointRequest {
    pub image_path: PathBuf,
    /// CRIU's work directory (its logs land here).
    pub work_path: PathBuf,
    /// Stop the container after the checkpoint instead of leaving it running.
    pub exit: bool,
    pub parent: Option<PathBuf>,
    pub open_tcp: bool,
    pub external_unix_sockets: bool,
    /// The process has a terminal (CRIU's shell-job).
    pub terminal: bool,
    pub file_locks: bool,
    pub empty_namespaces: Vec<String>,
    pub cgroups_mode: String,
}

/// The hooks a low-level runtime provides. Every method may block only in `.await`s.
///
/// Methods the backend cannot serve keep their default, which answers
/// [`BackendError::NotImplemented`]; the service turns it into ttrpc `UNIMPLEMENTED`.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The name reported by `-v` and in logs, e.g. "runc".
    fn name(&self) -> &'static str;

    /// Creates the container with its init process stopped before the user's program runs.
    /// The rootfs is already mounted at `info.rootfs()`. Returns the init pid.
    async fn create(&self, info: &ContainerInfo, io: ProcessIo) -> Result<u32, BackendError>;

    /// Lets the init process run the user's program.
    async fn start(&self, info: &ContainerInfo) -> Result<(), BackendError>;

    /// Starts an additional process in the running container. `spec` is the OCI process
    /// (JSON) from the Exec request. Returns its pid.
    async fn exec(
        &self,
        info: &ContainerInfo,
        exec_id: &str,
        spec: &[u8],
        io: ProcessIo,
    ) -> Result<u32, BackendError>;

    /// Signals the init process, or with `all` every process of the container.
    async fn kill(&self, info: &ContainerInfo, signal: u32, all: bool) -> Result<(), BackendError>;

    async fn pause(&self, _info: &ContainerInfo) -> Result<(), BackendError> {
        Err(BackendError::NotImplemented("pause"))
    }

    async fn resume(&self, _info: &ContainerInfo) -> Result<(), BackendError> {
        Err(BackendError::NotImplemented("resume"))
    }

    /// The pids of every process in the container.
    async fn pids(&self, info: &ContainerInfo) -> Result<Vec<u32>, BackendError>;

    /// Removes the runtime's state for the container; `force` kills what is still running.
    async fn delete(&self, info: &ContainerInfo, force: bool) -> Result<(), BackendError>;

    /// Applies new resources; `resources` is the OCI `LinuxResources` JSON.
    async fn update(&self, _info: &ContainerInfo, _resources: &[u8]) -> Result<(), BackendError> {
        Err(BackendError::NotImplemented("update"))
    }

    async fn checkpoint(
        &self,
        _info: &ContainerInfo,
        _request: &CheckpointRequest,
    ) -> Result<(), BackendError> {
        Err(BackendError::NotImplemented("checkpoint"))
    }

    /// Whether [`Backend::restore`] is served; when not, a Create from a checkpoint is refused
    /// up front instead of failing at Start.
    fn can_restore(&self) -> bool {
        true
    }

    /// Creates and starts the container from a checkpoint instead of from its config.
    /// Returns the restored init's pid.
    async fn restore(
        &self,
        _info: &ContainerInfo,
        _io: ProcessIo,
        _request: &CheckpointRequest,
    ) -> Result<u32, BackendError> {
        Err(BackendError::NotImplemented("restore"))
    }

    /// The runtime's OCI features document (JSON), for containerd 2's `-info` request.
    async fn features(&self, _options: &RuntimeOptions) -> Option<Vec<u8>> {
        None
    }

    /// Cleans up after a shim that died (the `delete` action): force-deletes the container's
    /// runtime state. Runs in a fresh process with only the bundle to go on.
    async fn cleanup(
        &self,
        id: &str,
        namespace: &str,
        bundle: &Path,
        options: &RuntimeOptions,
    ) -> Result<(), BackendError>;
}
