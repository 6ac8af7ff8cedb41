//! The FUSE adapter: maps kernel requests onto [`MergedTree`] calls and their errors onto
//! errnos. No filesystem logic lives here.
//!
//! Kernel caching (docs/DESIGN.md §7): entries and attributes of immutable layers are cached for a
//! day; folders are listed once and then read from the kernel's cache (`FOPEN_CACHE_DIR`,
//! and no opendir/releasedir round trips when the kernel offers
//! `FUSE_NO_OPENDIR_SUPPORT`); ACL answers are cached by the kernel (`FUSE_POSIX_ACL`), so
//! `ls -l` does not ask the daemon for them on every entry.
//!
//! Read paths of a read-only mount: with kernel passthrough ([`passthrough`]), opens of
//! plain backing files name the backing file and the kernel reads it directly. Without
//! it (`--no-passthrough`, or a kernel without it), the daemon serves reads with pread,
//! and opens cost no round trip at all: open answers ENOSYS where the kernel offers
//! `FUSE_NO_OPEN_SUPPORT`, after which it opens files by itself, keeps their pages across
//! opens, and reads by inode. Per file that saves the OPEN and RELEASE round trips (what
//! `tar` over many small files pays for); per byte passthrough is faster (no copy through
//! the daemon, one page cache). A writable mount needs open handles for its writes: its
//! files are opened through the daemon, and the kernel then reads a layer's file and
//! reads and writes an upper file itself (passthrough; [`passthrough`] says when the
//! kernel allows it, and what an open tied to another backing gets). Without
//! passthrough an open of a layer's file opens nothing on disk until the first read
//! (`OpenFile::Lower` in the tree), and neither it nor its RELEASE makes a syscall when
//! the kernel has the pages already; no read open is followed by a FLUSH
//! (`FOPEN_NOFLUSH`).
//!
//! Folders: a READDIRPLUS of a folder that comes from one layer on disk (the registry's
//! blob and link folders) is answered from one pass over that folder, one `fstatat` per
//! name, instead of a lookup from the layer's root per entry. Every batch of a listing is
//! a READDIRPLUS (see `init`), and every folder still costs a second, empty one on its
//! first listing: an empty answer is the kernel's only sign that a listing ended (it then
//! caches the listing, `FOPEN_CACHE_DIR`).

mod attr;
pub mod passthrough;
mod stats;

pub use stats::{Counters, Op, ReadPath, Stats};

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use crate::sys::at::SetTime;
use crate::tree::{AttrChange, Caller, DirItem, FsError, MergedTree, Opened};
use attr::{file_attr, file_type, ttl};
use passthrough::{OpenAs, Passthrough, PassthroughPolicy};

/// The get-only extended attribute that tells where a file comes from (docs/DESIGN.md §6).
pub const SOURCE_XATTR: &str = "user.rootfs.source";

pub struct BuildFs {
    tree: MergedTree,
    stats: Arc<Stats>,
    passthrough: Passthrough,
    /// The kernel does without opendir/releasedir (we answered the first with ENOSYS).
    no_opendir: bool,
    /// Keep opendir round trips (see [`BuildFs::keep_opendir`]).
    keep_opendir: bool,
    /// The kernel does without open/release (a read-only mount without passthrough).
    no_open: bool,
    on_destroy: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// The (inode, errno) faults already logged: a file that keeps failing is one WARN
    /// line, the later answers are debug lines (they are all counted).
    logged_faults: std::sync::Mutex<std::collections::HashSet<(u64, i32)>>,
}

/// Folders are listed once per kernel cache fill: the listing is kept in the kernel
/// (`FOPEN_CACHE_DIR`) and survives later opens (`FOPEN_KEEP_CACHE`); a change of the
/// folder's mtime (an edit of a mutable layer) or a change through the mount drops it.
const DIR_OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_CACHE_DIR.union(FopenFlags::FOPEN_KEEP_CACHE);

impl BuildFs {
    pub fn new(tree: MergedTree, passthrough: PassthroughPolicy) -> Self {
        let stats: Arc<Stats> = Arc::default();
        BuildFs {
            tree,
            passthrough: Passthrough::new(passthrough, stats.clone()),
            stats,
            no_opendir: false,
            keep_opendir: false,
            no_open: false,
            on_destroy: None,
            logged_faults: Default::default(),
        }
    }

    /// Answers opendir even where the kernel could do without it. fusermount3's
    /// `auto_unmount` decides that the mount is dead when opening its root fails with
    /// ENOTCONN; with no opendir round trips the kernel opens the root of a dead mount
    /// by itself, and the mount would stay, stale.
    pub fn keep_opendir(mut self, keep: bool) -> Self {
        self.keep_opendir = keep;
        self
    }

    /// Runs `hook` when the session ends (all serving threads have stopped).
    pub fn on_destroy(mut self, hook: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.on_destroy = Some(Box::new(hook));
        self
    }

    /// The listing a readdir at `offset` pages through; `.` and `..` take offsets 0 and 1,
    /// so a call past the last entry ends the pass.
    fn listing(&self, ino: u64, offset: u64) -> Result<Arc<Vec<DirItem>>, FsError> {
        let items = self.tree.listing(ino, offset)?;
        if offset >= items.len() as u64 + 2 {
            self.tree.listing_done(ino);
        }
        Ok(items)
    }

    /// Counts a request that may wait for an archive's index build, and lets it give up
    /// on a signal of its caller (see [`crate::archive::waiting`]) while the scope lives.
    fn request(&self, req: &Request, op: Op) -> crate::archive::waiting::RequestScope {
        self.stats.request(op);
        crate::archive::waiting::RequestScope::enter(req.pid())
    }

    /// The counters of this file system (`rootfs-mount status`).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The one place errors are logged, counted and turned into an errno. Faults (not
    /// the expected answers such as ENOENT) are logged as warnings and counted; a fault
    /// already logged where it was found (a corrupt archive) is not logged again.
    fn errno(&self, op: &str, ino: u64, err: FsError) -> Errno {
        if err.is_expected() {
            tracing::debug!(op, ino, %err);
        } else {
            self.stats.error();
            let first = !err.logged
                && self
                    .logged_faults
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((ino, err.errno));
            if !first {
                tracing::debug!(op, ino, %err);
            } else {
                let file = self.tree.source(ino).unwrap_or_default();
                tracing::warn!(target: crate::fault::TARGET, file, op, ino, "{err}");
            }
        }
        Errno::from_i32(err.errno)
    }
}

/// Answers a size probe (`size == 0`) or the value, or ERANGE when it does not fit.
fn xattr_reply(reply: ReplyXattr, size: u32, bytes: &[u8]) {
    if size == 0 {
        reply.size(bytes.len() as u32);
    } else if (size as usize) < bytes.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(bytes);
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn read_only(op: &str) -> Errno {
    tracing::debug!(op, "refused: the mount is read-only");
    Errno::EROFS
}

impl Filesystem for BuildFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // READDIRPLUS answers `ls -l` and `find` walks with the attributes in one trip, for
        // every batch of a listing: not READDIRPLUS_AUTO, with which the kernel lists later
        // batches by name when nothing of the first was used yet, as `find` and `tar` read a
        // folder whole before they descend, and then looks each entry up (12,555 LOOKUPs of
        // 93.6k requests on the bench registry's first walk).
        // POSIX_ACL: the kernel asks once per inode for ACLs and caches the answer.
        // AUTO_INVAL_DATA: when the attributes of a mutable entry are refreshed and its
        // mtime moved, cached pages and listings of it are dropped.
        // PARALLEL_DIROPS: lookups and readdirs in one folder run concurrently.
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_POSIX_ACL
            | InitFlags::FUSE_AUTO_INVAL_DATA
            | InitFlags::FUSE_PARALLEL_DIROPS;
        for flag in wanted.iter() {
            if config.add_capabilities(flag).is_err() {
                tracing::info!(?flag, "kernel lacks a FUSE capability");
            }
        }
        let offered = config.capabilities();
        self.no_opendir =
            !self.keep_opendir && offered.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        let writable = self.tree.is_writable();
        match self.passthrough.init(config) {
            Ok(()) => tracing::info!("read path: kernel passthrough to the backing files"),
            Err(reason) => {
                self.no_open = !writable && offered.contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
                let opens = if self.no_open {
                    "by the kernel alone (no open round trips)"
                } else {
                    "through the daemon"
                };
                tracing::info!(%reason, opens, "read path: the daemon (pread)");
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if let Some(hook) = self.on_destroy.take() {
            hook();
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _waits = self.request(req, Op::Lookup);
        match self.tree.lookup(parent.0, name) {
            Ok((ino, node)) => reply.entry(&ttl(&node), &file_attr(ino, &node), Generation(0)),
            Err(e) => reply.error(self.errno("lookup", parent.0, e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.stats.request(Op::Forget);
        self.tree.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _waits = self.request(req, Op::Getattr);
        match self.tree.getattr(ino.0) {
            Ok(node) => reply.attr(&ttl(&node), &file_attr(ino.0, &node)),
            Err(e) => reply.error(self.errno("getattr", ino.0, e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.stats.request(Op::Readlink);
        match self.tree.readlink(ino.0) {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(e) => reply.error(self.errno("readlink", ino.0, e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _waits = self.request(req, Op::Open);
        let writes = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let writable = self.tree.is_writable();
        if writes && !writable {
            return reply.error(read_only("open"));
        }
        if self.no_open {
            return reply.error(Errno::ENOSYS);
        }
        let register = |file: &std::fs::File| reply.open_backing(file);
        // The file this open may hand to the kernel: a write open only an upper file
        // (never a layer's), a read open a layer's file or an upper one.
        let opened = if writes {
            self.tree.open_for_write(ino.0, flags.0).map(|fh| Opened {
                fh,
                backing: None,
                keep_cache: false,
            })
        } else {
            self.tree.open(ino.0, self.passthrough.backing_from(ino.0))
        };
        let opened = match opened {
            Ok(opened) => opened,
            // Not a fault: the path has a new number, the kernel retries the open there.
            Err(e) if e.errno == libc::ESTALE && self.tree.is_superseded(ino.0) => {
                tracing::debug!(ino = ino.0, "open of a superseded number: ESTALE");
                return reply.error(Errno::ESTALE);
            }
            Err(e) => return reply.error(self.errno("open", ino.0, e)),
        };
        let fh = FileHandle(opened.fh);
        let candidate = || {
            opened
                .backing
                .clone()
                .or_else(|| writable.then(|| self.tree.upper_backing(ino.0)).flatten())
        };
        match self.passthrough.open(ino.0, opened.fh, candidate, register) {
            OpenAs::Backing(backing) if writes => {
                reply.opened_passthrough(fh, FopenFlags::empty(), &backing)
            }
            OpenAs::Backing(backing) => {
                reply.opened_passthrough(fh, FopenFlags::FOPEN_NOFLUSH, &backing)
            }
            OpenAs::Stale => {
                self.tree.release(opened.fh);
                let estale = match self.tree.supersede(ino.0, writes) {
                    Ok(()) => Errno::ESTALE,
                    Err(e) => self.errno("open", ino.0, e),
                };
                tracing::debug!(ino = ino.0, writes, "open of an inode tied to another backing file: the path gets a new number, ESTALE");
                reply.error(estale)
            }
            // Written through the daemon: no page cache kept across opens.
            OpenAs::Daemon if writes => reply.opened(fh, FopenFlags::empty()),
            // Content never changes while a file is open: keep the page cache across
            // opens (not for entries of a layer edited while mounted).
            // FOPEN_NOFLUSH: nothing to flush at close (see `flush`), not even the
            // first time.
            OpenAs::Daemon if opened.keep_cache => {
                reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH)
            }
            OpenAs::Daemon => reply.opened(fh, FopenFlags::FOPEN_NOFLUSH),
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
        self.stats.request(Op::Read);
        let answer = |read: Result<&[u8], FsError>| match read {
            Ok(data) => {
                self.stats.read(data.len());
                reply.data(data)
            }
            Err(e) => reply.error(self.errno("read", ino.0, e)),
        };
        if fh.0 == 0 {
            // Opened by the kernel alone (no open round trips): read by inode.
            self.tree.read_unopened(ino.0, offset, size, answer)
        } else {
            self.tree.read(fh.0, offset, size, answer)
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
        self.stats.request(Op::Release);
        self.passthrough.release(fh.0);
        self.tree.release(fh.0);
        reply.ok();
    }

    /// Folders need no handle (listings are by inode): where the kernel can do without
    /// opendir, ENOSYS tells it so, and it stops sending opendir and releasedir.
    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.stats.request(Op::Opendir);
        if self.no_opendir {
            return reply.error(Errno::ENOSYS);
        }
        match self.tree.check_dir(ino.0) {
            Ok(()) => reply.opened(FileHandle(0), DIR_OPEN_FLAGS),
            Err(e) => reply.error(self.errno("opendir", ino.0, e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.stats.request(Op::Releasedir);
        reply.ok();
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _waits = self.request(req, Op::Readdir);
        let items = match self.listing(ino.0, offset) {
            Ok(items) => items,
            Err(e) => return reply.error(self.errno("readdir", ino.0, e)),
        };
        // The call past the last entry (every folder gets one: an empty answer is the
        // kernel's only end of listing) costs nothing more.
        if offset >= items.len() as u64 + 2 {
            return reply.ok();
        }
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
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _waits = self.request(req, Op::Readdirplus);
        let items = match self.listing(ino.0, offset) {
            Ok(items) => items,
            Err(e) => return reply.error(self.errno("readdirplus", ino.0, e)),
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
                match self.tree.lookup_listed(ino.0, item) {
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

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.stats.request(Op::Statfs);
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
            Err(e) => reply.error(self.errno("statfs", ino.0, e)),
        }
    }

    /// `ls -l` asks for `security.selinux` and the POSIX ACLs of every entry: ACL answers
    /// are cached by the kernel (`FUSE_POSIX_ACL`), and "not supported" for an absent
    /// security label makes `ls` stop asking for the rest of the device.
    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.stats.request(Op::Getxattr);
        let value = if name == SOURCE_XATTR {
            self.tree.source(ino.0).map(String::into_bytes)
        } else {
            self.tree.getxattr(ino.0, name)
        };
        match value {
            Ok(bytes) => xattr_reply(reply, size, &bytes),
            Err(e) if e.errno == libc::ENODATA && name == "security.selinux" => {
                reply.error(Errno::EOPNOTSUPP)
            }
            Err(e) => reply.error(self.errno("getxattr", ino.0, e)),
        }
    }

    /// Never lists the provenance attribute: it is get-only, so `tar --xattrs` and image
    /// builders never pack it. Attributes set on upper entries are listed.
    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.stats.request(Op::Listxattr);
        match self.tree.listxattr(ino.0) {
            Ok(names) => {
                let mut bytes = Vec::new();
                for name in names {
                    bytes.extend_from_slice(name.as_bytes());
                    bytes.push(0);
                }
                xattr_reply(reply, size, &bytes)
            }
            Err(e) => reply.error(self.errno("listxattr", ino.0, e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        self.stats.request(Op::Access);
        if mask.contains(fuser::AccessFlags::W_OK) && !self.tree.is_writable() {
            reply.error(read_only("access"));
        } else {
            reply.ok();
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<fuser::TimeOrNow>,
        mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.stats.request(Op::Setattr);
        let time = |t: fuser::TimeOrNow| match t {
            fuser::TimeOrNow::SpecificTime(at) => SetTime::At(at),
            fuser::TimeOrNow::Now => SetTime::Now,
        };
        let change = AttrChange {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        match self.tree.setattr(ino.0, change) {
            Ok(node) => reply.attr(&ttl(&node), &file_attr(ino.0, &node)),
            Err(e) => reply.error(self.errno("setattr", ino.0, e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        self.stats.request(Op::Mknod);
        match self.tree.mknod(parent.0, name, mode, caller(req)) {
            Ok((ino, node)) => reply.entry(&ttl(&node), &file_attr(ino, &node), Generation(0)),
            Err(e) => reply.error(self.errno("mknod", parent.0, e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.stats.request(Op::Mkdir);
        match self.tree.mkdir(parent.0, name, mode, caller(req)) {
            Ok((ino, node)) => reply.entry(&ttl(&node), &file_attr(ino, &node), Generation(0)),
            Err(e) => reply.error(self.errno("mkdir", parent.0, e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.stats.request(Op::Unlink);
        match self.tree.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno("unlink", parent.0, e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.stats.request(Op::Rmdir);
        match self.tree.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno("rmdir", parent.0, e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.stats.request(Op::Symlink);
        match self.tree.symlink(parent.0, link_name, target, caller(req)) {
            Ok((ino, node)) => reply.entry(&ttl(&node), &file_attr(ino, &node), Generation(0)),
            Err(e) => reply.error(self.errno("symlink", parent.0, e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.stats.request(Op::Rename);
        match self
            .tree
            .rename(parent.0, name, new_parent.0, new_name, flags.bits())
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno("rename", parent.0, e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        new_parent: INodeNo,
        new_name: &OsStr,
        reply: ReplyEntry,
    ) {
        self.stats.request(Op::Link);
        match self.tree.link(ino.0, new_parent.0, new_name) {
            Ok((child, node)) => reply.entry(&ttl(&node), &file_attr(child, &node), Generation(0)),
            Err(e) => reply.error(self.errno("link", ino.0, e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        self.stats.request(Op::Create);
        let (ino, node, fh) = match self.tree.create(parent.0, name, mode, flags, caller(req)) {
            Ok(created) => created,
            Err(e) => return reply.error(self.errno("create", parent.0, e)),
        };
        let backing = self.passthrough.open(
            ino,
            fh,
            || self.tree.upper_backing(ino),
            |file| reply.open_backing(file),
        );
        let (ttl, attr) = (ttl(&node), file_attr(ino, &node));
        match backing {
            OpenAs::Backing(backing) => reply.created_passthrough(
                &ttl,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
                &backing,
            ),
            OpenAs::Daemon => reply.created(
                &ttl,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            // A new file's number has no backing yet; should it have one, the file is
            // made but this open cannot be answered.
            OpenAs::Stale => {
                self.tree.release(fh);
                // The kernel never learns the entry: its lookup is not kept either.
                self.tree.forget(ino, 1);
                reply.error(Errno::EIO)
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        self.stats.request(Op::Write);
        match self.tree.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(self.errno("write", ino.0, e)),
        }
    }

    /// Writes reach the upper file as they come: there is nothing to flush at close, and
    /// ENOSYS stops the kernel from sending a flush on every close.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        self.stats.request(Op::Flush);
        reply.error(Errno::ENOSYS);
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.stats.request(Op::Fsync);
        match self.tree.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno("fsync", ino.0, e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.stats.request(Op::Fsyncdir);
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.stats.request(Op::Fallocate);
        match self.tree.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno("fallocate", ino.0, e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.stats.request(Op::Setxattr);
        match self.tree.setxattr(ino.0, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno("setxattr", ino.0, e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.stats.request(Op::Removexattr);
        match self.tree.removexattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno("removexattr", ino.0, e)),
        }
    }
}
