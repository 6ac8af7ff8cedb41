//! Tree entries as FUSE attributes, and how long the kernel may cache them.

use std::time::Duration;

use fuser::{FileAttr, FileType, INodeNo};

use crate::layers::EntryKind;
use crate::tree::{InUpper, Node};

/// Layers do not change under a mount: the kernel may keep entries and attributes.
const STABLE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Entries of an on-disk `--contexts` tree, which the user may edit while mounted.
const MUTABLE_TTL: Duration = Duration::from_secs(1);

pub fn ttl(node: &Node) -> Duration {
    if node.mutable {
        MUTABLE_TTL
    } else {
        STABLE_TTL
    }
}

pub fn file_type(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::Dir => FileType::Directory,
        EntryKind::File => FileType::RegularFile,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::Fifo => FileType::NamedPipe,
        EntryKind::Socket => FileType::Socket,
    }
}

pub fn file_attr(ino: u64, node: &Node) -> FileAttr {
    let e = &node.entry;
    FileAttr {
        ino: INodeNo(ino),
        size: e.size,
        blocks: e.size.div_ceil(512),
        atime: e.mtime,
        mtime: e.mtime,
        ctime: e.ctime.unwrap_or(e.mtime),
        crtime: e.mtime,
        kind: file_type(e.kind),
        perm: e.perm,
        // A folder only in the upper layer counts its links as on disk (2 plus one per
        // subfolder); a merged one would need its layers listed: 2, as many FUSE file
        // systems answer.
        nlink: if e.kind == EntryKind::Dir {
            if node.upper == InUpper::Yes && node.branches.is_empty() {
                e.nlink.unwrap_or(2)
            } else {
                2
            }
        } else {
            e.nlink.unwrap_or(1)
        },
        uid: e.uid,
        gid: e.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}
