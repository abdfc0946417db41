//! The runc backend: libshim driving an OCI runtime CLI (runc or crun).
pub mod backend;
pub mod cli;
pub mod failure;
pub mod idmap;

pub use backend::RuncBackend;
