//! `libshim::Backend` for an OCI runtime CLI.
use std::path::Path;

use async_trait::async_trait;
use libshim::backend::{BundleFile, CheckpointRequest, ProcessIo};
use libshim::{Backend, BackendError, ContainerInfo, RuntimeOptions};

use crate::cli::{self, os, Runtime};

/// Drives runc (or crun, per the BinaryName option) one command per request.
#[derive(Debug, Default)]
pub struct RuncBackend;

impl RuncBackend {
    pub fn new() -> Self {
        Self
    }
}

#[async_trait]
impl Backend for RuncBackend {
    fn name(&self) -> &'static str {
        "runc"
    }

    async fn create(&self, info: &ContainerInfo, io: ProcessIo) -> Result<u32, BackendError> {
        crate::idmap::check(&info.options, &info.bundle).await?;
        let rt = Runtime::for_container(info);
        let args = cli::create_args(
            &info.id,
            &info.bundle,
            &info.options,
            cli::console_socket_of(&io),
        );
        rt.run("create", args, Some(io), Some(&info.bundle)).await?;
        cli::read_pid(&info.bundle.join("init.pid"))
    }

    async fn start(&self, info: &ContainerInfo) -> Result<(), BackendError> {
        let rt = Runtime::for_container(info);
        rt.run("start", vec![os("start"), os(&info.id)], None, None)
            .await
            .map(drop)
    }

    async fn exec(
        &self,
        info: &ContainerInfo,
        exec_id: &str,
        spec: &[u8],
        io: ProcessIo,
    ) -> Result<u32, BackendError> {
        let mut rt = Runtime::for_container(info);
        rt.child_umask = cli::umask_of(spec);
        let process = BundleFile::write(info.bundle.join(format!(".exec-{exec_id}.json")), spec)?;
        let pid_file = BundleFile::to_be_written(info.bundle.join(format!(".exec-{exec_id}.pid")));
        let args = cli::exec_args(
            &info.id,
            process.path(),
            pid_file.path(),
            cli::console_socket_of(&io),
        );
        rt.run("exec", args, Some(io), None).await?;
        cli::read_pid(pid_file.path())
    }

    async fn kill(&self, info: &ContainerInfo, signal: u32, all: bool) -> Result<(), BackendError> {
        let rt = Runtime::for_container(info);
        let args = cli::kill_args(&info.id, signal, all);
        rt.run("kill", args, None, None).await.map(drop)
    }

    async fn pause(&self, info: &ContainerInfo) -> Result<(), BackendError> {
        let rt = Runtime::for_container(info);
        rt.run("pause", vec![os("pause"), os(&info.id)], None, None)
            .await
            .map(drop)
    }

    async fn resume(&self, info: &ContainerInfo) -> Result<(), BackendError> {
        let rt = Runtime::for_container(info);
        rt.run("resume", vec![os("resume"), os(&info.id)], None, None)
            .await
            .map(drop)
    }

    async fn pids(&self, info: &ContainerInfo) -> Result<Vec<u32>, BackendError> {
        let rt = Runtime::for_container(info);
        let args = vec![os("ps"), os("--format"), os("json"), os(&info.id)];
        let out = rt.run("ps", args, None, None).await?;
        serde_json::from_slice::<Option<Vec<u32>>>(&out)
            .map(Option::unwrap_or_default)
            .map_err(|e| BackendError::Runtime {
                runtime: rt.binary.clone(),
                action: "ps",
                message: format!("unreadable pid list: {e}"),
            })
    }

    async fn delete(&self, info: &ContainerInfo, force: bool) -> Result<(), BackendError> {
        let rt = Runtime::for_container(info);
        delete(&rt, &info.id, force).await
    }

    async fn update(&self, info: &ContainerInfo, resources: &[u8]) -> Result<(), BackendError> {
        let rt = Runtime::for_container(info);
        let file = BundleFile::write(info.bundle.join(".resources.json"), resources)?;
        let args = vec![
            os("update"),
            os("--resources"),
            os(file.path()),
            os(&info.id),
        ];
        rt.run("update", args, None, None).await.map(drop)
    }

    async fn checkpoint(
        &self,
        info: &ContainerInfo,
        request: &CheckpointRequest,
    ) -> Result<(), BackendError> {
        let rt = Runtime::for_container(info);
        let args = cli::checkpoint_args(&info.id, request);
        rt.run("checkpoint", args, None, None).await.map(drop)
    }

    async fn restore(
        &self,
        info: &ContainerInfo,
        io: ProcessIo,
        request: &CheckpointRequest,
    ) -> Result<u32, BackendError> {
        let rt = Runtime::for_container(info);
        let args = cli::restore_args(
            &info.id,
            &info.bundle,
            &info.options,
            request,
            cli::console_socket_of(&io),
        );
        rt.run("restore", args, Some(io), Some(&info.bundle))
            .await?;
        cli::read_pid(&info.bundle.join("init.pid"))
    }

    async fn features(&self, options: &RuntimeOptions) -> Option<Vec<u8>> {
        // `features` prints JSON on stdout; no per-container log file here.
        let rt = Runtime::new(options, "default", None);
        rt.run("features", vec![os("features")], None, None)
            .await
            .ok()
    }

    async fn cleanup(
        &self,
        id: &str,
        namespace: &str,
        bundle: &Path,
        options: &RuntimeOptions,
    ) -> Result<(), BackendError> {
        let rt = Runtime::new(options, namespace, Some(bundle));
        // containerd runs this action after every task delete, when the serving shim has
        // already deleted the container: with no state under the root (runc and crun keep
        // `<root>/<id>`) the runtime knows nothing to clean, so it is not executed at all.
        if !rt.root.join(id).exists() {
            return Ok(());
        }
        delete(&rt, id, true).await
    }
}

/// `delete [--force]`; a container the runtime no longer knows counts as deleted.
async fn delete(rt: &Runtime, id: &str, force: bool) -> Result<(), BackendError> {
    match rt
        .run("delete", cli::delete_args(id, force), None, None)
        .await
    {
        Ok(_) | Err(BackendError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
