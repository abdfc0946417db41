//! CRI: pod sandboxes on every runtime handler: lifecycle and one shim per pod, the pod
//! network (another pod's port over the bridge) and the host's, namespaces shared in a pod or
//! with the host, DNS config, hostname and hosts files, sysctls.
use std::time::{Duration, Instant};

use integration::cri::api::*;
use integration::cri::client::*;
use integration::cri::{image, tonic};
use integration::cri_tests;

cri_tests!(pod_lifecycle_one_shim_per_pod, |ctx| {
    let config = ctx.pod_config("life");
    let name = config.metadata.clone().unwrap().name;
    let pod = ctx.run_pod(config).await;

    let resp = ctx.cri.pod_status(&pod.id).await.expect("PodSandboxStatus");
    let status = resp.status.clone().expect("status");
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
    assert_eq!(status.metadata.as_ref().unwrap().name, name);
    assert!(status.created_at > 0, "created_at: {status:?}");
    let info = verbose_info(&resp.info);
    // 1.x names the handler in the verbose info, 2.x in the status.
    let handler = info["runtimeHandler"]
        .as_str()
        .unwrap_or(&status.runtime_handler);
    assert_eq!(handler, ctx.handler.name(), "info: {info}");
    assert_eq!(
        info["runtimeType"],
        ctx.handler.runtime_type(),
        "info: {info}"
    );
    assert!(ctx
        .cri
        .list_pods()
        .await
        .unwrap()
        .iter()
        .any(|p| p.id == pod.id));

    // Two containers: the pause container and both share one shim process.
    let a = pod.run(sleeper("a")).await;
    let b = pod.run(sleeper("b")).await;
    let sandbox_pid = pod.sandbox_pid().await;
    let shim = ppid(sandbox_pid);
    for c in [&a, &b] {
        let pid = pod.container_pid(c).await;
        assert_eq!(
            ppid(pid),
            shim,
            "container {c} (pid {pid}) is not a child of the pod's shim {shim}"
        );
    }
    assert_eq!(
        exe_name(shim),
        ctx.handler.shim_binary(),
        "the pod's shim (pid {shim}) runs another program"
    );
    // The OCI runtime the handler names did the work: runc keeps `state.json`, crun `status`.
    if let Some(runtime) = ctx.handler.oci_runtime() {
        let state = ctx
            .daemon
            .seen_from_here(std::path::Path::new("/run/containerd/runc/k8s.io"))
            .join(&a);
        let file = if runtime == "crun" {
            "status"
        } else {
            "state.json"
        };
        assert!(
            state.join(file).exists(),
            "no {file} of {runtime} in {}: {:?}",
            state.display(),
            std::fs::read_dir(&state)
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
    }

    ctx.cri.stop_pod(&pod.id).await.expect("StopPodSandbox");
    let resp = ctx.cri.pod_status(&pod.id).await.expect("PodSandboxStatus");
    assert_eq!(
        resp.status.unwrap().state,
        PodSandboxState::SandboxNotready as i32
    );
    for c in [&a, &b] {
        let s = pod.status(c).await;
        assert_eq!(s.state, ContainerState::ContainerExited as i32, "{s:?}");
    }
    ctx.cri.remove_pod(&pod.id).await.expect("RemovePodSandbox");
    let gone = ctx.cri.pod_status(&pod.id).await;
    assert_eq!(
        gone.err().map(|e| e.code()),
        Some(tonic::Code::NotFound),
        "the removed pod is still known"
    );
    wait_gone(shim, "the pod's shim").await;
    wait_gone(sandbox_pid, "the pause process").await;
});

cri_tests!(pod_network_reaches_another_pods_port, |ctx| {
    let server = ctx.run_pod(ctx.pod_config("srv")).await;
    let client = ctx.run_pod(ctx.pod_config("cli")).await;
    server
        .run(container_config(
            "httpd",
            &[
                "sh",
                "-c",
                "mkdir -p /tmp/www && echo hello-over-the-bridge > /tmp/www/index.html && \
                 exec httpd -f -p 8080 -h /tmp/www",
            ],
        ))
        .await;
    let c = client.run(sleeper("wget")).await;
    let ip = server.ip().await;
    assert!(
        ip.starts_with("10.88."),
        "pod IP {ip:?} not in the pod subnet"
    );
    assert_ne!(ip, client.ip().await, "two pods with one IP");
    let url = format!("http://{ip}:8080/");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // busybox-static's wget crashes (SIGSEGV) in this build; nc speaks HTTP/1.0 well enough.
        let (out, err, code) = client
            .exec(
                &c,
                &[
                    "sh",
                    "-c",
                    &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 8080"),
                ],
            )
            .await;
        if code == 0 && out.contains("hello-over-the-bridge") {
            assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "GET {url} from another pod: exit {code}: {out}{err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each pod its own shim.
    assert_ne!(
        ppid(server.sandbox_pid().await),
        ppid(client.sandbox_pid().await)
    );
    // The pod's own network namespace, not containerd's.
    let (out, _, _) = client.exec(&c, &["readlink", "/proc/self/ns/net"]).await;
    assert_ne!(out.trim(), ns_link(&ctx.daemon.pid().to_string(), "net"));
});

cri_tests!(host_network_pid_and_ipc, |ctx| {
    if let Some(reason) = ctx.host_network_refusal() {
        integration::runtime::skip(&reason);
        return;
    }
    let mut config = ctx.pod_config("hostns");
    // As kubelet: no hostname of the pod's own without a UTS namespace of its own.
    config.hostname.clear();
    let ns = pod_namespaces(&mut config);
    ns.network = NamespaceMode::Node as i32;
    ns.pid = NamespaceMode::Node as i32;
    ns.ipc = NamespaceMode::Node as i32;
    let pod = ctx.run_pod(config).await;
    let mut app = sleeper("app");
    security(&mut app).namespace_options = Some(NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Node as i32,
        ipc: NamespaceMode::Node as i32,
        ..Default::default()
    });
    let c = pod.run(app).await;
    // "Host" is containerd's: its network namespace is the one the suite made, and its PID
    // namespace too with INTEGRATION_CRI_PIDNS=1.
    let daemon = ctx.daemon.pid().to_string();
    for kind in ["net", "pid", "ipc"] {
        let host = ns_link(&daemon, kind);
        let (out, err, code) = pod
            .exec(&c, &["readlink", &format!("/proc/self/ns/{kind}")])
            .await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.trim(), host, "the container's {kind} namespace");
    }
    // With the host's PID namespace the container sees containerd.
    let pid = ctx.daemon.pid_in_namespace();
    assert_eq!(
        pid != ctx.daemon.pid(),
        integration::cri::pidns::requested(),
        "containerd's pid {pid} in its namespace"
    );
    let (out, _, _) = pod
        .exec(&c, &["cat", &format!("/proc/{pid}/cmdline")])
        .await;
    assert!(out.contains("containerd"), "{out:?}");
});

cri_tests!(shared_pid_namespace_in_a_pod, |ctx| {
    let mut config = ctx.pod_config("sharedpid");
    pod_namespaces(&mut config).pid = NamespaceMode::Pod as i32;
    let pod = ctx.run_pod(config).await;
    let shared = |name: &str| {
        let mut c = sleeper(name);
        security(&mut c)
            .namespace_options
            .get_or_insert_with(Default::default)
            .pid = NamespaceMode::Pod as i32;
        c
    };
    let a = pod.run(shared("a")).await;
    let b = pod.run(shared("b")).await;
    // pid 1 is the pause program (without one: the shim's namespace holder); each container
    // sees the other's processes.
    let init = pod.exec_ok(&a, &["cat", "/proc/1/cmdline"]).await;
    if ctx.pauseless() {
        assert_eq!(init.trim_end_matches('\0'), "pod-ns-holder");
    } else {
        assert_eq!(init, "/pause\0");
    }
    let ps = pod.exec_ok(&a, &["ps", "-o", "pid,args"]).await;
    assert!(
        ps.matches("sleep 3600").count() >= 2,
        "container a should see both sleeps: {ps}"
    );
    assert_eq!(
        pod.exec_ok(&a, &["readlink", "/proc/self/ns/pid"]).await,
        pod.exec_ok(&b, &["readlink", "/proc/self/ns/pid"]).await
    );
    // A container with its own PID namespace beside them: pid 1 is its own command.
    let own = pod.run(sleeper("own")).await;
    assert_eq!(
        pod.exec_ok(&own, &["cat", "/proc/1/cmdline"]).await,
        "sleep\x003600\0"
    );
});

cri_tests!(dns_hostname_and_hosts, |ctx| {
    let mut config = ctx.pod_config("dns");
    config.hostname = format!("host-{}", ctx.handler.name());
    config.dns_config = Some(DnsConfig {
        servers: vec!["127.0.0.53".into()],
        searches: vec!["cri-it.example".into(), "svc.cri-it.example".into()],
        options: vec!["ndots:3".into()],
    });
    let pod = ctx.run_pod(config.clone()).await;
    let c = pod.run(sleeper("app")).await;
    assert_eq!(pod.exec_ok(&c, &["hostname"]).await.trim(), config.hostname);
    assert_eq!(
        pod.exec_ok(&c, &["cat", "/etc/hostname"]).await.trim(),
        config.hostname
    );
    let resolv = pod.exec_ok(&c, &["cat", "/etc/resolv.conf"]).await;
    for want in [
        "nameserver 127.0.0.53",
        "search cri-it.example svc.cri-it.example",
        "options ndots:3",
    ] {
        assert!(resolv.contains(want), "{want:?} not in {resolv:?}");
    }
    // containerd copies the node's /etc/hosts for the pod.
    let hosts = pod.exec_ok(&c, &["cat", "/etc/hosts"]).await;
    assert_eq!(
        hosts,
        std::fs::read_to_string("/etc/hosts").unwrap(),
        "/etc/hosts"
    );
    let mounts = pod.exec_ok(&c, &["cat", "/proc/self/mountinfo"]).await;
    for file in ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"] {
        assert!(
            mounts.contains(&format!(" {file} ")),
            "{file} is not a mount: {mounts}"
        );
    }
});

cri_tests!(pod_sysctls, |ctx| {
    let mut config = ctx.pod_config("sysctl");
    let linux = config.linux.as_mut().unwrap();
    linux
        .sysctls
        .insert("net.ipv4.ip_local_port_range".into(), "40000 50000".into());
    linux
        .sysctls
        .insert("kernel.shm_rmid_forced".into(), "1".into());
    let pod = ctx.run_pod(config).await;
    let c = pod.run(sleeper("app")).await;
    let range = pod
        .exec_ok(&c, &["cat", "/proc/sys/net/ipv4/ip_local_port_range"])
        .await;
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["40000", "50000"]
    );
    assert_eq!(
        pod.exec_ok(&c, &["cat", "/proc/sys/kernel/shm_rmid_forced"])
            .await
            .trim(),
        "1"
    );
});

cri_tests!(pause_image_without_path, |ctx| {
    // A sandbox image whose config sets no environment (images built by hand or by some
    // builders; Kubernetes' own pause image sets PATH): containerd adds a default PATH to
    // every container's spec but not to the sandbox's, so the pause container's process has
    // no PATH at all. Its entrypoint is absolute and needs none: runc and crun run it. A
    // containerd of its own, with that image as its pause image.
    let daemon = integration::cri::CriDaemon::private(image::NO_ENV);
    let cri = integration::cri::Cri::connect(&daemon.socket()).await;
    let mut config = ctx.pod_config("noenv");
    config.linux.as_mut().unwrap().cgroup_parent = format!("{}/noenv", daemon.cgroup_parent());
    let result = cri.run_pod_sandbox(config, ctx.handler.name()).await;
    if let Ok(id) = &result {
        let status = cri.pod_status(id).await.expect("PodSandboxStatus");
        assert_eq!(
            status.status.unwrap().state,
            PodSandboxState::SandboxReady as i32
        );
        cri.stop_pod(id).await.expect("StopPodSandbox");
        cri.remove_pod(id).await.expect("RemovePodSandbox");
    }
    if let Err(e) = result {
        panic!(
            "RunPodSandbox with a pause image without PATH on {}: {e:?}",
            ctx.handler.name()
        );
    }
});

/// The access mode of `pid`'s fd `fd` (`flags:` of /proc/PID/fdinfo/FD, octal).
fn access_mode(pid: u32, fd: u32) -> u32 {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let flags = status_field(&info, "flags");
    u32::from_str_radix(&flags, 8).expect("octal flags") & 0o3
}

cri_tests!(stdio_without_a_stream_is_a_writable_dev_null, |ctx| {
    // The pause container has no stdio at all, a container without stdin nothing on fd 0:
    // runc puts the container's /dev/null there, read-write (libcontainer 0.7 read-only).
    let pod = ctx.run_pod(ctx.pod_config("devnull")).await;
    let c = pod
        .run(container_config(
            "app",
            &[
                "sh",
                "-c",
                "if echo x >&0; then echo stdin=writable; else echo stdin=read-only; fi; \
                 exec sleep 3600",
            ],
        ))
        .await;
    let log = pod.wait_log("app", "stdin=", Duration::from_secs(10)).await;
    assert!(log.contains("stdin=writable"), "{log}");
    let pause = pod.sandbox_pid().await;
    if ctx.pauseless() {
        // Without a pause container the pod's pid is the shim's namespace holder, which keeps
        // no fd at all (none of the shim's may outlive it).
        let fds = std::fs::read_dir(format!("/proc/{pause}/fd"))
            .unwrap()
            .count();
        assert_eq!(fds, 0, "the pod's namespace holder keeps fds");
    } else {
        for fd in 0..3 {
            let target = std::fs::read_link(format!("/proc/{pause}/fd/{fd}")).unwrap();
            assert_eq!(target, std::path::Path::new("/dev/null"), "pause fd {fd}");
            assert_eq!(access_mode(pause, fd), 2, "pause fd {fd} is not read-write");
        }
    }
    assert_eq!(
        access_mode(pod.container_pid(&c).await, 0),
        2,
        "app's stdin"
    );
});
