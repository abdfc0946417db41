//! Deleting a stopped container, the common case (its init has exited), without a libcgroups
//! manager: building a v1 manager reads /proc/self/mountinfo and /proc/self/cgroup once per
//! controller, which was a third of the shim's CPU per container lifecycle on a cgroup v1 host.
//! The steps are libcontainer's own delete for that state: remove the cgroup (killing what is
//! left in it), run the poststop hooks, remove the state directory. Anything else goes through
//! libcontainer's delete.
use std::path::Path;
use std::time::Duration;

use libcontainer::config::YoukiConfig;
use libcontainer::container::{Container, ContainerStatus};
use libshim::BackendError;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::call::failed;
use crate::cgroup_dirs;

/// Deletes `c` if it is stopped and its cgroup is one this module can find on its own.
/// Returns false, having changed nothing, when libcontainer's delete should do it.
pub fn delete(c: &mut Container) -> Result<bool, BackendError> {
    c.refresh_status().map_err(failed("delete"))?;
    let simple = c.status() == ContainerStatus::Stopped
        && !c.systemd()
        && c.intel_rdt_dir().is_none()
        && c.intel_rdt_monitoring_dir().is_none();
    if !simple {
        return Ok(false);
    }
    if !c.root.exists() {
        return Ok(true);
    }
    let Ok(config) = YoukiConfig::load(&c.root) else {
        return Ok(false);
    };
    let Some(dirs) = cgroup_dirs::all(&config.cgroup_path) else {
        return Ok(false);
    };
    for dir in dirs.iter().filter(|d| d.exists()) {
        remove_cgroup(dir)?;
    }
    if let Some(hooks) = &config.hooks {
        libcontainer::hooks::run_hooks(hooks.poststop().as_ref(), Some(&c.state), None, None, None)
            .map_err(failed("delete (poststop hooks)"))?;
    }
    std::fs::remove_dir_all(&c.root)
        .map_err(|e| BackendError::io(format!("remove {}", c.root.display()), e))?;
    Ok(true)
}

/// Kills what is left in the cgroup at `dir` and removes it, retrying while the killed
/// processes exit (as libcgroups does: 10, 20, 60 ms apart).
fn remove_cgroup(dir: &Path) -> Result<(), BackendError> {
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() {
        let _ = std::fs::write(&kill_file, "1");
    } else {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let mut delay = Duration::from_millis(10);
    for attempt in 1..=4u32 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if attempt == 4 => {
                return Err(BackendError::io(
                    format!("remove cgroup {}", dir.display()),
                    e,
                ))
            }
            Err(_) => {
                std::thread::sleep(delay);
                delay = (delay * attempt).min(Duration::from_millis(100));
            }
        }
    }
    Ok(())
}
