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
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// What the holder does before it waits, in order.
#[derive(Debug)]
pub struct HolderSetup {
    /// The pod's user namespace, joined first: the new IPC, UTS and PID namespaces are then
    /// its own (see [`spawn`]).
    pub userns: Option<OwnedFd>,
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

impl HolderSetup {
    /// The CLONE_NEW* flags of the namespaces the pod gets of its own (no allocation: the
    /// child calls it too).
    fn new_namespaces(&self) -> libc::c_int {
        let mut flags = 0;
        for (wanted, flag) in [
            (self.new_ipc, libc::CLONE_NEWIPC),
            (self.new_uts, libc::CLONE_NEWUTS),
            (self.new_pid, libc::CLONE_NEWPID),
        ] {
            if wanted {
                flags |= flag;
            }
        }
        flags
    }
}

/// The step of the holder's set-up that failed, as reported on the pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    JoinUser,
    /// setresuid/setresgid to 0 inside the joined user namespace.
    BecomeRoot,
    /// unshare(2) of the pod's new namespaces inside it.
    Unshare,
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
const JOIN_USER: u8 = 4;
const BECOME_ROOT: u8 = 5;
const UNSHARE: u8 = 6;
/// Not a failure: the pid of the holder a user-namespaced set-up cloned (in the errno field).
const HOLDER_PID: u8 = 7;

/// NS_GET_USERNS, ioctl_ns(2): the user namespace that owns a namespace.
const NS_GET_USERNS: libc::c_ulong = 0xb701;

/// The user namespace that owns the namespace `ns` (Linux 4.9+).
pub fn owning_user_namespace(ns: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: NS_GET_USERNS takes no argument and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel just returned, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

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
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| HolderError::Spawn(e.into()))?;
    // With a user namespace the namespaces are made inside it, by the child (see below).
    let mut flags = libc::SIGCHLD as libc::c_ulong;
    if setup.userns.is_none() {
        flags |= setup.new_namespaces() as libc::c_ulong;
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
        unsafe {
            match &setup.userns {
                Some(userns) => via_user_namespace(setup, userns, write_end.as_raw_fd(), parent),
                None => holder(setup, write_end.as_raw_fd(), parent),
            }
        }
    }
    drop(write_end);
    // A user-namespaced set-up reports the holder it cloned, then exits; the holder's pid
    // replaces the child's. Then EOF (ready) or a failure.
    let mut holder_pid = None;
    let failure = loop {
        match read_record(&read_end) {
            Ok(None) => break None,
            Ok(Some([HOLDER_PID, a, b, c, d, _, _])) => {
                holder_pid = Some(i32::from_ne_bytes([a, b, c, d]));
            }
            Ok(Some(record)) => break Some(Ok(record)),
            Err(e) => break Some(Err(e)),
        }
    };
    let reap = |pid: libc::pid_t| {
        // Reaped here so that no zombie stays whoever calls (the shim's reaper may have been
        // first: then this finds no child).
        // SAFETY: waits for a child this function made; a null status pointer is allowed.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL) };
    };
    if setup.userns.is_some() || failure.is_some() {
        // The set-up child exits after its report (the holder is its sibling, not its child).
        reap(pid as libc::pid_t);
    }
    let record = match failure {
        None => {
            return match (setup.userns.is_some(), holder_pid) {
                (false, _) => Ok(pid as u32),
                (true, Some(holder)) => Ok(holder as u32),
                (true, None) => Err(HolderError::Spawn(io::Error::other(
                    "the set-up ended without naming the holder",
                ))),
            };
        }
        Some(Err(e)) => return Err(HolderError::Spawn(e)),
        Some(Ok(record)) => record,
    };
    // The holder, if it was cloned, exits after its report too.
    if let Some(holder) = holder_pid {
        reap(holder);
    }
    let errno = i32::from_ne_bytes([record[1], record[2], record[3], record[4]]);
    let index = u16::from_ne_bytes([record[5], record[6]]) as usize;
    let step = match record[0] {
        JOIN_NETWORK => Step::JoinNetwork,
        SET_HOSTNAME => Step::SetHostname,
        SYSCTL => Step::Sysctl(index),
        JOIN_USER => Step::JoinUser,
        BECOME_ROOT => Step::BecomeRoot,
        UNSHARE => Step::Unshare,
        other => Step::Unknown(other),
    };
    Err(HolderError::Setup {
        step,
        error: io::Error::from_raw_os_error(errno),
    })
}

/// One 7-byte report (records are written whole, below PIPE_BUF), or None at EOF.
fn read_record(pipe: &OwnedFd) -> io::Result<Option<[u8; 7]>> {
    let mut record = [0u8; 7];
    let mut got = 0;
    while got < record.len() {
        // SAFETY: reads into the unfilled rest of `record`, which outlives the call.
        let n = unsafe {
            libc::read(
                pipe.as_raw_fd(),
                record[got..].as_mut_ptr().cast(),
                record.len() - got,
            )
        };
        match n {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::Error::other("a truncated report from the holder")),
            n if n > 0 => got += n as usize,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => return Err(io::Error::last_os_error()),
        }
    }
    Ok(Some(record))
}

/// Writes a failure report for `step` with this thread's errno and exits. Raw syscalls only.
unsafe fn report_failure(report: RawFd, step: u8, index: usize) -> ! {
    let errno = *libc::__errno_location();
    let mut msg = [0u8; 7];
    msg[0] = step;
    msg[1..5].copy_from_slice(&errno.to_ne_bytes());
    msg[5..7].copy_from_slice(&(index as u16).to_ne_bytes());
    libc::write(report, msg.as_ptr().cast(), msg.len());
    libc::_exit(1)
}

/// The child, for a user-namespaced pod: it enters the pod's user namespace (the one CRI made
/// the pod's network namespace in) as its root, joins the network namespace (which that user
/// namespace owns), makes the new IPC, UTS and PID namespaces there, so the pod's containers,
/// which join that user namespace first, may join them too, and clones the holder as the
/// shim's child (CLONE_PARENT), pid 1 of the new PID namespace. It reports the holder's pid
/// and exits. Raw syscalls only; never returns.
unsafe fn via_user_namespace(
    setup: &HolderSetup,
    userns: &OwnedFd,
    report: RawFd,
    parent: libc::pid_t,
) -> ! {
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    if libc::getppid() != parent {
        libc::_exit(1);
    }
    if libc::setns(userns.as_raw_fd(), libc::CLONE_NEWUSER) != 0 {
        report_failure(report, JOIN_USER, 0);
    }
    // The shim's root is not mapped inside: become the namespace's root (the pod's root).
    if libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
        || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
    {
        report_failure(report, BECOME_ROOT, 0);
    }
    // The uid change made this process (and the holder, which copies its memory map) not
    // dumpable, and its memory map belongs to the host's user namespace: the pod's containers,
    // root in the pod's user namespace only, could then not open the holder's /proc/<pid>/ns
    // files. Dumpable again, the same uid is what lets them (ptrace read access), as for a
    // pause container exec'd in the user namespace.
    libc::prctl(libc::PR_SET_DUMPABLE, 1 as libc::c_ulong);
    if let Some(netns) = &setup.netns {
        if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
            report_failure(report, JOIN_NETWORK, 0);
        }
    }
    let flags = setup.new_namespaces();
    if flags != 0 && libc::unshare(flags) != 0 {
        report_failure(report, UNSHARE, 0);
    }
    let clone_flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    let holder_pid = libc::syscall(libc::SYS_clone, clone_flags, 0usize, 0usize, 0usize, 0usize);
    if holder_pid < 0 {
        report_failure(report, UNSHARE, 1);
    }
    if holder_pid == 0 {
        holder(setup, report, parent)
    }
    let mut msg = [0u8; 7];
    msg[0] = HOLDER_PID;
    msg[1..5].copy_from_slice(&(holder_pid as i32).to_ne_bytes());
    libc::write(report, msg.as_ptr().cast(), msg.len());
    libc::_exit(0)
}

/// The child. Raw syscalls only; never returns.
unsafe fn holder(setup: &HolderSetup, report: RawFd, parent: libc::pid_t) -> ! {
    let fail = |step: u8, index: usize| -> ! { report_failure(report, step, index) };
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
