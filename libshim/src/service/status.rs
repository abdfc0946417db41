//! The single mapping from our errors to ttrpc status codes.
use ttrpc::{get_status, Code};

use crate::error::{BackendError, Error};

fn code(err: &Error) -> Code {
    match err {
        Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
        Error::NotFound(_) => Code::NOT_FOUND,
        Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
        Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
        Error::NotImplemented(_) => Code::UNIMPLEMENTED,
        Error::Io { .. } => Code::INTERNAL,
        Error::Backend(b) => match b {
            BackendError::NotImplemented(_) => Code::UNIMPLEMENTED,
            BackendError::NotFound(_) => Code::NOT_FOUND,
            BackendError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            BackendError::MissingBinary { .. } => Code::FAILED_PRECONDITION,
            // containerd's Go shim reports runtime failures as UNKNOWN; clients match on it.
            BackendError::Runtime { .. } => Code::UNKNOWN,
            BackendError::Io { .. } => Code::INTERNAL,
        },
    }
}

impl From<Error> for ttrpc::Error {
    fn from(err: Error) -> Self {
        let code = code(&err);
        let msg = crate::error::error_chain(&err);
        log::debug!("request failed: {code:?}: {msg}");
        ttrpc::Error::RpcStatus(get_status(code, msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(err: Error) -> (Code, String) {
        match ttrpc::Error::from(err) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn not_implemented_is_unimplemented_not_not_found() {
        let (c, m) = status_of(Error::Backend(BackendError::NotImplemented("checkpoint")));
        assert_eq!(c, Code::UNIMPLEMENTED);
        assert!(m.contains("checkpoint"));
    }

    #[test]
    fn runtime_message_reaches_the_caller() {
        let (c, m) = status_of(Error::Backend(BackendError::Runtime {
            runtime: "runc".into(),
            action: "create",
            message: "exec: \"nope\": executable file not found".into(),
        }));
        assert_eq!(c, Code::UNKNOWN);
        assert!(
            m.contains("runc create failed") && m.contains("nope"),
            "{m}"
        );
    }

    #[test]
    fn io_source_is_appended() {
        let (c, m) = status_of(Error::io(
            "open fifo /x",
            std::io::Error::from_raw_os_error(libc::ENOENT),
        ));
        assert_eq!(c, Code::INTERNAL);
        assert!(
            m.contains("open fifo /x") && m.contains("No such file"),
            "{m}"
        );
    }
}
