//! Idmapped mounts, for user-namespaced containers (Kubernetes' `hostUsers: false`).
//!
//! containerd 2's overlay snapshotter asks for them with `uidmap=`/`gidmap=` options on the
//! rootfs mounts it hands the shim ("container:host:size", comma-separated). These are not
//! mount(2) options: containerd's own mount code reads them, builds a user namespace with
//! those maps and, for an overlay, idmaps the directory holding the lower layers and mounts the
//! overlay over that; any other mount is idmapped where it was mounted. The shim does the same,
//! so an image's files owned by root show up owned by the container's mapped root. The upper
//! layer is not idmapped: the snapshotter chowned it to the mapped root already.
//!
//! A mount's idmap can only be set on a detached clone (open_tree), before it is attached.
use std::borrow::Cow;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::sys::idmap as sys;

/// One id mapping: `size` ids from `container_id` inside map to `host_id` outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// The `/proc/<pid>/uid_map` text for `maps`.
fn proc_map(maps: &[IdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
        .collect()
}

/// Parses containerd's mapping list, "container:host:size[,container:host:size...]".
pub fn parse_list(list: &str) -> std::result::Result<Vec<IdMapping>, String> {
    list.split(',')
        .map(|one| {
            let parts: Vec<&str> = one.split(':').collect();
            let number = |s: &str| s.trim().parse::<u32>().ok();
            match parts[..] {
                [c, h, s] => match (number(c), number(h), number(s)) {
                    (Some(container_id), Some(host_id), Some(size)) if size > 0 => Ok(IdMapping {
                        container_id,
                        host_id,
                        size,
                    }),
                    _ => Err(format!("{one:?} is not container-id:host-id:size")),
                },
                _ => Err(format!("{one:?} is not container-id:host-id:size")),
            }
        })
        .collect()
}

/// An OCI spec's mapping list (`linux.uidMappings`, a mount's `gidMappings`, ...); None when
/// absent, empty or malformed.
pub fn oci_mappings(list: &Value) -> Option<Vec<IdMapping>> {
    let list = list.as_array()?;
    let one = |m: &Value| {
        let n = |k: &str| m[k].as_u64().and_then(|n| u32::try_from(n).ok());
        Some(IdMapping {
            container_id: n("containerID")?,
            host_id: n("hostID")?,
            size: n("size")?,
        })
    };
    let parsed: Vec<IdMapping> = list.iter().filter_map(one).collect();
    (parsed.len() == list.len() && !parsed.is_empty()).then_some(parsed)
}

/// Whether an OCI mount asks to be idmapped: mappings of its own or the `idmap`/`ridmap`
/// option (containerd's `usesIDMapMounts`).
pub fn is_idmapped(mount: &Value) -> bool {
    let opts = mount["options"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    !mount["uidMappings"].is_null()
        || !mount["gidMappings"].is_null()
        || opts.iter().any(|o| o == "idmap" || o == "ridmap")
}

/// Whether an OCI spec's container gets a user namespace (a new one or one it joins).
pub fn in_user_namespace(spec: &Value) -> bool {
    spec.pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .is_some_and(|ns| ns.iter().any(|n| n["type"] == "user"))
}

/// A user namespace that carries id mappings for idmapped mounts; no process lives in it.
pub struct Userns(OwnedFd);

impl Userns {
    pub fn new(uids: &[IdMapping], gids: &[IdMapping]) -> io::Result<Self> {
        sys::userns_with_maps(&proc_map(uids), &proc_map(gids)).map(Userns)
    }
}

/// Whether this kernel can idmap mounts at all (Linux 5.12+). Whether a given filesystem can
/// is only known when one of its mounts is idmapped.
pub fn kernel_supported() -> bool {
    sys::kernel_has_mount_setattr()
}

/// How an idmapped clone is made.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneOptions {
    /// Clone the mounts under the source too (rbind).
    pub recursive_tree: bool,
    /// Idmap every mount of the clone, not only its top one (OCI's `ridmap`).
    pub recursive_idmap: bool,
    pub read_only: bool,
}

/// A detached, idmapped clone of the mount at `source`, attached at `target` (an existing
/// file or directory).
pub fn bind_idmapped(
    source: &Path,
    target: &Path,
    userns: &Userns,
    opts: CloneOptions,
) -> io::Result<()> {
    let tree = sys::open_tree_clone(source, opts.recursive_tree)?;
    let attr = if opts.read_only {
        sys::MOUNT_ATTR_RDONLY
    } else {
        0
    };
    sys::set_idmap(tree.as_fd(), userns.0.as_fd(), opts.recursive_idmap, attr)?;
    sys::move_mount(tree.as_fd(), target)
}

/// The uid and gid maps a rootfs mount's options ask for, and the options left for mount(2)
/// (borrowed as they are when there are none, the usual case).
pub fn take_options(options: &[String]) -> Result<(Option<Userns>, Cow<'_, [String]>)> {
    let is_map = |o: &String| o.starts_with("uidmap=") || o.starts_with("gidmap=");
    if !options.iter().any(is_map) {
        return Ok((None, Cow::Borrowed(options)));
    }
    let find = |prefix: &str| options.iter().find_map(|o| o.strip_prefix(prefix));
    let rest: Vec<String> = options.iter().filter(|o| !is_map(o)).cloned().collect();
    let (uidmap, gidmap) = match (find("uidmap="), find("gidmap=")) {
        (Some(u), Some(g)) => (u, g),
        _ => {
            return Err(Error::InvalidArgument(
                "rootfs mount: uidmap= and gidmap= must be given together".into(),
            ))
        }
    };
    let parse = |what: &str, list: &str| {
        parse_list(list)
            .map_err(|e| Error::InvalidArgument(format!("rootfs mount: option {what}={list}: {e}")))
    };
    let (uids, gids) = (parse("uidmap", uidmap)?, parse("gidmap", gidmap)?);
    let userns = Userns::new(&uids, &gids).map_err(|e| {
        Error::io(
            format!("rootfs mount: create a user namespace for uidmap={uidmap} gidmap={gidmap}"),
            e,
        )
    })?;
    Ok((Some(userns), Cow::Owned(rest)))
}

/// The deepest directory that holds every one of `dirs`.
fn common_dir(dirs: &[PathBuf]) -> Option<PathBuf> {
    let mut common: PathBuf = dirs.first()?.clone();
    for dir in &dirs[1..] {
        while !dir.starts_with(&common) {
            if !common.pop() {
                return None;
            }
        }
    }
    Some(common)
}

/// An idmapped clone of the directory holding an overlay's lower layers, attached next to the
/// rootfs in the bundle; detached and removed on drop (the overlay holds its own references).
pub struct IdmappedLowers {
    dir: PathBuf,
    mounted: bool,
}

impl Drop for IdmappedLowers {
    fn drop(&mut self) {
        if self.mounted {
            match umount2(&self.dir, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
                Err(e) => log::warn!("detach {}: {e}", self.dir.display()),
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            log::warn!("remove {}: {e}", self.dir.display());
        }
    }
}

/// Rewrites an overlay's `lowerdir=` option so its layers are read through one read-only
/// idmapped clone of their common parent directory, attached at `staging` (made here; what a
/// killed shim left there is taken down first).
pub fn idmap_lowers(
    options: &mut [String],
    userns: &Userns,
    staging: &Path,
) -> Result<IdmappedLowers> {
    let Some(at) = options.iter().position(|o| o.starts_with("lowerdir=")) else {
        return Err(Error::InvalidArgument(
            "idmapped overlay rootfs: no lowerdir= option".into(),
        ));
    };
    let lowers: Vec<PathBuf> = options[at]["lowerdir=".len()..]
        .split(':')
        .map(PathBuf::from)
        .collect();
    let common = common_dir(&lowers).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "idmapped overlay rootfs: the lower layers {} share no parent directory",
            &options[at]
        ))
    })?;
    if staging.exists() {
        drop(IdmappedLowers {
            dir: staging.to_path_buf(),
            mounted: true,
        });
    }
    std::fs::create_dir(staging)
        .map_err(|e| Error::io(format!("create {}", staging.display()), e))?;
    let mut staged = IdmappedLowers {
        dir: staging.to_path_buf(),
        mounted: false,
    };
    let opts = CloneOptions {
        read_only: true,
        ..Default::default()
    };
    bind_idmapped(&common, &staged.dir, userns, opts).map_err(|e| {
        Error::io(
            format!(
                "idmapped overlay rootfs: idmap the lower layers' directory {} at {}",
                common.display(),
                staged.dir.display()
            ),
            e,
        )
    })?;
    staged.mounted = true;
    let rewritten: Vec<String> = lowers
        .iter()
        .map(|l| {
            let rel = l.strip_prefix(&common).unwrap_or(Path::new(""));
            staged.dir.join(rel).to_string_lossy().into_owned()
        })
        .collect();
    options[at] = format!("lowerdir={}", rewritten.join(":"));
    Ok(staged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_containerd_mapping_lists() {
        assert_eq!(
            parse_list("0:165536:65536").unwrap(),
            vec![IdMapping {
                container_id: 0,
                host_id: 165536,
                size: 65536
            }]
        );
        assert_eq!(parse_list("0:1000:1,1:100000:65535").unwrap().len(), 2);
        assert!(parse_list("0:1000").is_err());
        assert!(parse_list("0:x:1").is_err());
        assert!(parse_list("0:1:0").is_err());
        assert_eq!(
            proc_map(&parse_list("0:1000:1,1:100000:65535").unwrap()),
            "0 1000 1\n1 100000 65535\n"
        );
    }

    #[test]
    fn finds_the_directory_common_to_layers() {
        let dirs = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(
            common_dir(&dirs(&["/s/snapshots/3/fs", "/s/snapshots/12/fs"])),
            Some(PathBuf::from("/s/snapshots"))
        );
        assert_eq!(
            common_dir(&dirs(&["/s/snapshots/3/fs"])),
            Some(PathBuf::from("/s/snapshots/3/fs"))
        );
        // Component-wise, not by characters.
        assert_eq!(
            common_dir(&dirs(&["/s/snap1/fs", "/s/snap12/fs"])),
            Some(PathBuf::from("/s"))
        );
    }

    #[test]
    fn uidmap_without_gidmap_is_refused() {
        let opts = vec!["uidmap=0:1000:1".to_string(), "ro".to_string()];
        let err = take_options(&opts).err().expect("refused");
        assert!(err.to_string().contains("together"), "{err}");
        let plain = ["ro".to_string()];
        let (none, rest) = take_options(&plain).unwrap();
        assert!(none.is_none());
        assert_eq!(rest, vec!["ro".to_string()]);
    }

    #[test]
    fn an_idmapped_clone_shows_files_under_their_mapped_owner() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let source = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        std::fs::write(source.path().join("f"), "x").unwrap();
        std::os::unix::fs::chown(source.path().join("f"), Some(0), Some(0)).unwrap();
        let map = |host_id| IdMapping {
            container_id: 0,
            host_id,
            size: 65536,
        };
        let userns = Userns::new(&[map(165536)], &[map(231072)]).unwrap();
        bind_idmapped(
            source.path(),
            target.path(),
            &userns,
            CloneOptions::default(),
        )
        .unwrap();
        let meta = std::fs::metadata(target.path().join("f"));
        let _ = umount2(target.path(), MntFlags::MNT_DETACH);
        let meta = meta.unwrap();
        assert_eq!((meta.uid(), meta.gid()), (165536, 231072));
    }
}
