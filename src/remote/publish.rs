//! Publishing a filled local cache so mounts can read it from a store: `cache publish
//! s3://BUCKET/PREFIX` uploads it; `cache publish DIR` (a static mirror, written by
//! `fetch::cache::publish`) gets the same extras here. Either way the store holds the
//! layout (`kube/`, `oss/`, `cri/` and the registry data `registry/`), a block list per
//! file, the manifest, and `SHA256SUMS` listing all of them, uploaded last so a mount
//! never sees a SHA256SUMS that names objects not there yet.
//!
//! Every file is hashed while its block list is made; a file that `fetch` recorded must
//! still match its record (nothing corrupt is published). The archives a mount reads
//! through a seek index get theirs published too (`.rootfs-mount/index/<path>.gzidx`), so
//! a mount does not stream a whole archive to index it; a mount of a store without them
//! builds them once from ranged reads and keeps them locally.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::manifest::{self, BlockDigests, Entry, Kind, Manifest, BLOCK};
use super::store::{Location, Store};
use crate::sums::{self, Sums};

/// What is published: the layout's roots and the registry data.
const ROOTS: &[&str] = &["kube", "oss", "cri", "registry"];

fn entry_of(meta: &std::fs::Metadata, kind: Kind) -> Entry {
    Entry {
        kind,
        perm: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_sec: meta.mtime(),
        mtime_nsec: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
    }
}

/// Every folder, file and symlink below the roots, as manifest entries.
pub fn collect(cache: &Path) -> Result<Manifest, String> {
    let mut out = Manifest::new();
    let mut pending: Vec<String> = ROOTS.iter().map(|r| r.to_string()).collect();
    while let Some(rel) = pending.pop() {
        let path = cache.join(&rel);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let kind = if meta.is_dir() {
            for child in std::fs::read_dir(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            {
                let child = child.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                match child.file_name().to_str() {
                    Some(name) if manifest::carriable(name) && !name.starts_with(".") => {
                        pending.push(format!("{rel}/{name}"))
                    }
                    _ => eprintln!(
                        "rootfs-mount: skipping {}: a hidden name, or one a manifest cannot carry",
                        child.path().display()
                    ),
                }
            }
            Kind::Dir
        } else if meta.is_file() {
            Kind::File { size: meta.len() }
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            match target.to_str() {
                Some(t) if manifest::carriable(t) => Kind::Link {
                    target: t.to_string(),
                },
                _ => continue,
            }
        } else {
            continue;
        };
        out.insert(rel, entry_of(&meta, kind));
    }
    Ok(out)
}

/// The sha256 of a file and of each of its blocks, in one read.
fn hash_file(path: &Path) -> Result<(String, BlockDigests), String> {
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut whole = Sha256::new();
    let mut digests = Vec::new();
    let mut buf = vec![0u8; BLOCK as usize];
    let mut size = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            }
        }
        if filled == 0 {
            break;
        }
        whole.update(&buf[..filled]);
        digests.push(super::blocks::sha256(&buf[..filled]));
        size += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    Ok((sums::hex(&whole.finalize()), BlockDigests { size, digests }))
}

/// Hashes a file, checking it against the cache's record.
fn checked_hash(cache: &Path, rel: &str, record: &Sums) -> Result<(String, BlockDigests), String> {
    let path = cache.join(rel);
    let (hex, blocks) = hash_file(&path)?;
    if let Some(want) = record.get(rel) {
        if *want != hex {
            return Err(format!(
                "{} does not match its recorded sha256 ({want}, now {hex}); run `rootfs-mount cache verify` and fetch it again",
                path.display()
            ));
        }
    }
    Ok((hex, blocks))
}

/// The seek index of the archive `rel` of the cache, built in `scratch` (or `None` when
/// `rel` is not read through one). A damaged archive is published without one.
fn seek_index(cache: &Path, rel: &str, scratch: &Path) -> Option<Vec<u8>> {
    let with_listing = manifest::indexed_archive(rel)?;
    let store = crate::archive::IndexStore::new(scratch.to_path_buf());
    let path = cache.join(rel);
    let file = std::fs::File::open(&path).ok()?;
    match store.load_or_build(&path, &file, with_listing) {
        Ok(_) => std::fs::read(store.index_path(&path)).ok(),
        Err(_) => {
            eprintln!(
                "rootfs-mount: no seek index published for {}: it does not index",
                path.display()
            );
            None
        }
    }
}

/// A folder for the indexes built while publishing, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    /// A new folder of our own, mode 0700: one that exists already (another user's, made
    /// ahead under a guessable name) is an error, never reused.
    fn new() -> Result<Self, String> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "rootfs-mount-publish-{}.{nanos}",
            std::process::id()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `cache publish s3://BUCKET/PREFIX`: uploads the cache.
pub fn to_store(
    cache: &Path,
    location: Location,
    endpoint: Option<&str>,
    timeout: Duration,
) -> Result<String, String> {
    if !cache.is_dir() {
        return Err(format!("the cache {} does not exist", cache.display()));
    }
    let store = Store::new(location, endpoint, timeout)?;
    let record = sums::read_record(cache)?;
    let found = collect(cache)?;
    let scratch = Scratch::new()?;
    let mut published = Sums::new();
    let mut bytes = 0u64;
    for (rel, entry) in &found {
        let Kind::File { size } = entry.kind else {
            continue;
        };
        let (hex, blocks) = checked_hash(cache, rel, &record)?;
        store
            .put_file(rel, &cache.join(rel))
            .map_err(|e| format!("uploading: {e}"))?;
        let list = blocks.format();
        let list_rel = manifest::blocks_path(rel);
        store
            .put_bytes(&list_rel, list.as_bytes())
            .map_err(|e| format!("uploading: {e}"))?;
        published.insert(list_rel, sums::hex(&super::blocks::sha256(list.as_bytes())));
        if let Some(index) = seek_index(cache, rel, &scratch.0) {
            let index_rel = manifest::index_path(rel);
            store
                .put_bytes(&index_rel, &index)
                .map_err(|e| format!("uploading: {e}"))?;
            published.insert(index_rel, sums::hex(&super::blocks::sha256(&index)));
        }
        published.insert(rel.clone(), hex);
        bytes += size;
    }
    let text = manifest::format(&found);
    store
        .put_bytes(manifest::MANIFEST, text.as_bytes())
        .map_err(|e| format!("uploading: {e}"))?;
    published.insert(
        manifest::MANIFEST.into(),
        sums::hex(&super::blocks::sha256(text.as_bytes())),
    );
    store
        .put_bytes(sums::RECORD, sums::format(&published).as_bytes())
        .map_err(|e| format!("uploading: {e}"))?;
    let files = found
        .values()
        .filter(|e| matches!(e.kind, Kind::File { .. }))
        .count();
    Ok(format!(
        "published {files} files ({} MiB), their block lists, the manifest and SHA256SUMS to {}",
        bytes >> 20,
        store.location()
    ))
}

/// After `fetch::cache::publish` wrote the mirror `dir`: adds the registry data, the
/// block lists and the manifest, and lists them in its SHA256SUMS, so the mirror can
/// also be mounted (`--cache https://HOST/PATH/`).
pub fn mirror_extras(cache: &Path, dir: &Path) -> Result<String, String> {
    let record = sums::read_record(cache)?;
    let found = collect(cache)?;
    let sums_path = dir.join(sums::RECORD);
    let mut published = sums::parse(
        &std::fs::read_to_string(&sums_path)
            .map_err(|e| format!("cannot read {}: {e}", sums_path.display()))?,
        &sums_path.display().to_string(),
    )?;
    let write = |rel: &str, bytes: &[u8], published: &mut Sums| -> Result<(), String> {
        let path: PathBuf = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        sums::write_atomically(&path, bytes)?;
        published.insert(rel.to_string(), sums::hex(&super::blocks::sha256(bytes)));
        Ok(())
    };
    let scratch = Scratch::new()?;
    for (rel, entry) in &found {
        match &entry.kind {
            Kind::File { .. } => {
                let (hex, blocks) = checked_hash(cache, rel, &record)?;
                if let Some(index) = seek_index(cache, rel, &scratch.0) {
                    write(&manifest::index_path(rel), &index, &mut published)?;
                }
                if !published.contains_key(rel) {
                    sums::place(&cache.join(rel), &dir.join(rel))?;
                    published.insert(rel.clone(), hex);
                }
                write(
                    &manifest::blocks_path(rel),
                    blocks.format().as_bytes(),
                    &mut published,
                )?;
            }
            Kind::Link { target } => {
                let dest = dir.join(rel);
                if std::fs::symlink_metadata(&dest).is_err() {
                    if let Some(parent) = dest.parent() {
                        let _ = std::fs::create_dir_all(parent);
                    }
                    std::os::unix::fs::symlink(target, &dest)
                        .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
                }
            }
            Kind::Dir => {}
        }
    }
    write(
        manifest::MANIFEST,
        manifest::format(&found).as_bytes(),
        &mut published,
    )?;
    sums::write_atomically(&sums_path, sums::format(&published).as_bytes())?;
    Ok(format!(
        "added the registry data, block lists, seek indexes and {} (for mounts from the mirror)",
        manifest::MANIFEST
    ))
}
