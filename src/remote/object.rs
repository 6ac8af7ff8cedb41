//! One object of a remote cache, read by range: each read is cut into blocks
//! ([`BLOCK`]), each block comes from the local cache or one ranged GET, and is checked
//! against the object's block list before any byte of it is handed out.
//!
//! Block lists, in order of preference: kept locally from an earlier mount; published
//! beside the object (`.rootfs-mount/blocks/<path>`, itself checked against SHA256SUMS);
//! else made here by streaming the whole object once and checking it against its
//! SHA256SUMS digest (a mirror published without block lists): only then is any block of
//! it served.
//!
//! A sequential reader (each read starting where the last ended) is detected and the
//! blocks ahead of it are fetched by a small pool of workers, concurrently, the window
//! doubling up to [`MAX_AHEAD`] blocks; random reads fetch only the blocks they touch.
//! Two readers needing one block wait for a single fetch.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::blocks::{sha256, Block, BlockCache};
use super::manifest::{self, BlockDigests, Entry, BLOCK};
use super::store::Store;
use crate::archive::{reported, ArchiveIdentity, ArchiveSource, ReadAt, SourceAttrs};

/// Most blocks fetched ahead of a sequential reader.
pub const MAX_AHEAD: u64 = 32;
const _: () = assert!(2 * MAX_AHEAD as usize <= super::blocks::MEMORY_BLOCKS);
/// Workers fetching ahead (per process).
const PREFETCH_WORKERS: usize = 4;

type Outcome = Result<Block, String>;

#[derive(Default)]
struct Slot {
    done: Mutex<Option<Outcome>>,
    ready: Condvar,
}

/// Shared by all objects of a store: where they come from and where blocks are kept.
#[derive(Debug)]
pub struct Backing {
    pub store: Store,
    pub cache: BlockCache,
    /// SHA256SUMS of the store: path to digest.
    pub sums: crate::sums::Sums,
}

pub struct RemoteObject {
    me: Weak<RemoteObject>,
    backing: Arc<Backing>,
    rel: String,
    /// The object's sha256 (hex): its name in the local cache.
    digest: String,
    entry: Entry,
    size: u64,
    block_list: OnceLock<Arc<BlockDigests>>,
    /// One thread makes the block list.
    listing: Mutex<()>,
    inflight: Mutex<HashMap<u64, Arc<Slot>>>,
    next_expected: AtomicU64,
    ahead: AtomicU64,
    fault_logged: AtomicBool,
}

impl std::fmt::Debug for RemoteObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteObject")
            .field("rel", &self.rel)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RemoteObject {
    pub fn new(
        backing: Arc<Backing>,
        rel: &str,
        digest: &str,
        entry: Entry,
        size: u64,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| RemoteObject {
            me: me.clone(),
            backing,
            rel: rel.to_string(),
            digest: digest.to_string(),
            entry,
            size,
            block_list: OnceLock::new(),
            listing: Mutex::new(()),
            inflight: Mutex::new(HashMap::new()),
            next_expected: AtomicU64::new(u64::MAX),
            ahead: AtomicU64::new(0),
            fault_logged: AtomicBool::new(false),
        })
    }

    pub fn shown(&self) -> PathBuf {
        PathBuf::from(self.backing.store.shown(&self.rel))
    }

    /// The block list, made or fetched on first need.
    fn blocks(&self) -> Result<Arc<BlockDigests>, String> {
        if let Some(b) = self.block_list.get() {
            return Ok(b.clone());
        }
        let _one = lock(&self.listing);
        if let Some(b) = self.block_list.get() {
            return Ok(b.clone());
        }
        let list = Arc::new(self.find_blocks()?);
        Ok(self.block_list.get_or_init(|| list).clone())
    }

    fn find_blocks(&self) -> Result<BlockDigests, String> {
        let cache = &self.backing.cache;
        let usable = |b: &BlockDigests| b.size == self.size;
        if let Some(text) = cache.digests(&self.digest) {
            if let Ok(b) = BlockDigests::parse(&text) {
                if usable(&b) {
                    return Ok(b);
                }
            }
        }
        let sidecar = manifest::blocks_path(&self.rel);
        if let Some(want) = self.backing.sums.get(&sidecar) {
            let shown = self.backing.store.shown(&sidecar);
            let bytes = self
                .backing
                .store
                .get_small(&sidecar)
                .map_err(|e| e.message)?
                .ok_or_else(|| format!("{shown}: listed in SHA256SUMS but absent"))?;
            if crate::sums::hex(&sha256(&bytes)) != *want {
                return Err(format!("{shown}: does not match its SHA256SUMS digest"));
            }
            let text = String::from_utf8_lossy(&bytes);
            let list = BlockDigests::parse(&text).map_err(|e| format!("{shown}: {e}"))?;
            if !usable(&list) {
                return Err(format!("{shown}: lists another size than the object's"));
            }
            cache.put_digests(&self.digest, &text);
            return Ok(list);
        }
        self.verify_whole()
    }

    /// Streams the whole object, checks it against its SHA256SUMS digest and keeps its
    /// block list (no block list was published for it).
    fn verify_whole(&self) -> Result<BlockDigests, String> {
        tracing::info!(object = %self.shown().display(), size = self.size, "no published block list: checking the whole object once");
        let mut whole = Sha256::new();
        let mut digests = Vec::new();
        let mut at = 0;
        while at < self.size {
            let len = BLOCK.min(self.size - at);
            let bytes = self.get_range(at, len)?;
            whole.update(&bytes);
            digests.push(sha256(&bytes));
            at += len;
        }
        let got = crate::sums::hex(&whole.finalize());
        if got != self.digest {
            return Err(format!(
                "{}: sha256 {got}, SHA256SUMS says {}; not served",
                self.shown().display(),
                self.digest
            ));
        }
        let list = BlockDigests {
            size: self.size,
            digests,
        };
        self.backing.cache.put_digests(&self.digest, &list.format());
        Ok(list)
    }

    /// Block `index`, verified: from memory, the local cache or the store. One thread
    /// reads or fetches a block; others needing it meanwhile wait for that one (a
    /// reader and the read-ahead never both read and hash one block).
    fn block(&self, index: u64) -> Outcome {
        let cache = &self.backing.cache;
        if let Some(bytes) = cache.in_memory(&self.digest, index) {
            return Ok(bytes);
        }
        let list = self.blocks()?;
        let want = list
            .digests
            .get(index as usize)
            .ok_or_else(|| format!("block {index} past the end"))?;
        let (slot, mine) = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(&index) {
                Some(slot) => (slot.clone(), false),
                None => {
                    let slot = Arc::new(Slot::default());
                    inflight.insert(index, slot.clone());
                    (slot, true)
                }
            }
        };
        if !mine {
            return self.wait(&slot);
        }
        let (outcome, fetched) = match cache.get(&self.digest, self.size, index, want) {
            Some(bytes) => (Ok(bytes), false),
            None => {
                cache.counters.misses.fetch_add(1, Ordering::Relaxed);
                (self.fetch(index, want), true)
            }
        };
        *lock(&slot.done) = Some(outcome.clone());
        slot.ready.notify_all();
        lock(&self.inflight).remove(&index);
        // Written into the object's file after the waiting readers were answered, by
        // this thread (the one that fetched it): off their path, and no second copy.
        if let (Ok(bytes), true) = (&outcome, fetched) {
            cache.put(&self.digest, self.size, index, bytes.clone());
        }
        outcome
    }

    /// Waits for another thread's fetch of a block, at most the store's wait limit (and
    /// a little): a reader is never held forever.
    fn wait(&self, slot: &Slot) -> Outcome {
        let limit = self.backing.store.deadline() + Duration::from_secs(15);
        let started = Instant::now();
        let mut done = lock(&slot.done);
        loop {
            if let Some(outcome) = &*done {
                return outcome.clone();
            }
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(format!(
                    "{}: no block within {} s",
                    self.shown().display(),
                    limit.as_secs()
                ));
            }
            done = slot
                .ready
                .wait_timeout(done, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// `len` bytes at `start` of the object from the store, counted as fetched.
    fn get_range(&self, start: u64, len: u64) -> Result<Vec<u8>, String> {
        let bytes = self
            .backing
            .store
            .get_range(&self.rel, start, len)
            .map_err(|e| e.message)?;
        self.backing
            .cache
            .counters
            .fetched_bytes
            .fetch_add(len, Ordering::Relaxed);
        Ok(bytes)
    }

    fn fetch(&self, index: u64, want: &[u8; 32]) -> Outcome {
        let start = index * BLOCK;
        let len = BLOCK.min(self.size - start);
        let bytes = self.get_range(start, len)?;
        if sha256(&bytes) != *want {
            return Err(format!(
                "{}: block {index} does not match its published digest; not served",
                self.shown().display()
            ));
        }
        Ok(Arc::new(bytes))
    }

    /// Fetches the blocks ahead of a sequential reader that stopped at `end`.
    fn read_ahead(&self, offset: u64, end: u64) {
        let sequential = offset == self.next_expected.swap(end, Ordering::Relaxed);
        if !sequential {
            self.ahead.store(0, Ordering::Relaxed);
            return;
        }
        let window = (self.ahead.load(Ordering::Relaxed) * 2).clamp(2, MAX_AHEAD);
        let before = self.ahead.swap(window, Ordering::Relaxed);
        let last = BlockDigests::count(self.size);
        let first = end.div_ceil(BLOCK);
        // Only the blocks that the window newly covers (the rest were asked for).
        let from = if before == 0 {
            first
        } else {
            first + before.saturating_sub(1)
        };
        for index in from..(first + window).min(last) {
            if lock(&self.inflight).contains_key(&index) {
                continue;
            }
            let Some(me) = self.me.upgrade() else { return };
            pool().submit(Box::new(move || {
                let _ = me.block(index);
            }));
        }
    }

    fn fault(&self, message: String) -> io::Error {
        if !self.fault_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(target: crate::fault::TARGET, file = %self.shown().display(), error = %message, "cannot read from the store; reads that need it give EIO");
        }
        reported(message)
    }
}

impl ReadAt for RemoteObject {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let end = (offset + buf.len() as u64).min(self.size);
        if offset >= end {
            return Ok(0);
        }
        self.read_ahead(offset, end);
        let mut at = offset;
        while at < end {
            let index = at / BLOCK;
            let block = self.block(index).map_err(|m| self.fault(m))?;
            let within = (at - index * BLOCK) as usize;
            let n = (block.len() - within).min((end - at) as usize);
            let from = (at - offset) as usize;
            buf[from..from + n].copy_from_slice(&block[within..within + n]);
            at += n as u64;
        }
        self.fault_logged.store(false, Ordering::Relaxed);
        Ok((end - offset) as usize)
    }
}

/// A remote object as an archive's bytes (or a plain file's, stored).
#[derive(Debug, Clone)]
pub struct ObjectSource(pub Arc<RemoteObject>);

impl ReadAt for ObjectSource {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
}

impl ArchiveSource for ObjectSource {
    fn identity(&self) -> io::Result<ArchiveIdentity> {
        let e = &self.0.entry;
        ArchiveIdentity::of_bytes(self, self.0.size, e.mtime_sec, e.mtime_nsec)
    }

    /// Always: a changed object is caught by each request (ETag) and each block (digest).
    fn unchanged(&self, _identity: &ArchiveIdentity) -> io::Result<bool> {
        Ok(true)
    }

    /// The object's file in the local cache, once all its blocks are verified there.
    fn local_file(&self) -> Option<std::fs::File> {
        let o = &self.0;
        o.backing.cache.local_file(&o.digest, o.size)
    }

    fn attrs(&self) -> io::Result<SourceAttrs> {
        let e = &self.0.entry;
        Ok(SourceAttrs {
            perm: e.perm,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime(),
        })
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The read-ahead workers, started on first use (after the daemon forked).
struct Pool {
    jobs: Mutex<std::collections::VecDeque<Job>>,
    ready: Condvar,
}

impl Pool {
    fn submit(&self, job: Job) {
        lock(&self.jobs).push_back(job);
        self.ready.notify_one();
    }

    fn work(&self) {
        loop {
            let job = {
                let mut jobs = lock(&self.jobs);
                loop {
                    if let Some(job) = jobs.pop_front() {
                        break job;
                    }
                    jobs = self.ready.wait(jobs).unwrap_or_else(|p| p.into_inner());
                }
            };
            job();
        }
    }
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            jobs: Mutex::new(Default::default()),
            ready: Condvar::new(),
        }));
        for n in 0..PREFETCH_WORKERS {
            let spawned = std::thread::Builder::new()
                .name(format!("read-ahead-{n}"))
                .spawn(move || pool.work());
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a read-ahead worker");
            }
        }
        pool
    })
}
