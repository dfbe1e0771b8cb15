//! `ephemeral`: a tmpfs in the guest's memory (Kata's emptyDir `medium: Memory`, the pod's
//! /dev/shm). Never anything but tmpfs, whatever `fstype` says.

use nix::mount::MsFlags;
use vigil_protos::agent::Storage;

use super::{
    apply_fs_gid, check_label, fs_gid, parse_options, Added, MountPoint, StorageContext,
    StorageDriver,
};
use crate::error::{Result, RuntimeError};

pub(super) struct Ephemeral;

/// tmpfs options a pod may set (size and inode limits, the root's mode and owner), and
/// Kata's `fsgid=`.
const TMPFS_OPTIONS: &[&str] = &["size", "nr_inodes", "mode", "uid", "gid", "fsgid"];

impl StorageDriver for Ephemeral {
    fn driver_types(&self) -> &'static [&'static str] {
        &["ephemeral"]
    }

    fn add(&self, s: &Storage, at: &MountPoint, ctx: &StorageContext) -> Result<Added> {
        if !matches!(s.fstype.as_str(), "" | "tmpfs") {
            // Kata also backs hugepage volumes with ephemeral storages (fstype hugetlbfs).
            return Err(RuntimeError::invalid(
                format!("{}.fstype", ctx.field),
                format!("{:?}: ephemeral storages are tmpfs here", s.fstype),
            ));
        }
        check_label(&s.source, ctx.field)?;
        let (flags, mut data) = parse_options(&s.options, TMPFS_OPTIONS, ctx.field)?;
        let gid = fs_gid(&mut data, ctx.field)?;
        let data = data.join(",");
        let target = at.dir(0o755)?;
        let source = if s.source.is_empty() {
            "tmpfs"
        } else {
            s.source.as_str()
        };
        let m = target.mount_fs(
            "tmpfs",
            source,
            flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            (!data.is_empty()).then_some(data.as_str()),
        )?;
        if let Some(gid) = gid {
            if let Err(e) = apply_fs_gid(m.root(), gid, m.shown()) {
                let _ = m.unmount();
                return Err(e);
            }
        }
        Added::mounted(m)
    }
}
