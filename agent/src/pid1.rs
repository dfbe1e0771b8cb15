//! PID 1 duties: what the agent must do when the kernel starts it as the guest's init.
//!
//! A minimal confidential-VM guest has no init system: the initramfs holds the agent as
//! `/init` plus the kernel modules it needs. The agent then has to:
//!
//! - mount `/proc`, `/sys`, `/dev` (devtmpfs), `/dev/pts`, `/dev/shm`, `/run` and the cgroup
//!   v2 hierarchy ([`setup`]), and configfs once the modules are in (configfs-tsm); the agent
//!   reads `/proc/cmdline` right after;
//! - load the kernel modules shipped in the initramfs (the virtio transport, vsock, network
//!   and console drivers are modules in distribution kernels), in the order that
//!   `/etc/vigil/modules` lists them;
//! - bring up the loopback interface and, if the kernel command line says
//!   `agent.ip=IFACE:ADDR/PREFIX`, one network interface with a static IPv4 address (the
//!   guest reaches the KBS through it; there is no DHCP client in the guest);
//! - turn Ctrl-Alt-Del into SIGINT, so that the host can ask for a clean shutdown through
//!   the VMM (QEMU `sendkey ctrl-alt-delete`): SIGTERM and SIGINT then end the agent, which
//!   powers the VM off ([`power_off`]);
//! - reap orphaned children ([`Reaper`]) without stealing the exit status of children the
//!   agent waits on itself;
//! - on a fatal error, print one line to the console and power off ([`fatal`]): exiting is
//!   not an option for PID 1 (the kernel panics).
//!
//! Nothing here runs unless [`is_init`] is true; outside a guest (tests, a developer's
//! machine) the agent keeps the ordinary process behaviour.

use std::collections::HashSet;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::cmdline::KernelCmdline;

/// The file that lists the modules to load, one per line, in load order.
pub const MODULE_LIST: &str = "/etc/vigil/modules";
/// Where relative names in [`MODULE_LIST`] live; without a list, every `.ko` file here is
/// loaded in file-name order.
pub const MODULE_DIR: &str = "/lib/modules/vigil";
/// Kernel parameter naming one interface to configure: `agent.ip=eth0:10.0.2.15/24`.
pub const IP_PARAM: &str = "agent.ip";

/// True when this process is the init of its PID namespace.
pub fn is_init() -> bool {
    std::process::id() == 1
}

/// A failed PID 1 duty, naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum Pid1Error {
    #[error("mounting {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        source: std::io::Error,
    },
    #[error("reading the module list {path}: {source}")]
    ModuleList {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading kernel module {path}: {source}")]
    Module {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel parameter {IP_PARAM}={value:?}: {reason}")]
    BadIpParam { value: String, reason: String },
    #[error("configuring network interface {iface}: {step}: {source}")]
    Network {
        iface: String,
        step: &'static str,
        source: std::io::Error,
    },
    #[error("reading the kernel command line: {0}")]
    Cmdline(std::io::Error),
}

/// One file system that init mounts.
struct MountSpec {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
    data: &'static str,
    /// Without it the agent cannot work (no /proc: no kernel command line); the others only
    /// matter for containers and are logged when missing.
    required: bool,
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

const MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        required: true,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        required: true,
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
        required: true,
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=0755",
        required: true,
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: "mode=0620,ptmxmode=0666",
        required: false,
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=1777",
        required: false,
    },
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        required: false,
    },
];

/// configfs, mounted after the modules (it is one in distribution kernels): TDX quotes come
/// from configfs-tsm (`/sys/kernel/config/tsm/report`). Its directory exists only once the
/// kernel has configfs, so a kernel without it is skipped quietly; the attester then says the
/// report interface is absent, which is a start-up error only where a TEE needs it.
const CONFIGFS: MountSpec = MountSpec {
    source: "configfs",
    target: "/sys/kernel/config",
    fstype: "configfs",
    flags: NOSUID_NODEV_NOEXEC,
    data: "",
    required: false,
};

/// Everything init does before the agent's own start-up sequence: mounts, console, Ctrl-Alt-
/// Del, modules, network. Call it first thing in `main` when [`is_init`].
pub fn setup() -> Result<(), Pid1Error> {
    for m in MOUNTS {
        match mount(m) {
            Ok(()) => {}
            Err(e) if m.required => return Err(e),
            // Logging is not set up yet: the console is the log.
            Err(e) => eprintln!("vigil-agent: warning: {e}"),
        }
    }
    ensure_console_stdio();
    // With Ctrl-Alt-Del "off", the kernel sends SIGINT to init instead of rebooting at once.
    // SAFETY: plain syscall with constant arguments.
    unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF) };

    for module in modules_to_load(Path::new(MODULE_LIST), Path::new(MODULE_DIR))? {
        load_module(&module)?;
    }
    if Path::new(CONFIGFS.target).is_dir() {
        if let Err(e) = mount(&CONFIGFS) {
            eprintln!("vigil-agent: warning: {e}");
        }
    }

    set_interface_up("lo")?;
    let cmdline = KernelCmdline::read(Path::new("/proc/cmdline")).map_err(Pid1Error::Cmdline)?;
    if let Some(value) = cmdline.value(IP_PARAM) {
        let spec = IpParam::parse(value)?;
        configure_ipv4(&spec)?;
    }
    Ok(())
}

fn mount(m: &MountSpec) -> Result<(), Pid1Error> {
    let err = |source| Pid1Error::Mount {
        fstype: m.fstype,
        target: m.target,
        source,
    };
    std::fs::create_dir_all(m.target).map_err(err)?;
    let c = |s: &str| CString::new(s).expect("constant without NUL");
    let (source, target, fstype, data) = (c(m.source), c(m.target), c(m.fstype), c(m.data));
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            m.flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    // The kernel may have mounted devtmpfs itself (CONFIG_DEVTMPFS_MOUNT): that is fine.
    if e.raw_os_error() == Some(libc::EBUSY) {
        return Ok(());
    }
    Err(err(e))
}

/// The kernel opens /dev/console as init's stdin/stdout/stderr only if the initramfs has that
/// node. Without it the readiness line and the fatal reason would go nowhere, so reopen the
/// console (now that devtmpfs has it) on any of the three that is not open.
fn ensure_console_stdio() {
    let closed: Vec<i32> = (0..3)
        // SAFETY: F_GETFD only inspects the descriptor table.
        .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } == -1)
        .collect();
    if closed.is_empty() {
        return;
    }
    let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    for fd in closed {
        // SAFETY: dup2 onto a descriptor we know to be closed.
        unsafe { libc::dup2(console.as_raw_fd(), fd) };
    }
}

/// The modules to load, in order: the lines of `list` (names relative to `dir`, or absolute
/// paths; blank lines and `#` comments skipped), or without a list file, every `*.ko` in
/// `dir` sorted by file name; neither existing means there is nothing to load (a kernel with
/// the drivers built in). A list that exists but cannot be read is an error.
pub fn modules_to_load(list: &Path, dir: &Path) -> Result<Vec<PathBuf>, Pid1Error> {
    let list_err = |source| Pid1Error::ModuleList {
        path: list.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(list) {
        Ok(text) => return Ok(parse_module_list(&text, dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(list_err(e)),
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Pid1Error::ModuleList {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| Pid1Error::ModuleList {
                path: dir.to_path_buf(),
                source,
            })?
            .path();
        if path.extension().is_some_and(|e| e == "ko") {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Parses a module list (see [`modules_to_load`]).
pub fn parse_module_list(text: &str, dir: &Path) -> Vec<PathBuf> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| dir.join(l)) // join keeps an absolute `l` as it is
        .collect()
}

/// Loads one module with finit_module(2). A module that is already loaded (or built in and
/// registered under that name) is not an error.
pub fn load_module(path: &Path) -> Result<(), Pid1Error> {
    let err = |source| Pid1Error::Module {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let no_params = c"";
    // SAFETY: a valid open descriptor and a NUL-terminated parameter string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            no_params.as_ptr(),
            0,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Ok(());
    }
    Err(err(e))
}

/// `agent.ip=IFACE:ADDR/PREFIX`, e.g. `eth0:10.0.2.15/24`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpParam {
    pub iface: String,
    pub addr: std::net::Ipv4Addr,
    pub prefix: u8,
}

impl IpParam {
    pub fn parse(value: &str) -> Result<IpParam, Pid1Error> {
        let bad = |reason: &str| Pid1Error::BadIpParam {
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let (iface, cidr) = value
            .split_once(':')
            .ok_or_else(|| bad("expected IFACE:ADDR/PREFIX"))?;
        // IFNAMSIZ is 16 including the NUL.
        if iface.is_empty() || iface.len() > 15 || iface.contains('/') {
            return Err(bad("interface name must be 1 to 15 characters without '/'"));
        }
        let (addr, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| bad("expected ADDR/PREFIX after the interface"))?;
        let addr = addr
            .parse()
            .map_err(|_| bad("address is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (1..=32).contains(p))
            .ok_or_else(|| bad("prefix must be 1 to 32"))?;
        Ok(IpParam {
            iface: iface.to_string(),
            addr,
            prefix,
        })
    }

    pub fn netmask(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::from(u32::MAX << (32 - u32::from(self.prefix)))
    }
}

/// An AF_INET datagram socket: the handle the interface ioctls need.
fn ioctl_socket(iface: &str) -> Result<std::os::fd::OwnedFd, Pid1Error> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Pid1Error::Network {
            iface: iface.to_string(),
            step: "socket",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

fn ifreq_for(iface: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn ifreq_ioctl(
    sock: &std::os::fd::OwnedFd,
    iface: &str,
    request: libc::Ioctl,
    req: &mut libc::ifreq,
    step: &'static str,
) -> Result<(), Pid1Error> {
    // SAFETY: `req` is a valid ifreq for the interface ioctls used here.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) } < 0 {
        return Err(Pid1Error::Network {
            iface: iface.to_string(),
            step,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn set_interface_up(iface: &str) -> Result<(), Pid1Error> {
    let sock = ioctl_socket(iface)?;
    let mut req = ifreq_for(iface);
    ifreq_ioctl(&sock, iface, libc::SIOCGIFFLAGS, &mut req, "reading flags")?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ifreq_ioctl(&sock, iface, libc::SIOCSIFFLAGS, &mut req, "setting it up")
}

fn sockaddr_in(addr: std::net::Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; this is how the ioctls take it.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Gives `spec.iface` its address and netmask (which adds the on-link route) and sets it up.
fn configure_ipv4(spec: &IpParam) -> Result<(), Pid1Error> {
    let iface = spec.iface.as_str();
    let sock = ioctl_socket(iface)?;
    let mut req = ifreq_for(iface);
    req.ifr_ifru.ifru_addr = sockaddr_in(spec.addr);
    ifreq_ioctl(
        &sock,
        iface,
        libc::SIOCSIFADDR,
        &mut req,
        "setting the address",
    )?;
    let mut req = ifreq_for(iface);
    req.ifr_ifru.ifru_netmask = sockaddr_in(spec.netmask());
    ifreq_ioctl(
        &sock,
        iface,
        libc::SIOCSIFNETMASK,
        &mut req,
        "setting the netmask",
    )?;
    set_interface_up(iface)
}

/// Writes one line to the console: stderr (the console for init), and /dev/console directly
/// when stderr is gone.
fn console_line(line: &str) {
    if writeln!(std::io::stderr(), "{line}").is_ok() {
        return;
    }
    if let Ok(mut console) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = writeln!(console, "{line}");
    }
}

/// A fatal start-up error: one line naming the reason on the console, then, as init, power
/// the VM off (so it stops instead of idling without an API); otherwise exit with status 1.
pub fn fatal(msg: &str) -> ! {
    console_line(&format!("vigil-agent: fatal: {msg}"));
    if is_init() {
        power_off();
    }
    std::process::exit(1);
}

/// Ends the VM: every other process is killed, file systems are synced, and the kernel powers
/// off. For init only (the kernel refuses otherwise; the process then exits with status 1).
/// A container backend that wants its processes to stop gracefully must do that before.
pub fn power_off() -> ! {
    // SAFETY: plain syscalls; kill(-1) spares the caller.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // Only reached if the kernel refused. As init, exiting panics the kernel, which with
    // `panic=-1` and QEMU's -no-reboot still stops the VM.
    console_line(&format!(
        "vigil-agent: power off failed: {}",
        std::io::Error::last_os_error()
    ));
    std::process::exit(1);
}

/// Reaps orphaned processes re-parented to init, but never a child the agent waits on itself.
///
/// Approach: waiting with `waitpid(-1)` would take the exit status of any child, including
/// one that a handler spawned and is about to `wait()` for (the handler would then see
/// ECHILD). Instead, a child the agent means to wait for is spawned through
/// [`Reaper::spawn_claimed`], which records its pid while holding the claim lock; the
/// reaper takes the same lock, lists this process's children from
/// `/proc/self/task/*/children` and calls `waitpid(pid, WNOHANG)` only for unclaimed pids
/// (a running child just returns 0). Spawning under the lock closes the race where a child
/// exits before its pid is recorded. The claim is dropped with its [`Claim`] once the owner
/// has waited. Each SIGCHLD triggers one sweep ([`Reaper::run`]).
#[derive(Clone, Default)]
pub struct Reaper {
    claimed: Arc<Mutex<HashSet<i32>>>,
}

/// A child that the agent waits for itself; the reaper leaves it alone while this lives.
pub struct Claim {
    pid: i32,
    reaper: Reaper,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.reaper.lock().remove(&self.pid);
    }
}

/// One reaped process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub pid: i32,
    /// The raw wait status (see `WIFEXITED` and friends).
    pub status: i32,
}

impl Reaper {
    pub fn new() -> Reaper {
        Reaper::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<i32>> {
        // A panic while holding the lock cannot leave the set half-updated.
        self.claimed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns a child whose exit status the caller collects itself. `spawn` starts the child
    /// (std or tokio `Command`) and `pid` reads its pid; both run under the claim lock.
    pub fn spawn_claimed<C>(
        &self,
        spawn: impl FnOnce() -> std::io::Result<C>,
        pid: impl FnOnce(&C) -> Option<u32>,
    ) -> std::io::Result<(C, Claim)> {
        let mut claimed = self.lock();
        let child = spawn()?;
        let pid = pid(&child)
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| std::io::Error::other("spawned child has no pid"))?;
        claimed.insert(pid);
        drop(claimed);
        Ok((
            child,
            Claim {
                pid,
                reaper: self.clone(),
            },
        ))
    }

    /// Reaps every exited, unclaimed child of this process.
    pub fn reap_orphans(&self) -> std::io::Result<Vec<Reaped>> {
        let claimed = self.lock();
        let children = children_of_self()?;
        Ok(reap_unclaimed(&claimed, children))
    }

    /// Like [`Reaper::reap_orphans`], but only among `candidates` (tests, where the process
    /// has children it does not own).
    pub fn reap_among(&self, candidates: &[i32]) -> Vec<Reaped> {
        let claimed = self.lock();
        reap_unclaimed(&claimed, candidates.iter().copied())
    }

    /// Sweeps once at start (orphans may predate the handler), then after every SIGCHLD.
    pub async fn run(self) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGCHLD: orphans will not be reaped");
                return;
            }
        };
        loop {
            match self.reap_orphans() {
                Ok(reaped) => {
                    for r in reaped {
                        tracing::debug!(pid = r.pid, status = r.status, "reaped orphan");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "listing children to reap"),
            }
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    }
}

fn reap_unclaimed(claimed: &HashSet<i32>, children: impl IntoIterator<Item = i32>) -> Vec<Reaped> {
    let mut reaped = Vec::new();
    for pid in children {
        if claimed.contains(&pid) {
            continue;
        }
        let mut status = 0;
        // SAFETY: waitpid on one pid with a valid status pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            reaped.push(Reaped { pid, status });
        }
    }
    reaped
}

/// The pids of this process's children (every thread's), from procfs.
fn children_of_self() -> std::io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        let path = task?.path().join("children");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // The thread ended between the listing and the read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn not_init_in_tests() {
        assert!(!is_init());
    }

    #[test]
    fn module_list_keeps_order_and_skips_comments() {
        let dir = Path::new("/lib/modules/vigil");
        let list = "# virtio first\nvirtio.ko\n\n  virtio_ring.ko  # inline\n/abs/vsock.ko\n";
        assert_eq!(
            parse_module_list(list, dir),
            vec![
                dir.join("virtio.ko"),
                dir.join("virtio_ring.ko"),
                PathBuf::from("/abs/vsock.ko"),
            ]
        );
    }

    #[test]
    fn modules_from_list_file_else_sorted_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mods");
        let list = tmp.path().join("modules");
        // Neither exists: nothing to load.
        assert!(modules_to_load(&list, &dir).unwrap().is_empty());

        std::fs::create_dir(&dir).unwrap();
        for name in ["20-b.ko", "10-a.ko", "notes.txt"] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        assert_eq!(
            modules_to_load(&list, &dir).unwrap(),
            vec![dir.join("10-a.ko"), dir.join("20-b.ko")]
        );

        std::fs::write(&list, "20-b.ko\n10-a.ko\n").unwrap();
        assert_eq!(
            modules_to_load(&list, &dir).unwrap(),
            vec![dir.join("20-b.ko"), dir.join("10-a.ko")]
        );
    }

    #[test]
    fn unreadable_module_list_is_an_error_not_an_empty_list() {
        let tmp = tempfile::tempdir().unwrap();
        // A directory where the list file should be: exists, cannot be read as text.
        let err = modules_to_load(tmp.path(), tmp.path()).unwrap_err();
        assert!(
            matches!(err, Pid1Error::ModuleList { ref path, .. } if path == tmp.path()),
            "{err}"
        );
    }

    #[test]
    fn missing_module_file_names_it() {
        let err = load_module(Path::new("/nonexistent/virtio_pci.ko")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/virtio_pci.ko"),
            "{err}"
        );
    }

    #[test]
    fn ip_param_parses_and_derives_netmask() {
        let p = IpParam::parse("eth0:10.0.2.15/24").unwrap();
        assert_eq!(p.iface, "eth0");
        assert_eq!(p.addr, std::net::Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(p.netmask(), std::net::Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(
            IpParam::parse("e:1.2.3.4/32").unwrap().netmask(),
            std::net::Ipv4Addr::new(255, 255, 255, 255)
        );
        assert_eq!(
            IpParam::parse("e:1.2.3.4/1").unwrap().netmask(),
            std::net::Ipv4Addr::new(128, 0, 0, 0)
        );
    }

    #[test]
    fn bad_ip_params_are_refused_with_the_reason() {
        for (value, reason) in [
            ("10.0.2.15/24", "IFACE:ADDR/PREFIX"),
            ("eth0:10.0.2.15", "ADDR/PREFIX"),
            ("eth0:10.0.2/24", "IPv4"),
            ("eth0:10.0.2.15/0", "prefix"),
            ("eth0:10.0.2.15/33", "prefix"),
            (":10.0.2.15/24", "interface name"),
            ("averyveryverylongname:10.0.2.15/24", "interface name"),
        ] {
            let err = IpParam::parse(value).unwrap_err().to_string();
            assert!(
                err.contains(reason) && err.contains(value),
                "{value}: {err}"
            );
        }
    }

    /// Blocks until `pid` has exited, without reaping it (so the reaper still can).
    fn wait_until_zombie(pid: i32) {
        // SAFETY: waitid with WNOWAIT on one pid and a zeroed siginfo.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        assert_eq!(rc, 0, "waitid: {}", std::io::Error::last_os_error());
    }

    #[test]
    fn reaper_reaps_orphans_but_leaves_claimed_children_to_their_owner() {
        let reaper = Reaper::new();
        // An unclaimed child that exits with 7: the reaper's to collect.
        let orphan = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let orphan_pid = orphan.id() as i32;
        // A claimed child that exits with 3: its owner waits for it.
        let (mut owned, claim) = reaper
            .spawn_claimed(
                || Command::new("sh").args(["-c", "exit 3"]).spawn(),
                |c| Some(c.id()),
            )
            .unwrap();
        let owned_pid = owned.id() as i32;
        wait_until_zombie(orphan_pid);
        wait_until_zombie(owned_pid);

        // Both exited children are listed from procfs.
        let children = children_of_self().unwrap();
        assert!(children.contains(&orphan_pid), "{children:?}");
        assert!(children.contains(&owned_pid), "{children:?}");

        // Only among our own two children: other tests in this process have theirs.
        let reaped = reaper.reap_among(&[orphan_pid, owned_pid]);
        assert_eq!(reaped.len(), 1, "{reaped:?}");
        assert_eq!(reaped[0].pid, orphan_pid);
        assert!(libc::WIFEXITED(reaped[0].status));
        assert_eq!(libc::WEXITSTATUS(reaped[0].status), 7);

        // The owner still gets its child's real exit status.
        assert_eq!(owned.wait().unwrap().code(), Some(3));
        drop(claim);
        assert!(reaper.lock().is_empty());
        drop(orphan); // already reaped: dropping a std Child does not wait
    }

    #[test]
    fn failed_spawn_leaves_no_claim() {
        let reaper = Reaper::new();
        let err = reaper
            .spawn_claimed(
                || Command::new("/nonexistent/binary").spawn(),
                |c| Some(c.id()),
            )
            .err()
            .expect("spawn must fail");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert!(reaper.lock().is_empty());
    }
}
