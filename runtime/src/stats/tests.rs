//! Each StatsContainer field from fake cgroup trees holding what the kernel writes there.

use super::*;

fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = t.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    t
}

fn v1_dirs(root: &Path) -> HashMap<&'static str, PathBuf> {
    V1_CONTROLLERS
        .into_iter()
        .map(|c| (c, root.join(c)))
        .collect()
}

#[test]
fn v1_figures_are_kata_s() {
    let t = tree(&[
        ("cpuacct/cpuacct.usage", "123456789\n"),
        ("cpuacct/cpuacct.usage_percpu", "100000000 23456789 \n"),
        ("cpuacct/cpuacct.stat", "user 9\nsystem 3\n"),
        (
            "cpu/cpu.stat",
            "nr_periods 10\nnr_throttled 4\nthrottled_time 5000\n",
        ),
        ("memory/memory.usage_in_bytes", "4096000\n"),
        ("memory/memory.max_usage_in_bytes", "8192000\n"),
        ("memory/memory.failcnt", "2\n"),
        ("memory/memory.limit_in_bytes", "67108864\n"),
        ("memory/memory.memsw.usage_in_bytes", "5000000\n"),
        (
            "memory/memory.memsw.limit_in_bytes",
            "9223372036854771712\n",
        ),
        ("memory/memory.kmem.usage_in_bytes", "300000\n"),
        ("memory/memory.use_hierarchy", "1\n"),
        (
            "memory/memory.stat",
            "cache 1200\nrss 3400\ntotal_cache 1200\n",
        ),
        ("pids/pids.current", "3\n"),
        ("pids/pids.max", "max\n"),
        ("blkio/blkio.io_serviced_recursive", "Total 0\n"),
        (
            "blkio/blkio.throttle.io_service_bytes",
            "254:0 Read 4096\n254:0 Write 8388608\n254:0 Sync 8388608\n254:0 Async 4096\n\
             254:0 Discard 0\n254:0 Total 8392704\nTotal 8392704\n",
        ),
        (
            "blkio/blkio.throttle.io_serviced",
            "254:0 Read 1\n254:0 Write 8\n254:0 Total 9\nTotal 9\n",
        ),
        ("hugetlb/hugetlb.2MB.usage_in_bytes", "2097152\n"),
        ("hugetlb/hugetlb.2MB.max_usage_in_bytes", "4194304\n"),
        ("hugetlb/hugetlb.2MB.failcnt", "1\n"),
        ("hugetlb/hugetlb.2MB.rsvd.usage_in_bytes", "0\n"),
    ]);
    let s = v1(&v1_dirs(t.path()), 100).unwrap();
    let cpu = s.cpu_stats.cpu_usage.as_ref().unwrap();
    assert_eq!(cpu.total_usage, 123456789);
    assert_eq!(cpu.percpu_usage, [100000000, 23456789]);
    // Clock ticks (1/100 s here) become nanoseconds.
    assert_eq!(cpu.usage_in_usermode, 90_000_000);
    assert_eq!(cpu.usage_in_kernelmode, 30_000_000);
    let th = s.cpu_stats.throttling_data.as_ref().unwrap();
    assert_eq!(
        (th.periods, th.throttled_periods, th.throttled_time),
        (10, 4, 5000)
    );
    let m = s.memory_stats.as_ref().unwrap();
    assert_eq!(m.cache, 1200);
    let u = m.usage.as_ref().unwrap();
    assert_eq!(
        (u.usage, u.max_usage, u.failcnt, u.limit),
        (4096000, 8192000, 2, 64 << 20)
    );
    assert_eq!(m.swap_usage.usage, 5000000);
    assert_eq!(m.swap_usage.limit, 9223372036854771712);
    assert_eq!(m.kernel_usage.usage, 300000);
    assert_eq!(m.kernel_usage.limit, 0, "missing file");
    assert!(m.use_hierarchy);
    assert_eq!(m.stats["rss"], 3400);
    assert_eq!(m.stats.len(), 3);
    assert_eq!((s.pids_stats.current, s.pids_stats.limit), (3, 0));
    let b = s.blkio_stats.as_ref().unwrap();
    let ops: Vec<(&str, u64)> = b
        .io_service_bytes_recursive
        .iter()
        .map(|e| (e.op.as_str(), e.value))
        .collect();
    assert_eq!(
        ops,
        [
            ("read", 4096),
            ("write", 8388608),
            ("sync", 8388608),
            ("async", 4096),
            ("total", 8392704)
        ]
    );
    assert!(b
        .io_service_bytes_recursive
        .iter()
        .all(|e| (e.major, e.minor) == (254, 0)));
    assert_eq!(b.io_serviced_recursive[1].value, 8);
    assert!(b.io_queued_recursive.is_empty());
    assert_eq!(s.hugetlb_stats.len(), 1, "{:?}", s.hugetlb_stats);
    let h = &s.hugetlb_stats["2MB"];
    assert_eq!((h.usage, h.max_usage, h.failcnt), (2097152, 4194304, 1));
}

#[test]
fn v1_cfq_statistics_are_used_when_the_kernel_has_them() {
    let t = tree(&[
        (
            "blkio/blkio.io_serviced_recursive",
            "8:0 Read 5\n8:0 Write 6\n8:0 Sync 7\n8:0 Async 4\n8:0 Total 11\nTotal 11\n",
        ),
        (
            "blkio/blkio.io_service_bytes_recursive",
            "8:0 Read 20480\n8:0 Write 0\n8:0 Total 20480\n",
        ),
        ("blkio/blkio.time_recursive", "8:0 77\n"),
        ("blkio/blkio.sectors_recursive", "8:0 40\n"),
        ("blkio/blkio.throttle.io_service_bytes", "8:0 Read 1\n"),
    ]);
    // Only the blkio controller is mounted.
    let only_blkio = HashMap::from([("blkio", t.path().join("blkio"))]);
    let s = v1(&only_blkio, 100).unwrap();
    let b = s.blkio_stats.as_ref().unwrap();
    assert_eq!(b.io_serviced_recursive.len(), 5);
    assert_eq!(b.io_service_bytes_recursive[0].value, 20480);
    assert_eq!(b.io_time_recursive[0].value, 77);
    assert_eq!(b.io_time_recursive[0].op, "");
    assert_eq!(b.sectors_recursive[0].value, 40);
    // Controllers the machine lacks read as nothing, not as errors.
    assert!(s.memory_stats.is_none() && s.pids_stats.is_none() && s.hugetlb_stats.is_empty());
}

#[test]
fn v2_microseconds_become_nanoseconds_and_max_is_named() {
    let t = tree(&[
        (
            "cpu.stat",
            "usage_usec 7730\nuser_usec 4387\nsystem_usec 3343\nnr_periods 20\n\
             nr_throttled 2\nthrottled_usec 150\n",
        ),
        ("memory.current", "1048576\n"),
        ("memory.peak", "2097152\n"),
        ("memory.max", "max\n"),
        ("memory.events", "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n"),
        ("memory.swap.current", "4096\n"),
        ("memory.swap.max", "max\n"),
        ("memory.swap.events", "high 0\nmax 0\nfail 3\n"),
        (
            "memory.stat",
            "anon 524288\nfile 262144\nkernel_stack 16384\n",
        ),
        ("pids.current", "2\n"),
        ("pids.max", "100\n"),
        (
            "io.stat",
            "254:16 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
        ),
        ("hugetlb.1GB.current", "0\n"),
        ("hugetlb.1GB.events", "max 2\n"),
        ("hugetlb.1GB.rsvd.current", "0\n"),
    ]);
    let s = v2(t.path()).unwrap();
    let cpu = s.cpu_stats.cpu_usage.as_ref().unwrap();
    assert_eq!(
        (
            cpu.total_usage,
            cpu.usage_in_usermode,
            cpu.usage_in_kernelmode
        ),
        (7_730_000, 4_387_000, 3_343_000)
    );
    assert!(cpu.percpu_usage.is_empty());
    let th = s.cpu_stats.throttling_data.as_ref().unwrap();
    assert_eq!(
        (th.periods, th.throttled_periods, th.throttled_time),
        (20, 2, 150_000)
    );
    let m = s.memory_stats.as_ref().unwrap();
    let u = m.usage.as_ref().unwrap();
    assert_eq!(
        (u.usage, u.max_usage, u.failcnt, u.limit),
        (1048576, 2097152, 5, u64::MAX)
    );
    let sw = m.swap_usage.as_ref().unwrap();
    assert_eq!((sw.usage, sw.failcnt, sw.limit), (4096, 3, u64::MAX));
    assert_eq!(m.cache, 262144);
    assert!(!m.use_hierarchy);
    assert_eq!(m.stats["kernel_stack"], 16384);
    assert_eq!((s.pids_stats.current, s.pids_stats.limit), (2, 100));
    let io: Vec<(&str, u64)> = s
        .blkio_stats
        .io_service_bytes_recursive
        .iter()
        .map(|e| (e.op.as_str(), e.value))
        .collect();
    assert_eq!(
        io,
        [
            ("read", 4096),
            ("write", 8192),
            ("rios", 1),
            ("wios", 2),
            ("dbytes", 0),
            ("dios", 0)
        ]
    );
    assert_eq!(s.blkio_stats.io_service_bytes_recursive[0].minor, 16);
    assert_eq!(s.hugetlb_stats.len(), 1);
    assert_eq!(s.hugetlb_stats["1GB"].failcnt, 2);
}

#[test]
fn unreadable_or_malformed_files_are_errors_naming_them() {
    let t = tree(&[("pids.current", "lots\n")]);
    match v2(t.path()) {
        Err(RuntimeError::Internal(m)) => assert!(m.contains("pids.current"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn network_stats_are_every_interface_but_loopback() {
    let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n  \
eth0: 123456     789    1    2    0     0          0         3    65432     321    4    5    0     0       0          0\n";
    let n = network(text);
    assert_eq!(n.len(), 1, "{n:?}");
    let e = &n[0];
    assert_eq!(e.name, "eth0");
    assert_eq!(
        (e.rx_bytes, e.rx_packets, e.rx_errors, e.rx_dropped),
        (123456, 789, 1, 2)
    );
    assert_eq!(
        (e.tx_bytes, e.tx_packets, e.tx_errors, e.tx_dropped),
        (65432, 321, 4, 5)
    );
}
