//! One CRIU restore over its RPC (`criu swrk <fd>`), driven here instead of through rust-criu
//! 0.6, which cannot give criu the process's stdio, put criu into the container's cgroup
//! before the request, pass cgroup roots, or report the restored pid (runc's criuSwrk does all
//! four; docs/upstream/libcontainer-restore.md).
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use libshim::BackendError;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use protobuf::Message;
use rust_criu::rust_criu_protobuf::rpc;

use super::fail;

/// runc's buffer sizes for CRIU's messages.
const MESSAGE_MAX: usize = 10 * 4096;

/// A running `criu swrk`, before its request.
pub struct Swrk {
    child: Child,
    sock: OwnedFd,
}

/// What the restore left: the restored init, and its terminal's master when it has one.
pub struct Restored {
    pub pid: i32,
}

/// Starts `criu swrk` with `stdio` as its 0, 1, 2 (the restored process inherits the ones its
/// image names `pipe:[...]`, runc's scheme) and `inherited` left open at their numbers.
pub fn spawn(stdio: [OwnedFd; 3], inherited: &[&OwnedFd]) -> Result<Swrk, BackendError> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| fail("create the CRIU socket pair", e))?;
    // Only criu's ends lose close-on-exec; the shim is single-threaded, so no other fork can
    // inherit them meanwhile.
    for fd in inherited.iter().map(|f| f.as_fd()).chain([theirs.as_fd()]) {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))
            .map_err(|e| fail("pass a descriptor to criu", e))?;
    }
    let [stdin, stdout, stderr] = stdio;
    let child = Command::new("criu")
        .arg("swrk")
        .arg(theirs.as_raw_fd().to_string())
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .spawn()
        .map_err(|e| BackendError::MissingBinary {
            binary: "criu".into(),
            source: e,
        })?;
    Ok(Swrk { child, sock: ours })
}

impl Swrk {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ends criu before any request (it would exit on the closed socket anyway; waiting here
    /// makes sure it has left the cgroup that is removed next).
    pub fn abort(mut self) {
        let _ = self.child.kill();
        drop(self.sock);
        let _ = self.child.wait();
    }

    /// Sends the restore request and answers CRIU's notifications until its final answer.
    /// `on_namespaces` runs once the restored tree's namespaces exist, with its init's pid
    /// (runc runs the prestart and createRuntime hooks there).
    pub fn restore(
        mut self,
        opts: rpc::Criu_opts,
        console_socket: Option<&Path>,
        on_namespaces: &mut dyn FnMut(i32) -> Result<(), BackendError>,
    ) -> Result<Restored, BackendError> {
        let out = self.exchange(opts, console_socket, on_namespaces);
        if out.is_err() {
            let _ = self.child.kill();
        }
        drop(self.sock);
        // A synchronous wait for criu alone: libshim's reaper runs on this thread and cannot
        // reap it meanwhile (see the crate docs).
        let _ = self.child.wait();
        out
    }

    fn exchange(
        &mut self,
        opts: rpc::Criu_opts,
        console_socket: Option<&Path>,
        on_namespaces: &mut dyn FnMut(i32) -> Result<(), BackendError>,
    ) -> Result<Restored, BackendError> {
        let mut req = rpc::Criu_req::new();
        req.set_type(rpc::Criu_req_type::RESTORE);
        req.opts = protobuf::MessageField::some(opts);
        self.send(&req)?;
        let mut pid = None;
        loop {
            let (resp, fd) = self.receive()?;
            if !resp.success() {
                return Err(fail(
                    "criu",
                    format!(
                        "{:?} failed (errno {}{})",
                        resp.type_(),
                        resp.cr_errno(),
                        match resp.cr_errmsg() {
                            "" => String::new(),
                            // (The first error CRIU logged, not always the cause: its
                            // log, kept by libshim, has the rest.)
                            m => format!("; CRIU's first error: {}", m.trim_end()),
                        }
                    ),
                ));
            }
            match resp.type_() {
                rpc::Criu_req_type::NOTIFY => {
                    let handled = match resp.notify.script() {
                        "setup-namespaces" => on_namespaces(resp.notify.pid()),
                        _ => Ok(()),
                    };
                    if let Err(e) = handled {
                        // CRIU aborts the restore on a failed notification.
                        let mut nack = rpc::Criu_req::new();
                        nack.set_type(rpc::Criu_req_type::NOTIFY);
                        nack.set_notify_success(false);
                        let _ = self.send(&nack);
                        return Err(e);
                    }
                    match resp.notify.script() {
                        "post-restore" => pid = Some(resp.notify.pid()),
                        "orphan-pts-master" => {
                            let master = fd.ok_or_else(|| {
                                fail("take the terminal", "criu sent no pty master")
                            })?;
                            let socket = console_socket.ok_or_else(|| {
                                fail("take the terminal", "the image has one, the task has none")
                            })?;
                            send_master(socket, &master)?;
                        }
                        _ => {}
                    }
                    let mut ack = rpc::Criu_req::new();
                    ack.set_type(rpc::Criu_req_type::NOTIFY);
                    ack.set_notify_success(true);
                    self.send(&ack)?;
                }
                rpc::Criu_req_type::RESTORE => {
                    let pid = match resp.restore.pid() {
                        0 => pid.ok_or_else(|| fail("criu", "no restored pid reported"))?,
                        p => p,
                    };
                    return Ok(Restored { pid });
                }
                other => return Err(fail("criu", format!("unexpected answer {other:?}"))),
            }
        }
    }

    fn send(&self, req: &rpc::Criu_req) -> Result<(), BackendError> {
        let bytes = req
            .write_to_bytes()
            .map_err(|e| fail("encode the CRIU request", e))?;
        nix::unistd::write(&self.sock, &bytes).map_err(|e| fail("send to criu", e))?;
        Ok(())
    }

    fn receive(&self) -> Result<(rpc::Criu_resp, Option<OwnedFd>), BackendError> {
        let mut buf = vec![0u8; MESSAGE_MAX];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| fail("read from criu", e))?;
        let mut fd = None;
        for c in msg.cmsgs().map_err(|e| fail("read from criu", e))? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // (One is sent; any extra is closed.)
                fd = fds.into_iter().map(own_fd).reduce(|first, _extra| first);
            }
        }
        let len = msg.bytes;
        if len == 0 {
            return Err(fail("read from criu", "criu exited without an answer"));
        }
        let resp = rpc::Criu_resp::parse_from_bytes(&buf[..len])
            .map_err(|e| fail("decode CRIU's answer", e))?;
        Ok((resp, fd))
    }
}

/// Takes ownership of a descriptor SCM_RIGHTS just installed (libshim's `sys::own_fd` is
/// private to libshim).
#[allow(unsafe_code)]
fn own_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed `fd` in this process for this message; nothing else knows
    // or closes it.
    unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
}

/// Hands the restored terminal's master to containerd's console socket (runc's protocol: one
/// SCM_RIGHTS message).
fn send_master(socket: &Path, master: &OwnedFd) -> Result<(), BackendError> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| BackendError::io(format!("connect console socket {}", socket.display()), e))?;
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(b"/dev/ptmx")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| fail("send the terminal to the console socket", e))?;
    Ok(())
}
