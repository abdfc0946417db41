//! CRI: bad input on every runtime handler: a CRI error that names the cause, and the pod's
//! other containers keep running. Also mount propagation (private, rslave, rshared), whose
//! failure modes are the runtimes' own.
use std::path::Path;
use std::time::Duration;

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

/// Creates and starts `config`; the CRI error of whichever step failed.
async fn create_and_start(pod: &Pod, config: ContainerConfig) -> Result<String, String> {
    let id = pod
        .create(config)
        .await
        .map_err(|e| format!("CreateContainer: {}", e.message()))?;
    pod.cri
        .start_container(&id)
        .await
        .map_err(|e| format!("StartContainer: {}", e.message()))?;
    Ok(id)
}

/// Like [`must_fail`], but a sandbox-shim error that says `vague` without naming the cause
/// is recorded as a known failure (libcontainer's error chain loses the cause: reported).
fn must_fail_or_vague(
    ctx: &Ctx,
    what: &str,
    result: Result<String, String>,
    names: &[&str],
    vague: &[&str],
) -> String {
    let err = match result {
        Ok(id) => panic!("{what} succeeded (container {id})"),
        Err(e) => e,
    };
    if ctx.handler == Handler::Sandbox
        && vague.iter().any(|v| err.contains(v))
        && !names.iter().all(|n| err.contains(n))
    {
        ctx.known_failure(&format!("{what}: the error does not name the cause"), &err);
        return err;
    }
    must_fail(what, Err(err), names)
}

fn must_fail(what: &str, result: Result<String, String>, names: &[&str]) -> String {
    let err = match result {
        Ok(id) => panic!("{what} succeeded (container {id})"),
        Err(e) => e,
    };
    for n in names {
        assert!(
            err.contains(n),
            "{what}: the error does not name {n:?}: {err}"
        );
    }
    err
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

    // A file over an image directory: the runtime refuses the mount (through the shim).
    let mut config = sleeper("file-over-dir");
    config.mounts = vec![mount(&base.join("file"), "/srv/dir")];
    let r = create_and_start(&pod, config).await;
    let err = must_fail_or_vague(
        &ctx,
        "a file over a directory",
        r,
        &["srv/dir"],
        &["failed to prepare rootfs"],
    );
    assert!(err.contains("StartContainer"), "{err}");
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
    // A value the kernel refuses, and a sysctl outside the pod's namespaces: the runtime
    // refuses the pod sandbox, naming the sysctl.
    for (key, value) in [
        ("net.ipv4.ip_local_port_range", "not numbers"),
        ("vm.swappiness", "10"),
        ("net.ipv4.no_such_sysctl", "1"),
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
            // runc names a missing sysctl by its /proc/sys path.
            .map_err(|e| format!("{} [{}]", e.message(), e.message().replace('/', ".")));
        let names = [key.to_string()];
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        must_fail_or_vague(
            &ctx,
            &format!("sysctl {key}={value:?}"),
            result,
            &names,
            &["failed to set sysctl", "open subpath in procfs failed"],
        );
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

/// Runs `args` in containerd's mount namespace (where the pods' host paths are).
fn in_daemon_ns(ctx: &Ctx, args: &[&str]) -> String {
    let out = ctx.daemon.nsenter(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

cri_tests!(mount_propagation_private_rslave_rshared, |ctx| {
    let mut pod_config = ctx.pod_config("prop");
    pod_security(&mut pod_config).privileged = true;
    let pod = ctx.run_pod(pod_config).await;
    // Host directories on the mount that is shared in containerd's mount namespace.
    let base = ctx.daemon.shared_mount_dir().join(ctx.unique("prop"));
    let base_str = base.to_string_lossy().into_owned();
    for sub in ["private/sub", "rslave/sub", "rshared"] {
        in_daemon_ns(&ctx, &["mkdir", "-p", &format!("{base_str}/{sub}")]);
    }
    // Each mode's outcome: Ok, or what went wrong.
    let mut outcomes: Vec<(&str, Result<(), String>)> = Vec::new();
    for (name, propagation) in [
        ("private", MountPropagation::PropagationPrivate),
        ("rslave", MountPropagation::PropagationHostToContainer),
        ("rshared", MountPropagation::PropagationBidirectional),
    ] {
        let mut config = sleeper(name);
        security(&mut config).privileged = true;
        config.mounts = vec![Mount {
            host_path: format!("{base_str}/{name}"),
            container_path: "/data".into(),
            propagation: propagation as i32,
            ..Default::default()
        }];
        let id = match create_and_start(&pod, config).await {
            Ok(id) => id,
            Err(e) => {
                outcomes.push((name, Err(e)));
                continue;
            }
        };
        let outcome = if name == "rshared" {
            // A mount made in the container appears on the host.
            pod.exec_ok(&id, &["mount", "-t", "tmpfs", "tmpfs", "/data"])
                .await;
            let host = in_daemon_ns(&ctx, &["cat", "/proc/self/mountinfo"]);
            pod.exec_ok(&id, &["umount", "/data"]).await;
            if host.contains(&format!(" {base_str}/rshared ")) {
                Ok(())
            } else {
                Err("a mount made in the container did not reach the host".to_string())
            }
        } else {
            // A mount made on the host after the start reaches the container with rslave
            // only.
            let sub = format!("{base_str}/{name}/sub");
            in_daemon_ns(&ctx, &["mount", "-t", "tmpfs", "tmpfs", &sub]);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let seen = pod.exec_ok(&id, &["cat", "/proc/self/mountinfo"]).await;
            in_daemon_ns(&ctx, &["umount", &sub]);
            match (seen.contains(" /data/sub "), name == "rslave") {
                (true, false) => Err("a mount made on the host reached the container".into()),
                (false, true) => Err("a mount made on the host did not reach the container".into()),
                _ => Ok(()),
            }
        };
        outcomes.push((name, outcome));
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(n, o)| o.as_ref().err().map(|e| format!("{n}: {e}")))
        .collect();
    if failed.is_empty() {
        return;
    }
    // The sandbox shim's rslave and rshared volumes are being fixed elsewhere: recorded, as
    // long as private works and nothing else fails.
    let only_slave_shared = outcomes.iter().all(|(n, o)| o.is_ok() || *n != "private");
    if ctx.handler == Handler::Sandbox && only_slave_shared {
        ctx.known_failure("rslave/rshared volumes", &failed.join("; "));
        return;
    }
    // Found by this suite (reported, not fixed here): the sandbox shim's private volume
    // receives mounts made on the host after the start, as rslave would.
    let private_leaks = outcomes.iter().all(|(n, o)| match *n {
        "private" => o
            .as_ref()
            .is_err_and(|e| e.contains("reached the container")),
        _ => true,
    });
    if ctx.handler == Handler::Sandbox && private_leaks {
        ctx.known_failure("a private volume is not private", &failed.join("; "));
        return;
    }
    panic!(
        "mount propagation on {}: {}",
        ctx.handler.name(),
        failed.join("; ")
    );
});
