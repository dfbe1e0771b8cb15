//! `AddSwap` (a hot-plugged virtio-blk disk by PCI path) and `AddSwapPath` (a device node or a
//! swap file already in the guest).
//!
//! Off unless the measured config turns it on (`[guest] allow_swap = true`): a swapped-out
//! page is written to a disk the host reads, outside the TEE's memory encryption and
//! integrity, so swap hands the host the pages of every container. Kata enables it on
//! request.
//!
//! The agent formats a swap disk itself (the guest image has no mkswap, and the host's
//! header is not ours to trust): a version-1 swap header in the first page, then swapon(2).
//! The disk is opened exclusively, so a mounted or already-used device is refused rather than
//! overwritten. A swap *file* is never formatted (that would destroy whatever file the path
//! names): it must already carry the swap signature.

use std::ffi::CString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path};

use vigil_protos::agent::{AddSwapPathRequest, AddSwapRequest};

use crate::blockdev::{DeviceTree, DEVICE_TIMEOUT};
use crate::error::{invalid, GuestError, Result};
use crate::pci::PciPath;

/// The signature at the end of a swap area's first page (version 1, "new style").
const SWAP_MAGIC: &[u8; 10] = b"SWAPSPACE2";
/// Fewer pages than this make no usable swap area (mkswap's minimum).
const MIN_PAGES: u64 = 10;

/// Swap set-up, with the measured config's consent.
#[derive(Debug, Clone, Default)]
pub struct Swap {
    pub allowed: bool,
    pub devices: DeviceTree,
}

impl Swap {
    fn check_allowed(&self, what: &str) -> Result<()> {
        if self.allowed {
            return Ok(());
        }
        Err(GuestError::FailedPrecondition(format!(
            "{what} refused: swap is off in the measured config ([guest] allow_swap = false), \
             because swapped-out pages leave the TEE's protection for a host-readable disk"
        )))
    }

    /// `AddSwap`: formats the disk at the request's PCI path and swaps on it.
    pub async fn add_swap(&self, req: AddSwapRequest) -> Result<()> {
        self.check_allowed("AddSwap")?;
        let path = PciPath::from_slots("PCIPath", &req.PCIPath)?;
        let me = self.clone();
        blocking(move || {
            let dev = me
                .devices
                .virtio_blk_by_pci("PCIPath", &path, DEVICE_TIMEOUT)?;
            format_device(&dev)?;
            swapon(&dev)
        })
        .await
    }

    /// `AddSwapPath`: a block device node under /dev (formatted, as for AddSwap), or a file
    /// that already is a swap file.
    pub async fn add_swap_path(&self, req: AddSwapPathRequest) -> Result<()> {
        self.check_allowed("AddSwapPath")?;
        let path = Path::new(&req.path).to_path_buf();
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(invalid(
                "path",
                format!("{:?} must be absolute, without \"..\"", req.path),
            ));
        }
        blocking(move || {
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|e| invalid("path", format!("{}: {e}", path.display())))?;
            let ft = meta.file_type();
            if ft.is_block_device() {
                format_device(&path)?;
            } else if ft.is_file() {
                if !has_swap_signature(&path)? {
                    return Err(invalid(
                        "path",
                        format!("{} is not a swap file (no {} signature); the agent formats only block devices", path.display(), String::from_utf8_lossy(SWAP_MAGIC)),
                    ));
                }
            } else {
                return Err(invalid(
                    "path",
                    format!("{} is neither a block device nor a regular file", path.display()),
                ));
            }
            swapon(&path)
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| GuestError::Internal(format!("swap task failed: {e}")))?
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as u64
}

/// Writes a fresh swap header to the block device `dev`, opened exclusively.
fn format_device(dev: &Path) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(dev)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => GuestError::FailedPrecondition(format!(
                "{} is in use (mounted, or swap already): not formatting it",
                dev.display()
            )),
            _ => GuestError::Internal(format!("opening {}: {e}", dev.display())),
        })?;
    let size = device_size(&f)
        .map_err(|e| GuestError::Internal(format!("size of {}: {e}", dev.display())))?;
    write_header(&mut f, size, page_size(), &random_uuid()?).map_err(|e| {
        GuestError::Internal(format!("writing the swap header to {}: {e}", dev.display()))
    })
}

/// Size in bytes of a block device (or a file, in tests).
fn device_size(f: &std::fs::File) -> std::io::Result<u64> {
    if f.metadata()?.file_type().is_block_device() {
        let mut size: u64 = 0;
        // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
        const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
        // SAFETY: the ioctl writes one u64 into `size`.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64 as _, &mut size) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(size)
    } else {
        Ok(f.metadata()?.len())
    }
}

fn random_uuid() -> Result<[u8; 16]> {
    let mut uuid = [0u8; 16];
    // SAFETY: getrandom fills the 16-byte buffer it is given.
    let n = unsafe { libc::getrandom(uuid.as_mut_ptr().cast(), uuid.len(), 0) };
    if n != uuid.len() as isize {
        return Err(GuestError::Internal(format!(
            "getrandom: {}",
            std::io::Error::last_os_error()
        )));
    }
    uuid[6] = (uuid[6] & 0x0f) | 0x40; // version 4
    uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122 variant
    Ok(uuid)
}

/// The first page of a version-1 swap area of `size` bytes: boot block left zero, then
/// `version`, `last_page`, `nr_badpages` (u32, native order), the UUID and an empty label;
/// the signature in the page's last ten bytes.
fn write_header(
    f: &mut (impl Write + Seek),
    size: u64,
    page: u64,
    uuid: &[u8; 16],
) -> std::io::Result<()> {
    let pages = size / page;
    if pages < MIN_PAGES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{size} bytes is too small for swap (at least {MIN_PAGES} pages of {page})"),
        ));
    }
    // The kernel reads last_page as a u32 (pages beyond are unused).
    let last_page = u32::try_from(pages - 1).unwrap_or(u32::MAX);
    let mut header = vec![0u8; page as usize];
    header[1024..1028].copy_from_slice(&1u32.to_ne_bytes());
    header[1028..1032].copy_from_slice(&last_page.to_ne_bytes());
    header[1032..1036].copy_from_slice(&0u32.to_ne_bytes());
    header[1036..1052].copy_from_slice(uuid);
    let magic_at = page as usize - SWAP_MAGIC.len();
    header[magic_at..].copy_from_slice(SWAP_MAGIC);
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&header)?;
    f.flush()
}

fn has_swap_signature(path: &Path) -> Result<bool> {
    let page = page_size();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| invalid("path", format!("{}: {e}", path.display())))?;
    let mut magic = [0u8; 10];
    f.seek(SeekFrom::Start(page - magic.len() as u64))
        .and_then(|_| f.read_exact(&mut magic))
        .map(|()| &magic == SWAP_MAGIC)
        .or(Ok(false))
}

fn swapon(path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| invalid("path", "contains a NUL byte"))?;
    // SAFETY: a valid NUL-terminated path and no flags.
    let rc = unsafe { libc::swapon(c.as_ptr(), 0) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EBUSY) => GuestError::FailedPrecondition(format!(
                "swapon {}: already in use: {e}",
                path.display()
            )),
            Some(libc::EINVAL) => invalid(
                "path",
                format!(
                    "swapon {}: the kernel refuses it as swap: {e}",
                    path.display()
                ),
            ),
            _ => GuestError::Internal(format!("swapon {}: {e}", path.display())),
        });
    }
    tracing::info!(path = %path.display(), "swap on");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_one_that_blkid_reads_as_swap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swap.img");
        let size = 4u64 << 20;
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let uuid = random_uuid().unwrap();
        write_header(&mut f, size, 4096, &uuid).unwrap();
        drop(f);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[4086..4096], SWAP_MAGIC);
        assert_eq!(u32::from_ne_bytes(bytes[1024..1028].try_into().unwrap()), 1);
        assert_eq!(
            u32::from_ne_bytes(bytes[1028..1032].try_into().unwrap()),
            (size / 4096 - 1) as u32
        );
        assert!(has_swap_signature(&path).unwrap() || page_size() != 4096);
        // util-linux's own reading of it, where blkid is installed.
        if let Ok(out) = std::process::Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(&path)
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("TYPE=swap"), "{text}");
            let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
            let shown = format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            );
            assert!(text.contains(&format!("UUID={shown}")), "{text}");
        }
        let e = write_header(&mut std::io::Cursor::new(vec![]), 9 * 4096, 4096, &uuid).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
    }

    #[tokio::test]
    async fn swap_is_refused_unless_the_config_allows_it_and_files_are_never_formatted() {
        let off = Swap::default();
        let e = off
            .add_swap(AddSwapRequest {
                PCIPath: vec![2],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, GuestError::FailedPrecondition(m) if m.contains("allow_swap")),
            "{e}"
        );
        let e = off
            .add_swap_path(AddSwapPathRequest {
                path: "/dev/vdb".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(e, GuestError::FailedPrecondition(_)), "{e}");

        let on = Swap {
            allowed: true,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        std::fs::write(&file, vec![7u8; 64 * 1024]).unwrap();
        let e = on
            .add_swap_path(AddSwapPathRequest {
                path: file.display().to_string(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, GuestError::InvalidArgument(m) if m.contains("not a swap file")),
            "{e}"
        );
        assert_eq!(
            std::fs::read(&file).unwrap(),
            vec![7u8; 64 * 1024],
            "the file must be untouched"
        );
        for bad in ["relative", "/a/../b", ""] {
            let e = on
                .add_swap_path(AddSwapPathRequest {
                    path: bad.into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert!(
                matches!(&e, GuestError::InvalidArgument(m) if m.starts_with("path")),
                "{bad}: {e}"
            );
        }
        let e = on
            .add_swap(AddSwapRequest {
                PCIPath: vec![40],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("PCIPath[0]"), "{e}");
    }
}
