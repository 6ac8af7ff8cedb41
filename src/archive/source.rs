//! Where an archive's bytes are read from: a file of the cache on disk, or an object of a
//! remote store read by range through the local block cache (`crate::remote`). The index
//! and the readers only need reads at offsets, an identity and the attributes shown.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::time::SystemTime;

use super::{ArchiveIdentity, ReadAt};

/// Owner, mode and mtime of an archive, shown on what it presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceAttrs {
    /// `st_mode & 0o7777`.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

/// The bytes of one archive.
pub trait ArchiveSource: ReadAt + Send + Sync + fmt::Debug {
    /// Size, mtime and CRC of the head: what its index is keyed by.
    fn identity(&self) -> io::Result<ArchiveIdentity>;
    /// Whether the bytes are still those `identity` was taken from.
    fn unchanged(&self, identity: &ArchiveIdentity) -> io::Result<bool>;
    fn attrs(&self) -> io::Result<SourceAttrs>;
    /// The bytes whole in one plain local file that stays as it is, which the kernel may
    /// read directly (a remote object whose blocks are all verified in the local cache).
    fn local_file(&self) -> Option<File> {
        None
    }
}

impl ArchiveSource for File {
    fn identity(&self) -> io::Result<ArchiveIdentity> {
        let meta = self.metadata()?;
        ArchiveIdentity::of_bytes(
            self,
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec().clamp(0, 999_999_999) as u32,
        )
    }

    fn unchanged(&self, identity: &ArchiveIdentity) -> io::Result<bool> {
        Ok(identity.same_stat(&self.metadata()?))
    }

    fn attrs(&self) -> io::Result<SourceAttrs> {
        let meta = self.metadata()?;
        Ok(SourceAttrs {
            perm: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: crate::sys::system_time(meta.mtime(), meta.mtime_nsec()),
        })
    }
}
