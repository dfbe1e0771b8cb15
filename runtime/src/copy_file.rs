//! `CopyFile`: the host writes files into the sandbox's shared directory (resolv.conf,
//! hostname, config maps...), in chunks.
//!
//! Every component is opened relative to the previous one with `O_NOFOLLOW`, so no symlink
//! (even one placed by an earlier CopyFile) is followed on the way in; symlinks may be created,
//! but only with relative targets that have no `..`, so they never lead outside. A regular file
//! is written to a temporary sibling and renamed into place when its last chunk arrives.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use vigil_protos::agent::CopyFileRequest;

use crate::error::{Result, RuntimeError};

const TMP_SUFFIX: &str = ".vigil-copy";

fn cstr(s: &[u8], field: &str) -> Result<CString> {
    CString::new(s).map_err(|_| RuntimeError::invalid(field, "contains a NUL byte"))
}

fn errno(what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::internal(what, std::io::Error::last_os_error())
}

fn open_dir_at(dir: &OwnedFd, name: &CString) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall on a descriptor we own and a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn chown_at(dir: &OwnedFd, name: &CString, uid: i32, gid: i32) -> Result<()> {
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

/// Writes what `req` carries under `shared_dir`; `req.path` must be an absolute path inside it.
pub fn copy_file(shared_dir: &Path, req: &CopyFileRequest) -> Result<()> {
    let path = Path::new(&req.path);
    if !path.is_absolute() {
        return Err(RuntimeError::invalid(
            "path",
            format!("{:?} is not absolute", req.path),
        ));
    }
    let rel = path.strip_prefix(shared_dir).map_err(|_| {
        RuntimeError::invalid(
            "path",
            format!(
                "{:?} is outside the shared directory {}",
                req.path,
                shared_dir.display()
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
    let perm = req.file_mode & 0o7777;

    std::fs::create_dir_all(shared_dir)
        .map_err(|e| RuntimeError::internal(shared_dir.display(), e))?;
    let root = cstr(shared_dir.as_os_str().as_bytes(), "path")?;
    // SAFETY: plain open of our own directory.
    let fd = unsafe {
        libc::open(
            root.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(errno(shared_dir.display()));
    }
    // SAFETY: fresh descriptor.
    let mut dir = unsafe { OwnedFd::from_raw_fd(fd) };

    for p in parents {
        let c = cstr(p.as_bytes(), "path")?;
        dir = match open_dir_at(&dir, &c) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // SAFETY: plain syscall.
                if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), req.dir_mode & 0o7777) } != 0
                {
                    return Err(errno(format!("creating {p:?}")));
                }
                // mkdir's mode is filtered by the umask; the request's mode is exact.
                // SAFETY: plain syscall.
                unsafe { libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), req.dir_mode & 0o7777, 0) };
                chown_at(&dir, &c, req.uid, req.gid)?;
                open_dir_at(&dir, &c).map_err(|e| RuntimeError::internal(format!("{p:?}"), e))?
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                return Err(RuntimeError::invalid(
                    "path",
                    format!(
                        "{p:?} on the way to {:?} is not a directory (symlinks are not followed)",
                        req.path
                    ),
                ))
            }
            Err(e) => return Err(RuntimeError::internal(format!("{p:?}"), e)),
        };
    }
    let cname = cstr(name.as_bytes(), "path")?;

    match file_type {
        libc::S_IFDIR => {
            // SAFETY: plain syscalls.
            if unsafe { libc::mkdirat(dir.as_raw_fd(), cname.as_ptr(), perm) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(RuntimeError::internal(
                        format!("creating {:?}", req.path),
                        e,
                    ));
                }
                open_dir_at(&dir, &cname).map_err(|_| {
                    RuntimeError::invalid(
                        "path",
                        format!("{:?} exists and is not a directory", req.path),
                    )
                })?;
            }
            unsafe { libc::fchmodat(dir.as_raw_fd(), cname.as_ptr(), perm, 0) };
            chown_at(&dir, &cname, req.uid, req.gid)
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
            chown_at(&dir, &tmp, req.uid, req.gid)?;
            rename_into_place(&dir, &tmp, &cname, &req.path)
        }
        libc::S_IFREG | 0 => {
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
            // SAFETY: plain syscall on our descriptor.
            if unsafe { libc::fchmod(file.as_raw_fd(), perm) } != 0 {
                return Err(errno(format!("chmod {:?}", req.path)));
            }
            chown_at(&dir, &tmp, req.uid, req.gid)?;
            rename_into_place(&dir, &tmp, &cname, &req.path)
        }
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
        copy_file(&shared, &r).unwrap();
        assert!(!target.exists(), "incomplete file must not be visible");
        r.offset = 6;
        r.data = b"world".to_vec();
        copy_file(&shared, &r).unwrap();
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
        let field = |r: &CopyFileRequest| match copy_file(&shared, r) {
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
        copy_file(
            &shared,
            &req(&shared.join("link"), libc::S_IFLNK | 0o777, b"real"),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_link(shared.join("link")).unwrap(),
            Path::new("real")
        );
        // Even an allowed, inside-pointing link is not a path component to write through.
        match copy_file(
            &shared,
            &req(&shared.join("link/f"), libc::S_IFREG | 0o644, b"x"),
        ) {
            Err(RuntimeError::InvalidArgument { field, .. }) => assert_eq!(field, "path"),
            other => panic!("{other:?}"),
        }
        // A symlink planted by someone else that points outside is not followed either.
        std::os::unix::fs::symlink(&outside, shared.join("evil")).unwrap();
        assert!(copy_file(
            &shared,
            &req(&shared.join("evil/f"), libc::S_IFREG | 0o644, b"x")
        )
        .is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // Writing a file over a symlink replaces the link, not its target.
        std::fs::write(outside.join("victim"), b"keep").unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), shared.join("over")).unwrap();
        copy_file(
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
        copy_file(
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
        copy_file(
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
}
