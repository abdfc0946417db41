//! The shim process itself: version, grouping, Shutdown, clean-up after a shim dies.
use std::time::Duration;

use integration::runtime::shim_bin_dir;
use integration::shim_tests;
use integration::spec;

#[test]
fn version_flag_prints_a_version() {
    let bin = shim_bin_dir().join("containerd-shim-runc-rs-v2");
    let out = std::process::Command::new(&bin)
        .arg("-v")
        .output()
        .expect("run shim -v");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Version:"), "{text}");
}

#[test]
fn unknown_flag_is_refused() {
    let bin = shim_bin_dir().join("containerd-shim-runc-rs-v2");
    let out = std::process::Command::new(&bin)
        .arg("-bogus")
        .output()
        .expect("run shim");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-bogus"));
}

/// Runs our shim binary with `args`, `input` on stdin; returns its output.
fn run_shim(
    shim: integration::Shim,
    args: &[&str],
    input: &[u8],
    cwd: Option<&std::path::Path>,
) -> std::process::Output {
    use std::io::Write;
    let mut cmd = std::process::Command::new(shim_bin_dir().join(shim.binary_name()));
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().expect("run the shim binary");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// A shim's fork that has not exec'd yet carries the shim's command line (libcontainer's
/// intermediate and init processes do for 5-20 ms after Start), and so does a `start`: neither
/// is a serving shim. A fake shim (sh named as one) with a forked subshell, and a fake `start`,
/// make both cases deterministic.
#[test]
fn forks_and_start_of_a_shim_are_not_serving_shims() {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let address = format!("/tmp/fake-{}/c.sock", std::process::id());
    let fake = |action: &[&str]| {
        let mut sh = std::process::Command::new("/bin/sh");
        sh.arg0("containerd-shim-fake-v2")
            .args([
                "-s",
                "--",
                "-namespace",
                "ns",
                "-id",
                "x",
                "-address",
                &address,
            ])
            .args(action)
            .stdin(std::process::Stdio::piped());
        let mut child = sh.spawn().expect("run sh");
        // `( ... )` forks a subshell that keeps sh's argv; it waits for the end of stdin
        // (closed below), so both exit on their own and sh reaps the subshell.
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"exec 9<&0; (read x <&9; :) & wait\n")
            .unwrap();
        (child, stdin)
    };
    let fakes = [fake(&[]), fake(&["start"])];
    let mut all = Vec::new();
    for _ in 0..250 {
        all = integration::daemon::processes_with_arg(&address);
        if all.len() == 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let serving = integration::daemon::serving_shims(&address);
    let server = fakes[0].0.id();
    for (mut child, stdin) in fakes {
        drop(stdin);
        let _ = child.wait();
    }
    assert_eq!(all.len(), 4, "two fakes and their subshells: {all:?}");
    let pids: Vec<u32> = serving.iter().map(|(pid, _)| *pid).collect();
    assert_eq!(pids, [server], "{serving:?}");
}

async fn gone(pid: u32) -> bool {
    for _ in 0..100 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn socket_of(ctx: &integration::runtime::Ctx, id: &str) -> std::path::PathBuf {
    ctx.containerd.shim_socket(id)
}

async fn grouped_by(ctx: integration::runtime::Ctx, annotation: &str) {
    let c = &ctx.client;
    let mut s = spec::annotate(spec::spec(&["sleep", "1000"]), annotation, "group-a");
    // A CPU quota (1 ms per 100 ms), used up by each init before its exec, keeps it for a while
    // after Start a fork of the shim with the shim's command line (the sandbox shim's inits are
    // its own forks), which the count below once took for a second shim.
    if !ctx.lacks_controller("cpu") {
        s["linux"]["resources"]["cpu"] = serde_json::json!({ "quota": 1000, "period": 100000 });
    }
    for id in ["g1", "g2"] {
        c.create_container(id, &s).await.unwrap();
        c.create_task(id, None, false).await.unwrap();
        c.start(id, "").await.unwrap();
    }
    let shims = ctx.containerd.shim_pids();
    assert_eq!(shims.len(), 1, "both containers share one shim: {shims:?}");
    let socket = socket_of(&ctx, "g1");
    assert_eq!(socket, socket_of(&ctx, "g2"));
    assert!(socket.exists());
    // The shim stays while one container is left ...
    c.remove("g1").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ctx.containerd.shim_pids(), shims);
    // ... and exits, removing its socket, with the last.
    c.remove("g2").await;
    assert!(
        gone(shims[0]).await,
        "shim should exit after its last container"
    );
    assert!(!socket.exists(), "socket {} left behind", socket.display());
}

shim_tests!(group_annotation_shares_a_shim, |ctx| {
    grouped_by(ctx, "io.containerd.runc.v2.group").await;
});

shim_tests!(sandbox_id_shares_a_shim, |ctx| {
    grouped_by(ctx, "io.kubernetes.cri.sandbox-id").await;
});

shim_tests!(separate_containers_get_separate_shims, |ctx| {
    let c = &ctx.client;
    let _a = c.run("a", &spec::spec(&["sleep", "1000"])).await;
    let _b = c.run("b", &spec::spec(&["sleep", "1000"])).await;
    assert_eq!(ctx.containerd.shim_pids().len(), 2);
    let mode = std::fs::metadata(socket_of(&ctx, "a")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        mode.permissions().mode() & 0o077,
        0,
        "socket is for root only"
    );
    c.remove("a").await;
    c.remove("b").await;
});

shim_tests!(dead_shim_is_cleaned_up_by_delete, |ctx| {
    let c = &ctx.client;
    let _io = c.run("doomed", &spec::spec(&["sleep", "1000"])).await;
    let shim = ctx.containerd.shim_pids()[0];
    let socket = socket_of(&ctx, "doomed");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(gone(shim).await);
    // containerd notices, runs `shim delete`, and reports the task killed.
    let status = c.wait("doomed", "").await;
    if let Ok(status) = status {
        assert_eq!(status, 137);
    }
    let _ = c.delete_task("doomed").await;
    c.delete_container("doomed").await.unwrap();
    let runtime_state = std::path::Path::new(integration::daemon::DEFAULT_RUNTIME_ROOT)
        .join(&ctx.containerd.namespace)
        .join("doomed");
    for _ in 0..50 {
        if !runtime_state.exists() && !socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!runtime_state.exists(), "runtime state left behind");
    assert!(!socket.exists(), "socket left behind");
    assert!(
        !ctx.containerd
            .log()
            .contains("failed to clean up after shim disconnected")
            || ctx
                .containerd
                .log()
                .contains("cleaning up after shim disconnected"),
    );
});

shim_tests!(shim_oom_score_is_containerds_plus_one, |ctx| {
    let c = &ctx.client;
    let _io = c.run("oom", &spec::spec(&["sleep", "1000"])).await;
    let shim = ctx.containerd.shim_pids()[0];
    let read = |pid: u32| -> i32 {
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let containerd = ctx.containerd.pid();
    assert_eq!(read(shim), (read(containerd) + 1).min(1000));
    c.remove("oom").await;
});

shim_tests!(serving_shim_is_detached_and_named_as_a_server, |ctx| {
    let c = &ctx.client;
    let _io = c.run("named", &spec::spec(&["sleep", "1000"])).await;
    let shim = ctx.containerd.shim_pid_of("named").unwrap();
    // `start` forks the server: ps must show a server's command line, not `start`'s.
    let cmdline = std::fs::read(format!("/proc/{shim}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(args[0].ends_with(ctx.client.shim.binary_name()), "{args:?}");
    let id_at = args.iter().position(|a| a == "-id").expect("-id");
    assert_eq!(args[id_at + 1], "named", "{args:?}");
    assert!(!args.iter().any(|a| a == "start"), "{args:?}");
    // Its own process group, and none of containerd's pipes.
    let stat = std::fs::read_to_string(format!("/proc/{shim}/stat")).unwrap();
    let pgrp: u32 = stat
        .rsplit(") ")
        .next()
        .unwrap()
        .split(' ')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(pgrp, shim);
    for fd in 0..=2 {
        let target = std::fs::read_link(format!("/proc/{shim}/fd/{fd}")).unwrap();
        assert_eq!(target, std::path::Path::new("/dev/null"), "fd {fd}");
    }
    c.remove("named").await;
});

shim_tests!(shim_cgroup_option_places_the_shim, |ctx| {
    let c = &ctx.client;
    let ns = ctx.containerd.namespace.clone();
    // The shim joins the cgroup in every hierarchy containerd sees; it must exist in one.
    let dir = if ctx.containerd.cgroup_v2_controllers().is_some() {
        integration::daemon::host_cgroup_v2_root().join(format!("{ns}/shim"))
    } else {
        std::path::PathBuf::from(format!("/sys/fs/cgroup/memory/{ns}/shim"))
    };
    std::fs::create_dir_all(&dir).unwrap();
    let opts = integration::client::Options {
        shim_cgroup: format!("/{ns}/shim"),
        ..c.options()
    };
    let any = integration::client::options_any(&opts);
    c.create_container_with("placed", &spec::spec(&["sleep", "1000"]), Some(any.clone()))
        .await
        .unwrap();
    c.create_task_with("placed", None, false, Some(any))
        .await
        .unwrap();
    c.start("placed", "").await.unwrap();
    let shim = ctx.containerd.shim_pid_of("placed").unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{shim}/cgroup")).unwrap();
    assert!(cgroups.contains(&format!("/{ns}/shim")), "{cgroups}");
    c.remove("placed").await;

    // A cgroup that does not exist: the shim refuses to start, and says why.
    let bad = integration::client::Options {
        shim_cgroup: format!("/{ns}/missing"),
        ..c.options()
    };
    let any = integration::client::options_any(&bad);
    c.create_container_with("misplaced", &spec::spec(&["true"]), Some(any.clone()))
        .await
        .unwrap();
    let err = c
        .create_task_with("misplaced", None, false, Some(any))
        .await;
    let status = err.expect_err("start should fail");
    assert!(status.message().contains("missing"), "{}", status.message());
    assert!(
        ctx.containerd.shim_pids().is_empty(),
        "no shim left running"
    );
});

shim_tests!(info_reports_runtime_and_features, |ctx| {
    use protobuf::Message;
    // The runtime options go in on stdin, as containerd 2 sends them.
    let opts = integration::client::options_any(&ctx.client.options());
    let any = protobuf::well_known_types::any::Any {
        type_url: opts.type_url.clone(),
        value: opts.value.clone(),
        ..Default::default()
    };
    let out = run_shim(ctx.shim, &["-info"], &any.write_to_bytes().unwrap(), None);
    assert!(out.status.success());
    let info = protos::types::introspection::RuntimeInfo::parse_from_bytes(&out.stdout).unwrap();
    assert_eq!(info.name, ctx.shim.runtime_type());
    assert_eq!(info.options.type_url, "containerd.runc.v1.Options");
    // crun 1.8 has no `features` command; runc and libcontainer (in-process) describe themselves.
    if ctx.binary == integration::Binary::Runc {
        let features: serde_json::Value = serde_json::from_slice(&info.features.value).unwrap();
        assert!(features["ociVersionMin"].is_string(), "{features}");
    }
    // containerd 2 asks the shim itself when a client inspects the runtime.
    if ctx.containerd.major_version() >= 2 {
        let out = ctx.containerd.ctr(&[
            "plugins",
            "inspect-runtime",
            "--runtime",
            ctx.shim.runtime_type(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(ctx.shim.runtime_type()), "{text}");
    }
});

/// containerd 2.3's start protocol, driven by hand: BootstrapParams in, BootstrapResult out,
/// and the shim it started answers on the address it gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_protocol_of_containerd_2_3() {
    use protobuf::Message;
    use protos::bootstrap_api::{BootstrapParams, BootstrapResult};
    if !integration::is_root() {
        return;
    }
    let containerd = integration::Containerd::start().await;
    let bundle = tempfile::tempdir().unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let params = BootstrapParams {
        instance_id: "boot23".into(),
        namespace: containerd.namespace.clone(),
        containerd_grpc_address: format!("unix://{}", containerd.socket().display()),
        containerd_ttrpc_address: format!("unix://{}.ttrpc", containerd.socket().display()),
        socket_dir: Some(sockets.path().to_string_lossy().into_owned()),
        ..Default::default()
    };
    let out = run_shim(
        integration::Shim::RuncRs,
        &["start"],
        &params.write_to_bytes().unwrap(),
        Some(bundle.path()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result =
        BootstrapResult::parse_from_bytes(&out.stdout).expect("a protobuf BootstrapResult");
    assert_eq!((result.version, result.protocol.as_str()), (3, "ttrpc"));
    let socket = std::path::PathBuf::from(result.address.trim_start_matches("unix://"));
    assert_eq!(socket.parent(), Some(sockets.path()), "socket_dir honoured");

    let client = protos::shim_sync::TaskClient::new(
        protos::shim_sync::Client::connect(&result.address).expect("the shim answers"),
    );
    let ctx = || protos::ttrpc::context::with_timeout(5_000_000_000);
    let connect = client
        .connect(
            ctx(),
            &protos::api::ConnectRequest {
                id: "boot23".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let shim_pid = connect.shim_pid;
    assert!(shim_pid > 0);
    let _ = client.shutdown(ctx(), &protos::api::ShutdownRequest::default());
    assert!(
        gone(shim_pid).await,
        "the shim exits on Shutdown with no containers"
    );
    assert!(!socket.exists(), "and removes its socket");
}
