//! Restarting the CRI suite's containerd in place, as a node's service manager does after a
//! crash: SIGKILL, then the same binary and config again, in the network and mount namespaces
//! the first one ran in (held meanwhile by the shims it started, whose pods live on).
use std::process::{Command, Stdio};

use super::daemon::CriDaemon;

impl CriDaemon {
    pub(super) fn set_pid(&self, pid: u32) {
        self.pid_cell()
            .store(pid, std::sync::atomic::Ordering::SeqCst);
    }

    /// Kills containerd and starts it again in the same namespaces; returns when CRI serves.
    /// Needs a live shim to find the namespaces by, and no PID namespace of containerd's own
    /// (whose init is containerd's parent and ends with it).
    pub fn restart(&self) {
        assert!(
            !super::pidns::requested(),
            "restart is not supported with containerd in a PID namespace of its own"
        );
        let old = self.pid();
        let address = self.socket().to_string_lossy().into_owned();
        let holder = crate::daemon::processes_with_arg(&address)
            .into_iter()
            .map(|(pid, _)| pid)
            .find(|pid| *pid != old)
            .expect("a live shim holds containerd's namespaces across the restart");
        // containerd's environment (PATH to the shims under test) is what it gets again.
        let environ =
            std::fs::read(format!("/proc/{old}/environ")).expect("containerd's environment");
        let child = self.child.lock().unwrap().take().expect("containerd runs");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        crate::daemon::stop_child(child);
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir().join("containerd.log"))
            .expect("log file");
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &holder.to_string(), "--net", "--mount", "--"])
            .arg(super::daemon::containerd_binary())
            .arg("--config")
            .arg(self.dir().join("config.toml"))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for var in environ.split(|b| *b == 0).filter(|v| !v.is_empty()) {
            let var = String::from_utf8_lossy(var);
            if let Some((k, v)) = var.split_once('=') {
                cmd.env(k, v);
            }
        }
        let child = cmd.spawn().expect("start containerd again");
        // nsenter joins the namespaces and execs containerd: one process.
        self.set_pid(child.id());
        *self.child.lock().unwrap() = Some(child);
        self.wait_ready();
        self.wait_cri_ready();
    }
}
