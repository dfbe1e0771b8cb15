//! [`ContainerRuntime`] on youki's `libcontainer` (containers, exec, signals, freezer) and
//! `libcgroups` (stats, updates, OOM counters), cgroups v1 and v2.
//!
//! Terminals: libcontainer's console-socket path changes the *process-wide* working directory
//! while it connects, which a multi-threaded agent cannot allow. So the sandbox makes the pty
//! itself, passes the slave as stdin/stdout/stderr, and [`ControllingTtyExecutor`] makes it the
//! controlling terminal in the container process (already a session leader) just before exec.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use libcgroups::common::{CgroupConfig, CgroupManager, CgroupSetup, ControllerOpt};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use vigil_protos::agent as pb;

use crate::error::{Result, RuntimeError};
use crate::runtime::{ContainerRuntime, OomWake, ProcessIo};

/// libcontainer binds and connects its start-notification sockets after a *process-wide*
/// `chdir` into the container's state directory (to dodge the 108-byte socket path limit).
/// Two such calls at once would bind or connect in each other's directory, so create, start
/// and exec, the calls that do it, take this lock. It lasts for the fork and the hand-shake
/// (milliseconds), never for a container's life. It is a static because what it guards, the
/// working directory, belongs to the whole process, whatever number of runtimes it holds.
/// The agent itself uses only absolute paths, so the short-lived change does not affect its
/// other threads.
static CWD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// libcontainer keeps one state directory per container under `state_root`.
pub struct LibcontainerRuntime {
    state_root: PathBuf,
    watchdog: Watchdog,
    /// The guest runs from its initramfs, where pivot_root(2) is refused (EINVAL): containers
    /// then get their root by moving the mount and chroot, as Kata's agent does in that case.
    no_pivot: bool,
}

impl LibcontainerRuntime {
    pub fn new(state_root: impl Into<PathBuf>) -> LibcontainerRuntime {
        LibcontainerRuntime {
            state_root: state_root.into(),
            watchdog: Watchdog::start(),
            no_pivot: root_is_initramfs(),
        }
    }

    fn load(&self, id: &str) -> Result<Container> {
        let dir = self.state_root.join(id);
        if !dir.exists() {
            return Err(RuntimeError::not_found("container", id));
        }
        Container::load(dir)
            .map_err(|e| RuntimeError::internal(format!("loading container {id}"), e))
    }

    fn cwd_guard(&self) -> CwdGuard {
        let lock = CWD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        // libcontainer does not change back when the bind or connect fails (say the container's
        // init died first), which would leave the whole agent in a directory about to be
        // deleted: restore the working directory ourselves, whatever happened.
        let saved = std::fs::File::open(".").ok();
        // libcontainer also writes a spec's oomScoreAdj into /proc/self (the agent's own score,
        // inherited by the child): put the agent's back afterwards, or a BestEffort pod's 1000
        // would make the agent the OOM killer's first choice.
        let oom_score_adj = std::fs::read_to_string(OOM_SCORE_ADJ).ok();
        CwdGuard {
            saved,
            oom_score_adj,
            _watch: self.watchdog.watch(),
            _lock: lock,
        }
    }

    fn builder(&self, id: &str, io: ProcessIo) -> Result<ContainerBuilder> {
        std::fs::create_dir_all(&self.state_root)
            .map_err(|e| RuntimeError::internal(self.state_root.display(), e))?;
        let mut b = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(&self.state_root)
            .map_err(|e| RuntimeError::internal("runtime state directory", e))?;
        if io.controlling_tty {
            b = b.with_executor(ControllingTtyExecutor);
        }
        if let Some(fd) = io.stdin {
            b = b.with_stdin(fd);
        }
        if let Some(fd) = io.stdout {
            b = b.with_stdout(fd);
        }
        if let Some(fd) = io.stderr {
            b = b.with_stderr(fd);
        }
        Ok(b)
    }

    fn cgroup(&self, id: &str) -> Result<libcgroups::common::AnyCgroupManager> {
        let config = libcontainer::config::YoukiConfig::load(self.state_root.join(id))
            .map_err(|e| RuntimeError::internal(format!("container {id} config"), e))?;
        libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path: config.cgroup_path,
            systemd_cgroup: false,
            container_name: id.to_string(),
        })
        .map_err(|e| RuntimeError::internal(format!("container {id} cgroup"), e))
    }

    fn cgroup_path(&self, id: &str) -> Result<PathBuf> {
        libcontainer::config::YoukiConfig::load(self.state_root.join(id))
            .map(|c| c.cgroup_path)
            .map_err(|e| RuntimeError::internal(format!("container {id} config"), e))
    }
}

const OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

/// Undoes libcontainer's process-wide changes to the calling process (see `cwd_guard`).
struct CwdGuard {
    saved: Option<std::fs::File>,
    oom_score_adj: Option<String>,
    _watch: WatchedCall,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl Drop for CwdGuard {
    fn drop(&mut self) {
        let restored = match &self.saved {
            Some(dir) => nix::unistd::fchdir(std::os::fd::AsRawFd::as_raw_fd(dir)).is_ok(),
            None => false,
        };
        if !restored {
            let _ = std::env::set_current_dir("/");
        }
        if let Some(adj) = &self.oom_score_adj {
            if std::fs::read_to_string(OOM_SCORE_ADJ).ok().as_ref() != Some(adj) {
                if let Err(e) = std::fs::write(OOM_SCORE_ADJ, adj.trim()) {
                    tracing::warn!(error = %e, "restoring the agent's oom_score_adj");
                }
            }
        }
    }
}

/// Un-sticks libcontainer's helper children.
///
/// libcontainer forks with a raw `clone3` from our multi-threaded process, and its helper
/// child ends with `std::process::exit`, whose clean-up takes a std-internal lock (the
/// stack-overflow handler table) that another thread may have held at the instant of the
/// clone; the child then waits forever and so does the call that waits for it (seen with gdb
/// in this crate's tests, about one create in a few hundred under heavy thread churn).
/// By then the helper has done its work, and libcontainer accepts a helper killed by a signal.
/// So while a forking call has run for longer than [`STUCK_AFTER`], this long-lived thread
/// (created once: starting threads is what races) SIGKILLs any child that is a copy of this
/// executable, single-threaded, and waiting on a futex: a stuck helper. A container process
/// never is one (it waits in `accept` for its start signal, or runs its own program). The
/// real fix is to fork from a single-threaded helper process, as Kata's agent re-executes
/// itself; see README.md.
struct Watchdog {
    active: Arc<Mutex<Vec<std::time::Instant>>>,
}

const STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

struct WatchedCall {
    started: std::time::Instant,
    active: Arc<Mutex<Vec<std::time::Instant>>>,
}

impl Drop for WatchedCall {
    fn drop(&mut self) {
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = a.iter().position(|t| *t == self.started) {
            a.swap_remove(i);
        }
    }
}

impl Watchdog {
    fn start() -> Watchdog {
        let active: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
        let seen = Arc::downgrade(&active);
        let spawned = std::thread::Builder::new()
            .name("vigil-runtime-watchdog".into())
            .spawn(move || loop {
                std::thread::park_timeout(std::time::Duration::from_secs(1));
                let Some(active) = seen.upgrade() else { return };
                let overdue = active
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .any(|t| t.elapsed() > STUCK_AFTER);
                if overdue {
                    kill_stuck_helpers();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no watchdog for libcontainer's helper processes");
        }
        Watchdog { active }
    }

    fn watch(&self) -> WatchedCall {
        let started = std::time::Instant::now();
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(started);
        WatchedCall {
            started,
            active: self.active.clone(),
        }
    }
}

fn kill_stuck_helpers() {
    let Ok(me) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let proc_dir = PathBuf::from(format!("/proc/{pid}"));
            let same_exe = std::fs::read_link(proc_dir.join("exe")).is_ok_and(|e| e == me);
            let one_thread = std::fs::read_dir(proc_dir.join("task")).is_ok_and(|t| t.count() == 1);
            let on_futex =
                std::fs::read_to_string(proc_dir.join("wchan")).is_ok_and(|w| w.contains("futex"));
            if same_exe && one_thread && on_futex {
                tracing::warn!(pid, "killing a stuck libcontainer helper process");
                // SAFETY: plain kill of our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Whether `/` is the kernel's initial ramfs (file system type `rootfs` in mountinfo).
fn root_is_initramfs() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| mountinfo_root_is_rootfs(&m))
}

fn mountinfo_root_is_rootfs(mountinfo: &str) -> bool {
    // Fields: id parent major:minor root mount-point options... - fstype source super-options;
    // the last line for "/" is the mount on top.
    mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some("/"))
        .and_then(|l| l.split(" - ").nth(1))
        .and_then(|tail| tail.split(' ').next())
        .is_some_and(|fstype| fstype == "rootfs")
}

fn lc_err(what: String) -> impl FnOnce(libcontainer::error::LibcontainerError) -> RuntimeError {
    move |e| RuntimeError::Internal(format!("{what}: {e}"))
}

impl ContainerRuntime for LibcontainerRuntime {
    fn create(&self, id: &str, bundle: &Path, io: ProcessIo) -> Result<i32> {
        let _cwd = self.cwd_guard();
        let container = self
            .builder(id, io)?
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .with_no_pivot(self.no_pivot)
            .build()
            .map_err(lc_err(format!("creating container {id}")))?;
        container
            .pid()
            .map(|p| p.as_raw())
            .ok_or_else(|| RuntimeError::Internal(format!("container {id} has no init pid")))
    }

    fn start(&self, id: &str) -> Result<()> {
        let _cwd = self.cwd_guard();
        self.load(id)?
            .start()
            .map_err(lc_err(format!("starting container {id}")))
    }

    fn exec(&self, id: &str, process: &oci_spec::runtime::Process, io: ProcessIo) -> Result<i32> {
        // libcontainer reads the exec'd process from a file, as `runc exec --process` does.
        let dir = self.state_root.join(id);
        let file = tempfile_in(&dir, "exec-process", ".json")?;
        serde_json::to_writer(
            std::fs::File::create(&file).map_err(|e| RuntimeError::internal(file.display(), e))?,
            process,
        )
        .map_err(|e| RuntimeError::internal("writing the exec process", e))?;
        let _cwd = self.cwd_guard();
        let result = self.builder(id, io).and_then(|b| {
            b.as_tenant()
                .with_process(Some(&file))
                .with_detach(true)
                .build()
                .map_err(lc_err(format!("exec in container {id}")))
        });
        let _ = std::fs::remove_file(&file);
        Ok(result?.as_raw())
    }

    fn signal_all(&self, id: &str, signal: i32) -> Result<()> {
        let sig = Signal::try_from(signal)
            .map_err(|_| RuntimeError::invalid("signal", format!("{signal} is not a signal")))?;
        self.load(id)?
            .kill(sig, true)
            .map_err(lc_err(format!("signalling container {id}")))
    }

    fn pause(&self, id: &str) -> Result<()> {
        self.load(id)?
            .pause()
            .map_err(lc_err(format!("pausing container {id}")))
    }

    fn resume(&self, id: &str) -> Result<()> {
        self.load(id)?
            .resume()
            .map_err(lc_err(format!("resuming container {id}")))
    }

    fn update(&self, id: &str, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        let disable_oom_killer = resources
            .memory()
            .as_ref()
            .and_then(|m| m.disable_oom_killer())
            .unwrap_or(false);
        self.cgroup(id)?
            .apply(&ControllerOpt {
                resources,
                disable_oom_killer,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| RuntimeError::internal(format!("updating container {id}"), e))
    }

    fn restrict_devices(
        &self,
        id: &str,
        rules: &[oci_spec::runtime::LinuxDeviceCgroup],
    ) -> Result<()> {
        crate::devices::restrict(&self.cgroup_path(id)?, rules)
    }

    fn stats(&self, id: &str) -> Result<pb::CgroupStats> {
        // Read by vigil in Kata's units and layout (libcgroups reports raw ticks and µs).
        crate::stats::CgroupDirs::of(&self.cgroup_path(id)?)?.stats()
    }

    fn oom_kills(&self, id: &str) -> Result<u64> {
        let path = self.cgroup_path(id)?;
        let rel = path.strip_prefix("/").unwrap_or(&path);
        let setup = libcgroups::common::get_cgroup_setup()
            .map_err(|e| RuntimeError::internal("cgroup setup", e))?;
        let (file, key) = match setup {
            CgroupSetup::Unified => (
                Path::new("/sys/fs/cgroup").join(rel).join("memory.events"),
                "oom_kill",
            ),
            _ => (
                Path::new("/sys/fs/cgroup/memory")
                    .join(rel)
                    .join("memory.oom_control"),
                "oom_kill",
            ),
        };
        let text = std::fs::read_to_string(&file)
            .map_err(|e| RuntimeError::internal(file.display(), e))?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0))
    }

    fn oom_watch(&self, id: &str) -> Result<(OwnedFd, OomWake)> {
        let path = self.cgroup_path(id)?;
        let rel = path.strip_prefix("/").unwrap_or(&path);
        let setup = libcgroups::common::get_cgroup_setup()
            .map_err(|e| RuntimeError::internal("cgroup setup", e))?;
        let os_err = |what: &str| RuntimeError::internal(what, std::io::Error::last_os_error());
        if let CgroupSetup::Unified = setup {
            // cgroup v2: memory.events is modified at every OOM (and OOM kill).
            let file = Path::new("/sys/fs/cgroup").join(rel).join("memory.events");
            let c = std::ffi::CString::new(file.as_os_str().as_encoded_bytes())
                .map_err(|_| RuntimeError::Internal("cgroup path with NUL".into()))?;
            // SAFETY: plain syscalls; the descriptor is owned right away.
            let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
            if fd < 0 {
                return Err(os_err("inotify_init1"));
            }
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_MODIFY) } < 0 {
                return Err(os_err("watching memory.events"));
            }
            return Ok((fd, OomWake::CheckCounter));
        }
        // cgroup v1: an eventfd registered on memory.oom_control fires at every OOM and when
        // the cgroup is removed.
        let dir = Path::new("/sys/fs/cgroup/memory").join(rel);
        let control = std::fs::File::open(dir.join("memory.oom_control"))
            .map_err(|e| RuntimeError::internal("memory.oom_control", e))?;
        // SAFETY: plain syscall; the descriptor is owned right away.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(os_err("eventfd"));
        }
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        std::fs::write(
            dir.join("cgroup.event_control"),
            format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()),
        )
        .map_err(|e| RuntimeError::internal("cgroup.event_control", e))?;
        Ok((efd, OomWake::IsOom))
    }

    fn delete(&self, id: &str) -> Result<()> {
        match self.load(id) {
            Err(RuntimeError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
            Ok(mut c) => c
                .delete(true)
                .map_err(lc_err(format!("deleting container {id}"))),
        }
    }
}

fn tempfile_in(dir: &Path, prefix: &str, suffix: &str) -> Result<PathBuf> {
    // Exec requests on one container are serialised by the sandbox, so pid + a counter of
    // existing files is unique enough; create_new makes a collision an error, not an overwrite.
    for n in 0..1000u32 {
        let p = dir.join(format!("{prefix}-{}-{n}{suffix}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(_) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(RuntimeError::internal(p.display(), e)),
        }
    }
    Err(RuntimeError::Internal(format!(
        "no free exec file name in {}",
        dir.display()
    )))
}

/// Runs the workload like libcontainer's default executor, after making stdin (a pty slave)
/// the controlling terminal of the process's session.
#[derive(Clone)]
struct ControllingTtyExecutor;

impl Executor for ControllingTtyExecutor {
    fn exec(&self, spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorError> {
        // SAFETY: TIOCSCTTY on fd 0 takes an integer argument and touches no memory.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(ExecutorError::Other(format!(
                "making the terminal the controlling terminal: {}",
                std::io::Error::last_os_error()
            )));
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::mountinfo_root_is_rootfs;

    #[test]
    fn initramfs_root_is_told_from_a_disk_root() {
        let initramfs = "1 1 0:2 / / rw shared:1 - rootfs rootfs rw,size=230000k\n\
                         20 1 0:19 / /proc rw,nosuid - proc proc rw\n";
        assert!(mountinfo_root_is_rootfs(initramfs));
        let disk = "26 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
                    27 26 0:5 / /dev rw - devtmpfs udev rw\n";
        assert!(!mountinfo_root_is_rootfs(disk));
        // A root mounted over the initramfs (switch_root without a new namespace): the top one.
        let over = "1 1 0:2 / / rw - rootfs rootfs rw\n30 1 254:1 / / rw - ext4 /dev/vda1 rw\n";
        assert!(!mountinfo_root_is_rootfs(over));
        assert!(!mountinfo_root_is_rootfs(""));
    }
}
