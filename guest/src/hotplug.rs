//! CPU and memory hot-plug: `OnlineCPUMem`, `MemHotplugByProbe`, and the memory facts of
//! `GetGuestDetails`.
//!
//! After the host hot-plugs vCPUs or memory, the runtime asks the agent to bring them online
//! (Kata's semantics): with `nb_cpus > 0`, offline CPUs are onlined until that many are online,
//! waiting up to [`ONLINE_TIMEOUT`] for the kernel to announce CPUs still arriving; unless
//! `cpu_only`, every offline memory block is onlined. The waiting rides on uevents, never on a
//! polling loop. (Kata also waits 5 s, retrying every 50 ms; and, on cgroup v1, widens each
//! container's cpuset, which the cgroup v2 guest does not need.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vigil_protos::agent::{MemHotplugByProbeRequest, OnlineCPUMemRequest};

use crate::error::{invalid, GuestError, Result};
use crate::uevent::UeventListener;

/// How long `OnlineCPUMem` waits for the CPUs it was told to expect.
pub const ONLINE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where CPU and memory blocks are found (normally under /sys/devices/system).
#[derive(Debug, Clone)]
pub struct Hotplug {
    cpu: PathBuf,
    memory: PathBuf,
}

impl Default for Hotplug {
    fn default() -> Self {
        Hotplug::at(Path::new("/sys/devices/system"))
    }
}

/// What the agent's `GetGuestDetails` reports about memory hot-plug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryFacts {
    /// `block_size_bytes`; 0 when the kernel has no memory hot-plug.
    pub block_size: u64,
    /// Whether the kernel has the `probe` interface (`CONFIG_ARCH_MEMORY_PROBE`).
    pub probe: bool,
}

impl Hotplug {
    /// The `cpu/` and `memory/` trees under `system` (a fake tree in tests).
    pub fn at(system: &Path) -> Hotplug {
        Hotplug {
            cpu: system.join("cpu"),
            memory: system.join("memory"),
        }
    }

    /// The facts asked for; what is not asked for is not read (and reported as 0 / false).
    pub fn memory_facts(&self, block_size: bool, probe: bool) -> Result<MemoryFacts> {
        Ok(MemoryFacts {
            block_size: if block_size { self.block_size()? } else { 0 },
            probe: probe && self.probe_supported()?,
        })
    }

    /// The memory hot-plug block size. A kernel without memory hot-plug has no such file, which
    /// Kata reports as 0; any other failure is an error.
    fn block_size(&self) -> Result<u64> {
        let path = self.memory.join("block_size_bytes");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => {
                return Err(GuestError::Internal(format!(
                    "reading {}: {e}",
                    path.display()
                )))
            }
        };
        u64::from_str_radix(text.trim().trim_start_matches("0x"), 16).map_err(|e| {
            GuestError::Internal(format!(
                "{}: {:?} is not a hex number: {e}",
                path.display(),
                text.trim()
            ))
        })
    }

    fn probe_supported(&self) -> Result<bool> {
        let path = self.memory.join("probe");
        match std::fs::metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(GuestError::Internal(format!("{}: {e}", path.display()))),
        }
    }

    /// `OnlineCPUMem`. The work is done before answering whatever `wait` says, as Kata's agent
    /// does: the runtime reads the answer as "the resources are usable".
    pub async fn online_cpu_mem(&self, req: OnlineCPUMemRequest) -> Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            // Subscribed before the first look, so a CPU that arrives in between is announced.
            let listener = if req.nb_cpus > 0 {
                Some(UeventListener::open().map_err(|e| {
                    GuestError::Internal(format!("listening for CPU announcements: {e}"))
                })?)
            } else {
                None
            };
            if let Some(listener) = &listener {
                let deadline = Instant::now() + ONLINE_TIMEOUT;
                let online = me.online_cpus(req.nb_cpus, |_| {
                    Ok(listener
                        .next(deadline)
                        .map_err(|e| GuestError::Internal(format!("reading uevents: {e}")))?
                        .is_some())
                })?;
                tracing::info!(online, wanted = req.nb_cpus, "OnlineCPUMem: CPUs online");
            }
            if !req.cpu_only {
                let onlined = me.online_memory()?;
                tracing::info!(onlined, "OnlineCPUMem: memory blocks onlined");
            }
            Ok(())
        })
        .await
        .map_err(|e| GuestError::Internal(format!("hot-plug task failed: {e}")))?
    }

    /// Onlines offline CPUs until `wanted` are online. `wait` blocks until the kernel announces
    /// something (true) or the time is up (false); the CPUs are counted again after each.
    pub(crate) fn online_cpus(
        &self,
        wanted: u32,
        mut wait: impl FnMut(Instant) -> Result<bool>,
    ) -> Result<u32> {
        loop {
            let online = self.online_cpu_count()?;
            if online >= wanted {
                return Ok(online);
            }
            let mut onlined = 0;
            for (name, path) in offline_objects(&self.cpu, "cpu")? {
                if online + onlined >= wanted {
                    break;
                }
                std::fs::write(&path, "1").map_err(|e| {
                    GuestError::Internal(format!("onlining {name} ({}): {e}", path.display()))
                })?;
                onlined += 1;
            }
            if onlined > 0 {
                continue;
            }
            if !wait(Instant::now())? {
                let online = self.online_cpu_count()?;
                return Err(GuestError::DeadlineExceeded(format!(
                    "nb_cpus: {wanted} CPUs wanted online, {online} are after waiting {}s for more to be hot-plugged",
                    ONLINE_TIMEOUT.as_secs()
                )));
            }
        }
    }

    /// CPUs online: those whose `online` reads 1, plus those that cannot go offline (no
    /// `online` file, like cpu0). Read from the CPUs themselves, which change as soon as a write
    /// to them returns.
    fn online_cpu_count(&self) -> Result<u32> {
        let (online, _) = objects(&self.cpu, "cpu")?;
        Ok(online as u32)
    }

    /// Onlines every offline memory block; answers how many. A block the kernel refuses does
    /// not stop the others; the refusals are reported together.
    pub(crate) fn online_memory(&self) -> Result<usize> {
        let mut done = 0;
        let mut failed = Vec::new();
        for (name, path) in offline_objects(&self.memory, "memory")? {
            match std::fs::write(&path, "1") {
                Ok(()) => done += 1,
                Err(e) => failed.push(format!("{name}: {e}")),
            }
        }
        if failed.is_empty() {
            Ok(done)
        } else {
            Err(GuestError::Internal(format!(
                "onlining memory blocks ({done} onlined): {}",
                failed.join("; ")
            )))
        }
    }

    /// `MemHotplugByProbe`: tells the kernel, through `memory/probe`, about memory the host added
    /// at each address. Addresses must be block-aligned; all are checked before any is written.
    pub fn probe_memory(&self, req: &MemHotplugByProbeRequest) -> Result<()> {
        if req.memHotplugProbeAddr.is_empty() {
            return Err(invalid("memHotplugProbeAddr", "empty"));
        }
        let probe = self.memory.join("probe");
        if !self.probe_supported()? {
            return Err(GuestError::FailedPrecondition(format!(
                "memHotplugProbeAddr: the guest kernel has no {} (CONFIG_ARCH_MEMORY_PROBE); \
                 GetGuestDetails reports support_mem_hotplug_probe = false",
                probe.display()
            )));
        }
        let block = self.block_size()?;
        for (i, addr) in req.memHotplugProbeAddr.iter().enumerate() {
            if block > 0 && addr % block != 0 {
                return Err(invalid(
                    &format!("memHotplugProbeAddr[{i}]"),
                    format!("{addr:#x} is not aligned to the memory block size {block:#x}"),
                ));
            }
        }
        for (i, addr) in req.memHotplugProbeAddr.iter().enumerate() {
            std::fs::write(&probe, format!("{addr:#x}")).map_err(|e| {
                let done = if i == 0 {
                    String::new()
                } else {
                    format!(" (memHotplugProbeAddr[0..{i}] were probed)")
                };
                GuestError::Internal(format!(
                    "memHotplugProbeAddr[{i}]: probing {addr:#x}: {e}{done}"
                ))
            })?;
        }
        Ok(())
    }
}

/// `<prefix>N` entries of `dir` whose `online` file reads 0, in numeric order.
fn offline_objects(dir: &Path, prefix: &str) -> Result<Vec<(String, PathBuf)>> {
    Ok(objects(dir, prefix)?.1)
}

/// The `<prefix>N` entries of `dir`: how many are online, and the offline ones in numeric
/// order with their `online` file.
fn objects(dir: &Path, prefix: &str) -> Result<(usize, Vec<(String, PathBuf)>)> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| GuestError::Internal(format!("listing {}: {e}", dir.display())))?;
    let mut found = Vec::new();
    let mut up = 0;
    for entry in entries {
        let entry =
            entry.map_err(|e| GuestError::Internal(format!("listing {}: {e}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(n) = name
            .strip_prefix(prefix)
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let online = entry.path().join("online");
        // No `online` file: the object cannot be taken offline (cpu0), so it is online.
        let state = match std::fs::read_to_string(&online) {
            Ok(state) => state,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                up += 1;
                continue;
            }
            Err(e) => {
                return Err(GuestError::Internal(format!(
                    "reading {}: {e}",
                    online.display()
                )))
            }
        };
        if state.trim() == "0" {
            found.push((n, name, online));
        } else {
            up += 1;
        }
    }
    found.sort();
    Ok((
        up,
        found.into_iter().map(|(_, name, p)| (name, p)).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /sys/devices/system with `cpus` CPUs, those in `online` online.
    fn fake_system(cpus: u32, online: &[u32]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let cpu = dir.path().join("cpu");
        std::fs::create_dir_all(&cpu).unwrap();
        for n in 0..cpus {
            add_cpu(dir.path(), n, online.contains(&n));
        }
        std::fs::create_dir_all(dir.path().join("memory")).unwrap();
        dir
    }

    fn add_cpu(system: &Path, n: u32, online: bool) {
        let d = system.join(format!("cpu/cpu{n}"));
        std::fs::create_dir_all(&d).unwrap();
        if n > 0 {
            std::fs::write(d.join("online"), if online { "1\n" } else { "0\n" }).unwrap();
        }
    }

    #[test]
    fn cpus_are_onlined_up_to_the_number_asked_and_late_ones_are_awaited() {
        let sys = fake_system(4, &[0]);
        let hp = Hotplug::at(sys.path());
        let system = sys.path().to_path_buf();
        // The fake "kernel" updates cpu/online after each write: emulate that on each wait.
        let mut waits = 0;
        let online = hp.online_cpus(2, |_| {
            waits += 1;
            Ok(true)
        });
        // Only one CPU was needed beyond cpu0: exactly one was onlined, the lowest.
        assert_eq!(online.unwrap(), 2);
        assert_eq!(
            std::fs::read_to_string(system.join("cpu/cpu1/online")).unwrap(),
            "1"
        );
        assert_eq!(
            std::fs::read_to_string(system.join("cpu/cpu2/online")).unwrap(),
            "0\n"
        );
        assert_eq!(waits, 0);

        // Six wanted, four present: the fifth and sixth arrive while waiting.
        let mut arrivals = vec![5u32, 4];
        let got = hp.online_cpus(6, |_| {
            if let Some(n) = arrivals.pop() {
                add_cpu(&system, n, false);
            }
            Ok(true)
        });
        assert_eq!(got.unwrap(), 6);
        assert_eq!(hp.online_cpu_count().unwrap(), 6);

        // More than will ever come: a deadline error naming what is online.
        let e = hp.online_cpus(9, |_| Ok(false)).unwrap_err();
        assert!(
            matches!(&e, GuestError::DeadlineExceeded(m) if m.contains("9 CPUs wanted online, 6 are")),
            "{e}"
        );
    }

    #[test]
    fn offline_memory_blocks_are_onlined_and_facts_read() {
        let sys = fake_system(1, &[0]);
        let mem = sys.path().join("memory");
        for (n, state) in [(0, "1"), (1, "0"), (2, "0")] {
            std::fs::create_dir_all(mem.join(format!("memory{n}"))).unwrap();
            std::fs::write(mem.join(format!("memory{n}/online")), state).unwrap();
        }
        let hp = Hotplug::at(sys.path());
        assert_eq!(hp.online_memory().unwrap(), 2);
        for n in 0..3 {
            assert_eq!(
                std::fs::read_to_string(mem.join(format!("memory{n}/online"))).unwrap(),
                "1"
            );
        }
        assert_eq!(hp.online_memory().unwrap(), 0);

        // No hot-plug in the kernel: block size 0, no probe, as Kata reports.
        assert_eq!(
            hp.memory_facts(true, true).unwrap(),
            MemoryFacts {
                block_size: 0,
                probe: false
            }
        );
        std::fs::write(mem.join("block_size_bytes"), "8000000\n").unwrap();
        std::fs::write(mem.join("probe"), "").unwrap();
        assert_eq!(
            hp.memory_facts(true, true).unwrap(),
            MemoryFacts {
                block_size: 0x800_0000,
                probe: true
            }
        );
        // Not asked: not read.
        assert_eq!(
            hp.memory_facts(false, false).unwrap(),
            MemoryFacts {
                block_size: 0,
                probe: false
            }
        );
        std::fs::write(mem.join("block_size_bytes"), "zz\n").unwrap();
        let e = hp.memory_facts(true, false).unwrap_err().to_string();
        assert!(e.contains("block_size_bytes"), "{e}");
    }

    #[test]
    fn probe_writes_aligned_addresses_and_refuses_the_rest_before_writing() {
        let sys = fake_system(1, &[0]);
        let mem = sys.path().join("memory");
        let hp = Hotplug::at(sys.path());
        let req = |addrs: &[u64]| MemHotplugByProbeRequest {
            memHotplugProbeAddr: addrs.to_vec(),
            ..Default::default()
        };
        let e = hp.probe_memory(&req(&[0x1_0000_0000])).unwrap_err();
        assert!(matches!(e, GuestError::FailedPrecondition(_)), "{e}");

        std::fs::write(mem.join("block_size_bytes"), "8000000").unwrap();
        std::fs::write(mem.join("probe"), "").unwrap();
        let e = hp
            .probe_memory(&req(&[0x1_0000_0000, 0x1_0000_1000]))
            .unwrap_err();
        assert!(e.to_string().starts_with("memHotplugProbeAddr[1]"), "{e}");
        assert_eq!(std::fs::read_to_string(mem.join("probe")).unwrap(), "");
        assert!(hp.probe_memory(&req(&[])).is_err());

        hp.probe_memory(&req(&[0x1_0000_0000])).unwrap();
        assert_eq!(
            std::fs::read_to_string(mem.join("probe")).unwrap(),
            "0x100000000"
        );
    }
}
