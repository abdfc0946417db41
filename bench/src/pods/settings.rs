//! The run's containerd settings for the CRI fixture's containerd.
//!
//! `integration::cri::CriDaemon` is the test suite's: it asks for debug logs (which containerd
//! passes on to every shim as `-debug`) and keeps its state directory under `/tmp`, this
//! machine's ext4, where file creation per container is slow (docs/PERFORMANCE.md). It runs
//! `$CONTAINERD_BIN`, inside a private mount namespace: the benchmark points that at a wrapper
//! that applies the run's settings as the plain benchmark containerd has them: `--log-level`
//! (the command line wins over the config) and, unless `--state-on-disk`, a tmpfs over the
//! state directory its config names.
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::args::Config;

/// Writes the wrapper and points `CONTAINERD_BIN` (and `INTEGRATION_CGROUP` for
/// `--cgroup-v2`) at it. Call while the process has one thread: nothing else may read the
/// environment meanwhile.
pub fn use_settings(cfg: &Config) {
    let real = std::env::var("CONTAINERD_BIN").unwrap_or_else(|_| "/usr/bin/containerd".into());
    let real = std::path::absolute(&real).unwrap_or_else(|_| PathBuf::from(&real));
    let out = std::fs::canonicalize(&cfg.out).expect("output dir");
    let dir = out.join("containerd-bin");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("wrapper dir");
    // The fixture puts CONTAINERD_BIN's directory on containerd's PATH for the Go shim of the
    // same release: the release's shims come along.
    let real_dir = real.parent().unwrap_or(Path::new("/usr/bin"));
    for entry in std::fs::read_dir(real_dir)
        .expect("containerd's directory")
        .flatten()
    {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("containerd-shim") {
            symlink(entry.path(), dir.join(&name)).expect("shim symlink");
        }
    }
    // Mounts only in a mount namespace other than init's (the fixture `unshare`s one), and
    // not where the plain benchmark containerd already has its tmpfs.
    let tmpfs = if cfg.daemon.state_on_tmpfs {
        r#"state=$(sed -n 's/^state = "\(.*\)"$/\1/p' "$2")
if [ -n "$state" ] && [ "$(readlink /proc/self/ns/mnt)" != "$(readlink /proc/1/ns/mnt)" ] \
    && ! mountpoint -q "$state"; then
  mkdir -p "$state" && mount -t tmpfs -o mode=0711 tmpfs "$state"
fi
"#
    } else {
        ""
    };
    let script = format!(
        "#!/bin/sh\n# shim-bench (bench/src/pods/settings.rs): containerd with the run's settings.\n\
         [ \"$1\" = --config ] || exec {real} \"$@\"\n{tmpfs}exec {real} \"$@\" --log-level {level}\n",
        real = real.display(),
        level = cfg.daemon.log_level,
    );
    let wrapper = dir.join("containerd");
    std::fs::write(&wrapper, script).expect("write wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::env::set_var("CONTAINERD_BIN", &wrapper);
    if cfg.daemon.cgroup_v2 {
        std::env::set_var("INTEGRATION_CGROUP", "v2");
    }
}
