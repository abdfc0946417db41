//! The ttrpc adaptor: each Task method to its `do_*`.
use super::*;

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
