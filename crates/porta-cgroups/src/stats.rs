//! Statistics in the shape of the `data` object of runc's `events --stats`, read from
//! cgroup v1 or v2 files.
//!
//! Field names and omission rules follow runc's `types/events.go`: a field tagged
//! `omitempty` there is left out here when it is zero or empty.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fsutil::{self, keyed};

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// `data` of a runc `stats` event.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// CPU usage and throttling.
    pub cpu: Cpu,
    /// Memory usage and limits.
    pub memory: Memory,
    /// Process counts.
    pub pids: Pids,
    /// Block I/O.
    pub blkio: Blkio,
    /// Huge page usage, by page size (`2MB`, `1GB`).
    pub hugetlb: BTreeMap<String, Hugetlb>,
}

/// CPU statistics.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Cpu {
    /// Time used.
    pub usage: CpuUsage,
    /// CFS bandwidth throttling.
    pub throttling: Throttling,
}

/// CPU time used, in nanoseconds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuUsage {
    /// In total.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub total: u64,
    /// Per CPU (v1 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    /// Per CPU in kernel mode (v1 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub percpu_kernel: Vec<u64>,
    /// Per CPU in user mode (v1 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub percpu_user: Vec<u64>,
    /// In kernel mode.
    #[serde(default)]
    pub kernel: u64,
    /// In user mode.
    #[serde(default)]
    pub user: u64,
}

/// CFS throttling.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Throttling {
    /// Enforcement periods elapsed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub periods: u64,
    /// Periods in which the group was throttled.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub throttled_periods: u64,
    /// Time throttled, in nanoseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub throttled_time: u64,
}

/// Memory statistics.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Page cache, in bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache: u64,
    /// Memory.
    #[serde(default)]
    pub usage: MemoryEntry,
    /// Memory plus swap (as runc reports it on v1 and v2).
    #[serde(default)]
    pub swap: MemoryEntry,
    /// Kernel memory (v1 only).
    #[serde(default)]
    pub kernel: MemoryEntry,
    /// Kernel TCP buffers (v1 only).
    #[serde(default, rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    /// Every entry of memory.stat.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
}

/// One memory counter.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryEntry {
    /// The limit, in bytes (`u64::MAX` for none).
    #[serde(default)]
    pub limit: u64,
    /// Current usage, in bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub usage: u64,
    /// Highest usage seen, in bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max: u64,
    /// How often the limit was hit.
    #[serde(default)]
    pub failcnt: u64,
}

/// Process counts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Pids {
    /// Processes (and threads) in the group.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub current: u64,
    /// The limit; 0 for none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limit: u64,
}

/// One block I/O counter of one device.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct BlkioEntry {
    /// Device major number.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub major: u64,
    /// Device minor number.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub minor: u64,
    /// `Read`, `Write`, `Sync`, `Async`, `Discard` or `Total`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub op: String,
    /// The count.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub value: u64,
}

/// Block I/O statistics.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Blkio {
    /// Bytes transferred.
    #[serde(
        default,
        rename = "ioServiceBytesRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    /// Operations.
    #[serde(
        default,
        rename = "ioServicedRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_serviced_recursive: Vec<BlkioEntry>,
    /// Queued requests (v1 CFQ).
    #[serde(
        default,
        rename = "ioQueueRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_queued_recursive: Vec<BlkioEntry>,
    /// Service time (v1 CFQ).
    #[serde(
        default,
        rename = "ioServiceTimeRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_service_time_recursive: Vec<BlkioEntry>,
    /// Wait time (v1 CFQ).
    #[serde(
        default,
        rename = "ioWaitTimeRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_wait_time_recursive: Vec<BlkioEntry>,
    /// Merged requests (v1 CFQ).
    #[serde(
        default,
        rename = "ioMergedRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_merged_recursive: Vec<BlkioEntry>,
    /// Device time (v1 CFQ).
    #[serde(
        default,
        rename = "ioTimeRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_time_recursive: Vec<BlkioEntry>,
    /// Sectors (v1 CFQ).
    #[serde(
        default,
        rename = "sectorsRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub sectors_recursive: Vec<BlkioEntry>,
}

/// Huge page usage of one page size.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Hugetlb {
    /// Bytes in use.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub usage: u64,
    /// Highest usage (v1 only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max: u64,
    /// Allocations refused by the limit.
    #[serde(default)]
    pub failcnt: u64,
}

// ---------------------------------------------------------------- cgroup v1 readers

/// `cpuacct.*` of a v1 group.
pub(crate) fn v1_cpuacct(dir: &Path, out: &mut Cpu) -> Result<()> {
    out.usage.total = fsutil::read_u64_or_zero(&dir.join("cpuacct.usage"))?;
    out.usage.percpu = read_list(&dir.join("cpuacct.usage_percpu"))?;
    out.usage.percpu_kernel = read_list(&dir.join("cpuacct.usage_percpu_sys"))?;
    out.usage.percpu_user = read_list(&dir.join("cpuacct.usage_percpu_user"))?;
    // cpuacct.stat is in USER_HZ ticks.
    let stat = fsutil::read_flat_keyed(&dir.join("cpuacct.stat"))?;
    let hz = clock_ticks();
    out.usage.user = keyed(&stat, "user")
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        / hz;
    out.usage.kernel = keyed(&stat, "system")
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        / hz;
    Ok(())
}

fn clock_ticks() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(v)) if v > 0 => v as u64,
        _ => 100,
    }
}

fn read_list(path: &Path) -> Result<Vec<u64>> {
    let Some(text) = fsutil::read_opt(path)? else {
        return Ok(Vec::new());
    };
    text.split_whitespace()
        .map(|s| fsutil::parse_u64(path, s))
        .collect()
}

/// `cpu.stat` of a v1 group (throttling only).
pub(crate) fn v1_cpu(dir: &Path, out: &mut Cpu) -> Result<()> {
    let stat = fsutil::read_flat_keyed(&dir.join("cpu.stat"))?;
    out.throttling.periods = keyed(&stat, "nr_periods").unwrap_or(0);
    out.throttling.throttled_periods = keyed(&stat, "nr_throttled").unwrap_or(0);
    out.throttling.throttled_time = keyed(&stat, "throttled_time").unwrap_or(0);
    Ok(())
}

fn v1_mem_entry(dir: &Path, prefix: &str) -> Result<MemoryEntry> {
    let f = |s: &str| dir.join(format!("{prefix}.{s}"));
    Ok(MemoryEntry {
        limit: fsutil::read_u64_or_zero(&f("limit_in_bytes"))?,
        usage: fsutil::read_u64_or_zero(&f("usage_in_bytes"))?,
        max: fsutil::read_u64_or_zero(&f("max_usage_in_bytes"))?,
        failcnt: fsutil::read_u64_or_zero(&f("failcnt"))?,
    })
}

/// `memory.*` of a v1 group.
pub(crate) fn v1_memory(dir: &Path) -> Result<Memory> {
    let raw: BTreeMap<String, u64> = fsutil::read_flat_keyed(&dir.join("memory.stat"))?
        .into_iter()
        .collect();
    Ok(Memory {
        cache: raw
            .get("total_cache")
            .or_else(|| raw.get("cache"))
            .copied()
            .unwrap_or(0),
        usage: v1_mem_entry(dir, "memory")?,
        swap: v1_mem_entry(dir, "memory.memsw")?,
        kernel: v1_mem_entry(dir, "memory.kmem")?,
        kernel_tcp: v1_mem_entry(dir, "memory.kmem.tcp")?,
        raw,
    })
}

/// `pids.*` (same files on v1 and v2). A `max` limit is reported as 0, as runc does.
pub(crate) fn pids(dir: &Path) -> Result<Pids> {
    let limit = fsutil::read_u64_or_zero(&dir.join("pids.max"))?;
    Ok(Pids {
        current: fsutil::read_u64_or_zero(&dir.join("pids.current"))?,
        limit: if limit == u64::MAX { 0 } else { limit },
    })
}

/// Parses a v1 blkio file: `MAJ:MIN Op value` lines (and `MAJ:MIN value`); `Total` lines
/// without a device are skipped.
pub(crate) fn parse_blkio_v1(text: &str) -> Vec<BlkioEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dev, op, value) = match f.as_slice() {
                [dev, op, v] => (*dev, op.to_string(), *v),
                [dev, v] if dev.contains(':') => (*dev, String::new(), *v),
                _ => return None,
            };
            let (maj, min) = dev.split_once(':')?;
            Some(BlkioEntry {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                op,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// `blkio.*` of a v1 group: the CFQ/BFQ files where they hold data, else the throttle ones.
pub(crate) fn v1_blkio(dir: &Path) -> Result<Blkio> {
    let read = |names: &[&str]| -> Result<Vec<BlkioEntry>> {
        for n in names {
            if let Some(t) = fsutil::read_opt(&dir.join(n))? {
                let v = parse_blkio_v1(&t);
                if !v.is_empty() {
                    return Ok(v);
                }
            }
        }
        Ok(Vec::new())
    };
    Ok(Blkio {
        io_service_bytes_recursive: read(&[
            "blkio.io_service_bytes_recursive",
            "blkio.bfq.io_service_bytes_recursive",
            "blkio.throttle.io_service_bytes_recursive",
            "blkio.throttle.io_service_bytes",
        ])?,
        io_serviced_recursive: read(&[
            "blkio.io_serviced_recursive",
            "blkio.bfq.io_serviced_recursive",
            "blkio.throttle.io_serviced_recursive",
            "blkio.throttle.io_serviced",
        ])?,
        io_queued_recursive: read(&["blkio.io_queued_recursive"])?,
        io_service_time_recursive: read(&["blkio.io_service_time_recursive"])?,
        io_wait_time_recursive: read(&["blkio.io_wait_time_recursive"])?,
        io_merged_recursive: read(&["blkio.io_merged_recursive"])?,
        io_time_recursive: read(&["blkio.time_recursive"])?,
        sectors_recursive: read(&["blkio.sectors_recursive"])?,
    })
}

/// The page sizes that have files in `dir` (`hugetlb.<size>.<suffix>`).
fn hugetlb_sizes(dir: &Path, suffix: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(_) => return Ok(out),
    };
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        if let Some(size) = name
            .strip_prefix("hugetlb.")
            .and_then(|r| r.strip_suffix(suffix))
        {
            if !size.contains('.') {
                out.push(size.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `hugetlb.*` of a v1 group.
pub(crate) fn v1_hugetlb(dir: &Path) -> Result<BTreeMap<String, Hugetlb>> {
    let mut out = BTreeMap::new();
    for size in hugetlb_sizes(dir, ".limit_in_bytes")? {
        let f = |s: &str| dir.join(format!("hugetlb.{size}.{s}"));
        out.insert(
            size.clone(),
            Hugetlb {
                usage: fsutil::read_u64_or_zero(&f("usage_in_bytes"))?,
                max: fsutil::read_u64_or_zero(&f("max_usage_in_bytes"))?,
                failcnt: fsutil::read_u64_or_zero(&f("failcnt"))?,
            },
        );
    }
    Ok(out)
}

// ---------------------------------------------------------------- cgroup v2 readers

/// `cpu.stat` of a v2 group (microseconds, converted to nanoseconds).
pub(crate) fn v2_cpu(dir: &Path) -> Result<Cpu> {
    let stat = fsutil::read_flat_keyed(&dir.join("cpu.stat"))?;
    let us = |k: &str| keyed(&stat, k).unwrap_or(0).saturating_mul(1000);
    Ok(Cpu {
        usage: CpuUsage {
            total: us("usage_usec"),
            kernel: us("system_usec"),
            user: us("user_usec"),
            ..Default::default()
        },
        throttling: Throttling {
            periods: keyed(&stat, "nr_periods").unwrap_or(0),
            throttled_periods: keyed(&stat, "nr_throttled").unwrap_or(0),
            throttled_time: us("throttled_usec"),
        },
    })
}

/// `memory.*` of a v2 group. As runc does, `swap` reports memory plus swap, and `failcnt`
/// is the `max` count of memory.events.
pub(crate) fn v2_memory(dir: &Path) -> Result<Memory> {
    let raw: BTreeMap<String, u64> = fsutil::read_flat_keyed(&dir.join("memory.stat"))?
        .into_iter()
        .collect();
    let events = fsutil::read_flat_keyed(&dir.join("memory.events"))?;
    let usage = MemoryEntry {
        limit: fsutil::read_u64_or_zero(&dir.join("memory.max"))?,
        usage: fsutil::read_u64_or_zero(&dir.join("memory.current"))?,
        max: fsutil::read_u64_or_zero(&dir.join("memory.peak"))?,
        failcnt: keyed(&events, "max").unwrap_or(0),
    };
    let mut swap = MemoryEntry::default();
    if let Some(cur) = fsutil::read_opt(&dir.join("memory.swap.current"))? {
        let cur = fsutil::parse_u64(&dir.join("memory.swap.current"), cur.trim())?;
        let max = fsutil::read_u64_or_zero(&dir.join("memory.swap.max"))?;
        let swap_events = fsutil::read_flat_keyed(&dir.join("memory.swap.events"))?;
        swap = MemoryEntry {
            usage: cur.saturating_add(usage.usage),
            limit: max.saturating_add(usage.limit),
            max: 0,
            failcnt: keyed(&swap_events, "fail").unwrap_or(0),
        };
    }
    Ok(Memory {
        cache: raw.get("file").copied().unwrap_or(0),
        usage,
        swap,
        raw,
        ..Default::default()
    })
}

/// Parses v2 `io.stat`: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..`.
pub(crate) fn parse_io_stat(text: &str) -> Blkio {
    let mut b = Blkio::default();
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let Some((maj, min)) = f.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse::<u64>(), min.parse::<u64>()) else {
            continue;
        };
        for kv in f {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(value) = v.parse::<u64>() else {
                continue;
            };
            let (list, op) = match k {
                "rbytes" => (&mut b.io_service_bytes_recursive, "Read"),
                "wbytes" => (&mut b.io_service_bytes_recursive, "Write"),
                "dbytes" => (&mut b.io_service_bytes_recursive, "Discard"),
                "rios" => (&mut b.io_serviced_recursive, "Read"),
                "wios" => (&mut b.io_serviced_recursive, "Write"),
                "dios" => (&mut b.io_serviced_recursive, "Discard"),
                _ => continue,
            };
            list.push(BlkioEntry {
                major,
                minor,
                op: op.into(),
                value,
            });
        }
    }
    b
}

/// `hugetlb.*` of a v2 group.
pub(crate) fn v2_hugetlb(dir: &Path) -> Result<BTreeMap<String, Hugetlb>> {
    let mut out = BTreeMap::new();
    for size in hugetlb_sizes(dir, ".current")? {
        let events = fsutil::read_flat_keyed(&dir.join(format!("hugetlb.{size}.events")))?;
        out.insert(
            size.clone(),
            Hugetlb {
                usage: fsutil::read_u64_or_zero(&dir.join(format!("hugetlb.{size}.current")))?,
                max: 0,
                failcnt: keyed(&events, "max").unwrap_or(0),
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (f, c) in files {
            std::fs::write(t.path().join(f), c).unwrap();
        }
        t
    }

    #[test]
    fn v2_files_become_runc_stats() {
        let t = dir(&[
            ("cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 7\nnr_throttled 2\nthrottled_usec 30\n"),
            ("memory.current", "4096\n"),
            ("memory.max", "max\n"),
            ("memory.peak", "8192\n"),
            ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            ("memory.stat", "anon 1024\nfile 2048\n"),
            ("memory.swap.current", "100\n"),
            ("memory.swap.max", "1000\n"),
            ("pids.current", "3\n"),
            ("pids.max", "max\n"),
            ("io.stat", "8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n"),
            ("hugetlb.2MB.current", "0\n"),
            ("hugetlb.2MB.max", "max\n"),
            ("hugetlb.2MB.events", "max 4\n"),
            ("hugetlb.2MB.rsvd.current", "0\n"),
        ]);
        let cpu = v2_cpu(t.path()).unwrap();
        assert_eq!(cpu.usage.total, 1_500_000);
        assert_eq!(cpu.usage.user, 1_000_000);
        assert_eq!(cpu.usage.kernel, 500_000);
        assert_eq!(cpu.throttling.throttled_time, 30_000);
        let mem = v2_memory(t.path()).unwrap();
        assert_eq!(mem.usage.usage, 4096);
        assert_eq!(mem.usage.limit, u64::MAX);
        assert_eq!(mem.usage.max, 8192);
        assert_eq!(mem.usage.failcnt, 3);
        assert_eq!(mem.cache, 2048);
        assert_eq!(mem.swap.usage, 4196);
        assert_eq!(mem.swap.limit, u64::MAX);
        let p = pids(t.path()).unwrap();
        assert_eq!((p.current, p.limit), (3, 0));
        let io = parse_io_stat(&fsutil::read(&t.path().join("io.stat")).unwrap());
        assert_eq!(io.io_service_bytes_recursive.len(), 3);
        assert_eq!(io.io_service_bytes_recursive[1].op, "Write");
        assert_eq!(io.io_service_bytes_recursive[1].value, 20);
        let h = v2_hugetlb(t.path()).unwrap();
        assert_eq!(h.keys().collect::<Vec<_>>(), ["2MB"]);
        assert_eq!(h["2MB"].failcnt, 4);

        let s = Stats {
            cpu,
            memory: mem,
            pids: p,
            blkio: io,
            hugetlb: h,
        };
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["cpu"]["usage"]["total"], 1_500_000);
        assert_eq!(j["cpu"]["throttling"]["throttledPeriods"], 2);
        assert_eq!(j["memory"]["usage"]["failcnt"], 3);
        assert_eq!(j["pids"]["current"], 3);
        assert!(
            j["pids"].get("limit").is_none(),
            "zero limit is omitted as in runc"
        );
        assert_eq!(j["blkio"]["ioServiceBytesRecursive"][0]["op"], "Read");
        assert_eq!(j["hugetlb"]["2MB"]["failcnt"], 4);
        assert_eq!(j["memory"]["kernelTCP"]["failcnt"], 0);
        let back: Stats = serde_json::from_value(j).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn v1_files_become_runc_stats() {
        let t = dir(&[
            ("cpuacct.usage", "123456\n"),
            ("cpuacct.usage_percpu", "100000 23456 \n"),
            ("cpuacct.stat", "user 2\nsystem 1\n"),
            (
                "cpu.stat",
                "nr_periods 5\nnr_throttled 1\nthrottled_time 999\n",
            ),
            ("memory.usage_in_bytes", "4096\n"),
            ("memory.max_usage_in_bytes", "8192\n"),
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory.failcnt", "0\n"),
            ("memory.stat", "cache 10\nrss 20\ntotal_cache 30\n"),
            (
                "blkio.throttle.io_service_bytes_recursive",
                "8:0 Read 4096\n8:0 Write 0\n8:0 Total 4096\nTotal 4096\n",
            ),
            ("hugetlb.2MB.limit_in_bytes", "9223372036854771712\n"),
            ("hugetlb.2MB.usage_in_bytes", "0\n"),
            ("hugetlb.2MB.failcnt", "2\n"),
        ]);
        let mut cpu = Cpu::default();
        v1_cpuacct(t.path(), &mut cpu).unwrap();
        v1_cpu(t.path(), &mut cpu).unwrap();
        assert_eq!(cpu.usage.total, 123456);
        assert_eq!(cpu.usage.percpu, [100000, 23456]);
        assert_eq!(cpu.usage.user, 2 * 1_000_000_000 / clock_ticks());
        assert_eq!(cpu.throttling.periods, 5);
        assert_eq!(cpu.throttling.throttled_time, 999);
        let mem = v1_memory(t.path()).unwrap();
        assert_eq!(mem.usage.usage, 4096);
        assert_eq!(mem.usage.max, 8192);
        assert_eq!(mem.usage.limit, 9223372036854771712);
        assert_eq!(mem.cache, 30);
        assert_eq!(mem.raw["rss"], 20);
        let b = v1_blkio(t.path()).unwrap();
        assert_eq!(b.io_service_bytes_recursive.len(), 3);
        assert_eq!(b.io_service_bytes_recursive[0].value, 4096);
        let h = v1_hugetlb(t.path()).unwrap();
        assert_eq!(h["2MB"].failcnt, 2);
    }
}
