//! A cache held in an object store (`--cache s3://BUCKET/PREFIX`, `--cache https://HOST/PATH/`)
//! instead of a local folder: the same layout (docs/DESIGN.md §4), so the tree and its rendering are
//! those of a mount of the local cache it was published from (`cache publish`).
//!
//! At mount, once: `SHA256SUMS` and `.rootfs-mount/manifest` (checked against it) say
//! what the store holds, with each file's mode, owner and mtime; an S3 store is also
//! listed, for each object's size and ETag. Nothing is refreshed afterwards: an object
//! that changes under the mount (another ETag, or bytes that do not hash to their
//! digest) gives EIO for that file, as a changed file of a local cache does.
//!
//! Reads go by range through the local block cache ([`blocks`]), each block verified
//! before it is served ([`object`]); archives are indexed from those reads and their
//! indexes kept in the local cache's `index/`. A store that does not answer makes the
//! reads that need it fail with EIO after `--remote-timeout` (blocks already cached keep
//! being served).
//!
//! - [`store`]: the S3 / HTTP client (rusty-s3 signing over reqwest);
//! - [`credentials`]: AWS environment and shared files;
//! - [`manifest`]: the manifest and block list formats;
//! - [`blocks`], [`object`]: the local block cache and ranged, verified reads;
//! - [`layer`]: the layer showing a folder or file of the store;
//! - [`publish`]: `cache publish s3://...` and the extras of a mirror folder.

pub mod blocks;
pub mod credentials;
pub mod layer;
pub mod manifest;
pub mod object;
pub mod publish;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::archive::{ArchiveSource, IndexedArchive};
use crate::layers::CacheObjects;
use crate::sums;
use manifest::{Kind, Manifest};
use object::{Backing, ObjectSource, RemoteObject};
pub use store::Location;
use store::Store;

/// Default `--remote-timeout`: the longest a read waits for a store that does not answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `--local-cache-size`.
pub const DEFAULT_LOCAL_SIZE: u64 = 10 << 30;

/// How to reach a remote cache and where to keep its blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteOptions {
    pub location: Location,
    pub endpoint: Option<String>,
    pub local_cache: PathBuf,
    pub local_cache_size: u64,
    pub timeout: Duration,
}

/// What `status` shows of a mount's store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RemoteStatus {
    pub store: String,
    pub fetched_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub local_cache: String,
    pub local_cache_bytes: u64,
    pub local_cache_limit: u64,
}

/// An opened remote cache: its manifest and the objects read so far.
pub struct RemoteCache {
    backing: Arc<Backing>,
    /// Where the mount keeps archive indexes: published ones are placed there.
    indexes: crate::archive::IndexStore,
    manifest: Manifest,
    /// Folder path to its children (name, is a file).
    children: HashMap<String, Vec<String>>,
    objects: Mutex<HashMap<String, Arc<IndexedArchive>>>,
}

impl std::fmt::Debug for RemoteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCache")
            .field("store", &self.backing.store)
            .finish_non_exhaustive()
    }
}

fn opened() -> &'static Mutex<Vec<Weak<RemoteCache>>> {
    static OPENED: Mutex<Vec<Weak<RemoteCache>>> = Mutex::new(Vec::new());
    &OPENED
}

/// The counters of the remote cache this process serves, if any.
pub fn status() -> Option<RemoteStatus> {
    let list = opened().lock().unwrap_or_else(|p| p.into_inner());
    let cache = list.iter().rev().find_map(Weak::upgrade)?;
    let b = &cache.backing;
    let c = &b.cache.counters;
    Some(RemoteStatus {
        store: b.store.location().to_string(),
        fetched_bytes: c.fetched_bytes.load(Ordering::Relaxed),
        hits: c.hits.load(Ordering::Relaxed),
        misses: c.misses.load(Ordering::Relaxed),
        local_cache: b.cache.dir().display().to_string(),
        local_cache_bytes: b.cache.size(),
        local_cache_limit: b.cache.limit(),
    })
}

/// Marks the blocks fetched so far as verified in the local caches, and writes no more
/// (the daemon is exiting: a later mount trusts them without hashing them again).
/// Called after the session ended, when the mount's tree (and its caches) may be gone
/// already: [`blocks::close_all`] finds the caches with blocks to mark.
pub fn flush() {
    blocks::close_all();
}

/// `a/b` joined with `c` (either may be empty).
fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

fn rel_str(rel: &Path) -> String {
    rel.to_string_lossy().trim_matches('/').to_string()
}

impl RemoteCache {
    /// Reads the store's SHA256SUMS, manifest and (S3) listing: once, at mount. Every
    /// refusal is one line.
    pub fn open(opts: &RemoteOptions, index_dir: &Path) -> Result<Arc<Self>, String> {
        let (manifest, sums, etags) = {
            // Its own client, dropped (with its thread) before the daemon forks.
            let lister = Store::new(
                opts.location.clone(),
                opts.endpoint.as_deref(),
                opts.timeout,
            )?;
            read_listing(&lister)?
        };
        let store = Store::new(
            opts.location.clone(),
            opts.endpoint.as_deref(),
            opts.timeout,
        )?;
        for (rel, etag) in etags {
            store.pin_etag(&rel, etag);
        }
        let cache = blocks::BlockCache::open(&opts.local_cache, opts.local_cache_size)?;
        let mut children: HashMap<String, Vec<String>> = HashMap::new();
        for path in manifest.keys() {
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            children
                .entry(parent.to_string())
                .or_default()
                .push(name.to_string());
        }
        let remote = Arc::new(RemoteCache {
            indexes: crate::archive::IndexStore::new(index_dir.to_path_buf()),
            backing: Arc::new(Backing { store, cache, sums }),
            manifest,
            children,
            objects: Mutex::new(HashMap::new()),
        });
        let mut list = opened().lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(&remote));
        Ok(remote)
    }

    pub fn location(&self) -> &Location {
        self.backing.store.location()
    }

    /// Where archive indexes of this store are kept by default.
    pub fn index_dir(&self) -> PathBuf {
        self.backing.cache.dir().join("index")
    }

    pub fn entry(&self, rel: &str) -> Option<&manifest::Entry> {
        self.manifest.get(rel)
    }

    pub fn children_of(&self, rel: &str) -> &[String] {
        self.children.get(rel).map(Vec::as_slice).unwrap_or(&[])
    }

    fn object(&self, rel: &str) -> io::Result<Arc<RemoteObject>> {
        let (entry, size) = match self.manifest.get(rel) {
            Some(
                e @ manifest::Entry {
                    kind: Kind::File { size },
                    ..
                },
            ) => (e.clone(), *size),
            _ => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
        };
        let digest = self
            .backing
            .sums
            .get(rel)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        Ok(RemoteObject::new(
            self.backing.clone(),
            rel,
            digest,
            entry,
            size,
        ))
    }

    /// The file `rel` served as it is (one per object for the whole mount).
    pub fn stored(&self, rel: &str) -> io::Result<Arc<IndexedArchive>> {
        let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = objects.get(rel) {
            return Ok(found.clone());
        }
        let object = self.object(rel)?;
        let size = match &object_entry(&self.manifest, rel) {
            Some(size) => *size,
            None => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
        };
        let stored = Arc::new(IndexedArchive::stored(
            object.shown(),
            Box::new(ObjectSource(object)),
            size,
        )?);
        objects.insert(rel.to_string(), stored.clone());
        Ok(stored)
    }
}

impl RemoteCache {
    /// Puts the published seek index of the archive `rel` where the mount looks for its
    /// index, unless one is there already. Checked against SHA256SUMS; any failure only
    /// means the index is built from ranged reads instead.
    fn place_published_index(&self, rel: &str) {
        let published = manifest::index_path(rel);
        let Some(want) = self.backing.sums.get(&published) else {
            return;
        };
        let shown = self.backing.store.shown(rel);
        let path = self.indexes.index_path(Path::new(&shown));
        if path.exists() {
            return;
        }
        let bytes = match self.backing.store.get_small(&published) {
            Ok(Some(bytes)) if sums::hex(&blocks::sha256(&bytes)) == *want => bytes,
            _ => {
                tracing::info!(archive = %shown, "the published seek index cannot be used: building one");
                return;
            }
        };
        let _ = std::fs::create_dir_all(self.indexes.dir());
        if let Err(e) = sums::write_atomically(&path, &bytes) {
            tracing::debug!(index = %path.display(), error = %e, "cannot keep the published index");
        }
    }
}

fn object_entry(manifest: &Manifest, rel: &str) -> Option<u64> {
    match manifest.get(rel)?.kind {
        Kind::File { size } => Some(size),
        _ => None,
    }
}

type Listing = (Manifest, sums::Sums, Vec<(String, String)>);

/// SHA256SUMS, the manifest checked against it, and the ETags of an S3 listing. Files
/// the manifest names that are not listed (S3), have another size, or no digest, are
/// left out (logged): they are missing, as on a local disk.
fn read_listing(store: &Store) -> Result<Listing, String> {
    let shown = store.location().to_string();
    let publish = format!("publish one with `rootfs-mount cache publish {shown}`");
    let sums_text = store
        .get_small(sums::RECORD)
        .map_err(|e| format!("cannot read the store: {e}"))?
        .ok_or_else(|| format!("{shown} holds no SHA256SUMS: not a published cache; {publish}"))?;
    let sums = sums::parse(
        &String::from_utf8_lossy(&sums_text),
        &store.shown(sums::RECORD),
    )?;
    let manifest_bytes = store
        .get_small(manifest::MANIFEST)
        .map_err(|e| format!("cannot read the store: {e}"))?
        .ok_or_else(|| {
            format!(
                "{shown} has no {}: published by an older rootfs-mount? {publish}",
                manifest::MANIFEST
            )
        })?;
    if sums.get(manifest::MANIFEST) != Some(&sums::hex(&blocks::sha256(&manifest_bytes))) {
        return Err(format!(
            "{}: does not match its SHA256SUMS digest; {publish} again",
            store.shown(manifest::MANIFEST)
        ));
    }
    let mut manifest = manifest::parse(&String::from_utf8_lossy(&manifest_bytes))?;
    let listed: BTreeMap<String, (u64, Option<String>)> = store
        .list()
        .map_err(|e| format!("cannot list the store: {e}"))?
        .into_iter()
        .map(|(rel, size, etag)| (rel, (size, etag)))
        .collect();
    let is_s3 = matches!(store.location(), Location::S3 { .. });
    let mut etags = Vec::new();
    manifest.retain(|rel, entry| {
        let Kind::File { size } = entry.kind else {
            return true;
        };
        if !sums.contains_key(rel) {
            tracing::warn!(target: crate::fault::TARGET, file = %store.shown(rel), "in the manifest but not in SHA256SUMS: not shown");
            return false;
        }
        if !is_s3 {
            return true;
        }
        match listed.get(rel) {
            Some((listed_size, etag)) if *listed_size == size => {
                if let Some(etag) = etag {
                    etags.push((rel.clone(), etag.clone()));
                }
                true
            }
            Some((listed_size, _)) => {
                tracing::warn!(target: crate::fault::TARGET, file = %store.shown(rel), size = listed_size, expected = size, "the object's size is not the published one: not shown");
                false
            }
            None => false,
        }
    });
    Ok((manifest, sums, etags))
}

impl CacheObjects for RemoteCache {
    fn is_file(&self, rel: &Path) -> bool {
        matches!(
            self.manifest.get(&rel_str(rel)).map(|e| &e.kind),
            Some(Kind::File { .. })
        )
    }

    fn is_dir(&self, rel: &Path) -> bool {
        let rel = rel_str(rel);
        rel.is_empty() || matches!(self.manifest.get(&rel).map(|e| &e.kind), Some(Kind::Dir))
    }

    fn files_in(&self, rel: &Path) -> Vec<OsString> {
        let rel = rel_str(rel);
        let mut out: Vec<OsString> = self
            .children_of(&rel)
            .iter()
            .filter(|name| self.is_file(Path::new(&join(&rel, name))))
            .map(OsString::from)
            .collect();
        out.sort();
        out
    }

    fn open(&self, rel: &Path) -> io::Result<Box<dyn ArchiveSource>> {
        let rel = rel_str(rel);
        self.place_published_index(&rel);
        Ok(Box::new(ObjectSource(self.object(&rel)?)))
    }

    fn shown(&self, rel: &Path) -> PathBuf {
        PathBuf::from(self.backing.store.shown(&rel_str(rel)))
    }
}
