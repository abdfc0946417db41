//! `start`'s input: the command line's identity and containerd's stdin, which is an options
//! Any (containerd 1.6 – 2.2) or a `BootstrapParams` (2.3).
//!
//! Input: `id \n namespace \n address [\n debug]`, a NUL, then stdin. A command line cannot
//! carry a NUL, so everything after the first one is stdin (an input without one has none).
#![no_main]

use libfuzzer_sys::fuzz_target;
use libshim::bootstrap::{socket_path, Args};
use libshim::fuzzing::{start_request, start_response, RuntimeOptions};
use libshim::service::validate_namespace;

const URI: &str = "unix:///run/containerd/s/0123";

fuzz_target!(|data: &[u8]| {
    let (cli, stdin) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let cli = String::from_utf8_lossy(cli);
    let mut lines = cli.split('\n');
    let mut next = || lines.next().unwrap_or_default().to_string();
    let args = Args {
        id: next(),
        namespace: next(),
        address: next(),
        debug: !next().is_empty(),
        action: Some("start".into()),
        ..Default::default()
    };

    let request = start_request(&args, stdin);
    let out = start_response(&request, URI, false);
    // A pod's shim (started by containerd 2.x's sandbox controller) answers task API 3 in
    // whichever encoding the caller reads.
    let pod = start_response(&request, URI, true);
    if !request.bootstrap {
        let params: serde_json::Value =
            serde_json::from_slice(&pod).expect("JSON bootstrap params");
        assert_eq!(params["version"], 3);
        assert_eq!(params["address"], URI);
    }
    if request.bootstrap {
        // BootstrapParams count only with a full identity that the command line agrees with.
        assert!(!request.id.is_empty() && !request.namespace.is_empty());
        assert!(args.id.is_empty() || args.id == request.id);
        assert!(args.namespace.is_empty() || args.namespace == request.namespace);
        assert!(request.debug || !args.debug);
        assert_ne!(out, URI.as_bytes(), "a 2.3 caller reads a BootstrapResult");
    } else {
        assert_eq!(
            (&request.id, &request.namespace, request.debug),
            (&args.id, &args.namespace, args.debug)
        );
        assert_eq!(request.socket_dir, None);
        assert_eq!(
            request.options,
            RuntimeOptions::from_any_bytes(stdin).unwrap_or_default()
        );
        assert_eq!(out, URI.as_bytes());
    }
    // What `start` does next without touching the machine: the namespace check, the socket.
    if validate_namespace(&request.namespace).is_ok() {
        let path = socket_path(
            &request.grpc_address,
            &request.namespace,
            &request.id,
            request.socket_dir.as_deref(),
        );
        assert!(path.file_name().is_some());
    }
});
