//! What `start` reads on stdin and prints on stdout, for every containerd from 1.6 to 2.3.
//!
//! - containerd 1.6 – 2.2 pass the identity on the command line (`-namespace`, `-id`,
//!   `-address`), TTRPC_ADDRESS in the environment and the runtime options as a protobuf Any
//!   on stdin, and read the socket address as plain text.
//! - containerd 2.3 writes a protobuf `BootstrapParams` on stdin (identity, addresses, log
//!   level, the runtime options as an extension) and reads a protobuf `BootstrapResult`.
//!
//! The two stdin encodings cannot be told apart by decoding alone (an options Any may decode as
//! a BootstrapParams with odd fields), so a BootstrapParams counts only when its identity is
//! complete and agrees with whatever identity the command line carries.
use protobuf::Message;
use protos::bootstrap_api::{BootstrapParams, BootstrapResult, LogLevel};

use super::Args;
use crate::options::RuntimeOptions;

/// The task API version and protocol a 2.3 caller is told to use.
const TASK_API_VERSION: i32 = 3;

/// How `start` was asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    pub namespace: String,
    pub id: String,
    /// containerd's gRPC address, a bare path (the socket name is derived from it).
    pub grpc_address: String,
    /// containerd's ttrpc address for events, if the caller named one.
    pub ttrpc_address: Option<String>,
    pub debug: bool,
    /// Where to put the shim's socket (2.3's `socket_dir`), if not the default.
    pub socket_dir: Option<String>,
    pub options: RuntimeOptions,
    /// Whether the caller speaks the 2.3 protocol (and wants a BootstrapResult).
    pub bootstrap: bool,
}

fn bare_path(address: &str) -> String {
    address.trim_start_matches("unix://").to_string()
}

/// Reads the start request from the command line and stdin.
pub fn parse(args: &Args, stdin: &[u8]) -> StartRequest {
    if let Some(p) = bootstrap_params(args, stdin) {
        let options = p
            .extensions
            .iter()
            .filter_map(|e| e.value.as_ref())
            .find_map(|any| RuntimeOptions::from_any(Some(any)).ok())
            .unwrap_or_default();
        let debug = p.log_level.value() <= LogLevel::LOG_LEVEL_DEBUG as i32;
        return StartRequest {
            namespace: p.namespace,
            id: p.instance_id,
            grpc_address: bare_path(&p.containerd_grpc_address),
            ttrpc_address: Some(p.containerd_ttrpc_address).filter(|a| !a.is_empty()),
            debug: debug || args.debug,
            socket_dir: p.socket_dir.filter(|d| !d.is_empty()),
            options,
            bootstrap: true,
        };
    }
    StartRequest {
        namespace: args.namespace.clone(),
        id: args.id.clone(),
        grpc_address: bare_path(&args.address),
        ttrpc_address: None,
        debug: args.debug,
        socket_dir: None,
        options: RuntimeOptions::from_any_bytes(stdin).unwrap_or_default(),
        bootstrap: false,
    }
}

fn bootstrap_params(args: &Args, stdin: &[u8]) -> Option<BootstrapParams> {
    let p = BootstrapParams::parse_from_bytes(stdin).ok()?;
    if p.instance_id.is_empty() || p.namespace.is_empty() || p.containerd_grpc_address.is_empty() {
        return None;
    }
    let agrees = |cli: &str, ours: &str| cli.is_empty() || cli == ours;
    (agrees(&args.id, &p.instance_id) && agrees(&args.namespace, &p.namespace)).then_some(p)
}

/// The directory containerd 2.x's `shim` sandbox controller makes its bundles in (its plugin
/// state directory): a shim started there serves a pod through the Sandbox API.
const SANDBOX_CONTROLLER_DIR: &str = "io.containerd.sandbox.controller.v1.shim";

/// Whether containerd's sandbox controller started this shim for a pod (2.0+ only).
pub fn started_for_sandbox(bundle: &std::path::Path) -> bool {
    bundle
        .components()
        .any(|c| c.as_os_str() == SANDBOX_CONTROLLER_DIR)
}

/// What `start` prints: the plain address for older callers, a BootstrapResult for 2.3.
/// A shim started for a pod answers containerd 2.0–2.2 with their JSON bootstrap parameters
/// and task API version 3: then containerd connects each of the pod's containers to it
/// without running `start` (and `delete`) for each.
pub fn response(request: &StartRequest, address_uri: &str, for_sandbox: bool) -> Vec<u8> {
    if !request.bootstrap {
        if for_sandbox {
            let params = serde_json::json!({
                "version": TASK_API_VERSION,
                "address": address_uri,
                "protocol": "ttrpc",
            });
            return params.to_string().into_bytes();
        }
        return address_uri.as_bytes().to_vec();
    }
    let result = BootstrapResult {
        version: TASK_API_VERSION,
        address: address_uri.to_string(),
        protocol: "ttrpc".to_string(),
        ..Default::default()
    };
    result.write_to_bytes().expect("BootstrapResult encodes")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pods_shim_answers_task_api_3_in_json() {
        let bundle = std::path::Path::new(
            "/run/containerd/io.containerd.sandbox.controller.v1.shim/k8s.io/abc",
        );
        assert!(started_for_sandbox(bundle));
        assert!(!started_for_sandbox(std::path::Path::new(
            "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc"
        )));
        let request = parse(&cli("abc", "k8s.io"), b"");
        let out = response(&request, "unix:///run/containerd/s/x", true);
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["version"], 3);
        assert_eq!(json["protocol"], "ttrpc");
        assert_eq!(json["address"], "unix:///run/containerd/s/x");
        let plain = response(&request, "unix:///run/containerd/s/x", false);
        assert_eq!(plain, b"unix:///run/containerd/s/x");
    }

    use protobuf::well_known_types::any::Any;
    use protos::bootstrap_api::Extension;
    use protos::shim::oci::Options;

    use super::*;

    fn cli(id: &str, ns: &str) -> Args {
        Args {
            id: id.into(),
            namespace: ns.into(),
            address: "/run/containerd/containerd.sock".into(),
            action: Some("start".into()),
            ..Default::default()
        }
    }

    fn options_any(binary: &str) -> Any {
        Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: Options {
                binary_name: binary.into(),
                ..Default::default()
            }
            .write_to_bytes()
            .unwrap(),
            ..Default::default()
        }
    }

    fn params(id: &str) -> BootstrapParams {
        BootstrapParams {
            instance_id: id.into(),
            namespace: "k8s.io".into(),
            log_level: LogLevel::LOG_LEVEL_DEBUG.into(),
            containerd_ttrpc_address: "unix:///run/containerd/containerd.sock.ttrpc".into(),
            containerd_grpc_address: "unix:///run/containerd/containerd.sock".into(),
            extensions: vec![Extension {
                value: Some(options_any("crun")).into(),
                ..Default::default()
            }],
            socket_dir: Some("/run/s".into()),
            ..Default::default()
        }
    }

    #[test]
    fn containerd_2_3_bootstrap_params() {
        let stdin = params("c1").write_to_bytes().unwrap();
        // 2.3 may or may not repeat the identity on the command line.
        for args in [cli("c1", "k8s.io"), Args::default()] {
            let req = parse(&args, &stdin);
            assert!(req.bootstrap);
            assert_eq!((req.id.as_str(), req.namespace.as_str()), ("c1", "k8s.io"));
            assert_eq!(req.grpc_address, "/run/containerd/containerd.sock");
            assert_eq!(
                req.ttrpc_address.as_deref(),
                Some("unix:///run/containerd/containerd.sock.ttrpc")
            );
            assert!(req.debug);
            assert_eq!(req.socket_dir.as_deref(), Some("/run/s"));
            assert_eq!(req.options.binary_name, "crun");
        }
        let out = response(&parse(&Args::default(), &stdin), "unix:///run/s/abc", false);
        let result = BootstrapResult::parse_from_bytes(&out).unwrap();
        assert_eq!(result.version, 3);
        assert_eq!(result.address, "unix:///run/s/abc");
        assert_eq!(result.protocol, "ttrpc");
    }

    #[test]
    fn legacy_options_any_is_not_mistaken_for_bootstrap_params() {
        let stdin = options_any("runc").write_to_bytes().unwrap();
        let req = parse(&cli("c1", "default"), &stdin);
        assert!(!req.bootstrap);
        assert_eq!(req.options.binary_name, "runc");
        assert_eq!(req.id, "c1");
        assert_eq!(response(&req, "unix:///x", false), b"unix:///x");
        // Nothing on stdin at all (containerd with no options).
        assert!(!parse(&cli("c1", "default"), &[]).bootstrap);
    }

    #[test]
    fn params_for_another_container_are_ignored() {
        let stdin = params("other").write_to_bytes().unwrap();
        assert!(!parse(&cli("c1", "k8s.io"), &stdin).bootstrap);
    }
}
