//! Storages of the simple kinds, mounted under the sandbox directory and unmounted by whoever
//! owns them (the sandbox, or one container).
//!
//! | driver | effect |
//! |---|---|
//! | `ephemeral`, or fstype `tmpfs` | a tmpfs at `mount_point` (options such as `size=` pass through) |
//! | `bind` | `source` (an absolute guest path) bind-mounted at `mount_point`; `ro` honoured |
//! | `local` | a directory at `mount_point` (option `mode=0NNN`), nothing mounted |
//! | `overlayfs` | an overlay of layers in the sandbox directory (`lowerdir=`, ...; Kata's `io.katacontainers.fs-opt.overlay-rw` makes upper/work dirs beside the mount point) |
//! | `blk`, `mmioblk`, `scsi`, `nvdimm`, `virtio-fs`, `9p` | the device or share the host names, found and awaited by `vigil_guest::storage` (which checks the file system and options), mounted at `mount_point`; Kata's `create_filesystem` and `fs_group` honoured |

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use vigil_protos::agent::Storage;

use crate::error::{Result, RuntimeError};
use crate::spec::confined_path;

/// A mount this sandbox made, to be undone.
#[derive(Debug)]
pub(crate) struct Mounted {
    pub(crate) target: PathBuf,
}

fn flags_and_data(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "bind" | "rbind" => {}
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
}

/// Sets up `storages` (field name prefix `field`, e.g. `storages`); on failure undoes the ones
/// already mounted, so a refused request leaves nothing behind.
pub(crate) fn mount_all(
    storages: &[Storage],
    sandbox_dir: &Path,
    field: &str,
) -> Result<Vec<Mounted>> {
    let mut done = Vec::new();
    for (i, s) in storages.iter().enumerate() {
        match mount_one(s, sandbox_dir, &format!("{field}[{i}]")) {
            Ok(Some(m)) => done.push(m),
            Ok(None) => {}
            Err(e) => {
                unmount_all(&mut done);
                return Err(e);
            }
        }
    }
    Ok(done)
}

fn mount_one(s: &Storage, sandbox_dir: &Path, field: &str) -> Result<Option<Mounted>> {
    if s.mount_point.is_empty() {
        return Err(RuntimeError::invalid(
            format!("{field}.mount_point"),
            "empty",
        ));
    }
    let target = confined_path(
        &s.mount_point,
        sandbox_dir,
        sandbox_dir,
        &format!("{field}.mount_point"),
    )?;
    let kind = if s.driver == "ephemeral" || (s.driver.is_empty() && s.fstype == "tmpfs") {
        "tmpfs"
    } else {
        s.driver.as_str()
    };
    match kind {
        "local" => {
            let mode = s
                .options
                .iter()
                .find_map(|o| o.strip_prefix("mode="))
                .map(|m| {
                    u32::from_str_radix(m.trim_start_matches("0o"), 8).map_err(|_| {
                        RuntimeError::invalid(
                            format!("{field}.options"),
                            format!("mode {m:?} is not octal"),
                        )
                    })
                })
                .transpose()?
                .unwrap_or(0o777);
            std::fs::create_dir_all(&target)
                .map_err(|e| RuntimeError::internal(target.display(), e))?;
            std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .map_err(|e| RuntimeError::internal(target.display(), e))?;
            Ok(None)
        }
        "tmpfs" => {
            let (flags, data) = flags_and_data(&s.options);
            std::fs::create_dir_all(&target)
                .map_err(|e| RuntimeError::internal(target.display(), e))?;
            mount(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                (!data.is_empty()).then_some(data.as_str()),
            )
            .map_err(|e| {
                RuntimeError::internal(format!("mounting tmpfs at {}", target.display()), e)
            })?;
            Ok(Some(Mounted { target }))
        }
        "bind" => {
            let source = Path::new(&s.source);
            if !source.is_absolute()
                || source
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(RuntimeError::invalid(
                    format!("{field}.source"),
                    format!("{:?} must be an absolute path without \"..\"", s.source),
                ));
            }
            let meta = std::fs::metadata(source).map_err(|e| {
                RuntimeError::invalid(format!("{field}.source"), format!("{:?}: {e}", s.source))
            })?;
            if meta.is_dir() {
                std::fs::create_dir_all(&target)
                    .map_err(|e| RuntimeError::internal(target.display(), e))?;
            } else {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| RuntimeError::internal(parent.display(), e))?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&target)
                    .map_err(|e| RuntimeError::internal(target.display(), e))?;
            }
            let (flags, _) = flags_and_data(&s.options);
            mount(
                Some(source),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| {
                RuntimeError::internal(
                    format!("bind-mounting {} at {}", s.source, target.display()),
                    e,
                )
            })?;
            let m = Mounted { target };
            // Read-only (and the other flags) need a remount of the bind.
            if !flags.is_empty() {
                if let Err(e) = mount(
                    None::<&str>,
                    &m.target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
                    None::<&str>,
                ) {
                    unmount_all(&mut vec![m]);
                    return Err(RuntimeError::internal(
                        "remounting a bind with its options",
                        e,
                    ));
                }
            }
            Ok(Some(m))
        }
        driver if vigil_guest::storage::handles(driver) => mount_device_storage(s, target, field),
        "overlayfs" => mount_overlay(s, target, sandbox_dir, field),
        other => Err(RuntimeError::invalid(
            format!("{field}.driver"),
            format!(
                "{other:?} is not supported (ephemeral, bind, local, overlayfs, {})",
                vigil_guest::storage::DRIVERS.join(", ")
            ),
        )),
    }
}

/// A storage of one of `vigil_guest::storage::DRIVERS` at `target`. Waiting for a hot-plugged
/// device blocks the calling thread (up to `vigil_guest::blockdev::DEVICE_TIMEOUT`).
fn mount_device_storage(s: &Storage, target: PathBuf, field: &str) -> Result<Option<Mounted>> {
    use vigil_guest::storage as gs;
    let spec = gs::resolve(
        &vigil_guest::blockdev::DeviceTree::default(),
        s,
        field,
        vigil_guest::blockdev::DEVICE_TIMEOUT,
    )
    .map_err(from_guest)?;
    if gs::wants_new_filesystem(s) {
        gs::create_ext4(field, &s.fstype, Path::new(&spec.source)).map_err(from_guest)?;
    }
    std::fs::create_dir_all(&target).map_err(|e| RuntimeError::internal(target.display(), e))?;
    mount(
        Some(spec.source.as_str()),
        &target,
        Some(spec.fstype.as_str()),
        MsFlags::from_bits_truncate(spec.flags),
        (!spec.data.is_empty()).then_some(spec.data.as_str()),
    )
    .map_err(|e| {
        RuntimeError::internal(
            format!(
                "mounting {} ({}) at {}",
                spec.source,
                spec.fstype,
                target.display()
            ),
            e,
        )
    })?;
    let m = Mounted { target };
    if let Some(group) = s.fs_group.as_ref() {
        let read_only = spec.flags & libc::MS_RDONLY != 0;
        if let Err(e) = gs::apply_fs_group(&m.target, group, read_only) {
            unmount_all(&mut vec![m]);
            return Err(from_guest(e));
        }
    }
    Ok(Some(m))
}

/// Kata's `overlayfs` storage: layers from the sandbox's directory only (checked by
/// `vigil_guest::storage::overlay`), a writable overlay's upper and work dirs beside the
/// mount point.
fn mount_overlay(
    s: &Storage,
    target: PathBuf,
    sandbox_dir: &Path,
    field: &str,
) -> Result<Option<Mounted>> {
    let plan = vigil_guest::storage::overlay(s, &target, sandbox_dir, field).map_err(from_guest)?;
    for dir in plan.create.iter().chain(std::iter::once(&target)) {
        std::fs::create_dir_all(dir).map_err(|e| RuntimeError::internal(dir.display(), e))?;
    }
    mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        MsFlags::from_bits_truncate(plan.flags),
        Some(plan.data.as_str()),
    )
    .map_err(|e| RuntimeError::internal(format!("mounting overlay at {}", target.display()), e))?;
    Ok(Some(Mounted { target }))
}

/// A guest-operation error as the runtime's (same status).
fn from_guest(e: vigil_guest::GuestError) -> RuntimeError {
    use vigil_guest::GuestError as G;
    match e {
        G::InvalidArgument(m) => match m.split_once(": ") {
            Some((field, reason)) => RuntimeError::invalid(field, reason),
            None => RuntimeError::invalid("storages", m),
        },
        G::NotFound(m) | G::FailedPrecondition(m) => RuntimeError::FailedPrecondition(m),
        G::DeadlineExceeded(m) => RuntimeError::Timeout(m),
        G::Internal(m) => RuntimeError::Internal(m),
    }
}

/// Unmounts in reverse order; a mount that will not go is detached (lazy), never kept.
pub(crate) fn unmount_all(mounts: &mut Vec<Mounted>) -> Vec<String> {
    let mut errors = Vec::new();
    while let Some(m) = mounts.pop() {
        if let Err(e) = umount2(&m.target, MntFlags::MNT_DETACH) {
            if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
                errors.push(format!("unmounting {}: {e}", m.target.display()));
            }
        }
    }
    errors
}

/// Every mount point at or under `dir`, deepest first (from /proc/self/mountinfo).
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a mount namespace of the test thread: a writable overlay of a layer in the sandbox
    /// directory; a file written through it lands in the upper dir, the layer is untouched.
    #[test]
    fn a_writable_overlay_of_sandbox_layers_mounts_and_unmounts() {
        if nix::unistd::geteuid().as_raw() != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sandbox = dir.path().to_path_buf();
        std::fs::create_dir_all(sandbox.join("layer")).unwrap();
        std::fs::write(sandbox.join("layer/base"), "base").unwrap();
        let r = std::thread::spawn(move || -> std::result::Result<(), String> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| e.to_string())?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(|e| e.to_string())?;
            let storage = Storage {
                driver: "overlayfs".into(),
                fstype: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    format!("lowerdir={}", sandbox.join("layer").display()),
                    "io.katacontainers.fs-opt.overlay-rw".into(),
                ],
                mount_point: "rootfs".into(),
                ..Default::default()
            };
            let mut mounted =
                mount_all(&[storage], &sandbox, "storages").map_err(|e| e.to_string())?;
            let root = sandbox.join("rootfs");
            let base = std::fs::read_to_string(root.join("base")).map_err(|e| e.to_string())?;
            std::fs::write(root.join("new"), "new").map_err(|e| e.to_string())?;
            let upper = sandbox.join("rootfs.overlay/upper/new");
            let errors = unmount_all(&mut mounted);
            if base != "base" || !upper.exists() || !errors.is_empty() {
                return Err(format!(
                    "base {base:?}, upper {}, unmount {errors:?}",
                    upper.exists()
                ));
            }
            if sandbox.join("layer/new").exists() {
                return Err("the lower layer was written".into());
            }
            let bad = Storage {
                driver: "overlayfs".into(),
                fstype: "overlay".into(),
                options: vec!["lowerdir=/etc".into()],
                mount_point: "x".into(),
                ..Default::default()
            };
            match mount_all(&[bad], &sandbox, "storages") {
                Err(RuntimeError::InvalidArgument { field, .. })
                    if field == "storages[0].options" =>
                {
                    Ok(())
                }
                other => Err(format!("lowerdir=/etc: {other:?}")),
            }
        })
        .join()
        .unwrap();
        r.unwrap();
    }
}
