//! What the device-backed storage drivers mount, from a `Storage` of CreateSandbox or
//! CreateContainer in Kata's shape: the device or tag the host names, resolved and awaited in
//! the guest, with a checked file system type and mount options; plus Kata's `fs_group`
//! ownership change and `create_filesystem`.
//!
//! | driver | `source` | file systems |
//! |---|---|---|
//! | `blk` | PCI path (`02/03`) of a virtio-blk disk | ext2/3/4, xfs |
//! | `mmioblk` | `/dev/vdX` of a virtio-mmio disk | ext2/3/4, xfs |
//! | `scsi` | SCSI address `target:lun` | ext2/3/4, xfs |
//! | `nvdimm` | `/dev/pmemN` | ext2/3/4, xfs (`dax` allowed) |
//! | `virtio-fs` | the share's tag | virtiofs |
//! | `9p` | the share's tag | 9p (virtio transport only) |
//! | `overlayfs` | layers in `options` (`lowerdir=`, `upperdir=`, `workdir=`), all inside the sandbox directory | overlay |
//!
//! The mount itself (beneath the sandbox's directories, race-free) is the container runtime's.
//! Every mount gets `nodev`: a device node on a host-supplied file system must not open a
//! guest device.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use vigil_protos::agent::{FSGroup, Storage};
use vigil_protos::types::FSGroupChangePolicy;

use crate::blockdev::DeviceTree;
use crate::error::{invalid, GuestError, Result};
use crate::pci::PciPath;

/// The storage drivers resolved here, by Kata's names.
pub const DRIVERS: &[&str] = &["blk", "mmioblk", "scsi", "nvdimm", "virtio-fs", "9p"];
/// Kata's driver option asking the agent to make a file system on a fresh block volume.
pub const CREATE_FILESYSTEM: &str = "create_filesystem";
/// A virtio-fs tag is at most 36 bytes (virtio-fs device configuration).
const MAX_TAG: usize = 36;

/// What to mount: the kernel's `source`, `fstype`, flags and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: String,
    pub fstype: String,
    pub flags: libc::c_ulong,
    pub data: String,
}

/// Whether `driver` is one this module resolves.
pub fn handles(driver: &str) -> bool {
    DRIVERS.contains(&driver)
}

/// Resolves a storage of one of [`DRIVERS`]: finds (waiting up to `timeout`) the device, checks
/// the file system and options. `field` names the storage in errors (`storages[2]`).
pub fn resolve(
    tree: &DeviceTree,
    s: &Storage,
    field: &str,
    timeout: Duration,
) -> Result<MountSpec> {
    let source_field = format!("{field}.source");
    let block_fs = ["ext4", "ext3", "ext2", "xfs"];
    let (source, fstypes): (String, &[&str]) = match s.driver.as_str() {
        "blk" => {
            let path = PciPath::parse(&source_field, &s.source)?;
            (
                path_text(tree.virtio_blk_by_pci(&source_field, &path, timeout)?),
                &block_fs,
            )
        }
        "mmioblk" => (
            path_text(tree.virtio_blk_mmio(&source_field, &s.source, timeout)?),
            &block_fs,
        ),
        "scsi" => (
            path_text(tree.scsi_by_address(&source_field, &s.source, timeout)?),
            &block_fs,
        ),
        "nvdimm" => (path_text(tree.pmem(&source_field, &s.source)?), &block_fs),
        "virtio-fs" => (tag(&source_field, &s.source)?, &["virtiofs"]),
        "9p" => (tag(&source_field, &s.source)?, &["9p"]),
        other => {
            return Err(invalid(
                &format!("{field}.driver"),
                format!(
                    "{other:?} is not a device storage driver ({})",
                    DRIVERS.join(", ")
                ),
            ))
        }
    };
    if !fstypes.contains(&s.fstype.as_str()) {
        return Err(invalid(
            &format!("{field}.fstype"),
            format!(
                "{:?} is not mounted by the {} driver ({})",
                s.fstype,
                s.driver,
                fstypes.join(", ")
            ),
        ));
    }
    for o in &s.driver_options {
        if o == CREATE_FILESYSTEM || o.starts_with("fsgid=") {
            continue;
        }
        return Err(invalid(
            &format!("{field}.driver_options"),
            format!("{o:?} is not supported (an ephemeral encryption key needs CoCo's data hub)"),
        ));
    }
    let (flags, data) = mount_options(&format!("{field}.options"), &s.fstype, &s.options)?;
    Ok(MountSpec {
        source,
        fstype: s.fstype.clone(),
        flags,
        data,
    })
}

fn path_text(p: PathBuf) -> String {
    p.display().to_string()
}

fn tag(field: &str, t: &str) -> Result<String> {
    let ok = !t.is_empty()
        && t.len() <= MAX_TAG
        && t.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b',');
    if !ok {
        return Err(invalid(
            field,
            format!("{t:?} is not a share tag (1-{MAX_TAG} printable bytes, no '/' or ',')"),
        ));
    }
    Ok(t.to_string())
}

/// Mount flags and data from Kata's option list, checked against what the file system type
/// may be given. `nodev` is always added.
pub fn mount_options(
    field: &str,
    fstype: &str,
    options: &[String],
) -> Result<(libc::c_ulong, String)> {
    let mut flags = libc::MS_NODEV;
    let mut data = Vec::new();
    let mut has_trans = false;
    for o in options {
        let (key, _) = o.split_once('=').unwrap_or((o.as_str(), ""));
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" | "defaults" | "bind" | "rbind" | "nodev" => {}
            "nosuid" => flags |= libc::MS_NOSUID,
            "noexec" => flags |= libc::MS_NOEXEC,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            "noatime" => flags |= libc::MS_NOATIME,
            "nodiratime" => flags |= libc::MS_NODIRATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            _ => {
                let allowed: &[&str] = match fstype {
                    "ext4" | "ext3" | "ext2" => &[
                        "dax",
                        "discard",
                        "nodiscard",
                        "noload",
                        "errors",
                        "data",
                        "barrier",
                        "nobarrier",
                    ],
                    "xfs" => &[
                        "dax",
                        "discard",
                        "nodiscard",
                        "nouuid",
                        "norecovery",
                        "logbufs",
                        "logbsize",
                    ],
                    "virtiofs" => &["dax"],
                    "9p" => &["trans", "version", "msize", "cache", "access", "posixacl"],
                    _ => &[],
                };
                if !allowed.contains(&key) {
                    return Err(invalid(
                        field,
                        format!("{o:?} is not an option a {fstype} storage may set"),
                    ));
                }
                if key == "trans" {
                    if o != "trans=virtio" {
                        return Err(invalid(
                            field,
                            format!("{o:?}: 9p shares come over virtio only"),
                        ));
                    }
                    has_trans = true;
                }
                if key == "errors" && o == "errors=panic" {
                    return Err(invalid(
                        field,
                        "errors=panic would let a corrupt disk stop the guest",
                    ));
                }
                data.push(o.clone());
            }
        }
    }
    if fstype == "9p" && !has_trans {
        data.insert(0, "trans=virtio".into());
    }
    Ok((flags, data.join(",")))
}

/// Kata's option asking for a writable overlay: the agent makes `upperdir` and `workdir`.
pub const OVERLAY_RW: &str = "io.katacontainers.fs-opt.overlay-rw";
/// Kata's driver option naming a directory to create before an overlay is mounted.
pub const OVERLAY_CREATE_DIR: &str = "io.katacontainers.volume.overlayfs.create_directory";

/// An `overlayfs` storage, checked: what to create, then what to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayPlan {
    /// Directories to create first (`upperdir`/`workdir` of a writable overlay, Kata's
    /// `create_directory` driver options).
    pub create: Vec<PathBuf>,
    pub flags: libc::c_ulong,
    /// `lowerdir=...,upperdir=...,workdir=...` and the allowed overlay options.
    pub data: String,
}

/// Checks an `overlayfs` storage (Kata's driver: fstype `overlay`, layers named in the
/// options). Every directory it names must lie in `jail` (the sandbox's directory), judged
/// by where it really leads; a writable overlay (`io.katacontainers.fs-opt.overlay-rw`) gets
/// `<mount point>.overlay/{upper,work}`. `nodev` always.
pub fn overlay(s: &Storage, target: &Path, jail: &Path, field: &str) -> Result<OverlayPlan> {
    if s.fstype != "overlay" {
        return Err(invalid(
            &format!("{field}.fstype"),
            format!("{:?}: the overlayfs driver mounts overlay", s.fstype),
        ));
    }
    let opt_field = format!("{field}.options");
    let inside = |what: &str, p: &str| -> Result<PathBuf> { jailed(&opt_field, what, p, jail) };
    let mut plan = OverlayPlan {
        create: Vec::new(),
        flags: libc::MS_NODEV,
        data: String::new(),
    };
    let mut data = Vec::new();
    let (mut lower, mut upper, mut work) = (false, false, false);
    for o in &s.options {
        let (key, value) = o.split_once('=').unwrap_or((o.as_str(), ""));
        match key {
            "lowerdir" => {
                for layer in value.split(':') {
                    inside("lowerdir", layer)?;
                }
                lower = true;
                data.push(o.clone());
            }
            "upperdir" | "workdir" => {
                inside(key, value)?;
                upper |= key == "upperdir";
                work |= key == "workdir";
                data.push(o.clone());
            }
            OVERLAY_RW => {
                let base = PathBuf::from(format!("{}.overlay", target.display()));
                let (u, w) = (base.join("upper"), base.join("work"));
                inside("upperdir", &u.display().to_string())?;
                data.push(format!("upperdir={}", u.display()));
                data.push(format!("workdir={}", w.display()));
                plan.create.extend([u, w]);
                upper = true;
                work = true;
            }
            "ro" => plan.flags |= libc::MS_RDONLY,
            "rw" | "nodev" => {}
            "nosuid" => plan.flags |= libc::MS_NOSUID,
            "noexec" => plan.flags |= libc::MS_NOEXEC,
            "index" | "xino" | "redirect_dir" | "metacopy" | "userxattr" | "volatile" => {
                data.push(o.clone())
            }
            _ => {
                return Err(invalid(
                    &opt_field,
                    format!("{o:?} is not an overlay option a storage may set"),
                ))
            }
        }
    }
    if !lower {
        return Err(invalid(&opt_field, "no lowerdir"));
    }
    if upper != work {
        return Err(invalid(&opt_field, "upperdir and workdir go together"));
    }
    for o in &s.driver_options {
        match o.split_once('=') {
            Some((OVERLAY_CREATE_DIR, dir)) => plan.create.push(jailed(
                &format!("{field}.driver_options"),
                OVERLAY_CREATE_DIR,
                dir,
                jail,
            )?),
            _ => {
                return Err(invalid(
                    &format!("{field}.driver_options"),
                    format!("{o:?} is not supported for overlayfs"),
                ))
            }
        }
    }
    plan.data = data.join(",");
    Ok(plan)
}

/// `p` as a path in `jail`: absolute, without `..`, and (where it exists) really inside.
fn jailed(field: &str, what: &str, p: &str, jail: &Path) -> Result<PathBuf> {
    let path = Path::new(p);
    let plain = path.is_absolute()
        && !path
            .components()
            .any(|c| c == std::path::Component::ParentDir);
    let real_jail = std::fs::canonicalize(jail).unwrap_or_else(|_| jail.to_path_buf());
    let within = |x: &Path| x.starts_with(jail) || x.starts_with(&real_jail);
    let real_ok = std::fs::canonicalize(path).map_or(true, |r| r.starts_with(&real_jail));
    if !plain || !within(path) || !real_ok {
        return Err(invalid(
            field,
            format!(
                "{what} {p:?} is not inside the sandbox directory {}",
                jail.display()
            ),
        ));
    }
    Ok(path.to_path_buf())
}

/// Whether the storage asks for a fresh file system (`create_filesystem`, Kata's block
/// emptyDir): made with the guest's `mkfs.ext4` before mounting.
pub fn wants_new_filesystem(s: &Storage) -> bool {
    s.driver_options.iter().any(|o| o == CREATE_FILESYSTEM)
}

/// Makes an ext4 file system on `device` with Kata's options for block emptyDirs (no journal,
/// no reserved blocks). The guest image must have `mkfs.ext4`.
pub fn create_ext4(field: &str, fstype: &str, device: &Path) -> Result<()> {
    if fstype != "ext4" {
        return Err(invalid(
            &format!("{field}.fstype"),
            format!("create_filesystem makes ext4 only, not {fstype:?}"),
        ));
    }
    let mkfs = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4", "/usr/bin/mkfs.ext4", "/bin/mkfs.ext4"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            GuestError::FailedPrecondition(format!(
                "{field}.driver_options: create_filesystem needs mkfs.ext4 in the guest image, which has none"
            ))
        })?;
    let out = std::process::Command::new(&mkfs)
        .args([
            "-q",
            "-F",
            "-O",
            "^has_journal",
            "-m",
            "0",
            "-i",
            "163840",
            "-I",
            "128",
        ])
        .arg(device)
        .output()
        .map_err(|e| GuestError::Internal(format!("running {}: {e}", mkfs.display())))?;
    if !out.status.success() {
        return Err(GuestError::Internal(format!(
            "mkfs.ext4 {} failed ({}): {}",
            device.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Kata's `fs_group`: everything under `root` gets the group, directories setgid, and group
/// read (write unless read-only; execute on directories) permissions. Symlinks are neither
/// followed nor changed, so nothing outside `root` is touched. With `OnRootMismatch`, nothing
/// is done when the root already has the group and those permissions.
pub fn apply_fs_group(root: &Path, group: &FSGroup, read_only: bool) -> Result<()> {
    let meta =
        std::fs::symlink_metadata(root).map_err(|e| GuestError::internal(root.display(), e))?;
    let want = if read_only { 0o040 } else { 0o060 };
    let on_mismatch =
        group.group_change_policy.enum_value() == Ok(FSGroupChangePolicy::OnRootMismatch);
    if on_mismatch
        && meta.gid() == group.group_id
        && meta.mode() & (want | 0o010) == (want | 0o010)
        && meta.mode() & 0o2000 != 0
    {
        return Ok(());
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta =
            std::fs::symlink_metadata(&p).map_err(|e| GuestError::internal(p.display(), e))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        std::os::unix::fs::lchown(&p, None, Some(group.group_id))
            .map_err(|e| GuestError::Internal(format!("fs_group: chown {}: {e}", p.display())))?;
        let mut mode = meta.mode() & 0o7777 | want;
        if meta.is_dir() {
            mode |= 0o010 | 0o2000;
            for e in std::fs::read_dir(&p).map_err(|e| GuestError::internal(p.display(), e))? {
                stack.push(e.map_err(|e| GuestError::internal(p.display(), e))?.path());
            }
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| GuestError::Internal(format!("fs_group: chmod {}: {e}", p.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(driver: &str, source: &str, fstype: &str, options: &[&str]) -> Storage {
        Storage {
            driver: driver.into(),
            source: source.into(),
            fstype: fstype.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
            mount_point: "/run/kata-containers/sandbox/storage/x".into(),
            ..Default::default()
        }
    }

    #[test]
    fn shares_resolve_to_their_tag_with_checked_options() {
        let tree = DeviceTree::default();
        let t = Duration::from_millis(1);
        let m = resolve(
            &tree,
            &storage("9p", "vigilshare", "9p", &["ro", "version=9p2000.L"]),
            "storages[0]",
            t,
        )
        .unwrap();
        assert_eq!(m.source, "vigilshare");
        assert_eq!(m.data, "trans=virtio,version=9p2000.L");
        assert_eq!(m.flags, libc::MS_NODEV | libc::MS_RDONLY);
        let m = resolve(
            &tree,
            &storage("virtio-fs", "kataShared", "virtiofs", &["nosuid"]),
            "storages[0]",
            t,
        )
        .unwrap();
        assert_eq!(
            (m.fstype.as_str(), m.flags),
            ("virtiofs", libc::MS_NODEV | libc::MS_NOSUID)
        );

        for (s, field) in [
            (storage("9p", "a/b", "9p", &[]), "storages[0].source"),
            (storage("9p", "", "9p", &[]), "storages[0].source"),
            (
                storage("9p", "tag", "9p", &["trans=tcp"]),
                "storages[0].options",
            ),
            (
                storage("virtio-fs", "tag", "ext4", &[]),
                "storages[0].fstype",
            ),
            (
                storage("virtio-fs", "tag", "virtiofs", &["uid=0"]),
                "storages[0].options",
            ),
            (storage("nfs", "tag", "nfs", &[]), "storages[0].driver"),
            (storage("blk", "zz", "ext4", &[]), "storages[0].source"),
            (
                storage("mmioblk", "/dev/sda", "ext4", &[]),
                "storages[0].source",
            ),
            (
                storage("nvdimm", "/dev/mem", "ext4", &[]),
                "storages[0].source",
            ),
        ] {
            let e = resolve(&tree, &s, "storages[0]", t).unwrap_err();
            assert!(e.to_string().starts_with(field), "{field}: {e}");
        }
        let mut s = storage("virtio-fs", "tag", "virtiofs", &[]);
        s.driver_options = vec!["encryption_key=ephemeral".into()];
        let e = resolve(&tree, &s, "storages[1]", t).unwrap_err();
        assert!(
            e.to_string().starts_with("storages[1].driver_options"),
            "{e}"
        );
    }

    #[test]
    fn block_options_are_allow_listed_per_file_system() {
        let opts = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (flags, data) = mount_options(
            "o",
            "ext4",
            &opts(&["ro", "noatime", "dax", "errors=remount-ro"]),
        )
        .unwrap();
        assert_eq!(flags, libc::MS_NODEV | libc::MS_RDONLY | libc::MS_NOATIME);
        assert_eq!(data, "dax,errors=remount-ro");
        assert!(mount_options("o", "ext4", &opts(&["errors=panic"])).is_err());
        assert!(mount_options("o", "xfs", &opts(&["data=journal"])).is_err());
        assert!(mount_options("o", "ext4", &opts(&["uid=0"])).is_err());
    }

    #[test]
    fn overlays_name_only_the_sandbox_s_directories() {
        let jail = tempfile::tempdir().unwrap();
        let j = jail.path();
        let target = j.join("containers/c1/rootfs");
        let mut s = storage("overlayfs", "overlay", "overlay", &[]);
        s.options = vec![
            format!(
                "lowerdir={}:{}",
                j.join("l1").display(),
                j.join("l2").display()
            ),
            OVERLAY_RW.into(),
            "index=off".into(),
        ];
        s.driver_options = vec![format!(
            "{OVERLAY_CREATE_DIR}={}",
            j.join("extra").display()
        )];
        let plan = overlay(&s, &target, j, "storages[0]").unwrap();
        let up = format!("{}.overlay/upper", target.display());
        assert!(
            plan.data.contains(&format!("upperdir={up}")),
            "{}",
            plan.data
        );
        assert!(plan.data.ends_with("index=off"));
        assert_eq!(plan.create.len(), 3);
        assert_eq!(plan.flags, libc::MS_NODEV);

        let bad = |options: Vec<String>, driver_options: Vec<String>, field: &str| {
            let s = Storage {
                options,
                driver_options,
                ..storage("overlayfs", "overlay", "overlay", &[])
            };
            let e = overlay(&s, &target, j, "storages[0]").unwrap_err();
            assert!(e.to_string().starts_with(field), "{field}: {e}");
        };
        bad(vec!["lowerdir=/etc".into()], vec![], "storages[0].options");
        bad(
            vec![format!("lowerdir={}/../../etc", j.display())],
            vec![],
            "storages[0].options",
        );
        bad(
            vec![
                format!("lowerdir={}", j.join("l1").display()),
                format!("upperdir={}", j.join("u").display()),
            ],
            vec![],
            "storages[0].options",
        );
        bad(
            vec![
                format!("lowerdir={}", j.join("l1").display()),
                "uid=0".into(),
            ],
            vec![],
            "storages[0].options",
        );
        bad(
            vec![format!("lowerdir={}", j.join("l1").display())],
            vec![format!("{OVERLAY_CREATE_DIR}=/etc/x")],
            "storages[0].driver_options",
        );
        bad(vec![], vec![], "storages[0].options");
        // A symlink inside the jail that leads out is judged by where it leads.
        std::os::unix::fs::symlink("/etc", j.join("sneaky")).unwrap();
        bad(
            vec![format!("lowerdir={}", j.join("sneaky").display())],
            vec![],
            "storages[0].options",
        );
    }

    #[test]
    fn fs_group_changes_the_tree_but_not_what_symlinks_point_to() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f"), "x").unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "y").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let gid = unsafe { libc::getegid() };
        let group = FSGroup {
            group_id: gid,
            ..Default::default()
        };
        apply_fs_group(&root, &group, false).unwrap();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&root.join("sub")) & 0o2070, 0o2070);
        assert_eq!(mode(&root.join("sub/f")) & 0o060, 0o060);
        assert_eq!(
            mode(&outside),
            0o600,
            "a symlink's target is not the volume's"
        );
        assert_eq!(std::fs::metadata(root.join("sub/f")).unwrap().gid(), gid);
    }
}
