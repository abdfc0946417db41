//! What a test reads about a shim and a container from outside: /proc figures, the files a
//! container has on the host, and polling until a figure settles.
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Containerd;

/// A line's first number in `/proc/<pid>/status` (`RssAnon:`, `Threads:`, ...).
fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The process's anonymous resident memory in KiB (heap and stacks; not the binary's pages,
/// which are shared and dropped on the kernel's schedule).
pub fn rss_anon_kib(pid: u32) -> u64 {
    status_field(pid, "RssAnon:")
}

/// How many file descriptors the process has open.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .count()
}

/// What the process's descriptors point at, sorted (for a message when counts differ).
pub fn fd_targets(pid: u32) -> Vec<String> {
    let mut targets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .collect();
    targets.sort();
    targets
}

/// How many threads the process has (`/proc/<pid>/task`).
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/task: {e}"))
        .count()
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(") ").next().unwrap_or("").starts_with('Z'))
}

/// The names in `dir`, sorted; none when it does not exist.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The socket of the shim serving `id`, as containerd recorded it in the bundle.
pub fn shim_socket(containerd: &Containerd, id: &str) -> PathBuf {
    containerd.shim_socket(id)
}

/// The cgroup directories container `id` still has, in every hierarchy of this host (its
/// cgroupsPath is `/<namespace>/<id>`, as [`crate::Client::create_container`] sets it; the
/// cgroup v2 view's hierarchy is one of `/sys/fs/cgroup`'s entries on a hybrid host).
pub fn cgroups_of(namespace: &str, id: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|h| h.path())
        .chain([root.to_path_buf()])
        .map(|h| h.join(namespace).join(id))
        .filter(|d| d.exists())
        .collect()
}

/// The mount points under `prefix` in the mount namespace of process `pid`.
pub fn mounts_under(pid: u32, prefix: &Path) -> Vec<String> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    let prefix = prefix.to_string_lossy().into_owned();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Polls `probe` every 50 ms until `done` holds for its value or `timeout` passes; returns
/// the last value either way, for the caller to assert on.
pub async fn settle<T, F, Fut>(timeout: Duration, probe: F, done: impl Fn(&T) -> bool) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let value = probe().await;
        if done(&value) || Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
