//! Test fixtures: a private containerd with our shims first on its PATH, a busybox rootfs,
//! OCI specs, fifo stdio, a gRPC client and an event recorder.
//!
//! Every fixture cleans up on drop, including when the test panics; the daemon's log is printed
//! only when a test fails.
pub mod client;
mod client_control;
pub mod cri;
pub mod criu;
pub mod daemon;
pub mod events;
pub mod fifo;
pub mod inspect;
pub mod rootfs;
pub mod runtime;
pub mod spec;

pub use client::{Client, TaskIo};
pub use daemon::Containerd;
pub use runtime::{Binary, Shim};

/// Tests need root (namespaces, mounts, cgroups). Returns false, with a note, when not root.
pub fn is_root() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        eprintln!("skipped: integration tests need root");
    }
    root
}

/// Whether this process holds capability `cap` (its bit in `CapEff` of /proc/self/status).
pub fn has_capability(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|set| set & (1 << cap) != 0)
}

/// Runs one test body for each shim × runtime binary, each against its own containerd:
/// the runc shim with runc and with crun, and the sandbox shim (libcontainer in-process);
/// and, ignored unless asked for, containerd's Go shim as the reference.
///
/// Where the shims legitimately differ, a body branches on `ctx.shim` and checks each one's
/// own behaviour.
#[macro_export]
macro_rules! shim_tests {
    ($name:ident, |$ctx:ident| $body:block) => {
        $crate::shim_tests!(@runc $name, |$ctx| $body, {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sandbox() {
                $crate::runtime::run($crate::Shim::Sandbox, $crate::Binary::Runc, body).await
            }
        });
    };
    (@runc $name:ident, |$ctx:ident| $body:block, { $($extra:tt)* }) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($ctx: $crate::runtime::Ctx) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn runc_rs_runc() {
                $crate::runtime::run($crate::Shim::RuncRs, $crate::Binary::Runc, body).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn runc_rs_crun() {
                $crate::runtime::run($crate::Shim::RuncRs, $crate::Binary::Crun, body).await
            }

            /// The same case against containerd's Go shim, run on demand
            /// (`cargo test -p integration -- --ignored go_runc`): a check of what a drop-in
            /// must match. Where ours deliberately differs it fails (docs/ARCHITECTURE.md).
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "reference run against containerd's Go shim"]
            async fn go_runc() {
                $crate::runtime::run($crate::Shim::GoRunc, $crate::Binary::Runc, body).await
            }

            $($extra)*
        }
    };
}
