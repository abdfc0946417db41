//! What libcontainer's tenant builder (an exec) leaves in the container's state directory: it
//! binds a notify socket `tenant-notify-<hex>.sock` there and, with a terminal, links
//! `tenant-tty-<hex>.sock` to the console socket, and removes neither (libcontainer 0.7;
//! docs/upstream/libcontainer-tenant-sockets.md). An exec probe every 10 s would leave thousands
//! a day. Both are used only during the call, so the shim removes them once it has returned.
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::Path;

const PREFIXES: [&str; 2] = ["tenant-notify-", "tenant-tty-"];

/// The tenant sockets in `container_dir` now.
pub fn sockets(container_dir: &Path) -> HashSet<OsString> {
    let Ok(entries) = std::fs::read_dir(container_dir) else {
        return HashSet::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name())
        .filter(|name| {
            let name = name.to_string_lossy();
            name.ends_with(".sock") && PREFIXES.iter().any(|p| name.starts_with(p))
        })
        .collect()
}

/// Removes the tenant sockets that appeared in `container_dir` since `before` (one exec's;
/// anything else of that name belongs to someone else's exec, e.g. `youki exec` by hand).
pub fn remove_new(container_dir: &Path, before: &HashSet<OsString>) {
    for name in sockets(container_dir).difference(before) {
        let path = container_dir.join(name);
        if let Err(e) = std::fs::remove_file(&path) {
            log::warn!("remove {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_the_new_tenant_sockets() {
        let dir = std::env::temp_dir().join(format!("shim-sandbox-tenant-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let touch = |name: &str| std::fs::write(dir.join(name), "").unwrap();
        for name in ["state.json", "notify.sock", "tenant-notify-1.sock"] {
            touch(name);
        }
        let before = sockets(&dir);
        for name in [
            "tenant-notify-2a.sock",
            "tenant-tty-3b.sock",
            "tenant-notes",
        ] {
            touch(name);
        }
        remove_new(&dir, &before);
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            left,
            [
                "notify.sock",
                "state.json",
                "tenant-notes",
                "tenant-notify-1.sock"
            ]
        );
    }
}
