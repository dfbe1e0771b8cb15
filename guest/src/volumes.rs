//! `GetVolumeStats` and `ResizeVolume` on the volumes mounted for the pod.
//!
//! Both take a guest path from the host, so both are confined to the pod's directories (the
//! roots given at construction), the path opened beneath them without following symlinks
//! (`beneath`): Kata's agent answers for any guest path, which tells the host about file
//! systems it has no business with.
//!
//! Stats are Kata's: bytes and inodes from statfs(2), condition `OK`. Resizing grows the file
//! system on a block device the host has already enlarged: it waits (on uevents) for the
//! kernel to see the new capacity, then grows ext2/3/4 online with `EXT4_IOC_RESIZE_FS`, as
//! `resize2fs` does on a mounted file system, so the guest needs no tool. Other file systems
//! are refused naming their type. (Kata's agent answers UNIMPLEMENTED.)

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vigil_protos::agent::{ResizeVolumeRequest, VolumeStatsRequest};
use vigil_protos::csi::{volume_usage, VolumeCondition, VolumeStatsResponse, VolumeUsage};

use crate::beneath::{is_refusal, open_under, proc_path};
use crate::error::{invalid, GuestError, Result};
use crate::uevent::UeventListener;

/// How long a resize waits for the kernel to see the device's new capacity.
pub const RESIZE_TIMEOUT: Duration = Duration::from_secs(10);

const EXT4_SUPER_MAGIC: i64 = 0xEF53;
/// `EXT4_IOC_RESIZE_FS` = `_IOW('f', 16, __u64)`.
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

/// The pod's volumes: only paths under `roots` are answered for.
#[derive(Debug, Clone)]
pub struct Volumes {
    roots: Vec<PathBuf>,
    sys: PathBuf,
    timeout: Duration,
}

impl Volumes {
    pub fn new(roots: Vec<PathBuf>) -> Volumes {
        Volumes {
            roots,
            sys: PathBuf::from("/sys"),
            timeout: RESIZE_TIMEOUT,
        }
    }

    /// `text` opened beneath the pod directory that holds it (`O_PATH`), never through a
    /// symlink, so the volume answered for is the one the path names.
    fn confined(&self, field: &str, text: &str) -> Result<(PathBuf, OwnedFd)> {
        let path = Path::new(text);
        if !path.is_absolute() {
            return Err(invalid(field, format!("{text:?} is not an absolute path")));
        }
        let opened = open_under(&self.roots, path).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => GuestError::NotFound(format!("{field}: {text}: {e}")),
            _ if is_refusal(&e) => invalid(
                field,
                format!("{text}: a symlink, \"..\" or a non-directory is on the way (symlinks are not followed)"),
            ),
            _ => GuestError::internal(format!("{field}: {text}"), e),
        })?;
        let Some(fd) = opened else {
            let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
            return Err(invalid(
                field,
                format!(
                    "{text} is not under the pod's directories ({})",
                    roots.join(", ")
                ),
            ));
        };
        Ok((path.to_path_buf(), fd))
    }

    /// `GetVolumeStats`: capacity in bytes and in inodes.
    pub fn stats(&self, req: &VolumeStatsRequest) -> Result<VolumeStatsResponse> {
        let (path, fd) = self.confined("volume_guest_path", &req.volume_guest_path)?;
        let st = statfs(&path, fd.as_fd())?;
        let bsize = st.f_frsize as u64;
        let usage = |total: u64, free: u64, unit: volume_usage::Unit| VolumeUsage {
            total,
            available: free,
            used: total.saturating_sub(free),
            unit: unit.into(),
            ..Default::default()
        };
        Ok(VolumeStatsResponse {
            usage: vec![
                // Kata counts bytes free to root (f_bfree) as available, as here.
                usage(
                    st.f_blocks as u64 * bsize,
                    st.f_bfree as u64 * bsize,
                    volume_usage::Unit::BYTES,
                ),
                usage(
                    st.f_files as u64,
                    st.f_ffree as u64,
                    volume_usage::Unit::INODES,
                ),
            ],
            volume_condition: Some(VolumeCondition {
                abnormal: false,
                message: "OK".into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    }

    /// `ResizeVolume`: grows the file system mounted at the path to `size` bytes (0: to the
    /// whole device), once the device is that large.
    pub async fn resize(&self, req: ResizeVolumeRequest) -> Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.resize_blocking(&req))
            .await
            .map_err(|e| GuestError::Internal(format!("resize task failed: {e}")))?
    }

    fn resize_blocking(&self, req: &ResizeVolumeRequest) -> Result<()> {
        let field = "volume_guest_path";
        let (path, fd) = self.confined(field, &req.volume_guest_path)?;
        // The ioctl needs a descriptor opened for reading: the same directory, reopened.
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(proc_path(fd.as_fd()))
            .map_err(|e| invalid(field, format!("{}: {e}", path.display())))?;
        let st = fstatfs(&dir)?;
        if st.f_type as i64 != EXT4_SUPER_MAGIC {
            return Err(GuestError::FailedPrecondition(format!(
                "{field}: {} is a {} file system; only ext2/3/4 grow online here",
                path.display(),
                fs_name(st.f_type as i64)
            )));
        }
        let dev = dir
            .metadata()
            .map_err(|e| GuestError::internal(path.display(), e))?
            .dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let size_file = self.sys.join(format!("dev/block/{major}:{minor}/size"));
        let listener = UeventListener::open()
            .map_err(|e| GuestError::Internal(format!("listening for device changes: {e}")))?;
        let deadline = Instant::now() + self.timeout;
        let device_bytes = loop {
            let bytes = read_sectors(&size_file)? * 512;
            if req.size == 0 || bytes >= req.size {
                break bytes;
            }
            if listener
                .next(deadline)
                .map_err(|e| GuestError::Internal(format!("reading uevents: {e}")))?
                .is_none()
            {
                return Err(GuestError::DeadlineExceeded(format!(
                    "size: the device under {} is {bytes} bytes after {:.1}s, less than the {} asked",
                    path.display(),
                    self.timeout.as_secs_f32(),
                    req.size
                )));
            }
        };
        let target = if req.size == 0 {
            device_bytes
        } else {
            req.size
        };
        let block = st.f_bsize as u64;
        let blocks = target / block;
        if blocks < st.f_blocks as u64 {
            return Err(invalid(
                "size",
                format!(
                    "{target} bytes is smaller than the file system at {} ({} bytes): volumes only grow",
                    path.display(),
                    st.f_blocks as u64 * block
                ),
            ));
        }
        if blocks == st.f_blocks as u64 {
            return Ok(());
        }
        // SAFETY: the ioctl reads one u64 (the new block count) from the pointer.
        let rc = unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_RESIZE_FS as _, &blocks) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            let doing = format!(
                "growing the file system at {} to {blocks} blocks",
                path.display()
            );
            return Err(match e.raw_os_error() {
                // Without CAP_SYS_RESOURCE, or on a file system with errors (see the kernel log).
                Some(libc::EPERM) => GuestError::FailedPrecondition(format!(
                    "{doing}: {e} (the agent needs CAP_SYS_RESOURCE, and the file system must be free of errors)"
                )),
                _ => GuestError::Internal(format!("{doing}: {e}")),
            });
        }
        tracing::info!(path = %path.display(), bytes = blocks * block, "volume grown");
        Ok(())
    }
}

fn read_sectors(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| GuestError::Internal(format!("reading {}: {e}", path.display())))?;
    text.trim().parse().map_err(|_| {
        GuestError::Internal(format!(
            "{}: {:?} is not a number",
            path.display(),
            text.trim()
        ))
    })
}

fn fs_name(magic: i64) -> String {
    match magic {
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x6573_5546 => "fuse (virtio-fs)".into(),
        0x0102_1997 => "9p".into(),
        0x794c_7630 => "overlay".into(),
        m => format!("type {m:#x}"),
    }
}

fn statfs(path: &Path, fd: BorrowedFd) -> Result<libc::statvfs> {
    // SAFETY: a zeroed statvfs is a valid out-parameter; the descriptor is borrowed.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(GuestError::Internal(format!(
            "statfs {}: {e}",
            path.display()
        )));
    }
    Ok(st)
}

fn fstatfs(f: &std::fs::File) -> Result<libc::statfs> {
    // SAFETY: a zeroed statfs is a valid out-parameter for our descriptor.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(GuestError::Internal(format!("fstatfs: {e}")));
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn stats_req(p: &Path) -> VolumeStatsRequest {
        VolumeStatsRequest {
            volume_guest_path: p.display().to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn stats_are_kata_s_and_only_for_the_pod_s_paths() {
        let root = tempfile::tempdir().unwrap();
        let vol = root.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        let v = Volumes::new(vec![root.path().into()]);
        let resp = v.stats(&stats_req(&vol)).unwrap();
        assert_eq!(resp.usage.len(), 2);
        let (bytes, inodes) = (&resp.usage[0], &resp.usage[1]);
        assert_eq!(bytes.unit.enum_value().unwrap(), volume_usage::Unit::BYTES);
        assert_eq!(
            inodes.unit.enum_value().unwrap(),
            volume_usage::Unit::INODES
        );
        assert!(bytes.total > 0 && bytes.used + bytes.available == bytes.total);
        assert_eq!(resp.volume_condition.message, "OK");

        let outside = tempfile::tempdir().unwrap();
        let e = v.stats(&stats_req(outside.path())).unwrap_err();
        assert!(
            matches!(&e, GuestError::InvalidArgument(m) if m.contains("not under")),
            "{e}"
        );
        // A symlink is never followed: not out of the pod's directories, not within them.
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        std::os::unix::fs::symlink(&vol, root.path().join("inner")).unwrap();
        for l in ["link", "inner"] {
            let e = v.stats(&stats_req(&root.path().join(l))).unwrap_err();
            assert!(
                matches!(&e, GuestError::InvalidArgument(m) if m.contains("symlink")),
                "{l}: {e}"
            );
        }
        let e = v
            .stats(&stats_req(&root.path().join("absent")))
            .unwrap_err();
        assert!(matches!(e, GuestError::NotFound(_)), "{e}");
    }

    fn has_cap_sys_resource() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        eff & (1 << 24) != 0 // CAP_SYS_RESOURCE
    }

    fn run(cmd: &mut Command) -> bool {
        cmd.output().is_ok_and(|o| o.status.success())
    }

    /// ext4 on a loop device, mounted in a mount namespace of this test's own thread: the
    /// backing file grows, the loop device is told, and ResizeVolume grows the file system.
    #[test]
    fn an_ext4_volume_grows_to_its_device_and_never_shrinks() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("vol.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        if !run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img)) {
            eprintln!("skipped: no mkfs.ext4");
            return;
        }
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&img)
            .output();
        let Some(loopdev) = out
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        else {
            eprintln!("skipped: no loop device");
            return;
        };
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let (img2, mnt2, dev2, root) = (
            img.clone(),
            mnt.clone(),
            loopdev.clone(),
            dir.path().to_path_buf(),
        );
        let result = std::thread::spawn(move || -> std::result::Result<(), String> {
            // SAFETY: unshare on this thread only; the namespace (and the mount) die with it.
            if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
                return Err(format!("unshare: {}", std::io::Error::last_os_error()));
            }
            let rprivate = Command::new("mount")
                .args(["--make-rprivate", "/"])
                .status();
            if !rprivate.is_ok_and(|s| s.success()) {
                return Err("mount --make-rprivate /".into());
            }
            let dev_c = std::ffi::CString::new(dev2.as_str()).unwrap();
            let mnt_c = std::ffi::CString::new(mnt2.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: valid NUL-terminated strings.
            let rc = unsafe {
                libc::mount(
                    dev_c.as_ptr(),
                    mnt_c.as_ptr(),
                    c"ext4".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(format!("mount: {}", std::io::Error::last_os_error()));
            }
            let mut v = Volumes::new(vec![root]);
            v.timeout = Duration::from_millis(200);
            let total = |v: &Volumes| v.stats(&stats_req(&mnt2)).unwrap().usage[0].total;
            let before = total(&v);
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let resize = |size: u64| {
                rt.block_on(v.resize(ResizeVolumeRequest {
                    volume_guest_path: mnt2.display().to_string(),
                    size,
                    ..Default::default()
                }))
            };
            // Asking for more than the device holds: waits, then says so.
            let e = resize(64 << 20).unwrap_err();
            if !matches!(e, GuestError::DeadlineExceeded(_)) {
                return Err(format!("oversized resize: {e}"));
            }
            std::fs::OpenOptions::new()
                .write(true)
                .open(&img2)
                .unwrap()
                .set_len(64 << 20)
                .unwrap();
            let dev = std::fs::File::open(&dev2).unwrap();
            // LOOP_SET_CAPACITY: the loop device takes its backing file's new size.
            if unsafe { libc::ioctl(dev.as_raw_fd(), 0x4C07, 0) } != 0 {
                return Err(format!(
                    "LOOP_SET_CAPACITY: {}",
                    std::io::Error::last_os_error()
                ));
            }
            match resize(64 << 20) {
                Ok(()) => {}
                // Containers without CAP_SYS_RESOURCE (as some CI machines are) cannot grow
                // ext4 online; the QEMU end-to-end run covers the growth itself.
                Err(GuestError::FailedPrecondition(m)) if !has_cap_sys_resource() => {
                    eprintln!("growth skipped: no CAP_SYS_RESOURCE here ({m})");
                    let _ = Command::new("umount").arg(&mnt2).status();
                    return Ok(());
                }
                Err(e) => return Err(format!("resize: {e}")),
            }
            let after = total(&v);
            if after <= before + (24 << 20) {
                return Err(format!("not grown: {before} -> {after}"));
            }
            let _ = Command::new("umount").arg(&mnt2).status();
            Ok(())
        })
        .join()
        .unwrap();
        let _ = Command::new("losetup").args(["-d", &loopdev]).status();
        result.unwrap();
    }

    #[tokio::test]
    async fn resize_refuses_what_is_not_ext4_naming_it() {
        // /dev/shm is a tmpfs on any Linux machine.
        let root = tempfile::tempdir_in("/dev/shm").unwrap();
        let v = Volumes::new(vec![root.path().into()]);
        let e = v
            .resize(ResizeVolumeRequest {
                volume_guest_path: root.path().display().to_string(),
                size: 1 << 30,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, GuestError::FailedPrecondition(m) if m.contains("a tmpfs file system; only ext2/3/4")),
            "{e}"
        );
    }
}
