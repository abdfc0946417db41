//! `binary://` logging: containerd's protocol for a logging binary that takes a process's
//! output. The binary gets the stdout and stderr pipes as fds 3 and 4, a readiness pipe as
//! fd 5 (it closes or writes to it once ready), and CONTAINER_ID / CONTAINER_NAMESPACE.
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio as ChildStdio};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::unistd::pipe2;
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use super::copy::FdIo;
use crate::error::{Error, Result};
use crate::reaper::{self, Exit};
use crate::sys;

/// How long the binary may take to signal readiness, and to exit once output has ended.
const READY_LIMIT: Duration = Duration::from_secs(10);

/// A running logging binary.
pub struct LoggingBinary {
    pid: u32,
    exited: Option<oneshot::Receiver<Exit>>,
}

/// The binary's path and arguments from `binary://PATH?key=value&flag`: each key becomes an
/// argument, followed by its value when it has one.
pub fn parse(rest: &str) -> Result<(String, Vec<String>)> {
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "binary:// logging needs an absolute path, got {path:?}"
        )));
    }
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) => {
                args.push(percent_decode(k));
                args.push(percent_decode(v));
            }
            None => args.push(percent_decode(pair)),
        }
    }
    Ok((percent_decode(path), args))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl LoggingBinary {
    /// Starts the binary and waits for its readiness. Returns it with the write ends the
    /// process gets as stdout and stderr.
    pub async fn start(
        rest: &str,
        container_id: &str,
        namespace: &str,
    ) -> Result<(Self, OwnedFd, OwnedFd)> {
        let (path, args) = parse(rest)?;
        let pipe = |what: &str| {
            pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::io(format!("create {what} pipe"), e.into()))
        };
        let (out_r, out_w) = pipe("stdout")?;
        let (err_r, err_w) = pipe("stderr")?;
        let (ready_r, ready_w) = pipe("readiness")?;
        let mut cmd = Command::new(&path);
        cmd.args(&args)
            .env("CONTAINER_ID", container_id)
            .env("CONTAINER_NAMESPACE", namespace)
            .stdin(ChildStdio::null())
            .stdout(ChildStdio::null())
            .stderr(ChildStdio::null());
        sys::pass_fds(
            &mut cmd,
            [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()],
        );
        let (child, exited) = reaper::spawn(&mut cmd)
            .map_err(|e| Error::io(format!("start logging binary {path}"), e))?;
        let binary = LoggingBinary {
            pid: child.id(),
            exited: Some(exited),
        };
        // Only the binary may hold these now: the readiness pipe reads EOF once it lets go.
        drop((cmd, out_r, err_r, ready_w));
        let mut ready = FdIo::new(ready_r, "readiness pipe")?;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(READY_LIMIT, ready.read(&mut byte)).await {
            Ok(Ok(_)) => Ok((binary, out_w, err_w)),
            Ok(Err(e)) => Err(Error::io(format!("wait for logging binary {path}"), e)),
            Err(_) => Err(Error::FailedPrecondition(format!(
                "logging binary {path} did not signal readiness on fd 5 within {READY_LIMIT:?}"
            ))),
        }
    }

    /// Waits (bounded) for the binary to finish once the process's output has ended.
    pub async fn wait(&mut self, limit: Duration) {
        if let Some(exited) = self.exited.take() {
            if tokio::time::timeout(limit, exited).await.is_err() {
                log::warn!("logging binary {} still running after {limit:?}", self.pid);
            }
        }
    }
}

impl Drop for LoggingBinary {
    fn drop(&mut self) {
        // Still waiting means it never exited: do not leave it behind.
        if let Some(mut exited) = self.exited.take() {
            if exited.try_recv().is_err() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_path_and_arguments() {
        let (path, args) = parse("/usr/bin/logger?dir=/var/log/x&verbose&name=a%20b").unwrap();
        assert_eq!(path, "/usr/bin/logger");
        assert_eq!(args, ["dir", "/var/log/x", "verbose", "name", "a b"]);
        assert!(parse("relative/logger").is_err());
        assert_eq!(parse("/bin/l").unwrap().1, Vec::<String>::new());
    }
}
