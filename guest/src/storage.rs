//! Where the device-backed storage drivers' file systems are, from a `Storage` of CreateSandbox
//! or CreateContainer in Kata's shape: the device or share tag the host names, resolved and
//! awaited in the guest, and the file system types each driver may mount; plus Kata's
//! `create_filesystem` (a fresh ext4 on a block emptyDir's disk).
//!
//! | driver | `source` | file systems |
//! |---|---|---|
//! | `blk` | PCI path (`02/03`) of a virtio-blk disk | ext2/3/4, xfs |
//! | `mmioblk` | `/dev/vdX` of a virtio-mmio disk | ext2/3/4, xfs |
//! | `scsi` | SCSI address `target:lun` | ext2/3/4, xfs |
//! | `nvdimm` | `/dev/pmemN` | ext2/3/4, xfs |
//! | `virtio-fs` | the share's tag | virtiofs |
//! | `9p` | the share's tag | 9p |
//!
//! The rest is the container runtime's storage driver (`vigil-runtime`, `storage/device.rs`):
//! the mount options each file system may take, the mount itself beneath the sandbox's
//! directories through descriptors, `fs_group`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vigil_protos::agent::Storage;

use crate::blockdev::DeviceTree;
use crate::error::{invalid, GuestError, Result};
use crate::pci::PciPath;

/// The storage drivers resolved here, by Kata's names.
pub const DRIVERS: &[&str] = &["blk", "mmioblk", "scsi", "nvdimm", "virtio-fs", "9p"];
/// Kata's driver option asking the agent to make a file system on a fresh block volume.
pub const CREATE_FILESYSTEM: &str = "create_filesystem";
/// A virtio-fs tag is at most 36 bytes (virtio-fs device configuration).
const MAX_TAG: usize = 36;
const BLOCK_FS: &[&str] = &["ext4", "ext3", "ext2", "xfs"];

/// Whether `driver` is one this module resolves.
pub fn handles(driver: &str) -> bool {
    DRIVERS.contains(&driver)
}

/// Resolves a storage of one of [`DRIVERS`]: finds (waiting up to `timeout`) the device or
/// checks the tag, and checks the file system type and driver options. Returns the mount
/// source (a `/dev` node, or the tag). `field` names the storage in errors (`storages[2]`).
pub fn resolve(tree: &DeviceTree, s: &Storage, field: &str, timeout: Duration) -> Result<String> {
    let fstypes: &[&str] = match s.driver.as_str() {
        "virtio-fs" => &["virtiofs"],
        "9p" => &["9p"],
        d if handles(d) => BLOCK_FS,
        other => {
            return Err(invalid(
                &format!("{field}.driver"),
                format!(
                    "{other:?} is not a device storage driver ({})",
                    DRIVERS.join(", ")
                ),
            ))
        }
    };
    // The cheap checks first: nothing is awaited for a storage that would be refused.
    if !fstypes.contains(&s.fstype.as_str()) {
        return Err(invalid(
            &format!("{field}.fstype"),
            format!(
                "{:?} is not mounted by the {} driver ({})",
                s.fstype,
                s.driver,
                fstypes.join(", ")
            ),
        ));
    }
    for o in &s.driver_options {
        if o == CREATE_FILESYSTEM && fstypes == BLOCK_FS {
            continue;
        }
        return Err(invalid(
            &format!("{field}.driver_options"),
            format!("{o:?} is not supported for {} storages (an ephemeral encryption key needs CoCo's data hub)", s.driver),
        ));
    }
    let source_field = format!("{field}.source");
    Ok(match s.driver.as_str() {
        "blk" => {
            let path = PciPath::parse(&source_field, &s.source)?;
            path_text(tree.virtio_blk_by_pci(&source_field, &path, timeout)?)
        }
        "mmioblk" => path_text(tree.virtio_blk_mmio(&source_field, &s.source, timeout)?),
        "scsi" => path_text(tree.scsi_by_address(&source_field, &s.source, timeout)?),
        "nvdimm" => path_text(tree.pmem(&source_field, &s.source)?),
        _ => tag(&source_field, &s.source)?,
    })
}

fn path_text(p: PathBuf) -> String {
    p.display().to_string()
}

fn tag(field: &str, t: &str) -> Result<String> {
    let ok = !t.is_empty()
        && t.len() <= MAX_TAG
        && t.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b',');
    if !ok {
        return Err(invalid(
            field,
            format!("{t:?} is not a share tag (1-{MAX_TAG} printable bytes, no '/' or ',')"),
        ));
    }
    Ok(t.to_string())
}

/// Whether the storage asks for a fresh file system (`create_filesystem`, Kata's block
/// emptyDir): made with the guest's `mkfs.ext4` before mounting.
pub fn wants_new_filesystem(s: &Storage) -> bool {
    s.driver_options.iter().any(|o| o == CREATE_FILESYSTEM)
}

/// Makes an ext4 file system on `device` with Kata's options for block emptyDirs (no journal,
/// no reserved blocks). The guest image must have `mkfs.ext4`.
pub fn create_ext4(field: &str, fstype: &str, device: &Path) -> Result<()> {
    if fstype != "ext4" {
        return Err(invalid(
            &format!("{field}.fstype"),
            format!("create_filesystem makes ext4 only, not {fstype:?}"),
        ));
    }
    let mkfs = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4", "/usr/bin/mkfs.ext4", "/bin/mkfs.ext4"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            GuestError::FailedPrecondition(format!(
                "{field}.driver_options: create_filesystem needs mkfs.ext4 in the guest image, which has none"
            ))
        })?;
    await_unclaimed(field, device)?;
    let out = std::process::Command::new(&mkfs)
        .args([
            "-q",
            "-F",
            "-O",
            "^has_journal",
            "-m",
            "0",
            "-i",
            "163840",
            "-I",
            "128",
        ])
        .arg(device)
        .output()
        .map_err(|e| GuestError::Internal(format!("running {}: {e}", mkfs.display())))?;
    if !out.status.success() {
        return Err(GuestError::Internal(format!(
            "mkfs.ext4 {} failed ({}): {}",
            device.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// How long a device may stay claimed before mkfs is given up on.
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits (bounded) until `device` can be opened exclusively, as mkfs needs. A file system the
/// previous container of a storage had on it can outlive its unmount for a moment: a
/// container being created at that time starts with a copy of the guest's mounts, which goes
/// when it moves to its own root. mkfs would call the device "in use" meanwhile.
fn await_unclaimed(field: &str, device: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let deadline = std::time::Instant::now() + CLAIM_WAIT;
    loop {
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
            .open(device)
        {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if std::time::Instant::now() >= deadline {
                    return Err(GuestError::FailedPrecondition(format!(
                        "{field}.source: {} is still in use (mounted) after {} s: not making a file system on it",
                        device.display(),
                        CLAIM_WAIT.as_secs()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => {
                return Err(GuestError::Internal(format!(
                    "opening {} for mkfs: {e}",
                    device.display()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(driver: &str, source: &str, fstype: &str) -> Storage {
        Storage {
            driver: driver.into(),
            source: source.into(),
            fstype: fstype.into(),
            mount_point: "/run/kata-containers/sandbox/storage/x".into(),
            ..Default::default()
        }
    }

    #[test]
    fn shares_resolve_to_their_tag_and_the_rest_is_refused_by_field() {
        let tree = DeviceTree::default();
        let t = Duration::from_millis(1);
        let r = |s: &Storage| resolve(&tree, s, "storages[0]", t);
        assert_eq!(r(&storage("9p", "vigilshare", "9p")).unwrap(), "vigilshare");
        assert_eq!(
            r(&storage("virtio-fs", "kataShared", "virtiofs")).unwrap(),
            "kataShared"
        );
        for (s, field) in [
            (storage("9p", "a/b", "9p"), "storages[0].source"),
            (storage("9p", "", "9p"), "storages[0].source"),
            (storage("9p", "a,trans=tcp", "9p"), "storages[0].source"),
            (storage("virtio-fs", "tag", "ext4"), "storages[0].fstype"),
            (storage("blk", "02", "virtiofs"), "storages[0].fstype"),
            (storage("nfs", "tag", "nfs"), "storages[0].driver"),
            (storage("blk", "zz", "ext4"), "storages[0].source"),
            (storage("mmioblk", "/dev/sda", "ext4"), "storages[0].source"),
            (storage("nvdimm", "/dev/mem", "ext4"), "storages[0].source"),
        ] {
            let e = r(&s).unwrap_err();
            assert!(e.to_string().starts_with(field), "{field}: {e}");
        }
        for (driver, fstype, option) in [
            ("virtio-fs", "virtiofs", "encryption_key=ephemeral"),
            ("virtio-fs", "virtiofs", CREATE_FILESYSTEM),
            ("blk", "ext4", "fsgid=5"),
        ] {
            let mut s = storage(driver, "02", fstype);
            s.driver_options = vec![option.into()];
            let e = r(&s).unwrap_err();
            assert!(
                e.to_string().starts_with("storages[0].driver_options"),
                "{option}: {e}"
            );
        }
    }

    /// mkfs waits for a device another holder has open exclusively (as a mount copy in a
    /// container being created does) and goes ahead once it is released. Needs root and a
    /// loop device; skipped with the reason printed otherwise.
    #[test]
    fn mkfs_waits_for_an_exclusive_holder_to_let_go() {
        use std::os::unix::fs::OpenOptionsExt;
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(8 << 20).unwrap();
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file.path())
            .output();
        let dev = match out {
            Ok(o) if o.status.success() => {
                PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string())
            }
            other => {
                eprintln!("skipped: no loop device: {other:?}");
                return;
            }
        };
        let holder = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&dev)
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let releaser = std::thread::spawn(move || {
            // Let go once mkfs has started waiting (it was blocked by us when it asked).
            rx.recv().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(holder);
        });
        // While we hold it, an exclusive open is refused: the state mkfs waits out.
        let busy = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&dev);
        assert_eq!(busy.unwrap_err().raw_os_error(), Some(libc::EBUSY));
        tx.send(()).unwrap();
        let made = create_ext4("storages[0]", "ext4", &dev);
        releaser.join().unwrap();
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&dev)
            .status();
        if let Err(GuestError::FailedPrecondition(e)) = &made {
            if e.contains("needs mkfs.ext4") {
                eprintln!("skipped: {e}");
                return;
            }
        }
        made.unwrap();
    }
}
