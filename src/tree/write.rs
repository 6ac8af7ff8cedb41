//! Changes through the mount (docs/DESIGN.md §8), kept in the upper layer: copy-up of
//! content on the first write, metadata-only copy-up for chmod/chown/utimens, whiteouts
//! and opaque folders for deletes and renames of entries below. Layers and the cache are
//! never written. Each operation resolves its parent folder once and looks its entries
//! up from there; the copies themselves are `copy_up`'s.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::copy_up::{io_err, CopyUp};
use super::handles::{OpenFile, Readable, WriteTarget};
use super::{FsError, InUpper, MergedTree, Node};
use crate::fs_err;
use crate::layers::{is_plain_name, Content, EntryKind};
use crate::sys::at::SetTime;
use crate::upper::{is_reserved, UpperDir};

/// Who asks for a change: new entries are theirs, as on a local folder.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// The attributes a `setattr` changes (`None`: unchanged).
#[derive(Clone, Copy, Debug, Default)]
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// `rename` flags this tree supports; `RENAME_EXCHANGE` and `RENAME_WHITEOUT` get EINVAL.
pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;

impl MergedTree {
    fn copier(&self) -> Result<&CopyUp, FsError> {
        self.copy
            .as_ref()
            .ok_or_else(|| fs_err!(EROFS, "the mount is read-only"))
    }

    fn upper_dir(&self) -> Result<&Arc<UpperDir>, FsError> {
        Ok(self.copier()?.upper())
    }

    fn copy_up(&self, path: &Path, metadata_only: bool) -> Result<Arc<Node>, FsError> {
        let node = self
            .copier()?
            .copy_up(&self.ns, &self.changes, path, metadata_only)?;
        Ok(self.stamp(node))
    }

    fn copy_up_empty(&self, path: &Path) -> Result<(), FsError> {
        self.copier()?.copy_up_empty(&self.ns, &self.changes, path)
    }

    /// The folder `path` (node `known`) in the upper layer, copied up with the folders
    /// above it where needed.
    fn ensure_upper_dir(&self, path: &Path, known: &Node) -> Result<Node, FsError> {
        self.copier()?
            .ensure_dir(&self.ns, &self.changes, path, Some(known))
    }

    fn node_at(&self, path: &Path) -> Result<Option<Node>, FsError> {
        Ok(self.ns.resolve_path(path)?)
    }

    /// The folder `parent` and the path of its child `name`, checked for a new entry.
    fn child_of(
        &self,
        parent: u64,
        name: &OsStr,
    ) -> Result<(PathBuf, Arc<Node>, PathBuf), FsError> {
        if !is_plain_name(name) {
            return Err(fs_err!(EINVAL, "bad name {name:?}"));
        }
        if is_reserved(name) {
            return Err(fs_err!(
                EPERM,
                "names starting with .wh. are reserved for the upper layer"
            ));
        }
        let (parent_path, parent_node) = self.inode(parent)?;
        if parent_node.entry.kind != EntryKind::Dir {
            return Err(fs_err!(
                ENOTDIR,
                "{} is not a folder",
                parent_path.display()
            ));
        }
        let path = parent_path.join(name);
        Ok((parent_path.to_path_buf(), parent_node, path))
    }

    /// The entry just made at `path` in the upper folder `parent` (node `dir`), registered
    /// with the kernel (one lookup from the parent).
    fn remember_new(
        &self,
        parent: &Path,
        dir: &Node,
        path: &Path,
    ) -> Result<(u64, Arc<Node>), FsError> {
        self.changes.changed(path);
        let node = self.child_node(parent, dir, path)?;
        Ok((self.inodes.remember(Arc::from(path), node.clone()), node))
    }

    /// The node of `path`, a child of the folder `parent` (node `dir`), just changed.
    fn child_node(&self, parent: &Path, dir: &Node, path: &Path) -> Result<Arc<Node>, FsError> {
        let name = path.file_name().unwrap_or_default();
        let node = self
            .ns
            .lookup(parent, dir, name)?
            .ok_or_else(|| fs_err!(EIO, "{} vanished after it was made", path.display()))?;
        Ok(self.stamp(node))
    }

    /// Prepares the parent folder (node `dir`) for a new entry at `path`: returns the
    /// parent's node in the upper layer, and true when a whiteout was removed (something
    /// below had this name, so a new folder must be opaque).
    fn prepare_new(&self, parent: &Path, dir: &Node, path: &Path) -> Result<(Node, bool), FsError> {
        let name = path.file_name().unwrap_or_default();
        if self.ns.lookup(parent, dir, name)?.is_some() {
            return Err(fs_err!(EEXIST, "{} exists", path.display()));
        }
        let dir = self.ensure_upper_dir(parent, dir)?;
        let hid = self
            .upper_dir()?
            .clear_whiteout(path)
            .map_err(|e| io_err("clearing whiteout", path, e))?;
        Ok((dir, hid))
    }

    fn own(&self, path: &Path, caller: Caller) {
        if let Ok(upper) = self.upper_dir() {
            let _ = upper.chown(path, Some(caller.uid), Some(caller.gid));
        }
    }

    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> Result<(u64, Arc<Node>, u64), FsError> {
        let (parent_path, dir, path) = self.child_of(parent, name)?;
        let (dir, _) = self.prepare_new(&parent_path, &dir, &path)?;
        let access = flags & libc::O_ACCMODE;
        let file = self
            .upper_dir()?
            .create(&path, access | (flags & libc::O_TRUNC), mode & 0o7777)
            .map_err(|e| io_err("creating", &path, e))?;
        self.own(&path, caller);
        let (ino, node) = self.remember_new(&parent_path, &dir, &path)?;
        let fh = self
            .handles
            .add(ino, OpenFile::Open(Readable::Upper(Arc::new(file))));
        Ok((ino, node, fh))
    }

    /// Regular files, FIFOs and sockets (kept in the upper layer); devices are refused
    /// (EPERM): the mount is `nodev`, so one could never be used.
    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: Caller,
    ) -> Result<(u64, Arc<Node>), FsError> {
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFIFO || kind == libc::S_IFSOCK {
            let (parent_path, dir, path) = self.child_of(parent, name)?;
            let (dir, _) = self.prepare_new(&parent_path, &dir, &path)?;
            self.upper_dir()?
                .mknod(&path, kind | (mode & 0o7777))
                .map_err(|e| io_err("creating", &path, e))?;
            self.own(&path, caller);
            return self.remember_new(&parent_path, &dir, &path);
        }
        if kind != libc::S_IFREG && kind != 0 {
            return Err(fs_err!(
                EPERM,
                "devices cannot be made here: the mount is nodev"
            ));
        }
        let (ino, node, fh) = self.create(parent, name, mode, libc::O_WRONLY, caller)?;
        self.release(fh);
        Ok((ino, node))
    }

    pub fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: Caller,
    ) -> Result<(u64, Arc<Node>), FsError> {
        let (parent_path, dir, path) = self.child_of(parent, name)?;
        let (dir, hid_something) = self.prepare_new(&parent_path, &dir, &path)?;
        let upper = self.upper_dir()?;
        upper
            .mkdir(&path, mode & 0o7777)
            .map_err(|e| io_err("creating folder", &path, e))?;
        if hid_something {
            upper
                .set_opaque(&path)
                .map_err(|e| io_err("marking opaque", &path, e))?;
        }
        self.own(&path, caller);
        self.remember_new(&parent_path, &dir, &path)
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        caller: Caller,
    ) -> Result<(u64, Arc<Node>), FsError> {
        let (parent_path, dir, path) = self.child_of(parent, name)?;
        let (dir, _) = self.prepare_new(&parent_path, &dir, &path)?;
        self.upper_dir()?
            .symlink(target, &path)
            .map_err(|e| io_err("creating symlink", &path, e))?;
        self.own(&path, caller);
        self.remember_new(&parent_path, &dir, &path)
    }

    pub fn link(
        &self,
        ino: u64,
        new_parent: u64,
        new_name: &OsStr,
    ) -> Result<(u64, Arc<Node>), FsError> {
        let (source, node) = self.inode(ino)?;
        if node.entry.kind == EntryKind::Dir {
            return Err(fs_err!(EPERM, "hard links to folders are not allowed"));
        }
        let (parent_path, _, path) = self.child_of(new_parent, new_name)?;
        self.copy_up(&source, false)?;
        // The copy-up may have copied the new parent up too: take its node again.
        let (_, dir) = self.inode(new_parent)?;
        let (dir, _) = self.prepare_new(&parent_path, &dir, &path)?;
        self.upper_dir()?
            .link(&source, &path)
            .map_err(|e| io_err("linking", &path, e))?;
        // The new name is the same file: the same inode number.
        self.changes.changed(&path);
        let node = self.child_node(&parent_path, &dir, &path)?;
        if self.inodes.add_alias(ino, &path, node.clone()) {
            return Ok((ino, node));
        }
        Ok((
            self.inodes
                .remember(Arc::from(path.as_path()), node.clone()),
            node,
        ))
    }

    /// After the upper entry of `path` is gone: hide what the layers below still have.
    fn hide_below(&self, path: &Path) -> Result<(), FsError> {
        self.changes.changed(path);
        if self.node_at(path)?.is_some() {
            self.upper_dir()?
                .whiteout(path)
                .map_err(|e| io_err("whiteout for", path, e))?;
            self.changes.changed(path);
        }
        Ok(())
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let (parent_path, parent_node, path) = self.child_of(parent, name)?;
        self.settle_pending(&path)?;
        let node = self
            .ns
            .lookup(&parent_path, &parent_node, name)?
            .ok_or_else(|| fs_err!(ENOENT, "no {}", path.display()))?;
        if node.entry.kind == EntryKind::Dir {
            return Err(fs_err!(EISDIR, "{} is a folder", path.display()));
        }
        self.ensure_upper_dir(&parent_path, &parent_node)?;
        if node.upper != InUpper::No {
            self.upper_dir()?
                .remove(&path, false)
                .map_err(|e| io_err("removing", &path, e))?;
        }
        self.inodes.detach(&path);
        self.hide_below(&path)
    }

    /// Handles opened for writing on `path` that have not written yet get the file
    /// copied up and opened now: once the name is removed or names another file, each
    /// must keep writing the file it opened, as on a local disk.
    fn settle_pending(&self, path: &Path) -> Result<(), FsError> {
        for fh in self.handles.pending_on(path) {
            self.writable(fh)?;
        }
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let (parent_path, parent_node, path) = self.child_of(parent, name)?;
        let node = self
            .ns
            .lookup(&parent_path, &parent_node, name)?
            .ok_or_else(|| fs_err!(ENOENT, "no {}", path.display()))?;
        if node.entry.kind != EntryKind::Dir {
            return Err(fs_err!(ENOTDIR, "{} is not a folder", path.display()));
        }
        if !self.ns.children(&path, &node)?.is_empty() {
            return Err(fs_err!(ENOTEMPTY, "{} is not empty", path.display()));
        }
        self.ensure_upper_dir(&parent_path, &parent_node)?;
        if node.upper == InUpper::Yes {
            self.upper_dir()?
                .remove(&path, true)
                .map_err(|e| io_err("removing folder", &path, e))?;
        }
        self.hide_below(&path)
    }

    /// `rename(2)` within the mount. A folder that has content in the layers below is
    /// refused with EXDEV, as overlayfs does without redirects: `mv` then copies and
    /// deletes, which works. `RENAME_EXCHANGE` and `RENAME_WHITEOUT` get EINVAL.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<(), FsError> {
        if flags & !RENAME_NOREPLACE != 0 {
            return Err(fs_err!(EINVAL, "rename flags {flags:#x} are not supported"));
        }
        let (from_parent, from_parent_node, from) = self.child_of(parent, name)?;
        let (to_parent, to_parent_node, to) = self.child_of(new_parent, new_name)?;
        let source = self
            .ns
            .lookup(&from_parent, &from_parent_node, name)?
            .ok_or_else(|| fs_err!(ENOENT, "no {}", from.display()))?;
        if from == to {
            return Ok(());
        }
        if to.starts_with(&from) {
            return Err(fs_err!(
                EINVAL,
                "cannot move {} into itself",
                from.display()
            ));
        }
        if flags & RENAME_NOREPLACE == 0 {
            self.settle_pending(&to)?;
        }
        let target = self.ns.lookup(&to_parent, &to_parent_node, new_name)?;
        if let Some(target) = &target {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(fs_err!(EEXIST, "{} exists", to.display()));
            }
            match (
                source.entry.kind == EntryKind::Dir,
                target.entry.kind == EntryKind::Dir,
            ) {
                (true, false) => return Err(fs_err!(ENOTDIR, "{} is not a folder", to.display())),
                (false, true) => return Err(fs_err!(EISDIR, "{} is a folder", to.display())),
                (true, true) if !self.ns.children(&to, target)?.is_empty() => {
                    return Err(fs_err!(ENOTEMPTY, "{} is not empty", to.display()))
                }
                _ => {}
            }
        }
        let is_dir = source.entry.kind == EntryKind::Dir;
        if is_dir && (source.upper != InUpper::Yes || !source.branches.is_empty()) {
            return Err(fs_err!(
                EXDEV,
                "{} has content below the upper layer",
                from.display()
            ));
        }
        self.copy_up(&from, false)?;
        // The copy-up may have copied the target folder up too: take its node again.
        let (_, to_parent_node) = self.inode(new_parent)?;
        self.ensure_upper_dir(&to_parent, &to_parent_node)?;
        let upper = self.upper_dir()?;
        let had_whiteout = upper
            .clear_whiteout(&to)
            .map_err(|e| io_err("clearing whiteout", &to, e))?;
        if let Some(target) = &target {
            if target.upper == InUpper::Yes && target.entry.kind == EntryKind::Dir {
                // Its markers would make the replacing rename fail with ENOTEMPTY.
                upper
                    .remove(&to, true)
                    .map_err(|e| io_err("replacing", &to, e))?;
            }
        }
        upper
            .rename(&from, &to)
            .map_err(|e| io_err("renaming", &from, e))?;
        let hides_below = had_whiteout
            || target
                .as_ref()
                .is_some_and(|t| t.upper != InUpper::Yes || !t.branches.is_empty());
        if is_dir && hides_below {
            upper
                .set_opaque(&to)
                .map_err(|e| io_err("marking opaque", &to, e))?;
        }
        self.inodes.rename(&from, &to);
        self.handles.repath_pending(&from, &to);
        self.changes.changed(&to);
        self.hide_below(&from)
    }

    pub fn setattr(&self, ino: u64, change: AttrChange) -> Result<Arc<Node>, FsError> {
        let (path, node) = self.inode(ino)?;
        self.upper_dir()?;
        if self.node_at(&path)?.is_none() {
            // Unlinked or renamed over while open (`ftruncate`, `fchmod` on its fd).
            let file = self
                .handles
                .upper_of(ino)
                .ok_or_else(|| fs_err!(ENOENT, "{} is gone", path.display()))?;
            set_attrs_of(&file, change).map_err(|e| io_err("setattr", &path, e))?;
            return Ok(self.inode(ino)?.1);
        }
        let metadata = change.mode.is_some()
            || change.uid.is_some()
            || change.gid.is_some()
            || change.atime.is_some()
            || change.mtime.is_some();
        if let Some(size) = change.size {
            if node.entry.kind != EntryKind::File {
                return Err(fs_err!(EISDIR, "{} is not a regular file", path.display()));
            }
            if size == 0 {
                self.copy_up_empty(&path)?;
            } else {
                self.copy_up(&path, false)?;
            }
            self.open_upper(&path, libc::O_WRONLY)?
                .set_len(size)
                .map_err(|e| io_err("truncating", &path, e))?;
        } else if metadata {
            self.copy_up(&path, true)?;
        }
        let upper = self.upper_dir()?;
        if let Some(mode) = change.mode {
            if node.entry.kind != EntryKind::Symlink {
                upper
                    .chmod(&path, mode & 0o7777)
                    .map_err(|e| io_err("chmod", &path, e))?;
            }
        }
        if change.uid.is_some() || change.gid.is_some() {
            upper
                .chown(&path, change.uid, change.gid)
                .map_err(|e| io_err("chown", &path, e))?;
        }
        if change.atime.is_some() || change.mtime.is_some() {
            let atime = change.atime.unwrap_or(SetTime::Keep);
            let mtime = change.mtime.unwrap_or(SetTime::Keep);
            upper
                .set_times(&path, atime, mtime)
                .map_err(|e| io_err("utimens", &path, e))?;
        }
        // Folders are otherwise resolved again only after a change of shape: take the new
        // mode, owner and times now, or the kernel would cache the old ones.
        let fresh = self
            .node_at(&path)?
            .ok_or_else(|| fs_err!(ENOENT, "{} is gone", path.display()))?;
        let fresh = self.stamp(fresh);
        self.inodes.update(ino, fresh.clone());
        Ok(fresh)
    }

    /// Opens `ino` for writing. `O_TRUNC` replaces the file with an empty upper one (no
    /// bytes copied); otherwise the copy-up waits for the first write.
    pub fn open_for_write(&self, ino: u64, flags: i32) -> Result<u64, FsError> {
        self.refuse_superseded(ino)?;
        let (path, node) = self.inode(ino)?;
        self.upper_dir()?;
        if node.entry.kind != EntryKind::File {
            return Err(fs_err!(EISDIR, "{} is not a regular file", path.display()));
        }
        let access = flags & libc::O_ACCMODE;
        let open = if flags & libc::O_TRUNC != 0 {
            self.copy_up_empty(&path)?;
            OpenFile::Open(Readable::Upper(Arc::new(self.open_upper(&path, access)?)))
        } else if node.upper == InUpper::Yes {
            OpenFile::Open(Readable::Upper(Arc::new(self.open_upper(&path, access)?)))
        } else {
            let reader = match access {
                libc::O_RDWR => Some(self.open_content(ino)?.0),
                _ => None,
            };
            OpenFile::PendingWrite {
                path: path.to_path_buf(),
                flags: access,
                reader,
            }
        };
        Ok(self.handles.add(ino, open))
    }

    /// Moves the path of `ino` to a new number, for an open the kernel cannot have on
    /// `ino`: it holds a backing file of `ino` for opens made earlier (a layer's file, or
    /// an upper file since renamed over) and ties every open of the inode to it, while
    /// this open needs other bytes (the file was copied up since) or must not get that
    /// file at all (a write open: the kernel would write into the layer's file). Old opens
    /// keep their bytes, as on overlayfs; `ino` answers ESTALE to opens from now on, so
    /// the kernel looks the path up again (LOOKUP_REVAL) and retries the open on the new
    /// number, a fresh inode. With `copy_up` (a write open) the file is copied up first,
    /// so that whatever opens the new number finds its bytes in the upper layer and no
    /// open of it is tied to the layer's file again.
    pub fn supersede(&self, ino: u64, copy_up: bool) -> Result<(), FsError> {
        let (path, node) = self.inode(ino)?;
        if !path.has_root() && copy_up && node.upper != InUpper::Yes {
            self.copy_up(&path, false)?;
        }
        self.inodes.supersede(ino);
        Ok(())
    }

    /// The upper file that holds the bytes of `ino`, opened for reading and writing, for
    /// the kernel to read and write itself (passthrough); `None` when its bytes are not
    /// (only) there: a layer's file, a metadata-only copy-up, a name that is gone.
    pub fn upper_backing(&self, ino: u64) -> Option<Arc<std::fs::File>> {
        let (path, node) = self.inode(ino).ok()?;
        let in_upper = node.upper == InUpper::Yes
            && node.entry.kind == EntryKind::File
            && matches!(node.entry.content, Content::Disk(_))
            && !path.has_root();
        if !in_upper {
            return None;
        }
        self.open_upper(&path, libc::O_RDWR).ok().map(Arc::new)
    }

    fn open_upper(&self, path: &Path, access: i32) -> Result<std::fs::File, FsError> {
        self.upper_dir()?
            .open_file(path, access)
            .map_err(|e| io_err("opening", path, e))
    }

    /// The upper file behind a write handle, copying the file up on its first write.
    /// No table lock is held during the copy-up or the I/O that follows.
    fn writable(&self, fh: u64) -> Result<Arc<std::fs::File>, FsError> {
        match self.handles.write_target(fh)? {
            WriteTarget::Upper(file) => Ok(file),
            WriteTarget::Pending { path, flags } => {
                self.copy_up(&path, false)?;
                let file = self.open_upper(&path, flags)?;
                self.handles.settle(fh, file)
            }
        }
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        self.writable(fh)?.write_all_at(data, offset)?;
        Ok(data.len() as u32)
    }

    pub fn fsync(&self, fh: u64, data_only: bool) -> Result<(), FsError> {
        match self.handles.upper_file(fh)? {
            Some(file) => if data_only {
                file.sync_data()
            } else {
                file.sync_all()
            }
            .map_err(FsError::from),
            // Nothing written through this handle: nothing to flush.
            None => Ok(()),
        }
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<(), FsError> {
        let file = self.writable(fh)?;
        Ok(crate::sys::at::fallocate(&*file, mode, offset, length)?)
    }

    /// Extended attributes other than the provenance one live on upper entries only.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, FsError> {
        let (path, node) = self.inode(ino)?;
        if node.upper == InUpper::No || is_internal_xattr(name) {
            return Err(fs_err!(ENODATA, "no xattr {name:?}"));
        }
        let handle = self
            .upper_dir()?
            .xattr_handle(&path)
            .map_err(|_| fs_err!(ENODATA, "no xattr {name:?}"))?;
        crate::sys::at::fgetxattr(&handle, name).map_err(|e| io_err("getxattr", &path, e))
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<OsString>, FsError> {
        let (path, node) = self.inode(ino)?;
        if node.upper == InUpper::No {
            return Ok(Vec::new());
        }
        let Ok(handle) = self.upper_dir()?.xattr_handle(&path) else {
            return Ok(Vec::new());
        };
        let names =
            crate::sys::at::flistxattr(&handle).map_err(|e| io_err("listxattr", &path, e))?;
        Ok(names
            .into_iter()
            .filter(|n| !is_internal_xattr(n))
            .collect())
    }

    pub fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<(), FsError> {
        let (path, _) = self.inode(ino)?;
        if is_internal_xattr(name) {
            return Err(fs_err!(EPERM, "{name:?} is managed by rootfs-mount"));
        }
        self.copy_up(&path, true)?;
        let handle = self
            .upper_dir()?
            .xattr_handle(&path)
            .map_err(|e| io_err("setxattr", &path, e))?;
        crate::sys::at::fsetxattr(&handle, name, value, flags)
            .map_err(|e| io_err("setxattr", &path, e))
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<(), FsError> {
        let (path, node) = self.inode(ino)?;
        if is_internal_xattr(name) {
            return Err(fs_err!(EPERM, "{name:?} is managed by rootfs-mount"));
        }
        if node.upper == InUpper::No {
            return Err(fs_err!(ENODATA, "no xattr {name:?}"));
        }
        let handle = self
            .upper_dir()?
            .xattr_handle(&path)
            .map_err(|e| io_err("removexattr", &path, e))?;
        crate::sys::at::fremovexattr(&handle, name).map_err(|e| io_err("removexattr", &path, e))
    }
}

/// Applies `change` through an open file (one whose name is gone).
fn set_attrs_of(file: &std::fs::File, change: AttrChange) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(size) = change.size {
        file.set_len(size)?;
    }
    if let Some(mode) = change.mode {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    }
    if change.uid.is_some() || change.gid.is_some() {
        std::os::unix::fs::fchown(file, change.uid, change.gid)?;
    }
    let when = |t: Option<SetTime>| match t {
        Some(SetTime::At(at)) => Some(at),
        Some(SetTime::Now) => Some(std::time::SystemTime::now()),
        Some(SetTime::Keep) | None => None,
    };
    let mut times = std::fs::FileTimes::new();
    let mut any = false;
    if let Some(at) = when(change.atime) {
        times = times.set_accessed(at);
        any = true;
    }
    if let Some(at) = when(change.mtime) {
        times = times.set_modified(at);
        any = true;
    }
    if any {
        file.set_times(times)?;
    }
    Ok(())
}

/// `user.rootfs.*` names belong to rootfs-mount (provenance, metacopy marker).
fn is_internal_xattr(name: &OsStr) -> bool {
    use std::os::unix::ffi::OsStrExt;
    name.as_bytes().starts_with(b"user.rootfs.")
}
