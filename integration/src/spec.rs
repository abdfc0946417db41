//! OCI runtime specs for tests: containerd's default spec (`ctr oci spec`), edited.
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::rootfs;

fn default_spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let out = Command::new("/usr/bin/ctr")
            .args(["oci", "spec"])
            .output()
            .expect("ctr oci spec");
        serde_json::from_slice(&out.stdout).expect("ctr oci spec prints JSON")
    })
}

/// A spec that runs `args` in the busybox rootfs.
pub fn spec(args: &[&str]) -> Value {
    let mut s = default_spec().clone();
    s["root"] = json!({ "path": rootfs::busybox(), "readonly": false });
    s["process"]["args"] = json!(args);
    s["process"]["env"] = json!(["PATH=/bin"]);
    s["process"]["terminal"] = json!(false);
    s
}

/// `sh -c script`.
pub fn sh(script: &str) -> Value {
    spec(&["sh", "-c", script])
}

/// The process part of a spec, for Exec.
pub fn process(args: &[&str], terminal: bool) -> Value {
    let mut p = spec(args)["process"].clone();
    p["terminal"] = json!(terminal);
    p
}

pub fn annotate(mut spec: Value, key: &str, value: &str) -> Value {
    if !spec["annotations"].is_object() {
        spec["annotations"] = json!({});
    }
    spec["annotations"][key] = json!(value);
    spec
}
