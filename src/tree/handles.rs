//! The open-file table: what each handle reads from or writes to, and the one read of
//! opened content. Its own state only (handles by number, each with its inode); no lock
//! is held during I/O: a read or write clones the file out of the table first.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;

use super::{FsError, InUpper, Node};
use crate::archive::{reported, ArchiveSlice};
use crate::fs_err;
use crate::layers::{Content, LayerEntry};

/// Content opened for reading. Read-only contents of the layers keep the bytes they
/// opened; an upper file sees every write.
#[derive(Clone, Debug)]
pub(super) enum Readable {
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
    Upper(Arc<File>),
}

/// A layer's file not opened on disk yet (see [`Readable::Lower`]).
#[derive(Debug)]
pub(super) struct LowerFile {
    node: Arc<Node>,
    file: OnceLock<Arc<File>>,
}

impl LowerFile {
    /// The file of `node` to be opened by its first read, where that is allowed: a file
    /// on disk of an immutable layer, nothing of it in the upper layer.
    pub(super) fn of(node: &Arc<Node>) -> Option<Readable> {
        let lazy = matches!(node.entry.content, Content::Disk(_))
            && node.upper == InUpper::No
            && !node.mutable;
        lazy.then(|| {
            Readable::Lower(Arc::new(LowerFile {
                node: node.clone(),
                file: OnceLock::new(),
            }))
        })
    }

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

/// An open file.
#[derive(Debug)]
pub(super) enum OpenFile {
    Open(Readable),
    /// Opened for writing but not written yet: the copy-up waits for the first write,
    /// so `touch` or an open that only reads copies nothing.
    PendingWrite {
        path: PathBuf,
        flags: i32,
        /// The content as it is below, for reads through an `O_RDWR` handle.
        reader: Option<Readable>,
    },
}

#[derive(Debug)]
struct Handle {
    /// A file whose name is gone (unlinked, renamed over) is still described and
    /// changed through its handles, as on a local disk.
    ino: u64,
    open: OpenFile,
}

/// What a write handle writes to now.
pub(super) enum WriteTarget {
    Upper(Arc<File>),
    /// Not copied up yet: the copy-up of `path`, then [`Handles::settle`].
    Pending {
        path: PathBuf,
        flags: i32,
    },
}

#[derive(Debug)]
pub(super) struct Handles {
    files: DashMap<u64, Handle>,
    next: AtomicU64,
}

impl Handles {
    pub(super) fn new() -> Self {
        Handles {
            files: DashMap::new(),
            next: AtomicU64::new(1),
        }
    }

    /// Registers the open file `open` of `ino`; returns its handle.
    pub(super) fn add(&self, ino: u64, open: OpenFile) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.files.insert(fh, Handle { ino, open });
        fh
    }

    pub(super) fn release(&self, fh: u64) {
        self.files.remove(&fh);
    }

    /// What `fh` reads (a handle opened for writing reads what is below until its
    /// first write), cloned out of the table.
    pub(super) fn readable(&self, fh: u64) -> Result<Readable, FsError> {
        let handle = self
            .files
            .get(&fh)
            .ok_or_else(|| fs_err!(EBADF, "no open file {fh}"))?;
        match &handle.open {
            OpenFile::Open(r) => Ok(r.clone()),
            OpenFile::PendingWrite {
                reader: Some(r), ..
            } => Ok(r.clone()),
            OpenFile::PendingWrite { reader: None, .. } => {
                Err(fs_err!(EBADF, "file {fh} is not open for reading"))
            }
        }
    }

    /// What `fh` writes to, cloned out of the table.
    pub(super) fn write_target(&self, fh: u64) -> Result<WriteTarget, FsError> {
        let handle = self
            .files
            .get(&fh)
            .ok_or_else(|| fs_err!(EBADF, "no open file {fh}"))?;
        match &handle.open {
            OpenFile::Open(Readable::Upper(f)) => Ok(WriteTarget::Upper(f.clone())),
            OpenFile::PendingWrite { path, flags, .. } => Ok(WriteTarget::Pending {
                path: path.clone(),
                flags: *flags,
            }),
            OpenFile::Open(_) => Err(fs_err!(EBADF, "file {fh} is not open for writing")),
        }
    }

    /// The upper file of a pending handle, now copied up; the file already there when
    /// another write on the same handle settled it first.
    pub(super) fn settle(&self, fh: u64, file: File) -> Result<Arc<File>, FsError> {
        let mut handle = self
            .files
            .get_mut(&fh)
            .ok_or_else(|| fs_err!(EBADF, "no open file {fh}"))?;
        match &handle.open {
            OpenFile::Open(Readable::Upper(f)) => Ok(f.clone()),
            OpenFile::PendingWrite { .. } => {
                let file = Arc::new(file);
                handle.open = OpenFile::Open(Readable::Upper(file.clone()));
                Ok(file)
            }
            OpenFile::Open(_) => Err(fs_err!(EBADF, "file {fh} is not open for writing")),
        }
    }

    /// The upper file open through `fh`, if any (for `fsync`).
    pub(super) fn upper_file(&self, fh: u64) -> Result<Option<Arc<File>>, FsError> {
        let handle = self
            .files
            .get(&fh)
            .ok_or_else(|| fs_err!(EBADF, "no open file {fh}"))?;
        Ok(match &handle.open {
            OpenFile::Open(Readable::Upper(f)) => Some(f.clone()),
            _ => None,
        })
    }

    /// An upper file open on `ino`, for a file whose name is gone.
    pub(super) fn upper_of(&self, ino: u64) -> Option<Arc<File>> {
        self.files.iter().find_map(|h| match &h.open {
            OpenFile::Open(Readable::Upper(f)) if h.ino == ino => Some(f.clone()),
            _ => None,
        })
    }

    /// Handles opened for writing on `path` that have not written yet.
    pub(super) fn pending_on(&self, path: &Path) -> Vec<u64> {
        self.files
            .iter()
            .filter(|h| matches!(&h.open, OpenFile::PendingWrite { path: p, .. } if p == path))
            .map(|h| *h.key())
            .collect()
    }

    /// Handles waiting for their first write on `from` (or below it) follow a rename.
    pub(super) fn repath_pending(&self, from: &Path, to: &Path) {
        for mut h in self.files.iter_mut() {
            if let OpenFile::PendingWrite { path, .. } = &mut h.open {
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
}

/// The content of the entry `node` at `path`, opened for reading: a layer's file checked
/// against what its lookup reported, bytes in memory, an archive slice, or an upper file.
pub(super) fn open_content(path: &Path, node: &Node) -> Result<Readable, FsError> {
    Ok(match &node.entry.content {
        Content::Disk(f) => {
            let file = f.open().map_err(|e| {
                FsError::opening(&e, format!("opening {}: {e}", f.path().display()))
            })?;
            // Upper files change through the mount: read them as they are now.
            if node.upper == InUpper::Yes {
                Readable::Upper(Arc::new(file))
            } else {
                check_unchanged(&file, &node.entry, &f.path(), node.upper == InUpper::No)?;
                Readable::Disk {
                    file: Arc::new(file),
                    size: node.entry.size,
                }
            }
        }
        Content::Bytes(b) => Readable::Bytes(b.clone()),
        Content::Archive(slice) => {
            slice.archive.check_unchanged()?;
            Readable::Archive(slice.clone())
        }
        Content::Faulty(why) => return Err(reported(why.to_string()).into()),
        Content::Dir => return Err(fs_err!(EISDIR, "{} is a folder", path.display())),
        Content::Link(_) => return Err(fs_err!(ELOOP, "{} is a symlink", path.display())),
        // The kernel opens FIFOs and sockets itself; no open of one reaches here.
        Content::Special { .. } => {
            return Err(fs_err!(ENXIO, "{} is a fifo or socket", path.display()))
        }
    })
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
    let mtime = crate::sys::system_time(meta.mtime(), meta.mtime_nsec());
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

thread_local! {
    /// Read buffer of each serving thread: a large read costs no allocation.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Reads up to `size` bytes at `offset` of `content` and hands them, or the error, to
/// `answer` (borrowed: bytes in memory are not copied, and a read of a file lands in a
/// buffer that each thread reuses). The one place opened content becomes bytes, for
/// reads through a handle, reads without one and copy-ups alike.
pub(super) fn read<R>(
    content: &Readable,
    offset: u64,
    size: u32,
    answer: impl FnOnce(Result<&[u8], FsError>) -> R,
) -> R {
    match content {
        Readable::Disk { file, size: stat } => {
            // A layer's file shorter than its stat size fails (EIO) instead of
            // short-reading: its size no longer matches what the kernel and `tar` have.
            let want = (size as u64).min(stat.saturating_sub(offset)) as usize;
            with_buffer(file, offset, want, true, answer)
        }
        Readable::Lower(lower) => match lower.file() {
            Ok(file) => {
                let want = (size as u64).min(lower.node.entry.size.saturating_sub(offset)) as usize;
                with_buffer(&file, offset, want, true, answer)
            }
            Err(e) => answer(Err(e)),
        },
        Readable::Upper(file) => with_buffer(file, offset, size as usize, false, answer),
        Readable::Bytes(b) => {
            let start = (offset as usize).min(b.len());
            let end = start.saturating_add(size as usize).min(b.len());
            answer(Ok(&b[start..end]))
        }
        Readable::Archive(slice) => match slice.read(offset, size as usize) {
            Ok(bytes) => answer(Ok(&bytes)),
            Err(e) => answer(Err(e.into())),
        },
    }
}

/// Reads `want` bytes at `offset` of `file` into the thread's buffer: fewer only at end
/// of file, unless `exact` (then a short file is an error).
fn with_buffer<R>(
    file: &File,
    offset: u64,
    want: usize,
    exact: bool,
    answer: impl FnOnce(Result<&[u8], FsError>) -> R,
) -> R {
    READ_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let mut done = 0;
        while done < want {
            match file.read_at(&mut buf[done..want], offset + done as u64) {
                Ok(0) if exact => {
                    return answer(Err(fs_err!(EIO, "backing file shorter than its stat size")));
                }
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return answer(Err(e.into())),
            }
        }
        answer(Ok(&buf[..done]))
    })
}

/// Copies all of `content` into `out` a MiB at a time (never held whole), through
/// [`read`]: a copy-up's bytes are what a read would give.
pub(super) fn copy_all(content: &Readable, out: &File) -> Result<(), FsError> {
    const CHUNK: u32 = 1 << 20;
    let mut at = 0u64;
    loop {
        let n = read(content, at, CHUNK, |r| -> Result<usize, FsError> {
            let bytes = r?;
            out.write_all_at(bytes, at)?;
            Ok(bytes.len())
        })?;
        if n == 0 {
            return Ok(());
        }
        at += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(content: &Readable, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        read(content, offset, size, |r| {
            r.map(|b| b.to_vec()).map_err(|e| e.errno)
        })
    }

    #[test]
    fn reads_ranges_and_refuses_a_shrunk_layer_file() {
        let dir = std::env::temp_dir().join(format!("rootfs-mount-handles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        let disk = Readable::Disk {
            file: file.clone(),
            size: 10,
        };
        assert_eq!(collect(&disk, 2, 3).unwrap(), b"234");
        assert_eq!(collect(&disk, 8, 100).unwrap(), b"89");
        assert_eq!(collect(&disk, 20, 5).unwrap(), b"");
        // Said to be longer than it is: EIO, not a short read.
        let longer = Readable::Disk { file, size: 12 };
        assert_eq!(collect(&longer, 8, 100), Err(libc::EIO));
        // An upper file reads what it has now.
        let upper = Readable::Upper(Arc::new(File::open(&path).unwrap()));
        assert_eq!(collect(&upper, 8, 100).unwrap(), b"89");
        let bytes = Readable::Bytes(Arc::from(&b"abc"[..]));
        assert_eq!(collect(&bytes, 1, 100).unwrap(), b"bc");
        // Copying gives the same bytes.
        let out_path = dir.join("out");
        let out = File::create(&out_path).unwrap();
        copy_all(&disk, &out).unwrap();
        assert_eq!(std::fs::read(&out_path).unwrap(), b"0123456789");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_pending_write_handle_settles_once() {
        let dir = std::env::temp_dir().join(format!("rootfs-mount-settle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let handles = Handles::new();
        let fh = handles.add(
            7,
            OpenFile::PendingWrite {
                path: PathBuf::from("a/b"),
                flags: libc::O_WRONLY,
                reader: None,
            },
        );
        assert_eq!(handles.readable(fh).unwrap_err().errno, libc::EBADF);
        assert_eq!(handles.pending_on(Path::new("a/b")), [fh]);
        handles.repath_pending(Path::new("a"), Path::new("c"));
        assert!(handles.pending_on(Path::new("a/b")).is_empty());
        assert_eq!(handles.pending_on(Path::new("c/b")), [fh]);
        let first = handles
            .settle(fh, File::create(dir.join("one")).unwrap())
            .unwrap();
        let second = handles
            .settle(fh, File::create(dir.join("two")).unwrap())
            .unwrap();
        assert!(Arc::ptr_eq(&first, &second), "the first settled file stays");
        assert!(handles.upper_of(7).is_some());
        handles.release(fh);
        assert!(handles.upper_of(7).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
