//! A private containerd: its own root, state, sockets and namespace, our shims first on PATH.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::runtime::shim_bin_dir;

mod cleanup;

pub(crate) use cleanup::{remove_cgroups, stop_child};
mod launch;
mod procs;

use launch::spawn;
use procs::flag_value;
pub use procs::{processes_with_arg, serving_shims};

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
        cleanup::remove_own_cgroups_at_exit();
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
        // The Go shim released with CONTAINERD_BIN, for the go_runc arms: containerd looks a
        // shim up on PATH before beside itself, which would find the system's older one.
        let release = std::env::var("CONTAINERD_BIN")
            .ok()
            .and_then(|b| Some(format!("{}:", Path::new(&b).parent()?.display())))
            .unwrap_or_default();
        let path = format!(
            "{}:{}:{criu}{release}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
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

    /// The address (`unix://…`) of the shim serving `id`: the bundle's `address` file, which
    /// our shims and containerd 1.x's Go shim write, else containerd 2.x's `bootstrap.json`
    /// (its Go shim no longer writes `address`).
    pub fn shim_address(&self, id: &str) -> String {
        let bundle = self.bundle(id);
        if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
            return address.trim().to_string();
        }
        let params = std::fs::read(bundle.join("bootstrap.json"))
            .unwrap_or_else(|e| panic!("neither address nor bootstrap.json in {id}'s bundle: {e}"));
        let params: serde_json::Value =
            serde_json::from_slice(&params).expect("bootstrap.json is JSON");
        params["address"]
            .as_str()
            .expect("bootstrap.json has an address")
            .to_string()
    }

    /// The socket path of the shim serving `id` (see [`Self::shim_address`]).
    pub fn shim_socket(&self, id: &str) -> PathBuf {
        PathBuf::from(self.shim_address(id).trim_start_matches("unix://"))
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

    /// Pids of the shims serving this daemon's containers ([`serving_shims`]).
    pub fn shim_pids(&self) -> Vec<u32> {
        serving_shims(&self.address())
            .into_iter()
            .map(|(pid, _)| pid)
            .collect()
    }

    /// The serving shim of container `id`: the pid the shim's `start` wrote to the bundle's
    /// `shim.pid` (ours, and the Go shim of containerd 1.x, for a new shim), else the serving
    /// shim started with `-id ID` (containerd 2.x's Go shim writes no `shim.pid`).
    pub fn shim_pid_of(&self, id: &str) -> Option<u32> {
        let serving = serving_shims(&self.address());
        let from_file = std::fs::read_to_string(self.bundle(id).join("shim.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|pid| serving.iter().any(|(p, _)| p == pid));
        from_file.or_else(|| {
            serving
                .into_iter()
                .find(|(_, argv)| flag_value(argv, "id") == Some(id))
                .map(|(pid, _)| pid)
        })
    }

    /// The `-address` containerd passes its shims: its gRPC socket.
    fn address(&self) -> String {
        self.socket().to_string_lossy().into_owned()
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
