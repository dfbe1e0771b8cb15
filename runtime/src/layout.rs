//! Where a sandbox keeps its things, and which of its directories each kind of request path
//! may name. This is the one place that knows the layout: today everything lives under
//! `<run_root>/<sandbox id>`; a move to Kata's guest paths (`/run/kata-containers/...`)
//! changes this file, not the checks that use it.
//!
//! ```text
//! <run_root>/<sandbox id>/
//!   shared/                 CopyFile's jail; the host's files (bind sources, rootfs)
//!   containers/<id>/        a container's bundle: agent-private (config.json, staged mounts)
//!     rootfs                where the container's rootfs is (a storage, or staged there)
//!     mounts/<n>            bind sources staged for the runtime library (see `staging`)
//!   resolv.conf             written by the agent from CreateSandbox's dns
//!   <anything else>         storages' mount points
//! ```

use std::path::{Component, Path, PathBuf};

use crate::beneath;
use crate::confine::{check_lexically, Owned};
use crate::error::{Result, RuntimeError};

const SHARED: &str = "shared";
const CONTAINERS: &str = "containers";
const RESOLV_CONF: &str = "resolv.conf";
pub(crate) const ROOTFS: &str = "rootfs";
pub(crate) const STAGED_MOUNTS: &str = "mounts";

/// The directories of one sandbox, held open.
#[derive(Debug)]
pub(crate) struct Layout {
    dir: Owned,
}

impl Layout {
    /// Makes a fresh `<run_root>/<id>` with its fixed subdirectories.
    pub(crate) fn create(run_root: &Path, id: &str) -> Result<Layout> {
        let dir = run_root.join(id);
        for sub in [SHARED, CONTAINERS] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| RuntimeError::internal(p.display(), e))?;
        }
        Ok(Layout {
            dir: Owned::open_dir(dir)?,
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn shared_path(&self) -> PathBuf {
        self.dir.path().join(SHARED)
    }

    /// The shared directory as it is now (a storage may have been mounted over it, as Kata
    /// mounts its shared file system there), opened by name from the sandbox directory.
    pub(crate) fn shared(&self) -> Result<Owned> {
        self.sub(SHARED)
    }

    fn sub(&self, name: &str) -> Result<Owned> {
        let path = self.dir.path().join(name);
        let fd = beneath::open(self.dir.fd(), Path::new(name))
            .map_err(|e| RuntimeError::internal(path.display(), e))?;
        Ok(Owned::new(path, fd))
    }

    pub(crate) fn resolv_conf_path(&self) -> PathBuf {
        self.dir.path().join(RESOLV_CONF)
    }

    /// The agent's resolv.conf, if it wrote one: a bind source for every container.
    pub(crate) fn resolv_conf(&self) -> Result<Option<Owned>> {
        if !self.resolv_conf_path().exists() {
            return Ok(None);
        }
        self.sub(RESOLV_CONF).map(Some)
    }

    /// A container's bundle, relative to the sandbox directory.
    pub(crate) fn bundle_rel(&self, container: &str) -> PathBuf {
        Path::new(CONTAINERS).join(container)
    }

    pub(crate) fn bundle_path(&self, container: &str) -> PathBuf {
        self.dir.path().join(CONTAINERS).join(container)
    }

    /// A container's bundle, made fresh.
    pub(crate) fn create_bundle(&self, container: &str) -> Result<Owned> {
        let rel = Path::new(CONTAINERS).join(container);
        let fd = beneath::mkdir_all(self.dir.fd(), &rel, 0o700, &mut |_| Ok(()))
            .map_err(|e| RuntimeError::internal(self.bundle_path(container).display(), e))?;
        Ok(Owned::new(self.bundle_path(container), fd))
    }

    /// Where the storage mount point `given` is (relative to the sandbox directory, or absolute
    /// beneath it), as a path relative to the sandbox directory. Refused: anything outside, the
    /// sandbox directory itself, and what the agent keeps there: bundles (except a container's
    /// own `containers/<id>/rootfs`, for that container's storages) and resolv.conf.
    pub(crate) fn storage_mount_point(
        &self,
        given: &str,
        container: Option<&str>,
        field: &str,
    ) -> Result<PathBuf> {
        let p = check_lexically(given, field)?;
        let rel = if p.is_absolute() {
            p.strip_prefix(self.dir.path())
                .map_err(|_| {
                    RuntimeError::invalid(
                        field,
                        format!(
                            "{given:?} is outside the sandbox directory {}",
                            self.dir.path().display()
                        ),
                    )
                })?
                .to_path_buf()
        } else {
            p.to_path_buf()
        };
        let parts: Vec<&std::ffi::OsStr> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let reserved = |why: &str| Err(RuntimeError::invalid(field, format!("{given:?} {why}")));
        match parts.as_slice() {
            [] => reserved("is the sandbox directory itself"),
            [first, ..] if *first == RESOLV_CONF => reserved("is the agent's resolv.conf"),
            [first, rest @ ..] if *first == CONTAINERS => match (rest, container) {
                ([id, root, ..], Some(own)) if *id == own && *root == ROOTFS => Ok(parts.iter().collect()),
                _ => reserved(&format!(
                    "is in the agent's bundle directory (a container's storages may use {CONTAINERS}/<its id>/{ROOTFS})"
                )),
            },
            _ => Ok(parts.iter().collect()),
        }
    }

    pub(crate) fn root(&self) -> &Owned {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_mount_points_stay_off_what_the_agent_keeps() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::create(t.path(), "sb").unwrap();
        let abs = |s: &str| format!("{}/sb/{s}", t.path().display());
        for (given, cid) in [
            ("scratch", None),
            ("shared/vol", None),
            ("shared", None),
            ("containers/c1/rootfs", Some("c1")),
            ("containers/c1/rootfs/data", Some("c1")),
        ] {
            assert!(l.storage_mount_point(given, cid, "f").is_ok(), "{given}");
            assert!(
                l.storage_mount_point(&abs(given), cid, "f").is_ok(),
                "{given}"
            );
        }
        for (given, cid) in [
            ("", None),
            (".", None),
            ("..", None),
            ("a/../../x", None),
            ("/tmp/x", None),
            ("resolv.conf", None),
            ("containers", Some("c1")),
            ("containers/c1", Some("c1")),
            ("containers/c1/config.json", Some("c1")),
            ("containers/c1/mounts/0", Some("c1")),
            ("containers/c2/rootfs", Some("c1")),
            ("containers/c1/rootfs", None),
        ] {
            match l.storage_mount_point(given, cid, "storages[0].mount_point") {
                Err(RuntimeError::InvalidArgument { field, .. }) => {
                    assert_eq!(field, "storages[0].mount_point")
                }
                other => panic!("{given:?} {cid:?}: {other:?}"),
            }
        }
    }
}
