//! CRI: bad input on every runtime handler: a CRI error that names the cause, and the pod's
//! other containers keep running. (Mount propagation: cri_mounts.rs.)
use std::path::Path;

use integration::cri::api::*;
use integration::cri::client::*;
use integration::cri::{Ctx, Handler, Pod};
use integration::cri_tests;

/// A pod with one running container, for checking that a failure leaves it alone.
async fn pod_with_survivor(ctx: &Ctx, base: &str) -> (Pod, String) {
    let pod = ctx.run_pod(ctx.pod_config(base)).await;
    let survivor = pod.run(sleeper("survivor")).await;
    (pod, survivor)
}

async fn assert_survives(pod: &Pod, id: &str) {
    let s = pod.status(id).await;
    assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{s:?}");
    assert_eq!(
        pod.exec_ok(id, &["echo", "still here"]).await,
        "still here\n"
    );
}

/// Creates and starts `config`; the CRI error of whichever step failed, with its code.
async fn create_and_start(pod: &Pod, config: ContainerConfig) -> Result<String, String> {
    let id = pod
        .create(config)
        .await
        .map_err(|e| format!("CreateContainer ({:?}): {}", e.code(), e.message()))?;
    pod.cri
        .start_container(&id)
        .await
        .map_err(|e| format!("StartContainer ({:?}): {}", e.code(), e.message()))?;
    Ok(id)
}

/// The error of `result`, which must have failed; it must name each of `names` (in any case).
fn must_fail(what: &str, result: Result<String, String>, names: &[&str]) -> String {
    let err = match result {
        Ok(id) => panic!("{what} succeeded (container {id})"),
        Err(e) => e,
    };
    for n in names {
        assert!(
            err.to_lowercase().contains(&n.to_lowercase()),
            "{what}: the error does not name {n:?}: {err}"
        );
    }
    err
}

/// The sandbox shim answers a request the kernel refuses with INVALID_ARGUMENT, which
/// containerd passes on in CRI's error: 1.x as its text, 2.x as the code (the runc shims:
/// runc's failure, UNKNOWN).
fn invalid_argument_from_the_sandbox(ctx: &Ctx, what: &str, err: &str) {
    if ctx.handler == Handler::Sandbox {
        assert!(
            err.ends_with(": invalid argument") || err.contains("(InvalidArgument)"),
            "{what}: not an invalid argument: {err}"
        );
    }
}

cri_tests!(a_program_not_in_the_image, |ctx| {
    let (pod, survivor) = pod_with_survivor(&ctx, "noprog").await;
    let r = create_and_start(&pod, container_config("bad", &["/no/such/program"])).await;
    must_fail("a missing program", r, &["/no/such/program"]);
    assert_survives(&pod, &survivor).await;
});

cri_tests!(host_paths_missing_or_impossible, |ctx| {
    let (pod, survivor) = pod_with_survivor(&ctx, "hostpath").await;
    let base = ctx.daemon.dir().join("volumes").join(ctx.unique("bad"));
    std::fs::create_dir_all(&base).unwrap();
    let mount = |host: &Path, container: &str| Mount {
        host_path: host.to_string_lossy().into_owned(),
        container_path: container.into(),
        ..Default::default()
    };
    // A host path that does not exist: containerd creates it as a directory (kubelet
    // validates hostPath types before it asks).
    let missing = base.join("missing");
    let mut config = sleeper("created");
    config.mounts = vec![mount(&missing, "/data")];
    create_and_start(&pod, config)
        .await
        .expect("a missing host path");
    assert!(
        missing.is_dir(),
        "containerd did not create {}",
        missing.display()
    );

    // A host path below a regular file cannot be made: the error names it.
    std::fs::write(base.join("file"), "").unwrap();
    let impossible = base.join("file/sub");
    let mut config = sleeper("impossible");
    config.mounts = vec![mount(&impossible, "/data")];
    let r = create_and_start(&pod, config).await;
    must_fail(
        "a host path below a file",
        r,
        &[&impossible.to_string_lossy()],
    );

    // A dangling symlink.
    std::os::unix::fs::symlink(base.join("nowhere"), base.join("dangling")).unwrap();
    let mut config = sleeper("dangling");
    config.mounts = vec![mount(&base.join("dangling"), "/data")];
    let r = create_and_start(&pod, config).await;
    must_fail("a dangling symlink", r, &["dangling"]);

    // A file over an image directory: the runtime refuses the mount (through the shim), and
    // says which and why (the sandbox shim: libcontainer said "failed to prepare rootfs").
    let mut config = sleeper("file-over-dir");
    config.mounts = vec![mount(&base.join("file"), "/srv/dir")];
    let r = create_and_start(&pod, config).await;
    let what = "a file over a directory";
    let err = must_fail(what, r, &["srv/dir", "not a directory"]);
    assert!(err.contains("StartContainer"), "{err}");
    invalid_argument_from_the_sandbox(&ctx, what, &err);
    // And the other way round: a directory over an image file.
    let mut config = sleeper("dir-over-file");
    config.mounts = vec![mount(&base, "/etc/passwd")];
    let r = create_and_start(&pod, config).await;
    let what = "a directory over a file";
    let err = must_fail(what, r, &["etc/passwd", "not a directory"]);
    invalid_argument_from_the_sandbox(&ctx, what, &err);
    assert_survives(&pod, &survivor).await;
});

cri_tests!(seccomp_profiles_missing_unparsable_or_refused, |ctx| {
    let (pod, survivor) = pod_with_survivor(&ctx, "badseccomp").await;
    let dir = ctx.daemon.dir().join("profiles").join(ctx.unique("p"));
    std::fs::create_dir_all(&dir).unwrap();
    use security_profile::ProfileType;
    let with_profile = |name: &str, path: &Path| {
        let mut c = sleeper(name);
        security(&mut c).seccomp = seccomp(ProfileType::Localhost, &path.to_string_lossy());
        c
    };
    let missing = dir.join("missing.json");
    let r = create_and_start(&pod, with_profile("missing", &missing)).await;
    must_fail("a missing profile", r, &["missing.json"]);

    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, "{ this is not json").unwrap();
    let r = create_and_start(&pod, with_profile("garbage", &garbage)).await;
    must_fail("an unparsable profile", r, &["seccomp"]);

    // Valid JSON that containerd passes on, with an action no runtime knows: the runtime
    // refuses it at start, through the shim.
    let bogus = dir.join("bogus.json");
    std::fs::write(
        &bogus,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_BOGUS"}]}"#,
    )
    .unwrap();
    let r = create_and_start(&pod, with_profile("bogus", &bogus)).await;
    let err = must_fail("an unknown seccomp action", r, &[]);
    assert!(
        err.contains("StartContainer")
            && (err.contains("SCMP_ACT_BOGUS") || err.to_lowercase().contains("action")),
        "the error does not name the action: {err}"
    );
    assert_survives(&pod, &survivor).await;
});

cri_tests!(sysctls_the_kernel_refuses, |ctx| {
    // A value the kernel refuses, a sysctl it lacks, and one outside the pod's namespaces:
    // the runtime refuses the pod sandbox, naming the sysctl and why (the sandbox shim:
    // libcontainer said "failed to set sysctl" or "open subpath in procfs failed").
    for (key, value, cause) in [
        (
            "net.ipv4.ip_local_port_range",
            "not numbers",
            "invalid argument",
        ),
        ("vm.swappiness", "10", "namespace"),
        ("net.ipv4.no_such_sysctl", "1", "no such file"),
    ] {
        let mut config = ctx.pod_config("badsysctl");
        config
            .linux
            .as_mut()
            .unwrap()
            .sysctls
            .insert(key.into(), value.into());
        let result = ctx
            .try_run_pod(config)
            .await
            .map(|pod| pod.id.clone())
            // runc names a sysctl by its /proc/sys path.
            .map_err(|e| {
                let m = e.message();
                format!("({:?}) {m} [{}]", e.code(), m.replace('/', "."))
            });
        let what = format!("sysctl {key}={value:?}");
        let err = must_fail(&what, result, &[key, cause]);
        if cause != "namespace" {
            invalid_argument_from_the_sandbox(&ctx, &what, err.split(" [").next().unwrap());
        }
    }
    // The handler still runs pods.
    let pod = ctx.run_pod(ctx.pod_config("after")).await;
    let c = pod.run(sleeper("app")).await;
    pod.exec_ok(&c, &["true"]).await;
});

cri_tests!(a_user_not_in_the_image, |ctx| {
    let (pod, survivor) = pod_with_survivor(&ctx, "nouser").await;
    let mut config = sleeper("nobody-here");
    security(&mut config).run_as_username = "no-such-user".into();
    let r = create_and_start(&pod, config).await;
    // containerd resolves the name (in the image's /etc/passwd) and says "no users found".
    let err = must_fail("an unknown user name", r, &["CreateContainer"]);
    assert!(
        err.contains("no-such-user") || err.contains("no users found"),
        "{err}"
    );
    // A group without a user is refused by CRI.
    let mut config = sleeper("group-only");
    security(&mut config).run_as_group = Some(Int64Value { value: 1000 });
    let r = create_and_start(&pod, config).await;
    must_fail("a group without a user", r, &["group"]);
    // A numeric user the image does not list runs, as that uid (Kubernetes' rule).
    let mut config = sleeper("uid-4242");
    security(&mut config).run_as_user = Some(Int64Value { value: 4242 });
    let id = create_and_start(&pod, config).await.expect("a numeric uid");
    assert_eq!(pod.exec_ok(&id, &["id", "-u"]).await.trim(), "4242");
    assert_survives(&pod, &survivor).await;
});

cri_tests!(an_unknown_runtime_handler, |ctx| {
    let config = ctx.pod_config("nohandler");
    let err = ctx
        .cri
        .run_pod_sandbox(config, "no-such-handler")
        .await
        .expect_err("a pod on an unknown handler");
    assert!(err.message().contains("no-such-handler"), "{err:?}");
    // The handler under test is unaffected.
    let pod = ctx.run_pod(ctx.pod_config("known")).await;
    pod.run(sleeper("app")).await;
});
