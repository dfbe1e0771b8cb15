//! Target `copy_file`: CopyFile's path and mode handling against a real directory tree.
//!
//! Each input is a sequence of CopyFile requests applied to a fresh jail
//! (`<tmp>/sandbox/shared`, as the sandbox's `shared/`). Beside the jail are a directory with
//! a file that must never change, and inside it two symlinks "planted" by something other than
//! CopyFile, pointing out of the jail (to the directory and to the file).
//!
//! Invariant after every request: nothing outside the jail was created, removed or changed
//! (the tree outside is compared entry by entry, content and mode included); every symlink
//! that CopyFile made inside the jail has a relative target without `..`.
//!
//! Input: repeated `[path selector...][type][mode][uid][gid][u16 size][u16 offset][chunk]`.

use std::cell::RefCell;
use std::path::{Component, Path, PathBuf};

use vigil_protos::agent::CopyFileRequest;

use crate::Input;

/// Path pieces the fuzzer combines: names that exist, the planted links, dot-dots, the
/// reserved temporary suffix, empty components.
const PIECES: &[&str] = &[
    "a",
    "b",
    "evil",
    "over",
    "..",
    ".",
    "",
    "f.vigil-copy",
    "dir",
    "evil/x",
    "../outside",
    "\u{0}",
];

/// Symlink targets: inside, dot-dot, absolute, the planted links.
const TARGETS: &[&str] = &[
    "a",
    "../outside",
    "/etc",
    "b/../../x",
    "evil",
    "",
    "./a",
    "over",
];

struct Jail {
    base: tempfile::TempDir,
}

impl Jail {
    fn new() -> Jail {
        let base = tempfile::tempdir().expect("a temporary directory");
        let outside = base.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"must not change").unwrap();
        Jail { base }
    }

    fn shared(&self) -> PathBuf {
        self.base.path().join("sandbox/shared")
    }

    fn reset(&self) {
        let sandbox = self.base.path().join("sandbox");
        // remove_dir_all never follows symlinks.
        let _ = std::fs::remove_dir_all(&sandbox);
        let shared = self.shared();
        std::fs::create_dir_all(&shared).unwrap();
        let outside = self.base.path().join("outside");
        std::os::unix::fs::symlink(&outside, shared.join("evil")).unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), shared.join("over")).unwrap();
    }

    /// Everything under the base but the jail's contents.
    fn outside_view(&self) -> crate::TreeView {
        crate::tree_view(self.base.path(), &self.shared())
    }

    /// Symlinks inside the jail other than the two planted ones.
    fn check_links(&self) {
        let shared = self.shared();
        let mut stack = vec![shared.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.file_type().is_symlink() {
                    if path == shared.join("evil") || path == shared.join("over") {
                        continue;
                    }
                    let target = std::fs::read_link(&path).unwrap();
                    assert!(
                        target.is_relative()
                            && target
                                .components()
                                .all(|c| !matches!(c, Component::ParentDir)),
                        "CopyFile made {} -> {}",
                        path.display(),
                        target.display()
                    );
                } else if meta.is_dir() {
                    stack.push(path);
                }
            }
        }
    }
}

thread_local! {
    static JAIL: RefCell<Option<Jail>> = const { RefCell::new(None) };
}

fn request(jail: &Path, input: &mut Input) -> CopyFileRequest {
    let mut path = jail.to_string_lossy().into_owned();
    let pieces = (input.u8() % 5) as usize;
    for _ in 0..pieces {
        path.push('/');
        path.push_str(PIECES[input.u8() as usize % PIECES.len()]);
    }
    if input.u8() == 0xff {
        // A path of the fuzzer's own making, possibly outside the jail altogether.
        path = String::from_utf8_lossy(input.chunk()).into_owned();
    }
    let kind = input.u8();
    let file_type = match kind % 5 {
        0 | 1 => libc::S_IFREG,
        2 => libc::S_IFDIR,
        3 => libc::S_IFLNK,
        _ => u32::from(input.u8()) << 12,
    };
    let perm = u32::from(input.u16()) & 0o7777;
    let uid = i32::from(input.u8()) - 1;
    let gid = i32::from(input.u8()) - 1;
    let file_size = i64::from(input.u16() as i16);
    let offset = i64::from(input.u16() as i16);
    let data = if file_type == libc::S_IFLNK && kind & 0x80 == 0 {
        TARGETS[input.u8() as usize % TARGETS.len()]
            .as_bytes()
            .to_vec()
    } else {
        input.chunk().to_vec()
    };
    CopyFileRequest {
        path,
        file_size,
        file_mode: file_type | perm,
        dir_mode: 0o700 | (u32::from(input.u8()) & 0o7777),
        uid,
        gid,
        offset,
        data,
        ..Default::default()
    }
}

pub fn copy_file(data: &[u8]) {
    JAIL.with(|cell| {
        let mut slot = cell.borrow_mut();
        let jail = slot.get_or_insert_with(Jail::new);
        jail.reset();
        let before = jail.outside_view();
        let shared = jail.shared();
        let mut input = Input::new(data);
        let keep_setuid = input.u8() & 1 == 1;
        let mut count = 0;
        while !input.is_empty() && count < 16 {
            count += 1;
            let req = request(&shared, &mut input);
            let _ = vigil_runtime::copy_file_into(&shared, &req, keep_setuid);
            let after = jail.outside_view();
            if after != before {
                let changed: Vec<_> = after
                    .iter()
                    .filter(|(k, v)| before.get(*k) != Some(v))
                    .map(|(k, _)| k.display().to_string())
                    .chain(
                        before
                            .keys()
                            .filter(|k| !after.contains_key(*k))
                            .map(|k| format!("removed {}", k.display())),
                    )
                    .collect();
                panic!("CopyFile {req:?} changed outside the jail: {changed:?}");
            }
            jail.check_links();
        }
    });
}
