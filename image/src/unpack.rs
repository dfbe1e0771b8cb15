//! Safe unpacking of one layer (a tar stream, plain, gzip or zstd) into a fresh directory in
//! overlayfs's format: OCI whiteouts (`.wh.NAME`) become 0/0 character devices, opaque
//! markers (`.wh..wh..opq`) the `trusted.overlay.opaque` attribute. The copy fallback reads
//! the same format.
//!
//! Refused, naming the entry: paths with `..`, entries that would be written through a
//! symlink (so neither `../` nor an absolute symlink can lead outside the layer), hard links
//! whose target is outside the layer or not a regular file in it, device nodes, unknown
//! entry types, and anything past the size and entry limits. Symlinks themselves may point
//! anywhere: they are resolved inside the container, never by the unpacker.
//! Ownership, modes (set-id bits included), modification times and the `user.*` and
//! `security.capability` extended attributes are kept; other attributes (notably
//! `trusted.*`, which could forge overlay markers) are dropped.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::{Digest, HashingReader};
use crate::manifest::LayerCompression;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const COPY_BUFFER: usize = 256 << 10;

/// What an image may still unpack: shared by the layers of one pull (which unpack in
/// parallel), so the limits hold for the whole image.
pub(crate) struct Budget {
    bytes: AtomicU64,
    entries: AtomicU64,
    max_bytes: u64,
    max_entries: u64,
}

impl Budget {
    pub(crate) fn new(max_bytes: u64, max_entries: u64) -> Budget {
        Budget {
            bytes: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            max_bytes,
            max_entries,
        }
    }

    fn take_entry(&self) -> std::result::Result<(), String> {
        if self.entries.fetch_add(1, Ordering::Relaxed) >= self.max_entries {
            return Err(format!("more than {} entries", self.max_entries));
        }
        Ok(())
    }

    fn take_bytes(&self, n: u64) -> std::result::Result<(), String> {
        if self.bytes.fetch_add(n, Ordering::Relaxed) + n > self.max_bytes {
            return Err(format!("more than {} bytes of files", self.max_bytes));
        }
        Ok(())
    }
}

/// Why a layer could not be unpacked.
#[derive(Debug)]
pub(crate) enum UnpackError {
    /// The content is unsafe or malformed (the registry's fault).
    Invalid(String),
    /// A limit was reached.
    Limit(String),
    /// The guest's file system failed.
    Io(String),
}

type Result<T> = std::result::Result<T, UnpackError>;

fn invalid(entry: &Path, why: impl std::fmt::Display) -> UnpackError {
    UnpackError::Invalid(format!("entry {:?}: {why}", entry.display().to_string()))
}

fn io_err(what: impl std::fmt::Display, e: io::Error) -> UnpackError {
    UnpackError::Io(format!("{what}: {e}"))
}

/// Unpacks `blob` (the raw, compressed layer stream) into `dest` (an empty directory) and
/// checks that the uncompressed stream hashes to `diff_id`. Returns the uncompressed size.
/// The stream is read to its end, so a caller hashing it sees every byte.
pub(crate) fn unpack_layer(
    blob: impl Read,
    compression: LayerCompression,
    diff_id: &Digest,
    dest: &Path,
    budget: &Budget,
) -> Result<u64> {
    let tar_limit = budget.max_bytes.saturating_mul(2).saturating_add(1 << 30);
    match compression {
        LayerCompression::None => unpack_tar(blob, diff_id, tar_limit, dest, budget),
        LayerCompression::Gzip => {
            let mut decoder =
                flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(COPY_BUFFER, blob));
            let n = unpack_tar(&mut decoder, diff_id, tar_limit, dest, budget)?;
            // Bytes after the gzip stream (padding) still belong to the blob's digest.
            io::copy(&mut decoder.into_inner(), &mut io::sink())
                .map_err(|e| UnpackError::Invalid(format!("reading the layer: {e}")))?;
            Ok(n)
        }
        LayerCompression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::new(blob)
                .map_err(|e| UnpackError::Invalid(format!("zstd: {e}")))?;
            let n = unpack_tar(&mut decoder, diff_id, tar_limit, dest, budget)?;
            io::copy(&mut decoder.finish(), &mut io::sink())
                .map_err(|e| UnpackError::Invalid(format!("reading the layer: {e}")))?;
            Ok(n)
        }
    }
}

fn unpack_tar(
    tar_stream: impl Read,
    diff_id: &Digest,
    limit: u64,
    dest: &Path,
    budget: &Budget,
) -> Result<u64> {
    let hashed = HashingReader::new(tar_stream, diff_id, limit, "the uncompressed layer");
    let mut archive = tar::Archive::new(hashed);
    let mut dirs = Vec::new();
    let mut buf = vec![0u8; COPY_BUFFER];
    let entries = archive
        .entries()
        .map_err(|e| UnpackError::Invalid(format!("not a tar stream: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| UnpackError::Invalid(format!("malformed tar entry: {e}")))?;
        budget.take_entry().map_err(UnpackError::Limit)?;
        if let Some(dir) = unpack_entry(&mut entry, dest, budget, &mut buf)? {
            dirs.push(dir);
        }
    }
    let (got, size) = archive
        .into_inner()
        .drain()
        .map_err(|e| UnpackError::Invalid(format!("reading the layer: {e}")))?;
    if got != *diff_id {
        return Err(UnpackError::Invalid(format!(
            "the uncompressed layer hashes to {got}, the image config says {diff_id}"
        )));
    }
    // Directory times last: creating their children changed them.
    for (path, mtime) in dirs.iter().rev() {
        set_mtime(path, *mtime).map_err(|e| io_err(path.display(), e))?;
    }
    Ok(size)
}

/// The relative path of an entry, refusing `..`. `None` for the root itself.
fn entry_path(raw: &[u8]) -> std::result::Result<Option<PathBuf>, String> {
    if raw.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    let mut out = PathBuf::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => return Err("path contains \"..\"".into()),
            Component::Prefix(_) => return Err("path has a prefix".into()),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Makes sure every directory on the way to `rel` exists in `dest` and is a real directory
/// (never a symlink), creating missing ones.
fn prepare_parents(dest: &Path, rel: &Path, shown: &Path) -> Result<()> {
    let mut at = dest.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for c in parent.components() {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(invalid(
                    shown,
                    format!(
                        "would be written through the symlink {:?}",
                        at.strip_prefix(dest).unwrap_or(&at).display().to_string()
                    ),
                ))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(invalid(
                    shown,
                    format!(
                        "a parent, {:?}, is not a directory",
                        at.strip_prefix(dest).unwrap_or(&at).display().to_string()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&at)
                    .map_err(|e| io_err(at.display(), e))?;
            }
            Err(e) => return Err(io_err(at.display(), e)),
        }
    }
    Ok(())
}

/// Removes what an earlier entry of this layer left at `path` (a later entry replaces it),
/// except a directory that a directory entry only updates.
fn clear_for(path: &Path, keep_dir: bool) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && keep_dir => Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(|e| io_err(path.display(), e)),
        Ok(_) => fs::remove_file(path).map_err(|e| io_err(path.display(), e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path.display(), e)),
    }
}

/// Unpacks one entry; returns a directory and its mtime, to be set at the end.
fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<R>,
    dest: &Path,
    budget: &Budget,
    buf: &mut [u8],
) -> Result<Option<(PathBuf, i64)>> {
    let raw = entry.path_bytes().into_owned();
    let shown = PathBuf::from(OsStr::from_bytes(&raw));
    let rel = match entry_path(&raw).map_err(|e| invalid(&shown, e))? {
        Some(r) => r,
        None => {
            // The layer's root: only its metadata.
            apply_metadata(entry, dest, &shown, true)?;
            return Ok(None);
        }
    };
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    prepare_parents(dest, &rel, &shown)?;
    let target = dest.join(&rel);
    if name == OPAQUE_MARKER {
        let dir = target.parent().unwrap_or(dest);
        set_xattr(dir, OPAQUE_XATTR, b"y").map_err(|e| io_err(dir.display(), e))?;
        return Ok(None);
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.starts_with(".wh.") {
            return Ok(None); // aufs bookkeeping (.wh..wh.plnk, ...): not content
        }
        let gone = target.with_file_name(hidden);
        clear_for(&gone, false)?;
        mknod_whiteout(&gone).map_err(|e| io_err(gone.display(), e))?;
        return Ok(None);
    }
    let kind = entry.header().entry_type();
    use tar::EntryType as T;
    match kind {
        T::Directory => {
            clear_for(&target, true)?;
            if !target.exists() {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&target)
                    .map_err(|e| io_err(target.display(), e))?;
            }
            apply_metadata(entry, &target, &shown, false)?;
            let mtime = entry.header().mtime().unwrap_or(0) as i64;
            return Ok(Some((target, mtime)));
        }
        T::Regular | T::Continuous | T::GNUSparse => {
            clear_for(&target, false)?;
            let size = entry.header().size().map_err(|e| invalid(&shown, e))?;
            budget.take_bytes(size).map_err(UnpackError::Limit)?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&target)
                .map_err(|e| io_err(target.display(), e))?;
            loop {
                let n = entry.read(buf).map_err(|e| invalid(&shown, e))?;
                if n == 0 {
                    break;
                }
                f.write_all(&buf[..n])
                    .map_err(|e| io_err(target.display(), e))?;
            }
            drop(f);
        }
        T::Symlink => {
            clear_for(&target, false)?;
            let link = entry
                .link_name_bytes()
                .ok_or_else(|| invalid(&shown, "symlink without a target"))?;
            if link.is_empty() || link.contains(&0) {
                return Err(invalid(&shown, "symlink target is empty or has a NUL byte"));
            }
            std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                .map_err(|e| io_err(target.display(), e))?;
        }
        T::Link => {
            let link = entry
                .link_name_bytes()
                .ok_or_else(|| invalid(&shown, "hard link without a target"))?;
            let link_rel = entry_path(&link)
                .map_err(|e| invalid(&shown, format!("hard link target: {e}")))?
                .ok_or_else(|| invalid(&shown, "hard link to the layer root"))?;
            prepare_parents(dest, &link_rel, &shown)?;
            let source = dest.join(&link_rel);
            match fs::symlink_metadata(&source) {
                Ok(m) if m.is_file() => {}
                Ok(_) => {
                    return Err(invalid(
                        &shown,
                        format!("hard link target {:?} is not a regular file", link_rel),
                    ))
                }
                Err(_) => {
                    return Err(invalid(
                        &shown,
                        format!("hard link target {:?} is not in this layer", link_rel),
                    ))
                }
            }
            if source != target {
                clear_for(&target, false)?;
                fs::hard_link(&source, &target).map_err(|e| io_err(target.display(), e))?;
            }
            return Ok(None); // a link shares its target's metadata
        }
        T::Fifo => {
            clear_for(&target, false)?;
            nix::unistd::mkfifo(&target, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| io_err(target.display(), io::Error::from(e)))?;
        }
        T::Char | T::Block => {
            return Err(invalid(
                &shown,
                "device nodes are refused (devices come from the container spec)",
            ))
        }
        other => {
            return Err(invalid(
                &shown,
                format!("tar entry type {other:?} is not supported"),
            ))
        }
    }
    apply_metadata(entry, &target, &shown, false)?;
    if kind != T::Symlink {
        let mtime = entry.header().mtime().unwrap_or(0) as i64;
        set_mtime(&target, mtime).map_err(|e| io_err(target.display(), e))?;
    }
    Ok(None)
}

/// Owner, mode and the kept extended attributes of an entry. A header field that does not
/// parse is the layer's fault (`Invalid`, naming the entry), a failing syscall the guest's.
fn apply_metadata<R: Read>(
    entry: &mut tar::Entry<R>,
    path: &Path,
    shown: &Path,
    is_root: bool,
) -> Result<()> {
    let fs_err = |e: io::Error| io_err(path.display(), e);
    let h = entry.header();
    let uid = h.uid().map_err(|e| invalid(shown, e))?;
    let uid = u32::try_from(uid).map_err(|_| invalid(shown, "uid out of range"))?;
    let gid = h.gid().map_err(|e| invalid(shown, e))?;
    let gid = u32::try_from(gid).map_err(|_| invalid(shown, "gid out of range"))?;
    let mode = h.mode().map_err(|e| invalid(shown, e))? & 0o7777;
    let is_link = h.entry_type() == tar::EntryType::Symlink;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(fs_err)?;
    if !is_link {
        // After chown: chown clears set-id bits.
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(fs_err)?;
    }
    if is_root {
        return Ok(());
    }
    let exts = entry
        .pax_extensions()
        .map_err(|e| invalid(shown, format!("PAX header: {e}")))?;
    if let Some(exts) = exts {
        for ext in exts {
            let ext = ext.map_err(|e| invalid(shown, format!("PAX header: {e}")))?;
            let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            let keep = name.starts_with(b"user.") || name == b"security.capability";
            if keep && !is_link {
                let name = String::from_utf8_lossy(name).into_owned();
                set_xattr(path, &name, ext.value_bytes()).map_err(fs_err)?;
            }
        }
    }
    Ok(())
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in path"))
}

pub(crate) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = cstr(path)?;
    let n = CString::new(name).map_err(|_| io::Error::other("NUL in attribute name"))?;
    // SAFETY: valid C strings and a buffer with its length.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn get_xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let p = cstr(path)?;
    let n = CString::new(name).map_err(|_| io::Error::other("NUL in attribute name"))?;
    let mut buf = [0u8; 256];
    // SAFETY: valid C strings and a buffer with its length.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(buf[..rc as usize].to_vec()))
}

/// An overlayfs whiteout: a character device with device number 0/0.
fn mknod_whiteout(path: &Path) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: a valid C string; mknod has no memory-safety preconditions.
    let rc = unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// True for an overlayfs whiteout.
pub(crate) fn is_whiteout(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    m.file_type().is_char_device() && m.rdev() == 0
}

pub(crate) fn set_mtime(path: &Path, secs: i64) -> io::Result<()> {
    let p = cstr(path)?;
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: a valid C string and two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_stay_inside() {
        assert_eq!(entry_path(b"./a/b").unwrap(), Some(PathBuf::from("a/b")));
        assert_eq!(
            entry_path(b"/etc/passwd").unwrap(),
            Some(PathBuf::from("etc/passwd"))
        );
        assert_eq!(entry_path(b"./").unwrap(), None);
        assert!(entry_path(b"a/../../etc").unwrap_err().contains(".."));
        assert!(entry_path(b"a\0b").is_err());
    }

    #[test]
    fn a_header_field_that_does_not_parse_is_the_layers_fault() {
        let mut h = tar::Header::new_ustar();
        h.set_path("etc/hostname").unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(1);
        h.as_ustar_mut().unwrap().uid = *b"zzzzzzz\0"; // not octal
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        tar.extend_from_slice(&[b'x'; 512]);
        tar.extend_from_slice(&[0; 1024]);
        let dest = tempfile::tempdir().unwrap();
        let budget = Budget::new(1 << 20, 10);
        let diff_id = Digest::sha256_of(&tar);
        match unpack_layer(
            &tar[..],
            LayerCompression::None,
            &diff_id,
            dest.path(),
            &budget,
        ) {
            Err(UnpackError::Invalid(m)) => assert!(m.contains("etc/hostname"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn budget_counts_across_layers() {
        let b = Budget::new(10, 2);
        b.take_entry().unwrap();
        b.take_entry().unwrap();
        assert!(b.take_entry().unwrap_err().contains("2 entries"));
        b.take_bytes(6).unwrap();
        assert!(b.take_bytes(5).unwrap_err().contains("10 bytes"));
    }
}
