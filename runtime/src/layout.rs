//! Where a sandbox keeps its things, and which of its directories each kind of request path
//! may name. This is the one place that knows the layout; the checks that use it (`confine`,
//! `staging`, the storage drivers, CopyFile) only get its directories.
//!
//! The layout is Kata's guest layout, the paths Kata's runtimes send (kata_agent.go and
//! runtime-rs): under `/run/kata-containers` by default (`SandboxConfig::kata_root`), or, for
//! hosts that are not Kata's, the same directories under `<run_root>/<sandbox id>`:
//!
//! ```text
//! <root>/
//!   shared/containers/      the host's shared file system (virtio-fs or 9p, a CreateSandbox
//!                           storage) or CopyFile's files: a container's rootfs at
//!                           <cid>/rootfs, shared files at <cid>-<random>-<name>; CopyFile's jail
//!   shared/                 the rest of it (nydus mounts virtio-fs here)
//!   sandbox/                the pod's: shm, ephemeral/<volume>, storage/<volume> (storages)
//!   <cid>/                  a container's own: rootfs (guest pull, layered overlay); a relative
//!                           Root.Path is relative to it, as to Kata's bundle
//!   .vigil/pod/             agent-private, out of every request's reach:
//!     containers/<cid>/     a container's bundle (config.json, staged rootfs and mounts)
//!     resolv.conf           written by the agent from CreateSandbox's dns
//! ```
//!
//! A sandbox owns `shared/`, `sandbox/`, `.vigil/pod/` and the directories of its containers;
//! under a shared root such as `/run/kata-containers` it removes only those.

use std::path::{Component, Path, PathBuf};

use crate::beneath;
use crate::confine::{check_lexically, Owned};
use crate::error::{Result, RuntimeError};
use crate::mount::clean_dir;

const SHARED_TOP: &str = "shared";
/// The shared directory, relative to the root.
const SHARED: &str = "shared/containers";
const SANDBOX: &str = "sandbox";
/// The agent's own directory, relative to the root.
const PRIVATE: &str = ".vigil/pod";
const PRIVATE_TOP: &str = ".vigil";
const BUNDLES: &str = "containers";
const RESOLV_CONF: &str = "resolv.conf";
pub(crate) const ROOTFS: &str = "rootfs";
pub(crate) const STAGED_MOUNTS: &str = "mounts";
/// Names in Kata's guest root that are not container directories, so no container id.
const RESERVED_IDS: [&str; 4] = [SHARED_TOP, SANDBOX, "image", "virtual-volumes"];

/// The directories of one sandbox, held open.
#[derive(Debug)]
pub(crate) struct Layout {
    root: Owned,
    private: Owned,
    /// The root was made for this sandbox (`<run_root>/<id>`) and goes with it.
    per_sandbox: bool,
}

impl Layout {
    /// Makes the sandbox's directories under `root` afresh: what a previous agent left in
    /// the ones the sandbox owns is removed first (unmounted, never deleted through a mount).
    /// `per_sandbox`: `root` itself belongs to this sandbox.
    pub(crate) fn create(root: &Path, per_sandbox: bool) -> Result<Layout> {
        if per_sandbox {
            clean_dir(root)?;
        } else {
            for owned in [SHARED_TOP, SANDBOX, PRIVATE] {
                clean_dir(&root.join(owned))?;
            }
        }
        for sub in [SHARED, SANDBOX, &format!("{PRIVATE}/{BUNDLES}")] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| RuntimeError::internal(p.display(), e))?;
        }
        // Only the agent reads its own directory.
        let private = root.join(PRIVATE_TOP);
        std::fs::set_permissions(
            &private,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(|e| RuntimeError::internal(private.display(), e))?;
        Ok(Layout {
            root: Owned::open_dir(root.to_path_buf())?,
            private: Owned::open_dir(root.join(PRIVATE))?,
            per_sandbox,
        })
    }

    /// The directories under `root` where a pod's volumes are mounted (`shared/`, `sandbox/`).
    pub(crate) fn volume_dirs(root: &Path) -> Vec<PathBuf> {
        vec![root.join(SHARED_TOP), root.join(SANDBOX)]
    }

    /// The root of the layout (`/run/kata-containers`, or `<run_root>/<sandbox id>`).
    pub(crate) fn dir(&self) -> &Path {
        self.root.path()
    }

    pub(crate) fn root(&self) -> &Owned {
        &self.root
    }

    pub(crate) fn shared_path(&self) -> PathBuf {
        self.root.path().join(SHARED)
    }

    /// The shared directory as it is now (a storage may have been mounted over it, as Kata
    /// mounts its shared file system there), opened by name from the root.
    pub(crate) fn shared(&self) -> Result<Owned> {
        let fd = beneath::open(self.root.fd(), Path::new(SHARED))
            .map_err(|e| RuntimeError::internal(self.shared_path().display(), e))?;
        Ok(Owned::new(self.shared_path(), fd))
    }

    pub(crate) fn resolv_conf_path(&self) -> PathBuf {
        self.private.path().join(RESOLV_CONF)
    }

    /// The agent's resolv.conf, if it wrote one: a bind source for every container.
    pub(crate) fn resolv_conf(&self) -> Result<Option<Owned>> {
        match beneath::open(self.private.fd(), Path::new(RESOLV_CONF)) {
            Ok(fd) => Ok(Some(Owned::new(self.resolv_conf_path(), fd))),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(RuntimeError::internal(self.resolv_conf_path().display(), e)),
        }
    }

    /// Refuses container ids that name one of the root's other directories.
    pub(crate) fn check_container_id(id: &str) -> Result<()> {
        if RESERVED_IDS.contains(&id) {
            return Err(RuntimeError::invalid(
                "container_id",
                format!("{id:?} is a directory of the sandbox's layout, not a container"),
            ));
        }
        Ok(())
    }

    /// A container's own directory (`<root>/<cid>`), where a relative Root.Path points.
    pub(crate) fn container_dir(&self, container: &str) -> PathBuf {
        self.root.path().join(container)
    }

    /// A container's own directory, relative to the root: what goes with the container.
    pub(crate) fn container_rel(&self, container: &str) -> PathBuf {
        PathBuf::from(container)
    }

    pub(crate) fn bundle_path(&self, container: &str) -> PathBuf {
        self.private.path().join(BUNDLES).join(container)
    }

    /// A container's bundle, made fresh.
    pub(crate) fn create_bundle(&self, container: &str) -> Result<Owned> {
        let rel = Path::new(BUNDLES).join(container);
        let fd = beneath::mkdir_all(self.private.fd(), &rel, 0o700, &mut |_| Ok(()))
            .map_err(|e| RuntimeError::internal(self.bundle_path(container).display(), e))?;
        Ok(Owned::new(self.bundle_path(container), fd))
    }

    /// Removes what a container left in the layout: its bundle and its own directory (after
    /// its storages are unmounted; anything still mounted there is detached, never deleted
    /// through).
    pub(crate) fn remove_container(&self, container: &str) -> Result<()> {
        let bundle = clean_dir(&self.bundle_path(container));
        clean_dir(&self.container_dir(container)).and(bundle)
    }

    /// Removes every directory the sandbox owns; returns what could not be removed.
    pub(crate) fn remove(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.per_sandbox {
            if let Err(e) = clean_dir(self.root.path()) {
                errors.push(e.to_string());
            }
            return errors;
        }
        for owned in [SHARED_TOP, SANDBOX, PRIVATE] {
            if let Err(e) = clean_dir(&self.root.path().join(owned)) {
                errors.push(e.to_string());
            }
        }
        errors
    }

    /// Where the storage mount point `given` is (absolute beneath the root, or relative to
    /// it), as a path relative to the root. Allowed: beneath `shared/` and `sandbox/`, and for a
    /// container's own storages beneath its `<cid>/`. Refused: anything outside, the root
    /// itself, the agent's directory, other containers' directories and names Kata does not
    /// use.
    pub(crate) fn storage_mount_point(
        &self,
        given: &str,
        container: Option<&str>,
        field: &str,
    ) -> Result<PathBuf> {
        let p = check_lexically(given, field)?;
        let rel = if p.is_absolute() {
            p.strip_prefix(self.root.path())
                .map_err(|_| {
                    RuntimeError::invalid(
                        field,
                        format!(
                            "{given:?} is outside the sandbox's directory {}",
                            self.root.path().display()
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
        let allowed = match (parts.first(), container) {
            (Some(first), _) if *first == SHARED_TOP || *first == SANDBOX => true,
            (Some(first), Some(own)) => *first == own,
            _ => false,
        };
        if !allowed {
            let own = container.map_or(String::new(), |c| format!(", {c}/"));
            return Err(RuntimeError::invalid(
                field,
                format!(
                    "{given:?} is not in the sandbox's storage directories ({SHARED_TOP}/, \
                     {SANDBOX}/{own} under {})",
                    self.root.path().display()
                ),
            ));
        }
        Ok(parts.iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_mount_points_are_kata_s_directories_only() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::create(t.path(), false).unwrap();
        let abs = |s: &str| format!("{}/{s}", t.path().display());
        for (given, cid) in [
            ("shared/containers", None),
            ("shared", None),
            ("shared/containers/c1", Some("c1")),
            ("sandbox/shm", None),
            ("sandbox/ephemeral/cache", Some("c1")),
            ("c1/rootfs", Some("c1")),
            ("c1", Some("c1")),
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
            ("sandbox/../../x", None),
            ("/tmp/x", None),
            ("/run/kata-containers-other/shared", None),
            (".vigil", None),
            (".vigil/pod/resolv.conf", Some("c1")),
            (".vigil/pod/containers/c1/rootfs", Some("c1")),
            ("c2/rootfs", Some("c1")),
            ("c1/rootfs", None),
            ("image", None),
            ("scratch", Some("c1")),
        ] {
            match l.storage_mount_point(given, cid, "storages[0].mount_point") {
                Err(RuntimeError::InvalidArgument { field, .. }) => {
                    assert_eq!(field, "storages[0].mount_point")
                }
                other => panic!("{given:?} {cid:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_shared_root_keeps_what_the_sandbox_does_not_own() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("image/layers")).unwrap();
        std::fs::create_dir_all(t.path().join("shared/containers/old")).unwrap();
        let l = Layout::create(t.path(), false).unwrap();
        assert!(
            !t.path().join("shared/containers/old").exists(),
            "leftover kept"
        );
        assert!(t.path().join("sandbox").is_dir());
        assert!(l.shared().is_ok());
        std::fs::create_dir_all(l.container_dir("c1").join("rootfs")).unwrap();
        l.create_bundle("c1").unwrap();
        l.remove_container("c1").unwrap();
        assert!(!l.container_dir("c1").exists() && !l.bundle_path("c1").exists());
        assert!(l.remove().is_empty());
        for gone in ["shared", "sandbox", ".vigil/pod"] {
            assert!(!t.path().join(gone).exists(), "{gone}");
        }
        assert!(t.path().join("image/layers").is_dir(), "not the sandbox's");

        let per = t.path().join("run/sb");
        let l = Layout::create(&per, true).unwrap();
        assert!(per.join("shared/containers").is_dir());
        assert!(l.remove().is_empty());
        assert!(!per.exists());
        for id in ["shared", "sandbox", "image"] {
            assert!(Layout::check_container_id(id).is_err(), "{id}");
        }
        assert!(Layout::check_container_id("c1").is_ok());
    }
}
