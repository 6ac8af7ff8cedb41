//! `rootfs-mount fetch` and `cache publish|verify|ls|gc` against real servers on
//! 127.0.0.1: Debian's nginx serving a mirror published from the demo cache (fetch into
//! an empty cache, mount, byte-compare), and a small Range-capable test server that
//! injects faults (wrong bytes, 404, a stall, a truncated body, a bad SHA256SUMS, a
//! killed fetch). Every server is stopped by a guard, also when the test fails.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::nginx::Nginx;
use common::{demo_cache, scratch, sh, Mount, BIN};

/// Runs rootfs-mount without any proxy from the environment (everything is loopback).
fn rootfs_mount(args: &[&str]) -> Output {
    command(args).output().expect("run rootfs-mount")
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for var in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A mirror folder published from the demo cache, once per test binary.
fn mirror_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("mirror");
        let out = rootfs_mount(&[
            "cache",
            "publish",
            dir.to_str().unwrap(),
            "--cache",
            demo_cache().to_str().unwrap(),
        ]);
        assert!(out.status.success(), "publish: {}", text(&out.stderr));
        dir
    })
}

/// The mirror's SHA256SUMS.
fn mirror_sums(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(dir.join("SHA256SUMS"))
        .unwrap()
        .lines()
        .map(|l| {
            let (hex, path) = l.split_once("  ").unwrap();
            (path.to_string(), hex.to_string())
        })
        .collect()
}

// ---------------------------------------------------------------- the fault-injecting server

/// What the test server does for one path.
#[derive(Clone, Debug)]
enum Fault {
    /// Serves other bytes than the mirror's SHA256SUMS says.
    WrongBytes,
    NotFound,
    /// Sends the headers and half the body, then nothing.
    Stall,
    /// The first request gets half the body and a closed connection.
    TruncateOnce,
    /// Sends the body in 64 KiB pieces, `ms` apart (for the kill test).
    Slow(u64),
    /// Reads the request and never answers.
    Silent,
}

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    range: Option<String>,
}

/// A Range-capable HTTP/1.1 server on its own port, serving `files`, with faults; its
/// thread is stopped on drop.
struct TestServer {
    port: u16,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    files: HashMap<String, Vec<u8>>,
    faults: Mutex<HashMap<String, Fault>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    fn start(files: HashMap<String, Vec<u8>>, faults: HashMap<String, Fault>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            files,
            faults: Mutex::new(faults),
            seen: seen.clone(),
            stop: stop.clone(),
        });
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = handle(stream, &shared);
                });
            }
        });
        TestServer {
            port,
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_string();
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    shared.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    let fault = shared.faults.lock().unwrap().get(&path).cloned();
    if let Some(Fault::Silent) = fault {
        while !shared.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        return Ok(());
    }
    let Some(body) = shared.files.get(&path) else {
        return write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    };
    let mut body = body.clone();
    match fault {
        Some(Fault::NotFound) => {
            return write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        }
        Some(Fault::WrongBytes) => body[0] ^= 0xff,
        _ => {}
    }
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let start = start.min(body.len());
    let len = body.len() - start;
    if start > 0 {
        write!(
            out,
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {len}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
            body.len() - 1,
            body.len()
        )?;
    } else {
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n"
        )?;
    }
    let rest = &body[start..];
    match fault {
        Some(Fault::Stall) => {
            out.write_all(&rest[..rest.len() / 2])?;
            out.flush()?;
            while !shared.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        }
        Some(Fault::TruncateOnce) => {
            shared.faults.lock().unwrap().remove(&path);
            out.write_all(&rest[..rest.len() / 2])?;
            out.flush()
            // Dropping the stream closes the connection mid-body.
        }
        Some(Fault::Slow(ms)) => {
            for piece in rest.chunks(64 << 10) {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                out.write_all(piece)?;
                out.flush()?;
                std::thread::sleep(Duration::from_millis(ms));
            }
            Ok(())
        }
        _ => out.write_all(rest),
    }
}

/// The published mirror's files (path -> bytes), for the test server.
fn mirror_files() -> HashMap<String, Vec<u8>> {
    let dir = mirror_dir();
    let mut files: HashMap<String, Vec<u8>> = mirror_sums(dir)
        .keys()
        .map(|p| (p.clone(), std::fs::read(dir.join(p)).unwrap()))
        .collect();
    files.insert(
        "SHA256SUMS".into(),
        std::fs::read(dir.join("SHA256SUMS")).unwrap(),
    );
    files
}

/// `fetch --k8s v1.23.4 --arch amd64` from `mirror` only, into `cache`.
fn fetch_from(mirror: &str, cache: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "fetch",
        "--k8s",
        "v1.23.4",
        "--arch",
        "amd64",
        "--no-upstream",
        "--mirror",
        mirror,
        "--cache",
        cache.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    rootfs_mount(&args)
}

/// Files at cache paths (not the partial folder, the record or its lock).
fn cache_files(cache: &Path) -> Vec<String> {
    common::walk(cache)
        .into_iter()
        .filter(|p| cache.join(p).is_file())
        .filter(|p| {
            !p.starts_with(".partial") && !p.starts_with(".SHA256SUMS") && p != "SHA256SUMS"
        })
        .collect()
}

/// sha256 of `bytes` by coreutils' sha256sum (not our code).
fn sha256_hex(bytes: &[u8]) -> String {
    let file = scratch("hash").join("f");
    std::fs::write(&file, bytes).unwrap();
    sh(&format!("sha256sum '{}' | cut -d' ' -f1", file.display()))
        .trim()
        .to_string()
}

const KUBEADM: &str = "kube/v1.23.4/amd64/kubeadm";

// ---------------------------------------------------------------- tests

/// The whole path: publish the demo cache as a mirror, serve it with nginx, fetch two
/// versions into an empty cache, mount, compare every byte with the server's files.
#[test]
fn fetch_from_nginx_mirror_then_mount() {
    let mirror = mirror_dir();
    let sums = mirror_sums(mirror);
    assert!(sums.contains_key(KUBEADM) && sums.contains_key("cri/docker/arm64/registry.tar.gz"));
    let cache = scratch("fetched-cache");
    {
        let nginx = Nginx::serve(mirror);
        for (version, cri) in [("v1.23.4", "docker"), ("v1.24.0", "containerd")] {
            let out = rootfs_mount(&[
                "fetch",
                "--k8s",
                version,
                "--cri",
                cri,
                "--mirror",
                &nginx.url(),
                "--no-upstream",
                "--jobs",
                "4",
                "--cache",
                cache.to_str().unwrap(),
            ]);
            assert!(
                out.status.success(),
                "fetch {version}: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
            assert!(
                text(&out.stdout).contains("0 failed"),
                "{}",
                text(&out.stdout)
            );
        }
        assert!(nginx.access_log().contains("GET /SHA256SUMS"));
        assert!(nginx.access_log().contains(&format!("GET /{KUBEADM}")));
    }
    // Every fetched file is the server's, byte for byte, and recorded.
    let record = mirror_sums(&cache);
    assert!(record.len() >= 30, "{record:?}");
    for (path, hex) in &record {
        assert_eq!(sums.get(path), Some(hex), "{path}");
        assert_eq!(
            std::fs::read(cache.join(path)).unwrap(),
            std::fs::read(mirror.join(path)).unwrap(),
            "{path}"
        );
    }
    assert!(
        std::fs::metadata(cache.join(KUBEADM))
            .unwrap()
            .permissions()
            .mode()
            & 0o111
            != 0
    );
    // Nothing left in the partial folder but lock files.
    for p in common::walk(&cache.join(".partial")) {
        assert!(p.ends_with(".lock"), "left over: {p}");
    }

    // The mount accepts the cache and shows the server's bytes.
    let m = Mount::with_cache(&cache, &["--k8s", "v1.23.4"]);
    for arch in ["amd64", "arm64"] {
        for (shown, served) in [
            (
                format!("{arch}/bin/kubeadm"),
                format!("kube/v1.23.4/{arch}/kubeadm"),
            ),
            (
                format!("{arch}/bin/conntrack"),
                format!("oss/{arch}/bin/conntrack"),
            ),
            (
                format!("{arch}/cri/docker.tar.gz"),
                format!("cri/docker/{arch}/docker.tar.gz"),
            ),
        ] {
            assert_eq!(
                std::fs::read(m.path(&shown)).unwrap(),
                std::fs::read(mirror.join(&served)).unwrap(),
                "{shown}"
            );
        }
        sh(&format!(
            "gunzip -c '{}' | cmp - '{}'",
            mirror
                .join(format!("cri/docker/{arch}/registry.tar.gz"))
                .display(),
            m.path(&format!("{arch}/images/registry.tar")).display()
        ));
        sh(&format!(
            "tar -xzOf '{}' crictl | cmp - '{}'",
            mirror
                .join(format!("oss/{arch}/bin/crictl.tar.gz"))
                .display(),
            m.path(&format!("{arch}/bin/crictl")).display()
        ));
    }
    drop(m);

    // Offline now (the server is gone): a second fetch finds everything recorded.
    let again = rootfs_mount(&[
        "fetch",
        "--k8s",
        "v1.23.4",
        "--mirror",
        "http://127.0.0.1:9/",
        "--no-upstream",
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("0 fetched"),
        "{}",
        text(&again.stdout)
    );

    // cache verify, ls.
    let verify = rootfs_mount(&["cache", "verify", "--cache", cache.to_str().unwrap()]);
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    let ls = text(&rootfs_mount(&["cache", "ls", "--cache", cache.to_str().unwrap()]).stdout);
    for line in [
        "v1.23.4\tdocker\tamd64\tcomplete (verified",
        "v1.23.4\tdocker\tarm64\tcomplete (verified",
        "v1.24.0\tcontainerd\tarm64\tcomplete (verified",
    ] {
        assert!(ls.contains(line), "{ls}");
    }
    // dockershim is gone in v1.24.0: no such combination is listed.
    assert!(!ls.contains("v1.24.0\tdocker"), "{ls}");

    // A changed byte is found by verify.
    let victim = cache.join("oss/arm64/bin/conntrack");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&victim, &bytes).unwrap();
    let verify = rootfs_mount(&["cache", "verify", "--cache", cache.to_str().unwrap()]);
    assert!(!verify.status.success());
    assert!(
        text(&verify.stderr).contains("MISMATCH oss/arm64/bin/conntrack"),
        "{}",
        text(&verify.stderr)
    );
}

/// gc keeps what the kept versions need and seek indexes of live archives, removes the
/// rest (dry run first).
#[test]
fn cache_gc_removes_what_no_kept_version_needs() {
    let mirror = mirror_dir();
    let cache = scratch("gc-cache");
    let nginx = Nginx::serve(mirror);
    for (version, cri) in [("v1.23.4", "docker"), ("v1.24.0", "containerd")] {
        let out = rootfs_mount(&[
            "fetch",
            "--k8s",
            version,
            "--cri",
            cri,
            "--arch",
            "amd64",
            "--mirror",
            &nginx.url(),
            "--no-upstream",
            "--cache",
            cache.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    drop(nginx);
    // A live index (the mount indexes crictl.tar.gz on first listing) and an orphan.
    {
        let m = Mount::with_cache(&cache, &["--k8s", "v1.23.4", "--arch", "amd64"]);
        assert!(m.path("amd64/bin/crictl").is_file());
    }
    let index = cache.join("index");
    let live: Vec<String> = common::walk(&index);
    assert!(
        live.iter().any(|n| n.starts_with("crictl.tar.gz-")),
        "{live:?}"
    );
    std::fs::write(index.join("gone.tar.gz-0123456789abcdef.gzidx"), b"x").unwrap();
    // A file an older sources.yaml had fetched (recorded), and one the user put there.
    let old = cache.join("oss/amd64/bin/old-tool.tar.gz");
    std::fs::write(&old, b"old").unwrap();
    let mut record = std::fs::read_to_string(cache.join("SHA256SUMS")).unwrap();
    record.push_str(&format!(
        "{}  oss/amd64/bin/old-tool.tar.gz\n",
        sha256_hex(b"old")
    ));
    std::fs::write(cache.join("SHA256SUMS"), record).unwrap();
    let mine = cache.join("oss/amd64/bin/my-tool");
    std::fs::write(&mine, b"mine").unwrap();

    let c = cache.to_str().unwrap();
    let dry = rootfs_mount(&[
        "cache",
        "gc",
        "--cache",
        c,
        "--keep",
        "v1.23.4",
        "--dry-run",
    ]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let plan = text(&dry.stdout);
    assert!(
        plan.contains("would remove") && plan.contains("kube/v1.24.0"),
        "{plan}"
    );
    assert!(plan.contains("oss/amd64/bin/old-tool.tar.gz"), "{plan}");
    assert!(!plan.contains("my-tool"), "{plan}");
    // v1.23.4 with containerd needs the containerd bundle: kept.
    assert!(!plan.contains("containerd.tar.gz"), "{plan}");
    assert!(
        plan.contains("gone.tar.gz-0123456789abcdef.gzidx"),
        "{plan}"
    );
    assert!(!plan.contains("crictl.tar.gz-"), "{plan}");
    assert!(
        cache.join("kube/v1.24.0").is_dir(),
        "dry run removed something"
    );

    let gc = rootfs_mount(&["cache", "gc", "--cache", c, "--keep", "v1.23.4"]);
    assert!(gc.status.success(), "{}", text(&gc.stderr));
    assert!(!cache.join("kube/v1.24.0").exists());
    assert!(!old.exists() && mine.exists());
    assert!(cache
        .join("cri/containerd/amd64/containerd.tar.gz")
        .exists());
    assert!(!index.join("gone.tar.gz-0123456789abcdef.gzidx").exists());
    assert!(common::walk(&index)
        .iter()
        .any(|n| n.starts_with("crictl.tar.gz-")));
    // What stays is whole and recorded; the mount still works.
    let verify = rootfs_mount(&["cache", "verify", "--cache", c]);
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    let record = mirror_sums(&cache);
    assert!(record
        .keys()
        .all(|p| !p.contains("v1.24.0") && !p.contains("old-tool")));
    let _m = Mount::with_cache(&cache, &["--k8s", "v1.23.4", "--arch", "amd64"]);
}

#[test]
fn checksum_mismatch_keeps_nothing() {
    let server = TestServer::start(
        mirror_files(),
        HashMap::from([(KUBEADM.to_string(), Fault::WrongBytes)]),
    );
    let cache = scratch("mismatch-cache");
    let out = fetch_from(&server.url(), &cache, &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    let url = format!("{}{KUBEADM}", server.url());
    let expected = &mirror_sums(mirror_dir())[KUBEADM];
    let line = stderr
        .lines()
        .find(|l| l.starts_with("rootfs-mount: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        line.contains(&format!(
            "checksum mismatch for {url}: expected sha256 {expected}, got "
        )),
        "{stderr}"
    );
    assert!(!cache.join(KUBEADM).exists());
    assert!(!mirror_sums(&cache).contains_key(KUBEADM));
    assert!(!cache_files(&cache).contains(&KUBEADM.to_string()));
    assert!(common::walk(&cache.join(".partial"))
        .iter()
        .all(|p| p.ends_with(".lock")));
    // The other entries came through.
    assert!(cache.join("oss/amd64/bin/crictl.tar.gz").is_file());
}

#[test]
fn not_found_is_named() {
    let server = TestServer::start(
        mirror_files(),
        HashMap::from([(KUBEADM.to_string(), Fault::NotFound)]),
    );
    let cache = scratch("404-cache");
    let out = fetch_from(&server.url(), &cache, &[]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{}{KUBEADM}: HTTP 404 Not Found", server.url())),
        "{stderr}"
    );
    assert!(!cache.join(KUBEADM).exists());
    // 404 is not retried.
    assert_eq!(server.seen(KUBEADM).len(), 1);
}

#[test]
fn stalled_server_times_out() {
    let server = TestServer::start(
        mirror_files(),
        HashMap::from([(KUBEADM.to_string(), Fault::Stall)]),
    );
    let cache = scratch("stall-cache");
    let start = Instant::now();
    let out = fetch_from(
        &server.url(),
        &cache,
        &["--timeout", "1s", "--retries", "1"],
    );
    let took = start.elapsed();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("stalled"), "{stderr}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(!cache.join(KUBEADM).exists());
    // The retry asked only for the rest.
    let seen = server.seen(KUBEADM);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[1]
            .range
            .as_deref()
            .is_some_and(|r| r.starts_with("bytes=")),
        "{seen:?}"
    );
}

#[test]
fn truncated_response_resumes_with_range() {
    let files = mirror_files();
    let whole = files[KUBEADM].clone();
    let server = TestServer::start(
        files,
        HashMap::from([(KUBEADM.to_string(), Fault::TruncateOnce)]),
    );
    let cache = scratch("truncated-cache");
    let out = fetch_from(&server.url(), &cache, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("truncated"),
        "{}",
        text(&out.stderr)
    );
    let seen = server.seen(KUBEADM);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    assert_eq!(
        seen[1].range.as_deref(),
        Some(&*format!("bytes={}-", whole.len() / 2))
    );
    assert_eq!(std::fs::read(cache.join(KUBEADM)).unwrap(), whole);
}

#[test]
fn bad_mirror_sums_is_refused() {
    let mut files = mirror_files();
    files.insert(
        "SHA256SUMS".into(),
        b"<html>not a checksum list</html>\n".to_vec(),
    );
    let server = TestServer::start(files, HashMap::new());
    let cache = scratch("badsums-cache");
    let out = fetch_from(&server.url(), &cache, &[]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "mirror {} is not usable: {}SHA256SUMS: line 1:",
            server.url(),
            server.url()
        )),
        "{stderr}"
    );
    assert!(cache_files(&cache).is_empty(), "{:?}", cache_files(&cache));
    // Nothing but the checksum list was asked for.
    assert!(server.seen(KUBEADM).is_empty());
}

#[test]
fn unknown_version_lists_the_known_ones() {
    let cache = scratch("unknown-cache");
    let out = rootfs_mount(&[
        "fetch",
        "--k8s",
        "v1.99.0",
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("known versions: from v1.13.0"), "{stderr}");
    assert!(stderr.contains(">=1.31.1, <1.32.0"), "{stderr}");
}

#[test]
fn unwritable_cache_is_refused() {
    // A cache folder on a read-only file system (root may write anywhere else).
    let out = rootfs_mount(&[
        "fetch",
        "--k8s",
        "v1.23.4",
        "--no-upstream",
        "--cache",
        "/proc/rootfs-mount-cache",
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("the cache folder /proc/rootfs-mount-cache is not writable"),
        "{stderr}"
    );
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn disk_full_keeps_nothing() {
    let dir = scratch("full");
    sh(&format!(
        "mount -t tmpfs -o size=256k tmpfs '{}'",
        dir.display()
    ));
    let _guard = Tmpfs(dir.clone());
    // A mirror whose kubeadm is 1 MiB: more than the cache's file system holds.
    let mut files = mirror_files();
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let hex = sha256_hex(&big);
    let mut sums = mirror_sums(mirror_dir());
    sums.insert(KUBEADM.into(), hex.trim().to_string());
    files.insert(KUBEADM.into(), big);
    files.insert(
        "SHA256SUMS".into(),
        sums.iter()
            .map(|(p, h)| format!("{h}  {p}\n"))
            .collect::<String>()
            .into_bytes(),
    );
    let server = TestServer::start(files, HashMap::new());
    let out = fetch_from(&server.url(), &dir, &["--jobs", "1"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(!dir.join(KUBEADM).exists());
    let part = dir.join(".partial").join(format!("{}.part", hex.trim()));
    assert!(!part.exists(), "the partial download was kept");
}

/// kill -9 in the middle of a file: nothing at the cache path; the next fetch resumes
/// with Range and ends with the right bytes.
#[test]
fn killed_fetch_resumes() {
    interrupted_fetch_resumes("KILL");
}

/// Ctrl-C (SIGINT) does the same.
#[test]
fn interrupted_fetch_resumes_after_ctrl_c() {
    interrupted_fetch_resumes("INT");
}

fn interrupted_fetch_resumes(signal: &str) {
    let mut files = mirror_files();
    let big: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let hex = sha256_hex(&big);
    let mut sums = mirror_sums(mirror_dir());
    sums.insert(KUBEADM.into(), hex.clone());
    files.insert(KUBEADM.into(), big.clone());
    files.insert(
        "SHA256SUMS".into(),
        sums.iter()
            .map(|(p, h)| format!("{h}  {p}\n"))
            .collect::<String>()
            .into_bytes(),
    );
    let server = TestServer::start(
        files,
        HashMap::from([(KUBEADM.to_string(), Fault::Slow(20))]),
    );
    let cache = scratch("killed-cache");
    let mut child = command(&[
        "fetch",
        "--k8s",
        "v1.23.4",
        "--arch",
        "amd64",
        "--no-upstream",
        "--mirror",
        &server.url(),
        "--cache",
        cache.to_str().unwrap(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let part = cache.join(".partial").join(format!("{hex}.part"));
    let partial_size = || std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    common::wait_for("part of the download", || partial_size() > (256 << 10));
    sh(&format!("kill -{signal} {}", child.id()));
    let status = child.wait().unwrap();
    assert!(!status.success(), "fetch finished before the {signal}");
    let had = partial_size();
    assert!(had > 0 && had < big.len() as u64, "{had}");
    assert!(
        !cache.join(KUBEADM).exists(),
        "an unverified file at the cache path"
    );

    let out = fetch_from(&server.url(), &cache, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(cache.join(KUBEADM)).unwrap(), big);
    let seen = server.seen(KUBEADM);
    let last = seen.last().unwrap();
    let from: u64 = last
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse().ok())
        .unwrap_or_else(|| panic!("the resumed request carried no Range: {seen:?}"));
    assert!(from >= had, "resumed from {from}, had {had}");
}

#[test]
fn publish_refuses_a_folder_inside_the_cache() {
    let cache = common::own_cache();
    let out = rootfs_mount(&[
        "cache",
        "publish",
        cache.join("pub").to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("overlap"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn print_urls_names_mirror_urls_and_digests() {
    let server = TestServer::start(mirror_files(), HashMap::new());
    let cache = scratch("print-cache");
    let out = fetch_from(&server.url(), &cache, &["--print-urls"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected = &mirror_sums(mirror_dir())[KUBEADM];
    assert!(
        text(&out.stdout).contains(&format!(
            "{}{KUBEADM} -> {KUBEADM} -> sha256:{expected}\n",
            server.url()
        )),
        "{}",
        text(&out.stdout)
    );
    assert!(cache_files(&cache).is_empty());
    assert!(server.seen(KUBEADM).is_empty(), "--print-urls downloaded");
}

/// Upstream sources from a `--contexts` sources.yaml pointing at the test server: a
/// `.sha256` sidecar, a SHA256SUMS file, a pinned digest, an unpinned file (refused, then
/// taken with --allow-unpinned), and the registry image (its registry, here the test
/// server through --image-mirror, has no distribution API); then a mirror that has only the image fills the rest, and the mount
/// takes the same --contexts.
#[test]
fn upstream_checksum_sources_from_contexts() {
    let demo = demo_cache();
    let read = |rel: &str| std::fs::read(demo.join(rel)).unwrap();
    let kubeadm = read(KUBEADM);
    let nerdctl = read("oss/amd64/bin/nerdctl.tar.gz");
    let docker = read("cri/docker/amd64/docker.tar.gz");
    let conntrack = read("oss/amd64/bin/conntrack");
    let registry = read("cri/docker/amd64/registry.tar.gz");
    let nerdctl_name = "nerdctl-1.7.6-linux-amd64.tar.gz";
    let files = HashMap::from([
        (
            "release/v1.23.4/bin/linux/amd64/kubeadm".to_string(),
            kubeadm.clone(),
        ),
        (
            "release/v1.23.4/bin/linux/amd64/kubeadm.sha256".to_string(),
            format!("{}\n", sha256_hex(&kubeadm)).into_bytes(),
        ),
        (format!("nerdctl/v1.7.6/{nerdctl_name}"), nerdctl.clone()),
        (
            "nerdctl/v1.7.6/SHA256SUMS".to_string(),
            format!(
                "{}  nerdctl-full-1.7.6-linux-amd64.tar.gz\n{}  {nerdctl_name}\n",
                sha256_hex(b"other"),
                sha256_hex(&nerdctl)
            )
            .into_bytes(),
        ),
        (
            "static/x86_64/docker-19.03.15.tgz".to_string(),
            docker.clone(),
        ),
        ("conntrack".to_string(), conntrack.clone()),
        (
            "mirror/cri/docker/amd64/registry.tar.gz".to_string(),
            registry.clone(),
        ),
        (
            "mirror/SHA256SUMS".to_string(),
            format!(
                "{}  cri/docker/amd64/registry.tar.gz\n",
                sha256_hex(&registry)
            )
            .into_bytes(),
        ),
    ]);
    let server = TestServer::start(files, HashMap::new());
    let base = server.url();
    let contexts = scratch("contexts");
    sh(&format!(
        "cp -a '{}/.' '{}/'",
        common::repo().join("contexts").display(),
        contexts.display()
    ));
    std::fs::write(
        contexts.join("sources.yaml"),
        format!(
            r#"arches: {{ amd64: {{ uname_arch: x86_64 }}, arm64: {{ uname_arch: aarch64 }} }}
artifacts:
  - name: kubeadm
    path: kube/@{{version}}/@{{arch}}/kubeadm
    url: {base}release/@{{version}}/bin/linux/@{{arch}}/kubeadm
    sha256_url: {base}release/@{{version}}/bin/linux/@{{arch}}/kubeadm.sha256
    mode: "0755"
  - name: nerdctl
    path: oss/@{{arch}}/bin/nerdctl.tar.gz
    url: {base}nerdctl/v@{{nerdctl}}/nerdctl-@{{nerdctl}}-linux-@{{arch}}.tar.gz
    sha256sums:
      url: {base}nerdctl/v@{{nerdctl}}/SHA256SUMS
      name: nerdctl-@{{nerdctl}}-linux-@{{arch}}.tar.gz
  - name: docker
    when: {{ cri: docker }}
    path: cri/docker/@{{arch}}/docker.tar.gz
    url: {base}static/@{{uname_arch}}/docker-@{{cri_version}}.tgz
    sha256: {{ amd64: "{docker_hex}" }}
  - name: conntrack
    path: oss/@{{arch}}/bin/conntrack
    url: {base}conntrack
    mode: "0755"
  - name: registry image
    path: cri/@{{cri}}/@{{arch}}/registry.tar.gz
    image: docker.io/library/registry:2.8.3@sha256:a3d8aaa63ed8681a604f1dea0aa03f100d5895b6a58ace528858a7b332415373
"#,
            docker_hex = sha256_hex(&docker)
        ),
    )
    .unwrap();
    let cache = scratch("upstream-cache");
    let (ctx, c) = (contexts.to_str().unwrap(), cache.to_str().unwrap());
    let image_mirror = format!("docker.io={}", base.trim_end_matches('/'));
    let args = [
        "fetch",
        "--k8s",
        "v1.23.4",
        "--arch",
        "amd64",
        "--contexts",
        ctx,
        "--cache",
        c,
        "--retries",
        "0",
        // Never docker.io from a test: the "registry" here is the test server, which has
        // no /v2/ API, so the image step fails on loopback.
        "--image-mirror",
        &image_mirror,
    ];
    let out = rootfs_mount(&args);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("upstream publishes no checksum for conntrack"),
        "{stderr}"
    );
    assert!(
        stderr.contains("FAILED cri/docker/amd64/registry.tar.gz")
            && stderr.contains("docker.io/library/registry:2.8.3@sha256:"),
        "{stderr}"
    );
    let record = mirror_sums(&cache);
    assert_eq!(record.get(KUBEADM), Some(&sha256_hex(&kubeadm)));
    assert_eq!(
        record.get("oss/amd64/bin/nerdctl.tar.gz"),
        Some(&sha256_hex(&nerdctl))
    );
    assert_eq!(
        std::fs::read(cache.join("cri/docker/amd64/docker.tar.gz")).unwrap(),
        docker
    );
    assert!(!cache.join("oss/amd64/bin/conntrack").exists());
    assert!(!cache.join("cri/docker/amd64/registry.tar.gz").exists());

    // The mirror has the image; the unpinned file is taken on first use and recorded.
    let mirror = format!("{base}mirror/");
    let mut again = args.to_vec();
    again.extend(["--mirror", &mirror, "--allow-unpinned"]);
    let out = rootfs_mount(&again);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no published digest; recording sha256"),
        "{stderr}"
    );
    assert!(
        text(&out.stdout).contains("2 fetched, 3 already present"),
        "{}",
        text(&out.stdout)
    );
    let record = mirror_sums(&cache);
    assert_eq!(
        record.get("oss/amd64/bin/conntrack"),
        Some(&sha256_hex(&conntrack))
    );
    assert_eq!(
        std::fs::read(cache.join("cri/docker/amd64/registry.tar.gz")).unwrap(),
        registry
    );
    // Each checksum file was asked for once, the binaries never twice.
    assert_eq!(server.seen("nerdctl/v1.7.6/SHA256SUMS").len(), 1);
    assert_eq!(
        server.seen("release/v1.23.4/bin/linux/amd64/kubeadm").len(),
        1
    );

    // The mount reads the same sources.yaml: these five entries are all it needs.
    let m = Mount::with_cache(
        &cache,
        &["--k8s", "v1.23.4", "--arch", "amd64", "--contexts", ctx],
    );
    assert_eq!(std::fs::read(m.path("amd64/bin/kubeadm")).unwrap(), kubeadm);
}

/// A partial download whose kept bytes are wrong (a disk error, a changed file): the
/// resumed result does not match, so it is downloaded once more from zero.
#[test]
fn corrupt_partial_file_is_downloaded_again() {
    let files = mirror_files();
    let whole = files[KUBEADM].clone();
    let hex = &mirror_sums(mirror_dir())[KUBEADM];
    let server = TestServer::start(files, HashMap::new());
    let cache = scratch("corrupt-part-cache");
    std::fs::create_dir_all(cache.join(".partial")).unwrap();
    std::fs::write(
        cache.join(".partial").join(format!("{hex}.part")),
        vec![b'!'; whole.len() / 2],
    )
    .unwrap();
    let out = fetch_from(&server.url(), &cache, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("does not match; downloading it whole"),
        "{}",
        text(&out.stderr)
    );
    let seen = server.seen(KUBEADM);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[0].range.as_deref(),
        Some(&*format!("bytes={}-", whole.len() / 2))
    );
    assert_eq!(seen[1].range, None);
    assert_eq!(std::fs::read(cache.join(KUBEADM)).unwrap(), whole);
}

/// Options that cannot work are refused before anything is written.
#[test]
fn bad_fetch_options_are_refused() {
    let cache = scratch("badopt-cache");
    let c = cache.to_str().unwrap();
    for (args, needle) in [
        (vec!["--mirror", "ftp://example.com/"], "bad --mirror"),
        (vec!["--image-mirror", "docker.io"], "expected HOST=URL"),
        (vec!["--timeout", "soon"], "bad duration"),
        (vec!["--arch", "s390x"], "unknown arch"),
        (vec!["--cri", "docker", "--k8s", "v1.24.0"], "dockershim"),
    ] {
        let mut full = vec!["fetch", "--cache", c];
        if !args.contains(&"--k8s") {
            full.extend(["--k8s", "v1.23.4"]);
        }
        full.extend(args.iter().copied());
        let out = rootfs_mount(&full);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(
        common::walk(&cache).is_empty(),
        "{:?}",
        common::walk(&cache)
    );
}

/// `fetch --images`: every image of the rendered imageList is pulled from its registry
/// (here one distribution registry on 127.0.0.1 standing in for registry.k8s.io, docker.io
/// and quay.io through --image-mirror) into CACHE/registry; a second registry serving
/// that folder read-only gives skopeo the digests that were pushed.
#[test]
fn images_are_pulled_into_the_registry_data() {
    use common::registry::{skopeo, Registry};
    let source_storage = scratch("image-source");
    let source = Registry::start(&source_storage, false);
    // One small image (a file and a label), pushed under every name of the imageList.
    let layout = scratch("image-layout");
    std::fs::write(layout.join("hello"), b"an image of the list\n").unwrap();
    let buildah_root = scratch("image-buildah");
    let buildah = |args: &[&str]| -> String {
        let out = Command::new("buildah")
            .args(["--storage-driver", "vfs", "--root"])
            .arg(buildah_root.join("root"))
            .arg("--runroot")
            .arg(buildah_root.join("run"))
            .args(args)
            .output()
            .expect("buildah (apt-get install buildah)");
        assert!(
            out.status.success(),
            "buildah {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_string()
    };
    let c = buildah(&["from", "scratch"]);
    buildah(&["copy", &c, layout.join("hello").to_str().unwrap(), "/hello"]);
    let oci = layout.join("oci");
    buildah(&[
        "commit",
        "--quiet",
        &c,
        &format!("oci:{}:img", oci.display()),
    ]);
    let params = rootfs_mount::layout::MountParams::rendering(
        rootfs_mount::versions::KubeVersion::parse("v1.23.4").unwrap(),
        None,
        "calico".into(),
        None,
    );
    let images = rootfs_mount::layout::image_list(&params).unwrap();
    assert!(images.len() > 10, "{images:?}");
    let mut pushed = BTreeMap::new();
    for image in &images {
        // host/path:tag -> path:tag in the stand-in registry (one per upstream host)
        let (host, path) = image.split_once('/').unwrap();
        assert!(
            ["registry.k8s.io", "docker.io", "quay.io"].contains(&host),
            "{image}"
        );
        let target = format!("docker://{}/{path}", source.host());
        skopeo(&[
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{}:img", oci.display()),
            &target,
        ]);
        let digest = skopeo(&[
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &target,
        ]);
        pushed.insert(path.to_string(), digest.trim().to_string());
    }

    let server = TestServer::start(mirror_files(), HashMap::new());
    let cache = scratch("images-cache");
    let url = format!("http://{}", source.host());
    // Air-gapped (--no-upstream): a registry without an --image-mirror is refused, never
    // reached.
    let out = fetch_from(
        &server.url(),
        &cache,
        &[
            "--images",
            "--image-mirror",
            &format!("registry.k8s.io={url}"),
            "--image-mirror",
            &format!("docker.io={url}"),
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--no-upstream: no --image-mirror for quay.io"),
        "{}",
        text(&out.stderr)
    );
    let out = fetch_from(
        &server.url(),
        &cache,
        &[
            "--images",
            "--image-mirror",
            &format!("registry.k8s.io={url}"),
            "--image-mirror",
            &format!("docker.io={url}"),
            "--image-mirror",
            &format!("quay.io={url}"),
        ],
    );
    assert!(
        out.status.success(),
        "fetch --images: {}",
        text(&out.stderr)
    );
    assert!(cache.join(KUBEADM).is_file());
    drop(source);

    let served = Registry::start(&cache.join("registry"), true);
    for (path, digest) in &pushed {
        let got = skopeo(&[
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &format!("docker://{}/{path}", served.host()),
        ]);
        assert_eq!(got.trim(), digest, "{path}");
    }
    let _ = std::fs::remove_dir_all(&buildah_root);
}

/// A server that takes the request and never answers fails as a stall too.
#[test]
fn silent_server_times_out() {
    let server = TestServer::start(
        mirror_files(),
        HashMap::from([(KUBEADM.to_string(), Fault::Silent)]),
    );
    let cache = scratch("silent-cache");
    let start = Instant::now();
    let out = fetch_from(
        &server.url(),
        &cache,
        &["--timeout", "1s", "--retries", "0"],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}{KUBEADM}: no answer within 1 s (the server stalled)",
            server.url()
        )),
        "{stderr}"
    );
    assert!(start.elapsed() < Duration::from_secs(15));
    assert!(!cache.join(KUBEADM).exists());
}

/// Two fetches into one cache at once: the second waits for the first's download of the
/// same file and takes it, so each file is downloaded once and the record keeps all.
#[test]
fn two_fetches_at_once_share_the_cache() {
    let files = mirror_files();
    let whole = files[KUBEADM].clone();
    let server = TestServer::start(
        files,
        HashMap::from([(KUBEADM.to_string(), Fault::Slow(300))]),
    );
    let cache = scratch("shared-cache");
    let c = cache.to_str().unwrap();
    let url = server.url();
    let spawn = || {
        command(&[
            "fetch",
            "--k8s",
            "v1.23.4",
            "--arch",
            "amd64",
            "--no-upstream",
            "--mirror",
            &url,
            "--cache",
            c,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let first = spawn();
    common::wait_for("the first download to start", || {
        !server.seen(KUBEADM).is_empty()
    });
    let second = spawn();
    for child in [first, second] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    assert_eq!(server.seen(KUBEADM).len(), 1, "downloaded twice");
    assert_eq!(std::fs::read(cache.join(KUBEADM)).unwrap(), whole);
    assert_eq!(mirror_sums(&cache).len(), 9);
    let verify = rootfs_mount(&["cache", "verify", "--cache", c]);
    assert!(verify.status.success(), "{}", text(&verify.stderr));
}
