//! The pod's namespace holder: a child of the shim that owns the pod's new IPC, UTS and PID
//! namespaces and sits in its network namespace, as a pause container does, but without an
//! image, a rootfs or a runtime. Containers join it through `/proc/<pid>/ns/*`.
//!
//! It is a bare `clone(2)` of the shim, never exec'd: the shim is threaded, so the child may
//! make raw syscalls only (no allocation, no locks). Everything it needs (C strings, the netns
//! fd) is prepared before the clone. It reports a failed step on a pipe and exits; on success
//! it closes every fd (the pipe's EOF is the parent's "ready"), so it holds no socket, log or
//! bundle of the shim's, and waits for signals: it reaps what is reparented to it (it is the
//! init of the pod's PID namespace) and exits on SIGTERM/SIGINT. PR_SET_PDEATHSIG ends it with
//! the shim, so a killed shim leaves no namespace behind.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// What the holder does before it waits, in order.
#[derive(Debug)]
pub struct HolderSetup {
    /// The pod's network namespace to join, or `None` to stay in the shim's (host network).
    pub netns: Option<OwnedFd>,
    pub new_ipc: bool,
    pub new_uts: bool,
    pub new_pid: bool,
    /// Set in the new UTS namespace.
    pub hostname: Option<CString>,
    /// `/proc/sys/...` paths and the values written to them, inside the pod's namespaces.
    pub sysctls: Vec<(CString, Vec<u8>)>,
    /// Where the command line is in memory and what the holder writes there (padded to its
    /// length), so that `ps` and the pod's /proc/1/cmdline say what it is, not the shim's.
    pub cmdline: Option<(u64, Vec<u8>)>,
}

/// The step of the holder's set-up that failed, as reported on the pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    JoinNetwork,
    SetHostname,
    /// The n-th sysctl of [`HolderSetup::sysctls`].
    Sysctl(usize),
    Unknown(u8),
}

/// Why the holder could not be made.
#[derive(Debug)]
pub enum HolderError {
    /// clone(2) or the report pipe failed in the shim.
    Spawn(io::Error),
    /// The child failed `step` and exited.
    Setup { step: Step, error: io::Error },
}

const JOIN_NETWORK: u8 = 1;
const SET_HOSTNAME: u8 = 2;
const SYSCTL: u8 = 3;

/// The name the holder shows in `ps` (comm, at most 15 bytes).
const NAME: &[u8] = b"pod-ns-holder\0";

/// The holder's command line (`name`, NUL-padded to the room there is) and where it goes.
pub fn cmdline(name: &str) -> Option<(u64, Vec<u8>)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // proc(5) numbers arg_start and arg_end 48 and 49; fields after the command name (which
    // may hold spaces) start at number 3.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let start: u64 = fields.get(48 - 3)?.parse().ok()?;
    let end: u64 = fields.get(49 - 3)?.parse().ok()?;
    let room = end.checked_sub(start)? as usize;
    let mut text = name.as_bytes().to_vec();
    if text.len() >= room {
        return None;
    }
    text.resize(room, 0);
    Some((start, text))
}

/// Clones the holder. Returns its pid once it is set up; the caller reaps it.
pub fn spawn(setup: &HolderSetup) -> Result<u32, HolderError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(HolderError::Spawn(io::Error::last_os_error()));
    }
    // SAFETY: both fds were just made by pipe2 and are owned by nothing else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut flags = libc::SIGCHLD as libc::c_ulong;
    for (wanted, flag) in [
        (setup.new_ipc, libc::CLONE_NEWIPC),
        (setup.new_uts, libc::CLONE_NEWUTS),
        (setup.new_pid, libc::CLONE_NEWPID),
    ] {
        if wanted {
            flags |= flag as libc::c_ulong;
        }
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: a clone without CLONE_VM and without a new stack is a fork: the child gets a
    // copy of this thread's memory and runs `holder`, which makes raw syscalls only and never
    // returns, so no lock another thread held and no allocator state is ever touched there.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        return Err(HolderError::Spawn(io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: in the child, see above.
        unsafe { holder(setup, write_end.as_raw_fd(), parent) }
    }
    drop(write_end);
    let mut report = [0u8; 7];
    let mut got = 0;
    while got < report.len() {
        // SAFETY: reads into the unfilled rest of `report`, which outlives the call.
        let n = unsafe {
            libc::read(
                read_end.as_raw_fd(),
                report[got..].as_mut_ptr().cast(),
                report.len() - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => return Err(HolderError::Spawn(io::Error::last_os_error())),
        }
    }
    if got == 0 {
        return Ok(pid as u32);
    }
    // The child exits right after its report. Reaped here so that no zombie stays whoever
    // calls (the shim's reaper may have been first: then this finds no child).
    // SAFETY: waits for the one child this function made; a null status pointer is allowed.
    unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::__WALL) };
    let errno = i32::from_ne_bytes([report[1], report[2], report[3], report[4]]);
    let index = u16::from_ne_bytes([report[5], report[6]]) as usize;
    let step = match report[0] {
        JOIN_NETWORK => Step::JoinNetwork,
        SET_HOSTNAME => Step::SetHostname,
        SYSCTL => Step::Sysctl(index),
        other => Step::Unknown(other),
    };
    Err(HolderError::Setup {
        step,
        error: io::Error::from_raw_os_error(errno),
    })
}

/// The child. Raw syscalls only; never returns.
unsafe fn holder(setup: &HolderSetup, report: RawFd, parent: libc::pid_t) -> ! {
    let fail = |step: u8, index: usize| -> ! {
        let errno = *libc::__errno_location();
        let mut msg = [0u8; 7];
        msg[0] = step;
        msg[1..5].copy_from_slice(&errno.to_ne_bytes());
        msg[5..7].copy_from_slice(&(index as u16).to_ne_bytes());
        libc::write(report, msg.as_ptr().cast(), msg.len());
        libc::_exit(1)
    };
    // Signals: none is handled (the shim's handlers would write into the shim's pipes); the
    // ones the holder acts on are taken with sigwaitinfo, the rest stay blocked.
    let mut all: libc::sigset_t = std::mem::zeroed();
    libc::sigfillset(&mut all);
    libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    for sig in 1..libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    // The shim may have died before the line above (then nothing would end the holder). In a
    // new PID namespace the parent is outside it and getppid() says 0.
    let ppid = libc::getppid();
    if ppid != parent && ppid != 0 {
        libc::_exit(1);
    }
    if let Some(netns) = &setup.netns {
        if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
            fail(JOIN_NETWORK, 0);
        }
    }
    if let Some(name) = &setup.hostname {
        if libc::sethostname(name.as_ptr(), name.as_bytes().len()) != 0 {
            fail(SET_HOSTNAME, 0);
        }
    }
    for (i, (path, value)) in setup.sysctls.iter().enumerate() {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 || libc::write(fd, value.as_ptr().cast(), value.len()) < 0 {
            fail(SYSCTL, i);
        }
        libc::close(fd);
    }
    libc::prctl(libc::PR_SET_NAME, NAME.as_ptr() as libc::c_ulong);
    if let Some((start, text)) = &setup.cmdline {
        let mem = libc::open(c"/proc/self/mem".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if mem >= 0 {
            libc::pwrite(mem, text.as_ptr().cast(), text.len(), *start as libc::off_t);
            libc::close(mem);
        }
    }
    libc::chdir(c"/".as_ptr());
    // Every fd goes, the report pipe with it: its EOF tells the parent the holder is ready.
    if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
        for fd in 0..4096 {
            libc::close(fd);
        }
    }
    let mut wanted: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut wanted);
    for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT] {
        libc::sigaddset(&mut wanted, sig);
    }
    loop {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        match libc::sigwaitinfo(&wanted, &mut info) {
            libc::SIGCHLD => {
                while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) > 0 {}
            }
            libc::SIGTERM | libc::SIGINT => libc::_exit(0),
            _ => {}
        }
    }
}
