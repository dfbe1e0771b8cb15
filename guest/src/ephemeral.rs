//! `UpdateEphemeralMounts` and `RemoveStaleVirtiofsShareMounts`.
//!
//! Kata's runtime resizes a pod's memory-backed volumes (emptyDir with `medium: Memory`) by
//! sending their storages again with new options; the agent remounts each tmpfs in place.
//! Only the `ephemeral` driver is accepted (as Kata), only for tmpfs mounts already under the
//! pod's directories (found beneath them without following symlinks, and remounted through
//! that descriptor), and only size options change: the remount keeps `nosuid,nodev`.
//!
//! RemoveStaleVirtiofsShareMounts looks at (stats) every mount point under the shared
//! directory, which makes virtiofsd drop the cache entries of files that are gone (Kata does
//! the same); it changes nothing in the guest.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use vigil_protos::agent::{Storage, UpdateEphemeralMountsRequest};

use crate::beneath::{is_mount_root, is_refusal, open_under, proc_path};
use crate::error::{invalid, GuestError, Result};

const TMPFS_MAGIC: i64 = 0x0102_1994;
/// One checked storage of the request.
struct Remount {
    /// The mount point as the request names it (for messages).
    target: PathBuf,
    /// The mount point's root, found without following symlinks: what is remounted.
    fd: OwnedFd,
    flags: libc::c_ulong,
    data: String,
}

/// The pod's ephemeral (tmpfs) volumes: only under `roots`.
#[derive(Debug, Clone)]
pub struct Ephemeral {
    roots: Vec<PathBuf>,
}

impl Ephemeral {
    pub fn new(roots: Vec<PathBuf>) -> Ephemeral {
        Ephemeral { roots }
    }

    /// `UpdateEphemeralMounts`: every storage is checked before any is remounted.
    pub fn update(&self, req: &UpdateEphemeralMountsRequest) -> Result<()> {
        let plan = req
            .storages
            .iter()
            .enumerate()
            .map(|(i, s)| self.check(&format!("storages[{i}]"), s))
            .collect::<Result<Vec<_>>>()?;
        for (i, r) in plan.iter().enumerate() {
            // Through the descriptor: the mount checked is the mount changed.
            let target = cstring(&proc_path(r.fd.as_fd()))?;
            let data = std::ffi::CString::new(r.data.as_str())
                .map_err(|_| invalid(&format!("storages[{i}].options"), "contains a NUL byte"))?;
            // SAFETY: valid NUL-terminated strings; a remount of an existing mount.
            let rc = unsafe {
                libc::mount(
                    std::ptr::null(),
                    target.as_ptr(),
                    std::ptr::null(),
                    r.flags,
                    data.as_ptr().cast(),
                )
            };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                let done = if i == 0 {
                    String::new()
                } else {
                    format!(" (storages[0..{i}] were remounted)")
                };
                return Err(GuestError::Internal(format!(
                    "storages[{i}]: remounting {}: {e}{done}",
                    r.target.display()
                )));
            }
        }
        Ok(())
    }

    fn check(&self, field: &str, s: &Storage) -> Result<Remount> {
        if s.driver != "ephemeral" {
            return Err(invalid(
                &format!("{field}.driver"),
                format!("{:?}: only ephemeral storages are updated", s.driver),
            ));
        }
        let mp = Path::new(&s.mount_point);
        if !mp.is_absolute() {
            return Err(invalid(&format!("{field}.mount_point"), "must be absolute"));
        }
        let mp_field = format!("{field}.mount_point");
        let fd = open_under(&self.roots, mp)
            .map_err(|e| {
                let why = if is_refusal(&e) {
                    "a symlink, \"..\" or a non-directory is on the way (symlinks are not followed)"
                        .to_string()
                } else {
                    e.to_string()
                };
                invalid(&mp_field, format!("{}: {why}", s.mount_point))
            })?
            .ok_or_else(|| {
                invalid(
                    &mp_field,
                    format!("{} is not under the pod's directories", s.mount_point),
                )
            })?;
        let root = is_mount_root(fd.as_fd())
            .map_err(|e| GuestError::Internal(format!("{mp_field}: {}: {e}", s.mount_point)))?;
        if fs_magic(mp, fd.as_fd())? != TMPFS_MAGIC || !root {
            return Err(invalid(
                &mp_field,
                format!("{} is not an ephemeral (tmpfs) mount", s.mount_point),
            ));
        }
        let mut flags = libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
        let mut data = Vec::new();
        for o in &s.options {
            match o.as_str() {
                "remount" | "rw" | "nosuid" | "nodev" => {}
                "ro" => flags |= libc::MS_RDONLY,
                "noexec" => flags |= libc::MS_NOEXEC,
                o if o.starts_with("size=") || o.starts_with("nr_inodes=") => {
                    data.push(o.to_string())
                }
                // Kata sets the group elsewhere; the remount leaves ownership alone.
                o if o.starts_with("fsgid=") => {}
                other => {
                    return Err(invalid(
                        &format!("{field}.options"),
                        format!(
                        "{other:?} cannot be changed by an update (size=, nr_inodes=, ro, noexec)"
                    ),
                    ))
                }
            }
        }
        Ok(Remount {
            target: mp.to_path_buf(),
            fd,
            flags,
            data: data.join(","),
        })
    }
}

/// `RemoveStaleVirtiofsShareMounts`: stats every mount point under `shared`.
pub fn refresh_shared_mounts(shared: &Path) -> Result<usize> {
    let info = std::fs::read_to_string("/proc/thread-self/mountinfo")
        .map_err(|e| GuestError::Internal(format!("reading /proc/thread-self/mountinfo: {e}")))?;
    let mut seen = 0;
    for p in info.lines().filter_map(|l| l.split(' ').nth(4)) {
        let p = PathBuf::from(unescape(p));
        if p.starts_with(shared) {
            // The answer does not matter: the lookup is what virtiofsd acts on.
            let _ = std::fs::symlink_metadata(&p);
            seen += 1;
        }
    }
    Ok(seen)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn cstring(p: &Path) -> Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| GuestError::InvalidArgument(format!("{} contains a NUL byte", p.display())))
}

fn fs_magic(p: &Path, fd: BorrowedFd) -> Result<i64> {
    // SAFETY: a zeroed statfs is a valid out-parameter; the descriptor is borrowed.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(GuestError::Internal(format!(
            "statfs {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(st.f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(mp: &Path, options: &[&str]) -> Storage {
        Storage {
            driver: "ephemeral".into(),
            source: "tmpfs".into(),
            fstype: "tmpfs".into(),
            mount_point: mp.display().to_string(),
            options: options.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        }
    }

    fn req(s: Vec<Storage>) -> UpdateEphemeralMountsRequest {
        UpdateEphemeralMountsRequest {
            storages: s,
            ..Default::default()
        }
    }

    /// In a mount namespace of the test thread: a 1 MiB tmpfs grows to 4 MiB; bad requests
    /// are refused by field before anything is remounted.
    #[test]
    fn a_tmpfs_volume_is_resized_in_place_and_others_are_refused() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let (vol, plain) = (root.path().join("vol"), root.path().join("plain"));
        std::fs::create_dir(&vol).unwrap();
        std::fs::create_dir(&plain).unwrap();
        let rootp = root.path().to_path_buf();
        let r = std::thread::spawn(move || -> std::result::Result<(), String> {
            // SAFETY: this thread's own mount namespace; it dies with the thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
                return Err(format!("unshare: {}", std::io::Error::last_os_error()));
            }
            let none = c"none";
            // SAFETY: make every mount private to this namespace, then mount a small tmpfs.
            unsafe {
                libc::mount(
                    none.as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                );
            }
            let target = cstring(&vol).unwrap();
            let rc = unsafe {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    c"size=1m".as_ptr().cast(),
                )
            };
            if rc != 0 {
                return Err(format!("mount: {}", std::io::Error::last_os_error()));
            }
            let size = |p: &Path| {
                let c = cstring(p).unwrap();
                let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
                assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
                st.f_blocks as u64 * st.f_frsize as u64
            };
            let e = Ephemeral::new(vec![rootp.clone()]);
            let alias = rootp.join("alias");
            std::os::unix::fs::symlink(&vol, &alias).map_err(|e| e.to_string())?;
            if size(&vol) != 1 << 20 {
                return Err(format!("tmpfs is {} bytes", size(&vol)));
            }
            // One bad storage: nothing is remounted.
            let err = e
                .update(&req(vec![
                    storage(&vol, &["remount", "size=4m"]),
                    storage(&plain, &["size=4m"]),
                ]))
                .unwrap_err();
            if !err.to_string().starts_with("storages[1].mount_point") || size(&vol) != 1 << 20 {
                return Err(format!("not a tmpfs: {err}"));
            }
            for (s, field) in [
                (
                    Storage {
                        driver: "local".into(),
                        ..storage(&vol, &[])
                    },
                    "storages[0].driver",
                ),
                (storage(&vol, &["size=4m", "exec"]), "storages[0].options"),
                (
                    storage(Path::new("/tmp"), &["size=4m"]),
                    "storages[0].mount_point",
                ),
                // Reached through a symlink (even to the right tmpfs): never followed.
                (storage(&alias, &["size=4m"]), "storages[0].mount_point"),
            ] {
                let err = e.update(&req(vec![s])).unwrap_err();
                if !err.to_string().starts_with(field) {
                    return Err(format!("{field}: {err}"));
                }
            }
            e.update(&req(vec![storage(&vol, &["remount", "size=4m"])]))
                .map_err(|e| e.to_string())?;
            if size(&vol) != 4 << 20 {
                return Err(format!("not resized: {}", size(&vol)));
            }
            Ok(())
        })
        .join()
        .unwrap();
        r.unwrap();
    }

    #[test]
    fn shared_mounts_are_counted_under_the_shared_dir_only() {
        // The root is a mount point of every process; nothing is under a fresh directory.
        assert!(refresh_shared_mounts(Path::new("/")).unwrap() >= 1);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(refresh_shared_mounts(dir.path()).unwrap(), 0);
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
