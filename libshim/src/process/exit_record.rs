//! The init's exit, recorded in its bundle when it happens, so that containerd's `delete`
//! action (run when the serving shim died) reports the real status instead of a made-up
//! SIGKILL. Execs need none: containerd re-publishes only the init's exit after a shim died.
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::ExitInfo;

/// The file's name, as containerd's Go shim names its own record.
pub const FILE: &str = "exitstatus.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    pid: u32,
    status: u32,
    /// Since the Unix epoch.
    exited_at_ns: u128,
}

/// Writes the record atomically (a crash mid-write leaves the old state, never half a file).
pub fn write(bundle: &Path, pid: u32, exit: ExitInfo) -> std::io::Result<()> {
    let record = Record {
        pid,
        status: exit.status,
        exited_at_ns: exit
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    };
    let tmp = bundle.join(format!(".{FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(&record)?)?;
    std::fs::rename(&tmp, bundle.join(FILE))
}

/// The recorded pid and exit, if the init exited while a shim served it.
pub fn read(bundle: &Path) -> Option<(u32, ExitInfo)> {
    let data = std::fs::read(bundle.join(FILE)).ok()?;
    let r: Record = serde_json::from_slice(&data).ok()?;
    let at = SystemTime::UNIX_EPOCH
        + Duration::new(
            (r.exited_at_ns / 1_000_000_000) as u64,
            (r.exited_at_ns % 1_000_000_000) as u32,
        );
    Some((
        r.pid,
        ExitInfo {
            status: r.status,
            at,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).is_none());
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        write(dir.path(), 42, ExitInfo { status: 3, at }).unwrap();
        let (pid, exit) = read(dir.path()).unwrap();
        assert_eq!((pid, exit.status, exit.at), (42, 3, at));
        assert!(!dir.path().join(format!(".{FILE}.tmp")).exists());
    }
}
