//! Copying bytes between a process's pipes or terminal and the client's targets.
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Any pollable fd (pipe, fifo, pty master) as an async reader and writer.
pub struct FdIo(AsyncFd<OwnedFd>);

impl FdIo {
    /// Registers `fd` with the runtime; `what` names it in the error.
    pub fn new(fd: OwnedFd, what: &str) -> crate::error::Result<Self> {
        Self::register(fd).map_err(|e| crate::error::Error::io(format!("poll {what}"), e))
    }

    fn register(fd: OwnedFd) -> io::Result<Self> {
        let flags = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL)?);
        fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        // Deprecated for borrowed fds, which could close under tokio; we own this one.
        #[allow(deprecated)]
        Ok(Self(AsyncFd::new(fd)?))
    }
}

impl AsyncRead for FdIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A pty master reads EIO once the last slave fd is closed: that is its EOF.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsRawFd for FdIo {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.get_ref().as_raw_fd()
    }
}

/// Where output goes.
pub enum Sink {
    /// A fifo or pipe, written without blocking the shim.
    Fd(FdIo),
    /// A regular file opened for append; regular files never return EAGAIN, so plain writes.
    File(File),
}

impl Sink {
    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Sink::Fd(fd) => fd.write_all(data).await,
            Sink::File(f) => f.write_all(data),
        }
    }
}

/// Copies until `src` reaches EOF. A vanished reader on the far side ends the copy but is
/// not an error worth more than a debug line: the client simply went away.
pub async fn pump(mut src: impl AsyncRead + Unpin, mut sink: Sink, name: &'static str) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match src.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                log::debug!("{name}: read ended: {e}");
                return;
            }
        };
        if let Err(e) = sink.write_all(&buf[..n]).await {
            log::debug!("{name}: write ended: {e}");
            return;
        }
    }
}
