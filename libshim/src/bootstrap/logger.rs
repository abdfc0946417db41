//! The shim's own log: logrus-style text lines into the `log` fifo containerd reads in the
//! bundle. Writes never block the shim: if containerd stops reading, lines are dropped.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;
use std::time::SystemTime;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct FifoLogger {
    out: Mutex<Option<File>>,
    level: LevelFilter,
}

impl Log for FifoLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        let msg = record.args().to_string().replace('"', "\\\"");
        let line = format!(
            "time=\"{}\" level={level} msg=\"{msg}\" runtime={}\n",
            rfc3339(SystemTime::now()),
            env!("CARGO_PKG_NAME"),
        );
        if let Some(f) = self.out.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Logs into `path` (a fifo containerd reads) if it can be opened without blocking;
/// otherwise logging is off.
pub fn init(path: &str, debug: bool) {
    let out = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok();
    let level = if debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    let logger = FifoLogger {
        out: Mutex::new(out),
        level,
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}

/// UTC time as RFC 3339 with nanoseconds, the way logrus prints it.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::rfc3339;

    #[test]
    fn formats_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_795_400_000, 5);
        assert_eq!(rfc3339(t), "2026-11-23T02:13:20.000000005Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000Z"
        );
    }

    use std::time::SystemTime;
}
