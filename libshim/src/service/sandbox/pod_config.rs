//! The part of CRI's `PodSandboxConfig` a sandboxer acts on, read from CreateSandbox's options.
//!
//! containerd's CRI sends the whole `runtime.v1.PodSandboxConfig` as the options Any. Only a
//! few fields matter here, so they are read by field number (the numbers are CRI's, stable
//! since v1alpha2) rather than by pulling the Kubernetes API types into every shim.
use std::collections::BTreeMap;

use protobuf::rt::WireType;
use protobuf::CodedInputStream;

use crate::error::{Error, Result};

/// CRI's NamespaceMode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NamespaceMode {
    #[default]
    Pod,
    Container,
    Node,
    Target,
}

impl NamespaceMode {
    fn from_wire(v: u64) -> Self {
        match v {
            1 => Self::Container,
            2 => Self::Node,
            3 => Self::Target,
            _ => Self::Pod,
        }
    }
}

/// What the sandbox is asked to provide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodConfig {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub dns_servers: Vec<String>,
    pub dns_searches: Vec<String>,
    pub dns_options: Vec<String>,
    pub cgroup_parent: String,
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
    /// A user namespace for the pod (`hostUsers: false`).
    pub user_namespace: bool,
    pub sysctls: BTreeMap<String, String>,
}

impl PodConfig {
    /// Decodes the options Any's value (a CRI PodSandboxConfig); `type_url` names it in errors.
    pub fn decode(type_url: &str, value: &[u8]) -> Result<Self> {
        let mut pod = PodConfig::default();
        let bad = |e: protobuf::Error| {
            Error::InvalidArgument(format!(
                "CreateSandbox options ({type_url}) are not a CRI PodSandboxConfig: {e}"
            ))
        };
        for_each_field(value, &mut |field, wire| {
            match (field, wire) {
                (1, Field::Bytes(b)) => for_each_field(b, &mut |f, w| {
                    match (f, w) {
                        (1, Field::Bytes(s)) => pod.name = text(s),
                        (3, Field::Bytes(s)) => pod.namespace = text(s),
                        _ => {}
                    }
                    Ok(())
                })?,
                (2, Field::Bytes(s)) => pod.hostname = text(s),
                (4, Field::Bytes(b)) => for_each_field(b, &mut |f, w| {
                    if let Field::Bytes(s) = w {
                        match f {
                            1 => pod.dns_servers.push(text(s)),
                            2 => pod.dns_searches.push(text(s)),
                            3 => pod.dns_options.push(text(s)),
                            _ => {}
                        }
                    }
                    Ok(())
                })?,
                (8, Field::Bytes(b)) => pod.read_linux(b)?,
                _ => {}
            }
            Ok(())
        })
        .map_err(bad)?;
        Ok(pod)
    }

    /// LinuxPodSandboxConfig: cgroup_parent = 1, security_context = 2, sysctls = 3.
    fn read_linux(&mut self, b: &[u8]) -> protobuf::Result<()> {
        for_each_field(b, &mut |f, w| {
            match (f, w) {
                (1, Field::Bytes(s)) => self.cgroup_parent = text(s),
                (2, Field::Bytes(ctx)) => for_each_field(ctx, &mut |f, w| {
                    if let (1, Field::Bytes(ns)) = (f, w) {
                        self.read_namespaces(ns)?;
                    }
                    Ok(())
                })?,
                (3, Field::Bytes(entry)) => {
                    let (mut key, mut value) = (String::new(), String::new());
                    for_each_field(entry, &mut |f, w| {
                        match (f, w) {
                            (1, Field::Bytes(s)) => key = text(s),
                            (2, Field::Bytes(s)) => value = text(s),
                            _ => {}
                        }
                        Ok(())
                    })?;
                    self.sysctls.insert(key, value);
                }
                _ => {}
            }
            Ok(())
        })
    }

    /// NamespaceOption: network = 1, pid = 2, ipc = 3, userns_options = 5 (mode = 1).
    fn read_namespaces(&mut self, b: &[u8]) -> protobuf::Result<()> {
        for_each_field(b, &mut |f, w| {
            match (f, w) {
                (1, Field::Varint(v)) => self.network = NamespaceMode::from_wire(v),
                (2, Field::Varint(v)) => self.pid = NamespaceMode::from_wire(v),
                (3, Field::Varint(v)) => self.ipc = NamespaceMode::from_wire(v),
                (5, Field::Bytes(userns)) => {
                    // A present UserNamespace with mode POD (0) asks for a user namespace;
                    // NODE (2) is the host's.
                    let mut mode = 0;
                    for_each_field(userns, &mut |f, w| {
                        if let (1, Field::Varint(v)) = (f, w) {
                            mode = v;
                        }
                        Ok(())
                    })?;
                    self.user_namespace = mode == 0;
                }
                _ => {}
            }
            Ok(())
        })
    }
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Calls `f` with each top-level field of the message in `buf`.
fn for_each_field<'a>(
    buf: &'a [u8],
    f: &mut dyn FnMut(u32, Field<'a>) -> protobuf::Result<()>,
) -> protobuf::Result<()> {
    let mut input = CodedInputStream::from_bytes(buf);
    while !input.eof()? {
        let tag = input.read_raw_varint32()?;
        let (field, wire) = (tag >> 3, tag & 7);
        match WireType::new(wire) {
            Some(WireType::Varint) => f(field, Field::Varint(input.read_raw_varint64()?))?,
            Some(WireType::LengthDelimited) => {
                let len = input.read_raw_varint64()? as usize;
                let start = input.pos() as usize;
                let end = start.checked_add(len).filter(|e| *e <= buf.len()).ok_or(
                    protobuf::Error::from(std::io::Error::other(
                        "field runs past the end of the message",
                    )),
                )?;
                input.skip_raw_bytes(len as u32)?;
                f(field, Field::Bytes(&buf[start..end]))?;
            }
            Some(WireType::Fixed64) => {
                input.read_raw_little_endian64()?;
                f(field, Field::Other)?;
            }
            Some(WireType::Fixed32) => {
                input.read_raw_little_endian32()?;
                f(field, Field::Other)?;
            }
            _ => {
                return Err(protobuf::Error::from(std::io::Error::other(format!(
                    "unsupported wire type {wire} for field {field}"
                ))))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use protobuf::CodedOutputStream;

    use super::*;

    fn bytes_field(out: &mut Vec<u8>, field: u32, value: &[u8]) {
        let mut os = CodedOutputStream::vec(out);
        os.write_bytes(field, value).unwrap();
        os.flush().unwrap();
    }

    fn varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
        let mut os = CodedOutputStream::vec(out);
        os.write_uint64(field, value).unwrap();
        os.flush().unwrap();
    }

    #[test]
    fn reads_what_the_sandbox_acts_on() {
        let mut metadata = Vec::new();
        bytes_field(&mut metadata, 1, b"web");
        bytes_field(&mut metadata, 3, b"default");
        let mut dns = Vec::new();
        bytes_field(&mut dns, 1, b"10.0.0.10");
        bytes_field(&mut dns, 2, b"svc.cluster.local");
        bytes_field(&mut dns, 3, b"ndots:5");
        let mut ns = Vec::new();
        varint_field(&mut ns, 1, 2);
        varint_field(&mut ns, 2, 1);
        let mut ctx = Vec::new();
        bytes_field(&mut ctx, 1, &ns);
        let mut sysctl = Vec::new();
        bytes_field(&mut sysctl, 1, b"net.ipv4.ip_forward");
        bytes_field(&mut sysctl, 2, b"1");
        let mut linux = Vec::new();
        bytes_field(&mut linux, 1, b"/kubepods/pod1");
        bytes_field(&mut linux, 2, &ctx);
        bytes_field(&mut linux, 3, &sysctl);
        let mut config = Vec::new();
        bytes_field(&mut config, 1, &metadata);
        bytes_field(&mut config, 2, b"web-0");
        bytes_field(&mut config, 3, b"/var/log/pods/x");
        bytes_field(&mut config, 4, &dns);
        bytes_field(&mut config, 8, &linux);

        let pod = PodConfig::decode("runtime.v1.PodSandboxConfig", &config).unwrap();
        assert_eq!(pod.name, "web");
        assert_eq!(pod.namespace, "default");
        assert_eq!(pod.hostname, "web-0");
        assert_eq!(pod.dns_servers, ["10.0.0.10"]);
        assert_eq!(pod.dns_searches, ["svc.cluster.local"]);
        assert_eq!(pod.dns_options, ["ndots:5"]);
        assert_eq!(pod.cgroup_parent, "/kubepods/pod1");
        assert_eq!(pod.network, NamespaceMode::Node);
        assert_eq!(pod.pid, NamespaceMode::Container);
        assert_eq!(pod.ipc, NamespaceMode::Pod);
        assert!(!pod.user_namespace);
        assert_eq!(pod.sysctls["net.ipv4.ip_forward"], "1");
    }

    #[test]
    fn garbage_is_refused_with_the_type_named() {
        let err = PodConfig::decode("x.Y", &[0x0a, 0x7f]).unwrap_err();
        assert!(err.to_string().contains("x.Y"), "{err}");
    }
}
