//! The command line containerd starts a shim with, in Go's `flag` syntax:
//! `-namespace NS -id ID -address ADDR -publish-binary BIN [-debug] [-bundle DIR] start|delete`.
use std::ffi::OsString;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Args {
    pub namespace: String,
    pub id: String,
    /// containerd's gRPC address.
    pub address: String,
    pub publish_binary: String,
    pub bundle: String,
    /// Set when the serving process should listen on an explicit path instead of fd 3.
    pub socket: String,
    pub debug: bool,
    pub version: bool,
    pub info: bool,
    pub action: Option<String>,
}

impl Args {
    pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Self, String> {
        let mut out = Args::default();
        let mut it = args.into_iter().map(|a| a.to_string_lossy().into_owned());
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                if out.action.is_some() {
                    return Err(format!("unexpected argument {arg:?}"));
                }
                out.action = Some(arg);
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            let boolean = |v: Option<String>| v.map(|v| v == "true" || v == "1").unwrap_or(true);
            match name {
                "debug" => out.debug = boolean(inline),
                "v" | "version" => out.version = boolean(inline),
                "info" => out.info = boolean(inline),
                "namespace" | "id" | "address" | "publish-binary" | "bundle" | "socket" => {
                    let value = match inline {
                        Some(v) => v,
                        None => it
                            .next()
                            .ok_or_else(|| format!("flag -{name} needs a value"))?,
                    };
                    let slot = match name {
                        "namespace" => &mut out.namespace,
                        "id" => &mut out.id,
                        "address" => &mut out.address,
                        "publish-binary" => &mut out.publish_binary,
                        "bundle" => &mut out.bundle,
                        _ => &mut out.socket,
                    };
                    *slot = value;
                }
                other => return Err(format!("flag provided but not defined: -{other}")),
            }
        }
        Ok(out)
    }

    /// The flags the serving process is started with: ours minus the action.
    pub fn serve_args(&self) -> Vec<String> {
        let mut v = vec![
            "-namespace".into(),
            self.namespace.clone(),
            "-id".into(),
            self.id.clone(),
            "-address".into(),
            self.address.clone(),
        ];
        if !self.publish_binary.is_empty() {
            v.push("-publish-binary".into());
            v.push(self.publish_binary.clone());
        }
        if self.debug {
            v.push("-debug".into());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, String> {
        Args::parse(s.split_whitespace().map(OsString::from))
    }

    #[test]
    fn containerd_start_line() {
        let a = parse(
            "-namespace default -address /run/containerd/containerd.sock \
             -publish-binary /usr/bin/containerd -id c1 -debug start",
        )
        .unwrap();
        assert_eq!(a.namespace, "default");
        assert_eq!(a.id, "c1");
        assert_eq!(a.address, "/run/containerd/containerd.sock");
        assert!(a.debug);
        assert_eq!(a.action.as_deref(), Some("start"));
    }

    #[test]
    fn equals_form_and_version() {
        let a = parse("--id=x -v").unwrap();
        assert_eq!(a.id, "x");
        assert!(a.version);
        assert_eq!(a.action, None);
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(parse("-bogus").unwrap_err().contains("-bogus"));
        assert!(parse("-id").unwrap_err().contains("-id"));
        assert!(parse("start delete").is_err());
    }

    #[test]
    fn serve_args_round_trip() {
        let a = parse("-namespace n -id i -address /a -debug start").unwrap();
        let b = Args::parse(a.serve_args().into_iter().map(OsString::from)).unwrap();
        assert_eq!(b.namespace, "n");
        assert_eq!(b.id, "i");
        assert!(b.debug);
        assert_eq!(b.action, None);
    }
}
