//! Which resolved nodes a change through the mount made stale, keyed on the folder that
//! changed: a node is resolved again only when its own path or a folder above it changed
//! after it was resolved, not after any change anywhere in the tree.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

#[derive(Debug)]
pub(super) struct FolderChanges {
    /// Counts changes; a node is stamped with the count when it is resolved.
    tick: AtomicU64,
    /// The count at the last change of each folder that changed (its entries, or what
    /// resolves below it). Bounded by the folders changed through the mount.
    by_folder: DashMap<PathBuf, u64>,
}

impl FolderChanges {
    pub(super) fn new() -> Self {
        FolderChanges {
            tick: AtomicU64::new(1),
            by_folder: DashMap::new(),
        }
    }

    /// The stamp of a node resolved now.
    pub(super) fn now(&self) -> u64 {
        self.tick.load(Ordering::Acquire)
    }

    /// `folder` changed: it and everything below it resolve again before use.
    pub(super) fn changed(&self, folder: &Path) {
        let tick = self.tick.fetch_add(1, Ordering::AcqRel) + 1;
        self.by_folder.insert(folder.to_path_buf(), tick);
    }

    /// True when `path`, or a folder above it, changed after `stamp`.
    pub(super) fn is_stale(&self, path: &Path, stamp: u64) -> bool {
        if self.now() == stamp {
            return false;
        }
        let mut at = Some(path);
        while let Some(p) = at {
            if self.by_folder.get(p).is_some_and(|t| *t > stamp) {
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
    fn a_change_marks_its_folder_and_below_only() {
        let changes = FolderChanges::new();
        let stamp = changes.now();
        changes.changed(Path::new("a/b"));
        assert!(changes.is_stale(Path::new("a/b"), stamp));
        assert!(changes.is_stale(Path::new("a/b/c/d"), stamp));
        assert!(!changes.is_stale(Path::new("a"), stamp));
        assert!(!changes.is_stale(Path::new("a/bc"), stamp));
        assert!(!changes.is_stale(Path::new("x/y"), stamp));
        let later = changes.now();
        assert!(!changes.is_stale(Path::new("a/b/c"), later));
        changes.changed(Path::new(""));
        assert!(changes.is_stale(Path::new("x/y"), later));
    }
}
