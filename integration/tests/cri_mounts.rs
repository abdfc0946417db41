//! CRI: volume mount propagation on every runtime handler, both ways, as runc gives it:
//! PROPAGATION_PRIVATE (`rprivate`) receives nothing and sends nothing, HOST_TO_CONTAINER
//! (`rslave`) receives the host's mounts, BIDIRECTIONAL (`rshared`, with the container's root
//! rshared) receives and sends. A container with all three at once checks that the root's
//! rshared does not leak into the other two (libcontainer 0.7 left every volume with its
//! source's propagation, so the sandbox shim stages the sources: shim-sandbox/src/volumes.rs).
use std::time::Duration;

use integration::cri::api::*;
use integration::cri::client::*;
use integration::cri::{Ctx, Pod};
use integration::cri_tests;

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

const MODES: [(&str, MountPropagation); 3] = [
    ("private", MountPropagation::PropagationPrivate),
    ("rslave", MountPropagation::PropagationHostToContainer),
    ("rshared", MountPropagation::PropagationBidirectional),
];

/// A volume of mode `name` at `/<name>`, its host directory (with `in` and `out`, the mount
/// points of the two checks) below `base` on the mount that is shared in containerd's
/// namespace.
fn volume(ctx: &Ctx, base: &str, name: &str, propagation: MountPropagation) -> Mount {
    let host = format!("{base}/{name}");
    in_daemon_ns(
        ctx,
        &["mkdir", "-p", &format!("{host}/in"), &format!("{host}/out")],
    );
    Mount {
        host_path: host,
        container_path: format!("/{name}"),
        propagation: propagation as i32,
        ..Default::default()
    }
}

/// What went wrong with volume `m` (of mode `name`) of running container `id`: a tmpfs the
/// host mounts at `in` must reach the container unless private, one the container mounts at
/// `out` must reach the host only if rshared.
async fn check(ctx: &Ctx, pod: &Pod, id: &str, name: &str, m: &Mount) -> Vec<String> {
    let mut wrong = Vec::new();
    let host_in = format!("{}/in", m.host_path);
    in_daemon_ns(ctx, &["mount", "-t", "tmpfs", "tmpfs", &host_in]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = pod.exec_ok(id, &["cat", "/proc/self/mountinfo"]).await;
    in_daemon_ns(ctx, &["umount", &host_in]);
    let received = seen.contains(&format!(" {}/in ", m.container_path));
    if received != (name != "private") {
        wrong.push(format!(
            "{name}: a host mount reached the container: {received}"
        ));
    }
    let inside = format!("{}/out", m.container_path);
    pod.exec_ok(id, &["mount", "-t", "tmpfs", "tmpfs", &inside])
        .await;
    let host = in_daemon_ns(ctx, &["cat", "/proc/self/mountinfo"]);
    pod.exec_ok(id, &["umount", &inside]).await;
    // A mount that reached the host leaves with the container's umount; make sure.
    let host_out = format!("{}/out", m.host_path);
    let sent = host.contains(&format!(" {host_out} "));
    if sent {
        let _ = ctx.daemon.nsenter(&["umount", &host_out]);
    }
    if sent != (name == "rshared") {
        wrong.push(format!(
            "{name}: a container mount reached the host: {sent}"
        ));
    }
    wrong
}

/// A privileged container (it mounts) with `mounts`.
fn privileged(name: &str, mounts: Vec<Mount>) -> ContainerConfig {
    let mut config = sleeper(name);
    security(&mut config).privileged = true;
    config.mounts = mounts;
    config
}

async fn privileged_pod(ctx: &Ctx, base: &str) -> Pod {
    let mut pod_config = ctx.pod_config(base);
    pod_security(&mut pod_config).privileged = true;
    ctx.run_pod(pod_config).await
}

cri_tests!(mount_propagation_private_rslave_rshared, |ctx| {
    let pod = privileged_pod(&ctx, "prop").await;
    let base = ctx.daemon.shared_mount_dir().join(ctx.unique("prop"));
    let base = base.to_string_lossy().into_owned();
    let mut wrong = Vec::new();
    for (name, propagation) in MODES {
        let m = volume(&ctx, &base, name, propagation);
        let id = pod.run(privileged(name, vec![m.clone()])).await;
        wrong.extend(check(&ctx, &pod, &id, name, &m).await);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("; "));
});

cri_tests!(mount_propagation_all_three_in_one_container, |ctx| {
    let pod = privileged_pod(&ctx, "prop3").await;
    let base = ctx.daemon.shared_mount_dir().join(ctx.unique("prop3"));
    let base = base.to_string_lossy().into_owned();
    let mounts: Vec<Mount> = MODES
        .iter()
        .map(|(name, propagation)| volume(&ctx, &base, name, *propagation))
        .collect();
    let id = pod.run(privileged("all", mounts.clone())).await;
    let mut wrong = Vec::new();
    for ((name, _), m) in MODES.iter().zip(&mounts) {
        wrong.extend(check(&ctx, &pod, &id, name, m).await);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("; "));
});
