//! Storages (CreateSandbox's and CreateContainer's `storages`): one driver per `driver` name,
//! registered in a [`StorageDrivers`] table, as Kata's agent registers its handlers by type.
//!
//! Every driver gets a mount point already checked to lie in the sandbox's directory (see
//! `Layout::storage_mount_point`) and validates its own `source`, `fstype` and options: a
//! storage never mounts a guest path or device the host merely named. Kata's other drivers
//! are refused by name until a driver for them is registered.
//!
//! | driver | source | effect |
//! |---|---|---|
//! | `ephemeral` (or no driver and fstype `tmpfs`) | a label (`tmpfs`, `shm`) | a tmpfs, `nosuid,nodev` |
//! | `local` | a label (`local`) | a directory (options `mode=`, `fsgid=`), nothing mounted |
//! | `bind` | a path beneath the sandbox's shared directory or an earlier storage | a bind mount, `nodev` |
//! | `blk`, `mmioblk`, `scsi`, `nvdimm` | the disk's address (PCI path, `target:lun`, `/dev/vdX`, `/dev/pmemN`), found in the guest | its ext2/3/4 or xfs, `nodev` (`device.rs`) |
//! | `virtio-fs`, `9p` | the share's tag | the share, `nodev` (`device.rs`) |
//! | `overlayfs` | layers in the options, beneath the shared directory or earlier storages | an overlay, `nodev` (`overlay.rs`) |
//! | `watchable-bind` | a directory beneath the shared directory or an earlier storage | a tmpfs copy kept in step with it (`watchable.rs`) |
//! | `image_guest_pull` (with `Sandbox::with_guest_pull`) | an image reference, or the pause container | the image pulled under the tenant's policy, an overlay of its layers (`../guest_pull.rs`) |
//!
//! Adding a driver: implement [`StorageDriver`] (its `driver` names, and `add`, which checks the
//! storage and sets it up at the [`MountPoint`] it is given, through `MountPoint::dir` and
//! `Target::mount_fs` / `Target::bind`) and register it in [`StorageDrivers::builtin`], or with
//! [`StorageDrivers::register`] where it needs what the agent configures.

mod bind;
mod device;
mod ephemeral;
mod fs_group;
mod local;
mod overlay;
mod table;
mod watchable;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vigil_guest::blockdev::DeviceTree;
use vigil_protos::agent::Storage;

use crate::confine::Owned;
use crate::error::{Result, RuntimeError};
use crate::layout::Layout;
use crate::mount::{Mounted, Target};

pub(crate) use table::{Held, SandboxStorages};

/// What a driver gets besides the storage itself.
pub(crate) struct StorageContext<'a> {
    /// The request field of this storage, e.g. `storages[2]`, for refusals.
    pub(crate) field: &'a str,
    /// Directories a storage may take a path `source` from: the shared directory and the
    /// storages set up before this one.
    pub(crate) sources: &'a [&'a Owned],
    layout: &'a Layout,
    /// The container whose storage this is (None: the sandbox's).
    container: Option<&'a str>,
}

impl StorageContext<'_> {
    /// Makes the directory `given` (named as a mount point is: relative to the sandbox
    /// directory or absolute beneath it, not in the agent's own places), for a driver that
    /// needs one besides its mount point.
    pub(crate) fn make_dir(&self, given: &str, field: &str) -> Result<Owned> {
        let rel = self
            .layout
            .storage_mount_point(given, self.container, field)?;
        let at = MountPoint {
            root: self.layout.root(),
            shown: self.layout.dir().join(&rel),
            rel,
            field: field.to_string(),
        };
        let fd = at.plain_dir()?;
        Ok(Owned::new(at.shown, fd))
    }
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

    /// A failed lookup or creation beneath the mount point's root, as a refusal naming the
    /// mount point where something was in the way.
    pub(crate) fn error(&self, e: std::io::Error) -> RuntimeError {
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
    /// What keeps the storage up to date while it exists (`watchable-bind`); stopped before
    /// the unmount.
    pub(crate) watcher: Option<watchable::Watcher>,
    /// What the driver made at the mount point itself (a guest-pulled rootfs), undone after
    /// the unmount.
    pub(crate) undo: Option<Undo>,
    /// What the storage says of the container's process (a guest-pulled image's config).
    pub(crate) process: Option<ProcessDefaults>,
}

impl Added {
    /// A directory with nothing mounted on it (or undone by `undo` alone).
    pub(crate) fn plain(root: Owned) -> Added {
        Added {
            mount: None,
            root,
            watcher: None,
            undo: None,
            process: None,
        }
    }

    /// A mount, with its root as the directory it provides; undone if that cannot be had.
    pub(crate) fn mounted(m: Mounted) -> Result<Added> {
        match m.owned() {
            Ok(root) => Ok(Added {
                mount: Some(m),
                ..Added::plain(root)
            }),
            Err(e) => {
                let _ = m.unmount();
                Err(e)
            }
        }
    }

    /// Undoes it all (a storage that could not be recorded).
    fn undo(self) {
        drop(self.watcher);
        if let Some(m) = self.mount {
            let _ = m.unmount();
        }
        if let Some(u) = self.undo {
            let _ = u.run();
        }
    }
}

/// A driver's own clean-up of what it made at a mount point.
pub(crate) struct Undo(Box<dyn FnOnce() -> std::result::Result<(), String> + Send + Sync>);

impl Undo {
    pub(crate) fn new(
        f: impl FnOnce() -> std::result::Result<(), String> + Send + Sync + 'static,
    ) -> Undo {
        Undo(Box::new(f))
    }

    pub(crate) fn run(self) -> std::result::Result<(), String> {
        (self.0)()
    }
}

impl std::fmt::Debug for Undo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Undo")
    }
}

/// A storage's say in the container's process, applied to the spec's process before the spec
/// is checked: a guest-pulled image's defaults (Entrypoint, Cmd, Env, WorkingDir, User), the
/// pause bundle's process.
#[derive(Clone)]
pub(crate) struct ProcessDefaults(Arc<ProcessFn>);

type ProcessFn = dyn Fn(&mut vigil_protos::oci::Process) -> Result<()> + Send + Sync;

impl ProcessDefaults {
    pub(crate) fn new(
        f: impl Fn(&mut vigil_protos::oci::Process) -> Result<()> + Send + Sync + 'static,
    ) -> ProcessDefaults {
        ProcessDefaults(Arc::new(f))
    }

    pub(crate) fn apply(&self, process: &mut vigil_protos::oci::Process) -> Result<()> {
        (self.0)(process)
    }
}

impl std::fmt::Debug for ProcessDefaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProcessDefaults")
    }
}

/// What a request's storages gave: what it holds, each storage's root, and what they say of
/// the container's process.
pub(crate) struct AddedAll {
    pub(crate) held: Held,
    pub(crate) roots: Vec<Owned>,
    pub(crate) process: Vec<ProcessDefaults>,
}

/// One kind of storage. Drivers are registered by the `driver` names they handle.
pub(crate) trait StorageDriver: Send + Sync {
    /// The `driver` values this driver handles.
    fn driver_types(&self) -> &'static [&'static str];
    /// Checks `storage` (its source, fstype and options) and sets it up at `at`.
    fn add(&self, storage: &Storage, at: &MountPoint, ctx: &StorageContext) -> Result<Added>;
}

/// Kata's storage drivers that vigil does not implement (yet): refused by name.
const KATA_DRIVERS: &[&str] = &["blk-ccw", "erofs.multi-layer"];

/// The storage drivers a sandbox uses, by `driver` name.
#[derive(Clone)]
pub struct StorageDrivers {
    by_type: HashMap<&'static str, Arc<dyn StorageDriver>>,
}

impl StorageDrivers {
    /// The drivers vigil has (the table above), finding hot-plugged devices in `devices`.
    pub(crate) fn builtin(devices: DeviceTree) -> StorageDrivers {
        let mut d = StorageDrivers {
            by_type: HashMap::new(),
        };
        d.register(Arc::new(ephemeral::Ephemeral));
        d.register(Arc::new(local::Local));
        d.register(Arc::new(bind::Bind));
        d.register(Arc::new(device::DeviceStorage { tree: devices }));
        d.register(Arc::new(overlay::Overlay));
        d.register(Arc::new(watchable::WatchableBind {
            interval: watchable::INTERVAL,
        }));
        d
    }

    /// The `driver` names served, sorted (GetGuestDetails' `storage_handlers`).
    pub(crate) fn names(&self) -> Vec<&'static str> {
        let mut known: Vec<&str> = self.by_type.keys().copied().collect();
        known.sort_unstable();
        known
    }

    /// Finds the device-backed storages' disks in `devices` (tests: a fake sysfs tree).
    pub(crate) fn set_device_tree(&mut self, devices: DeviceTree) {
        self.register(Arc::new(device::DeviceStorage { tree: devices }));
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
        let known = self.names();
        let why = if name == crate::guest_pull::DRIVER {
            "guest image pull is refused: the agent configuration has no [image] section (set [image] policy)".to_string()
        } else if KATA_DRIVERS.contains(&name) {
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
    /// (`container` None) or one container, recording them in `table`; a storage already there
    /// at the same mount point is used again (see `table`). `sources` are the directories a
    /// path source may come from besides the storages set up here. Returns what the request
    /// holds, each storage's root and what the storages say of the process. On failure what this request took is given back and what
    /// it set up undone, so a refused request leaves nothing behind.
    pub(crate) fn add_all(
        &self,
        table: &mut SandboxStorages,
        storages: &[Storage],
        layout: &Layout,
        container: Option<&str>,
        sources: &[&Owned],
        field: &str,
    ) -> Result<AddedAll> {
        let mut held = Held::default();
        let mut made = Vec::new();
        let mut roots: Vec<Owned> = Vec::new();
        let mut process = Vec::new();
        for (i, s) in storages.iter().enumerate() {
            let field = format!("{field}[{i}]");
            match self.add_one(table, s, layout, container, sources, &roots, &field) {
                Ok((rel, root, defaults, new)) => {
                    held.push(rel.clone());
                    if new {
                        made.push(rel);
                    }
                    roots.push(root);
                    process.extend(defaults);
                }
                Err(e) => {
                    for problem in table.roll_back(held, &made) {
                        tracing::warn!(%problem, "undoing the storages of a refused request");
                    }
                    return Err(e);
                }
            }
        }
        Ok(AddedAll {
            held,
            roots,
            process,
        })
    }

    /// One storage: its mount point, its root, what it says of the process, and whether it
    /// was set up now (else reused).
    #[allow(clippy::too_many_arguments)]
    fn add_one(
        &self,
        table: &mut SandboxStorages,
        s: &Storage,
        layout: &Layout,
        container: Option<&str>,
        sources: &[&Owned],
        earlier: &[Owned],
        field: &str,
    ) -> Result<(PathBuf, Owned, Option<ProcessDefaults>, bool)> {
        let mp_field = format!("{field}.mount_point");
        let rel = layout.storage_mount_point(&s.mount_point, container, &mp_field)?;
        if let Some((root, process)) = table.reuse(&rel, s, field)? {
            return Ok((rel, root, process, false));
        }
        if let Some(id) = container.filter(|_| s.shared) {
            if rel.starts_with(layout.container_rel(id)) {
                return Err(RuntimeError::invalid(
                    format!("{field}.shared"),
                    "a storage in the container's own directory goes with the container",
                ));
            }
        }
        let driver = self.driver(s, field)?;
        let at = MountPoint {
            root: layout.root(),
            shown: layout.dir().join(&rel),
            rel,
            field: mp_field,
        };
        let all_sources: Vec<&Owned> = sources.iter().copied().chain(earlier.iter()).collect();
        let added = driver.add(
            s,
            &at,
            &StorageContext {
                field,
                sources: &all_sources,
                layout,
                container,
            },
        )?;
        let root = match added.root.try_clone() {
            Ok(r) => r,
            Err(e) => {
                added.undo();
                return Err(e);
            }
        };
        let process = added.process.clone();
        table.insert(at.rel.clone(), s, added, container.is_some());
        Ok((at.rel, root, process, true))
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
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
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

/// Runs `f` on a thread of its own in a private mount namespace, so the mounts a driver test
/// makes vanish with it. `Ok(false)`: not root, nothing run.
#[cfg(test)]
pub(crate) fn in_mount_namespace(
    f: impl FnOnce() -> std::result::Result<(), String> + Send + 'static,
) -> std::result::Result<bool, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(false);
    }
    std::thread::spawn(move || {
        use nix::mount::{mount, MsFlags};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| e.to_string())?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| e.to_string())?;
        f().map(|()| true)
    })
    .join()
    .map_err(|_| "the test thread panicked".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(storage: Storage) -> (String, String) {
        let t = tempfile::tempdir().unwrap();
        let layout = Layout::create(t.path(), false).unwrap();
        let shared = layout.shared().unwrap();
        let drivers = StorageDrivers::builtin(DeviceTree::default());
        let mut table = SandboxStorages::default();
        match drivers.add_all(
            &mut table,
            &[storage],
            &layout,
            None,
            &[&shared],
            "storages",
        ) {
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
        let (field, reason) = refused(storage("blk-ccw", "0.0.0005", "ext4"));
        assert_eq!(field, "storages[0].driver");
        assert!(
            reason.contains("Kata storage driver \"blk-ccw\" is not implemented"),
            "{reason}"
        );
        assert!(
            reason.contains("9p, bind, blk, ephemeral, local, mmioblk"),
            "{reason}"
        );
        // Guest pull is a driver the agent registers only with an [image] section.
        let (field, reason) = refused(storage("image_guest_pull", "busybox", "overlay"));
        assert_eq!(field, "storages[0].driver");
        assert!(reason.contains("no [image] section"), "{reason}");
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
