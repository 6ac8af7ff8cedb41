//! The merged tree's facade: filesystem operations addressed by inode number, over its
//! owned parts — the namespace and inode table (what a name resolves to, its number),
//! the open-file table (`handles`), copy-up into the upper folder (`copy_up`) and the
//! invalidation of resolved nodes (`changes`). Changes through the mount are in `write`.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dashmap::DashMap;

use super::changes::FolderChanges;
use super::copy_up::CopyUp;
use super::handles::{self, open_content, Handles, LowerFile, OpenFile, Readable};
use super::{FsError, InUpper, InodeTable, Namespace, Node, ROOT_INO};
use crate::fs_err;
use crate::layers::{is_plain_name, Content, EntryKind};

/// A file opened by [`MergedTree::open`].
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    /// The plain file on disk whose bytes the handle serves, when they cannot change
    /// while mounted (a file of an immutable layer, or a remote object whole and
    /// verified in the local block cache, on a read-only mount): the kernel may read it
    /// directly.
    pub backing: Option<Arc<File>>,
    /// False for entries of a layer edited while mounted: pages cached by an earlier
    /// open may be stale.
    pub keep_cache: bool,
}

/// One entry of a folder listing.
#[derive(Clone, Debug)]
pub struct DirItem {
    pub name: OsString,
    pub kind: EntryKind,
    pub ino: u64,
    /// The entry as a lookup would resolve it, where the listing already did (see
    /// [`Namespace::child_nodes`]); `None`: resolve it by name.
    pub node: Option<Arc<Node>>,
}

#[derive(Debug)]
pub struct MergedTree {
    pub(super) ns: Namespace,
    pub(super) inodes: InodeTable,
    pub(super) handles: Handles,
    /// Folder listings being paged through by `readdir`, by folder inode.
    listings: DashMap<u64, Arc<Vec<DirItem>>>,
    /// Where `statfs` reports space from (the cache, or the upper layer when writable).
    statfs_path: PathBuf,
    /// Which resolved nodes are out of date after a change through the mount.
    pub(super) changes: FolderChanges,
    /// The upper folder and its copy-ups; `None` on a read-only mount.
    pub(super) copy: Option<CopyUp>,
}

impl MergedTree {
    pub fn new(ns: Namespace, statfs_path: PathBuf) -> Result<Self, FsError> {
        let root = ns.root()?;
        let read_only = ns.upper().is_none();
        let copy = ns.upper().cloned().map(CopyUp::new);
        Ok(MergedTree {
            ns,
            inodes: InodeTable::new(root).sharing_lower_links(read_only),
            handles: Handles::new(),
            listings: DashMap::new(),
            statfs_path,
            changes: FolderChanges::new(),
            copy,
        })
    }

    /// The last node of `ino`, whose name is gone, with the attributes its open upper
    /// file has now (an unlinked file still grows and shrinks through its fds).
    fn unlinked_node(&self, ino: u64, node: Arc<Node>) -> Arc<Node> {
        let Some(file) = self.handles.upper_of(ino) else {
            return node;
        };
        let Ok(st) = crate::sys::fstat(&*file) else {
            return node;
        };
        let time = crate::sys::system_time;
        let mut fresh = (*node).clone();
        fresh.entry.size = st.st_size.max(0) as u64;
        fresh.entry.perm = (st.st_mode & 0o7777) as u16;
        fresh.entry.uid = st.st_uid;
        fresh.entry.gid = st.st_gid;
        fresh.entry.mtime = time(st.st_mtime, st.st_mtime_nsec);
        fresh.entry.ctime = Some(time(st.st_ctime, st.st_ctime_nsec));
        fresh.entry.nlink = Some(st.st_nlink as u32);
        let fresh = Arc::new(fresh);
        self.inodes.update(ino, fresh.clone());
        fresh
    }

    /// Stamps a freshly resolved node with the current change count.
    pub(super) fn stamp(&self, mut node: Node) -> Arc<Node> {
        node.generation = self.changes.now();
        Arc::new(node)
    }

    /// The inode's path and node. Nodes that can be out of date (an on-disk contexts
    /// tree, files in the upper layer, anything below a folder changed since it was
    /// resolved) are resolved again; an entry that no longer resolves (unlinked while
    /// open) keeps its last node.
    pub(super) fn inode(&self, ino: u64) -> Result<(Arc<Path>, Arc<Node>), FsError> {
        let (path, node) = self
            .inodes
            .get(ino)
            .ok_or_else(|| fs_err!(ESTALE, "inode {ino} is not known"))?;
        // Upper files change size and times with every write; folders change shape only
        // through operations that record a change.
        // A name that is gone (`InodeTable::detach` gives it a rooted path) lives on
        // through its open fds: always described as they have it now.
        let stale = node.mutable
            || path.has_root()
            || (node.upper != InUpper::No && node.entry.kind != EntryKind::Dir)
            || (self.copy.is_some() && self.changes.is_stale(&path, node.generation));
        if !stale {
            return Ok((path, node));
        }
        match self.ns.resolve_shared(&path)? {
            Some(fresh) => {
                let fresh = self.stamp(fresh);
                self.inodes.update(ino, fresh.clone());
                Ok((path, fresh))
            }
            None => Ok((path, self.unlinked_node(ino, node))),
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<(u64, Arc<Node>), FsError> {
        if !is_plain_name(name) {
            return Err(fs_err!(ENOENT, "bad name {name:?}"));
        }
        let (parent_path, parent_node) = self.inode(parent)?;
        // One allocation of the path, for the inode table and the entry.
        let path: Arc<Path> = Arc::from(parent_path.join(name));
        let node = self
            .ns
            .lookup_shared(&path, &parent_node)?
            .ok_or_else(|| fs_err!(ENOENT, "no {name:?} in {}", parent_path.display()))?;
        let node = self.stamp(node);
        let ino = self.inodes.remember(path, node.clone());
        Ok((ino, node))
    }

    /// [`MergedTree::lookup`] of a listed entry of the folder `parent`, from the node its
    /// listing resolved when there is one (no path resolved again).
    pub fn lookup_listed(&self, parent: u64, item: &DirItem) -> Result<(u64, Arc<Node>), FsError> {
        let Some(node) = &item.node else {
            return self.lookup(parent, &item.name);
        };
        let parent_path = self
            .inodes
            .path_of(parent)
            .ok_or_else(|| fs_err!(ESTALE, "inode {parent} is not known"))?;
        let path = parent_path.join(&item.name);
        // A node resolved before a change through the mount there is resolved again.
        if self.changes.is_stale(&path, node.generation) {
            return self.lookup(parent, &item.name);
        }
        // The listing's node holds its path already: no other made.
        let path = node.tree_path().cloned().unwrap_or_else(|| Arc::from(path));
        let ino = self.inodes.remember(path, node.clone());
        Ok((ino, node.clone()))
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
        if !self.inodes.contains(ino) {
            self.listings.remove(&ino);
            if self.inodes.halved() {
                crate::sys::release_free_heap();
            }
        }
    }

    /// Whether the path of `ino` has moved on to another number (see
    /// [`MergedTree::supersede`]): an open of it is answered ESTALE, and the kernel looks
    /// the path up again and opens that.
    pub fn is_superseded(&self, ino: u64) -> bool {
        self.inodes.is_superseded(ino)
    }

    /// ESTALE for an open of a superseded number ([`MergedTree::is_superseded`]).
    pub(super) fn refuse_superseded(&self, ino: u64) -> Result<(), FsError> {
        if self.inodes.is_superseded(ino) {
            return Err(fs_err!(
                ESTALE,
                "inode {ino} was given a new number; the kernel looks it up again"
            ));
        }
        Ok(())
    }

    pub fn getattr(&self, ino: u64) -> Result<Arc<Node>, FsError> {
        self.inode(ino).map(|(_, node)| node)
    }

    pub fn readlink(&self, ino: u64) -> Result<PathBuf, FsError> {
        match &self.inode(ino)?.1.entry.content {
            Content::Link(target) => Ok(target.clone()),
            _ => Err(fs_err!(EINVAL, "inode {ino} is not a symlink")),
        }
    }

    /// Provenance of an entry (`user.rootfs.source`).
    pub fn source(&self, ino: u64) -> Result<String, FsError> {
        Ok(self.inode(ino)?.1.provenance())
    }

    /// The content of the file `ino`, opened for reading.
    pub(super) fn open_content(&self, ino: u64) -> Result<(Readable, Arc<Node>), FsError> {
        let (path, node) = self.inode(ino)?;
        Ok((open_content(&path, &node)?, node))
    }

    /// Opens `ino` for reading. With `backing_from` (the kernel may read files of at
    /// least that size itself) such a layer's file is opened now, so that it can be
    /// handed over; otherwise a file of an immutable layer is opened by its first read
    /// (errors of the backing file, such as one changed under the mount, are answered
    /// there).
    pub fn open(&self, ino: u64, backing_from: Option<u64>) -> Result<Opened, FsError> {
        self.refuse_superseded(ino)?;
        let (path, node) = self.inode(ino)?;
        if backing_from.is_none_or(|min| node.entry.size < min) {
            if let Some(lower) = LowerFile::of(&node) {
                return Ok(Opened {
                    fh: self.handles.add(ino, OpenFile::Open(lower)),
                    backing: None,
                    keep_cache: true,
                });
            }
        }
        let open = open_content(&path, &node)?;
        // Passthrough needs bytes that stay the same for as long as the kernel may hold
        // the backing: a lower file of an immutable layer, opened for reading (on a
        // writable mount a later copy-up gives the path a new number rather than
        // replacing this backing: `supersede`), or a remote object whole and verified in
        // the local block cache. Files of the upper layer are handed over by
        // `upper_backing`, opened for reading and writing.
        let handed_over = !node.mutable
            && !path.has_root()
            && backing_from.is_some_and(|min| node.entry.size >= min);
        let backing = match &open {
            Readable::Disk { file, .. } if handed_over => Some(file.clone()),
            Readable::Archive(slice) if handed_over => slice.local_file().map(Arc::new),
            _ => None,
        };
        let fh = self.handles.add(ino, OpenFile::Open(open));
        Ok(Opened {
            fh,
            backing,
            keep_cache: !node.mutable,
        })
    }

    /// Reads up to `size` bytes at `offset` of the open file `fh` and hands them, or the
    /// error, to `answer` (borrowed: rendered bytes are not copied, and a read of a
    /// layer's file lands in a buffer that each thread reuses). No table lock is held
    /// while reading.
    pub fn read<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        answer: impl FnOnce(Result<&[u8], FsError>) -> R,
    ) -> R {
        match self.handles.readable(fh) {
            Ok(content) => handles::read(&content, offset, size, answer),
            Err(e) => answer(Err(e)),
        }
    }

    /// [`MergedTree::read`] for a file the kernel did not open with us (it does without
    /// open requests on a read-only mount): the content is opened for this read alone.
    pub fn read_unopened<R>(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
        answer: impl FnOnce(Result<&[u8], FsError>) -> R,
    ) -> R {
        match self.open_content(ino) {
            Ok((content, _)) => handles::read(&content, offset, size, answer),
            Err(e) => answer(Err(e)),
        }
    }

    pub fn release(&self, fh: u64) {
        self.handles.release(fh);
    }

    /// The entries of the folder `ino` (without `.` and `..`), sorted by name so that a
    /// `readdir` offset (an index) names the same entry on every call while the folder
    /// is unchanged. A listing is taken at offset 0 and kept while the kernel pages
    /// through it, so that a change in between (through the mount, or in a mutable
    /// layer) cannot shift offsets within one pass; [`MergedTree::listing_done`] drops it.
    pub fn listing(&self, ino: u64, offset: u64) -> Result<Arc<Vec<DirItem>>, FsError> {
        if offset > 0 {
            if let Some(listing) = self.listings.get(&ino) {
                return Ok(listing.clone());
            }
        }
        let (path, node) = self.inode(ino)?;
        if node.entry.kind != EntryKind::Dir {
            return Err(fs_err!(ENOTDIR, "{} is not a folder", path.display()));
        }
        let mut items: Vec<DirItem> = match self.ns.child_nodes(&path, &node)? {
            Some(nodes) => nodes
                .into_iter()
                .map(|(name, child)| DirItem {
                    ino: self.inodes.ino_of(&path.join(&name)),
                    kind: child.entry.kind,
                    node: Some(self.stamp(child)),
                    name,
                })
                .collect(),
            None => self
                .ns
                .children(&path, &node)?
                .into_iter()
                .map(|c| DirItem {
                    ino: self.inodes.ino_of(&path.join(&c.name)),
                    name: c.name,
                    kind: c.kind,
                    node: None,
                })
                .collect(),
        };
        items.sort_by(|a, b| a.name.cmp(&b.name));
        let items = Arc::new(items);
        self.listings.insert(ino, items.clone());
        Ok(items)
    }

    /// The kernel has read the listing of `ino` to its end (and caches it itself).
    pub fn listing_done(&self, ino: u64) {
        self.listings.remove(&ino);
    }

    /// Checks that `ino` is a folder (for `opendir`).
    pub fn check_dir(&self, ino: u64) -> Result<(), FsError> {
        let (path, node) = self.inode(ino)?;
        if node.entry.kind != EntryKind::Dir {
            return Err(fs_err!(ENOTDIR, "{} is not a folder", path.display()));
        }
        Ok(())
    }

    /// The parent inode of `ino`, for `..` entries.
    pub fn parent_of(&self, ino: u64) -> u64 {
        match self.inodes.path_of(ino) {
            Some(path) => match path.parent() {
                Some(p) => self.inodes.ino_of(p),
                None => ROOT_INO,
            },
            None => ROOT_INO,
        }
    }

    /// Space and file counts: of the upper layer's file system when the mount is
    /// writable, else of the cache's with nothing free. Without the cache (removed
    /// while mounted) all counts are zero: `df` keeps answering.
    pub fn statfs(&self) -> Result<libc::statvfs, FsError> {
        if let Some(upper) = self.ns.upper() {
            return Ok(crate::sys::statvfs(upper.path())?);
        }
        let mut st = match crate::sys::statvfs(&self.statfs_path) {
            Ok(st) => st,
            Err(e) => {
                tracing::debug!(error = %e, path = %self.statfs_path.display(), "statfs of the cache");
                let mut st = crate::sys::statvfs(Path::new("/"))?;
                st.f_blocks = 0;
                st.f_files = 0;
                st
            }
        };
        st.f_bfree = 0;
        st.f_bavail = 0;
        st.f_ffree = 0;
        st.f_favail = 0;
        Ok(st)
    }

    pub fn is_writable(&self) -> bool {
        self.ns.upper().is_some()
    }

    /// How many names the tree has resolved (see [`Namespace::resolved`]).
    pub fn names_resolved(&self) -> u64 {
        self.ns.resolved()
    }

    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }
}
