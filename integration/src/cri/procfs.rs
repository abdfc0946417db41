//! What tests read of a process in /proc: parent, program, namespaces, status fields.

/// The parent of `pid` (from `/proc/PID/stat`), if it still runs.
pub fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces, so split after its closing paren.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The parent pid of `pid`, which must still run.
pub fn ppid(pid: u32) -> u32 {
    parent(pid).unwrap_or_else(|| panic!("no parent pid for {pid}: is it gone?"))
}

/// The file name of the program `pid` runs (`/proc/PID/exe`).
pub fn exe_name(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

/// The namespace link of `pid` (`/proc/PID/ns/KIND`), as `readlink` prints it.
pub fn ns_link(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| panic!("readlink /proc/{pid}/ns/{kind}: {e}"))
}

/// The value of `field` in a `/proc/PID/status` text ("Seccomp", "CapEff", "Groups", ...).
pub fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field}: in {status:?}"))
}

/// A hexadecimal capability set of `/proc/PID/status` as a number.
pub fn cap_set(status: &str, field: &str) -> u64 {
    u64::from_str_radix(&status_field(status, field), 16).expect("capability set")
}

/// Waits up to 10 s until process `pid` is gone; says what it is and what state it is in
/// when it stays. (A zombie of ours would stay: the shims are not our children.)
pub async fn wait_gone(pid: u32, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(
            std::time::Instant::now() < deadline,
            "{what} (pid {pid}) still there 10 s later: state {}, parent {}",
            status_field(&status, "State"),
            status_field(&status, "PPid")
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
