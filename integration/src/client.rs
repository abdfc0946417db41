//! containerd's gRPC API for tests, namespaced, with our shim as the runtime.
use std::path::PathBuf;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::*;
use containerd_client::tonic::{Code, Request, Status};
use containerd_client::with_namespace;
use prost_types::Any;
use protobuf::Message;
use serde_json::Value;

use crate::fifo::{self, Reader};
use crate::{Binary, Containerd, Shim};

pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

pub struct Client {
    pub(crate) raw: containerd_client::Client,
    pub(crate) namespace: String,
    pub shim: Shim,
    pub binary: Binary,
    io_dir: tempfile::TempDir,
}

/// The client's ends of a process's stdio.
pub struct TaskIo {
    pub stdin: Option<PathBuf>,
    pub stdout: Option<Reader>,
    pub stderr: Option<Reader>,
    pub paths: [String; 3],
}

impl TaskIo {
    pub fn stdout_text(&mut self) -> String {
        self.stdout.take().map(Reader::text).unwrap_or_default()
    }
}

/// The runc options every request of a test carries: BinaryName selects runc or crun.
pub type Options = protos::shim::oci::Options;

pub fn options_any(options: &Options) -> Any {
    Any {
        type_url: protos::type_urls::RUNC_OPTIONS.to_string(),
        value: options.write_to_bytes().expect("encode options"),
    }
}

/// CRI's `runtimeoptions.v1.Options`, as containerd's CRI plugin sends it for every runtime
/// type but `io.containerd.runc.v2`: a TOML config of runc option keys, by path or inline.
pub fn runtime_config_any(config_path: &str, config_body: &[u8]) -> Any {
    let options = protos::runtimeoptions::Options {
        config_path: config_path.to_string(),
        config_body: config_body.to_vec(),
        ..Default::default()
    };
    Any {
        type_url: protos::type_urls::RUNTIME_OPTIONS.to_string(),
        value: options.write_to_bytes().expect("encode runtime options"),
    }
}

impl Client {
    pub async fn new(containerd: &Containerd, shim: Shim, binary: Binary) -> Self {
        let raw = containerd_client::Client::from_path(containerd.socket())
            .await
            .expect("connect to containerd");
        Self {
            raw,
            namespace: containerd.namespace.clone(),
            shim,
            binary,
            io_dir: tempfile::tempdir().expect("io dir"),
        }
    }

    pub fn raw(&self) -> &containerd_client::Client {
        &self.raw
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn options(&self) -> Options {
        Options {
            binary_name: self.binary.name().to_string(),
            ..Default::default()
        }
    }

    pub async fn create_container(&self, id: &str, spec: &Value) -> Result<(), Status> {
        self.create_container_with(id, spec, Some(options_any(&self.options())))
            .await
    }

    pub async fn create_container_with(
        &self,
        id: &str,
        spec: &Value,
        options: Option<Any>,
    ) -> Result<(), Status> {
        self.create_container_as(id, spec, self.shim.runtime_type(), options)
            .await
    }

    /// Create with an explicit runtime type.
    pub async fn create_container_as(
        &self,
        id: &str,
        spec: &Value,
        runtime_type: &str,
        options: Option<Any>,
    ) -> Result<(), Status> {
        // Each container its own cgroup, as containerd's clients set it (`/<namespace>/<id>`):
        // a shared one would let one container's forced delete kill the others.
        let mut spec = spec.clone();
        spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/{}/{id}", self.namespace));
        let container = Container {
            id: id.to_string(),
            runtime: Some(Runtime {
                name: runtime_type.to_string(),
                options,
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: serde_json::to_vec(&spec).unwrap(),
            }),
            ..Default::default()
        };
        let req = CreateContainerRequest {
            container: Some(container),
        };
        self.raw
            .containers()
            .create(with_namespace!(req, self.namespace))
            .await
            .map(drop)
    }

    /// Makes fifos for a process: stdout and stderr always, stdin if asked.
    pub fn io(&self, name: &str, stdin: bool) -> TaskIo {
        let dir = self.io_dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let stdin = stdin.then(|| fifo::make(&dir, "stdin"));
        let out = fifo::make(&dir, "stdout");
        let err = fifo::make(&dir, "stderr");
        let paths = [
            stdin
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            out.to_string_lossy().into_owned(),
            err.to_string_lossy().into_owned(),
        ];
        TaskIo {
            stdin,
            stdout: Some(Reader::open(&out)),
            stderr: Some(Reader::open(&err)),
            paths,
        }
    }

    pub async fn create_task(
        &self,
        id: &str,
        io: Option<&TaskIo>,
        terminal: bool,
    ) -> Result<u32, Status> {
        self.create_task_with(id, io, terminal, Some(options_any(&self.options())))
            .await
    }

    /// Create with explicit task options (containerd's clients send the runtime options here).
    pub async fn create_task_with(
        &self,
        id: &str,
        io: Option<&TaskIo>,
        terminal: bool,
        options: Option<Any>,
    ) -> Result<u32, Status> {
        self.send_create(task_request(id, io, terminal, options))
            .await
    }

    pub(crate) async fn send_create(&self, req: CreateTaskRequest) -> Result<u32, Status> {
        let resp = self
            .raw
            .tasks()
            .create(with_namespace!(req, self.namespace))
            .await?;
        Ok(resp.into_inner().pid)
    }

    /// Container + task with stdout/stderr fifos, started.
    pub async fn run(&self, id: &str, spec: &Value) -> TaskIo {
        self.create_container(id, spec)
            .await
            .expect("create container");
        let io = self.io(id, false);
        self.create_task(id, Some(&io), false)
            .await
            .expect("create task");
        self.start(id, "").await.expect("start task");
        io
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32, Status> {
        let req = StartRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        let resp = self
            .raw
            .tasks()
            .start(with_namespace!(req, self.namespace))
            .await?;
        Ok(resp.into_inner().pid)
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<u32, Status> {
        let req = WaitRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        let resp = self
            .raw
            .tasks()
            .wait(with_namespace!(req, self.namespace))
            .await?;
        Ok(resp.into_inner().exit_status)
    }

    pub async fn kill(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), Status> {
        let req = KillRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
        };
        self.raw
            .tasks()
            .kill(with_namespace!(req, self.namespace))
            .await
            .map(drop)
    }

    pub async fn delete_task(&self, id: &str) -> Result<u32, Status> {
        let req = DeleteTaskRequest {
            container_id: id.to_string(),
        };
        let resp = self
            .raw
            .tasks()
            .delete(with_namespace!(req, self.namespace))
            .await?;
        Ok(resp.into_inner().exit_status)
    }

    pub async fn delete_process(&self, id: &str, exec_id: &str) -> Result<u32, Status> {
        let req = DeleteProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        let resp = self
            .raw
            .tasks()
            .delete_process(with_namespace!(req, self.namespace))
            .await?;
        Ok(resp.into_inner().exit_status)
    }

    pub async fn delete_container(&self, id: &str) -> Result<(), Status> {
        let req = DeleteContainerRequest { id: id.to_string() };
        self.raw
            .containers()
            .delete(with_namespace!(req, self.namespace))
            .await
            .map(drop)
    }

    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &Value,
        io: Option<&TaskIo>,
        terminal: bool,
    ) -> Result<(), Status> {
        let paths = io.map(|i| i.paths.clone()).unwrap_or_default();
        let req = ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin: paths[0].clone(),
            stdout: paths[1].clone(),
            stderr: if terminal {
                String::new()
            } else {
                paths[2].clone()
            },
            terminal,
            spec: Some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: serde_json::to_vec(process).unwrap(),
            }),
        };
        self.raw
            .tasks()
            .exec(with_namespace!(req, self.namespace))
            .await
            .map(drop)
    }

    /// Exec + start + wait; returns the exit status and stdout.
    pub async fn exec_run(&self, id: &str, exec_id: &str, args: &[&str]) -> (u32, String) {
        let mut io = self.io(&format!("{id}-{exec_id}"), false);
        self.exec(
            id,
            exec_id,
            &crate::spec::process(args, false),
            Some(&io),
            false,
        )
        .await
        .expect("exec");
        self.start(id, exec_id).await.expect("start exec");
        let status = self.wait(id, exec_id).await.expect("wait exec");
        let out = io.stdout_text();
        self.delete_process(id, exec_id).await.expect("delete exec");
        (status, out)
    }

    /// Kills, deletes the task and the container; ignores what is already gone.
    pub async fn remove(&self, id: &str) {
        let _ = self.kill(id, "", libc::SIGKILL as u32, true).await;
        let _ = self.wait(id, "").await;
        let _ = self.delete_task(id).await;
        let _ = self.delete_container(id).await;
    }
}

pub(crate) fn task_request(
    id: &str,
    io: Option<&TaskIo>,
    terminal: bool,
    options: Option<Any>,
) -> CreateTaskRequest {
    let paths = io.map(|i| i.paths.clone()).unwrap_or_default();
    CreateTaskRequest {
        container_id: id.to_string(),
        stdin: paths[0].clone(),
        stdout: paths[1].clone(),
        // A terminal merges stderr into stdout.
        stderr: if terminal {
            String::new()
        } else {
            paths[2].clone()
        },
        terminal,
        options,
        ..Default::default()
    }
}

/// Asserts a gRPC failure's code and that its message mentions `needle`.
pub fn assert_code<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, needle: &str) -> Status {
    let s = r.expect_err(&format!("expected {code:?} mentioning {needle:?}"));
    assert_eq!(s.code(), code, "unexpected code; message: {}", s.message());
    assert!(
        s.message().contains(needle),
        "message {:?} should mention {needle:?}",
        s.message()
    );
    s
}

/// Zombie children of `pid`.
pub fn zombie_children(pid: u32) -> Vec<u32> {
    let mut zombies = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return zombies;
    };
    for p in procs.flatten() {
        let Ok(child) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state ppid ...
        let Some(rest) = stat.rsplit(") ").next() else {
            continue;
        };
        let mut f = rest.split(' ');
        let (state, ppid) = (f.next(), f.next().and_then(|p| p.parse::<u32>().ok()));
        if state == Some("Z") && ppid == Some(pid) {
            zombies.push(child);
        }
    }
    zombies
}

impl Client {
    /// Create with `rootfs` as the mounts the shim makes at the bundle's `rootfs` (as
    /// containerd passes a snapshot's); the spec's root should then be `rootfs`.
    pub async fn create_task_with_rootfs(
        &self,
        id: &str,
        io: Option<&TaskIo>,
        rootfs: Vec<containerd_client::types::Mount>,
    ) -> Result<u32, Status> {
        let mut req = task_request(id, io, false, Some(options_any(&self.options())));
        req.rootfs = rootfs;
        self.send_create(req).await
    }
}
