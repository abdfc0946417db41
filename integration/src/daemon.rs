//! A private containerd: its own root, state, sockets and namespace, our shims first on PATH.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::runtime::shim_bin_dir;

const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
/// On a hybrid cgroup host crun refuses to run while the v2 hierarchy holds controllers;
/// containerd (and so shims and crun) then runs in a mount namespace that hides them.
const HYBRID_CONTROLLERS: &str = "/sys/fs/cgroup/unified/cgroup.controllers";
/// Where runc and crun keep state unless the Root option says otherwise.
pub const DEFAULT_RUNTIME_ROOT: &str = "/run/containerd/runc";
/// Where the sandbox shim keeps container state by default.
pub const SANDBOX_ROOT: &str = "/run/containerd/sandbox";
/// The runtime type that reaches our runc shim through [`LEGACY_ALIAS_BINARY`].
pub const LEGACY_ALIAS_RUNTIME: &str = "io.containerd.runcrslegacy.v2";
const LEGACY_ALIAS_BINARY: &str = "containerd-shim-runcrslegacy-v2";

pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub namespace: String,
    /// Where containerd's files are seen from here: its state may sit on a tmpfs mounted in
    /// its own mount namespace, reached through `/proc/PID/root`.
    view_root: PathBuf,
    /// Whether containerd sees the cgroup v2 hierarchy alone ([`Settings::cgroup_v2`]).
    cgroup_v2: bool,
    /// How it was started, to start it again ([`Self::restart`]).
    settings: Settings,
    path: String,
}

/// How the private containerd runs.
#[derive(Clone, Copy)]
pub struct Settings {
    /// containerd's log level (it passes `-debug` to the shims when it is `debug`).
    pub log_level: &'static str,
    /// Puts containerd's state and `/run/containerd` (shim sockets, runtime roots) on a tmpfs
    /// in containerd's mount namespace, as `/run` is on a host with systemd.
    pub state_on_tmpfs: bool,
    /// Mounts the cgroup v2 hierarchy on `/sys/fs/cgroup` in containerd's mount namespace, so
    /// that containerd, the shims and the runtimes see a pure cgroup v2 host on a hybrid one
    /// (no controllers are enabled there unless the host has left some to v2).
    pub cgroup_v2: bool,
}

impl Default for Settings {
    /// The tests': debug logs for diagnosis, the machine's own `/run`.
    fn default() -> Self {
        Settings {
            log_level: "debug",
            state_on_tmpfs: false,
            cgroup_v2: cgroup_v2_requested(),
        }
    }
}

fn containerd_binary() -> String {
    std::env::var("CONTAINERD_BIN").unwrap_or_else(|_| CONTAINERD.to_string())
}

fn ctr_binary() -> String {
    std::env::var("CTR_BIN").unwrap_or_else(|_| CTR.to_string())
}

/// `INTEGRATION_CGROUP=v2` runs the tests' containerd on a pure cgroup v2 view of a hybrid
/// host (see [`Settings::cgroup_v2`]).
pub fn cgroup_v2_requested() -> bool {
    std::env::var("INTEGRATION_CGROUP").is_ok_and(|v| v == "v2")
}

/// Whether this host is pure cgroup v2 (its `/sys/fs/cgroup` is the v2 hierarchy).
fn host_is_pure_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The cgroup v2 hierarchy as this process sees it: `/sys/fs/cgroup` on a pure v2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one.
pub fn host_cgroup_v2_root() -> PathBuf {
    if host_is_pure_v2() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/unified")
    }
}

fn needs_cgroup_mask() -> bool {
    std::fs::read_to_string(HYBRID_CONTROLLERS).is_ok_and(|s| !s.trim().is_empty())
}

impl Containerd {
    pub async fn start() -> Self {
        Self::start_with(Settings::default()).await
    }

    pub async fn start_with(settings: Settings) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let namespace = format!(
            "it-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::Builder::new()
            .prefix("cd-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  level = \"{level}\"\n",
            level = settings.log_level,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("c.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).expect("write config");
        // Our runc shim once more under a runtime type outside `io.containerd.runc.`, to which
        // containerd's clients send the legacy CreateOptions.
        let alias_dir = d.join("bin");
        std::fs::create_dir_all(&alias_dir).expect("alias dir");
        std::os::unix::fs::symlink(
            shim_bin_dir().join("containerd-shim-runc-rs-v2"),
            alias_dir.join(LEGACY_ALIAS_BINARY),
        )
        .expect("alias symlink");
        // CRIU_BIN_DIR (scripts/fetch-criu) puts a working criu where runc looks for it.
        let criu = std::env::var("CRIU_BIN_DIR")
            .map(|d| format!("{d}:"))
            .unwrap_or_default();
        let path = format!(
            "{}:{}:{criu}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            shim_bin_dir().display(),
            alias_dir.display()
        );
        let child = spawn(d, &path, settings);
        let pure_v2 = host_is_pure_v2();
        // `unshare` and `sh` exec containerd, so the child's pid is containerd's.
        let view_root = if settings.state_on_tmpfs {
            PathBuf::from(format!("/proc/{}/root", child.id()))
        } else {
            PathBuf::from("/")
        };
        let this = Containerd {
            dir,
            child: Some(child),
            namespace,
            view_root,
            cgroup_v2: settings.cgroup_v2 || pure_v2,
            settings,
            path,
        };
        this.wait_ready().await;
        if this.cgroup_v2 {
            let seen = format!("/proc/{}/root/sys/fs/cgroup/cgroup.controllers", this.pid());
            assert!(
                Path::new(&seen).exists(),
                "containerd should see the cgroup v2 hierarchy at /sys/fs/cgroup"
            );
        }
        this
    }

    /// The controllers containerd's cgroup v2 hierarchy offers, or `None` when containerd
    /// sees cgroup v1 (where the tests' controllers are all present).
    pub fn cgroup_v2_controllers(&self) -> Option<Vec<String>> {
        if !self.cgroup_v2 {
            return None;
        }
        let list = std::fs::read_to_string(host_cgroup_v2_root().join("cgroup.controllers"))
            .unwrap_or_default();
        Some(list.split_whitespace().map(str::to_string).collect())
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.socket().exists()
                && tokio::net::UnixStream::connect(self.socket()).await.is_ok()
            {
                let v = Command::new(ctr_binary())
                    .args(["-a", &self.socket().to_string_lossy(), "version"])
                    .output();
                if v.is_ok_and(|o| o.status.success()) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("containerd did not come up:\n{}", self.log());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILLs containerd, as an OOM kill or a crash would; its shims and containers stay.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts containerd again on the same config and state (after [`Self::kill`]) at
    /// `log_level` (containerd 1.7+ logs each event it takes from a shim at `trace` only);
    /// returns the length of its log before the restart, so a test can read what came after.
    pub async fn restart(&mut self, log_level: &'static str) -> usize {
        assert!(
            !self.settings.state_on_tmpfs,
            "a restart would lose the state on containerd's tmpfs"
        );
        self.kill();
        let config = self.dir.path().join("config.toml");
        let text = std::fs::read_to_string(&config).expect("read config");
        let level = format!("level = \"{}\"", self.settings.log_level);
        let text = text.replace(&level, &format!("level = \"{log_level}\""));
        std::fs::write(&config, text).expect("write config");
        self.settings.log_level = log_level;
        let before = self.log().len();
        self.child = Some(spawn(self.dir.path(), &self.path, self.settings));
        self.wait_ready().await;
        before
    }

    /// containerd's (major, minor) version, from `containerd --version`.
    pub fn version(&self) -> (u32, u32) {
        let out = Command::new(containerd_binary()).arg("--version").output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        let number = text
            .ok()
            .and_then(|t| t.split_whitespace().nth(2).map(str::to_string));
        let mut parts = number
            .as_deref()
            .unwrap_or("1.0")
            .trim_start_matches('v')
            .split(['.', '~', '-'])
            .map(|p| p.parse().unwrap_or(0));
        (parts.next().unwrap_or(1), parts.next().unwrap_or(0))
    }

    /// containerd's major version (1 or 2).
    pub fn major_version(&self) -> u32 {
        self.version().0
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The bundle containerd made for a task.
    pub fn bundle(&self, id: &str) -> PathBuf {
        let state = self.dir.path().join("state/io.containerd.runtime.v2.task");
        self.view_root
            .join(state.strip_prefix("/").unwrap_or(&state))
            .join(&self.namespace)
            .join(id)
    }

    /// `ctr` against this daemon and namespace, stdin closed.
    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(ctr_binary());
        cmd.args([
            "-a",
            &self.socket().to_string_lossy(),
            "-n",
            &self.namespace,
        ])
        .args(args)
        .stdin(Stdio::null());
        cmd
    }

    /// Runs `ctr` against this daemon and namespace.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        self.ctr_command(args).output().expect("run ctr")
    }

    /// Pids of shim processes started by this daemon (they carry its address).
    ///
    /// Serving shims only. Two kinds of process carry a shim's command line for a moment
    /// without serving: what the sandbox shim forks for libcontainer (its intermediate, a
    /// container's init until it execs: children of a serving shim, so left out by parent), and
    /// a `start` or `delete` action still running (left out by its last argument; the serving
    /// process's command line is rewritten without it).
    pub fn shim_pids(&self) -> Vec<u32> {
        let address = self.socket().to_string_lossy().into_owned();
        let shims: Vec<(u32, Vec<String>)> = processes_with_arg(&address)
            .into_iter()
            .filter(|(_, cmd)| cmd.first().is_some_and(|c| c.contains("containerd-shim")))
            .collect();
        let pids: Vec<u32> = shims.iter().map(|(pid, _)| *pid).collect();
        shims
            .into_iter()
            .filter(|(pid, cmd)| {
                cmd.last().is_none_or(|a| a != "start" && a != "delete")
                    && parent_of(*pid).is_none_or(|parent| !pids.contains(&parent))
            })
            .map(|(pid, _)| pid)
            .collect()
    }

    /// The serving shim of container `id` (the one started with `-id ID`, or serving its group,
    /// per the `shim.pid` file our shim and the Go shim's `start` write into the bundle).
    pub fn shim_pid_of(&self, id: &str) -> Option<u32> {
        let from_file = std::fs::read_to_string(self.bundle(id).join("shim.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        from_file.or_else(|| {
            let address = self.socket().to_string_lossy().into_owned();
            processes_with_arg(&address)
                .into_iter()
                .find(|(_, argv)| argv.windows(2).any(|w| w[0] == "-id" && w[1] == id))
                .map(|(pid, _)| pid)
        })
    }

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

/// Starts containerd on the config in `d`, with `path` as its PATH; its log is appended to.
fn spawn(d: &Path, path: &str, settings: Settings) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(d.join("containerd.log"))
        .expect("log file");
    let config = d.join("config.toml");
    // Mounts made in containerd's private mount namespace before it starts.
    let mut mounts = Vec::new();
    let pure_v2 = host_is_pure_v2();
    if settings.cgroup_v2 && !pure_v2 {
        mounts.push("mount -t cgroup2 cgroup2 /sys/fs/cgroup".to_string());
    } else if needs_cgroup_mask() {
        let empty = d.join("empty");
        std::fs::write(&empty, "").expect("mask file");
        mounts.push(format!(
            "mount --bind {} {HYBRID_CONTROLLERS}",
            empty.display()
        ));
    }
    if settings.state_on_tmpfs {
        let state = d.join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        std::fs::create_dir_all("/run/containerd").expect("/run/containerd");
        for dir in [Path::new("/run/containerd"), &state] {
            mounts.push(format!(
                "mount -t tmpfs -o mode=0711 tmpfs {}",
                dir.display()
            ));
        }
    }
    let mut cmd = if mounts.is_empty() {
        let mut c = Command::new(containerd_binary());
        c.arg("--config").arg(&config);
        c
    } else {
        let script = format!(
            "{} && exec {} --config {}",
            mounts.join(" && "),
            containerd_binary(),
            config.display()
        );
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c", &script]);
        c
    };
    cmd.env("PATH", path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    cmd.spawn().expect("start containerd")
}

/// The parent of `pid` (the 4th field of /proc/PID/stat, after the parenthesised name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// (pid, argv) of every process with `arg` somewhere in its command line.
pub fn processes_with_arg(arg: &str) -> Vec<(u32, Vec<String>)> {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if argv.iter().any(|a| a.contains(arg)) {
            found.push((pid, argv));
        }
    }
    found
}

/// Removes the (empty) `/<namespace>` cgroups the containers were placed under, in every
/// hierarchy; the runtimes remove only each container's own leaf.
fn remove_cgroups(namespace: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut dirs: Vec<PathBuf> = hierarchies
        .flatten()
        .map(|h| h.path().join(namespace))
        .collect();
    dirs.push(Path::new("/sys/fs/cgroup").join(namespace));
    // The freezer hierarchy first: its processes die only once thawed, and until they are gone
    // no hierarchy's directory can go.
    dirs.sort_by_key(|d| !d.starts_with("/sys/fs/cgroup/freezer"));
    for dir in dirs {
        remove_cgroup_tree(&dir);
    }
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
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
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

impl Containerd {
    /// containerd's state directory (the bundles are below it), as containerd sees it.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `path` of containerd's mount namespace as seen from here: through `/proc/PID/root`
    /// when its state is on a tmpfs of its own ([`Settings::state_on_tmpfs`]).
    pub fn seen_from_here(&self, path: &Path) -> PathBuf {
        self.view_root.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// Limits one of the tmpfs mounts [`Settings::state_on_tmpfs`] makes in containerd's mount
    /// namespace ([`Self::state_dir`] or `/run/containerd`) to `size` (tmpfs's `size=`, "8m").
    pub fn resize_tmpfs(&self, dir: &Path, size: &str) {
        assert!(
            self.settings.state_on_tmpfs,
            "containerd's state is not on a tmpfs"
        );
        let out = Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-m", "mount", "-o"])
            .arg(format!("remount,size={size}"))
            .arg(dir)
            .output()
            .expect("run nsenter");
        assert!(
            out.status.success(),
            "resize the tmpfs at {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
