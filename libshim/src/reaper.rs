//! The one place that calls `waitpid`.
//!
//! The shim is a child subreaper, so every orphaned container process ends up as our child.
//! A single SIGCHLD-driven loop reaps them all and routes each exit either to the command
//! that is waiting for that pid ([`run`]) or, unclaimed, to the task service's exit channel.
//!
//! Invariant: a pid is registered as a waiter in the same synchronous step that spawns it
//! (the runtime is single-threaded and the loop only reaps at an `.await`), so no exit can
//! slip between `spawn` and the registration.
use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

/// How a reaped process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: u32,
    /// The exit code, or 128 + signal number for a process killed by a signal (shell convention,
    /// which is what containerd reports).
    pub status: u32,
    pub at: SystemTime,
}

/// What a finished command left behind.
#[derive(Debug)]
pub struct CommandOutput {
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

struct Routes {
    waiters: HashMap<u32, oneshot::Sender<Exit>>,
    unclaimed: Option<mpsc::UnboundedSender<Exit>>,
}

fn routes() -> &'static Mutex<Routes> {
    static ROUTES: OnceLock<Mutex<Routes>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        Mutex::new(Routes {
            waiters: HashMap::new(),
            unclaimed: None,
        })
    })
}

fn lock() -> std::sync::MutexGuard<'static, Routes> {
    // A poisoned lock only means a panic elsewhere; the map itself is still consistent.
    routes().lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the reaping loop on the current tokio runtime and returns the channel of exits
/// that no [`run`] call claimed (container processes). Call once, before spawning anything.
pub fn start() -> io::Result<mpsc::UnboundedReceiver<Exit>> {
    let mut sigchld = signal(SignalKind::child())?;
    let (tx, rx) = mpsc::unbounded_channel();
    lock().unclaimed = Some(tx);
    tokio::spawn(async move {
        loop {
            reap_all();
            if sigchld.recv().await.is_none() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Reaps every child that has exited and routes each exit.
fn reap_all() {
    loop {
        let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, code as u32),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as u32),
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::warn!("waitpid failed: {e}");
                return;
            }
        };
        let exit = Exit {
            pid: pid.as_raw() as u32,
            status,
            at: SystemTime::now(),
        };
        let mut routes = lock();
        if let Some(waiter) = routes.waiters.remove(&exit.pid) {
            let _ = waiter.send(exit);
        } else if let Some(unclaimed) = &routes.unclaimed {
            let _ = unclaimed.send(exit);
        }
    }
}

/// Spawns `cmd` and claims its exit, so the service never mistakes it for a container process.
/// Returns the pid and a receiver for the exit.
pub fn spawn(cmd: &mut Command) -> io::Result<(std::process::Child, oneshot::Receiver<Exit>)> {
    let (tx, rx) = oneshot::channel();
    // Hold the routes lock across spawn + insert: on a multi-threaded runtime the reaping loop
    // could otherwise reap the child before the waiter exists.
    let mut routes = lock();
    let child = cmd.spawn()?;
    routes.waiters.insert(child.id(), tx);
    Ok((child, rx))
}

/// Runs `cmd` to completion, capturing stdout and stderr unless the caller set them.
/// Stdin is /dev/null unless the caller set it.
pub async fn run(cmd: &mut Command) -> io::Result<CommandOutput> {
    run_with_umask(cmd, None).await
}

/// As [`run`], the child started with `umask` (this process's own stays as it was): runc before
/// 1.2 gives an exec'd process the umask runc itself was started with, not its spec's.
pub async fn run_with_umask(cmd: &mut Command, umask: Option<u32>) -> io::Result<CommandOutput> {
    // umask is per process and the shim is single-threaded: nothing else creates a file
    // between these two calls.
    let saved = umask.map(|m| nix::sys::stat::umask(Mode::from_bits_truncate(m)));
    let spawned = spawn(cmd);
    if let Some(saved) = saved {
        nix::sys::stat::umask(saved);
    }
    let (mut child, exited) = spawned?;
    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    // The Child is dropped without wait(): reaping belongs to the loop above.
    drop(child);
    let (stdout, stderr) = tokio::join!(read_all(stdout), read_all(stderr));
    let exit = exited
        .await
        .map_err(|_| io::Error::other("reaper stopped before the command exited"))?;
    Ok(CommandOutput {
        status: exit.status,
        stdout: stdout?,
        stderr: stderr?,
    })
}

/// A command whose output is captured: stdout and stderr piped, stdin from /dev/null.
pub fn captured(mut cmd: Command) -> Command {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

async fn read_all(fd: Option<OwnedFd>) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(fd) = fd {
        let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
        rx.read_to_end(&mut buf).await?;
    }
    Ok(buf)
}
