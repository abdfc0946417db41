//! Waiting for OOM events of a cgroup without threads: an eventfd registered on
//! memory.oom_control (v1), or inotify on memory.events (v2), polled by the shim's runtime.
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

use super::Cgroup;
use crate::error::{Error, Result};

enum Source {
    V1 {
        efd: AsyncFd<OwnedFd>,
        /// Kept open: the registration lives as long as this fd.
        _control: std::fs::File,
        dir: PathBuf,
    },
    V2 {
        inotify: AsyncFd<OwnedFd>,
        dir: PathBuf,
    },
}

/// Yields once per wake-up of the kernel's OOM notification; the caller compares the
/// cgroup's OOM-kill counter to tell a kill from other memory events.
pub struct OomWatcher {
    source: Source,
}

fn poll_fd(fd: OwnedFd, what: &str) -> Result<AsyncFd<OwnedFd>> {
    // Deprecated for borrowed fds, which could close under tokio; we own this one.
    #[allow(deprecated)]
    AsyncFd::new(fd).map_err(|e| Error::io(format!("poll {what}"), e))
}

impl OomWatcher {
    pub fn new(cgroup: &Cgroup) -> Result<Self> {
        let source = match cgroup {
            Cgroup::V1(dirs) => {
                let dir = dirs
                    .get("memory")
                    .cloned()
                    .ok_or_else(|| Error::NotFound("no memory cgroup to watch".into()))?;
                let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                    .map_err(|e| Error::io("create eventfd", e.into()))?;
                let control = std::fs::File::open(dir.join("memory.oom_control")).map_err(|e| {
                    Error::io(format!("open {}/memory.oom_control", dir.display()), e)
                })?;
                let registration = format!("{} {}", efd.as_fd().as_raw_fd(), control.as_raw_fd());
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.event_control"))
                    .and_then(|mut f| f.write_all(registration.as_bytes()))
                    .map_err(|e| Error::io("register for OOM events", e))?;
                Source::V1 {
                    efd: poll_fd(OwnedFd::from(efd), "eventfd")?,
                    _control: control,
                    dir,
                }
            }
            Cgroup::V2(dir) => {
                let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
                    .map_err(|e| Error::io("create inotify", e.into()))?;
                inotify
                    .add_watch(&dir.join("memory.events"), AddWatchFlags::IN_MODIFY)
                    .map_err(|e| {
                        Error::io(format!("watch {}/memory.events", dir.display()), e.into())
                    })?;
                Source::V2 {
                    inotify: poll_fd(OwnedFd::from(inotify), "inotify")?,
                    dir: dir.clone(),
                }
            }
        };
        Ok(Self { source })
    }

    /// The next notification, or `None` once the cgroup is gone.
    pub async fn next(&mut self) -> Option<()> {
        let (fd, dir) = match &self.source {
            Source::V1 { efd, dir, .. } => (efd, dir),
            Source::V2 { inotify, dir } => (inotify, dir),
        };
        loop {
            let mut guard = fd.readable().await.ok()?;
            let mut buf = [0u8; 4096];
            let read = guard
                .try_io(|f| nix::unistd::read(f.get_ref(), &mut buf).map_err(std::io::Error::from));
            match read {
                Ok(Ok(_)) => {
                    // v1 also signals when the cgroup is removed.
                    return dir.is_dir().then_some(());
                }
                Ok(Err(_)) => return None,
                Err(_would_block) => continue,
            }
        }
    }
}
