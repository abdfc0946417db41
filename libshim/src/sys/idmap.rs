//! The syscalls behind idmapped mounts (Linux 5.12+): a user namespace that only carries id
//! mappings, and the new mount API calls that clone a mount, idmap the clone and attach it.
//! nix covers none of them.
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A user namespace whose uid and gid maps are `uid_map` and `gid_map` (in /proc's
/// "inside outside count" line format), held by the returned fd. It is made by a bare clone of
/// this process that waits for its maps to be written and exits: the namespace lives on as
/// long as the fd.
pub fn userns_with_maps(uid_map: &str, gid_map: &str) -> io::Result<OwnedFd> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: without CLONE_VM or a new stack this is a fork. The child (the shim may be
    // threaded) makes raw syscalls only and never returns: it closes its copy of the pipe's
    // write end, blocks until the parent closes its own, and exits.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let mut byte = 0u8;
        // SAFETY: raw syscalls on this child's own copies of the fds; `byte` is a local.
        unsafe {
            libc::close(write_end.as_raw_fd());
            libc::read(read_end.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    let maps = (|| {
        // Privileged here, so gid_map is written without denying setgroups first.
        std::fs::write(format!("/proc/{pid}/uid_map"), uid_map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), gid_map)?;
        std::fs::File::open(format!("/proc/{pid}/ns/user")).map(OwnedFd::from)
    })();
    drop(write_end);
    // The child exits on the pipe's EOF; reaped here in the same synchronous step, so the
    // shim's reaper never sees it (its loop runs only at an await on this thread).
    // SAFETY: waits for the one child made above; a null status pointer is allowed.
    unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::__WALL) };
    maps
}

/// A detached clone of the mount at `source` (and the mounts under it with `recursive`).
pub fn open_tree_clone(source: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let path = c_path(source)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: open_tree reads the NUL-terminated path, which lives across the call.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel just returned, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Idmaps the detached mount `tree` through `userns` (with `recursive`, every mount in it),
/// also setting `attr_set`.
pub fn set_idmap(
    tree: BorrowedFd<'_>,
    userns: BorrowedFd<'_>,
    recursive: bool,
    attr_set: u64,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: mount_setattr reads `size` bytes of `attr`, which lives across the call, and an
    // empty NUL-terminated path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this kernel has mount_setattr(2) (5.12+), without which no mount can be idmapped:
/// asked on a bad fd, it answers EBADF where it exists and ENOSYS where it does not.
pub fn kernel_has_mount_setattr() -> bool {
    // SAFETY: a call on fd -1 with a null attr and size 0 touches no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            std::ptr::null::<MountAttr>(),
            0usize,
        )
    };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

/// Attaches the detached mount `tree` at `target`.
pub fn move_mount(tree: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    let path = c_path(target)?;
    // SAFETY: move_mount reads two NUL-terminated paths, both alive across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            path.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
