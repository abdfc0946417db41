//! CRI: a user-namespaced pod (`hostUsers: false`): the pod and its containers in a user
//! namespace of mode POD with uid/gid mappings, its volumes idmapped. containerd 2.x asks the
//! shim's `-info` features for idmapped mounts before it creates a container (every container
//! of such a pod has idmapped /etc/hosts, /etc/hostname and /etc/resolv.conf mounts). The
//! failures known on this machine ([`known`]) are recorded with their text; anything else
//! fails, and where everything works the pod is checked from inside and from the host.
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use integration::cri::api::*;
use integration::cri::tonic::{self, Status};
use integration::cri::Ctx;
use integration::cri_tests;

/// The host range the pod's ids map to (kubelet hands out multiples of 65536).
const HOST_ID: u32 = 165536;
const SIZE: u32 = 65536;

fn userns() -> UserNamespace {
    let map = IdMapping {
        host_id: HOST_ID,
        container_id: 0,
        length: SIZE,
    };
    UserNamespace {
        mode: NamespaceMode::Pod as i32,
        uids: vec![map],
        gids: vec![map],
    }
}

/// Why this machine cannot run the pod, when `message` is one of the two failures known here:
/// - containerd's overlay snapshotter remaps ids itself on this kernel (capability
///   `remap-ids`) and hands the shim an overlay rootfs with `uidmap=`/`gidmap=` options, which
///   only containerd's own mount code understands (it idmaps each lowerdir first); libshim's
///   mount passes them to mount(2), which answers EINVAL;
/// - containerd 2 refuses a container with idmapped mounts when the runtime's features lack
///   `mountExtensions.idmap` (runc 1.1.5, libcontainer 0.7; crun 1.8.1 has no `features`).
fn known(message: &str) -> Option<&'static str> {
    if message.contains("mount overlay") && message.contains("os error 22") {
        Some("libshim cannot mount an idmapped overlay rootfs (uidmap=/gidmap= options)")
    } else if message.contains("idmap mounts not supported") || message.contains("runtime features")
    {
        Some("the runtime reports no idmapped mounts")
    } else {
        None
    }
}

/// Records a known failure of `what` (see [`known`]); false for any other error.
fn refused(ctx: &Ctx, what: &str, status: &Status) -> bool {
    let Some(why) = known(status.message()) else {
        return false;
    };
    ctx.known_failure(
        &format!("{what} of a user-namespaced pod: {why}"),
        status.message(),
    );
    true
}

cri_tests!(user_namespaced_pod, |ctx| {
    if ctx.daemon.version().0 < 2 {
        integration::runtime::skip("hostUsers: false (idmapped mounts) needs containerd 2.x");
        return;
    }
    let mut config = ctx.pod_config("userns");
    let ns = integration::cri::client::pod_namespaces(&mut config);
    ns.userns_options = Some(userns());
    let pod = match ctx.try_run_pod(config).await {
        Ok(pod) => pod,
        // Without a pause container (sandboxer = "shim") the shim refuses such a pod at
        // CreateSandbox, by name, before anything is made.
        Err(e) if ctx.pauseless() => {
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
            assert!(e.message().contains("user-namespaced pods"), "{e:?}");
            return;
        }
        Err(e) if refused(&ctx, "RunPodSandbox", &e) => return,
        Err(e) => panic!("RunPodSandbox: {e:?}"),
    };
    let volume = tempfile::tempdir_in(ctx.daemon.dir()).unwrap();
    let mut c = integration::cri::sleeper("app");
    let sc = integration::cri::client::security(&mut c);
    let cns = sc.namespace_options.get_or_insert_with(Default::default);
    cns.userns_options = Some(userns());
    cns.pid = NamespaceMode::Container as i32;
    cns.network = NamespaceMode::Pod as i32;
    cns.ipc = NamespaceMode::Pod as i32;
    c.mounts.push(Mount {
        container_path: "/v".into(),
        host_path: volume.path().to_string_lossy().into_owned(),
        uid_mappings: vec![userns().uids[0]],
        gid_mappings: vec![userns().gids[0]],
        ..Default::default()
    });
    let id = match pod.create(c).await {
        Ok(id) => id,
        Err(e) if refused(&ctx, "CreateContainer", &e) => return,
        Err(e) => panic!("CreateContainer: {e:?}"),
    };
    // CRI creates the task at StartContainer: containerd's features check runs there.
    match ctx.cri.start_container(&id).await {
        Ok(()) => {}
        Err(e) if refused(&ctx, "StartContainer", &e) => return,
        Err(e) => panic!("StartContainer: {e:?}"),
    }

    // Inside: root, and the image's files owned by root.
    assert_eq!(pod.exec_ok(&id, &["id", "-u"]).await.trim(), "0");
    assert_eq!(
        pod.exec_ok(&id, &["stat", "-c", "%u:%g", "/bin"])
            .await
            .trim(),
        "0:0"
    );
    // On the host: the mapped uid.
    let pid = pod.container_pid(&id).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|u| u.split_whitespace().next().map(str::to_string));
    assert_eq!(uid, Some(HOST_ID.to_string()), "{status}");
    // Written through the idmapped volume as the container's root (host uid HOST_ID), the
    // file is owned by the id that maps back: root on the host.
    pod.exec_ok(&id, &["sh", "-c", "echo hi >/v/f"]).await;
    let meta = std::fs::metadata(volume.path().join("f")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (0, 0),
        "volume file owner on the host"
    );

    // Logs, stats, delete.
    pod.exec_ok(&id, &["sh", "-c", "echo to-log >/proc/1/fd/1"])
        .await;
    pod.wait_log("app", "to-log", Duration::from_secs(10)).await;
    ctx.cri.container_stats(&id).await.expect("ContainerStats");
    ctx.cri.stop_container(&id, 0).await.unwrap();
    ctx.cri.remove_container(&id).await.unwrap();
    assert!(ctx.cri.container_status(&id).await.is_err());
});
