//! Runtime options, and bad requests: each gets a clear error and leaves nothing behind.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use containerd_client::tonic::Code;
use integration::client::{assert_code, options_any, runtime_config_any, Options};
use integration::spec;
use integration::{shim_tests, Binary, Shim};

/// A runtime binary that appends its arguments to a log, one line per call, then runs `real`.
/// Returns the script and the log.
fn recording_runtime(dir: &Path, real: &str) -> (PathBuf, PathBuf) {
    let script = dir.join("recording-runtime");
    let log = dir.join("runtime-calls.log");
    let text = format!(
        "#!/bin/sh\necho \"$*\" >> '{}'\nexec {real} \"$@\"\n",
        log.display()
    );
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

shim_tests!(root_option_moves_runtime_state, |ctx| {
    let c = &ctx.client;
    let root = ctx.containerd.dir().join("runtime-root");
    let opts = Options {
        root: root.to_string_lossy().into_owned(),
        no_new_keyring: true,
        no_pivot_root: true,
        ..c.options()
    };
    c.create_container_with(
        "r",
        &spec::spec(&["sleep", "1000"]),
        Some(options_any(&opts)),
    )
    .await
    .unwrap();
    // The task carries the same options, as containerd's clients send them.
    c.create_task_with("r", None, false, Some(options_any(&opts)))
        .await
        .unwrap();
    c.start("r", "").await.unwrap();
    assert!(
        root.join(&ctx.containerd.namespace).join("r").exists(),
        "state under the Root option"
    );
    c.remove("r").await;
    assert!(!root.join(&ctx.containerd.namespace).join("r").exists());
});

// What containerd's CRI sends for every runtime type but io.containerd.runc.v2: a TOML config
// by path (ConfigPath) or inline (ConfigBody, 1.7+), not runc's Options.
shim_tests!(cri_runtime_config_sets_binary_and_root, |ctx| {
    let c = &ctx.client;
    if c.shim == Shim::GoRunc {
        eprintln!("skipped: the Go shim takes runc's Options only");
        return;
    }
    let dir = ctx.containerd.dir();
    let ns = &ctx.containerd.namespace;
    let (runtime, calls) = recording_runtime(dir, c.binary.name());
    let root = dir.join("config-root");
    // ShimCgroup is read when the shim starts (from its stdin), before any Create.
    let shim_cgroup = if ctx.containerd.cgroup_v2_controllers().is_some() {
        integration::daemon::host_cgroup_v2_root().join(format!("{ns}/cfg-shim"))
    } else {
        PathBuf::from(format!("/sys/fs/cgroup/memory/{ns}/cfg-shim"))
    };
    std::fs::create_dir_all(&shim_cgroup).unwrap();
    let config = dir.join("runc-rs.toml");
    std::fs::write(
        &config,
        format!(
            "BinaryName = {:?}\nRoot = {:?}\nShimCgroup = \"/{ns}/cfg-shim\"\nNoNewKeyring = true\n",
            runtime.to_string_lossy(),
            root.to_string_lossy()
        ),
    )
    .unwrap();
    let by_path = runtime_config_any(&config.to_string_lossy(), b"");
    c.create_container_with("cfg", &spec::sh("echo configured"), Some(by_path))
        .await
        .unwrap();
    let mut io = c.io("cfg", false);
    // As CRI creates tasks: no task options, so containerd passes the container's on.
    c.create_task_with("cfg", Some(&io), false, None)
        .await
        .unwrap();
    assert!(
        root.join(ns).join("cfg").exists(),
        "state under the config's Root"
    );
    let shim = ctx.containerd.shim_pid_of("cfg").unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{shim}/cgroup")).unwrap();
    assert!(cgroups.contains(&format!("/{ns}/cfg-shim")), "{cgroups}");
    c.start("cfg", "").await.unwrap();
    assert_eq!(c.wait("cfg", "").await.unwrap(), 0);
    assert_eq!(io.stdout_text(), "configured\n");
    c.delete_task("cfg").await.unwrap();
    assert!(!root.join(ns).join("cfg").exists());
    c.delete_container("cfg").await.unwrap();
    if c.shim == Shim::RuncRs {
        // The shim ran the configured binary for every step.
        let calls = std::fs::read_to_string(&calls).unwrap_or_default();
        for action in ["create", "start", "delete"] {
            assert!(
                calls.lines().any(|l| l.split(' ').any(|w| w == action)),
                "no {action} through the configured BinaryName; calls:\n{calls}"
            );
        }
    }

    // ctr sends the same message for any runtime type but io.containerd.runc.v2. (With runc
    // only: ctr 1.7 and 2 write an OCI spec version that crun 1.8 refuses.)
    if c.binary == Binary::Runc {
        let config_path = config.to_string_lossy();
        let out = ctx.ctr_run(
            "ctrcfg",
            &["--runtime-config-path", &config_path],
            &["echo", "via-ctr"],
        );
        assert_eq!(out, "via-ctr\n");
        if c.shim == Shim::RuncRs {
            let calls = std::fs::read_to_string(&calls).unwrap_or_default();
            assert!(
                calls.contains("ctrcfg"),
                "ctr's container not run by BinaryName"
            );
        }
    }

    // Inline, as containerd 1.7+ passes the handler's options table when it has no ConfigPath.
    let root2 = dir.join("body-root");
    let body = format!("Root = {:?}\n", root2.to_string_lossy());
    c.create_container_with(
        "body",
        &spec::spec(&["sleep", "1000"]),
        Some(runtime_config_any("", body.as_bytes())),
    )
    .await
    .unwrap();
    c.create_task_with("body", None, false, None).await.unwrap();
    assert!(
        root2.join(ns).join("body").exists(),
        "state under the body's Root"
    );
    c.remove("body").await;

    // A config that cannot be used names the file and what is wrong with it.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "BinnaryName = \"crun\"\n").unwrap();
    for (id, path, needle) in [
        (
            "missing",
            "/nonexistent/runc-rs.toml",
            "/nonexistent/runc-rs.toml",
        ),
        ("badkey", &*bad.to_string_lossy(), "BinnaryName"),
    ] {
        let any = runtime_config_any(path, b"");
        c.create_container_with(id, &spec::spec(&["true"]), Some(any))
            .await
            .unwrap();
        let status = assert_code(
            c.create_task_with(id, None, false, None).await,
            Code::InvalidArgument,
            needle,
        );
        assert!(status.message().contains(path), "{}", status.message());
        c.delete_container(id).await.unwrap();
    }
});

shim_tests!(io_uid_and_gid_let_a_non_root_process_write, |ctx| {
    let c = &ctx.client;
    let opts = Options {
        io_uid: 4242,
        io_gid: 4343,
        ..c.options()
    };
    let mut s = spec::sh("id -u; echo to-stderr >&2");
    s["process"]["user"] = serde_json::json!({ "uid": 4242, "gid": 4343 });
    c.create_container_with("io", &s, Some(options_any(&opts)))
        .await
        .unwrap();
    let mut io = c.io("io", false);
    c.create_task_with("io", Some(&io), false, Some(options_any(&opts)))
        .await
        .unwrap();
    c.start("io", "").await.unwrap();
    assert_eq!(c.wait("io", "").await.unwrap(), 0);
    assert_eq!(io.stdout_text(), "4242\n");
    assert_eq!(io.stderr.take().unwrap().text(), "to-stderr\n");
    c.delete_task("io").await.unwrap();
});

shim_tests!(bad_requests_get_clear_errors_and_leave_nothing, |ctx| {
    let c = &ctx.client;
    // A healthy container in the same group: the shim must keep serving it.
    let group = |s| spec::annotate(s, "io.containerd.runc.v2.group", "bad");
    c.create_container("healthy", &group(spec::spec(&["sleep", "1000"])))
        .await
        .unwrap();
    c.create_task("healthy", None, false).await.unwrap();
    c.start("healthy", "").await.unwrap();

    // Missing rootfs.
    let mut s = group(spec::spec(&["true"]));
    s["root"]["path"] = serde_json::json!("/nonexistent/rootfs");
    c.create_container("norootfs", &s).await.unwrap();
    assert_code(
        c.create_task("norootfs", None, false).await,
        Code::InvalidArgument,
        "rootfs",
    );

    // A config that is not a valid OCI process.
    let mut s = group(spec::spec(&["true"]));
    s["process"]["args"] = serde_json::json!([]);
    c.create_container("noargs", &s).await.unwrap();
    assert_code(
        c.create_task("noargs", None, false).await,
        Code::InvalidArgument,
        "args",
    );

    // A program that does not exist: the runtime's own words reach the caller.
    c.create_container("noprog", &group(spec::spec(&["/no/such/program"])))
        .await
        .unwrap();
    let err = c.create_task("noprog", None, false).await;
    let status = err.expect_err("create should fail");
    assert!(
        status.message().contains("/no/such/program"),
        "{}",
        status.message()
    );

    // A runtime binary that does not exist.
    let opts = Options {
        binary_name: "/nonexistent/runc".into(),
        ..c.options()
    };
    c.create_container_with(
        "nobin",
        &group(spec::spec(&["true"])),
        Some(options_any(&opts)),
    )
    .await
    .unwrap();
    let r = c
        .create_task_with("nobin", None, false, Some(options_any(&opts)))
        .await;
    match c.shim {
        integration::Shim::RuncRs => {
            assert_code(r, Code::FailedPrecondition, "/nonexistent/runc");
        }
        // No runtime binary is executed: BinaryName means nothing to it.
        integration::Shim::Sandbox => {
            r.unwrap();
            c.remove("nobin").await;
        }
        integration::Shim::GoRunc => assert!(r.is_err()),
    }

    // Unknown exec, signal out of range, resize of an unknown process, deleted container.
    assert_code(c.start("healthy", "ghost").await, Code::NotFound, "ghost");
    assert_code(
        c.kill("healthy", "", 99999, false).await,
        Code::InvalidArgument,
        "99999",
    );
    assert_code(
        c.resize("healthy", "ghost", 80, 24).await,
        Code::NotFound,
        "ghost",
    );
    // A running task cannot be deleted without being stopped.
    assert_code(c.delete_task("healthy").await, Code::FailedPrecondition, "");

    c.create_container("gone", &group(spec::spec(&["true"])))
        .await
        .unwrap();
    c.create_task("gone", None, false).await.unwrap();
    c.start("gone", "").await.unwrap();
    c.wait("gone", "").await.unwrap();
    c.delete_task("gone").await.unwrap();
    assert_code(c.delete_task("gone").await, Code::NotFound, "");
    assert_code(c.start("gone", "").await, Code::NotFound, "");

    // The healthy container is still served, by the one shim.
    assert_eq!(c.status("healthy", "").await.unwrap(), "RUNNING");
    let (status, out) = c.exec_run("healthy", "still", &["echo", "alive"]).await;
    assert_eq!((status, out.as_str()), (0, "alive\n"));
    assert_eq!(ctx.containerd.shim_pids().len(), 1);

    // Nothing of the failed creates is left: no runtime state, no rootfs mounts.
    let state = std::path::Path::new(c.shim.default_state_root()).join(&ctx.containerd.namespace);
    let left: Vec<String> = std::fs::read_dir(&state)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(left, ["healthy"], "runtime state left behind");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for id in ["norootfs", "noargs", "noprog", "nobin"] {
        assert!(
            !mounts.contains(&format!("/{}/{id}/", ctx.containerd.namespace)),
            "{id} mount left"
        );
    }
    for id in ["norootfs", "noargs", "noprog", "nobin", "gone"] {
        let _ = c.delete_container(id).await;
    }
    c.remove("healthy").await;
});

shim_tests!(legacy_create_options_are_accepted, |ctx| {
    let c = &ctx.client;
    // The legacy type carries no BinaryName; only run it where runc is the binary.
    if c.binary != integration::Binary::Runc {
        return;
    }
    // containerd 2 no longer knows the legacy type and refuses it before any shim sees it.
    if ctx.containerd.major_version() >= 2 {
        eprintln!("skipped: containerd 2 dropped containerd.linux.runc.CreateOptions");
        return;
    }
    let legacy = protos::runctypes::CreateOptions {
        no_new_keyring: true,
        ..Default::default()
    };
    use protobuf::Message;
    let any = prost_types::Any {
        type_url: protos::type_urls::LEGACY_CREATE_OPTIONS.into(),
        value: legacy.write_to_bytes().unwrap(),
    };
    // containerd refuses CreateOptions for `io.containerd.runc.*` types, so the shim is
    // reached here under a runtime type outside that prefix.
    let runtime = integration::daemon::LEGACY_ALIAS_RUNTIME;
    c.create_container_as("legacy", &spec::sh("exit 5"), runtime, Some(any.clone()))
        .await
        .unwrap();
    c.create_task_with("legacy", None, false, Some(any))
        .await
        .unwrap();
    c.start("legacy", "").await.unwrap();
    assert_eq!(c.wait("legacy", "").await.unwrap(), 5);
    c.delete_task("legacy").await.unwrap();
});

shim_tests!(user_namespace_root_owns_its_stdio, |ctx| {
    let c = &ctx.client;
    let mut s = spec::sh("stat -L -c '%u %g' /proc/self/fd/1; echo via-dev-stdout > /dev/stdout");
    let map = serde_json::json!([{ "containerID": 0, "hostID": 100000, "size": 65536 }]);
    s["linux"]["uidMappings"] = map.clone();
    s["linux"]["gidMappings"] = map;
    s["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({ "type": "user" }));
    c.create_container("userns", &s).await.unwrap();
    let mut io = c.io("userns", false);
    c.create_task("userns", Some(&io), false).await.unwrap();
    c.start("userns", "").await.unwrap();
    let status = c.wait("userns", "").await.unwrap();
    let err = io.stderr.take().unwrap().text();
    assert_eq!(status, 0, "stderr: {err}");
    // Inside the namespace the pipes belong to root, who can reopen them.
    assert_eq!(io.stdout_text(), "0 0\nvia-dev-stdout\n");
    c.delete_task("userns").await.unwrap();
});

/// A runtime binary that, asked to `kill` without `--all`, first SIGKILLs the container's init
/// itself and waits until the shim has reaped it, then runs `real`: the runtime then finds the
/// init exited while the shim, still inside that Kill, has not handled the exit. That is the
/// race StopPodSandbox loses now and then.
fn racing_runtime(dir: &Path, real: &str) -> PathBuf {
    let script = dir.join("racing-runtime");
    let text = format!(
        r#"#!/bin/sh
root= prev= kill= all=
for a in "$@"; do
  [ "$prev" = --root ] && root=$a
  [ "$a" = kill ] && kill=1
  [ "$a" = --all ] && all=1
  prev=$a
done
if [ -n "$kill" ] && [ -z "$all" ]; then
  eval "id=\${{$(($# - 1))}}"
  pid=$({real} --root "$root" state "$id" | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' | head -n 1)
  kill -9 "$pid"
  i=0
  while [ -e "/proc/$pid" ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i + 1)); done
fi
exec {real} "$@"
"#
    );
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

shim_tests!(@runc kill_of_an_init_that_just_exited_is_not_found, |ctx| {
    let c = &ctx.client;
    let runtime = racing_runtime(ctx.containerd.dir(), c.binary.name());
    let opts = Options {
        binary_name: runtime.to_string_lossy().into_owned(),
        ..c.options()
    };
    let sleeper = spec::spec(&["sleep", "1000"]);
    c.create_container_with("racy", &sleeper, Some(options_any(&opts)))
        .await
        .unwrap();
    c.create_task_with("racy", None, false, Some(options_any(&opts)))
        .await
        .unwrap();
    c.start("racy", "").await.unwrap();
    // runc: "container not running"; crun: "kill container: No such process". containerd
    // ignores NotFound when it stops a task; anything else fails the stop.
    let status = assert_code(
        c.kill("racy", "", libc::SIGKILL as u32, false).await,
        Code::NotFound,
        "",
    );
    eprintln!("kill of the exited init: {}", status.message());
    assert_eq!(c.wait("racy", "").await.unwrap(), 128 + 9);
    c.delete_task("racy").await.unwrap();
    c.delete_container("racy").await.unwrap();
}, {});
