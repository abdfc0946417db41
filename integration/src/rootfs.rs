//! A busybox rootfs, built once per test process and shared read-only.
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const BUSYBOX: &str = "/bin/busybox";

pub fn busybox() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        // A fixed path per test process, removed by the next run if a crash left it behind.
        let dir = PathBuf::from(format!("/tmp/it-rootfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["bin", "proc", "sys", "dev", "etc", "tmp", "run"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create rootfs dir");
        }
        std::fs::copy(BUSYBOX, dir.join("bin/busybox")).expect("copy busybox (busybox-static)");
        let list = Command::new(BUSYBOX)
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = symlink("busybox", dir.join("bin").join(applet));
            }
        }
        std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
        std::fs::write(dir.join("etc/group"), "root:x:0:\n").unwrap();
        register_cleanup();
        dir
    })
}

/// Removes the shared rootfs when the test process exits.
fn register_cleanup() {
    extern "C" fn remove() {
        let _ = std::fs::remove_dir_all(format!("/tmp/it-rootfs-{}", std::process::id()));
    }
    // SAFETY: `remove` is a plain function that touches no Rust state that atexit could race.
    #[allow(unsafe_code)]
    unsafe {
        libc::atexit(remove);
    }
}
