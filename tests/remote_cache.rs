//! Mounts from a cache held in an object store (`--cache s3://...`, `--cache http://...`):
//! a real Garage node and Debian's nginx on 127.0.0.1, the cache published to them by
//! `rootfs-mount cache publish`, and the mounted tree compared byte for byte (GNU tar)
//! with a mount of the local cache it was published from.

mod common;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::garage::Garage;
use common::nginx::Nginx;
use common::{errno_of, run, scratch, status_field, Mount};

const VERSION: &str = "v1.23.4";
/// Size of the big file of the test cache (several blocks of 1 MiB).
const BIG_MB: usize = 6;

/// A demo cache for [`VERSION`] with `oss/<arch>/bin/bigblob` of [`BIG_MB`] MiB.
fn cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| {
        let dir = scratch("remote-cache");
        let out = Command::new("bash")
            .arg(common::repo().join("scripts/demo-cache.sh"))
            .arg(&dir)
            .arg(VERSION)
            .env("DEMO_CACHE_BIG_MB", BIG_MB.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn local_mount() -> Mount {
    Mount::with_cache(cache(), &["--k8s", VERSION, "--read-only"])
}

/// The bytes of `tar --sort=name` of a mounted tree.
fn tar_of(dir: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["--sort=name", "-cf", "-", "-C"])
        .arg(dir)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn assert_same_tree(remote: &Path, local: &Path) {
    let (r, l) = (tar_of(remote), tar_of(local));
    assert!(l.len() > (BIG_MB << 20), "the local tree is the full cache");
    assert!(
        r == l,
        "the trees differ ({} vs {} bytes of tar)",
        r.len(),
        l.len()
    );
}

fn publish(garage: &Garage, prefix: &str) {
    let out = Command::new(common::BIN)
        .args(["cache", "publish", &garage.url(prefix), "--s3-endpoint"])
        .arg(garage.endpoint())
        .arg("--cache")
        .arg(cache())
        .envs(garage.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Mounts `url` with the local block cache `local`.
fn remote_mount(garage: Option<&Garage>, url: &str, local: &Path, extra: &[&str]) -> Mount {
    let mut args = vec!["--read-only"];
    args.extend(extra);
    writable_remote_mount(garage, url, local, &args)
}

/// [`remote_mount`] without `--read-only`: the default mount.
fn writable_remote_mount(
    garage: Option<&Garage>,
    url: &str,
    local: &Path,
    extra: &[&str],
) -> Mount {
    let mut args = vec!["--k8s", VERSION, "--local-cache"];
    args.push(local.to_str().unwrap());
    let endpoint = garage.map(Garage::endpoint);
    if let Some(e) = &endpoint {
        args.extend(["--s3-endpoint", e]);
    }
    args.extend(extra);
    let env = garage.map(Garage::env).unwrap_or_default();
    let env: Vec<(&str, &Path)> = env
        .iter()
        .map(|(k, v)| (*k, Path::new(v.as_str())))
        .collect();
    Mount::with_env(Path::new(url), &args, &env)
}

/// `len` bytes at `offset` of a file.
fn pread(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; len];
    let n = file.read_at(&mut buf, offset)?;
    buf.truncate(n);
    Ok(buf)
}

fn status_number(mount: &Path, key: &str) -> u64 {
    status_field(mount, key)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_bucket_mounts_fast_from_an_empty_local_cache_and_shows_the_local_tree() {
    let garage = Garage::start("builds");
    publish(&garage, "cache/v1");
    let local = local_mount();
    let blocks = scratch("blocks");
    let started = Instant::now();
    let remote = remote_mount(Some(&garage), &garage.url("cache/v1"), &blocks, &[]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "mounting took {took:?}");
    assert_same_tree(&remote.dir, &local.dir);
    // The state file is refreshed every second.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(status_number(&remote.dir, "fetched") >= (BIG_MB as u64) << 20);
    assert_eq!(status_field(&remote.dir, "store"), garage.url("cache/v1"));
    assert!(status_number(&remote.dir, "local misses") > 0);
    assert!(status_number(&remote.dir, "local size") >= (BIG_MB as u64) << 20);
    // No credential in the status or the daemon's log.
    let out = run(&["status", remote.dir.to_str().unwrap(), "--json"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&garage.secret));
    drop(remote);

    // The blocks survive the remount: a second tar fetches nothing.
    let again = remote_mount(Some(&garage), &garage.url("cache/v1"), &blocks, &[]);
    assert_same_tree(&again.dir, &local.dir);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        status_number(&again.dir, "fetched"),
        0,
        "all blocks came from the local cache"
    );
    assert!(status_number(&again.dir, "local hits") > 0);
}

#[test]
fn archives_and_big_files_read_at_random_offsets_equal_the_local_ones() {
    let garage = Garage::start("random");
    publish(&garage, "");
    let local = local_mount();
    let remote = remote_mount(Some(&garage), &garage.url(""), &scratch("blocks"), &[]);
    let mut rng = common::Rng(7);
    for rel in [
        "amd64/images/registry.tar",
        "amd64/bin/crictl",
        "arm64/bin/nerdctl",
        "amd64/bin/bigblob",
        "amd64/cri/docker.tar.gz",
    ] {
        let size = std::fs::metadata(local.path(rel)).unwrap().len();
        assert_eq!(
            std::fs::metadata(remote.path(rel)).unwrap().len(),
            size,
            "{rel}"
        );
        for _ in 0..40 {
            let offset = rng.below(size);
            let len = 1 + rng.below(300_000) as usize;
            assert_eq!(
                pread(&remote.path(rel), offset, len).unwrap(),
                pread(&local.path(rel), offset, len).unwrap(),
                "{rel} at {offset}+{len}"
            );
        }
    }
    // Random reads fetched only the blocks they touched, not the whole big file twice over.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(status_number(&remote.dir, "fetched") <= 2 * ((BIG_MB as u64) << 20) + (4 << 20));
}

#[test]
fn a_store_that_goes_down_gives_eio_in_bounded_time_and_cached_blocks_are_still_served() {
    let mut garage = Garage::start("faults");
    publish(&garage, "c");
    let local = local_mount();
    let remote = remote_mount(
        Some(&garage),
        &garage.url("c"),
        &scratch("blocks"),
        &["--remote-timeout", "3s"],
    );
    let big = remote.path("amd64/bin/bigblob");
    let first = pread(&big, 0, 1 << 20).unwrap();
    assert_eq!(
        first,
        pread(&local.path("amd64/bin/bigblob"), 0, 1 << 20).unwrap()
    );

    garage.stop();
    // A cached block: served.
    assert_eq!(pread(&big, 1000, 5000).unwrap(), first[1000..6000].to_vec());
    // A block not cached: EIO after the wait limit, not a hang.
    let started = Instant::now();
    let errno = errno_of(pread(&big, 5 << 20, 4096));
    let took = started.elapsed();
    assert_eq!(errno, libc::EIO);
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "{took:?}"
    );
    // Only that file: the rendered tree and cached bytes stay readable.
    assert!(std::fs::read(remote.path("rootfs/etc/kubeadm.yml")).is_ok());

    // Back up: the same read succeeds.
    garage.run();
    let want = pread(&local.path("amd64/bin/bigblob"), 5 << 20, 4096).unwrap();
    common::wait_for("the store to answer again", || {
        pread(&big, 5 << 20, 4096).ok().as_ref() == Some(&want)
    });
}

/// Overwrites object `rel` of the bucket (below `prefix`) with `bytes`.
fn overwrite(garage: &Garage, prefix: &str, rel: &str, bytes: &[u8]) {
    use rootfs_mount::remote::store::{Credentials, Location, Store};
    let store = Store::with_credentials(
        Location::parse(&garage.url(prefix)).unwrap().unwrap(),
        Some(&garage.endpoint()),
        Duration::from_secs(10),
        Some(Credentials::new(&garage.key_id, &garage.secret)),
        "us-east-1",
    )
    .unwrap();
    store.put_bytes(rel, bytes).unwrap();
}

#[test]
fn a_wrong_digest_or_a_replaced_object_gives_eio_on_that_file_only() {
    let garage = Garage::start("tampered");
    publish(&garage, "p");
    let local = local_mount();
    let kubeadm = "kube/v1.23.4/amd64/kubeadm";
    let original = std::fs::read(cache().join(kubeadm)).unwrap();
    let mut evil = original.clone();
    evil[10] ^= 0x55;
    overwrite(&garage, "p", kubeadm, &evil);

    // Published digest, other bytes (same size): never served.
    let remote = remote_mount(Some(&garage), &garage.url("p"), &scratch("blocks"), &[]);
    let mut file = std::fs::File::open(remote.path("amd64/bin/kubeadm")).unwrap();
    let mut got = Vec::new();
    assert_eq!(errno_of(file.read_to_end(&mut got)), libc::EIO);
    assert!(got.is_empty(), "nothing unverified reaches a reader");
    assert_eq!(
        std::fs::read(remote.path("amd64/bin/kubectl")).unwrap(),
        std::fs::read(local.path("amd64/bin/kubectl")).unwrap()
    );

    // Replaced under a mount, before it was read: refused too.
    let kubelet = "kube/v1.23.4/amd64/kubelet";
    let mut other = std::fs::read(cache().join(kubelet)).unwrap();
    other[0] ^= 1;
    overwrite(&garage, "p", kubelet, &other);
    assert_eq!(
        errno_of(std::fs::read(remote.path("amd64/bin/kubelet"))),
        libc::EIO
    );
    // Put back after the mount: still refused, since the mount holds the listing (ETags)
    // it started with and an object changed since is never served.
    overwrite(&garage, "p", kubeadm, &original);
    assert_eq!(
        errno_of(std::fs::read(remote.path("amd64/bin/kubeadm"))),
        libc::EIO
    );
}

#[test]
fn several_mounts_with_their_own_local_caches_read_one_bucket_at_once() {
    let garage = Garage::start("shared");
    publish(&garage, "x");
    let local = local_mount();
    let want = tar_of(&local.dir);
    let mounts: Vec<Mount> = (0..3)
        .map(|_| remote_mount(Some(&garage), &garage.url("x"), &scratch("blocks"), &[]))
        .collect();
    std::thread::scope(|s| {
        for m in &mounts {
            let want = &want;
            s.spawn(move || assert!(tar_of(&m.dir) == *want, "{}", m.dir.display()));
        }
    });
}

#[test]
fn the_local_cache_stays_within_its_size() {
    let garage = Garage::start("bounded");
    publish(&garage, "");
    let remote = remote_mount(
        Some(&garage),
        &garage.url(""),
        &scratch("blocks"),
        &["--local-cache-size", "2M"],
    );
    let local = local_mount();
    assert_eq!(
        std::fs::read(remote.path("amd64/bin/bigblob")).unwrap(),
        std::fs::read(local.path("amd64/bin/bigblob")).unwrap()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(status_number(&remote.dir, "local size") <= 2 << 20);
}

#[test]
fn a_mirror_published_to_a_folder_and_served_by_nginx_mounts_as_the_local_tree() {
    let mirror = scratch("mirror");
    let out = run(&[
        "cache",
        "publish",
        mirror.to_str().unwrap(),
        "--cache",
        cache().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nginx = Nginx::serve(&mirror);
    let local = local_mount();
    let remote = remote_mount(None, &nginx.url(), &scratch("blocks"), &[]);
    assert_same_tree(&remote.dir, &local.dir);
    // Read by range: nginx answered 206s.
    assert!(nginx.access_log().contains(" 206 "));

    // A mirror without block lists (an older publish): whole-object checks, same tree.
    std::fs::remove_dir_all(mirror.join(".rootfs-mount/blocks")).unwrap();
    let sums = std::fs::read_to_string(mirror.join("SHA256SUMS")).unwrap();
    let kept: String = sums
        .lines()
        .filter(|l| !l.contains(".rootfs-mount/blocks/"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(mirror.join("SHA256SUMS"), kept).unwrap();
    let whole = remote_mount(None, &nginx.url(), &scratch("blocks"), &[]);
    assert_same_tree(&whole.dir, &local.dir);
}

#[test]
fn published_seek_indexes_are_used_and_nothing_secret_is_logged() {
    let garage = Garage::start("indexes");
    publish(&garage, "i");
    let local = local_mount();
    let log = scratch("log").join("daemon.log");
    let blocks = scratch("blocks");
    let remote = remote_mount(
        Some(&garage),
        &garage.url("i"),
        &blocks,
        &["--log-level", "debug", "--log-file", log.to_str().unwrap()],
    );
    for rel in [
        "amd64/images/registry.tar",
        "amd64/bin/crictl",
        "arm64/bin/nerdctl",
    ] {
        assert_eq!(
            std::fs::read(remote.path(rel)).unwrap(),
            std::fs::read(local.path(rel)).unwrap(),
            "{rel}"
        );
    }
    drop(remote);
    let text = std::fs::read_to_string(&log).unwrap();
    let ready: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("archive index ready"))
        .collect();
    assert!(ready.len() >= 3, "{text}");
    assert!(
        ready.iter().all(|l| l.contains("Reused")),
        "built, not published: {ready:?}"
    );
    assert!(std::fs::read_dir(blocks.join("index")).unwrap().count() >= 3);
    assert!(!text.contains(&garage.secret) && !text.contains("X-Amz-Signature"));
}

/// Stretch of issue 11: three Garage nodes with replication factor 3; one (not the one the
/// mount talks to) is killed while `tar` reads the mount: the tar completes, same bytes.
#[test]
fn a_tar_completes_when_a_node_of_a_three_node_cluster_dies() {
    let mut garage = Garage::cluster("replicated", 3);
    publish(&garage, "r");
    let local = local_mount();
    let want = tar_of(&local.dir);
    let remote = remote_mount(Some(&garage), &garage.url("r"), &scratch("blocks"), &[]);
    let got = std::thread::scope(|s| {
        let tar = s.spawn(|| tar_of(&remote.dir));
        std::thread::sleep(Duration::from_millis(150));
        garage.kill_node(2);
        tar.join().unwrap()
    });
    assert!(got == want, "the tar differs");
    // Everything again from the store, with the node still down.
    let again = remote_mount(Some(&garage), &garage.url("r"), &scratch("blocks"), &[]);
    assert!(tar_of(&again.dir) == want);
}

const BIG: &str = "amd64/bin/bigblob";

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One counter of `status --json` of a mount: `counters.by_op.<op>` (0 when absent).
fn requests_of(mount: &Path, op: &str) -> u64 {
    let out = run(&["status", "--json", mount.to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["mounts"][0]["counters"]["by_op"][op]
        .as_u64()
        .unwrap_or(0)
}

/// Waits for the state file's next refresh (every second).
fn state_refreshed() {
    std::thread::sleep(Duration::from_millis(1500));
}

#[test]
fn a_whole_cached_object_is_read_by_the_kernel_on_a_remount_and_a_damaged_one_is_fetched_again() {
    let garage = Garage::start("whole");
    publish(&garage, "w");
    let local = local_mount();
    let want = std::fs::read(local.path(BIG)).unwrap();
    let blocks = scratch("blocks");
    let url = garage.url("w");
    {
        let first = remote_mount(Some(&garage), &url, &blocks, &[]);
        // The first blocks are marked while the mount runs (every half second); the
        // last ones only by the unmount, which follows their writes at once.
        assert_eq!(
            pread(&first.path(BIG), 0, 1 << 20).unwrap(),
            want[..1 << 20]
        );
        std::thread::sleep(Duration::from_secs(1));
        assert!(std::fs::read(first.path(BIG)).unwrap() == want);
    }
    let object = blocks.join("objects").join(sha256_hex(&want));
    assert!(
        blocks
            .join("objects")
            .join(format!("{}.verified", sha256_hex(&want)))
            .exists(),
        "the unmount marked the object's blocks"
    );

    // A remount: the object is whole and verified, the kernel reads the local file.
    let again = remote_mount(Some(&garage), &url, &blocks, &[]);
    assert!(std::fs::read(again.path(BIG)).unwrap() == want);
    state_refreshed();
    assert!(
        requests_of(&again.dir, "open") >= 1,
        "opened through the daemon"
    );
    assert_eq!(
        requests_of(&again.dir, "read"),
        0,
        "no READ reached the daemon"
    );
    assert_eq!(status_number(&again.dir, "fetched"), 0);
    drop(again);

    // Damage one block on disk: the next mount hashes the blocks once, fetches that one
    // block again, and serves the right bytes.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&object)
        .unwrap();
    file.write_all_at(b"damaged", (2 << 20) + 100).unwrap();
    drop(file);
    let third = remote_mount(Some(&garage), &url, &blocks, &[]);
    assert!(std::fs::read(third.path(BIG)).unwrap() == want);
    state_refreshed();
    assert_eq!(
        status_number(&third.dir, "fetched"),
        1 << 20,
        "exactly the damaged block was fetched again"
    );
    drop(third);
    // Marked again: the next remount trusts it without a request.
    let fourth = remote_mount(Some(&garage), &url, &blocks, &[]);
    assert!(std::fs::read(fourth.path(BIG)).unwrap() == want);
    state_refreshed();
    assert_eq!(requests_of(&fourth.dir, "read"), 0);
    drop(fourth);
    // The default (writable) mount hands it to the kernel too.
    let writable = writable_remote_mount(Some(&garage), &url, &blocks, &[]);
    assert!(std::fs::read(writable.path(BIG)).unwrap() == want);
    state_refreshed();
    assert_eq!(requests_of(&writable.dir, "read"), 0);
    assert_eq!(status_number(&writable.dir, "fetched"), 0);
}

/// The blocks a marker of `objects` vouches for: (object file, block number, its bytes
/// hash to the digest in the block list).
fn marked_blocks(local: &Path) -> Vec<(PathBuf, usize, bool)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(local.join("objects")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(sha) = name.strip_suffix(".verified") else {
            continue;
        };
        let marker = std::fs::read_to_string(entry.path()).unwrap();
        let bits = marker.lines().nth(1).unwrap();
        let list = std::fs::read_to_string(local.join("digests").join(sha)).unwrap();
        let digests: Vec<&str> = list.lines().skip(1).collect();
        let data = std::fs::read(local.join("objects").join(sha)).unwrap();
        for (i, want) in digests.iter().enumerate() {
            let byte = u8::from_str_radix(&bits[i / 8 * 2..i / 8 * 2 + 2], 16).unwrap();
            if byte & (1 << (i % 8)) != 0 {
                let end = ((i + 1) << 20).min(data.len());
                let ok = sha256_hex(&data[i << 20..end]) == *want;
                out.push((entry.path(), i, ok));
            }
        }
    }
    out
}

#[test]
fn a_daemon_killed_while_writing_blocks_leaves_none_marked_that_is_not_verified() {
    let garage = Garage::start("killed");
    publish(&garage, "k");
    let local = local_mount();
    let want = std::fs::read(local.path(BIG)).unwrap();
    let blocks = scratch("blocks");
    let url = garage.url("k");
    let m = remote_mount(Some(&garage), &url, &blocks, &[]);
    let pid = common::daemon_pid(&m.dir);
    // Some blocks written and marked (the marker thread runs every half second), then
    // a kill in the middle of reading (and writing) the rest.
    assert_eq!(pread(&m.path(BIG), 0, 2 << 20).unwrap(), want[..2 << 20]);
    common::wait_for("a marker", || {
        std::fs::read_dir(blocks.join("objects"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".verified"))
    });
    let reader = {
        let big = m.path(BIG);
        std::thread::spawn(move || std::fs::read(big))
    };
    std::thread::sleep(Duration::from_millis(30));
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = reader.join();
    common::wait_for("the daemon to die", || !common::is_running(pid));
    drop(m);

    let marked = marked_blocks(&blocks);
    assert!(marked.len() >= 2, "blocks were marked: {marked:?}");
    let bad: Vec<_> = marked.iter().filter(|(_, _, ok)| !ok).collect();
    assert!(bad.is_empty(), "marked but not verified: {bad:?}");
    // A new mount over the same local cache serves the right bytes.
    let again = remote_mount(Some(&garage), &url, &blocks, &[]);
    assert!(std::fs::read(again.path(BIG)).unwrap() == want);
}
