//! Archives served in place (docs/DESIGN.md §4): tar listings and gzip random access, with no
//! unpacked copy on disk and no whole member in memory.
//!
//! - [`tar_listing`]: the members of a tar stream (names, data offsets, sizes, modes).
//! - [`gzip_index`]: seek points every ~1 MiB of output, so a read anywhere inflates at
//!   most about one span.
//! - [`index_file`]: both persisted under `CACHE/index/`, keyed by the archive's
//!   identity, rebuilt when it changes.
//! - [`LazyArchive`]: an archive indexed on first need (nothing at mount time), and
//!   [`ArchiveSlice`]: a range of its decompressed bytes, which is what a file entry
//!   backed by an archive reads.
//!
//! Memory, whatever the archive size: the seek points (32 bytes per MiB of output, i.e.
//! 32 KiB per GiB) and the tar listing (a few hundred bytes plus the name per member, with
//! the entry the layer makes of it; at most [`tar_listing::MAX_MEMBERS`] members) of each
//! archive that has been used, plus up to [`CURSORS_PER_ARCHIVE`] idle inflate cursors
//! per archive and one per read in flight (about 140 KiB each). The windows (32 KiB of output per seek point, stored deflated: at most
//! about 3% of the decompressed size) stay in the index file, mapped read-only: page cache,
//! not daemon memory. Only when the index folder cannot be written are they held in
//! memory instead (then up to about 3% of the decompressed size per archive). Building an
//! index needs about 1 MiB of buffers, whatever the archive.

pub mod gzip_index;
pub mod index_file;
pub mod progress;
mod source;
pub mod tar_listing;
pub mod waiting;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use waiting::{GaveUp, Waiter};

pub use gzip_index::{GzipIndex, InflateCursor, ReadAt, SeekPoint};
pub use index_file::{ArchiveIdentity, BuildError, IndexOrigin, IndexStore};
pub use source::{ArchiveSource, SourceAttrs};
pub use tar_listing::{MemberKind, TarListing, TarMember};

/// Idle inflate cursors kept per archive: sequential readers (and the kernel's
/// readahead running a little ahead of them) each keep going where they stopped.
pub const CURSORS_PER_ARCHIVE: usize = 4;

/// An error that has already been logged (once, where it was found): the adapter
/// answers it (EIO unless it carries another errno) without logging it again.
#[derive(Debug)]
pub struct ReportedFault {
    pub message: String,
    pub errno: i32,
}

impl fmt::Display for ReportedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ReportedFault {}

/// An EIO whose cause was logged already.
pub fn reported(message: String) -> io::Error {
    reported_errno(libc::EIO, message)
}

/// An error answered with `errno` whose cause was logged already.
pub fn reported_errno(errno: i32, message: String) -> io::Error {
    io::Error::other(ReportedFault { message, errno })
}

/// Whether `e` was made by [`reported`] or [`reported_errno`].
pub fn is_reported(e: &io::Error) -> bool {
    reported_errno_of(e).is_some()
}

/// The errno of an error made by [`reported`] or [`reported_errno`].
pub fn reported_errno_of(e: &io::Error) -> Option<i32> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<ReportedFault>())
        .map(|r| r.errno)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An archive whose index is ready; or, with no gzip index, bytes served as they are
/// (a plain file of a remote cache, `crate::remote`).
#[derive(Debug)]
pub struct IndexedArchive {
    path: PathBuf,
    file: Box<dyn ArchiveSource>,
    attrs: SourceAttrs,
    identity: ArchiveIdentity,
    /// `None`: stored, not compressed; [`IndexedArchive::stored`].
    gzip: Option<GzipIndex>,
    listing: Option<TarListing>,
    cursors: Mutex<Vec<InflateCursor>>,
    read_fault_logged: AtomicBool,
}

impl IndexedArchive {
    /// Bytes served as they are, with no index: `size` bytes of `source` at `path`.
    pub fn stored(path: PathBuf, source: Box<dyn ArchiveSource>, size: u64) -> io::Result<Self> {
        Ok(IndexedArchive {
            path,
            attrs: source.attrs()?,
            file: source,
            identity: ArchiveIdentity {
                size,
                mtime_sec: 0,
                mtime_nsec: 0,
                head_crc: 0,
            },
            gzip: None,
            listing: None,
            cursors: Mutex::new(Vec::new()),
            read_fault_logged: AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The archive file's own attributes (owner, mode, mtime), as indexed.
    pub fn attrs(&self) -> &SourceAttrs {
        &self.attrs
    }

    /// A plain local file holding exactly the bytes served, when the source has one
    /// (see [`ArchiveSource::local_file`]): only for stored bytes.
    pub fn local_file(&self) -> Option<std::fs::File> {
        match self.gzip {
            None => self.file.local_file(),
            Some(_) => None,
        }
    }

    pub fn decompressed_size(&self) -> u64 {
        match &self.gzip {
            Some(gzip) => gzip.decompressed_size(),
            None => self.identity.size,
        }
    }

    pub fn listing(&self) -> Option<&TarListing> {
        self.listing.as_ref()
    }

    pub fn gzip_index(&self) -> Option<&GzipIndex> {
        self.gzip.as_ref()
    }

    /// The first read fault is logged; later ones are answered quietly.
    fn read_fault(&self, message: String) -> io::Error {
        if !self.read_fault_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(target: crate::fault::TARGET, file = %self.path.display(), error = %message, "cannot read the archive; its entries give EIO");
        }
        reported(format!("{}: {message}", self.path.display()))
    }

    /// EIO when the archive file was changed in place since it was indexed (a file
    /// replaced by a rename is fine: the open file is still the indexed one).
    pub fn check_unchanged(&self) -> io::Result<()> {
        let same = self
            .file
            .unchanged(&self.identity)
            .map_err(|e| self.read_fault(e.to_string()))?;
        if same {
            Ok(())
        } else {
            Err(self.read_fault(
                "the archive changed since it was indexed; remount to see the new one".into(),
            ))
        }
    }

    fn take_cursor(&self, gzip: &GzipIndex, pos: u64) -> io::Result<InflateCursor> {
        let mut idle = lock(&self.cursors);
        let best = idle
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                gzip_index::cursor_distance(gzip, c.position(), pos).map(|d| (d, i))
            })
            .min();
        match best {
            Some((_, i)) => Ok(idle.remove(i)),
            // None goes on from here: reuse the least recently used one.
            None if !idle.is_empty() => Ok(idle.remove(0)),
            None => {
                drop(idle);
                InflateCursor::new()
            }
        }
    }

    fn return_cursor(&self, cursor: InflateCursor) {
        let mut idle = lock(&self.cursors);
        if idle.len() >= CURSORS_PER_ARCHIVE {
            idle.remove(0);
        }
        idle.push(cursor);
    }

    /// Reads decompressed bytes at `pos`; fills `buf` unless the stream ends first.
    pub fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let Some(gzip) = &self.gzip else {
            return self.read_stored(pos, buf);
        };
        let mut cursor = self
            .take_cursor(gzip, pos)
            .map_err(|e| self.read_fault(e.to_string()))?;
        match gzip.read_at(&*self.file, &mut cursor, pos, buf) {
            Ok(n) => {
                self.return_cursor(cursor);
                Ok(n)
            }
            Err(e) => Err(self.read_fault(e.to_string())),
        }
    }
}

impl IndexedArchive {
    /// Stored bytes: read as they are, up to the end of the source.
    fn read_stored(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.identity.size.saturating_sub(pos)) as usize;
        let mut done = 0;
        while done < want {
            match self.file.read_at(&mut buf[done..want], pos + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                // A remote source logs its own faults (once per object).
                Err(e) if is_reported(&e) => return Err(e),
                Err(e) => return Err(self.read_fault(e.to_string())),
            }
        }
        Ok(done)
    }
}

/// Why an archive cannot be served; what was listed before the fault comes along.
#[derive(Debug)]
pub struct ArchiveFault {
    pub message: String,
    pub partial: Option<TarListing>,
    /// Set when reading the archive's bytes failed (the disk, a remote store that is
    /// down) rather than the archive being bad: the first request after this instant
    /// builds again instead of getting the remembered fault.
    pub retry_at: Option<Instant>,
}

/// How long a read failure of an archive's bytes is remembered before a request tries
/// the build again (a store that is down is not asked again for every request).
/// (Shorter in unit tests, which wait it out.)
const RETRY_READ_FAULT_AFTER: Duration = if cfg!(test) {
    Duration::from_millis(200)
} else {
    Duration::from_secs(5)
};

/// Opens an archive's bytes (a file of the cache, or an object of a remote store).
pub type Opener = Box<dyn Fn() -> io::Result<Box<dyn ArchiveSource>> + Send + Sync>;

/// What an archive's index build has come to.
type Outcome = Result<Arc<IndexedArchive>, Arc<ArchiveFault>>;

/// Where an archive's index build stands; shared with the thread that builds it.
#[derive(Default)]
struct Slot {
    state: Mutex<Phase>,
    changed: Condvar,
}

#[derive(Default)]
enum Phase {
    #[default]
    NotStarted,
    Building,
    Done(Outcome),
}

/// What the build thread needs of a [`LazyArchive`].
struct Builder {
    path: PathBuf,
    open: Opener,
    store: Arc<IndexStore>,
    with_listing: bool,
}

/// An archive indexed on first need. A fault of the archive itself is logged once and
/// remembered: its entries give EIO until the next mount. A failure to read its bytes
/// (the disk, a remote store that is down) gives EIO too, and the first request
/// [`RETRY_READ_FAULT_AFTER`] later builds again.
///
/// The build runs on a thread of its own; the requests that need it wait as
/// [`waiting`] says (a kernel request gives up on a signal of its caller, or after a
/// bound), and the build goes on when they give up.
pub struct LazyArchive {
    builder: Arc<Builder>,
    slot: Arc<Slot>,
}

impl fmt::Debug for LazyArchive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazyArchive")
            .field("path", &self.builder.path)
            .finish_non_exhaustive()
    }
}

impl LazyArchive {
    /// The archive at `path` (for messages and the index key), opened by `open`;
    /// `with_listing` for a tarball whose members are listed.
    pub fn new(path: PathBuf, open: Opener, store: Arc<IndexStore>, with_listing: bool) -> Self {
        LazyArchive {
            builder: Arc::new(Builder {
                path,
                open,
                store,
                with_listing,
            }),
            slot: Arc::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.builder.path
    }

    /// The indexed archive, indexing it now if this is the first need; waits for the
    /// build however long it takes. Concurrent callers wait for the one build.
    pub fn get(&self) -> Outcome {
        match self.wait(&Waiter::with(None, Duration::ZERO)) {
            Ok(outcome) => outcome,
            // A waiter without a request never gives up.
            Err(gave_up) => Err(Arc::new(ArchiveFault {
                message: format!("{gave_up:?}"),
                partial: None,
                retry_at: None,
            })),
        }
    }

    /// As [`LazyArchive::get`], waiting as the request on this thread may (see
    /// [`waiting`]): the outer error is EINTR or EAGAIN when the request gave up.
    pub fn get_for_request(&self) -> io::Result<Outcome> {
        let waiter = Waiter::for_this_thread();
        self.wait(&waiter).map_err(|gave_up| {
            let file = self.path().display();
            let message = match gave_up {
                GaveUp::Interrupted => {
                    format!("{file}: the caller was interrupted while it waited for the index build")
                }
                GaveUp::TooLong(bound) => {
                    let message = format!(
                        "{file}: a request gave up waiting for the index build after {} s (EAGAIN); the build goes on",
                        bound.as_secs()
                    );
                    tracing::warn!("{message}");
                    message
                }
            };
            reported_errno(gave_up.errno(), message)
        })
    }

    fn wait(&self, waiter: &Waiter) -> Result<Outcome, GaveUp> {
        let mut state = lock(&self.slot.state);
        loop {
            match &*state {
                Phase::Done(Err(f)) if f.retry_at.is_some_and(|at| Instant::now() >= at) => {
                    *state = Phase::NotStarted;
                    continue;
                }
                Phase::Done(outcome) => return Ok(outcome.clone()),
                Phase::NotStarted => {
                    *state = Phase::Building;
                    let (builder, slot) = (self.builder.clone(), self.slot.clone());
                    let spawned = std::thread::Builder::new()
                        .name("index-build".into())
                        .spawn(move || builder.build_guarded(&slot));
                    if spawned.is_err() {
                        // No thread to spare: build on this one.
                        drop(state);
                        self.builder.build_guarded(&self.slot);
                        state = lock(&self.slot.state);
                        continue;
                    }
                }
                Phase::Building => {}
            }
            waiter.check()?;
            state = match waiter.next_wait() {
                None => self
                    .slot
                    .changed
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    self.slot
                        .changed
                        .wait_timeout(state, d)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }
}

impl Builder {
    /// [`Builder::build_into`], and if the build panics, a fault for the waiters instead
    /// of a build that never ends.
    fn build_guarded(&self, slot: &Slot) {
        let built =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.build_into(slot)));
        if built.is_err() {
            tracing::warn!(
                target: crate::fault::TARGET,
                file = %self.path.display(),
                "the index build panicked: the archive's entries give EIO"
            );
            *lock(&slot.state) = Phase::Done(Err(Arc::new(ArchiveFault {
                message: "the index build panicked".into(),
                partial: None,
                retry_at: None,
            })));
            slot.changed.notify_all();
        }
    }

    /// Builds (or loads) the index, logs what is wrong with it, and hands the outcome to
    /// the waiters.
    fn build_into(&self, slot: &Slot) {
        let result = self.load();
        match &result {
            Ok(a) => {
                if let Some(l) = a.listing.as_ref().filter(|l| l.refused > 0) {
                    let examples: Vec<String> = l
                        .refused_examples
                        .iter()
                        .map(|r| format!("{:?} ({})", r.name, r.reason))
                        .collect();
                    tracing::warn!(
                        target: crate::fault::TARGET,
                        file = %self.path.display(),
                        refused = l.refused,
                        examples = %examples.join(", "),
                        "members refused: absolute or `..` names, or hard links to nothing"
                    );
                }
            }
            Err(f) if f.retry_at.is_some() => tracing::warn!(
                target: crate::fault::TARGET,
                file = %self.path.display(),
                error = %f.message,
                "reading the archive failed: its entries give EIO; the build is tried again by a request {} s later",
                RETRY_READ_FAULT_AFTER.as_secs()
            ),
            Err(f) => tracing::warn!(
                target: crate::fault::TARGET,
                file = %self.path.display(),
                error = %f.message,
                "corrupt archive: its entries give EIO"
            ),
        }
        *lock(&slot.state) = Phase::Done(result);
        slot.changed.notify_all();
    }

    fn load(&self) -> Outcome {
        let fault = |message: String, partial: Option<TarListing>| {
            Arc::new(ArchiveFault {
                message,
                partial,
                retry_at: None,
            })
        };
        let read_fault = |message: String| {
            Arc::new(ArchiveFault {
                message,
                partial: None,
                retry_at: Some(Instant::now() + RETRY_READ_FAULT_AFTER),
            })
        };
        let file = (self.open)().map_err(|e| read_fault(format!("opening the archive: {e}")))?;
        let attrs = file
            .attrs()
            .map_err(|e| read_fault(format!("stat of the archive: {e}")))?;
        let started = std::time::Instant::now();
        let (index, origin) = self
            .store
            .load_or_build(&self.path, &*file, self.with_listing)
            .map_err(|e| match e {
                BuildError::Archive { message, partial } => fault(message, partial),
                BuildError::Sink(e) => fault(format!("building the index: {e}"), None),
                BuildError::Read(e) => read_fault(format!("reading the archive: {e}")),
            })?;
        if let Some(offset) = index.trailing_garbage {
            tracing::warn!(
                archive = %self.path.display(),
                offset,
                "trailing garbage after the last gzip member ignored (as gzip and GNU tar do)"
            );
        }
        if let Some(listing) = &index.listing {
            self.store
                .account_listing(listing)
                .map_err(|message| fault(message, None))?;
        }
        tracing::info!(
            archive = %self.path.display(),
            ?origin,
            size = index.gzip.decompressed_size(),
            points = index.gzip.points().len(),
            millis = started.elapsed().as_millis() as u64,
            "archive index ready"
        );
        Ok(Arc::new(IndexedArchive {
            path: self.path.clone(),
            file,
            attrs,
            identity: index.identity,
            gzip: Some(index.gzip),
            listing: index.listing,
            cursors: Mutex::new(Vec::new()),
            read_fault_logged: AtomicBool::new(false),
        }))
    }
}

/// A range of an archive's decompressed bytes: a tar member, or the whole stream.
#[derive(Clone, Debug)]
pub struct ArchiveSlice {
    pub archive: Arc<IndexedArchive>,
    pub start: u64,
    pub len: u64,
}

impl ArchiveSlice {
    /// A plain local file holding exactly the slice's bytes, if there is one: the whole
    /// of a stored archive whose source has its bytes in one local file.
    pub fn local_file(&self) -> Option<std::fs::File> {
        let whole = self.start == 0 && self.len == self.archive.decompressed_size();
        whole.then(|| self.archive.local_file()).flatten()
    }

    /// Up to `size` bytes at `offset` of the slice (fewer only at its end).
    pub fn read(&self, offset: u64, size: usize) -> io::Result<Vec<u8>> {
        let want = (size as u64).min(self.len.saturating_sub(offset)) as usize;
        if want == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; want];
        let n = self.archive.read_at(self.start + offset, &mut buf)?;
        if n < want {
            return Err(self
                .archive
                .read_fault("the decompressed stream is shorter than its index says".into()));
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests;
