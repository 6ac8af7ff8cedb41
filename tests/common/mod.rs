//! Shared harness of the mounting tests: a demo cache made once per test binary and a
//! mount guard that always unmounts, even when the test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub const BIN: &str = env!("CARGO_BIN_EXE_rootfs-mount");

/// Every version the acceptance tests mount (SPEC boundary versions).
pub const VERSIONS: &[&str] = &[
    "v1.13.0", "v1.14.10", "v1.15.0", "v1.20.15", "v1.21.0", "v1.22.17", "v1.23.0", "v1.23.4",
    "v1.24.0", "v1.27.16", "v1.31.1",
];

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The helpers unit tests use too (seeded generator, scratch folders): one file.
#[path = "../../src/test_support.rs"]
mod support;
#[allow(unused_imports)]
pub use support::Rng;

/// A fresh folder of this test process under the target dir.
pub fn scratch(name: &str) -> PathBuf {
    support::scratch_in(Path::new(env!("CARGO_TARGET_TMPDIR")), name)
}

/// The demo cache (scripts/demo-cache.sh) holding all of [`VERSIONS`], made once.
pub fn demo_cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| {
        let dir = scratch("cache");
        let out = Command::new("bash")
            .arg(repo().join("scripts/demo-cache.sh"))
            .arg(&dir)
            .args(VERSIONS)
            .output()
            .expect("run demo-cache.sh");
        assert!(
            out.status.success(),
            "demo-cache.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run rootfs-mount")
}

pub fn is_mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let dir = dir.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*dir))
}

/// A live mount, unmounted and removed on drop.
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    /// Mounts with `args` (mountpoint and `--cache` are added) and waits for it.
    pub fn new(args: &[&str]) -> Mount {
        Self::with_cache(demo_cache(), args)
    }

    pub fn with_cache(cache: &Path, args: &[&str]) -> Mount {
        Self::with_env(cache, args, &[])
    }

    /// Like [`Mount::with_cache`], with extra environment for the daemon.
    pub fn with_env(cache: &Path, args: &[&str], env: &[(&str, &Path)]) -> Mount {
        let dir = scratch("mnt");
        let mount = Mount { dir };
        let out = Command::new(BIN)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .arg(&mount.dir)
            .arg("--cache")
            .arg(cache)
            .args(args)
            .output()
            .expect("run rootfs-mount");
        assert!(
            out.status.success(),
            "mount {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            is_mounted(&mount.dir),
            "rootfs-mount returned before the mount was there"
        );
        mount
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn read(&self, rel: &str) -> String {
        let path = self.path(rel);
        String::from_utf8(
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .expect("utf-8")
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let _ = Command::new(BIN).arg("umount").arg(&self.dir).output();
        }
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Runs a shell command, asserting success; returns stdout.
pub fn sh(script: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "`{script}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every path below `root` (relative, sorted), as `find` sees it.
pub fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            out.push(
                path.strip_prefix(root)
                    .expect("below root")
                    .to_string_lossy()
                    .into_owned(),
            );
            if entry.file_type().expect("file type").is_dir() {
                pending.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A private copy of the demo cache, for tests that damage or extend it.
pub fn own_cache() -> PathBuf {
    let dir = scratch("own-cache");
    sh(&format!(
        "cp -a '{}/.' '{}/'",
        demo_cache().display(),
        dir.display()
    ));
    dir
}

/// The pid of the daemon serving `mountpoint`, from `rootfs-mount status`.
pub fn daemon_pid(mountpoint: &Path) -> u32 {
    let out = run(&["status", mountpoint.to_str().expect("utf-8 mountpoint")]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("pid:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no daemon for {}: {text}{}",
                mountpoint.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Whether `pid` runs (a zombie does not).
pub fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z ") && !s.contains(") X "))
        .unwrap_or(false)
}

/// One `key: value` of `rootfs-mount status MOUNT`.
pub fn status_field(mountpoint: &Path, key: &str) -> String {
    let out = run(&["status", mountpoint.to_str().expect("utf-8 mountpoint")]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| panic!("status has no {key}"))
}

/// The errno of a failed `std::fs` call.
pub fn errno_of<T: std::fmt::Debug>(result: std::io::Result<T>) -> i32 {
    result
        .expect_err("expected an error")
        .raw_os_error()
        .expect("an OS error")
}

/// Requests the daemon has answered, by type (`status --json`), once the counters have
/// settled (the state file is rewritten once a second while they move).
pub fn requests_by_op(m: &Mount) -> std::collections::BTreeMap<String, u64> {
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let out = run(&["status", "--json", m.dir.to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_value(json["mounts"][0]["counters"]["by_op"].clone()).unwrap_or_default()
}

/// Waits up to 10 s for `cond`.
pub fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
pub mod buildah;
pub mod garage;
pub mod nginx;
pub mod registry;
