//! What CRI's `Status` reports per runtime handler (`runtime_handlers`, CRI 1.30+), and two
//! handlers configured by the "drop-in recipe" that kubelet needs for `hostUsers: false`.
//!
//! kubelet refuses a user-namespaced pod unless its handler reports `user_namespaces`.
//! containerd 2.x's CRI computes that only for `runtime_type = "io.containerd.runc.v2"`, by
//! running the handler's shim with `-info` (the options on stdin, decoded as runc's): so
//! [`SANDBOX_RUNC_TYPE`] and [`RUNC_RS_RUNC_TYPE`] give that type with `runtime_path` naming
//! our shims.
use std::path::Path;

use containerd_client::tonic::{self, Status};
use k8s_cri::v1::{PodSandboxConfig, StatusRequest};

use super::client::{Ctx, Pod, CALL_TIMEOUT};
use super::daemon::CriDaemon;

/// `io.containerd.runc.v2` with `runtime_path` = the sandbox shim.
pub const SANDBOX_RUNC_TYPE: &str = "sandbox-runc-type";
/// `io.containerd.runc.v2` with `runtime_path` = the runc shim, running runc.
pub const RUNC_RS_RUNC_TYPE: &str = "runc-rs-runc-type";

/// `runtime.v1.StatusResponse` with only what k8s-cri 0.11 lacks: field 3.
#[derive(Clone, PartialEq, prost::Message)]
struct StatusResponse {
    #[prost(message, repeated, tag = "3")]
    runtime_handlers: Vec<RuntimeHandler>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RuntimeHandler {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    features: Option<RuntimeHandlerFeatures>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RuntimeHandlerFeatures {
    #[prost(bool, tag = "1")]
    recursive_read_only_mounts: bool,
    #[prost(bool, tag = "2")]
    user_namespaces: bool,
}

/// CRI `Status`'s runtime handlers as (name, user_namespaces, recursive_read_only_mounts).
/// The default handler is listed twice, once named "". A handler without features (one
/// containerd did not introspect) reports false for both.
pub async fn runtime_handlers(socket: &Path) -> Result<Vec<(String, bool, bool)>, Status> {
    let channel = containerd_client::connect(socket)
        .await
        .map_err(|e| Status::unavailable(format!("connect to {}: {e}", socket.display())))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("channel not ready: {e}")))?;
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/runtime.v1.RuntimeService/Status");
    let codec = tonic_prost::ProstCodec::<StatusRequest, StatusResponse>::default();
    let call = grpc.unary(
        tonic::Request::new(StatusRequest { verbose: false }),
        path,
        codec,
    );
    let resp = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| Status::deadline_exceeded("Status took too long"))??;
    Ok(resp
        .into_inner()
        .runtime_handlers
        .into_iter()
        .map(|h| {
            let f = h.features.unwrap_or_default();
            (h.name, f.user_namespaces, f.recursive_read_only_mounts)
        })
        .collect())
}

impl CriDaemon {
    /// Whether this containerd has [`SANDBOX_RUNC_TYPE`] and [`RUNC_RS_RUNC_TYPE`]: 2.x (1.x's
    /// CRI reports no handler features), and pods with a pause container, as kubelet's
    /// recipe runs them (the pauseless run gives our handlers `sandboxer = "shim"`).
    pub fn has_runc_type_handlers(&self) -> bool {
        self.version().0 >= 2 && !super::pauseless::requested()
    }

    /// The two handlers' tables below `runtimes` (a config table path). `BinaryName` makes
    /// the options decode as runc's, which is what CRI hands `-info` for this type.
    pub(super) fn runc_type_handlers(&self, runtimes: &str) -> String {
        let mut c = String::new();
        for (name, shim) in [
            (SANDBOX_RUNC_TYPE, "containerd-shim-sandbox-v2"),
            (RUNC_RS_RUNC_TYPE, "containerd-shim-runc-rs-v2"),
        ] {
            // The binary containerd finds first on its PATH for our types (launch.rs).
            let bin = crate::runtime::shim_bin_dir().join(shim);
            let bin = bin.canonicalize().unwrap_or(bin);
            c += &format!(
                "[{runtimes}.{name}]\n  runtime_type = \"io.containerd.runc.v2\"\n  \
                 runtime_path = \"{}\"\n[{runtimes}.{name}.options]\n  BinaryName = \"runc\"\n",
                bin.display()
            );
        }
        c
    }
}

impl Ctx {
    /// Runs a pod of `config` on the handler named `handler` (one outside [`super::Handler`]);
    /// panics with CRI's error. The pod is stopped and removed when dropped.
    pub async fn run_pod_on(&self, config: PodSandboxConfig, handler: &str) -> Pod {
        let id = match self.cri.run_pod_sandbox(config.clone(), handler).await {
            Ok(id) => id,
            Err(e) => panic!("RunPodSandbox on {handler}: {e:?}"),
        };
        Pod {
            id,
            log_dir: config.log_directory.clone().into(),
            config,
            cri: self.cri.clone(),
            daemon: self.daemon,
            containers: std::sync::Mutex::new(Vec::new()),
        }
    }
}
