//! A task with an idmapped mount. On a runtime that cannot do idmapped mounts it is refused
//! before anything is created, by containerd 2 itself (it reads the shim's `-info` features)
//! and by the shim on containerd 1.x (which does not check), naming the runtime, its version
//! and the missing feature: runc 1.1.5 reports no `mountExtensions.idmap`, crun 1.8.1 has no
//! `features` command. The sandbox shim makes idmapped mounts itself (libcontainer 0.7 refuses
//! them): there the task runs and writes through the mount as the mapped root.
use std::path::Path;

use containerd_client::tonic::Code;
use integration::{shim_tests, spec, Shim};
use serde_json::json;

/// The first line of `<binary> --version`, minus "... version ".
fn runtime_version(binary: &str) -> String {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .expect("runtime --version");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().next().unwrap_or_default();
    line.split_once("version ")
        .map_or(line, |(_, v)| v)
        .trim()
        .to_string()
}

/// A spec in a user namespace with a volume idmapped to the same range.
fn idmapped_spec(volume: &Path) -> serde_json::Value {
    let map = json!([{ "containerID": 0, "hostID": 100000, "size": 65536 }]);
    let mut s = spec::spec(&["true"]);
    s["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "type": "user" }));
    s["linux"]["uidMappings"] = map.clone();
    s["linux"]["gidMappings"] = map.clone();
    s["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/v", "type": "bind", "source": volume,
        "options": ["rbind", "rw"], "uidMappings": map, "gidMappings": map,
    }));
    s
}

shim_tests!(idmapped_mount_runs_or_is_refused_before_create, |ctx| {
    let c = &ctx.client;
    let volume = tempfile::tempdir().unwrap();
    if ctx.shim == Shim::Sandbox {
        // The container's root is host uid 100000, which may not write to the volume (a 0700
        // directory of the host's root) but through an idmapped mount, as its root.
        let mut s = idmapped_spec(volume.path());
        // At a directory the rootfs has: this rootfs belongs to the host's root, so the
        // container's root could not make /v in it.
        let last = s["mounts"].as_array().map_or(0, Vec::len) - 1;
        s["mounts"][last]["destination"] = json!("/tmp");
        s["process"]["args"] = json!(["sh", "-c", "echo hi >/tmp/made && stat -c %u:%g /tmp/made"]);
        c.create_container("idm", &s).await.unwrap();
        let mut io = c.io("idm", false);
        c.create_task("idm", Some(&io), false)
            .await
            .expect("a task with an idmapped mount on the sandbox shim");
        c.start("idm", "").await.unwrap();
        let status = c.wait("idm", "").await.unwrap();
        let out = io.stdout_text();
        let err = io.stderr.take().map(|r| r.text()).unwrap_or_default();
        assert_eq!((status, out.trim()), (0, "0:0"), "stderr: {err}");
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(volume.path().join("made")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "owner on the host");
        c.remove("idm").await;
        return;
    }
    c.create_container("idm", &idmapped_spec(volume.path()))
        .await
        .unwrap();
    let err = c
        .create_task("idm", None, false)
        .await
        .expect_err("a task with an idmapped mount on a runtime without them");
    let msg = err.message();
    let two = ctx.containerd.major_version() >= 2;
    match (ctx.shim, two) {
        // containerd 2 asks the shim's -info; runc's features lack the entry, crun has none.
        (Shim::RuncRs | Shim::GoRunc, true) if ctx.binary == integration::Binary::Runc => {
            assert!(
                msg.contains("idmap mounts not supported") && msg.contains("mountExtensions.idmap"),
                "{msg}"
            );
        }
        (Shim::RuncRs | Shim::GoRunc, true) => assert!(msg.contains("runtime features"), "{msg}"),
        // containerd 1.x sends the task: the shim refuses.
        (Shim::RuncRs, false) => {
            assert_eq!(err.code(), Code::InvalidArgument, "{msg}");
            let binary = ctx.binary.name();
            for needle in [
                binary,
                &runtime_version(binary),
                "linux.mountExtensions.idmap",
                "\"/v\"",
            ] {
                assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
            }
        }
        (Shim::Sandbox, _) => unreachable!("the sandbox shim's case returned above"),
        (Shim::GoRunc, false) => return, // the Go shim lets runc ignore the mapping
    }
    // Nothing was created: no task, no runtime state.
    assert!(
        c.status("idm", "").await.is_err(),
        "no task after a refusal"
    );
    let state = Path::new(ctx.shim.default_state_root())
        .join(c.namespace())
        .join("idm");
    assert!(!state.exists(), "runtime state left at {}", state.display());
    c.delete_container("idm").await.unwrap();
});
