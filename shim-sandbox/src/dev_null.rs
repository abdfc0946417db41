//! A container's stdio that is /dev/null is writable, as with runc.
//!
//! The shim hands a process without a stdin, stdout or stderr the host's /dev/null, opened
//! read-write. In the init, after pivot_root, libcontainer 0.7 replaces every stdio fd that is
//! /dev/null with the container's own, but opens that one read-only (`reopen_dev_null` in
//! `process/init/process.rs`: `File::open`), so a pause container or any container without
//! stdout writes into EBADF. runc opens it `O_RDWR` (`reOpenDevNull`). The executor, the last
//! step before the program runs, opens the container's /dev/null read-write over those fds
//! (docs/upstream/libcontainer-reopen-dev-null.md).
use std::os::fd::{AsFd, BorrowedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::{fstat, major, minor, SFlag};

/// /dev/null's device number (Linux's mem driver, minor 3).
const DEV_NULL: (u64, u64) = (1, 3);

/// Whether `fd` is /dev/null opened without write access.
fn is_read_only_dev_null(fd: BorrowedFd<'_>) -> bool {
    let Ok(st) = fstat(fd) else {
        return false;
    };
    let is_char = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR;
    if !is_char || (major(st.st_rdev), minor(st.st_rdev)) != DEV_NULL {
        return false;
    }
    fcntl(fd, FcntlArg::F_GETFL)
        .is_ok_and(|flags| OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE == OFlag::O_RDONLY)
}

/// Opens /dev/null read-write over each stdio fd that is a read-only /dev/null. Best effort:
/// by now the process runs as the container's user under its seccomp profile, and a container
/// whose /dev/null cannot be opened keeps what libcontainer gave it.
pub fn make_stdio_writable() {
    let stale = [
        is_read_only_dev_null(std::io::stdin().as_fd()),
        is_read_only_dev_null(std::io::stdout().as_fd()),
        is_read_only_dev_null(std::io::stderr().as_fd()),
    ];
    if !stale.contains(&true) {
        return;
    }
    let Ok(null) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    let dup = [
        nix::unistd::dup2_stdin::<&std::fs::File>,
        nix::unistd::dup2_stdout::<&std::fs::File>,
        nix::unistd::dup2_stderr::<&std::fs::File>,
    ];
    for (stale, dup) in stale.into_iter().zip(dup) {
        if stale {
            let _ = dup(&null);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_read_only_dev_null_is_stale() {
        let ro = std::fs::File::open("/dev/null").unwrap();
        let rw = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        let wo = std::fs::File::options()
            .write(true)
            .open("/dev/null")
            .unwrap();
        let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
        let file = tempfile::tempfile().unwrap();
        assert!(is_read_only_dev_null(ro.as_fd()));
        assert!(!is_read_only_dev_null(rw.as_fd()));
        assert!(!is_read_only_dev_null(wo.as_fd()));
        assert!(!is_read_only_dev_null(pipe_r.as_fd()));
        assert!(!is_read_only_dev_null(file.as_fd()));
    }
}
