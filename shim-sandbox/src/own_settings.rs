//! The shim's own process settings across a libcontainer create or exec.
//!
//! libcontainer applies two of the container's settings to the calling process before it
//! clones the container's (`builder_impl.rs`): the spec's `oomScoreAdj` to
//! `/proc/self/oom_score_adj`, and non-dumpable. Here the calling process is the shim, which
//! would keep the last container's OOM score (a BestEffort pod's 1000 makes the kernel kill the
//! shim first; containerd wants it at containerd's score + 1) and stay non-dumpable. Both are
//! put back after the call.
use std::path::Path;

const OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

/// Runs `f` (a libcontainer create or exec) and restores what it changed in this process.
pub fn kept<T>(f: impl FnOnce() -> T) -> T {
    let score = std::fs::read_to_string(OOM_SCORE_ADJ).ok();
    let dumpable = nix::sys::prctl::get_dumpable().unwrap_or(true);
    let out = f();
    if let Some(score) = score {
        restore_score(Path::new(OOM_SCORE_ADJ), score.trim());
    }
    if dumpable {
        if let Err(e) = nix::sys::prctl::set_dumpable(true) {
            log::warn!("make the shim dumpable again after a libcontainer call: {e}");
        }
    }
    out
}

fn restore_score(path: &Path, score: &str) {
    let now = std::fs::read_to_string(path).unwrap_or_default();
    if now.trim() != score {
        if let Err(e) = std::fs::write(path, score) {
            log::warn!(
                "restore the shim's oom_score_adj to {score} (is {}): {e}",
                now.trim()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_score_is_written_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("oom_score_adj");
        std::fs::write(&file, "1000\n").unwrap();
        restore_score(&file, "5");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "5");
    }
}
