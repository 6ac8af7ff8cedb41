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

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{BranchSet, InUpper, Node};
use crate::layers::{Content, DiskFile, DiskRoot, EntryKind, LayerEntry, SharedRel, Source};

/// A resolved node as the inode table holds it.
#[derive(Debug)]
pub(super) enum HeldNode {
    Packed(PackedNode),
    Full(Arc<Node>),
}

/// A plain file or folder of a folder on disk, not in the upper layer, of an immutable
/// layer, with no other name (no `link_id`): everything [`Node`] says of it, given the
/// entry's tree path. Times are kept as seconds (up to 2106) and nanoseconds since the
/// epoch; a node with a value that does not fit a field is kept whole.
#[derive(Debug, Clone)]
pub(super) struct PackedNode {
    root: Arc<DiskRoot>,
    size: u64,
    mtime_secs: u32,
    /// `u32::MAX`: no ctime.
    ctime_secs: u32,
    generation: u32,
    mtime_nanos: u32,
    ctime_nanos: u32,
    /// `u32::MAX`: no link count (see `LayerEntry::nlink`).
    nlink: u32,
    uid: u32,
    gid: u32,
    /// Where the layer's part of the tree path starts (`SharedRel`).
    skip: u16,
    perm: u16,
    /// The folder's one branch; `u16::MAX`: none (a file).
    branch: u16,
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
    /// `node`, packed when it is of the common kind (see [`PackedNode`]) and its entry's
    /// path is the entry's (`is_path` says).
    pub(super) fn of(is_path: impl FnOnce(&Path) -> bool, node: Arc<Node>) -> Self {
        match PackedNode::pack(is_path, &node) {
            Some(packed) => HeldNode::Packed(packed),
            None => HeldNode::Full(node),
        }
    }

    /// The node, made again from `path` when packed.
    pub(super) fn node(&self, path: &Arc<Path>) -> Arc<Node> {
        match self {
            HeldNode::Packed(p) => Arc::new(p.unpack(path)),
            HeldNode::Full(n) => n.clone(),
        }
    }

    /// The node when it is kept whole (a packed node has no other names).
    pub(super) fn full(&self) -> Option<&Arc<Node>> {
        match self {
            HeldNode::Full(n) => Some(n),
            HeldNode::Packed(_) => None,
        }
    }
}

impl PackedNode {
    fn pack(is_path: impl FnOnce(&Path) -> bool, node: &Node) -> Option<Self> {
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
            (true, Some(i)) if i < usize::from(u16::MAX) => i as u16,
            (false, None) if node.branches.is_empty() => u16::MAX,
            _ => return None,
        };
        let (mtime_secs, mtime_nanos) = split(e.mtime)?;
        let (ctime_secs, ctime_nanos) = match e.ctime {
            Some(t) => split(t).filter(|(s, _)| *s != u32::MAX)?,
            None => (u32::MAX, 0),
        };
        let nlink = match e.nlink {
            Some(n) if n == u32::MAX => return None,
            Some(n) => n,
            None => u32::MAX,
        };
        Some(PackedNode {
            root: tree.clone(),
            size: e.size,
            generation: u32::try_from(node.generation).ok()?,
            mtime_secs,
            ctime_secs,
            mtime_nanos,
            ctime_nanos,
            nlink,
            uid: e.uid,
            gid: e.gid,
            skip: u16::try_from(rel.skip()).ok()?,
            perm: e.perm,
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
            u16::MAX => BranchSet::default(),
            i => BranchSet::of(usize::from(i)),
        };
        Node {
            entry: LayerEntry {
                kind,
                perm: self.perm,
                size: self.size,
                mtime: join(self.mtime_secs, self.mtime_nanos),
                ctime: (self.ctime_secs != u32::MAX)
                    .then(|| join(self.ctime_secs, self.ctime_nanos)),
                nlink: (self.nlink != u32::MAX).then_some(self.nlink),
                uid: self.uid,
                gid: self.gid,
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
            let held = HeldNode::of(|p| p == &*path, node.clone());
            assert!(matches!(held, HeldNode::Packed(_)), "{p} is packed");
            assert_same(&held.node(&path), &node);
        }
        // Symlinks (their target), hard-linked files (other names) and merged folders
        // are kept whole, as is a node whose entry has another path.
        let (path, link) = resolve("rootfs/registry/blobs/ab/cd/link");
        assert!(HeldNode::of(|p| p == &*path, link).full().is_some());
        let (path, root) = resolve("");
        assert!(HeldNode::of(|p| p == &*path, root).full().is_some());
        let (_, data) = resolve("rootfs/registry/blobs/ab/cd/data");
        assert!(HeldNode::of(|p| p == Path::new("rootfs/other"), data)
            .full()
            .is_some());
        let mut linked = (*resolve("rootfs/registry/blobs/one").1).clone();
        if let Content::Disk(f) = &mut linked.entry.content {
            f.link_id = Some((1, 2));
        }
        let path: Arc<Path> = Arc::from(Path::new("rootfs/registry/blobs/one"));
        assert!(HeldNode::of(|p| p == &*path, Arc::new(linked))
            .full()
            .is_some());
        // A time past what 32 bits of seconds hold.
        let mut late = (*resolve("rootfs/registry/blobs/one").1).clone();
        late.entry.mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 33);
        if let Content::Disk(f) = &mut late.entry.content {
            f.link_id = None;
        }
        assert!(HeldNode::of(|p| p == &*path, Arc::new(late.clone()))
            .full()
            .is_some());
        late.entry.mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 31);
        let held = HeldNode::of(|p| p == &*path, Arc::new(late.clone()));
        assert!(matches!(held, HeldNode::Packed(_)));
        assert_same(&held.node(&path), &late);
        let mut upper = (*resolve("rootfs/registry/blobs/ab").1).clone();
        upper.upper = InUpper::Yes;
        let path: Arc<Path> = Arc::from(Path::new("rootfs/registry/blobs/ab"));
        assert!(HeldNode::of(|p| p == &*path, Arc::new(upper))
            .full()
            .is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The record kept per entry the kernel holds (docs/DESIGN.md §7 counts on it).
    #[test]
    fn a_packed_node_is_small() {
        // With the record's path and lookup count: 72 bytes, an 80-byte heap chunk.
        assert!(std::mem::size_of::<HeldNode>() <= 56);
    }
}
