//! Checkpoint through libcontainer, which drives CRIU (`criu swrk`, from the PATH).
use libcontainer::container::{CheckpointOptions, Container};
use libshim::{BackendError, CheckpointRequest};

use crate::call::{failed, guarded};

/// CRIU's cgroup mode from containerd's option (runc's names).
fn cgroup_mode(mode: &str) -> rust_criu::CgMode {
    match mode {
        "soft" => rust_criu::CgMode::SOFT,
        "full" => rust_criu::CgMode::FULL,
        "strict" => rust_criu::CgMode::STRICT,
        "ignore" => rust_criu::CgMode::IGNORE,
        _ => rust_criu::CgMode::DEFAULT,
    }
}

pub fn options(request: &CheckpointRequest) -> CheckpointOptions {
    CheckpointOptions {
        ext_unix_sk: request.external_unix_sockets,
        file_locks: request.file_locks,
        image_path: request.image_path.clone(),
        leave_running: !request.exit,
        shell_job: request.terminal,
        tcp_established: request.open_tcp,
        work_path: Some(request.work_path.clone()),
        manage_cgroups_mode: cgroup_mode(&request.cgroups_mode),
        link_remap: false,
    }
}

pub fn dump(mut c: Container, request: &CheckpointRequest) -> Result<(), BackendError> {
    if request.parent.is_some() {
        return Err(BackendError::NotImplemented(
            "incremental checkpoint (a parent image)",
        ));
    }
    let opts = options(request);
    guarded(|| c.checkpoint(&opts)).map_err(failed("checkpoint"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerds_options_map_to_libcontainers() {
        let request = CheckpointRequest {
            image_path: "/img".into(),
            work_path: "/work".into(),
            exit: true,
            open_tcp: true,
            terminal: true,
            cgroups_mode: "strict".into(),
            ..Default::default()
        };
        let o = options(&request);
        assert!(!o.leave_running && o.tcp_established && o.shell_job);
        assert!(!o.ext_unix_sk && !o.file_locks);
        assert_eq!(o.image_path, std::path::Path::new("/img"));
        assert_eq!(o.work_path.as_deref(), Some(std::path::Path::new("/work")));
        assert!(matches!(o.manage_cgroups_mode, rust_criu::CgMode::STRICT));
        assert!(matches!(cgroup_mode(""), rust_criu::CgMode::DEFAULT));
    }
}
