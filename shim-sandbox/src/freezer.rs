//! The cgroup v1 freezer, driven directly: Pause, Resume and kill --all freeze and thaw the
//! container's freezer cgroup without building a libcgroups manager (see `cgroup_dirs`). The
//! same steps and status changes as libcontainer's pause and resume; on v2, with systemd or with
//! a path `cgroup_dirs` does not handle, libcontainer does it.
use std::path::{Path, PathBuf};
use std::time::Duration;

use libcontainer::container::{Container, ContainerStatus};
use libshim::BackendError;

use crate::call::{failed, RUNTIME};
use crate::cgroup_dirs;

/// The freezer directory of `c`, when the shim drives it itself.
pub fn v1_dir(c: &Container) -> Option<PathBuf> {
    if c.systemd() {
        return None;
    }
    cgroup_dirs::v1(&c.spec().ok()?.cgroup_path, "freezer")
}

/// Pauses a running `c`; false, having changed nothing, when libcontainer should (it also
/// answers the wrong-state error).
pub fn pause(c: &mut Container) -> Result<bool, BackendError> {
    c.refresh_status().map_err(failed("pause"))?;
    let Some(dir) = v1_dir(c).filter(|_| c.can_pause()) else {
        return Ok(false);
    };
    freeze(&dir)?;
    c.set_status(ContainerStatus::Paused)
        .save()
        .map_err(failed("pause"))?;
    Ok(true)
}

/// Resumes a paused `c`; false as for [`pause`].
pub fn resume(c: &mut Container) -> Result<bool, BackendError> {
    c.refresh_status().map_err(failed("resume"))?;
    let Some(dir) = v1_dir(c).filter(|_| c.can_resume()) else {
        return Ok(false);
    };
    thaw(&dir)?;
    c.set_status(ContainerStatus::Running)
        .save()
        .map_err(failed("resume"))?;
    Ok(true)
}

/// Freezes the freezer cgroup at `dir`. The kernel reports FREEZING while a task has not
/// stopped yet and may give up on it; as runc does, FROZEN is written again, with a pause every
/// 25 attempts and a thaw every 50 to unstick it. A cgroup that will not freeze is thawed.
pub fn freeze(dir: &Path) -> Result<(), BackendError> {
    let state = dir.join("freezer.state");
    let io = |e| BackendError::io(format!("freeze {}", dir.display()), e);
    for attempt in 1..=1000 {
        if attempt % 50 == 0 {
            let _ = std::fs::write(&state, "THAWED");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::write(&state, "FROZEN").map_err(io)?;
        if attempt % 25 == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        match std::fs::read_to_string(&state).map_err(io)?.trim() {
            "FROZEN" => return Ok(()),
            "FREEZING" => {}
            other => {
                let _ = thaw(dir);
                return Err(not_frozen(dir, &format!("freezer state {other:?}")));
            }
        }
    }
    let _ = thaw(dir);
    Err(not_frozen(dir, "still FREEZING after 1000 attempts"))
}

pub fn thaw(dir: &Path) -> Result<(), BackendError> {
    std::fs::write(dir.join("freezer.state"), "THAWED")
        .map_err(|e| BackendError::io(format!("thaw {}", dir.display()), e))
}

fn not_frozen(dir: &Path, why: &str) -> BackendError {
    BackendError::Runtime {
        runtime: RUNTIME.to_string(),
        action: "freeze",
        message: format!("cannot freeze {}: {why}", dir.display()),
    }
}
