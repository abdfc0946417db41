//! `containerd-shim-runc-rs-v2`: runtime type `io.containerd.runc.rs-v2`.
use libshim::bootstrap::{run, ShimName};

const NAME: ShimName = ShimName {
    binary: "containerd-shim-runc-rs-v2",
    runtime_type: "io.containerd.runc.rs-v2",
};

fn main() {
    run(NAME, shim_runc::RuncBackend::new)
}
