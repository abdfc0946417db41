//! Parsing stdio URIs and opening what they name.
use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use super::copy::{FdIo, Sink};
use crate::error::{Error, Result};

/// What a stdio field of a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A fifo (a bare path or `fifo://`), created by the client.
    Fifo(PathBuf),
    /// `file://PATH`: output appended to a regular file.
    File(PathBuf),
    /// `binary://PATH?args`: a logging binary (see `stdio::binary`).
    Binary(String),
}

impl Target {
    /// `None` for an empty field: that stream goes to /dev/null.
    pub fn parse(uri: &str) -> Result<Option<Self>> {
        if uri.is_empty() {
            return Ok(None);
        }
        let target = match uri.split_once("://") {
            None => Target::Fifo(PathBuf::from(uri)),
            Some(("fifo", path)) => Target::Fifo(PathBuf::from(path)),
            Some(("file", path)) => Target::File(PathBuf::from(path)),
            Some(("binary", rest)) => Target::Binary(rest.to_string()),
            Some((scheme, _)) => {
                return Err(Error::InvalidArgument(format!(
                    "unsupported stdio scheme {scheme:?} in {uri:?}"
                )))
            }
        };
        Ok(Some(target))
    }
}

fn open(path: &PathBuf, opts: &mut OpenOptions, what: &str) -> Result<OwnedFd> {
    opts.custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| Error::io(format!("open {what} {}", path.display()), e))
}

/// Opens an output target. A fifo is opened read-write: that never blocks waiting for the
/// client and, because the shim then counts as a reader too, never raises SIGPIPE when the
/// client goes away.
pub fn open_output(target: &Target) -> Result<Sink> {
    match target {
        Target::Fifo(path) => {
            let fd = open(
                path,
                OpenOptions::new().read(true).write(true),
                "output fifo",
            )?;
            Ok(Sink::Fd(FdIo::new(fd, "output fifo")?))
        }
        Target::File(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| Error::io(format!("open log file {}", path.display()), e))?;
            Ok(Sink::File(file))
        }
        // Pipes go to a logging binary directly (Stdio::prepare); a terminal's output cannot.
        Target::Binary(_) => Err(Error::NotImplemented("binary:// logging of a terminal")),
    }
}

/// Opens stdin's fifo for reading, without blocking.
///
/// No writer is kept: Linux reports a fifo readable (data or hang-up) only once a writer has
/// connected, so the copy waits for the client and ends when the client closes its end.
pub fn open_input(target: &Target) -> Result<FdIo> {
    let Target::Fifo(path) = target else {
        return Err(Error::InvalidArgument(format!(
            "stdin must be a fifo, got {target:?}"
        )));
    };
    let reader = open(path, OpenOptions::new().read(true), "stdin fifo")?;
    FdIo::new(reader, "stdin fifo")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uris() {
        assert_eq!(Target::parse("").unwrap(), None);
        assert_eq!(
            Target::parse("/run/x/stdout").unwrap(),
            Some(Target::Fifo("/run/x/stdout".into()))
        );
        assert_eq!(
            Target::parse("fifo:///a").unwrap(),
            Some(Target::Fifo("/a".into()))
        );
        assert_eq!(
            Target::parse("file:///var/log/c.log").unwrap(),
            Some(Target::File("/var/log/c.log".into()))
        );
        assert!(matches!(
            Target::parse("binary:///bin/logger?x=1").unwrap(),
            Some(Target::Binary(_))
        ));
        assert!(Target::parse("tcp://1.2.3.4:5").is_err());
    }
}
