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

/// What `start` prints: the plain address for older callers, a BootstrapResult for 2.3.
pub fn response(request: &StartRequest, address_uri: &str) -> Vec<u8> {
    if !request.bootstrap {
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
        let out = response(&parse(&Args::default(), &stdin), "unix:///run/s/abc");
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
        assert_eq!(response(&req, "unix:///x"), b"unix:///x");
        // Nothing on stdin at all (containerd with no options).
        assert!(!parse(&cli("c1", "default"), &[]).bootstrap);
    }

    #[test]
    fn params_for_another_container_are_ignored() {
        let stdin = params("other").write_to_bytes().unwrap();
        assert!(!parse(&cli("c1", "k8s.io"), &stdin).bootstrap);
    }
}
