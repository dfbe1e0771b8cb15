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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vigil_image::{ImageService, Rootfs};
use vigil_protos::{agent::Storage, oci};

use crate::confine::Owned;
use crate::error::{Result, RuntimeError};
use crate::layout::Layout;

pub const DRIVER: &str = "image_guest_pull";
/// Annotations that mark the sandbox container (containerd's, CRI-O's), as Kata reads them.
const CONTAINER_TYPE_KEYS: [&str; 2] = [
    "io.kubernetes.cri.container-type",
    "io.kubernetes.cri-o.ContainerType",
];

/// What guest pull needs: the image service and where the pause bundle is.
#[derive(Clone)]
pub struct GuestPull {
    pub images: Arc<ImageService>,
    /// The pause bundle in the guest image (`config.json`, `rootfs/`).
    pub pause_bundle: PathBuf,
}

/// A container's root file system from guest pull, removed with the container.
pub(crate) enum PulledRootfs {
    Image(Rootfs),
    /// The pause program copied out of the bundle.
    Pause(PathBuf),
}

impl PulledRootfs {
    pub(crate) fn remove(self) -> std::result::Result<(), String> {
        match self {
            PulledRootfs::Image(r) => r.remove().map_err(|e| e.to_string()),
            PulledRootfs::Pause(dir) => match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("{}: {e}", dir.display())),
            },
        }
    }
}

#[derive(serde::Deserialize)]
struct PullOptions {
    #[serde(default)]
    metadata: HashMap<String, String>,
}

/// Removes guest-pulled root file systems, newest first; returns what failed.
pub(crate) fn remove_all(pulled: &mut Vec<PulledRootfs>) -> Vec<String> {
    let mut errors = Vec::new();
    while let Some(p) = pulled.pop() {
        if let Err(e) = p.remove() {
            errors.push(e);
        }
    }
    errors
}

/// Prepares the rootfs of storage `s` (request field `field`) of `container` and adjusts
/// `process`; returns it and its directory, beneath which the spec's root may then be.
pub(crate) async fn prepare(
    gp: Option<&GuestPull>,
    s: &Storage,
    layout: &Layout,
    container: &str,
    field: &str,
    process: &mut oci::Process,
) -> Result<(PulledRootfs, Owned)> {
    let gp = gp.ok_or_else(|| {
        RuntimeError::invalid(
            format!("{field}.driver"),
            "guest image pull is refused: the agent configuration has no [image] section (set [image] policy)",
        )
    })?;
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
    let options: PullOptions = serde_json::from_str(options).map_err(|e| {
        RuntimeError::invalid(
            format!("{field}.driver_options"),
            format!("image_guest_pull JSON: {e}"),
        )
    })?;
    // The mount point is checked like every storage's: in the sandbox's directories.
    let rel = layout.storage_mount_point(
        &s.mount_point,
        Some(container),
        &format!("{field}.mount_point"),
    )?;
    let target = layout.dir().join(rel);
    let is_sandbox = CONTAINER_TYPE_KEYS
        .iter()
        .any(|k| options.metadata.get(*k).is_some_and(|v| v == "sandbox"));
    let pulled = if is_sandbox {
        PulledRootfs::Pause(pause(&gp.pause_bundle, &target, process)?)
    } else {
        pull(gp, s, field, &target, process).await?
    };
    match Owned::open_dir(target) {
        Ok(root) => Ok((pulled, root)),
        Err(e) => {
            let _ = pulled.remove();
            Err(e)
        }
    }
}

async fn pull(
    gp: &GuestPull,
    s: &Storage,
    field: &str,
    target: &Path,
    process: &mut oci::Process,
) -> Result<PulledRootfs> {
    let image = gp
        .images
        .pull(&s.source)
        .await
        .map_err(|e| pull_error(e, field))?;
    let rootfs = gp
        .images
        .mount(&image, target)
        .await
        .map_err(|e| pull_error(e, field))?;
    if let Err(e) = vigil_image::apply_image_defaults(process, &image.config, target) {
        let _ = rootfs.remove();
        return Err(RuntimeError::invalid(
            "OCI.Process",
            format!("{e} (image {})", image.reference),
        ));
    }
    tracing::info!(image = %image.reference, digest = %image.digest, rootfs = %target.display(), "guest-pulled image mounted");
    Ok(PulledRootfs::Image(rootfs))
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

/// The pause container: its program copied from the bundle into `target`, its process the
/// bundle's.
fn pause(bundle: &Path, target: &Path, process: &mut oci::Process) -> Result<PathBuf> {
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
        .filter(|a| !a.is_empty() && !a.split('/').any(|c| c == ".." || c.is_empty()))
        .ok_or_else(|| {
            RuntimeError::Internal(format!(
                "{}: process.args[0] must be an absolute path to the pause program",
                config_path.display()
            ))
        })?
        .to_string();
    if target.exists()
        && std::fs::read_dir(target)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(RuntimeError::invalid(
            "storages.mount_point",
            format!("{} is not empty", target.display()),
        ));
    }
    let dest = target.join(&program);
    let copy = || -> std::io::Result<()> {
        std::fs::create_dir_all(dest.parent().unwrap_or(target))?;
        std::fs::copy(bundle.join("rootfs").join(&program), &dest)?;
        Ok(())
    };
    if let Err(e) = copy() {
        let _ = std::fs::remove_dir_all(target);
        return Err(RuntimeError::internal(
            format!("copying the pause program {program}"),
            e,
        ));
    }
    // Kata takes the bundle's process; the host's other settings (capabilities, rlimits,
    // terminal) stay, as the tenant's policy checked them.
    process.Args = args;
    process.Env = strings(&p["env"]);
    process.Cwd = p["cwd"].as_str().unwrap_or("/").to_string();
    process.User = Some(oci::User {
        UID: p["user"]["uid"].as_u64().unwrap_or(0) as u32,
        GID: p["user"]["gid"].as_u64().unwrap_or(0) as u32,
        ..Default::default()
    })
    .into();
    Ok(target.to_path_buf())
}
