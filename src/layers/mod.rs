//! Layer sources: each presents a tree of entries below its root, read-only. The virtual
//! tree (`crate::tree`) stacks them; nothing here knows about FUSE.

mod archive;
mod disk;
mod embedded;
mod empty;
mod templated;

pub use archive::{CacheObjects, GunzippedFile, TarballMembers};
pub use disk::{DiskTree, Root as DiskRoot};
pub use embedded::{embedded_file, export_contexts, EmbeddedTree};
pub use empty::EmptyDir;
pub use templated::{RenderBudget, TemplatedTree};

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    /// A FIFO or a unix socket: only ever in the upper layer (made through the mount),
    /// never shown from a layer below.
    Fifo,
    Socket,
}

/// Where an entry's bytes come from; also what `user.rootfs.source` reports.
#[derive(Clone, Debug)]
pub enum Content {
    /// A folder (no bytes).
    Dir,
    /// A file on disk, opened beneath its layer root when read.
    Disk(DiskFile),
    /// Bytes held in memory: embedded contexts and rendered templates.
    Bytes(Arc<[u8]>),
    /// A symlink and its target.
    Link(PathBuf),
    /// Bytes of an archive (a tarball member, a decompressed `.gz`), read through the
    /// archive's seek index.
    Archive(crate::archive::ArchiveSlice),
    /// A FIFO or socket: no bytes (the kernel handles its opens itself). `link_id` as
    /// for [`DiskFile`]: hard links of one are one inode too.
    Special { link_id: Option<(u64, u64)> },
    /// A file whose backing is known to be broken (a member of a corrupt archive):
    /// opening it fails with EIO. The message says why; it was logged when found.
    Faulty(Arc<str>),
}

/// A path relative to a layer root, as the tail of a path of the virtual tree: the
/// tree's path without the first `skip` bytes (where the layer is mounted). One copy of
/// each path serves the entry's [`DiskFile`] and its [`Source::Disk`] (the inode table
/// keeps paths its own way, by last name: `tree::names`).
#[derive(Clone, Debug)]
pub struct SharedRel {
    path: Arc<Path>,
    skip: u32,
}

impl SharedRel {
    /// `path` without its first `skip` bytes, which must end at a component boundary
    /// (the layer's mount path and its `/`); past the end gives the empty path.
    pub fn new(path: Arc<Path>, skip: usize) -> Self {
        let skip = skip.min(path.as_os_str().len());
        SharedRel {
            path,
            skip: u32::try_from(skip).unwrap_or(u32::MAX),
        }
    }

    /// A path that is not shared with the tree (the layer asked directly).
    pub fn own(rel: &Path) -> Self {
        SharedRel {
            path: Arc::from(rel),
            skip: 0,
        }
    }

    /// The whole path this is the tail of (the tree's path, or the layer's own).
    pub fn tree_path(&self) -> &Arc<Path> {
        &self.path
    }

    /// How many bytes of the tree path come before the layer's part.
    pub fn skip(&self) -> usize {
        self.skip as usize
    }

    /// The entry `name` of the folder this names: one new allocation of the child's
    /// whole path, with the same layer root.
    pub fn child(&self, name: &OsStr) -> Self {
        let skip = self.skip as usize;
        let joined = self.path.join(name);
        // Below the layer's root itself the child's tail starts after the `/` added.
        let skip = if skip > 0 && skip == self.path.as_os_str().len() {
            skip + 1
        } else {
            skip
        };
        SharedRel::new(Arc::from(joined), skip)
    }

    pub fn get(&self) -> &Path {
        let bytes = self.path.as_os_str().as_bytes();
        Path::new(OsStr::from_bytes(
            bytes.get(self.skip as usize..).unwrap_or_default(),
        ))
    }
}

/// A regular file of a [`DiskTree`], addressed relative to the tree's root.
#[derive(Clone, Debug)]
pub struct DiskFile {
    pub tree: Arc<disk::Root>,
    /// Shared with the entry's [`Source::Disk`].
    pub rel: SharedRel,
    /// `(st_dev, st_ino)` of a file of the upper layer with more than one name (a hard
    /// link): all its names are one inode in the tree.
    pub link_id: Option<(u64, u64)>,
}

impl DiskFile {
    pub fn open(&self) -> io::Result<File> {
        self.tree.open_file(self.rel.get())
    }

    pub fn path(&self) -> PathBuf {
        self.tree.absolute(self.rel.get())
    }
}

/// One entry of a layer, as seen by `lstat`.
#[derive(Clone, Debug)]
pub struct LayerEntry {
    pub kind: EntryKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub perm: u16,
    pub size: u64,
    pub mtime: SystemTime,
    /// Status change time of a file on disk; `None` (entries with no inode of their own:
    /// embedded, rendered, archive members, synthetic folders) shows the mtime.
    pub ctime: Option<SystemTime>,
    /// Link count of a file or folder on disk; `None` shows 1 (see `fuse::attr` for
    /// which folders show theirs).
    pub nlink: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub content: Content,
    /// Provenance, as `getfattr -n user.rootfs.source` shows it.
    pub source: Source,
}

/// Where an entry comes from, for provenance.
#[derive(Clone, Debug)]
pub enum Source {
    /// A backing path on disk.
    Path(PathBuf),
    /// An entry of a [`DiskTree`]: its root and the path below it (the same allocation
    /// as its [`DiskFile::rel`]), shown as the absolute path. Entries resolved from disk
    /// are what the tree holds most of: they keep no second, absolute copy of the path.
    Disk {
        tree: Arc<disk::Root>,
        rel: SharedRel,
    },
    /// A file compiled into the binary from the repository's `contexts/`.
    Embedded(String),
    /// Rendered from a template.
    Rendered(Box<Source>),
    /// A folder that exists because the tree's layout needs it.
    Synthetic,
    /// A member of an archive: `ARCHIVE.tar.gz:member`.
    ArchiveMember { archive: PathBuf, member: PathBuf },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Path(p) => write!(f, "{}", p.display()),
            Source::Disk { tree, rel } => write!(f, "{}", tree.absolute(rel.get()).display()),
            Source::Embedded(p) => write!(f, "embedded:contexts/{p}"),
            Source::Rendered(t) => write!(f, "rendered:{t}"),
            Source::Synthetic => write!(f, "synthetic"),
            Source::ArchiveMember { archive, member } => {
                write!(f, "{}:{}", archive.display(), member.display())
            }
        }
    }
}

/// A child name in a layer folder, with its kind.
#[derive(Clone, Debug)]
pub struct Child {
    pub name: OsString,
    pub kind: EntryKind,
}

/// A read-only tree of entries. Paths are relative to the layer root (empty = the root)
/// and made of plain names only: the tree walks one component at a time.
pub trait Layer: Send + Sync + fmt::Debug {
    /// The entry at `rel`, without following a trailing symlink; `None` when absent.
    fn entry(&self, rel: &Path) -> io::Result<Option<LayerEntry>>;

    /// [`Layer::entry`] of `rel.get()`, for a layer whose entries keep their path: they
    /// keep `rel`'s allocation (the tree's) rather than a copy.
    fn entry_shared(&self, rel: &SharedRel) -> io::Result<Option<LayerEntry>> {
        self.entry(rel.get())
    }

    /// The children of the folder at `rel`.
    fn children(&self, rel: &Path) -> io::Result<Vec<Child>>;

    /// The children of the folder at `rel` with their entries, as [`Layer::entry`] gives
    /// each (a name gone in between is left out). A layer on disk answers from one open
    /// folder, one `fstatat` per name, where `entry` resolves each path from the root.
    /// `folder` is the folder's path as the tree keeps it: each entry keeps its child's
    /// path (see [`Layer::entry_shared`]).
    fn child_entries(&self, folder: &SharedRel) -> io::Result<Vec<(OsString, LayerEntry)>> {
        let mut out = Vec::new();
        for child in self.children(folder.get())? {
            if let Some(entry) = self.entry_shared(&folder.child(&child.name))? {
                out.push((child.name, entry));
            }
        }
        Ok(out)
    }

    /// True when the layer can change while mounted (an on-disk `--contexts` tree), so its
    /// entries must not be cached for long by the kernel.
    fn is_mutable(&self) -> bool {
        false
    }
}

impl LayerEntry {
    /// A folder with no inode of its own (synthetic, embedded or inside an archive):
    /// 0755, root-owned, with the build epoch as its time.
    pub fn folder(source: Source) -> Self {
        LayerEntry {
            kind: EntryKind::Dir,
            perm: 0o755,
            size: 4096,
            mtime: build_epoch(),
            ctime: None,
            nlink: None,
            uid: 0,
            gid: 0,
            content: Content::Dir,
            source,
        }
    }
}

/// Whether `name` is a plain single path component (not empty, `.`, `..`, no `/`).
pub fn is_plain_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b != b"." && b != b".." && !b.contains(&b'/') && !b.contains(&0)
}

/// Mtime of everything that has no file of its own to take it from (embedded contexts,
/// synthetic folders): fixed at build time (`SOURCE_DATE_EPOCH`), so packing the same
/// parameters twice gives the same tar bytes.
pub fn build_epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(crate::embedded_contexts::BUILD_EPOCH)
}

/// Reads a whole file entry (for templates and data files, which are small).
pub fn read_all(entry: &LayerEntry) -> io::Result<Vec<u8>> {
    match &entry.content {
        Content::Bytes(b) => Ok(b.to_vec()),
        Content::Disk(f) => {
            use std::io::Read;
            let mut out = Vec::new();
            f.open()?.read_to_end(&mut out)?;
            Ok(out)
        }
        Content::Archive(slice) => slice.read(0, slice.len as usize),
        Content::Faulty(why) => Err(crate::archive::reported(why.to_string())),
        Content::Dir | Content::Link(_) => Err(io::Error::from_raw_os_error(libc::EISDIR)),
        Content::Special { .. } => Err(io::Error::from_raw_os_error(libc::ENXIO)),
    }
}
