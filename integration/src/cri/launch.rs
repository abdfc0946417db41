//! Starting the CRI suite's containerd in namespaces of its own and waiting until CRI serves.
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::runtime::shim_bin_dir;

use super::daemon::{
    containerd_binary, ctr_binary, host_is_pure_v2, CriDaemon, HYBRID_CONTROLLERS,
};
use super::{image, pidns};

impl CriDaemon {
    /// Starts containerd in its own network and mount namespaces (and PID namespace, see
    /// [`pidns`]).
    pub(super) fn spawn(&self) -> Child {
        let d = self.dir();
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
        script.push(pidns::run_containerd(&format!(
            "{} --config {}",
            containerd_binary(),
            d.join("config.toml").display()
        )));
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
            .args(["--net", "--mount", "--propagation", "private"])
            .args(pidns::unshare_args())
            .args(["sh", "-c"])
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

    pub(super) fn wait_ready(&self) {
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

    pub(super) fn import_images(&self) {
        let archive = image::build(&self.dir().join("images"));
        let out = self.ctr(&["images", "import", &archive.to_string_lossy()]);
        assert!(
            out.status.success(),
            "ctr images import: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(self.dir().join("images"));
    }

    /// Waits until CRI reports the runtime and the network ready and knows both images.
    pub(super) fn wait_cri_ready(&self) {
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
}
