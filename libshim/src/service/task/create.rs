//! Create: the bundle, the rootfs mount, the runtime's create (or a restore set up for Start).
use super::*;

impl<B: Backend> TaskService<B> {
    pub(super) async fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        validate_namespace(&self.inner.namespace)?;
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
        if result.is_err() {
            self.forget_pod_container(&req.id);
        }
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

    pub(super) async fn create_container(
        &self,
        req: &CreateTaskRequest,
    ) -> Result<(Container, u32)> {
        let bundle = PathBuf::from(&req.bundle);
        let mut spec = check_bundle(&bundle)?;
        self.add_pod_files(&bundle, &mut spec)?;
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
        self.record_pod_container(&info, &spec)?;
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
        let Launched {
            stdio,
            pid,
            early,
            pidfd,
        } = match created {
            Ok(v) => v,
            Err(e) => {
                // Whatever the runtime got to create goes, and so does the rootfs mount.
                let _ = self.inner.backend.delete(&info, true).await;
                let _ = mount::unmount_rootfs(&rootfs);
                return Err(e);
            }
        };
        init.pid = pid;
        init.pidfd = pidfd;
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
    pub(super) async fn launch<F, Fut>(
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
        // Opened before anything can await: the reaper runs on this thread, so the process
        // (ours to reap, as subreaper) cannot have been reaped and its pid reused in between.
        let pidfd = match early {
            Some(_) => None,
            None => crate::sys::pidfd_open(pid)
                .inspect_err(|e| log::debug!("pidfd for pid {pid}: {e}"))
                .ok(),
        };
        drop(guard);
        if let Err(e) = stdio.attach_console().await {
            self.inner.exits.forget(pid);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(e);
        }
        Ok(Launched {
            stdio,
            pid,
            early,
            pidfd,
        })
    }

    pub(super) fn publish_create(&self, req: &CreateTaskRequest, pid: u32) {
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
}
