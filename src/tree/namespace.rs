//! The virtual tree: layers mounted at paths of the tree ("branches"), highest first,
//! resolved one name at a time.
//!
//! Rules (docs/DESIGN.md §3): a name present in several branches is taken from the highest one; a
//! folder is merged with the folders of the same name below it, until a lower branch
//! has a non-folder there (which, like in overlayfs, ends the merge); a file hides
//! everything of that name below it. A branch mounted below a path makes that path a
//! folder even when no layer has it (e.g. `amd64/` above `amd64/bin`).

use std::ffi::OsStr;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::layers::{Child, EntryKind, Layer, LayerEntry, SharedRel, Source};
use crate::upper::{UpperDir, UpperLookup};

/// A layer mounted at a path of the virtual tree (relative, empty = the mount root).
#[derive(Debug)]
pub struct Branch {
    pub at: PathBuf,
    pub layer: Arc<dyn Layer>,
}

/// What the upper layer holds of an entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InUpper {
    #[default]
    No,
    /// The entry itself (a folder there takes new children).
    Yes,
    /// Only its metadata; the bytes come from below.
    Metadata,
}

/// Which branches a folder is merged from, by index: a bit each for the first 64 (a
/// node is kept per entry the kernel holds, so this stays small and off the heap), a
/// list for any beyond.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BranchSet {
    low: u64,
    more: Option<Box<[usize]>>,
}

impl BranchSet {
    pub fn of(index: usize) -> Self {
        let mut set = BranchSet::default();
        set.push(index);
        set
    }

    pub fn push(&mut self, index: usize) {
        match u32::try_from(index).ok().and_then(|i| 1u64.checked_shl(i)) {
            Some(bit) => self.low |= bit,
            None => {
                let mut more = self.more.take().map(Vec::from).unwrap_or_default();
                more.push(index);
                self.more = Some(more.into_boxed_slice());
            }
        }
    }

    pub fn contains(&self, index: &usize) -> bool {
        match u32::try_from(*index).ok().and_then(|i| 1u64.checked_shl(i)) {
            Some(bit) => self.low & bit != 0,
            None => self.more.as_ref().is_some_and(|m| m.contains(index)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.low == 0 && self.more.is_none()
    }

    /// The index when the set holds exactly one.
    pub fn single(&self) -> Option<usize> {
        match &self.more {
            None if self.low.count_ones() == 1 => Some(self.low.trailing_zeros() as usize),
            Some(more) if self.low == 0 && more.len() == 1 => Some(more[0]),
            _ => None,
        }
    }
}

/// A resolved entry of the virtual tree.
#[derive(Clone, Debug)]
pub struct Node {
    pub entry: LayerEntry,
    /// For folders: the branches whose layer has this folder, highest first.
    pub branches: BranchSet,
    /// True when a layer it comes from may change while mounted.
    pub mutable: bool,
    pub upper: InUpper,
    /// A folder of the upper layer that hides everything below it.
    pub opaque: bool,
    /// The tree's change count when this was resolved (see `MergedTree`).
    pub generation: u64,
}

impl Node {
    /// A node for a single entry, from no branch and not in the upper layer.
    pub fn of(entry: LayerEntry) -> Self {
        Node {
            entry,
            branches: BranchSet::default(),
            mutable: false,
            upper: InUpper::No,
            opaque: false,
            generation: 0,
        }
    }

    /// The tree path this node's entry keeps (an entry of a folder on disk resolved by
    /// path): the caller need not make it again.
    pub fn tree_path(&self) -> Option<&Arc<Path>> {
        match &self.entry.source {
            Source::Disk { rel, .. } => Some(rel.tree_path()),
            _ => None,
        }
    }

    /// Provenance of the entry: what `getfattr -n user.rootfs.source` prints on a mount
    /// and what `rootfs-mount tree` lists.
    pub fn provenance(&self) -> String {
        self.entry.source.to_string()
    }
}

/// How a branch's mount path relates to a tree path.
enum Relation<'a> {
    /// The path is the branch root or lies below it, at this path inside the layer.
    Inside(&'a Path),
    /// The branch is mounted below the path, whose next component is this name.
    Above(&'a OsStr),
    Unrelated,
}

fn relation<'a>(branch_at: &'a Path, path: &'a Path) -> Relation<'a> {
    if let Some(rel) = below(path, branch_at) {
        return Relation::Inside(rel);
    }
    match below(branch_at, path) {
        Some(under) => match under.components().next() {
            Some(Component::Normal(name)) => Relation::Above(name),
            _ => Relation::Unrelated,
        },
        None => Relation::Unrelated,
    }
}

/// `path` at or below `base`: the rest, as `Path::strip_prefix` gives it, found by
/// comparing bytes. Both are normalized relative paths (names joined by single slashes:
/// the tree's paths are built that way, the branches' are normalized in
/// [`Namespace::new`]), for which that is the component-wise answer at a fraction of its
/// cost: it runs for every branch on every lookup and listing, and the component-wise
/// comparison was a tenth of the daemon's user CPU on a first walk.
fn below<'a>(path: &'a Path, base: &Path) -> Option<&'a Path> {
    use std::os::unix::ffi::OsStrExt;
    // `Path::join("")` leaves a trailing slash (a layer asked for its own root).
    fn trim(p: &[u8]) -> &[u8] {
        let end = p.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
        &p[..end]
    }
    let base = trim(base.as_os_str().as_bytes());
    if base.is_empty() {
        return Some(path);
    }
    let rest = trim(path.as_os_str().as_bytes()).strip_prefix(base)?;
    match rest.split_first() {
        None => Some(Path::new("")),
        Some((b'/', rest)) => Some(Path::new(OsStr::from_bytes(rest))),
        Some(_) => None,
    }
}

fn synthetic_dir() -> LayerEntry {
    LayerEntry::folder(Source::Synthetic)
}

#[derive(Debug)]
pub struct Namespace {
    branches: Vec<Branch>,
    /// Takes every change made through the mount; above all branches.
    upper: Option<Arc<UpperDir>>,
    /// Names resolved so far (each a lookup in the upper layer and the branches): what
    /// the cost of an operation is counted in.
    resolved: AtomicU64,
}

impl Namespace {
    /// `branches` in precedence order, highest first.
    pub fn new(branches: Vec<Branch>) -> Self {
        // Normalized once, so that [`below`] may compare bytes.
        let branches = branches
            .into_iter()
            .map(|b| Branch {
                at: b
                    .at
                    .components()
                    .filter(|c| *c != Component::CurDir)
                    .collect(),
                layer: b.layer,
            })
            .collect();
        Namespace {
            branches,
            upper: None,
            resolved: AtomicU64::new(0),
        }
    }

    pub fn with_upper(mut self, upper: Arc<UpperDir>) -> Self {
        self.upper = Some(upper);
        self
    }

    pub fn upper(&self) -> Option<&Arc<UpperDir>> {
        self.upper.as_ref()
    }

    /// How many names have been resolved so far.
    pub fn resolved(&self) -> u64 {
        self.resolved.load(Ordering::Relaxed)
    }

    pub fn branches(&self) -> &[Branch] {
        &self.branches
    }

    /// The mount root.
    pub fn root(&self) -> io::Result<Node> {
        self.resolve(&Arc::from(Path::new("")), None)
            .map(|n| n.unwrap_or_else(|| Node::of(synthetic_dir())))
    }

    /// Resolves `path` from the root, one component at a time (used to refresh entries
    /// of mutable layers).
    pub fn resolve_path(&self, path: &Path) -> io::Result<Option<Node>> {
        self.resolve_shared(&Arc::from(path))
    }

    /// [`Namespace::resolve_path`] of a path the caller has made: the node's entry
    /// shares it.
    pub fn resolve_shared(&self, path: &Arc<Path>) -> io::Result<Option<Node>> {
        let mut node = self.root()?;
        let mut at = PathBuf::new();
        let mut parts = path.components().peekable();
        while let Some(part) = parts.next() {
            let Component::Normal(name) = part else {
                return Ok(None);
            };
            if node.entry.kind != EntryKind::Dir {
                return Ok(None);
            }
            at.push(name);
            // The caller's path when it is the one built here (no `//` or trailing `/`).
            let here: Arc<Path> =
                if parts.peek().is_none() && path.as_os_str().len() == at.as_os_str().len() {
                    path.clone()
                } else {
                    Arc::from(at.as_path())
                };
            match self.lookup_shared(&here, &node)? {
                Some(child) => node = child,
                None => return Ok(None),
            }
        }
        Ok(Some(node))
    }

    /// The child `name` of the folder `parent` (at `parent_path`).
    pub fn lookup(
        &self,
        parent_path: &Path,
        parent: &Node,
        name: &OsStr,
    ) -> io::Result<Option<Node>> {
        self.lookup_shared(&Arc::from(parent_path.join(name)), parent)
    }

    /// The entry at `path` (a child of the folder `parent`), whose entry shares `path`
    /// rather than copying it.
    pub fn lookup_shared(&self, path: &Arc<Path>, parent: &Node) -> io::Result<Option<Node>> {
        if parent.entry.kind != EntryKind::Dir {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        self.resolve(path, Some(parent))
    }

    /// Resolves `path`; `parent` limits which branches may contribute below their root.
    fn resolve(&self, path: &Arc<Path>, parent: Option<&Node>) -> io::Result<Option<Node>> {
        self.resolved.fetch_add(1, Ordering::Relaxed);
        let mut found: Option<Node> = None;
        let mut metadata: Option<LayerEntry> = None;
        let mut below = !parent.is_some_and(|p| p.opaque);
        if let Some(upper) = &self.upper {
            if parent.is_none_or(|p| p.upper == InUpper::Yes) {
                match upper.lookup(path)? {
                    UpperLookup::Whiteout => return Ok(None),
                    UpperLookup::Absent => {}
                    UpperLookup::Found {
                        entry,
                        metacopy: true,
                        ..
                    } => metadata = Some(entry),
                    UpperLookup::Found { entry, opaque, .. } => {
                        let is_dir = entry.kind == EntryKind::Dir;
                        let node = Node {
                            upper: InUpper::Yes,
                            opaque,
                            ..Node::of(entry)
                        };
                        if !is_dir {
                            return Ok(Some(node));
                        }
                        below &= !opaque;
                        found = Some(node);
                    }
                }
            }
        }
        if below {
            self.resolve_below(path, parent, &mut found)?;
        }
        if let Some(meta) = metadata {
            return Ok(Some(match found {
                Some(mut node) if node.entry.kind == EntryKind::File => {
                    node.entry.perm = meta.perm;
                    node.entry.uid = meta.uid;
                    node.entry.gid = meta.gid;
                    node.entry.mtime = meta.mtime;
                    node.entry.ctime = meta.ctime;
                    node.upper = InUpper::Metadata;
                    node
                }
                // Nothing left below to take the bytes from: the upper file is all there is.
                _ => Node {
                    upper: InUpper::Yes,
                    ..Node::of(meta)
                },
            }));
        }
        Ok(found)
    }

    /// The branches' part of [`Self::resolve`].
    fn resolve_below(
        &self,
        path: &Arc<Path>,
        parent: Option<&Node>,
        found: &mut Option<Node>,
    ) -> io::Result<()> {
        let len = path.as_os_str().len();
        for (index, branch) in self.branches.iter().enumerate() {
            let entry = match relation(&branch.at, path) {
                Relation::Inside(rel) => {
                    let rooted_here = rel.as_os_str().is_empty();
                    // Below its root a branch only counts where the parent folder is its.
                    if !rooted_here && !parent.is_some_and(|p| p.branches.contains(&index)) {
                        continue;
                    }
                    let rel = SharedRel::new(path.clone(), len - rel.as_os_str().len());
                    match branch.layer.entry_shared(&rel)? {
                        Some(e) => Some(e),
                        None => continue,
                    }
                }
                Relation::Above(_) => {
                    // A layer rooted below this folder adds subfolders that the upper
                    // folder's own link count does not know: not counted (see
                    // `fuse::attr`).
                    if let Some(node) = found.as_mut() {
                        node.entry.nlink = None;
                    }
                    None
                }
                Relation::Unrelated => continue,
            };
            let mutable = branch.layer.is_mutable();
            match (&mut *found, entry) {
                (None, Some(e)) => {
                    let is_dir = e.kind == EntryKind::Dir;
                    let branches = if is_dir {
                        BranchSet::of(index)
                    } else {
                        BranchSet::default()
                    };
                    *found = Some(Node {
                        branches,
                        mutable,
                        ..Node::of(e)
                    });
                    if !is_dir {
                        break;
                    }
                }
                (None, None) => *found = Some(Node::of(synthetic_dir())),
                (Some(node), Some(e)) => {
                    if e.kind != EntryKind::Dir || node.entry.kind != EntryKind::Dir {
                        break;
                    }
                    // A synthetic folder takes its attributes from the first real one.
                    if matches!(node.entry.source, Source::Synthetic) {
                        node.entry = e;
                    } else if node.upper == InUpper::No && e.mtime > node.entry.mtime {
                        // A merged folder changed when any of its layers' folders did:
                        // its mtime is the newest, so the kernel's cached listing of it
                        // is dropped when a name is added or removed in any layer. (An
                        // upper folder keeps its own mtime: changes through the mount
                        // reach the kernel's caches anyway.)
                        node.entry.mtime = e.mtime;
                    }
                    node.branches.push(index);
                    node.mutable |= mutable;
                }
                (Some(_), None) => {}
            }
        }
        Ok(())
    }

    /// The children of the folder `node` at `path` with their nodes, as [`Self::lookup`]
    /// resolves each, from one pass over one folder on disk. `None` unless the folder
    /// comes from a single immutable branch with no other branch mounted below it and
    /// nothing of it in the upper layer (a build's registry and blob folders): anything
    /// else is resolved name by name.
    pub fn child_nodes(
        &self,
        path: &Path,
        node: &Node,
    ) -> io::Result<Option<Vec<(std::ffi::OsString, Node)>>> {
        let Some(index) = node.branches.single() else {
            return Ok(None);
        };
        let branch = &self.branches[index];
        let plain = node.entry.kind == EntryKind::Dir
            && node.upper == InUpper::No
            && !node.opaque
            && !node.mutable
            && !branch.layer.is_mutable()
            && !self
                .branches
                .iter()
                .any(|b| below(&b.at, path).is_some_and(|under| !under.as_os_str().is_empty()));
        let Relation::Inside(rel) = relation(&branch.at, path) else {
            return Ok(None);
        };
        if !plain {
            return Ok(None);
        }
        let folder = SharedRel::new(
            Arc::from(path),
            path.as_os_str().len() - rel.as_os_str().len(),
        );
        let nodes = branch
            .layer
            .child_entries(&folder)?
            .into_iter()
            .map(|(name, entry)| {
                let branches = if entry.kind == EntryKind::Dir {
                    BranchSet::of(index)
                } else {
                    BranchSet::default()
                };
                let node = Node {
                    branches,
                    ..Node::of(entry)
                };
                (name, node)
            })
            .collect();
        Ok(Some(nodes))
    }

    /// The children of the folder `node` at `path`, each once, with the kind that
    /// [`Namespace::lookup`] gives it.
    pub fn children(&self, path: &Path, node: &Node) -> io::Result<Vec<Child>> {
        let mut out: Vec<Child> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        if let (Some(upper), InUpper::Yes) = (&self.upper, node.upper) {
            let listing = upper.listing(path)?;
            for child in listing.children {
                seen.insert(child.name.clone());
                out.push(child);
            }
            if listing.opaque {
                return Ok(out);
            }
            // Whited-out names are "seen": nothing below may show them.
            seen.extend(listing.whiteouts);
        }
        if node.opaque {
            return Ok(out);
        }
        for (index, branch) in self.branches.iter().enumerate() {
            match relation(&branch.at, path) {
                Relation::Inside(rel) => {
                    if !node.branches.contains(&index) {
                        continue;
                    }
                    for child in branch.layer.children(rel)? {
                        if seen.insert(child.name.clone()) {
                            out.push(child);
                        }
                    }
                }
                Relation::Above(name) => {
                    if seen.contains(name) {
                        continue;
                    }
                    // The branch root itself is the child: its kind is its layer's.
                    let kind = if branch.at.parent() == Some(path) {
                        match branch.layer.entry(Path::new(""))? {
                            Some(e) => e.kind,
                            None => continue,
                        }
                    } else {
                        EntryKind::Dir
                    };
                    seen.insert(name.to_os_string());
                    out.push(Child {
                        name: name.to_os_string(),
                        kind,
                    });
                }
                Relation::Unrelated => {}
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{DiskTree, EmptyDir};
    use crate::test_support::scratch;

    fn branch(at: &str, layer: impl Layer + 'static) -> Branch {
        Branch {
            at: PathBuf::from(at),
            layer: Arc::new(layer),
        }
    }

    fn names(ns: &Namespace, path: &str) -> Vec<String> {
        let node = ns.resolve_path(Path::new(path)).unwrap().unwrap();
        let mut n: Vec<_> = ns
            .children(Path::new(path), &node)
            .unwrap()
            .into_iter()
            .map(|c| c.name.to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn branch_sets_hold_any_index() {
        let mut set = BranchSet::default();
        assert!(set.is_empty());
        for i in [0, 5, 63, 64, 200] {
            assert!(!set.contains(&i));
            set.push(i);
            assert!(set.contains(&i) && !set.is_empty());
        }
        assert!(!set.contains(&1) && !set.contains(&65));
        assert!(!BranchSet::of(64).is_empty());
        assert_eq!(BranchSet::of(3).single(), Some(3));
        assert_eq!(BranchSet::of(70).single(), Some(70));
        assert_eq!(set.single(), None);
        assert_eq!(BranchSet::default().single(), None);
    }

    #[test]
    fn union_precedence_merge_and_hiding() {
        let dir = scratch("union");
        let (high, low) = (dir.join("high"), dir.join("low"));
        for d in [&high, &low] {
            std::fs::create_dir_all(d.join("etc")).unwrap();
        }
        std::fs::write(high.join("etc/shared"), b"high").unwrap();
        std::fs::write(low.join("etc/shared"), b"low!!").unwrap();
        std::fs::write(low.join("etc/only-low"), b"l").unwrap();
        // A file above hides a folder below, and a folder above hides a file below.
        std::fs::write(high.join("scripts"), b"file").unwrap();
        std::fs::create_dir_all(low.join("scripts")).unwrap();
        std::fs::write(low.join("scripts/x.sh"), b"x").unwrap();
        std::fs::create_dir_all(high.join("statics")).unwrap();
        std::fs::write(low.join("statics"), b"file").unwrap();

        let ns = Namespace::new(vec![
            branch("rootfs", DiskTree::open(&high).unwrap()),
            branch("rootfs", DiskTree::open(&low).unwrap()),
            branch("rootfs/registry", EmptyDir),
            branch(
                "amd64/bin/kubeadm",
                DiskTree::open(&low.join("etc/only-low")).unwrap(),
            ),
        ]);
        assert_eq!(names(&ns, ""), ["amd64", "rootfs"]);
        assert_eq!(
            names(&ns, "rootfs"),
            ["etc", "registry", "scripts", "statics"]
        );
        assert_eq!(names(&ns, "rootfs/etc"), ["only-low", "shared"]);
        assert_eq!(names(&ns, "amd64/bin"), ["kubeadm"]);
        let shared = ns
            .resolve_path(Path::new("rootfs/etc/shared"))
            .unwrap()
            .unwrap();
        assert_eq!(shared.entry.size, 4);
        let scripts = ns
            .resolve_path(Path::new("rootfs/scripts"))
            .unwrap()
            .unwrap();
        assert_eq!(scripts.entry.kind, EntryKind::File);
        assert!(ns
            .resolve_path(Path::new("rootfs/scripts/x.sh"))
            .unwrap()
            .is_none());
        assert_eq!(
            ns.resolve_path(Path::new("rootfs/statics"))
                .unwrap()
                .unwrap()
                .entry
                .kind,
            EntryKind::Dir
        );
        assert_eq!(
            ns.resolve_path(Path::new("amd64"))
                .unwrap()
                .unwrap()
                .entry
                .kind,
            EntryKind::Dir
        );
        assert!(ns.resolve_path(Path::new("arm64")).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn below_answers_as_strip_prefix_for_normalized_paths() {
        let paths = [
            "",
            "rootfs",
            "rootfs/registry",
            "rootfs/registry/blobs",
            "rootfs/registryx",
            "rootfs/reg",
            "amd64/bin",
            "amd64/bin/kubectl",
            "amd64",
            "a",
            "ab/c",
            "amd64/",
            "rootfs/registry/",
        ];
        for path in paths {
            for base in paths {
                let (p, b) = (Path::new(path), Path::new(base));
                assert_eq!(
                    below(p, b),
                    p.strip_prefix(b).ok(),
                    "{path:?} below {base:?}"
                );
                // Callers count bytes of the rest (a layer's relative path); with no
                // trailing slash those are strip_prefix's too.
                if !path.ends_with('/') {
                    assert_eq!(
                        below(p, b).map(|r| r.as_os_str().len()),
                        p.strip_prefix(b).ok().map(|r| r.as_os_str().len()),
                        "{path:?} below {base:?}"
                    );
                }
            }
        }
        // Branches given with a trailing slash or `.` are normalized for it.
        let ns = Namespace::new(vec![branch("./rootfs/registry/", EmptyDir)]);
        assert_eq!(ns.branches[0].at, Path::new("rootfs/registry"));
    }

    #[test]
    fn child_nodes_match_lookups_of_a_plain_folder() {
        let dir = scratch("child-nodes");
        let (reg, other) = (dir.join("reg"), dir.join("other"));
        std::fs::create_dir_all(reg.join("blobs/ab/sub")).unwrap();
        std::fs::write(reg.join("blobs/ab/data"), b"12345").unwrap();
        std::os::unix::fs::symlink("data", reg.join("blobs/ab/link")).unwrap();
        std::fs::create_dir_all(other.join("etc")).unwrap();
        let ns = Namespace::new(vec![
            branch("rootfs", DiskTree::open(&other).unwrap()),
            branch("rootfs/registry", DiskTree::open(&reg).unwrap()),
            branch("rootfs/registry/blobs/mounted", EmptyDir),
        ]);
        let at = Path::new("rootfs/registry/blobs/ab");
        let node = ns.resolve_path(at).unwrap().unwrap();
        let mut nodes = ns.child_nodes(at, &node).unwrap().expect("a plain folder");
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<_> = nodes.iter().map(|(n, _)| n.to_str().unwrap()).collect();
        assert_eq!(names, ["data", "link", "sub"]);
        for (name, listed) in &nodes {
            let looked = ns.lookup(at, &node, name).unwrap().unwrap();
            assert_eq!(listed.entry.kind, looked.entry.kind, "{name:?}");
            assert_eq!(listed.entry.size, looked.entry.size, "{name:?}");
            assert_eq!(listed.entry.mtime, looked.entry.mtime, "{name:?}");
            assert_eq!(listed.entry.perm, looked.entry.perm, "{name:?}");
            assert_eq!(listed.branches, looked.branches, "{name:?}");
            assert_eq!(listed.upper, looked.upper, "{name:?}");
            assert_eq!(
                listed.entry.source.to_string(),
                looked.entry.source.to_string()
            );
        }
        assert!(matches!(
            &nodes[1].1.entry.content,
            crate::layers::Content::Link(t) if t == Path::new("data")
        ));
        // A folder with a branch mounted below it, and a merged one, resolve by name.
        let blobs = Path::new("rootfs/registry/blobs");
        let node = ns.resolve_path(blobs).unwrap().unwrap();
        assert!(ns.child_nodes(blobs, &node).unwrap().is_none());
        let root = ns.root().unwrap();
        assert!(ns.child_nodes(Path::new(""), &root).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
