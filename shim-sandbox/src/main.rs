//! `containerd-shim-sandbox-v2`: runtime type `io.containerd.sandbox.v2`.
use libshim::bootstrap::{run, ShimName};

const NAME: ShimName = ShimName {
    binary: "containerd-shim-sandbox-v2",
    runtime_type: "io.containerd.sandbox.v2",
};

fn main() {
    run(NAME, shim_sandbox::SandboxBackend::new)
}
