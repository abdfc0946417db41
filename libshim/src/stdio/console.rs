//! Terminals: the console socket a runtime sends a pty master over, and the master itself.
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener as StdListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::net::UnixListener;

use crate::error::{Error, Result};
use crate::sys;

/// A unix socket in a private temporary directory; removed on drop.
pub struct ConsoleSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: StdListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<Self> {
        let dir = sys::private_temp_dir("pty")?;
        let path = dir.join("pty.sock");
        let listener = StdListener::bind(&path)
            .map_err(|e| Error::io(format!("bind console socket {}", path.display()), e))?;
        Ok(Self {
            dir,
            path,
            listener,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the runtime's connection and takes the master fd it sends.
    pub async fn receive_master(&self, limit: Duration) -> Result<OwnedFd> {
        let listener = self
            .listener
            .try_clone()
            .and_then(|l| {
                l.set_nonblocking(true)?;
                UnixListener::from_std(l)
            })
            .map_err(|e| Error::io("poll console socket", e))?;
        let (stream, _) = tokio::time::timeout(limit, listener.accept())
            .await
            .map_err(|_| {
                Error::FailedPrecondition(format!(
                    "the runtime sent no terminal over {} within {limit:?}",
                    self.path.display()
                ))
            })?
            .map_err(|e| Error::io("accept on console socket", e))?;
        let stream = stream
            .into_std()
            .map_err(|e| Error::io("console connection", e))?;
        stream
            .set_nonblocking(false)
            .map_err(|e| Error::io("console connection", e))?;
        receive_fd(stream.as_fd().as_raw_fd())
    }
}

fn receive_fd(sock: std::os::fd::RawFd) -> Result<OwnedFd> {
    // runc sends the pty's name as the payload and the master as SCM_RIGHTS.
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| Error::io("receive terminal from the runtime", e.into()))?;
    let cmsgs = msg
        .cmsgs()
        .map_err(|e| Error::io("receive terminal from the runtime", e.into()))?;
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                for &extra in &fds[1..] {
                    drop(sys::own_fd(extra));
                }
                return Ok(sys::own_fd(fd));
            }
        }
    }
    Err(Error::FailedPrecondition(
        "the runtime connected to the console socket but sent no terminal".into(),
    ))
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A terminal's master side.
pub struct Pty {
    master: OwnedFd,
}

impl Pty {
    pub fn new(master: OwnedFd) -> Self {
        Self { master }
    }

    pub fn dup(&self) -> Result<OwnedFd> {
        self.master
            .try_clone()
            .map_err(|e| Error::io("duplicate terminal master", e))
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        sys::set_window_size(self.master.as_fd(), clamp(width), clamp(height))
            .map_err(|e| Error::io("resize terminal", e))
    }
}
