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
    /// Whether containerd sees a cgroup v2 hierarchy without `controller`, as it does in the
    /// v2 view of a hybrid host, where v1 holds the controllers.
    pub fn lacks_controller(&self, controller: &str) -> bool {
        self.containerd
            .cgroup_v2_controllers()
            .is_some_and(|c| !c.iter().any(|have| have == controller))
    }

    /// Whether the test can run here: false, with the skip recorded, when containerd's cgroup
    /// v2 hierarchy lacks one of `controllers` (the cgroup v1 run of the suite covers it).
    pub fn has_controllers(&self, controllers: &[&str]) -> bool {
        match controllers.iter().find(|c| self.lacks_controller(c)) {
            Some(missing) => {
                skip(&format!("cgroup v2 offers no {missing} controller here"));
                false
            }
            None => true,
        }
    }

    /// `ctr run --rm` of `cmd` in the busybox rootfs through the shim under test, with `extra`
    /// flags; panics with ctr's stderr if it fails. Returns stdout.
    pub fn ctr_run(&self, id: &str, extra: &[&str], cmd: &[&str]) -> String {
        let rootfs = crate::rootfs::busybox().to_string_lossy().into_owned();
        let mut args = vec!["run", "--rm", "--env", "PATH=/bin"];
        args.extend_from_slice(extra);
        // ctr asks for 1024 CPU shares by default, which runtimes write to `cpu.weight` on v2.
        if self.lacks_controller("cpu") {
            args.extend_from_slice(&["--cpu-shares", "0"]);
        }
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

/// capability(7) number of CAP_SYS_RESOURCE.
const CAP_SYS_RESOURCE: u32 = 24;

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
    // crun raises RLIMIT_MEMLOCK for its cgroup v2 device filter, which root cannot do here.
    if binary == Binary::Crun
        && containerd.cgroup_v2_controllers().is_some()
        && !crate::has_capability(CAP_SYS_RESOURCE)
    {
        skip("crun on cgroup v2 needs CAP_SYS_RESOURCE (RLIMIT_MEMLOCK), which root lacks here");
        return;
    }
    let client = Client::new(&containerd, shim, binary).await;
    body(Ctx {
        shim,
        binary,
        containerd,
        client,
    })
    .await
}

/// Records that the running test did not run here, and why: on stderr, and in the file
/// `$INTEGRATION_SKIP_LOG` names, so that the suite's summary counts skips apart from passes.
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    eprintln!("skipped {test}: {reason}");
    if let Some(log) = std::env::var_os("INTEGRATION_SKIP_LOG") {
        use std::io::Write;
        let line = format!("{test}: {reason}\n");
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        appended.expect("append to $INTEGRATION_SKIP_LOG");
    }
}
