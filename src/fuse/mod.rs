//! The FUSE adapter: maps kernel requests onto [`MergedTree`] calls and their errors onto
//! errnos. No filesystem logic lives here.

mod attr;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use crate::tree::{FsError, MergedTree};
use attr::{file_attr, file_type, ttl};

/// The get-only extended attribute that tells where a file comes from (SPEC §6).
pub const SOURCE_XATTR: &str = "user.rootfs.source";

pub struct BuildFs {
    tree: MergedTree,
}

impl BuildFs {
    pub fn new(tree: MergedTree) -> Self {
        BuildFs { tree }
    }
}

/// The one place errors are logged and turned into an errno.
fn errno(op: &str, ino: u64, err: FsError) -> Errno {
    if err.is_expected() {
        tracing::debug!(op, ino, %err);
    } else {
        tracing::warn!(op, ino, %err);
    }
    Errno::from_i32(err.errno)
}

fn read_only(op: &str) -> Errno {
    tracing::debug!(op, "refused: the mount is read-only");
    Errno::EROFS
}

impl Filesystem for BuildFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // READDIRPLUS answers `ls -l` and `find` walks with the attributes in one trip.
        let wanted = InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO;
        if let Err(missing) = config.add_capabilities(wanted) {
            tracing::info!(?missing, "kernel lacks some FUSE capabilities");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.tree.lookup(parent.0, name) {
            Ok((ino, node)) => reply.entry(&ttl(&node), &file_attr(ino, &node), Generation(0)),
            Err(e) => reply.error(errno("lookup", parent.0, e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.tree.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree.getattr(ino.0) {
            Ok(node) => reply.attr(&ttl(&node), &file_attr(ino.0, &node)),
            Err(e) => reply.error(errno("getattr", ino.0, e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.tree.readlink(ino.0) {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(e) => reply.error(errno("readlink", ino.0, e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(read_only("open"));
        }
        match self.tree.open(ino.0) {
            // Content never changes while a file is open: keep the page cache across opens.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno("open", ino.0, e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        match self.tree.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno("read", ino.0, e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.tree.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.tree.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("opendir", ino.0, e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let items = match self.tree.listing(fh.0) {
            Ok(items) => items,
            Err(e) => return reply.error(errno("readdir", ino.0, e)),
        };
        let dots = [(ino.0, "."), (self.tree.parent_of(ino.0), "..")];
        let dot_entries = dots
            .iter()
            .map(|(i, n)| (*i, fuser::FileType::Directory, OsStr::new(*n)));
        let entries = dot_entries.chain(
            items
                .iter()
                .map(|it| (it.ino, file_type(it.kind), it.name.as_os_str())),
        );
        for (index, (entry_ino, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(entry_ino), index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let items = match self.tree.listing(fh.0) {
            Ok(items) => items,
            Err(e) => return reply.error(errno("readdirplus", ino.0, e)),
        };
        // `.` and `..` are not lookups for the kernel; every other entry is one.
        for index in offset as usize..items.len() + 2 {
            let full = if index < 2 {
                let dir = if index == 0 {
                    ino.0
                } else {
                    self.tree.parent_of(ino.0)
                };
                let name = if index == 0 { "." } else { ".." };
                match self.tree.getattr(dir) {
                    Ok(node) => reply.add(
                        INodeNo(dir),
                        index as u64 + 1,
                        name,
                        &ttl(&node),
                        &file_attr(dir, &node),
                        Generation(0),
                    ),
                    Err(_) => continue,
                }
            } else {
                let item = &items[index - 2];
                match self.tree.lookup(ino.0, &item.name) {
                    Ok((child, node)) => {
                        let full = reply.add(
                            INodeNo(child),
                            index as u64 + 1,
                            &item.name,
                            &ttl(&node),
                            &file_attr(child, &node),
                            Generation(0),
                        );
                        if full {
                            // Not sent: the kernel will not count this lookup.
                            self.tree.forget(child, 1);
                        }
                        full
                    }
                    // Gone since the listing was taken (a mutable layer): skip it.
                    Err(_) => continue,
                }
            };
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.tree.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.tree.statfs() {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                255,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(errno("statfs", ino.0, e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if name != SOURCE_XATTR {
            return reply.error(Errno::NO_XATTR);
        }
        match self.tree.source(ino.0) {
            Ok(source) => {
                let bytes = source.as_bytes();
                if size == 0 {
                    reply.size(bytes.len() as u32);
                } else if (size as usize) < bytes.len() {
                    reply.error(Errno::ERANGE);
                } else {
                    reply.data(bytes);
                }
            }
            Err(e) => reply.error(errno("getxattr", ino.0, e)),
        }
    }

    /// Lists nothing: the provenance attribute is get-only, so `tar --xattrs` and image
    /// builders never pack it.
    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if mask.contains(fuser::AccessFlags::W_OK) {
            reply.error(read_only("access"));
        } else {
            reply.ok();
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(read_only("setattr"));
    }

    fn mknod(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _r: u32,
        reply: ReplyEntry,
    ) {
        reply.error(read_only("mknod"));
    }

    fn mkdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(read_only("mkdir"));
    }

    fn unlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(read_only("unlink"));
    }

    fn rmdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(read_only("rmdir"));
    }

    fn symlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _t: &Path, reply: ReplyEntry) {
        reply.error(read_only("symlink"));
    }

    fn rename(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(read_only("rename"));
    }

    fn link(&self, _req: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(read_only("link"));
    }

    fn create(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(read_only("create"));
    }

    fn setxattr(
        &self,
        _req: &Request,
        _i: INodeNo,
        _n: &OsStr,
        _v: &[u8],
        _f: i32,
        _p: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(read_only("setxattr"));
    }

    fn removexattr(&self, _req: &Request, _i: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(read_only("removexattr"));
    }
}
