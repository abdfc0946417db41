//! The CRI runtime handlers of the suite's containerd: one per shim and OCI runtime.

/// A CRI runtime handler of the shared containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// `io.containerd.runc.rs-v2` with runc (`ConfigPath` to a TOML naming runc).
    RuncRsRunc,
    /// `io.containerd.runc.rs-v2` with crun (`ConfigPath` to a TOML with `BinaryName = "crun"`).
    RuncRsCrun,
    /// `io.containerd.sandbox.v2`: libcontainer inside the shim.
    Sandbox,
    /// containerd's Go shim, `io.containerd.runc.v2` with runc: the reference.
    GoRunc,
}

impl Handler {
    pub const ALL: [Handler; 4] = [
        Handler::RuncRsRunc,
        Handler::RuncRsCrun,
        Handler::Sandbox,
        Handler::GoRunc,
    ];

    /// The handler's name in containerd's config (`RunPodSandboxRequest.runtime_handler`).
    pub fn name(self) -> &'static str {
        match self {
            Handler::RuncRsRunc => "runc-rs",
            Handler::RuncRsCrun => "runc-rs-crun",
            Handler::Sandbox => "sandbox",
            Handler::GoRunc => "go-runc",
        }
    }

    pub fn runtime_type(self) -> &'static str {
        match self {
            Handler::RuncRsRunc | Handler::RuncRsCrun => "io.containerd.runc.rs-v2",
            Handler::Sandbox => "io.containerd.sandbox.v2",
            Handler::GoRunc => "io.containerd.runc.v2",
        }
    }

    /// The shim binary containerd starts for this handler.
    pub fn shim_binary(self) -> &'static str {
        match self {
            Handler::RuncRsRunc | Handler::RuncRsCrun => "containerd-shim-runc-rs-v2",
            Handler::Sandbox => "containerd-shim-sandbox-v2",
            Handler::GoRunc => "containerd-shim-runc-v2",
        }
    }

    /// The OCI runtime binary the shim executes, if any.
    pub fn oci_runtime(self) -> Option<&'static str> {
        match self {
            Handler::RuncRsRunc | Handler::GoRunc => Some("runc"),
            Handler::RuncRsCrun => Some("crun"),
            Handler::Sandbox => None,
        }
    }
}
