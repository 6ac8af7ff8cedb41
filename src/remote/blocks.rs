//! The local block cache of remote objects (`--local-cache DIR`, `--local-cache-size`):
//! verified blocks only, kept across mounts, least recently used evicted first.
//!
//! Layout: `DIR/blocks/<object sha256>/<block number>` (content-addressed: the same
//! bytes published twice, or by two stores, are one entry), `DIR/digests/<object
//! sha256>` (the object's verified block list, so an evicted block is fetched and checked
//! alone again) and `DIR/index/` (seek indexes of remote archives). A block is written
//! under a temporary name and renamed; it is hashed again each time it is read from disk
//! (a damaged file is dropped and fetched again), so nothing unverified reaches a reader
//! even from a cache that was tampered with. Recently read blocks are also kept in
//! memory, verified, so the kernel's 128 KiB reads of one block cost one disk read.
//!
//! Recency is the file's mtime (touched on use), so the order survives remounts; the size
//! is counted at open by a scan. Several mounts may share a folder: a block another one
//! evicted is simply a miss.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// Blocks kept in memory (of [`super::manifest::BLOCK`] bytes each).
const MEMORY_BLOCKS: usize = 32;

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

#[derive(Debug)]
pub struct BlockCache {
    dir: PathBuf,
    limit: u64,
    lru: Mutex<Lru>,
    memory: Mutex<VecDeque<(BlockKey, Arc<[u8]>)>>,
    pub counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
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
                    if meta.is_file() && !block.file_name().to_string_lossy().starts_with('.') {
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
        let cache = BlockCache {
            dir: dir.to_path_buf(),
            limit,
            lru: Mutex::new(lru),
            memory: Mutex::new(VecDeque::new()),
            counters: Counters::default(),
        };
        cache.evict();
        Ok(cache)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of blocks on disk (as counted by this mount).
    pub fn size(&self) -> u64 {
        lock(&self.lru).total
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn block_path(&self, object: &str, index: u64) -> PathBuf {
        self.dir.join("blocks").join(object).join(index.to_string())
    }

    /// Block `index` of the object whose sha256 is `object`, if cached and it hashes to
    /// `want`.
    pub fn get(&self, object: &str, index: u64, want: &[u8; 32]) -> Option<Arc<[u8]>> {
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
        let path = self.block_path(object, index);
        let bytes = std::fs::read(&path).ok()?;
        if sha256(&bytes) != *want {
            tracing::warn!(target: crate::fault::TARGET, file = %path.display(), "a block of the local cache does not match its digest: dropped, fetched again");
            let _ = std::fs::remove_file(&path);
            lock(&self.lru).forget(&path);
            return None;
        }
        if let Ok(file) = std::fs::File::options().write(true).open(&path) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
        lock(&self.lru).touch(&path, bytes.len() as u64);
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        let bytes: Arc<[u8]> = Arc::from(bytes);
        self.remember(key, bytes.clone());
        Some(bytes)
    }

    fn remember(&self, key: BlockKey, bytes: Arc<[u8]>) {
        let mut memory = lock(&self.memory);
        if memory.len() >= MEMORY_BLOCKS {
            memory.pop_front();
        }
        memory.push_back((key, bytes));
    }

    /// Keeps a block that was just verified. A failure to write it is not an error: the
    /// block is served anyway, and fetched again next time.
    pub fn put(&self, object: &str, index: u64, bytes: Arc<[u8]>) {
        self.remember((object.to_string(), index), bytes.clone());
        if self.limit == 0 {
            return;
        }
        let path = self.block_path(object, index);
        let Some(parent) = path.parent() else { return };
        let temp = parent.join(format!(".{index}.{}.tmp", std::process::id()));
        let written = std::fs::create_dir_all(parent)
            .and_then(|()| std::fs::write(&temp, &bytes))
            .and_then(|()| std::fs::rename(&temp, &path));
        match written {
            Ok(()) => {
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
    fn evict(&self) {
        let mut lru = lock(&self.lru);
        while lru.total > self.limit {
            let Some((_, path)) = lru.order.iter().next().map(|(t, p)| (*t, p.clone())) else {
                break;
            };
            let _ = std::fs::remove_file(&path);
            lru.forget(&path);
        }
    }

    /// The verified block list of an object kept locally, if any.
    pub fn digests(&self, object: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join("digests").join(object)).ok()
    }

    pub fn put_digests(&self, object: &str, text: &str) {
        let path = self.dir.join("digests").join(object);
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
        let block = |b: u8| Arc::<[u8]>::from(vec![b; 10]);
        for i in 0..3u8 {
            cache.put("obj", u64::from(i), block(i));
        }
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
