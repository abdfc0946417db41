//! The task control and query calls of [`Client`]: pids, pause/resume, status, stdin, resize,
//! checkpoint and restore, update.
use std::time::{Duration, Instant};

use containerd_client::services::v1::*;
use containerd_client::tonic::{Request, Status};
use containerd_client::with_namespace;
use prost_types::Any;
use protobuf::Message;
use serde_json::Value;

use crate::client::*;

impl Client {
    /// The pids of the container once it has at least `n` processes (panics after 10 s).
    pub async fn wait_for_pids(&self, id: &str, n: usize) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids: Vec<u32> = self.pids(id).await.unwrap().iter().map(|p| p.0).collect();
            if pids.len() >= n {
                return pids;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never had {n} processes: {pids:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// (pid, exec id) of every process in the container.
    pub async fn pids(&self, id: &str) -> Result<Vec<(u32, String)>, Status> {
        let req = ListPidsRequest {
            container_id: id.to_string(),
        };
        let resp = self
            .raw
            .tasks()
            .list_pids(with_namespace!(req, self.namespace))
            .await?;
        Ok(resp
            .into_inner()
            .processes
            .into_iter()
            .map(|p| {
                let exec_id = p
                    .info
                    .and_then(|a| {
                        protos::shim::oci::ProcessDetails::parse_from_bytes(&a.value).ok()
                    })
                    .map(|d| d.exec_id)
                    .unwrap_or_default();
                (p.pid, exec_id)
            })
            .collect())
    }

    pub async fn pause(&self, id: &str) -> Result<(), Status> {
        let req = PauseTaskRequest {
            container_id: id.to_string(),
        };
        self.raw
            .tasks()
            .pause(with_namespace!(req, self.namespace))
            .await
            .map(drop)
    }

    pub async fn resume(&self, id: &str) -> Result<(), Status> {
        let req = ResumeTaskRequest {
            container_id: id.to_string(),
        };
        self.raw
            .tasks()
            .resume(with_namespace!(req, self.namespace))
            .await
            .map(drop)
    }

    /// The process's status name as containerd reports it (e.g. "RUNNING").
    pub async fn status(&self, id: &str, exec_id: &str) -> Result<String, Status> {
        let req = GetRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        let resp = self
            .raw
            .tasks()
            .get(with_namespace!(req, self.namespace))
            .await?;
        let status = resp
            .into_inner()
            .process
            .map(|p| p.status())
            .unwrap_or_default();
        Ok(status.as_str_name().to_string())
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), Status> {
        let req = CloseIoRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin: true,
        };
        self.raw
            .tasks()
            .close_io(with_namespace!(req, self.namespace))
            .await
            .map(drop)
    }

    pub async fn resize(&self, id: &str, exec_id: &str, w: u32, h: u32) -> Result<(), Status> {
        let req = ResizePtyRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            width: w,
            height: h,
        };
        self.raw
            .tasks()
            .resize_pty(with_namespace!(req, self.namespace))
            .await
            .map(drop)
    }

    /// Checkpoint with runc's CheckpointOptions (image path, exit, ...).
    pub async fn checkpoint(
        &self,
        id: &str,
        options: &protos::shim::oci::CheckpointOptions,
    ) -> Result<Vec<containerd_client::types::Descriptor>, Status> {
        let req = CheckpointTaskRequest {
            container_id: id.to_string(),
            parent_checkpoint: String::new(),
            options: Some(Any {
                type_url: protos::type_urls::RUNC_CHECKPOINT_OPTIONS.to_string(),
                value: options.write_to_bytes().expect("encode checkpoint options"),
            }),
        };
        let resp = self
            .raw
            .tasks()
            .checkpoint(with_namespace!(req, self.namespace))
            .await?;
        Ok(resp.into_inner().descriptors)
    }

    /// Create a task from a checkpoint containerd holds as content (it unpacks it for the shim).
    pub async fn create_task_from(
        &self,
        id: &str,
        io: &TaskIo,
        checkpoint: containerd_client::types::Descriptor,
    ) -> Result<u32, Status> {
        let mut req = task_request(id, Some(io), false, Some(options_any(&self.options())));
        req.checkpoint = Some(checkpoint);
        self.send_create(req).await
    }

    /// Update with OCI `LinuxResources` JSON.
    pub async fn update(&self, id: &str, resources: &Value) -> Result<(), Status> {
        let req = UpdateTaskRequest {
            container_id: id.to_string(),
            resources: Some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: serde_json::to_vec(resources).unwrap(),
            }),
            ..Default::default()
        };
        self.raw
            .tasks()
            .update(with_namespace!(req, self.namespace))
            .await
            .map(drop)
    }
}
