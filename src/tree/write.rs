//! Changes through the mount (SPEC §8), kept in the upper layer: copy-up of content on
//! the first write, metadata-only copy-up for chmod/chown/utimens, whiteouts and opaque
//! folders for deletes and renames of entries below. Layers and the cache are never
//! written.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::merged::OpenFile;
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

fn io_err(what: &str, path: &Path, e: std::io::Error) -> FsError {
    FsError::new(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("{what} {}: {e}", path.display()),
    )
}

impl MergedTree {
    fn upper_dir(&self) -> Result<&Arc<UpperDir>, FsError> {
        self.ns
            .upper()
            .ok_or_else(|| fs_err!(EROFS, "the mount is read-only"))
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

    /// Makes `path` and every folder above it exist in the upper layer, with the
    /// metadata they show (folders copy up cheaply: no content).
    fn ensure_upper_dir(&self, path: &Path) -> Result<(), FsError> {
        refuse_whiteout_names(path)?;
        let upper = self.upper_dir()?;
        let mut at = PathBuf::new();
        let mut node = self.ns.root()?;
        for part in path.components() {
            let name = part.as_os_str();
            let child = self
                .ns
                .lookup(&at, &node, name)?
                .ok_or_else(|| fs_err!(ENOENT, "{} is gone", at.join(name).display()))?;
            at.push(name);
            if child.entry.kind != EntryKind::Dir {
                return Err(fs_err!(ENOTDIR, "{} is not a folder", at.display()));
            }
            node = if child.upper == InUpper::Yes {
                child
            } else {
                let e = &child.entry;
                match upper.mkdir(&at, e.perm as u32) {
                    Ok(()) => {}
                    Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(err) => return Err(io_err("copying up folder", &at, err)),
                }
                self.copy_owner_and_times(&at, e.uid, e.gid, e.mtime);
                self.changed();
                self.ns
                    .resolve_path(&at)?
                    .ok_or_else(|| fs_err!(EIO, "{} vanished during copy-up", at.display()))?
            };
        }
        Ok(())
    }

    /// Owner and times of a copied-up entry follow what was shown; failures (a daemon
    /// that is not root cannot chown) leave the daemon's own.
    fn copy_owner_and_times(&self, path: &Path, uid: u32, gid: u32, mtime: std::time::SystemTime) {
        if let Ok(upper) = self.upper_dir() {
            let _ = upper.chown(path, Some(uid), Some(gid));
            let _ = upper.set_times(path, SetTime::At(mtime), SetTime::At(mtime));
        }
    }

    /// Copies `path` up once: its bytes too unless `metadata_only` (regular files only;
    /// folders and symlinks have no bytes to spare).
    fn copy_up(&self, path: &Path, metadata_only: bool) -> Result<Arc<Node>, FsError> {
        refuse_whiteout_names(path)?;
        let _one_at_a_time = self.copy_up_lock.lock().unwrap_or_else(|p| p.into_inner());
        let node = self
            .node_at(path)?
            .ok_or_else(|| fs_err!(ENOENT, "{} is gone", path.display()))?;
        let done = match node.upper {
            InUpper::Yes => true,
            InUpper::Metadata => metadata_only,
            InUpper::No => false,
        };
        if done {
            return Ok(self.stamp(node));
        }
        let upper = self.upper_dir()?;
        let parent = path.parent().unwrap_or(Path::new(""));
        let name = path
            .file_name()
            .ok_or_else(|| fs_err!(EINVAL, "cannot copy up the root"))?;
        self.ensure_upper_dir(parent)?;
        let e = &node.entry;
        match (&e.content, e.kind) {
            (_, EntryKind::Dir) => self.ensure_upper_dir(path)?,
            (Content::Link(target), _) => {
                upper
                    .symlink(target, path)
                    .map_err(|err| io_err("copying up symlink", path, err))?;
                self.copy_owner_and_times(path, e.uid, e.gid, e.mtime);
            }
            _ => {
                let (mut temp, temp_name) = upper
                    .temp_file(e.perm as u32)
                    .map_err(|err| io_err("copy-up of", path, err))?;
                let temp_path = upper.temp_path(&temp_name);
                let result = if metadata_only {
                    upper.set_metacopy(&temp)
                } else {
                    copy_bytes(&e.content, &mut temp)
                };
                let committed = result.and_then(|()| {
                    temp.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
                        e.perm as u32,
                    ))?;
                    // On disk before the rename, so a crash never leaves a short file
                    // under the file's name.
                    temp.sync_data()?;
                    drop(temp);
                    self.copy_owner_and_times(&temp_path, e.uid, e.gid, e.mtime);
                    upper.commit(parent, &temp_name, name)
                });
                if let Err(err) = committed {
                    let _ = upper.remove(&temp_path, false);
                    // Without user xattrs on the upper file system, copy the bytes instead.
                    if metadata_only && err.raw_os_error() == Some(libc::ENOTSUP) {
                        drop(_one_at_a_time);
                        return self.copy_up(path, false);
                    }
                    return Err(io_err("copy-up of", path, err));
                }
            }
        }
        self.changed();
        let fresh = self
            .node_at(path)?
            .ok_or_else(|| fs_err!(EIO, "{} vanished during copy-up", path.display()))?;
        Ok(self.stamp(fresh))
    }

    /// Registers a new entry at `path` with the kernel (one lookup).
    fn remember_new(&self, path: &Path) -> Result<(u64, Arc<Node>), FsError> {
        self.changed();
        let node = self
            .node_at(path)?
            .ok_or_else(|| fs_err!(EIO, "{} vanished after creation", path.display()))?;
        let node = self.stamp(node);
        Ok((self.inodes.remember(path, node.clone()), node))
    }

    /// Prepares the parent folder for a new entry at `path`; true when a whiteout was
    /// removed (something below had this name, so a new folder must be opaque).
    fn prepare_new(&self, parent: &Path, path: &Path) -> Result<bool, FsError> {
        if self.node_at(path)?.is_some() {
            return Err(fs_err!(EEXIST, "{} exists", path.display()));
        }
        self.ensure_upper_dir(parent)?;
        self.upper_dir()?
            .clear_whiteout(path)
            .map_err(|e| io_err("clearing whiteout", path, e))
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
        let (parent_path, _, path) = self.child_of(parent, name)?;
        self.prepare_new(&parent_path, &path)?;
        let access = flags & libc::O_ACCMODE;
        let file = self
            .upper_dir()?
            .create(&path, access | (flags & libc::O_TRUNC), mode & 0o7777)
            .map_err(|e| io_err("creating", &path, e))?;
        self.own(&path, caller);
        let (ino, node) = self.remember_new(&path)?;
        let fh = self.add_handle(ino, OpenFile::Upper(file));
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
            let (parent_path, _, path) = self.child_of(parent, name)?;
            self.prepare_new(&parent_path, &path)?;
            self.upper_dir()?
                .mknod(&path, kind | (mode & 0o7777))
                .map_err(|e| io_err("creating", &path, e))?;
            self.own(&path, caller);
            return self.remember_new(&path);
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
        let (parent_path, _, path) = self.child_of(parent, name)?;
        let hid_something = self.prepare_new(&parent_path, &path)?;
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
        self.remember_new(&path)
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        caller: Caller,
    ) -> Result<(u64, Arc<Node>), FsError> {
        let (parent_path, _, path) = self.child_of(parent, name)?;
        self.prepare_new(&parent_path, &path)?;
        self.upper_dir()?
            .symlink(target, &path)
            .map_err(|e| io_err("creating symlink", &path, e))?;
        self.own(&path, caller);
        self.remember_new(&path)
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
        self.prepare_new(&parent_path, &path)?;
        self.upper_dir()?
            .link(&source, &path)
            .map_err(|e| io_err("linking", &path, e))?;
        // The new name is the same file: the same inode number.
        self.changed();
        let node = self
            .node_at(&path)?
            .ok_or_else(|| fs_err!(EIO, "{} vanished after linking", path.display()))?;
        let node = self.stamp(node);
        if self.inodes.add_alias(ino, &path, node.clone()) {
            return Ok((ino, node));
        }
        self.remember_new(&path)
    }

    /// After the upper entry of `path` is gone: hide what the layers below still have.
    fn hide_below(&self, path: &Path) -> Result<(), FsError> {
        self.changed();
        if self.node_at(path)?.is_some() {
            self.upper_dir()?
                .whiteout(path)
                .map_err(|e| io_err("whiteout for", path, e))?;
            self.changed();
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
        self.ensure_upper_dir(&parent_path)?;
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
        let pending: Vec<u64> = self
            .files
            .iter()
            .filter(|h| matches!(h.value(), OpenFile::PendingWrite { path: p, .. } if p == path))
            .map(|h| *h.key())
            .collect();
        for fh in pending {
            self.writable(fh, |_| Ok(()))?;
        }
        Ok(())
    }

    /// Handles waiting for their first write on `from` (or below it) follow a rename.
    fn repath_pending(&self, from: &Path, to: &Path) {
        for mut h in self.files.iter_mut() {
            if let OpenFile::PendingWrite { path, .. } = h.value_mut() {
                if let Ok(rest) = path.strip_prefix(from) {
                    *path = if rest.as_os_str().is_empty() {
                        to.to_path_buf()
                    } else {
                        to.join(rest)
                    };
                }
            }
        }
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
        self.ensure_upper_dir(&parent_path)?;
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
        let (to_parent, _, to) = self.child_of(new_parent, new_name)?;
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
        let target = self.node_at(&to)?;
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
        self.ensure_upper_dir(&to_parent)?;
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
        self.repath_pending(&from, &to);
        self.hide_below(&from)
    }

    pub fn setattr(&self, ino: u64, change: AttrChange) -> Result<Arc<Node>, FsError> {
        let (path, node) = self.inode(ino)?;
        self.upper_dir()?;
        if self.node_at(&path)?.is_none() {
            // Unlinked or renamed over while open (`ftruncate`, `fchmod` on its fd).
            let file = self
                .open_upper_of(ino)
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
        let (path, node) = self.inode(ino)?;
        self.upper_dir()?;
        if node.entry.kind != EntryKind::File {
            return Err(fs_err!(EISDIR, "{} is not a regular file", path.display()));
        }
        let access = flags & libc::O_ACCMODE;
        let open = if flags & libc::O_TRUNC != 0 {
            self.copy_up_empty(&path)?;
            OpenFile::Upper(self.open_upper(&path, access)?)
        } else if node.upper == InUpper::Yes {
            OpenFile::Upper(self.open_upper(&path, access)?)
        } else {
            let reader = match access {
                libc::O_RDWR => Some(Box::new(self.open_content(ino)?.0)),
                _ => None,
            };
            OpenFile::PendingWrite {
                path: path.to_path_buf(),
                flags: access,
                reader,
            }
        };
        Ok(self.add_handle(ino, open))
    }

    fn open_upper(&self, path: &Path, access: i32) -> Result<std::fs::File, FsError> {
        self.upper_dir()?
            .open_file(path, access)
            .map_err(|e| io_err("opening", path, e))
    }

    /// The copy-up of a file about to be truncated to nothing: its metadata only, as an
    /// empty upper file.
    fn copy_up_empty(&self, path: &Path) -> Result<(), FsError> {
        let node = self.copy_up(path, true)?;
        if node.upper == InUpper::Metadata {
            let upper = self.upper_dir()?;
            let _one_at_a_time = self.copy_up_lock.lock().unwrap_or_else(|p| p.into_inner());
            let parent = path.parent().unwrap_or(Path::new(""));
            let name = path
                .file_name()
                .ok_or_else(|| fs_err!(EINVAL, "cannot truncate the root"))?;
            let e = &node.entry;
            let (temp, temp_name) = upper
                .temp_file(e.perm as u32)
                .map_err(|err| io_err("truncating", path, err))?;
            drop(temp);
            let temp_path = upper.temp_path(&temp_name);
            self.copy_owner_and_times(&temp_path, e.uid, e.gid, e.mtime);
            upper
                .commit(parent, &temp_name, name)
                .map_err(|err| io_err("truncating", path, err))?;
            self.changed();
        }
        Ok(())
    }

    /// The upper file behind a write handle, copying the file up on its first write.
    fn writable<T>(
        &self,
        fh: u64,
        f: impl FnOnce(&std::fs::File) -> std::io::Result<T>,
    ) -> Result<T, FsError> {
        let mut handle = self
            .files
            .get_mut(&fh)
            .ok_or_else(|| fs_err!(EBADF, "no open file {fh}"))?;
        if let OpenFile::PendingWrite { path, flags, .. } = &*handle {
            let (path, flags) = (path.clone(), *flags);
            self.copy_up(&path, false)?;
            *handle = OpenFile::Upper(self.open_upper(&path, flags)?);
        }
        match &*handle {
            OpenFile::Upper(file) => f(file).map_err(FsError::from),
            _ => Err(fs_err!(EBADF, "file {fh} is not open for writing")),
        }
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        self.writable(fh, |file| file.write_all_at(data, offset))?;
        Ok(data.len() as u32)
    }

    pub fn fsync(&self, fh: u64, data_only: bool) -> Result<(), FsError> {
        let handle = self
            .files
            .get(&fh)
            .ok_or_else(|| fs_err!(EBADF, "no open file {fh}"))?;
        match &*handle {
            OpenFile::Upper(file) => if data_only {
                file.sync_data()
            } else {
                file.sync_all()
            }
            .map_err(FsError::from),
            // Nothing written through this handle: nothing to flush.
            _ => Ok(()),
        }
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<(), FsError> {
        self.writable(fh, |file| {
            crate::sys::at::fallocate(file, mode, offset, length)
        })
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

/// A lower entry named in the upper layer's whiteout format (`.wh.X`, `.wh..wh..opq`),
/// or inside a folder so named, is never copied up: in the upper layer it would hide `X`
/// or make its folder opaque. It stays readable; changing it gets EPERM, the errno of
/// creating such a name.
fn refuse_whiteout_names(path: &Path) -> Result<(), FsError> {
    match path.iter().find(|part| is_reserved(part)) {
        Some(part) => Err(fs_err!(
            EPERM,
            "{} cannot be changed: {part:?} is in the upper layer's whiteout format",
            path.display()
        )),
        None => Ok(()),
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

fn copy_bytes(content: &Content, out: &mut std::fs::File) -> std::io::Result<()> {
    match content {
        Content::Disk(f) => {
            let mut src = f.open()?;
            std::io::copy(&mut src, out)?;
            Ok(())
        }
        Content::Bytes(b) => out.write_all(b),
        // An archive member is inflated a MiB at a time, never held whole.
        Content::Archive(slice) => {
            let mut at = 0;
            while at < slice.len {
                let chunk = slice.read(at, 1 << 20)?;
                out.write_all(&chunk)?;
                at += chunk.len() as u64;
            }
            Ok(())
        }
        Content::Faulty(why) => Err(crate::archive::reported(why.to_string())),
        Content::Dir | Content::Link(_) => Err(std::io::Error::from_raw_os_error(libc::EISDIR)),
        Content::Special { .. } => Err(std::io::Error::from_raw_os_error(libc::ENXIO)),
    }
}
