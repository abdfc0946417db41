//! What /proc says of a process's CPU.

/// CPU time (ms) of a whole process: the scheduler's nanosecond run time of each of its
/// threads (/proc/PID/task/TID/schedstat), or, where the kernel does not keep it, user +
/// system time from /proc/PID/stat, whose 10 ms ticks only suit sums over many runs. Threads
/// that have exited are not counted: for processes whose threads come and go over a window
/// (containerd), use [`own_ticks_ms`] instead.
pub fn cpu_ms(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    if ns > 0 {
        return Some(ns as f64 / 1e6);
    }
    own_ticks_ms(pid)
}

/// User + system time (ms) of a process, exited threads included, in 10 ms ticks: only a
/// difference over a window of many runs is precise enough.
pub fn own_ticks_ms(pid: u32) -> Option<f64> {
    stat_ticks_ms(pid, 11)
}

/// CPU time (ms) of the reaped children of a process (and everything they reaped): for
/// containerd, the shims' `start` (and any `delete`) processes and the CNI plugins it ran.
pub fn children_cpu_ms(pid: u32) -> Option<f64> {
    stat_ticks_ms(pid, 13)
}

/// Two consecutive /proc/PID/stat tick counters from field index `at` (after the command),
/// summed, in ms: 11/12 are utime/stime, 13/14 cutime/cstime.
fn stat_ticks_ms(pid: u32, at: usize) -> Option<f64> {
    const TICK_MS: f64 = 10.0; // USER_HZ is 100 on Linux
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.rsplit(") ").next()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(at)?.parse::<f64>().ok()? + f.get(at + 1)?.parse::<f64>().ok()?;
    Some(ticks * TICK_MS)
}

pub use integration::cri::client::parent;
