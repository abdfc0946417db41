//! What runs in the container's init (or exec'd) process in place of `execvp`: libcontainer's
//! default executor, after giving the process the signal state a runtime binary would have
//! and, for an exec, the container's seccomp profile.
use std::sync::Arc;

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

/// libcontainer clones the shim, so without this the container inherits the shim's ignored
/// SIGPIPE (runc and crun are fresh programs and hand over default dispositions).
#[derive(Clone, Default)]
pub struct DefaultSignalsExecutor {
    /// An exec's seccomp profile, which libcontainer leaves out of execs.
    pub seccomp: Option<Arc<crate::exec_seccomp::Plan>>,
}

impl Executor for DefaultSignalsExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        libshim::reset_signals_for_exec()
            .map_err(|e| ExecutorError::Other(format!("reset signal dispositions: {e}")))?;
        if let Some(plan) = &self.seccomp {
            crate::exec_seccomp::apply(plan).map_err(ExecutorError::Other)?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}
