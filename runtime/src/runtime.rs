//! The seam between the sandbox manager and an OCI runtime library.

use std::os::fd::OwnedFd;
use std::path::Path;

use vigil_protos::agent::CgroupStats;

use crate::error::Result;

/// The standard streams a new process gets. The sandbox creates them (pipes, or a pty whose
/// slave end is given three times) and keeps the other ends.
#[derive(Debug, Default)]
pub struct ProcessIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// stdin is a pty slave that must become the process's controlling terminal.
    pub controlling_tty: bool,
}

/// An OCI runtime: creates containers from bundles and manages them by id.
///
/// Methods block (they fork, mount, write cgroup files); the sandbox calls them on blocking
/// threads. Every process they start is a child of the calling process, so the sandbox can
/// wait for it by pid.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Creates the container described by `bundle/config.json`. Returns the pid of its init
    /// process, which waits for [`ContainerRuntime::start`] before running the workload.
    fn create(&self, id: &str, bundle: &Path, io: ProcessIo) -> Result<i32>;
    /// Lets the init process run the workload.
    fn start(&self, id: &str) -> Result<()>;
    /// Runs another process in the running container; returns its pid.
    fn exec(&self, id: &str, process: &oci_spec::runtime::Process, io: ProcessIo) -> Result<i32>;
    /// Sends `signal` to every process of the container.
    fn signal_all(&self, id: &str, signal: i32) -> Result<()>;
    /// Freezes every process of the container.
    fn pause(&self, id: &str) -> Result<()>;
    /// Thaws a paused container.
    fn resume(&self, id: &str) -> Result<()>;
    /// Applies new resource limits to the container's cgroup.
    fn update(&self, id: &str, resources: &oci_spec::runtime::LinuxResources) -> Result<()>;
    /// Makes `rules` (in order; a later rule overrides an earlier one) the container's only
    /// device-cgroup rules, whatever the library itself added. Called after `create` and after
    /// every `update`; an error fails the operation (the container is not left running with
    /// rules of the library's choosing).
    fn restrict_devices(
        &self,
        id: &str,
        rules: &[oci_spec::runtime::LinuxDeviceCgroup],
    ) -> Result<()>;
    /// The container's cgroup statistics.
    fn stats(&self, id: &str) -> Result<CgroupStats>;
    /// How many times the kernel's OOM killer has killed a process in the container's cgroup.
    fn oom_kills(&self, id: &str) -> Result<u64>;
    /// A descriptor that becomes readable at OOM events in the container's cgroup (and when
    /// the cgroup goes away), so OOM kills are reported as they happen, not only when a process
    /// the sandbox started dies of one. Runtimes that cannot tell say so with an error; the
    /// sandbox then relies on process deaths alone.
    fn oom_watch(&self, id: &str) -> Result<(std::os::fd::OwnedFd, OomWake)> {
        Err(crate::RuntimeError::Internal(format!(
            "container {id}: OOM notifications are not supported by this runtime"
        )))
    }
    /// Kills whatever is left of the container and removes its cgroup and state. Deleting a
    /// container that does not exist (any more) succeeds, so cleanup can be retried.
    fn delete(&self, id: &str) -> Result<()>;
}

/// A token that keeps a child process claimed; dropping it releases the claim.
pub type ClaimToken = Box<dyn Send + Sync>;

/// Keeps a child reaper of the embedding process (the agent reaps orphans when it runs as
/// PID 1) away from container processes, whose exit status the sandbox collects itself.
///
/// The runtime library forks helper children and waits for them inside the spawn call, so
/// the reaper must be held off for the whole call, not just told the final pid.
pub trait ChildClaims: Send + Sync + 'static {
    /// Runs `spawn`, during which no child may be reaped. `spawn` returns the pid of the
    /// process to keep from the reaper (None if spawning failed). The token keeps the claim.
    fn claimed(&self, spawn: &mut dyn FnMut() -> Option<i32>) -> Option<ClaimToken>;
}

/// For processes without a reaper of their own: nothing to hold off.
pub struct NoReaper;

impl ChildClaims for NoReaper {
    fn claimed(&self, spawn: &mut dyn FnMut() -> Option<i32>) -> Option<ClaimToken> {
        spawn().map(|_| Box::new(()) as ClaimToken)
    }
}

/// What a wake-up of [`ContainerRuntime::oom_watch`]'s descriptor means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OomWake {
    /// Every wake-up is an OOM (cgroup v1's notification, sent before the victim is killed,
    /// so the kill counter may not have moved yet).
    IsOom,
    /// The wake-up says "something changed": an OOM only if the kill counter grew (cgroup v2's
    /// memory.events also changes for other events).
    CheckCounter,
}
