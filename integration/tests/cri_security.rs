//! CRI: security settings on every runtime handler, each checked from the container's init
//! (its log) and from an ExecSync: run-as user and groups, capabilities, privileged,
//! no_new_privs, masked and read-only paths, a read-only rootfs, seccomp (RuntimeDefault,
//! Unconfined, Localhost).
use std::time::Duration;

use integration::cri::api::*;
use integration::cri::client::*;
use integration::cri::Pod;
use integration::cri_tests;

/// The init prints its `/proc/self/status` between markers, then sleeps.
const REPORT: &str = "echo BEGIN; cat /proc/self/status; echo END; exec sleep 3600";

/// Runs `config` (its command replaced by [`REPORT`]) and returns (container id, the init's
/// status, an exec's status).
async fn statuses(pod: &Pod, mut config: ContainerConfig) -> (String, String, String) {
    let name = config.metadata.as_ref().unwrap().name.clone();
    config.command = vec!["sh".into(), "-c".into(), REPORT.into()];
    let id = pod.run(config).await;
    pod.wait_log(&name, "stdout F END", Duration::from_secs(10))
        .await;
    let lines = pod.log_lines(&name);
    let init: Vec<&str> = lines
        .iter()
        .map(|(_, m)| m.as_str())
        .skip_while(|m| *m != "BEGIN")
        .skip(1)
        .take_while(|m| *m != "END")
        .collect();
    let exec = pod.exec_ok(&id, &["cat", "/proc/self/status"]).await;
    (id, init.join("\n"), exec)
}

cri_tests!(run_as_user_group_and_supplemental_groups, |ctx| {
    let pod = ctx.run_pod(ctx.pod_config("user")).await;
    let mut config = sleeper("numeric");
    let sc = security(&mut config);
    sc.run_as_user = Some(Int64Value { value: 1000 });
    sc.run_as_group = Some(Int64Value { value: 1000 });
    sc.supplemental_groups = vec![3000];
    let (id, init, exec) = statuses(&pod, config).await;
    for (who, status) in [("init", &init), ("exec", &exec)] {
        let uid: Vec<String> = status_field(status, "Uid")
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(uid, ["1000"; 4], "{who} uids: {status}");
        let gid: Vec<String> = status_field(status, "Gid")
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(gid, ["1000"; 4], "{who} gids: {status}");
        let mut groups: Vec<u32> = status_field(status, "Groups")
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect();
        groups.sort();
        // 2000 from the image's /etc/group (it-user is a member), 3000 from the request.
        assert!(
            groups.contains(&2000) && groups.contains(&3000),
            "{who} groups {groups:?}"
        );
    }
    assert_eq!(pod.exec_ok(&id, &["id", "-un"]).await.trim(), "it-user");

    // By name: uid and primary group from the image's /etc/passwd.
    let mut by_name = sleeper("by-name");
    security(&mut by_name).run_as_username = "it-user".into();
    let (id, init, _) = statuses(&pod, by_name).await;
    assert_eq!(
        status_field(&init, "Uid").split_whitespace().next(),
        Some("1000")
    );
    assert_eq!(
        status_field(&init, "Gid").split_whitespace().next(),
        Some("1000")
    );
    let out = pod.exec_ok(&id, &["id"]).await;
    assert!(
        out.starts_with("uid=1000(it-user) gid=1000(it-group)"),
        "{out}"
    );
});

/// capability(7) numbers.
const CAP_CHOWN: u32 = 0;
const CAP_NET_RAW: u32 = 13;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_TIME: u32 = 25;

cri_tests!(capabilities_added_and_dropped, |ctx| {
    let pod = ctx.run_pod(ctx.pod_config("caps")).await;
    let (_, init, exec) = statuses(&pod, sleeper("default")).await;
    let default = cap_set(&init, "CapEff");
    assert_eq!(default, cap_set(&exec, "CapEff"), "init and exec differ");
    assert!(
        default & (1 << CAP_CHOWN) != 0 && default & (1 << CAP_NET_ADMIN) == 0,
        "{default:x}"
    );

    let mut config = sleeper("changed");
    security(&mut config).capabilities = Some(Capability {
        add_capabilities: vec!["NET_ADMIN".into(), "SYS_TIME".into()],
        drop_capabilities: vec!["CHOWN".into(), "NET_RAW".into()],
        ..Default::default()
    });
    let (id, init, exec) = statuses(&pod, config).await;
    for (who, status) in [("init", &init), ("exec", &exec)] {
        for field in ["CapEff", "CapPrm", "CapBnd"] {
            let set = cap_set(status, field);
            assert_eq!(
                set,
                (default | 1 << CAP_NET_ADMIN | 1 << CAP_SYS_TIME)
                    & !(1 << CAP_CHOWN | 1 << CAP_NET_RAW),
                "{who} {field}: {set:x}"
            );
        }
    }
    let (_, err, code) = pod.exec(&id, &["chown", "1:1", "/tmp"]).await;
    assert_ne!(code, 0, "chown without CAP_CHOWN succeeded");
    assert!(err.contains("Operation not permitted"), "{err}");
    // NET_ADMIN: the container may change its (pod's) interfaces.
    pod.exec_ok(&id, &["ip", "link", "set", "lo", "mtu", "65000"])
        .await;
});

cri_tests!(privileged_container, |ctx| {
    let mut pod_config = ctx.pod_config("priv");
    pod_security(&mut pod_config).privileged = true;
    let pod = ctx.run_pod(pod_config).await;
    let mut config = sleeper("priv");
    security(&mut config).privileged = true;
    let (id, init, exec) = statuses(&pod, config).await;
    let host = std::fs::read_to_string("/proc/self/status").unwrap();
    let all = cap_set(&host, "CapBnd");
    for (who, status) in [("init", &init), ("exec", &exec)] {
        assert_eq!(cap_set(status, "CapEff"), all, "{who}: every capability");
        assert_eq!(status_field(status, "Seccomp"), "0", "{who}: no seccomp");
    }
    // The host's devices. (/sys stays read-only under runc, Go shim included: runc mounts it
    // so when the container joins a network namespace by path.)
    let devices = pod.exec_ok(&id, &["ls", "/dev"]).await;
    assert!(devices.lines().any(|d| d == "kmsg"), "{devices}");
    // A privileged container in an unprivileged pod is refused.
    let plain = ctx.run_pod(ctx.pod_config("unpriv")).await;
    let mut config = sleeper("priv");
    security(&mut config).privileged = true;
    let err = plain
        .create(config)
        .await
        .expect_err("privileged in an unprivileged pod");
    assert!(err.message().contains("privileged"), "{err:?}");
});

cri_tests!(no_new_privs, |ctx| {
    let pod = ctx.run_pod(ctx.pod_config("nnp")).await;
    let (_, init, exec) = statuses(&pod, sleeper("default")).await;
    assert_eq!(status_field(&init, "NoNewPrivs"), "0");
    assert_eq!(status_field(&exec, "NoNewPrivs"), "0");
    let mut config = sleeper("nnp");
    security(&mut config).no_new_privs = true;
    let (_, init, exec) = statuses(&pod, config).await;
    assert_eq!(status_field(&init, "NoNewPrivs"), "1", "init");
    assert_eq!(status_field(&exec, "NoNewPrivs"), "1", "exec");
});

/// kubelet's default masked and read-only paths.
const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

cri_tests!(masked_and_readonly_paths, |ctx| {
    let pod = ctx.run_pod(ctx.pod_config("masked")).await;
    let mut config = sleeper("masked");
    let sc = security(&mut config);
    sc.masked_paths = MASKED.iter().map(|s| s.to_string()).collect();
    sc.masked_paths.push("/srv/dir".into());
    sc.readonly_paths = READONLY.iter().map(|s| s.to_string()).collect();
    sc.readonly_paths.push("/srv".into());
    let c = pod.run(config).await;
    // A masked file reads empty, a masked directory is empty.
    for file in ["/proc/keys", "/proc/timer_list"] {
        let size = pod
            .exec_ok(&c, &["sh", "-c", &format!("wc -c < {file}")])
            .await;
        assert_eq!(size.trim(), "0", "{file}");
    }
    assert_eq!(pod.exec_ok(&c, &["ls", "-A", "/srv/dir"]).await, "");
    assert_eq!(pod.exec_ok(&c, &["ls", "-A", "/sys/firmware"]).await, "");
    for path in ["/proc/sys/kernel/domainname", "/srv/new-file"] {
        let (_, err, code) = pod
            .exec(&c, &["sh", "-c", &format!("echo x > {path}")])
            .await;
        assert_ne!(code, 0, "{path} is writable");
        assert!(err.contains("Read-only file system"), "{path}: {err}");
    }
    // Without the lists (as containerd takes an empty one): nothing masked.
    let open = pod.run(sleeper("open")).await;
    assert_ne!(pod.exec_ok(&open, &["ls", "-A", "/srv/dir"]).await, "");
});

cri_tests!(readonly_rootfs, |ctx| {
    let pod = ctx.run_pod(ctx.pod_config("rorootfs")).await;
    let mut config = container_config(
        "ro",
        &[
            "sh",
            "-c",
            "touch /init-was-here; echo touch=$?; exec sleep 3600",
        ],
    );
    security(&mut config).readonly_rootfs = true;
    let c = pod.run(config).await;
    pod.wait_log("ro", "touch=1", Duration::from_secs(10)).await;
    let (_, err, code) = pod.exec(&c, &["touch", "/exec-was-here"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("Read-only file system"), "{err}");
    // The pod's files (hosts, resolv.conf, /dev/shm) stay usable.
    pod.exec_ok(&c, &["sh", "-c", "echo x > /dev/shm/ok"]).await;
});

/// A Localhost profile: everything allowed but mkdir/mkdirat (EPERM).
const NO_MKDIR: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]
}"#;

cri_tests!(seccomp_for_init_and_exec, |ctx| {
    let profile = ctx
        .daemon
        .dir()
        .join(format!("{}.json", ctx.unique("no-mkdir")));
    std::fs::write(&profile, NO_MKDIR).unwrap();
    let pod = ctx.run_pod(ctx.pod_config("seccomp")).await;
    use security_profile::ProfileType;
    for (name, kind, want) in [
        ("default", ProfileType::RuntimeDefault, "2"),
        ("unconfined", ProfileType::Unconfined, "0"),
        ("localhost", ProfileType::Localhost, "2"),
    ] {
        let mut config = sleeper(name);
        let localhost = if kind == ProfileType::Localhost {
            profile.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        security(&mut config).seccomp = seccomp(kind, &localhost);
        let (id, init, exec) = statuses(&pod, config).await;
        assert_eq!(status_field(&init, "Seccomp"), want, "{name}: the init's");
        assert_eq!(status_field(&exec, "Seccomp"), want, "{name}: an exec's");
        // The profile's rule holds in an exec as in the init.
        let (_, err, code) = pod.exec(&id, &["mkdir", "/tmp/made-by-exec"]).await;
        if kind == ProfileType::Localhost {
            assert_ne!(code, 0, "{name}: mkdir in an exec was allowed");
            assert!(err.contains("Operation not permitted"), "{name}: {err}");
        } else {
            assert_eq!(code, 0, "{name}: mkdir: {err}");
        }
        // RuntimeDefault refuses what Docker's default profile refuses (unshare of a user
        // namespace needs CAP_SYS_ADMIN there), in an exec too.
        if kind == ProfileType::RuntimeDefault {
            let (_, err, code) = pod.exec(&id, &["unshare", "-U", "true"]).await;
            assert_ne!(code, 0, "unshare -U under RuntimeDefault: {err}");
        }
    }
    let mut config = container_config(
        "init-mkdir",
        &["sh", "-c", "mkdir /tmp/x; echo mkdir=$?; exec sleep 3600"],
    );
    security(&mut config).seccomp = seccomp(ProfileType::Localhost, &profile.to_string_lossy());
    pod.run(config).await;
    pod.wait_log("init-mkdir", "mkdir=1", Duration::from_secs(10))
        .await;
});
