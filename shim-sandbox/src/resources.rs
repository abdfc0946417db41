//! The container's cgroup, as its config names it: its processes (Pids) and new limits
//! (Update), through the same libcgroups manager libcontainer created it with.
use libcgroups::common::{AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt};
use libcontainer::container::Container;
use libcontainer::oci_spec::runtime::LinuxResources;
use libshim::BackendError;

use crate::call::failed;
use crate::cgroup_dirs;

fn manager(c: &Container, action: &'static str) -> Result<AnyCgroupManager, BackendError> {
    let cgroup_path = c.spec().map_err(failed(action))?.cgroup_path;
    libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path,
        systemd_cgroup: c.systemd(),
        container_name: c.id().to_string(),
    })
    .map_err(failed(action))
}

/// Every pid in the container's cgroup; found from the config, not from the init's pid, so
/// it still works once the init has exited. On v1 read where the manager would read (the
/// devices hierarchy) without building one.
pub fn procs(c: &Container) -> Result<Vec<u32>, BackendError> {
    let cgroup_path = c.spec().map_err(failed("pids"))?.cgroup_path;
    let devices = (!c.systemd())
        .then(|| cgroup_dirs::v1(&cgroup_path, "devices"))
        .flatten();
    let pids = match devices {
        Some(dir) => libcgroups::common::get_all_pids(&dir).map_err(failed("pids"))?,
        None => manager(c, "pids")?.get_all_pids().map_err(failed("pids"))?,
    };
    Ok(pids.into_iter().map(|p| p.as_raw() as u32).collect())
}

/// Applies `resources` (OCI LinuxResources JSON, as in the Update request) to the container's
/// cgroup, as `runc update --resources` does.
pub fn update(c: &Container, resources: &[u8]) -> Result<(), BackendError> {
    let resources: LinuxResources = serde_json::from_slice(resources)
        .map_err(|e| BackendError::InvalidArgument(format!("resources: {e}")))?;
    manager(c, "update")?
        .apply(&ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(failed("update"))
}
