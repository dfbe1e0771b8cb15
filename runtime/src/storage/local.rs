//! `local`: a plain directory in the sandbox (Kata's emptyDir on the guest's disk), nothing
//! mounted.

use std::os::fd::AsFd;

use vigil_protos::agent::Storage;

use super::{
    apply_fs_gid, check_label, fs_gid, parse_options, Added, MountPoint, StorageContext,
    StorageDriver,
};
use crate::confine::Owned;
use crate::error::{Result, RuntimeError};

pub(super) struct Local;

impl StorageDriver for Local {
    fn driver_types(&self) -> &'static [&'static str] {
        &["local"]
    }

    fn add(&self, s: &Storage, at: &MountPoint, ctx: &StorageContext) -> Result<Added> {
        check_label(&s.source, ctx.field)?;
        let (_, mut data) = parse_options(&s.options, &["mode", "fsgid"], ctx.field)?;
        let gid = fs_gid(&mut data, ctx.field)?;
        let mode = match data.iter().find_map(|o| o.strip_prefix("mode=")) {
            None => 0o777,
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| {
                    RuntimeError::invalid(
                        format!("{}.options", ctx.field),
                        format!("mode {m:?} is not an octal mode"),
                    )
                })?,
        };
        let fd = at.plain_dir()?;
        // The mode exactly (chmod through the descriptor: the umask does not apply).
        crate::beneath::chmod(fd.as_fd(), mode)
            .map_err(|e| RuntimeError::internal(at.shown.display(), e))?;
        if let Some(gid) = gid {
            apply_fs_gid(fd.as_fd(), gid, &at.shown)?;
        }
        Ok(Added {
            mount: None,
            root: Owned::new(at.shown.clone(), fd),
            watcher: None,
        })
    }
}
