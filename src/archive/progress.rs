//! Archives being indexed right now and how far each is, so that a slow first read
//! (seconds for a GB-sized `registry.tar.gz`) shows in `status` and in the log instead
//! of looking like a hang. An index build registers here and moves its mark as it reads
//! the archive; the daemon's state thread takes [`snapshot`]s.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::gzip_index::ReadAt;

#[derive(Debug)]
struct Indexing {
    archive: PathBuf,
    size: u64,
    started: Instant,
    /// Compressed bytes read so far (the highest offset reached).
    done: AtomicU64,
}

/// One archive being indexed, as `status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IndexingStatus {
    pub file: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub percent: u64,
    pub elapsed_seconds: u64,
    /// Seconds left at the pace so far; `None` before there is a pace.
    pub eta_seconds: Option<u64>,
}

static NOW: Mutex<Vec<Arc<Indexing>>> = Mutex::new(Vec::new());

fn now_list() -> std::sync::MutexGuard<'static, Vec<Arc<Indexing>>> {
    NOW.lock().unwrap_or_else(|p| p.into_inner())
}

/// An index build in progress; unregistered (and its end logged) on drop.
#[derive(Debug)]
pub struct Registration(Arc<Indexing>);

/// Registers the indexing of `archive` (`size` compressed bytes) and logs its start.
pub fn start(archive: &Path, size: u64) -> Registration {
    tracing::info!(file = %archive.display(), bytes = size, "indexing the archive (first use); reads of it wait");
    let entry = Arc::new(Indexing {
        archive: archive.to_path_buf(),
        size,
        started: Instant::now(),
        done: AtomicU64::new(0),
    });
    now_list().push(entry.clone());
    Registration(entry)
}

impl Registration {
    /// The archive as a [`ReadAt`] that moves this build's mark.
    pub fn reader<'a>(&'a self, inner: &'a dyn ReadAt) -> Counting<'a> {
        Counting {
            inner,
            indexing: &self.0,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        now_list().retain(|e| !Arc::ptr_eq(e, &self.0));
        let secs = self.0.started.elapsed().as_secs_f64();
        tracing::info!(file = %self.0.archive.display(), seconds = format!("{secs:.1}"), "indexing the archive ended");
    }
}

/// Reads through to the archive, recording how far the build has read.
pub struct Counting<'a> {
    inner: &'a dyn ReadAt,
    indexing: &'a Indexing,
}

/// Test-only: `ROOTFS_MOUNT_TEST_INDEX_PACE_MS=N` makes an index build sleep N ms per
/// MiB it reads, so that tests can watch a build in progress (its status, waiting
/// requests) with a small archive. Not for use outside tests.
pub const TEST_PACE_ENV: &str = "ROOTFS_MOUNT_TEST_INDEX_PACE_MS";

fn test_pace_ms_per_mib() -> u64 {
    static PACE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PACE.get_or_init(|| {
        std::env::var(TEST_PACE_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

impl ReadAt for Counting<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let n = self.inner.read_at(buf, offset)?;
        let pace = test_pace_ms_per_mib();
        if pace > 0 {
            std::thread::sleep(std::time::Duration::from_micros(
                pace * 1000 * n as u64 / (1 << 20),
            ));
        }
        self.indexing
            .done
            .fetch_max(offset + n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The builds in progress now.
pub fn snapshot() -> Vec<IndexingStatus> {
    now_list()
        .iter()
        .map(|e| {
            status_of(
                &e.archive,
                e.size,
                e.done.load(Ordering::Relaxed),
                e.started.elapsed().as_secs_f64(),
            )
        })
        .collect()
}

fn status_of(archive: &Path, size: u64, done: u64, elapsed: f64) -> IndexingStatus {
    let done = done.min(size);
    let eta = (done > 0 && elapsed > 0.0).then(|| {
        let rate = done as f64 / elapsed;
        ((size - done) as f64 / rate).ceil() as u64
    });
    IndexingStatus {
        file: archive.display().to_string(),
        bytes_done: done,
        bytes_total: size,
        percent: (done * 100).checked_div(size).unwrap_or(0),
        elapsed_seconds: elapsed as u64,
        eta_seconds: eta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_percent_and_eta() {
        let s = status_of(Path::new("/c/r.tar.gz"), 1000, 250, 2.0);
        assert_eq!((s.percent, s.eta_seconds), (25, Some(6)));
        assert_eq!(status_of(Path::new("x"), 0, 0, 0.0).percent, 0);
        assert_eq!(status_of(Path::new("x"), 10, 0, 1.0).eta_seconds, None);
    }

    #[test]
    fn a_build_shows_while_it_runs() {
        let data = vec![7u8; 4096];
        let reg = start(Path::new("/test/progress.tar.gz"), data.len() as u64);
        let mut buf = [0u8; 1024];
        let bytes: &[u8] = &data;
        reg.reader(&bytes).read_at(&mut buf, 1024).unwrap();
        let now = snapshot();
        let mine = now
            .iter()
            .find(|s| s.file == "/test/progress.tar.gz")
            .unwrap();
        assert_eq!((mine.bytes_done, mine.percent), (2048, 50));
        drop(reg);
        assert!(!snapshot().iter().any(|s| s.file == "/test/progress.tar.gz"));
    }
}
