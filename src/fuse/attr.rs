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

/// A folder's link count. One only in the upper layer (no layer has it, none is rooted
/// below it) counts its links as on disk (2 plus one per subfolder). Any other folder merges layers or is made up (archive
/// members, embedded and rendered contexts): counting its subfolders would mean listing
/// every layer at each `stat`, so it answers 1, the count that means "not counted" (as
/// btrfs answers for every folder). A fixed 2 would claim "no subfolders", which a
/// walker that trusts link counts (find's leaf optimisation) takes as leave to skip
/// them; with 1 it does not (GNU find and fts check for 1 before they count).
fn folder_links(node: &Node) -> u32 {
    match node.entry.nlink {
        Some(links) if node.upper == InUpper::Yes && node.branches.is_empty() => links,
        _ => 1,
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
        nlink: if e.kind == EntryKind::Dir {
            folder_links(node)
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
