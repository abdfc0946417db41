//! Client-side stdio: fifos in a temp dir, read in threads until EOF.
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use nix::sys::stat::Mode;

pub fn make(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).expect("mkfifo");
    path
}

/// Reads a fifo until every writer has gone, in a thread.
pub struct Reader(Option<JoinHandle<Vec<u8>>>);

impl Reader {
    /// Opens the fifo now (without blocking) so the shim's writes never wait for us.
    pub fn open(path: &Path) -> Self {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .expect("open fifo for reading");
        Self(Some(std::thread::spawn(move || read_to_eof(f))))
    }

    /// Everything read, once the writers closed.
    pub fn output(mut self) -> Vec<u8> {
        self.0.take().unwrap().join().expect("reader thread")
    }

    pub fn text(self) -> String {
        String::from_utf8_lossy(&self.output()).into_owned()
    }
}

fn read_to_eof(f: std::fs::File) -> Vec<u8> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let mut f = f;
    let mut seen_writer = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(200u16));
        let hung_up = fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP));
        match f.read(&mut buf) {
            Ok(0) if seen_writer => return out,
            Ok(0) => {
                // No writer yet, or a hang-up with nothing read: wait for one, up to 60 s.
                if hung_up {
                    return out;
                }
            }
            Ok(n) => {
                seen_writer = true;
                out.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => seen_writer = true,
            Err(_) => return out,
        }
    }
    out
}

/// A writer for a stdin fifo; opening waits for the shim to open its reading end.
pub fn write_all_and_close(path: PathBuf, data: Vec<u8>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut f = OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open stdin fifo");
        f.write_all(&data).expect("write stdin");
    })
}
