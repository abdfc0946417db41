//! Starting containerd: in a private mount namespace when the host needs hiding (cgroup v2
//! controllers from crun, a cgroup v2 view, state on a tmpfs).
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::{containerd_binary, host_is_pure_v2, needs_cgroup_mask, Settings, HYBRID_CONTROLLERS};

/// Starts containerd on the config in `d`, with `path` as its PATH; its log is appended to.
pub(super) fn spawn(d: &Path, path: &str, settings: Settings) -> Child {
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
