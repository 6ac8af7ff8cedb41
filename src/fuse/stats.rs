//! Counters of the adapter, shared with the daemon, which publishes them in its state
//! file for `rootfs-mount status`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// How file contents reach the reader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadPath {
    /// Every read is a FUSE request answered by the daemon.
    #[default]
    Userspace,
    /// The kernel reads the backing files itself (FUSE passthrough).
    Passthrough,
}

impl ReadPath {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadPath::Userspace => "userspace",
            ReadPath::Passthrough => "passthrough",
        }
    }
}

/// Request, byte and error counters; cheap enough to bump on every request.
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    bytes_read: AtomicU64,
    errors: AtomicU64,
    passthrough: AtomicBool,
}

/// A consistent-enough copy of the counters (each one is read atomically).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Counters {
    pub requests: u64,
    pub bytes_read: u64,
    pub errors: u64,
    pub read_path: ReadPath,
}

impl Stats {
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes handed to the kernel by `read`.
    pub fn read(&self, bytes: usize) {
        self.bytes_read.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A request answered with an errno that is a fault, not an expected answer
    /// (see `FsError::is_expected`).
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Set by the adapter once it knows whether passthrough is in use.
    pub fn set_read_path(&self, path: ReadPath) {
        self.passthrough
            .store(path == ReadPath::Passthrough, Ordering::Relaxed);
    }

    pub fn read_path(&self) -> ReadPath {
        if self.passthrough.load(Ordering::Relaxed) {
            ReadPath::Passthrough
        } else {
            ReadPath::Userspace
        }
    }

    pub fn snapshot(&self) -> Counters {
        Counters {
            requests: self.requests.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            read_path: self.read_path(),
        }
    }
}
