//! The `image_guest_pull` storage driver, as Kata's runtime sends it for confidential pods:
//! `{driver: "image_guest_pull", source: <image reference> | "pause", fstype: "overlay",
//! mount_point: <the container's rootfs>, driver_options: ["image_guest_pull=" + JSON
//! {"metadata": {<container annotations>}}]}`.
//!
//! The sandbox (pause) container's image is never pulled: its program comes from the pause
//! bundle carried in the guest image (Kata's `/pause_bundle`: `config.json` and `rootfs/`),
//! and its process is the bundle's, as Kata's agent does. Every other image is pulled by
//! [`vigil_image::ImageService`] under the tenant's image policy and mounted at the mount
//! point; the image config supplies the process defaults the host left empty.
//!
//! A driver on the storage registry like the others: the mount point is the checked one it is
//! given, made and opened beneath the sandbox directory without following symlinks, and the
//! rootfs goes with the last container holding it. The pull is asynchronous; `add` runs on a
//! blocking thread of the agent's runtime and waits for it there.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vigil_image::ImageService;
use vigil_protos::{agent::Storage, oci};

use crate::beneath;
use crate::confine::Owned;
use crate::error::{Result, RuntimeError};
use crate::storage::{Added, MountPoint, ProcessDefaults, StorageContext, StorageDriver, Undo};

pub(crate) const DRIVER: &str = "image_guest_pull";
/// Annotations that mark the sandbox container (containerd's, CRI-O's), as Kata reads them.
const CONTAINER_TYPE_KEYS: [&str; 2] = [
    "io.kubernetes.cri.container-type",
    "io.kubernetes.cri-o.ContainerType",
];
/// The largest pause program copied out of the bundle.
const MAX_PAUSE_PROGRAM: u64 = 64 << 20;

/// What guest pull needs: the image service and where the pause bundle is.
#[derive(Clone)]
pub struct GuestPull {
    pub images: Arc<ImageService>,
    /// The pause bundle in the guest image (`config.json`, `rootfs/`).
    pub pause_bundle: PathBuf,
}

/// The driver, registered by `Sandbox::with_guest_pull`.
pub(crate) struct GuestPullDriver(pub(crate) GuestPull);

#[derive(serde::Deserialize)]
struct PullOptions {
    #[serde(default)]
    metadata: HashMap<String, String>,
}

impl StorageDriver for GuestPullDriver {
    fn driver_types(&self) -> &'static [&'static str] {
        &[DRIVER]
    }

    fn add(&self, s: &Storage, at: &MountPoint, ctx: &StorageContext) -> Result<Added> {
        let field = ctx.field;
        if s.fstype != "overlay" {
            return Err(RuntimeError::invalid(
                format!("{field}.fstype"),
                format!("{:?}: image_guest_pull storages are \"overlay\"", s.fstype),
            ));
        }
        if s.source.is_empty() {
            return Err(RuntimeError::invalid(
                format!("{field}.source"),
                "empty: the image reference",
            ));
        }
        let options = pull_options(s, field)?;
        let is_sandbox = CONTAINER_TYPE_KEYS
            .iter()
            .any(|k| options.metadata.get(*k).is_some_and(|v| v == "sandbox"));
        let dir = at.plain_dir()?;
        if !is_empty(dir.as_fd()).map_err(|e| RuntimeError::internal(at.shown.display(), e))? {
            return Err(RuntimeError::invalid(
                &at.field,
                format!("{} is not empty", at.shown.display()),
            ));
        }
        let entry = mount_point_entry(at)?;
        let made = if is_sandbox {
            pause(&self.0.pause_bundle, at, dir)
        } else {
            pull(&self.0.images, s, at, dir, field)
        };
        // The mount point goes with what was made there, or at once if nothing was.
        match made {
            Ok(mut added) => {
                let contents = added.undo.take();
                added.undo = Some(Undo::new(move || {
                    contents.map_or(Ok(()), Undo::run)?;
                    entry.remove()
                }));
                Ok(added)
            }
            Err(e) => {
                if let Err(problem) = entry.remove() {
                    tracing::warn!(%problem, "after a refused guest pull");
                }
                Err(e)
            }
        }
    }
}

fn pull_options(s: &Storage, field: &str) -> Result<PullOptions> {
    let options = s
        .driver_options
        .iter()
        .find_map(|o| o.strip_prefix("image_guest_pull="))
        .ok_or_else(|| {
            RuntimeError::invalid(
                format!("{field}.driver_options"),
                "no image_guest_pull=<JSON> entry (the image information)",
            )
        })?;
    serde_json::from_str(options).map_err(|e| {
        RuntimeError::invalid(
            format!("{field}.driver_options"),
            format!("image_guest_pull JSON: {e}"),
        )
    })
}

/// Pulls `s.source` and mounts it on the directory `dir` (the mount point).
fn pull(
    images: &ImageService,
    s: &Storage,
    at: &MountPoint,
    dir: OwnedFd,
    field: &str,
) -> Result<Added> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| RuntimeError::Internal("guest pull needs the agent's async runtime".into()))?;
    let image = runtime
        .block_on(images.pull(&s.source))
        .map_err(|e| pull_error(e, field))?;
    let covered = dir.try_clone().map_err(|e| at.error(e))?;
    let rootfs = runtime
        .block_on(images.mount(&image, dir, &at.shown))
        .map_err(|e| pull_error(e, field))?;
    // The rootfs as the container will see it, opened by name again: the overlay on top of
    // the mount point (or, copied, the mount point itself); anything else means the mount
    // point was moved meanwhile.
    let reopened = beneath::open(at.root.fd(), &at.rel).and_then(|fd| {
        let (now, before) = (
            beneath::fstat(fd.as_fd())?,
            beneath::fstat(covered.as_fd())?,
        );
        let same = (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino);
        Ok((fd, same != rootfs.is_overlay()))
    });
    let root = match reopened {
        Ok((fd, true)) => fd,
        other => {
            let _ = rootfs.remove();
            return Err(match other {
                Err(e) => at.error(e),
                Ok(_) => RuntimeError::Internal(format!(
                    "the mount point {} changed while the image was being mounted",
                    at.shown.display()
                )),
            });
        }
    };
    tracing::info!(image = %image.reference, digest = %image.digest, rootfs = %at.shown.display(),
        overlay = rootfs.is_overlay(), "guest-pulled image mounted");
    let image_root = Arc::new(root.try_clone().map_err(|e| at.error(e))?);
    let (config, reference) = (image.config, image.reference.to_string());
    let mut added = Added::plain(Owned::new(at.shown.clone(), root));
    added.process = Some(ProcessDefaults::new(move |p| {
        vigil_image::apply_image_defaults(p, &config, image_root.as_fd())
            .map_err(|e| RuntimeError::invalid("OCI.Process", format!("{e} (image {reference})")))
    }));
    added.undo = Some(Undo::new(move || {
        rootfs.remove().map_err(|e| e.to_string())
    }));
    Ok(added)
}

fn pull_error(e: vigil_image::Error, field: &str) -> RuntimeError {
    use vigil_image::Error as E;
    let text = e.to_string();
    match e {
        E::Reference { reason, .. } => RuntimeError::invalid(format!("{field}.source"), reason),
        E::Denied { .. } => RuntimeError::PermissionDenied(text),
        E::Policy(_) => RuntimeError::FailedPrecondition(text),
        E::NotFound { .. } => RuntimeError::NotFound {
            kind: "image",
            id: text,
        },
        E::Registry { .. } | E::Invalid { .. } | E::Limit { .. } | E::Io { .. } => {
            RuntimeError::Internal(text)
        }
    }
}

/// The pause container: its program copied from the bundle into the mount point `dir`, its
/// process the bundle's.
fn pause(bundle: &Path, at: &MountPoint, dir: OwnedFd) -> Result<Added> {
    let config_path = bundle.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        RuntimeError::FailedPrecondition(format!(
            "the pause bundle {} is not in the guest image: {e}",
            config_path.display()
        ))
    })?;
    let spec: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| RuntimeError::internal(config_path.display(), e))?;
    let p = &spec["process"];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let args = strings(&p["args"]);
    let program = args
        .first()
        .and_then(|a| a.strip_prefix('/'))
        .filter(|a| !a.is_empty() && !a.split('/').any(|c| c == ".." || c == "." || c.is_empty()))
        .ok_or_else(|| {
            RuntimeError::Internal(format!(
                "{}: process.args[0] must be an absolute path to the pause program",
                config_path.display()
            ))
        })?
        .to_string();
    if let Err(e) = copy_program(&bundle.join("rootfs").join(&program), dir.as_fd(), &program) {
        let _ = empty(dir.as_fd());
        return Err(RuntimeError::internal(
            format!("copying the pause program {program}"),
            e,
        ));
    }
    // Kata takes the bundle's process; the host's other settings (capabilities, rlimits,
    // terminal) stay, as the tenant's policy checked them.
    let (env, cwd) = (
        strings(&p["env"]),
        p["cwd"].as_str().unwrap_or("/").to_string(),
    );
    let (uid, gid) = (
        p["user"]["uid"].as_u64().unwrap_or(0) as u32,
        p["user"]["gid"].as_u64().unwrap_or(0) as u32,
    );
    let kept = dir.try_clone().map_err(|e| at.error(e))?;
    let mut added = Added::plain(Owned::new(at.shown.clone(), dir));
    added.process = Some(ProcessDefaults::new(move |process| {
        process.Args = args.clone();
        process.Env = env.clone();
        process.Cwd = cwd.clone();
        process.User = Some(oci::User {
            UID: uid,
            GID: gid,
            ..Default::default()
        })
        .into();
        Ok(())
    }));
    added.undo = Some(Undo::new(move || {
        empty(kept.as_fd()).map_err(|e| format!("emptying the pause rootfs: {e}"))
    }));
    Ok(added)
}

/// Copies the bundle's program `from` to `rel` beneath `dir`, executable, no symlink
/// followed on the way.
fn copy_program(from: &Path, dir: BorrowedFd, rel: &str) -> std::io::Result<()> {
    let mut src = std::fs::File::open(from)?;
    let meta = src.metadata()?;
    if !meta.is_file() || meta.len() > MAX_PAUSE_PROGRAM {
        return Err(std::io::Error::other(
            "not a regular file of at most 64 MiB",
        ));
    }
    let fd = beneath::create_file(dir, Path::new(rel), 0o755)?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .open(beneath::proc_path(fd.as_fd()))?;
    let mut limited = (&mut src).take(MAX_PAUSE_PROGRAM);
    std::io::copy(&mut limited, &mut dst)?;
    beneath::chmod(fd.as_fd(), 0o755)
}

/// Whether the directory `dir` has nothing in it.
fn is_empty(dir: BorrowedFd) -> std::io::Result<bool> {
    Ok(std::fs::read_dir(beneath::proc_path(dir))?.next().is_none())
}

/// Removes everything in the directory `dir` (made by this driver: nothing else writes there
/// before the container runs, and a container's own writes go to its overlay's upper layer).
fn empty(dir: BorrowedFd) -> std::io::Result<()> {
    for e in std::fs::read_dir(beneath::proc_path(dir))? {
        let path = e?.path();
        match std::fs::symlink_metadata(&path)? {
            m if m.is_dir() => std::fs::remove_dir_all(&path)?,
            _ => std::fs::remove_file(&path)?,
        }
    }
    Ok(())
}

/// The mount point's directory entry, to remove the directory once its rootfs is gone.
struct MountPointEntry {
    parent: OwnedFd,
    name: CString,
    shown: PathBuf,
}

fn mount_point_entry(at: &MountPoint) -> Result<MountPointEntry> {
    let name = at
        .rel
        .file_name()
        .and_then(|n| CString::new(n.as_bytes()).ok())
        .ok_or_else(|| RuntimeError::invalid(&at.field, "names no directory"))?;
    let parent_rel = at.rel.parent().unwrap_or(Path::new(""));
    let parent = beneath::open(at.root.fd(), parent_rel).map_err(|e| at.error(e))?;
    Ok(MountPointEntry {
        parent,
        name,
        shown: at.shown.clone(),
    })
}

impl MountPointEntry {
    /// Removes the directory if it is empty.
    fn remove(&self) -> std::result::Result<(), String> {
        // SAFETY: a valid directory descriptor and C string.
        let rc = unsafe {
            libc::unlinkat(
                self.parent.as_raw_fd(),
                self.name.as_ptr(),
                libc::AT_REMOVEDIR,
            )
        };
        let e = std::io::Error::last_os_error();
        if rc == 0 || e.raw_os_error() == Some(libc::ENOENT) {
            Ok(())
        } else {
            Err(format!("removing {}: {e}", self.shown.display()))
        }
    }
}
