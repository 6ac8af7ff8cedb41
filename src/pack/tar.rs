//! A tar stream of the tree with the bytes GNU tar 1.34 writes for
//! `tar --sort=name --owner=0 --group=0 --numeric-owner -cf - -C MOUNT .` (its default
//! `gnu` format):
//! - names start with `./` (the root is `./`), folders end with `/`;
//! - a name or link target over 100 bytes is carried by a `././@LongLink` record of type
//!   `L` (name) or `K` (target) before the header, whose own field keeps the first 100;
//! - mode holds the permission bits only, owner and group are 0 with empty names,
//!   mtime is in whole seconds, folders and symlinks have size 0;
//! - numbers are octal, zero-padded, NUL-terminated; too big for octal (a file of 8 GiB
//!   or more) they are base-256, as GNU tar writes them;
//! - magic `ustar  \0`, checksum as 6 octal digits, NUL, space;
//! - two zero blocks at the end, and the stream is padded to a record of 20 blocks
//!   (10240 bytes).
//!
//! The OCI layer of `pack --format oci` uses the same writer with bare names (`etc/`,
//! no root entry), as image layers are written.

use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use super::content::ContentReader;
use crate::layers::{Content, EntryKind};
use crate::tree::Node;

const BLOCK: usize = 512;
/// GNU tar's default blocking factor (`-b20`).
pub const RECORD: u64 = 20 * BLOCK as u64;
const NAME_FIELD: usize = 100;
const COPY_BUF: usize = 1 << 20;

/// How entry names are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// `./` and `./path`, as `tar -C DIR .` writes them.
    DotSlash,
    /// `path` with no root entry, as image layers are written.
    Bare,
}

/// Writes tar entries to `out`, counting bytes for the final record padding.
pub struct TarWriter<W: Write> {
    out: W,
    written: u64,
    naming: Naming,
    buf: Vec<u8>,
}

/// Writes `value` into `field` as GNU tar does: octal digits filling all but the last
/// byte (a NUL), or base-256 (first byte 0x80) when octal cannot hold it.
pub(crate) fn number_field(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    if digits * 3 >= 64 || value < (1u64 << (3 * digits)) {
        let text = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(text.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        field[0] = 0x80;
        let bytes = value.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&bytes);
    }
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One 512-byte header block.
fn header(name: &[u8], mode: u32, size: u64, mtime: u64, typeflag: u8, link: &[u8]) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let n = name.len().min(NAME_FIELD);
    h[..n].copy_from_slice(&name[..n]);
    number_field(&mut h[100..108], u64::from(mode & 0o7777));
    number_field(&mut h[108..116], 0);
    number_field(&mut h[116..124], 0);
    number_field(&mut h[124..136], size);
    number_field(&mut h[136..148], mtime);
    h[156] = typeflag;
    let l = link.len().min(NAME_FIELD);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..265].copy_from_slice(b"ustar  \0");
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    number_field(&mut h[148..155], sum);
    h
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W, naming: Naming) -> Self {
        TarWriter {
            out,
            written: 0,
            naming,
            buf: Vec::new(),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rest = (self.written % BLOCK as u64) as usize;
        if rest != 0 {
            self.put(&[0u8; BLOCK][..BLOCK - rest])?;
        }
        Ok(())
    }

    /// A `././@LongLink` record carrying a name (`L`) or link target (`K`).
    fn long_link(&mut self, typeflag: u8, value: &[u8]) -> io::Result<()> {
        let h = header(
            b"././@LongLink",
            0o644,
            value.len() as u64 + 1,
            0,
            typeflag,
            b"",
        );
        self.put(&h)?;
        self.put(value)?;
        self.put(&[0])?;
        self.pad()
    }

    /// The name `path` (relative to the tree root) is written under.
    fn name_of(&self, path: &Path, kind: EntryKind) -> Vec<u8> {
        let mut name = match self.naming {
            Naming::DotSlash => b"./".to_vec(),
            Naming::Bare => Vec::new(),
        };
        let rel = path.as_os_str().as_bytes();
        name.extend_from_slice(rel);
        if kind == EntryKind::Dir && !rel.is_empty() {
            name.push(b'/');
        }
        name
    }

    /// Appends the entry `node` at `path`, with its bytes for a file.
    pub fn append(&mut self, path: &Path, node: &Node) -> io::Result<()> {
        let entry = &node.entry;
        let name = self.name_of(path, entry.kind);
        let mtime = seconds(entry.mtime);
        let mode = u32::from(entry.perm);
        match (&entry.kind, &entry.content) {
            (EntryKind::Dir, _) => {
                self.long_name(&name)?;
                self.put(&header(&name, mode, 0, mtime, b'5', b""))
            }
            (EntryKind::Symlink, Content::Link(target)) => {
                let target = target.as_os_str().as_bytes();
                if target.len() > NAME_FIELD {
                    self.long_link(b'K', target)?;
                }
                self.long_name(&name)?;
                self.put(&header(&name, mode, 0, mtime, b'2', target))
            }
            (EntryKind::Symlink, _) => Err(io::Error::other(format!(
                "{}: a symlink without a target",
                path.display()
            ))),
            (EntryKind::File, _) => {
                // Opened first: a file that cannot be read fails before its header.
                let reader = ContentReader::open(path, entry)?;
                self.long_name(&name)?;
                self.put(&header(&name, mode, entry.size, mtime, b'0', b""))?;
                match reader.into_disk_file() {
                    Ok((file, len)) => self.copy_file(&file, len, path)?,
                    Err(mut reader) => self.copy(&mut reader)?,
                }
                self.pad()
            }
        }
    }

    /// The `L` record of a name too long for the header.
    fn long_name(&mut self, name: &[u8]) -> io::Result<()> {
        if name.len() > NAME_FIELD {
            self.long_link(b'L', name)?;
        }
        Ok(())
    }

    /// Copies `len` bytes of a file on disk with `io::copy`, which lets the kernel move
    /// them (`copy_file_range` to a file, `splice`/`sendfile` to a pipe) when the output
    /// is one; a file that ends early is an error.
    fn copy_file(&mut self, file: &std::fs::File, len: u64, path: &Path) -> io::Result<()> {
        let copied = io::copy(&mut file.take(len), &mut self.out)?;
        self.written += copied;
        if copied < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: its backing ended after {copied} of {len} bytes",
                    path.display()
                ),
            ));
        }
        Ok(())
    }

    fn copy(&mut self, reader: &mut ContentReader) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(COPY_BUF, 0);
        let result = (|| loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.put(&buf[..n])?;
        })();
        self.buf = buf;
        result
    }

    /// Ends the archive: two zero blocks, then zeros up to a whole record. Returns the
    /// output and the bytes written in all.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.put(&[0u8; 2 * BLOCK])?;
        let rest = self.written % RECORD;
        if rest != 0 {
            let zeros = vec![0u8; (RECORD - rest) as usize];
            self.put(&zeros)?;
        }
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}
