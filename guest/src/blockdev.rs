//! Finding hot-plugged block devices as Kata's runtime names them: a virtio-blk disk by its PCI
//! path, a SCSI disk by `target:lun`, a virtio-mmio disk by its node name. Each is waited for
//! through the kernel's uevents (subscribe, then look in sysfs, then wait), never by polling.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{invalid, GuestError, Result};
use crate::pci::PciPath;
use crate::uevent::UeventListener;

/// How long a device named by the host may take to appear (Kata's agent waits 3 s; TCG guests
/// probe slowly).
pub const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where devices are looked up: sysfs and /dev (fake trees in tests).
#[derive(Debug, Clone)]
pub struct DeviceTree {
    pub sys: PathBuf,
    pub dev: PathBuf,
}

impl Default for DeviceTree {
    fn default() -> Self {
        DeviceTree {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

impl DeviceTree {
    fn root_bus(&self) -> PathBuf {
        self.sys.join("devices/pci0000:00")
    }

    /// The `/dev` node of the virtio-blk disk at `path`, waiting up to `timeout` for it.
    pub fn virtio_blk_by_pci(
        &self,
        field: &str,
        path: &PciPath,
        timeout: Duration,
    ) -> Result<PathBuf> {
        let root = self.root_bus();
        self.wait_for(timeout, || {
            // The bridges may themselves be arriving: resolved again after each announcement.
            match path.sysfs_relative(&root) {
                Ok(rel) => disk_under(&root.join(&rel)),
                Err(_) => Ok(None),
            }
        })?
        .ok_or_else(|| {
            GuestError::DeadlineExceeded(format!(
                "{field}: no virtio-blk disk appeared at PCI path {path} within {}s",
                timeout.as_secs()
            ))
        })
    }

    /// The `/dev` node of the SCSI disk at `address` (`target:lun`, Kata's format; channel 0
    /// of any host), after asking every SCSI host to scan for it.
    pub fn scsi_by_address(
        &self,
        field: &str,
        address: &str,
        timeout: Duration,
    ) -> Result<PathBuf> {
        let (target, lun) = address
            .split_once(':')
            .and_then(|(t, l)| Some((t.parse::<u32>().ok()?, l.parse::<u32>().ok()?)))
            .ok_or_else(|| {
                invalid(
                    field,
                    format!("{address:?} is not a SCSI address (target:lun)"),
                )
            })?;
        let hosts = self.sys.join("class/scsi_host");
        let wanted = format!(":0:{target}:{lun}");
        let devices = self.sys.join("bus/scsi/devices");
        let found = self.wait_for_after(
            timeout,
            || {
                for host in read_names(&hosts) {
                    let scan = hosts.join(&host).join("scan");
                    std::fs::write(&scan, format!("0 {target} {lun}")).map_err(|e| {
                        GuestError::Internal(format!("{field}: scanning {}: {e}", scan.display()))
                    })?;
                }
                Ok(())
            },
            || {
                for dev in read_names(&devices)
                    .into_iter()
                    .filter(|d| d.ends_with(&wanted))
                {
                    let mut disks = read_names(&devices.join(&dev).join("block"));
                    disks.sort();
                    if let Some(d) = disks.into_iter().next() {
                        return Ok(Some(d));
                    }
                }
                Ok(None)
            },
        )?;
        found.ok_or_else(|| {
            GuestError::DeadlineExceeded(format!(
                "{field}: no SCSI disk appeared at {address} within {}s",
                timeout.as_secs()
            ))
        })
    }

    /// The `/dev` node of a virtio-blk disk on the MMIO transport, named by the host as
    /// `/dev/vdX`: it must be a platform (MMIO) device, not a disk of some other bus.
    pub fn virtio_blk_mmio(&self, field: &str, dev: &str, timeout: Duration) -> Result<PathBuf> {
        let name = dev
            .strip_prefix("/dev/")
            .filter(|n| {
                n.len() > 2 && n.starts_with("vd") && n[2..].bytes().all(|b| b.is_ascii_lowercase())
            })
            .ok_or_else(|| {
                invalid(
                    field,
                    format!("{dev:?} is not a virtio disk node (/dev/vdX)"),
                )
            })?
            .to_string();
        let block = self.sys.join("block").join(&name);
        let platform = self.sys.join("devices/platform");
        self.wait_for(timeout, || match std::fs::canonicalize(&block) {
            Ok(real) if real.starts_with(&platform) => Ok(Some(name.clone())),
            Ok(real) => Err(invalid(
                field,
                format!("{dev} is not an MMIO disk (it is {})", real.display()),
            )),
            Err(_) => Ok(None),
        })?
        .ok_or_else(|| {
            GuestError::DeadlineExceeded(format!(
                "{field}: {dev} did not appear within {}s",
                timeout.as_secs()
            ))
        })
    }

    /// `/dev/pmemN`, present once the kernel has probed the NVDIMM (cold-plugged at boot).
    pub fn pmem(&self, field: &str, dev: &str) -> Result<PathBuf> {
        let name = dev
            .strip_prefix("/dev/")
            .filter(|n| {
                n.strip_prefix("pmem")
                    .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            })
            .ok_or_else(|| invalid(field, format!("{dev:?} is not an NVDIMM node (/dev/pmemN)")))?;
        if !self.sys.join("block").join(name).exists() {
            return Err(GuestError::NotFound(format!(
                "{field}: {dev} is not a block device of this guest"
            )));
        }
        Ok(self.dev.join(name))
    }

    /// Subscribes to uevents, then runs `probe` (a device name, or not yet) after each
    /// announcement until it finds the device or `timeout` passes.
    fn wait_for(
        &self,
        timeout: Duration,
        probe: impl FnMut() -> Result<Option<String>>,
    ) -> Result<Option<PathBuf>> {
        self.wait_for_after(timeout, || Ok(()), probe)
    }

    /// As [`DeviceTree::wait_for`], with `start` run once after subscribing (a SCSI scan,
    /// whose results are announced).
    fn wait_for_after(
        &self,
        timeout: Duration,
        start: impl FnOnce() -> Result<()>,
        mut probe: impl FnMut() -> Result<Option<String>>,
    ) -> Result<Option<PathBuf>> {
        let listener = UeventListener::open().map_err(|e| {
            GuestError::Internal(format!("listening for device announcements: {e}"))
        })?;
        start()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(name) = probe()? {
                return Ok(Some(self.dev.join(name)));
            }
            let event = listener
                .next(deadline)
                .map_err(|e| GuestError::Internal(format!("reading uevents: {e}")))?;
            if event.is_none() {
                return Ok(None);
            }
        }
    }
}

fn read_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The disk (not partition) name of a virtio-blk PCI device directory:
/// `<dev>/virtioN/block/<name>`.
fn disk_under(device: &Path) -> Result<Option<String>> {
    let Ok(entries) = std::fs::read_dir(device) else {
        return Ok(None);
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("virtio") {
            continue;
        }
        let Ok(disks) = std::fs::read_dir(e.path().join("block")) else {
            continue;
        };
        let mut names: Vec<String> = disks
            .filter_map(|d| d.ok())
            .map(|d| d.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        match names.len() {
            0 => continue,
            1 => return Ok(names.pop()),
            _ => {
                return Err(GuestError::Internal(format!(
                    "{} has several disks: {}",
                    device.display(),
                    names.join(", ")
                )))
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_present_disk_is_found_without_waiting_and_an_absent_one_times_out() {
        let t = tempfile::tempdir().unwrap();
        let tree = DeviceTree {
            sys: t.path().join("sys"),
            dev: t.path().join("dev"),
        };
        let dev = tree
            .sys
            .join("devices/pci0000:00/0000:00:05.0/virtio3/block/vdc");
        std::fs::create_dir_all(&dev).unwrap();
        let p = PciPath::parse("source", "05").unwrap();
        if UeventListener::open().is_err() {
            eprintln!("skipped: no uevent socket here");
            return;
        }
        assert_eq!(
            tree.virtio_blk_by_pci("source", &p, Duration::from_millis(50))
                .unwrap(),
            t.path().join("dev/vdc")
        );
        let p = PciPath::parse("source", "06").unwrap();
        let e = tree
            .virtio_blk_by_pci("source", &p, Duration::from_millis(50))
            .unwrap_err();
        assert!(
            matches!(&e, GuestError::DeadlineExceeded(m) if m.starts_with("source:") && m.contains("06")),
            "{e}"
        );
    }

    #[test]
    fn scsi_disks_are_scanned_for_and_mmio_disks_must_be_platform_devices() {
        if UeventListener::open().is_err() {
            eprintln!("skipped: no uevent socket here");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let tree = DeviceTree {
            sys: t.path().join("sys"),
            dev: t.path().join("dev"),
        };
        let short = Duration::from_millis(50);
        std::fs::create_dir_all(tree.sys.join("class/scsi_host/host0")).unwrap();
        std::fs::create_dir_all(tree.sys.join("bus/scsi/devices/0:0:2:1/block/sdb")).unwrap();
        assert_eq!(
            tree.scsi_by_address("source", "2:1", short).unwrap(),
            tree.dev.join("sdb")
        );
        // Every host was asked to scan for the address, as Kata's agent does.
        assert_eq!(
            std::fs::read_to_string(tree.sys.join("class/scsi_host/host0/scan")).unwrap(),
            "0 2 1"
        );
        assert!(matches!(
            tree.scsi_by_address("source", "3:0", short),
            Err(GuestError::DeadlineExceeded(_))
        ));
        assert!(tree
            .scsi_by_address("source", "2", short)
            .unwrap_err()
            .to_string()
            .starts_with("source:"));

        let platform = tree
            .sys
            .join("devices/platform/a000.virtio_mmio/virtio0/block/vdb");
        let pci = tree
            .sys
            .join("devices/pci0000:00/0000:00:05.0/virtio3/block/vdc");
        std::fs::create_dir_all(&platform).unwrap();
        std::fs::create_dir_all(&pci).unwrap();
        std::fs::create_dir_all(tree.sys.join("block")).unwrap();
        std::os::unix::fs::symlink(&platform, tree.sys.join("block/vdb")).unwrap();
        std::os::unix::fs::symlink(&pci, tree.sys.join("block/vdc")).unwrap();
        assert_eq!(
            tree.virtio_blk_mmio("source", "/dev/vdb", short).unwrap(),
            tree.dev.join("vdb")
        );
        let e = tree
            .virtio_blk_mmio("source", "/dev/vdc", short)
            .unwrap_err();
        assert!(
            matches!(&e, GuestError::InvalidArgument(m) if m.contains("not an MMIO disk")),
            "{e}"
        );
        for bad in ["vdb", "/dev/sda", "/dev/vd", "/dev/../vdb"] {
            assert!(tree.virtio_blk_mmio("source", bad, short).is_err(), "{bad}");
        }
        assert!(matches!(
            tree.virtio_blk_mmio("source", "/dev/vdz", short),
            Err(GuestError::DeadlineExceeded(_))
        ));
    }
}
