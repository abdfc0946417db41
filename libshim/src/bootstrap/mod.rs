//! The shim binary's entry point: `start` (spawn or reuse the serving process), `delete`
//! (clean up after a dead shim), `-v`, and serving the task API.
mod address;
mod args;
mod fork;
mod logger;
pub(crate) mod protocol;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use protobuf::{Message, MessageField};
use protos::api::DeleteResponse;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

pub use address::{group_of, socket_path, GROUP_ANNOTATIONS};
pub use args::Args;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::events::{timestamp, Publisher};
use crate::options::RuntimeOptions;
use crate::process::exit_record;
use crate::service::{ttrpc_services, validate_namespace, SandboxService, TaskService};
use crate::{mount, reaper};

/// What a shim binary is called, and the runtime type containerd knows it by.
#[derive(Debug, Clone, Copy)]
pub struct ShimName {
    pub binary: &'static str,
    pub runtime_type: &'static str,
}

/// Runs the shim: parses the command line and does what it asks. Never returns.
pub fn run<B: Backend, F: FnOnce() -> B>(name: ShimName, make_backend: F) -> ! {
    let binary_name = name.binary;
    let args = match Args::parse(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => fail(binary_name, &e),
    };
    if args.version {
        println!("{binary_name}:");
        println!("  Version:  {}", env!("CARGO_PKG_VERSION"));
        println!("  Backend:  {}", make_backend().name());
        std::process::exit(0);
    }
    if args.info {
        match info(name, make_backend()) {
            Ok(()) => std::process::exit(0),
            Err(e) => fail(binary_name, &e.to_string()),
        }
    }
    let result = match args.action.as_deref() {
        Some("start") => match start(&args) {
            Ok(Some(server)) => server.run(name, make_backend()),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        },
        Some("delete") => delete(&args, make_backend()),
        Some(other) => Err(Error::InvalidArgument(format!("unknown action {other:?}"))),
        None => serve(&args, name, make_backend()),
    };
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => fail(binary_name, &e.to_string()),
    }
}

fn fail(binary_name: &str, msg: &str) -> ! {
    log::error!("{msg}");
    eprintln!("{binary_name}: {msg}");
    std::process::exit(1)
}

/// `-info` (containerd 2): the runtime options from stdin in, a `RuntimeInfo` out.
fn info<B: Backend>(name: ShimName, backend: B) -> Result<()> {
    use protobuf::well_known_types::any::Any;
    use protos::types::introspection::{RuntimeInfo, RuntimeVersion};
    const FEATURES_TYPE: &str =
        "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

    let mut input = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut input);
    let options = RuntimeOptions::from_any_bytes(&input)?;
    let features = runtime()?.block_on(async {
        let _exits = reaper::start().map_err(|e| Error::io("watch child exits", e))?;
        Ok::<_, Error>(backend.features(&options).await)
    })?;
    let info = RuntimeInfo {
        name: name.runtime_type.to_string(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        }),
        options: Any::parse_from_bytes(&input)
            .ok()
            .filter(|a| !a.type_url.is_empty())
            .into(),
        features: features
            .map(|value| Any {
                type_url: FEATURES_TYPE.to_string(),
                value,
                ..Default::default()
            })
            .into(),
        ..Default::default()
    };
    let bytes = info
        .write_to_bytes()
        .map_err(|e| Error::io("encode runtime info", std::io::Error::other(e)))?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(|e| Error::io("print runtime info", e))
}

fn require(args: &Args) -> Result<()> {
    if args.namespace.is_empty() || args.id.is_empty() {
        return Err(Error::InvalidArgument(
            "-namespace and -id are required".into(),
        ));
    }
    validate_namespace(&args.namespace)
}

fn bundle_dir(args: &Args) -> Result<PathBuf> {
    if !args.bundle.is_empty() {
        return Ok(PathBuf::from(&args.bundle));
    }
    std::env::current_dir().map_err(|e| Error::io("find the bundle (working directory)", e))
}

/// `start`: print the address of a shim serving this container's group, forking one if
/// needed. Returns, in the forked child only, the server it is to become.
fn start(args: &Args) -> Result<Option<fork::ForkedServer>> {
    // containerd writes to stdin (options, or 2.3's BootstrapParams); read all of it so it
    // never blocks on us.
    let mut input = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut input);
    let request = protocol::parse(args, &input);
    if request.namespace.is_empty() || request.id.is_empty() {
        return Err(Error::InvalidArgument(
            "no namespace and id: pass -namespace and -id, or BootstrapParams on stdin".into(),
        ));
    }
    validate_namespace(&request.namespace)?;
    let bundle = bundle_dir(args)?;
    let group = group_of(&bundle, &request.id);
    let path = socket_path(
        &request.grpc_address,
        &request.namespace,
        &group,
        request.socket_dir.as_deref(),
    );
    let uri = address::to_uri(&path);
    let for_sandbox = protocol::started_for_sandbox(&bundle);

    let Some(listener) = bind_socket(&path)? else {
        log::debug!("reusing shim at {uri} for group {group}");
        return publish_address(&request, &bundle, &uri, for_sandbox).map(|()| None);
    };
    let pid = match fork::fork_server(&request, &bundle, listener, &path, for_sandbox)? {
        fork::Forked::Parent(pid) => pid,
        fork::Forked::Child(server) => return Ok(Some(*server)),
    };
    // The server is up: if containerd is not told of it, it must not be left behind.
    let told = place_server(&request, &bundle, pid)
        .and_then(|()| publish_address(&request, &bundle, &uri, for_sandbox));
    if let Err(e) = told {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(None)
}

/// Records the new server's pid, gives it its OOM score and, with ShimCgroup (from the task or
/// runtime options), moves it into that cgroup.
fn place_server(request: &protocol::StartRequest, bundle: &Path, pid: u32) -> Result<()> {
    write_file(&bundle.join("shim.pid"), &pid.to_string())?;
    if let Err(e) = adjust_oom_score(pid) {
        log::warn!("set the shim's oom_score_adj: {e}");
    }
    let shim_cgroup = &request.options.shim_cgroup;
    if shim_cgroup.is_empty() {
        return Ok(());
    }
    crate::metrics::join(shim_cgroup, pid)
}

/// Writes the bundle's `address` file and prints the address in the caller's protocol.
fn publish_address(
    request: &protocol::StartRequest,
    bundle: &Path,
    uri: &str,
    for_sandbox: bool,
) -> Result<()> {
    write_file(&bundle.join("address"), uri)?;
    let mut out = std::io::stdout();
    out.write_all(&protocol::response(request, uri, for_sandbox))
        .and_then(|_| out.flush())
        .map_err(|e| Error::io("print the shim address", e))
}

/// Binds the group's socket, or returns `None` when a live shim already serves it.
fn bind_socket(path: &Path) -> Result<Option<UnixListener>> {
    let dir = path.parent().expect("socket path has a parent");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    for _ in 0..2 {
        match UnixListener::bind(path) {
            Ok(l) => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| Error::io(format!("restrict {}", path.display()), e))?;
                return Ok(Some(l));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if UnixStream::connect(path).is_ok() {
                    return Ok(None);
                }
                // A socket left by a shim that died: nobody answers on it.
                let _ = std::fs::remove_file(path);
            }
            Err(e) => return Err(Error::io(format!("bind {}", path.display()), e)),
        }
    }
    Err(Error::FailedPrecondition(format!(
        "socket {} keeps reappearing",
        path.display()
    )))
}

/// The shim gets containerd's OOM score plus one, so the kernel kills a shim before the
/// containerd that manages it (as containerd's Go shims do).
fn adjust_oom_score(pid: u32) -> Result<()> {
    const MAX: i32 = 1000;
    let parent = nix::unistd::getppid();
    let path = format!("/proc/{parent}/oom_score_adj");
    let score: i32 = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("read {path}"), e))?
        .trim()
        .parse()
        .unwrap_or(0);
    write_file(
        Path::new(&format!("/proc/{pid}/oom_score_adj")),
        &(score + 1).min(MAX).to_string(),
    )
}

fn write_file(path: &Path, content: &str) -> Result<()> {
    std::fs::write(path, content).map_err(|e| Error::io(format!("write {}", path.display()), e))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the async runtime", e))
}

/// `delete`: containerd's clean-up after a shim that is gone. Prints a DeleteResponse.
fn delete<B: Backend>(args: &Args, backend: B) -> Result<()> {
    require(args)?;
    let bundle = bundle_dir(args)?;
    let options = RuntimeOptions::load(&bundle);
    runtime()?.block_on(async {
        let _exits = reaper::start().map_err(|e| Error::io("watch child exits", e))?;
        backend
            .cleanup(&args.id, &args.namespace, &bundle, &options)
            .await
            .map_err(Error::from)?;
        // As after a Delete the serving shim answers: a v2 cgroup runc 1.1 left (runc#4047).
        if !options.systemd_cgroup {
            if let Some(cgroup) = crate::metrics::Cgroup::v2_of_bundle(&bundle) {
                cgroup.remove_leftover().await;
            }
        }
        Ok::<_, Error>(())
    })?;
    mount::unmount_rootfs(&bundle.join("rootfs"))?;
    // A pod's shim (Sandbox API) that died leaves the pod's containers (containerd runs no
    // `delete` for them) and the pod's shm mounted in its bundle.
    let pod = bundle.join("pod");
    let pod_cleaned = cleanup_pod_containers(&pod, &args.namespace, &backend);
    crate::service::sandbox::pod_files::release_dir(&pod);
    remove_dead_socket(&bundle);
    pod_cleaned?;
    let response = match exit_record::read(&bundle) {
        // The init exited while a shim served it: that exit is what happened.
        Some((pid, exit)) => DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        },
        // It was running when its shim died, and the clean-up above killed it.
        None => DeleteResponse {
            pid: std::fs::read_to_string(bundle.join("init.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0),
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(timestamp(SystemTime::now())),
            ..Default::default()
        },
    };
    let bytes = response
        .write_to_bytes()
        .map_err(|e| Error::io("encode delete response", std::io::Error::other(e)))?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(|e| Error::io("print delete response", e))
}

/// Kills and removes, as containerd's `delete` would for each, the containers of a pod whose
/// shim died.
fn cleanup_pod_containers<B: Backend>(pod: &Path, namespace: &str, backend: &B) -> Result<()> {
    let containers = crate::service::sandbox::pod_files::recorded_containers(pod);
    if containers.is_empty() {
        return Ok(());
    }
    runtime()?.block_on(async {
        let _exits = reaper::start().map_err(|e| Error::io("watch child exits", e))?;
        let mut failed = Vec::new();
        for c in containers {
            // The runtime runs in the record, not the container's bundle: containerd removes
            // what it can of a task whose shim is gone, that bundle included, meanwhile. A
            // container whose processes are still dying keeps its cgroup busy for a moment.
            let mut tries = 0;
            let cleaned = loop {
                tries += 1;
                match backend
                    .cleanup(&c.id, namespace, &c.record, &c.options)
                    .await
                {
                    Err(_) if tries < 20 => {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await
                    }
                    result => break result,
                }
            };
            if let Err(e) = cleaned {
                failed.push(format!("container {}: {e}", c.id));
            }
            if let Err(e) = mount::unmount_rootfs(&c.bundle.join("rootfs")) {
                failed.push(format!("unmount the rootfs of container {}: {e}", c.id));
            }
        }
        // Every container is tried; what failed is reported (containerd logs it).
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Error::FailedPrecondition(format!(
                "clean up the containers of a dead pod shim: {}",
                failed.join("; ")
            )))
        }
    })
}

/// Removes the socket a dead shim left behind. A live shim of the same group still answers
/// on it and keeps it.
fn remove_dead_socket(bundle: &Path) {
    let Ok(uri) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let path = Path::new(uri.trim().trim_start_matches("unix://"));
    if path.exists() && UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

/// The serving process without `start` (by hand, for debugging): binds `-socket`.
fn serve<B: Backend>(args: &Args, name: ShimName, backend: B) -> Result<()> {
    require(args)?;
    if args.socket.is_empty() {
        return Err(Error::InvalidArgument(
            "no socket to serve on: use `start`, or pass -socket".into(),
        ));
    }
    let path = args.socket.trim_start_matches("unix://");
    let listener = UnixListener::bind(path).map_err(|e| Error::io(format!("bind {path}"), e))?;
    let server = Serving {
        name,
        for_sandbox: false,
    };
    serve_on(args, listener, ttrpc_address_from_env(), server, backend)
}

/// What the serving process is: which shim, and whether containerd started it for a pod.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Serving {
    pub name: ShimName,
    pub for_sandbox: bool,
}

/// containerd's ttrpc address for events, as containerd before 2.3 passes it to `start`.
fn ttrpc_address_from_env() -> Option<String> {
    std::env::var("TTRPC_ADDRESS")
        .ok()
        .filter(|a| !a.is_empty())
}

/// How long a shim that was told to shut down keeps trying to deliver what it still holds.
const EVENTS_AFTER_SHUTDOWN: Duration = Duration::from_secs(30);

/// The serving process: a subreaper answering the task API on `listener` until Shutdown or
/// SIGTERM, publishing events to containerd at `ttrpc_address`.
fn serve_on<B: Backend>(
    args: &Args,
    listener: UnixListener,
    ttrpc_address: Option<String>,
    serving: Serving,
    backend: B,
) -> Result<()> {
    logger::init("log", args.debug);
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| Error::io("become a child subreaper", e.into()))?;
    let socket = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    let result = runtime()?.block_on(serve_until_shutdown(
        args,
        serving,
        backend,
        listener,
        socket.as_deref(),
        ttrpc_address,
    ));
    log::info!("shim exiting");
    result
}

async fn serve_until_shutdown<B: Backend>(
    args: &Args,
    serving: Serving,
    backend: B,
    listener: UnixListener,
    socket: Option<&Path>,
    ttrpc_address: Option<String>,
) -> Result<()> {
    let exits = reaper::start().map_err(|e| Error::io("watch child exits", e))?;
    let publisher = Publisher::start(ttrpc_address, args.namespace.clone());
    let shutdown = Arc::new(Notify::new());
    let service = TaskService::new(
        backend,
        args.namespace.clone(),
        publisher.clone(),
        exits,
        shutdown.clone(),
    );
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("shim socket", e))?;
    let listener = tokio::net::UnixListener::from_std(listener)
        .map_err(|e| Error::io("serve on the shim socket", e))?;
    let sandbox = SandboxService::new(
        service.clone(),
        serving.name.runtime_type,
        serving.for_sandbox,
    );
    let server = crate::ttrpc_server::Server::start(listener, ttrpc_services(service, sandbox));
    log::info!(
        "serving task API for {} in namespace {}",
        args.id,
        args.namespace
    );
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::io("watch SIGTERM", e))?;
    tokio::select! {
        _ = shutdown.notified() => {}
        _ = term.recv() => log::info!("SIGTERM received"),
    }
    // The Shutdown request that ended this still has to be answered.
    server.stop(Duration::from_secs(1)).await;
    if let Some(path) = socket {
        let _ = std::fs::remove_file(path);
    }
    // Events not yet delivered (containerd restarting: 2.x shuts down the shims of tasks that
    // exited while it was away before it takes events again) go out before the shim exits.
    publisher.flush(EVENTS_AFTER_SHUTDOWN).await;
    Ok(())
}
