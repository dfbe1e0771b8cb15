//! Kata's `fs_group` (a Kubernetes pod's `fsGroup`): everything in a freshly mounted volume
//! gets the group, directories the setgid bit, and group read (write unless read-only,
//! search on directories) permissions.
//!
//! The walk goes from descriptor to descriptor (`openat` with `O_NOFOLLOW`, changes through
//! the descriptor), so a symlink in the volume is neither followed nor changed, and a directory
//! swapped for a symlink meanwhile is never left: nothing outside the volume is touched.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use vigil_protos::agent::FSGroup;
use vigil_protos::types::FSGroupChangePolicy;

use crate::beneath;
use crate::error::{Result, RuntimeError};

/// Applies `group` to the tree whose root `root` refers to (`shown` names it in errors). With
/// `OnRootMismatch`, nothing is done when the root already has the group and permissions.
pub(crate) fn apply(
    root: BorrowedFd,
    shown: &Path,
    group: &FSGroup,
    read_only: bool,
) -> Result<()> {
    let want = if read_only { 0o040 } else { 0o060 };
    let err =
        |e: std::io::Error| RuntimeError::internal(format!("fs_group on {}", shown.display()), e);
    let st = beneath::fstat(root).map_err(err)?;
    let on_mismatch =
        group.group_change_policy.enum_value() == Ok(FSGroupChangePolicy::OnRootMismatch);
    let dir_bits = want | 0o010 | libc::S_ISGID;
    if on_mismatch && st.st_gid == group.group_id && st.st_mode & dir_bits == dir_bits {
        return Ok(());
    }
    let dir = open_dir_at(root, c".").map_err(err)?;
    walk(dir, group.group_id, want).map_err(err)
}

/// A fresh mount as a storage, with the storage's `fs_group` (if any) applied to it first; the
/// mount is undone if that fails. `flags` are the mount's (read-only ones get group read only).
pub(crate) fn mounted_with(
    m: crate::mount::Mounted,
    group: Option<&FSGroup>,
    flags: nix::mount::MsFlags,
) -> Result<super::Added> {
    if let Some(group) = group {
        let read_only = flags.contains(nix::mount::MsFlags::MS_RDONLY);
        if let Err(e) = apply(m.root(), m.shown(), group, read_only) {
            let _ = m.unmount();
            return Err(e);
        }
    }
    super::Added::mounted(m)
}

/// Changes the directory `dir` (opened for reading) and everything beneath it.
fn walk(dir: OwnedFd, gid: u32, want: u32) -> std::io::Result<()> {
    change(dir.as_fd(), gid, want)?;
    use std::os::fd::IntoRawFd;
    // Dir takes the descriptor over (and closes it).
    let mut entries = nix::dir::Dir::from_fd(dir.into_raw_fd()).map_err(std::io::Error::from)?;
    let parent = entries.as_raw_fd();
    let mut subdirs = Vec::new();
    for entry in entries.iter() {
        let entry = entry.map_err(std::io::Error::from)?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        // SAFETY: `parent` is the open directory being read.
        let parent = unsafe { BorrowedFd::borrow_raw(parent) };
        let fd = open_at(parent, name, libc::O_PATH | libc::O_NOFOLLOW)?;
        let st = beneath::fstat(fd.as_fd())?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => continue,
            libc::S_IFDIR => subdirs.push(name.to_owned()),
            _ => change(fd.as_fd(), gid, want)?,
        }
    }
    // SAFETY: `entries` still owns the directory descriptor.
    let parent = unsafe { BorrowedFd::borrow_raw(parent) };
    for name in subdirs {
        walk(open_dir_at(parent, &name)?, gid, want)?;
    }
    Ok(())
}

fn change(fd: BorrowedFd, gid: u32, want: u32) -> std::io::Result<()> {
    beneath::chown(fd, -1, gid as i32)?;
    let st = beneath::fstat(fd)?;
    let mut mode = st.st_mode & 0o7777 | want;
    if beneath::is_dir(&st) {
        mode |= 0o010 | libc::S_ISGID;
    }
    beneath::chmod(fd, mode)
}

fn open_at(dir: BorrowedFd, name: &CStr, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall on a borrowed descriptor and a NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The directory `name` in `dir` opened for reading, never through a symlink.
fn open_dir_at(dir: BorrowedFd, name: &CStr) -> std::io::Result<OwnedFd> {
    open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn the_tree_changes_but_not_what_symlinks_point_to() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::write(root.join("sub/f"), "x").unwrap();
        std::fs::set_permissions(root.join("sub/f"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), "y").unwrap();
        std::fs::set_permissions(
            outside.join("secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("sub/dirlink")).unwrap();
        // SAFETY: getegid has no preconditions.
        let gid = unsafe { libc::getegid() };
        let group = FSGroup {
            group_id: gid,
            ..Default::default()
        };
        let fd = beneath::open_dir(&root).unwrap();
        apply(fd.as_fd(), &root, &group, false).unwrap();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&root.join("sub/deeper")) & 0o2070, 0o2070);
        assert_eq!(mode(&root) & 0o2070, 0o2070);
        assert_eq!(mode(&root.join("sub/f")), 0o660);
        assert_eq!(std::fs::metadata(root.join("sub/f")).unwrap().gid(), gid);
        assert_eq!(
            mode(&outside.join("secret")),
            0o600,
            "followed a file symlink"
        );
        assert_eq!(mode(&outside) & 0o2000, 0, "followed a directory symlink");

        // Read-only: group read only; OnRootMismatch with the root already right: untouched.
        std::fs::set_permissions(root.join("sub/f"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let on_mismatch = FSGroup {
            group_change_policy: FSGroupChangePolicy::OnRootMismatch.into(),
            ..group.clone()
        };
        apply(fd.as_fd(), &root, &on_mismatch, true).unwrap();
        assert_eq!(mode(&root.join("sub/f")), 0o600);
        apply(fd.as_fd(), &root, &group, true).unwrap();
        assert_eq!(mode(&root.join("sub/f")), 0o640);
    }
}
