//! Inode numbers and lookup counts.
//!
//! An inode number is a hash of the entry's path in the tree, so it is the same for
//! `readdir` (`d_ino`) and `lookup` (`st_ino`), stays the same when the kernel forgets
//! and looks an entry up again, and across mounts of the same parameters, builds and
//! Rust releases: the hash is 64-bit FNV-1a (docs/DESIGN.md §6), fixed by its published
//! offset basis and prime, over the path's bytes as stored (components joined by `/`, no
//! leading `/`). The table holds only what the kernel holds (lookup count > 0): FORGET
//! drops entries.
//!
//! A record is kept per entry the kernel holds, so it is small: the table's slot is a
//! number and a pointer (the hash table's spare capacity costs little), the record
//! holds the path (its last name, sharing its folder's: `names`), the lookup count and
//! the node, packed when it is of the common kind (`packed`). Other names of
//! hard-linked files, which few entries have, are in a table of their own.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::names::TreePath;
use super::packed::HeldNode;
use super::{InUpper, Node};
use crate::layers::Content;

pub const ROOT_INO: u64 = 1;

/// The path of a superseded number ([`InodeTable::supersede`]); rooted, so no lookup
/// resolves to it.
const SUPERSEDED: &str = "/superseded";

#[derive(Debug)]
struct Inode {
    /// `None`: the root.
    name: Option<TreePath>,
    /// The node and the lookup count.
    node: HeldNode,
}

impl Inode {
    fn new(name: Option<TreePath>, node: Arc<Node>, lookups: u64) -> Box<Self> {
        let mut inode = Box::new(Inode {
            name,
            node: HeldNode::Full {
                node: node.clone(),
                lookups,
            },
        });
        inode.set_node(node);
        inode
    }

    fn path(&self) -> Arc<Path> {
        match &self.name {
            Some(name) => name.to_path(),
            None => Arc::from(Path::new("")),
        }
    }

    fn is(&self, path: &Path) -> bool {
        match &self.name {
            Some(name) => name.is(path),
            None => path.as_os_str().is_empty(),
        }
    }

    fn set_node(&mut self, node: Arc<Node>) {
        self.set_node_and_lookups(node, self.node.lookups());
    }

    /// One more kernel lookup, resolved as `node`.
    fn looked_up(&mut self, node: Arc<Node>) {
        self.set_node_and_lookups(node, self.node.lookups().saturating_add(1));
    }

    fn set_node_and_lookups(&mut self, node: Arc<Node>, lookups: u64) {
        let held = HeldNode::of(|p| self.is(p), node, lookups);
        self.node = held;
    }

    /// A packed node is made from the path the record has: before the path changes,
    /// the node is kept whole, with the old one.
    fn keep_node_whole(&mut self) {
        if matches!(self.node, HeldNode::Packed(_)) {
            self.node = self.node.whole(&self.path());
        }
    }
}

#[derive(Debug, Default)]
pub struct InodeTable {
    map: DashMap<u64, Box<Inode>>,
    /// Other names of the same file (hard links of the upper layer), by number; each is
    /// in `moved`.
    aliases: DashMap<u64, Vec<Arc<Path>>>,
    /// Paths whose number is not where hashing would find it (renamed entries, and
    /// the other names of hard-linked files).
    moved: DashMap<Arc<Path>, u64>,
    /// The number of each hard-linked file, by `(st_dev, st_ino)`.
    by_link: DashMap<(u64, u64), u64>,
    /// Whether hard links inside the layers below are one inode too: on a read-only
    /// mount. On a writable one a copy-up breaks them apart (as on overlayfs without its
    /// index), which one shared number in the kernel could not follow; there each name
    /// keeps its own number.
    lower_links: bool,
    /// The most entries held since the table last shrank by half (see
    /// [`InodeTable::halved`]).
    high: AtomicUsize,
}

/// The file `node` is a name of, when it has other names that share its number.
fn link_id(node: &Node, lower_links: bool) -> Option<(u64, u64)> {
    let shared = match node.upper {
        InUpper::Yes => true,
        InUpper::No => lower_links,
        // The bytes below, the metadata above: a file of its own.
        InUpper::Metadata => false,
    };
    match &node.entry.content {
        Content::Disk(f) if shared => f.link_id,
        Content::Special { link_id } if shared => *link_id,
        _ => None,
    }
}

/// 64-bit FNV-1a of `bytes` (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The number `path` gets unless another path took it first.
fn hash_ino(path: &Path) -> u64 {
    // Keep clear of 0 (invalid) and 1 (the root).
    fnv1a64(path.as_os_str().as_bytes()).max(2)
}

fn next(ino: u64) -> u64 {
    ino.checked_add(1).unwrap_or(2)
}

impl InodeTable {
    pub fn new(root: Node) -> Self {
        let table = InodeTable::default();
        table
            .map
            .insert(ROOT_INO, Inode::new(None, Arc::new(root), 1));
        table
    }

    /// Hard links inside the layers below share one number (a read-only mount).
    pub fn sharing_lower_links(mut self, share: bool) -> Self {
        self.lower_links = share;
        self
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
                Some(i) if !i.is(path) => ino = next(ino),
                _ => return ino,
            }
        }
    }

    /// The kept path of the known entry `path`, for its entries to share.
    fn tree_path_of(&self, path: &Path) -> Option<TreePath> {
        if path.as_os_str().is_empty() {
            return None;
        }
        let i = self.map.get(&self.ino_of(path))?;
        i.name.clone().filter(|n| n.is(path))
    }

    /// `path` as a record keeps it, sharing its folder's when the folder is known.
    fn tree_path(&self, path: &Path) -> TreePath {
        let folder = path.parent().and_then(|p| self.tree_path_of(p));
        TreePath::of(path, folder.as_ref())
    }

    /// Records one kernel lookup of `path`, resolved as `node`; returns its number. The
    /// table keeps the path as its last name below its folder's (`names`), and the node
    /// packed where it can (`packed`).
    pub fn remember(&self, path: Arc<Path>, node: Arc<Node>) -> u64 {
        if path.as_os_str().is_empty() {
            if let Some(mut root) = self.map.get_mut(&ROOT_INO) {
                root.set_node(node);
            }
            return ROOT_INO;
        }
        // Another name of a hard-linked file already known: the same number.
        if let Some(id) = link_id(&node, self.lower_links) {
            if let Some(known) = self.by_link.get(&id).map(|v| *v) {
                if self.add_alias(known, &path, node.clone()) {
                    return known;
                }
                self.by_link.remove(&id);
            }
        }
        let ino = self.remember_path(path, node.clone());
        if let Some(id) = link_id(&node, self.lower_links) {
            self.by_link.insert(id, ino);
        }
        ino
    }

    /// Records `path` as a name of the file numbered `ino` (a hard link made or looked
    /// up), with one more lookup; false when `ino` is not known.
    pub fn add_alias(&self, ino: u64, path: &Path, node: Arc<Node>) -> bool {
        let id = link_id(&node, self.lower_links);
        let Some(mut i) = self.map.get_mut(&ino) else {
            return false;
        };
        if !i.is(path) {
            let mut names = self.aliases.entry(ino).or_default();
            if !names.iter().any(|a| &**a == path) {
                let alias: Arc<Path> = Arc::from(path);
                names.push(alias.clone());
                self.moved.insert(alias, ino);
            }
        }
        i.looked_up(node);
        drop(i);
        if let Some(id) = id {
            self.by_link.insert(id, ino);
        }
        true
    }

    fn remember_path(&self, path: Arc<Path>, node: Arc<Node>) -> u64 {
        let mut ino = match self.moved.get(&path) {
            Some(ino) => *ino,
            None => hash_ino(&path),
        };
        // Made with no slot locked (the folder's record may be in the same shard).
        let mut name = None;
        loop {
            match self.map.entry(ino) {
                Entry::Occupied(mut o)
                    if o.get().is(&path)
                        || self.aliases.get(&ino).is_some_and(|a| a.contains(&path)) =>
                {
                    o.get_mut().looked_up(node);
                    return ino;
                }
                Entry::Occupied(_) => ino = next(ino),
                Entry::Vacant(v) => match name.take() {
                    Some(name) => {
                        v.insert(Inode::new(Some(name), node, 1));
                        // Found past its hashed number: recorded, so that the number is
                        // found again once the records before it are forgotten.
                        if ino != hash_ino(&path) {
                            self.moved.insert(path, ino);
                        }
                        return ino;
                    }
                    None => {
                        drop(v);
                        name = Some(self.tree_path(&path));
                    }
                },
            }
        }
    }

    pub fn get(&self, ino: u64) -> Option<(Arc<Path>, Arc<Node>)> {
        self.map.get(&ino).map(|i| {
            let path = i.path();
            let node = i.node.node(&path);
            (path, node)
        })
    }

    /// The path of `ino`, without its node.
    pub fn path_of(&self, ino: u64) -> Option<Arc<Path>> {
        self.map.get(&ino).map(|i| i.path())
    }

    pub fn contains(&self, ino: u64) -> bool {
        self.map.contains_key(&ino)
    }

    /// Replaces the resolved node of `ino` (after a mutable layer changed).
    pub fn update(&self, ino: u64, node: Arc<Node>) {
        if let Some(mut i) = self.map.get_mut(&ino) {
            i.set_node(node);
        }
    }

    /// FORGET: the kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        if let Entry::Occupied(mut o) = self.map.entry(ino) {
            if o.get_mut().node.forget(n) == 0 {
                let (_, gone) = o.remove_entry();
                if !self.moved.is_empty() {
                    self.moved
                        .remove_if(&*gone.path(), |_, moved| *moved == ino);
                }
                if let Some((_, names)) = self.aliases.remove(&ino) {
                    for alias in &names {
                        self.moved.remove_if(alias, |_, moved| *moved == ino);
                    }
                }
                // A packed node has no other names.
                let full = gone.node.full();
                if let Some(id) = full.and_then(|n| link_id(n, self.lower_links)) {
                    self.by_link.remove_if(&id, |_, known| *known == ino);
                }
            }
        }
    }

    /// `path` was removed (unlink, or replaced by a rename): its number keeps describing
    /// the removed entry for the fds still open on it, and a new entry of that name
    /// gets another number.
    pub fn detach(&self, path: &Path) {
        let ino = match self.moved.remove(path) {
            Some((_, ino)) => ino,
            None => self.ino_of(path),
        };
        if let Some(mut i) = self.map.get_mut(&ino) {
            let mut names = self.aliases.get_mut(&ino);
            let at = names
                .as_ref()
                .and_then(|n| n.iter().position(|a| &**a == path));
            if let (Some(at), Some(names)) = (at, names.as_mut()) {
                // One name of a hard-linked file: the others stay.
                names.remove(at);
            } else if i.is(path) {
                let next_name = names
                    .as_mut()
                    .filter(|n| !n.is_empty())
                    .map(|n| n.remove(0));
                let next_name = next_name.unwrap_or_else(|| Arc::from(Path::new("/deleted")));
                i.keep_node_whole();
                i.name = Some(TreePath::of(&next_name, None));
            }
            let empty = names.as_ref().is_some_and(|n| n.is_empty());
            drop(names);
            if empty {
                self.aliases.remove_if(&ino, |_, n| n.is_empty());
            }
        }
    }

    /// `ino` no longer names any path: the kernel holds a backing file of it that later
    /// opens cannot share (`MergedTree::supersede`). Every name of it (hard links too)
    /// and its hard-link entry are dropped, so the next lookup of each name gets another
    /// number; the record keeps describing the file for the fds open on it, under the
    /// rooted path [`SUPERSEDED`], which is also the mark [`InodeTable::is_superseded`]
    /// reads (it goes with the record, at FORGET).
    pub fn supersede(&self, ino: u64) {
        if ino == ROOT_INO {
            return;
        }
        let Some(mut i) = self.map.get_mut(&ino) else {
            return;
        };
        let main = i.path();
        i.keep_node_whole();
        let link = i.node.full().and_then(|n| link_id(n, self.lower_links));
        i.name = Some(TreePath::of(Path::new(SUPERSEDED), None));
        drop(i);
        self.moved.remove_if(&*main, |_, moved| *moved == ino);
        if let Some((_, names)) = self.aliases.remove(&ino) {
            for alias in &names {
                self.moved.remove_if(alias, |_, moved| *moved == ino);
            }
        }
        if let Some(id) = link {
            self.by_link.remove_if(&id, |_, known| *known == ino);
        }
    }

    /// Whether `ino` was superseded (see [`InodeTable::supersede`]).
    pub fn is_superseded(&self, ino: u64) -> bool {
        self.map
            .get(&ino)
            .is_some_and(|i| i.is(Path::new(SUPERSEDED)))
    }

    /// A rename in the tree: `from` and everything below it now live under `to`; the
    /// numbers stay (an open file and a later `stat` agree).
    pub fn rename(&self, from: &Path, to: &Path) {
        // Whatever `to` named before is no longer reachable by path.
        self.detach(to);
        let mut renamed: Vec<(u64, Arc<Path>)> = self
            .map
            .iter()
            .filter(|i| *i.key() != ROOT_INO)
            .map(|i| (*i.key(), i.path()))
            .filter(|(_, path)| path.starts_with(from))
            .collect();
        // Folders first: the entries below share their new path.
        renamed.sort_by_key(|(_, path)| path.as_os_str().len());
        // Other names of hard-linked files below `from` move too.
        let mut aliases: Vec<(u64, Arc<Path>)> = Vec::new();
        for i in self.aliases.iter() {
            for a in i.value().iter().filter(|a| a.starts_with(from)) {
                aliases.push((*i.key(), a.clone()));
            }
        }
        for (ino, old) in aliases {
            let suffix = old.strip_prefix(from).unwrap_or(Path::new(""));
            let new: Arc<Path> = if suffix.as_os_str().is_empty() {
                Arc::from(to)
            } else {
                Arc::from(to.join(suffix))
            };
            self.moved.remove(&old);
            self.moved.insert(new.clone(), ino);
            if let Some(mut names) = self.aliases.get_mut(&ino) {
                for a in names.iter_mut().filter(|a| **a == old) {
                    *a = new.clone();
                }
            }
        }
        for (ino, old) in renamed {
            let suffix = old.strip_prefix(from).unwrap_or(Path::new(""));
            let new: Arc<Path> = if suffix.as_os_str().is_empty() {
                Arc::from(to)
            } else {
                Arc::from(to.join(suffix))
            };
            self.moved.remove(&old);
            if hash_ino(&new) != ino {
                self.moved.insert(new.clone(), ino);
            }
            let name = self.tree_path(&new);
            if let Some(mut i) = self.map.get_mut(&ino) {
                // The node's entry keeps the old path (it is resolved again before use).
                i.keep_node_whole();
                i.name = Some(name);
            }
        }
    }

    /// After a FORGET: true once each time the table has shrunk to half the entries it
    /// held (by 4096 entries at least), when the memory the records freed is worth
    /// giving back to the kernel (the allocator keeps it otherwise). The hash table
    /// gives back its spare capacity then.
    pub fn halved(&self) -> bool {
        let len = self.map.len();
        let high = self.high.fetch_max(len + 1, Ordering::AcqRel).max(len + 1);
        let halved = len <= high / 2
            && high - len >= 4096
            && self
                .high
                .compare_exchange(high, len, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        if halved {
            self.map.shrink_to_fit();
        }
        halved
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

    /// Inode numbers are part of what users see (`ls -i`, tar's hard-link detection,
    /// caches keyed on `st_ino`): these values must never change.
    #[test]
    fn numbers_are_a_fixed_hash_of_the_path() {
        // FNV-1a's published test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
        assert_eq!(hash_ino(Path::new("rootfs/etc")), 0x11dca21f28f50fa3);
        assert_eq!(hash_ino(Path::new("amd64/bin/kubeadm")), 0x530491b68b2ca045);
        let table = InodeTable::new((*node()).clone());
        assert_eq!(table.ino_of(Path::new("rootfs/etc")), 0x11dca21f28f50fa3);
    }

    #[test]
    fn numbers_are_stable_and_forget_drops_entries() {
        let table = InodeTable::new((*node()).clone());
        let p = Path::new("rootfs/etc");
        let predicted = table.ino_of(p);
        let ino = table.remember(Arc::from(p), node());
        assert_eq!(ino, predicted);
        assert_eq!(table.remember(Arc::from(p), node()), ino);
        assert_ne!(
            table.remember(Arc::from(Path::new("rootfs/etc2")), node()),
            ino
        );
        assert_eq!(table.len(), 3);
        table.forget(ino, 1);
        assert!(table.get(ino).is_some());
        table.forget(ino, 1);
        assert!(table.get(ino).is_none());
        // Looked up again after FORGET: same number.
        assert_eq!(table.remember(Arc::from(p), node()), ino);
        table.forget(ROOT_INO, 10);
        assert!(table.get(ROOT_INO).is_some());
    }

    /// A name of a hard-linked upper file (a fifo: no bytes needed).
    fn linked() -> Arc<Node> {
        let mut node = (*node()).clone();
        node.upper = InUpper::Yes;
        node.entry.content = Content::Special {
            link_id: Some((7, 9)),
        };
        Arc::new(node)
    }

    /// A superseded number names no path any more, whichever of its names is looked up
    /// next (hard links share a new number), and the mark goes with the record.
    #[test]
    fn a_superseded_number_is_never_handed_out_again() {
        let table = InodeTable::new((*node()).clone());
        let (p, q) = (Path::new("rootfs/p"), Path::new("rootfs/q"));
        let old = table.remember(Arc::from(p), linked());
        assert_eq!(table.remember(Arc::from(q), linked()), old);
        table.supersede(old);
        assert!(table.is_superseded(old));
        let new = table.remember(Arc::from(p), linked());
        assert_ne!(new, old);
        assert_eq!(table.remember(Arc::from(q), linked()), new);
        assert_eq!(table.ino_of(p), new);
        // Forgotten: the number may name a path again, unmarked.
        table.forget(old, 2);
        assert!(!table.is_superseded(old));
        assert_eq!(table.ino_of(p), new, "found past the freed number");
    }

    /// A number found past its hashed slot is found again after the records before it
    /// are forgotten (no second record for the same path).
    #[test]
    fn a_number_past_a_forgotten_slot_is_still_found() {
        let table = InodeTable::new((*node()).clone());
        let p = Path::new("rootfs/etc/file");
        let first = table.remember(Arc::from(p), node());
        table.detach(p);
        let second = table.remember(Arc::from(p), node());
        assert_ne!(first, second);
        table.forget(first, 1);
        assert_eq!(table.ino_of(p), second);
        assert_eq!(table.remember(Arc::from(p), node()), second);
    }

    /// The record kept per entry the kernel holds: a 64-byte heap chunk (docs/DESIGN.md
    /// §7 counts on it; 57 bytes or more would take an 80-byte one).
    #[test]
    fn a_record_is_small() {
        assert!(std::mem::size_of::<Inode>() <= 56);
    }

    /// Records keep a path as a name below their folder's: a rename moves everything
    /// below, keeps the numbers, and a removed name leaves the number to its open fds.
    #[test]
    fn renames_and_removals_keep_numbers_and_paths() {
        let table = InodeTable::new((*node()).clone());
        let remember = |p: &str| table.remember(Arc::from(Path::new(p)), node());
        let dir = remember("rootfs/etc");
        let file = remember("rootfs/etc/kube/admin.conf");
        let sub = remember("rootfs/etc/kube");
        let other = remember("rootfs/etcetera");
        let path = |ino| table.path_of(ino).unwrap();
        assert_eq!(&*path(file), Path::new("rootfs/etc/kube/admin.conf"));
        table.rename(Path::new("rootfs/etc"), Path::new("rootfs/conf"));
        assert_eq!(&*path(dir), Path::new("rootfs/conf"));
        assert_eq!(&*path(sub), Path::new("rootfs/conf/kube"));
        assert_eq!(&*path(file), Path::new("rootfs/conf/kube/admin.conf"));
        assert_eq!(&*path(other), Path::new("rootfs/etcetera"));
        assert_eq!(table.ino_of(Path::new("rootfs/conf/kube/admin.conf")), file);
        assert_eq!(table.get(file).unwrap().0, path(file));
        // Looked up again under the new name: the same number, one more lookup.
        assert_eq!(remember("rootfs/conf/kube/admin.conf"), file);
        let new = remember("rootfs/conf/kube/new");
        assert_eq!(&*path(new), Path::new("rootfs/conf/kube/new"));
        table.detach(Path::new("rootfs/conf/kube/admin.conf"));
        assert!(path(file).has_root());
        assert_ne!(table.ino_of(Path::new("rootfs/conf/kube/admin.conf")), file);
        table.forget(file, 2);
        assert!(!table.contains(file));
        assert_eq!(table.len(), 5);
    }

    #[test]
    fn halving_is_reported_once_per_half() {
        let table = InodeTable::new((*node()).clone());
        let inos: Vec<u64> = (0..20_000)
            .map(|i| table.remember(Arc::from(Path::new(&format!("f{i}"))), node()))
            .collect();
        let mut at = Vec::new();
        for ino in inos {
            let before = table.len();
            table.forget(ino, 1);
            if table.halved() {
                at.push(before - 1);
            }
        }
        // The first forget sets the high mark (20,001 with the root); below 5,000 the
        // next report waits for 4096 fewer entries.
        assert_eq!(at, [10_000, 5_000, 904]);
        assert_eq!(table.len(), 1);
    }
}
