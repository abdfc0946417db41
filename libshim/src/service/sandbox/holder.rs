//! The pod's namespaces, held by a child of the shim (see `sys::ns_holder` for why a bare
//! clone): what it is asked to do, checked before it is cloned, and its failures named.
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};

use super::pod_config::{NamespaceMode, PodConfig};
use crate::error::{Error, Result};
use crate::sys::ns_holder::{self, HolderError, HolderSetup, Step};

/// NSFS_MAGIC: what statfs says of a namespace file.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Checks the request and prepares the holder's set-up.
pub fn setup(pod: &PodConfig, netns_path: &str) -> Result<HolderSetup> {
    let host_network = pod.network == NamespaceMode::Node;
    let netns = if netns_path.is_empty() {
        None
    } else {
        Some(open_netns(netns_path)?)
    };
    if netns.is_none() && !host_network {
        return Err(Error::InvalidArgument(
            "CreateSandbox: no netns_path for a pod with a network of its own \
             (CRI makes one unless the pod uses the host's network)"
                .into(),
        ));
    }
    // A user-namespaced pod: CRI made its network namespace inside a user namespace with the
    // pod's id mappings (containerd 2's setupNetnsWithinUserns); that user namespace becomes
    // the pod's, and the holder makes the pod's other namespaces in it.
    let userns = match (pod.user_namespace, &netns) {
        (false, _) => None,
        (true, None) => {
            return Err(Error::InvalidArgument(
                "CreateSandbox: a user-namespaced pod needs a network namespace of its own".into(),
            ))
        }
        (true, Some(netns)) => Some(pod_user_namespace(netns.as_fd(), netns_path)?),
    };
    let new_uts = !host_network;
    let new_ipc = pod.ipc != NamespaceMode::Node;
    let hostname = match (new_uts, pod.hostname.is_empty()) {
        (true, false) => Some(CString::new(pod.hostname.clone()).map_err(|_| {
            Error::InvalidArgument(format!(
                "pod hostname {:?} contains a NUL byte",
                pod.hostname
            ))
        })?),
        _ => None,
    };
    let mut sysctls = Vec::new();
    for (key, value) in &pod.sysctls {
        check_sysctl(key, new_ipc, netns.is_some())?;
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        sysctls.push((
            CString::new(path).map_err(|_| sysctl_error(key, "contains a NUL byte"))?,
            value.clone().into_bytes(),
        ));
    }
    Ok(HolderSetup {
        userns,
        netns,
        new_ipc,
        new_uts,
        // As the pause container: a PID namespace of its own unless the pod shares the host's.
        new_pid: pod.pid != NamespaceMode::Node,
        hostname,
        sysctls,
        cmdline: ns_holder::cmdline("pod-ns-holder"),
    })
}

/// The user namespace that owns the pod's network namespace, refused if it is the host's.
fn pod_user_namespace(netns: std::os::fd::BorrowedFd<'_>, netns_path: &str) -> Result<OwnedFd> {
    let userns = ns_holder::owning_user_namespace(netns).map_err(|e| {
        Error::io(
            format!("find the user namespace that owns the network namespace {netns_path}"),
            e,
        )
    })?;
    let ours = std::fs::metadata("/proc/self/ns/user")
        .map_err(|e| Error::io("stat /proc/self/ns/user", e))?;
    let theirs = nix::sys::stat::fstat(userns.as_fd())
        .map_err(|e| Error::io("stat the pod's user namespace", e.into()))?;
    use std::os::unix::fs::MetadataExt;
    if (ours.dev(), ours.ino()) == (theirs.st_dev, theirs.st_ino) {
        return Err(Error::FailedPrecondition(format!(
            "CreateSandbox: the pod asks for a user namespace, but its network namespace \
             {netns_path} belongs to the host's (containerd 2 makes it in the pod's)"
        )));
    }
    Ok(userns)
}

/// Clones the holder; its failure names the step, the value and the cause.
pub fn spawn(setup: &HolderSetup, pod: &PodConfig, netns_path: &str) -> Result<u32> {
    ns_holder::spawn(setup).map_err(|e| match e {
        HolderError::Spawn(e) => Error::io("clone the pod's namespace holder", e),
        HolderError::Setup { step, error } => {
            let what = match step {
                Step::JoinUser => {
                    format!("join the user namespace of the pod's network namespace {netns_path}")
                }
                Step::BecomeRoot => "become root in the pod's user namespace".to_string(),
                Step::Unshare => "make the pod's namespaces in its user namespace".to_string(),
                Step::JoinNetwork => format!("join the pod's network namespace {netns_path}"),
                Step::SetHostname => format!("set the pod's hostname {:?}", pod.hostname),
                Step::Sysctl(i) => {
                    let (key, value) = pod.sysctls.iter().nth(i).unzip();
                    format!(
                        "set sysctl {}={} in the pod's namespaces",
                        key.map_or("?", String::as_str),
                        value.map_or("?", String::as_str)
                    )
                }
                Step::Unknown(n) => format!("set up the pod's namespaces (step {n})"),
            };
            if matches!(step, Step::Sysctl(_)) {
                Error::InvalidArgument(format!("{what}: {error}"))
            } else {
                Error::io(what, error)
            }
        }
    })
}

fn open_netns(path: &str) -> Result<OwnedFd> {
    let file = std::fs::File::open(path).map_err(|e| {
        Error::InvalidArgument(format!("network namespace {path:?} cannot be opened: {e}"))
    })?;
    let fd = OwnedFd::from(file);
    let fs = nix::sys::statfs::fstatfs(fd.as_fd())
        .map_err(|e| Error::io(format!("statfs {path}"), e.into()))?;
    if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
        return Err(Error::InvalidArgument(format!(
            "network namespace {path:?} is not a namespace file"
        )));
    }
    Ok(fd)
}

/// Only sysctls of the namespaces the pod owns can be set: anything else would change the
/// host (runc refuses them the same way).
fn check_sysctl(key: &str, own_ipc: bool, own_net: bool) -> Result<()> {
    if key.is_empty() || key.contains("..") || key.starts_with(['/', '.']) {
        return Err(sysctl_error(key, "is not a sysctl name"));
    }
    let ipc = matches!(
        key,
        "kernel.msgmax"
            | "kernel.msgmnb"
            | "kernel.msgmni"
            | "kernel.sem"
            | "kernel.shmall"
            | "kernel.shmmax"
            | "kernel.shmmni"
            | "kernel.shm_rmid_forced"
    ) || key.starts_with("fs.mqueue.");
    if ipc {
        return if own_ipc {
            Ok(())
        } else {
            Err(sysctl_error(
                key,
                "needs the pod's own IPC namespace (the pod uses the host's)",
            ))
        };
    }
    if key.starts_with("net.") {
        return if own_net {
            Ok(())
        } else {
            Err(sysctl_error(
                key,
                "needs the pod's own network namespace (the pod uses the host's)",
            ))
        };
    }
    Err(sysctl_error(
        key,
        "is not namespaced: setting it would change the host",
    ))
}

fn sysctl_error(key: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("pod sysctl {key:?} {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_outside_the_pods_namespaces_are_refused() {
        assert!(check_sysctl("net.ipv4.ip_forward", true, true).is_ok());
        assert!(check_sysctl("kernel.shmmax", true, false).is_ok());
        let host = check_sysctl("net.ipv4.ip_forward", true, false).unwrap_err();
        assert!(host.to_string().contains("net.ipv4.ip_forward"), "{host}");
        let global = check_sysctl("vm.swappiness", true, true).unwrap_err();
        assert!(global.to_string().contains("not namespaced"), "{global}");
        assert!(check_sysctl("net/../../x", true, true).is_err());
    }

    #[test]
    fn a_missing_netns_is_named() {
        let pod = PodConfig::default();
        let err = setup(&pod, "/nonexistent/netns/x").unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/netns/x"), "{err}");
        let err = setup(&pod, "/etc/hostname").unwrap_err();
        assert!(err.to_string().contains("not a namespace file"), "{err}");
    }

    /// A real holder (root only): the pod's UTS, IPC and PID namespaces, its hostname and
    /// IPC sysctl set inside them, no fd of the shim's kept, ended by SIGTERM.
    #[test]
    fn a_holder_owns_the_pods_namespaces() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        // The pod's network namespace, as CRI would have made it: here another process's.
        let mut netns_owner = std::process::Command::new("unshare")
            .args(["--net", "sleep", "60"])
            .spawn()
            .unwrap();
        let netns = format!("/proc/{}/ns/net", netns_owner.id());
        while std::fs::read_link(&netns).ok() == std::fs::read_link("/proc/self/ns/net").ok() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let pod = PodConfig {
            hostname: "pod-holder-test".into(),
            sysctls: [
                ("kernel.shmmni".to_string(), "1234".to_string()),
                ("net.ipv4.ip_forward".to_string(), "1".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let setup = setup(&pod, &netns).unwrap();
        let pid = spawn(&setup, &pod, &netns).unwrap();
        let ns =
            |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
        for kind in ["uts", "ipc", "pid_for_children"] {
            let kind_of_holder = if kind == "pid_for_children" {
                "pid"
            } else {
                kind
            };
            assert_ne!(
                ns(&pid.to_string(), kind_of_holder),
                ns("self", kind),
                "{kind}"
            );
        }
        assert_eq!(
            ns(&pid.to_string(), "net"),
            std::fs::read_link(&netns).unwrap()
        );
        let out = std::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-u", "-i", "-n", "cat"])
            .args(["/proc/sys/kernel/hostname", "/proc/sys/kernel/shmmni"])
            .arg("/proc/sys/net/ipv4/ip_forward")
            .output()
            .unwrap();
        let _ = netns_owner.kill();
        let _ = netns_owner.wait();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "pod-holder-test\n1234\n1\n"
        );
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(comm.trim(), "pod-ns-holder");
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
        assert_eq!(cmdline.trim_end_matches('\0'), "pod-ns-holder");
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        assert_eq!(fds, 0, "the holder keeps no fd of the shim's");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::SIGTERM,
        )
        .unwrap();
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None).unwrap();
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid as i32), 0)
        );
    }

    #[test]
    fn a_sysctl_the_kernel_refuses_is_named() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let pod = PodConfig {
            network: NamespaceMode::Node,
            sysctls: [("kernel.shmmni".to_string(), "not-a-number".to_string())].into(),
            ..Default::default()
        };
        let setup = setup(&pod, "").unwrap();
        let err = spawn(&setup, &pod, "").unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(
            err.to_string().contains("kernel.shmmni=not-a-number"),
            "{err}"
        );
    }

    /// A network namespace made by `unshare` with `args`, and its path.
    fn foreign_netns(args: &[&str]) -> (std::process::Child, String) {
        let child = std::process::Command::new("unshare")
            .args(args)
            .args(["sleep", "60"])
            .spawn()
            .unwrap();
        let netns = format!("/proc/{}/ns/net", child.id());
        while std::fs::read_link(&netns).ok() == std::fs::read_link("/proc/self/ns/net").ok() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        (child, netns)
    }

    /// A user-namespaced pod (root only): the holder is in the user namespace that owns the
    /// pod's network namespace, as that namespace's root, and its UTS, IPC and PID namespaces
    /// belong to it (so the pod's containers, inside it, may join them).
    #[test]
    fn a_user_namespaced_holder_makes_the_pods_namespaces_in_it() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let (mut owner, netns) = foreign_netns(&["--user", "--map-root-user", "--net"]);
        let pod = PodConfig {
            hostname: "userns-holder".into(),
            user_namespace: true,
            ..Default::default()
        };
        let made = setup(&pod, &netns).and_then(|s| spawn(&s, &pod, &netns));
        let link = |path: String| std::fs::read_link(path).unwrap();
        let owner_userns = link(format!("/proc/{}/ns/user", owner.id()));
        let checks = made.as_ref().map(|pid| {
            let holder_userns = link(format!("/proc/{pid}/ns/user"));
            let owners: Vec<std::path::PathBuf> = ["uts", "ipc", "pid"]
                .iter()
                .map(|kind| {
                    let ns = std::fs::File::open(format!("/proc/{pid}/ns/{kind}")).unwrap();
                    let userns = ns_holder::owning_user_namespace(ns.as_fd()).unwrap();
                    std::fs::read_link(format!(
                        "/proc/self/fd/{}",
                        std::os::fd::AsRawFd::as_raw_fd(&userns)
                    ))
                    .unwrap()
                })
                .collect();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            (holder_userns, owners, status)
        });
        if let Ok(pid) = &made {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(*pid as i32), None);
        }
        let _ = owner.kill();
        let _ = owner.wait();
        let (holder_userns, owners, status) = checks.unwrap();
        assert_eq!(holder_userns, owner_userns);
        assert_eq!(
            owners,
            vec![owner_userns.clone(); 3],
            "owners of uts, ipc, pid"
        );
        // Root inside: --map-root-user maps 0 to the caller (0 here).
        assert!(status.contains("\nUid:\t0\t0\t0\t0"), "{status}");
    }

    #[test]
    fn a_user_namespaced_pod_needs_a_netns_of_its_own_user_namespace() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let (mut owner, netns) = foreign_netns(&["--net"]);
        let pod = PodConfig {
            user_namespace: true,
            ..Default::default()
        };
        let err = setup(&pod, &netns).map(drop).unwrap_err();
        let _ = owner.kill();
        let _ = owner.wait();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
        assert!(err.to_string().contains(&netns), "{err}");
    }
}
