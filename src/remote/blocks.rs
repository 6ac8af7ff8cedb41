//! The local block cache of remote objects (`--local-cache DIR`, `--local-cache-size`):
//! verified blocks only, kept across mounts, least recently used evicted first.
//!
//! Layout: `DIR/blocks/<object sha256>/<block number>` (content-addressed: the same
//! bytes published twice, or by two stores, are one entry), `DIR/digests/<object
//! sha256>` (the object's verified block list, so an evicted block is fetched and checked
//! alone again) and `DIR/index/` (seek indexes of remote archives).
//!
//! Trust: a block is checked against its published digest once, when fetched, before it
//! is served or kept. Kept blocks are then trusted as the local `--cache` folder is,
//! except that a block written by an earlier mount (or another one) is hashed again the
//! first time this mount reads it: that catches a block torn by a crash (blocks are
//! written under a temporary name and renamed, without an fsync per block) or damaged
//! since. A mismatch drops the file and fetches the block again; nothing unverified
//! reaches a reader. After that, reads of it are not hashed again (the `verified` set).
//!
//! Writes are off the reader's path: a writer thread keeps the fetched blocks on disk
//! while the reader goes on; a block waiting to be written is served from memory.
//! [`BlockCache::flush`] waits for the writes (status, unmount). Recently used blocks
//! are also kept in memory, so the kernel's 128 KiB reads of one block cost one disk
//! read.
//!
//! Recency is the file's mtime (touched on use), so the order survives remounts; the size
//! is counted at open by a scan. Several mounts may share a folder: a block another one
//! evicted is simply a miss.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Blocks kept in memory (of [`super::manifest::BLOCK`] bytes each): twice a
/// sequential reader's read-ahead window (checked in `object`), so the blocks fetched
/// ahead are still there when it gets to them.
pub const MEMORY_BLOCKS: usize = 64;
/// Blocks queued for the writer before a reader that fetched one waits for it.
const WRITE_QUEUE: usize = 32;
/// The longest [`BlockCache::flush`] waits.
const FLUSH_WAIT: Duration = Duration::from_secs(30);

/// A block's bytes, shared without copying.
pub type Block = Arc<Vec<u8>>;

/// An object's sha256 (hex) and a block number.
type BlockKey = (String, u64);

#[derive(Debug, Default)]
pub struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub fetched_bytes: AtomicU64,
}

#[derive(Debug, Default)]
struct Lru {
    /// Use tick to file; file to (tick, size).
    order: BTreeMap<u64, PathBuf>,
    files: HashMap<PathBuf, (u64, u64)>,
    total: u64,
    tick: u64,
}

impl Lru {
    fn touch(&mut self, path: &Path, size: u64) {
        self.tick += 1;
        let tick = self.tick;
        if let Some((old, old_size)) = self.files.insert(path.to_path_buf(), (tick, size)) {
            self.order.remove(&old);
            self.total -= old_size;
        }
        self.order.insert(tick, path.to_path_buf());
        self.total += size;
    }

    fn forget(&mut self, path: &Path) {
        if let Some((tick, size)) = self.files.remove(path) {
            self.order.remove(&tick);
            self.total -= size;
        }
    }
}

/// What the readers and the writer thread share.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    limit: u64,
    lru: Mutex<Lru>,
    /// Blocks this mount checked (fetched, or hashed once when first read from disk).
    verified: Mutex<HashSet<BlockKey>>,
    /// Verified blocks queued for the writer, served from here meanwhile.
    pending: Mutex<HashMap<BlockKey, Block>>,
    written: Condvar,
}

#[derive(Debug)]
pub struct BlockCache {
    shared: Arc<Shared>,
    memory: Mutex<VecDeque<(BlockKey, Block)>>,
    /// Started on first write: the cache is opened before the daemon forks.
    writer: OnceLock<Option<SyncSender<(BlockKey, Block)>>>,
    pub counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The key of a block file `blocks/<object>/<index>`.
fn key_of(path: &Path) -> Option<BlockKey> {
    let index = path.file_name()?.to_str()?.parse().ok()?;
    let object = path.parent()?.file_name()?.to_str()?;
    Some((object.to_string(), index))
}

impl Shared {
    fn block_path(&self, object: &str, index: u64) -> PathBuf {
        self.dir.join("blocks").join(object).join(index.to_string())
    }

    /// Writes one block: temporary name, then rename (a crash never leaves half a block
    /// under its name; no fsync: a block torn by a crash is caught when a later mount
    /// first reads it).
    fn write(&self, key: &BlockKey, bytes: &[u8]) {
        let path = self.block_path(&key.0, key.1);
        let Some(parent) = path.parent() else { return };
        // Made new (O_EXCL) under a name of this write alone: two mounts sharing the
        // folder (even with one pid, in two pid namespaces) never write one temp file.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let temp = parent.join(format!(
            ".{}.{}.{}.{}.tmp",
            key.1,
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        let written = std::fs::create_dir_all(parent)
            .and_then(|()| {
                let mut file = std::fs::File::options()
                    .write(true)
                    .create_new(true)
                    .open(&temp)?;
                std::io::Write::write_all(&mut file, bytes)
            })
            .and_then(|()| std::fs::rename(&temp, &path));
        match written {
            Ok(()) => {
                // The file under the block's name is now these verified bytes (or
                // another writer's whole, verified copy): no need to hash it when read.
                lock(&self.verified).insert(key.clone());
                lock(&self.lru).touch(&path, bytes.len() as u64);
                self.evict();
            }
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                tracing::debug!(file = %path.display(), error = %e, "cannot keep a block in the local cache");
            }
        }
    }

    /// Removes the least recently used blocks until the cache fits its limit.
    /// The files are removed after the LRU lock is let go: readers touching it on a hit
    /// never wait for an unlink.
    fn evict(&self) {
        let mut gone = Vec::new();
        {
            let mut lru = lock(&self.lru);
            while lru.total > self.limit {
                let Some(path) = lru.order.values().next().cloned() else {
                    break;
                };
                lru.forget(&path);
                if let Some(key) = key_of(&path) {
                    lock(&self.verified).remove(&key);
                }
                gone.push(path);
            }
        }
        for path in gone {
            let _ = std::fs::remove_file(&path);
        }
    }

    fn writer(self: Arc<Self>, jobs: std::sync::mpsc::Receiver<(BlockKey, Block)>) {
        for (key, bytes) in jobs {
            self.write(&key, &bytes);
            let mut pending = lock(&self.pending);
            // A newer copy of the same block may be queued: only that one's entry stays.
            if pending.get(&key).is_some_and(|b| Arc::ptr_eq(b, &bytes)) {
                pending.remove(&key);
            }
            if pending.is_empty() {
                self.written.notify_all();
            }
        }
    }
}

impl BlockCache {
    /// Opens (making it) the cache in `dir`, holding at most `limit` bytes of blocks.
    pub fn open(dir: &Path, limit: u64) -> Result<Self, String> {
        for sub in ["blocks", "digests", "index"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| {
                format!(
                    "cannot create the local cache {}: {e}; pass --local-cache DIR",
                    dir.display()
                )
            })?;
        }
        let mut found: Vec<(std::time::SystemTime, PathBuf, u64)> = Vec::new();
        for object in std::fs::read_dir(dir.join("blocks"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for block in std::fs::read_dir(object.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(meta) = block.metadata() {
                    let name = block.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') && name.ends_with(".tmp") {
                        // A block a killed mount was writing; an hour old, so not one that
                        // another live mount sharing this folder is writing now.
                        let stale = meta
                            .modified()
                            .ok()
                            .and_then(|m| m.elapsed().ok())
                            .is_some_and(|age| age.as_secs() > 3600);
                        if stale {
                            let _ = std::fs::remove_file(block.path());
                        }
                        continue;
                    }
                    if meta.is_file() && !name.starts_with('.') {
                        let used = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                        found.push((used, block.path(), meta.len()));
                    }
                }
            }
        }
        found.sort();
        let mut lru = Lru::default();
        for (_, path, size) in found {
            lru.touch(&path, size);
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            limit,
            lru: Mutex::new(lru),
            verified: Mutex::new(HashSet::new()),
            pending: Mutex::new(HashMap::new()),
            written: Condvar::new(),
        });
        shared.evict();
        Ok(BlockCache {
            shared,
            memory: Mutex::new(VecDeque::new()),
            writer: OnceLock::new(),
            counters: Counters::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Bytes of blocks on disk (as counted by this mount).
    pub fn size(&self) -> u64 {
        lock(&self.shared.lru).total
    }

    pub fn limit(&self) -> u64 {
        self.shared.limit
    }

    /// Block `index` of `object` if it is in memory (recently used, or queued for the
    /// writer): no disk read.
    pub fn in_memory(&self, object: &str, index: u64) -> Option<Block> {
        let key = (object.to_string(), index);
        {
            let mut memory = lock(&self.memory);
            if let Some(at) = memory.iter().position(|(k, _)| *k == key) {
                let entry = memory.remove(at)?;
                let bytes = entry.1.clone();
                memory.push_back(entry);
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Some(bytes);
            }
        }
        let queued = lock(&self.shared.pending).get(&key).cloned();
        if let Some(bytes) = queued {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            self.remember(key, bytes.clone());
            return Some(bytes);
        }
        None
    }

    /// Block `index` of the object whose sha256 is `object`, if cached (and, read from
    /// disk for the first time by this mount, if it hashes to `want`).
    pub fn get(&self, object: &str, index: u64, want: &[u8; 32]) -> Option<Block> {
        if let Some(bytes) = self.in_memory(object, index) {
            return Some(bytes);
        }
        let key = (object.to_string(), index);
        let shared = &self.shared;
        let path = shared.block_path(object, index);
        // Whether it was verified is taken before the read: a file replaced after the
        // check is hashed, never trusted on an older verdict.
        let checked = lock(&shared.verified).contains(&key);
        let bytes = std::fs::read(&path).ok()?;
        if !checked {
            if sha256(&bytes) != *want {
                tracing::warn!(target: crate::fault::TARGET, file = %path.display(), "a block of the local cache does not match its digest: dropped, fetched again");
                let _ = std::fs::remove_file(&path);
                lock(&shared.lru).forget(&path);
                return None;
            }
            lock(&shared.verified).insert(key.clone());
        }
        if let Ok(file) = std::fs::File::options().write(true).open(&path) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
        lock(&shared.lru).touch(&path, bytes.len() as u64);
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        let bytes: Block = Arc::new(bytes);
        self.remember(key, bytes.clone());
        Some(bytes)
    }

    fn remember(&self, key: BlockKey, bytes: Block) {
        let mut memory = lock(&self.memory);
        if memory.len() >= MEMORY_BLOCKS {
            memory.pop_front();
        }
        memory.push_back((key, bytes));
    }

    fn writer(&self) -> Option<&SyncSender<(BlockKey, Block)>> {
        self.writer
            .get_or_init(|| {
                let (send, receive) = sync_channel(WRITE_QUEUE);
                let shared = self.shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("block-writer".into())
                    .spawn(move || shared.writer(receive));
                match spawned {
                    Ok(_) => Some(send),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start the block writer: blocks are written by the readers");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Keeps a block that was just verified. A failure to write it is not an error: the
    /// block is served anyway, and fetched again next time.
    pub fn put(&self, object: &str, index: u64, bytes: Block) {
        let key = (object.to_string(), index);
        self.remember(key.clone(), bytes.clone());
        if self.shared.limit == 0 {
            return;
        }
        let Some(writer) = self.writer() else {
            self.shared.write(&key, &bytes);
            return;
        };
        lock(&self.shared.pending).insert(key.clone(), bytes.clone());
        if writer.send((key.clone(), bytes)).is_err() {
            lock(&self.shared.pending).remove(&key);
        }
    }

    /// Waits (at most [`FLUSH_WAIT`]) until the blocks queued so far are on disk.
    pub fn flush(&self) {
        let started = Instant::now();
        let mut pending = lock(&self.shared.pending);
        while !pending.is_empty() {
            let left = FLUSH_WAIT.saturating_sub(started.elapsed());
            if left.is_zero() {
                tracing::warn!(
                    blocks = pending.len(),
                    "blocks not yet written to the local cache are left out"
                );
                return;
            }
            pending = self
                .shared
                .written
                .wait_timeout(pending, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The verified block list of an object kept locally, if any.
    pub fn digests(&self, object: &str) -> Option<String> {
        std::fs::read_to_string(self.shared.dir.join("digests").join(object)).ok()
    }

    pub fn put_digests(&self, object: &str, text: &str) {
        let path = self.shared.dir.join("digests").join(object);
        let _ = crate::sums::write_atomically(&path, text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_oldest_and_checks_digests() {
        let dir = std::env::temp_dir().join(format!("blocks-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = BlockCache::open(&dir, 25).unwrap();
        let block = |b: u8| Arc::new(vec![b; 10]);
        for i in 0..3u8 {
            cache.put("obj", u64::from(i), block(i));
        }
        cache.flush();
        assert_eq!(cache.size(), 20, "the oldest block was evicted");
        assert!(!dir.join("blocks/obj/0").exists());
        // From disk (not memory): a new cache over the same folder.
        let again = BlockCache::open(&dir, 25).unwrap();
        assert_eq!(again.size(), 20);
        assert!(again.get("obj", 2, &sha256(&block(2))).is_some());
        std::fs::write(dir.join("blocks/obj/1"), b"tampered!!").unwrap();
        assert!(again.get("obj", 1, &sha256(&block(1))).is_none());
        assert!(!dir.join("blocks/obj/1").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
