//! The suite's two images, built here without a registry: an OCI image layout (layer tar,
//! config, manifest, index) packed into one tarball that `ctr -n k8s.io images import` loads.
//!
//! - [`BUSYBOX`]: busybox-static with every applet linked, users and groups for the
//!   run-as cases;
//! - [`PAUSE`]: the pod sandbox image, one static program (`/pause`) compiled here from
//!   [`PAUSE_C`]: it sleeps in `pause()`, exits 0 on SIGTERM and SIGINT and reaps the zombies
//!   of a shared PID namespace (it is pid 1 there), as Kubernetes' own pause does. A busybox
//!   `sh -c 'trap exit TERM; while :; do sleep 1; done'` would answer SIGTERM only after the
//!   running `sleep` ended, shows up as `sh` in the pod's process list and reaps only its own
//!   children.
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use sha2::{Digest, Sha256};

/// The application image every case's containers run.
pub const BUSYBOX: &str = "localhost/cri-it/busybox:1";
/// The pod sandbox image, configured as containerd's sandbox (pause) image. Its config sets
/// `PATH`, as the pause image built by Kubernetes does.
pub const PAUSE: &str = "localhost/cri-it/pause:1";
/// The same program in an image whose config sets no environment at all (images built by
/// hand or by some builders): its absolute entrypoint needs no `PATH`.
pub const NO_ENV: &str = "localhost/cri-it/no-env:1";
/// The `PATH` Docker and BuildKit give an image that sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The pause program: sleeps until SIGTERM or SIGINT (exit 0), reaps every child.
pub const PAUSE_C: &str = r#"
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }
static void on_chld(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);
    for (;;) pause();
}
"#;

/// Users of the busybox image (`/etc/passwd`): `it-user` (1000) is in group `it-extra` (2000)
/// by `/etc/group`, which a runtime must add as a supplementary group.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    it-user:x:1000:1000:it user:/home/it-user:/bin/sh\n\
    nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nit-group:x:1000:\nit-extra:x:2000:it-user\nnogroup:x:65534:\n";

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OCI image layout under construction: blobs are written as they are added.
struct Layout {
    dir: PathBuf,
    manifests: Vec<serde_json::Value>,
}

impl Layout {
    fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dir");
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("oci-layout");
        Layout {
            dir: dir.to_path_buf(),
            manifests: Vec::new(),
        }
    }

    /// Stores `bytes` as a blob; returns (digest, size).
    fn blob(&self, bytes: &[u8]) -> (String, usize) {
        let hex = sha256_hex(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(&hex), bytes).expect("write blob");
        (format!("sha256:{hex}"), bytes.len())
    }

    /// Adds an image named `name` of one uncompressed layer (the tar of `rootfs`) and the
    /// image config's `config` section.
    fn image(&mut self, name: &str, rootfs: &Path, config: serde_json::Value) {
        let tar = self.dir.with_extension("layer.tar");
        let out = Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .expect("run tar");
        assert!(
            out.status.success(),
            "tar of {}: {}",
            rootfs.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let layer = std::fs::read(&tar).expect("read layer");
        let _ = std::fs::remove_file(&tar);
        let (layer_digest, layer_size) = self.blob(&layer);
        let image_config = json!({
            "architecture": oci_arch(),
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        });
        let (config_digest, config_size) = self.blob(image_config.to_string().as_bytes());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer_size,
            }],
        });
        let (digest, size) = self.blob(manifest.to_string().as_bytes());
        let tag = name.rsplit(':').next().unwrap_or("latest");
        self.manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": {"architecture": oci_arch(), "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }));
    }

    /// Writes the index and packs the layout into the tarball `archive`.
    fn pack(self, archive: &Path) {
        let index = json!({"schemaVersion": 2, "manifests": self.manifests});
        std::fs::write(self.dir.join("index.json"), index.to_string()).expect("index.json");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&self.dir)
            .arg("-cf")
            .arg(archive)
            .args(["oci-layout", "index.json", "blobs"])
            .output()
            .expect("run tar");
        assert!(
            out.status.success(),
            "pack {}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A busybox-static root filesystem at `dir`.
fn busybox_rootfs(dir: &Path) {
    for sub in [
        "bin",
        "proc",
        "sys",
        "dev",
        "etc",
        "tmp",
        "run",
        "var",
        "root",
        "home/it-user",
    ] {
        std::fs::create_dir_all(dir.join(sub)).expect("rootfs dir");
    }
    set_mode(&dir.join("tmp"), 0o1777);
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .expect("copy /bin/busybox (Debian package busybox-static)");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = symlink("busybox", dir.join("bin").join(applet));
        }
    }
    std::fs::write(dir.join("etc/passwd"), PASSWD).expect("passwd");
    std::fs::write(dir.join("etc/group"), GROUP).expect("group");
    // A directory with a file, for the masked-paths case.
    std::fs::create_dir_all(dir.join("srv/dir")).expect("srv");
    std::fs::write(dir.join("srv/dir/secret"), "image file\n").expect("srv file");
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Compiles [`PAUSE_C`] statically into `rootfs/pause`.
fn pause_rootfs(dir: &Path, work: &Path) {
    std::fs::create_dir_all(dir).expect("pause rootfs");
    let source = work.join("pause.c");
    std::fs::write(&source, PAUSE_C).expect("pause.c");
    let out = Command::new("cc")
        .args(["-static", "-Os", "-o"])
        .arg(dir.join("pause"))
        .arg(&source)
        .output()
        .expect("run cc (a C compiler with a static libc: Debian's gcc and libc6-dev)");
    assert!(
        out.status.success(),
        "compile the pause program: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds both images under `work` and returns the OCI tarball holding them.
pub fn build(work: &Path) -> PathBuf {
    let busybox = work.join("rootfs-busybox");
    let pause = work.join("rootfs-pause");
    busybox_rootfs(&busybox);
    pause_rootfs(&pause, work);
    let mut layout = Layout::new(&work.join("layout"));
    layout.image(
        BUSYBOX,
        &busybox,
        json!({"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"], "WorkingDir": "/"}),
    );
    layout.image(
        PAUSE,
        &pause,
        json!({"Env": [DEFAULT_PATH], "Entrypoint": ["/pause"], "WorkingDir": "/"}),
    );
    layout.image(
        NO_ENV,
        &pause,
        json!({"Entrypoint": ["/pause"], "WorkingDir": "/"}),
    );
    let archive = work.join("images.tar");
    layout.pack(&archive);
    for d in [busybox, pause, work.join("layout")] {
        let _ = std::fs::remove_dir_all(d);
    }
    archive
}
