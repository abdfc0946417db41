//! The ttrpc/protobuf API our shims speak.
//!
//! Almost everything comes from `containerd-shim-protos`; this crate adds what it lacks (the
//! legacy `containerd.linux.runc` option types and CRI's `runtimeoptions.v1.Options`) and
//! names the type URLs in one place.
#![allow(unsafe_code)] // generated code only; no hand-written unsafe here

pub use containerd_shim_protos::*;

/// `containerd.linux.runc.*`: option types older clients send to non-runc runtime types.
#[allow(clippy::all, missing_docs, unused, nonstandard_style)]
pub mod runctypes {
    include!(concat!(env!("OUT_DIR"), "/runctypes/runc.rs"));
}

/// `runtimeoptions.v1.Options`: what containerd's CRI sends for runtime types other than
/// `io.containerd.runc.v2`.
#[allow(clippy::all, missing_docs, unused, nonstandard_style)]
pub mod runtimeoptions {
    include!(concat!(
        env!("OUT_DIR"),
        "/runtimeoptions/runtimeoptions.rs"
    ));
}

/// Type URLs as containerd's typeurl registry writes them (no `type.googleapis.com/` prefix).
pub mod type_urls {
    pub const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
    pub const RUNC_CHECKPOINT_OPTIONS: &str = "containerd.runc.v1.CheckpointOptions";
    pub const RUNC_PROCESS_DETAILS: &str = "containerd.runc.v1.ProcessDetails";
    pub const LEGACY_CREATE_OPTIONS: &str = "containerd.linux.runc.CreateOptions";
    pub const LEGACY_RUNC_OPTIONS: &str = "containerd.linux.runc.RuncOptions";
    pub const LEGACY_CHECKPOINT_OPTIONS: &str = "containerd.linux.runc.CheckpointOptions";
    /// containerd registers no URL for it: typeurl falls back to the proto's full name.
    pub const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";
}
