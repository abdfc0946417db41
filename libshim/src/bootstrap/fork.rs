//! The serving process, forked from `start` rather than exec'd: the socket is already bound
//! and `start` is single-threaded, so the child can serve at once. That saves an exec and a
//! C library start-up per new shim (the Go shim has to re-exec itself).
use std::os::unix::net::UnixListener;
use std::path::Path;

use super::{protocol, serve_on, ttrpc_address_from_env, Args, Serving, ShimName};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::sys;

pub(super) enum Forked {
    Parent(u32),
    Child(Box<ForkedServer>),
}

/// The serving process as `start` forks it: the socket already bound, nothing left to parse.
pub(super) struct ForkedServer {
    args: Args,
    listener: UnixListener,
    ttrpc_address: Option<String>,
    for_sandbox: bool,
}

impl ForkedServer {
    pub(super) fn run<B: Backend>(self, name: ShimName, backend: B) -> Result<()> {
        let serving = Serving {
            name,
            for_sandbox: self.for_sandbox,
        };
        serve_on(
            &self.args,
            self.listener,
            self.ttrpc_address,
            serving,
            backend,
        )
    }
}

/// Forks the serving process. `start` has just bound the socket and is single-threaded, so
/// the child serves at once, without exec'ing this binary again (an exec and a C library
/// start-up per new shim, the Go shim's way). The child leaves containerd's process group and
/// stdio, so containerd's read of `start`'s output ends when `start` exits.
pub(super) fn fork_server(
    request: &protocol::StartRequest,
    bundle: &Path,
    listener: UnixListener,
    path: &Path,
    for_sandbox: bool,
) -> Result<Forked> {
    let args = Args {
        namespace: request.namespace.clone(),
        id: request.id.clone(),
        address: request.grpc_address.clone(),
        debug: request.debug,
        ..Default::default()
    };
    let forked = sys::fork_single_threaded().map_err(|e| {
        let _ = std::fs::remove_file(path);
        Error::io("fork the serving shim", e)
    })?;
    match forked {
        nix::unistd::ForkResult::Child => {}
        // The start process exits soon; the server is reparented and nobody waits for it.
        nix::unistd::ForkResult::Parent { child } => {
            return Ok(Forked::Parent(child.as_raw() as u32))
        }
    }
    // In the child: any failure here ends it (`run` exits non-zero); containerd sees the
    // socket refuse connections and reports the shim as failed.
    detach_from_containerd(bundle)?;
    // Best effort: what `ps` shows is cosmetic.
    let _ = rewrite_cmdline(&server_cmdline(&args));
    // containerd 2.3 names its ttrpc address in BootstrapParams, earlier ones in the
    // environment of `start`, which the fork keeps.
    let ttrpc_address = request
        .ttrpc_address
        .as_deref()
        .map(|a| a.trim_start_matches("unix://").to_string())
        .or_else(ttrpc_address_from_env);
    Ok(Forked::Child(Box::new(ForkedServer {
        args,
        listener,
        ttrpc_address,
        for_sandbox,
    })))
}

/// What the forked server shows as its command line: the binary and the serving flags.
fn server_cmdline(args: &Args) -> Vec<String> {
    let binary = std::env::args().next().unwrap_or_default();
    std::iter::once(binary).chain(args.serve_args()).collect()
}

/// Rewrites this process's command line (/proc/self/cmdline, what `ps` shows) in the memory
/// that holds it, padding with NULs: the serving flags are a subset of `start`'s, so they fit.
/// (Moving the command line elsewhere, PR_SET_MM, needs CAP_SYS_RESOURCE.)
fn rewrite_cmdline(args: &[String]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // proc(5) numbers arg_start and arg_end 48 and 49; fields after the command name
    // (which may hold spaces) start at number 3.
    let field = |n: usize| -> Option<u64> {
        stat.rsplit_once(") ")?
            .1
            .split_whitespace()
            .nth(n - 3)?
            .parse()
            .ok()
    };
    let (Some(start), Some(end)) = (field(48), field(49)) else {
        return Err(std::io::Error::other(
            "no argument range in /proc/self/stat",
        ));
    };
    let mut text: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let room = end.saturating_sub(start) as usize;
    if text.len() > room {
        return Err(std::io::Error::other(
            "the new command line is longer than the old",
        ));
    }
    text.resize(room, 0);
    std::fs::File::options()
        .write(true)
        .open("/proc/self/mem")?
        .write_all_at(&text, start)
}

/// Puts the forked server in its own process group (signals meant for containerd miss it),
/// in the bundle directory, with /dev/null for stdio (containerd reads `start`'s stdout to
/// its end, which must come when `start` exits).
fn detach_from_containerd(bundle: &Path) -> Result<()> {
    use std::os::fd::AsFd;
    nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
        .map_err(|e| Error::io("leave containerd's process group", e.into()))?;
    std::env::set_current_dir(bundle)
        .map_err(|e| Error::io(format!("enter {}", bundle.display()), e))?;
    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::io("open /dev/null", e))?;
    nix::unistd::dup2_stdin(null.as_fd())
        .and_then(|()| nix::unistd::dup2_stdout(null.as_fd()))
        .and_then(|()| nix::unistd::dup2_stderr(null.as_fd()))
        .map_err(|e| Error::io("point stdio at /dev/null", e.into()))
}
