//! Paths opened beneath a directory the agent holds open, never following a symlink and never
//! leaving it, so that what was checked is what gets used. Used by the container runtime for
//! every path a request names (its `confine`, `mount`, `staging`, storages) and by the guest
//! operations on the pod's directories (volumes, ephemeral mounts).
//!
//! A directory a container can write to (a shared directory, a volume) may hold symlinks the
//! container planted, or be rearranged while the agent works in it. Checking a path string and
//! using it later (canonicalise, then `mkdir -p`, then `mount`) follows whatever is there at the
//! time of use. Here every lookup starts from a descriptor and yields a descriptor: the kernel
//! resolves `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, or, where `openat2` is missing
//! (Linux before 5.6), one `O_NOFOLLOW` component at a time. Missing directories are created
//! with `mkdirat` on the parent's descriptor, and mounts target `/proc/self/fd/N`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// How a lookup is resolved: the kernel's `openat2`, or component by component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Openat2,
    Components,
}

/// `openat2`, unless the kernel does not have it (remembered after the first `ENOSYS`).
fn method() -> Method {
    use std::sync::atomic::{AtomicBool, Ordering};
    static NO_OPENAT2: AtomicBool = AtomicBool::new(false);
    if NO_OPENAT2.load(Ordering::Relaxed) {
        return Method::Components;
    }
    let probe = openat2_raw(
        libc::AT_FDCWD,
        c"/",
        libc::O_PATH | libc::O_CLOEXEC,
        libc::RESOLVE_NO_SYMLINKS,
    );
    match probe {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            NO_OPENAT2.store(true, Ordering::Relaxed);
            Method::Components
        }
        _ => Method::Openat2,
    }
}

fn cstring(name: &std::ffi::OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn openat2_raw(
    dir: libc::c_int,
    path: &std::ffi::CStr,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; zeroed is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = resolve;
    // SAFETY: plain syscall with a valid path, struct and its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    owned(fd as libc::c_int)
}

/// The normal components of `rel`; `..`, a root or a prefix is `EINVAL` (callers refuse those
/// with a message first; this is the backstop).
fn components(rel: &Path) -> io::Result<Vec<&std::ffi::OsStr>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
    Ok(out)
}

pub fn fstat(fd: BorrowedFd) -> io::Result<libc::stat> {
    // SAFETY: a zeroed stat is valid for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall on a descriptor we borrow.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

pub fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// One component, without following it if it is a symlink (`ELOOP` then).
fn open_component(dir: BorrowedFd, name: &std::ffi::OsStr, method: Method) -> io::Result<OwnedFd> {
    let c = cstring(name)?;
    let flags = libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    let fd = match method {
        Method::Openat2 => openat2_raw(
            dir.as_raw_fd(),
            &c,
            flags,
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS,
        )?,
        // SAFETY: plain syscall on a borrowed descriptor and a NUL-terminated name.
        Method::Components => owned(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) })?,
    };
    // O_PATH | O_NOFOLLOW opens a symlink itself rather than failing: refuse it here.
    if fstat(fd.as_fd())?.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    Ok(fd)
}

/// Opens `rel` beneath `root` as an `O_PATH` descriptor. A symlink anywhere on the way (or at
/// the end) is `ELOOP`; nothing outside `root` can be reached. An empty `rel` is `root` itself.
pub fn open(root: BorrowedFd, rel: &Path) -> io::Result<OwnedFd> {
    open_with(root, rel, method())
}

fn open_with(root: BorrowedFd, rel: &Path, method: Method) -> io::Result<OwnedFd> {
    let parts = components(rel)?;
    if parts.is_empty() {
        return dup_path(root);
    }
    match method {
        Method::Openat2 => {
            let joined: PathBuf = parts.iter().collect();
            let c = cstring(joined.as_os_str())?;
            openat2_raw(
                root.as_raw_fd(),
                &c,
                libc::O_PATH | libc::O_CLOEXEC,
                libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS,
            )
        }
        Method::Components => {
            let mut cur = dup_path(root)?;
            for p in parts {
                cur = open_component(cur.as_fd(), p, method)?;
            }
            Ok(cur)
        }
    }
}

/// An `O_PATH` copy of `fd` (which may itself be `O_PATH`).
fn dup_path(fd: BorrowedFd) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; "." relative to a directory descriptor is that directory.
    let d = owned(unsafe {
        libc::openat(
            fd.as_raw_fd(),
            c".".as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC | libc::O_DIRECTORY,
        )
    });
    match d {
        Ok(d) => Ok(d),
        // Not a directory (a file root): duplicate the descriptor itself.
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => fd.try_clone_to_owned(),
        Err(e) => Err(e),
    }
}

/// Opens the directory `rel` beneath `root`, creating what is missing with `mode` (exactly:
/// the umask does not apply). `created` is called with each directory made, so callers can
/// set owners. Returns an `O_PATH` descriptor.
pub fn mkdir_all(
    root: BorrowedFd,
    rel: &Path,
    mode: u32,
    created: &mut dyn FnMut(BorrowedFd) -> io::Result<()>,
) -> io::Result<OwnedFd> {
    mkdir_all_with(root, rel, mode, created, method())
}

fn mkdir_all_with(
    root: BorrowedFd,
    rel: &Path,
    mode: u32,
    created: &mut dyn FnMut(BorrowedFd) -> io::Result<()>,
    method: Method,
) -> io::Result<OwnedFd> {
    let mut cur = dup_path(root)?;
    for p in components(rel)? {
        let mut made = false;
        let next = match open_component(cur.as_fd(), p, method) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let c = cstring(p)?;
                // SAFETY: plain syscall on our descriptor and a NUL-terminated name.
                if unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), mode) } != 0 {
                    let e = io::Error::last_os_error();
                    // Someone made it in the meantime: open whatever is there (checked below).
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(e);
                    }
                } else {
                    made = true;
                }
                open_component(cur.as_fd(), p, method)?
            }
            Err(e) => return Err(e),
        };
        if !is_dir(&fstat(next.as_fd())?) {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        if made {
            // mkdir's mode was filtered by the umask; set it through the descriptor.
            chmod(next.as_fd(), mode)?;
            created(next.as_fd())?;
        }
        cur = next;
    }
    Ok(cur)
}

/// chmod of exactly what `fd` (which may be `O_PATH`) refers to.
pub fn chmod(fd: BorrowedFd, mode: u32) -> io::Result<()> {
    let c = cstring(proc_path(fd).as_os_str())?;
    // SAFETY: plain syscall; the magic link names exactly the file `fd` refers to.
    if unsafe { libc::chmod(c.as_ptr(), mode) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// chown of exactly what `fd` (which may be `O_PATH`) refers to; -1 keeps an id.
pub fn chown(fd: BorrowedFd, uid: i32, gid: i32) -> io::Result<()> {
    // SAFETY: plain syscall; AT_EMPTY_PATH acts on the descriptor itself.
    let rc = unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid as libc::uid_t,
            gid as libc::gid_t,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens the regular file `rel` beneath `root`, creating it empty (and its parent directories,
/// 0755) if missing. Returns an `O_PATH` descriptor. Anything but a regular file is refused.
pub fn create_file(root: BorrowedFd, rel: &Path, mode: u32) -> io::Result<OwnedFd> {
    let parts = components(rel)?;
    let Some((name, parents)) = parts.split_last() else {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    };
    let parent_rel: PathBuf = parents.iter().collect();
    let parent = mkdir_all(root, &parent_rel, 0o755, &mut |_| Ok(()))?;
    let c = cstring(name)?;
    // SAFETY: plain syscall; O_NOFOLLOW|O_CREAT never writes through a symlink.
    let made = owned(unsafe {
        libc::openat(
            parent.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    });
    match made {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e),
    }
    let fd = open_component(parent.as_fd(), name, method())?;
    if fstat(fd.as_fd())?.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::from_raw_os_error(libc::EEXIST));
    }
    Ok(fd)
}

/// The path through which the kernel reaches exactly what `fd` refers to: for `mount(2)`
/// targets and bind sources, and `umount2(2)`.
pub fn proc_path(fd: BorrowedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens an absolute path the agent itself chose (a run directory), as an `O_PATH` directory.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cstring(path.as_os_str())?;
    // SAFETY: plain syscall with a NUL-terminated path.
    owned(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })
}

/// Opens the absolute `path` beneath the deepest of `roots` (directories the agent chose) whose
/// path it starts with, as an `O_PATH` descriptor, never following a symlink on the way below
/// that root. `Ok(None)`: no root holds it (lexically). A root that does not exist holds
/// nothing.
pub fn open_under(roots: &[PathBuf], path: &Path) -> io::Result<Option<OwnedFd>> {
    let Some((root, rest)) = roots
        .iter()
        .filter_map(|r| path.strip_prefix(r).ok().map(|rest| (r, rest)))
        .max_by_key(|(r, _)| r.components().count())
    else {
        return Ok(None);
    };
    let dir = match open_dir(root) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    open(dir.as_fd(), rest).map(Some)
}

/// Whether `fd` is the root of a mount (statx's `STATX_ATTR_MOUNT_ROOT`, Linux 5.8).
pub fn is_mount_root(fd: BorrowedFd) -> io::Result<bool> {
    // SAFETY: a zeroed statx is a valid out-parameter.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall on a borrowed descriptor with AT_EMPTY_PATH.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            0,
            &mut stx,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if stx.stx_attributes_mask & bit == 0 {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    Ok(stx.stx_attributes & bit != 0)
}

/// Whether an error means "a symlink, `..` or a non-directory was on the way": a refusal to
/// report to the caller, as opposed to an I/O failure.
pub fn is_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ELOOP | libc::EXDEV | libc::ENOTDIR | libc::EINVAL)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const BOTH: [Method; 2] = [Method::Openat2, Method::Components];

    fn ino(fd: &OwnedFd) -> u64 {
        fstat(fd.as_fd()).unwrap().st_ino
    }

    #[test]
    fn opens_beneath_and_refuses_symlinks_and_escapes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), b"x").unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), root.join("abs")).unwrap();
        std::os::unix::fs::symlink("a", root.join("rel")).unwrap();
        let rfd = open_dir(&root).unwrap();
        for m in BOTH {
            let fd = open_with(rfd.as_fd(), Path::new("a/b/f"), m).unwrap();
            assert_eq!(
                ino(&fd),
                std::fs::metadata(root.join("a/b/f")).unwrap().ino()
            );
            assert_eq!(
                ino(&open_with(rfd.as_fd(), Path::new(""), m).unwrap()),
                ino(&rfd)
            );
            for bad in [
                "abs",
                "abs/x",
                "rel",
                "rel/b/f",
                "../outside",
                "a/../../outside",
            ] {
                let e = open_with(rfd.as_fd(), Path::new(bad), m).unwrap_err();
                assert!(is_refusal(&e), "{m:?} {bad}: {e}");
            }
            assert_eq!(
                open_with(rfd.as_fd(), Path::new("a/missing"), m)
                    .unwrap_err()
                    .raw_os_error(),
                Some(libc::ENOENT)
            );
        }
    }

    #[test]
    fn mkdir_all_creates_through_descriptors_only() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let rfd = open_dir(&root).unwrap();
        for m in BOTH {
            let sub = format!("{m:?}");
            let mut made = Vec::new();
            let fd = mkdir_all_with(
                rfd.as_fd(),
                &Path::new(&sub).join("x/y"),
                0o701,
                &mut |fd| {
                    made.push(fstat(fd).unwrap().st_ino);
                    Ok(())
                },
                m,
            )
            .unwrap();
            let ino_of = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
            assert_eq!(
                made,
                [
                    ino_of(&sub),
                    ino_of(&format!("{sub}/x")),
                    ino_of(&format!("{sub}/x/y"))
                ]
            );
            let meta = std::fs::metadata(root.join(&sub).join("x/y")).unwrap();
            assert_eq!(ino(&fd), meta.ino());
            assert_eq!(meta.mode() & 0o7777, 0o701, "exact mode, no umask");
            // Through a planted symlink: refused, nothing made outside.
            let e = mkdir_all_with(
                rfd.as_fd(),
                Path::new("link/new"),
                0o755,
                &mut |_| Ok(()),
                m,
            )
            .unwrap_err();
            assert!(is_refusal(&e), "{e}");
            assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        }
        // A file on the way is not a directory.
        std::fs::write(root.join("file"), b"").unwrap();
        let e = mkdir_all(rfd.as_fd(), Path::new("file/x"), 0o755, &mut |_| Ok(())).unwrap_err();
        assert!(is_refusal(&e), "{e}");
    }

    #[test]
    fn create_file_makes_or_finds_a_regular_file() {
        let t = tempfile::tempdir().unwrap();
        let rfd = open_dir(t.path()).unwrap();
        let fd = create_file(rfd.as_fd(), Path::new("d/f"), 0o644).unwrap();
        assert_eq!(
            ino(&fd),
            std::fs::metadata(t.path().join("d/f")).unwrap().ino()
        );
        std::fs::write(t.path().join("d/f"), b"kept").unwrap();
        create_file(rfd.as_fd(), Path::new("d/f"), 0o644).unwrap();
        assert_eq!(std::fs::read(t.path().join("d/f")).unwrap(), b"kept");
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("d/l")).unwrap();
        assert!(create_file(rfd.as_fd(), Path::new("d/l"), 0o644).is_err());
        assert!(create_file(rfd.as_fd(), Path::new("d"), 0o644).is_err());
    }

    /// A directory swapped for a symlink to the outside, over and over, while lookups run:
    /// every lookup finds the inside file or fails; none ever reaches the outside one.
    #[test]
    fn a_concurrent_swap_never_leads_outside() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("d/f"), b"inside").unwrap();
        std::fs::write(outside.join("f"), b"outside").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("swap")).unwrap();
        let inside_ino = std::fs::metadata(root.join("d/f")).unwrap().ino();
        let outside_ino = std::fs::metadata(outside.join("f")).unwrap().ino();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (stop, root) = (stop.clone(), root.clone());
            std::thread::spawn(move || {
                let a = CString::new(root.join("d").as_os_str().as_bytes()).unwrap();
                let b = CString::new(root.join("swap").as_os_str().as_bytes()).unwrap();
                let mut swaps = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // SAFETY: plain syscall on two paths of our own.
                    let rc = unsafe {
                        libc::renameat2(
                            libc::AT_FDCWD,
                            a.as_ptr(),
                            libc::AT_FDCWD,
                            b.as_ptr(),
                            libc::RENAME_EXCHANGE,
                        )
                    };
                    assert_eq!(rc, 0, "{}", io::Error::last_os_error());
                    swaps += 1;
                }
                swaps
            })
        };
        let rfd = open_dir(&root).unwrap();
        let (mut inside, mut refused) = (0, 0);
        for i in 0..20_000 {
            let m = BOTH[i % 2];
            match open_with(rfd.as_fd(), Path::new("d/f"), m) {
                Ok(fd) => {
                    let n = ino(&fd);
                    assert_ne!(n, outside_ino, "{m:?} reached the outside file");
                    assert_eq!(n, inside_ino);
                    inside += 1;
                }
                Err(_) => refused += 1,
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        assert!(swaps > 0 && inside + refused == 20_000);
    }
}
