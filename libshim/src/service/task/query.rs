//! State, ResizePty, CloseIO, Wait, Stats, Update, Connect and Shutdown.
use super::*;

impl<B: Backend> TaskService<B> {
    pub(super) async fn do_state(&self, req: StateRequest) -> Result<StateResponse> {
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

    pub(super) async fn do_resize(&self, req: ResizePtyRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let c = c.lock().await;
        let p = c.process(&req.exec_id)?;
        // Without a terminal there is nothing to resize: containerd's clients send it anyway
        // (its own tests resize tasks that have none) and the Go shim answers OK.
        let Some(pty) = p.stdio.as_ref().and_then(|s| s.pty()) else {
            return Ok(());
        };
        pty.resize(req.width, req.height)
    }

    pub(super) async fn do_close_io(&self, req: CloseIORequest) -> Result<()> {
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

    pub(super) async fn do_wait(&self, req: WaitRequest) -> Result<WaitResponse> {
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

    pub(super) async fn do_stats(&self, id: &str) -> Result<StatsResponse> {
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

    pub(super) async fn do_update(&self, req: UpdateTaskRequest) -> Result<()> {
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

    pub(super) async fn do_connect(&self, req: ConnectRequest) -> Result<ConnectResponse> {
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

    pub(super) async fn do_shutdown(&self) {
        // Answered at once: containerd 2.x shuts shims down while it starts (those whose
        // tasks exited while it was away), one after the other. What the shim still has to
        // send is sent after it has stopped serving (bootstrap's `serve_until_shutdown`).
        // A shim holding a pod stays for it: containerd 2.x does not call Shutdown after
        // each of a pod's containers then, but a client may.
        self.request_shutdown();
    }
}
