//! StatsContainer's figures, read from the container's cgroup files and the pod's network
//! interfaces, in the units and layout Kata's agent reports (rustjail's `cgroups/fs`, on
//! cgroups-rs 0.5), which Kata's shims turn into containerd metrics.
//!
//! | field | cgroup v1 | cgroup v2 |
//! |---|---|---|
//! | cpu `total_usage` (ns) | `cpuacct.usage` | `cpu.stat` `usage_usec` × 1000 |
//! | cpu `percpu_usage` (ns) | `cpuacct.usage_percpu` | empty (v2 has none) |
//! | cpu `usage_in_usermode` / `_kernelmode` (ns) | `cpuacct.stat` `user` / `system` ticks × 10⁹ / `CLK_TCK` | `cpu.stat` `user_usec` / `system_usec` × 1000 |
//! | throttling `periods`, `throttled_periods` | `cpu.stat` `nr_periods`, `nr_throttled` | the same |
//! | throttling `throttled_time` (ns) | `cpu.stat` `throttled_time` | `cpu.stat` `throttled_usec` × 1000 ¹ |
//! | memory `cache` | `memory.stat` `cache` | `memory.stat` `file` ¹ |
//! | memory `usage` {usage, max_usage, failcnt, limit} | `memory.{usage_in_bytes, max_usage_in_bytes, failcnt, limit_in_bytes}` | `memory.current`, `memory.peak`, `memory.events` `max` ¹, `memory.max` ("max": 2⁶⁴−1) |
//! | memory `swap_usage` | `memory.memsw.*` (memory + swap, as v1 counts it) | `memory.swap.current`, `.peak`, `.events` `fail`, `.max` ¹ |
//! | memory `kernel_usage` | `memory.kmem.*` | zero (v2 has no separate kernel counter) |
//! | memory `use_hierarchy` | `memory.use_hierarchy` is 1 | false |
//! | memory `stats` | every `memory.stat` line | every `memory.stat` line |
//! | pids `current`, `limit` | `pids.current`, `pids.max` ("max": 0) | the same |
//! | blkio | the `blkio.*_recursive` files (CFQ/BFQ kernels that have `blkio.io_serviced_recursive`), else `blkio.throttle.io_service_bytes` and `.io_serviced`; ops `read`, `write`, `sync`, `async`, `total` per device | `io.stat`, all in `io_service_bytes_recursive` with ops `read`, `write`, `rios`, `wios`, `dbytes`, `dios` |
//! | hugetlb, by size (`2MB`, `1GB`) | `hugetlb.<size>.{usage_in_bytes, max_usage_in_bytes, failcnt}` | `hugetlb.<size>.current`, zero, `hugetlb.<size>.events` `max` |
//! | network stats | every interface of the pod's (the guest's) network namespace but loopback, from `/proc/net/dev` ² | the same |
//!
//! ¹ Where Kata's agent reports a figure that cannot be right, vigil reports the right one:
//! on v2 Kata reads v1's key names (`throttled_time`, `cache`) and reports 0, reports a
//! `failcnt` of 0 and a swap limit of 0 for "max". A file the kernel does not have (no swap
//! accounting, no `memory.peak` before Linux 5.19) reads as 0, as in Kata; a missing
//! `memory.kmem.limit_in_bytes` is 0 here (Kata: 2⁶⁴−1).
//! ² Kata's agent sends no network stats (its shims read the host side of the pod's
//! interfaces); vigil's pod shares the guest's network namespace, so these are the pod's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use vigil_protos::agent as pb;

use crate::error::{Result, RuntimeError};

/// Where a container's cgroup files are.
pub(crate) enum CgroupDirs {
    /// cgroup v1: one directory per controller (`cpu`, `cpuacct`, `memory`, `pids`, `blkio`,
    /// `hugetlb`); a controller the machine lacks is absent.
    V1(HashMap<&'static str, PathBuf>),
    /// cgroup v2: the container's one directory.
    V2(PathBuf),
}

const V1_CONTROLLERS: [&str; 6] = ["cpu", "cpuacct", "memory", "pids", "blkio", "hugetlb"];

impl CgroupDirs {
    /// The directories of the cgroup `path` (absolute in the hierarchy) on this machine.
    pub(crate) fn of(path: &Path) -> Result<CgroupDirs> {
        use libcgroups::common::CgroupSetup;
        let rel = path.strip_prefix("/").unwrap_or(path);
        let setup = libcgroups::common::get_cgroup_setup()
            .map_err(|e| RuntimeError::internal("cgroup setup", e))?;
        if let CgroupSetup::Unified = setup {
            let root = libcgroups::v2::util::get_unified_mount_point()
                .map_err(|e| RuntimeError::internal("cgroup2 mount", e))?;
            return Ok(CgroupDirs::V2(root.join(rel)));
        }
        let mounts = libcgroups::v1::util::list_supported_mount_points()
            .map_err(|e| RuntimeError::internal("cgroup v1 mounts", e))?;
        let dirs = mounts
            .into_iter()
            .filter_map(|(c, m)| {
                let name = V1_CONTROLLERS.into_iter().find(|n| *n == c.to_string())?;
                Some((name, m.join(rel)))
            })
            .collect();
        Ok(CgroupDirs::V1(dirs))
    }

    /// Everything StatsContainer's `cgroup_stats` holds.
    pub(crate) fn stats(&self) -> Result<pb::CgroupStats> {
        match self {
            CgroupDirs::V1(dirs) => v1(dirs, clock_ticks()),
            CgroupDirs::V2(dir) => v2(dir),
        }
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// A cgroup file's text, `None` if the kernel has no such file.
fn read(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RuntimeError::internal(path.display(), e)),
    }
}

fn parse_u64(path: &Path, text: &str) -> Result<u64> {
    let t = text.trim();
    if t == "max" {
        return Ok(u64::MAX);
    }
    // v1 limits can read as -1 (unlimited) for some files.
    t.parse::<u64>()
        .or_else(|_| t.parse::<i64>().map(|v| v as u64))
        .map_err(|_| RuntimeError::Internal(format!("{}: {t:?} is not a number", path.display())))
}

/// A single-number file ("max" is 2⁶⁴−1), 0 when missing.
fn number(dir: &Path, file: &str) -> Result<u64> {
    let p = dir.join(file);
    read(&p)?.map_or(Ok(0), |t| parse_u64(&p, &t))
}

/// A flat keyed file (`key value` lines), empty when missing.
fn keyed(dir: &Path, file: &str) -> Result<HashMap<String, u64>> {
    let p = dir.join(file);
    let Some(text) = read(&p)? else {
        return Ok(HashMap::new());
    };
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| Ok((k.to_string(), parse_u64(&p, v)?)))
        .collect()
}

fn memory_data(dir: &Path, prefix: &str) -> Result<pb::MemoryData> {
    Ok(pb::MemoryData {
        usage: number(dir, &format!("{prefix}.usage_in_bytes"))?,
        max_usage: number(dir, &format!("{prefix}.max_usage_in_bytes"))?,
        failcnt: number(dir, &format!("{prefix}.failcnt"))?,
        limit: number(dir, &format!("{prefix}.limit_in_bytes"))?,
        ..Default::default()
    })
}

fn v1(dirs: &HashMap<&'static str, PathBuf>, ticks_per_sec: u64) -> Result<pb::CgroupStats> {
    let mut out = pb::CgroupStats::new();
    let mut cpu = pb::CpuStats::new();
    if let Some(d) = dirs.get("cpuacct") {
        let stat = keyed(d, "cpuacct.stat")?;
        let ns = |ticks: u64| ticks.saturating_mul(1_000_000_000) / ticks_per_sec.max(1);
        let p = d.join("cpuacct.usage_percpu");
        let percpu = read(&p)?
            .unwrap_or_default()
            .split_whitespace()
            .map(|v| parse_u64(&p, v))
            .collect::<Result<Vec<u64>>>()?;
        cpu.cpu_usage = Some(pb::CpuUsage {
            total_usage: number(d, "cpuacct.usage")?,
            percpu_usage: percpu,
            usage_in_usermode: ns(stat.get("user").copied().unwrap_or(0)),
            usage_in_kernelmode: ns(stat.get("system").copied().unwrap_or(0)),
            ..Default::default()
        })
        .into();
    }
    if let Some(d) = dirs.get("cpu") {
        let stat = keyed(d, "cpu.stat")?;
        cpu.throttling_data = Some(throttling(&stat, "throttled_time", 1)).into();
    }
    out.cpu_stats = Some(cpu).into();
    if let Some(d) = dirs.get("memory") {
        let stat = keyed(d, "memory.stat")?;
        out.memory_stats = Some(pb::MemoryStats {
            cache: stat.get("cache").copied().unwrap_or(0),
            usage: Some(memory_data(d, "memory")?).into(),
            swap_usage: Some(memory_data(d, "memory.memsw")?).into(),
            kernel_usage: Some(memory_data(d, "memory.kmem")?).into(),
            use_hierarchy: number(d, "memory.use_hierarchy")? == 1,
            stats: stat,
            ..Default::default()
        })
        .into();
    }
    if let Some(d) = dirs.get("pids") {
        out.pids_stats = Some(pids(d)?).into();
    }
    if let Some(d) = dirs.get("blkio") {
        out.blkio_stats = Some(blkio_v1(d)?).into();
    }
    if let Some(d) = dirs.get("hugetlb") {
        out.hugetlb_stats = hugetlb(d, ".usage_in_bytes", |d, size| {
            Ok(pb::HugetlbStats {
                usage: number(d, &format!("hugetlb.{size}.usage_in_bytes"))?,
                max_usage: number(d, &format!("hugetlb.{size}.max_usage_in_bytes"))?,
                failcnt: number(d, &format!("hugetlb.{size}.failcnt"))?,
                ..Default::default()
            })
        })?;
    }
    Ok(out)
}

fn throttling(stat: &HashMap<String, u64>, time_key: &str, to_ns: u64) -> pb::ThrottlingData {
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    pb::ThrottlingData {
        periods: get("nr_periods"),
        throttled_periods: get("nr_throttled"),
        throttled_time: get(time_key).saturating_mul(to_ns),
        ..Default::default()
    }
}

fn pids(d: &Path) -> Result<pb::PidsStats> {
    let limit = number(d, "pids.max")?;
    Ok(pb::PidsStats {
        current: number(d, "pids.current")?,
        // Kata's convention: no limit ("max") is 0.
        limit: if limit == u64::MAX { 0 } else { limit },
        ..Default::default()
    })
}

fn entry(major: u64, minor: u64, op: &str, value: u64) -> pb::BlkioStatsEntry {
    pb::BlkioStatsEntry {
        major,
        minor,
        op: op.to_string(),
        value,
        ..Default::default()
    }
}

fn device(path: &Path, text: &str) -> Result<(u64, u64)> {
    let bad = || RuntimeError::Internal(format!("{}: {text:?} is not MAJOR:MINOR", path.display()));
    let (ma, mi) = text.split_once(':').ok_or_else(bad)?;
    Ok((
        ma.parse().map_err(|_| bad())?,
        mi.parse().map_err(|_| bad())?,
    ))
}

/// A v1 blkio file of `MAJ:MIN Op value` lines: per device, in order of appearance, the
/// five ops Kata reports (`read`, `write`, `sync`, `async`, `total`; others are left out).
fn io_service(d: &Path, file: &str) -> Result<Vec<pb::BlkioStatsEntry>> {
    let p = d.join(file);
    let text = read(&p)?.unwrap_or_default();
    let mut devices: Vec<((u64, u64), [u64; 5])> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [dev, op, value] = f[..] else { continue };
        let Some(i) = ["read", "write", "sync", "async", "total"]
            .iter()
            .position(|o| o.eq_ignore_ascii_case(op))
        else {
            continue;
        };
        let dev = device(&p, dev)?;
        let value = parse_u64(&p, value)?;
        match devices.iter_mut().find(|(d, _)| *d == dev) {
            Some((_, ops)) => ops[i] = value,
            None => {
                let mut ops = [0; 5];
                ops[i] = value;
                devices.push((dev, ops));
            }
        }
    }
    Ok(devices
        .into_iter()
        .flat_map(|((ma, mi), ops)| {
            ["read", "write", "sync", "async", "total"]
                .into_iter()
                .zip(ops)
                .map(move |(op, v)| entry(ma, mi, op, v))
        })
        .collect())
}

/// A v1 blkio file of `MAJ:MIN value` lines (op "").
fn io_data(d: &Path, file: &str) -> Result<Vec<pb::BlkioStatsEntry>> {
    let p = d.join(file);
    let text = read(&p)?.unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [dev, value] = f[..] {
            if dev.contains(':') {
                let (ma, mi) = device(&p, dev)?;
                out.push(entry(ma, mi, "", parse_u64(&p, value)?));
            }
        }
    }
    Ok(out)
}

fn blkio_v1(d: &Path) -> Result<pb::BlkioStats> {
    let serviced = io_service(d, "blkio.io_serviced_recursive")?;
    if serviced.is_empty() {
        // No CFQ/BFQ statistics here: the throttling layer's counters, as Kata (and runc).
        return Ok(pb::BlkioStats {
            io_service_bytes_recursive: io_service(d, "blkio.throttle.io_service_bytes")?,
            io_serviced_recursive: io_service(d, "blkio.throttle.io_serviced")?,
            ..Default::default()
        });
    }
    Ok(pb::BlkioStats {
        io_service_bytes_recursive: io_service(d, "blkio.io_service_bytes_recursive")?,
        io_serviced_recursive: serviced,
        io_queued_recursive: io_service(d, "blkio.io_queued_recursive")?,
        io_service_time_recursive: io_service(d, "blkio.io_service_time_recursive")?,
        io_wait_time_recursive: io_service(d, "blkio.io_wait_time_recursive")?,
        io_merged_recursive: io_service(d, "blkio.io_merged_recursive")?,
        io_time_recursive: io_data(d, "blkio.time_recursive")?,
        sectors_recursive: io_data(d, "blkio.sectors_recursive")?,
        ..Default::default()
    })
}

/// The hugetlb sizes a cgroup directory has files for (`hugetlb.<size><suffix>`).
fn hugetlb(
    d: &Path,
    suffix: &str,
    per_size: impl Fn(&Path, &str) -> Result<pb::HugetlbStats>,
) -> Result<HashMap<String, pb::HugetlbStats>> {
    let entries = match std::fs::read_dir(d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(RuntimeError::internal(d.display(), e)),
    };
    let mut out = HashMap::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(size) = name
            .strip_prefix("hugetlb.")
            .and_then(|n| n.strip_suffix(suffix))
            .filter(|s| !s.contains('.'))
        {
            out.insert(size.to_string(), per_size(d, size)?);
        }
    }
    Ok(out)
}

fn v2(d: &Path) -> Result<pb::CgroupStats> {
    let cpu = keyed(d, "cpu.stat")?;
    let us = |k: &str| cpu.get(k).copied().unwrap_or(0).saturating_mul(1000);
    let memory_stat = keyed(d, "memory.stat")?;
    let events = |file: &str, key: &str| -> Result<u64> {
        Ok(keyed(d, file)?.get(key).copied().unwrap_or(0))
    };
    let memory = pb::MemoryData {
        usage: number(d, "memory.current")?,
        max_usage: number(d, "memory.peak")?,
        failcnt: events("memory.events", "max")?,
        limit: number(d, "memory.max")?,
        ..Default::default()
    };
    let swap = pb::MemoryData {
        usage: number(d, "memory.swap.current")?,
        max_usage: number(d, "memory.swap.peak")?,
        failcnt: events("memory.swap.events", "fail")?,
        limit: number(d, "memory.swap.max")?,
        ..Default::default()
    };
    let mut io = Vec::new();
    let p = d.join("io.stat");
    for line in read(&p)?.unwrap_or_default().lines() {
        let mut f = line.split_whitespace();
        let Some((ma, mi)) = f.next().map(|dev| device(&p, dev)).transpose()? else {
            continue;
        };
        let kv: HashMap<&str, &str> = f.filter_map(|x| x.split_once('=')).collect();
        for (op, key) in [
            ("read", "rbytes"),
            ("write", "wbytes"),
            ("rios", "rios"),
            ("wios", "wios"),
            ("dbytes", "dbytes"),
            ("dios", "dios"),
        ] {
            let v = kv.get(key).map_or(Ok(0), |v| parse_u64(&p, v))?;
            io.push(entry(ma, mi, op, v));
        }
    }
    Ok(pb::CgroupStats {
        cpu_stats: Some(pb::CpuStats {
            cpu_usage: Some(pb::CpuUsage {
                total_usage: us("usage_usec"),
                usage_in_usermode: us("user_usec"),
                usage_in_kernelmode: us("system_usec"),
                ..Default::default()
            })
            .into(),
            throttling_data: Some(throttling(&cpu, "throttled_usec", 1000)).into(),
            ..Default::default()
        })
        .into(),
        memory_stats: Some(pb::MemoryStats {
            cache: memory_stat.get("file").copied().unwrap_or(0),
            usage: Some(memory).into(),
            swap_usage: Some(swap).into(),
            kernel_usage: Some(pb::MemoryData::new()).into(),
            use_hierarchy: false,
            stats: memory_stat,
            ..Default::default()
        })
        .into(),
        pids_stats: Some(pids(d)?).into(),
        blkio_stats: Some(pb::BlkioStats {
            io_service_bytes_recursive: io,
            ..Default::default()
        })
        .into(),
        hugetlb_stats: hugetlb(d, ".current", |d, size| {
            Ok(pb::HugetlbStats {
                usage: number(d, &format!("hugetlb.{size}.current"))?,
                max_usage: 0,
                failcnt: keyed(d, &format!("hugetlb.{size}.events"))?
                    .get("max")
                    .copied()
                    .unwrap_or(0),
                ..Default::default()
            })
        })?,
        ..Default::default()
    })
}

/// The pod's network interfaces (every one but loopback) from `/proc/net/dev`'s text.
pub(crate) fn network(proc_net_dev: &str) -> Vec<pb::NetworkStats> {
    proc_net_dev
        .lines()
        .filter_map(|l| {
            let (name, counters) = l.split_once(':')?;
            let name = name.trim();
            let v: Vec<u64> = counters
                .split_whitespace()
                .map(|c| c.parse().ok())
                .collect::<Option<Vec<u64>>>()?;
            // 8 receive then 8 transmit counters: bytes packets errs drop fifo frame/colls ...
            if name == "lo" || v.len() < 16 {
                return None;
            }
            Some(pb::NetworkStats {
                name: name.to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
                ..Default::default()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
