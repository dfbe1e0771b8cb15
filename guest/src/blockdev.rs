//! Finding hot-plugged block devices: a virtio-blk disk by its PCI path, waited for through the
//! kernel's uevents (subscribe, then look in sysfs, then wait), never by polling.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{GuestError, Result};
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
        let listener = UeventListener::open().map_err(|e| {
            GuestError::Internal(format!("listening for device announcements: {e}"))
        })?;
        let deadline = Instant::now() + timeout;
        loop {
            // The bridges may themselves be arriving: resolve again after each announcement.
            if let Ok(rel) = path.sysfs_relative(&self.root_bus()) {
                if let Some(name) = disk_under(&self.root_bus().join(&rel))? {
                    return Ok(self.dev.join(name));
                }
            }
            match listener
                .next(deadline)
                .map_err(|e| GuestError::Internal(format!("reading uevents: {e}")))?
            {
                Some(_) => continue,
                None => {
                    return Err(GuestError::DeadlineExceeded(format!(
                        "{field}: no virtio-blk disk appeared at PCI path {path} within {}s",
                        timeout.as_secs()
                    )))
                }
            }
        }
    }
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
}
