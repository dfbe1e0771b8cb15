//! Facts about the guest that the runtime asks for (GetGuestDetails).

use std::path::PathBuf;

use vigil_protos::agent::{AgentDetails, GuestDetailsRequest, GuestDetailsResponse};

use crate::service::{AgentError, AGENT_VERSION};

/// Optional capabilities this build of the agent has, reported in `AgentDetails`.
pub const FEATURES: &[&str] = &["endpoint-allow-list"];

/// Where guest facts are read from; `sysfs_memory` is replaceable so tests can use a fake tree.
#[derive(Debug, Clone)]
pub struct GuestInfo {
    /// Normally `/sys/devices/system/memory`.
    pub sysfs_memory: PathBuf,
    /// Whether the agent runs as the guest's init (PID 1).
    pub init_daemon: bool,
}

impl Default for GuestInfo {
    fn default() -> Self {
        GuestInfo {
            sysfs_memory: PathBuf::from("/sys/devices/system/memory"),
            init_daemon: std::process::id() == 1,
        }
    }
}

impl GuestInfo {
    pub fn details(&self, req: &GuestDetailsRequest) -> Result<GuestDetailsResponse, AgentError> {
        let mut resp = GuestDetailsResponse::new();
        if req.mem_block_size {
            resp.mem_block_size_bytes = self.memory_block_size()?;
        }
        if req.mem_hotplug_probe {
            resp.support_mem_hotplug_probe = self.sysfs_memory.join("probe").exists();
        }
        resp.agent_details = Some(AgentDetails {
            version: AGENT_VERSION.into(),
            init_daemon: self.init_daemon,
            extra_features: FEATURES.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        })
        .into();
        Ok(resp)
    }

    /// The memory hotplug block size. A kernel without memory hotplug has no such file, which
    /// Kata reports as 0; any other failure is an error.
    fn memory_block_size(&self) -> Result<u64, AgentError> {
        let path = self.sysfs_memory.join("block_size_bytes");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => {
                return Err(AgentError::Internal(format!(
                    "reading {}: {e}",
                    path.display()
                )))
            }
        };
        u64::from_str_radix(text.trim().trim_start_matches("0x"), 16).map_err(|e| {
            AgentError::Internal(format!(
                "{}: {:?} is not a hex number: {e}",
                path.display(),
                text.trim()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_block_size_and_probe_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("block_size_bytes"), "8000000\n").unwrap();
        std::fs::write(dir.path().join("probe"), "").unwrap();
        let info = GuestInfo {
            sysfs_memory: dir.path().into(),
            init_daemon: false,
        };
        let req = GuestDetailsRequest {
            mem_block_size: true,
            mem_hotplug_probe: true,
            ..Default::default()
        };
        let resp = info.details(&req).unwrap();
        assert_eq!(resp.mem_block_size_bytes, 0x8000000);
        assert!(resp.support_mem_hotplug_probe);
        assert_eq!(resp.agent_details.version, AGENT_VERSION);

        // Not asked: not read.
        let resp = info.details(&GuestDetailsRequest::new()).unwrap();
        assert_eq!(resp.mem_block_size_bytes, 0);
        assert!(!resp.support_mem_hotplug_probe);

        std::fs::write(dir.path().join("block_size_bytes"), "zz\n").unwrap();
        let err = info.details(&req).unwrap_err().to_string();
        assert!(err.contains("block_size_bytes"), "{err}");

        std::fs::remove_file(dir.path().join("block_size_bytes")).unwrap();
        assert_eq!(info.details(&req).unwrap().mem_block_size_bytes, 0);
    }
}
