//! How libcontainer is called: the builder with our stdio, the state root, loading a
//! container, and the guard every call runs under.
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use libshim::backend::ProcessIo;
use libshim::{BackendError, ContainerInfo, RuntimeOptions};

use crate::executor::DefaultSignalsExecutor;

/// The name in errors and `-v`.
pub const RUNTIME: &str = "libcontainer";
/// Where container state lives unless the Root option says otherwise.
const DEFAULT_ROOT: &str = "/run/containerd/sandbox";

/// `<root>/<namespace>`: libcontainer keeps one directory per container below it.
pub fn state_root(options: &RuntimeOptions, namespace: &str) -> PathBuf {
    let root = if options.root.is_empty() {
        DEFAULT_ROOT
    } else {
        &options.root
    };
    Path::new(root).join(namespace)
}

/// Turns a libcontainer (or libcgroups) error into the backend's, with its whole chain of
/// causes.
pub fn failed<E: std::error::Error>(action: &'static str) -> impl Fn(E) -> BackendError {
    move |e| BackendError::Runtime {
        runtime: RUNTIME.to_string(),
        action,
        message: libshim::error_chain(&e),
    }
}

/// Where every libcontainer call runs, and where the shim is left after one: a directory that
/// outlives every container. The forked server starts in its group's first bundle, which
/// containerd removes with that container; libcontainer calls getcwd for its notify socket
/// (failing the call) and for a console socket (panicking on failure).
const WORKDIR: &str = "/";

/// Runs one libcontainer call in [`WORKDIR`]; see [`guarded_in`].
pub fn guarded<T, E>(f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    guarded_in(Path::new(WORKDIR), f)
}

/// Runs one libcontainer call in `dir` ([`WORKDIR`] if `dir` cannot be entered). The shim must
/// be single-threaded when libcontainer clones (see the crate docs); whatever the call did with
/// the working directory, the shim is left in [`WORKDIR`].
pub fn guarded_in<T, E>(dir: &Path, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    // (Unit tests run on the test harness's threads; the shim never does.)
    #[cfg(not(test))]
    debug_assert_eq!(
        libshim::thread_count(),
        Some(1),
        "libcontainer called from a threaded shim"
    );
    if std::env::set_current_dir(dir).is_err() {
        let _ = std::env::set_current_dir(WORKDIR);
    }
    let out = f();
    let _ = std::env::set_current_dir(WORKDIR);
    out
}

pub(crate) fn dev_null() -> Result<OwnedFd, BackendError> {
    std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| BackendError::io("open /dev/null", e))
}

/// A builder for `info`'s container with the process's stdio set up.
pub fn builder(info: &ContainerInfo, io: ProcessIo) -> Result<ContainerBuilder, BackendError> {
    let root = state_root(&info.options, &info.namespace);
    std::fs::create_dir_all(&root)
        .map_err(|e| BackendError::io(format!("create {}", root.display()), e))?;
    let b = ContainerBuilder::new(info.id.clone(), SyscallType::Linux)
        .with_root_path(root)
        .map_err(failed("create"))?
        .with_executor(DefaultSignalsExecutor::default());
    Ok(match io {
        ProcessIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => b
            .with_stdin(stdin.map_or_else(dev_null, Ok)?)
            .with_stdout(stdout.map_or_else(dev_null, Ok)?)
            .with_stderr(stderr.map_or_else(dev_null, Ok)?),
        ProcessIo::Terminal { console_socket } => b.with_console_socket(Some(console_socket)),
    })
}

pub fn load(info: &ContainerInfo) -> Result<Container, BackendError> {
    load_from(&state_root(&info.options, &info.namespace), &info.id)
}

pub fn load_from(root: &Path, id: &str) -> Result<Container, BackendError> {
    let dir = root.join(id);
    if !dir.exists() {
        return Err(BackendError::NotFound(format!(
            "container {id:?} not found by libcontainer"
        )));
    }
    Container::load(dir).map_err(failed("load"))
}

pub fn pid_of(pid: Option<i32>) -> Result<u32, BackendError> {
    pid.map(|p| p as u32).ok_or_else(|| BackendError::Runtime {
        runtime: RUNTIME.to_string(),
        action: "create",
        message: "no pid for the container's process".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_root_is_per_namespace_under_the_root_option() {
        let mut options = RuntimeOptions::default();
        assert_eq!(
            state_root(&options, "k8s.io"),
            Path::new("/run/containerd/sandbox/k8s.io")
        );
        options.root = "/var/run/mine".into();
        assert_eq!(
            state_root(&options, "default"),
            Path::new("/var/run/mine/default")
        );
    }

    #[test]
    fn errors_carry_their_causes_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file: /x");
        let e = failed::<std::io::Error>("create")(std::io::Error::other(inner));
        let msg = e.to_string();
        assert!(msg.contains("libcontainer create failed"), "{msg}");
        assert_eq!(msg.matches("no such file: /x").count(), 1, "{msg}");
    }

    #[test]
    fn guarded_runs_in_a_directory_that_outlives_the_bundle() {
        // As a group's shim after containerd removed its first bundle (no other test here
        // depends on the working directory).
        let gone = std::env::temp_dir().join(format!("shim-sandbox-cwd-{}", std::process::id()));
        std::fs::create_dir(&gone).unwrap();
        std::env::set_current_dir(&gone).unwrap();
        std::fs::remove_dir(&gone).unwrap();
        let seen: Result<PathBuf, ()> = guarded(|| {
            let cwd = std::env::current_dir().map_err(drop);
            std::env::set_current_dir(std::env::temp_dir()).unwrap();
            cwd
        });
        assert_eq!(seen.unwrap(), Path::new(WORKDIR));
        assert_eq!(std::env::current_dir().unwrap(), Path::new(WORKDIR));
    }
}
