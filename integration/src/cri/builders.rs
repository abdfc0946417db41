//! Config builders for CRI tests: containers, security contexts, resources, namespaces.
use std::collections::HashMap;

use k8s_cri::v1::*;

use super::image;

/// A container config running `cmd` in the busybox image, logging to `<name>.log`, in a PID
/// namespace of its own.
pub fn container_config(name: &str, cmd: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image::BUSYBOX.to_string(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources::default()),
            // As kubelet sends it: a PID namespace of the container's own.
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// A container that sleeps until stopped.
pub fn sleeper(name: &str) -> ContainerConfig {
    container_config(name, &["sleep", "3600"])
}

/// The security context of a container config, created if absent.
pub fn security(config: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The resources of a container config, created if absent.
pub fn resources(config: &mut ContainerConfig) -> &mut LinuxContainerResources {
    config
        .linux
        .get_or_insert_with(Default::default)
        .resources
        .get_or_insert_with(Default::default)
}

/// The pod-level security context of a pod config, created if absent.
pub fn pod_security(config: &mut PodSandboxConfig) -> &mut LinuxSandboxSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The pod-level namespace options, created if absent.
pub fn pod_namespaces(config: &mut PodSandboxConfig) -> &mut NamespaceOption {
    pod_security(config)
        .namespace_options
        .get_or_insert_with(Default::default)
}

pub fn seccomp(kind: security_profile::ProfileType, localhost: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: localhost.to_string(),
    })
}

/// The `info` JSON of a verbose status response.
pub fn verbose_info(info: &HashMap<String, String>) -> serde_json::Value {
    info.get("info")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null)
}
