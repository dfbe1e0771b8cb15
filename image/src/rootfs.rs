//! A container's root file system from stored layers: an overlay mount (layers read-only
//! below, a private writable directory above), or, where overlayfs is not available, a copy
//! of the layers applied bottom up with their whiteouts. Either way the store's layers are
//! never written to, and [`Rootfs::remove`] leaves the mount point as it was: empty.
//!
//! The mount point is a directory the caller has opened (the container runtime resolves it
//! beneath the sandbox without following symlinks); everything here goes through
//! `/proc/self/fd/N` of that descriptor, so a path swapped meanwhile is never used.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use vigil_guest::beneath;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::store::{remove_tree, Store};
use crate::unpack::{get_xattr, is_whiteout, set_mtime, set_xattr, OPAQUE_XATTR};

/// How root file systems are made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RootfsMode {
    /// Overlay, falling back to a copy when the kernel has no overlayfs.
    #[default]
    Auto,
    Overlay,
    Copy,
}

/// The mount data limit of one `mount(2)` call (a page).
const MAX_MOUNT_DATA: usize = 4000;

/// A mounted (or copied) root file system; remove it with [`Rootfs::remove`].
#[derive(Debug)]
pub struct Rootfs {
    /// The mount point as it was before the mount: unmounting through it reaches the overlay
    /// on top wherever the directory has been moved since.
    target: OwnedFd,
    shown: PathBuf,
    /// The writable upper and work directories (overlay), or nothing to keep (copy).
    private: Option<PathBuf>,
    overlay: bool,
}

impl Rootfs {
    /// The mount point's path, for messages.
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// Whether this is an overlay mount (else a copy).
    pub fn is_overlay(&self) -> bool {
        self.overlay
    }

    /// Unmounts and deletes the writable layer (overlay), or deletes the copy; the mount point
    /// directory stays, empty. Runs every step even if one fails.
    pub fn remove(self) -> Result<()> {
        let mut errors = Vec::new();
        let at = beneath::proc_path(self.target.as_fd());
        if self.overlay {
            if let Err(e) = umount2(&at, MntFlags::MNT_DETACH) {
                if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
                    errors.push(format!("unmounting {}: {e}", self.shown.display()));
                }
            }
        } else if let Err(e) = empty_dir(&at) {
            errors.push(format!("{}: {e}", self.shown.display()));
        }
        if let Some(p) = &self.private {
            if let Err(e) = remove_tree(p) {
                errors.push(format!("{}: {e}", p.display()));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::io("removing a root file system", errors.join("; ")))
        }
    }
}

/// Removes everything in the directory `dir` (not the directory itself).
fn empty_dir(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        remove_any(&e?.path())?;
    }
    Ok(())
}

/// Builds the root file system of `layers` (bottom first) at `target`, an empty directory
/// the caller opened (`shown`: its path, for messages).
pub(crate) fn make(
    store: &Store,
    layers: &[Digest],
    target: OwnedFd,
    shown: &Path,
    mode: RootfsMode,
) -> Result<Rootfs> {
    let st = beneath::fstat(target.as_fd()).map_err(|e| Error::io(shown.display(), e))?;
    if !beneath::is_dir(&st) {
        return Err(Error::io(
            shown.display(),
            "the rootfs mount point is not a directory",
        ));
    }
    let at = beneath::proc_path(target.as_fd());
    let mut entries = fs::read_dir(&at).map_err(|e| Error::io(shown.display(), e))?;
    if entries.next().is_some() {
        return Err(Error::io(
            shown.display(),
            "the rootfs mount point is not empty",
        ));
    }
    let dirs: Vec<PathBuf> = layers.iter().map(|l| store.layer_dir(l)).collect();
    if let Some(missing) = dirs.iter().find(|d| !d.is_dir()) {
        return Err(Error::io(missing.display(), "layer missing from the store"));
    }
    let lower = dirs
        .iter()
        .rev()
        .map(|d| d.to_string_lossy().replace(',', "\\,").replace(':', "\\:"))
        .collect::<Vec<_>>()
        .join(":");
    let overlay_fits = lower.len() + 2 * store.root().as_os_str().len() + 64 < MAX_MOUNT_DATA;
    let mut rootfs = Rootfs {
        target,
        shown: shown.to_path_buf(),
        private: None,
        overlay: false,
    };
    if mode != RootfsMode::Copy && overlay_fits {
        match mount_overlay(store, &lower, &at, shown) {
            Ok(private) => {
                rootfs.private = Some(private);
                rootfs.overlay = true;
                return Ok(rootfs);
            }
            Err((e, true)) if mode == RootfsMode::Auto => {
                tracing::warn!(error = %e, "overlayfs unavailable: copying the layers instead");
            }
            Err((e, _)) => return Err(e),
        }
    } else if mode == RootfsMode::Overlay {
        return Err(Error::io(
            shown.display(),
            format!("{} layers are too many for one overlay mount", layers.len()),
        ));
    }
    if let Err(e) = copy_layers(&dirs, &at) {
        let _ = empty_dir(&at);
        return Err(e);
    }
    Ok(rootfs)
}

/// Mounts the overlay; the error says whether a copy could stand in (no overlayfs).
fn mount_overlay(
    store: &Store,
    lower: &str,
    target: &Path,
    shown: &Path,
) -> std::result::Result<PathBuf, (Error, bool)> {
    let private = store.fresh_dir("rootfs").map_err(|e| (e, false))?;
    let (upper, work) = (private.join("upper"), private.join("work"));
    for d in [&upper, &work] {
        if let Err(e) = fs::create_dir(d) {
            let _ = remove_tree(&private);
            return Err((Error::io(d.display(), e), false));
        }
    }
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    if let Err(e) = mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(data.as_str()),
    ) {
        let _ = remove_tree(&private);
        let no_overlay = e == nix::errno::Errno::ENODEV;
        return Err((
            Error::io(
                format!("mounting the overlay rootfs at {}", shown.display()),
                e,
            ),
            no_overlay,
        ));
    }
    Ok(private)
}

/// Applies the layers to `target` in order, as overlayfs would show them.
fn copy_layers(layers: &[PathBuf], target: &Path) -> Result<()> {
    for layer in layers {
        // Hard links within a layer stay hard links in the copy.
        let mut links = HashMap::new();
        copy_dir(layer, target, &mut links)
            .map_err(|e| Error::io(format!("copying layer {}", layer.display()), e))?;
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(from)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let src = e.path();
        let dst = to.join(e.file_name());
        let meta = fs::symlink_metadata(&src)?;
        let existing = fs::symlink_metadata(&dst).ok();
        if is_whiteout(&meta) {
            if existing.is_some() {
                remove_any(&dst)?;
            }
            continue;
        }
        if meta.is_dir() {
            let opaque = get_xattr(&src, OPAQUE_XATTR)?.is_some_and(|v| v == b"y");
            match existing {
                // A directory over a directory merges, unless opaque (then it replaces).
                Some(m) if m.is_dir() && !opaque => {}
                Some(_) => {
                    remove_any(&dst)?;
                    fs::create_dir(&dst)?;
                }
                None => fs::create_dir(&dst)?,
            }
            copy_dir(&src, &dst, links)?;
            copy_metadata(&meta, &dst)?;
            continue;
        }
        if existing.is_some() {
            remove_any(&dst)?;
        }
        let ft = meta.file_type();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = links.get(&key) {
                    fs::hard_link(first, &dst)?;
                    continue;
                }
                links.insert(key, dst.clone());
            }
            fs::copy(&src, &dst)?;
            copy_xattrs(&src, &dst)?;
        } else {
            // FIFOs (the unpacker refuses device nodes; whiteouts were handled above).
            nix::unistd::mkfifo(&dst, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(io::Error::from)?;
        }
        copy_metadata(&meta, &dst)?;
    }
    Ok(())
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn copy_metadata(meta: &fs::Metadata, dst: &Path) -> io::Result<()> {
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    set_mtime(dst, meta.mtime())
}

fn copy_xattrs(src: &Path, dst: &Path) -> io::Result<()> {
    for name in ["security.capability"] {
        if let Some(v) = get_xattr(src, name)? {
            set_xattr(dst, name, &v)?;
        }
    }
    Ok(())
}
