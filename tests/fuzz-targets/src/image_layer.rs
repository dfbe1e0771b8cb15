//! Target `image_layer`: a layer blob from a registry through the image crate's real unpacker
//! (`vigil_image::unpack_layer_into`, what a pull runs per layer) into a fresh directory.
//!
//! Input: `[mode][limits][body]`. `mode` picks the compression (none, gzip, zstd: the target
//! compresses the tar stream itself, so the fuzzer works on tar) and whether `body` is a raw
//! tar stream or entries the target builds (names with `..`, absolute names, symlinks and hard
//! links pointing out of the layer, links planted on the way to later entries, whiteouts,
//! opaque markers, device nodes, FIFOs, `trusted.*`/`user.*` extended attributes, GNU sparse
//! files, sizes that lie). `limits` picks the byte and entry budget.
//!
//! The layer unpacks into `<tmp>/layer` (`<tmp>` on /dev/shm where there is one); beside it, `<tmp>/outside` holds a directory, a file
//! and a symlink that must never change. Invariants after every input, accepted or refused:
//! - nothing outside the layer directory was created, removed or changed (path, mode, owner,
//!   link count, content, link target), so no write went through a symlink or `..`, and no
//!   hard link reaches a file outside the layer;
//! - the layer holds no block device and no character device but overlayfs whiteouts (0/0);
//! - the only `trusted.*` attribute is `trusted.overlay.opaque`, on directories, and (for
//!   built entries) only where an opaque marker named that directory;
//! - the files' bytes (per inode) stay within the byte budget and the non-directory entries
//!   within the entry budget;
//! - an accepted layer hashed to its diff_id and its size is the tar stream's length.
//!   Symlinks themselves may point anywhere: the container resolves them in its own root.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use vigil_image::{Digest, LayerCompression};

use crate::Input;

/// Name pieces the built entries are made of.
const PIECES: &[&str] = &[
    "a",
    "b",
    "..",
    ".",
    "",
    "out",
    "ln",
    ".wh.a",
    ".wh..wh..opq",
    ".wh..wh.plnk",
    "/",
    "../outside",
    "outside/victim",
    "etc/passwd",
    "victim",
];

/// Byte and entry budgets.
const LIMITS: &[(u64, u64)] = &[(1 << 20, 64), (4096, 8), (64 << 10, 3), (1 << 20, 1000)];

struct Place {
    base: tempfile::TempDir,
}

impl Place {
    fn new() -> Place {
        // A tmpfs, like the guest's image store under /run (and 10x faster than a busy disk).
        let shm = Path::new("/dev/shm");
        let parent = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let base = tempfile::Builder::new()
            .prefix("vigil-fuzz-layer-")
            .tempdir_in(parent)
            .expect("a temporary directory");
        let outside = base.path().join("outside");
        std::fs::create_dir_all(outside.join("dir")).unwrap();
        std::fs::write(outside.join("victim"), b"must not change").unwrap();
        std::os::unix::fs::symlink("victim", outside.join("link")).unwrap();
        Place { base }
    }

    fn layer(&self) -> PathBuf {
        self.base.path().join("layer")
    }

    fn reset(&self) {
        let layer = self.layer();
        // remove_dir_all never follows symlinks.
        if layer.exists() {
            let _ = std::fs::set_permissions(
                &layer,
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            );
            std::fs::remove_dir_all(&layer).unwrap();
        }
        std::fs::create_dir(&layer).unwrap();
    }

    /// Everything under the base but the jail's contents.
    fn outside_view(&self) -> crate::TreeView {
        crate::tree_view(self.base.path(), &self.layer())
    }
}

thread_local! {
    static PLACE: RefCell<Option<Place>> = const { RefCell::new(None) };
}

/// What the target knows about built entries, for the invariants.
#[derive(Default)]
struct Built {
    /// Directories (relative to the layer, "" for its root) an opaque marker named.
    opaque: HashSet<PathBuf>,
}

pub fn image_layer(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let (max_bytes, max_entries) = LIMITS[input.u8() as usize % LIMITS.len()];
    let compression = match mode % 3 {
        0 => LayerCompression::None,
        1 => LayerCompression::Gzip,
        _ => LayerCompression::Zstd,
    };
    PLACE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let place = slot.get_or_insert_with(Place::new);
        place.reset();
        let outside = place.base.path().join("outside");
        let (tar, built) = if mode & 0x80 == 0 {
            let (t, b) = build(&mut input, &outside);
            (t, Some(b))
        } else {
            (input.bytes(usize::MAX).to_vec(), None)
        };
        // Mostly the right diff_id (so accepted layers reach the end); sometimes not.
        let diff_id = if mode & 0x40 == 0 {
            Digest::sha256_of(&tar)
        } else {
            Digest::sha256_of(b"another layer")
        };
        let blob = compress(&tar, compression);
        let before = place.outside_view();
        let layer = place.layer();
        let result = vigil_image::unpack_layer_into(
            &blob[..],
            compression,
            &diff_id,
            &layer,
            max_bytes,
            max_entries,
        );
        let after = place.outside_view();
        assert!(
            after == before,
            "unpacking changed what is outside the layer ({result:?}): before {before:?}, after {after:?}"
        );
        check_layer(&layer, max_bytes, max_entries, built.as_ref(), &result);
        if let Ok(n) = result {
            assert_eq!(n, tar.len() as u64, "accepted size");
            assert_eq!(diff_id, Digest::sha256_of(&tar), "accepted with the wrong diff_id");
        }
    });
}

fn check_layer(
    layer: &Path,
    max_bytes: u64,
    max_entries: u64,
    built: Option<&Built>,
    result: &Result<u64, String>,
) {
    let mut inodes = BTreeSet::new();
    let mut bytes = 0u64;
    let mut entries = 0u64;
    let mut stack = vec![layer.to_path_buf()];
    while let Some(dir) = stack.pop() {
        check_xattrs(layer, &dir, true, built);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let t = m.file_type();
            if t.is_dir() {
                stack.push(path);
                continue;
            }
            entries += 1;
            assert!(
                !t.is_block_device(),
                "block device {} ({result:?})",
                path.display()
            );
            if t.is_char_device() {
                assert_eq!(m.rdev(), 0, "device node {} ({result:?})", path.display());
            }
            if t.is_file() && inodes.insert(m.ino()) {
                bytes += m.len();
            }
            if !t.is_symlink() {
                check_xattrs(layer, &path, false, built);
            }
        }
    }
    assert!(
        bytes <= max_bytes,
        "{bytes} bytes of files unpacked, the limit is {max_bytes} ({result:?})"
    );
    assert!(
        entries <= max_entries,
        "{entries} entries unpacked, the limit is {max_entries} ({result:?})"
    );
}

fn check_xattrs(layer: &Path, path: &Path, is_dir: bool, built: Option<&Built>) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: a valid C string and a buffer with its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(
        n >= 0,
        "llistxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    for name in buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        if !name.starts_with(b"trusted.") {
            continue;
        }
        assert!(
            name == b"trusted.overlay.opaque" && is_dir,
            "{} has {}",
            path.display(),
            String::from_utf8_lossy(name)
        );
        if let Some(b) = built {
            let rel = path.strip_prefix(layer).unwrap();
            assert!(
                b.opaque.contains(rel),
                "{} made opaque without a marker",
                rel.display()
            );
        }
    }
}

/// An entry name as the unpacker reads it: its layer-relative parent directory and its last
/// component; `None` for a name it refuses (`..`) or the layer root.
fn split_name(name: &[u8]) -> Option<(PathBuf, std::ffi::OsString)> {
    let mut out = PathBuf::new();
    for c in Path::new(std::ffi::OsStr::from_bytes(name)).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => return None,
            _ => {}
        }
    }
    let file = out.file_name()?.to_os_string();
    out.pop();
    Some((out, file))
}

fn name(input: &mut Input, outside: &Path) -> Vec<u8> {
    let pieces = input.u8();
    if pieces == 0xff {
        return input.chunk().to_vec();
    }
    let mut out = Vec::new();
    if pieces & 0x40 != 0 {
        out.extend_from_slice(outside.as_os_str().as_bytes());
        out.push(b'/');
    }
    for i in 0..(pieces % 4) + 1 {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(PIECES[input.u8() as usize % PIECES.len()].as_bytes());
    }
    out
}

/// Builds a tar stream from `[kind][name][link name][mode u16][uid][size][...]` entries.
fn build(input: &mut Input, outside: &Path) -> (Vec<u8>, Built) {
    let mut built = Built::default();
    let mut out = Vec::new();
    let mut count = 0;
    while !input.is_empty() && count < 24 {
        count += 1;
        let kind = input.u8();
        let path = name(input, outside);
        let link = name(input, outside);
        let mut h = tar::Header::new_gnu();
        let perm = u32::from(input.u16()) & 0o7777;
        h.set_mode(perm);
        let owner = u64::from(input.u8());
        h.set_uid(owner);
        h.set_gid(owner);
        h.set_mtime(1_700_000_000);
        let size = usize::from(input.u8()) * 16;
        let mut data = vec![b'x'; size];
        let mut pax: Vec<(&str, &[u8])> = Vec::new();
        use tar::EntryType as T;
        let entry_type = match kind % 12 {
            0 => T::Directory,
            1 | 2 => T::Regular,
            3 => T::Symlink,
            4 => T::Link,
            5 => T::Char,
            6 => T::Block,
            7 => T::Fifo,
            8 => {
                pax.push(("SCHILY.xattr.trusted.overlay.opaque", b"y"));
                pax.push(("SCHILY.xattr.user.note", b"kept"));
                pax.push(("SCHILY.xattr.trusted.overlay.redirect", b"/etc"));
                if kind & 0x10 == 0 {
                    T::Directory
                } else {
                    T::Regular
                }
            }
            9 => T::GNUSparse,
            10 => T::new(input.u8()),
            _ => T::Regular,
        };
        h.set_entry_type(entry_type);
        if matches!(entry_type, T::Char | T::Block) {
            let _ = h.set_device_major(u32::from(input.u8()));
            let _ = h.set_device_minor(u32::from(input.u8()));
        }
        if !matches!(entry_type, T::Regular | T::GNUSparse) {
            data.clear();
        }
        // Names and link names go in raw: tar's setters refuse `..`, which is the point here.
        let gnu = h.as_gnu_mut().unwrap();
        let n = path.len().min(gnu.name.len());
        gnu.name[..n].copy_from_slice(&path[..n]);
        let l = link.len().min(gnu.linkname.len());
        gnu.linkname[..l].copy_from_slice(&link[..l]);
        // The header's name field ends at its first NUL, as tar (and so the unpacker) reads it.
        let stored = path[..n].split(|b| *b == 0).next().unwrap_or_default();
        if let Some((parent, file)) = split_name(stored) {
            if file == ".wh..wh..opq" {
                built.opaque.insert(parent);
            }
        }
        if entry_type == T::GNUSparse {
            // One data block far into the file: a few stored bytes, a large file.
            data.resize(512, b's');
            let hole = 512 * 16 * u64::from(input.u8());
            let gnu = h.as_gnu_mut().unwrap();
            gnu.sparse[0].offset = octal12(hole);
            gnu.sparse[0].numbytes = octal12(512);
            gnu.realsize = octal12(hole + 512);
        }
        let lie = kind & 0x20 != 0 && entry_type == T::Regular;
        h.set_size(if lie {
            data.len() as u64 + 4096
        } else {
            data.len() as u64
        });
        h.set_cksum();
        if !pax.is_empty() {
            let mut ext = Vec::new();
            for (k, v) in &pax {
                pax_record(&mut ext, k, v);
            }
            let mut ph = tar::Header::new_ustar();
            ph.set_entry_type(T::XHeader);
            ph.set_size(ext.len() as u64);
            ph.set_cksum();
            push(&mut out, &ph, &ext);
        }
        if lie {
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(&data);
            break; // the stream ends inside the entry
        }
        push(&mut out, &h, &data);
    }
    out.extend_from_slice(&[0u8; 1024]);
    (out, built)
}

/// One `"<len> <key>=<value>\n"` record, whose length counts its own digits.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn push(out: &mut Vec<u8>, h: &tar::Header, data: &[u8]) {
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn octal12(n: u64) -> [u8; 12] {
    let mut f = [0u8; 12];
    let s = format!("{n:011o}");
    f[..11].copy_from_slice(s.as_bytes());
    f
}

fn compress(tar: &[u8], compression: LayerCompression) -> Vec<u8> {
    match compression {
        LayerCompression::None => tar.to_vec(),
        LayerCompression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        LayerCompression::Zstd => zstd::bulk::compress(tar, 1).unwrap(),
    }
}
