//! The ttrpc/protobuf API our shims speak.
//!
//! Almost everything comes from `containerd-shim-protos`; this crate adds the legacy
//! `containerd.linux.runc` option types that it lacks and names the type URLs in one place.
#![allow(unsafe_code)] // generated code only; no hand-written unsafe here

pub use containerd_shim_protos::*;

/// `containerd.linux.runc.*`: option types older clients send to non-runc runtime types.
#[allow(clippy::all, missing_docs, unused, nonstandard_style)]
pub mod runctypes {
    include!(concat!(env!("OUT_DIR"), "/runctypes/runc.rs"));
}

/// Type URLs as containerd's typeurl registry writes them (no `type.googleapis.com/` prefix).
pub mod type_urls {
    pub const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
    pub const RUNC_CHECKPOINT_OPTIONS: &str = "containerd.runc.v1.CheckpointOptions";
    pub const RUNC_PROCESS_DETAILS: &str = "containerd.runc.v1.ProcessDetails";
    pub const LEGACY_CREATE_OPTIONS: &str = "containerd.linux.runc.CreateOptions";
    pub const LEGACY_RUNC_OPTIONS: &str = "containerd.linux.runc.RuncOptions";
    pub const LEGACY_CHECKPOINT_OPTIONS: &str = "containerd.linux.runc.CheckpointOptions";
}
