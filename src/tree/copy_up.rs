//! Copy-up (docs/DESIGN.md §8): the owner of the upper folder's copies of lower entries.
//! Folders are copied walking from the root down, each looked up once from its resolved
//! parent; a file's bytes (or only its metadata) go to a temp file that is committed
//! under its name once complete. Copy-ups of one path run one at a time (two opens never
//! copy a file twice); copy-ups of different paths run in parallel.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use super::changes::FolderChanges;
use super::handles::{copy_all, open_content};
use super::{FsError, InUpper, Namespace, Node};
use crate::fs_err;
use crate::layers::{Content, EntryKind, LayerEntry};
use crate::sys::at::SetTime;
use crate::upper::{is_reserved, UpperDir};

pub(super) fn io_err(what: &str, path: &Path, e: std::io::Error) -> FsError {
    FsError::new(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("{what} {}: {e}", path.display()),
    )
}

/// Paths being copied up; a second copy-up of one waits for the first.
#[derive(Debug, Default)]
struct PathLocks {
    busy: Mutex<HashSet<PathBuf>>,
    freed: Condvar,
}

struct PathGuard<'a> {
    locks: &'a PathLocks,
    path: PathBuf,
}

impl PathLocks {
    fn lock(&self, path: &Path) -> PathGuard<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        while busy.contains(path) {
            busy = self.freed.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        busy.insert(path.to_path_buf());
        PathGuard {
            locks: self,
            path: path.to_path_buf(),
        }
    }
}

impl Drop for PathGuard<'_> {
    fn drop(&mut self) {
        let mut busy = self.locks.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.remove(&self.path);
        drop(busy);
        self.locks.freed.notify_all();
    }
}

#[derive(Debug)]
pub(super) struct CopyUp {
    upper: Arc<UpperDir>,
    busy: PathLocks,
}

impl CopyUp {
    pub(super) fn new(upper: Arc<UpperDir>) -> Self {
        CopyUp {
            upper,
            busy: PathLocks::default(),
        }
    }

    pub(super) fn upper(&self) -> &Arc<UpperDir> {
        &self.upper
    }

    /// Makes the folder `path` and every folder above it exist in the upper layer, with
    /// the metadata they show (folders copy up cheaply: no content); returns the node of
    /// `path` to look its children up from. `known`: the node of `path`, when the caller
    /// has it (nothing to walk when it is in the upper layer already).
    pub(super) fn ensure_dir(
        &self,
        ns: &Namespace,
        changes: &FolderChanges,
        path: &Path,
        known: Option<&Node>,
    ) -> Result<Node, FsError> {
        refuse_whiteout_names(path)?;
        if let Some(node) = known.filter(|n| n.upper == InUpper::Yes) {
            if node.entry.kind != EntryKind::Dir {
                return Err(fs_err!(ENOTDIR, "{} is not a folder", path.display()));
            }
            return Ok(node.clone());
        }
        let mut at = PathBuf::new();
        let mut node = ns.root()?;
        for part in path.components() {
            let name = part.as_os_str();
            let child = ns
                .lookup(&at, &node, name)?
                .ok_or_else(|| fs_err!(ENOENT, "{} is gone", at.join(name).display()))?;
            at.push(name);
            if child.entry.kind != EntryKind::Dir {
                return Err(fs_err!(ENOTDIR, "{} is not a folder", at.display()));
            }
            node = if child.upper == InUpper::Yes {
                child
            } else {
                self.make_dir(&at, &child.entry)?;
                changes.changed(&at);
                // What resolving it again would give for looking up its children: the
                // same folder, now taking new entries in the upper layer.
                Node {
                    upper: InUpper::Yes,
                    opaque: false,
                    ..child
                }
            };
        }
        Ok(node)
    }

    fn make_dir(&self, path: &Path, e: &LayerEntry) -> Result<(), FsError> {
        match self.upper.mkdir(path, e.perm as u32) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {}
            Err(err) => return Err(io_err("copying up folder", path, err)),
        }
        self.owner_and_times(path, e.uid, e.gid, e.mtime);
        Ok(())
    }

    /// Owner and times of a copied-up entry follow what was shown; failures (a daemon
    /// that is not root cannot chown) leave the daemon's own.
    fn owner_and_times(&self, path: &Path, uid: u32, gid: u32, mtime: SystemTime) {
        let _ = self.upper.chown(path, Some(uid), Some(gid));
        let _ = self
            .upper
            .set_times(path, SetTime::At(mtime), SetTime::At(mtime));
    }

    /// Copies `path` up once: its bytes too unless `metadata_only` (regular files only;
    /// folders and symlinks have no bytes to spare). Returns its node as resolved after.
    pub(super) fn copy_up(
        &self,
        ns: &Namespace,
        changes: &FolderChanges,
        path: &Path,
        metadata_only: bool,
    ) -> Result<Node, FsError> {
        refuse_whiteout_names(path)?;
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            // The root of the upper layer always exists.
            return Ok(ns.root()?);
        };
        let busy = self.busy.lock(path);
        let parent_node = self.ensure_dir(ns, changes, parent, None)?;
        let node = ns
            .lookup(parent, &parent_node, name)?
            .ok_or_else(|| fs_err!(ENOENT, "{} is gone", path.display()))?;
        let done = match node.upper {
            InUpper::Yes => true,
            InUpper::Metadata => metadata_only,
            InUpper::No => false,
        };
        if done {
            return Ok(node);
        }
        let e = &node.entry;
        match (&e.content, e.kind) {
            (_, EntryKind::Dir) => self.make_dir(path, e)?,
            (Content::Link(target), _) => {
                self.upper
                    .symlink(target, path)
                    .map_err(|err| io_err("copying up symlink", path, err))?;
                self.owner_and_times(path, e.uid, e.gid, e.mtime);
            }
            _ => {
                let copied = if metadata_only {
                    self.commit_file(parent, name, e, |temp| {
                        self.upper.set_metacopy(temp).map_err(FsError::from)
                    })
                } else {
                    let content = open_content(path, &node)?;
                    self.commit_file(parent, name, e, |temp| copy_all(&content, temp))
                };
                if let Err(err) = copied {
                    // Without user xattrs on the upper file system, copy the bytes instead.
                    if metadata_only && err.errno == libc::ENOTSUP {
                        drop(busy);
                        return self.copy_up(ns, changes, path, false);
                    }
                    return Err(FsError {
                        message: format!("copy-up of {}: {}", path.display(), err.message),
                        ..err
                    });
                }
            }
        }
        changes.changed(path);
        ns.lookup(parent, &parent_node, name)?
            .ok_or_else(|| fs_err!(EIO, "{} vanished during copy-up", path.display()))
    }

    /// The copy-up of a file about to be truncated to nothing: its metadata only, as an
    /// empty upper file (no bytes copied).
    pub(super) fn copy_up_empty(
        &self,
        ns: &Namespace,
        changes: &FolderChanges,
        path: &Path,
    ) -> Result<(), FsError> {
        let node = self.copy_up(ns, changes, path, true)?;
        if node.upper != InUpper::Metadata {
            return Ok(());
        }
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(fs_err!(EINVAL, "cannot truncate the root"));
        };
        let _busy = self.busy.lock(path);
        self.commit_file(parent, name, &node.entry, |_| Ok(()))
            .map_err(|e| FsError {
                message: format!("truncating {}: {}", path.display(), e.message),
                ..e
            })?;
        changes.changed(path);
        Ok(())
    }

    /// Temp file, then commit: `fill` writes a temp file in the work folder, which is
    /// synced, given the entry's mode, owner and times, and renamed over `parent/name`;
    /// on any error it is removed. A crash never leaves a short file under the name.
    fn commit_file(
        &self,
        parent: &Path,
        name: &OsStr,
        e: &LayerEntry,
        fill: impl FnOnce(&std::fs::File) -> Result<(), FsError>,
    ) -> Result<(), FsError> {
        let (temp, temp_name) = self.upper.temp_file(e.perm as u32)?;
        let temp_path = self.upper.temp_path(&temp_name);
        let committed = fill(&temp).and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            temp.set_permissions(std::fs::Permissions::from_mode(e.perm as u32))?;
            temp.sync_data()?;
            drop(temp);
            self.owner_and_times(&temp_path, e.uid, e.gid, e.mtime);
            Ok(self.upper.commit(parent, &temp_name, name)?)
        });
        if committed.is_err() {
            let _ = self.upper.remove(&temp_path, false);
        }
        committed
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Copy-ups of different paths do not wait for each other; of the same path, they do.
    #[test]
    fn path_locks_serialize_one_path_only() {
        let locks = Arc::new(PathLocks::default());
        let held = locks.lock(Path::new("a/file"));
        let (tx, rx) = mpsc::channel();
        let other = {
            let (locks, tx) = (locks.clone(), tx.clone());
            std::thread::spawn(move || {
                let _g = locks.lock(Path::new("b/file"));
                tx.send("b").unwrap();
            })
        };
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("b"));
        other.join().unwrap();
        let same = {
            let locks = locks.clone();
            std::thread::spawn(move || {
                let _g = locks.lock(Path::new("a/file"));
                tx.send("a").unwrap();
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "a second copy-up of one path waits"
        );
        drop(held);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("a"));
        same.join().unwrap();
    }
}
