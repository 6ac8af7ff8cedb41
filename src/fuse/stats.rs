//! Counters of the adapter, shared with the daemon, which publishes them in its state
//! file for `rootfs-mount status`. Requests are also counted by type (`by_op` in
//! `status --json`): round trips per file are what a FUSE file system is slow by, and
//! `scripts/bench-requests.sh` reads these counts.

use std::collections::BTreeMap;
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

/// The kinds of FUSE requests the adapter answers, for per-type counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Forget,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Access,
    Create,
    Fallocate,
}

impl Op {
    const ALL: [Op; 31] = [
        Op::Lookup,
        Op::Forget,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Release,
        Op::Fsync,
        Op::Opendir,
        Op::Readdir,
        Op::Readdirplus,
        Op::Releasedir,
        Op::Fsyncdir,
        Op::Statfs,
        Op::Setxattr,
        Op::Getxattr,
        Op::Listxattr,
        Op::Removexattr,
        Op::Access,
        Op::Create,
        Op::Fallocate,
    ];

    /// The request's name in the kernel's protocol, lower case.
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Forget => "forget",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Readdirplus => "readdirplus",
            Op::Releasedir => "releasedir",
            Op::Fsyncdir => "fsyncdir",
            Op::Statfs => "statfs",
            Op::Setxattr => "setxattr",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Removexattr => "removexattr",
            Op::Access => "access",
            Op::Create => "create",
            Op::Fallocate => "fallocate",
        }
    }
}

/// Request, byte and error counters; cheap enough to bump on every request.
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    by_op: [AtomicU64; Op::ALL.len()],
    bytes_read: AtomicU64,
    errors: AtomicU64,
    passthrough: AtomicBool,
}

/// A consistent-enough copy of the counters (each one is read atomically).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Counters {
    pub requests: u64,
    /// Requests by type ([`Op::name`]), the types seen so far only.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_op: BTreeMap<String, u64>,
    pub bytes_read: u64,
    pub errors: u64,
    pub read_path: ReadPath,
}

impl Stats {
    pub fn request(&self, op: Op) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.by_op[op as usize].fetch_add(1, Ordering::Relaxed);
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
            by_op: Op::ALL
                .iter()
                .map(|op| (op, self.by_op[*op as usize].load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .map(|(op, n)| (op.name().to_string(), n))
                .collect(),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            read_path: self.read_path(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_type() {
        for (index, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, index, "Op::ALL is in declaration order");
        }
        let stats = Stats::default();
        stats.request(Op::Open);
        stats.request(Op::Open);
        stats.request(Op::Release);
        let c = stats.snapshot();
        assert_eq!(c.requests, 3);
        assert_eq!(c.by_op.get("open"), Some(&2));
        assert_eq!(c.by_op.get("release"), Some(&1));
        assert_eq!(c.by_op.len(), 2);
    }
}
