//! Mounting the rootfs that a Create request lists, and taking it down again.
use std::path::Path;

pub mod idmap;

/// Where an idmapped overlay's lower layers are staged while it is mounted, next to the rootfs.
const IDMAPPED_LOWERS: &str = ".idmapped-lowers";

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use protos::types::mount::Mount;

use crate::error::{Error, Result};

/// Splits mount(8)-style options into flags and the data string the filesystem gets.
fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "defaults" | "async" => (MsFlags::empty(), MsFlags::empty()),
            _ => {
                data.push(opt.as_str());
                continue;
            }
        };
        flags.insert(set);
        flags.remove(clear);
    }
    (flags, data.join(","))
}

/// Mounts each of `mounts` at `rootfs`, in order. On failure, what was mounted is undone.
pub fn mount_rootfs(mounts: &[Mount], rootfs: &Path) -> Result<()> {
    for (done, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, rootfs) {
            for _ in 0..done {
                let _ = umount2(rootfs, MntFlags::MNT_DETACH);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, rootfs: &Path) -> Result<()> {
    let (userns, mut options) = idmap::take_options(&m.options)?;
    // An overlay reads its lower layers through an idmapped clone, detached once it is up.
    let _lowers = match (&userns, m.type_.as_str()) {
        (Some(userns), "overlay") => {
            let staging = rootfs.with_file_name(IDMAPPED_LOWERS);
            Some(idmap::idmap_lowers(options.to_mut(), userns, &staging)?)
        }
        _ => None,
    };
    let (flags, data) = parse_options(&options);
    let fstype = if flags.contains(MsFlags::MS_BIND) {
        None
    } else {
        Some(m.type_.as_str())
    };
    let data = (!data.is_empty()).then_some(data.as_str());
    let fail = |e: nix::Error| {
        Error::io(
            format!("mount {} ({}) at {}", m.source, m.type_, rootfs.display()),
            e.into(),
        )
    };
    mount(Some(m.source.as_str()), rootfs, fstype, flags, data).map_err(fail)?;
    // A bind mount ignores MS_RDONLY until it is remounted.
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        let again = flags | MsFlags::MS_REMOUNT;
        mount(None::<&str>, rootfs, None::<&str>, again, None::<&str>).map_err(fail)?;
    }
    // Anything else is idmapped where it was mounted: an idmapped clone stacked on it.
    if let (Some(userns), false) = (&userns, m.type_ == "overlay") {
        let opts = idmap::CloneOptions::default();
        if let Err(e) = idmap::bind_idmapped(rootfs, rootfs, userns, opts) {
            let _ = umount2(rootfs, MntFlags::MNT_DETACH);
            return Err(Error::io(
                format!(
                    "idmap the rootfs mount {} at {}",
                    m.source,
                    rootfs.display()
                ),
                e,
            ));
        }
    }
    Ok(())
}

/// Unmounts everything stacked at `rootfs`. Not mounted is fine.
pub fn unmount_rootfs(rootfs: &Path) -> Result<()> {
    for _ in 0..32 {
        match umount2(rootfs, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(Error::io(format!("unmount {}", rootfs.display()), e.into())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_flags_from_data() {
        let opts: Vec<String> = ["rbind", "ro", "lowerdir=/a:/b", "index=off"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&opts);
        assert!(flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert_eq!(data, "lowerdir=/a:/b,index=off");
    }

    #[test]
    fn later_options_win() {
        let opts: Vec<String> = ["ro", "rw"].iter().map(|s| s.to_string()).collect();
        let (flags, _) = parse_options(&opts);
        assert!(!flags.contains(MsFlags::MS_RDONLY));
    }

    /// A bundle with two image layers (files owned by root) and an upper dir, as containerd's
    /// overlay snapshotter lays them out.
    fn layers() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for sub in [
            "snapshots/1/fs",
            "snapshots/2/fs",
            "upper",
            "work",
            "bundle/rootfs",
        ] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("snapshots/1/fs/lower"), "1").unwrap();
        std::fs::write(dir.path().join("snapshots/2/fs/top"), "2").unwrap();
        dir
    }

    fn owner(path: &Path) -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).unwrap();
        (meta.uid(), meta.gid())
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_idmapped_overlay_shows_the_layers_under_the_mapped_root() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let dir = layers();
        let d = dir.path();
        let rootfs = d.join("bundle/rootfs");
        let m = Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: strings(&[
                "uidmap=0:165536:65536",
                "gidmap=0:231072:65536",
                &format!("workdir={}", d.join("work").display()),
                &format!("upperdir={}", d.join("upper").display()),
                &format!(
                    "lowerdir={}:{}",
                    d.join("snapshots/2/fs").display(),
                    d.join("snapshots/1/fs").display()
                ),
            ]),
            ..Default::default()
        };
        let mounted = mount_rootfs(std::slice::from_ref(&m), &rootfs);
        let owners = mounted
            .as_ref()
            .map(|()| (owner(&rootfs.join("lower")), owner(&rootfs.join("top"))));
        unmount_rootfs(&rootfs).unwrap();
        assert_eq!(owners.unwrap(), ((165536, 231072), (165536, 231072)));
        // The staged lower layers went with the mount.
        assert!(!d.join("bundle").join(IDMAPPED_LOWERS).exists());
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mountinfo.contains(&*d.to_string_lossy()), "{mountinfo}");
    }

    #[test]
    fn an_idmapped_bind_rootfs_is_idmapped_where_it_is_mounted() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let dir = layers();
        let rootfs = dir.path().join("bundle/rootfs");
        let m = Mount {
            type_: "bind".into(),
            source: dir
                .path()
                .join("snapshots/1/fs")
                .to_string_lossy()
                .into_owned(),
            options: strings(&[
                "uidmap=0:165536:65536",
                "gidmap=0:165536:65536",
                "rw",
                "rbind",
            ]),
            ..Default::default()
        };
        let mounted = mount_rootfs(std::slice::from_ref(&m), &rootfs);
        let seen = mounted.as_ref().map(|()| owner(&rootfs.join("lower")));
        unmount_rootfs(&rootfs).unwrap();
        assert_eq!(seen.unwrap(), (165536, 165536));
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mountinfo.contains(&*rootfs.to_string_lossy()),
            "{mountinfo}"
        );
    }
}
