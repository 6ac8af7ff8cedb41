//! Inode numbers and lookup counts.
//!
//! An inode number is a hash of the entry's path in the tree, so it is the same for
//! `readdir` (`d_ino`) and `lookup` (`st_ino`), stays the same when the kernel forgets
//! and looks an entry up again, and even across mounts of the same parameters. The
//! table holds only what the kernel holds (lookup count > 0): FORGET drops entries.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::Node;

pub const ROOT_INO: u64 = 1;

#[derive(Debug)]
struct Inode {
    path: Arc<Path>,
    node: Arc<Node>,
    lookups: u64,
}

#[derive(Debug, Default)]
pub struct InodeTable {
    map: DashMap<u64, Inode>,
    /// Paths whose number is not where hashing would find it (renamed entries).
    moved: DashMap<Arc<Path>, u64>,
}

fn hash_ino(path: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    path.hash(&mut h);
    // Keep clear of 0 (invalid) and 1 (the root).
    h.finish().max(2)
}

fn next(ino: u64) -> u64 {
    ino.checked_add(1).unwrap_or(2)
}

impl InodeTable {
    pub fn new(root: Node) -> Self {
        let table = InodeTable::default();
        table.map.insert(
            ROOT_INO,
            Inode {
                path: Arc::from(Path::new("")),
                node: Arc::new(root),
                lookups: 1,
            },
        );
        table
    }

    /// The number `path` has (or would get at its next lookup).
    pub fn ino_of(&self, path: &Path) -> u64 {
        if path.as_os_str().is_empty() {
            return ROOT_INO;
        }
        if let Some(ino) = self.moved.get(path) {
            return *ino;
        }
        let mut ino = hash_ino(path);
        loop {
            match self.map.get(&ino) {
                Some(i) if &*i.path != path => ino = next(ino),
                _ => return ino,
            }
        }
    }

    /// Records one kernel lookup of `path`, resolved as `node`; returns its number.
    pub fn remember(&self, path: &Path, node: Arc<Node>) -> u64 {
        if path.as_os_str().is_empty() {
            if let Some(mut root) = self.map.get_mut(&ROOT_INO) {
                root.node = node;
            }
            return ROOT_INO;
        }
        let mut ino = match self.moved.get(path) {
            Some(ino) => *ino,
            None => hash_ino(path),
        };
        loop {
            match self.map.entry(ino) {
                Entry::Occupied(mut o) if &*o.get().path == path => {
                    let inode = o.get_mut();
                    inode.node = node;
                    inode.lookups += 1;
                    return ino;
                }
                Entry::Occupied(_) => ino = next(ino),
                Entry::Vacant(v) => {
                    v.insert(Inode {
                        path: Arc::from(path),
                        node,
                        lookups: 1,
                    });
                    return ino;
                }
            }
        }
    }

    pub fn get(&self, ino: u64) -> Option<(Arc<Path>, Arc<Node>)> {
        self.map.get(&ino).map(|i| (i.path.clone(), i.node.clone()))
    }

    /// Replaces the resolved node of `ino` (after a mutable layer changed).
    pub fn update(&self, ino: u64, node: Arc<Node>) {
        if let Some(mut i) = self.map.get_mut(&ino) {
            i.node = node;
        }
    }

    /// FORGET: the kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        if let Entry::Occupied(mut o) = self.map.entry(ino) {
            let inode = o.get_mut();
            inode.lookups = inode.lookups.saturating_sub(n);
            if inode.lookups == 0 {
                let (_, gone) = o.remove_entry();
                self.moved.remove_if(&gone.path, |_, moved| *moved == ino);
            }
        }
    }

    /// `path` was removed (unlink, or replaced by a rename): its number keeps describing
    /// the removed entry for the fds still open on it, and a new entry of that name
    /// gets another number.
    pub fn detach(&self, path: &Path) {
        let deleted = || Arc::from(Path::new("/deleted"));
        if let Some((_, old)) = self.moved.remove(path) {
            if let Some(mut i) = self.map.get_mut(&old) {
                i.path = deleted();
            }
            return;
        }
        let ino = self.ino_of(path);
        if let Some(mut i) = self.map.get_mut(&ino) {
            if &*i.path == path {
                i.path = deleted();
            }
        }
    }

    /// A rename in the tree: `from` and everything below it now live under `to`; the
    /// numbers stay (an open file and a later `stat` agree).
    pub fn rename(&self, from: &Path, to: &Path) {
        // Whatever `to` named before is no longer reachable by path.
        self.detach(to);
        let renamed: Vec<(u64, Arc<Path>)> = self
            .map
            .iter()
            .filter(|i| i.path.starts_with(from) && *i.key() != ROOT_INO)
            .map(|i| (*i.key(), i.path.clone()))
            .collect();
        for (ino, old) in renamed {
            let suffix = old.strip_prefix(from).unwrap_or(Path::new(""));
            let new: Arc<Path> = if suffix.as_os_str().is_empty() {
                Arc::from(to)
            } else {
                Arc::from(to.join(suffix))
            };
            self.moved.remove(&old);
            if let Some(mut i) = self.map.get_mut(&ino) {
                i.path = new.clone();
            }
            if hash_ino(&new) != ino {
                self.moved.insert(new, ino);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{EmptyDir, Layer};

    fn node() -> Arc<Node> {
        let entry = EmptyDir.entry(Path::new("")).unwrap().unwrap();
        Arc::new(Node::of(entry))
    }

    #[test]
    fn numbers_are_stable_and_forget_drops_entries() {
        let table = InodeTable::new((*node()).clone());
        let p = Path::new("rootfs/etc");
        let predicted = table.ino_of(p);
        let ino = table.remember(p, node());
        assert_eq!(ino, predicted);
        assert_eq!(table.remember(p, node()), ino);
        assert_ne!(table.remember(Path::new("rootfs/etc2"), node()), ino);
        assert_eq!(table.len(), 3);
        table.forget(ino, 1);
        assert!(table.get(ino).is_some());
        table.forget(ino, 1);
        assert!(table.get(ino).is_none());
        // Looked up again after FORGET: same number.
        assert_eq!(table.remember(p, node()), ino);
        table.forget(ROOT_INO, 10);
        assert!(table.get(ROOT_INO).is_some());
    }
}
