//! Storages (CreateSandbox's and CreateContainer's `storages`): one driver per `driver` name,
//! registered in a [`StorageDrivers`] table, as Kata's agent registers its handlers by type.
//!
//! Every driver gets a mount point already checked to lie in the sandbox's directory (see
//! `Layout::storage_mount_point`) and validates its own `source`, `fstype` and options: a
//! storage never mounts a guest path or device the host merely named. Kata's other drivers
//! (block devices by address, virtio-fs and 9p tags, overlay, image pull, ...) are refused
//! by name until a driver for them is registered.
//!
//! | driver | source | effect |
//! |---|---|---|
//! | `ephemeral` (or no driver and fstype `tmpfs`) | a label (`tmpfs`, `shm`) | a tmpfs, `nosuid,nodev` |
//! | `local` | a label (`local`) | a directory (options `mode=`, `fsgid=`), nothing mounted |
//! | `bind` | a path beneath the sandbox's shared directory or an earlier storage | a bind mount, `nodev` |

mod bind;
mod ephemeral;
mod local;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vigil_protos::agent::Storage;

use crate::confine::Owned;
use crate::error::{Result, RuntimeError};
use crate::layout::Layout;
use crate::mount::{unmount_all, Mounted, Target};

/// What a driver gets besides the storage itself.
pub(crate) struct StorageContext<'a> {
    /// The request field of this storage, e.g. `storages[2]`, for refusals.
    pub(crate) field: &'a str,
    /// Directories a storage may take a path `source` from: the shared directory and the
    /// storages set up before this one.
    pub(crate) sources: &'a [&'a Owned],
}

/// Where a storage goes: a path relative to the sandbox directory, checked already.
pub(crate) struct MountPoint<'a> {
    pub(crate) root: &'a Owned,
    pub(crate) rel: PathBuf,
    pub(crate) shown: PathBuf,
    pub(crate) field: String,
}

impl MountPoint<'_> {
    /// The mount point as a directory (made with `mode` where missing), ready to mount on.
    pub(crate) fn dir(&self, mode: u32) -> Result<Target> {
        Target::dir(self.root.fd(), &self.rel, mode, self.shown.clone()).map_err(|e| self.error(e))
    }

    /// The mount point as a plain directory (made where missing), nothing to mount on it.
    pub(crate) fn plain_dir(&self) -> Result<std::os::fd::OwnedFd> {
        crate::beneath::mkdir_all(self.root.fd(), &self.rel, 0o755, &mut |_| Ok(()))
            .map_err(|e| self.error(e))
    }

    /// The mount point as a regular file (made empty where missing), for a bind of a file.
    pub(crate) fn file(&self) -> Result<Target> {
        Target::file(self.root.fd(), &self.rel, self.shown.clone()).map_err(|e| self.error(e))
    }

    fn error(&self, e: std::io::Error) -> RuntimeError {
        if crate::beneath::is_refusal(&e) || e.raw_os_error() == Some(libc::EEXIST) {
            RuntimeError::invalid(
                &self.field,
                format!(
                    "{}: a symlink, or something of the wrong type, is on the way (symlinks are not followed)",
                    self.shown.display()
                ),
            )
        } else {
            RuntimeError::internal(self.shown.display(), e)
        }
    }
}

/// What setting up a storage left: a mount to undo (if anything was mounted) and the
/// directory it provides, beneath which later bind sources and rootfs paths may be found.
pub(crate) struct Added {
    pub(crate) mount: Option<Mounted>,
    pub(crate) root: Owned,
}

impl Added {
    /// A mount, with its root as the directory it provides; undone if that cannot be had.
    pub(crate) fn mounted(m: Mounted) -> Result<Added> {
        match m.owned() {
            Ok(root) => Ok(Added {
                mount: Some(m),
                root,
            }),
            Err(e) => {
                let _ = m.unmount();
                Err(e)
            }
        }
    }
}

/// One kind of storage. Drivers are registered by the `driver` names they handle.
pub(crate) trait StorageDriver: Send + Sync {
    /// The `driver` values this driver handles.
    fn driver_types(&self) -> &'static [&'static str];
    /// Checks `storage` (its source, fstype and options) and sets it up at `at`.
    fn add(&self, storage: &Storage, at: &MountPoint, ctx: &StorageContext) -> Result<Added>;
}

/// Kata's storage drivers that vigil does not implement (yet): refused by name.
const KATA_DRIVERS: &[&str] = &[
    "blk",
    "blk-ccw",
    "mmioblk",
    "scsi",
    "nvdimm",
    "virtio-fs",
    "9p",
    "overlayfs",
    "watchable-bind",
    "image_guest_pull",
    "erofs.multi-layer",
];

/// The storage drivers a sandbox uses, by `driver` name.
pub struct StorageDrivers {
    by_type: HashMap<&'static str, Arc<dyn StorageDriver>>,
}

impl StorageDrivers {
    /// The drivers vigil has: `ephemeral`, `local`, `bind`.
    pub(crate) fn builtin() -> StorageDrivers {
        let mut d = StorageDrivers {
            by_type: HashMap::new(),
        };
        d.register(Arc::new(ephemeral::Ephemeral));
        d.register(Arc::new(local::Local));
        d.register(Arc::new(bind::Bind));
        d
    }

    /// Adds a driver for its types (a later registration for a type replaces the earlier).
    pub(crate) fn register(&mut self, driver: Arc<dyn StorageDriver>) {
        for t in driver.driver_types() {
            self.by_type.insert(t, driver.clone());
        }
    }

    fn driver(&self, s: &Storage, field: &str) -> Result<&dyn StorageDriver> {
        // Kata's runtime sends ephemeral storages with driver "ephemeral"; older ones left it
        // empty with fstype tmpfs.
        let name = if s.driver.is_empty() && s.fstype == "tmpfs" {
            "ephemeral"
        } else {
            s.driver.as_str()
        };
        if let Some(d) = self.by_type.get(name) {
            return Ok(d.as_ref());
        }
        let mut known: Vec<&str> = self.by_type.keys().copied().collect();
        known.sort_unstable();
        let why = if KATA_DRIVERS.contains(&name) {
            format!("the Kata storage driver {name:?} is not implemented by this agent")
        } else {
            format!("{name:?} is not a storage driver")
        };
        Err(RuntimeError::invalid(
            format!("{field}.driver"),
            format!("{why} (supported: {})", known.join(", ")),
        ))
    }

    /// Sets up `storages` (request field prefix `field`, e.g. `storages`) for the sandbox
    /// (`container` None) or one container. `sources` are the directories a path source may
    /// come from besides the storages set up here. On failure the ones already set up are
    /// undone, so a refused request leaves nothing behind.
    pub(crate) fn add_all(
        &self,
        storages: &[Storage],
        layout: &Layout,
        container: Option<&str>,
        sources: &[&Owned],
        field: &str,
    ) -> Result<(Vec<Mounted>, Vec<Owned>)> {
        let mut mounts = Vec::new();
        let mut roots: Vec<Owned> = Vec::new();
        for (i, s) in storages.iter().enumerate() {
            let field = format!("{field}[{i}]");
            let added = self.add_one(s, layout, container, sources, &roots, &field);
            match added {
                Ok(a) => {
                    mounts.extend(a.mount);
                    roots.push(a.root);
                }
                Err(e) => {
                    unmount_all(&mut mounts);
                    return Err(e);
                }
            }
        }
        Ok((mounts, roots))
    }

    fn add_one(
        &self,
        s: &Storage,
        layout: &Layout,
        container: Option<&str>,
        sources: &[&Owned],
        earlier: &[Owned],
        field: &str,
    ) -> Result<Added> {
        let mp_field = format!("{field}.mount_point");
        let rel = layout.storage_mount_point(&s.mount_point, container, &mp_field)?;
        let driver = self.driver(s, field)?;
        let at = MountPoint {
            root: layout.root(),
            shown: layout.dir().join(&rel),
            rel,
            field: mp_field,
        };
        let all_sources: Vec<&Owned> = sources.iter().copied().chain(earlier.iter()).collect();
        driver.add(
            s,
            &at,
            &StorageContext {
                field,
                sources: &all_sources,
            },
        )
    }
}

/// Splits mount options into flags the driver understands and the rest, refusing options
/// outside `allowed_data` (keys of `key=value` data options, or bare names).
pub(crate) fn parse_options(
    options: &[String],
    allowed_data: &[&str],
    field: &str,
) -> Result<(nix::mount::MsFlags, Vec<String>)> {
    use nix::mount::MsFlags;
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for (i, o) in options.iter().enumerate() {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "bind" | "rbind" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            other => {
                let key = other.split_once('=').map_or(other, |(k, _)| k);
                if !allowed_data.contains(&key) || other.contains(',') {
                    return Err(RuntimeError::invalid(
                        format!("{field}.options[{i}]"),
                        format!("{other:?} is not an option this storage takes"),
                    ));
                }
                data.push(other.to_string());
            }
        }
    }
    Ok((flags, data))
}

/// A `source` that is only a label (tmpfs and local storages): no path, nothing odd.
pub(crate) fn check_label(source: &str, field: &str) -> Result<()> {
    if source.contains('/') || source.contains('\0') || source.contains(',') {
        return Err(RuntimeError::invalid(
            format!("{field}.source"),
            format!("{source:?} must be a plain name (this storage mounts no path)"),
        ));
    }
    Ok(())
}

/// The `fsgid=` option of Kata's ephemeral and local storages: the group that owns the
/// directory, which then gets the setgid bit (new files inherit the group).
pub(crate) fn fs_gid(data: &mut Vec<String>, field: &str) -> Result<Option<u32>> {
    let Some(i) = data.iter().position(|o| o.starts_with("fsgid=")) else {
        return Ok(None);
    };
    let o = data.remove(i);
    let gid = o["fsgid=".len()..].parse::<u32>().map_err(|_| {
        RuntimeError::invalid(format!("{field}.options"), format!("{o:?}: not a group id"))
    })?;
    Ok(Some(gid))
}

/// Gives the directory `fd` refers to the group `gid` and the setgid bit.
pub(crate) fn apply_fs_gid(fd: std::os::fd::BorrowedFd, gid: u32, shown: &Path) -> Result<()> {
    let err = |e| RuntimeError::internal(shown.display(), e);
    crate::beneath::chown(fd, -1, gid as i32).map_err(err)?;
    let st = crate::beneath::fstat(fd).map_err(err)?;
    crate::beneath::chmod(fd, (st.st_mode & 0o7777) | libc::S_ISGID).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(storage: Storage) -> (String, String) {
        let t = tempfile::tempdir().unwrap();
        let layout = Layout::create(t.path(), false).unwrap();
        let shared = layout.shared().unwrap();
        match StorageDrivers::builtin().add_all(&[storage], &layout, None, &[&shared], "storages") {
            Err(RuntimeError::InvalidArgument { field, reason }) => (field, reason),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    fn storage(driver: &str, source: &str, fstype: &str) -> Storage {
        Storage {
            driver: driver.into(),
            source: source.into(),
            fstype: fstype.into(),
            mount_point: "sandbox/m".into(),
            ..Default::default()
        }
    }

    #[test]
    fn drivers_are_named_in_refusals() {
        let (field, reason) = refused(storage("virtio-fs", "kataShared", "virtiofs"));
        assert_eq!(field, "storages[0].driver");
        assert!(
            reason.contains("Kata storage driver \"virtio-fs\" is not implemented"),
            "{reason}"
        );
        assert!(reason.contains("bind, ephemeral, local"), "{reason}");
        let (_, reason) = refused(storage("nbd", "x", ""));
        assert!(
            reason.contains("\"nbd\" is not a storage driver"),
            "{reason}"
        );
    }

    #[test]
    fn each_driver_checks_its_source_and_type() {
        for (s, field) in [
            (storage("bind", "/", ""), "storages[0].source"),
            (storage("bind", "/etc/passwd", ""), "storages[0].source"),
            (storage("bind", "shared/x", ""), "storages[0].source"),
            (storage("ephemeral", "tmpfs", "ext4"), "storages[0].fstype"),
            (
                storage("ephemeral", "/dev/vda", "tmpfs"),
                "storages[0].source",
            ),
            (storage("local", "/etc", ""), "storages[0].source"),
        ] {
            assert_eq!(refused(s.clone()).0, field, "{s:?}");
        }
        let mut s = storage("ephemeral", "tmpfs", "tmpfs");
        s.options = vec!["size=1m".into(), "huge=always,exec".into()];
        assert_eq!(refused(s).0, "storages[0].options[1]");
    }
}
