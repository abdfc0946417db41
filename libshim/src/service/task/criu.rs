//! Checkpoint, and the CRIU paths and logs shared with restore.
use super::*;

impl<B: Backend> TaskService<B> {
    pub(super) async fn do_checkpoint(&self, req: CheckpointTaskRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let c = c.lock().await;
        if !matches!(c.init.state(), State::Running | State::Paused) {
            return Err(Error::FailedPrecondition(format!(
                "cannot checkpoint container {:?}: it is {}",
                req.id,
                c.init.state().name()
            )));
        }
        let mut request = crate::options::checkpoint_request(req.options.as_ref())?;
        if request.image_path.as_os_str().is_empty() {
            request.image_path = PathBuf::from(&req.path);
        }
        if request.work_path.as_os_str().is_empty() {
            request.work_path = criu_work_path(&c.info);
        }
        request.terminal |= c.init.stdio_request.terminal;
        for dir in [&request.image_path, &request.work_path] {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
        if let Err(e) = self.inner.backend.checkpoint(&c.info, &request).await {
            return Err(with_criu_log(e.into(), &request.work_path, &c.info, "dump"));
        }
        // containerd honours ImagePath itself only for `io.containerd.runc.*` runtime types
        // (it then passes that same path here); for others it archives its own directory
        // into the content store, so the image must be there too.
        let containerds = PathBuf::from(&req.path);
        let nested = containerds.starts_with(&request.image_path)
            || request.image_path.starts_with(&containerds);
        if !req.path.is_empty() && !nested {
            link_tree(&request.image_path, &containerds)?;
        }
        Ok(())
    }
}

/// CRIU's work directory: the CriuWorkPath option, or one in the bundle.
pub(super) fn criu_work_path(info: &ContainerInfo) -> PathBuf {
    if info.options.criu_work_path.is_empty() {
        info.bundle.join("criu-work")
    } else {
        PathBuf::from(&info.options.criu_work_path)
    }
}

/// Hard-links (copies across filesystems) the files of `from` into `to`, recursively.
pub(super) fn link_tree(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    let io = |what: &str, p: &std::path::Path, e| Error::io(format!("{what} {}", p.display()), e);
    std::fs::create_dir_all(to).map_err(|e| io("create", to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| io("read", from, e))? {
        let entry = entry.map_err(|e| io("read", from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            link_tree(&src, &dst)?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(|e| io("copy", &src, e))?;
        }
    }
    Ok(())
}

/// The checkpoint a Create restores from: containerd's checkpoint, or the CriuImagePath option.
pub(super) fn restores_from(req: &CreateTaskRequest, info: &ContainerInfo) -> Option<PathBuf> {
    [
        req.checkpoint.as_str(),
        info.options.criu_image_path.as_str(),
    ]
    .into_iter()
    .find(|p| !p.is_empty())
    .map(PathBuf::from)
}

/// Keeps CRIU's log of a failed dump or restore where the user can read it (the bundle's
/// `criu-<action>.log`) and says so in the error.
pub(super) fn with_criu_log(
    err: Error,
    work: &std::path::Path,
    info: &ContainerInfo,
    action: &str,
) -> Error {
    let log = work.join(format!("{action}.log"));
    let kept = info.bundle.join(format!("criu-{action}.log"));
    match std::fs::copy(&log, &kept) {
        Ok(_) => Error::FailedPrecondition(format!("{err}; CRIU log: {}", kept.display())),
        Err(_) => err,
    }
}
