//! [`ContainerRuntime`] on youki's `libcontainer` (containers, exec, signals, freezer) and
//! `libcgroups` (stats, updates, OOM counters), cgroups v1 and v2.
//!
//! Terminals: libcontainer's console-socket path changes the *process-wide* working directory
//! while it connects, which a multi-threaded agent cannot allow. So the sandbox makes the pty
//! itself, passes the slave as stdin/stdout/stderr, and [`ControllingTtyExecutor`] makes it the
//! controlling terminal in the container process (already a session leader) just before exec.
//!
//! Forking calls (create, start, exec) run in the single-threaded fork helper
//! ([`crate::fork_helper`]), never in this multi-threaded process.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupConfig, CgroupManager, CgroupSetup, ControllerOpt};
use libcontainer::container::Container;
use libcontainer::signal::Signal;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use vigil_protos::agent as pb;

use crate::error::{Result, RuntimeError};
use crate::fork_helper::ForkHelper;
use crate::runtime::{ContainerRuntime, OomWake, ProcessIo};

/// libcontainer keeps one state directory per container under `state_root`.
pub struct LibcontainerRuntime {
    state_root: PathBuf,
    helper: ForkHelper,
    /// The guest runs from its initramfs, where pivot_root(2) is refused (EINVAL): containers
    /// then get their root by moving the mount and chroot, as Kata's agent does in that case.
    no_pivot: bool,
}

impl LibcontainerRuntime {
    /// A runtime whose fork helper is this executable (`/proc/self/exe`): the agent, which
    /// serves as the helper when started as one (`fork_helper::run_if_helper` in its `main`).
    pub fn new(state_root: impl Into<PathBuf>) -> LibcontainerRuntime {
        LibcontainerRuntime::with_fork_helper(state_root, "/proc/self/exe", None)
    }

    /// A runtime whose fork helper is `program` (a binary whose `main` starts with
    /// `fork_helper::run_if_helper`), logging as `log` says (see `SandboxConfig::fork_helper_log`).
    pub fn with_fork_helper(
        state_root: impl Into<PathBuf>,
        program: impl Into<PathBuf>,
        log: Option<String>,
    ) -> LibcontainerRuntime {
        LibcontainerRuntime {
            state_root: state_root.into(),
            helper: ForkHelper::new(program, log),
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

    fn state_root(&self) -> Result<&Path> {
        std::fs::create_dir_all(&self.state_root)
            .map_err(|e| RuntimeError::internal(self.state_root.display(), e))?;
        Ok(&self.state_root)
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
        self.helper
            .create(self.state_root()?, id, bundle, self.no_pivot, io)
    }

    fn start(&self, id: &str) -> Result<()> {
        self.load(id)?;
        self.helper.start(&self.state_root, id)
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
        let result = self
            .state_root()
            .and_then(|root| self.helper.exec(root, id, &file, io));
        let _ = std::fs::remove_file(&file);
        result
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
pub(crate) struct ControllingTtyExecutor;

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
