//! The root's propagation as containerd's CRI writes it, and mounts that cannot be made.
use containerd_client::tonic::Code;
use integration::client::assert_code;
use integration::shim_tests;
use integration::spec;
use serde_json::json;

shim_tests!(rootfs_propagation_as_cri_writes_it, |ctx| {
    let c = &ctx.client;
    // CRI writes runc's names: rshared for a container with a Bidirectional mount, rslave for
    // HostToContainer.
    for propagation in ["rshared", "rslave", "rprivate"] {
        let id = format!("prop-{propagation}");
        let mut s = spec::sh("awk '$5 == \"/\"' /proc/self/mountinfo");
        s["linux"]["rootfsPropagation"] = json!(propagation);
        c.create_container(&id, &s).await.unwrap();
        let mut io = c.io(&id, false);
        c.create_task(&id, Some(&io), false)
            .await
            .unwrap_or_else(|e| panic!("{propagation}: {e}"));
        c.start(&id, "").await.unwrap();
        assert_eq!(c.wait(&id, "").await.unwrap(), 0, "{propagation}");
        let root = io.stdout_text();
        // The tests' containerd runs in a private mount namespace, so only "shared" can show
        // (a slave of a private mount stays private). crun and the sandbox shim make the root
        // shared for rshared; runc 1.1 leaves it private here.
        if ctx.shim == integration::Shim::Sandbox {
            assert_eq!(
                root.contains("shared:"),
                propagation == "rshared",
                "{propagation}: {root}"
            );
        }
        c.delete_task(&id).await.unwrap();
        c.delete_container(&id).await.unwrap();
    }
});

shim_tests!(a_bind_mount_without_its_source_is_named, |ctx| {
    let c = &ctx.client;
    let mut s = spec::spec(&["true"]);
    s["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data", "type": "bind", "source": "/nonexistent/volume",
        "options": ["rbind", "rprivate"]
    }));
    c.create_container("nosrc", &s).await.unwrap();
    let err = assert_code(
        c.create_task("nosrc", None, false).await,
        Code::InvalidArgument,
        "/nonexistent/volume",
    );
    assert!(err.message().contains("/data"), "{}", err.message());
    c.delete_container("nosrc").await.unwrap();
});
