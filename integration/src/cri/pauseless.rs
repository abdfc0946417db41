//! The CRI suite in pauseless mode (`INTEGRATION_CRI_SANDBOXER=shim`, containerd 2.x): our
//! handlers get `sandboxer = "shim"`, so CRI runs each pod through the shim's Sandbox API
//! instead of a pause container; the Go shim's handler keeps the pause container (it does not
//! serve the Sandbox API).
use super::client::Ctx;
use super::daemon::CriDaemon;
use super::handler::Handler;

static FORCED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the suite was asked to run pods through the Sandbox API.
pub fn requested() -> bool {
    FORCED.load(std::sync::atomic::Ordering::SeqCst)
        || std::env::var("INTEGRATION_CRI_SANDBOXER").is_ok_and(|v| v == "shim")
}

/// Asks for pauseless mode from within a test binary: every test of that binary calls it
/// before the binary's shared containerd is started.
pub fn force() {
    FORCED.store(true, std::sync::atomic::Ordering::SeqCst);
}

impl CriDaemon {
    /// Whether `handler`'s pods run without a pause container on this containerd. Not the
    /// crun handler: it needs options (BinaryName), and containerd 2.0–2.2 take a
    /// `sandboxer = "shim"` handler's options only in runc's type, which CRI gives only to
    /// `io.containerd.runc.v2`; and with that type they start the Go shim for the pod whatever
    /// `runtime_path` says. (Bookworm's crun cannot run 2.x's specs anyway.)
    pub fn pauseless(&self, handler: Handler) -> bool {
        requested()
            && self.version().0 >= 2
            && matches!(handler, Handler::RuncRsRunc | Handler::Sandbox)
    }

    /// `handler`'s table in containerd's config in pauseless mode: no `[options]`. containerd
    /// 2.0–2.2 hand a pod's containers to its shim through runc's options type (its
    /// TaskApiAddress field): any other options type fails StartContainer ("can't unmarshal
    /// type runtimeoptions.v1.Options"); 2.3 no longer needs it. Our runc shim runs runc then.
    pub(super) fn pauseless_runtime(&self, handler: Handler, table: &str) -> Option<String> {
        self.pauseless(handler).then(|| {
            format!(
                "[{table}]\n  runtime_type = \"{}\"\n  sandboxer = \"shim\"\n",
                handler.runtime_type()
            )
        })
    }
}

impl Ctx {
    /// Whether this case's pods run without a pause container.
    pub fn pauseless(&self) -> bool {
        self.daemon.pauseless(self.handler)
    }

    /// Why a host-network pod cannot be run here, if it cannot: containerd 2.0–2.2 panic on
    /// the first host-network pod of a `sandboxer = "shim"` handler (a nil pointer in
    /// core/runtime/v2/bundle.go, fixed in 2.3.0), which would end the suite's containerd.
    pub fn host_network_refusal(&self) -> Option<String> {
        let (major, minor) = self.daemon.version();
        (self.pauseless() && major == 2 && minor < 3).then(|| {
            format!(
                "containerd {major}.{minor} panics on host-network pods with sandboxer \"shim\" \
                 (fixed in 2.3.0)"
            )
        })
    }
}
