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
//! What a backing may be: a file of an immutable layer, or a remote object whole and
//! verified in the local block cache, for opens that only read (the kernel opens its
//! own backing file with the caller's open flags, so a write open naming a layer's file
//! would let it write into the layer); and on a writable mount
//! an upper file (created through the mount or copied up), opened for reading and
//! writing. When an inode's live backing is not the file an open needs — a write open
//! of a layer's file that readers hold, or any open after the file was copied up or
//! renamed over — the open is answered ESTALE after its path got a new number
//! (`MergedTree::supersede`): the kernel looks the path up again and opens a fresh
//! inode, while the earlier opens keep the old bytes, as on overlayfs (docs/DESIGN.md
//! §8). Registering needs CAP_SYS_ADMIN; when it fails, passthrough switches off for
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
    /// an overlayfs), 2 when they are on a stacking one (overlayfs, FUSE, ecryptfs);
    /// layer files smaller than `min_size` bytes stay with the daemon (see
    /// [`Passthrough::backing_from`]).
    Try { stack_depth: u32, min_size: u64 },
}

impl PassthroughPolicy {
    /// The policy for backing files below `roots` (nonexistent roots are skipped), for
    /// layer files of at least `min_size` bytes.
    pub fn for_roots(roots: &[PathBuf], min_size: u64) -> Self {
        let stacked = roots
            .iter()
            .filter_map(|root| crate::sys::fs_magic(root).ok())
            .any(is_stacking_fs);
        PassthroughPolicy::Try {
            stack_depth: if stacked { 2 } else { 1 },
            min_size,
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
    /// Which file the backing is, `(st_dev, st_ino)`: an open naming another file
    /// cannot share it.
    file: Option<(u64, u64)>,
    served: u32,
}

/// How an open is answered (see [`Passthrough::open`]).
#[derive(Debug)]
pub enum OpenAs {
    /// The kernel reads (and writes) this backing file itself.
    Backing(Arc<BackingId>),
    /// The daemon serves reads and writes.
    Daemon,
    /// The inode is tied to a backing file this open must not use: the path gets a new
    /// number and the open is answered ESTALE (the kernel retries it there).
    Stale,
}

fn file_id(file: &File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
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
            PassthroughPolicy::Try { stack_depth, .. } => stack_depth,
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

    /// The smallest layer file an open of `ino` hands to the kernel, `None` for none.
    /// Any size when the kernel may still hold a backing of `ino` (every open must then
    /// name one, even after passthrough was switched off). Otherwise, with passthrough
    /// on, files of at least `--passthrough-min`: per byte the kernel reading the file
    /// itself is fastest (large files read at native speed), per file it costs more than
    /// the daemon (registering and closing a backing, and a GETATTR after each read on a
    /// writable mount, where the daemon's page cache kept across opens answers a second
    /// read of a small file with no request at all).
    pub fn backing_from(&self, ino: u64) -> Option<u64> {
        let live = self
            .by_inode
            .get(&ino)
            .is_some_and(|io| io.backing.strong_count() > 0);
        match self.policy {
            _ if live => Some(0),
            PassthroughPolicy::Try { min_size, .. } if self.is_enabled() => Some(min_size),
            _ => None,
        }
    }

    /// How the open `fh` of `ino` is answered: with the inode's live backing, when
    /// `candidate` (the file this open would hand over) is that very file; with one
    /// registered now from `candidate` through `register`, when the kernel allows it (no
    /// live backing, no open of the inode served by the daemon); by the daemon (counted
    /// until its RELEASE) when there is no candidate or passthrough is off; or not at
    /// all ([`OpenAs::Stale`]) when the inode has a live backing that is not the
    /// candidate — no answer but that backing would be legal for the kernel, and that
    /// backing holds other bytes (or, for a write open, a layer's file).
    pub fn open(
        &self,
        ino: u64,
        fh: u64,
        candidate: impl FnOnce() -> Option<Arc<File>>,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> OpenAs {
        // The shard lock of `ino` orders this with `release`.
        let mut io = self.by_inode.entry(ino).or_default();
        let answer = match io.backing.upgrade() {
            // The kernel may still hold it: every open must name it.
            Some(live) => match candidate() {
                Some(file) if io.file.is_some() && file_id(&file) == io.file => {
                    OpenAs::Backing(live)
                }
                _ => OpenAs::Stale,
            },
            None if io.served == 0 && self.is_enabled() => match candidate() {
                Some(file) => match self.register(&file, register) {
                    Some(fresh) => {
                        io.backing = Arc::downgrade(&fresh);
                        io.file = file_id(&file);
                        OpenAs::Backing(fresh)
                    }
                    None => OpenAs::Daemon,
                },
                None => OpenAs::Daemon,
            },
            None => OpenAs::Daemon,
        };
        match &answer {
            OpenAs::Backing(backing) => {
                self.by_handle.insert(fh, (ino, Some(backing.clone())));
            }
            OpenAs::Daemon => {
                io.served += 1;
                self.by_handle.insert(fh, (ino, None));
            }
            OpenAs::Stale => {}
        }
        answer
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
        let here = PassthroughPolicy::for_roots(&[PathBuf::from("/nonexistent-root")], 7);
        assert_eq!(
            here,
            PassthroughPolicy::Try {
                stack_depth: 1,
                min_size: 7
            }
        );
    }
}
