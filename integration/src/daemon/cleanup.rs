//! What a test's containerd leaves is removed when it is dropped: tasks and containers through
//! containerd (bounded, so a shim that fails to kill fails its test instead of hanging the suite),
//! then runtime state, cgroups and mounts by force.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Containerd, DEFAULT_RUNTIME_ROOT, SANDBOX_ROOT};

impl Containerd {
    /// Removes what a test left through containerd. Each call is bounded: a shim that fails to
    /// kill (the very thing a test may catch) must fail the test, not hang the suite; the
    /// cgroups are emptied by force afterwards.
    fn cleanup_tasks(&self) {
        let ids = |what: &str| {
            let out = self.ctr_bounded(&[what, "ls", "-q"]);
            out.lines().map(str::to_string).collect::<Vec<_>>()
        };
        let tasks = ids("task");
        for id in &tasks {
            self.ctr_bounded(&["task", "kill", "-a", "-s", "KILL", id]);
        }
        std::thread::sleep(Duration::from_millis(100));
        for id in &tasks {
            self.ctr_bounded(&["task", "rm", "-f", id]);
        }
        for id in ids("container") {
            self.ctr_bounded(&["container", "rm", &id]);
        }
    }

    /// `ctr` as [`Self::ctr`], killed after 20 s; its stdout.
    fn ctr_bounded(&self, args: &[&str]) -> String {
        let child = self
            .ctr_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else {
            return String::new();
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                eprintln!("cleanup: ctr {args:?} still running after 20 s, killed");
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child
            .wait_with_output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Removes runtime state that survived (a test that crashed a shim on purpose, say).
    fn cleanup_runtime_state(&self) {
        let roots = [
            Path::new(DEFAULT_RUNTIME_ROOT).join(&self.namespace),
            self.dir.path().join("runtime-root").join(&self.namespace),
        ];
        // The sandbox shim's state (libcontainer's), removed by its own delete; only the
        // namespace directory is left to go.
        let _ = std::fs::remove_dir_all(Path::new(SANDBOX_ROOT).join(&self.namespace));
        for root in roots {
            let Ok(entries) = std::fs::read_dir(&root) else {
                continue;
            };
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                for bin in ["runc", "crun"] {
                    let _ = Command::new(bin)
                        .arg("--root")
                        .arg(&root)
                        .args(["delete", "--force", &id])
                        .stderr(Stdio::null())
                        .status();
                }
            }
            let _ = std::fs::remove_dir_all(&root);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- containerd log ({}) ----\n{}\n---- end of log ----",
                self.namespace,
                self.log()
            );
        }
        self.cleanup_tasks();
        let shims = self.shim_pids();
        if let Some(child) = self.child.take() {
            stop_child(child);
        }
        for pid in shims.into_iter().chain(self.shim_pids()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.cleanup_runtime_state();
        remove_cgroups(&self.namespace);
        unmount_below(self.dir.path());
    }
}

/// Removes the (empty) `/<namespace>` cgroups the containers were placed under, in every
/// hierarchy; the runtimes remove only each container's own leaf. `parent` is a cgroup path
/// (a leading `/` or none), also a CRI test's pod cgroup parent.
pub(crate) fn remove_cgroups(parent: &str) {
    let rel = parent.trim_start_matches('/');
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut dirs: Vec<PathBuf> = hierarchies.flatten().map(|h| h.path().join(rel)).collect();
    dirs.push(Path::new("/sys/fs/cgroup").join(rel));
    // The freezer hierarchy first: its processes die only once thawed, and until they are gone
    // no hierarchy's directory can go.
    dirs.sort_by_key(|d| !d.starts_with("/sys/fs/cgroup/freezer"));
    for dir in dirs {
        remove_cgroup_tree(&dir);
    }
}

/// At the test process's exit, removes what is left of the cgroups of its daemons
/// (`it-<pid>-*`): a runc restore through CRIU may recreate the dumped container's cgroup in
/// the `unified` and `name=systemd` hierarchies of this hybrid host, by its old path, after
/// the daemon that held it is gone (runc 1.1 + CRIU 4.1; the sandbox shim's restore does not).
pub(crate) fn remove_own_cgroups_at_exit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    extern "C" fn sweep() {
        let prefix = format!("it-{}-", std::process::id());
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for h in hierarchies.flatten() {
            let Ok(entries) = std::fs::read_dir(h.path()) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    remove_cgroup_tree(&e.path());
                }
            }
        }
    }
    ONCE.call_once(|| {
        // SAFETY: `sweep` only calls std functions; atexit handlers run on the exiting thread
        // after the test harness has returned, when no daemon of this process is left.
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(sweep);
        }
    });
}

/// Removes the cgroup at `dir` and below, thawing and killing whatever is still in it.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for c in children.flatten() {
            if c.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&c.path());
            }
        }
    }
    if !dir.exists() {
        return;
    }
    // A frozen process takes its SIGKILL only once thawed (v1 freezer, v2 cgroup.freeze).
    let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
    let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
    for attempt in 0..50 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        if attempt == 49 {
            eprintln!("cleanup: could not remove cgroup {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unmount_below(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for m in points {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// SIGTERM to a containerd the test started, SIGKILL after 5 s; reaped either way.
pub(crate) fn stop_child(mut child: std::process::Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
