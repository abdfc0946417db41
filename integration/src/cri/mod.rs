//! The Kubernetes CRI suite's fixtures: containerd with its CRI plugin in network and mount
//! namespaces of its own ([`daemon`]), locally built images ([`image`]), a CRI client with pods
//! that clean up after themselves ([`client`]) and [`cri_tests!`](crate::cri_tests), which runs
//! one case on every runtime handler.
//!
//! One containerd serves every test of a test binary (`tests/cri_*.rs`), with a handler per
//! shim: `runc-rs` (our runc shim with runc), `runc-rs-crun` (the same with crun, through a
//! `ConfigPath` TOML), `sandbox` (the sandbox shim) and `go-runc` (containerd's Go shim, the
//! reference; ignored unless asked for: `-- --ignored go_runc`). Each test makes its own pods.
mod builders;
pub mod client;
mod config;
pub mod daemon;
pub mod handler;
pub mod handler_features;
pub mod image;
mod launch;
pub mod pauseless;
pub mod pidns;
mod pod;
mod procfs;
mod restart;
pub mod streaming;

pub use client::{container_config, sleeper, Cri, Ctx, Pod};
pub use containerd_client::tonic;
pub use daemon::CriDaemon;
pub use handler::Handler;
pub use k8s_cri::v1 as api;

use std::future::Future;

/// Runs `body` on `handler` against this test binary's shared containerd.
pub async fn run<F, Fut>(handler: Handler, body: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()>,
{
    if !crate::is_root() {
        return;
    }
    if handler != Handler::GoRunc {
        let bin = crate::runtime::shim_bin_dir().join(handler.shim_binary());
        assert!(
            bin.exists(),
            "shim binary not found at {} (run `cargo build --workspace --bins`)",
            bin.display()
        );
    }
    // containerd's CRI gives every pod sandbox 2 CPU shares, which runtimes write to
    // cpu.weight on cgroup v2: without a cpu controller there (the v2 view of a hybrid host,
    // where v1 holds it) no pod can start on any runtime.
    let v2 = crate::daemon::cgroup_v2_requested()
        || std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if v2 {
        let controllers = std::fs::read_to_string(
            crate::daemon::host_cgroup_v2_root().join("cgroup.controllers"),
        )
        .unwrap_or_default();
        if !controllers.split_whitespace().any(|c| c == "cpu") {
            crate::runtime::skip(
                "CRI sets cpu shares (cpu.weight) on every pod sandbox, and this cgroup v2 \
                 view has no cpu controller",
            );
            return;
        }
    }
    // crun raises RLIMIT_MEMLOCK for its cgroup v2 device filter, which root cannot do here.
    if handler == Handler::RuncRsCrun
        && (crate::daemon::cgroup_v2_requested()
            || std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists())
        && !crate::has_capability(24)
    {
        crate::runtime::skip(
            "crun on cgroup v2 needs CAP_SYS_RESOURCE (RLIMIT_MEMLOCK), which root lacks here",
        );
        return;
    }
    let daemon = tokio::task::block_in_place(CriDaemon::shared);
    let cri = Cri::connect(&daemon.socket()).await;
    if handler == Handler::RuncRsCrun {
        if let Some(reason) = crun_refusal(daemon, &cri).await {
            crate::runtime::skip(&reason);
            return;
        }
    }
    body(Ctx {
        handler,
        daemon,
        cri,
    })
    .await
}

/// Runs one CRI case on each runtime handler of the shared containerd: `runc_rs_runc`,
/// `runc_rs_crun`, `sandbox`, and (ignored unless asked for) `go_runc`, containerd's Go shim.
#[macro_export]
macro_rules! cri_tests {
    ($name:ident, |$ctx:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($ctx: $crate::cri::Ctx) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn runc_rs_runc() {
                $crate::cri::run($crate::cri::Handler::RuncRsRunc, body).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn runc_rs_crun() {
                $crate::cri::run($crate::cri::Handler::RuncRsCrun, body).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sandbox() {
                $crate::cri::run($crate::cri::Handler::Sandbox, body).await
            }

            /// The same case on containerd's Go shim (`io.containerd.runc.v2`), run on demand
            /// (`cargo test -p integration --test cri_... -- --ignored go_runc`).
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "reference run against containerd's Go shim"]
            async fn go_runc() {
                $crate::cri::run($crate::cri::Handler::GoRunc, body).await
            }
        }
    };
}

/// Why crun cannot run this containerd's pods at all, if it cannot: bookworm's crun 1.8
/// refuses the OCI runtime spec version containerd 2.x writes ("unknown version specified").
/// Probed once per test binary with one pod.
async fn crun_refusal(daemon: &'static CriDaemon, cri: &Cri) -> Option<String> {
    static PROBE: tokio::sync::OnceCell<Option<String>> = tokio::sync::OnceCell::const_new();
    PROBE
        .get_or_init(|| async {
            let ctx = Ctx {
                handler: Handler::RuncRsCrun,
                daemon,
                cri: cri.clone(),
            };
            match ctx.try_run_pod(ctx.pod_config("crun-probe")).await {
                Ok(_pod) => None,
                Err(e) if e.message().contains("unknown version specified") => {
                    let crun = std::process::Command::new("crun")
                        .arg("--version")
                        .output()
                        .map(|o| {
                            String::from_utf8_lossy(&o.stdout)
                                .lines()
                                .next()
                                .unwrap_or("")
                                .to_string()
                        })
                        .unwrap_or_default();
                    Some(format!(
                        "{crun} refuses the OCI runtime spec version containerd {}.{} writes: {}",
                        daemon.version().0,
                        daemon.version().1,
                        e.message()
                    ))
                }
                Err(_) => None,
            }
        })
        .await
        .clone()
}
