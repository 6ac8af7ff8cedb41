//! The resolved node of an entry the kernel holds, as the inode table keeps it.
//!
//! Most entries of a build tree (the registry's blob and link folders and their files)
//! are plain files and folders of one immutable folder on disk. Their [`Node`] is
//! ~200 bytes of enums sized for the rare cases (archive members, symlink targets,
//! provenance of rendered files); kept per entry the kernel holds, that was most of the
//! daemon's memory. [`HeldNode::Packed`] keeps only what such a node is made of
//! (attributes, the layer root, where the layer's part of the path starts, the branch)
//! and makes the same [`Node`] again when a request needs it; every other node is kept
//! as it is.
//!
//! The held node also keeps the record's lookup count: a packed node with its count and
//! the record's path pointer is 56 bytes, which the allocator serves from a 64-byte
//! chunk (one more field would take an 80-byte one). Fields are as narrow as a build
//! tree's values are (sizes under 4 GiB, uids and gids up to 65535, link counts under 65535); a value that
//! does not fit keeps the node whole.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{BranchSet, InUpper, Node};
use crate::layers::{Content, DiskFile, DiskRoot, EntryKind, LayerEntry, SharedRel, Source};

/// A resolved node as the inode table holds it, with the record's lookup count.
#[derive(Debug)]
pub(super) enum HeldNode {
    Packed(PackedNode),
    Full { node: Arc<Node>, lookups: u64 },
}

/// A plain file or folder of a folder on disk, not in the upper layer, of an immutable
/// layer, with no other name (no `link_id`): everything [`Node`] says of it, given the
/// entry's tree path. Times are kept as seconds (up to 2106) and nanoseconds since the
/// epoch; a node with a value that does not fit a field is kept whole.
#[derive(Debug, Clone)]
pub(super) struct PackedNode {
    root: Arc<DiskRoot>,
    size: u32,
    mtime_secs: u32,
    /// `u32::MAX`: no ctime.
    ctime_secs: u32,
    generation: u32,
    mtime_nanos: u32,
    ctime_nanos: u32,
    /// The record's lookup count.
    lookups: u32,
    /// `u16::MAX`: no link count (see `LayerEntry::nlink`).
    nlink: u16,
    uid: u16,
    gid: u16,
    perm: u16,
    /// Where the layer's part of the tree path starts (`SharedRel`).
    skip: u8,
    /// The folder's one branch; `u8::MAX`: none (a file).
    branch: u8,
    dir: bool,
}

fn split(t: SystemTime) -> Option<(u32, u32)> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    Some((u32::try_from(d.as_secs()).ok()?, d.subsec_nanos()))
}

fn join(secs: u32, nanos: u32) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(u64::from(secs), nanos)
}

impl HeldNode {
    /// `node` with `lookups`, packed when it is of the common kind (see [`PackedNode`])
    /// and its entry's path is the entry's (`is_path` says).
    pub(super) fn of(is_path: impl FnOnce(&Path) -> bool, node: Arc<Node>, lookups: u64) -> Self {
        match PackedNode::pack(is_path, &node, lookups) {
            Some(packed) => HeldNode::Packed(packed),
            None => HeldNode::Full { node, lookups },
        }
    }

    /// The node, made again from `path` when packed.
    pub(super) fn node(&self, path: &Arc<Path>) -> Arc<Node> {
        match self {
            HeldNode::Packed(p) => Arc::new(p.unpack(path)),
            HeldNode::Full { node, .. } => node.clone(),
        }
    }

    /// The node when it is kept whole (a packed node has no other names).
    pub(super) fn full(&self) -> Option<&Arc<Node>> {
        match self {
            HeldNode::Full { node, .. } => Some(node),
            HeldNode::Packed(_) => None,
        }
    }

    /// The same node kept whole (made again from `path` when packed).
    pub(super) fn whole(&self, path: &Arc<Path>) -> Self {
        HeldNode::Full {
            node: self.node(path),
            lookups: self.lookups(),
        }
    }

    pub(super) fn lookups(&self) -> u64 {
        match self {
            HeldNode::Packed(p) => u64::from(p.lookups),
            HeldNode::Full { lookups, .. } => *lookups,
        }
    }

    /// FORGET of `n` lookups; returns how many are left.
    pub(super) fn forget(&mut self, n: u64) -> u64 {
        match self {
            HeldNode::Packed(p) => {
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                p.lookups = p.lookups.saturating_sub(n);
                u64::from(p.lookups)
            }
            HeldNode::Full { lookups, .. } => {
                *lookups = lookups.saturating_sub(n);
                *lookups
            }
        }
    }
}

impl PackedNode {
    fn pack(is_path: impl FnOnce(&Path) -> bool, node: &Node, lookups: u64) -> Option<Self> {
        let e = &node.entry;
        if node.mutable || node.opaque || node.upper != InUpper::No {
            return None;
        }
        let Source::Disk { tree, rel } = &e.source else {
            return None;
        };
        if !is_path(rel.tree_path()) {
            return None;
        }
        let dir = match (&e.kind, &e.content) {
            (EntryKind::Dir, Content::Dir) => true,
            (EntryKind::File, Content::Disk(f)) => {
                let same = Arc::ptr_eq(&f.tree, tree)
                    && f.rel.skip() == rel.skip()
                    && f.rel.tree_path() == rel.tree_path();
                if !same || f.link_id.is_some() {
                    return None;
                }
                false
            }
            _ => return None,
        };
        let branch = match (dir, node.branches.single()) {
            (true, Some(i)) if i < usize::from(u8::MAX) => i as u8,
            (false, None) if node.branches.is_empty() => u8::MAX,
            _ => return None,
        };
        let (mtime_secs, mtime_nanos) = split(e.mtime)?;
        let (ctime_secs, ctime_nanos) = match e.ctime {
            Some(t) => split(t).filter(|(s, _)| *s != u32::MAX)?,
            None => (u32::MAX, 0),
        };
        let nlink = match e.nlink {
            Some(n) => u16::try_from(n).ok().filter(|n| *n != u16::MAX)?,
            None => u16::MAX,
        };
        Some(PackedNode {
            root: tree.clone(),
            size: u32::try_from(e.size).ok()?,
            generation: u32::try_from(node.generation).ok()?,
            mtime_secs,
            ctime_secs,
            mtime_nanos,
            ctime_nanos,
            lookups: u32::try_from(lookups).ok()?,
            nlink,
            uid: u16::try_from(e.uid).ok()?,
            gid: u16::try_from(e.gid).ok()?,
            perm: e.perm,
            skip: u8::try_from(rel.skip()).ok()?,
            branch,
            dir,
        })
    }

    fn unpack(&self, path: &Arc<Path>) -> Node {
        let rel = SharedRel::new(path.clone(), usize::from(self.skip));
        let (kind, content) = if self.dir {
            (EntryKind::Dir, Content::Dir)
        } else {
            let file = DiskFile {
                tree: self.root.clone(),
                rel: rel.clone(),
                link_id: None,
            };
            (EntryKind::File, Content::Disk(file))
        };
        let branches = match self.branch {
            u8::MAX => BranchSet::default(),
            i => BranchSet::of(usize::from(i)),
        };
        Node {
            entry: LayerEntry {
                kind,
                perm: self.perm,
                size: u64::from(self.size),
                mtime: join(self.mtime_secs, self.mtime_nanos),
                ctime: (self.ctime_secs != u32::MAX)
                    .then(|| join(self.ctime_secs, self.ctime_nanos)),
                nlink: (self.nlink != u16::MAX).then_some(u32::from(self.nlink)),
                uid: u32::from(self.uid),
                gid: u32::from(self.gid),
                content,
                source: Source::Disk {
                    tree: self.root.clone(),
                    rel,
                },
            },
            branches,
            mutable: false,
            upper: InUpper::No,
            opaque: false,
            generation: u64::from(self.generation),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::DiskTree;
    use crate::test_support::scratch;
    use crate::tree::{Branch, Namespace};

    fn assert_same(a: &Node, b: &Node) {
        let (x, y) = (&a.entry, &b.entry);
        assert_eq!(x.kind, y.kind);
        assert_eq!(
            (x.perm, x.size, x.mtime, x.ctime, x.nlink, x.uid, x.gid),
            (y.perm, y.size, y.mtime, y.ctime, y.nlink, y.uid, y.gid)
        );
        assert_eq!(x.source.to_string(), y.source.to_string());
        match (&x.content, &y.content) {
            (Content::Dir, Content::Dir) => {}
            (Content::Disk(f), Content::Disk(g)) => {
                assert!(Arc::ptr_eq(&f.tree, &g.tree));
                assert_eq!(f.rel.get(), g.rel.get());
                assert_eq!(f.rel.tree_path(), g.rel.tree_path());
                assert_eq!(f.link_id, g.link_id);
                assert_eq!(f.path(), g.path());
            }
            (c, d) => panic!("content {c:?} against {d:?}"),
        }
        assert_eq!(a.branches, b.branches);
        assert_eq!(
            (a.mutable, a.upper, a.opaque, a.generation),
            (b.mutable, b.upper, b.opaque, b.generation)
        );
    }

    #[test]
    fn plain_disk_nodes_pack_and_come_back_the_same() {
        let dir = scratch("packed");
        std::fs::create_dir_all(dir.join("blobs/ab/cd")).unwrap();
        std::fs::write(dir.join("blobs/ab/cd/data"), b"12345").unwrap();
        std::os::unix::fs::symlink("data", dir.join("blobs/ab/cd/link")).unwrap();
        std::fs::write(dir.join("blobs/one"), b"1").unwrap();
        std::fs::hard_link(dir.join("blobs/one"), dir.join("blobs/two")).unwrap();
        let ns = Namespace::new(vec![
            Branch {
                at: "rootfs".into(),
                layer: Arc::new(crate::layers::EmptyDir),
            },
            Branch {
                at: "rootfs/registry".into(),
                layer: Arc::new(DiskTree::open(&dir).unwrap()),
            },
        ]);
        let resolve = |p: &str| {
            let path: Arc<Path> = Arc::from(Path::new(p));
            let mut node = ns.resolve_shared(&path).unwrap().unwrap();
            node.generation = 7;
            (path, Arc::new(node))
        };
        for p in [
            "rootfs/registry",
            "rootfs/registry/blobs/ab",
            "rootfs/registry/blobs/ab/cd/data",
        ] {
            let (path, node) = resolve(p);
            let held = HeldNode::of(|p| p == &*path, node.clone(), 1);
            assert!(matches!(held, HeldNode::Packed(_)), "{p} is packed");
            assert_same(&held.node(&path), &node);
        }
        // Symlinks (their target), hard-linked files (other names) and merged folders
        // are kept whole, as is a node whose entry has another path.
        let (path, link) = resolve("rootfs/registry/blobs/ab/cd/link");
        assert!(HeldNode::of(|p| p == &*path, link, 1).full().is_some());
        let (path, root) = resolve("");
        assert!(HeldNode::of(|p| p == &*path, root, 1).full().is_some());
        let (_, data) = resolve("rootfs/registry/blobs/ab/cd/data");
        assert!(HeldNode::of(|p| p == Path::new("rootfs/other"), data, 1)
            .full()
            .is_some());
        let mut linked = (*resolve("rootfs/registry/blobs/one").1).clone();
        if let Content::Disk(f) = &mut linked.entry.content {
            f.link_id = Some((1, 2));
        }
        let path: Arc<Path> = Arc::from(Path::new("rootfs/registry/blobs/one"));
        assert!(HeldNode::of(|p| p == &*path, Arc::new(linked), 1)
            .full()
            .is_some());
        // A time past what 32 bits of seconds hold.
        let mut late = (*resolve("rootfs/registry/blobs/one").1).clone();
        late.entry.mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 33);
        if let Content::Disk(f) = &mut late.entry.content {
            f.link_id = None;
        }
        assert!(HeldNode::of(|p| p == &*path, Arc::new(late.clone()), 1)
            .full()
            .is_some());
        late.entry.mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 31);
        let held = HeldNode::of(|p| p == &*path, Arc::new(late.clone()), 1);
        assert!(matches!(held, HeldNode::Packed(_)));
        assert_same(&held.node(&path), &late);
        // Values past the narrow fields: kept whole, and the same.
        let plain = (*resolve("rootfs/registry/blobs/ab/cd/data").1).clone();
        let path: Arc<Path> = Arc::from(Path::new("rootfs/registry/blobs/ab/cd/data"));
        let wide: [fn(&mut Node); 5] = [
            |n| n.entry.size = 1 << 32,
            |n| n.entry.uid = 70_000,
            |n| n.entry.gid = 65_536,
            |n| n.entry.nlink = Some(65_535),
            |n| n.generation = 1 << 32,
        ];
        for change in wide {
            let mut node = plain.clone();
            change(&mut node);
            let held = HeldNode::of(|p| p == &*path, Arc::new(node.clone()), 1);
            assert!(held.full().is_some());
            assert_same(&held.node(&path), &node);
        }
        let mut most = plain.clone();
        (most.entry.size, most.entry.uid, most.entry.gid) = ((1 << 32) - 1, 65_535, 65_535);
        most.entry.nlink = Some(65_534);
        let held = HeldNode::of(|p| p == &*path, Arc::new(most.clone()), 1);
        assert!(matches!(held, HeldNode::Packed(_)));
        assert_same(&held.node(&path), &most);
        let mut upper = (*resolve("rootfs/registry/blobs/ab").1).clone();
        upper.upper = InUpper::Yes;
        let path: Arc<Path> = Arc::from(Path::new("rootfs/registry/blobs/ab"));
        assert!(HeldNode::of(|p| p == &*path, Arc::new(upper), 1)
            .full()
            .is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The record kept per entry the kernel holds (docs/DESIGN.md §7 counts on it).
    #[test]
    fn a_packed_node_is_small() {
        // With the record's path: 56 bytes, a 64-byte heap chunk.
        assert!(std::mem::size_of::<HeldNode>() <= 48);
    }

    /// The lookup count goes with the node, packed or whole, and a count past 32 bits
    /// keeps the node whole.
    #[test]
    fn lookups_are_kept_packed_or_whole() {
        let dir = scratch("packed-lookups");
        std::fs::write(dir.join("data"), b"1").unwrap();
        let ns = Namespace::new(vec![Branch {
            at: "registry".into(),
            layer: Arc::new(DiskTree::open(&dir).unwrap()),
        }]);
        let path: Arc<Path> = Arc::from(Path::new("registry/data"));
        let node = Arc::new(ns.resolve_shared(&path).unwrap().unwrap());
        let mut held = HeldNode::of(|p| p == &*path, node.clone(), 3);
        assert!(matches!(held, HeldNode::Packed(_)));
        assert_eq!(held.lookups(), 3);
        assert_eq!(held.whole(&path).lookups(), 3);
        assert!(held.whole(&path).full().is_some());
        assert_eq!(held.forget(2), 1);
        assert_eq!(held.forget(u64::MAX), 0);
        let big = u64::from(u32::MAX) + 1;
        let mut held = HeldNode::of(|p| p == &*path, node, big);
        assert!(held.full().is_some());
        assert_eq!(held.lookups(), big);
        assert_eq!(held.forget(big), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
