//! `watchable-bind`: Kata's configmap and secret volumes on a shared file system without
//! inotify (virtio-fs). The source directory (in the sandbox's shared directory, or an earlier
//! storage) is copied into a tmpfs at the mount point, and the copy is kept in step with it
//! every two seconds, so that a workload watching its configmap with inotify sees updates.
//!
//! As Kata's watcher: at most 16 entries and 1 MiB per storage; a source larger than that from
//! the start, or a single file, is bind-mounted instead (updates show, inotify does not). A
//! source that grows past the limits later is no longer followed (the copy stays as last
//! synced; Kata binds the source over it then, which a running container would not see either).
//!
//! The copy never follows a symlink: each entry is opened from its parent's descriptor with
//! `O_NOFOLLOW`, symlinks are copied as symlinks, and changes to the tmpfs go through
//! descriptors of its directories, replacing whatever a container may have put in the way.
//! A file or link is written under a temporary name and renamed into place, so a reader sees
//! the old version or the new one.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
#[cfg(test)]
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::mount::MsFlags;
use vigil_protos::agent::Storage;

use super::{parse_options, Added, MountPoint, StorageContext, StorageDriver};
use crate::beneath;
use crate::confine::open_in;
use crate::error::{Result, RuntimeError};

/// Kata's limits for a watched storage.
const MAX_ENTRIES: usize = 16;
const MAX_BYTES: u64 = 1 << 20;
/// How often the source is compared with the copy (Kata's interval).
pub(super) const INTERVAL: Duration = Duration::from_secs(2);
const TMP_PREFIX: &str = ".vigil-watch-";

pub(super) struct WatchableBind {
    pub(super) interval: Duration,
}

impl StorageDriver for WatchableBind {
    fn driver_types(&self) -> &'static [&'static str] {
        &["watchable-bind"]
    }

    fn add(&self, s: &Storage, at: &MountPoint, ctx: &StorageContext) -> Result<Added> {
        let field = ctx.field;
        if !matches!(s.fstype.as_str(), "" | "bind") {
            return Err(RuntimeError::invalid(
                format!("{field}.fstype"),
                format!("{:?}: watchable-bind storages are binds", s.fstype),
            ));
        }
        // The options (ro, ...) are the container's bind's; the copy itself must stay writable
        // for the agent.
        parse_options(&s.options, &[], field)?;
        let source = open_in(
            ctx.sources,
            &s.source,
            &format!("{field}.source"),
            "the sandbox's shared directory or an earlier storage",
        )?;
        let st =
            beneath::fstat(source.as_fd()).map_err(|e| RuntimeError::internal(&s.source, e))?;
        let plain_bind = || -> Result<Added> {
            let target = if beneath::is_dir(&st) {
                at.dir(0o755)?
            } else {
                at.file()?
            };
            Added::mounted(target.bind(source.as_fd(), true, MsFlags::MS_NODEV)?)
        };
        if !beneath::is_dir(&st) {
            return plain_bind();
        }
        let first = match snapshot(source.as_fd()) {
            Ok(t) => t,
            Err(Scan::TooLarge(why)) => {
                tracing::info!(source = %s.source, %why, "watchable-bind: bound instead of copied");
                return plain_bind();
            }
            Err(Scan::Io(e)) => return Err(RuntimeError::internal(&s.source, e)),
        };
        let m = at.dir(0o755)?.mount_fs(
            "tmpfs",
            "watchable",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("size=4m,mode=755"),
        )?;
        let copy = m
            .root()
            .try_clone_to_owned()
            .map_err(|e| RuntimeError::internal(m.shown().display(), e));
        let started = copy.and_then(|copy| {
            sync(source.as_fd(), copy.as_fd(), &Tree::default(), &first)
                .map_err(|e| RuntimeError::internal(format!("copying {}", s.source), e))?;
            Ok(Watcher::start(source, copy, first, self.interval))
        });
        match started {
            Ok(w) => {
                let mut added = Added::mounted(m)?;
                added.watcher = Some(w);
                Ok(added)
            }
            Err(e) => {
                let _ = m.unmount();
                Err(e)
            }
        }
    }
}

/// One entry of a tree, as far as copying it is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32, uid: u32, gid: u32 },
    File(FileId),
    Link { target: OsString, id: FileId },
}

/// What tells a file's version: changed content changes one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileId {
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    mode: u32,
    uid: u32,
    gid: u32,
}

/// A tree by path relative to its root (the root itself is ""); parents sort before children.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Tree(BTreeMap<PathBuf, Node>);

enum Scan {
    TooLarge(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for Scan {
    fn from(e: std::io::Error) -> Scan {
        Scan::Io(e)
    }
}

fn cstr(name: &OsStr) -> std::io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn openat(dir: BorrowedFd, name: &CStr, flags: libc::c_int, mode: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall on a borrowed descriptor and a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn file_id(st: &libc::stat) -> FileId {
    FileId {
        ino: st.st_ino,
        size: st.st_size,
        mtime: (st.st_mtime, st.st_mtime_nsec),
        ctime: (st.st_ctime, st.st_ctime_nsec),
        mode: st.st_mode & 0o777,
        uid: st.st_uid,
        gid: st.st_gid,
    }
}

/// The link target of the symlink `name` in `dir`.
fn read_link(dir: BorrowedFd, name: &CStr) -> std::io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: plain syscall into a buffer we own, with its length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsString::from_vec(buf))
}

/// The names in the directory `dir` (an `O_PATH` descriptor is fine).
fn names(dir: BorrowedFd) -> std::io::Result<Vec<OsString>> {
    let fd = openat(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut d = nix::dir::Dir::from_fd(fd.into_raw_fd()).map_err(std::io::Error::from)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(std::io::Error::from)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}

/// The tree beneath `root`, within Kata's limits.
fn snapshot(root: BorrowedFd) -> std::result::Result<Tree, Scan> {
    let st = beneath::fstat(root)?;
    let mut tree = Tree::default();
    tree.0.insert(
        PathBuf::new(),
        Node::Dir {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
        },
    );
    let mut bytes = 0u64;
    let mut pending = vec![(PathBuf::new(), root.try_clone_to_owned()?)];
    while let Some((rel, dir)) = pending.pop() {
        for name in names(dir.as_fd())? {
            let c = cstr(&name)?;
            let fd = openat(dir.as_fd(), &c, libc::O_PATH, 0)?;
            let st = beneath::fstat(fd.as_fd())?;
            let path = rel.join(&name);
            let node = match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => {
                    pending.push((path.clone(), fd));
                    Node::Dir {
                        mode: st.st_mode & 0o7777,
                        uid: st.st_uid,
                        gid: st.st_gid,
                    }
                }
                libc::S_IFREG => {
                    bytes += st.st_size as u64;
                    Node::File(file_id(&st))
                }
                libc::S_IFLNK => Node::Link {
                    target: read_link(dir.as_fd(), &c)?,
                    id: file_id(&st),
                },
                // Devices, fifos and sockets are not configuration: left out.
                _ => continue,
            };
            tree.0.insert(path, node);
            if tree.0.len() - 1 > MAX_ENTRIES {
                return Err(Scan::TooLarge(format!("more than {MAX_ENTRIES} entries")));
            }
            if bytes > MAX_BYTES {
                return Err(Scan::TooLarge(format!("more than {MAX_BYTES} bytes")));
            }
        }
    }
    Ok(tree)
}

/// `rel`'s parent beneath `root` and its last component.
fn parent_and_name(root: BorrowedFd, rel: &Path) -> std::io::Result<(OwnedFd, CString)> {
    let parent = beneath::open(root, rel.parent().unwrap_or(Path::new("")))?;
    let name = cstr(rel.file_name().unwrap_or_default())?;
    Ok((parent, name))
}

/// Removes whatever `name` in `dir` is (a whole directory tree too), never following links.
fn remove(dir: BorrowedFd, name: &CStr) -> std::io::Result<()> {
    // SAFETY: plain syscalls on a borrowed descriptor and a NUL-terminated name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(()),
        Some(libc::EISDIR) => {
            let sub = openat(dir, name, libc::O_PATH | libc::O_DIRECTORY, 0)?;
            for n in names(sub.as_fd())? {
                remove(sub.as_fd(), &cstr(&n)?)?;
            }
            // SAFETY: as above.
            check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })
        }
        _ => Err(e),
    }
}

/// Makes `old`'s copy (in `dst`) into `new`'s: what changed or appeared is copied from `src`,
/// what went is removed.
fn sync(src: BorrowedFd, dst: BorrowedFd, old: &Tree, new: &Tree) -> std::io::Result<()> {
    for (rel, node) in &new.0 {
        if old.0.get(rel) == Some(node) {
            continue;
        }
        if rel.as_os_str().is_empty() {
            if let Node::Dir { mode, uid, gid } = node {
                beneath::chown(dst, *uid as i32, *gid as i32)?;
                beneath::chmod(dst, *mode & 0o777)?;
            }
            continue;
        }
        let (dparent, name) = parent_and_name(dst, rel)?;
        let dparent = dparent.as_fd();
        match node {
            Node::Dir { mode, uid, gid } => {
                let existing = openat(dparent, &name, libc::O_PATH, 0);
                let is_dir = existing
                    .as_ref()
                    .is_ok_and(|fd| beneath::fstat(fd.as_fd()).is_ok_and(|s| beneath::is_dir(&s)));
                if !is_dir {
                    remove(dparent, &name)?;
                    // SAFETY: plain syscall on our descriptor and a NUL-terminated name.
                    check(unsafe { libc::mkdirat(dparent.as_raw_fd(), name.as_ptr(), 0o700) })?;
                }
                let fd = openat(dparent, &name, libc::O_PATH | libc::O_DIRECTORY, 0)?;
                beneath::chown(fd.as_fd(), *uid as i32, *gid as i32)?;
                beneath::chmod(fd.as_fd(), *mode & 0o777)?;
            }
            Node::File(id) => {
                let (sparent, _) = parent_and_name(src, rel)?;
                let mut from =
                    std::fs::File::from(openat(sparent.as_fd(), &name, libc::O_RDONLY, 0)?);
                let tmp = cstr(&tmp_name(&name))?;
                remove(dparent, &tmp)?;
                let to = openat(
                    dparent,
                    &tmp,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    0o600,
                )?;
                let mut to = std::fs::File::from(to);
                let mut data = Vec::new();
                (&mut from).take(MAX_BYTES + 1).read_to_end(&mut data)?;
                to.write_all(&data)?;
                beneath::chown(to.as_fd(), id.uid as i32, id.gid as i32)?;
                beneath::chmod(to.as_fd(), id.mode)?;
                replace(dparent, &tmp, &name)?;
            }
            Node::Link { target, .. } => {
                let tmp = cstr(&tmp_name(&name))?;
                remove(dparent, &tmp)?;
                let t = cstr(target)?;
                // SAFETY: plain syscall with NUL-terminated strings and our descriptor.
                check(unsafe { libc::symlinkat(t.as_ptr(), dparent.as_raw_fd(), tmp.as_ptr()) })?;
                replace(dparent, &tmp, &name)?;
            }
        }
    }
    // Deepest first, after the new versions are in place (a configmap's `..data` link is
    // switched before the directory it named goes).
    for rel in old.0.keys().rev() {
        if !new.0.contains_key(rel) {
            let (dparent, name) = parent_and_name(dst, rel)?;
            remove(dparent.as_fd(), &name)?;
        }
    }
    Ok(())
}

fn tmp_name(name: &CStr) -> OsString {
    let mut t = OsString::from(TMP_PREFIX);
    t.push(OsStr::from_bytes(name.to_bytes()));
    t
}

/// Renames `tmp` over `name` in `dir`; a directory in the way is removed first.
fn replace(dir: BorrowedFd, tmp: &CStr, name: &CStr) -> std::io::Result<()> {
    let rename = || {
        // SAFETY: plain syscall on our descriptor and NUL-terminated names.
        check(unsafe {
            libc::renameat(
                dir.as_raw_fd(),
                tmp.as_ptr(),
                dir.as_raw_fd(),
                name.as_ptr(),
            )
        })
    };
    match rename() {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EISDIR | libc::ENOTEMPTY | libc::EEXIST)
            ) =>
        {
            remove(dir, name)?;
            rename()
        }
        other => other,
    }
}

/// Keeps a copy in step with its source until dropped.
#[derive(Debug)]
pub(crate) struct Watcher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Completed comparisons, for tests that wait for one.
    #[cfg(test)]
    scans: Arc<(Mutex<u64>, Condvar)>,
}

impl Watcher {
    fn start(source: OwnedFd, copy: OwnedFd, mut last: Tree, interval: Duration) -> Watcher {
        let (stop, stopped) = mpsc::channel::<()>();
        #[cfg(test)]
        let scans = Arc::new((Mutex::new(0u64), Condvar::new()));
        #[cfg(test)]
        let counter = scans.clone();
        let thread = std::thread::Builder::new()
            .name("watchable-bind".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    match snapshot(source.as_fd()) {
                        Ok(now) if now == last => {}
                        Ok(now) => match sync(source.as_fd(), copy.as_fd(), &last, &now) {
                            Ok(()) => last = now,
                            // Compared in full again next time.
                            Err(e) => {
                                tracing::warn!(error = %e, "watchable-bind: updating the copy");
                                last = Tree::default();
                            }
                        },
                        Err(Scan::TooLarge(why)) => {
                            tracing::warn!(%why, "watchable-bind: the source outgrew the limits; no longer followed");
                            return;
                        }
                        Err(Scan::Io(e)) => {
                            tracing::warn!(error = %e, "watchable-bind: reading the source")
                        }
                    }
                    #[cfg(test)]
                    {
                        let (n, cv) = &*counter;
                        *n.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                        cv.notify_all();
                    }
                }
            })
            .ok();
        if thread.is_none() {
            tracing::warn!(
                "watchable-bind: no thread to follow the source; the copy stays as made"
            );
        }
        Watcher {
            stop: Some(stop),
            thread,
            #[cfg(test)]
            scans,
        }
    }

    /// Waits (up to `timeout`) until `n` more comparisons have been made; false on timeout.
    #[cfg(test)]
    fn wait_scans(&self, n: u64, timeout: Duration) -> bool {
        let (count, cv) = &*self.scans;
        let guard = count.lock().unwrap();
        let want = *guard + n;
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |c| *c < want)
            .unwrap();
        *guard >= want
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A configmap as the kubelet writes it: the data in a timestamped directory, `..data`
    /// naming it, and one link per key through `..data`.
    fn configmap(dir: &Path, version: &str, keys: &[(&str, &str)]) {
        let data = dir.join(version);
        std::fs::create_dir_all(&data).unwrap();
        for (k, v) in keys {
            std::fs::write(data.join(k), v).unwrap();
        }
        let tmp = dir.join("..data_tmp");
        symlink(version, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        for (k, _) in keys {
            let _ = symlink(format!("..data/{k}"), dir.join(k));
        }
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_else(|e| format!("<{e}>"))
    }

    #[test]
    fn the_copy_follows_a_configmap_update_and_never_a_link() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        std::fs::create_dir_all(&dst).unwrap();
        configmap(&src, "..v1", &[("a", "one"), ("b", "two")]);
        symlink("/etc/passwd", src.join("escape")).unwrap();
        let (s, d) = (
            beneath::open_dir(&src).unwrap(),
            beneath::open_dir(&dst).unwrap(),
        );
        let v1 = snapshot(s.as_fd()).ok().unwrap();
        sync(s.as_fd(), d.as_fd(), &Tree::default(), &v1).unwrap();
        assert_eq!(read(&dst.join("a")), "one");
        assert_eq!(read(&dst.join("b")), "two");
        // A link is copied as a link (what it names is the container's business), not followed.
        assert_eq!(
            std::fs::read_link(dst.join("escape")).unwrap(),
            Path::new("/etc/passwd")
        );

        // The kubelet's update: a new data directory, ..data switched, a key gone, one added,
        // the old directory removed. Meanwhile something in the copy planted a link where the
        // new directory goes.
        configmap(&src, "..v2", &[("a", "uno"), ("c", "tres")]);
        std::fs::remove_file(src.join("b")).unwrap();
        std::fs::remove_dir_all(src.join("..v1")).unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        symlink(&outside, dst.join("..v2")).unwrap();
        let v2 = snapshot(s.as_fd()).ok().unwrap();
        sync(s.as_fd(), d.as_fd(), &v1, &v2).unwrap();
        assert_eq!(read(&dst.join("a")), "uno");
        assert_eq!(read(&dst.join("c")), "tres");
        assert!(!dst.join("b").exists() && !dst.join("..v1").exists());
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "wrote through a link"
        );
        let names: Vec<String> = std::fs::read_dir(&dst)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with(TMP_PREFIX)),
            "{names:?}"
        );

        // Past Kata's limits: not copied.
        for i in 0..MAX_ENTRIES {
            std::fs::write(src.join(format!("f{i}")), "x").unwrap();
        }
        assert!(matches!(snapshot(s.as_fd()), Err(Scan::TooLarge(_))));
    }

    /// The driver in a mount namespace of the test thread: the copy is a tmpfs at the mount
    /// point, and the watcher brings a change of the source over.
    #[test]
    fn a_watchable_bind_is_kept_in_step() {
        let t = tempfile::tempdir().unwrap();
        let kata_root = t.path().join("kata");
        let ran = crate::storage::in_mount_namespace(move || {
            use crate::layout::Layout;
            let layout = Layout::create(&kata_root, false).map_err(|e| e.to_string())?;
            let cm = layout.shared_path().join("cm");
            configmap(&cm, "..v1", &[("key", "before")]);
            let shared = layout.shared().map_err(|e| e.to_string())?;
            let driver = WatchableBind {
                interval: Duration::from_millis(20),
            };
            let s = Storage {
                driver: "watchable-bind".into(),
                source: cm.display().to_string(),
                fstype: "bind".into(),
                options: vec!["ro".into()],
                // Where Kata's Go shim puts it (container.go: <shared dir>/watchable/<name>).
                mount_point: "shared/containers/watchable/cm".into(),
                ..Default::default()
            };
            let rel = layout
                .storage_mount_point(&s.mount_point, None, "m")
                .map_err(|e| e.to_string())?;
            let at = MountPoint {
                root: layout.root(),
                shown: layout.dir().join(&rel),
                rel,
                field: "m".into(),
            };
            let ctx = StorageContext {
                field: "storages[0]",
                sources: &[&shared],
                layout: &layout,
                container: None,
            };
            let added = driver.add(&s, &at, &ctx).map_err(|e| e.to_string())?;
            let copy = layout.dir().join("shared/containers/watchable/cm/key");
            let first = read(&copy);
            configmap(&cm, "..v2", &[("key", "after")]);
            let w = added.watcher.as_ref().ok_or("no watcher")?;
            // Two comparisons: one may have started before the change.
            if !w.wait_scans(2, Duration::from_secs(10)) {
                return Err("the watcher made no comparison".into());
            }
            let second = read(&copy);
            drop(added.watcher);
            let unmounted = added.mount.map(|m| m.unmount());
            if first != "before" || second != "after" || unmounted != Some(Ok(())) {
                return Err(format!("{first:?} then {second:?}, {unmounted:?}"));
            }
            Ok(())
        })
        .unwrap();
        if !ran {
            eprintln!("skipping a_watchable_bind_is_kept_in_step: needs root");
        }
    }
}
