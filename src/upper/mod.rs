//! The upper layer (docs/DESIGN.md §8): a folder that takes every change made through the mount,
//! so the layers below and the cache are never modified.
//!
//! On-disk format (kept stable: `--upper DIR` is reused across mounts):
//! - a file, folder or symlink in DIR replaces the entry of that path below;
//! - `.wh.NAME` (an empty file) hides NAME of the layers below (a whiteout);
//! - `.wh..wh..opq` in a folder hides everything below that folder (opaque folder);
//! - a regular file with the xattr `user.rootfs.metacopy` carries only metadata (mode,
//!   owner, times): its bytes still come from below (metadata-only copy-up, so a
//!   `chmod +x` of a 2 GB blob writes no data);
//! - `.wh.copyup.work/` at the top holds copy-ups in progress (`.wh.copyup.<pid>.<n>`),
//!   renamed into place when whole; whatever is in it at mount time was left by a killed
//!   daemon and is removed (so is a `.wh.copyup.*` file at the top, the older place).
//!
//! Names that start with `.wh.` are reserved: they cannot be created through the mount,
//! and lower entries so named are never copied up (`crate::tree` refuses with EPERM).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub mod params;

use crate::layers::{Child, DiskTree, EntryKind, Layer, LayerEntry};
use crate::sys::{self, at, at::SetTime};

pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
pub const METACOPY_XATTR: &str = "user.rootfs.metacopy";
const COPYUP_PREFIX: &str = ".wh.copyup.";
/// The folder of copy-ups in progress: one place to clean, whatever the depth of the file.
const WORK_DIR: &str = ".wh.copyup.work";

/// Whether `name` is reserved for the upper layer's own bookkeeping.
pub fn is_reserved(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes())
}

fn whiteout_name(name: &OsStr) -> OsString {
    let mut w = OsString::from(WHITEOUT_PREFIX);
    w.push(name);
    w
}

/// What the upper layer says about one path.
#[derive(Debug)]
pub enum UpperLookup {
    Absent,
    /// Deleted: the layers below must not show it.
    Whiteout,
    Found {
        entry: LayerEntry,
        /// Only metadata is here; the bytes come from below.
        metacopy: bool,
        /// A folder that hides the folders of the same path below.
        opaque: bool,
    },
}

/// The children of an upper folder, and what it hides below.
#[derive(Debug, Default)]
pub struct UpperListing {
    pub children: Vec<Child>,
    pub whiteouts: HashSet<OsString>,
    pub opaque: bool,
}

#[derive(Debug)]
pub struct UpperDir {
    path: PathBuf,
    root: OwnedFd,
    tree: DiskTree,
    copyups: AtomicU64,
}

fn split(rel: &Path) -> io::Result<(&Path, &OsStr)> {
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

impl UpperDir {
    /// Opens (creating if needed) the upper folder `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(path)?;
        let upper = UpperDir {
            path: path.to_path_buf(),
            root: sys::open_path(path)?,
            tree: DiskTree::open(path)?.showing_special(),
            copyups: AtomicU64::new(0),
        };
        upper.remove_stale_copyups(Path::new(""))?;
        match at::mkdirat(&upper.root, OsStr::new(WORK_DIR), 0o700) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        upper.remove_stale_copyups(Path::new(WORK_DIR))?;
        Ok(upper)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copy-ups interrupted by a crash leave hidden temp files: drop them (top level only
    /// is cheap; deeper ones are removed when their folder is next listed).
    fn remove_stale_copyups(&self, rel: &Path) -> io::Result<()> {
        let dir = self.dir_fd(rel)?;
        for (name, _) in sys::read_dir_fd(&dir)? {
            if name.as_bytes().starts_with(COPYUP_PREFIX.as_bytes()) {
                let _ = at::unlinkat(&dir, &name, false);
            }
        }
        Ok(())
    }

    fn dir_fd(&self, rel: &Path) -> io::Result<OwnedFd> {
        sys::open_beneath(&self.root, rel, libc::O_PATH | libc::O_DIRECTORY)
    }

    fn exists_in(&self, dir: &Path, name: &OsStr) -> io::Result<bool> {
        match sys::open_beneath(&self.root, &dir.join(name), libc::O_PATH) {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ENAMETOOLONG)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    pub fn lookup(&self, rel: &Path) -> io::Result<UpperLookup> {
        if rel.as_os_str().is_empty() {
            return Ok(match self.tree.entry(rel)? {
                Some(entry) => UpperLookup::Found {
                    entry,
                    metacopy: false,
                    opaque: false,
                },
                None => UpperLookup::Absent,
            });
        }
        let (parent, name) = split(rel)?;
        if is_reserved(name) {
            return Ok(UpperLookup::Absent);
        }
        match self.tree.entry(rel)? {
            Some(entry) => {
                let metacopy = entry.kind == EntryKind::File && self.is_metacopy(rel)?;
                let opaque = entry.kind == EntryKind::Dir
                    && self.exists_in(rel, OsStr::new(OPAQUE_MARKER))?;
                Ok(UpperLookup::Found {
                    entry,
                    metacopy,
                    opaque,
                })
            }
            None if self.exists_in(parent, &whiteout_name(name))? => Ok(UpperLookup::Whiteout),
            None => Ok(UpperLookup::Absent),
        }
    }

    fn is_metacopy(&self, rel: &Path) -> io::Result<bool> {
        let file = sys::open_beneath(&self.root, rel, libc::O_RDONLY)?;
        match at::fgetxattr(&file, OsStr::new(METACOPY_XATTR)) {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    pub fn listing(&self, rel: &Path) -> io::Result<UpperListing> {
        let mut listing = UpperListing::default();
        for child in self.tree.children(rel)? {
            let bytes = child.name.as_bytes();
            if bytes == OPAQUE_MARKER.as_bytes() {
                listing.opaque = true;
            } else if bytes.starts_with(COPYUP_PREFIX.as_bytes()) {
                continue;
            } else if let Some(hidden) = bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                listing
                    .whiteouts
                    .insert(OsStr::from_bytes(hidden).to_os_string());
            } else {
                listing.children.push(child);
            }
        }
        Ok(listing)
    }

    pub fn mkdir(&self, rel: &Path, mode: u32) -> io::Result<()> {
        let (parent, name) = split(rel)?;
        let dir = self.dir_fd(parent)?;
        at::mkdirat(&dir, name, mode)?;
        give_back_umasked_at(&dir, name, mode)
    }

    /// Creates a new regular file and opens it with `flags`.
    pub fn create(&self, rel: &Path, flags: i32, mode: u32) -> io::Result<File> {
        let (parent, name) = split(rel)?;
        let file = at::create_at(&self.dir_fd(parent)?, name, flags, mode)?;
        give_back_umasked(&file, mode)?;
        Ok(file)
    }

    pub fn open_file(&self, rel: &Path, flags: i32) -> io::Result<File> {
        let (parent, name) = split(rel)?;
        at::open_at(&self.dir_fd(parent)?, name, flags)
    }

    /// Makes a FIFO or a socket node (`mode` with its `S_IF*` type).
    pub fn mknod(&self, rel: &Path, mode: u32) -> io::Result<()> {
        let (parent, name) = split(rel)?;
        let dir = self.dir_fd(parent)?;
        at::mknodat(&dir, name, mode)?;
        give_back_umasked_at(&dir, name, mode)
    }

    pub fn symlink(&self, target: &Path, rel: &Path) -> io::Result<()> {
        let (parent, name) = split(rel)?;
        at::symlinkat(target.as_os_str(), &self.dir_fd(parent)?, name)
    }

    pub fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from_parent, from_name) = split(from)?;
        let (to_parent, to_name) = split(to)?;
        at::linkat(
            &self.dir_fd(from_parent)?,
            from_name,
            &self.dir_fd(to_parent)?,
            to_name,
        )
    }

    /// Removes a file, symlink or folder of the upper layer; a folder's own markers
    /// (whiteouts, opaque marker) go with it.
    pub fn remove(&self, rel: &Path, is_dir: bool) -> io::Result<()> {
        let (parent, name) = split(rel)?;
        if is_dir {
            let dir = self.dir_fd(rel)?;
            for (child, _) in sys::read_dir_fd(&dir)? {
                if is_reserved(&child) {
                    at::unlinkat(&dir, &child, false)?;
                }
            }
        }
        at::unlinkat(&self.dir_fd(parent)?, name, is_dir)
    }

    pub fn whiteout(&self, rel: &Path) -> io::Result<()> {
        let (parent, name) = split(rel)?;
        match at::create_at(
            &self.dir_fd(parent)?,
            &whiteout_name(name),
            libc::O_WRONLY,
            0o600,
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes the whiteout of `rel`; true when there was one.
    pub fn clear_whiteout(&self, rel: &Path) -> io::Result<bool> {
        let (parent, name) = split(rel)?;
        match at::unlinkat(&self.dir_fd(parent)?, &whiteout_name(name), false) {
            Ok(()) => Ok(true),
            // A name too long to carry the prefix can have no whiteout.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ENAMETOOLONG)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    pub fn set_opaque(&self, rel: &Path) -> io::Result<()> {
        match at::create_at(
            &self.dir_fd(rel)?,
            OsStr::new(OPAQUE_MARKER),
            libc::O_WRONLY,
            0o600,
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from_parent, from_name) = split(from)?;
        let (to_parent, to_name) = split(to)?;
        at::renameat2(
            &self.dir_fd(from_parent)?,
            from_name,
            &self.dir_fd(to_parent)?,
            to_name,
            0,
        )
    }

    pub fn chmod(&self, rel: &Path, mode: u32) -> io::Result<()> {
        let (parent, name) = split(rel)?;
        at::fchmodat(&self.dir_fd(parent)?, name, mode)
    }

    pub fn chown(&self, rel: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        let (parent, name) = split(rel)?;
        at::fchownat(&self.dir_fd(parent)?, name, uid, gid)
    }

    pub fn set_times(&self, rel: &Path, atime: SetTime, mtime: SetTime) -> io::Result<()> {
        let (parent, name) = split(rel)?;
        at::utimensat(&self.dir_fd(parent)?, name, atime, mtime)
    }

    /// A temp file for a copy-up, in the work folder; commit with [`Self::commit`].
    pub fn temp_file(&self, mode: u32) -> io::Result<(File, OsString)> {
        let n = self.copyups.fetch_add(1, Ordering::Relaxed);
        let name = OsString::from(format!("{COPYUP_PREFIX}{}.{n}", std::process::id()));
        let work = self.dir_fd(Path::new(WORK_DIR))?;
        let file = at::create_at(&work, &name, libc::O_RDWR, mode)?;
        Ok((file, name))
    }

    /// The path (in the upper layer) of the temp file `temp` of [`Self::temp_file`].
    pub fn temp_path(&self, temp: &OsStr) -> PathBuf {
        Path::new(WORK_DIR).join(temp)
    }

    /// Moves a finished copy-up into place (replacing a metadata-only copy, if any).
    pub fn commit(&self, parent: &Path, temp: &OsStr, name: &OsStr) -> io::Result<()> {
        let work = self.dir_fd(Path::new(WORK_DIR))?;
        at::renameat2(&work, temp, &self.dir_fd(parent)?, name, 0)
    }

    /// Marks an upper file as metadata only (its bytes come from below).
    pub fn set_metacopy(&self, file: &File) -> io::Result<()> {
        at::fsetxattr(file, OsStr::new(METACOPY_XATTR), b"", 0)
    }

    /// Opens an upper file or folder for its extended attributes.
    pub fn xattr_handle(&self, rel: &Path) -> io::Result<OwnedFd> {
        sys::open_beneath(&self.root, rel, libc::O_RDONLY | libc::O_NONBLOCK)
    }
}

/// The mode a caller creates with is final: the kernel applied the caller's umask already
/// (the mount does not ask for FUSE_DONT_MASK), so the permission bits the daemon's own
/// umask took from the new node are given back (as on a kernel file system, a `mkdir -m
/// 0777` under `umask 0` is 0777). Set-id and sticky bits are left as the kernel made
/// them (a folder inherits set-group-id from its parent).
fn give_back_umasked(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let have = file.metadata()?.permissions().mode() & 0o7777;
    let lost = mode & 0o777 & !have;
    if lost != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(have | lost))?;
    }
    Ok(())
}

/// [`give_back_umasked`] for the node `name` in `dir` (a folder, FIFO or socket, which
/// are not opened for it).
fn give_back_umasked_at(dir: &OwnedFd, name: &OsStr, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let node = at::open_at(dir, name, libc::O_PATH)?;
    let have = node.metadata()?.permissions().mode() & 0o7777;
    let lost = mode & 0o777 & !have;
    if lost != 0 {
        at::fchmodat(dir, name, have | lost)?;
    }
    Ok(())
}
