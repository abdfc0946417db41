//! A typed driver for an OCI runtime CLI (runc or crun).
//!
//! Every invocation goes through libshim's reaper (`reaper::run`): the shim is a subreaper with
//! one `waitpid(-1)` loop, and a private wait here would race it for the runtime's exit status.
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use libshim::backend::{CheckpointRequest, ProcessIo};
use libshim::reaper;
use libshim::{BackendError, ContainerInfo, RuntimeOptions};

use crate::failure::last_errors;

/// Where runc keeps container state unless the Root option says otherwise.
pub const DEFAULT_ROOT: &str = "/run/containerd/runc";
const DEFAULT_BINARY: &str = "runc";

/// One runtime binary with its global flags, for one container's namespace.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub binary: String,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    /// runc's `--log`: errors arrive here as JSON lines.
    pub log: Option<PathBuf>,
    /// The criu binary for checkpoint and restore, if not the one on PATH (legacy CriuPath).
    pub criu: Option<String>,
    /// The umask the runtime is started with: an exec's own (see `reaper::run_with_umask`).
    pub child_umask: Option<u32>,
}

impl Runtime {
    pub fn new(options: &RuntimeOptions, namespace: &str, bundle: Option<&Path>) -> Self {
        let binary = if options.binary_name.is_empty() {
            DEFAULT_BINARY
        } else {
            &options.binary_name
        };
        let root = if options.root.is_empty() {
            DEFAULT_ROOT
        } else {
            &options.root
        };
        Self {
            binary: binary.to_string(),
            root: Path::new(root).join(namespace),
            systemd_cgroup: options.systemd_cgroup,
            log: bundle.map(|b| b.join("log.json")),
            criu: Some(options.criu_path.clone()).filter(|p| !p.is_empty()),
            child_umask: None,
        }
    }

    pub fn for_container(info: &ContainerInfo) -> Self {
        Self::new(&info.options, &info.namespace, Some(&info.bundle))
    }

    /// The global flags that precede every subcommand.
    pub fn global_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--root".into(), self.root.clone().into()];
        if let Some(log) = &self.log {
            args.extend(["--log".into(), log.clone().into()]);
            args.extend(["--log-format".into(), "json".into()]);
        }
        if self.systemd_cgroup {
            args.push("--systemd-cgroup".into());
        }
        if let Some(criu) = &self.criu {
            args.extend(["--criu".into(), criu.into()]);
        }
        args
    }

    /// Runs `<binary> <global flags> <args>` with `io` as the runtime's (and so the new
    /// process's) stdio, and turns a failure into the runtime's own error message.
    pub async fn run(
        &self,
        action: &'static str,
        args: Vec<OsString>,
        io: Option<ProcessIo>,
        cwd: Option<&Path>,
    ) -> Result<Vec<u8>, BackendError> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.global_args()).args(args);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let captured = match io {
            Some(ProcessIo::Pipes {
                stdin,
                stdout,
                stderr,
            }) => {
                cmd.stdin(stdin.map_or_else(Stdio::null, Stdio::from))
                    .stdout(stdout.map_or_else(Stdio::null, Stdio::from))
                    .stderr(stderr.map_or_else(Stdio::null, Stdio::from));
                false
            }
            Some(ProcessIo::Terminal { .. }) => {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                false
            }
            None => {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                true
            }
        };
        if let Some(log) = &self.log {
            // Only this call's errors should reach the caller.
            let _ = std::fs::remove_file(log);
        }
        let out = reaper::run_with_umask(&mut cmd, self.child_umask)
            .await
            .map_err(|e| self.spawn_error(action, cwd, e))?;
        // `cmd` holds the child's ends of the stdio pipes until it is dropped; the copies see
        // EOF only once every holder has closed them.
        drop(cmd);
        if out.success() {
            return Ok(out.stdout);
        }
        let mut message = self
            .log
            .as_deref()
            .and_then(last_errors)
            .unwrap_or_default();
        if message.is_empty() && captured {
            message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        }
        if message.is_empty() {
            message = format!("exit status {}", out.status);
        }
        // runc already says "runc create failed: ..."; our error adds that prefix itself.
        let prefix = format!("{} {action} failed: ", self.binary);
        if let Some(rest) = message.strip_prefix(&prefix) {
            message = rest.to_string();
        }
        Err(self.failure(action, message))
    }
}

pub fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

/// `create` arguments.
pub fn create_args(
    id: &str,
    bundle: &Path,
    options: &RuntimeOptions,
    console_socket: Option<&Path>,
) -> Vec<OsString> {
    let mut args = vec![
        os("create"),
        os("--bundle"),
        os(bundle),
        os("--pid-file"),
        os(bundle.join("init.pid")),
    ];
    if let Some(sock) = console_socket {
        args.extend([os("--console-socket"), os(sock)]);
    }
    if options.no_pivot_root {
        args.push(os("--no-pivot"));
    }
    if options.no_new_keyring {
        args.push(os("--no-new-keyring"));
    }
    args.push(os(id));
    args
}

/// `kill [--all] <id> <signal>` arguments.
pub fn kill_args(id: &str, signal: u32, all: bool) -> Vec<OsString> {
    let mut args = vec![os("kill")];
    if all {
        args.push(os("--all"));
    }
    args.extend([os(id), os(signal.to_string())]);
    args
}

/// `delete [--force] <id>` arguments.
pub fn delete_args(id: &str, force: bool) -> Vec<OsString> {
    let mut args = vec![os("delete")];
    if force {
        args.push(os("--force"));
    }
    args.push(os(id));
    args
}

/// The CRIU flags `checkpoint` and `restore` share.
fn criu_args(request: &CheckpointRequest) -> Vec<OsString> {
    let mut args = vec![os("--image-path"), os(&request.image_path)];
    args.extend([os("--work-path"), os(&request.work_path)]);
    if request.open_tcp {
        args.push(os("--tcp-established"));
    }
    if request.external_unix_sockets {
        args.push(os("--ext-unix-sk"));
    }
    if request.terminal {
        args.push(os("--shell-job"));
    }
    if request.file_locks {
        args.push(os("--file-locks"));
    }
    if !request.cgroups_mode.is_empty() {
        args.extend([os("--manage-cgroups-mode"), os(&request.cgroups_mode)]);
    }
    for ns in &request.empty_namespaces {
        args.extend([os("--empty-ns"), os(ns)]);
    }
    args
}

/// `checkpoint` arguments.
pub fn checkpoint_args(id: &str, request: &CheckpointRequest) -> Vec<OsString> {
    let mut args = vec![os("checkpoint")];
    args.extend(criu_args(request));
    if let Some(parent) = &request.parent {
        args.extend([os("--parent-path"), os(parent)]);
    }
    if !request.exit {
        args.push(os("--leave-running"));
    }
    args.push(os(id));
    args
}

/// `restore --detach` arguments.
pub fn restore_args(
    id: &str,
    bundle: &Path,
    options: &RuntimeOptions,
    request: &CheckpointRequest,
    console_socket: Option<&Path>,
) -> Vec<OsString> {
    let mut args = vec![
        os("restore"),
        os("--detach"),
        os("--bundle"),
        os(bundle),
        os("--pid-file"),
        os(bundle.join("init.pid")),
    ];
    args.extend(criu_args(request));
    if let Some(sock) = console_socket {
        args.extend([os("--console-socket"), os(sock)]);
    }
    if options.no_pivot_root {
        args.push(os("--no-pivot"));
    }
    args.push(os(id));
    args
}

/// The umask an exec's process spec asks for (`user.umask`). runc 1.2+ and crun set it
/// themselves; runc 1.1 leaves the process the umask runc was started with.
pub fn umask_of(process: &[u8]) -> Option<u32> {
    let spec: serde_json::Value = serde_json::from_slice(process).ok()?;
    spec.pointer("/user/umask")?
        .as_u64()
        .map(|m| m as u32 & 0o777)
}

/// `exec --detach` arguments.
pub fn exec_args(
    id: &str,
    process_file: &Path,
    pid_file: &Path,
    console_socket: Option<&Path>,
) -> Vec<OsString> {
    let mut args = vec![
        os("exec"),
        os("--detach"),
        os("--pid-file"),
        os(pid_file),
        os("--process"),
        os(process_file),
    ];
    if let Some(sock) = console_socket {
        args.extend([os("--console-socket"), os(sock)]);
    }
    args.push(os(id));
    args
}

pub fn console_socket_of(io: &ProcessIo) -> Option<&Path> {
    match io {
        ProcessIo::Terminal { console_socket } => Some(console_socket),
        ProcessIo::Pipes { .. } => None,
    }
}

pub fn read_pid(path: &Path) -> Result<u32, BackendError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BackendError::io(format!("read pid file {}", path.display()), e))?;
    text.trim().parse().map_err(|_| {
        BackendError::io(
            format!("pid file {} holds {text:?}", path.display()),
            std::io::Error::from(std::io::ErrorKind::InvalidData),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_per_namespace_and_flags_follow_options() {
        let opts = RuntimeOptions {
            binary_name: "crun".into(),
            root: "/r".into(),
            systemd_cgroup: true,
            ..Default::default()
        };
        let rt = Runtime::new(&opts, "k8s.io", Some(Path::new("/b")));
        assert_eq!(rt.binary, "crun");
        let args: Vec<String> = rt
            .global_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--root",
                "/r/k8s.io",
                "--log",
                "/b/log.json",
                "--log-format",
                "json",
                "--systemd-cgroup"
            ]
        );
        let with_criu = RuntimeOptions {
            criu_path: "/opt/criu".into(),
            ..Default::default()
        };
        let args = Runtime::new(&with_criu, "default", None).global_args();
        assert!(args.ends_with(&[os("--criu"), os("/opt/criu")]), "{args:?}");
        let default = Runtime::new(&RuntimeOptions::default(), "default", None);
        assert_eq!(default.binary, "runc");
        assert_eq!(default.root, Path::new("/run/containerd/runc/default"));
    }

    #[test]
    fn create_args_carry_options() {
        let opts = RuntimeOptions {
            no_pivot_root: true,
            no_new_keyring: true,
            ..Default::default()
        };
        let args = create_args("c1", Path::new("/b"), &opts, Some(Path::new("/s.sock")));
        let args: Vec<_> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "create",
                "--bundle",
                "/b",
                "--pid-file",
                "/b/init.pid",
                "--console-socket",
                "/s.sock",
                "--no-pivot",
                "--no-new-keyring",
                "c1"
            ]
        );
    }

    #[test]
    fn checkpoint_and_restore_args() {
        let req = CheckpointRequest {
            image_path: "/img".into(),
            work_path: "/work".into(),
            open_tcp: true,
            terminal: true,
            ..Default::default()
        };
        let args: Vec<_> = checkpoint_args("c", &req)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "checkpoint",
                "--image-path",
                "/img",
                "--work-path",
                "/work",
                "--tcp-established",
                "--shell-job",
                "--leave-running",
                "c"
            ]
        );
        let exit = CheckpointRequest {
            exit: true,
            ..req.clone()
        };
        assert!(!checkpoint_args("c", &exit).contains(&os("--leave-running")));
        let args = restore_args("c", Path::new("/b"), &RuntimeOptions::default(), &req, None);
        assert_eq!(
            args[..4],
            [os("restore"), os("--detach"), os("--bundle"), os("/b")]
        );
        assert!(args.contains(&os("--image-path")) && args.ends_with(&[os("c")]));
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn exec_kill_delete_args() {
        let args = exec_args("c", Path::new("/b/p.json"), Path::new("/b/p.pid"), None);
        assert_eq!(
            strings(&args),
            [
                "exec",
                "--detach",
                "--pid-file",
                "/b/p.pid",
                "--process",
                "/b/p.json",
                "c"
            ]
        );
        let args = exec_args("c", Path::new("/p"), Path::new("/q"), Some(Path::new("/s")));
        assert!(args.ends_with(&[os("--console-socket"), os("/s"), os("c")]));
        assert_eq!(
            strings(&kill_args("c", 9, true)),
            ["kill", "--all", "c", "9"]
        );
        assert_eq!(strings(&kill_args("c", 15, false)), ["kill", "c", "15"]);
        assert_eq!(strings(&delete_args("c", true)), ["delete", "--force", "c"]);
        assert_eq!(strings(&delete_args("c", false)), ["delete", "c"]);
    }
}
