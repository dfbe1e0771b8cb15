//! Where the runtime library finds a container's rootfs and bind sources.
//!
//! The runtime library resolves these by path string when it builds the container (it
//! canonicalises a bind source, then mounts it by name), so a path through a directory a
//! container can write to could be switched to a symlink in between. The agent therefore
//! opens each one itself beneath the sandbox's own directories (see `confine`), bind-mounts it
//! through its descriptor into the container's bundle (`<bundle>/rootfs`, `<bundle>/mounts/N`),
//! and gives the library only those bundle paths: every component of them is the agent's,
//! out of reach of any container.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::beneath;
use crate::confine::{open_in, Owned};
use crate::error::{Result, RuntimeError};
use crate::layout::{ROOTFS, STAGED_MOUNTS};
use crate::mount::{Mounted, Target};
use crate::spec::Placement;

pub(crate) struct Staging<'a> {
    bundle: &'a Owned,
    /// Where a relative Root.Path is: the container's own directory (as Kata's bundle).
    container_dir: &'a Path,
    /// Where bind sources may come from: the shared directory, storages, the agent's files.
    bind_roots: Vec<&'a Owned>,
    /// Where a rootfs may come from: the shared directory and storages (such as a guest-pulled
    /// image at `<cid>/rootfs`).
    rootfs_roots: Vec<&'a Owned>,
    /// What was staged, to be unmounted with the container.
    pub(crate) mounts: Vec<Mounted>,
    next: usize,
}

impl<'a> Staging<'a> {
    pub(crate) fn new(
        bundle: &'a Owned,
        container_dir: &'a Path,
        shared: &'a Owned,
        storages: &[&'a Owned],
        agent_files: &[&'a Owned],
    ) -> Staging<'a> {
        let mut bind_roots = vec![shared];
        bind_roots.extend(storages.iter().copied());
        bind_roots.extend(agent_files.iter().copied());
        // Never the bundle (agent-private): the shared directory and what storages provide.
        let mut rootfs_roots = vec![shared];
        rootfs_roots.extend(storages.iter().copied());
        Staging {
            bundle,
            container_dir,
            bind_roots,
            rootfs_roots,
            mounts: Vec::new(),
            next: 0,
        }
    }

    fn stage(
        &mut self,
        source: std::os::fd::OwnedFd,
        rel: &Path,
        flags: MsFlags,
        field: &str,
    ) -> Result<PathBuf> {
        let st = beneath::fstat(source.as_fd()).map_err(|e| RuntimeError::internal(field, e))?;
        let shown = self.bundle.path().join(rel);
        let target = if beneath::is_dir(&st) {
            Target::dir(self.bundle.fd(), rel, 0o755, shown.clone())
        } else {
            Target::file(self.bundle.fd(), rel, shown.clone())
        }
        .map_err(|e| RuntimeError::internal(shown.display(), e))?;
        let m = target.bind(source.as_fd(), true, flags)?;
        self.mounts.push(m);
        Ok(shown)
    }
}

impl Placement for Staging<'_> {
    fn bind_source(&mut self, given: &str, field: &str) -> Result<PathBuf> {
        let fd = open_in(
            &self.bind_roots,
            given,
            field,
            "the sandbox's shared directory, its storages or the agent's files",
        )?;
        let rel = Path::new(STAGED_MOUNTS).join(self.next.to_string());
        self.next += 1;
        self.stage(fd, &rel, MsFlags::empty(), field)
    }

    fn rootfs(&mut self, given: &str, field: &str) -> Result<PathBuf> {
        let abs = if Path::new(given).is_absolute() {
            PathBuf::from(given)
        } else {
            self.container_dir.join(given)
        };
        let shown = abs.to_string_lossy().into_owned();
        let fd = open_in(
            &self.rootfs_roots,
            &shown,
            field,
            "the shared directory or a storage (a relative path is relative to the container's \
             own directory, where a storage such as a guest-pulled image is mounted)",
        )?;
        let st = beneath::fstat(fd.as_fd()).map_err(|e| RuntimeError::internal(given, e))?;
        if !beneath::is_dir(&st) {
            return Err(RuntimeError::invalid(
                field,
                format!("{given:?} is not a directory"),
            ));
        }
        // Device nodes in a rootfs the host provides are never usable.
        self.stage(fd, Path::new(ROOTFS), MsFlags::MS_NODEV, field)
    }
}
