//! What a failed runtime invocation means: which `BackendError`, and so which ttrpc code,
//! the runtime's own words become.
use std::path::Path;

use libshim::BackendError;

use crate::cli::Runtime;

impl Runtime {
    /// A failed spawn: ENOENT or EACCES means the binary cannot be run, unless it was the
    /// working directory (the bundle) that is missing, which spawn reports the same way.
    pub(crate) fn spawn_error(
        &self,
        action: &str,
        cwd: Option<&Path>,
        e: std::io::Error,
    ) -> BackendError {
        if let Some(dir) = cwd.filter(|d| !d.is_dir()) {
            return BackendError::io(
                format!("{} {action}: bundle {}", self.binary, dir.display()),
                e,
            );
        }
        match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                BackendError::MissingBinary {
                    binary: self.binary.clone(),
                    source: e,
                }
            }
            _ => BackendError::io(format!("run {} {action}", self.binary), e),
        }
    }

    /// The error for `action` failing with the runtime's `message`.
    pub(crate) fn failure(&self, action: &'static str, message: String) -> BackendError {
        if self.is_not_found(&message) || (action == "kill" && process_finished(&message)) {
            return BackendError::NotFound(format!("{} {action}: {message}", self.binary));
        }
        BackendError::Runtime {
            runtime: self.binary.clone(),
            action,
            message,
        }
    }

    /// Whether the runtime said the container does not exist. runc says so in words; crun
    /// only reports ENOENT on the container's state directory under the root.
    pub fn is_not_found(&self, message: &str) -> bool {
        message.contains("container does not exist")
            || message.contains("container not found")
            || (message.contains("No such file or directory")
                && message.contains(&*self.root.to_string_lossy()))
    }
}

/// Whether a kill failed only because the process had already exited: the init can exit
/// between the shim's state check and the runtime's, before the shim has handled the exit.
/// containerd's Go shim answers these as NotFound (`checkKillError`), which containerd ignores
/// when it stops a task (StopPodSandbox); an error there fails the stop.
/// runc: "container not running"; Go's os.ErrProcessDone: "os: process already finished";
/// crun reports ESRCH: "kill container: No such process" (1.8), "process not running: No
/// such process" (1.28).
pub fn process_finished(message: &str) -> bool {
    message.contains("container not running")
        || message.contains("process already finished")
        || message.to_ascii_lowercase().contains("no such process")
}

/// The `msg` of every error-level line of runc's or crun's JSON log, joined.
pub fn last_errors(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let msgs: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .collect();
    (!msgs.is_empty()).then(|| msgs.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use libshim::RuntimeOptions;

    #[test]
    fn errors_come_from_the_json_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        std::fs::write(
            &log,
            "{\"level\":\"warning\",\"msg\":\"ignored\"}\n\
             {\"level\":\"error\",\"msg\":\"runc create failed: exec: \\\"nope\\\": executable file not found in $PATH\",\"time\":\"t\"}\n",
        )
        .unwrap();
        let msg = last_errors(&log).unwrap();
        assert!(msg.contains("executable file not found"), "{msg}");
        assert!(!msg.contains("ignored"));
        assert!(last_errors(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn not_found_wording() {
        let opts = RuntimeOptions {
            root: "/run/crun".into(),
            ..Default::default()
        };
        let rt = Runtime::new(&opts, "default", None);
        assert!(rt.is_not_found("container does not exist"));
        assert!(rt.is_not_found(
            "error opening file `/run/crun/default/c1/status`: No such file or directory"
        ));
        assert!(rt.is_not_found(
            "cannot open directory '/run/crun/default/c1': No such file or directory"
        ));
        // ENOENT about anything else (a missing binary in the container) is a real failure.
        assert!(!rt.is_not_found("executable file `nope` not found: No such file or directory"));
        assert!(!rt.is_not_found("permission denied"));
    }

    #[test]
    fn a_kill_of_a_finished_process_is_not_found() {
        let rt = Runtime::new(&RuntimeOptions::default(), "default", None);
        let not_found = |action, message: &str| {
            matches!(
                rt.failure(action, message.to_string()),
                BackendError::NotFound(_)
            )
        };
        // runc 1.1 and later, Go's os.ErrProcessDone, crun 1.8, crun 1.28.
        for message in [
            "container not running",
            "os: process already finished",
            "kill container: No such process",
            "open pidfd: No such process",
            "process not running: No such process",
        ] {
            assert!(not_found("kill", message), "{message}");
            // Only a kill has nothing left to do; for any other action it is a failure.
            assert!(!not_found("exec", message), "{message}");
        }
        assert!(not_found("kill", "container does not exist"));
        let err = rt.failure("kill", "permission denied".into());
        assert!(
            matches!(&err, BackendError::Runtime { action: "kill", .. }),
            "{err}"
        );
    }

    #[test]
    fn missing_bundle_is_not_a_missing_binary() {
        let rt = Runtime::new(&RuntimeOptions::default(), "default", None);
        let gone = Path::new("/nonexistent/bundle");
        let err = rt.spawn_error("create", Some(gone), std::io::ErrorKind::NotFound.into());
        assert!(matches!(err, BackendError::Io { .. }), "{err}");
        let err = rt.spawn_error("create", None, std::io::ErrorKind::NotFound.into());
        assert!(matches!(err, BackendError::MissingBinary { .. }), "{err}");
    }
}
