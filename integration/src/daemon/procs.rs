//! Processes by what /proc says of them.

/// The shims serving for the containerd at `address`, as (pid, argv): the processes that carry
/// its address and a shim's name, but not a `start` or `delete` action still running (its last
/// argument; a serving process's command line is rewritten without it), nor a process whose
/// parent is one of them. Those are a shim's forks that have not exec'd yet: libcontainer's
/// intermediate and a container's init (5-20 ms after Start), a runtime command, a new server
/// until `start` exits. This cannot race: the kernel sets a fork's parent as it creates it and
/// changes it only when that parent exits, and a live shim is listed by every scan of /proc, so
/// its forks are left out whenever they are seen, however long they take to reach their exec.
pub fn serving_shims(address: &str) -> Vec<(u32, Vec<String>)> {
    let shims: Vec<(u32, Vec<String>)> = processes_with_arg(address)
        .into_iter()
        .filter(|(_, cmd)| cmd.first().is_some_and(|c| c.contains("containerd-shim")))
        .collect();
    let pids: Vec<u32> = shims.iter().map(|(pid, _)| *pid).collect();
    shims
        .into_iter()
        .filter(|(pid, cmd)| {
            cmd.last().is_none_or(|a| a != "start" && a != "delete")
                && parent_of(*pid).is_none_or(|parent| !pids.contains(&parent))
        })
        .collect()
}

/// The value of flag `name` in a shim's argv (Go `flag` syntax: `-name V`, `-name=V`).
pub(super) fn flag_value<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
    let mut it = argv.iter().skip(1);
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            continue;
        };
        match flag.split_once('=') {
            Some((n, v)) if n == name => return Some(v),
            None if flag == name => return it.next().map(String::as_str),
            _ => {}
        }
    }
    None
}

/// The parent of `pid` (the 4th field of /proc/PID/stat, after the parenthesised name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// (pid, argv) of every process with `arg` somewhere in its command line.
pub fn processes_with_arg(arg: &str) -> Vec<(u32, Vec<String>)> {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if argv.iter().any(|a| a.contains(arg)) {
            found.push((pid, argv));
        }
    }
    found
}
