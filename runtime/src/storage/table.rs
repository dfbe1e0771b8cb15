//! The storages set up in a sandbox, by mount point, as Kata's agent keeps them: a storage is
//! set up by the first request that names its mount point and used by every later one that
//! names the same storage there (the pod's containers share an emptyDir this way), counted per
//! user. When its last container goes, it is undone, unless it is the sandbox's own (from
//! CreateSandbox) or was asked for with `shared` (Kata's block emptyDirs, whose data must
//! outlive any one container): those stay until the sandbox is destroyed, and a later
//! container naming them finds them as they were (no second `create_filesystem`).

use std::path::{Path, PathBuf};

use vigil_protos::agent::Storage;

use super::watchable::Watcher;
use super::Added;
use crate::confine::Owned;
use crate::error::{Result, RuntimeError};
use crate::mount::Mounted;

#[derive(Debug)]
struct Entry {
    /// The mount point, relative to the sandbox directory.
    rel: PathBuf,
    /// The storage as first asked for: a later user must ask for the same.
    request: Storage,
    mount: Option<Mounted>,
    root: Owned,
    watcher: Option<Watcher>,
    /// Containers holding it.
    users: usize,
    /// Set up by CreateSandbox.
    sandbox: bool,
}

impl Entry {
    /// Stops what keeps it up to date, then unmounts it; what failed, if anything.
    fn undo(self) -> Option<String> {
        drop(self.watcher);
        self.mount.and_then(|m| m.unmount().err())
    }

    /// Kept while no container holds it: the sandbox's own, or asked for with `shared`.
    fn kept(&self) -> bool {
        self.sandbox || self.request.shared
    }
}

/// Every storage of one sandbox.
#[derive(Debug, Default)]
pub(crate) struct SandboxStorages {
    entries: Vec<Entry>,
}

/// The storages one container (or the sandbox) holds: one mount point per storage of its
/// request, released together.
#[derive(Debug, Default)]
pub(crate) struct Held(Vec<PathBuf>);

/// Whether two requests name the same storage (a later user's must be the first's).
fn same_storage(a: &Storage, b: &Storage) -> bool {
    let driver = |s: &Storage| {
        if s.driver.is_empty() && s.fstype == "tmpfs" {
            "ephemeral".to_string()
        } else {
            s.driver.clone()
        }
    };
    driver(a) == driver(b)
        && a.source == b.source
        && a.fstype == b.fstype
        && a.options == b.options
        && a.driver_options == b.driver_options
        && a.fs_group == b.fs_group
}

impl SandboxStorages {
    fn position(&self, rel: &Path) -> Option<usize> {
        self.entries.iter().position(|e| e.rel == rel)
    }

    /// Takes one more use of the storage at `rel`, if there is one: its root (a duplicate
    /// descriptor). A different storage there is refused (`field` names the new one).
    pub(super) fn reuse(
        &mut self,
        rel: &Path,
        storage: &Storage,
        field: &str,
    ) -> Result<Option<Owned>> {
        let Some(i) = self.position(rel) else {
            return Ok(None);
        };
        let e = &mut self.entries[i];
        if !same_storage(&e.request, storage) {
            return Err(RuntimeError::invalid(
                format!("{field}.mount_point"),
                format!(
                    "{} already holds another storage ({} from {:?}); a storage there must be \
                     the same one",
                    rel.display(),
                    e.request.driver,
                    e.request.source
                ),
            ));
        }
        let root = e.root.try_clone()?;
        e.users += 1;
        Ok(Some(root))
    }

    /// Records a storage just set up for a container (`for_container`) or the sandbox.
    pub(super) fn insert(
        &mut self,
        rel: PathBuf,
        request: &Storage,
        added: Added,
        for_container: bool,
    ) {
        self.entries.push(Entry {
            rel,
            request: request.clone(),
            mount: added.mount,
            root: added.root,
            watcher: added.watcher,
            users: usize::from(for_container),
            sandbox: !for_container,
        });
    }

    /// Undoes what a failed request set up: the uses it took, and the storages it made (even
    /// `shared` ones: nothing was ever put in them).
    pub(super) fn roll_back(&mut self, taken: Held, made: &[PathBuf]) -> Vec<String> {
        let mut errors = Vec::new();
        for rel in made.iter().rev() {
            if let Some(i) = self.position(rel) {
                errors.extend(self.entries.remove(i).undo());
            }
        }
        errors.extend(self.release(taken));
        errors
    }

    /// Gives back the uses `held` took; a storage no container holds any more is undone
    /// unless kept. Returns what could not be undone.
    pub(crate) fn release(&mut self, held: Held) -> Vec<String> {
        let mut errors = Vec::new();
        for rel in held.0.iter().rev() {
            let Some(i) = self.position(rel) else {
                continue;
            };
            let e = &mut self.entries[i];
            e.users = e.users.saturating_sub(1);
            if e.users == 0 && !e.kept() {
                errors.extend(self.entries.remove(i).undo());
            }
        }
        errors
    }

    /// The sandbox's own storages' roots (duplicate descriptors): where containers' bind
    /// sources, rootfs and storage sources may also be.
    pub(crate) fn sandbox_roots(&self) -> Result<Vec<Owned>> {
        self.entries
            .iter()
            .filter(|e| e.sandbox)
            .map(|e| e.root.try_clone())
            .collect()
    }

    /// Undoes every storage, newest first (DestroySandbox).
    pub(crate) fn unmount_all(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        while let Some(e) = self.entries.pop() {
            errors.extend(e.undo());
        }
        errors
    }
}

impl Held {
    pub(super) fn push(&mut self, rel: PathBuf) {
        self.0.push(rel);
    }
}
