//! `runtimeoptions.v1.Options`, which containerd's CRI plugin sends for every runtime type but
//! `io.containerd.runc.v2` (ours included): runc option keys as TOML, in the file `ConfigPath`
//! names or inline in `ConfigBody`.
//!
//! `ConfigPath` wins when both are set, as containerd's proto documents ("[the body] will be
//! used if config_path is not specified"); CRI itself fills the body only when the handler's
//! `options` table has no `ConfigPath` (1.7+), and then the body is that whole table.
use std::path::Path;

use protos::runtimeoptions::Options as ConfigOptions;
use protos::type_urls;
use toml::Value;

use super::{strip_prefix, RuntimeOptions};
use crate::error::Error;

/// The keys a config may hold, as containerd's CRI names runc's options (go-toml matches them
/// without regard to case, so we do too).
const KEYS: &[&str] = &[
    "BinaryName",
    "Root",
    "SystemdCgroup",
    "NoPivotRoot",
    "NoNewKeyring",
    "ShimCgroup",
    "IoUid",
    "IoGid",
    "CriuPath",
    "CriuImagePath",
    "CriuWorkPath",
];

/// Keys of the CRI `options` table that describe the config itself; containerd 1.7+ passes
/// them on in the body with the rest of the table.
const SELF_KEYS: &[&str] = &["TypeUrl", "ConfigPath"];

pub(super) fn decode(o: &ConfigOptions) -> Result<RuntimeOptions, Error> {
    if !o.type_url.is_empty() && strip_prefix(&o.type_url) != type_urls::RUNC_OPTIONS {
        return Err(Error::InvalidArgument(format!(
            "{}: TypeUrl {:?} is not supported: the config must hold {} keys (TypeUrl empty \
             or {0})",
            type_urls::RUNTIME_OPTIONS,
            o.type_url,
            type_urls::RUNC_OPTIONS
        )));
    }
    if !o.config_path.is_empty() {
        let path = Path::new(&o.config_path);
        // The shim's working directory is not the caller's: a relative path would be a guess.
        if !path.is_absolute() {
            return Err(invalid(
                &o.config_path,
                "ConfigPath must be an absolute path".into(),
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(&o.config_path, format!("cannot read the file: {e}")))?;
        return parse(&text, &o.config_path);
    }
    if o.config_body.is_empty() {
        return Ok(RuntimeOptions::default());
    }
    let text = std::str::from_utf8(&o.config_body)
        .map_err(|e| invalid("ConfigBody", format!("not UTF-8: {e}")))?;
    parse(text, "ConfigBody")
}

fn invalid(source: &str, why: String) -> Error {
    Error::InvalidArgument(format!(
        "decode runtime options {source} ({}): {why}",
        type_urls::RUNTIME_OPTIONS
    ))
}

/// Parses runc option keys; `source` (the file's path, or `ConfigBody`) names the origin in
/// every error.
fn parse(text: &str, source: &str) -> Result<RuntimeOptions, Error> {
    let table: toml::Table = text
        .parse()
        .map_err(|e| invalid(source, format!("invalid TOML: {e}")))?;
    let mut o = RuntimeOptions::default();
    for (key, value) in &table {
        let Some(name) = KEYS
            .iter()
            .chain(SELF_KEYS)
            .find(|k| k.eq_ignore_ascii_case(key))
        else {
            return Err(invalid(
                source,
                format!("unknown key {key:?} (known: {})", KEYS.join(", ")),
            ));
        };
        let typed = Typed { source, key, value };
        match *name {
            "BinaryName" => o.binary_name = typed.string()?,
            "Root" => o.root = typed.string()?,
            "SystemdCgroup" => o.systemd_cgroup = typed.bool()?,
            "NoPivotRoot" => o.no_pivot_root = typed.bool()?,
            "NoNewKeyring" => o.no_new_keyring = typed.bool()?,
            "ShimCgroup" => o.shim_cgroup = typed.string()?,
            "IoUid" => o.io_uid = typed.u32()?,
            "IoGid" => o.io_gid = typed.u32()?,
            "CriuPath" => o.criu_path = typed.string()?,
            "CriuImagePath" => o.criu_image_path = typed.string()?,
            "CriuWorkPath" => o.criu_work_path = typed.string()?,
            // Checked when the Any arrives; here only their type.
            _ => drop(typed.string()?),
        }
    }
    Ok(o)
}

/// One key's value, converted to the type its option has.
struct Typed<'a> {
    source: &'a str,
    key: &'a str,
    value: &'a Value,
}

impl Typed<'_> {
    fn wrong(&self, wanted: &str) -> Error {
        let shown = match self.value {
            Value::String(s) => format!(" {s:?}"),
            Value::Integer(i) => format!(" {i}"),
            Value::Float(f) => format!(" {f}"),
            Value::Boolean(b) => format!(" {b}"),
            _ => String::new(),
        };
        invalid(
            self.source,
            format!(
                "key {} must be {wanted}, not the {}{shown}",
                self.key,
                self.value.type_str()
            ),
        )
    }

    fn string(&self) -> Result<String, Error> {
        self.value
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.wrong("a string"))
    }

    fn bool(&self) -> Result<bool, Error> {
        self.value.as_bool().ok_or_else(|| self.wrong("a boolean"))
    }

    fn u32(&self) -> Result<u32, Error> {
        self.value
            .as_integer()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| self.wrong("an integer in 0..=4294967295"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;

    fn any(o: &ConfigOptions) -> protobuf::well_known_types::any::Any {
        protobuf::well_known_types::any::Any {
            type_url: type_urls::RUNTIME_OPTIONS.into(),
            value: o.write_to_bytes().unwrap(),
            ..Default::default()
        }
    }

    fn from_body(body: &str) -> Result<RuntimeOptions, Error> {
        RuntimeOptions::from_any(Some(&any(&ConfigOptions {
            config_body: body.as_bytes().to_vec(),
            ..Default::default()
        })))
    }

    fn message(r: Result<RuntimeOptions, Error>) -> String {
        match r.unwrap_err() {
            Error::InvalidArgument(m) => m,
            other => panic!("not INVALID_ARGUMENT: {other}"),
        }
    }

    const GOOD: &str = r#"
        BinaryName = "/usr/local/bin/crun"
        Root = "/run/x"
        SystemdCgroup = true
        NoPivotRoot = true
        NoNewKeyring = true
        ShimCgroup = "/shims"
        IoUid = 1000
        IoGid = 1001
        CriuPath = "/opt/criu"
        CriuImagePath = "/img"
        CriuWorkPath = "/work"
    "#;

    fn good() -> RuntimeOptions {
        RuntimeOptions {
            binary_name: "/usr/local/bin/crun".into(),
            root: "/run/x".into(),
            systemd_cgroup: true,
            no_pivot_root: true,
            no_new_keyring: true,
            shim_cgroup: "/shims".into(),
            io_uid: 1000,
            io_gid: 1001,
            criu_path: "/opt/criu".into(),
            criu_image_path: "/img".into(),
            criu_work_path: "/work".into(),
        }
    }

    #[test]
    fn reads_every_key_from_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runc-rs.toml");
        std::fs::write(&path, GOOD).unwrap();
        let o = ConfigOptions {
            config_path: path.to_string_lossy().into_owned(),
            ..Default::default()
        };
        assert_eq!(RuntimeOptions::from_any(Some(&any(&o))).unwrap(), good());
    }

    #[test]
    fn reads_the_inline_body_as_containerd_1_7_sends_the_cri_table() {
        // go-toml writes the whole table, TypeUrl included when it was set; keys in any case.
        let body = format!("{GOOD}\nTypeUrl = \"containerd.runc.v1.Options\"\n");
        assert_eq!(from_body(&body).unwrap(), good());
        assert_eq!(
            from_body("binaryname = \"crun\"").unwrap().binary_name,
            "crun"
        );
        assert_eq!(from_body("").unwrap(), RuntimeOptions::default());
    }

    #[test]
    fn the_file_wins_over_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "Root = \"/from/file\"").unwrap();
        let o = ConfigOptions {
            config_path: path.to_string_lossy().into_owned(),
            config_body: b"Root = \"/from/body\"".to_vec(),
            ..Default::default()
        };
        let got = RuntimeOptions::from_any(Some(&any(&o))).unwrap();
        assert_eq!(got.root, "/from/file");
    }

    #[test]
    fn a_missing_or_relative_file_names_the_path() {
        for (path, why) in [
            ("/nonexistent/runc-rs.toml", "No such file"),
            ("relative.toml", "absolute"),
        ] {
            let o = ConfigOptions {
                config_path: path.into(),
                ..Default::default()
            };
            let m = message(RuntimeOptions::from_any(Some(&any(&o))));
            assert!(m.contains(path) && m.contains(why), "{m}");
        }
    }

    #[test]
    fn unknown_keys_ill_typed_values_and_bad_toml_are_refused_by_name() {
        let m = message(from_body("BinaryName = \"runc\"\nBinnaryName = \"crun\""));
        assert!(
            m.contains("ConfigBody") && m.contains("\"BinnaryName\""),
            "{m}"
        );
        let m = message(from_body("SystemdCgroup = \"yes\""));
        assert!(m.contains("SystemdCgroup") && m.contains("boolean"), "{m}");
        let m = message(from_body("IoUid = -1"));
        assert!(m.contains("IoUid") && m.contains("-1"), "{m}");
        let m = message(from_body("Root = 7"));
        assert!(m.contains("Root") && m.contains("string"), "{m}");
        let m = message(from_body("BinaryName = "));
        assert!(m.contains("invalid TOML"), "{m}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "NoPivotRoot = 1").unwrap();
        let o = ConfigOptions {
            config_path: path.to_string_lossy().into_owned(),
            ..Default::default()
        };
        let m = message(RuntimeOptions::from_any(Some(&any(&o))));
        assert!(
            m.contains(&*path.to_string_lossy()) && m.contains("NoPivotRoot"),
            "{m}"
        );
    }

    #[test]
    fn a_config_of_another_type_is_refused() {
        let o = ConfigOptions {
            type_url: "io.containerd.kata.v2.options".into(),
            config_body: b"Root = \"/x\"".to_vec(),
            ..Default::default()
        };
        let m = message(RuntimeOptions::from_any(Some(&any(&o))));
        assert!(m.contains("io.containerd.kata.v2.options"), "{m}");
    }
}
