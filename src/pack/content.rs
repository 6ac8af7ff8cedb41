//! The bytes of a tree entry as a sequential reader, for `render` and `pack`: files on
//! disk read as they are (checked against the size the tree reported), rendered bytes
//! from memory, archive members and `registry.tar` inflated on the fly through the
//! archive's seek index. Nothing is staged on disk.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use crate::archive::{reported, ArchiveSlice};
use crate::layers::{Content, LayerEntry};

/// A reader over exactly `entry.size` bytes of a file entry; a backing file or archive
/// shorter than that is an error, never a short read.
#[derive(Debug)]
pub struct ContentReader {
    source: Inner,
    pos: u64,
    len: u64,
    path: String,
}

#[derive(Debug)]
enum Inner {
    Disk(File),
    Bytes(Arc<[u8]>),
    Archive(ArchiveSlice),
}

impl ContentReader {
    /// Opens the content of the file `entry`, shown at `path` (for messages).
    pub fn open(path: &Path, entry: &LayerEntry) -> io::Result<Self> {
        let shown = path.display().to_string();
        let source = match &entry.content {
            Content::Disk(f) => {
                let file = f.open().map_err(|e| {
                    io::Error::new(e.kind(), format!("{}: {e}", f.path().display()))
                })?;
                let now = file.metadata()?.len();
                if now != entry.size {
                    return Err(io::Error::other(format!(
                        "{} changed while being read ({} bytes listed, {now} now)",
                        f.path().display(),
                        entry.size
                    )));
                }
                Inner::Disk(file)
            }
            Content::Bytes(b) => Inner::Bytes(b.clone()),
            Content::Archive(slice) => {
                slice.archive.check_unchanged()?;
                Inner::Archive(slice.clone())
            }
            Content::Faulty(why) => return Err(reported(format!("{shown}: {why}"))),
            Content::Dir | Content::Link(_) => {
                return Err(io::Error::other(format!("{shown} is not a regular file")))
            }
        };
        Ok(ContentReader {
            source,
            pos: 0,
            len: entry.size,
            path: shown,
        })
    }

    /// The open backing file of a file on disk (read from its start), for copies the
    /// kernel can do without passing the bytes through us (`sendfile`, `splice`,
    /// `copy_file_range`); other contents give the reader back.
    pub fn into_disk_file(self) -> Result<(File, u64), Self> {
        match self.source {
            Inner::Disk(file) if self.pos == 0 => Ok((file, self.len)),
            source => Err(ContentReader { source, ..self }),
        }
    }

    fn short(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "{}: its backing ended after {} of {} bytes",
                self.path, self.pos, self.len
            ),
        )
    }
}

impl Read for ContentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.len - self.pos) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = match &mut self.source {
            Inner::Disk(f) => f.read(&mut buf[..want])?,
            Inner::Bytes(b) => {
                let start = (self.pos as usize).min(b.len());
                let end = (start + want).min(b.len());
                buf[..end - start].copy_from_slice(&b[start..end]);
                end - start
            }
            Inner::Archive(slice) => slice
                .archive
                .read_at(slice.start + self.pos, &mut buf[..want])?,
        };
        if n == 0 {
            return Err(self.short());
        }
        self.pos += n as u64;
        Ok(n)
    }
}
