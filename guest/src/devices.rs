//! The devices of a CreateContainer request (Kata's `Device`: `type`, `id`, `vm_path`,
//! `container_path`, `options`), resolved to the guest's own device nodes: where the host
//! hot-plugged it, the node's kind and the guest's major/minor, which the container runtime
//! writes into the spec's `linux.devices` and device-cgroup rules (the host's numbers mean
//! nothing in the guest).
//!
//! | type | found by |
//! |---|---|
//! | `blk` | `id` = PCI path of the virtio-blk disk |
//! | `mmioblk` | `vm_path` = `/dev/vdX` (a virtio-mmio platform device) |
//! | `scsi` | `id` = SCSI address `target:lun` |
//! | `nvdimm` | `vm_path` = `/dev/pmemN` |
//! | `vfio-pci` | `options` = `HOSTBDF=<guest PCI path>` per device of the IOMMU group: each is bound to the guest's vfio-pci driver, and the container gets `/dev/vfio/<group>` (the group read from the guest's sysfs, never from the host) |
//! | `vfio-ap` | refused: s390x only |
//!
//! Any other type is refused naming it.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use vigil_protos::agent::Device;

use crate::blockdev::DeviceTree;
use crate::error::{invalid, GuestError, Result};
use crate::pci::PciPath;
use crate::uevent::UeventListener;

/// The device types resolved here, by Kata's names.
pub const TYPES: &[&str] = &["blk", "mmioblk", "scsi", "nvdimm", "vfio-pci"];

/// A device number: character (`c`) or block (`b`), major, minor (as the OCI spec has them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceNum {
    pub kind: char,
    pub major: i64,
    pub minor: i64,
}

/// The number of the device node at `path` (a symlink is followed, as `/dev/disk/by-*` are);
/// `None` if it is something else.
pub fn device_number(path: &Path) -> std::io::Result<Option<DeviceNum>> {
    let meta = std::fs::metadata(path)?;
    let ft = meta.file_type();
    let kind = if ft.is_block_device() {
        'b'
    } else if ft.is_char_device() {
        'c'
    } else {
        return Ok(None);
    };
    Ok(Some(DeviceNum {
        kind,
        major: libc::major(meta.rdev()) as i64,
        minor: libc::minor(meta.rdev()) as i64,
    }))
}

/// A device node of the guest, for the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDevice {
    /// Where the container sees it (the request's `container_path`).
    pub container_path: String,
    /// The node in the guest.
    pub node: PathBuf,
    /// The guest's number of it (the host's means nothing here).
    pub num: DeviceNum,
}

/// Resolves one device of the request (`field` names it: `devices[0]`).
pub fn resolve(
    tree: &DeviceTree,
    d: &Device,
    field: &str,
    timeout: Duration,
) -> Result<Vec<GuestDevice>> {
    let cpath = Path::new(&d.container_path);
    let plain = cpath.is_absolute()
        && cpath
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && cpath.parent().is_some();
    if !plain {
        return Err(invalid(
            &format!("{field}.container_path"),
            format!(
                "{:?} must be an absolute path without \"..\"",
                d.container_path
            ),
        ));
    }
    let id_field = format!("{field}.id");
    let vm_field = format!("{field}.vm_path");
    let nodes = match d.type_.as_str() {
        "blk" => {
            let path = PciPath::parse(&id_field, &d.id)?;
            vec![tree.virtio_blk_by_pci(&id_field, &path, timeout)?]
        }
        "mmioblk" => vec![tree.virtio_blk_mmio(&vm_field, &d.vm_path, timeout)?],
        "scsi" => vec![tree.scsi_by_address(&id_field, &d.id, timeout)?],
        "nvdimm" => vec![tree.pmem(&vm_field, &d.vm_path)?],
        "vfio-pci" => vec![vfio_group(tree, field, d, timeout)?],
        "vfio-ap" | "vfio-ap-cold" => {
            return Err(invalid(
                &format!("{field}.type"),
                format!("{:?} devices exist on s390x only", d.type_),
            ))
        }
        other => {
            return Err(invalid(
                &format!("{field}.type"),
                format!(
                    "{other:?} is not a supported device type ({})",
                    TYPES.join(", ")
                ),
            ))
        }
    };
    nodes
        .into_iter()
        .map(|node| {
            let num = device_number(&node)
                .map_err(|e| GuestError::internal(node.display(), e))?
                .ok_or_else(|| {
                    GuestError::Internal(format!("{} is not a device node", node.display()))
                })?;
            Ok(GuestDevice {
                container_path: d.container_path.clone(),
                node,
                num,
            })
        })
        .collect()
}

/// The `/dev/vfio/<group>` node of the devices named in `options` (`HOSTBDF=<guest path>`),
/// after binding each to the guest's vfio-pci driver. All must share one IOMMU group.
fn vfio_group(tree: &DeviceTree, field: &str, d: &Device, timeout: Duration) -> Result<PathBuf> {
    let opt_field = format!("{field}.options");
    if d.options.is_empty() {
        return Err(invalid(
            &opt_field,
            "no device of the group is named (HOSTBDF=<PCI path>)",
        ));
    }
    let root = tree.sys.join("devices/pci0000:00");
    let mut group: Option<String> = None;
    for (i, o) in d.options.iter().enumerate() {
        let f = format!("{opt_field}[{i}]");
        let (_, guest) = o
            .split_once('=')
            .ok_or_else(|| invalid(&f, format!("{o:?} is not HOSTBDF=<guest PCI path>")))?;
        let path = PciPath::parse(&f, guest)?;
        let dev = root.join(path.sysfs_relative(&root)?);
        let link = std::fs::read_link(dev.join("iommu_group")).map_err(|e| {
            GuestError::FailedPrecondition(format!(
                "{f}: the device at {guest} has no IOMMU group in the guest ({e}): vfio needs a guest IOMMU"
            ))
        })?;
        let g = link
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty())
            .ok_or_else(|| {
                GuestError::Internal(format!(
                    "{}: odd IOMMU group link {}",
                    dev.display(),
                    link.display()
                ))
            })?;
        match &group {
            Some(prev) if *prev != g => {
                return Err(invalid(
                    &f,
                    format!("the device at {guest} is in IOMMU group {g}, not {prev}"),
                ))
            }
            _ => group = Some(g),
        }
        bind_vfio(&dev, &tree.sys)
            .map_err(|e| GuestError::Internal(format!("{f}: binding {guest} to vfio-pci: {e}")))?;
    }
    let group = group.expect("options is not empty");
    let node = tree.dev.join("vfio").join(&group);
    // The node appears once the driver has taken the group.
    let listener = UeventListener::open()
        .map_err(|e| GuestError::Internal(format!("listening for devices: {e}")))?;
    let deadline = Instant::now() + timeout;
    while !node.exists() {
        if listener
            .next(deadline)
            .map_err(|e| GuestError::Internal(format!("reading uevents: {e}")))?
            .is_none()
        {
            return Err(GuestError::DeadlineExceeded(format!(
                "{field}: {} did not appear within {}s",
                node.display(),
                timeout.as_secs()
            )));
        }
    }
    Ok(node)
}

/// Hands the PCI device at `dev` to the vfio-pci driver (driver_override, unbind, probe).
fn bind_vfio(dev: &Path, sys: &Path) -> std::io::Result<()> {
    let bdf = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if std::fs::read_link(dev.join("driver")).is_ok_and(|d| d.ends_with("vfio-pci")) {
        return Ok(());
    }
    std::fs::write(dev.join("driver_override"), "vfio-pci")?;
    if dev.join("driver").exists() {
        std::fs::write(dev.join("driver/unbind"), &bdf)?;
    }
    std::fs::write(sys.join("bus/pci/drivers_probe"), &bdf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(type_: &str, id: &str, vm_path: &str) -> Device {
        Device {
            type_: type_.into(),
            id: id.into(),
            vm_path: vm_path.into(),
            container_path: "/dev/xvda".into(),
            ..Default::default()
        }
    }

    #[test]
    fn unsupported_types_and_bad_paths_are_refused_by_field() {
        let tree = DeviceTree::default();
        let t = Duration::from_millis(1);
        for (d, field) in [
            (device("vhost-user-blk", "", ""), "devices[0].type"),
            (device("vfio-ap", "", ""), "devices[0].type"),
            (
                Device {
                    container_path: "dev/x".into(),
                    ..device("blk", "02", "")
                },
                "devices[0].container_path",
            ),
            (
                Device {
                    container_path: "/dev/../etc".into(),
                    ..device("blk", "02", "")
                },
                "devices[0].container_path",
            ),
            (device("blk", "zz", ""), "devices[0].id"),
            (device("scsi", "0", ""), "devices[0].id"),
            (device("nvdimm", "", "/dev/mem"), "devices[0].vm_path"),
            (device("vfio-pci", "3", ""), "devices[0].options"),
        ] {
            let e = resolve(&tree, &d, "devices[0]", t).unwrap_err();
            assert!(e.to_string().starts_with(field), "{field}: {e}");
        }
    }

    /// A character device this test can stat everywhere: /dev/null (1:3), standing for the
    /// node of a fake disk.
    #[test]
    fn the_guest_s_major_and_minor_come_from_the_guest_node() {
        let t = tempfile::tempdir().unwrap();
        let tree = DeviceTree {
            sys: t.path().join("sys"),
            dev: t.path().join("dev"),
        };
        std::fs::create_dir_all(tree.sys.join("block/pmem0")).unwrap();
        std::fs::create_dir_all(&tree.dev).unwrap();
        std::os::unix::fs::symlink("/dev/null", tree.dev.join("pmem0")).unwrap();
        let got = resolve(
            &tree,
            &device("nvdimm", "", "/dev/pmem0"),
            "devices[0]",
            Duration::from_millis(1),
        )
        .unwrap();
        assert_eq!(
            got,
            vec![GuestDevice {
                container_path: "/dev/xvda".into(),
                node: tree.dev.join("pmem0"),
                num: DeviceNum {
                    kind: 'c',
                    major: 1,
                    minor: 3
                },
            }]
        );
    }

    #[test]
    fn vfio_devices_without_a_guest_iommu_group_are_a_failed_precondition() {
        let t = tempfile::tempdir().unwrap();
        let tree = DeviceTree {
            sys: t.path().join("sys"),
            dev: t.path().join("dev"),
        };
        std::fs::create_dir_all(tree.sys.join("devices/pci0000:00/0000:00:06.0")).unwrap();
        let d = Device {
            options: vec!["0000:3b:00.0=06".into()],
            ..device("vfio-pci", "12", "")
        };
        let e = resolve(&tree, &d, "devices[0]", Duration::from_millis(1)).unwrap_err();
        assert!(
            matches!(&e, GuestError::FailedPrecondition(m) if m.contains("IOMMU")),
            "{e}"
        );
    }
}
