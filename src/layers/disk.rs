//! A folder (or a single file) on disk, resolved without ever leaving its root.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Child, Content, DiskFile, EntryKind, Layer, LayerEntry, SharedRel, Source};
use crate::sys;

/// The opened root of a [`DiskTree`].
#[derive(Debug)]
pub struct Root {
    path: PathBuf,
    /// `O_PATH` fd of the root; `None` when the root does not exist (an empty layer).
    fd: Option<OwnedFd>,
}

impl Root {
    pub fn absolute(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        }
    }

    pub fn open_file(&self, rel: &Path) -> io::Result<File> {
        let fd = self
            .fd
            .as_ref()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        if rel.as_os_str().is_empty() {
            if sys::fstat(fd)?.st_nlink == 0 {
                // A single-file layer whose file was deleted or renamed over: say so
                // (the file at that path may well exist: it is another one).
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "deleted or replaced under the mount; remount to serve the file now there",
                ));
            }
            return sys::reopen_readonly(fd);
        }
        sys::reopen_readonly(&sys::open_beneath(fd, rel, libc::O_PATH)?)
    }
}

/// A layer backed by a path on disk: a folder, or a single file mounted at a file name.
#[derive(Debug)]
pub struct DiskTree {
    root: Arc<Root>,
    /// Top-level names ending with this suffix are not shown (release tarballs in
    /// `oss/<arch>/bin/`, which are shown through their members instead).
    hide_suffix: Option<&'static str>,
    mutable: bool,
    /// Whether FIFOs and sockets are shown (the upper layer, where they are made
    /// through the mount); in every other layer they are left out.
    special: bool,
}

impl DiskTree {
    /// Opens `path` as a layer root. A missing root gives an empty layer; any other
    /// error (permission, I/O) is returned.
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = match sys::open_path(path) {
            Ok(fd) => Some(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(e),
        };
        Ok(DiskTree {
            root: Arc::new(Root {
                path: path.to_path_buf(),
                fd,
            }),
            hide_suffix: None,
            mutable: false,
            special: false,
        })
    }

    /// Opens `base/rel` as a layer root, where `base` is a folder the user named (the
    /// cache, a contexts folder) and `rel` a path of its documented layout. Symlinks on
    /// the way are followed only while they stay inside `base`: one that leads out is
    /// refused, so the cache cannot redirect the mount to other files of the host.
    /// A missing root gives an empty layer.
    pub fn open_in(base: &Path, rel: &Path) -> io::Result<Self> {
        let path = base.join(rel);
        let fd = match sys::open_path(base).and_then(|b| sys::open_path_beneath(&b, rel)) {
            Ok(fd) => Some(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV) | Some(libc::ELOOP)) => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "a symlink on the way leads out of {}; the mount never follows those",
                        base.display()
                    ),
                ))
            }
            Err(e) => return Err(e),
        };
        Ok(DiskTree {
            root: Arc::new(Root { path, fd }),
            hide_suffix: None,
            mutable: false,
            special: false,
        })
    }

    pub fn hiding_suffix(mut self, suffix: &'static str) -> Self {
        self.hide_suffix = Some(suffix);
        self
    }

    /// Shows FIFOs and sockets (the upper layer).
    pub fn showing_special(mut self) -> Self {
        self.special = true;
        self
    }

    /// Marks the tree as one the user edits while mounted (`--contexts DIR`).
    pub fn mutable(mut self) -> Self {
        self.mutable = true;
        self
    }

    pub fn exists(&self) -> bool {
        self.root.fd.is_some()
    }

    /// Whether the root is something a layer can serve: a regular file or a folder (not
    /// a fifo, socket or device, which are never shown).
    pub fn is_usable(&self) -> bool {
        let Some(fd) = &self.root.fd else {
            return false;
        };
        sys::fstat(fd)
            .is_ok_and(|st| matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR))
    }

    fn hidden(&self, rel: &Path) -> bool {
        let Some(suffix) = self.hide_suffix else {
            return false;
        };
        let mut parts = rel.components();
        match (parts.next(), parts.next()) {
            (Some(first), None) => first
                .as_os_str()
                .as_encoded_bytes()
                .ends_with(suffix.as_bytes()),
            _ => false,
        }
    }

    fn entry_of(&self, rel: &SharedRel, fd: &OwnedFd) -> io::Result<LayerEntry> {
        self.entry_from_stat(rel, sys::fstat(fd)?, || sys::readlink_fd(fd))
    }

    /// The entry at `rel` whose `lstat` is `st`; `read_link` reads a symlink's target.
    fn entry_from_stat(
        &self,
        rel: &SharedRel,
        st: libc::stat,
        read_link: impl FnOnce() -> io::Result<std::ffi::OsString>,
    ) -> io::Result<LayerEntry> {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => EntryKind::Dir,
            libc::S_IFLNK => EntryKind::Symlink,
            // Devices, fifos and sockets are never part of a build tree: refuse them.
            libc::S_IFREG => EntryKind::File,
            libc::S_IFIFO if self.special => EntryKind::Fifo,
            libc::S_IFSOCK if self.special => EntryKind::Socket,
            _ => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
        };
        let rel = rel.clone();
        let content = match kind {
            EntryKind::Fifo | EntryKind::Socket => Content::Special {
                link_id: (st.st_nlink > 1).then_some((st.st_dev, st.st_ino)),
            },
            EntryKind::Dir => Content::Dir,
            EntryKind::Symlink => Content::Link(PathBuf::from(read_link()?)),
            EntryKind::File => Content::Disk(DiskFile {
                tree: self.root.clone(),
                rel: rel.clone(),
                // Hard links are one inode in the tree (`tree::inodes` decides where:
                // the upper layer's always, the layers below' on a read-only mount); a
                // layer edited while mounted is left out (an edit may split a link).
                link_id: (st.st_nlink > 1 && !self.mutable).then_some((st.st_dev, st.st_ino)),
            }),
        };
        let time = sys::system_time;
        Ok(LayerEntry {
            kind,
            perm: (st.st_mode & 0o7777) as u16,
            size: st.st_size.max(0) as u64,
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: Some(time(st.st_ctime, st.st_ctime_nsec)),
            // A folder's count is its own layer's only: the tree shows it for folders
            // of the upper layer with nothing below (see `fuse::attr`).
            nlink: (kind != EntryKind::Symlink).then_some(st.st_nlink as u32),
            uid: st.st_uid,
            gid: st.st_gid,
            content,
            source: Source::Disk {
                tree: self.root.clone(),
                rel,
            },
        })
    }
}

/// Errors that mean "this name is not in the layer" rather than a fault.
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP) | Some(libc::EXDEV)
    )
}

impl Layer for DiskTree {
    fn entry(&self, rel: &Path) -> io::Result<Option<LayerEntry>> {
        self.entry_shared(&SharedRel::own(rel))
    }

    fn entry_shared(&self, shared: &SharedRel) -> io::Result<Option<LayerEntry>> {
        let rel = shared.get();
        let Some(root) = self.root.fd.as_ref() else {
            return Ok(None);
        };
        if rel.as_os_str().is_empty() {
            // A single-file layer (a kube binary) keeps its file open: once that file is
            // deleted or replaced in the cache, it is gone from the mount rather than
            // served from the unlinked copy, as a file in a folder layer would be.
            let st = sys::fstat(root)?;
            if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink == 0 {
                return Ok(None);
            }
            return self.entry_of(shared, root).map(Some);
        }
        if self.hidden(rel) {
            return Ok(None);
        }
        match sys::open_beneath(root, rel, libc::O_PATH) {
            Ok(fd) => match self.entry_of(shared, &fd) {
                Ok(e) => Ok(Some(e)),
                Err(e) if is_absent(&e) => Ok(None),
                Err(e) => Err(e),
            },
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn children(&self, rel: &Path) -> io::Result<Vec<Child>> {
        let Some(root) = self.root.fd.as_ref() else {
            return Ok(Vec::new());
        };
        let dir = sys::open_beneath(root, rel, libc::O_PATH | libc::O_DIRECTORY)?;
        let top = rel.as_os_str().is_empty();
        let mut out = Vec::new();
        for (name, dtype) in sys::read_dir_fd(&dir)? {
            let kind = match dtype {
                libc::DT_DIR => EntryKind::Dir,
                libc::DT_LNK => EntryKind::Symlink,
                libc::DT_REG => EntryKind::File,
                libc::DT_FIFO if self.special => EntryKind::Fifo,
                libc::DT_SOCK if self.special => EntryKind::Socket,
                libc::DT_UNKNOWN => match self.entry(&rel.join(&name))? {
                    Some(e) => e.kind,
                    None => continue,
                },
                _ => continue,
            };
            if top && self.hidden(Path::new(OsStr::new(&name))) {
                continue;
            }
            out.push(Child { name, kind });
        }
        Ok(out)
    }

    fn child_entries(
        &self,
        folder: &SharedRel,
    ) -> io::Result<Vec<(std::ffi::OsString, LayerEntry)>> {
        let rel = folder.get();
        let Some(root) = self.root.fd.as_ref() else {
            return Ok(Vec::new());
        };
        let dir = sys::open_beneath(root, rel, libc::O_RDONLY | libc::O_DIRECTORY)?;
        let top = rel.as_os_str().is_empty();
        let mut out = Vec::new();
        for (name, _) in sys::read_open_dir(&dir)? {
            if top && self.hidden(Path::new(&name)) {
                continue;
            }
            let entry = sys::at::lstat_at(&dir, &name).and_then(|st| {
                let child = folder.child(&name);
                self.entry_from_stat(&child, st, || sys::at::readlink_at(&dir, &name))
            });
            match entry {
                Ok(entry) => out.push((name, entry)),
                // Gone since listed, or a kind never shown (a device, a FIFO below).
                Err(e) if is_absent(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn is_mutable(&self) -> bool {
        self.mutable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::scratch;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolves_files_dirs_and_symlinks_without_following_them() {
        let dir = scratch("kinds");
        std::fs::create_dir(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/a.conf"), b"abc").unwrap();
        symlink("/etc/passwd", dir.join("escape")).unwrap();
        symlink("/etc", dir.join("etcdir")).unwrap();
        let tree = DiskTree::open(&dir).unwrap();
        let e = tree.entry(Path::new("etc/a.conf")).unwrap().unwrap();
        assert_eq!(e.kind, EntryKind::File);
        assert_eq!(e.size, 3);
        let l = tree.entry(Path::new("escape")).unwrap().unwrap();
        assert_eq!(l.kind, EntryKind::Symlink);
        assert!(matches!(l.content, Content::Link(ref t) if t == Path::new("/etc/passwd")));
        // A path through a symlinked folder is not resolved: it would leave the root.
        assert!(tree.entry(Path::new("etcdir/passwd")).unwrap().is_none());
        let mut names: Vec<_> = tree
            .children(Path::new(""))
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        names.sort();
        assert_eq!(names, ["escape", "etc", "etcdir"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_root_is_an_empty_layer_and_suffix_is_hidden() {
        let dir = scratch("hide");
        assert!(DiskTree::open(&dir.join("nope"))
            .unwrap()
            .entry(Path::new(""))
            .unwrap()
            .is_none());
        std::fs::write(dir.join("crictl.tar.gz"), b"x").unwrap();
        std::fs::write(dir.join("conntrack"), b"y").unwrap();
        let tree = DiskTree::open(&dir).unwrap().hiding_suffix(".tar.gz");
        let names: Vec<_> = tree
            .children(Path::new(""))
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["conntrack"]);
        assert!(tree.entry(Path::new("crictl.tar.gz")).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
