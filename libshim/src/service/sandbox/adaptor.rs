//! The ttrpc adaptor: each Sandbox method to the service.
use std::time::Duration;

use async_trait::async_trait;
use protobuf::MessageField;
use protos::sandbox_api::*;
use protos::types::platform::Platform;
use ttrpc::r#async::TtrpcContext;

use super::{go_arch, SandboxService};
use crate::backend::Backend;

#[async_trait]
impl<B: Backend> protos::sandbox_async::Sandbox for SandboxService<B> {
    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        r: CreateSandboxRequest,
    ) -> ttrpc::Result<CreateSandboxResponse> {
        self.create(r).await?;
        Ok(CreateSandboxResponse::new())
    }

    async fn start_sandbox(
        &self,
        _: &TtrpcContext,
        r: StartSandboxRequest,
    ) -> ttrpc::Result<StartSandboxResponse> {
        Ok(self.start(&r.sandbox_id).await?)
    }

    async fn platform(
        &self,
        _: &TtrpcContext,
        r: PlatformRequest,
    ) -> ttrpc::Result<PlatformResponse> {
        self.ping(&r.sandbox_id).await?;
        Ok(PlatformResponse {
            platform: MessageField::some(Platform {
                os: "linux".to_string(),
                architecture: go_arch().to_string(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn stop_sandbox(
        &self,
        _: &TtrpcContext,
        r: StopSandboxRequest,
    ) -> ttrpc::Result<StopSandboxResponse> {
        let grace = Duration::from_secs(r.timeout_secs.into());
        self.stop(&r.sandbox_id, grace).await?;
        Ok(StopSandboxResponse::new())
    }

    async fn wait_sandbox(
        &self,
        _: &TtrpcContext,
        r: WaitSandboxRequest,
    ) -> ttrpc::Result<WaitSandboxResponse> {
        Ok(self.wait(&r.sandbox_id).await?)
    }

    async fn sandbox_status(
        &self,
        _: &TtrpcContext,
        r: SandboxStatusRequest,
    ) -> ttrpc::Result<SandboxStatusResponse> {
        Ok(self.status(&r.sandbox_id, r.verbose).await?)
    }

    async fn ping_sandbox(&self, _: &TtrpcContext, r: PingRequest) -> ttrpc::Result<PingResponse> {
        self.ping(&r.sandbox_id).await?;
        Ok(PingResponse::new())
    }

    async fn shutdown_sandbox(
        &self,
        _: &TtrpcContext,
        r: ShutdownSandboxRequest,
    ) -> ttrpc::Result<ShutdownSandboxResponse> {
        self.shutdown(&r.sandbox_id).await?;
        Ok(ShutdownSandboxResponse::new())
    }

    async fn sandbox_metrics(
        &self,
        _: &TtrpcContext,
        r: SandboxMetricsRequest,
    ) -> ttrpc::Result<SandboxMetricsResponse> {
        Ok(self.metrics(&r.sandbox_id).await?)
    }
}
