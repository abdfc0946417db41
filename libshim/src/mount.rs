//! Mounting the rootfs that a Create request lists, and taking it down again.
use std::path::Path;

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
    let (flags, data) = parse_options(&m.options);
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
}
