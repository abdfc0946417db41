//! The container's cgroup: its processes (Pids, kill-all) and new limits (Update).
use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt};
use libcontainer::container::Container;
use libcontainer::oci_spec::runtime::LinuxResources;
use libshim::BackendError;

use crate::call::failed;

/// Every pid in the cgroup the kernel lists for `init`.
pub fn procs_of(init: u32) -> Result<Vec<u32>, BackendError> {
    let cgroup = libshim::metrics::Cgroup::for_pid(init).map_err(|e| {
        BackendError::io(
            format!("find the cgroup of pid {init}"),
            std::io::Error::other(e),
        )
    })?;
    Ok(cgroup.procs())
}

/// Applies `resources` (OCI LinuxResources JSON, as in the Update request) to the container's
/// cgroup through libcgroups, as `runc update --resources` does.
pub fn update(c: &Container, id: &str, resources: &[u8]) -> Result<(), BackendError> {
    let resources: LinuxResources = serde_json::from_slice(resources)
        .map_err(|e| BackendError::InvalidArgument(format!("resources: {e}")))?;
    let cgroup_path = c.spec().map_err(failed("update"))?.cgroup_path;
    let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path,
        systemd_cgroup: c.systemd(),
        container_name: id.to_string(),
    })
    .map_err(failed("update"))?;
    manager
        .apply(&ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(failed("update"))
}
