//! The sandbox backend: containers created, started, signalled and deleted in-process with
//! youki's `libcontainer`; no runtime binary is executed.
//!
//! Fork safety (docs/ARCHITECTURE.md has the long form): the shim serves on one thread, a
//! tokio current-thread runtime with no blocking pool, so when libcontainer clones there is
//! no other thread that could hold the allocator's or the logger's lock in the child. Each
//! libcontainer call is synchronous, so libshim's reaper (a task on that same thread) cannot
//! run, and cannot reap libcontainer's intermediate process, until the call has waited for it.
//! libcontainer reads and changes the working directory (notify and console sockets): every
//! call runs from `/` (a create from its bundle) and leaves the shim in `/`, never in a bundle
//! containerd may remove.
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use libcontainer::container::Container;
use libcontainer::signal::Signal;
use libshim::backend::{BundleFile, ProcessIo};
use libshim::{Backend, BackendError, CheckpointRequest, ContainerInfo, RuntimeOptions};

mod call;
mod cgroup_dirs;
mod cgroup_mount;
mod checkpoint;
mod checkpoint_paused;
mod dev_null;
mod diagnose;
mod exec_seccomp;
mod exec_userns;
mod executor;
mod features;
mod freezer;
mod idmapped;
mod kill_all;
mod own_settings;
mod preflight;
mod resources;
mod restore;
mod stopped;
mod tenant;
mod volumes;

use call::{failed, guarded, guarded_in, load, load_from, pid_of, state_root};

/// Present when systemd is the init (sd_booted's test).
const SYSTEMD_RUNNING: &str = "/run/systemd/system";

#[derive(Debug, Default)]
pub struct SandboxBackend;

impl SandboxBackend {
    pub fn new() -> Self {
        Self
    }
}

fn delete(mut c: Container, force: bool) -> Result<(), BackendError> {
    guarded(|| c.delete(force)).map_err(failed("delete"))
}

#[async_trait]
impl Backend for SandboxBackend {
    fn name(&self) -> &'static str {
        call::RUNTIME
    }

    async fn create(&self, info: &ContainerInfo, io: ProcessIo) -> Result<u32, BackendError> {
        let systemd = info.options.systemd_cgroup;
        if systemd && !Path::new(SYSTEMD_RUNNING).exists() {
            return Err(BackendError::InvalidArgument(format!(
                "SystemdCgroup is set but systemd is not running here (no {SYSTEMD_RUNNING})"
            )));
        }
        let prepared = preflight::check_bundle(&info.bundle)?;
        let b = call::builder(info, io)?;
        let state_dir = state_root(&info.options, &info.namespace).join(&info.id);
        let had_state = state_dir.exists();
        // In the bundle, as `runc create` runs: hooks that look for config.json there find it.
        let built = guarded_in(&info.bundle, || {
            own_settings::kept(|| {
                b.as_init(&info.bundle)
                    .with_systemd(systemd)
                    .with_detach(true)
                    .with_no_pivot(info.options.no_pivot_root)
                    .build()
            })
        });
        let spec = prepared.finish();
        let c = match built {
            Ok(c) => c,
            Err(e) => {
                // libcontainer makes the state directory first and leaves it when a later step
                // fails (an empty state.json when the disk is full): no delete can load it, and
                // the id could never be created again.
                if !had_state {
                    let _ = std::fs::remove_dir_all(&state_dir);
                }
                let message = libshim::error_chain(&e);
                return Err(match diagnose::cause(&spec, &info.bundle, &message) {
                    Some(cause) => {
                        log::warn!("create {}: libcontainer: {message}", info.id);
                        cause
                    }
                    None => failed("create")(e),
                });
            }
        };
        pid_of(c.pid().map(i32::from))
    }

    async fn start(&self, info: &ContainerInfo) -> Result<(), BackendError> {
        let mut c = load(info)?;
        guarded(|| c.start()).map_err(failed("start"))
    }

    async fn exec(
        &self,
        info: &ContainerInfo,
        exec_id: &str,
        spec: &[u8],
        io: ProcessIo,
    ) -> Result<u32, BackendError> {
        // libcontainer leaves the container's seccomp profile out of execs: the shim applies it.
        let mut process: serde_json::Value = serde_json::from_slice(spec).map_err(|e| {
            BackendError::InvalidArgument(format!("exec {exec_id}: process spec: {e}"))
        })?;
        let config = exec_seccomp::container_config(&info.bundle)?;
        // Before the seccomp plan: in a user namespace the credentials are set from scratch.
        let init_pid = || pid_of(load(info)?.pid().map(i32::from));
        let userns =
            exec_userns::plan(&config, &info.bundle, init_pid, &mut process)?.map(Arc::new);
        let seccomp = exec_seccomp::plan(exec_seccomp::container_profile(&config)?, &mut process)?;
        let spec = serde_json::to_vec(&process).map_err(|e| {
            BackendError::InvalidArgument(format!("exec {exec_id}: process spec: {e}"))
        })?;
        // libcontainer's tenant builder reads the process from a file, as `runc exec --process`.
        let process = BundleFile::write(info.bundle.join(format!(".exec-{exec_id}.json")), &spec)?;
        let b = call::builder(info, io)?
            .with_executor(executor::DefaultSignalsExecutor { seccomp, userns });
        let dir = state_root(&info.options, &info.namespace).join(&info.id);
        let before = tenant::sockets(&dir);
        let built = guarded(|| {
            own_settings::kept(|| {
                b.as_tenant()
                    .with_detach(true)
                    .with_process(Some(process.path()))
                    .build()
            })
        });
        tenant::remove_new(&dir, &before);
        Ok(built.map_err(failed("exec"))?.as_raw() as u32)
    }

    async fn kill(&self, info: &ContainerInfo, signal: u32, all: bool) -> Result<(), BackendError> {
        let sig = Signal::try_from(signal as i32)
            .map_err(|_| BackendError::InvalidArgument(format!("invalid signal {signal}")))?;
        let mut c = load(info)?;
        // With `all`, every pid of the container's configured cgroup is signalled (frozen around
        // it, thawed after, as runc does, so a paused container's SIGKILL lands).
        if let (true, Ok(raw)) = (all, nix::sys::signal::Signal::try_from(signal as i32)) {
            if kill_all::kill_all(&mut c, raw)? {
                return Ok(());
            }
        }
        guarded(|| c.kill(sig, all)).map_err(failed("kill"))
    }

    async fn pause(&self, info: &ContainerInfo) -> Result<(), BackendError> {
        let mut c = load(info)?;
        if freezer::pause(&mut c)? {
            return Ok(());
        }
        guarded(|| c.pause()).map_err(failed("pause"))
    }

    async fn resume(&self, info: &ContainerInfo) -> Result<(), BackendError> {
        let mut c = load(info)?;
        if freezer::resume(&mut c)? {
            return Ok(());
        }
        guarded(|| c.resume()).map_err(failed("resume"))
    }

    async fn pids(&self, info: &ContainerInfo) -> Result<Vec<u32>, BackendError> {
        resources::procs(&load(info)?)
    }

    async fn delete(&self, info: &ContainerInfo, force: bool) -> Result<(), BackendError> {
        match load(info) {
            Ok(mut c) => match guarded(|| stopped::delete(&mut c))? {
                true => Ok(()),
                false => delete(c, force),
            },
            Err(BackendError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn update(&self, info: &ContainerInfo, resources: &[u8]) -> Result<(), BackendError> {
        resources::update(&load(info)?, resources)
    }

    async fn checkpoint(
        &self,
        info: &ContainerInfo,
        request: &CheckpointRequest,
    ) -> Result<(), BackendError> {
        let mut c = load(info)?;
        if checkpoint_paused::dump(&mut c, request)? {
            return Ok(());
        }
        checkpoint::dump(c, request)
    }

    /// libcontainer has no CRIU restore: the shim drives CRIU itself (restore/).
    async fn restore(
        &self,
        info: &ContainerInfo,
        io: ProcessIo,
        request: &CheckpointRequest,
    ) -> Result<u32, BackendError> {
        guarded(|| restore::restore(info, io, request))
    }

    async fn features(&self, _options: &RuntimeOptions) -> Option<Vec<u8>> {
        Some(features::document())
    }

    async fn cleanup(
        &self,
        id: &str,
        namespace: &str,
        bundle: &Path,
        options: &RuntimeOptions,
    ) -> Result<(), BackendError> {
        // What a create that was cut short staged in the bundle.
        volumes::clear_bundle(bundle);
        match load_from(&state_root(options, namespace), id) {
            Ok(c) => delete(c, true),
            Err(BackendError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
