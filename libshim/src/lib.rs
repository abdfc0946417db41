//! libshim: the runtime-independent part of a containerd shim v2.
//!
//! Layers, imports pointing down only:
//! - [`bootstrap`]: the `start`/`delete` actions and the serving process's set-up.
//! - [`service`]: the ttrpc task service, generic over a [`Backend`].
//! - [`process`]: per-process bookkeeping and the state machine.
//! - [`stdio`], [`events`], [`reaper`], [`mount`], [`metrics`]: the mechanisms the service uses.
//! - [`backend`]: the one trait a low-level runtime implements.
pub mod backend;
pub mod error;
pub mod options;
pub mod reaper;
pub mod service;

pub use backend::{Backend, CheckpointRequest, ContainerInfo, ProcessIo};
pub use error::{error_chain, BackendError, Error};
pub use options::RuntimeOptions;
pub mod bootstrap;
pub mod events;
pub mod fuzzing;
pub mod metrics;
pub mod mount;
pub mod process;
pub mod stdio;
mod sys;
pub mod ttrpc_server;
pub use sys::{reset_signals_for_exec, thread_count};
