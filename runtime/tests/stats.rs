//! StatsContainer on real containers, each figure checked against the kernel's own cgroup
//! files (cgroup v1 on a legacy or hybrid machine, v2 on a unified one) and against what the
//! workload measured of itself. Needs root.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use vigil_protos::agent::*;

/// The container's directory in one controller (v1), or its one directory (v2).
fn cgroup_dir(controller: &str, cid: &str) -> Option<PathBuf> {
    [
        format!("/sys/fs/cgroup/{controller}/vigil/{cid}"),
        format!("/sys/fs/cgroup/vigil/{cid}"),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn unified() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

fn keyed(path: &Path) -> std::collections::HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().parse().unwrap()))
        .collect()
}

fn number(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// The disk (`MAJOR:MINOR`, a partition's parent) holding `path`, if it is on one.
fn disk_of(path: &Path) -> Option<String> {
    let dev = std::fs::metadata(path).unwrap().dev();
    let sys = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ));
    let sys = sys.canonicalize().ok()?;
    let disk = if sys.join("partition").exists() {
        sys.parent()?.to_path_buf()
    } else {
        sys
    };
    Some(
        std::fs::read_to_string(disk.join("dev"))
            .ok()?
            .trim()
            .to_string(),
    )
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as u64 }
}

async fn stats(f: &Fixture, cid: &str) -> StatsContainerResponse {
    f.sandbox
        .stats_container(StatsContainerRequest {
            container_id: cid.into(),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// `a` and `b` measure the same thing in the same unit, by different clocks.
fn same_magnitude(a: u64, b: u64, what: &str) {
    assert!(
        a > 0 && b > 0 && a / 4 <= b && b / 4 <= a,
        "{what}: {a} and {b} are not the same quantity in the same unit"
    );
}

#[test]
fn every_figure_is_the_kernel_s_in_kata_s_units() {
    run_in_runtime(async {
        if !privileged("every_figure_is_the_kernel_s_in_kata_s_units") {
            return;
        }
        let f = Fixture::new("stats").await;
        let pid = std::process::id();

        // CPU: a busy shell that reports its own CPU time (clock ticks, /proc/self/stat) and
        // writes 1 MiB with O_DIRECT (block I/O charged to its cgroup), then exits.
        let busy = format!("stats-busy-{pid}");
        let script = "read go; i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; \
                      dd if=/dev/zero of=/tmp/stats-io-$$ bs=64k count=16 oflag=direct 2>/dev/null; \
                      rm -f /tmp/stats-io-$$; cat /proc/$$/stat";
        f.run(&busy, &["sh", "-c", script]).await;
        // cgroup v1 counts block I/O only on devices with a throttling rule (v2 always does):
        // give the rootfs's disk a rule no write reaches.
        let disk = disk_of(&f.rootfs);
        if let (Some(disk), false) = (&disk, unified()) {
            let rule = cgroup_dir("blkio", &busy)
                .unwrap()
                .join("blkio.throttle.write_bps_device");
            std::fs::write(rule, format!("{disk} 100000000000")).unwrap();
        }
        f.sandbox
            .write_stdin(WriteStreamRequest {
                container_id: busy.clone(),
                data: b"go\n".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        let own = f.read_all(&busy, "", true).await;
        assert_eq!(f.wait(&busy, "").await, 0);
        // utime and stime are fields 14 and 15 (after the parenthesised command name).
        let after_comm = own.rsplit_once(')').unwrap().1;
        let fields: Vec<u64> = after_comm
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        let ns_per_tick = 1_000_000_000 / clock_ticks();
        let s = stats(&f, &busy).await;
        let cg = s.cgroup_stats.as_ref().unwrap();
        let cpu = cg.cpu_stats.cpu_usage.as_ref().unwrap();
        same_magnitude(
            cpu.usage_in_usermode,
            fields[0] * ns_per_tick,
            "user time (ns)",
        );
        same_magnitude(
            cpu.usage_in_usermode + cpu.usage_in_kernelmode,
            cpu.total_usage,
            "user + system vs total (ns)",
        );
        if unified() {
            let st = keyed(&cgroup_dir("", &busy).unwrap().join("cpu.stat"));
            assert_eq!(cpu.total_usage, st["usage_usec"] * 1000);
            assert_eq!(cpu.usage_in_usermode, st["user_usec"] * 1000);
            assert_eq!(cpu.usage_in_kernelmode, st["system_usec"] * 1000);
            assert!(cpu.percpu_usage.is_empty());
        } else {
            let d = cgroup_dir("cpuacct", &busy).unwrap();
            let st = keyed(&d.join("cpuacct.stat"));
            assert_eq!(cpu.total_usage, number(&d.join("cpuacct.usage")));
            assert_eq!(cpu.usage_in_usermode, st["user"] * ns_per_tick);
            assert_eq!(cpu.usage_in_kernelmode, st["system"] * ns_per_tick);
            assert_eq!(cpu.percpu_usage.iter().sum::<u64>(), cpu.total_usage);
        }
        let th = cg.cpu_stats.throttling_data.as_ref().unwrap();
        let cpu_dir = cgroup_dir("cpu", &busy).unwrap();
        let st = keyed(&cpu_dir.join("cpu.stat"));
        assert_eq!(th.periods, st["nr_periods"]);
        assert_eq!(th.throttled_periods, st["nr_throttled"]);

        // Block I/O, where the rootfs is on a disk: the direct writes are counted.
        let written: u64 = cg
            .blkio_stats
            .io_service_bytes_recursive
            .iter()
            .filter(|e| e.op == "write")
            .map(|e| e.value)
            .sum();
        if disk.is_some() {
            assert!(written >= 1 << 20, "{:?}", cg.blkio_stats);
        } else {
            eprintln!("block I/O not checked: the rootfs is not on a disk");
        }
        f.remove(&busy).await;

        // Memory and pids of a running container with an exec'd process.
        let idle = format!("stats-idle-{pid}");
        f.run(&idle, &["sleep", "1000"]).await;
        f.exec(&idle, "second", &["sleep", "1000"], false)
            .await
            .unwrap();
        let s = stats(&f, &idle).await;
        let cg = s.cgroup_stats.as_ref().unwrap();
        assert_eq!((cg.pids_stats.current, cg.pids_stats.limit), (2, 100));
        let m = cg.memory_stats.as_ref().unwrap();
        assert_eq!(m.usage.limit, 64 << 20, "the spec's limit");
        assert!(m.usage.usage > 0 && m.usage.max_usage >= m.usage.usage || unified());
        let mem = cgroup_dir("memory", &idle).unwrap();
        if unified() {
            assert!(m.stats.contains_key("anon"), "{:?}", m.stats);
            assert!(!m.use_hierarchy);
            assert_eq!(m.cache, m.stats["file"]);
        } else {
            assert!(m.stats.contains_key("rss"), "{:?}", m.stats);
            assert_eq!(
                m.use_hierarchy,
                number(&mem.join("memory.use_hierarchy")) == 1
            );
            assert_eq!(m.cache, m.stats["cache"]);
            assert_eq!(m.usage.failcnt, number(&mem.join("memory.failcnt")));
            if mem.join("memory.memsw.limit_in_bytes").exists() {
                assert_eq!(
                    m.swap_usage.limit,
                    number(&mem.join("memory.memsw.limit_in_bytes"))
                );
            }
        }

        // Huge pages: one entry per size the controller has, named as Kata names them.
        let sizes: BTreeSet<String> = std::fs::read_dir("/sys/kernel/mm/hugepages")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let kb: u64 = e
                            .file_name()
                            .to_string_lossy()
                            .strip_prefix("hugepages-")?
                            .strip_suffix("kB")?
                            .parse()
                            .ok()?;
                        Some(match kb {
                            kb if kb >= 1 << 20 => format!("{}GB", kb >> 20),
                            kb if kb >= 1 << 10 => format!("{}MB", kb >> 10),
                            kb => format!("{kb}KB"),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let got: BTreeSet<String> = cg.hugetlb_stats.keys().cloned().collect();
        let controller = if unified() {
            std::fs::read_to_string(mem.join("cgroup.controllers"))
                .unwrap_or_default()
                .contains("hugetlb")
        } else {
            cgroup_dir("hugetlb", &idle).is_some()
        };
        if controller {
            assert_eq!(got, sizes);
        } else {
            assert!(got.is_empty(), "{got:?}");
        }

        // Network: the pod's (here the test's) interfaces but loopback.
        let names: BTreeSet<String> = s.network_stats.iter().map(|n| n.name.clone()).collect();
        let expected: BTreeSet<String> = std::fs::read_to_string("/proc/net/dev")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, _)| n.trim().to_string())
            .filter(|n| n != "lo")
            .collect();
        assert_eq!(names, expected);
        f.remove(&idle).await;
        f.destroy().await;
    });
}
