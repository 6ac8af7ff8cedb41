//! Tar member listing, read in one pass over the decompressed stream (pushed in chunks by
//! the gzip index builder, so the archive is decompressed once for both).
//!
//! Formats: v7, POSIX ustar (with its name prefix), GNU (`L`/`K` long names and links,
//! base-256 numbers) and pax (`x` records: `path`, `linkpath`, `size`, `mtime`; `g`
//! global records are skipped). Every header's checksum is verified.
//!
//! Names (docs/DESIGN.md §6), the rule every member goes through, see [`member_path`]:
//! - leading `./`, empty and `.` components are dropped; a trailing `/` is ignored;
//! - absolute names (`/etc/passwd`) and names with a `..` component are **refused**: the
//!   member is left out of the listing and counted in [`TarListing::refused`];
//! - the same path twice: both stay in [`TarListing::members`], in archive order, and
//!   [`TarListing::get`] answers with the **last** one, which is what `tar -x` leaves
//!   on disk;
//! - a hard link (`1`) becomes a copy of the member it names (the last one of that path
//!   before it, as when extracting): a regular file with the same data offset and size,
//!   or a symlink with the same target; a hard link to nothing known is refused;
//! - a symlink (`2`) keeps its target as stored; nothing here resolves it;
//! - devices, fifos, GNU sparse files and pax sparse files are listed as
//!   [`MemberKind::Other`] and never served.
//!
//! Limits against hostile archives: at most [`MAX_MEMBERS`] members and [`MAX_NAME_BYTES`]
//! bytes of names, extension records (long names, pax) of at most [`MAX_EXTENSION`]
//! bytes each; past any of these the listing fails.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const BLOCK: usize = 512;
/// Members per archive, whatever it claims: a listing is kept in memory.
pub const MAX_MEMBERS: usize = 200_000;
/// Bytes of member names and link targets per archive.
pub const MAX_NAME_BYTES: usize = 64 << 20;
/// Size of one GNU long name or pax extended header.
pub const MAX_EXTENSION: u64 = 1 << 20;
/// How many refused names are kept for the log (all are counted).
const REFUSED_KEPT: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberKind {
    /// A regular file (or a hard link to one): bytes at `data_offset`.
    File,
    Dir,
    Symlink,
    /// Devices, fifos, sparse files: listed, never served.
    Other,
}

impl MemberKind {
    fn code(self) -> u8 {
        match self {
            MemberKind::File => 0,
            MemberKind::Dir => 1,
            MemberKind::Symlink => 2,
            MemberKind::Other => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => MemberKind::File,
            1 => MemberKind::Dir,
            2 => MemberKind::Symlink,
            3 => MemberKind::Other,
            _ => return None,
        })
    }
}

/// One member of a tar stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarMember {
    /// Normalised relative path (see the module doc).
    pub path: PathBuf,
    pub kind: MemberKind,
    /// Offset of the member's bytes in the decompressed stream.
    pub data_offset: u64,
    pub size: u64,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// A symlink's target as stored, or the path a hard link was made from.
    pub link: Option<PathBuf>,
}

/// Why a member was left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub name: String,
    pub reason: &'static str,
}

/// The members of a tar stream, in archive order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TarListing {
    pub members: Vec<TarMember>,
    /// How many members were refused (absolute or `..` names, dangling hard links).
    pub refused: u64,
    /// The first few refused names, for the log.
    pub refused_examples: Vec<Refusal>,
}

impl TarListing {
    /// The member at `path`: the last one of that path, as `tar -x` leaves it.
    pub fn get(&self, path: &Path) -> Option<&TarMember> {
        self.members.iter().rev().find(|m| m.path == path)
    }

    /// Appends the listing to `out` (the index file format).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let put_bytes = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        };
        out.extend_from_slice(&(self.members.len() as u64).to_le_bytes());
        for m in &self.members {
            put_bytes(out, m.path.as_os_str().as_bytes());
            out.push(m.kind.code());
            out.extend_from_slice(&m.mode.to_le_bytes());
            out.extend_from_slice(&m.mtime.to_le_bytes());
            out.extend_from_slice(&m.data_offset.to_le_bytes());
            out.extend_from_slice(&m.size.to_le_bytes());
            match &m.link {
                Some(l) => {
                    out.push(1);
                    put_bytes(out, l.as_os_str().as_bytes());
                }
                None => out.push(0),
            }
        }
        out.extend_from_slice(&self.refused.to_le_bytes());
        out.extend_from_slice(&(self.refused_examples.len() as u32).to_le_bytes());
        for r in &self.refused_examples {
            put_bytes(out, r.name.as_bytes());
            let code = REFUSAL_REASONS
                .iter()
                .position(|x| *x == r.reason)
                .unwrap_or(0) as u8;
            out.push(code);
        }
    }

    /// Reads a listing written by [`TarListing::encode`]; `None` if it is malformed.
    pub(crate) fn decode(bytes: &[u8], stream_len: u64) -> Option<TarListing> {
        let mut r = ByteReader { bytes, at: 0 };
        let count = usize::try_from(r.u64()?).ok()?;
        if count > MAX_MEMBERS {
            return None;
        }
        let mut members = Vec::with_capacity(count);
        for _ in 0..count {
            let path = PathBuf::from(OsStr::from_bytes(r.bytes()?));
            let kind = MemberKind::from_code(r.u8()?)?;
            let mode = r.u32()?;
            let mtime = r.u64()? as i64;
            let data_offset = r.u64()?;
            let size = r.u64()?;
            if data_offset.checked_add(size)? > stream_len {
                return None;
            }
            let link = match r.u8()? {
                0 => None,
                1 => Some(PathBuf::from(OsStr::from_bytes(r.bytes()?))),
                _ => return None,
            };
            members.push(TarMember {
                path,
                kind,
                data_offset,
                size,
                mode,
                mtime,
                link,
            });
        }
        let refused = r.u64()?;
        let examples = r.u32()? as usize;
        if examples > REFUSED_KEPT {
            return None;
        }
        let mut refused_examples = Vec::with_capacity(examples);
        for _ in 0..examples {
            let name = String::from_utf8_lossy(r.bytes()?).into_owned();
            let reason = REFUSAL_REASONS.get(r.u8()? as usize)?;
            refused_examples.push(Refusal { name, reason });
        }
        (r.at == bytes.len()).then_some(TarListing {
            members,
            refused,
            refused_examples,
        })
    }
}

const REFUSAL_REASONS: &[&str] = &[
    "absolute path",
    "`..` in path",
    "hard link to an unknown member",
];

/// Bounds-checked little-endian reads (index files are checked, but never trusted).
pub(crate) struct ByteReader<'a> {
    pub bytes: &'a [u8],
    pub at: usize,
}

impl<'a> ByteReader<'a> {
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// Normalises a member name (see the module doc): `Ok(None)` for the archive root
/// (`./`), `Err` for a refused name.
pub fn member_path(raw: &[u8]) -> Result<Option<PathBuf>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err(REFUSAL_REASONS[0]);
    }
    let mut out = PathBuf::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(REFUSAL_REASONS[1]),
            name => out.push(OsStr::from_bytes(name)),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// A header field up to its first NUL.
fn field(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|b| *b == 0) {
        Some(n) => &bytes[..n],
        None => bytes,
    }
}

/// A numeric header field: octal text, or GNU base-256 when the high bit is set.
/// `None` for a malformed or negative value.
fn parse_number(bytes: &[u8]) -> Option<u64> {
    let first = *bytes.first()?;
    if first & 0x80 != 0 {
        if first & 0x40 != 0 {
            return None; // negative
        }
        let mut v = u64::from(first & 0x3f);
        for b in &bytes[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    let text = field(bytes);
    let text = text.trim_ascii();
    let mut v: u64 = 0;
    for b in text {
        if !(b'0'..=b'7').contains(b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Decimal digits of a pax record (`size`); `None` when malformed.
fn parse_decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for b in text {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// A pax `mtime` (`-12.5`, `1700000000.123`): whole seconds, rounded down.
fn parse_pax_time(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let whole = digits.split(|b| *b == b'.').next()?;
    let v = i64::try_from(parse_decimal(whole)?).ok()?;
    Some(if negative { -v } else { v })
}

fn header_checksum_ok(h: &[u8; BLOCK]) -> bool {
    let Some(stored) = parse_number(&h[148..156]) else {
        return false;
    };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

#[derive(Debug, Default)]
struct Extensions {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    pax_link: Option<Vec<u8>>,
    pax_size: Option<u64>,
    pax_mtime: Option<i64>,
    pax_sparse: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExtensionKind {
    LongName,
    LongLink,
    Pax,
    PaxGlobal,
}

#[derive(Debug)]
enum State {
    /// Collecting the next 512-byte header.
    Header,
    /// Skipping a member's bytes and their padding.
    Skip {
        remaining: u64,
    },
    /// Collecting an extension record, then skipping `pad` bytes.
    Extension {
        kind: ExtensionKind,
        data: Vec<u8>,
        remaining: u64,
        pad: u64,
    },
    /// The end-of-archive block was seen: the rest of the stream is ignored.
    End,
    Failed,
}

/// Builds a [`TarListing`] from a tar stream pushed in chunks of any size.
#[derive(Debug)]
pub struct TarScanner {
    /// Stream offset of the next byte fed.
    pos: u64,
    state: State,
    header: Box<[u8; BLOCK]>,
    filled: usize,
    ext: Extensions,
    listing: TarListing,
    /// Last member index of each path (hard links name earlier members).
    by_path: HashMap<PathBuf, usize>,
    name_bytes: usize,
    fault: Option<String>,
}

impl Default for TarScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl TarScanner {
    pub fn new() -> Self {
        TarScanner {
            pos: 0,
            state: State::Header,
            header: Box::new([0; BLOCK]),
            filled: 0,
            ext: Extensions::default(),
            listing: TarListing::default(),
            by_path: HashMap::new(),
            name_bytes: 0,
            fault: None,
        }
    }

    fn fail(&mut self, message: String) {
        self.fault = Some(format!("{message} (tar stream offset {})", self.pos));
        self.state = State::Failed;
    }

    /// The first problem found, if any.
    pub fn fault(&self) -> Option<&str> {
        self.fault.as_deref()
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::End | State::Failed => {
                    self.pos += data.len() as u64;
                    return;
                }
                State::Skip { remaining } => {
                    let n = (*remaining).min(data.len() as u64);
                    *remaining -= n;
                    if *remaining == 0 {
                        self.state = State::Header;
                    }
                    self.pos += n;
                    data = &data[n as usize..];
                }
                State::Extension {
                    data: buf,
                    remaining,
                    pad,
                    kind,
                } => {
                    let n = (*remaining).min(data.len() as u64) as usize;
                    buf.extend_from_slice(&data[..n]);
                    *remaining -= n as u64;
                    self.pos += n as u64;
                    data = &data[n..];
                    if *remaining == 0 {
                        let (kind, buf, pad) = (*kind, std::mem::take(buf), *pad);
                        self.state = if pad > 0 {
                            State::Skip { remaining: pad }
                        } else {
                            State::Header
                        };
                        self.extension_done(kind, buf);
                    }
                }
                State::Header => {
                    let n = (BLOCK - self.filled).min(data.len());
                    self.header[self.filled..self.filled + n].copy_from_slice(&data[..n]);
                    self.filled += n;
                    self.pos += n as u64;
                    data = &data[n..];
                    if self.filled == BLOCK {
                        self.filled = 0;
                        self.header_done();
                    }
                }
            }
        }
    }

    /// Ends the stream; the listing, or what was wrong with the stream.
    pub fn finish(mut self) -> Result<TarListing, (String, TarListing)> {
        let truncated = match &self.state {
            State::Header => self.filled != 0,
            State::Skip { .. } | State::Extension { .. } => true,
            State::End | State::Failed => false,
        };
        if truncated {
            self.fail("the tar stream ends in the middle of a member".into());
        }
        match self.fault {
            Some(fault) => Err((fault, self.listing)),
            None => Ok(self.listing),
        }
    }

    fn extension_done(&mut self, kind: ExtensionKind, data: Vec<u8>) {
        match kind {
            ExtensionKind::LongName => self.ext.long_name = Some(field(&data).to_vec()),
            ExtensionKind::LongLink => self.ext.long_link = Some(field(&data).to_vec()),
            ExtensionKind::PaxGlobal => {}
            ExtensionKind::Pax => {
                if let Err(e) = self.pax_records(&data) {
                    self.fail(format!("bad pax header: {e}"));
                }
            }
        }
    }

    fn pax_records(&mut self, mut data: &[u8]) -> Result<(), &'static str> {
        while !data.is_empty() {
            // "%d %s=%s\n", the length counting the whole record.
            let space = data
                .iter()
                .position(|b| *b == b' ')
                .ok_or("record without length")?;
            let len = parse_decimal(&data[..space]).ok_or("bad record length")? as usize;
            if len <= space + 1 || len > data.len() {
                return Err("record length out of bounds");
            }
            let record = &data[space + 1..len];
            data = &data[len..];
            let record = record.strip_suffix(b"\n").ok_or("record without newline")?;
            let eq = record
                .iter()
                .position(|b| *b == b'=')
                .ok_or("record without '='")?;
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            match key {
                b"path" => self.ext.pax_path = Some(value.to_vec()),
                b"linkpath" => self.ext.pax_link = Some(value.to_vec()),
                b"size" => self.ext.pax_size = Some(parse_decimal(value).ok_or("bad size")?),
                b"mtime" => self.ext.pax_mtime = Some(parse_pax_time(value).ok_or("bad mtime")?),
                k if k.starts_with(b"GNU.sparse.") => self.ext.pax_sparse = true,
                _ => {}
            }
        }
        Ok(())
    }

    fn header_done(&mut self) {
        let h = *self.header;
        if h.iter().all(|b| *b == 0) {
            self.state = State::End;
            return;
        }
        if !header_checksum_ok(&h) {
            self.fail("bad tar header checksum".into());
            return;
        }
        let typeflag = h[156];
        let Some(header_size) = parse_number(&h[124..136]) else {
            self.fail("bad size field".into());
            return;
        };
        let padded = |size: u64| size.div_ceil(BLOCK as u64).checked_mul(BLOCK as u64);
        let extension = match typeflag {
            b'L' => Some(ExtensionKind::LongName),
            b'K' => Some(ExtensionKind::LongLink),
            b'x' => Some(ExtensionKind::Pax),
            b'g' => Some(ExtensionKind::PaxGlobal),
            _ => None,
        };
        if let Some(kind) = extension {
            if header_size > MAX_EXTENSION {
                self.fail(format!("extension header of {header_size} bytes"));
                return;
            }
            let pad = padded(header_size).unwrap_or(0) - header_size;
            self.state = match header_size {
                0 => State::Header,
                _ => State::Extension {
                    kind,
                    data: Vec::new(),
                    remaining: header_size,
                    pad,
                },
            };
            return;
        }
        let ext = std::mem::take(&mut self.ext);
        let size = ext.pax_size.unwrap_or(header_size);
        let Some(skip) = padded(size) else {
            self.fail(format!("member size {size} out of range"));
            return;
        };
        let data_offset = self.pos;
        self.state = if skip > 0 {
            State::Skip { remaining: skip }
        } else {
            State::Header
        };

        let ustar = &h[257..263] == b"ustar\0";
        let raw_name = match (ext.long_name, ext.pax_path) {
            (_, Some(p)) => p,
            (Some(n), None) => n,
            (None, None) => {
                let name = field(&h[0..100]);
                let prefix = field(&h[345..500]);
                if ustar && !prefix.is_empty() {
                    [prefix, b"/", name].concat()
                } else {
                    name.to_vec()
                }
            }
        };
        let raw_link = ext
            .pax_link
            .or(ext.long_link)
            .unwrap_or_else(|| field(&h[157..257]).to_vec());
        let path = match member_path(&raw_name) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(reason) => return self.refuse(&raw_name, reason),
        };
        let Some(mode) = parse_number(&h[100..108]) else {
            self.fail("bad mode field".into());
            return;
        };
        let mtime = match ext.pax_mtime {
            Some(t) => t,
            // A negative base-256 time is read as the epoch.
            None => parse_number(&h[136..148]).map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)),
        };
        let mode = (mode & 0o7777) as u32;
        let mut member = TarMember {
            path,
            kind: MemberKind::Other,
            data_offset,
            size,
            mode,
            mtime,
            link: None,
        };
        match typeflag {
            b'0' | 0 | b'7' if !ext.pax_sparse => member.kind = MemberKind::File,
            b'5' => member.kind = MemberKind::Dir,
            b'2' => {
                member.kind = MemberKind::Symlink;
                member.link = Some(PathBuf::from(OsStr::from_bytes(&raw_link)));
            }
            b'1' => {
                let target = match member_path(&raw_link) {
                    Ok(Some(t)) => t,
                    _ => return self.refuse(&raw_name, REFUSAL_REASONS[2]),
                };
                let Some(original) = self
                    .by_path
                    .get(&target)
                    .map(|i| self.listing.members[*i].clone())
                else {
                    return self.refuse(&raw_name, REFUSAL_REASONS[2]);
                };
                member.kind = original.kind;
                member.mode = original.mode;
                member.mtime = original.mtime;
                match original.kind {
                    MemberKind::File => {
                        member.data_offset = original.data_offset;
                        member.size = original.size;
                        member.link = Some(target);
                    }
                    MemberKind::Symlink => member.link = original.link,
                    _ => member.kind = MemberKind::Other,
                }
            }
            // Hard links' and others' bytes (if any) are skipped; GNU sparse ('S') and
            // pax sparse files stay Other: their stored bytes are not the file.
            _ => {}
        }
        self.push(member);
    }

    fn refuse(&mut self, raw_name: &[u8], reason: &'static str) {
        self.listing.refused += 1;
        if self.listing.refused_examples.len() < REFUSED_KEPT {
            let name = String::from_utf8_lossy(raw_name).into_owned();
            self.listing.refused_examples.push(Refusal { name, reason });
        }
    }

    fn push(&mut self, member: TarMember) {
        self.name_bytes +=
            member.path.as_os_str().len() + member.link.as_ref().map_or(0, |l| l.as_os_str().len());
        if self.listing.members.len() >= MAX_MEMBERS || self.name_bytes > MAX_NAME_BYTES {
            self.fail(format!(
                "more than {MAX_MEMBERS} members or {MAX_NAME_BYTES} bytes of names"
            ));
            return;
        }
        self.by_path
            .insert(member.path.clone(), self.listing.members.len());
        self.listing.members.push(member);
    }
}

/// Lists a whole tar stream held in memory (tests, fuzzing).
pub fn list_tar(bytes: &[u8]) -> Result<TarListing, (String, TarListing)> {
    let mut scanner = TarScanner::new();
    scanner.feed(bytes);
    scanner.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ustar header for `name` with `size` bytes of data, typeflag and link.
    fn header(name: &[u8], size: u64, typeflag: u8, link: &[u8]) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name);
        h[100..107].copy_from_slice(b"0000755");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"14524770400");
        h[156] = typeflag;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn member(out: &mut Vec<u8>, name: &[u8], data: &[u8], typeflag: u8, link: &[u8]) {
        out.extend_from_slice(&header(name, data.len() as u64, typeflag, link));
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(BLOCK), 0);
    }

    /// One pax record, its length prefix counting itself.
    fn pax_record(key: &str, value: &str) -> String {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while (len.to_string().len() + body.len()) != len {
            len += 1;
        }
        format!("{len}{body}")
    }

    #[test]
    fn names_are_normalised_or_refused() {
        assert_eq!(
            member_path(b"./bin//crictl").unwrap(),
            Some(PathBuf::from("bin/crictl"))
        );
        assert_eq!(member_path(b"./").unwrap(), None);
        assert!(member_path(b"/etc/passwd").is_err());
        assert!(member_path(b"a/../../etc").is_err());
        assert_eq!(member_path(b"a/..b").unwrap(), Some(PathBuf::from("a/..b")));
    }

    #[test]
    fn lists_members_with_offsets_links_and_refusals() {
        let mut tar = Vec::new();
        member(&mut tar, b"./", b"", b'5', b"");
        member(&mut tar, b"bin/tool", b"tool bytes", b'0', b"");
        member(&mut tar, b"bin/alias", b"", b'2', b"tool");
        member(&mut tar, b"bin/hard", b"", b'1', b"./bin/tool");
        member(&mut tar, b"../evil", b"x", b'0', b"");
        member(&mut tar, b"/abs", b"x", b'0', b"");
        member(&mut tar, b"bin/dangling", b"", b'1', b"nope");
        member(&mut tar, b"bin/tool", b"second", b'0', b"");
        tar.extend_from_slice(&[0u8; 1024]);
        // Anything after the end-of-archive blocks is ignored.
        tar.extend_from_slice(b"trailing junk");

        // Fed in awkward chunk sizes: same result as in one go.
        let whole = list_tar(&tar).unwrap();
        let mut scanner = TarScanner::new();
        for chunk in tar.chunks(7) {
            scanner.feed(chunk);
        }
        assert_eq!(scanner.finish().unwrap(), whole);

        let names: Vec<_> = whole
            .members
            .iter()
            .map(|m| m.path.to_str().unwrap())
            .collect();
        assert_eq!(names, ["bin/tool", "bin/alias", "bin/hard", "bin/tool"]);
        assert_eq!(whole.refused, 3);
        let first = &whole.members[0];
        assert_eq!(
            (first.data_offset, first.size, first.mode),
            (1024, 10, 0o755)
        );
        assert_eq!(&tar[1024..1034], b"tool bytes");
        assert_eq!(whole.members[1].kind, MemberKind::Symlink);
        assert_eq!(whole.members[1].link.as_deref(), Some(Path::new("tool")));
        // The hard link is the first "bin/tool", not the later one.
        assert_eq!(whole.members[2].kind, MemberKind::File);
        assert_eq!(
            (whole.members[2].data_offset, whole.members[2].size),
            (1024, 10)
        );
        // The last member of a path wins.
        assert_eq!(whole.get(Path::new("bin/tool")).unwrap().size, 6);

        let mut encoded = Vec::new();
        whole.encode(&mut encoded);
        assert_eq!(
            TarListing::decode(&encoded, tar.len() as u64),
            Some(whole.clone())
        );
        assert_eq!(
            TarListing::decode(&encoded[..encoded.len() - 1], tar.len() as u64),
            None
        );
        assert_eq!(TarListing::decode(&encoded, 100), None);
    }

    #[test]
    fn gnu_long_names_and_pax_records() {
        let long = "d/".repeat(80) + "file";
        let mut tar = Vec::new();
        member(
            &mut tar,
            b"././@LongLink",
            format!("{long}\0").as_bytes(),
            b'L',
            b"",
        );
        member(&mut tar, b"short", b"abc", b'0', b"");
        let pax = pax_record("path", "pax/name/from/record") + &pax_record("mtime", "1700000001.5");
        member(&mut tar, b"PaxHeaders/x", pax.as_bytes(), b'x', b"");
        member(&mut tar, b"ignored", b"hello", b'0', b"");
        member(&mut tar, b"GNUSparseFile.0/s", b"", b'S', b"");
        tar.extend_from_slice(&[0u8; 1024]);
        let listing = list_tar(&tar).unwrap();
        assert_eq!(listing.members[0].path, PathBuf::from(&long));
        assert_eq!(
            listing.members[1].path,
            PathBuf::from("pax/name/from/record")
        );
        assert_eq!(listing.members[1].mtime, 1700000001);
        assert_eq!(listing.members[2].kind, MemberKind::Other);
    }

    #[test]
    fn corrupt_and_hostile_streams_fail_without_panicking() {
        let mut tar = Vec::new();
        member(&mut tar, b"a", b"abc", b'0', b"");
        let mut bad = tar.clone();
        bad[10] ^= 1;
        assert!(list_tar(&bad).unwrap_err().0.contains("checksum"));
        // Truncated in the data, then in a header.
        assert!(list_tar(&tar[..600]).is_err());
        assert!(list_tar(&tar[..100]).is_err());
        // An extension header claiming a huge size.
        let mut huge = header(b"x", MAX_EXTENSION + 1, b'x', b"").to_vec();
        huge.extend_from_slice(&[0; 1024]);
        assert!(list_tar(&huge).unwrap_err().0.contains("extension"));
        // Bad pax records.
        for pax in ["99 path=x\n", "5 x\n", "abc", "6 path\n"] {
            let mut t = Vec::new();
            member(&mut t, b"p", pax.as_bytes(), b'x', b"");
            member(&mut t, b"a", b"", b'0', b"");
            assert!(list_tar(&t).is_err(), "{pax:?}");
        }
        // Base-256 sizes: huge but valid numbers are refused as out of range.
        let mut h = header(b"big", 0, b'0', b"");
        h[124..136].copy_from_slice(&[
            0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]);
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        assert!(list_tar(&h).is_err());
        // Random garbage.
        let mut x: u32 = 12345;
        let noise: Vec<u8> = (0..5000)
            .map(|_| {
                x = x.wrapping_mul(1103515245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        assert!(list_tar(&noise).is_err());
    }
}
