//! GetDiagnosticData's `termination_log`: what a container wrote to its Kubernetes termination
//! message file, read as Kata's agent reads it.
//!
//! The file is found from the container's spec: the annotation
//! `io.kubernetes.container.terminationMessagePath` names the destination inside the container,
//! and the mount with that destination names the guest file. Both come from the host, so the
//! guest file must lie in the sandbox's shared directory (where Kata's runtime puts it), and it
//! is opened without following symlinks: the host cannot read other guest files this way.
//! At most [`MAX_TERMINATION_MESSAGE`] bytes are read (Kubernetes' own limit).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path};

use crate::error::{Result, RuntimeError};

/// Kubernetes caps a termination message at 4 KiB.
pub const MAX_TERMINATION_MESSAGE: u64 = 4096;
const ANNOTATION: &str = "io.kubernetes.container.terminationMessagePath";

/// The termination message of the container whose bundle is `bundle`; empty if the file does
/// not exist yet.
pub(crate) fn termination_log(bundle: &Path, shared: &Path) -> Result<String> {
    let config = bundle.join("config.json");
    let text = std::fs::read_to_string(&config)
        .map_err(|e| RuntimeError::internal(config.display(), e))?;
    let spec: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| RuntimeError::internal(config.display(), e))?;
    let dest = spec["annotations"][ANNOTATION].as_str().ok_or_else(|| {
        RuntimeError::FailedPrecondition(format!(
            "the container's spec has no {ANNOTATION} annotation"
        ))
    })?;
    let source = spec["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["destination"].as_str() == Some(dest))
        .and_then(|m| m["source"].as_str())
        .ok_or_else(|| {
            RuntimeError::FailedPrecondition(format!("no mount of the container has the destination {dest} (its termination message path)"))
        })?;
    let path = Path::new(source);
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    // Resolved through the real path of its parent, so a symlinked directory cannot lead out.
    let inside = plain
        && path
            .parent()
            .and_then(|p| std::fs::canonicalize(p).ok())
            .zip(std::fs::canonicalize(shared).ok())
            .is_some_and(|(parent, shared)| parent.starts_with(shared));
    if !inside {
        return Err(RuntimeError::invalid(
            "container_id",
            format!(
                "the termination message file {source} is not in the sandbox's shared directory"
            ),
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(RuntimeError::internal(format!("opening {source}"), e)),
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(RuntimeError::invalid(
            "container_id",
            format!("{source} is not a regular file"),
        ));
    }
    let mut buf = Vec::new();
    file.take(MAX_TERMINATION_MESSAGE)
        .read_to_end(&mut buf)
        .map_err(|e| RuntimeError::internal(format!("reading {source}"), e))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(dir: &Path, source: &str) -> std::path::PathBuf {
        let b = dir.join("bundle");
        std::fs::create_dir_all(&b).unwrap();
        let spec = serde_json::json!({
            "annotations": {ANNOTATION: "/dev/termination-log"},
            "mounts": [{"destination": "/dev/termination-log", "source": source, "type": "bind"}],
        });
        std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
        b
    }

    #[test]
    fn the_message_is_read_from_the_shared_dir_only_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        let log = shared.join("c1-termination-log");
        let b = bundle(dir.path(), log.to_str().unwrap());
        assert_eq!(termination_log(&b, &shared).unwrap(), "");
        std::fs::write(&log, "x".repeat(5000)).unwrap();
        assert_eq!(termination_log(&b, &shared).unwrap().len(), 4096);

        // Elsewhere in the guest: refused, whether named directly or through a symlink.
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "key").unwrap();
        let b = bundle(dir.path(), secret.to_str().unwrap());
        assert!(matches!(
            termination_log(&b, &shared),
            Err(RuntimeError::InvalidArgument { .. })
        ));
        std::os::unix::fs::symlink(&secret, shared.join("link")).unwrap();
        let b = bundle(dir.path(), shared.join("link").to_str().unwrap());
        assert!(termination_log(&b, &shared).is_err());
        let b = bundle(dir.path(), &format!("{}/../secret", shared.display()));
        assert!(termination_log(&b, &shared).is_err());
    }
}
