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
use super::tar_listing::{TarListing, TarScanner};
use crate::sys;

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
        let meta = file.metadata()?;
        let mut head = vec![0u8; HEAD_BYTES.min(meta.len() as usize)];
        let mut done = 0;
        while done < head.len() {
            match ReadAt::read_at(file, &mut head[done..], done as u64)? {
                0 => break,
                n => done += n,
            }
        }
        let mut crc = Crc::new();
        crc.update(&head[..done]);
        Ok(ArchiveIdentity {
            size: meta.len(),
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
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
}

impl From<ScanError> for BuildError {
    fn from(e: ScanError) -> Self {
        match e {
            ScanError::Sink(e) => BuildError::Sink(e),
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

/// Scans the archive `src` and writes its index to `out` (from its start).
pub fn write_index<W: Write + Seek>(
    out: &mut W,
    src: &dyn ReadAt,
    identity: &ArchiveIdentity,
    span: u64,
    with_listing: bool,
) -> Result<(), BuildError> {
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
                Err(e @ ScanError::Sink(_)) => e.into(),
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
    out.flush().map_err(BuildError::Sink)
}

/// Parses and checks index bytes; `None` when they are not a whole, valid index.
pub fn parse_index(bytes: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Option<LoadedIndex> {
    let all = (*bytes).as_ref();
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
    let windows = WindowBytes::new(bytes.clone(), HEADER_LEN, windows_len);
    Some(LoadedIndex {
        identity,
        gzip: GzipIndex::new(points, total_out, windows),
        listing,
    })
}

/// Builds an index entirely in memory.
pub fn build_in_memory(
    src: &dyn ReadAt,
    identity: &ArchiveIdentity,
    span: u64,
    with_listing: bool,
) -> Result<LoadedIndex, BuildError> {
    let mut out = Cursor::new(Vec::new());
    write_index(&mut out, src, identity, span, with_listing)?;
    parse_index(Arc::new(out.into_inner()))
        .ok_or_else(|| BuildError::Sink(io::Error::other("the index just built does not parse")))
}

/// FNV-1a: a hash that stays the same across builds and Rust versions.
fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where indexes are kept, and whether that folder can be written.
#[derive(Debug)]
pub struct IndexStore {
    dir: PathBuf,
    span: u64,
    memory_only: AtomicBool,
    temp_counter: AtomicU64,
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
        }
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
        file: &File,
        with_listing: bool,
    ) -> Result<(LoadedIndex, IndexOrigin), BuildError> {
        let identity = ArchiveIdentity::of(file).map_err(|e| BuildError::Archive {
            message: format!("reading the archive: {e}"),
            partial: None,
        })?;
        let path = self.index_path(archive);
        if let Some(found) = Self::reuse(&path, &identity, with_listing) {
            return Ok((found, IndexOrigin::Reused));
        }
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let registration = super::progress::start(archive, size);
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
        let file = File::open(path).ok()?;
        let map = sys::map_readonly(&file).ok()?;
        let found = parse_index(Arc::new(map));
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
        let mut out = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(BuildError::Sink)?;
        let written = {
            let mut buffered = io::BufWriter::with_capacity(256 * 1024, &mut out);
            write_index(&mut buffered, archive, identity, self.span, with_listing)
                .and_then(|()| buffered.flush().map_err(BuildError::Sink))
        };
        let finished =
            written.and_then(|()| std::fs::rename(&temp, path).map_err(BuildError::Sink));
        if let Err(e) = finished {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        let map = sys::map_readonly(&out).map_err(BuildError::Sink)?;
        parse_index(Arc::new(map)).ok_or_else(|| {
            BuildError::Sink(io::Error::other("the index just written does not parse"))
        })
    }
}
