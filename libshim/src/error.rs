//! Errors of the library and of backends. Each variant says which ttrpc code it becomes;
//! the mapping itself lives in one place, `service::status`.
use std::io;

use thiserror::Error;

/// What a backend reports.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The backend cannot serve this method at all.
    #[error("{0} is not implemented by this shim's runtime backend")]
    NotImplemented(&'static str),
    /// The runtime refused; `message` carries its own words (runc's log.json, libcontainer's error).
    #[error("{runtime} {action} failed: {message}")]
    Runtime {
        runtime: String,
        action: &'static str,
        message: String,
    },
    /// The runtime binary cannot be executed.
    #[error("runtime binary {binary:?} cannot be run: {source}")]
    MissingBinary {
        binary: String,
        #[source]
        source: io::Error,
    },
    /// The container or process is unknown to the runtime, or already gone; the message says
    /// which, in the runtime's words.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl BackendError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// What the task service answers with.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0} is not implemented by this shim")]
    NotImplemented(&'static str),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error with its whole chain of causes in one line (each cause once), so the caller sees
/// the root cause: the top-level message alone rarely names what went wrong.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}
