//! cgroup v1 statistics as containerd's `io.containerd.cgroups.v1.Metrics`.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use protobuf::MessageField;
use protos::cgroups::metrics::{
    BlkIOEntry, BlkIOStat, CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat, Throttle,
};

use super::{key_values, read, read_u64};
use crate::error::{Error, Result};

/// Nanoseconds per USER_HZ tick, the unit of cpuacct.stat.
const NS_PER_TICK: u64 = 10_000_000;

pub fn metrics(dirs: &HashMap<String, PathBuf>) -> Result<Metrics> {
    let memory = dirs.get("memory");
    if let Some(dir) = memory.filter(|d| !d.is_dir()) {
        return Err(Error::NotFound(format!("cgroup {} is gone", dir.display())));
    }
    let mut m = Metrics::new();
    if let Some(dir) = dirs.get("pids") {
        m.pids = MessageField::some(PidsStat {
            current: read_u64(&dir.join("pids.current")),
            limit: read_u64(&dir.join("pids.max")),
            ..Default::default()
        });
    }
    if let Some(dir) = dirs.get("cpuacct") {
        let cpu_dir = dirs.get("cpu").unwrap_or(dir);
        m.cpu = MessageField::some(cpu(dir, cpu_dir));
    }
    if let Some(dir) = memory {
        m.memory = MessageField::some(memory_stat(dir));
    }
    if let Some(dir) = dirs.get("blkio") {
        m.blkio = MessageField::some(blkio(dir));
    }
    Ok(m)
}

fn cpu(acct: &Path, cpu: &Path) -> CPUStat {
    let stat = key_values(&read(&acct.join("cpuacct.stat")));
    let per_cpu = read(&acct.join("cpuacct.usage_percpu"))
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let throttle = key_values(&read(&cpu.join("cpu.stat")));
    CPUStat {
        usage: MessageField::some(CPUUsage {
            total: read_u64(&acct.join("cpuacct.usage")),
            user: stat["user"] * NS_PER_TICK,
            kernel: stat["system"] * NS_PER_TICK,
            per_cpu,
            ..Default::default()
        }),
        throttling: MessageField::some(Throttle {
            periods: throttle["nr_periods"],
            throttled_periods: throttle["nr_throttled"],
            throttled_time: throttle["throttled_time"],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn entry(dir: &Path, prefix: &str) -> MessageField<MemoryEntry> {
    let file = |name: &str| dir.join(format!("{prefix}{name}"));
    if !file("usage_in_bytes").exists() {
        return MessageField::none();
    }
    MessageField::some(MemoryEntry {
        limit: read_u64(&file("limit_in_bytes")),
        usage: read_u64(&file("usage_in_bytes")),
        max: read_u64(&file("max_usage_in_bytes")),
        failcnt: read_u64(&file("failcnt")),
        ..Default::default()
    })
}

fn memory_stat(dir: &Path) -> MemoryStat {
    let mut m = MemoryStat::new();
    let kv = key_values(&read(&dir.join("memory.stat")));
    copy_fields!(m, kv;
        cache, rss, rss_huge, mapped_file, dirty, writeback,
        pg_pg_in = "pgpgin", pg_pg_out = "pgpgout", pg_fault = "pgfault",
        pg_maj_fault = "pgmajfault", inactive_anon, active_anon, inactive_file, active_file,
        unevictable, hierarchical_memory_limit,
        hierarchical_swap_limit = "hierarchical_memsw_limit",
        total_cache, total_rss, total_rss_huge, total_mapped_file, total_dirty, total_writeback,
        total_pg_pg_in = "total_pgpgin", total_pg_pg_out = "total_pgpgout",
        total_pg_fault = "total_pgfault", total_pg_maj_fault = "total_pgmajfault",
        total_inactive_anon, total_active_anon, total_inactive_file, total_active_file,
        total_unevictable,
    );
    m.usage = entry(dir, "memory.");
    m.swap = entry(dir, "memory.memsw.");
    m.kernel = entry(dir, "memory.kmem.");
    m.kernel_tcp = entry(dir, "memory.kmem.tcp.");
    m
}

/// Lines of `MAJ:MIN Op value`; the `Total` line has no device and is skipped.
fn blkio_entries(text: &str) -> Vec<BlkIOEntry> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, op, value) = (f.next()?, f.next()?, f.next()?);
            let (major, minor) = dev.split_once(':')?;
            Some(BlkIOEntry {
                op: op.to_string(),
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                value: value.parse().ok()?,
                ..Default::default()
            })
        })
        .collect()
}

fn blkio(dir: &Path) -> BlkIOStat {
    let file = |name: &str| blkio_entries(&read(&dir.join(format!("blkio.{name}"))));
    BlkIOStat {
        io_service_bytes_recursive: file("throttle.io_service_bytes_recursive"),
        io_serviced_recursive: file("throttle.io_serviced_recursive"),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn reads_the_kernels_v1_formats() {
        let root = tempfile::tempdir().unwrap();
        let (mem, acct, pids, blk) = ["memory", "cpuacct", "pids", "blkio"]
            .map(|c| {
                let d = root.path().join(c).join("ns/c1");
                std::fs::create_dir_all(&d).unwrap();
                d
            })
            .into();
        write(&mem, "memory.stat", "cache 4096\nrss 8192\npgfault 12\npgmajfault 1\ntotal_rss 8192\nhierarchical_memory_limit 9223372036854771712\nhierarchical_memsw_limit 77\n");
        write(&mem, "memory.usage_in_bytes", "12288\n");
        write(&mem, "memory.limit_in_bytes", "67108864\n");
        write(&mem, "memory.max_usage_in_bytes", "16384\n");
        write(&mem, "memory.failcnt", "0\n");
        write(&acct, "cpuacct.usage", "123456789\n");
        write(&acct, "cpuacct.stat", "user 10\nsystem 5\n");
        write(&acct, "cpuacct.usage_percpu", "100 200 \n");
        write(
            &acct,
            "cpu.stat",
            "nr_periods 3\nnr_throttled 1\nthrottled_time 500\n",
        );
        write(&pids, "pids.current", "2\n");
        write(&pids, "pids.max", "max\n");
        write(
            &blk,
            "blkio.throttle.io_service_bytes_recursive",
            "8:0 Read 4096\n8:0 Write 0\nTotal 4096\n",
        );
        let dirs: HashMap<String, PathBuf> = [
            ("memory", mem),
            ("cpuacct", acct),
            ("pids", pids),
            ("blkio", blk),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let m = metrics(&dirs).unwrap();
        let memory = m.memory.unwrap();
        assert_eq!(
            (
                memory.cache,
                memory.rss,
                memory.pg_fault,
                memory.pg_maj_fault
            ),
            (4096, 8192, 12, 1)
        );
        assert_eq!(memory.total_rss, 8192);
        assert_eq!(
            memory.hierarchical_swap_limit, 77,
            "read from the kernel's memsw key"
        );
        assert_eq!(memory.usage.usage, 12288);
        assert_eq!(memory.usage.limit, 67108864);
        assert!(memory.swap.is_none(), "no memsw files, no swap entry");
        let cpu = m.cpu.unwrap();
        assert_eq!(cpu.usage.total, 123456789);
        assert_eq!(cpu.usage.user, 10 * NS_PER_TICK);
        assert_eq!(cpu.usage.kernel, 5 * NS_PER_TICK);
        assert_eq!(cpu.usage.per_cpu, [100, 200]);
        assert_eq!(cpu.throttling.throttled_periods, 1);
        assert_eq!((m.pids.current, m.pids.limit), (2, u64::MAX));
        let blk = &m.blkio.io_service_bytes_recursive;
        assert_eq!(blk.len(), 2);
        assert_eq!(
            (blk[0].major, blk[0].op.as_str(), blk[0].value),
            (8, "Read", 4096)
        );
    }

    #[test]
    fn a_removed_cgroup_is_not_found() {
        let dirs: HashMap<String, PathBuf> =
            [("memory".to_string(), PathBuf::from("/nonexistent/cg"))].into();
        assert!(matches!(metrics(&dirs), Err(Error::NotFound(_))));
    }
}
