//! `containerd-shim-runc-rs-v2`: runtime type `io.containerd.runc.rs-v2`.
fn main() {
    libshim::bootstrap::run("containerd-shim-runc-rs-v2", shim_runc::RuncBackend::new)
}
