//! Start of an init (or its restore) and of an exec.
use super::*;

/// What Wait reports for an exec whose start failed: no process ever ran.
const FAILED_START_STATUS: u32 = 255;

impl<B: Backend> TaskService<B> {
    /// Start of a container created from a checkpoint: the runtime restores it now.
    pub(super) async fn restore_init(
        &self,
        c: &mut Container,
        request: CheckpointRequest,
    ) -> Result<()> {
        let info = c.info.clone();
        std::fs::create_dir_all(&request.work_path).map_err(|e| {
            Error::io(
                format!("create CRIU work dir {}", request.work_path.display()),
                e,
            )
        })?;
        let Launched {
            stdio,
            pid,
            early,
            pidfd,
        } = self
            .launch(&info, "", c.init.stdio_request.clone(), |io| async {
                let restored = self.inner.backend.restore(&info, io, &request).await;
                restored.map_err(|e| with_criu_log(e.into(), &request.work_path, &info, "restore"))
            })
            .await?;
        c.init.pid = pid;
        c.init.pidfd = pidfd;
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

    pub(super) async fn do_start(&self, req: StartRequest) -> Result<StartResponse> {
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

    pub(super) async fn start_exec(&self, c: &mut Container, exec_id: &str) -> Result<u32> {
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
        let launched = self
            .launch(&info, exec_id, p.stdio_request.clone(), |io| async {
                let pid = self.inner.backend.exec(&info, exec_id, &spec, io).await;
                pid.map_err(Error::from)
            })
            .await;
        let Launched {
            stdio,
            pid,
            early,
            pidfd,
        } = match launched {
            Ok(l) => l,
            Err(e) => {
                // There is no process to wait for, and containerd's clients wait anyway: CRI's
                // ExecSync, after a failed start, waits for the exit before it deletes (a minute,
                // until its context ends). The exec ends here, as in the Go shim, without an
                // exit event (it never started).
                p.set_exited(FAILED_START_STATUS, SystemTime::now());
                return Err(e);
            }
        };
        p.pid = pid;
        p.pidfd = pidfd;
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
}
