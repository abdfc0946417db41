//! Delete of an exec or of the container.
use super::*;

impl<B: Backend> TaskService<B> {
    pub(super) async fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
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
        self.forget_pod_container(&req.id);
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
