//! The only modules with `unsafe`: thin wrappers over the few syscalls nix does not cover, and
//! the pod namespace holder ([`ns_holder`]), whose child may make raw syscalls only.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use crate::error::{Error, Result};

pub mod idmap;
pub mod ns_holder;

/// Takes ownership of an fd the kernel just handed us (SCM_RIGHTS).
pub fn own_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: called only with fds freshly received via SCM_RIGHTS, which nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// TIOCSWINSZ on a terminal master.
pub fn set_window_size(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which lives across the call;
    // the fd is borrowed, so it is open.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A fresh directory only root can enter, under $XDG_RUNTIME_DIR or /tmp.
pub fn private_temp_dir(prefix: &str) -> Result<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let template = base.join(format!("{prefix}-XXXXXX"));
    nix::unistd::mkdtemp(&template).map_err(|e| {
        Error::io(
            format!("create temporary directory in {}", base.display()),
            e.into(),
        )
    })
}

/// Threads of this process, from /proc (None if it cannot be read).
pub fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").ok().map(|d| d.count())
}

/// Forks this process, for a `start` that becomes its own server without exec'ing itself
/// again. Refuses unless the process has exactly one thread: the child of a threaded process
/// may find a lock (the allocator's) held forever by a thread that did not come along.
pub fn fork_single_threaded() -> io::Result<nix::unistd::ForkResult> {
    match thread_count() {
        Some(1) => {}
        Some(n) => {
            return Err(io::Error::other(format!(
                "cannot fork a process with {n} threads"
            )))
        }
        None => return Err(io::Error::other("cannot count this process's threads")),
    }
    // SAFETY: the process is single-threaded (checked above), so no lock can be held by a
    // thread missing from the child; the child goes on as an ordinary single-threaded program.
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// Makes the child see `fds[i]` as fd `3 + i` (Go's `ExtraFiles`), for the logging binary
/// protocol. The fds stay open in the parent until the caller drops them after spawning.
pub fn pass_fds(cmd: &mut std::process::Command, fds: [RawFd; 3]) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and calls only fcntl and dup2, which are
    // async-signal-safe; it allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(move || {
            // First move every source above the targets, so no dup2 clobbers a later source;
            // the moved copies are close-on-exec, so only fds 3 to 5 reach the program.
            let mut high = [0; 3];
            for (slot, fd) in high.iter_mut().zip(fds) {
                let moved = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                if moved == -1 {
                    return Err(io::Error::last_os_error());
                }
                *slot = moved;
            }
            for (target, fd) in (3..).zip(high) {
                // dup2 leaves the new fd without close-on-exec.
                if libc::dup2(fd, target) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Gives every signal its default disposition and an empty mask, as a freshly exec'd
/// container process expects. Rust's runtime ignores SIGPIPE and `SIG_IGN` survives exec, so
/// a process started without `std::process::Command` (which resets it) would otherwise
/// inherit it: `yes | head` then never ends. Call only in a child about to exec.
pub fn reset_signals_for_exec() -> io::Result<()> {
    for signal in 1..libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no handler code; the caller is a single-threaded
        // child that is about to exec. EINVAL for the signals glibc reserves is expected.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
    let empty = nix::sys::signal::SigSet::empty();
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&empty),
        None,
    )
    .map_err(io::Error::from)
}

/// Drops this process's page-table entries for the file pages it never writes (text, and the
/// first segment of each file: ELF headers, symbols, read-only data), so a long-lived shim
/// maps only the code it goes on running. The kernel maps 64 KiB around every faulted page
/// ("fault-around"), so start-up and Create code otherwise stay mapped for the shim's life.
/// The pages stay in the page cache; whatever runs again is refaulted (minor faults).
///
/// RELRO and data segments (writable, or read-only at later offsets after relocation) hold
/// this process's own writes and are left alone.
pub fn trim_code_pages() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        // "start-end perms offset dev inode path"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(range), Some(perms), Some(offset), Some(path)) =
            (fields.first(), fields.get(1), fields.get(2), fields.get(5))
        else {
            continue;
        };
        let never_written = perms.contains('x') || offset.bytes().all(|b| b == b'0');
        if !path.starts_with('/') || perms.contains('w') || !never_written {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: the range is a whole mapping of this process as /proc lists it, file-backed,
        // not writable and never written (text or a file's first segment): its pages are
        // always the file's, so dropping them loses nothing and they refault on access.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// Returns the heap's free memory at its top and in whole free pages to the system. glibc
/// keeps what a burst of requests or connections freed; an idle shim should not.
pub fn trim_heap() {
    // SAFETY: malloc_trim only walks and releases glibc's own free lists; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// kill(2) for any signal number, real-time ones included (nix's `Signal` has none of them).
pub fn kill(pid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes two integers.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd for `pid` (Linux 5.3+): it names that process for good, so a signal sent through it
/// can never reach another process that was given the same pid after this one was reaped.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; nothing is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(own_fd(fd as RawFd))
}

/// Sends `signal` to the process `pidfd` names; ESRCH once it has exited.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: the fd is borrowed for the call; a null siginfo asks for the kill(2) defaults.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn refuses_to_fork_a_threaded_process() {
        // A second thread, alive across the call, whatever the harness does.
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || wait.recv());
        let result = fork_single_threaded();
        drop(done);
        let _ = other.join();
        let err = result.expect_err("a threaded process must not fork");
        assert!(err.to_string().contains("threads"), "{err}");
    }

    #[test]
    fn a_pidfd_never_reaches_a_process_after_its_own() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let fd = match pidfd_open(child.id()) {
            Ok(fd) => fd,
            Err(e) => {
                child.kill().unwrap();
                child.wait().unwrap();
                // Only a kernel before 5.3 may lack them.
                assert_eq!(e.raw_os_error(), Some(libc::ENOSYS), "pidfd_open: {e}");
                return;
            }
        };
        pidfd_send_signal(fd.as_fd(), libc::SIGKILL).unwrap();
        child.wait().unwrap();
        // Reaped: whatever process gets this pid next, the pidfd still names the old one.
        let err = pidfd_send_signal(fd.as_fd(), libc::SIGTERM).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }
}
