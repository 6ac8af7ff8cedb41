//! Filesystem operations on the merged tree, addressed by inode number.

use std::cell::RefCell;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;

use super::{FsError, InUpper, InodeTable, Namespace, Node, ROOT_INO};
use crate::archive::{reported, ArchiveSlice};
use crate::fs_err;
use crate::layers::{is_plain_name, Content, EntryKind, LayerEntry};

/// An open file. Read-only handles of the layers keep the bytes they opened; handles of
/// the upper layer see every write.
#[derive(Debug)]
pub(super) enum OpenFile {
    Disk {
        file: Arc<File>,
        size: u64,
    },
    /// A file of an immutable layer, opened on disk at its first read only: an open
    /// that the kernel serves from its page cache (`FOPEN_KEEP_CACHE`, the second `tar`
    /// of a tree) costs no syscall at all.
    Lower(Arc<LowerFile>),
    Bytes(Arc<[u8]>),
    /// Archive bytes, inflated on read through the archive's seek index.
    Archive(ArchiveSlice),
    Upper(File),
    /// Opened for writing but not written yet: the copy-up waits for the first write,
    /// so `touch` or an open that only reads copies nothing.
    PendingWrite {
        path: PathBuf,
        flags: i32,
        /// The content as it is below, for reads through an `O_RDWR` handle.
        reader: Option<Box<OpenFile>>,
    },
}

/// A layer's file not opened on disk yet (see [`OpenFile::Lower`]).
#[derive(Debug)]
pub(super) struct LowerFile {
    node: Arc<Node>,
    file: OnceLock<Arc<File>>,
}

impl LowerFile {
    /// The file on disk, opened (and checked against what its lookup reported) by the
    /// first read.
    fn file(&self) -> Result<Arc<File>, FsError> {
        if let Some(file) = self.file.get() {
            return Ok(file.clone());
        }
        let Content::Disk(f) = &self.node.entry.content else {
            return Err(fs_err!(EIO, "not a file on disk"));
        };
        let file = f
            .open()
            .map_err(|e| FsError::opening(&e, format!("opening {}: {e}", f.path().display())))?;
        check_unchanged(&file, &self.node.entry, &f.path(), true)?;
        Ok(self.file.get_or_init(|| Arc::new(file)).clone())
    }
}

/// A file opened by [`MergedTree::open`].
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    /// The plain file on disk whose bytes the handle serves, when they cannot change
    /// while mounted (a file of an immutable layer, on a read-only mount): the kernel
    /// may read it directly.
    pub backing: Option<Arc<File>>,
    /// False for entries of a layer edited while mounted: pages cached by an earlier
    /// open may be stale.
    pub keep_cache: bool,
}

thread_local! {
    /// Read buffer of each serving thread: a large read costs no allocation.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Reads `want` bytes at `offset` of a layer's file into the thread's buffer and hands
/// them, or the error, to `answer`. A backing file shorter than its stat size fails
/// (EIO) instead of short-reading.
fn read_disk<R>(
    file: &File,
    expected: u64,
    offset: u64,
    size: u32,
    answer: impl FnOnce(Result<&[u8], FsError>) -> R,
) -> R {
    READ_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let want = (size as u64).min(expected.saturating_sub(offset)) as usize;
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let mut done = 0;
        while done < want {
            match file.read_at(&mut buf[done..want], offset + done as u64) {
                Ok(0) => {
                    // The backing file shrank under the mount: its size no longer matches
                    // what stat said, so this file fails, loudly, instead of short-reading.
                    return answer(Err(fs_err!(EIO, "backing file shorter than its stat size")));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return answer(Err(e.into())),
            }
        }
        answer(Ok(&buf[..want]))
    })
}

/// Hands the result of a read that made its own buffer to `answer`.
fn answer_owned<R>(
    read: Result<Vec<u8>, FsError>,
    answer: impl FnOnce(Result<&[u8], FsError>) -> R,
) -> R {
    match read {
        Ok(bytes) => answer(Ok(&bytes)),
        Err(e) => answer(Err(e)),
    }
}

/// Reads up to `want` bytes at `offset`, fewer only at end of file.
fn read_at_most(file: &File, offset: u64, want: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; want];
    let mut done = 0;
    while done < want {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Refuses a backing file that is no longer the one `stat` described (replaced,
/// rewritten or truncated under the mount): serving it would contradict the size the
/// kernel and `tar` already have. EIO on that file only; remounting serves the new file.
/// The mtime is compared only where it is the backing file's own (`same_mtime`): a
/// metadata-only copy-up keeps its own mtime over the bytes below.
fn check_unchanged(
    file: &File,
    entry: &LayerEntry,
    path: &Path,
    same_mtime: bool,
) -> Result<(), FsError> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    let mtime = std::time::SystemTime::UNIX_EPOCH
        + std::time::Duration::new(
            meta.mtime().max(0) as u64,
            meta.mtime_nsec().clamp(0, 999_999_999) as u32,
        );
    if meta.len() != entry.size || (same_mtime && mtime != entry.mtime) {
        return Err(fs_err!(
            EIO,
            "{} changed under the mount ({} bytes when looked up, {} now); remount to serve it",
            path.display(),
            entry.size,
            meta.len()
        ));
    }
    Ok(())
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
    pub(super) files: DashMap<u64, OpenFile>,
    /// The inode of each open handle: a file whose name is gone (unlinked, renamed
    /// over) is still described and changed through its handles, as on a local disk.
    handle_inos: DashMap<u64, u64>,
    /// Folder listings being paged through by `readdir`, by folder inode.
    listings: DashMap<u64, Arc<Vec<DirItem>>>,
    next_handle: AtomicU64,
    /// Where `statfs` reports space from (the cache, or the upper layer when writable).
    statfs_path: PathBuf,
    /// Counts changes to the tree's shape (create, remove, rename, copy-up): a node
    /// resolved before the last change is resolved again before use.
    pub(super) generation: AtomicU64,
    /// Copy-ups run one at a time, so concurrent opens never copy a file twice.
    pub(super) copy_up_lock: std::sync::Mutex<()>,
}

impl MergedTree {
    pub fn new(ns: Namespace, statfs_path: PathBuf) -> Result<Self, FsError> {
        let root = ns.root()?;
        Ok(MergedTree {
            ns,
            inodes: InodeTable::new(root),
            files: DashMap::new(),
            handle_inos: DashMap::new(),
            listings: DashMap::new(),
            next_handle: AtomicU64::new(1),
            statfs_path,
            generation: AtomicU64::new(1),
            copy_up_lock: std::sync::Mutex::new(()),
        })
    }

    /// Registers the open file `open` of `ino`; returns its handle.
    pub(super) fn add_handle(&self, ino: u64, open: OpenFile) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handle_inos.insert(fh, ino);
        self.files.insert(fh, open);
        fh
    }

    /// A duplicate of an upper file open on `ino`, for a file whose name is gone.
    pub(super) fn open_upper_of(&self, ino: u64) -> Option<File> {
        let handles: Vec<u64> = self
            .handle_inos
            .iter()
            .filter(|h| *h.value() == ino)
            .map(|h| *h.key())
            .collect();
        handles
            .into_iter()
            .find_map(|fh| match &*self.files.get(&fh)? {
                OpenFile::Upper(f) => f.try_clone().ok(),
                _ => None,
            })
    }

    /// The last node of `ino`, whose name is gone, with the attributes its open upper
    /// file has now (an unlinked file still grows and shrinks through its fds).
    fn unlinked_node(&self, ino: u64, node: Arc<Node>) -> Arc<Node> {
        let Some(file) = self.open_upper_of(ino) else {
            return node;
        };
        let Ok(st) = crate::sys::fstat(&file) else {
            return node;
        };
        let time = |secs: i64, nanos: i64| {
            std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
        };
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
        node.generation = self.generation.load(Ordering::Acquire);
        Arc::new(node)
    }

    /// Records a change to the tree's shape.
    pub(super) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The inode's path and node. Nodes that can be out of date (an on-disk contexts
    /// tree, files in the upper layer, anything resolved before the last change) are
    /// resolved again; an entry that no longer resolves (unlinked while open) keeps its
    /// last node.
    pub(super) fn inode(&self, ino: u64) -> Result<(Arc<Path>, Arc<Node>), FsError> {
        let (path, node) = self
            .inodes
            .get(ino)
            .ok_or_else(|| fs_err!(ESTALE, "inode {ino} is not known"))?;
        // Upper files change size and times with every write; folders change shape only
        // through operations that bump the generation.
        let stale = node.mutable
            || (node.upper != InUpper::No && node.entry.kind != EntryKind::Dir)
            || (self.ns.upper().is_some()
                && node.generation != self.generation.load(Ordering::Acquire));
        if !stale {
            return Ok((path, node));
        }
        match self.ns.resolve_path(&path)? {
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
        let node = self
            .ns
            .lookup(&parent_path, &parent_node, name)?
            .ok_or_else(|| fs_err!(ENOENT, "no {name:?} in {}", parent_path.display()))?;
        let node = self.stamp(node);
        let ino = self.inodes.remember(&parent_path.join(name), node.clone());
        Ok((ino, node))
    }

    /// [`MergedTree::lookup`] of a listed entry of the folder `parent`, from the node its
    /// listing resolved when there is one (no path resolved again).
    pub fn lookup_listed(&self, parent: u64, item: &DirItem) -> Result<(u64, Arc<Node>), FsError> {
        // A node resolved before the last change through the mount is resolved again.
        let Some(node) = item
            .node
            .as_ref()
            .filter(|n| n.generation == self.generation.load(Ordering::Acquire))
        else {
            return self.lookup(parent, &item.name);
        };
        let (parent_path, _) = self
            .inodes
            .get(parent)
            .ok_or_else(|| fs_err!(ESTALE, "inode {parent} is not known"))?;
        let ino = self
            .inodes
            .remember(&parent_path.join(&item.name), node.clone());
        Ok((ino, node.clone()))
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
        if self.inodes.get(ino).is_none() {
            self.listings.remove(&ino);
        }
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

    /// The content of the file `ino`, opened for reading: a layer's file checked against
    /// what its lookup reported, bytes in memory, an archive slice, or an upper file.
    pub(super) fn open_content(&self, ino: u64) -> Result<(OpenFile, Arc<Node>), FsError> {
        let (path, node) = self.inode(ino)?;
        self.content_of(&path, node)
    }

    fn content_of(&self, path: &Path, node: Arc<Node>) -> Result<(OpenFile, Arc<Node>), FsError> {
        let open = match &node.entry.content {
            Content::Disk(f) => {
                let file = f.open().map_err(|e| {
                    FsError::opening(&e, format!("opening {}: {e}", f.path().display()))
                })?;
                // Upper files change through the mount: read them as they are now.
                if node.upper == InUpper::Yes {
                    OpenFile::Upper(file)
                } else {
                    check_unchanged(&file, &node.entry, &f.path(), node.upper == InUpper::No)?;
                    OpenFile::Disk {
                        file: Arc::new(file),
                        size: node.entry.size,
                    }
                }
            }
            Content::Bytes(b) => OpenFile::Bytes(b.clone()),
            Content::Archive(slice) => {
                slice.archive.check_unchanged()?;
                OpenFile::Archive(slice.clone())
            }
            Content::Faulty(why) => return Err(reported(why.to_string()).into()),
            Content::Dir => return Err(fs_err!(EISDIR, "{} is a folder", path.display())),
            Content::Link(_) => return Err(fs_err!(ELOOP, "{} is a symlink", path.display())),
            // The kernel opens FIFOs and sockets itself; no open of one reaches here.
            Content::Special { .. } => {
                return Err(fs_err!(ENXIO, "{} is a fifo or socket", path.display()))
            }
        };
        Ok((open, node))
    }

    /// Opens `ino` for reading. With `backing` (the kernel may read the file itself) a
    /// layer's file is opened now, so that it can be handed over; without, a file of an
    /// immutable layer is opened by its first read (errors of the backing file, such as
    /// one changed under the mount, are answered there).
    pub fn open(&self, ino: u64, backing: bool) -> Result<Opened, FsError> {
        let (path, node) = self.inode(ino)?;
        if !backing
            && matches!(node.entry.content, Content::Disk(_))
            && node.upper == InUpper::No
            && !node.mutable
        {
            let lower = LowerFile {
                node,
                file: OnceLock::new(),
            };
            return Ok(Opened {
                fh: self.add_handle(ino, OpenFile::Lower(Arc::new(lower))),
                backing: None,
                keep_cache: true,
            });
        }
        let (open, node) = self.content_of(&path, node)?;
        // Passthrough needs bytes that stay the same for as long as the kernel may hold
        // the backing: a lower file of an immutable layer, on a read-only mount (on a
        // writable one, a copy-up or a rename over the file would have to replace the
        // backing of an inode that open readers still hold, which the kernel refuses).
        let backing = match &open {
            OpenFile::Disk { file, .. } if !node.mutable && !self.is_writable() => {
                Some(file.clone())
            }
            _ => None,
        };
        let fh = self.add_handle(ino, open);
        Ok(Opened {
            fh,
            backing,
            keep_cache: !node.mutable,
        })
    }

    /// Reads up to `size` bytes at `offset` of the open file `fh` and hands them, or the
    /// error, to `answer` (borrowed: rendered bytes are not copied, and a read of a
    /// layer's file lands in a buffer that each thread reuses).
    pub fn read<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        answer: impl FnOnce(Result<&[u8], FsError>) -> R,
    ) -> R {
        let Some(file) = self.files.get(&fh) else {
            return answer(Err(fs_err!(EBADF, "no open file {fh}")));
        };
        // A handle opened for writing reads what is below until its first write.
        let open = match &*file {
            OpenFile::PendingWrite {
                reader: Some(below),
                ..
            } => &**below,
            open => open,
        };
        // Layer contents are cloned out, so that no shard lock is held while reading.
        match open {
            OpenFile::Disk {
                file: f,
                size: expected,
            } => {
                let (f, expected) = (f.clone(), *expected);
                drop(file);
                read_disk(&f, expected, offset, size, answer)
            }
            OpenFile::Lower(lower) => {
                let lower = lower.clone();
                drop(file);
                match lower.file() {
                    Ok(f) => read_disk(&f, lower.node.entry.size, offset, size, answer),
                    Err(e) => answer(Err(e)),
                }
            }
            OpenFile::Bytes(b) => {
                let b = b.clone();
                drop(file);
                let start = (offset as usize).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                answer(Ok(&b[start..end]))
            }
            OpenFile::Archive(slice) => {
                let slice = slice.clone();
                drop(file);
                answer_owned(
                    slice.read(offset, size as usize).map_err(FsError::from),
                    answer,
                )
            }
            OpenFile::Upper(f) => answer_owned(
                read_at_most(f, offset, size as usize).map_err(FsError::from),
                answer,
            ),
            OpenFile::PendingWrite { .. } => {
                answer(Err(fs_err!(EBADF, "file {fh} is not open for reading")))
            }
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
        let content = match self.open_content(ino) {
            Ok((content, _)) => content,
            Err(e) => return answer(Err(e)),
        };
        match content {
            OpenFile::Disk {
                file,
                size: expected,
            } => read_disk(&file, expected, offset, size, answer),
            OpenFile::Bytes(b) => {
                let start = (offset as usize).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                answer(Ok(&b[start..end]))
            }
            OpenFile::Archive(slice) => answer_owned(
                slice.read(offset, size as usize).map_err(FsError::from),
                answer,
            ),
            OpenFile::Upper(f) => answer_owned(
                read_at_most(&f, offset, size as usize).map_err(FsError::from),
                answer,
            ),
            OpenFile::Lower(_) | OpenFile::PendingWrite { .. } => {
                answer(Err(fs_err!(EBADF, "inode {ino} is not open for reading")))
            }
        }
    }

    pub fn release(&self, fh: u64) {
        self.files.remove(&fh);
        self.handle_inos.remove(&fh);
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
        match self.inodes.get(ino) {
            Some((path, _)) => match path.parent() {
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

    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }
}
