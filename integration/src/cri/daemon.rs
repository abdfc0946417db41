//! One containerd with its CRI plugin per test binary, shared by that binary's tests.
//!
//! containerd and everything it starts (shims, runtimes, CNI plugins, containers) run inside a
//! network and a mount namespace made for it (`unshare --net --mount --propagation private`),
//! with tmpfs mounts over `/run/containerd`, `/run/netns` and `/var/lib/cni` there: bridges,
//! veths, iptables rules, netns mounts, IPAM leases and runtime state never reach the host.
//! Its root, state and sockets are under `/tmp/cd-cri-*`. Every pod's cgroups are below
//! [`CriDaemon::cgroup_parent`]. When the test binary exits, containerd is stopped and what
//! is left (shims, processes in those cgroups, the cgroups, the directory) is removed.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use super::handler::Handler;
use super::image;

/// The CNI plugins (Debian's `containernetworking-plugins`).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The containerd namespace of CRI.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// On a hybrid cgroup host crun refuses to run while the v2 hierarchy holds controllers
/// (see `integration::daemon`): this file is masked with an empty one in containerd's mount
/// namespace.
pub(super) const HYBRID_CONTROLLERS: &str = "/sys/fs/cgroup/unified/cgroup.controllers";
/// The pods' subnet, on the bridge of containerd's own network namespace.
pub const POD_SUBNET: &str = "10.88.0.0/16";

/// The shared containerd of this test binary.
pub struct CriDaemon {
    dir: PathBuf,
    /// The pods' cgroup parent, unique per daemon.
    cgroup_parent: String,
    /// The image containerd runs as every pod's sandbox (pause) container.
    sandbox_image: &'static str,
    /// `unshare`, which runs containerd; taken by [`CriDaemon::teardown`].
    pub(super) child: Mutex<Option<Child>>,
    /// containerd's pid (a restart changes it, see [`CriDaemon::restart`]).
    pid: std::sync::atomic::AtomicU32,
    version: (u32, u32),
    cgroup_v2: bool,
}

static SHARED: OnceLock<CriDaemon> = OnceLock::new();

impl CriDaemon {
    /// This test binary's containerd, started (and its images imported) on first use.
    pub fn shared() -> &'static CriDaemon {
        SHARED.get_or_init(|| {
            let daemon = CriDaemon::start(image::PAUSE);
            register_teardown();
            daemon
        })
    }

    /// A containerd of its own for one test, with `sandbox_image` as the pause image; torn
    /// down when dropped.
    pub fn private(sandbox_image: &'static str) -> PrivateCriDaemon {
        PrivateCriDaemon(CriDaemon::start(sandbox_image))
    }

    fn start(sandbox_image: &'static str) -> CriDaemon {
        assert!(
            Path::new(CNI_BIN_DIR).join("bridge").exists(),
            "CNI plugins not found in {CNI_BIN_DIR} (Debian package containernetworking-plugins; \
             scripts/setup installs it)"
        );
        let dir = tempfile::Builder::new()
            .prefix("cd-cri-")
            .tempdir_in("/tmp")
            .expect("temp dir")
            .keep();
        let version = containerd_version();
        let cgroup_v2 = crate::daemon::cgroup_v2_requested() || host_is_pure_v2();
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let daemon = CriDaemon {
            dir,
            cgroup_parent: format!("/it-cri-{}-{seq}", std::process::id()),
            sandbox_image,
            child: Mutex::new(None),
            pid: Default::default(),
            version,
            cgroup_v2,
        };
        // A panic below tears down what was started (the static is not set yet).
        struct Guard<'a>(&'a CriDaemon);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    eprintln!("---- containerd log ----\n{}", self.0.log_tail(200));
                    self.0.teardown();
                }
            }
        }
        daemon.write_files();
        let child = daemon.spawn();
        let found = super::pidns::containerd_pid(child.id());
        *daemon.child.lock().unwrap() = Some(child);
        match found {
            Ok(pid) => daemon.set_pid(pid),
            Err(e) => {
                daemon.teardown();
                panic!("{e}");
            }
        }
        {
            let guard = Guard(&daemon);
            guard.0.wait_ready();
            guard.0.import_images();
            guard.0.wait_cri_ready();
        }
        daemon
    }

    /// containerd's (major, minor) version.
    pub fn version(&self) -> (u32, u32) {
        self.version
    }

    /// Whether containerd sees a cgroup v2 hierarchy (the v2 view of a hybrid host, or a pure
    /// v2 host).
    pub fn cgroup_v2(&self) -> bool {
        self.cgroup_v2
    }

    pub(super) fn pid_cell(&self) -> &std::sync::atomic::AtomicU32 {
        &self.pid
    }

    /// containerd's pid here (in the host's PID namespace; see [`CriDaemon::pid_in_namespace`]).
    pub fn pid(&self) -> u32 {
        self.pid.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The image containerd runs as every pod's sandbox (pause) container.
    pub fn sandbox_image(&self) -> &'static str {
        self.sandbox_image
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("c.sock")
    }

    /// The cgroup every pod of this binary is placed under (cgroupfs syntax).
    pub fn cgroup_parent(&self) -> String {
        self.cgroup_parent.clone()
    }

    /// A directory on a mount that is shared in containerd's mount namespace (and private to
    /// the host), for the mount propagation cases.
    pub fn shared_mount_dir(&self) -> PathBuf {
        self.dir.join("shared")
    }

    /// The config TOML the crun handler's `ConfigPath` names.
    pub fn crun_config(&self) -> PathBuf {
        self.dir.join("runc-rs-crun.toml")
    }

    /// `path` in containerd's mount namespace, as seen from here (`/proc/PID/root`).
    pub fn seen_from_here(&self, path: &Path) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.pid()))
            .join(path.strip_prefix("/").unwrap_or(path))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The last `n` lines of containerd's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Runs `args` inside containerd's network, mount and PID namespaces (`nsenter`; in its
    /// PID namespace, /proc/self of containerd's /proc names the process).
    pub fn nsenter(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-n", "-m", "-p", "--"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// `ctr` against this containerd in CRI's namespace.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new(ctr_binary())
            .args(["-a", &self.socket().to_string_lossy(), "-n", K8S_NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Stops containerd and removes everything it and the tests left: shims, containers
    /// (every process of the pods' cgroups), the cgroups, the directory.
    pub fn teardown(&self) {
        let address = self.socket().to_string_lossy().into_owned();
        if let Some(child) = self.child.lock().unwrap().take() {
            // unshare ignores SIGTERM while it waits; with a PID namespace, containerd's end
            // ends the namespace's init and with it every shim and container there.
            if super::pidns::requested() && self.pid() != 0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.pid() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            crate::daemon::stop_child(child);
        }
        for (pid, _) in crate::daemon::processes_with_arg(&address) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        crate::daemon::remove_cgroups(&self.cgroup_parent());
        // The namespaces end with their last process; then nothing is mounted below the
        // directory any more.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !crate::daemon::processes_with_arg(&address).is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if std::env::var_os("CRI_KEEP_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A [`CriDaemon`] of one test ([`CriDaemon::private`]), torn down when dropped.
pub struct PrivateCriDaemon(CriDaemon);

impl std::ops::Deref for PrivateCriDaemon {
    type Target = CriDaemon;
    fn deref(&self) -> &CriDaemon {
        &self.0
    }
}

impl Drop for PrivateCriDaemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- containerd log ----\n{}", self.0.log_tail(100));
        }
        self.0.teardown();
    }
}

/// Tears the shared containerd down when the test binary exits.
fn register_teardown() {
    extern "C" fn teardown() {
        if let Some(d) = SHARED.get() {
            d.teardown();
        }
    }
    // SAFETY: `teardown` only reads the initialised static and calls std functions; atexit
    // handlers run on the exiting thread after the test harness has returned.
    #[allow(unsafe_code)]
    unsafe {
        libc::atexit(teardown);
    }
}

pub(super) fn containerd_binary() -> String {
    std::env::var("CONTAINERD_BIN").unwrap_or_else(|_| "/usr/bin/containerd".to_string())
}

pub(super) fn ctr_binary() -> String {
    std::env::var("CTR_BIN").unwrap_or_else(|_| "/usr/bin/ctr".to_string())
}

pub(super) fn host_is_pure_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// containerd's (major, minor) version, from `containerd --version`.
fn containerd_version() -> (u32, u32) {
    let out = Command::new(containerd_binary())
        .arg("--version")
        .output()
        .expect("containerd --version");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let number = text.split_whitespace().nth(2).unwrap_or("1.0").to_string();
    let mut parts = number
        .trim_start_matches('v')
        .split(['.', '~', '-', '+'])
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(1), parts.next().unwrap_or(0))
}
