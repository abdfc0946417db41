//! Runtime options: containerd's `containerd.runc.v1.Options`, the legacy
//! `containerd.linux.runc` types that clients send to runtime types outside
//! `io.containerd.runc.`, or CRI's `runtimeoptions.v1.Options` (a TOML config, `config.rs`),
//! folded into one struct every backend reads.
use std::path::Path;

use protobuf::well_known_types::any::Any;
use protobuf::Message;
use protos::runctypes::CreateOptions;
use protos::shim::oci::Options;
use protos::type_urls;
use serde::{Deserialize, Serialize};

use crate::error::Error;

mod config;

/// The options a shim honours, whichever message carried them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeOptions {
    pub binary_name: String,
    pub root: String,
    pub systemd_cgroup: bool,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
    pub shim_cgroup: String,
    pub io_uid: u32,
    pub io_gid: u32,
    pub criu_path: String,
    pub criu_image_path: String,
    pub criu_work_path: String,
}

/// The file in the bundle where the options are kept for the `delete` action, which runs in a
/// fresh process after the serving shim died.
pub const OPTIONS_FILE: &str = "options.json";

fn strip_prefix(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

impl RuntimeOptions {
    /// Decodes the options Any of a Create request or of the shim's stdin.
    /// An empty or absent Any means defaults.
    pub fn from_any(any: Option<&Any>) -> Result<Self, Error> {
        let Some(any) = any.filter(|a| !a.type_url.is_empty()) else {
            return Ok(Self::default());
        };
        let bad =
            |e: protobuf::Error| Error::InvalidArgument(format!("decode {}: {e}", any.type_url));
        match strip_prefix(&any.type_url) {
            type_urls::RUNC_OPTIONS => {
                let o = Options::parse_from_bytes(&any.value).map_err(bad)?;
                Ok(Self {
                    binary_name: o.binary_name,
                    root: o.root,
                    systemd_cgroup: o.systemd_cgroup,
                    no_pivot_root: o.no_pivot_root,
                    no_new_keyring: o.no_new_keyring,
                    shim_cgroup: o.shim_cgroup,
                    io_uid: o.io_uid,
                    io_gid: o.io_gid,
                    criu_image_path: o.criu_image_path,
                    criu_work_path: o.criu_work_path,
                    // Options dropped CriuPath (field 8); runc finds criu on PATH.
                    criu_path: String::new(),
                })
            }
            type_urls::LEGACY_CREATE_OPTIONS => {
                let o = CreateOptions::parse_from_bytes(&any.value).map_err(bad)?;
                Ok(Self {
                    no_pivot_root: o.no_pivot_root,
                    no_new_keyring: o.no_new_keyring,
                    shim_cgroup: o.shim_cgroup,
                    io_uid: o.io_uid,
                    io_gid: o.io_gid,
                    criu_image_path: o.criu_image_path,
                    criu_work_path: o.criu_work_path,
                    ..Self::default()
                })
            }
            type_urls::LEGACY_RUNC_OPTIONS => {
                let o =
                    protos::runctypes::RuncOptions::parse_from_bytes(&any.value).map_err(bad)?;
                Ok(Self {
                    binary_name: o.runtime,
                    root: o.runtime_root,
                    criu_path: o.criu_path,
                    systemd_cgroup: o.systemd_cgroup,
                    ..Self::default()
                })
            }
            type_urls::RUNTIME_OPTIONS => {
                let o =
                    protos::runtimeoptions::Options::parse_from_bytes(&any.value).map_err(bad)?;
                config::decode(&o)
            }
            other => Err(Error::InvalidArgument(format!(
                "unsupported runtime options type {other:?}: expected {}, {}, {} or {}",
                type_urls::RUNC_OPTIONS,
                type_urls::RUNTIME_OPTIONS,
                type_urls::LEGACY_CREATE_OPTIONS,
                type_urls::LEGACY_RUNC_OPTIONS
            ))),
        }
    }

    /// Decodes options from raw bytes of a marshalled Any (the shim's stdin at `start`).
    pub fn from_any_bytes(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        let any = Any::parse_from_bytes(bytes)
            .map_err(|e| Error::InvalidArgument(format!("decode runtime options: {e}")))?;
        Self::from_any(Some(&any))
    }

    pub fn save(&self, bundle: &Path) -> Result<(), Error> {
        let path = bundle.join(OPTIONS_FILE);
        let data = serde_json::to_vec(self).expect("options serialize");
        std::fs::write(&path, data).map_err(|e| Error::io(format!("write {}", path.display()), e))
    }

    /// Reads what [`save`](Self::save) wrote; defaults when the file is missing.
    pub fn load(bundle: &Path) -> Self {
        std::fs::read(bundle.join(OPTIONS_FILE))
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or_default()
    }
}

/// The CRIU options of a Checkpoint request (`containerd.runc.v1.CheckpointOptions`, or the
/// legacy `containerd.linux.runc.CheckpointOptions`). Paths are left empty when not given.
pub fn checkpoint_request(any: Option<&Any>) -> Result<crate::backend::CheckpointRequest, Error> {
    use crate::backend::CheckpointRequest;
    let Some(any) = any.filter(|a| !a.type_url.is_empty()) else {
        return Ok(CheckpointRequest::default());
    };
    let bad = |e: protobuf::Error| Error::InvalidArgument(format!("decode {}: {e}", any.type_url));
    // The current and the legacy message carry the same fields under the same names.
    macro_rules! request_from {
        ($message:ty) => {{
            let o = <$message>::parse_from_bytes(&any.value).map_err(bad)?;
            CheckpointRequest {
                image_path: o.image_path.into(),
                work_path: o.work_path.into(),
                exit: o.exit,
                open_tcp: o.open_tcp,
                external_unix_sockets: o.external_unix_sockets,
                terminal: o.terminal,
                file_locks: o.file_locks,
                empty_namespaces: o.empty_namespaces,
                cgroups_mode: o.cgroups_mode,
                parent: None,
            }
        }};
    }
    let req = match strip_prefix(&any.type_url) {
        type_urls::RUNC_CHECKPOINT_OPTIONS => request_from!(protos::shim::oci::CheckpointOptions),
        type_urls::LEGACY_CHECKPOINT_OPTIONS => {
            request_from!(protos::runctypes::CheckpointOptions)
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "unsupported checkpoint options type {other:?}"
            )))
        }
    };
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_of(type_url: &str, msg: &dyn protobuf::MessageDyn) -> Any {
        Any {
            type_url: type_url.into(),
            value: msg.write_to_bytes_dyn().unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn decodes_runc_options() {
        let o = Options {
            binary_name: "crun".into(),
            root: "/run/x".into(),
            no_pivot_root: true,
            io_uid: 7,
            ..Default::default()
        };
        let got =
            RuntimeOptions::from_any(Some(&any_of("containerd.runc.v1.Options", &o))).unwrap();
        assert_eq!(got.binary_name, "crun");
        assert_eq!(got.root, "/run/x");
        assert!(got.no_pivot_root);
        assert_eq!(got.io_uid, 7);
    }

    #[test]
    fn decodes_legacy_create_options_with_url_prefix() {
        let o = CreateOptions {
            no_new_keyring: true,
            io_gid: 9,
            ..Default::default()
        };
        let any = any_of(
            "type.googleapis.com/containerd.linux.runc.CreateOptions",
            &o,
        );
        let got = RuntimeOptions::from_any(Some(&any)).unwrap();
        assert!(got.no_new_keyring);
        assert_eq!(got.io_gid, 9);
    }

    #[test]
    fn decodes_legacy_runc_options() {
        let o = protos::runctypes::RuncOptions {
            runtime: "crun".into(),
            criu_path: "/opt/criu".into(),
            ..Default::default()
        };
        let any = any_of("containerd.linux.runc.RuncOptions", &o);
        let got = RuntimeOptions::from_any(Some(&any)).unwrap();
        assert_eq!(
            (got.binary_name.as_str(), got.criu_path.as_str()),
            ("crun", "/opt/criu")
        );
    }

    #[test]
    fn rejects_unknown_type() {
        let any = Any {
            type_url: "foo.Bar".into(),
            ..Default::default()
        };
        let err = RuntimeOptions::from_any(Some(&any)).unwrap_err();
        assert!(err.to_string().contains("foo.Bar"), "{err}");
    }

    #[test]
    fn decodes_checkpoint_options() {
        let o = protos::shim::oci::CheckpointOptions {
            exit: true,
            image_path: "/img".into(),
            ..Default::default()
        };
        let req =
            checkpoint_request(Some(&any_of("containerd.runc.v1.CheckpointOptions", &o))).unwrap();
        assert!(req.exit);
        assert_eq!(req.image_path, std::path::Path::new("/img"));
        assert!(checkpoint_request(None)
            .unwrap()
            .image_path
            .as_os_str()
            .is_empty());
    }

    #[test]
    fn empty_means_defaults() {
        assert_eq!(
            RuntimeOptions::from_any(None).unwrap(),
            RuntimeOptions::default()
        );
        assert_eq!(
            RuntimeOptions::from_any_bytes(&[]).unwrap(),
            RuntimeOptions::default()
        );
    }
}
