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

use crate::runtime::shim_bin_dir;

use super::image;

/// The CNI plugins (Debian's `containernetworking-plugins`).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The containerd namespace of CRI.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// On a hybrid cgroup host crun refuses to run while the v2 hierarchy holds controllers
/// (see `integration::daemon`): this file is masked with an empty one in containerd's mount
/// namespace.
const HYBRID_CONTROLLERS: &str = "/sys/fs/cgroup/unified/cgroup.controllers";
/// The pods' subnet, on the bridge of containerd's own network namespace.
pub const POD_SUBNET: &str = "10.88.0.0/16";

/// A CRI runtime handler of the shared containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// `io.containerd.runc.rs-v2` with runc (`ConfigPath` to a TOML naming runc).
    RuncRsRunc,
    /// `io.containerd.runc.rs-v2` with crun (`ConfigPath` to a TOML with `BinaryName = "crun"`).
    RuncRsCrun,
    /// `io.containerd.sandbox.v2`: libcontainer inside the shim.
    Sandbox,
    /// containerd's Go shim, `io.containerd.runc.v2` with runc: the reference.
    GoRunc,
}

impl Handler {
    pub const ALL: [Handler; 4] = [
        Handler::RuncRsRunc,
        Handler::RuncRsCrun,
        Handler::Sandbox,
        Handler::GoRunc,
    ];

    /// The handler's name in containerd's config (`RunPodSandboxRequest.runtime_handler`).
    pub fn name(self) -> &'static str {
        match self {
            Handler::RuncRsRunc => "runc-rs",
            Handler::RuncRsCrun => "runc-rs-crun",
            Handler::Sandbox => "sandbox",
            Handler::GoRunc => "go-runc",
        }
    }

    pub fn runtime_type(self) -> &'static str {
        match self {
            Handler::RuncRsRunc | Handler::RuncRsCrun => "io.containerd.runc.rs-v2",
            Handler::Sandbox => "io.containerd.sandbox.v2",
            Handler::GoRunc => "io.containerd.runc.v2",
        }
    }

    /// The shim binary containerd starts for this handler.
    pub fn shim_binary(self) -> &'static str {
        match self {
            Handler::RuncRsRunc | Handler::RuncRsCrun => "containerd-shim-runc-rs-v2",
            Handler::Sandbox => "containerd-shim-sandbox-v2",
            Handler::GoRunc => "containerd-shim-runc-v2",
        }
    }

    /// The OCI runtime binary the shim executes, if any.
    pub fn oci_runtime(self) -> Option<&'static str> {
        match self {
            Handler::RuncRsRunc | Handler::GoRunc => Some("runc"),
            Handler::RuncRsCrun => Some("crun"),
            Handler::Sandbox => None,
        }
    }
}

/// The shared containerd of this test binary.
pub struct CriDaemon {
    dir: PathBuf,
    /// The pods' cgroup parent, unique per daemon.
    cgroup_parent: String,
    /// The image containerd runs as every pod's sandbox (pause) container.
    sandbox_image: &'static str,
    child: Mutex<Option<Child>>,
    pid: u32,
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
        let mut daemon = CriDaemon {
            dir,
            cgroup_parent: format!("/it-cri-{}-{seq}", std::process::id()),
            sandbox_image,
            child: Mutex::new(None),
            pid: 0,
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
        daemon.pid = child.id();
        *daemon.child.lock().unwrap() = Some(child);
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

    /// containerd's pid (that of the `unshare`d process it was exec'd into).
    pub fn pid(&self) -> u32 {
        self.pid
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
        Path::new(&format!("/proc/{}/root", self.pid)).join(path.strip_prefix("/").unwrap_or(path))
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

    /// Runs `args` inside containerd's network and mount namespaces (`nsenter`).
    pub fn nsenter(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-n", "-m", "--"])
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

    fn write_files(&self) {
        let d = &self.dir;
        for sub in ["root", "state", "cni/net.d", "shared", "bin"] {
            std::fs::create_dir_all(d.join(sub)).expect("daemon dir");
        }
        std::fs::write(d.join("runc-rs-runc.toml"), "BinaryName = \"runc\"\n").unwrap();
        std::fs::write(self.crun_config(), "BinaryName = \"crun\"\n").unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "cri-it",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni-it0",
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        std::fs::write(d.join("cni/net.d/10-cri-it.conflist"), conflist.to_string()).unwrap();
        std::fs::write(d.join("config.toml"), self.config()).unwrap();
    }

    /// containerd's config: `version = 2` (1.x, plugin `io.containerd.grpc.v1.cri`) or
    /// `version = 3` (2.x, `io.containerd.cri.v1.runtime` / `io.containerd.cri.v1.images`).
    fn config(&self) -> String {
        let d = &self.dir;
        let v3 = self.version.0 >= 2;
        let (runtime_plugin, images_plugin) = if v3 {
            (
                "plugins.'io.containerd.cri.v1.runtime'",
                "plugins.'io.containerd.cri.v1.images'",
            )
        } else {
            (
                "plugins.\"io.containerd.grpc.v1.cri\"",
                "plugins.\"io.containerd.grpc.v1.cri\"",
            )
        };
        let mut c = format!(
            "version = {version}\nroot = \"{root}\"\nstate = \"{state}\"\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  level = \"debug\"\n",
            version = if v3 { 3 } else { 2 },
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = self.socket().display(),
        );
        // This machine lacks CAP_SYS_RESOURCE: the pause container's oom_score_adj of -998
        // cannot be set, so it is restricted to containerd's own (as for a containerd in a
        // container).
        let cni = format!(
            "[{runtime_plugin}.cni]\n  {bin_key} = {cni_bin}\n  conf_dir = \"{conf}\"\n  \
             max_conf_num = 1\n",
            bin_key = if v3 { "bin_dirs" } else { "bin_dir" },
            cni_bin = if v3 {
                format!("[\"{CNI_BIN_DIR}\"]")
            } else {
                format!("\"{CNI_BIN_DIR}\"")
            },
            conf = d.join("cni/net.d").display(),
        );
        if v3 {
            c += &format!(
                "[{images_plugin}]\n  snapshotter = \"overlayfs\"\n\
                 [{images_plugin}.pinned_images]\n  sandbox = \"{pause}\"\n\
                 [plugins.'io.containerd.grpc.v1.cri']\n  stream_server_address = \"127.0.0.1\"\n  \
                 stream_server_port = \"0\"\n\
                 [{runtime_plugin}]\n  restrict_oom_score_adj = true\n\
                 {cni}\
                 [{runtime_plugin}.containerd]\n  default_runtime_name = \"{default}\"\n",
                pause = self.sandbox_image,
                default = Handler::RuncRsRunc.name(),
            );
        } else {
            c += &format!(
                "[{runtime_plugin}]\n  sandbox_image = \"{pause}\"\n  restrict_oom_score_adj = true\n  \
                 stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n\
                 {cni}\
                 [{runtime_plugin}.containerd]\n  snapshotter = \"overlayfs\"\n  \
                 default_runtime_name = \"{default}\"\n",
                pause = self.sandbox_image,
                default = Handler::RuncRsRunc.name(),
            );
        }
        for h in Handler::ALL {
            let table = format!("{runtime_plugin}.containerd.runtimes.{}", h.name());
            c += &format!("[{table}]\n  runtime_type = \"{}\"\n", h.runtime_type());
            match h {
                Handler::RuncRsRunc => {
                    c += &format!(
                        "[{table}.options]\n  ConfigPath = \"{}\"\n",
                        d.join("runc-rs-runc.toml").display()
                    );
                }
                Handler::RuncRsCrun => {
                    c += &format!(
                        "[{table}.options]\n  ConfigPath = \"{}\"\n",
                        self.crun_config().display()
                    );
                }
                Handler::Sandbox => {}
                Handler::GoRunc => {
                    c += &format!("[{table}.options]\n  BinaryName = \"runc\"\n");
                }
            }
        }
        c
    }

    /// Starts containerd in its own network and mount namespaces.
    fn spawn(&self) -> Child {
        let d = &self.dir;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("containerd.log"))
            .expect("log file");
        // Mount points on the host that the namespace covers with its own tmpfs.
        for p in ["/run/containerd", "/run/netns", "/var/lib/cni"] {
            std::fs::create_dir_all(p).expect("mount point");
        }
        let mut script = vec![
            "set -e".to_string(),
            "ip link set lo up".to_string(),
            "mount -t tmpfs -o mode=0711 tmpfs /run/containerd".to_string(),
            "mount -t tmpfs -o mode=0755 tmpfs /run/netns".to_string(),
            "mount -t tmpfs -o mode=0755 tmpfs /var/lib/cni".to_string(),
            // The propagation cases need a shared mount (everything else here is private).
            format!(
                "mount -t tmpfs tmpfs {s} && mount --make-shared {s}",
                s = self.shared_mount_dir().display()
            ),
        ];
        if crate::daemon::cgroup_v2_requested() && !host_is_pure_v2() {
            script.push("mount -t cgroup2 cgroup2 /sys/fs/cgroup".to_string());
        } else if std::fs::read_to_string(HYBRID_CONTROLLERS).is_ok_and(|s| !s.trim().is_empty()) {
            let empty = d.join("empty");
            std::fs::write(&empty, "").expect("mask file");
            script.push(format!(
                "mount --bind {} {HYBRID_CONTROLLERS}",
                empty.display()
            ));
        }
        script.push(format!(
            "exec {} --config {}",
            containerd_binary(),
            d.join("config.toml").display()
        ));
        // Our shims first, then the Go shim of the containerd under test.
        let containerd_dir = Path::new(&containerd_binary())
            .parent()
            .map(|p| format!("{}:", p.display()))
            .unwrap_or_default();
        let path = format!(
            "{}:{containerd_dir}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            shim_bin_dir().display()
        );
        Command::new("unshare")
            .args(["--net", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(script.join("\n"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd")
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().unwrap();
        child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                panic!("containerd exited at start-up ({status})");
            }
            if self.socket().exists() {
                let v = Command::new(ctr_binary())
                    .args(["-a", &self.socket().to_string_lossy(), "version"])
                    .stdin(Stdio::null())
                    .output();
                if v.is_ok_and(|o| o.status.success()) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("containerd did not come up");
    }

    fn import_images(&self) {
        let archive = image::build(&self.dir.join("images"));
        let out = self.ctr(&["images", "import", &archive.to_string_lossy()]);
        assert!(
            out.status.success(),
            "ctr images import: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(self.dir.join("images"));
    }

    /// Waits until CRI reports the runtime and the network ready and knows both images.
    fn wait_cri_ready(&self) {
        let socket = self.socket();
        let result = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let cri = super::Cri::connect(&socket).await;
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut last = String::new();
                while Instant::now() < deadline {
                    match cri.ready().await {
                        Ok(()) => return Ok(()),
                        Err(e) => last = e,
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(last)
            })
        })
        .join()
        .expect("CRI readiness thread");
        if let Err(e) = result {
            panic!("CRI not ready after 30 s: {e}");
        }
    }

    /// Stops containerd and removes everything it and the tests left: shims, containers
    /// (every process of the pods' cgroups), the cgroups, the directory.
    pub fn teardown(&self) {
        let address = self.socket().to_string_lossy().into_owned();
        if let Some(child) = self.child.lock().unwrap().take() {
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

fn containerd_binary() -> String {
    std::env::var("CONTAINERD_BIN").unwrap_or_else(|_| "/usr/bin/containerd".to_string())
}

fn ctr_binary() -> String {
    std::env::var("CTR_BIN").unwrap_or_else(|_| "/usr/bin/ctr".to_string())
}

fn host_is_pure_v2() -> bool {
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
