//! Exec, Kill, Pause/Resume and Pids.
use std::os::fd::AsFd;

use super::*;

impl<B: Backend> TaskService<B> {
    pub(super) async fn do_exec(&self, req: ExecProcessRequest) -> Result<()> {
        validate_id(&req.exec_id)?;
        let c = self.container(&req.id)?;
        let mut c = c.lock().await;
        if c.execs.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {:?} already exists in container {:?}",
                req.exec_id, req.id
            )));
        }
        if !c.init.state().is_live() {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} is {}: cannot exec in it",
                req.id,
                c.init.state().name()
            )));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|s| s.value.clone())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Error::InvalidArgument("exec request carries no process spec".into()))?;
        let spec = with_terminal(&spec, req.terminal)?;
        let mut p = Process::new(
            &req.id,
            &req.exec_id,
            StdioRequest {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
        );
        p.spec = spec;
        c.execs.insert(req.exec_id.clone(), p);
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            &TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        );
        Ok(())
    }

    // ---- Kill ----

    pub(super) async fn do_kill(&self, req: KillRequest) -> Result<()> {
        if req.signal == 0 || req.signal > libc::SIGRTMAX() as u32 {
            return Err(Error::InvalidArgument(format!(
                "signal {} is out of range 1..={}",
                req.signal,
                libc::SIGRTMAX()
            )));
        }
        let c = self.container(&req.id)?;
        let c = c.lock().await;
        let p = c.process(&req.exec_id)?;
        let finished = || Error::NotFound(format!("process {:?} already finished", p.event_id()));
        if !p.state().is_live() || p.pid == 0 {
            return Err(finished());
        }
        if p.is_init() {
            // The runtime signals the init itself (it thaws a paused one for SIGKILL, reaches
            // every process with `all`); the pidfd first tells an init that has just exited
            // from one whose pid a new process may already have.
            if let Some(fd) = &p.pidfd {
                if is_gone(crate::sys::pidfd_send_signal(fd.as_fd(), 0)) {
                    return Err(finished());
                }
            }
            self.inner
                .backend
                .kill(&c.info, req.signal, req.all)
                .await?;
            return Ok(());
        }
        let sent = match &p.pidfd {
            Some(fd) => crate::sys::pidfd_send_signal(fd.as_fd(), req.signal as i32),
            None => crate::sys::kill(p.pid, req.signal as i32),
        };
        match sent {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(finished()),
            Err(e) => Err(Error::io(
                format!("send signal {} to exec {:?}", req.signal, req.exec_id),
                e,
            )),
        }
    }

    // ---- Pause / Resume ----

    pub(super) async fn do_pause(&self, id: &str, pause: bool) -> Result<()> {
        let c = self.container(id)?;
        let mut c = c.lock().await;
        let event = if pause { Event::Pause } else { Event::Resume };
        if c.init.state().next(event).is_none() {
            return Err(c.init.apply(event).unwrap_err());
        }
        if pause {
            self.inner.backend.pause(&c.info).await?;
        } else {
            self.inner.backend.resume(&c.info).await?;
        }
        c.init.apply(event)?;
        if pause {
            self.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                &TaskPaused {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            );
        } else {
            self.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                &TaskResumed {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            );
        }
        Ok(())
    }

    // ---- Pids ----

    pub(super) async fn do_pids(&self, id: &str) -> Result<PidsResponse> {
        let c = self.container(id)?;
        let c = c.lock().await;
        let pids = self.inner.backend.pids(&c.info).await?;
        let exec_of: HashMap<u32, &str> = c
            .execs
            .values()
            .filter(|p| p.pid != 0)
            .map(|p| (p.pid, p.exec_id.as_str()))
            .collect();
        let processes = pids
            .into_iter()
            .map(|pid| {
                let info = exec_of.get(&pid).map(|exec_id| {
                    let details = ProcessDetails {
                        exec_id: exec_id.to_string(),
                        ..Default::default()
                    };
                    Any {
                        type_url: protos::type_urls::RUNC_PROCESS_DETAILS.to_string(),
                        value: details.write_to_bytes().unwrap_or_default(),
                        ..Default::default()
                    }
                });
                ProcessInfo {
                    pid,
                    info: info.into(),
                    ..Default::default()
                }
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }
}

/// The exec's process spec with `terminal` as the request says. containerd's clients set the
/// request's flag (`cio.WithTerminal`) and leave the spec's false; the runtime reads the spec,
/// and the stdio the shim prepares follows the request: they must agree, and the request wins
/// (as in containerd's Go shim).
pub fn with_terminal(spec: &[u8], terminal: bool) -> Result<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(spec)
        .map_err(|e| Error::InvalidArgument(format!("exec process spec is not JSON: {e}")))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| Error::InvalidArgument("exec process spec is not a JSON object".into()))?;
    // runc reads the spec with Go's encoding/json, which takes the key in any case, the last
    // one wins and a null changes nothing: the spec is handed on as it is only when the one
    // key is exactly `terminal` with the request's boolean (or absent, for no terminal).
    let agrees = match object.get("terminal") {
        Some(serde_json::Value::Bool(t)) => *t == terminal,
        None => !terminal,
        Some(_) => false,
    };
    if agrees && !object.keys().any(|k| k != "terminal" && names_terminal(k)) {
        return Ok(spec.to_vec());
    }
    object.retain(|k, _| !names_terminal(k));
    object.insert("terminal".into(), serde_json::Value::Bool(terminal));
    serde_json::to_vec(&value)
        .map_err(|e| Error::InvalidArgument(format!("exec process spec: {e}")))
}

/// Whether a signal failed because its process has exited.
fn is_gone(sent: std::io::Result<()>) -> bool {
    sent.is_err_and(|e| e.raw_os_error() == Some(libc::ESRCH))
}

/// Whether Go's encoding/json decodes `key` into the spec's `terminal`: ASCII letters in any
/// case, and since Go 1.21 `ı` or `İ` for the `i` (it folds keys through simple case mappings).
fn names_terminal(key: &str) -> bool {
    key.chars()
        .map(|c| match c {
            '\u{131}' | '\u{130}' => 'i',
            c => c.to_ascii_lowercase(),
        })
        .eq("terminal".chars())
}

#[cfg(test)]
mod tests {
    use super::with_terminal;

    #[test]
    fn the_request_decides_the_terminal() {
        let get = |spec: &[u8], t| -> serde_json::Value {
            serde_json::from_slice(&with_terminal(spec, t).unwrap()).unwrap()
        };
        let spec = br#"{"args":["sh"],"terminal":false}"#;
        assert_eq!(get(spec, true)["terminal"], true);
        assert_eq!(get(spec, true)["args"][0], "sh");
        assert_eq!(
            get(br#"{"args":["sh"],"terminal":true}"#, false)["terminal"],
            false
        );
        assert_eq!(
            with_terminal(spec, false).unwrap(),
            spec,
            "untouched when they agree"
        );
        assert!(with_terminal(b"[1]", true).is_err());
        assert!(with_terminal(b"{", true).is_err());
    }

    /// Found by `fuzz/fuzz_targets/exec_process.rs` (fuzz/regressions/exec_process/): runc's
    /// Go decoder read `TERMINAL` (any case) as `terminal`, and a trailing null as no change,
    /// so a request without a terminal got a runc exec with one (which then fails).
    #[test]
    fn the_request_decides_whatever_case_or_duplicates_the_spec_has() {
        for (spec, terminal) in [
            (&br#"{"TERMINAL":true}"#[..], false),
            (
                br#"{"args":["sh"],"Terminal":true,"terminal":false}"#,
                false,
            ),
            (br#"{"terminal":true,"terminal":null}"#, false),
            ("{\"term\u{131}nal\":true}".as_bytes(), false),
            (br#"{"terminal":false,"tErminal":false}"#, true),
            (br#"{"terminal":"yes"}"#, false),
        ] {
            let out = with_terminal(spec, terminal).unwrap();
            let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
            assert_eq!(keys.iter().filter(|k| super::names_terminal(k)).count(), 1);
            assert_eq!(
                value["terminal"],
                terminal,
                "{}",
                String::from_utf8_lossy(spec)
            );
        }
        assert!(super::names_terminal("TERMİNAL") && !super::names_terminal("terminals"));
    }
}
