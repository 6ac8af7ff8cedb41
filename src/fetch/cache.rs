//! `rootfs-mount cache publish|verify|ls|gc`: the cache as a whole, on the record of
//! verified digests that `fetch` keeps in `CACHE/SHA256SUMS`.
//!
//! - publish: a mirror folder (the layout, hard-linked or copied, plus a `SHA256SUMS`
//!   at its root) that any static server can serve to `fetch --mirror`;
//! - verify: re-hashes every recorded file;
//! - ls: which versions, CRIs and arches a mount would find complete;
//! - gc: removes what no kept version needs, conservatively: only files `fetch` recorded,
//!   version folders of other versions, orphaned seek indexes and stale partial files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::sums::{self, Sums};
use super::PARTIAL_DIR;
use crate::archive::IndexStore;
use crate::layout::{cache_entries, KNOWN_ARCHES};
use crate::sources::Sources;
use crate::versions::{KubeVersion, VersionFacts};

/// The folders of the cache layout that hold downloaded files (docs/DESIGN.md §4).
const LAYOUT_ROOTS: &[&str] = &["kube", "oss", "cri"];

/// Every regular file and symlink below the layout roots, cache-relative, sorted.
fn layout_files(cache: &Path) -> Result<Vec<(String, bool)>, String> {
    let mut out = Vec::new();
    let mut pending: Vec<PathBuf> = LAYOUT_ROOTS.iter().map(PathBuf::from).collect();
    while let Some(rel) = pending.pop() {
        let dir = cache.join(&rel);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
        };
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
            let kind = entry
                .file_type()
                .map_err(|e| format!("cannot stat {}: {e}", entry.path().display()))?;
            let child = rel.join(entry.file_name());
            if kind.is_dir() {
                pending.push(child);
            } else if kind.is_file() || kind.is_symlink() {
                match child.to_str() {
                    Some(text) if !text.contains(['\n', '\\']) => {
                        out.push((text.to_string(), kind.is_symlink()))
                    }
                    _ => eprintln!(
                        "rootfs-mount: skipping {}: a name SHA256SUMS cannot carry",
                        child.display()
                    ),
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Writes a mirror of `cache` into `dir`: every file of the layout (hard-linked, or
/// copied across file systems) and `dir/SHA256SUMS`. Recorded files are re-hashed and
/// must match their record; nothing corrupt is published.
pub fn publish(cache: &Path, dir: &Path) -> Result<String, String> {
    let cache_abs = std::fs::canonicalize(cache)
        .map_err(|e| format!("cannot read the cache {}: {e}", cache.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dir_abs =
        std::fs::canonicalize(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if dir_abs.starts_with(&cache_abs) || cache_abs.starts_with(&dir_abs) {
        return Err(format!(
            "{} and the cache {} overlap; publish into a folder outside the cache",
            dir.display(),
            cache.display()
        ));
    }
    let record = sums::read_record(cache)?;
    let mut published = Sums::new();
    let mut bytes = 0u64;
    for (rel, is_link) in layout_files(cache)? {
        let src = cache.join(&rel);
        let dest = dir.join(&rel);
        let parent = dest.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        if is_link {
            // Kept as a link (libseccomp.so.2 -> libseccomp.so.2.5.1); not listed.
            let target = std::fs::read_link(&src)
                .map_err(|e| format!("cannot read {}: {e}", src.display()))?;
            let _ = std::fs::remove_file(&dest);
            std::os::unix::fs::symlink(&target, &dest)
                .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
            continue;
        }
        let hex =
            sums::sha256_file(&src).map_err(|e| format!("cannot read {}: {e}", src.display()))?;
        if let Some(want) = record.get(&rel) {
            if *want != hex {
                return Err(format!(
                    "{} does not match its recorded sha256 ({want}, now {hex}); run `rootfs-mount cache verify` and fetch it again",
                    src.display()
                ));
            }
        }
        sums::place(&src, &dest)?;
        bytes += std::fs::metadata(&src).map(|m| m.len()).unwrap_or(0);
        published.insert(rel, hex);
    }
    sums::write_atomically(&dir.join(sums::RECORD), sums::format(&published).as_bytes())?;
    Ok(format!(
        "published {} files ({} MiB) and SHA256SUMS to {}",
        published.len(),
        bytes >> 20,
        dir.display()
    ))
}

/// Re-hashes every file recorded in `CACHE/SHA256SUMS`. Errors (non-zero exit) when a
/// file is missing or differs; each problem is one line on stderr.
pub fn verify(cache: &Path) -> Result<String, String> {
    let record = sums::read_record(cache)?;
    if record.is_empty() {
        return Err(format!(
            "{} records no digests (nothing was fetched into it); run `rootfs-mount fetch`",
            cache.join(sums::RECORD).display()
        ));
    }
    let mut bad = 0;
    for (rel, want) in &record {
        let path = cache.join(rel);
        match sums::sha256_file(&path) {
            Ok(hex) if hex == *want => {}
            Ok(hex) => {
                bad += 1;
                eprintln!("MISMATCH {rel}: recorded sha256 {want}, now {hex}");
            }
            Err(e) => {
                bad += 1;
                eprintln!("MISSING {rel}: {e}");
            }
        }
    }
    let unrecorded = layout_files(cache)?
        .iter()
        .filter(|(rel, link)| !link && !record.contains_key(rel))
        .count();
    let note = if unrecorded > 0 {
        format!("; {unrecorded} files in the layout are not recorded (not fetched by rootfs-mount, not checked)")
    } else {
        String::new()
    };
    if bad > 0 {
        return Err(format!(
            "{bad} of {} recorded files are missing or differ{note}; fetch them again with `rootfs-mount fetch`",
            record.len()
        ));
    }
    Ok(format!("{} recorded files verified{note}", record.len()))
}

/// The versions that have a `kube/<version>/` folder, sorted.
fn cached_versions(cache: &Path) -> Vec<KubeVersion> {
    let mut versions: Vec<KubeVersion> = std::fs::read_dir(cache.join("kube"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| KubeVersion::parse(&e.file_name().to_string_lossy()).ok())
        .filter(|v| cache.join(format!("kube/{v}")).is_dir())
        .collect();
    versions.sort();
    versions
}

/// One line per version, CRI and arch found in the cache: complete (every required
/// entry present; "verified" when all are recorded) or what is missing.
pub fn ls(cache: &Path, facts: &VersionFacts, sources: &Sources) -> Result<String, String> {
    let record = sums::read_record(cache)?;
    let mut out = String::new();
    for version in cached_versions(cache) {
        for cri in facts.cri_names() {
            let Ok(profile) = facts.profile(&version, Some(cri), "none") else {
                continue;
            };
            for arch in KNOWN_ARCHES {
                let entries = cache_entries(sources, &profile, &[arch.to_string()])?;
                let required: Vec<_> = entries.iter().filter(|e| e.required).collect();
                let missing: Vec<&str> = required
                    .iter()
                    .filter(|e| !cache.join(&e.path).is_file())
                    .map(|e| e.path.as_str())
                    .collect();
                let state = if missing.is_empty() {
                    if required.iter().all(|e| record.contains_key(&e.path)) {
                        "complete (verified digests recorded)".to_string()
                    } else {
                        "complete (some files not fetched by rootfs-mount: no recorded digest)"
                            .to_string()
                    }
                } else {
                    format!("incomplete: missing {}", missing.join(", "))
                };
                out.push_str(&format!("{version}\t{cri}\t{arch}\t{state}\n"));
            }
        }
    }
    if out.is_empty() {
        out = format!("{}: no kube/<version>/ folders\n", cache.display());
    }
    Ok(out)
}

/// What `gc` removes, and why.
#[derive(Debug, Default)]
struct Plan {
    /// Path -> reason.
    remove: BTreeMap<PathBuf, String>,
    /// Record entries to drop.
    forget: BTreeSet<String>,
}

/// Partial downloads and index temp files younger than this may be in use.
const STALE_AFTER: Duration = Duration::from_secs(3600);

fn is_stale(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > STALE_AFTER)
}

/// Removes what no kept version needs: `kube/<v>/` of other versions, recorded files no
/// kept version's entries name, seek indexes no archive of the cache has, and partial
/// downloads untouched for an hour. Files it did not fetch (no recorded digest) outside
/// `kube/` are left alone. `keep` empty: every version with a `kube/` folder.
pub fn gc(
    cache: &Path,
    index_dir: &Path,
    keep: &[KubeVersion],
    dry_run: bool,
    facts: &VersionFacts,
    sources: &Sources,
) -> Result<String, String> {
    let keep: Vec<KubeVersion> = if keep.is_empty() {
        cached_versions(cache)
    } else {
        keep.to_vec()
    };
    let arches: Vec<String> = KNOWN_ARCHES.iter().map(|a| a.to_string()).collect();
    let mut needed: BTreeSet<String> = BTreeSet::new();
    for version in &keep {
        for cri in facts.cri_names() {
            if let Ok(profile) = facts.profile(version, Some(cri), "none") {
                needed.extend(
                    cache_entries(sources, &profile, &arches)?
                        .into_iter()
                        .map(|e| e.path),
                );
            }
        }
    }
    let record = sums::read_record(cache)?;
    let mut plan = Plan::default();
    for version in cached_versions(cache) {
        if !keep.contains(&version) {
            plan.remove.insert(
                cache.join(format!("kube/{version}")),
                format!("{version} is not kept"),
            );
        }
    }
    for rel in record.keys() {
        let path = cache.join(rel);
        let in_removed_version = plan.remove.keys().any(|p| path.starts_with(p));
        if !path.exists() || in_removed_version {
            plan.forget.insert(rel.clone());
        } else if !needed.contains(rel) {
            plan.remove
                .insert(path, "no kept version needs it".to_string());
            plan.forget.insert(rel.clone());
        }
    }
    // Seek indexes of archives that stay (named as the mount names them).
    let store = IndexStore::new(index_dir.to_path_buf());
    let mut live_indexes: BTreeSet<PathBuf> = BTreeSet::new();
    for (rel, _) in layout_files(cache)? {
        let path = cache.join(&rel);
        if rel.ends_with(".gz") && !plan.remove.keys().any(|p| path.starts_with(p)) {
            live_indexes.insert(store.index_path(&path));
        }
    }
    if let Ok(entries) = std::fs::read_dir(index_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".gzidx") && !name.starts_with('.') {
                if !live_indexes.contains(&path) {
                    plan.remove
                        .insert(path, "seek index of no archive in the cache".into());
                }
            } else if name.starts_with('.') && name.ends_with(".tmp") && is_stale(&path) {
                plan.remove
                    .insert(path, "index temp file left by an interrupted build".into());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(cache.join(PARTIAL_DIR)) {
        for entry in entries.flatten() {
            let path = entry.path();
            if is_stale(&path) {
                plan.remove
                    .insert(path, "partial download untouched for an hour".into());
            }
        }
    }

    let mut out = String::new();
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut freed = 0u64;
    for (path, why) in &plan.remove {
        freed += size_of(path);
        if !dry_run {
            let meta = std::fs::symlink_metadata(path);
            let removed = match meta {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
                Ok(_) => std::fs::remove_file(path),
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                return Err(format!("cannot remove {}: {e}", path.display()));
            }
        }
        out.push_str(&format!("{verb} {} ({why})\n", path.display()));
    }
    if !dry_run && !plan.forget.is_empty() {
        sums::update_record(cache, |record| {
            for rel in &plan.forget {
                record.remove(rel);
            }
        })?;
    }
    let kept: Vec<String> = keep.iter().map(|v| v.to_string()).collect();
    out.push_str(&format!(
        "gc: {} {} entries ({} MiB); kept versions: {}\n",
        verb,
        plan.remove.len(),
        freed >> 20,
        if kept.is_empty() {
            "none".to_string()
        } else {
            kept.join(" ")
        }
    ));
    Ok(out)
}

/// Bytes below `path` (a file or folder), not following symlinks.
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| size_of(&e.path()))
        .sum()
}
