//! Kata's device-backed storages: `blk`, `mmioblk`, `scsi`, `nvdimm` (a disk the host
//! hot-plugged, by its address) and `virtio-fs`, `9p` (a share, by its tag). Where the device
//! is, and which file systems each driver mounts, is the guest's to say
//! (`vigil_guest::storage`); the mount goes onto the checked mount point through descriptors,
//! with the options allow-listed per file system and `nodev` always: a device node on a
//! host-supplied file system must not open a guest device.
//!
//! Kata's `create_filesystem` driver option (block emptyDirs) makes a fresh ext4 first, and
//! `fs_group` is applied to the mounted tree.

use nix::mount::MsFlags;
use vigil_guest::blockdev::{DeviceTree, DEVICE_TIMEOUT};
use vigil_guest::storage as guest;
use vigil_protos::agent::Storage;

use super::{fs_group, parse_options, Added, MountPoint, StorageContext, StorageDriver};
use crate::error::{Result, RuntimeError};

pub(super) struct DeviceStorage {
    /// Where hot-plugged devices are found (sysfs and /dev; fake trees in tests).
    pub(super) tree: DeviceTree,
}

/// The data options each file system may be given (flags such as `ro` and `noatime` are
/// allowed for all). Left out on purpose: anything naming a guest path (`journal_path`,
/// `logdev`), `errors=panic` (a corrupt disk would stop the guest), transports other than
/// virtio for 9p.
fn data_options(fstype: &str) -> &'static [&'static str] {
    match fstype {
        "ext4" | "ext3" | "ext2" => &[
            "dax",
            "discard",
            "nodiscard",
            "noload",
            "errors",
            "data",
            "barrier",
            "nobarrier",
        ],
        "xfs" => &[
            "dax",
            "discard",
            "nodiscard",
            "nouuid",
            "norecovery",
            "logbufs",
            "logbsize",
        ],
        "virtiofs" => &["dax"],
        "9p" => &["trans", "version", "msize", "cache", "access", "posixacl"],
        _ => &[],
    }
}

/// Mount flags and data for `s`, checked (see [`data_options`]).
fn mount_options(s: &Storage, field: &str) -> Result<(MsFlags, String)> {
    for (i, o) in s.options.iter().enumerate() {
        let refusal = match o.as_str() {
            "errors=panic" => "a corrupt disk would stop the guest",
            o if o.starts_with("trans=") && o != "trans=virtio" => {
                "9p shares come over virtio only"
            }
            _ => continue,
        };
        return Err(RuntimeError::invalid(
            format!("{field}.options[{i}]"),
            format!("{o:?}: {refusal}"),
        ));
    }
    let (flags, mut data) = parse_options(&s.options, data_options(&s.fstype), field)?;
    if s.fstype == "9p" && !data.iter().any(|o| o.starts_with("trans=")) {
        data.insert(0, "trans=virtio".into());
    }
    Ok((flags | MsFlags::MS_NODEV, data.join(",")))
}

fn from_guest(e: vigil_guest::GuestError) -> RuntimeError {
    RuntimeError::from_guest(e, "storages")
}

impl StorageDriver for DeviceStorage {
    fn driver_types(&self) -> &'static [&'static str] {
        guest::DRIVERS
    }

    fn add(&self, s: &Storage, at: &MountPoint, ctx: &StorageContext) -> Result<Added> {
        // Options first: a storage that would be refused waits for no device.
        let (flags, data) = mount_options(s, ctx.field)?;
        let source =
            guest::resolve(&self.tree, s, ctx.field, DEVICE_TIMEOUT).map_err(from_guest)?;
        let target = at.dir(0o755)?;
        if guest::wants_new_filesystem(s) {
            guest::create_ext4(ctx.field, &s.fstype, std::path::Path::new(&source))
                .map_err(from_guest)?;
        }
        let m = target.mount_fs(
            &s.fstype,
            &source,
            flags,
            (!data.is_empty()).then_some(data.as_str()),
        )?;
        fs_group::mounted_with(m, s.fs_group.as_ref(), flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(fstype: &str, options: &[&str]) -> Storage {
        Storage {
            driver: "blk".into(),
            fstype: fstype.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn options_are_allow_listed_per_file_system() {
        let (flags, data) = mount_options(
            &storage("ext4", &["ro", "noatime", "dax", "errors=remount-ro"]),
            "storages[0]",
        )
        .unwrap();
        assert_eq!(
            flags,
            MsFlags::MS_NODEV | MsFlags::MS_RDONLY | MsFlags::MS_NOATIME
        );
        assert_eq!(data, "dax,errors=remount-ro");
        let (_, data) = mount_options(&storage("9p", &["version=9p2000.L"]), "s").unwrap();
        assert_eq!(data, "trans=virtio,version=9p2000.L");
        for (fstype, bad, field) in [
            ("ext4", "errors=panic", "s.options[0]"),
            ("xfs", "data=journal", "s.options[0]"),
            ("ext4", "uid=0", "s.options[0]"),
            ("ext4", "journal_path=/dev/vda", "s.options[0]"),
            ("9p", "trans=tcp", "s.options[0]"),
            ("virtiofs", "dax,uid=0", "s.options[0]"),
        ] {
            match mount_options(&storage(fstype, &[bad]), "s") {
                Err(RuntimeError::InvalidArgument { field: f, .. }) => {
                    assert_eq!(f, field, "{bad}")
                }
                other => panic!("{fstype} {bad}: {other:?}"),
            }
        }
    }
}
