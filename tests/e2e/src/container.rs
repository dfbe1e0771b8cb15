//! Helpers for tests that run containers through the agent (as root).

use std::path::{Path, PathBuf};

/// A rootfs under `dir`: a static busybox (Debian's `busybox-static`) with `applets` linked
/// in `/bin`, and the usual mount points.
pub fn busybox_rootfs(dir: &Path, applets: &[&str]) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("rootfs directory");
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("/bin/busybox: install the busybox-static package");
    for applet in applets {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
            .expect("applet link");
    }
    rootfs
}

/// Bytes from the Kata JSON shape (an array of numbers).
pub fn bytes(v: &serde_json::Value) -> Vec<u8> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b.as_u64())
                .map(|b| b as u8)
                .collect()
        })
        .unwrap_or_default()
}

/// If a test fails half-way, the agent is stopped with its containers still running: kill
/// what is in their cgroups (v1 pids controller, this machine's) and detach the mounts under
/// `sandbox_dir` (deepest first), so nothing outlives the test.
pub struct Cleanup {
    pub cgroup_parent: String,
    pub containers: Vec<String>,
    pub sandbox_dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let procs = Path::new("/sys/fs/cgroup/pids")
                .join(&self.cgroup_parent)
                .join(c)
                .join("cgroup.procs");
            for pid in std::fs::read_to_string(procs).unwrap_or_default().lines() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain kill of a process of the test's own container.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&self.sandbox_dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: plain syscall.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}
