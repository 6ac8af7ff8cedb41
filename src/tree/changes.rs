//! Which resolved nodes a change through the mount made stale, keyed on where it
//! happened: a change of the entry `P/N` (made, removed, copied up, renamed to or from)
//! changes what `P/N` and everything below it resolve to, and the attributes of the
//! folder `P`; nothing else. A node is resolved again only when one of those changed
//! after it was resolved, not after any change anywhere in the tree.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

#[derive(Debug)]
pub(super) struct FolderChanges {
    /// Counts changes; a node is stamped with the count when it is resolved.
    tick: AtomicU64,
    /// The count at the last change of each entry that changed, for it and everything
    /// below it. Bounded by the entries changed through the mount.
    below: DashMap<PathBuf, u64>,
    /// The count at the last change among the entries of each folder, for the folder's
    /// own node (its times and link count).
    folder: DashMap<PathBuf, u64>,
}

impl FolderChanges {
    pub(super) fn new() -> Self {
        FolderChanges {
            tick: AtomicU64::new(1),
            below: DashMap::new(),
            folder: DashMap::new(),
        }
    }

    /// The stamp of a node resolved now.
    pub(super) fn now(&self) -> u64 {
        self.tick.load(Ordering::Acquire)
    }

    /// The entry `path` changed: it and everything below it resolve again before use,
    /// and so does the folder that holds it.
    pub(super) fn changed(&self, path: &Path) {
        let tick = self.tick.fetch_add(1, Ordering::AcqRel) + 1;
        self.below.insert(path.to_path_buf(), tick);
        if let Some(parent) = path.parent() {
            self.folder.insert(parent.to_path_buf(), tick);
        }
    }

    /// True when `path`, or an entry above it, changed after `stamp`, or (for a
    /// folder) one of its entries did.
    pub(super) fn is_stale(&self, path: &Path, stamp: u64) -> bool {
        if self.now() == stamp {
            return false;
        }
        if self.folder.get(path).is_some_and(|t| *t > stamp) {
            return true;
        }
        let mut at = Some(path);
        while let Some(p) = at {
            if self.below.get(p).is_some_and(|t| *t > stamp) {
                return true;
            }
            at = p.parent();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_marks_the_entry_below_and_its_folder_only() {
        let changes = FolderChanges::new();
        let stamp = changes.now();
        changes.changed(Path::new("a/b"));
        assert!(changes.is_stale(Path::new("a/b"), stamp));
        assert!(changes.is_stale(Path::new("a/b/c/d"), stamp));
        assert!(
            changes.is_stale(Path::new("a"), stamp),
            "the folder holding it"
        );
        assert!(!changes.is_stale(Path::new("a/bc"), stamp));
        assert!(!changes.is_stale(Path::new("a/x/y"), stamp));
        assert!(!changes.is_stale(Path::new(""), stamp));
        assert!(!changes.is_stale(Path::new("x/y"), stamp));
        let later = changes.now();
        assert!(!changes.is_stale(Path::new("a/b/c"), later));
        changes.changed(Path::new("x"));
        assert!(changes.is_stale(Path::new("x/y"), later));
        assert!(changes.is_stale(Path::new(""), later));
        assert!(!changes.is_stale(Path::new("a/b/c"), later));
    }
}
