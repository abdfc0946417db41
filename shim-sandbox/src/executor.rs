//! What runs in the container's init (or exec'd) process in place of `execvp`: libcontainer's
//! default executor, after giving the process the signal state a runtime binary would have.
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

/// libcontainer clones the shim, so without this the container inherits the shim's ignored
/// SIGPIPE (runc and crun are fresh programs and hand over default dispositions).
#[derive(Clone, Default)]
pub struct DefaultSignalsExecutor;

impl Executor for DefaultSignalsExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        libshim::reset_signals_for_exec()
            .map_err(|e| ExecutorError::Other(format!("reset signal dispositions: {e}")))?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}
