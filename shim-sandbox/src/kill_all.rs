//! Kill with `all` on a cgroup v1 host without a libcgroups manager (see `cgroup_dirs` and
//! `freezer`): the steps of libcontainer's, as runc takes them too: freeze so nothing forks
//! meanwhile, signal every pid of the container's cgroup, thaw (which also lets a paused
//! container's processes take a SIGKILL). A v2 manager costs nothing to build, so on v2, with
//! systemd or with a path `cgroup_dirs` does not handle, libcontainer does it.
//!
//! A SIGKILL for an init that is pid 1 of its own PID namespace needs no freezing: the kernel
//! kills every other process of that namespace with it (pid_namespaces(7)), as runc 1.2 relies
//! on too. Freezing is not free: each freeze and thaw flips a kernel static key, patching code
//! on every CPU.
use std::path::Path;

use libcontainer::container::{Container, ContainerStatus};
use libshim::BackendError;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::call::failed;
use crate::cgroup_dirs;
use crate::freezer::{freeze, thaw};

/// Signals every process of `c`; false, having done nothing, when libcontainer should.
pub fn kill_all(c: &mut Container, signal: Signal) -> Result<bool, BackendError> {
    c.refresh_status().map_err(failed("kill"))?;
    // libcontainer refuses other states (Creating) with its own error.
    if !(c.can_kill() || c.status() == ContainerStatus::Stopped) || c.systemd() {
        return Ok(false);
    }
    let Ok(config) = c.spec() else {
        return Ok(false);
    };
    let path = &config.cgroup_path;
    let (Some(freezer), Some(devices)) = (
        cgroup_dirs::v1(path, "freezer"),
        cgroup_dirs::v1(path, "devices"),
    ) else {
        return Ok(false);
    };
    let init = c
        .pid()
        .filter(|_| c.can_kill())
        .map(|p| Pid::from_raw(p.as_raw()));
    if let (Signal::SIGKILL, Some(init)) = (signal, init) {
        // Still the container's own init (a reaped init's pid may have been reused)?
        if in_cgroup(init, &devices) && is_pid_namespace_init(init) {
            match kill(init, signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => return Err(BackendError::io(format!("signal pid {init}"), e.into())),
            }
            // A frozen process takes its SIGKILL once thawed.
            if c.status() == ContainerStatus::Paused {
                thaw(&freezer)?;
            }
            return mark_stopped(c);
        }
    }
    // Best effort, as in libcontainer: signalling goes ahead unfrozen.
    if let Err(e) = freeze(&freezer) {
        log::warn!("{e}; signalling unfrozen");
    }
    // libcgroups lists the pids from the devices hierarchy, whole subtree included.
    let signalled = libcgroups::common::get_all_pids(&devices)
        .map_err(failed("kill (list the cgroup's pids)"))
        .and_then(|pids| {
            pids.into_iter()
                // (libcgroups' Pid is another nix version's.)
                .map(|pid| Pid::from_raw(pid.as_raw()))
                .try_for_each(|pid| match kill(pid, signal) {
                    Ok(()) | Err(Errno::ESRCH) => Ok(()),
                    Err(e) => Err(BackendError::io(format!("signal pid {pid}"), e.into())),
                })
        });
    // Thawed even when listing or signalling failed: a cgroup left frozen hangs the container.
    if freezer.exists() {
        if let Err(e) = thaw(&freezer) {
            log::warn!("{e}");
        }
    }
    signalled?;
    mark_stopped(c)
}

/// As libcontainer's kill does after signalling; the next status refresh corrects it if the
/// init lives on.
fn mark_stopped(c: &mut Container) -> Result<bool, BackendError> {
    c.set_status(ContainerStatus::Stopped)
        .save()
        .map_err(failed("kill"))?;
    Ok(true)
}

/// Whether `pid` is a member of the cgroup at `dir` itself.
fn in_cgroup(pid: Pid, dir: &Path) -> bool {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    let pid = pid.as_raw().to_string();
    procs.lines().any(|l| l.trim() == pid)
}

/// Whether `pid` is pid 1 of a PID namespace below ours: its `NSpid` ends in 1.
fn is_pid_namespace_init(pid: Pid) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|ids| ids.split_whitespace().collect::<Vec<_>>())
        .is_some_and(|ids| ids.len() > 1 && ids.last() == Some(&"1"))
}
