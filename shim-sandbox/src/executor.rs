//! What runs in the container's init (or exec'd) process in place of `execvp`: libcontainer's
//! default executor, after giving the process the signal state a runtime binary would have,
//! a writable /dev/null as stdio where libcontainer reopened it read-only (`dev_null`) and, for
//! an exec, the container's seccomp profile.
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
    /// An exec's user namespace and credentials, which libcontainer leaves out too.
    pub userns: Option<Arc<crate::exec_userns::Plan>>,
}

impl Executor for DefaultSignalsExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        libshim::reset_signals_for_exec()
            .map_err(|e| ExecutorError::Other(format!("reset signal dispositions: {e}")))?;
        // Before an exec's seccomp profile, which may refuse open.
        crate::dev_null::make_stdio_writable();
        match (&self.userns, &self.seccomp) {
            (Some(userns), seccomp) => {
                userns.join().map_err(ExecutorError::Other)?;
                let nnp = userns.no_new_privileges;
                let install = |plan: &Option<Arc<crate::exec_seccomp::Plan>>| match plan {
                    Some(plan) => crate::exec_seccomp::install(plan).map_err(ExecutorError::Other),
                    None => Ok(()),
                };
                if !nnp {
                    install(seccomp)?;
                }
                userns.set_credentials().map_err(ExecutorError::Other)?;
                if nnp {
                    install(seccomp)?;
                }
            }
            (None, Some(plan)) => crate::exec_seccomp::apply(plan).map_err(ExecutorError::Other)?,
            (None, None) => {}
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        // libcontainer wants PATH in the environment even for a program named by its path;
        // runc does not look PATH up then, and pause images (containerd's CRI runs `/pause`)
        // carry none.
        if let Some(program) = named_by_path_without_path_env(spec) {
            return check_program(program);
        }
        DefaultExecutor {}.validate(spec)
    }
}

/// The program, when it is named by a path (has a `/`) and the environment has no PATH.
fn named_by_path_without_path_env(spec: &Spec) -> Option<&str> {
    let process = spec.process().as_ref()?;
    let program = process.args().as_ref()?.first()?;
    let has_path = process
        .env()
        .as_ref()
        .is_some_and(|env| env.iter().any(|e| e.starts_with("PATH=")));
    (program.contains('/') && !has_path).then_some(program.as_str())
}

/// What libcontainer checks of a program it found on PATH: a file that may be executed.
fn check_program(program: &str) -> Result<(), ExecutorValidationError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |why: String| ExecutorValidationError::ArgValidationError(why);
    let meta =
        std::fs::metadata(program).map_err(|e| bad(format!("executable {program:?}: {e}")))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(bad(format!("{program:?} is not an executable file")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(args: &[&str], env: &[&str]) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": args, "env": env, "cwd": "/", "user": {"uid": 0, "gid": 0}}
        }))
        .unwrap()
    }

    #[test]
    fn a_program_named_by_its_path_needs_no_path_variable() {
        let pause = spec(&["/bin/sh"], &[]);
        assert_eq!(named_by_path_without_path_env(&pause), Some("/bin/sh"));
        assert!(DefaultSignalsExecutor::default().validate(&pause).is_ok());
        let missing = spec(&["/no/such/pause"], &[]);
        let err = DefaultSignalsExecutor::default()
            .validate(&missing)
            .unwrap_err();
        assert!(err.to_string().contains("/no/such/pause"), "{err}");
        assert!(named_by_path_without_path_env(&spec(&["sh"], &[])).is_none());
        assert!(named_by_path_without_path_env(&spec(&["/bin/sh"], &["PATH=/bin"])).is_none());
    }
}
