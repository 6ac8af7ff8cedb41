//! Persisted archive indexes: `CACHE/index/` (or `--index-dir`), one file per archive.
//!
//! A file is named after the archive (`<file name>-<hash of its path>.gzidx`) and holds
//! the archive's identity (size, mtime, CRC-32 of its first 64 KiB): an index whose
//! identity no longer matches is rebuilt and replaced, so a changed archive is never
//! read through a stale index. Files are written under a temporary name and renamed, so
//! a reader sees a whole file or none, and two daemons indexing the same archive at once
//! just both write it. Every file carries CRC-32s of its header and body: a damaged file
//! is rebuilt, never trusted. When the folder cannot be written, indexes are kept in
//! memory for the life of the daemon (logged once).
//!
//! Index files are read with `pread` into memory, never mapped: anyone who can write the
//! folder could truncate a mapped file, and the next read of the mapping would kill the
//! daemon (SIGBUS). Only the deflated windows stay in memory after parsing, about 3% of
//! the archive for ordinary archives; a file larger than [`max_index_len`] is not read.
//!
//! Layout (little-endian): a 128-byte header, then the deflated windows, the seek
//! points (32 bytes each), and the tar listing when the archive has one.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use flate2::Crc;

use super::gzip_index::{
    scan, GzipIndex, ReadAt, ScanError, SeekPoint, WindowBytes, DEFAULT_SPAN, POINT_BYTES,
};
use super::tar_listing::{TarListing, TarScanner, MAX_MEMBERS, MAX_NAME_BYTES};

const MAGIC: &[u8; 8] = b"RFMGZIDX";
const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 128;
const FLAG_LISTING: u32 = 1;
/// How much of the archive's head goes into its identity.
pub const HEAD_BYTES: usize = 64 * 1024;

/// What identifies one version of an archive file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchiveIdentity {
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// CRC-32 of the first [`HEAD_BYTES`] bytes.
    pub head_crc: u32,
}

impl ArchiveIdentity {
    pub fn of(file: &File) -> io::Result<Self> {
        super::ArchiveSource::identity(file)
    }

    /// The identity of `size` bytes read from `src`, with the mtime given.
    pub fn of_bytes(
        src: &dyn ReadAt,
        size: u64,
        mtime_sec: i64,
        mtime_nsec: u32,
    ) -> io::Result<Self> {
        let mut head = vec![0u8; HEAD_BYTES.min(size as usize)];
        let mut done = 0;
        while done < head.len() {
            match src.read_at(&mut head[done..], done as u64)? {
                0 => break,
                n => done += n,
            }
        }
        let mut crc = Crc::new();
        crc.update(&head[..done]);
        Ok(ArchiveIdentity {
            size,
            mtime_sec,
            mtime_nsec,
            head_crc: crc.sum(),
        })
    }

    /// Whether `meta` (of the same file, later) still has this size and mtime.
    pub fn same_stat(&self, meta: &std::fs::Metadata) -> bool {
        meta.len() == self.size
            && meta.mtime() == self.mtime_sec
            && meta.mtime_nsec() == i64::from(self.mtime_nsec)
    }
}

/// A parsed index: seek points, and the tar listing when the archive is a tarball.
#[derive(Debug)]
pub struct LoadedIndex {
    pub identity: ArchiveIdentity,
    pub gzip: GzipIndex,
    pub listing: Option<TarListing>,
    /// Compressed offset of garbage after the last gzip member, left out: found when the
    /// index is built (for the log), not kept in the index file.
    pub trailing_garbage: Option<u64>,
}

/// Why no index could be made.
#[derive(Debug)]
pub enum BuildError {
    /// The archive itself is bad: its entries give EIO. What was listed before the
    /// fault comes along.
    Archive {
        message: String,
        partial: Option<TarListing>,
    },
    /// The index could not be written (the folder, the disk).
    Sink(io::Error),
    /// Reading the archive's bytes failed (the disk, a remote store): no verdict on the
    /// archive itself, so a later build may succeed.
    Read(io::Error),
}

impl From<ScanError> for BuildError {
    fn from(e: ScanError) -> Self {
        match e {
            ScanError::Sink(e) => BuildError::Sink(e),
            ScanError::Read(e) => BuildError::Read(e),
            other => BuildError::Archive {
                message: other.to_string(),
                partial: None,
            },
        }
    }
}

/// Counts and checksums what goes through it.
struct Summing<'a, W: Write> {
    inner: &'a mut W,
    crc: Crc,
    len: u64,
}

impl<W: Write> Write for Summing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `Read` over a positional source, from offset 0.
struct Sequential<'a> {
    src: &'a dyn ReadAt,
    pos: u64,
}

impl Read for Sequential<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Scans the archive `src` and writes its index to `out` (from its start). Returns the
/// compressed offset of garbage after the last member, if any (left out).
pub fn write_index<W: Write + Seek>(
    out: &mut W,
    src: &dyn ReadAt,
    identity: &ArchiveIdentity,
    span: u64,
    with_listing: bool,
) -> Result<Option<u64>, BuildError> {
    out.seek(SeekFrom::Start(0)).map_err(BuildError::Sink)?;
    out.write_all(&[0u8; HEADER_LEN])
        .map_err(BuildError::Sink)?;
    let mut body = Summing {
        inner: out,
        crc: Crc::new(),
        len: 0,
    };
    let mut scanner = with_listing.then(TarScanner::new);
    let mut on_output = |chunk: &[u8]| {
        if let Some(s) = scanner.as_mut() {
            s.feed(chunk);
        }
    };
    let scanned = scan(
        &mut Sequential { src, pos: 0 },
        span,
        &mut body,
        &mut on_output,
    );
    let listing = match scanner.map(TarScanner::finish) {
        None => None,
        Some(Ok(listing)) => Some(listing),
        Some(Err((message, partial))) => {
            return Err(match scanned {
                Err(e @ (ScanError::Sink(_) | ScanError::Read(_))) => e.into(),
                Err(e) => BuildError::Archive {
                    message: e.to_string(),
                    partial: Some(partial),
                },
                Ok(_) => BuildError::Archive {
                    message: format!("not a valid tar: {message}"),
                    partial: Some(partial),
                },
            })
        }
    };
    let summary = match scanned {
        Ok(s) => s,
        Err(e) => {
            let mut err = BuildError::from(e);
            if let BuildError::Archive { partial, .. } = &mut err {
                *partial = listing;
            }
            return Err(err);
        }
    };
    let mut tail = Vec::with_capacity(summary.points.len() * POINT_BYTES);
    for p in &summary.points {
        p.encode(&mut tail);
    }
    let listing_at = tail.len();
    if let Some(l) = &listing {
        l.encode(&mut tail);
    }
    body.write_all(&tail).map_err(BuildError::Sink)?;
    let body_crc = body.crc.sum();

    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&(if listing.is_some() { FLAG_LISTING } else { 0 }).to_le_bytes());
    h.extend_from_slice(&identity.size.to_le_bytes());
    h.extend_from_slice(&identity.mtime_sec.to_le_bytes());
    h.extend_from_slice(&identity.mtime_nsec.to_le_bytes());
    h.extend_from_slice(&identity.head_crc.to_le_bytes());
    h.extend_from_slice(&summary.total_in.to_le_bytes());
    h.extend_from_slice(&summary.total_out.to_le_bytes());
    h.extend_from_slice(&span.to_le_bytes());
    h.extend_from_slice(&summary.windows_len.to_le_bytes());
    h.extend_from_slice(&(summary.points.len() as u64).to_le_bytes());
    h.extend_from_slice(&((tail.len() - listing_at) as u64).to_le_bytes());
    h.extend_from_slice(&body_crc.to_le_bytes());
    h.resize(HEADER_LEN - 4, 0);
    let mut crc = Crc::new();
    crc.update(&h);
    h.extend_from_slice(&crc.sum().to_le_bytes());
    out.seek(SeekFrom::Start(0)).map_err(BuildError::Sink)?;
    out.write_all(&h).map_err(BuildError::Sink)?;
    out.flush().map_err(BuildError::Sink)?;
    Ok(summary.trailing_garbage)
}

/// Parses and checks index bytes; `None` when they are not a whole, valid index. Only the
/// deflated windows of `bytes` are kept (in memory), the rest is dropped once parsed.
pub fn parse_index(mut bytes: Vec<u8>) -> Option<LoadedIndex> {
    let all = bytes.as_slice();
    let header = all.get(..HEADER_LEN)?;
    let body = &all[HEADER_LEN..];
    let mut r = super::tar_listing::ByteReader {
        bytes: header,
        at: 0,
    };
    if r.take(8)? != MAGIC || r.u32()? != FORMAT_VERSION {
        return None;
    }
    let mut crc = Crc::new();
    crc.update(&header[..HEADER_LEN - 4]);
    if crc.sum().to_le_bytes() != header[HEADER_LEN - 4..] {
        return None;
    }
    let flags = r.u32()?;
    let identity = ArchiveIdentity {
        size: r.u64()?,
        mtime_sec: r.u64()? as i64,
        mtime_nsec: r.u32()?,
        head_crc: r.u32()?,
    };
    let total_in = r.u64()?;
    let total_out = r.u64()?;
    let _span = r.u64()?;
    let windows_len = usize::try_from(r.u64()?).ok()?;
    let point_count = usize::try_from(r.u64()?).ok()?;
    let listing_len = usize::try_from(r.u64()?).ok()?;
    let body_crc = r.u32()?;
    let points_len = point_count.checked_mul(POINT_BYTES)?;
    if windows_len
        .checked_add(points_len)?
        .checked_add(listing_len)?
        != body.len()
    {
        return None;
    }
    let mut crc = Crc::new();
    crc.update(body);
    if crc.sum() != body_crc {
        return None;
    }
    let mut points = Vec::with_capacity(point_count);
    for chunk in body[windows_len..windows_len + points_len].chunks_exact(POINT_BYTES) {
        let p = SeekPoint::decode(chunk.try_into().ok()?);
        let window_end = p.window_at.checked_add(u64::from(p.window_len))?;
        let in_order = match points.last() {
            None => p.out == 0,
            Some(prev) => {
                let prev: &SeekPoint = prev;
                p.out > prev.out && p.input >= prev.input
            }
        };
        if !in_order
            || p.bits > 7
            || p.input > total_in
            || p.out > total_out
            || window_end > windows_len as u64
        {
            return None;
        }
        points.push(p);
    }
    if points.is_empty() {
        return None;
    }
    let listing = if flags & FLAG_LISTING != 0 {
        Some(TarListing::decode(
            &body[windows_len + points_len..],
            total_out,
        )?)
    } else if listing_len == 0 {
        None
    } else {
        return None;
    };
    bytes.truncate(HEADER_LEN + windows_len);
    bytes.drain(..HEADER_LEN);
    bytes.shrink_to_fit();
    let windows = WindowBytes::new(Arc::new(bytes), 0, windows_len);
    Some(LoadedIndex {
        identity,
        gzip: GzipIndex::new(points, total_out, windows),
        listing,
        trailing_garbage: None,
    })
}

/// The largest index file read for an archive of `identity`: an index is one deflated
/// window (at most 32 KiB plus deflate's overhead) per seek point, and a seek point
/// needs at least a span of output, which costs input; with crafted archives it may
/// come near the archive's size. The tar listing adds less than 128 MiB (at most
/// [`MAX_MEMBERS`] members of about 40 bytes plus [`MAX_NAME_BYTES`] of names). A longer
/// file is damaged (or not ours): it is rebuilt, never read whole.
fn max_index_len(identity: &ArchiveIdentity) -> u64 {
    let listing = (MAX_MEMBERS as u64) * 64 + MAX_NAME_BYTES as u64;
    (HEADER_LEN as u64)
        .saturating_add(identity.size.saturating_mul(2))
        .saturating_add(listing)
}

/// Reads a whole file with `pread` into memory, if it is at most `max` bytes. Index
/// files are never mapped: a file truncated under a mapping kills the reader (SIGBUS).
fn read_bounded(file: &File, max: u64) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata().ok()?.len();
    if len > max {
        return None;
    }
    let mut bytes = vec![0u8; usize::try_from(len).ok()?];
    file.read_exact_at(&mut bytes, 0).ok()?;
    Some(bytes)
}

/// Builds an index entirely in memory.
pub fn build_in_memory(
    src: &dyn ReadAt,
    identity: &ArchiveIdentity,
    span: u64,
    with_listing: bool,
) -> Result<LoadedIndex, BuildError> {
    let mut out = Cursor::new(Vec::new());
    let trailing_garbage = write_index(&mut out, src, identity, span, with_listing)?;
    let mut index = parse_index(out.into_inner())
        .ok_or_else(|| BuildError::Sink(io::Error::other("the index just built does not parse")))?;
    index.trailing_garbage = trailing_garbage;
    Ok(index)
}

/// FNV-1a: a hash that stays the same across builds and Rust versions.
fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Members listed by all the tarballs of one mount together (each is also capped at
/// [`MAX_MEMBERS`]): listings are kept in memory, a few hundred bytes plus the name per
/// member, so many tarballs under the per-tarball cap must not add up without bound.
pub const MAX_MEMBERS_TOTAL: usize = 250_000;
/// Bytes of member names and link targets of all the tarballs of one mount together.
pub const MAX_NAME_BYTES_TOTAL: usize = 64 << 20;

/// Where indexes are kept, and whether that folder can be written. One per mount: it
/// also keeps the mount's count of listed members against [`MAX_MEMBERS_TOTAL`].
#[derive(Debug)]
pub struct IndexStore {
    dir: PathBuf,
    span: u64,
    memory_only: AtomicBool,
    temp_counter: AtomicU64,
    /// Members and name bytes listed so far by this mount's tarballs.
    listed: std::sync::Mutex<(usize, usize)>,
}

/// How an index was had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexOrigin {
    /// Read from the index folder.
    Reused,
    /// Built and written to the index folder.
    Written,
    /// Built and kept in memory (the folder is not writable).
    InMemory,
}

impl IndexStore {
    pub fn new(dir: PathBuf) -> Self {
        Self::with_span(dir, DEFAULT_SPAN)
    }

    /// A store whose new indexes place seek points every `span` bytes of output.
    pub fn with_span(dir: PathBuf, span: u64) -> Self {
        IndexStore {
            dir,
            span,
            memory_only: AtomicBool::new(false),
            temp_counter: AtomicU64::new(0),
            listed: std::sync::Mutex::new((0, 0)),
        }
    }

    /// Counts `listing` against the mount's totals; an error (for the log) when it
    /// would go over them, and then it is not counted.
    pub fn account_listing(&self, listing: &TarListing) -> Result<(), String> {
        let members = listing.members.len();
        let names: usize = listing
            .members
            .iter()
            .map(|m| m.path.as_os_str().len() + m.link.as_ref().map_or(0, |l| l.as_os_str().len()))
            .sum();
        let mut listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        let (total_members, total_names) = (listed.0 + members, listed.1 + names);
        if total_members > MAX_MEMBERS_TOTAL || total_names > MAX_NAME_BYTES_TOTAL {
            return Err(format!(
                "the tarballs of this mount would list more than {MAX_MEMBERS_TOTAL} members in total (or {} MiB of names); this one ({members} members) is not served",
                MAX_NAME_BYTES_TOTAL >> 20
            ));
        }
        *listed = (total_members, total_names);
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The index file of the archive at `archive` (an absolute path).
    pub fn index_path(&self, archive: &Path) -> PathBuf {
        let name = archive
            .file_name()
            .unwrap_or(OsStr::new("archive"))
            .to_string_lossy();
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() && c != '/' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let hash = stable_hash(archive.as_os_str().as_bytes());
        self.dir.join(format!("{name}-{hash:016x}.gzidx"))
    }

    /// The index of `file` (the archive at `archive`): reused from the folder when its
    /// identity matches, else built (and written, when the folder allows).
    pub fn load_or_build(
        &self,
        archive: &Path,
        file: &dyn super::ArchiveSource,
        with_listing: bool,
    ) -> Result<(LoadedIndex, IndexOrigin), BuildError> {
        let identity = file.identity().map_err(BuildError::Read)?;
        let path = self.index_path(archive);
        if let Some(found) = Self::reuse(&path, &identity, with_listing) {
            return Ok((found, IndexOrigin::Reused));
        }
        let registration = super::progress::start(archive, identity.size);
        let file = &registration.reader(file);
        if !self.memory_only.load(Ordering::Relaxed) {
            match self.build_file(&path, file, &identity, with_listing) {
                Ok(index) => return Ok((index, IndexOrigin::Written)),
                Err(BuildError::Sink(e)) => {
                    if !self.memory_only.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            folder = %self.dir.display(),
                            error = %e,
                            "cannot write gzip indexes there; keeping them in memory for this mount"
                        );
                    }
                }
                Err(e) => return Err(e),
            }
        }
        build_in_memory(file, &identity, self.span, with_listing)
            .map(|i| (i, IndexOrigin::InMemory))
    }

    fn reuse(path: &Path, identity: &ArchiveIdentity, with_listing: bool) -> Option<LoadedIndex> {
        let file = crate::sys::open_regular(path).ok()?;
        let found = read_bounded(&file, max_index_len(identity)).and_then(parse_index);
        match found {
            Some(i) if i.identity == *identity && (i.listing.is_some() || !with_listing) => Some(i),
            Some(_) => {
                tracing::debug!(index = %path.display(), "the archive changed since it was indexed: rebuilding");
                None
            }
            None => {
                tracing::info!(index = %path.display(), "damaged index file: rebuilding it");
                None
            }
        }
    }

    fn build_file(
        &self,
        path: &Path,
        archive: &dyn ReadAt,
        identity: &ArchiveIdentity,
        with_listing: bool,
    ) -> Result<LoadedIndex, BuildError> {
        std::fs::create_dir_all(&self.dir).map_err(BuildError::Sink)?;
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let name = path
            .file_name()
            .unwrap_or(OsStr::new("index"))
            .to_string_lossy();
        let temp = self
            .dir
            .join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        // Built in memory (where it is kept anyway), then written and renamed into place.
        let mut built = Cursor::new(Vec::new());
        let trailing_garbage = write_index(&mut built, archive, identity, self.span, with_listing)?;
        let built = built.into_inner();
        let finished = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .and_then(|mut out| out.write_all(&built))
            .and_then(|()| std::fs::rename(&temp, path));
        if let Err(e) = finished {
            let _ = std::fs::remove_file(&temp);
            return Err(BuildError::Sink(e));
        }
        let mut index = parse_index(built).ok_or_else(|| {
            BuildError::Sink(io::Error::other("the index just written does not parse"))
        })?;
        index.trailing_garbage = trailing_garbage;
        Ok(index)
    }
}
