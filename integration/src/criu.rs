//! What the checkpoint and restore cases share: whether CRIU and the OCI runtime can do it
//! here (recording a skip when not), and the counter container they checkpoint.
use crate::runtime::skip;
use crate::Binary;

/// A shell counter, one line a tick: what a restored process must go on with.
pub const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done";

/// Whether a working criu is on the PATH containerd (and so runc) gets.
pub fn criu_available() -> bool {
    let ok = std::env::var("CRIU_BIN_DIR").is_ok_and(|d| {
        std::process::Command::new(format!("{d}/criu"))
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        skip("set CRIU_BIN_DIR to a directory with a working criu (scripts/fetch-criu)");
    }
    ok
}

/// Whether the OCI runtime was built with checkpoint support (crun's `--version` lists +CRIU).
pub fn runtime_checkpoints(binary: Binary) -> bool {
    if binary == Binary::Runc {
        return true;
    }
    let out = std::process::Command::new(binary.name())
        .arg("--version")
        .output();
    let ok = out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("+CRIU"));
    if !ok {
        skip(&format!("{} was built without CRIU support", binary.name()));
    }
    ok
}

/// The counter's last complete line in `text`.
pub fn last_count(text: &str) -> u64 {
    text.lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or(0)
}
