//! Mounting onto, and unmounting, places found beneath a directory the sandbox owns, through
//! descriptors only: the mount point is made and opened with `beneath`, the mount targets
//! `/proc/self/fd/N`, and the mount's root is opened again by name from its parent afterwards
//! (a descriptor opened before the mount sees the covered directory) and checked to be the
//! new mount.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::beneath;
use crate::confine::Owned;
use crate::error::{Result, RuntimeError};

/// A mount point, made beneath an owned root, not yet mounted on.
pub(crate) struct Target {
    parent: OwnedFd,
    name: CString,
    covered: OwnedFd,
    shown: PathBuf,
}

/// A mount this sandbox made, to be undone.
#[derive(Debug)]
pub(crate) struct Mounted {
    shown: PathBuf,
    /// The mount point as it was before the mount: unmounting through it reaches the mount on
    /// top wherever the directory has been moved since.
    covered: OwnedFd,
    /// The root of the mount, for lookups beneath it.
    root: OwnedFd,
}

fn split(rel: &Path) -> Result<(PathBuf, CString)> {
    let name = rel.file_name().ok_or_else(|| {
        RuntimeError::Internal(format!("{} has no last component", rel.display()))
    })?;
    let c = CString::new(name.as_bytes())
        .map_err(|_| RuntimeError::Internal(format!("{} contains a NUL byte", rel.display())))?;
    Ok((rel.parent().map(Path::to_path_buf).unwrap_or_default(), c))
}

impl Target {
    /// The directory `rel` beneath `root` (created with `mode` where missing).
    pub(crate) fn dir(
        root: BorrowedFd,
        rel: &Path,
        mode: u32,
        shown: PathBuf,
    ) -> std::io::Result<Target> {
        let covered = beneath::mkdir_all(root, rel, mode, &mut |_| Ok(()))?;
        Target::at(root, rel, covered, shown)
    }

    /// The regular file `rel` beneath `root` (created empty where missing), for a bind of a file.
    pub(crate) fn file(root: BorrowedFd, rel: &Path, shown: PathBuf) -> std::io::Result<Target> {
        let covered = beneath::create_file(root, rel, 0o644)?;
        Target::at(root, rel, covered, shown)
    }

    fn at(
        root: BorrowedFd,
        rel: &Path,
        covered: OwnedFd,
        shown: PathBuf,
    ) -> std::io::Result<Target> {
        let (parent_rel, name) =
            split(rel).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let parent = beneath::open(root, &parent_rel)?;
        Ok(Target {
            parent,
            name,
            covered,
            shown,
        })
    }

    /// A new file system of type `fstype` here.
    pub(crate) fn mount_fs(
        self,
        fstype: &str,
        source: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<Mounted> {
        mount(
            Some(source),
            &beneath::proc_path(self.covered.as_fd()),
            Some(fstype),
            flags,
            data,
        )
        .map_err(|e| {
            RuntimeError::internal(format!("mounting {fstype} at {}", self.shown.display()), e)
        })?;
        let covered_dev = beneath::fstat(self.covered.as_fd()).map(|s| s.st_dev).ok();
        self.finish(|root| Some(root.st_dev) != covered_dev)
    }

    /// A bind of what `source` refers to here (with everything mounted beneath it if
    /// `recursive`), then `flags` (`MS_RDONLY`, `MS_NODEV`, ...) applied by a remount.
    pub(crate) fn bind(
        self,
        source: BorrowedFd,
        recursive: bool,
        flags: MsFlags,
    ) -> Result<Mounted> {
        let src = beneath::fstat(source).map_err(|e| RuntimeError::internal("bind source", e))?;
        let rec = if recursive {
            MsFlags::MS_REC
        } else {
            MsFlags::empty()
        };
        mount(
            Some(&beneath::proc_path(source)),
            &beneath::proc_path(self.covered.as_fd()),
            None::<&str>,
            MsFlags::MS_BIND | rec,
            None::<&str>,
        )
        .map_err(|e| {
            RuntimeError::internal(format!("bind-mounting at {}", self.shown.display()), e)
        })?;
        let m = self.finish(|root| root.st_dev == src.st_dev && root.st_ino == src.st_ino)?;
        if !flags.is_empty() {
            // A remount sets all of the mount's flags: keep those the source's mount has.
            let flags = flags | inherited_flags(source);
            if let Err(e) = mount(
                None::<&str>,
                &beneath::proc_path(m.root.as_fd()),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
                None::<&str>,
            ) {
                let shown = m.shown.clone();
                let _ = m.unmount();
                return Err(RuntimeError::internal(
                    format!(
                        "remounting the bind at {} with its options",
                        shown.display()
                    ),
                    e,
                ));
            }
        }
        Ok(m)
    }

    /// Opens the new mount's root by name from the parent and checks it is the mount just
    /// made (`is_ours`); otherwise the mount point was moved meanwhile: undo and refuse.
    fn finish(self, is_ours: impl Fn(&libc::stat) -> bool) -> Result<Mounted> {
        let reopened = beneath::open(
            self.parent.as_fd(),
            Path::new(std::ffi::OsStr::from_bytes(self.name.as_bytes())),
        );
        let root = match reopened {
            Ok(fd) if beneath::fstat(fd.as_fd()).is_ok_and(|s| is_ours(&s)) => fd,
            _ => {
                let m = Mounted {
                    shown: self.shown.clone(),
                    root: self
                        .covered
                        .try_clone()
                        .map_err(|e| RuntimeError::internal("dup", e))?,
                    covered: self.covered,
                };
                let _ = m.unmount();
                return Err(RuntimeError::Internal(format!(
                    "the mount point {} changed while it was being mounted",
                    self.shown.display()
                )));
            }
        };
        Ok(Mounted {
            shown: self.shown,
            covered: self.covered,
            root,
        })
    }
}

/// The per-mount flags of the mount `fd` is on that a bind of it must keep.
fn inherited_flags(fd: BorrowedFd) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::fstatvfs(fd) else {
        return MsFlags::empty();
    };
    use nix::sys::statvfs::FsFlags;
    let mut f = MsFlags::empty();
    for (has, flag) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.flags().contains(has) {
            f |= flag;
        }
    }
    f
}

impl Mounted {
    pub(crate) fn shown(&self) -> &Path {
        &self.shown
    }

    pub(crate) fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// The mount's root as an owned directory, for lookups of bind sources beneath it.
    pub(crate) fn owned(&self) -> Result<Owned> {
        Ok(Owned::new(
            self.shown.clone(),
            self.root
                .try_clone()
                .map_err(|e| RuntimeError::internal(self.shown.display(), e))?,
        ))
    }

    /// Detaches the mount (lazily, so a busy one goes too). Already gone is fine.
    pub(crate) fn unmount(self) -> std::result::Result<(), String> {
        drop(self.root); // a descriptor on the mount would not keep it, but be tidy
        match umount2(
            &beneath::proc_path(self.covered.as_fd()),
            MntFlags::MNT_DETACH,
        ) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(format!("unmounting {}: {e}", self.shown.display())),
        }
    }
}

/// Unmounts in reverse order; a mount that will not go is detached (lazy), never kept.
pub(crate) fn unmount_all(mounts: &mut Vec<Mounted>) -> Vec<String> {
    let mut errors = Vec::new();
    while let Some(m) = mounts.pop() {
        if let Err(e) = m.unmount() {
            errors.push(e);
        }
    }
    errors
}

/// Every mount point at or under `dir`, deepest first (from /proc/self/mountinfo).
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Unmounts by path what [`mounts_under`] found (clean-up of what nothing tracks any more),
/// never following a symlink at the end of the path.
pub(crate) fn detach_path(p: &Path) {
    let _ = umount2(p, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
}

/// Unmounts anything left under `dir`, then removes it. Refuses to delete while a mount is
/// still there: deleting through a bind mount would delete its source.
pub(crate) fn clean_dir(dir: &Path) -> Result<()> {
    for m in mounts_under(dir) {
        detach_path(&m);
    }
    let left = mounts_under(dir);
    if !left.is_empty() {
        return Err(RuntimeError::Internal(format!(
            "not removing {}: still mounted: {left:?}",
            dir.display()
        )));
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RuntimeError::internal(dir.display(), e)),
    }
}
