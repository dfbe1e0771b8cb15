//! The pod's own IPC and UTS namespaces, which every container of the sandbox joins, as in
//! Kata's agent (its `setup_shared_namespaces`) and in a Kubernetes pod: containers of one pod
//! share System V IPC, POSIX message queues and the hostname, and never with the guest or the
//! agent.
//!
//! A short-lived thread unshares both namespaces (only that thread moves), sets the sandbox's
//! hostname in the new UTS namespace, and opens both; the descriptors keep the namespaces
//! alive for the sandbox's life, and containers join them through `/proc/<agent pid>/fd/N`:
//! the runtime library opens that path in the container's process, a child of the fork helper
//! (which inherits none of the agent's descriptors), while it still sees the agent's /proc.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use crate::error::{Result, RuntimeError};

#[derive(Debug)]
pub(crate) struct PodNamespaces {
    ipc: OwnedFd,
    uts: OwnedFd,
}

impl PodNamespaces {
    /// New IPC and UTS namespaces, the UTS one named `hostname` (the guest's name if empty).
    pub(crate) fn create(hostname: &str) -> Result<PodNamespaces> {
        let hostname = hostname.to_string();
        std::thread::Builder::new()
            .name("vigil-pod-ns".into())
            .spawn(move || -> std::io::Result<PodNamespaces> {
                // SAFETY: unshare affects only this thread, which ends right after.
                if unsafe { libc::unshare(libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if !hostname.is_empty() {
                    nix::unistd::sethostname(&hostname)?;
                }
                let open = |kind: &str| -> std::io::Result<OwnedFd> {
                    Ok(std::fs::File::open(format!("/proc/thread-self/ns/{kind}"))?.into())
                };
                Ok(PodNamespaces {
                    ipc: open("ipc")?,
                    uts: open("uts")?,
                })
            })
            .map_err(|e| RuntimeError::internal("pod namespaces thread", e))?
            .join()
            .map_err(|_| RuntimeError::Internal("pod namespaces thread panicked".into()))?
            .map_err(|e| RuntimeError::internal("creating the pod's IPC and UTS namespaces", e))
    }

    /// The namespaces by OCI type, as paths a container's process can open.
    pub(crate) fn paths(&self) -> [(&'static str, PathBuf); 2] {
        let agent = std::process::id();
        let path = |fd: &OwnedFd| PathBuf::from(format!("/proc/{agent}/fd/{}", fd.as_raw_fd()));
        [("ipc", path(&self.ipc)), ("uts", path(&self.uts))]
    }
}
