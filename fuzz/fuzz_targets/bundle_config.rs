//! A bundle's config.json as the task service reads it at Create: `check_bundle` (through a
//! bundle directory with a `rootfs`), then `outlives_init` and `mapped_root` on the spec, and
//! the shim group its annotations name (`group_of`, which `start` reads from the same file).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use libshim::bootstrap::{group_of, GROUP_ANNOTATIONS};
use libshim::fuzzing::{check_bundle, mapped_root, outlives_init};
use serde_json::Value;

/// One bundle directory per fuzzing process; config.json is rewritten for each input.
fn bundle() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("libshim-fuzz-bundle-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("rootfs")).expect("create the bundle directory");
        dir
    })
}

/// The host id the spec maps the container's root to: the first mapping of container id 0
/// with a size, 0 without one. `None` when that id does not fit the runtime-spec's uint32,
/// which every runtime refuses (the container is not created, whatever the shim derived).
fn host_of_root(spec: &Value, key: &str) -> Option<u32> {
    let maps = spec
        .pointer(&format!("/linux/{key}"))
        .and_then(Value::as_array);
    let host = maps
        .and_then(|maps| {
            maps.iter().find_map(|m| {
                let inside = m["containerID"].as_u64()?;
                let host = m["hostID"].as_u64()?;
                let size = m["size"].as_u64()?;
                (inside == 0 && size > 0).then_some(host)
            })
        })
        .unwrap_or(0);
    u32::try_from(host).ok()
}

fuzz_target!(|data: &[u8]| {
    let dir = bundle();
    std::fs::write(dir.join("config.json"), data).expect("write config.json");
    let parsed: Option<Value> = serde_json::from_slice(data).ok();
    match check_bundle(dir) {
        Ok(spec) => {
            assert_eq!(Some(&spec), parsed.as_ref(), "the spec is the file's JSON");
            let args = spec.pointer("/process/args").and_then(Value::as_array);
            assert!(
                !args.is_some_and(|a| a.is_empty()),
                "empty process.args passed"
            );
        }
        Err(e) => drop(e.to_string()),
    }
    // The spec's readers, on any JSON (check_bundle refuses some that still parse).
    if let Some(spec) = &parsed {
        let own_pid_ns = spec["linux"]["namespaces"].as_array().is_some_and(|all| {
            all.iter().any(|n| {
                n.get("type").and_then(Value::as_str) == Some("pid")
                    && n.get("path")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
            })
        });
        assert_eq!(outlives_init(spec), !own_pid_ns);
        let (uid, gid) = mapped_root(spec);
        for (got, key) in [(uid, "uidMappings"), (gid, "gidMappings")] {
            if let Some(want) = host_of_root(spec, key) {
                assert_eq!(got, want, "{key}");
            }
        }
    }
    let group = group_of(dir, "fuzz-id");
    let annotations = parsed.as_ref().and_then(|s| s.get("annotations"));
    let named = GROUP_ANNOTATIONS
        .iter()
        .filter_map(|key| annotations?.get(key)?.as_str())
        .any(|g| g == group);
    assert!(group == "fuzz-id" || named, "group {group:?}");
});
