//! The directories a sandbox owns, and how a path from a request is found in one of them.
//!
//! Confinement is "the path lies beneath a directory this sandbox owns", checked by opening it
//! from that directory's descriptor (see `beneath`), never by comparing strings and using the
//! string later. Which directories a field may name is decided by the caller (a bind source,
//! a rootfs, a storage mount point each get their own list), so a change of layout swaps the
//! roots without touching the checks.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use crate::beneath;
use crate::error::{Result, RuntimeError};

/// A directory (or file) the sandbox owns, held open so that lookups start from it.
#[derive(Debug)]
pub(crate) struct Owned {
    path: PathBuf,
    fd: OwnedFd,
}

impl Owned {
    /// Opens a directory the agent made (its path is the agent's own choice, not a request's).
    pub(crate) fn open_dir(path: PathBuf) -> Result<Owned> {
        let fd = beneath::open_dir(&path).map_err(|e| RuntimeError::internal(path.display(), e))?;
        Ok(Owned { path, fd })
    }

    /// An owned object already open (a mount's root, a file the agent wrote).
    pub(crate) fn new(path: PathBuf, fd: OwnedFd) -> Owned {
        Owned { path, fd }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The same object with a descriptor of its own.
    pub(crate) fn try_clone(&self) -> Result<Owned> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| RuntimeError::internal(self.path.display(), e))?;
        Ok(Owned::new(self.path.clone(), fd))
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Refuses what no request path may contain: a relative path where an absolute one is due, `..`.
pub(crate) fn check_lexically<'a>(given: &'a str, field: &str) -> Result<&'a Path> {
    let p = Path::new(given);
    if given.is_empty() {
        return Err(RuntimeError::invalid(field, "empty"));
    }
    if given.contains('\0') {
        return Err(RuntimeError::invalid(field, "contains a NUL byte"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(RuntimeError::invalid(
            field,
            format!("{given:?} contains \"..\""),
        ));
    }
    Ok(p)
}

/// Which of `roots` holds `given` (the deepest one), and the rest of the path below it.
/// `given` must be absolute and free of `..`; `what` names the roots in the refusal.
pub(crate) fn locate<'a>(
    roots: &[&'a Owned],
    given: &str,
    field: &str,
    what: &str,
) -> Result<(&'a Owned, PathBuf)> {
    let p = check_lexically(given, field)?;
    if !p.is_absolute() {
        return Err(RuntimeError::invalid(
            field,
            format!("{given:?} is not an absolute path"),
        ));
    }
    roots
        .iter()
        .filter_map(|r| p.strip_prefix(&r.path).ok().map(|rest| (*r, rest)))
        .max_by_key(|(r, _)| r.path.components().count())
        .map(|(r, rest)| (r, rest.to_path_buf()))
        .ok_or_else(|| {
            let names: Vec<String> = roots.iter().map(|r| r.path.display().to_string()).collect();
            RuntimeError::invalid(
                field,
                format!(
                    "{given:?} is not beneath {what} (the sandbox's {})",
                    names.join(", ")
                ),
            )
        })
}

/// Opens `given` beneath the root of `roots` that holds it (see [`locate`]), as an `O_PATH`
/// descriptor, refusing symlinks and non-directories on the way.
pub(crate) fn open_in(roots: &[&Owned], given: &str, field: &str, what: &str) -> Result<OwnedFd> {
    let (root, rest) = locate(roots, given, field, what)?;
    beneath::open(root.fd(), &rest).map_err(|e| lookup_error(e, given, root, field))
}

/// The refusal (or internal error) for a failed lookup of `given` beneath `root`.
pub(crate) fn lookup_error(
    e: std::io::Error,
    given: &str,
    root: &Owned,
    field: &str,
) -> RuntimeError {
    if beneath::is_refusal(&e) {
        RuntimeError::invalid(
            field,
            format!(
                "{given:?}: a symlink or a non-directory on the way beneath {} (symlinks are not followed)",
                root.path.display()
            ),
        )
    } else if e.raw_os_error() == Some(libc::ENOENT) {
        RuntimeError::invalid(field, format!("{given:?} does not exist"))
    } else {
        RuntimeError::internal(given, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deepest_root_holding_the_path_is_used_and_outsiders_are_named() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("sb/shared/vol")).unwrap();
        let sb = Owned::open_dir(t.path().join("sb")).unwrap();
        let shared = Owned::open_dir(t.path().join("sb/shared")).unwrap();
        let roots = [&sb, &shared];
        let given = format!("{}/sb/shared//./vol", t.path().display());
        let (root, rest) = locate(&roots, &given, "f", "x").unwrap();
        assert_eq!(root.path(), shared.path());
        assert_eq!(rest, Path::new("vol"));
        assert!(open_in(&roots, &given, "f", "x").is_ok());
        for bad in [
            "/etc",
            "relative",
            "",
            &format!("{}/sb/../sb", t.path().display()),
        ] {
            match locate(&roots, bad, "OCI.Mounts[0].source", "bind sources") {
                Err(RuntimeError::InvalidArgument { field, .. }) => {
                    assert_eq!(field, "OCI.Mounts[0].source")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        // A sibling whose name merely starts like a root is not beneath it.
        std::fs::create_dir_all(t.path().join("sb/shared-not")).unwrap();
        let only_shared = [&shared];
        let sibling = format!("{}/sb/shared-not", t.path().display());
        assert!(locate(&only_shared, &sibling, "f", "x").is_err());
    }
}
