//! `bind`: a directory or file the sandbox already owns (beneath its shared directory, or an
//! earlier storage) bind-mounted elsewhere in the sandbox, typically a container's rootfs at
//! `containers/<id>/rootfs`. Never a path of the guest outside the sandbox: the host owns the
//! shared directory's contents, not the guest's.

use std::os::fd::AsFd;

use nix::mount::MsFlags;
use vigil_protos::agent::Storage;

use super::{parse_options, Added, MountPoint, StorageContext, StorageDriver};
use crate::beneath;
use crate::confine::open_in;
use crate::error::{Result, RuntimeError};

pub(super) struct Bind;

impl StorageDriver for Bind {
    fn driver_types(&self) -> &'static [&'static str] {
        &["bind"]
    }

    fn add(&self, s: &Storage, at: &MountPoint, ctx: &StorageContext) -> Result<Added> {
        let src_field = format!("{}.source", ctx.field);
        let source = open_in(
            ctx.sources,
            &s.source,
            &src_field,
            "the sandbox's shared directory or an earlier storage",
        )?;
        let (flags, _) = parse_options(&s.options, &[], ctx.field)?;
        let st =
            beneath::fstat(source.as_fd()).map_err(|e| RuntimeError::internal(&s.source, e))?;
        let is_dir = beneath::is_dir(&st);
        let target = if is_dir { at.dir(0o755)? } else { at.file()? };
        // Device nodes in what the host provides are never usable (nodev); setuid programs in
        // a rootfs must keep working, so nosuid only when asked.
        let m = target.bind(source.as_fd(), true, flags | MsFlags::MS_NODEV)?;
        Added::mounted(m)
    }
}
