//! FUSE passthrough (kernel >= 6.9): reads and mmap of a plain backing file go straight
//! from the kernel to that file, never through the daemon.
//!
//! The kernel gives an inode one backing file for as long as any passthrough open of
//! it lives, and then refuses every other kind of open of that inode (EIO), including a
//! `FOPEN_DIRECT_IO` one; while the daemon serves an open of it through the page cache
//! it refuses passthrough opens. So there is one [`BackingId`] per inode, shared by its
//! opens and closed with the last of them, and an inode that has opens served by the
//! daemon gets no passthrough until they are released ([`InodeIo`]).
//!
//! What a backing may be: on a read-only mount, a file of an immutable layer. On a
//! writable mount only an upper file (created through the mount or copied up), opened
//! for reading and writing: a layer's file cannot be one, because the write open that
//! copies it up would land on the same inode while readers hold the layer's file as its
//! backing, and the kernel leaves no legal answer to that open (see docs/DESIGN.md). Registering needs CAP_SYS_ADMIN; when it fails, passthrough switches off for
//! the rest of the mount and opens are served by the daemon's read path — except opens
//! of an inode that still has a live backing, which must keep using it.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use fuser::{BackingId, InitFlags, KernelConfig};

use super::{ReadPath, Stats};

/// Whether to try passthrough, decided before mounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassthroughPolicy {
    /// `--no-passthrough`: every read goes through the daemon.
    Off,
    /// Ask the kernel for passthrough with this file system stacking depth: 1 when the
    /// backing files are on a plain file system (the mount can itself be a lower layer of
    /// an overlayfs), 2 when they are on a stacking one (overlayfs, FUSE, ecryptfs).
    Try { stack_depth: u32 },
}

impl PassthroughPolicy {
    /// The policy for backing files below `roots` (nonexistent roots are skipped).
    pub fn for_roots(roots: &[PathBuf]) -> Self {
        let stacked = roots
            .iter()
            .filter_map(|root| crate::sys::fs_magic(root).ok())
            .any(is_stacking_fs);
        PassthroughPolicy::Try {
            stack_depth: if stacked { 2 } else { 1 },
        }
    }
}

fn is_stacking_fs(magic: i64) -> bool {
    const OVERLAYFS: i64 = 0x794c_7630;
    const FUSE: i64 = 0x6573_5546;
    const ECRYPTFS: i64 = 0xf15f;
    matches!(magic, OVERLAYFS | FUSE | ECRYPTFS)
}

/// Passthrough state of a mount: on or off, and the io mode of each open inode.
#[derive(Debug)]
pub struct Passthrough {
    policy: PassthroughPolicy,
    enabled: AtomicBool,
    /// Each inode with open handles: its backing (weak, so it closes with the last
    /// passthrough open) and how many of its opens the daemon serves.
    by_inode: DashMap<u64, InodeIo>,
    /// Each open handle's inode, and the backing it keeps alive (`None`: served by the
    /// daemon, counted in [`InodeIo::served`]).
    by_handle: DashMap<u64, (u64, Option<Arc<BackingId>>)>,
    /// Where `rootfs-mount status` learns the read path.
    stats: Arc<Stats>,
}

/// The io mode of an inode as the kernel has it (fs/fuse/iomode.c): while any open of
/// it is a passthrough one, every open must name the same backing (another backing is
/// EBUSY, any other open EIO); while the daemon serves an open through the page cache, a
/// passthrough open is refused (ETXTBSY). The kernel leaves a mode before the daemon
/// sees the RELEASE, so counting here never lags behind the kernel.
#[derive(Debug, Default)]
struct InodeIo {
    backing: Weak<BackingId>,
    served: u32,
}

impl Passthrough {
    pub fn new(policy: PassthroughPolicy, stats: Arc<Stats>) -> Self {
        Passthrough {
            policy,
            enabled: AtomicBool::new(false),
            by_inode: DashMap::new(),
            by_handle: DashMap::new(),
            stats,
        }
    }

    /// Negotiates passthrough at INIT; the error says why it is off.
    pub fn init(&self, config: &mut KernelConfig) -> Result<(), String> {
        let stack_depth = match self.policy {
            PassthroughPolicy::Off => return Err("--no-passthrough".to_string()),
            PassthroughPolicy::Try { stack_depth } => stack_depth,
        };
        config
            .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
            .map_err(|_| {
                "the kernel does not offer FUSE_PASSTHROUGH (needs Linux >= 6.9)".to_string()
            })?;
        config
            .set_max_stack_depth(stack_depth)
            .map_err(|max| format!("stacking depth {stack_depth} refused (max {max})"))?;
        self.enabled.store(true, Ordering::Relaxed);
        self.stats.set_read_path(ReadPath::Passthrough);
        Ok(())
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Whether an open of `ino` has to name a backing: passthrough is on, or the kernel
    /// may still hold a backing of it from before passthrough was switched off (every
    /// other open of that inode would fail with EIO).
    pub fn wants_backing(&self, ino: u64) -> bool {
        self.is_enabled()
            || self
                .by_inode
                .get(&ino)
                .is_some_and(|io| io.backing.strong_count() > 0)
    }

    /// The backing the open `fh` of `ino` is to use: the inode's live one, or one
    /// registered now through `register` with the file `backing_file` gives, when the
    /// kernel allows it (no open of the inode served by the daemon). `None`: the daemon
    /// serves this open (and it is counted until its RELEASE).
    pub fn open(
        &self,
        ino: u64,
        fh: u64,
        backing_file: impl FnOnce() -> Option<Arc<File>>,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        // The shard lock of `ino` orders this with `release`.
        let mut io = self.by_inode.entry(ino).or_default();
        let backing = match io.backing.upgrade() {
            // The kernel may still hold it: every open must name it.
            Some(live) => Some(live),
            None if io.served == 0 && self.is_enabled() => backing_file()
                .and_then(|file| self.register(&file, register))
                .inspect(|fresh| io.backing = Arc::downgrade(fresh)),
            None => None,
        };
        if backing.is_none() {
            io.served += 1;
        }
        self.by_handle.insert(fh, (ino, backing.clone()));
        backing
    }

    fn register(
        &self,
        file: &File,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        match register(file) {
            Ok(id) => Some(Arc::new(id)),
            Err(error) => {
                if self.enabled.swap(false, Ordering::Relaxed) {
                    self.stats.set_read_path(ReadPath::Userspace);
                    tracing::warn!(
                        %error,
                        "registering a backing file failed; passthrough is off from now on, reads and writes go through the daemon"
                    );
                }
                None
            }
        }
    }

    /// RELEASE of `fh`: drops its backing, closing it in the kernel with the last open.
    pub fn release(&self, fh: u64) {
        let Some((_, (ino, backing))) = self.by_handle.remove(&fh) else {
            return;
        };
        if let Entry::Occupied(mut o) = self.by_inode.entry(ino) {
            match backing {
                Some(backing) => drop(backing),
                None => o.get_mut().served = o.get().served.saturating_sub(1),
            }
            if o.get().served == 0 && o.get().backing.strong_count() == 0 {
                o.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacking_file_systems_need_depth_two() {
        assert!(is_stacking_fs(0x794c_7630));
        assert!(!is_stacking_fs(0xef53)); // ext4
        let here = PassthroughPolicy::for_roots(&[PathBuf::from("/nonexistent-root")]);
        assert_eq!(here, PassthroughPolicy::Try { stack_depth: 1 });
    }
}
