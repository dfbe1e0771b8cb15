//! `overlayfs`: Kata's overlay of layers named in the options (`lowerdir=a:b`, `upperdir=`,
//! `workdir=`), fstype `overlay`.
//!
//! Every layer, upper and work directory is opened beneath a directory the storage may take
//! paths from (the sandbox's shared directory, an earlier storage, or a directory this storage's
//! own `io.katacontainers.volume.overlayfs.create_directory` options made), never through a
//! symlink, and handed to the kernel as `/proc/self/fd/N`: what was checked is what gets
//! mounted. Kata's `io.katacontainers.fs-opt.overlay-rw` makes a writable overlay whose upper
//! and work directories the agent creates beside the mount point
//! (`<mount point>.overlay/{upper,work}`). `nodev` always.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use vigil_protos::agent::Storage;

use super::{fs_group, Added, MountPoint, StorageContext, StorageDriver};
use crate::beneath;
use crate::confine::{open_in, Owned};
use crate::error::{Result, RuntimeError};

/// Kata's option asking for a writable overlay: the agent makes `upperdir` and `workdir`.
pub(crate) const OVERLAY_RW: &str = "io.katacontainers.fs-opt.overlay-rw";
/// Kata's driver option naming a directory to create before the overlay is mounted.
pub(crate) const CREATE_DIR: &str = "io.katacontainers.volume.overlayfs.create_directory";
/// Overlay options that name no path and may be passed through.
const PLAIN_OPTIONS: &[&str] = &[
    "index",
    "xino",
    "redirect_dir",
    "metacopy",
    "userxattr",
    "volatile",
];

pub(super) struct Overlay;

impl StorageDriver for Overlay {
    fn driver_types(&self) -> &'static [&'static str] {
        &["overlayfs"]
    }

    fn add(&self, s: &Storage, at: &MountPoint, ctx: &StorageContext) -> Result<Added> {
        let field = ctx.field;
        if s.fstype != "overlay" {
            return Err(RuntimeError::invalid(
                format!("{field}.fstype"),
                format!("{:?}: the overlayfs driver mounts overlay", s.fstype),
            ));
        }
        // Directories the storage asks for: made beneath the sandbox directory where a mount
        // point could be (not in the agent's bundles), then usable as upper or work dirs.
        let mut made: Vec<Owned> = Vec::new();
        for (i, o) in s.driver_options.iter().enumerate() {
            let f = format!("{field}.driver_options[{i}]");
            let dir = o
                .strip_prefix(CREATE_DIR)
                .and_then(|d| d.strip_prefix('='))
                .ok_or_else(|| {
                    RuntimeError::invalid(&f, format!("{o:?} is not supported for overlayfs"))
                })?;
            made.push(ctx.make_dir(dir, &f)?);
        }
        let opt_field = format!("{field}.options");
        let mut flags = MsFlags::MS_NODEV;
        // The descriptors stay open until the mount is made: the options name them.
        let mut held: Vec<OwnedFd> = Vec::new();
        let mut data: Vec<String> = Vec::new();
        let (mut lower, mut upper, mut work) = (false, false, false);
        let sources: Vec<&Owned> = ctx.sources.iter().copied().chain(made.iter()).collect();
        let open_layer = |given: &str, held: &mut Vec<OwnedFd>| -> Result<String> {
            let fd = open_in(
                &sources,
                given,
                &opt_field,
                "the sandbox's shared directory, an earlier storage or a created directory",
            )?;
            let st = beneath::fstat(fd.as_fd()).map_err(|e| RuntimeError::internal(given, e))?;
            if !beneath::is_dir(&st) {
                return Err(RuntimeError::invalid(
                    &opt_field,
                    format!("{given:?} is not a directory"),
                ));
            }
            let p = beneath::proc_path(fd.as_fd()).display().to_string();
            held.push(fd);
            Ok(p)
        };
        for o in &s.options {
            let (key, value) = o.split_once('=').unwrap_or((o.as_str(), ""));
            match key {
                "lowerdir" if !lower => {
                    let layers = value
                        .split(':')
                        .map(|l| open_layer(l, &mut held))
                        .collect::<Result<Vec<_>>>()?;
                    data.push(format!("lowerdir={}", layers.join(":")));
                    lower = true;
                }
                "upperdir" | "workdir" => {
                    let p = open_layer(value, &mut held)?;
                    data.push(format!("{key}={p}"));
                    upper |= key == "upperdir";
                    work |= key == "workdir";
                }
                OVERLAY_RW => {
                    let base = overlay_dir(&at.rel);
                    for (key, sub) in [("upperdir", "upper"), ("workdir", "work")] {
                        let fd =
                            beneath::mkdir_all(at.root.fd(), &base.join(sub), 0o755, &mut |_| {
                                Ok(())
                            })
                            .map_err(|e| at.error(e))?;
                        data.push(format!(
                            "{key}={}",
                            beneath::proc_path(fd.as_fd()).display()
                        ));
                        held.push(fd);
                    }
                    upper = true;
                    work = true;
                }
                "ro" => flags |= MsFlags::MS_RDONLY,
                "rw" | "nodev" => {}
                "nosuid" => flags |= MsFlags::MS_NOSUID,
                "noexec" => flags |= MsFlags::MS_NOEXEC,
                k if PLAIN_OPTIONS.contains(&k) && !o.contains(',') => data.push(o.clone()),
                _ => {
                    return Err(RuntimeError::invalid(
                        &opt_field,
                        format!("{o:?} is not an overlay option a storage may set"),
                    ))
                }
            }
        }
        if !lower {
            return Err(RuntimeError::invalid(&opt_field, "no lowerdir"));
        }
        if upper != work {
            return Err(RuntimeError::invalid(
                &opt_field,
                "upperdir and workdir go together",
            ));
        }
        let data = data.join(",");
        let m = at
            .dir(0o755)?
            .mount_fs("overlay", "overlay", flags, Some(&data))?;
        drop(held);
        fs_group::mounted_with(m, s.fs_group.as_ref(), flags)
    }
}

/// `<mount point>.overlay`, where a writable overlay's upper and work directories go.
fn overlay_dir(rel: &Path) -> PathBuf {
    let mut name = rel.file_name().unwrap_or_default().to_os_string();
    name.push(".overlay");
    rel.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use crate::storage::StorageDrivers;
    use vigil_guest::blockdev::DeviceTree;

    fn overlay(options: Vec<String>, driver_options: Vec<String>) -> Storage {
        Storage {
            driver: "overlayfs".into(),
            fstype: "overlay".into(),
            source: "overlay".into(),
            options,
            driver_options,
            mount_point: "sandbox/rootfs".into(),
            ..Default::default()
        }
    }

    /// In a mount namespace of the test thread: a writable overlay of a layer in the shared
    /// directory; a file written through it lands in the upper dir, the layer is untouched;
    /// layers outside the sandbox's sources, or reached through a symlink, are refused.
    #[test]
    fn a_writable_overlay_of_shared_layers_and_nothing_else() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().to_path_buf();
        let ran = crate::storage::in_mount_namespace(move || {
            let layout = Layout::create(&outside.join("kata"), false).map_err(|e| e.to_string())?;
            let shared_path = layout.shared_path();
            std::fs::create_dir_all(shared_path.join("layer")).unwrap();
            std::fs::write(shared_path.join("layer/base"), "base").unwrap();
            std::os::unix::fs::symlink("/etc", shared_path.join("sneaky")).unwrap();
            let shared = layout.shared().map_err(|e| e.to_string())?;
            let drivers = StorageDrivers::builtin(DeviceTree::default());
            let add = |s: Storage| {
                let mut table = crate::storage::SandboxStorages::default();
                drivers.add_all(&mut table, &[s], &layout, None, &[&shared], "storages")?;
                Ok::<_, RuntimeError>(table)
            };
            let layer = shared_path.join("layer").display().to_string();
            let mut table = add(overlay(
                vec![
                    format!("lowerdir={layer}"),
                    OVERLAY_RW.into(),
                    "index=off".into(),
                ],
                vec![],
            ))
            .map_err(|e| e.to_string())?;
            let root = layout.dir().join("sandbox/rootfs");
            let base = std::fs::read_to_string(root.join("base")).map_err(|e| e.to_string())?;
            std::fs::write(root.join("new"), "new").map_err(|e| e.to_string())?;
            let upper = layout.dir().join("sandbox/rootfs.overlay/upper/new");
            let errors = table.unmount_all();
            if base != "base" || !upper.exists() || !errors.is_empty() {
                return Err(format!(
                    "base {base:?}, upper {}, {errors:?}",
                    upper.exists()
                ));
            }
            if shared_path.join("layer/new").exists() {
                return Err("the lower layer was written".into());
            }
            let sneaky = shared_path.join("sneaky").display().to_string();
            let outside_sandbox = format!("{}/x", outside.display());
            for (s, want) in [
                (
                    overlay(vec!["lowerdir=/etc".into()], vec![]),
                    "storages[0].options",
                ),
                (
                    overlay(vec![format!("lowerdir={sneaky}")], vec![]),
                    "storages[0].options",
                ),
                (
                    overlay(vec![format!("lowerdir={layer}:{sneaky}")], vec![]),
                    "storages[0].options",
                ),
                (
                    overlay(
                        vec![format!("lowerdir={layer}"), format!("upperdir={layer}")],
                        vec![],
                    ),
                    "storages[0].options",
                ),
                (
                    overlay(vec![format!("lowerdir={layer}"), "uid=0".into()], vec![]),
                    "storages[0].options",
                ),
                (overlay(vec![], vec![]), "storages[0].options"),
                (
                    overlay(
                        vec![format!("lowerdir={layer}")],
                        vec![format!("{CREATE_DIR}={outside_sandbox}")],
                    ),
                    "storages[0].driver_options[0]",
                ),
            ] {
                match add(s) {
                    Err(RuntimeError::InvalidArgument { field, .. }) if field == want => {}
                    other => return Err(format!("{want}: {other:?}")),
                }
            }
            if outside.join("x").exists() {
                return Err("a directory was made outside the sandbox".into());
            }
            // Upper and work dirs the storage asks to have made are usable.
            let made = layout.dir().join("sandbox/scratch");
            let mut table = add(overlay(
                vec![
                    format!("lowerdir={layer}"),
                    format!("upperdir={}/up", made.display()),
                    format!("workdir={}/wk", made.display()),
                ],
                vec![
                    format!("{CREATE_DIR}={}/up", made.display()),
                    format!("{CREATE_DIR}={}/wk", made.display()),
                ],
            ))
            .map_err(|e| e.to_string())?;
            std::fs::write(root.join("again"), "x").map_err(|e| e.to_string())?;
            let landed = made.join("up/again").exists();
            table.unmount_all();
            if !landed {
                return Err("the created upper dir was not used".into());
            }
            Ok(())
        })
        .unwrap();
        if !ran {
            eprintln!("skipping a_writable_overlay_of_shared_layers_and_nothing_else: needs root");
        }
    }
}
