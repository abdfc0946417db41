//! The ttrpc services: the task service, and the Sandbox service beside it (containerd 2.x's
//! `sandboxer = "shim"`).
mod exits;
pub mod sandbox;
pub mod status;
pub(crate) mod task;

use std::collections::HashMap;
use std::sync::Arc;

pub use sandbox::SandboxService;
pub use task::{validate_id, validate_namespace, TaskService};

use crate::backend::Backend;

/// The service names containerd calls the task API by: `v2` for containerd 1.x and 2.x's
/// runc-style shims, `v3` for shims that announce task API version 3. The messages are the same.
const TASK_SERVICE_NAMES: [&str; 2] = ["containerd.task.v2.Task", "containerd.task.v3.Task"];

/// The ttrpc service table: the task service under every name containerd may use, and the
/// Sandbox service.
pub fn ttrpc_services<B: Backend>(
    service: TaskService<B>,
    sandbox: SandboxService<B>,
) -> HashMap<String, ttrpc::r#async::Service> {
    let mut table = HashMap::new();
    for name in TASK_SERVICE_NAMES {
        let generated = protos::shim_async::create_task(Arc::new(service.clone()));
        for (_, svc) in generated {
            table.insert(name.to_string(), svc);
        }
    }
    table.extend(protos::sandbox_async::create_sandbox(Arc::new(sandbox)));
    table
}
