//! FUSE passthrough (kernel >= 6.9): reads and mmap of a plain backing file go straight
//! from the kernel to that file, never through the daemon.
//!
//! Only on read-only mounts: the kernel gives an inode one backing file for as long as
//! any passthrough open of it lives, and on a writable mount the file under an inode can
//! change while readers hold it open (a copy-up on write, a rename over it), which the
//! kernel would refuse with EIO at the next open.
//!
//! The kernel wants every concurrent open of an inode to name the same backing file, so
//! there is one [`BackingId`] per inode, shared by its opens and closed with the last
//! of them. Registering needs CAP_SYS_ADMIN; when it fails, passthrough switches off for
//! the rest of the mount and opens are served by the daemon's read path — except opens
//! of an inode that still has a live backing, which must keep using it.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use fuser::{BackingId, InitFlags, KernelConfig, ReplyOpen};

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

/// Passthrough state of a mount: on or off, and the live backings.
#[derive(Debug)]
pub struct Passthrough {
    policy: PassthroughPolicy,
    enabled: AtomicBool,
    /// The backing of each inode with passthrough opens; weak, so it closes with them.
    by_inode: DashMap<u64, Weak<BackingId>>,
    /// The backing each open handle keeps alive, and its inode.
    by_handle: DashMap<u64, (u64, Arc<BackingId>)>,
    /// Where `rootfs-mount status` learns the read path.
    stats: Arc<Stats>,
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
    pub fn init(&self, config: &mut KernelConfig, writable: bool) -> Result<(), String> {
        let stack_depth = match self.policy {
            PassthroughPolicy::Off => return Err("--no-passthrough".to_string()),
            _ if writable => {
                return Err("the mount is writable (passthrough needs --read-only)".to_string())
            }
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

    /// The backing the open `fh` of `ino` is to use, registering `file` when the inode
    /// has none yet; `None` when the open must be served by the daemon.
    pub fn open(
        &self,
        ino: u64,
        fh: u64,
        file: &File,
        reply: &ReplyOpen,
    ) -> Option<Arc<BackingId>> {
        // The shard lock of `ino` orders this with `release`: a backing is either still
        // alive here (and shared) or gone for good (and replaced).
        let backing = match self.by_inode.entry(ino) {
            Entry::Occupied(mut o) => match o.get().upgrade() {
                Some(live) => live,
                None if self.is_enabled() => {
                    let fresh = self.register(file, reply)?;
                    o.insert(Arc::downgrade(&fresh));
                    fresh
                }
                None => {
                    o.remove();
                    return None;
                }
            },
            Entry::Vacant(v) => {
                if !self.is_enabled() {
                    return None;
                }
                let fresh = self.register(file, reply)?;
                v.insert(Arc::downgrade(&fresh));
                fresh
            }
        };
        self.by_handle.insert(fh, (ino, backing.clone()));
        Some(backing)
    }

    fn register(&self, file: &File, reply: &ReplyOpen) -> Option<Arc<BackingId>> {
        match reply.open_backing(file) {
            Ok(id) => Some(Arc::new(id)),
            Err(error) => {
                if self.enabled.swap(false, Ordering::Relaxed) {
                    self.stats.set_read_path(ReadPath::Userspace);
                    tracing::warn!(
                        %error,
                        "registering a backing file failed; passthrough is off from now on, reads go through the daemon (pread)"
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
        if let Entry::Occupied(o) = self.by_inode.entry(ino) {
            drop(backing);
            if o.get().strong_count() == 0 {
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
