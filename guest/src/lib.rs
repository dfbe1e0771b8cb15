//! vigil's guest operations: what the agent API asks of the guest itself rather than of a
//! container. Each module is a small public API that one agent handler calls in one line.
//!
//! | module | RPCs |
//! |---|---|
//! | [`network`] | UpdateInterface, UpdateRoutes, ListInterfaces, ListRoutes, AddARPNeighbors, Get/SetIPTables |
//! | [`hotplug`] | OnlineCPUMem, MemHotplugByProbe, GetGuestDetails' memory facts |
//! | [`clock`] | SetGuestDateTime |
//! | [`entropy`] | ReseedRandomDev |
//! | [`swap`] | AddSwap, AddSwapPath |
//! | [`volumes`] | GetVolumeStats, ResizeVolume |
//! | [`memagent`] | MemAgentMemcgSet, MemAgentCompactSet |
//! | [`ephemeral`] | UpdateEphemeralMounts, RemoveStaleVirtiofsShareMounts |
//!
//! [`storage`] resolves the device-backed storage drivers (blk, mmioblk, scsi, nvdimm,
//! virtio-fs, 9p) for the container runtime to mount, and [`devices`] the container devices
//! (blk, mmioblk, scsi, nvdimm, vfio-pci) to guest nodes with the guest's major/minor.
//!
//! Below them: [`uevent`] (the kernel's device announcements), [`pci`] (Kata's PCI paths),
//! [`blockdev`] (hot-plugged disks by PCI path) and [`beneath`] (paths opened beneath a
//! directory without following symlinks, shared with the container runtime). Every failure is a [`GuestError`], one variant
//! per ttrpc status.

pub mod beneath;
pub mod blockdev;
pub mod clock;
pub mod devices;
pub mod entropy;
pub mod ephemeral;
pub mod error;
pub mod hotplug;
pub mod memagent;
pub mod network;
pub mod pci;
pub mod storage;
pub mod swap;
pub mod uevent;
pub mod volumes;

pub use error::{GuestError, Result};

use std::path::PathBuf;

/// What the measured config decides about guest operations.
#[derive(Debug, Clone, Default)]
pub struct GuestConfig {
    /// AddSwap / AddSwapPath allowed (`[guest] allow_swap`); see [`swap`].
    pub allow_swap: bool,
    /// The pod's directories: the only places whose volumes GetVolumeStats / ResizeVolume
    /// answer for.
    pub pod_dirs: Vec<PathBuf>,
}

/// Every guest operation the agent serves, set up from the config.
pub struct Guest {
    pub network: network::Network,
    pub hotplug: hotplug::Hotplug,
    pub swap: swap::Swap,
    pub volumes: volumes::Volumes,
    pub memagent: memagent::MemAgent,
    pub ephemeral: ephemeral::Ephemeral,
    /// The entropy pool's device (/dev/random).
    pub random: PathBuf,
}

impl Guest {
    pub fn new(config: &GuestConfig) -> Guest {
        Guest {
            network: network::Network::new(),
            hotplug: hotplug::Hotplug::default(),
            swap: swap::Swap {
                allowed: config.allow_swap,
                devices: blockdev::DeviceTree::default(),
            },
            volumes: volumes::Volumes::new(config.pod_dirs.clone()),
            memagent: memagent::MemAgent::default(),
            ephemeral: ephemeral::Ephemeral::new(config.pod_dirs.clone()),
            random: PathBuf::from("/dev/random"),
        }
    }
}
