//! `CopyFile`: the host writes files into the sandbox's shared directory (resolv.conf,
//! hostname, config maps...), in chunks.
//!
//! Every component is opened relative to the previous one with `O_NOFOLLOW`, so no symlink
//! (even one placed by an earlier CopyFile) is followed on the way in; symlinks may be created,
//! but only with relative targets that have no `..`, so they never lead outside. A regular file
//! is written to a temporary sibling and renamed into place when its last chunk arrives.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use vigil_protos::agent::CopyFileRequest;

use crate::beneath;
use crate::confine::Owned;
use crate::error::{Result, RuntimeError};

const TMP_SUFFIX: &str = ".vigil-copy";

fn cstr(s: &[u8], field: &str) -> Result<CString> {
    CString::new(s).map_err(|_| RuntimeError::invalid(field, "contains a NUL byte"))
}

fn errno(what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::internal(what, std::io::Error::last_os_error())
}

fn chown_at(dir: BorrowedFd, name: &CString, uid: i32, gid: i32) -> Result<()> {
    // SAFETY: plain syscall; -1 leaves an id unchanged.
    let rc = unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid as libc::uid_t,
            gid as libc::gid_t,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(errno(format!("chown {name:?}")));
    }
    Ok(())
}

/// Writes what `req` carries under the shared directory; `req.path` must be an absolute path
/// inside it. Unless `keep_setuid`, the setuid, setgid and sticky bits of `file_mode` and
/// `dir_mode` are cleared.
pub fn copy_file(shared: &Owned, req: &CopyFileRequest, keep_setuid: bool) -> Result<()> {
    let path = Path::new(&req.path);
    if !path.is_absolute() {
        return Err(RuntimeError::invalid(
            "path",
            format!("{:?} is not absolute", req.path),
        ));
    }
    // Path components: "//" and "." are nothing, as in the path the policy was shown.
    let rel = path.strip_prefix(shared.path()).map_err(|_| {
        RuntimeError::invalid(
            "path",
            format!(
                "{:?} is outside the shared directory {}",
                req.path,
                shared.path().display()
            ),
        )
    })?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::CurDir => {}
            _ => {
                return Err(RuntimeError::invalid(
                    "path",
                    format!("{:?} contains \"..\"", req.path),
                ))
            }
        }
    }
    let Some((name, parents)) = parts.split_last() else {
        return Err(RuntimeError::invalid(
            "path",
            "names the shared directory itself",
        ));
    };
    if name.as_bytes().ends_with(TMP_SUFFIX.as_bytes()) {
        return Err(RuntimeError::invalid(
            "path",
            format!("names ending in {TMP_SUFFIX} are reserved"),
        ));
    }
    if req.offset < 0 {
        return Err(RuntimeError::invalid(
            "offset",
            format!("{} is negative", req.offset),
        ));
    }
    if req.file_size < 0 {
        return Err(RuntimeError::invalid(
            "file_size",
            format!("{} is negative", req.file_size),
        ));
    }
    let file_type = req.file_mode & libc::S_IFMT;
    let special = if keep_setuid { 0o7777 } else { 0o777 };
    let perm = req.file_mode & special;
    let dir_mode = req.dir_mode & special;

    // Parents are made through descriptors, never following a symlink (see `beneath`).
    let parent_rel: std::path::PathBuf = parents.iter().collect();
    let dir = beneath::mkdir_all(shared.fd(), &parent_rel, dir_mode, &mut |made| {
        beneath::chown(made, req.uid, req.gid)
    })
    .map_err(|e| {
        if beneath::is_refusal(&e) {
            RuntimeError::invalid(
                "path",
                format!(
                    "{:?}: a component on the way is not a directory (symlinks are not followed)",
                    req.path
                ),
            )
        } else {
            RuntimeError::internal(format!("creating the parents of {:?}", req.path), e)
        }
    })?;
    let cname = cstr(name.as_bytes(), "path")?;

    match file_type {
        libc::S_IFDIR => {
            // SAFETY: plain syscall on our descriptor.
            if unsafe { libc::mkdirat(dir.as_raw_fd(), cname.as_ptr(), perm) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(RuntimeError::internal(
                        format!("creating {:?}", req.path),
                        e,
                    ));
                }
            }
            let not_dir = || {
                RuntimeError::invalid(
                    "path",
                    format!("{:?} exists and is not a directory", req.path),
                )
            };
            let made = beneath::open(
                dir.as_fd(),
                Path::new(std::ffi::OsStr::from_bytes(name.as_bytes())),
            )
            .map_err(|_| not_dir())?;
            if !beneath::fstat(made.as_fd()).is_ok_and(|st| beneath::is_dir(&st)) {
                return Err(not_dir());
            }
            // Mode and owner through the descriptor: a symlink swapped in is never followed.
            beneath::chown(made.as_fd(), req.uid, req.gid)
                .and_then(|()| beneath::chmod(made.as_fd(), perm))
                .map_err(|e| RuntimeError::internal(format!("{:?}", req.path), e))
        }
        libc::S_IFLNK => {
            let target = Path::new(std::ffi::OsStr::from_bytes(&req.data));
            if req.data.is_empty() || target.is_absolute() {
                return Err(RuntimeError::invalid(
                    "data",
                    format!("symlink target {target:?} must be a non-empty relative path"),
                ));
            }
            if target.components().any(|c| c == Component::ParentDir) {
                return Err(RuntimeError::invalid(
                    "data",
                    format!("symlink target {target:?} contains \"..\""),
                ));
            }
            let ctarget = cstr(&req.data, "data")?;
            let tmp = cstr(&[name.as_bytes(), TMP_SUFFIX.as_bytes()].concat(), "path")?;
            // SAFETY: plain syscalls on our descriptor.
            unsafe { libc::unlinkat(dir.as_raw_fd(), tmp.as_ptr(), 0) };
            if unsafe { libc::symlinkat(ctarget.as_ptr(), dir.as_raw_fd(), tmp.as_ptr()) } != 0 {
                return Err(errno(format!("creating symlink {:?}", req.path)));
            }
            chown_at(dir.as_fd(), &tmp, req.uid, req.gid)?;
            rename_into_place(&dir, &tmp, &cname, &req.path)
        }
        libc::S_IFREG => {
            let end = req
                .offset
                .checked_add(req.data.len() as i64)
                .filter(|end| *end <= req.file_size)
                .ok_or_else(|| {
                    RuntimeError::invalid(
                        "offset",
                        format!(
                            "{} + {} data bytes is past file_size {}",
                            req.offset,
                            req.data.len(),
                            req.file_size
                        ),
                    )
                })?;
            let tmp = cstr(&[name.as_bytes(), TMP_SUFFIX.as_bytes()].concat(), "path")?;
            let mut flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            if req.offset == 0 {
                // A first chunk starts the file afresh (a retried copy must not keep old bytes).
                flags |= libc::O_TRUNC;
            }
            // SAFETY: plain syscall.
            let fd = unsafe { libc::openat(dir.as_raw_fd(), tmp.as_ptr(), flags, perm) };
            if fd < 0 {
                return Err(errno(format!("opening {:?}", req.path)));
            }
            // SAFETY: fresh descriptor.
            let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            std::os::unix::fs::FileExt::write_all_at(&file, &req.data, req.offset as u64)
                .map_err(|e| RuntimeError::internal(format!("writing {:?}", req.path), e))?;
            if end < req.file_size {
                return Ok(()); // more chunks to come
            }
            file.set_len(req.file_size as u64)
                .map_err(|e| RuntimeError::internal(format!("writing {:?}", req.path), e))?;
            // Owner first: chown clears setuid and setgid, which the mode may keep.
            chown_at(dir.as_fd(), &tmp, req.uid, req.gid)?;
            // SAFETY: plain syscall on our descriptor.
            if unsafe { libc::fchmod(file.as_raw_fd(), perm) } != 0 {
                return Err(errno(format!("chmod {:?}", req.path)));
            }
            rename_into_place(&dir, &tmp, &cname, &req.path)
        }
        0 => Err(RuntimeError::invalid(
            "file_mode",
            format!(
                "{:#o} has no file type bits (S_IFREG, S_IFDIR or S_IFLNK)",
                req.file_mode
            ),
        )),
        other => Err(RuntimeError::invalid(
            "file_mode",
            format!("file type {other:#o} is not a regular file, directory or symlink"),
        )),
    }
}

fn rename_into_place(dir: &OwnedFd, from: &CString, to: &CString, path: &str) -> Result<()> {
    // SAFETY: plain syscall; renameat replaces `to` itself, never what a symlink there names.
    if unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) } != 0
    {
        return Err(errno(format!("renaming into {path:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn copy(shared: &Path, r: &CopyFileRequest) -> Result<()> {
        copy_with(shared, r, false)
    }

    fn copy_with(shared: &Path, r: &CopyFileRequest, keep_setuid: bool) -> Result<()> {
        std::fs::create_dir_all(shared).unwrap();
        copy_file(
            &Owned::open_dir(shared.to_path_buf()).unwrap(),
            r,
            keep_setuid,
        )
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn req(path: &Path, mode: u32, data: &[u8]) -> CopyFileRequest {
        CopyFileRequest {
            path: path.to_string_lossy().into_owned(),
            file_size: data.len() as i64,
            file_mode: mode,
            dir_mode: 0o750,
            uid: 0,
            gid: 0,
            offset: 0,
            data: data.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn regular_file_in_chunks_with_parents_and_modes() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("shared");
        let target = shared.join("a/b/file");
        let mut r = req(&target, libc::S_IFREG | 0o640, b"hello ");
        r.file_size = 11;
        copy(&shared, &r).unwrap();
        assert!(!target.exists(), "incomplete file must not be visible");
        r.offset = 6;
        r.data = b"world".to_vec();
        copy(&shared, &r).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"hello world");
        assert_eq!(
            std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        assert_eq!(
            std::fs::metadata(shared.join("a"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o750
        );
        assert_eq!(std::fs::metadata(&target).unwrap().uid(), 0);
    }

    #[test]
    fn refusals_name_the_field() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        let field = |r: &CopyFileRequest| match copy(&shared, r) {
            Err(RuntimeError::InvalidArgument { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(
            field(&req(&t.path().join("outside"), libc::S_IFREG | 0o644, b"x")),
            "path"
        );
        assert_eq!(
            field(&req(&shared.join("a/../../x"), libc::S_IFREG | 0o644, b"x")),
            "path"
        );
        assert_eq!(
            field(&req(Path::new("relative"), libc::S_IFREG | 0o644, b"x")),
            "path"
        );
        assert_eq!(
            field(&req(&shared.join("l1"), libc::S_IFLNK | 0o777, b"..")),
            "data"
        );
        assert_eq!(
            field(&req(&shared.join("l2"), libc::S_IFLNK | 0o777, b"/etc")),
            "data"
        );
        assert_eq!(
            field(&req(
                &shared.join("l3"),
                libc::S_IFLNK | 0o777,
                b"a/../../x"
            )),
            "data"
        );
        assert_eq!(
            field(&req(&shared.join("fifo"), libc::S_IFIFO | 0o644, b"")),
            "file_mode"
        );
        // No file type bits: the policy sees "Unknown"; nothing is written as if regular.
        assert_eq!(
            field(&req(&shared.join("untyped"), 0o644, b"x")),
            "file_mode"
        );
        let mut r = req(&shared.join("f"), libc::S_IFREG | 0o644, b"abc");
        r.file_size = 2;
        assert_eq!(field(&r), "offset");
        // Nothing was created by any refusal.
        assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0);
        assert!(!t.path().join("outside").exists());
    }

    #[test]
    fn symlinks_are_created_but_never_followed_on_the_way_in() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("shared");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(shared.join("real")).unwrap();
        copy(
            &shared,
            &req(&shared.join("link"), libc::S_IFLNK | 0o777, b"real"),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_link(shared.join("link")).unwrap(),
            Path::new("real")
        );
        // Even an allowed, inside-pointing link is not a path component to write through.
        match copy(
            &shared,
            &req(&shared.join("link/f"), libc::S_IFREG | 0o644, b"x"),
        ) {
            Err(RuntimeError::InvalidArgument { field, .. }) => assert_eq!(field, "path"),
            other => panic!("{other:?}"),
        }
        // A symlink planted by someone else that points outside is not followed either.
        std::os::unix::fs::symlink(&outside, shared.join("evil")).unwrap();
        assert!(copy(
            &shared,
            &req(&shared.join("evil/f"), libc::S_IFREG | 0o644, b"x")
        )
        .is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // Writing a file over a symlink replaces the link, not its target.
        std::fs::write(outside.join("victim"), b"keep").unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), shared.join("over")).unwrap();
        copy(
            &shared,
            &req(&shared.join("over"), libc::S_IFREG | 0o644, b"new"),
        )
        .unwrap();
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
        assert_eq!(std::fs::read(shared.join("over")).unwrap(), b"new");
    }

    #[test]
    fn directories() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("shared");
        copy(
            &shared,
            &req(&shared.join("d/e"), libc::S_IFDIR | 0o711, b""),
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(shared.join("d/e"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o711
        );
        // Again: idempotent.
        copy(
            &shared,
            &req(&shared.join("d/e"), libc::S_IFDIR | 0o700, b""),
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(shared.join("d/e"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o700
        );
    }

    #[test]
    fn setuid_setgid_and_sticky_are_cleared_unless_allowed() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("shared");
        let mut r = req(&shared.join("d/suid"), libc::S_IFREG | 0o4755, b"#!");
        r.dir_mode = 0o3775;
        copy(&shared, &r).unwrap();
        assert_eq!(mode_of(&shared.join("d/suid")), 0o755);
        assert_eq!(mode_of(&shared.join("d")), 0o775);
        copy(
            &shared,
            &req(&shared.join("sticky"), libc::S_IFDIR | 0o1777, b""),
        )
        .unwrap();
        assert_eq!(mode_of(&shared.join("sticky")), 0o777);
        // Allowed by the configuration: kept as asked.
        let mut r = req(&shared.join("e/sgid"), libc::S_IFREG | 0o2755, b"#!");
        r.dir_mode = 0o2775;
        copy_with(&shared, &r, true).unwrap();
        assert_eq!(mode_of(&shared.join("e/sgid")), 0o2755);
        assert_eq!(mode_of(&shared.join("e")), 0o2775);
    }

    #[test]
    fn dot_and_double_slash_name_the_same_file_as_the_normalised_path() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("shared");
        let odd = format!("{}//a/./b//f", shared.display());
        let mut r = req(Path::new(&odd), libc::S_IFREG | 0o644, b"x");
        r.path = odd;
        copy(&shared, &r).unwrap();
        assert_eq!(std::fs::read(shared.join("a/b/f")).unwrap(), b"x");
        assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 1);
    }
}
