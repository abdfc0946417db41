//! The OCI runtime features document containerd 2 asks for with `-info`, describing what
//! libcontainer as built into this shim supports (the shape of `runc features`).
pub fn document() -> Vec<u8> {
    let doc = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.1",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer",
                  "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "bind", "rbind", "nosuid", "nodev", "noexec", "relatime",
                         "private", "rprivate", "shared", "rshared", "slave", "rslave",
                         "idmap", "ridmap",
                         // Recursive attributes, set by libcontainer with mount_setattr
                         // (AT_RECURSIVE) on the bind's clone; CRI reads "rro" for kubelet's
                         // recursive read-only volumes.
                         "rro", "rrw", "rnosuid", "rsuid", "rnodev", "rdev", "rnoexec", "rexec",
                         "rnodiratime", "rdiratime", "rrelatime", "rnorelatime", "rnoatime",
                         "ratime", "rstrictatime", "rnostrictatime", "rnosymfollow",
                         "rsymfollow"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts", "time"],
            "cgroup": { "v1": true, "v2": true, "systemd": true, "systemdUser": false },
            // libcontainer 0.7 refuses idmapped mounts; the shim makes them itself
            // (idmapped.rs), where the kernel can. containerd 2 reads this entry before it
            // creates a task with one, and CRI before it accepts a user-namespaced pod.
            "mountExtensions": { "idmap": {
                "enabled": libshim::mount::idmap::kernel_supported()
            } },
            "seccomp": { "enabled": true },
            "apparmor": { "enabled": true },
            "selinux": { "enabled": true },
        },
        "annotations": { "org.opencontainers.runtime-spec.features.runtime": "libcontainer 0.7" },
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn idmapped_mounts_are_reported_as_the_kernel_allows() {
        let doc: serde_json::Value = serde_json::from_slice(&super::document()).unwrap();
        assert_eq!(
            doc["linux"]["mountExtensions"]["idmap"]["enabled"],
            libshim::mount::idmap::kernel_supported()
        );
        // Every kernel this project runs on in CI has it (5.12+).
        assert!(libshim::mount::idmap::kernel_supported());
    }
}
