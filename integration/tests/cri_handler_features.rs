//! CRI `Status`'s runtime handler features on containerd 2.x, which kubelet reads before it
//! runs a `hostUsers: false` pod, and the "drop-in recipe" that gets our shims introspected:
//! `runtime_type = "io.containerd.runc.v2"` with `runtime_path` naming our shim (see
//! `integration::cri::handler_features`). A pod on that recipe runs on the sandbox shim.
use integration::cri::api::{Mount, MountPropagation};
use integration::cri::client::*;
use integration::cri::handler_features::{runtime_handlers, RUNC_RS_RUNC_TYPE, SANDBOX_RUNC_TYPE};
use integration::cri::{Ctx, Handler};

/// Runs `body` on the suite's containerd when it has the recipe's handlers.
async fn run(body: impl AsyncFnOnce(Ctx)) {
    integration::cri::run(Handler::Sandbox, |ctx| async move {
        let (major, minor) = ctx.daemon.version();
        if major < 2 {
            integration::runtime::skip(&format!(
                "containerd {major}.{minor}'s CRI reports no runtime handler features"
            ));
            return;
        }
        if !ctx.daemon.has_runc_type_handlers() {
            integration::runtime::skip("the pauseless run configures no runc-type handlers");
            return;
        }
        body(ctx).await
    })
    .await
}

/// What CRI computes for runc from `runc features`: "user" among the namespaces and
/// idmapped mounts enabled (containerd's supportsCRIUserns).
fn runc_supports_cri_userns() -> bool {
    let out = std::process::Command::new("runc")
        .arg("features")
        .output()
        .expect("run `runc features`");
    assert!(out.status.success(), "runc features: {out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("features JSON");
    let user = doc["linux"]["namespaces"]
        .as_array()
        .is_some_and(|n| n.iter().any(|n| n == "user"));
    user && doc["linux"]["mountExtensions"]["idmap"]["enabled"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_user_namespaces_per_handler() {
    run(async |ctx| {
        let handlers = runtime_handlers(&ctx.daemon.socket())
            .await
            .expect("CRI Status");
        eprintln!("runtime handlers (name, user_namespaces, recursive_read_only_mounts):");
        for h in &handlers {
            eprintln!("  {h:?}");
        }
        // "rro" among the features' mount options: CRI then passes kubelet's recursive
        // read-only volumes to the sandbox shim (and checks the kernel can).
        let rro = |name: &str| handlers.iter().find(|h| h.0 == name).map(|h| h.2);
        assert_eq!(rro(SANDBOX_RUNC_TYPE), Some(true), "{handlers:?}");
        let userns = |name: &str| {
            handlers
                .iter()
                .find(|h| h.0 == name)
                .unwrap_or_else(|| panic!("no handler {name:?} in Status: {handlers:?}"))
                .1
        };
        // Our sandbox shim's `-info` reports idmapped mounts where the kernel has them (5.12+).
        assert!(userns(SANDBOX_RUNC_TYPE), "{handlers:?}");
        // Our runc shim passes `runc features` through, as the Go shim does.
        let runc = runc_supports_cri_userns();
        assert_eq!(userns(RUNC_RS_RUNC_TYPE), runc, "{handlers:?}");
        assert_eq!(userns(Handler::GoRunc.name()), runc, "{handlers:?}");
        // containerd introspects io.containerd.runc.v2 handlers only (introspectRuntimeFeatures
        // refuses other types): ours under their own types report nothing, hence the recipe.
        assert!(!userns(Handler::Sandbox.name()), "{handlers:?}");
        assert!(!userns(Handler::RuncRsRunc.name()), "{handlers:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_in_recipe_runs_pods_on_the_sandbox_shim() {
    run(async |ctx| {
        let pod = ctx
            .run_pod_on(ctx.pod_config("drop-in"), SANDBOX_RUNC_TYPE)
            .await;
        let resp = ctx.cri.pod_status(&pod.id).await.expect("PodSandboxStatus");
        let info = verbose_info(&resp.info);
        assert_eq!(
            resp.status.expect("status").runtime_handler,
            SANDBOX_RUNC_TYPE
        );
        assert_eq!(info["runtimeType"], "io.containerd.runc.v2", "info: {info}");

        let c = pod.run(sleeper("sleeper")).await;
        pod.exec_ok(&c, &["true"]).await;
        // runtime_path, not the type's Go shim, serves the pod: its pause container and its
        // container are children of one containerd-shim-sandbox-v2.
        let shim = ppid(pod.container_pid(&c).await);
        assert_eq!(
            ppid(pod.sandbox_pid().await),
            shim,
            "pause and container shims"
        );
        assert_eq!(
            exe_name(shim),
            Handler::Sandbox.shim_binary(),
            "the pod's shim (pid {shim})"
        );

        ctx.cri.stop_container(&c, 0).await.expect("StopContainer");
        ctx.cri.remove_container(&c).await.expect("RemoveContainer");
        ctx.cri.stop_pod(&pod.id).await.expect("StopPodSandbox");
        ctx.cri.remove_pod(&pod.id).await.expect("RemovePodSandbox");
        wait_gone(shim, "the pod's shim").await;
    })
    .await
}

/// A recursive read-only volume (kubelet's `recursiveReadOnly: Enabled`) on the sandbox shim:
/// a mount below the volume's source is read-only inside too; a plain read-only volume of the
/// same source leaves that one writable (read-only applies to the top mount only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_read_only_volumes_on_the_sandbox_shim() {
    run(async |ctx| {
        let volume = tempfile::tempdir_in(ctx.daemon.dir()).unwrap();
        let sub = volume.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        // In containerd's mount namespace, where the pods' host paths are.
        let sub_path = sub.to_string_lossy().into_owned();
        let out = ctx
            .daemon
            .nsenter(&["mount", "-t", "tmpfs", "tmpfs", &sub_path]);
        assert!(
            out.status.success(),
            "mount a tmpfs below the volume: {out:?}"
        );
        struct Unmount<'a>(&'a integration::cri::CriDaemon, String);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = self.0.nsenter(&["umount", "-l", &self.1]);
            }
        }
        let _unmount = Unmount(ctx.daemon, sub_path);

        let pod = ctx
            .run_pod_on(ctx.pod_config("rro"), SANDBOX_RUNC_TYPE)
            .await;
        let mut c = sleeper("app");
        let host_path = volume.path().to_string_lossy().into_owned();
        for (path, recursive) in [("/rro", true), ("/ro", false)] {
            c.mounts.push(Mount {
                container_path: path.into(),
                host_path: host_path.clone(),
                readonly: true,
                recursive_read_only: recursive,
                propagation: MountPropagation::PropagationPrivate as i32,
                ..Default::default()
            });
        }
        let id = pod.run(c).await;
        let (_, err, code) = pod.exec(&id, &["touch", "/rro/sub/f"]).await;
        assert_ne!(
            code, 0,
            "a write below a recursive read-only volume succeeded"
        );
        assert!(err.contains("Read-only file system"), "{err}");
        let (_, err, code) = pod.exec(&id, &["touch", "/ro/sub/f"]).await;
        assert_eq!(code, 0, "the plain read-only volume's submount: {err}");
        let (_, _, code) = pod.exec(&id, &["touch", "/ro/f"]).await;
        assert_ne!(code, 0, "the plain read-only volume itself is read-only");
    })
    .await
}
