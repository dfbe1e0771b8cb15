//! GetDiagnosticData's `termination_log`: what a container wrote to its Kubernetes termination
//! message file, read as Kata's agent reads it.
//!
//! The file is found from the container's spec: the annotation
//! `io.kubernetes.container.terminationMessagePath` names the destination inside the container,
//! and the mount with that destination names the guest file. Both come from the host, so the
//! guest file must lie in the sandbox's shared directory (where Kata's runtime puts it), and it
//! is opened beneath it without following symlinks (`confine`): the host cannot read other
//! guest files this way.
//! At most [`MAX_TERMINATION_MESSAGE`] bytes are read (Kubernetes' own limit).

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::confine::{locate, lookup_error, Owned};
use crate::error::{Result, RuntimeError};

/// Kubernetes caps a termination message at 4 KiB.
pub const MAX_TERMINATION_MESSAGE: u64 = 4096;
const ANNOTATION: &str = "io.kubernetes.container.terminationMessagePath";

/// The termination message of the container whose bundle is `bundle`; empty if the file does
/// not exist yet.
pub(crate) fn termination_log(bundle: &Path, shared: &Owned) -> Result<String> {
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
    // Beneath the shared directory only, never through a symlink: the host names the file.
    let (root, rest) = locate(
        &[shared],
        source,
        "container_id",
        "the sandbox's shared directory",
    )?;
    let fd = match crate::beneath::open(root.fd(), &rest) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(String::new()),
        Err(e) => return Err(lookup_error(e, source, root, "container_id")),
    };
    let st = crate::beneath::fstat(fd.as_fd()).map_err(|e| RuntimeError::internal(source, e))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(RuntimeError::invalid(
            "container_id",
            format!("{source} is not a regular file"),
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(crate::beneath::proc_path(fd.as_fd()))
        .map_err(|e| RuntimeError::internal(format!("opening {source}"), e))?;
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
        let shared_path = dir.path().join("shared");
        std::fs::create_dir(&shared_path).unwrap();
        let shared = Owned::open_dir(shared_path.clone()).unwrap();
        let log = shared_path.join("c1-termination-log");
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
        std::os::unix::fs::symlink(&secret, shared_path.join("link")).unwrap();
        let b = bundle(dir.path(), shared_path.join("link").to_str().unwrap());
        assert!(termination_log(&b, &shared).is_err());
        let b = bundle(dir.path(), &format!("{}/../secret", shared_path.display()));
        assert!(termination_log(&b, &shared).is_err());
    }
}
