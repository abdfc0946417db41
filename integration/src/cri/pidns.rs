//! The CRI suite with containerd in a PID namespace of its own, as kind and k3d run it
//! (`INTEGRATION_CRI_PIDNS=1`): `unshare --pid --fork --mount-proc` besides the network and
//! mount namespaces, with a shell as the namespace's init that starts containerd, passes
//! SIGTERM on and reaps what is reparented to it (kind's systemd does the same).
//!
//! CRI reports pids as containerd sees them. Tests read /proc here, so [`CriDaemon::host_pid`]
//! translates: a process's `NSpid:` line (/proc/PID/status) lists its pid in each namespace
//! from the host's down; the one at containerd's level is what CRI reported.
use std::time::{Duration, Instant};

use super::daemon::CriDaemon;
use super::procfs::parent;

/// Whether the suite runs containerd in a PID namespace of its own.
pub fn requested() -> bool {
    std::env::var("INTEGRATION_CRI_PIDNS").is_ok_and(|v| v == "1")
}

/// `unshare`'s arguments for the PID namespace (none without [`requested`]).
pub(super) fn unshare_args() -> &'static [&'static str] {
    if requested() {
        // --kill-child: should unshare die, the namespace's init goes with it (and with the
        // init, every process of the namespace).
        &["--pid", "--fork", "--kill-child", "--mount-proc"]
    } else {
        &[]
    }
}

/// The script's last line: containerd exec'd in place of the shell, or started by the shell
/// as the PID namespace's init. Shims are reparented to the init; `wait` reaps any child
/// (dash's waits for all), so none stays a zombie. The init exits with containerd.
pub(super) fn run_containerd(command: &str) -> String {
    if requested() {
        format!(
            "set +e\n{command} &\nc=$!\ntrap 'kill -TERM $c' TERM INT\n\
             while kill -0 $c 2>/dev/null; do wait $c; done\nwait $c"
        )
    } else {
        format!("exec {command}")
    }
}

/// A process's pids, the host's first (`NSpid:` of /proc/PID/status).
pub fn ns_pids(pid: u32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().map(|p| p.parse().ok()).collect()
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// containerd's pid here: `unshare` (`unshare_pid`) itself in the host's namespace (unshare
/// and the shell exec it), else the child of the namespace's init whose command line has
/// `--config`. Waits for it up to 10 s.
pub(super) fn containerd_pid(unshare_pid: u32) -> Result<u32, String> {
    if !requested() {
        return Ok(unshare_pid);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = children(unshare_pid).into_iter().find_map(|init| {
            children(init).into_iter().find(|c| {
                std::fs::read(format!("/proc/{c}/cmdline"))
                    .is_ok_and(|cmd| cmd.split(|b| *b == 0).any(|a| a == b"--config"))
            })
        });
        if let Some(pid) = found {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no containerd below unshare (pid {unshare_pid}) after 10 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl CriDaemon {
    /// containerd's pid in its own PID namespace (its pid here without one).
    pub fn pid_in_namespace(&self) -> u32 {
        ns_pids(self.pid())
            .and_then(|p| p.last().copied())
            .unwrap_or_else(|| panic!("containerd (pid {}) is gone", self.pid()))
    }

    /// The pid here of the process CRI reported as `pid` (which is in containerd's PID
    /// namespace): the process whose pid at containerd's namespace level is `pid` and that
    /// descends from containerd's namespace's init (another test daemon's namespace may use
    /// the same number).
    pub fn host_pid(&self, pid: u32) -> u32 {
        if !requested() {
            return pid;
        }
        let level = ns_pids(self.pid()).map_or(0, |p| p.len() - 1);
        let init = parent(self.pid()).expect("containerd's init");
        let descends = |mut p: u32| {
            while p > 1 {
                if p == init {
                    return true;
                }
                p = parent(p).unwrap_or(0);
            }
            false
        };
        let found = std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .find(|&p| ns_pids(p).is_some_and(|ns| ns.get(level) == Some(&pid)) && descends(p));
        found.unwrap_or_else(|| {
            panic!("no process with pid {pid} in containerd's PID namespace (level {level})")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_its_own_pid_first() {
        let me = std::process::id();
        assert_eq!(ns_pids(me).unwrap()[0], me);
        assert_eq!(parent(me), Some(std::os::unix::process::parent_id()));
    }
}
