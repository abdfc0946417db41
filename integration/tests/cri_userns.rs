//! CRI: a user-namespaced pod (`hostUsers: false`): the pod and its containers in a user
//! namespace of mode POD with uid/gid mappings, its volumes idmapped. containerd 2.x asks the
//! shim's `-info` features for idmapped mounts before it creates a container (every container
//! of such a pod has idmapped /etc/hosts, /etc/hostname and /etc/resolv.conf mounts). The
//! failures known on this machine ([`known`]) are recorded with their text; anything else
//! fails, and where everything works (the sandbox shim, which makes idmapped mounts itself)
//! the pod is checked from inside and from the host, execs included, and after its removal
//! nothing idmapped is left.
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use integration::cri::api::*;
use integration::cri::client::Pod;
use integration::cri::handler_features::{RUNC_RS_RUNC_TYPE, SANDBOX_RUNC_TYPE};
use integration::cri::tonic::Status;
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

/// Why this machine cannot run the pod, when `message` is one of the failures known here:
/// - containerd 2 refuses a container with idmapped mounts when the runtime's features lack
///   `mountExtensions.idmap` (runc 1.1.5; crun 1.8.1 has no `features`);
/// - containerd 2.1-2.3 hand a user-namespaced container's io owner (IoUid/IoGid) to the shim
///   inside runc's options type, which a handler whose options are `runtimeoptions.v1.Options`
///   (our runtime type with `ConfigPath`) cannot carry: StartContainer fails in containerd's
///   client before the shim is asked (README: the drop-in recipe avoids it).
fn known(message: &str) -> Option<&'static str> {
    if message.contains("idmap mounts not supported") || message.contains("runtime features") {
        Some("the runtime reports no idmapped mounts")
    } else if message.contains("runtimeoptions.v1.Options") && message.contains("runc.v1.Options") {
        Some("containerd sets the io owner in runc's options type, which this handler's options are not")
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
        Err(e) if refused(&ctx, "RunPodSandbox", &e) => return,
        Err(e) => panic!("RunPodSandbox: {e:?}"),
    };
    exercise(&ctx, pod).await;
});

/// kubelet runs `hostUsers: false` pods only on a handler whose CRI features report user
/// namespaces, which containerd 2 computes for `io.containerd.runc.v2` handlers alone: our
/// shims by the drop-in recipe (`runtime_path`, runc's options). The sandbox shim runs the
/// pod; the runc shim passes runc's features on, and containerd refuses the container
/// clearly where runc lacks idmapped mounts (runc 1.1.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespaced_pods_on_the_drop_in_recipe() {
    integration::cri::run(integration::cri::Handler::Sandbox, |ctx| async move {
        if !ctx.daemon.has_runc_type_handlers() {
            integration::runtime::skip(
                "the drop-in recipe's handlers are configured on containerd 2.x with pause \
                 containers only",
            );
            return;
        }
        let mut config = ctx.pod_config("userns-recipe");
        let ns = integration::cri::client::pod_namespaces(&mut config);
        ns.userns_options = Some(userns());
        let pod = ctx.run_pod_on(config.clone(), SANDBOX_RUNC_TYPE).await;
        exercise(&ctx, pod).await;

        config.metadata.as_mut().expect("metadata").name = "userns-recipe-runc".into();
        let pod = ctx.run_pod_on(config, RUNC_RS_RUNC_TYPE).await;
        let id = pod.create(app(&ctx)).await.expect("CreateContainer");
        let err = ctx
            .cri
            .start_container(&id)
            .await
            .expect_err("runc 1.1.5 has no idmapped mounts");
        assert!(
            err.message().contains("idmap mounts not supported")
                && err.message().contains("mountExtensions.idmap"),
            "{err:?}"
        );
    })
    .await
}

/// The app container of a user-namespaced pod: the pod's user namespace, a volume idmapped to
/// the same range.
fn app(ctx: &Ctx) -> ContainerConfig {
    let volume = tempfile::tempdir_in(ctx.daemon.dir()).unwrap().keep();
    let mut c = integration::cri::sleeper("app");
    let sc = integration::cri::client::security(&mut c);
    let cns = sc.namespace_options.get_or_insert_with(Default::default);
    cns.userns_options = Some(userns());
    cns.pid = NamespaceMode::Container as i32;
    cns.network = NamespaceMode::Pod as i32;
    cns.ipc = NamespaceMode::Pod as i32;
    c.mounts.push(Mount {
        container_path: "/v".into(),
        host_path: volume.to_string_lossy().into_owned(),
        uid_mappings: vec![userns().uids[0]],
        gid_mappings: vec![userns().gids[0]],
        ..Default::default()
    });
    c
}

/// Runs the app container in `pod` and checks it from inside and from the host.
async fn exercise(ctx: &Ctx, pod: Pod) {
    let c = app(ctx);
    let volume = std::path::PathBuf::from(&c.mounts[0].host_path);
    let id = match pod.create(c).await {
        Ok(id) => id,
        Err(e) if refused(ctx, "CreateContainer", &e) => return,
        Err(e) => panic!("CreateContainer: {e:?}"),
    };
    // CRI creates the task at StartContainer: containerd's features check runs there.
    match ctx.cri.start_container(&id).await {
        Ok(()) => {}
        Err(e) if refused(ctx, "StartContainer", &e) => return,
        Err(e) => panic!("StartContainer: {e:?}"),
    }

    // Without a pause container (sandboxer = "shim") the pod's user namespace is the one CRI
    // made its network namespace in, held by the shim's holder; the container joined it.
    if ctx.pauseless() {
        let ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
        let holder = pod.sandbox_pid().await;
        assert_eq!(
            ns(pod.container_pid(&id).await),
            ns(holder),
            "user namespaces"
        );
        assert_ne!(
            ns(holder),
            ns(std::process::id()),
            "the holder's user namespace"
        );
    }

    // Inside: root, and the image's files owned by root. An exec runs in the pod's user
    // namespace too (libcontainer's own execs join every namespace but that one).
    assert_eq!(pod.exec_ok(&id, &["id", "-u"]).await.trim(), "0");
    let uid_map = pod.exec_ok(&id, &["cat", "/proc/self/uid_map"]).await;
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", &HOST_ID.to_string(), &SIZE.to_string()],
        "exec's uid_map"
    );
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
    let meta = std::fs::metadata(volume.join("f")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (0, 0),
        "volume file owner on the host"
    );

    // A container of another user: its init and its execs run as that user, mapped, with the
    // user's home and groups from the image.
    let mut user = integration::cri::sleeper("user");
    let sc = integration::cri::client::security(&mut user);
    sc.run_as_user = Some(Int64Value { value: 1000 });
    let cns = sc.namespace_options.get_or_insert_with(Default::default);
    cns.userns_options = Some(userns());
    cns.pid = NamespaceMode::Container as i32;
    let user_id = pod.run(user).await;
    let user_pid = pod.container_pid(&user_id).await;
    let host_uid = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status_field(&status, "Uid")
    };
    assert_eq!(host_uid(user_pid), [HOST_ID + 1000; 4], "init's host uids");
    let exec = pod
        .exec_ok(
            &user_id,
            &[
                "sh",
                "-c",
                "id -u; id -G; echo $HOME; cat /proc/self/status",
            ],
        )
        .await;
    let mut lines = exec.lines();
    assert_eq!(lines.next(), Some("1000"), "{exec}");
    let groups = lines.next().unwrap_or_default();
    assert!(
        groups.split_whitespace().any(|g| g == "2000"),
        "exec groups: {exec}"
    );
    assert_eq!(lines.next(), Some("/home/it-user"), "{exec}");
    let rest: String = lines.collect::<Vec<_>>().join("\n");
    assert_eq!(
        status_field(&rest, "Uid"),
        [1000; 4],
        "exec's uids inside: {exec}"
    );
    // Not root, no capabilities left in the effective set.
    assert_eq!(
        rest.lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(str::trim),
        Some("0000000000000000"),
        "{exec}"
    );

    // Logs, stats, delete.
    pod.exec_ok(&id, &["sh", "-c", "echo to-log >/proc/1/fd/1"])
        .await;
    pod.wait_log("app", "to-log", Duration::from_secs(10)).await;
    ctx.cri.container_stats(&id).await.expect("ContainerStats");
    ctx.cri.stop_container(&id, 0).await.unwrap();
    ctx.cri.remove_container(&id).await.unwrap();
    assert!(ctx.cri.container_status(&id).await.is_err());

    // Nothing outlives the pod in containerd's mount namespace, the shims': no rootfs (with
    // its staged, idmapped lower layers) and no staged volume of its containers. (The other
    // tests of this binary share the containerd: only this pod's ids count.)
    let ids = [pod.id.clone(), id.clone(), user_id.clone()];
    let mounts_of_the_pod = || {
        let mountinfo =
            std::fs::read_to_string(format!("/proc/{}/mountinfo", ctx.daemon.pid())).unwrap();
        mountinfo
            .lines()
            .filter(|l| ids.iter().any(|id| l.contains(id.as_str())))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // Seen while it runs: the running containers' rootfs at least.
    assert!(mounts_of_the_pod().len() >= 2, "{:#?}", mounts_of_the_pod());
    drop(pod);
    let left = mounts_of_the_pod();
    assert!(left.is_empty(), "mounts left: {left:#?}");
}

/// The four ids of a /proc status line ("Uid:" or "Gid:").
fn status_field(status: &str, key: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
