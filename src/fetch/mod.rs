//! `rootfs-mount fetch`: fills the cache (docs/DESIGN.md §4 layout) with exactly the entries
//! `layout::cache_entries` says a mount needs, from mirrors first, then upstream, and
//! lets nothing unverified in.
//!
//! Each download goes to `CACHE/.partial/<expected sha256>.part` (named by content, so an
//! interrupted download resumes with HTTP Range from any source that serves the same
//! bytes), is hashed, and only then renamed into its cache path (fsync of the file and
//! the folder) and recorded in `CACHE/SHA256SUMS`. A checksum mismatch deletes the
//! download. Entries already present with a recorded digest are skipped without any
//! network access; `cache verify` re-hashes them.
//!
//! The cache's other commands (`cache publish|verify|ls|gc`) are in [`cache`].

pub mod cache;
pub mod http;
pub mod progress;
/// The SHA256SUMS format and the cache's record (`crate::sums`, below the remote cache
/// that reads it too).
pub use crate::sums;

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::sources::{CacheEntry, Checksum, Origin};
use http::Http;
use progress::Progress;
use sums::Sums;

/// Where partial downloads are kept, relative to the cache.
pub const PARTIAL_DIR: &str = ".partial";

/// Options of the registry-image steps, carried for `src/oci/` (see [`save_registry_image`]).
#[derive(Clone, Debug, Default)]
pub struct ImageOptions {
    /// `--images`: pull every image of the rendered imageList into `CACHE/registry`.
    pub images: bool,
    /// `--image-mirror HOST=URL`: pull images of registry HOST from URL instead.
    pub image_mirrors: Vec<(String, String)>,
}

/// What `fetch` was asked to do.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    pub cache: PathBuf,
    /// Base URLs serving the cache layout as-is with a `SHA256SUMS` at their root, tried
    /// in order before upstream.
    pub mirrors: Vec<String>,
    /// Never go upstream (air-gapped: mirrors only).
    pub no_upstream: bool,
    /// Take upstream files that have no published or pinned digest, recording the
    /// digest computed (trust on first use).
    pub allow_unpinned: bool,
    /// Print URL -> cache path -> digest for every entry instead of downloading.
    pub print_urls: bool,
    /// Parallel downloads.
    pub jobs: usize,
    /// Connect timeout, and the longest wait for any answer or byte.
    pub timeout: Duration,
    /// Attempts per request.
    pub attempts: u32,
    pub image: ImageOptions,
}

/// The registry-image step for an entry whose source is an OCI image (`image:` in
/// sources.yaml) and that no mirror had: saves `reference` for `arch` as a gzipped
/// `docker save` archive at `out`, returning the sha256 hex of the written file.
///
/// This is the hook for `src/oci/` (another branch):
/// `oci::save_docker_archive(reference, arch, &opts, out)` with `PullOptions` built from
/// `images.image_mirrors`. Until it is wired in, it refuses clearly.
pub fn save_registry_image(
    reference: &str,
    arch: &str,
    images: &ImageOptions,
    out: &Path,
) -> Result<String, String> {
    crate::oci::save_docker_archive(reference, arch, &pull_options(images), out)
}

/// The OCI pull options of `--image-mirror`: an `http://` mirror (a loopback or
/// in-house registry) is reached over plain http.
fn pull_options(images: &ImageOptions) -> crate::oci::PullOptions {
    crate::oci::PullOptions {
        mirrors: images.image_mirrors.clone(),
        insecure: Vec::new(),
        jobs: 4,
    }
}

/// The `--images` step: every image of the imageList, for `arches`, into the registry
/// storage at `storage_root` (`CACHE/registry`). The hook for
/// `oci::pull_into_registry_storage(references, arches, &opts, storage_root)`.
pub fn pull_image_list(
    references: &[String],
    arches: &[String],
    images: &ImageOptions,
    storage_root: &Path,
) -> Result<(), String> {
    crate::oci::pull_into_registry_storage(references, arches, &pull_options(images), storage_root)
}

/// How one entry ended.
enum Outcome {
    Fetched {
        from: String,
        bytes: u64,
    },
    Present,
    /// An optional entry no source has.
    Skipped(String),
    Failed(String),
}

/// A mirror and its checksum list (or why it cannot be used).
struct Mirror {
    base: String,
    sums: Result<Sums, String>,
}

/// State shared by the download workers.
struct Run<'a> {
    opts: &'a FetchOptions,
    http: Http,
    mirrors: Vec<Mirror>,
    /// The cache's record when the run started.
    record: Sums,
    progress: Progress,
    /// Upstream checksum files by URL (one nerdctl SHA256SUMS serves both arches).
    checksum_files: Mutex<HashMap<String, Result<String, String>>>,
}

/// `base` with exactly one `/` before `rel`.
fn join_url(base: &str, rel: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), rel)
}

/// Fetches every entry of `entries` into the cache (or prints their URLs). Returns an
/// error naming the entries that could not be had.
pub fn fetch(entries: &[CacheEntry], opts: &FetchOptions) -> Result<String, String> {
    let cache = &opts.cache;
    if !opts.print_urls {
        prepare_cache(cache)?;
    }
    let http = Http::new(opts.timeout, opts.attempts)?;
    let progress = Progress::new(entries.len() as u64);
    let mirrors = opts
        .mirrors
        .iter()
        .map(|base| {
            let url = join_url(base, sums::RECORD);
            let sums = http
                .get_text(&url, &|m| progress.log(&format!("fetch: {m}")))
                .map_err(|e| e.message)
                .and_then(|text| sums::parse(&text, &url))
                .map_err(|e| format!("mirror {base} is not usable: {e}"));
            if let Err(e) = &sums {
                progress.log(&format!("fetch: {e}"));
            }
            Mirror {
                base: base.clone(),
                sums,
            }
        })
        .collect();
    let run = Run {
        opts,
        http,
        mirrors,
        record: if opts.print_urls {
            Sums::new()
        } else {
            sums::read_record(cache)?
        },
        progress,
        checksum_files: Mutex::new(HashMap::new()),
    };
    if opts.print_urls {
        return run.print_urls(entries);
    }

    let queue: Mutex<VecDeque<&CacheEntry>> = Mutex::new(entries.iter().collect());
    let outcomes: Mutex<Vec<(&CacheEntry, Outcome)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.clamp(1, 64) {
            scope.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(entry) = next else { break };
                let outcome = run.entry(entry);
                match &outcome {
                    Outcome::Fetched { from, bytes } => run.progress.log(&format!(
                        "fetch: {} <- {from} ({bytes} bytes, verified)",
                        entry.path
                    )),
                    Outcome::Present => {}
                    Outcome::Skipped(why) => run
                        .progress
                        .log(&format!("fetch: skipped optional {}: {why}", entry.path)),
                    Outcome::Failed(why) => run
                        .progress
                        .log(&format!("fetch: FAILED {}: {why}", entry.path)),
                }
                run.progress.entry_done();
                outcomes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((entry, outcome));
            });
        }
    });
    run.progress.finish();
    let outcomes = outcomes.into_inner().unwrap_or_else(|p| p.into_inner());
    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|(_, o)| f(o)).count();
    let fetched = count(|o| matches!(o, Outcome::Fetched { .. }));
    let present = count(|o| matches!(o, Outcome::Present));
    let skipped = count(|o| matches!(o, Outcome::Skipped(_)));
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(e, o)| match o {
            Outcome::Failed(why) => Some(format!("{}: {why}", e.path)),
            _ => None,
        })
        .collect();
    let summary = format!(
        "{fetched} fetched, {present} already present, {skipped} optional skipped, {} failed",
        failed.len()
    );
    if failed.is_empty() {
        Ok(format!("fetch: {} ready ({summary})", cache.display()))
    } else if failed.len() == 1 {
        Err(format!("cannot fetch {} ({summary})", failed[0]))
    } else {
        Err(format!(
            "cannot fetch {} entries ({summary}); first: {}",
            failed.len(),
            failed[0]
        ))
    }
}

/// Makes sure the cache and its partial folder exist and can be written.
fn prepare_cache(cache: &Path) -> Result<(), String> {
    let unwritable = |e: std::io::Error| {
        format!(
            "the cache folder {} is not writable: {e}; fix its permissions or use another --cache",
            cache.display()
        )
    };
    std::fs::create_dir_all(cache.join(PARTIAL_DIR)).map_err(unwritable)?;
    let probe = cache.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(unwritable)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

impl Run<'_> {
    fn log(&self, message: &str) {
        self.progress.log(&format!("fetch: {message}"));
    }

    /// Gets one entry: present and recorded, else from each mirror, else upstream.
    fn entry(&self, entry: &CacheEntry) -> Outcome {
        let dest = self.opts.cache.join(&entry.path);
        if self.record.contains_key(&entry.path) && dest.is_file() {
            return Outcome::Present;
        }
        let mut tried: Vec<String> = Vec::new();
        for mirror in &self.mirrors {
            let expected = match &mirror.sums {
                Err(e) => {
                    tried.push(e.clone());
                    continue;
                }
                Ok(sums) => match sums.get(&entry.path) {
                    Some(hex) => hex.clone(),
                    None => {
                        tried.push(format!(
                            "mirror {}: not listed in its SHA256SUMS",
                            mirror.base
                        ));
                        continue;
                    }
                },
            };
            let url = join_url(&mirror.base, &entry.path);
            match self.get(entry, &url, Some(&expected)) {
                Ok(outcome) => return outcome,
                Err(e) => tried.push(e),
            }
        }
        if self.opts.no_upstream {
            tried.push("upstream not tried (--no-upstream)".into());
        } else {
            match self.upstream(entry) {
                Ok(outcome) => return outcome,
                Err(e) => tried.push(e),
            }
        }
        if tried.is_empty() {
            tried.push("no source".into());
        }
        let why = tried.join("; ");
        if entry.required {
            Outcome::Failed(why)
        } else {
            Outcome::Skipped(why)
        }
    }

    fn upstream(&self, entry: &CacheEntry) -> Result<Outcome, String> {
        match &entry.origin {
            Origin::MirrorOnly => Err(format!(
                "upstream publishes no {} to download; only a --mirror provides it",
                entry.name
            )),
            Origin::Image(reference) => self.image(entry, reference),
            Origin::Url(url) => {
                let expected = self.expected_upstream(entry)?;
                self.get(entry, url, expected.as_deref())
            }
        }
    }

    /// The published or pinned digest of an upstream entry; `None` only for an unpinned
    /// entry with `--allow-unpinned`.
    fn expected_upstream(&self, entry: &CacheEntry) -> Result<Option<String>, String> {
        match &entry.checksum {
            Checksum::Pinned(hex) => Ok(Some(hex.clone())),
            Checksum::Sidecar(url) => {
                let text = self.checksum_file(url)?;
                sums::parse_sidecar(&text, url).map(Some)
            }
            Checksum::Sums { url, name } => {
                let text = self.checksum_file(url)?;
                let list = sums::parse(&text, url)?;
                list.get(name)
                    .cloned()
                    .map(Some)
                    .ok_or_else(|| format!("{url} lists no {name}"))
            }
            Checksum::Unpinned | Checksum::Image if self.opts.allow_unpinned => Ok(None),
            Checksum::Unpinned | Checksum::Image => Err(format!(
                "upstream publishes no checksum for {} and sources.yaml pins none: pin its sha256 there (--contexts), use a --mirror, or pass --allow-unpinned to record the digest of what is downloaded",
                entry.name
            )),
        }
    }

    fn checksum_file(&self, url: &str) -> Result<String, String> {
        if let Some(found) = self
            .checksum_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
        {
            return found.clone();
        }
        let got = self
            .http
            .get_text(url, &|m| self.log(m))
            .map_err(|e| format!("checksum file {}", e.message));
        self.checksum_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(url.to_string(), got.clone());
        got
    }

    /// Downloads `url` for `entry`, checks it against `expected` (`None`: unpinned,
    /// allowed), and moves it into place.
    fn get(
        &self,
        entry: &CacheEntry,
        url: &str,
        expected: Option<&str>,
    ) -> Result<Outcome, String> {
        let cache = &self.opts.cache;
        let dest = cache.join(&entry.path);
        let part_name = match expected {
            Some(hex) => format!("{hex}.part"),
            None => format!("unpinned-{}.part", entry.path.replace('/', "%2F")),
        };
        let part = cache.join(PARTIAL_DIR).join(part_name);
        // One writer per partial file, across workers and processes.
        let lock_path = part.with_extension("lock");
        let _lock = sums::lock_file(&lock_path)?;
        // A file already there that matches: copied in by hand, or just fetched by
        // another process that held the lock.
        if let (Some(expected), true) = (expected, dest.is_file()) {
            if sums::sha256_file(&dest).ok().as_deref() == Some(expected) {
                self.record(entry, expected)?;
                return Ok(Outcome::Present);
            }
        }
        let bar = self.progress.file(&entry.path);
        let download = || {
            self.http
                .download(url, &part, &|done, total| bar.update(done, total), &|m| {
                    self.log(m)
                })
                .map_err(|e| {
                    if e.permanent && e.message.starts_with("writing ") {
                        // A local write failure (disk full): keep nothing.
                        let _ = std::fs::remove_file(&part);
                    }
                    e.message
                })?;
            sums::sha256_file(&part).map_err(|e| format!("cannot read {}: {e}", part.display()))
        };
        let resumed = std::fs::metadata(&part).is_ok_and(|m| m.len() > 0);
        let mut actual = download()?;
        if let Some(expected) = expected {
            if actual != expected && resumed {
                // The bytes kept from before may be what is wrong: once more from zero.
                self.log(&format!(
                    "{}: the resumed download does not match; downloading it whole",
                    entry.path
                ));
                let _ = std::fs::remove_file(&part);
                actual = download()?;
            }
            if actual != expected {
                let _ = std::fs::remove_file(&part);
                return Err(format!(
                    "checksum mismatch for {url}: expected sha256 {expected}, got {actual}; the download was deleted"
                ));
            }
        } else {
            self.log(&format!(
                "{}: no published digest; recording sha256 {actual} of what {url} served (--allow-unpinned)",
                entry.path
            ));
        }
        let bytes = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        self.install(entry, &part, &actual)?;
        // The lock file stays: removing it while another worker waits on it would let a
        // third one lock a new file and write the same partial download. gc removes
        // stale ones.
        Ok(Outcome::Fetched {
            from: url.to_string(),
            bytes,
        })
    }

    /// The registry image of `entry`, from a registry (when no mirror had it).
    fn image(&self, entry: &CacheEntry, reference: &str) -> Result<Outcome, String> {
        let part = self
            .opts
            .cache
            .join(PARTIAL_DIR)
            .join(format!("image-{}.part", entry.path.replace('/', "%2F")));
        let digest = save_registry_image(reference, &entry.arch, &self.opts.image, &part)
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&part);
            })?;
        let actual =
            sums::sha256_file(&part).map_err(|e| format!("cannot read {}: {e}", part.display()))?;
        if actual != digest {
            let _ = std::fs::remove_file(&part);
            return Err(format!(
                "the saved image {reference} is not what was written: sha256 {digest} reported, {actual} on disk"
            ));
        }
        let bytes = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        self.install(entry, &part, &actual)?;
        Ok(Outcome::Fetched {
            from: reference.to_string(),
            bytes,
        })
    }

    /// Moves a verified download into its cache path and records its digest.
    fn install(&self, entry: &CacheEntry, part: &Path, hex: &str) -> Result<(), String> {
        let dest = self.opts.cache.join(&entry.path);
        let parent = dest.parent().unwrap_or(&self.opts.cache);
        let placed = (|| {
            std::fs::set_permissions(part, std::fs::Permissions::from_mode(entry.mode))?;
            std::fs::create_dir_all(parent)?;
            std::fs::rename(part, &dest)?;
            sums::sync_dir(parent)
        })();
        placed.map_err(|e| format!("cannot move the download into {}: {e}", dest.display()))?;
        self.record(entry, hex)
    }

    fn record(&self, entry: &CacheEntry, hex: &str) -> Result<(), String> {
        sums::update_record(&self.opts.cache, |record| {
            record.insert(entry.path.clone(), hex.to_string());
        })
    }

    /// `--print-urls`: for each entry, the first source that resolves, as
    /// `URL -> cache path -> sha256:HEX`.
    fn print_urls(&self, entries: &[CacheEntry]) -> Result<String, String> {
        let mut out = String::new();
        let mut unresolved = 0;
        for entry in entries {
            let mut line = None;
            let mut why = Vec::new();
            for mirror in &self.mirrors {
                match &mirror.sums {
                    Ok(sums) => match sums.get(&entry.path) {
                        Some(hex) => {
                            line = Some((join_url(&mirror.base, &entry.path), hex.clone()));
                            break;
                        }
                        None => why.push(format!("not on mirror {}", mirror.base)),
                    },
                    Err(e) => why.push(e.clone()),
                }
            }
            if line.is_none() && self.opts.no_upstream {
                why.push("upstream not tried (--no-upstream)".into());
            }
            if line.is_none() && !self.opts.no_upstream {
                match &entry.origin {
                    Origin::Url(url) => match self.expected_upstream(entry) {
                        Ok(Some(hex)) => line = Some((url.clone(), hex)),
                        Ok(None) => line = Some((url.clone(), "(unpinned)".into())),
                        Err(e) => {
                            if entry.required {
                                unresolved += 1;
                            }
                            line = Some((url.clone(), format!("(digest unknown: {e})")));
                        }
                    },
                    Origin::Image(reference) => {
                        line = Some((format!("oci://{reference}"), "(written archive)".into()))
                    }
                    Origin::MirrorOnly => why.push("mirror only".into()),
                }
            }
            match line {
                Some((url, hex)) => {
                    let digest = if crate::sources::is_sha256_hex(&hex) {
                        format!("sha256:{hex}")
                    } else {
                        hex
                    };
                    out.push_str(&format!("{url} -> {} -> {digest}\n", entry.path));
                }
                None => {
                    if entry.required {
                        unresolved += 1;
                    }
                    out.push_str(&format!(
                        "(no source) -> {} -> ({})\n",
                        entry.path,
                        why.join("; ")
                    ));
                }
            }
        }
        print!("{out}");
        if unresolved > 0 {
            return Err(format!(
                "{unresolved} required entries have no source with a known digest (see above)"
            ));
        }
        Ok(String::new())
    }
}
