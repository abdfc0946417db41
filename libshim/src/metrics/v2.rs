//! cgroup v2 statistics as containerd's `io.containerd.cgroups.v2.Metrics`.
use std::path::Path;

use protobuf::MessageField;
use protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};

use super::{key_values, read, read_u64};
use crate::error::{Error, Result};

pub fn metrics(dir: &Path) -> Result<Metrics> {
    if !dir.is_dir() {
        return Err(Error::NotFound(format!("cgroup {} is gone", dir.display())));
    }
    let mut m = Metrics::new();
    m.pids = MessageField::some(PidsStat {
        current: read_u64(&dir.join("pids.current")),
        limit: read_u64(&dir.join("pids.max")),
        ..Default::default()
    });
    let mut cpu = CPUStat::new();
    let kv = key_values(&read(&dir.join("cpu.stat")));
    copy_fields!(cpu, kv;
        usage_usec, user_usec, system_usec, nr_periods, nr_throttled, throttled_usec,
        nr_bursts, burst_usec,
    );
    m.cpu = MessageField::some(cpu);

    let mut mem = MemoryStat::new();
    let kv = key_values(&read(&dir.join("memory.stat")));
    copy_fields!(mem, kv;
        anon, file, kernel_stack, slab, sock, shmem, file_mapped, file_dirty, file_writeback,
        anon_thp, inactive_anon, active_anon, inactive_file, active_file, unevictable,
        slab_reclaimable, slab_unreclaimable, pgfault, pgmajfault, workingset_refault,
        workingset_activate, workingset_nodereclaim, pgrefill, pgscan, pgsteal, pgactivate,
        pgdeactivate, pglazyfree, pglazyfreed, thp_fault_alloc, thp_collapse_alloc,
    );
    mem.usage = read_u64(&dir.join("memory.current"));
    mem.usage_limit = read_u64(&dir.join("memory.max"));
    mem.max_usage = read_u64(&dir.join("memory.peak"));
    mem.swap_usage = read_u64(&dir.join("memory.swap.current"));
    mem.swap_limit = read_u64(&dir.join("memory.swap.max"));
    m.memory = MessageField::some(mem);

    let mut events = MemoryEvents::new();
    let kv = key_values(&read(&dir.join("memory.events")));
    copy_fields!(events, kv; low, high, max, oom, oom_kill, oom_group_kill);
    m.memory_events = MessageField::some(events);

    m.io = MessageField::some(IOStat {
        usage: io_entries(&read(&dir.join("io.stat"))),
        ..Default::default()
    });
    Ok(m)
}

/// Lines of `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...`.
fn io_entries(text: &str) -> Vec<IOEntry> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (major, minor) = f.next()?.split_once(':')?;
            let mut e = IOEntry {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                ..Default::default()
            };
            for kv in f {
                let (k, v) = kv.split_once('=')?;
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => e.rbytes = v,
                    "wbytes" => e.wbytes = v,
                    "rios" => e.rios = v,
                    "wios" => e.wios = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernels_v2_formats() {
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        w("cpu.stat", "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n");
        w(
            "memory.stat",
            "anon 4096\nfile 8192\nkernel_stack 16384\npgfault 7\nunknown_future_key 5\n",
        );
        w("memory.current", "28672\n");
        w("memory.max", "max\n");
        w("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
        w("pids.current", "1\n");
        w("pids.max", "100\n");
        w(
            "io.stat",
            "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n",
        );
        let m = metrics(dir.path()).unwrap();
        assert_eq!(
            (m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec),
            (1234, 1000, 234)
        );
        assert_eq!(
            (m.memory.anon, m.memory.file, m.memory.pgfault),
            (4096, 8192, 7)
        );
        assert_eq!((m.memory.usage, m.memory.usage_limit), (28672, u64::MAX));
        assert_eq!((m.memory_events.max, m.memory_events.oom_kill), (3, 1));
        assert_eq!((m.pids.current, m.pids.limit), (1, 100));
        let io = &m.io.usage[0];
        assert_eq!(
            (io.major, io.minor, io.rbytes, io.wbytes, io.rios, io.wios),
            (8, 0, 1, 2, 3, 4)
        );
        assert_eq!(super::super::Cgroup::V2(dir.path().into()).oom_kills(), 1);
    }
}
