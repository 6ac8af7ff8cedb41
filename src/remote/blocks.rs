//! The local block cache of remote objects (`--local-cache DIR`, `--local-cache-size`):
//! verified blocks only, kept across mounts, least recently used objects evicted first.
//!
//! Layout: `DIR/objects/<object sha256>`, one sparse file per object with each block
//! written at its own offset (content-addressed: the same bytes published twice, or by
//! two stores, are one file); `DIR/objects/<object sha256>.verified`, which blocks of
//! that file are verified (the marker); `DIR/digests/<object sha256>` (the object's
//! block list, so a block is fetched and checked alone) and `DIR/index/` (seek indexes
//! of remote archives).
//!
//! Trust: a block is checked against its published digest once, when fetched, before it
//! is served or kept; it is written into the object's file by the thread that fetched it.
//! A block is marked verified on disk only after its bytes were made durable (fdatasync
//! of the object file, then the marker is written under a temporary name and renamed;
//! the marker needs no fsync of its own: lost or torn, it vouches for fewer blocks):
//! a crash leaves at worst blocks written but not marked, which are fetched again. The
//! marker records the object file's identity (inode, size, mtime and ctime in ns) as it
//! was when marked; a later mount trusts the marked blocks without hashing them only
//! while the file is still that one. A file written or replaced since (a torn write of a
//! crashed mount, an edit, a copy) has its marked blocks hashed again the first time they
//! are read (a mismatch is fetched again). Within a mount, blocks are trusted as the
//! local `--cache` folder is: a file changed under a running mount is not noticed.
//!
//! An object whose blocks are all verified is whole on disk: [`BlockCache::local_file`]
//! hands its file out, and the kernel reads it directly (FUSE passthrough), the daemon
//! out of the path.
//!
//! Size and eviction: `--local-cache-size` bounds the bytes of blocks kept. Eviction
//! removes whole objects (file and marker), least recently used first: a hole punched in
//! a file the kernel may be reading directly would read as zeros, while an unlinked file
//! stays whole for the opens that hold it. An object larger than the whole cache is kept
//! only up to the limit; its later blocks are served but not kept. Recency is the
//! marker's mtime (touched on first use by a mount), so the order survives remounts; the
//! size is counted at open by a scan (allocated bytes). Several mounts may share a
//! folder: an object another one evicted is simply a miss.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::manifest::BLOCK;

/// Blocks kept in memory (of [`BLOCK`] bytes each): twice a sequential reader's
/// read-ahead window (checked in `object`), so the blocks fetched ahead are still there
/// when it gets to them.
pub const MEMORY_BLOCKS: usize = 64;
/// How long newly verified blocks wait to be marked (batched: one fdatasync and one
/// marker write per object and pass).
const MARK_EVERY: Duration = Duration::from_millis(500);
/// Object files kept open by a mount before the idle ones are closed.
const OPEN_OBJECTS: usize = 256;
/// The marker of an object file: `<object sha256>` + this.
const MARKER: &str = ".verified";
/// The first word of a marker.
const MARKER_HEAD: &str = "rootfs-mount-verified";

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

/// What is known of one block of an object file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not written, or not known to be good.
    Absent,
    /// Marked by an earlier mount, but the file changed since: hashed when first read.
    Suspect,
    /// Verified and written by this mount; not yet durable in the marker.
    Verified,
    /// Verified, durable, and in the marker on disk.
    Marked,
}

impl State {
    fn trusted(self) -> bool {
        matches!(self, State::Verified | State::Marked)
    }
}

/// The object file's identity as its marker records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> Self {
        FileId {
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

/// A marker: the file identity and one bit per block (`1`: verified and durable).
fn format_marker(id: &FileId, marked: &[bool]) -> String {
    let mut bits = vec![0u8; marked.len().div_ceil(8)];
    for (i, _) in marked.iter().enumerate().filter(|(_, m)| **m) {
        bits[i / 8] |= 1 << (i % 8);
    }
    format!(
        "{MARKER_HEAD} 1 {} {} {} {} {}\n{}\n",
        id.len,
        id.ino,
        id.mtime_ns,
        id.ctime_ns,
        marked.len(),
        crate::sums::hex(&bits)
    )
}

fn parse_marker(text: &str) -> Option<(FileId, Vec<bool>)> {
    let mut lines = text.lines();
    let mut head = lines.next()?.split(' ');
    if head.next()? != MARKER_HEAD || head.next()? != "1" {
        return None;
    }
    let mut number = || head.next()?.parse::<i128>().ok();
    let (len, ino, mtime_ns, ctime_ns, count) =
        (number()?, number()?, number()?, number()?, number()?);
    let hex = lines.next()?.trim();
    let count = usize::try_from(count).ok()?;
    if hex.len() != count.div_ceil(8) * 2 {
        return None;
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    let marked = (0..count)
        .map(|i| bytes[i / 8] & (1 << (i % 8)) != 0)
        .collect();
    let id = FileId {
        len: u64::try_from(len).ok()?,
        ino: u64::try_from(ino).ok()?,
        mtime_ns,
        ctime_ns,
    };
    Some((id, marked))
}

/// One object's file in the local cache, open for this mount.
#[derive(Debug)]
struct ObjectFile {
    sha: String,
    path: PathBuf,
    file: File,
    ino: u64,
    size: u64,
    states: Mutex<Vec<State>>,
    /// Evicted: its name is gone; nothing more is written to it or marked.
    gone: AtomicBool,
}

impl ObjectFile {
    fn block_len(&self, index: u64) -> u64 {
        BLOCK.min(self.size.saturating_sub(index * BLOCK))
    }

    fn state(&self, index: u64) -> State {
        lock(&self.states)
            .get(index as usize)
            .copied()
            .unwrap_or(State::Absent)
    }

    fn set(&self, index: u64, state: State) {
        if let Some(s) = lock(&self.states).get_mut(index as usize) {
            *s = state;
        }
    }

    fn whole(&self) -> bool {
        lock(&self.states).iter().all(|s| s.trusted())
    }

    /// Reads block `index` from the file (exactly its length).
    fn read(&self, index: u64) -> std::io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; self.block_len(index) as usize];
        self.file.read_exact_at(&mut bytes, index * BLOCK)?;
        Ok(bytes)
    }
}

#[derive(Debug, Default)]
struct Lru {
    /// Use tick to object; object to (tick, bytes).
    order: BTreeMap<u64, String>,
    objects: HashMap<String, (u64, u64)>,
    total: u64,
    tick: u64,
}

impl Lru {
    /// Makes `sha` the most recently used, holding `bytes` (its old count if `None`).
    fn touch(&mut self, sha: &str, bytes: Option<u64>) {
        self.tick += 1;
        let tick = self.tick;
        let old = self.objects.remove(sha);
        if let Some((old_tick, old_bytes)) = old {
            self.order.remove(&old_tick);
            self.total -= old_bytes;
        }
        let bytes = bytes.or(old.map(|o| o.1)).unwrap_or(0);
        self.objects.insert(sha.to_string(), (tick, bytes));
        self.order.insert(tick, sha.to_string());
        self.total += bytes;
    }

    fn grow(&mut self, sha: &str, by: u64) {
        if let Some((_, bytes)) = self.objects.get_mut(sha) {
            *bytes += by;
            self.total += by;
        }
    }

    fn shrink(&mut self, sha: &str, by: u64) {
        if let Some((_, bytes)) = self.objects.get_mut(sha) {
            let by = by.min(*bytes);
            *bytes -= by;
            self.total -= by;
        }
    }

    fn forget(&mut self, sha: &str) {
        if let Some((tick, bytes)) = self.objects.remove(sha) {
            self.order.remove(&tick);
            self.total -= bytes;
        }
    }
}

/// What the readers and the marker thread share.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    limit: u64,
    lru: Mutex<Lru>,
    /// Object files open in this mount.
    open: Mutex<HashMap<String, Arc<ObjectFile>>>,
    /// Objects with blocks verified but not yet marked.
    dirty: Mutex<HashSet<String>>,
    wake: Condvar,
    /// Set by the last flush: no block is written after it (read lock: a write; write
    /// lock: closing), so the markers it writes describe the files as they stay.
    closing: RwLock<bool>,
}

#[derive(Debug)]
pub struct BlockCache {
    shared: Arc<Shared>,
    memory: Mutex<VecDeque<(BlockKey, Block)>>,
    /// Started on first write: the cache is opened before the daemon forks.
    marker: OnceLock<bool>,
    pub counters: Counters,
}

/// The caches of this process that may have blocks to mark: the marker thread keeps its
/// cache alive after the mount's tree (and its [`BlockCache`]) is dropped at the end of
/// the session, so [`close_all`] still finds it.
fn opened() -> &'static Mutex<Vec<std::sync::Weak<Shared>>> {
    static OPENED: Mutex<Vec<std::sync::Weak<Shared>>> = Mutex::new(Vec::new());
    &OPENED
}

/// Marks the blocks verified so far in every cache of this process, and writes no more
/// (the daemon is exiting: a later mount trusts them without hashing them again).
pub fn close_all() {
    let caches: Vec<Arc<Shared>> = lock(opened())
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .collect();
    for cache in caches {
        cache.close();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn is_object_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A name for a temporary file of one write alone: two mounts sharing the folder (even
/// with one pid, in two pid namespaces) never write one temp file.
fn temp_name(of: &str) -> String {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    format!(
        ".{of}.{}.{}.{}.tmp",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    )
}

impl Shared {
    fn objects(&self) -> PathBuf {
        self.dir.join("objects")
    }

    fn marker_path(&self, sha: &str) -> PathBuf {
        self.objects().join(format!("{sha}{MARKER}"))
    }

    /// The object file of `sha` (`size` bytes), opened (made, sparse) on first use, with
    /// what its marker says of its blocks.
    fn object(&self, sha: &str, size: u64) -> std::io::Result<Arc<ObjectFile>> {
        let mut open = lock(&self.open);
        if let Some(found) = open.get(sha) {
            return Ok(found.clone());
        }
        let path = self.objects().join(sha);
        let open_file = || {
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        };
        let mut file = open_file()?;
        let mut meta = file.metadata()?;
        let count = size.div_ceil(BLOCK) as usize;
        let marker = self.marker_path(sha);
        if meta.len() != size {
            // New, or not this object's length (damaged): nothing in it is kept.
            let _ = std::fs::remove_file(&marker);
            if meta.len() != 0 {
                tracing::warn!(target: crate::fault::TARGET, file = %path.display(), "a file of the local cache has the wrong length: dropped, fetched again");
                // Never cut in place: another mount's kernel may be reading this file
                // (passthrough); a new file takes its name.
                drop(file);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                file = open_file()?;
                meta = file.metadata()?;
            }
            if meta.len() == 0 {
                file.set_len(size)?;
                meta = file.metadata()?;
            }
            if meta.len() != size {
                return Err(std::io::Error::other(format!(
                    "{} is being made with another length by another mount",
                    path.display()
                )));
            }
        }
        let states = match std::fs::read_to_string(&marker)
            .ok()
            .and_then(|t| parse_marker(&t))
        {
            Some((id, marked)) if marked.len() == count => {
                let trusted = id == FileId::of(&meta);
                if !trusted {
                    tracing::info!(file = %path.display(), "a file of the local cache changed since its blocks were verified: they are hashed again as they are read");
                }
                let kept = if trusted {
                    State::Marked
                } else {
                    State::Suspect
                };
                marked
                    .into_iter()
                    .map(|m| if m { kept } else { State::Absent })
                    .collect()
            }
            _ => vec![State::Absent; count],
        };
        // Recency across remounts: the marker's mtime (the object file's own times are
        // part of its identity).
        if let Ok(m) = File::options().write(true).open(&marker) {
            let _ = m.set_modified(std::time::SystemTime::now());
        }
        let allocated = (meta.blocks() * 512).min(size);
        {
            let mut lru = lock(&self.lru);
            let known = lru.objects.get(sha).map(|o| o.1);
            lru.touch(sha, Some(known.unwrap_or(allocated)));
        }
        let object = Arc::new(ObjectFile {
            sha: sha.to_string(),
            path,
            ino: meta.ino(),
            file,
            size,
            states: Mutex::new(states),
            gone: AtomicBool::new(false),
        });
        if open.len() >= OPEN_OBJECTS {
            // Let go of the files no one uses now with nothing left to mark (they are
            // opened again, from their markers, when needed): one descriptor per object
            // read would otherwise stay open for the whole mount.
            open.retain(|_, o| {
                Arc::strong_count(o) > 1 || lock(&o.states).contains(&State::Verified)
            });
        }
        open.insert(sha.to_string(), object.clone());
        Ok(object)
    }

    /// Makes room for `len` more bytes of `keep` by evicting other objects, least
    /// recently used first, and counts them (in the same hold of the lock: concurrent
    /// writers never both take the last room). False: `keep` alone would not fit.
    fn reserve(&self, keep: &str, len: u64) -> bool {
        let mut gone = Vec::new();
        let fits = {
            let mut lru = lock(&self.lru);
            loop {
                if lru.total + len <= self.limit {
                    lru.grow(keep, len);
                    break true;
                }
                let victim = lru.order.values().find(|s| *s != keep).cloned();
                let Some(victim) = victim else { break false };
                lru.forget(&victim);
                gone.push(victim);
            }
        };
        for sha in gone {
            self.evict(&sha);
        }
        fits
    }

    /// Removes the object `sha` from disk: marker first (a crash in between leaves a
    /// file no marker vouches for).
    fn evict(&self, sha: &str) {
        if let Some(object) = lock(&self.open).remove(sha) {
            object.gone.store(true, Ordering::Relaxed);
        }
        let _ = std::fs::remove_file(self.marker_path(sha));
        let _ = std::fs::remove_file(self.objects().join(sha));
    }

    /// Makes the blocks of `object` verified so far durable, then marks them.
    fn mark(&self, object: &ObjectFile) {
        if object.gone.load(Ordering::Relaxed) {
            return;
        }
        let newly: Vec<usize> = lock(&object.states)
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == State::Verified)
            .map(|(i, _)| i)
            .collect();
        if newly.is_empty() {
            return;
        }
        if let Err(e) = object.file.sync_data() {
            tracing::debug!(file = %object.path.display(), error = %e, "cannot make blocks durable: not marked");
            return;
        }
        let marked: Vec<bool> = {
            let mut states = lock(&object.states);
            for i in newly {
                states[i] = State::Marked;
            }
            states.iter().map(|s| *s == State::Marked).collect()
        };
        // The identity after the sync; a block written after it changes the file's
        // times, so a later mount hashes the marked blocks again (never trusts more).
        let id = match object.file.metadata() {
            Ok(meta) => FileId::of(&meta),
            Err(_) => return,
        };
        // Only while the name is still this file (not evicted by another mount).
        match std::fs::metadata(&object.path) {
            Ok(meta) if meta.ino() == object.ino => {}
            _ => return,
        }
        let path = self.marker_path(&object.sha);
        let temp = self
            .objects()
            .join(temp_name(&format!("{}{MARKER}", object.sha)));
        let written = (|| {
            let mut file = File::options().write(true).create_new(true).open(&temp)?;
            // No fsync of the marker itself: it names only blocks already durable, and
            // a marker lost or torn by a crash (it then fails to parse) vouches for
            // fewer blocks, never for more.
            std::io::Write::write_all(&mut file, format_marker(&id, &marked).as_bytes())?;
            std::fs::rename(&temp, &path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            tracing::debug!(file = %path.display(), error = %e, "cannot write a marker of the local cache");
        }
    }

    /// Marks the dirty objects' blocks.
    fn mark_dirty(&self) {
        let dirty: Vec<String> = lock(&self.dirty).drain().collect();
        for sha in dirty {
            let object = lock(&self.open).get(&sha).cloned();
            if let Some(object) = object {
                self.mark(&object);
            }
        }
    }

    /// Writes no more blocks, then marks the ones verified so far.
    fn close(&self) {
        *self.closing.write().unwrap_or_else(|p| p.into_inner()) = true;
        self.mark_dirty();
    }

    /// The marker thread: marks newly verified blocks, a batch at a time.
    fn marker(&self) {
        loop {
            {
                let mut dirty = lock(&self.dirty);
                while dirty.is_empty() {
                    dirty = self.wake.wait(dirty).unwrap_or_else(|p| p.into_inner());
                }
            }
            std::thread::sleep(MARK_EVERY);
            self.mark_dirty();
        }
    }
}

impl BlockCache {
    /// Opens (making it) the cache in `dir`, holding at most `limit` bytes of blocks.
    pub fn open(dir: &Path, limit: u64) -> Result<Self, String> {
        for sub in ["objects", "digests", "index"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| {
                format!(
                    "cannot create the local cache {}: {e}; pass --local-cache DIR",
                    dir.display()
                )
            })?;
        }
        // One file per block, as kept by earlier versions: not read any more.
        if dir.join("blocks").is_dir() {
            tracing::info!(dir = %dir.join("blocks").display(), "removing the blocks of an older local cache layout");
            let _ = std::fs::remove_dir_all(dir.join("blocks"));
        }
        let mut found: Vec<(std::time::SystemTime, String, u64)> = Vec::new();
        let mut markers: HashMap<String, std::time::SystemTime> = HashMap::new();
        for entry in std::fs::read_dir(dir.join("objects"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(meta) = entry.metadata() else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A marker a killed mount was writing; an hour old, so not one that
                // another live mount sharing this folder is writing now.
                let stale = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 3600);
                if stale {
                    let _ = std::fs::remove_file(entry.path());
                }
            } else if let Some(sha) = name.strip_suffix(MARKER) {
                markers.insert(
                    sha.to_string(),
                    meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                );
            } else if is_object_name(&name) && meta.is_file() {
                let used = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                found.push((used, name, (meta.blocks() * 512).min(meta.len())));
            }
        }
        for (used, sha, _) in &mut found {
            if let Some(marked) = markers.get(sha.as_str()) {
                *used = *marked;
            }
        }
        found.sort();
        let mut lru = Lru::default();
        for (_, sha, size) in found {
            lru.touch(&sha, Some(size));
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            limit,
            lru: Mutex::new(lru),
            open: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
            wake: Condvar::new(),
            closing: RwLock::new(false),
        });
        shared.reserve("", 0);
        let mut opened = lock(opened());
        opened.retain(|w| w.strong_count() > 0);
        opened.push(Arc::downgrade(&shared));
        drop(opened);
        Ok(BlockCache {
            shared,
            memory: Mutex::new(VecDeque::new()),
            marker: OnceLock::new(),
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

    /// Block `index` of `object` if it is in memory (recently used): no disk read.
    pub fn in_memory(&self, object: &str, index: u64) -> Option<Block> {
        let key = (object.to_string(), index);
        let mut memory = lock(&self.memory);
        let at = memory.iter().position(|(k, _)| *k == key)?;
        let entry = memory.remove(at)?;
        let bytes = entry.1.clone();
        memory.push_back(entry);
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        Some(bytes)
    }

    /// Block `index` of the object whose sha256 is `object` (`size` bytes), if it is in
    /// the local cache: read as it is when verified, hashed (against `want`) when an
    /// earlier mount's marker no longer vouches for it.
    pub fn get(&self, object: &str, size: u64, index: u64, want: &[u8; 32]) -> Option<Block> {
        if let Some(bytes) = self.in_memory(object, index) {
            return Some(bytes);
        }
        if self.shared.limit == 0 {
            return None;
        }
        let file = self.shared.object(object, size).ok()?;
        // The state is taken before the read: a block rewritten after the check is
        // hashed, never trusted on an older verdict.
        let state = file.state(index);
        if state == State::Absent {
            return None;
        }
        let bytes = file.read(index).ok()?;
        if state == State::Suspect {
            if sha256(&bytes) != *want {
                tracing::warn!(target: crate::fault::TARGET, file = %file.path.display(), block = index, "a block of the local cache does not match its digest: fetched again");
                file.set(index, State::Absent);
                return None;
            }
            file.set(index, State::Verified);
            self.dirty(object);
        }
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        let bytes: Block = Arc::new(bytes);
        self.remember((object.to_string(), index), bytes.clone());
        Some(bytes)
    }

    fn remember(&self, key: BlockKey, bytes: Block) {
        let mut memory = lock(&self.memory);
        if memory.len() >= MEMORY_BLOCKS {
            memory.pop_front();
        }
        memory.push_back((key, bytes));
    }

    /// Queues `object` for the marker thread (started on first use).
    fn dirty(&self, object: &str) {
        let started = *self.marker.get_or_init(|| {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("block-marker".into())
                .spawn(move || shared.marker());
            if let Err(e) = &spawned {
                tracing::warn!(error = %e, "cannot start the block marker: blocks are marked when the mount ends");
            }
            spawned.is_ok()
        });
        lock(&self.shared.dirty).insert(object.to_string());
        if started {
            self.shared.wake.notify_one();
        }
    }

    /// Keeps block `index` of `object` (`size` bytes), just fetched and verified: written
    /// at its offset in the object's file by the calling thread (the one that fetched
    /// it), marked later. A failure to write it is not an error: the block is served
    /// anyway, and fetched again next time.
    pub fn put(&self, object: &str, size: u64, index: u64, bytes: Block) {
        self.remember((object.to_string(), index), bytes.clone());
        if self.shared.limit == 0 {
            return;
        }
        let closing = self
            .shared
            .closing
            .read()
            .unwrap_or_else(|p| p.into_inner());
        if *closing {
            return;
        }
        let Ok(file) = self.shared.object(object, size) else {
            return;
        };
        let state = file.state(index);
        if state.trusted() || file.gone.load(Ordering::Relaxed) {
            return;
        }
        // A block already counted (marked by an earlier mount) takes no more room.
        let grows = if state == State::Absent {
            bytes.len() as u64
        } else {
            0
        };
        if !self.shared.reserve(object, grows) {
            return;
        }
        match file.file.write_all_at(&bytes, index * BLOCK) {
            Ok(()) => {
                file.set(index, State::Verified);
                drop(closing);
                self.dirty(object);
            }
            Err(e) => {
                lock(&self.shared.lru).shrink(object, grows);
                tracing::debug!(file = %file.path.display(), error = %e, "cannot keep a block in the local cache");
            }
        }
    }

    /// The object's file, read-only, when all its blocks are verified on disk: the
    /// kernel may read it directly. Counted as a hit.
    pub fn local_file(&self, object: &str, size: u64) -> Option<File> {
        let shared = &self.shared;
        // An object never kept is not made here (an open that reads nothing).
        let known = lock(&shared.open).contains_key(object);
        if shared.limit == 0 || !(known || shared.objects().join(object).exists()) {
            return None;
        }
        let file = shared.object(object, size).ok()?;
        if !file.whole() || file.gone.load(Ordering::Relaxed) {
            return None;
        }
        let opened = File::open(&file.path).ok()?;
        let meta = opened.metadata().ok()?;
        if meta.ino() != file.ino || meta.len() != size {
            return None;
        }
        lock(&shared.lru).touch(object, None);
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        Some(opened)
    }

    /// Marks every block verified so far; with `last`, nothing is written after it (the
    /// mount is ending).
    pub fn flush(&self, last: bool) {
        if last {
            self.shared.close();
        } else {
            self.shared.mark_dirty();
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

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("blocks-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn block(b: u8, len: usize) -> Block {
        Arc::new(vec![b; len])
    }

    #[test]
    fn markers_round_trip() {
        let id = FileId {
            ino: 7,
            len: 3 * BLOCK,
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: 1_700_000_001_000_000_000,
        };
        let marked = vec![true, false, true, true, false, false, false, false, true];
        let (back, bits) = parse_marker(&format_marker(&id, &marked)).unwrap();
        assert_eq!((back, bits), (id, marked));
        assert!(parse_marker("rootfs-mount-verified 1 1 2 3 4 9\n00\n").is_none());
    }

    /// A block verified by an earlier mount is read without hashing while the file is
    /// unchanged; once the file changed, its marked blocks are hashed, and a damaged one
    /// is refused (then fetched again by the caller).
    #[test]
    fn marked_blocks_are_trusted_until_the_file_changes() {
        let dir = dir("marks");
        let size = 2 * BLOCK + 10;
        let blocks = [
            block(1, BLOCK as usize),
            block(2, BLOCK as usize),
            block(3, 10),
        ];
        let cache = BlockCache::open(&dir, 1 << 30).unwrap();
        for (i, b) in blocks.iter().enumerate() {
            cache.put(A, size, i as u64, b.clone());
        }
        assert!(cache.local_file(A, size).is_some(), "whole: handed out");
        cache.flush(true);
        drop(cache);

        let again = BlockCache::open(&dir, 1 << 30).unwrap();
        assert_eq!(again.size(), size);
        // A wrong digest is not looked at for a marked block of an unchanged file.
        assert_eq!(again.get(A, size, 1, &[0; 32]).unwrap(), blocks[1]);
        assert!(again.local_file(A, size).is_some());
        drop(again);

        // Damage block 0 (the file's times change): hashed, refused.
        let file = File::options()
            .write(true)
            .open(dir.join("objects").join(A))
            .unwrap();
        file.write_all_at(b"x", 5).unwrap();
        let third = BlockCache::open(&dir, 1 << 30).unwrap();
        assert!(
            third.local_file(A, size).is_none(),
            "not whole until checked"
        );
        assert!(third.get(A, size, 0, &sha256(&blocks[0])).is_none());
        assert_eq!(
            third.get(A, size, 2, &sha256(&blocks[2])).unwrap(),
            blocks[2]
        );
        // Fetched again (by the caller) and kept: whole again.
        third.put(A, size, 0, blocks[0].clone());
        assert!(
            third.local_file(A, size).is_none(),
            "block 1 is not checked yet"
        );
        assert!(third.get(A, size, 1, &sha256(&blocks[1])).is_some());
        assert!(third.local_file(A, size).is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Nothing is marked before it is written and synced: a cache dropped without a
    /// flush (a killed mount) trusts nothing the marker thread had not marked.
    #[test]
    fn unflushed_blocks_are_not_marked() {
        let dir = dir("unflushed");
        let cache = BlockCache::open(&dir, 1 << 30).unwrap();
        cache.put(A, BLOCK, 0, block(9, BLOCK as usize));
        // No flush, and the marker thread waits MARK_EVERY first.
        let again = BlockCache::open(&dir, 1 << 30).unwrap();
        assert!(again.get(A, BLOCK, 0, &[0; 32]).is_none());
        assert!(!dir.join("objects").join(format!("{A}{MARKER}")).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Writers of one object at once never both take the last room.
    #[test]
    fn concurrent_writers_stay_within_the_limit() {
        let dir = dir("concurrent");
        let cache = BlockCache::open(&dir, 2 * BLOCK).unwrap();
        cache.shared.object(A, 8 * BLOCK).unwrap();
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for i in 0..8u64 {
                let (cache, start) = (&cache, &start);
                s.spawn(move || {
                    let bytes = block(i as u8, BLOCK as usize);
                    start.wait();
                    cache.put(A, 8 * BLOCK, i, bytes)
                });
            }
        });
        assert_eq!(cache.size(), 2 * BLOCK);
        let kept = (0..8).filter(|i| {
            cache
                .shared
                .object(A, 8 * BLOCK)
                .unwrap()
                .state(*i)
                .trusted()
        });
        assert_eq!(kept.count(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lru_evicts_whole_objects_and_keeps_within_the_limit() {
        let dir = dir("lru");
        let limit = 3 * BLOCK;
        let cache = BlockCache::open(&dir, limit).unwrap();
        cache.put(A, 2 * BLOCK, 0, block(1, BLOCK as usize));
        cache.put(A, 2 * BLOCK, 1, block(2, BLOCK as usize));
        cache.put(B, 3 * BLOCK, 0, block(3, BLOCK as usize));
        assert_eq!(cache.size(), 3 * BLOCK);
        cache.put(B, 3 * BLOCK, 1, block(4, BLOCK as usize));
        assert!(!dir.join("objects").join(A).exists(), "A evicted whole");
        assert_eq!(cache.size(), 2 * BLOCK);
        cache.put(B, 3 * BLOCK, 2, block(5, BLOCK as usize));
        // B alone is the limit; a larger object would be kept only up to it.
        assert_eq!(cache.size(), 3 * BLOCK);
        cache.flush(true);
        drop(cache);
        let again = BlockCache::open(&dir, 2 * BLOCK).unwrap();
        assert!(again.size() <= 2 * BLOCK, "a smaller limit evicts at open");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
