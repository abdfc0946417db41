//! Where a shim listens, derived exactly as containerd's Go shims derive it, so a second
//! container of the same group (or a restarted containerd) finds the running shim.
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// containerd's default state directory, where shim sockets live whatever containerd's own
/// state directory is.
const SOCKET_ROOT: &str = "/run/containerd/s";

/// The OCI annotations that put containers into one shim, in the order they are consulted.
pub const GROUP_ANNOTATIONS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

/// `<dir>/<sha256(join(address, namespace, group))>`, `dir` being /run/containerd/s unless
/// containerd 2.3 names another `socket_dir`.
pub fn socket_path(
    containerd_address: &str,
    namespace: &str,
    group: &str,
    dir: Option<&str>,
) -> PathBuf {
    let joined = clean_join(&[containerd_address, namespace, group]);
    let digest = Sha256::digest(joined.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Path::new(dir.unwrap_or(SOCKET_ROOT)).join(hex)
}

pub fn to_uri(path: &Path) -> String {
    format!("unix://{}", path.display())
}

/// The group a container belongs to: the first group annotation in its bundle's config.json,
/// or its own id.
pub fn group_of(bundle: &Path, id: &str) -> String {
    let spec: Option<serde_json::Value> = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok());
    let annotations = spec.as_ref().and_then(|s| s.get("annotations"));
    GROUP_ANNOTATIONS
        .iter()
        .find_map(|key| annotations?.get(key)?.as_str().filter(|g| !g.is_empty()))
        .unwrap_or(id)
        .to_string()
}

/// Go's `filepath.Join`: joins with `/`, drops empty parts and collapses repeated slashes
/// (enough for the inputs containerd passes, which are clean absolute paths and plain names).
fn clean_join(parts: &[&str]) -> String {
    let mut out = String::new();
    for part in parts.iter().filter(|p| !p.is_empty()) {
        if !out.is_empty() && !out.ends_with('/') {
            out.push('/');
        }
        out.push_str(part);
    }
    let mut cleaned = String::with_capacity(out.len());
    for ch in out.chars() {
        if ch == '/' && cleaned.ends_with('/') {
            continue;
        }
        cleaned.push(ch);
    }
    if cleaned.len() > 1 && cleaned.ends_with('/') {
        cleaned.pop();
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_go_shim_derivation() {
        // sha256("/run/containerd/containerd.sock/default/c1"), as containerd's Go shim hashes it.
        let p = socket_path("/run/containerd/containerd.sock", "default", "c1", None);
        let expected = Sha256::digest(b"/run/containerd/containerd.sock/default/c1");
        let hex: String = expected.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(p, Path::new("/run/containerd/s").join(hex));
        assert!(to_uri(&p).starts_with("unix:///run/containerd/s/"));
        let elsewhere = socket_path(
            "/run/containerd/containerd.sock",
            "default",
            "c1",
            Some("/s"),
        );
        assert_eq!(elsewhere.parent(), Some(Path::new("/s")));
    }

    #[test]
    fn join_is_clean() {
        assert_eq!(clean_join(&["/a/", "ns", "id"]), "/a/ns/id");
        assert_eq!(clean_join(&["/a//b", "", "id/"]), "/a/b/id");
    }

    #[test]
    fn group_annotation_wins_over_id() {
        let dir = tempfile::tempdir().unwrap();
        let spec = r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"sb","io.containerd.runc.v2.group":"g"}}"#;
        std::fs::write(dir.path().join("config.json"), spec).unwrap();
        assert_eq!(group_of(dir.path(), "c"), "g");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"sb"}}"#,
        )
        .unwrap();
        assert_eq!(group_of(dir.path(), "c"), "sb");
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        assert_eq!(group_of(dir.path(), "c"), "c");
    }
}
