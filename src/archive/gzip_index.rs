//! Random access into gzip: a seek index in the manner of zlib's `examples/zran.c`.
//!
//! One pass over the archive ([`scan`]) records a [`SeekPoint`] at the first deflate
//! block boundary after every `span` bytes of output (1 MiB by default): where the next
//! block starts in the compressed file, to the bit, and the 32 KiB of output before it
//! (the window that later back-references may reach), stored deflated. A read at any
//! offset then restarts at the closest point before it ([`InflateCursor`]) and inflates
//! at most one span (plus the block it ends in) before the wanted bytes.
//!
//! Multi-member gzip (pigz `--independent`, bgzip, `cat a.gz b.gz`) works: each member
//! is inflated with its header and CRC checked, a point at the very start of a member
//! needs no window, and reads cross member boundaries. Zero bytes after the last member
//! are ignored, as gzip does; anything else there is an error.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::sys::zlib::{Inflater, StreamFormat, ZlibError};

/// Default output distance between seek points.
pub const DEFAULT_SPAN: u64 = 1 << 20;
/// Deflate's window: the most a back-reference can reach.
pub const WINDOW_SIZE: usize = 32 * 1024;
/// Compressed bytes read per system call.
const INPUT_CHUNK: usize = 64 * 1024;
/// Bytes one seek point takes in an index file.
pub(crate) const POINT_BYTES: usize = 32;

/// Positional reads of the compressed archive.
pub trait ReadAt {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match FileExt::read_at(self, buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

impl ReadAt for &[u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }
}

/// A place where inflating can restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeekPoint {
    /// Offset in the decompressed stream.
    pub out: u64,
    /// Offset in the compressed file of the first whole byte of the next block.
    pub input: u64,
    /// How many low bits of the byte before `input` belong to the next block (0..=7).
    pub bits: u8,
    /// Where the deflated window is, in the index's window bytes.
    pub window_at: u64,
    /// Its deflated length; 0 for no window (the start of a member).
    pub window_len: u32,
}

impl SeekPoint {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.out.to_le_bytes());
        out.extend_from_slice(&self.input.to_le_bytes());
        out.extend_from_slice(&self.window_at.to_le_bytes());
        out.extend_from_slice(&self.window_len.to_le_bytes());
        out.extend_from_slice(&[self.bits, 0, 0, 0]);
    }

    pub(crate) fn decode(b: &[u8; POINT_BYTES]) -> SeekPoint {
        let u64_at = |i: usize| {
            u64::from_le_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        SeekPoint {
            out: u64_at(0),
            input: u64_at(8),
            window_at: u64_at(16),
            window_len: u32::from_le_bytes([b[24], b[25], b[26], b[27]]),
            bits: b[28],
        }
    }
}

/// What went wrong while scanning or reading an archive.
#[derive(Debug)]
pub enum ScanError {
    /// The archive is not valid gzip (corrupt, truncated): its entries give EIO.
    Corrupt(String),
    /// Reading the archive failed.
    Read(io::Error),
    /// Writing the windows failed (the index folder, not the archive).
    Sink(io::Error),
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanError::Corrupt(m) => write!(f, "{m}"),
            ScanError::Read(e) => write!(f, "reading the archive: {e}"),
            ScanError::Sink(e) => write!(f, "writing the index: {e}"),
        }
    }
}

fn corrupt(at: u64, e: ZlibError) -> ScanError {
    ScanError::Corrupt(format!(
        "invalid gzip data near compressed offset {at}: {}",
        e.message
    ))
}

/// What one pass over an archive found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanSummary {
    pub points: Vec<SeekPoint>,
    /// Compressed bytes of the gzip members (trailing zeros excluded).
    pub total_in: u64,
    /// Decompressed size.
    pub total_out: u64,
    pub members: u64,
    /// Bytes of the windows written to the sink.
    pub windows_len: u64,
    /// Where bytes that are neither a gzip member nor zero padding start after the last
    /// member: left out, as `gzip -d` and GNU tar do ("trailing garbage ignored").
    pub trailing_garbage: Option<u64>,
}

/// The last 32 KiB of output.
struct Ring {
    buf: Box<[u8]>,
    /// Next write position.
    at: usize,
    /// Bytes held (up to WINDOW_SIZE).
    len: usize,
}

impl Ring {
    fn new() -> Self {
        Ring {
            buf: vec![0; WINDOW_SIZE].into_boxed_slice(),
            at: 0,
            len: 0,
        }
    }

    fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(WINDOW_SIZE)..];
        let first = data.len().min(WINDOW_SIZE - self.at);
        self.buf[self.at..self.at + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        self.at = (self.at + data.len()) % WINDOW_SIZE;
        self.len = (self.len + data.len()).min(WINDOW_SIZE);
    }

    /// The last `n` bytes (n <= len), oldest first.
    fn last(&self, n: usize, out: &mut Vec<u8>) {
        out.clear();
        let n = n.min(self.len);
        let start = (self.at + WINDOW_SIZE - n) % WINDOW_SIZE;
        if start + n <= WINDOW_SIZE {
            out.extend_from_slice(&self.buf[start..start + n]);
        } else {
            out.extend_from_slice(&self.buf[start..]);
            out.extend_from_slice(&self.buf[..n - (WINDOW_SIZE - start)]);
        }
    }
}

fn deflate_window(compressor: &mut Compress, window: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    compressor.reset();
    out.clear();
    out.reserve(window.len() + 1024);
    loop {
        let done = compressor.total_in() as usize;
        let status = compressor
            .compress_vec(
                &window[done.min(window.len())..],
                out,
                FlushCompress::Finish,
            )
            .map_err(io::Error::other)?;
        if status == Status::StreamEnd {
            return Ok(());
        }
        out.reserve(4096);
    }
}

fn read_some(src: &mut dyn Read, buf: &mut [u8]) -> Result<usize, ScanError> {
    loop {
        match src.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map_err(ScanError::Read),
        }
    }
}

/// Reads the whole gzip stream `src` once: every byte of output goes to `on_output`, and
/// the deflated window of each seek point to `windows`.
pub fn scan(
    src: &mut dyn Read,
    span: u64,
    windows: &mut dyn Write,
    on_output: &mut dyn FnMut(&[u8]),
) -> Result<ScanSummary, ScanError> {
    let span = span.max(WINDOW_SIZE as u64);
    let mut inflater =
        Inflater::new(StreamFormat::Gzip).map_err(|e| ScanError::Corrupt(e.to_string()))?;
    let mut input = vec![0u8; INPUT_CHUNK];
    let mut output = vec![0u8; 4 * INPUT_CHUNK];
    let (mut start, mut eof) = (0usize, false);
    let mut ring = Ring::new();
    let mut compressor = Compress::new(Compression::fast(), false);
    let (mut window, mut deflated) = (Vec::new(), Vec::new());
    let mut summary = ScanSummary {
        points: Vec::new(),
        total_in: 0,
        total_out: 0,
        members: 0,
        windows_len: 0,
        trailing_garbage: None,
    };
    let mut member_start_out = 0u64;

    let mut end = read_some(src, &mut input)?;
    if end < 2 || input[..2] != [0x1f, 0x8b] {
        return Err(ScanError::Corrupt(
            "not a gzip file (no gzip magic at its start)".into(),
        ));
    }
    loop {
        if start == end && !eof {
            start = 0;
            end = read_some(src, &mut input)?;
            eof = end == 0;
        }
        let step = inflater
            .inflate(&input[start..end], &mut output, true)
            .map_err(|e| corrupt(summary.total_in, e))?;
        start += step.consumed;
        summary.total_in += step.consumed as u64;
        if step.produced > 0 {
            let out = &output[..step.produced];
            on_output(out);
            ring.push(out);
            summary.total_out += step.produced as u64;
        }
        if step.stream_end {
            summary.members += 1;
            // Another member, or the end (zero padding at most)?
            while end - start < 2 && !eof {
                input.copy_within(start..end, 0);
                end -= start;
                start = 0;
                let n = read_some(src, &mut input[end..])?;
                eof = n == 0;
                end += n;
            }
            if end - start >= 2 && input[start..start + 2] == [0x1f, 0x8b] {
                inflater
                    .reset(StreamFormat::Gzip)
                    .map_err(|e| corrupt(summary.total_in, e))?;
                member_start_out = summary.total_out;
                continue;
            }
            loop {
                if input[start..end].iter().any(|b| *b != 0) {
                    summary.trailing_garbage = Some(summary.total_in);
                    return Ok(summary);
                }
                if eof {
                    return Ok(summary);
                }
                start = 0;
                end = read_some(src, &mut input)?;
                eof = end == 0;
            }
        }
        let due = summary
            .points
            .last()
            .is_none_or(|p| summary.total_out - p.out >= span);
        if step.at_block_boundary() && due {
            let len = (summary.total_out - member_start_out).min(WINDOW_SIZE as u64) as usize;
            let mut point = SeekPoint {
                out: summary.total_out,
                input: summary.total_in,
                bits: step.unused_bits(),
                window_at: summary.windows_len,
                window_len: 0,
            };
            if len > 0 {
                ring.last(len, &mut window);
                deflate_window(&mut compressor, &window, &mut deflated).map_err(ScanError::Sink)?;
                windows.write_all(&deflated).map_err(ScanError::Sink)?;
                point.window_len = deflated.len() as u32;
                summary.windows_len += deflated.len() as u64;
            }
            summary.points.push(point);
        }
        if step.consumed == 0 && step.produced == 0 {
            if start == end && eof {
                return Err(ScanError::Corrupt(format!(
                    "truncated: the gzip data ends at compressed offset {} in the middle of a member",
                    summary.total_in
                )));
            }
            if start < end {
                return Err(ScanError::Corrupt(format!(
                    "inflate is stuck at compressed offset {}",
                    summary.total_in
                )));
            }
        }
    }
}

/// An inflate stream positioned somewhere in the decompressed data. Reused across reads:
/// a read that starts where (or a little after where) the last one ended goes on
/// without going back to a seek point, so sequential reads inflate each byte once.
///
/// Memory: 64 KiB of input buffer, 32 KiB of scratch and zlib's state (about 40 KiB).
pub struct InflateCursor {
    inflater: Inflater,
    format: StreamFormat,
    /// Offset in the decompressed stream of the next byte it produces; `None` before
    /// its first seek.
    out_pos: Option<u64>,
    /// Compressed offset of the next byte to read into `input`.
    in_pos: u64,
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// Gzip trailer bytes still to skip after a raw stream ended.
    skip: usize,
    scratch: Box<[u8]>,
}

impl std::fmt::Debug for InflateCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflateCursor")
            .field("out_pos", &self.out_pos)
            .finish_non_exhaustive()
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl InflateCursor {
    pub fn new() -> io::Result<Self> {
        Ok(InflateCursor {
            inflater: Inflater::new(StreamFormat::Raw).map_err(io::Error::other)?,
            format: StreamFormat::Raw,
            out_pos: None,
            in_pos: 0,
            input: vec![0; INPUT_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            skip: 0,
            scratch: vec![0; WINDOW_SIZE].into_boxed_slice(),
        })
    }

    /// Where the next byte it produces is, if positioned.
    pub fn position(&self) -> Option<u64> {
        self.out_pos
    }

    fn seek(&mut self, point: &SeekPoint, src: &dyn ReadAt, windows: &[u8]) -> io::Result<()> {
        self.out_pos = None;
        self.inflater
            .reset(StreamFormat::Raw)
            .map_err(io::Error::other)?;
        self.format = StreamFormat::Raw;
        if point.bits > 0 {
            let mut byte = [0u8];
            let at = point
                .input
                .checked_sub(1)
                .ok_or_else(|| invalid("seek point before the archive".into()))?;
            if src.read_at(&mut byte, at)? != 1 {
                return Err(invalid(format!(
                    "the archive ends before compressed offset {at}"
                )));
            }
            self.inflater
                .prime(point.bits, byte[0] >> (8 - point.bits))
                .map_err(io::Error::other)?;
        }
        if point.window_len > 0 {
            let from = usize::try_from(point.window_at).unwrap_or(usize::MAX);
            let deflated = from
                .checked_add(point.window_len as usize)
                .and_then(|to| windows.get(from..to))
                .ok_or_else(|| invalid("seek point window outside the index".into()))?;
            let mut d = Decompress::new(false);
            let status = d
                .decompress(deflated, &mut self.scratch, FlushDecompress::Finish)
                .map_err(|e| invalid(format!("damaged index window: {e}")))?;
            if status != Status::StreamEnd {
                return Err(invalid("damaged index window".into()));
            }
            let n = d.total_out() as usize;
            self.inflater
                .set_dictionary(&self.scratch[..n])
                .map_err(io::Error::other)?;
        }
        self.in_pos = point.input;
        self.start = 0;
        self.end = 0;
        self.skip = 0;
        self.out_pos = Some(point.out);
        Ok(())
    }

    /// Inflates at most `out.len()` bytes at the cursor's position; at least one unless
    /// `out` is empty. An error leaves the cursor unpositioned.
    fn produce(&mut self, src: &dyn ReadAt, out: &mut [u8]) -> io::Result<usize> {
        let result = self.produce_inner(src, out);
        if result.is_err() {
            self.out_pos = None;
        }
        result
    }

    fn produce_inner(&mut self, src: &dyn ReadAt, out: &mut [u8]) -> io::Result<usize> {
        let Some(mut pos) = self.out_pos else {
            return Err(invalid("inflate cursor used before a seek".into()));
        };
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.start == self.end {
                let n = src.read_at(&mut self.input, self.in_pos)?;
                if n == 0 {
                    return Err(invalid(format!(
                        "the archive ends early, at compressed offset {}",
                        self.in_pos
                    )));
                }
                self.start = 0;
                self.end = n;
                self.in_pos += n as u64;
            }
            if self.skip > 0 {
                let n = self.skip.min(self.end - self.start);
                self.start += n;
                self.skip -= n;
                continue;
            }
            let step = self
                .inflater
                .inflate(&self.input[self.start..self.end], out, false)
                .map_err(|e| {
                    invalid(format!(
                        "invalid gzip data near decompressed offset {pos}: {}",
                        e.message
                    ))
                })?;
            self.start += step.consumed;
            pos += step.produced as u64;
            self.out_pos = Some(pos);
            if step.stream_end {
                // A member ended: a raw stream leaves its 8-byte trailer unread, a gzip
                // one has checked it. Either way the next member starts with a header.
                if self.format == StreamFormat::Raw {
                    self.skip = 8;
                }
                self.inflater
                    .reset(StreamFormat::Gzip)
                    .map_err(io::Error::other)?;
                self.format = StreamFormat::Gzip;
            }
            if step.produced > 0 {
                return Ok(step.produced);
            }
            if step.consumed == 0 && !step.stream_end && self.start < self.end {
                return Err(invalid(format!(
                    "inflate is stuck at decompressed offset {pos}"
                )));
            }
        }
    }
}

/// The seek points of one archive and the bytes their windows are in.
#[derive(Debug)]
pub struct GzipIndex {
    points: Vec<SeekPoint>,
    total_out: u64,
    windows: WindowBytes,
}

/// Where the deflated windows are: memory read from the index file (never a mapping).
pub struct WindowBytes {
    bytes: std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for WindowBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowBytes")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl WindowBytes {
    /// `len` bytes at `start` of `bytes`; checked by the caller.
    pub(crate) fn new(
        bytes: std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>,
        start: usize,
        len: usize,
    ) -> Self {
        WindowBytes { bytes, start, len }
    }

    fn get(&self) -> &[u8] {
        let all = (*self.bytes).as_ref();
        all.get(self.start..self.start.saturating_add(self.len))
            .unwrap_or(&[])
    }
}

impl GzipIndex {
    /// An index from checked points (`points[0].out == 0`, increasing).
    pub(crate) fn new(points: Vec<SeekPoint>, total_out: u64, windows: WindowBytes) -> Self {
        GzipIndex {
            points,
            total_out,
            windows,
        }
    }

    /// Size of the decompressed stream.
    pub fn decompressed_size(&self) -> u64 {
        self.total_out
    }

    pub fn points(&self) -> &[SeekPoint] {
        &self.points
    }

    /// The last seek point at or before `pos`.
    fn point_before(&self, pos: u64) -> Option<&SeekPoint> {
        let n = self.points.partition_point(|p| p.out <= pos);
        self.points.get(n.checked_sub(1)?)
    }

    /// Reads decompressed bytes at `pos` into `buf`, using `cursor` (moved as needed);
    /// fills `buf` unless the stream ends first, and returns how many bytes it read.
    pub fn read_at(
        &self,
        src: &dyn ReadAt,
        cursor: &mut InflateCursor,
        pos: u64,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        if pos >= self.total_out || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.total_out - pos) as usize;
        let point = self
            .point_before(pos)
            .ok_or_else(|| invalid("the index has no seek point".into()))?;
        let usable = cursor
            .position()
            .is_some_and(|at| at <= pos && at >= point.out);
        if !usable {
            cursor.seek(point, src, self.windows.get())?;
        }
        let mut scratch = std::mem::take(&mut cursor.scratch);
        let mut skipped = Ok(());
        while let Some(at) = cursor.position().filter(|at| *at < pos) {
            let n = ((pos - at) as usize).min(scratch.len());
            if let Err(e) = cursor.produce(src, &mut scratch[..n]) {
                skipped = Err(e);
                break;
            }
        }
        cursor.scratch = scratch;
        skipped?;
        let mut done = 0;
        while done < want {
            done += cursor.produce(src, &mut buf[done..want])?;
        }
        Ok(want)
    }
}

/// How far a cursor at `at` is from being able to serve `pos`, in bytes to inflate;
/// `None` when it would have to go back to a seek point.
pub fn cursor_distance(index: &GzipIndex, at: Option<u64>, pos: u64) -> Option<u64> {
    let at = at?;
    let point = index.point_before(pos)?;
    (at <= pos && at >= point.out).then(|| pos - at)
}
