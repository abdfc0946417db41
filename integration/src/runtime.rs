//! Which shim and which OCI runtime binary a test runs against.
use std::future::Future;
use std::path::PathBuf;

use crate::{Client, Containerd};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shim {
    /// Ours: `containerd-shim-runc-rs-v2`.
    RuncRs,
    /// containerd's Go shim, for comparison.
    GoRunc,
    /// Ours: `containerd-shim-sandbox-v2` (libcontainer in-process).
    Sandbox,
}

impl Shim {
    pub fn runtime_type(self) -> &'static str {
        match self {
            Shim::RuncRs => "io.containerd.runc.rs-v2",
            Shim::GoRunc => "io.containerd.runc.v2",
            Shim::Sandbox => "io.containerd.sandbox.v2",
        }
    }

    /// Where the shim's runtime keeps container state unless the Root option says otherwise.
    pub fn default_state_root(self) -> &'static str {
        match self {
            Shim::RuncRs | Shim::GoRunc => crate::daemon::DEFAULT_RUNTIME_ROOT,
            Shim::Sandbox => crate::daemon::SANDBOX_ROOT,
        }
    }

    pub fn binary_name(self) -> &'static str {
        match self {
            Shim::RuncRs => "containerd-shim-runc-rs-v2",
            Shim::GoRunc => "containerd-shim-runc-v2",
            Shim::Sandbox => "containerd-shim-sandbox-v2",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Runc,
    Crun,
}

impl Binary {
    pub fn name(self) -> &'static str {
        match self {
            Binary::Runc => "runc",
            Binary::Crun => "crun",
        }
    }
}

/// Where our shim binaries are: $SHIM_BIN_DIR, or the workspace's target/debug.
pub fn shim_bin_dir() -> PathBuf {
    std::env::var_os("SHIM_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"))
}

/// What a test body gets.
pub struct Ctx {
    pub shim: Shim,
    pub binary: Binary,
    pub containerd: Containerd,
    pub client: Client,
}

impl Ctx {
    /// `ctr run --rm` of `cmd` in the busybox rootfs through the shim under test, with `extra`
    /// flags; panics with ctr's stderr if it fails. Returns stdout.
    pub fn ctr_run(&self, id: &str, extra: &[&str], cmd: &[&str]) -> String {
        let rootfs = crate::rootfs::busybox().to_string_lossy().into_owned();
        let mut args = vec!["run", "--rm", "--env", "PATH=/bin"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[
            "--runtime",
            self.shim.runtime_type(),
            "--rootfs",
            &rootfs,
            id,
        ]);
        args.extend_from_slice(cmd);
        let out = self.containerd.ctr(&args);
        assert!(
            out.status.success(),
            "ctr run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

pub async fn run<F, Fut>(shim: Shim, binary: Binary, body: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()>,
{
    if !crate::is_root() {
        return;
    }
    let bin = shim_bin_dir().join(shim.binary_name());
    if shim != Shim::GoRunc {
        assert!(
            bin.exists(),
            "shim binary not found at {} (run `cargo build --workspace --bins`)",
            bin.display()
        );
    }
    let containerd = Containerd::start().await;
    let client = Client::new(&containerd, shim, binary).await;
    body(Ctx {
        shim,
        binary,
        containerd,
        client,
    })
    .await
}
