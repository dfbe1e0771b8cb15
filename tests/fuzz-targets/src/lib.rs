//! The bodies of vigil's fuzz targets: what the host (or a config, or initdata) can feed the
//! agent, run through the real code paths, with the security invariants asserted inside.
//!
//! Each public function is one target. The cargo-fuzz binaries in `fuzz/` are one-line calls
//! into them; `tests/replay.rs` feeds them the checked-in corpus and every minimised crash
//! input (`fuzz/regressions/<target>/`) on stable, as part of `cargo test`. See
//! `docs/FUZZING.md`.

mod policy;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Path -> (mode, uid, gid, link count, content or link target).
pub(crate) type TreeView = BTreeMap<PathBuf, (u32, u32, u32, u64, Vec<u8>)>;

/// Everything under `base` but `skip` (and what is under it), never following symlinks: what
/// the targets with a jail compare before and after to prove nothing outside it changed.
pub(crate) fn tree_view(base: &Path, skip: &Path) -> TreeView {
    let mut view = BTreeMap::new();
    let mut stack = vec![base.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path == skip {
                continue;
            }
            let m = std::fs::symlink_metadata(&path).unwrap();
            let content = if m.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if m.is_file() {
                std::fs::read(&path).unwrap()
            } else {
                stack.push(path.clone());
                Vec::new()
            };
            view.insert(path, (m.mode(), m.uid(), m.gid(), m.nlink(), content));
        }
    }
    view
}

pub mod codec;
pub mod config;
pub mod copy_file;
pub mod decision;
pub mod image_layer;
pub mod image_manifest;
pub mod image_policy;
pub mod initdata;
pub mod server;

/// A small cursor over fuzz input; reads past the end give zeros, so every input is usable.
pub(crate) struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input(data)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    /// A length-prefixed (u16) chunk.
    pub(crate) fn chunk(&mut self) -> &'a [u8] {
        let n = self.u16() as usize;
        self.bytes(n)
    }
}
