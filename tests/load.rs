//! Concurrent load: readers at random files and offsets, `find` and `tar` walks, all at
//! once on one mount for a bounded time; every byte read is checked against its backing
//! file (or the contexts it is embedded from), with zero errors allowed.
//!
//! `ROOTFS_MOUNT_LOAD_SECS` (default 10) and `ROOTFS_MOUNT_LOAD_READERS` (default 8) set
//! the duration and the reader count; `scripts/soak.sh` runs the same test for hours.

mod common;

use common::Rng;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{daemon_pid, is_running, own_cache, repo, sh, status_field, walk, Mount};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `user.rootfs.source` of a file of the mount.
fn source_of(path: &Path) -> String {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 8192];
    // SAFETY: valid NUL-terminated strings and a writable buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            c"user.rootfs.source".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(n >= 0, "no provenance for {}", path.display());
    buf.truncate(n as usize);
    String::from_utf8(buf).unwrap()
}

/// The bytes behind a backing provenance, read from outside the mount: the file itself,
/// a member of a release tarball (`ARCHIVE.tar.gz:member`, through `tar -xzOf`), or a
/// `.gz` shown decompressed (`registry.tar`, through `gunzip -c`).
fn backing_bytes(source: &str, shown: &Path) -> Vec<u8> {
    let command = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{program} {args:?} failed");
        out.stdout
    };
    if let Some(at) = source.rfind(".tar.gz:") {
        let (archive, member) = (&source[..at + 7], &source[at + 8..]);
        return command("tar", &["-xzOf", archive, member]);
    }
    if source.ends_with(".gz") && !shown.to_string_lossy().ends_with(".gz") {
        return command("gunzip", &["-c", source]);
    }
    std::fs::read(source).unwrap()
}

/// The expected bytes of every regular file of the mount, from outside the mount where
/// possible: the backing file, or the contexts file it is embedded from. Rendered files
/// (computed by the daemon) are checked against their first read.
fn references(m: &Mount) -> Vec<(PathBuf, Arc<Vec<u8>>)> {
    let mut out = Vec::new();
    let (mut backed, mut embedded, mut other) = (0, 0, 0);
    for rel in walk(&m.dir) {
        let path = m.dir.join(&rel);
        let meta = path.symlink_metadata().unwrap();
        if !meta.is_file() {
            continue;
        }
        let source = source_of(&path);
        let bytes = if source.starts_with('/') {
            backed += 1;
            backing_bytes(&source, &path)
        } else if let Some(p) = source.strip_prefix("embedded:contexts/") {
            embedded += 1;
            std::fs::read(repo().join("contexts").join(p)).unwrap()
        } else {
            other += 1;
            std::fs::read(&path).unwrap()
        };
        assert_eq!(meta.len(), bytes.len() as u64, "{rel}: stat size");
        out.push((path, Arc::new(bytes)));
    }
    eprintln!("load: {backed} backed, {embedded} embedded, {other} rendered files");
    out
}

/// Deterministic pseudo-random content for the big files of the test.
fn blob(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Drops the page cache of one open file, so the next reads reach the daemon.
fn drop_cache(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open fd; fadvise has no memory effects.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

#[derive(Default)]
struct Tally {
    bytes: AtomicU64,
    reads: AtomicU64,
    walks: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        let mut f = self.failures.lock().unwrap();
        if f.len() < 20 {
            f.push(what);
        }
    }
}

fn reader(
    id: u64,
    files: &[(PathBuf, Arc<Vec<u8>>)],
    deadline: Instant,
    tally: &Tally,
) -> Result<(), String> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((id + 1) * 0x1000_0001));
    let drops_cache = id.is_multiple_of(2);
    while Instant::now() < deadline {
        let (path, want) = &files[rng.below(files.len() as u64) as usize];
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for _ in 0..1 + rng.below(16) {
            let len = want.len() as u64;
            // Mostly inside the file, sometimes across or past its end.
            let offset = rng.below(len + 4096);
            let max = if rng.below(4) == 0 { 1 << 20 } else { 64 << 10 };
            let size = 1 + rng.below(max);
            let mut buf = vec![0u8; size as usize];
            let mut done = 0;
            while done < buf.len() {
                match file.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) => return Err(format!("{} @{offset}+{size}: {e}", path.display())),
                }
            }
            let start = offset.min(len) as usize;
            let end = (offset + size).min(len) as usize;
            if buf[..done] != want[start..end] {
                return Err(format!(
                    "{} @{offset}+{size}: {done} bytes differ from the backing file",
                    path.display()
                ));
            }
            tally.bytes.fetch_add(done as u64, Ordering::Relaxed);
            tally.reads.fetch_add(1, Ordering::Relaxed);
        }
        if drops_cache {
            drop_cache(&file);
        }
    }
    Ok(())
}

/// Runs `script` until the deadline; every run must print the same as the first.
fn walker(script: &str, deadline: Instant, tally: &Tally) -> Result<(), String> {
    let first = sh(script);
    if first.trim().is_empty() {
        return Err(format!("`{script}` printed nothing"));
    }
    while Instant::now() < deadline {
        let again = sh(script);
        if again != first {
            return Err(format!("`{script}` changed between walks"));
        }
        tally.walks.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

#[test]
fn concurrent_readers_and_walks_read_exactly_the_backing_bytes() {
    let secs = env_or("ROOTFS_MOUNT_LOAD_SECS", 10);
    let readers = env_or("ROOTFS_MOUNT_LOAD_READERS", 8).max(1);
    let cache = own_cache();
    for (i, len) in [1 << 20, (3 << 20) + 17, 8 << 20, 131_071]
        .iter()
        .enumerate()
    {
        std::fs::write(
            cache.join(format!("oss/amd64/bin/blob{i}")),
            blob(i as u64 + 1, *len),
        )
        .unwrap();
    }
    let m = Mount::with_cache(&cache, &["--k8s", "v1.23.4"]);
    let pid = daemon_pid(&m.dir);
    let files = references(&m);
    assert!(files.len() > 40, "only {} files", files.len());
    let tally = Tally::default();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let d = m.dir.display().to_string();
    let find = format!("find '{d}' -printf '%y %m %s %i %P\\n' | sort");
    let tar = format!("tar -cf - -C '{d}' . | sha256sum");
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for id in 0..readers {
            let (files, tally) = (&files, &tally);
            handles.push(s.spawn(move || reader(id, files, deadline, tally)));
        }
        for script in [&find, &tar] {
            let tally = &tally;
            handles.push(s.spawn(move || walker(script, deadline, tally)));
        }
        for h in handles {
            if let Err(e) = h.join().expect("reader thread") {
                tally.fail(e);
            }
        }
    });
    let elapsed = start.elapsed();
    let failures = tally.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );
    assert!(is_running(pid), "the daemon died under load");
    // The counters the daemon publishes agree: no errors, and reads reached it.
    std::thread::sleep(Duration::from_millis(1200));
    let status: BTreeMap<&str, String> = ["errors", "requests", "bytes read"]
        .into_iter()
        .map(|k| (k, status_field(&m.dir, k)))
        .collect();
    assert_eq!(status["errors"], "0");
    let bytes = tally.bytes.load(Ordering::Relaxed);
    eprintln!(
        "load: {readers} readers + find + tar for {:.1} s: {} checked reads, {bytes} bytes ({} MiB) checked, {} walks, 0 errors; daemon: {} requests, {} bytes read",
        elapsed.as_secs_f64(),
        tally.reads.load(Ordering::Relaxed),
        bytes >> 20,
        tally.walks.load(Ordering::Relaxed),
        status["requests"],
        status["bytes read"],
    );
    assert!(bytes > 0 && tally.walks.load(Ordering::Relaxed) > 0);
}
