//! A process's stdio: the client's fifos (or `file://` targets) on one side, the process's
//! pipes or terminal on the other, and the copy tasks in between.
//!
//! The shim, not the container, holds the fifos. That way a client may attach late or go away
//! without the container blocking on open or dying of SIGPIPE.
mod binary;
mod console;
mod copy;
mod target;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::unistd::{fchown, pipe2, Gid, Uid};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use binary::LoggingBinary;
pub use console::{ConsoleSocket, Pty};
use copy::{pump, FdIo};
use target::{open_input, open_output, Target};

use crate::backend::ProcessIo;
use crate::error::{Error, Result};

/// The stdio a Create or Exec request asks for.
#[derive(Debug, Clone, Default)]
pub struct StdioRequest {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The shim's side of a process's stdio. Dropping it stops the copies and closes everything.
pub struct Stdio {
    request: StdioRequest,
    io_uid: u32,
    io_gid: u32,
    /// Stops the stdin copy: set by CloseIO, so the process sees EOF once the client's
    /// bytes are through.
    stdin_close: Option<watch::Sender<bool>>,
    stdin_copy: Option<JoinHandle<()>>,
    output_copies: Vec<JoinHandle<()>>,
    console_socket: Option<ConsoleSocket>,
    pty: Option<Pty>,
    logger: Option<LoggingBinary>,
}

/// Whose stdio this is: a `binary://` logger is told.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub container_id: &'a str,
    pub namespace: &'a str,
}

impl Stdio {
    /// Prepares the process side: pipes now, or a console socket the runtime will send the
    /// terminal's master to. Copies for pipes start at once.
    pub async fn prepare(
        request: StdioRequest,
        owner: Owner<'_>,
        io_uid: u32,
        io_gid: u32,
    ) -> Result<(Self, ProcessIo)> {
        let mut stdio = Stdio {
            request,
            io_uid,
            io_gid,
            stdin_close: None,
            stdin_copy: None,
            output_copies: Vec::new(),
            console_socket: None,
            pty: None,
            logger: None,
        };
        if stdio.request.terminal {
            let socket = ConsoleSocket::new()?;
            let io = ProcessIo::Terminal {
                console_socket: socket.path().to_path_buf(),
            };
            stdio.console_socket = Some(socket);
            return Ok((stdio, io));
        }
        let stdin = match Target::parse(&stdio.request.stdin)? {
            None => None,
            Some(target) => {
                let (child, ours) = stdio.pipe("stdin", true)?;
                stdio.start_stdin(target, FdIo::new(ours, "stdin pipe")?)?;
                Some(child)
            }
        };
        let (mut stdout, mut stderr) = (None, None);
        let (out_uri, err_uri) = (stdio.request.stdout.clone(), stdio.request.stderr.clone());
        let binary = [&out_uri, &err_uri]
            .into_iter()
            .find_map(|u| match Target::parse(u) {
                Ok(Some(Target::Binary(rest))) => Some((u.clone(), rest)),
                _ => None,
            });
        if let Some((uri, rest)) = binary {
            // One logging process takes both streams that name it.
            let (logger, out_w, err_w) =
                LoggingBinary::start(&rest, owner.container_id, owner.namespace).await?;
            stdio.logger = Some(logger);
            stdout = (out_uri == uri).then_some(out_w);
            stderr = (err_uri == uri).then_some(err_w);
        }
        if stdout.is_none() {
            stdout = stdio.output_pipe(&out_uri, "stdout")?;
        }
        if stderr.is_none() {
            stderr = stdio.output_pipe(&err_uri, "stderr")?;
        }
        Ok((
            stdio,
            ProcessIo::Pipes {
                stdin,
                stdout,
                stderr,
            },
        ))
    }

    /// For a terminal: takes the master the runtime sent and starts the copies.
    /// Call after the backend's create/exec returned.
    pub async fn attach_console(&mut self) -> Result<()> {
        let Some(socket) = self.console_socket.take() else {
            return Ok(());
        };
        let master = socket.receive_master(Duration::from_secs(10)).await?;
        let pty = Pty::new(master);
        if let Some(target) = Target::parse(&self.request.stdin)? {
            let writer = FdIo::new(pty.dup()?, "terminal")?;
            self.start_stdin(target, writer)?;
        }
        if let Some(target) = Target::parse(&self.request.stdout)? {
            let reader = FdIo::new(pty.dup()?, "terminal")?;
            let sink = open_output(&target)?;
            self.output_copies
                .push(tokio::spawn(pump(reader, sink, "terminal")));
        }
        self.pty = Some(pty);
        Ok(())
    }

    pub fn pty(&self) -> Option<&Pty> {
        self.pty.as_ref()
    }

    /// CloseIO: the process sees EOF on stdin once the bytes already written are through.
    pub fn close_stdin(&mut self) {
        if let Some(tx) = self.stdin_close.take() {
            let _ = tx.send(true);
        }
    }

    /// Waits (bounded) until every output copy has drained, so no output is lost on delete.
    pub async fn wait_drained(&mut self, limit: Duration) {
        let mut copies = std::mem::take(&mut self.output_copies);
        let all = async {
            for c in copies.iter_mut() {
                let _ = c.await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            log::warn!("stdio copies did not drain within {limit:?}; closing them");
            // A dropped JoinHandle detaches its task: abort it, or it keeps the fifo and
            // the pipe (and waits on them) for as long as the shim lives.
            for c in &copies {
                c.abort();
            }
        }
        if let Some(logger) = self.logger.as_mut() {
            logger.wait(limit).await;
        }
    }

    fn pipe(&self, name: &str, child_reads: bool) -> Result<(OwnedFd, OwnedFd)> {
        let (r, w) = pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| Error::io(format!("create {name} pipe"), e.into()))?;
        let (child, ours) = if child_reads { (r, w) } else { (w, r) };
        if self.io_uid != 0 || self.io_gid != 0 {
            fchown(
                child.as_fd(),
                Some(Uid::from_raw(self.io_uid)),
                Some(Gid::from_raw(self.io_gid)),
            )
            .map_err(|e| Error::io(format!("chown {name} pipe to the io user"), e.into()))?;
        }
        Ok((child, ours))
    }

    fn output_pipe(&mut self, uri: &str, name: &'static str) -> Result<Option<OwnedFd>> {
        let Some(target) = Target::parse(uri)? else {
            return Ok(None);
        };
        let (child, ours) = self.pipe(name, false)?;
        let sink = open_output(&target)?;
        let reader = FdIo::new(ours, name)?;
        self.output_copies
            .push(tokio::spawn(pump(reader, sink, name)));
        Ok(Some(child))
    }

    fn start_stdin(&mut self, target: Target, writer: FdIo) -> Result<()> {
        let source = open_input(&target)?;
        let (tx, mut rx) = watch::channel(false);
        self.stdin_close = Some(tx);
        self.stdin_copy = Some(tokio::spawn(async move {
            let copy = pump(source, copy::Sink::Fd(writer), "stdin");
            tokio::pin!(copy);
            tokio::select! {
                _ = &mut copy => return,
                _ = rx.wait_for(|closed| *closed) => {}
            }
            // CloseIO: pass on what the client already wrote, then close the process's stdin.
            let _ = tokio::time::timeout(STDIN_FLUSH_LIMIT, copy).await;
        }));
        Ok(())
    }
}

/// How long CloseIO keeps copying bytes already in the stdin fifo before closing.
const STDIN_FLUSH_LIMIT: Duration = Duration::from_millis(50);

impl Drop for Stdio {
    fn drop(&mut self) {
        if let Some(c) = self.stdin_copy.take() {
            c.abort();
        }
        for c in self.output_copies.drain(..) {
            c.abort();
        }
    }
}

/// Where a stdio URI points; exposed for the `delete` path and tests.
pub fn fifo_path(uri: &str) -> Option<PathBuf> {
    match Target::parse(uri) {
        Ok(Some(Target::Fifo(p))) => Some(p),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;

    use super::*;

    const OWNER: Owner<'static> = Owner {
        container_id: "c",
        namespace: "ns",
    };

    fn owner(fd: &OwnedFd) -> (u32, u32) {
        let st = nix::sys::stat::fstat(fd.as_fd()).unwrap();
        (st.st_uid, st.st_gid)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pipes_belong_to_the_io_user_and_absent_streams_are_none() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: chown needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        nix::unistd::mkfifo(&out, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let request = StdioRequest {
            stdout: out.to_string_lossy().into_owned(),
            ..Default::default()
        };
        let (_stdio, io) = Stdio::prepare(request, OWNER, 4242, 4343).await.unwrap();
        let ProcessIo::Pipes {
            stdin,
            stdout,
            stderr,
        } = io
        else {
            panic!("expected pipes");
        };
        assert!(stdin.is_none() && stderr.is_none());
        assert_eq!(owner(&stdout.unwrap()), (4242, 4343));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn output_reaches_the_fifo_and_file_targets() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let log = dir.path().join("logs/err.log");
        let request = StdioRequest {
            stdout: fifo.to_string_lossy().into_owned(),
            stderr: format!("file://{}", log.display()),
            ..Default::default()
        };
        let (mut stdio, io) = Stdio::prepare(request, OWNER, 0, 0).await.unwrap();
        let ProcessIo::Pipes { stdout, stderr, .. } = io else {
            panic!("expected pipes");
        };
        std::fs::File::from(stdout.unwrap())
            .write_all(b"out\n")
            .unwrap();
        std::fs::File::from(stderr.unwrap())
            .write_all(b"err\n")
            .unwrap();
        stdio.wait_drained(Duration::from_secs(5)).await;
        let mut got = String::new();
        reader.read_to_string(&mut got).unwrap();
        assert_eq!(got, "out\n");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "err\n");
    }
}
