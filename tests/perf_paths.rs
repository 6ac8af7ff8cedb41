//! Real mounts of the read paths and kernel caching of issue 4 (docs/DESIGN.md §7): every read path
//! gives the backing bytes (passthrough and the daemon's, on read-only mounts; the daemon's
//! with open handles, on writable ones), backings survive many concurrent opens, the
//! provenance xattr still answers, big folders list every name once with stable inode
//! numbers, edits of an on-disk contexts tree and changes through the mount reach the
//! kernel's cached listings and pages, and a truncated backing file is EIO.
//!
//! Needs /dev/fuse (and root for passthrough); without it every test says so and passes.
//! No timings are asserted here: speed is measured by scripts/bench.sh.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{is_mounted, Mount, BIN};

const VERSION: &str = "v1.23.4";
/// Files in the big registry folder.
const MANY: usize = 10_000;
/// A plain file larger than any FUSE request, with a ragged tail.
const BIG_LEN: usize = 6 * 1024 * 1024 + 12_345;

/// The read paths, as mount arguments: passthrough, the daemon without open round
/// trips (both read-only), and the daemon with open handles (a writable mount).
const READ_PATHS: [(&str, &[&str]); 3] = [
    ("passthrough", &["--read-only"]),
    ("no-open", &["--read-only", "--no-passthrough"]),
    ("writable", &[]),
];

struct Fixture {
    root: PathBuf,
    cache: PathBuf,
    registry: PathBuf,
}

/// Deterministic bytes that no two offsets share a pattern of (xorshift).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The demo cache plus a big plain file, and a registry folder of `MANY` files; made
/// once and reused by later runs (under the target dir).
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("perf_paths");
        let cache = root.join("cache");
        let script = common::repo().join("scripts/demo-cache.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(&cache)
            .arg(VERSION)
            .output()
            .expect("running demo-cache.sh");
        assert!(
            out.status.success(),
            "demo-cache.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let big = cache.join("oss/amd64/bin/big-tool");
        let bytes = pseudo_random(BIG_LEN, 7);
        if std::fs::read(&big).ok().as_deref() != Some(&bytes[..]) {
            std::fs::write(&big, &bytes).unwrap();
        }
        let registry = root.join("registry");
        let many = registry.join("many");
        let done = registry.join("many.done");
        if !done.exists() {
            let _ = std::fs::remove_dir_all(&many);
            std::fs::create_dir_all(&many).unwrap();
            for i in 0..MANY {
                std::fs::write(many.join(format!("blob-{i:05}")), format!("blob {i}\n")).unwrap();
            }
            std::fs::write(&done, b"").unwrap();
        }
        Fixture {
            root,
            cache,
            registry,
        }
    })
}

/// Whether this host can mount at all; tests pass with a note when it cannot.
fn can_mount() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    if !ok {
        eprintln!("skipped: /dev/fuse is not available");
    }
    ok
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A mount of the fixture (its own mountpoint, unmounted by the shared guard even when
/// the test panics), with the daemon's log.
struct Mounted {
    mount: Mount,
    log: PathBuf,
}

impl Mounted {
    fn new(name: &str, extra: &[&str]) -> Mounted {
        let fx = fixture();
        let log = fx.root.join(format!("{name}.{}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let (registry, log_arg) = (fx.registry.to_str().unwrap(), log.to_str().unwrap());
        let mut args = vec!["--k8s", VERSION, "--arch", "amd64"];
        args.extend(["--registry-data", registry, "--log-file", log_arg]);
        args.extend(extra);
        Mounted {
            mount: Mount::with_cache(&fx.cache, &args),
            log,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mount.path(rel)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the daemon reads plain files through kernel passthrough; says so when a
    /// read-only mount could not have it (not root, old kernel).
    fn passes_through(&self) -> bool {
        let log = self.log();
        let yes = log.contains("read path: kernel passthrough");
        if !yes && !log.contains("writable") && !log.contains("--no-passthrough") {
            eprintln!("note: passthrough not available here: {log}");
        }
        yes
    }
}

impl Drop for Mounted {
    /// The log stays behind only when the test failed.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Mount paths of plain backing files, with the backing path of each.
fn backed_files(fx: &Fixture) -> Vec<(&'static str, PathBuf)> {
    vec![
        (
            "amd64/bin/big-tool",
            fx.cache.join("oss/amd64/bin/big-tool"),
        ),
        (
            "amd64/bin/kubeadm",
            fx.cache.join(format!("kube/{VERSION}/amd64/kubeadm")),
        ),
        (
            "amd64/bin/conntrack",
            fx.cache.join("oss/amd64/bin/conntrack"),
        ),
        (
            "amd64/cri/docker.tar.gz",
            fx.cache.join("cri/docker/amd64/docker.tar.gz"),
        ),
        (
            "rootfs/registry/many/blob-04242",
            fx.registry.join("many/blob-04242"),
        ),
    ]
}

/// Reads `path` whole, then again in ragged chunks at scattered offsets.
fn read_both_ways(path: &Path) -> (Vec<u8>, Vec<u8>) {
    let whole = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let file = File::open(path).unwrap();
    let mut pieces = vec![0u8; whole.len()];
    let chunk = 200_003;
    let mut starts: Vec<usize> = (0..whole.len()).step_by(chunk).collect();
    starts.reverse();
    for start in starts {
        let end = (start + chunk).min(whole.len());
        file.read_exact_at(&mut pieces[start..end], start as u64)
            .unwrap();
    }
    (whole, pieces)
}

#[test]
fn every_read_path_gives_the_backing_bytes() {
    if !can_mount() {
        return;
    }
    let fx = fixture();
    let mounts: Vec<(&str, Mounted)> = READ_PATHS
        .iter()
        .map(|(name, args)| (*name, Mounted::new(&format!("read-{name}"), args)))
        .collect();
    for (rel, backing) in backed_files(fx) {
        let expected = std::fs::read(&backing).unwrap();
        for (name, mount) in &mounts {
            let (whole, pieces) = read_both_ways(&mount.path(rel));
            assert!(
                whole == expected,
                "{name}: {rel} differs from {}",
                backing.display()
            );
            assert!(pieces == expected, "{name}: {rel} read in pieces differs");
        }
    }
    // Rendered files take the daemon path everywhere.
    for rel in ["rootfs/Kubefile", "rootfs/etc/kubeadm.yml"] {
        let first = std::fs::read(mounts[0].1.path(rel)).unwrap();
        assert!(!first.is_empty());
        for (name, mount) in &mounts[1..] {
            assert!(
                std::fs::read(mount.path(rel)).unwrap() == first,
                "{name}: {rel}"
            );
        }
    }
    // A file executed from the mount (the kernel reads it like mmap would).
    for (name, mount) in &mounts {
        let out = run(&mut Command::new(mount.path("amd64/bin/kubeadm")));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("stand-in: kubeadm v1.23.4 linux/amd64"),
            "{name}: {said}"
        );
    }
    let [(_, passthrough), (_, no_open), (_, writable)] = &mounts[..] else {
        unreachable!()
    };
    if passthrough.passes_through() {
        assert!(
            !passthrough.log().contains("passthrough is off"),
            "{}",
            passthrough.log()
        );
    }
    assert!(
        no_open.log().contains("no open round trips"),
        "{}",
        no_open.log()
    );
    // A writable mount negotiates passthrough too (for files whose bytes are in its
    // upper layer, and layer files of at least --passthrough-min).
    assert_eq!(
        writable.passes_through(),
        passthrough.passes_through(),
        "{}",
        writable.log()
    );
}

#[test]
fn many_concurrent_opens_of_one_file_share_its_backing_until_the_last_close() {
    if !can_mount() {
        return;
    }
    let fx = fixture();
    let mount = Mounted::new("opens", &["--read-only"]);
    let path = mount.path("amd64/bin/big-tool");
    let expected = std::fs::read(fx.cache.join("oss/amd64/bin/big-tool")).unwrap();
    for round in 0..3 {
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..8)
                .map(|t| {
                    let path = &path;
                    let expected = &expected;
                    s.spawn(move || {
                        let mut held: Vec<File> =
                            (0..40).map(|_| File::open(path).unwrap()).collect();
                        // Read through a few of them while all are open.
                        for (i, file) in held.iter_mut().enumerate().filter(|(i, _)| i % 13 == t) {
                            let mut buf = [0u8; 4096];
                            let at = ((i * 7919 + t * 104_729) % (expected.len() - 4096)) as u64;
                            file.read_exact_at(&mut buf, at).unwrap();
                            assert_eq!(&buf[..], &expected[at as usize..at as usize + 4096]);
                        }
                        // Close half, open more, close all, in an order unlike the opens.
                        held.truncate(20);
                        held.extend((0..20).map(|_| File::open(path).unwrap()));
                        held.reverse();
                        drop(held);
                    })
                })
                .collect();
            for w in workers {
                w.join().unwrap();
            }
        });
        // Every open is closed: the next one registers (or shares) a backing anew.
        let mut again = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut again).unwrap();
        assert!(
            again == expected,
            "round {round}: bytes differ after the opens closed"
        );
    }
    assert!(
        !mount.log().contains("passthrough is off"),
        "{}",
        mount.log()
    );
    mount.passes_through();
}

fn getfattr(path: &Path, name: &str) -> Output {
    Command::new("getfattr")
        .args(["--only-values", "--absolute-names", "-n", name])
        .arg(path)
        .output()
        .expect("running getfattr (package attr)")
}

#[test]
fn the_source_xattr_still_answers_and_upper_xattrs_still_work() {
    if !can_mount() {
        return;
    }
    let fx = fixture();
    for (name, args) in READ_PATHS {
        let mount = Mounted::new(&format!("xattr-{name}"), args);
        let kubeadm = mount.path("amd64/bin/kubeadm");
        // `ls -l` first, so that ACL answers are in the kernel's cache.
        run(Command::new("ls").arg("-l").arg(mount.path("amd64/bin")));
        run(Command::new("ls").arg("-lR").arg(mount.path("rootfs/etc")));
        for _ in 0..2 {
            let out = getfattr(&kubeadm, "user.rootfs.source");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let backing = fx.cache.join(format!("kube/{VERSION}/amd64/kubeadm"));
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                backing.display().to_string()
            );
            let out = getfattr(&mount.path("rootfs/Kubefile"), "user.rootfs.source");
            assert!(String::from_utf8_lossy(&out.stdout).starts_with("rendered:"));
        }
        // No ACL and no security label; nothing is listed.
        let acl = getfattr(&kubeadm, "system.posix_acl_access");
        assert!(String::from_utf8_lossy(&acl.stderr).contains("No such attribute"));
        assert!(!getfattr(&kubeadm, "security.selinux").status.success());
        let other = getfattr(&kubeadm, "user.other");
        assert!(String::from_utf8_lossy(&other.stderr).contains("No such attribute"));
        let dump = run(Command::new("getfattr")
            .args(["-d", "-m", "-"])
            .arg(&kubeadm));
        assert!(
            dump.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&dump.stdout)
        );
        if name == "writable" {
            // Attributes set through the mount land in the upper layer and read back.
            let conf = mount.path("rootfs/etc/kubelet.service");
            run(Command::new("setfattr")
                .args(["-n", "user.note", "-v", "kept"])
                .arg(&conf));
            assert_eq!(getfattr(&conf, "user.note").stdout, b"kept");
            let dump = run(Command::new("getfattr").args(["-d", "-m", "-"]).arg(&conf));
            assert!(String::from_utf8_lossy(&dump.stdout).contains("user.note"));
        }
    }
}

/// `ls -i` pairs of a folder: name -> inode number.
fn ls_inodes(dir: &Path) -> BTreeMap<String, u64> {
    let out = run(Command::new("ls").arg("-1iU").arg(dir));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut seen = BTreeMap::new();
    for line in text.lines() {
        let (ino, name) = line.trim_start().split_once(' ').unwrap();
        let previous = seen.insert(name.to_string(), ino.parse().unwrap());
        assert!(previous.is_none(), "{name} listed twice");
    }
    seen
}

/// Lists `dir` with `ls -i`, `stat` and readdir, and checks every name of `wanted` is
/// there once, with the inode number `stat` reports.
fn check_listing(dir: &Path, wanted: &BTreeSet<String>, pass: &str) {
    let listed = ls_inodes(dir);
    assert_eq!(
        &listed.keys().cloned().collect::<BTreeSet<_>>(),
        wanted,
        "{pass}"
    );
    let stat = run(Command::new("find").arg(dir).args([
        "-mindepth",
        "1",
        "-exec",
        "stat",
        "-c",
        "%i %n",
        "{}",
        "+",
    ]));
    let text = String::from_utf8(stat.stdout).unwrap();
    assert_eq!(text.lines().count(), wanted.len(), "{pass}");
    for line in text.lines() {
        let (ino, path) = line.split_once(' ').unwrap();
        let name = Path::new(path).file_name().unwrap().to_string_lossy();
        let ino: u64 = ino.parse().unwrap();
        assert_eq!(listed[&*name], ino, "{pass}: {name}: ls -i vs stat");
    }
    // readdir's d_ino against lstat, without tools in between.
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let ino = entry.path().symlink_metadata().unwrap().ino();
        assert_eq!(entry.ino(), ino, "{pass}");
        count += 1;
    }
    assert_eq!(count, wanted.len(), "{pass}");
}

#[test]
fn a_10k_folder_lists_every_name_once_with_the_inode_stat_reports() {
    if !can_mount() {
        return;
    }
    let mount = Mounted::new("many", &[]);
    let dir = mount.path("rootfs/registry/many");
    let mut wanted: BTreeSet<String> = (0..MANY).map(|i| format!("blob-{i:05}")).collect();
    // Twice: filled from the daemon, then from the kernel's cached listing.
    check_listing(&dir, &wanted, "first listing");
    check_listing(&dir, &wanted, "cached listing");
    // Changes through the mount reach the cached listing.
    std::fs::write(dir.join("added-through-the-mount"), b"new\n").unwrap();
    wanted.insert("added-through-the-mount".into());
    check_listing(&dir, &wanted, "after a create");
    std::fs::remove_file(dir.join("blob-00007")).unwrap();
    wanted.remove("blob-00007");
    check_listing(&dir, &wanted, "after an unlink");
    let found = run(Command::new("find").arg(mount.path("rootfs/registry")));
    assert!(String::from_utf8_lossy(&found.stdout).lines().count() > MANY);
}

/// A 10k-entry folder listed whole and then stat'ed entry by entry (what `find` and `tar`
/// do with a folder's subfolders) on a fresh mount: every entry's attributes came with the
/// listing, READDIRPLUS for every batch, not only the first (the kernel's
/// READDIRPLUS_AUTO lists later batches by name only when nothing of the first was used
/// yet, and each of those entries then costs a LOOKUP round trip).
#[test]
fn a_folder_listed_whole_then_stat_ed_on_a_fresh_mount_looks_up_no_entry() {
    if !can_mount() {
        return;
    }
    let mount = Mounted::new("many-lookups", &[]);
    let dir = mount.path("rootfs/registry/many");
    let names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names.len(), MANY);
    for name in &names {
        assert!(name.symlink_metadata().unwrap().is_file(), "{name:?}");
    }
    let by_op = common::requests_by_op(&mount.mount);
    let count = |op: &str| by_op.get(op).copied().unwrap_or(0);
    assert!(count("readdirplus") >= 2, "{by_op:?}");
    // The path's own folders, at most.
    assert!(count("lookup") < 10, "{by_op:?}");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Waits (up to a generous deadline, not a timing assertion) for `check` to hold.
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn edits_of_an_on_disk_contexts_tree_reach_cached_listings_and_pages() {
    if !can_mount() {
        return;
    }
    let fx = fixture();
    for (name, extra) in READ_PATHS {
        let contexts = fx
            .root
            .join(format!("contexts-{name}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&contexts);
        copy_tree(&common::repo().join("contexts"), &contexts);
        let mut args = vec!["--contexts", contexts.to_str().unwrap()];
        args.extend(extra);
        let mount = Mounted::new(&format!("contexts-{name}"), &args);
        let etc = mount.path("rootfs/etc");
        // Listed twice, so the kernel has the listing cached.
        assert_eq!(names(&etc), names(&etc));
        assert!(!names(&etc).contains("added.conf"));
        // Added in a lower layer (the base rootfs context), then removed.
        let added = contexts.join("rootfs/etc/added.conf");
        std::fs::write(&added, b"added while mounted\n").unwrap();
        eventually("added.conf listed", || names(&etc).contains("added.conf"));
        assert_eq!(
            std::fs::read(etc.join("added.conf")).unwrap(),
            b"added while mounted\n"
        );
        // Edited in place: new bytes, not stale pages.
        std::fs::write(&added, b"edited\n").unwrap();
        eventually("added.conf edited", || {
            std::fs::read(etc.join("added.conf")).ok().as_deref() == Some(b"edited\n")
        });
        // A template edited: its rendering follows.
        let template = contexts.join("cri/docker/etc/daemon.json.in");
        let rendered = etc.join("daemon.json");
        let before = std::fs::read(&rendered).unwrap();
        let mut source = std::fs::read(&template).unwrap();
        source.extend_from_slice(b"\n");
        std::fs::write(&template, &source).unwrap();
        eventually("daemon.json rendered again", || {
            std::fs::read(&rendered).is_ok_and(|now| now.len() == before.len() + 1)
        });
        std::fs::remove_file(&added).unwrap();
        eventually("added.conf gone", || !names(&etc).contains("added.conf"));
        drop(mount);
        let _ = std::fs::remove_dir_all(&contexts);
    }
}

/// The benchmark (and anyone scripting) unmounts and mounts again at once: the old
/// daemon, on its way out, must not take the new mount down with it.
#[test]
fn a_mount_made_right_after_an_unmount_stays_mounted() {
    if !can_mount() {
        return;
    }
    let fx = fixture();
    let mount = Mounted::new("remount", &["--read-only"]);
    let point = mount.path("");
    let point = point.to_str().unwrap().trim_end_matches('/');
    for _ in 0..10 {
        run(Command::new("umount").arg(point));
        run(Command::new(BIN)
            .arg(point)
            .args(["--k8s", VERSION, "--arch", "amd64", "--read-only"])
            .arg("--cache")
            .arg(&fx.cache)
            .arg("--registry-data")
            .arg(&fx.registry));
    }
    // The old daemons have had ample time to finish leaving.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        is_mounted(Path::new(point)),
        "the newest mount was taken down"
    );
    assert!(mount.path("amd64/bin/kubeadm").exists());
}

/// docs/DESIGN.md §6: a backing file truncated under the mount fails that file with EIO on every
/// read path, instead of a short read that `tar` would pad with zeros.
#[test]
fn a_backing_file_truncated_under_the_mount_gives_eio() {
    if !can_mount() {
        return;
    }
    let fx = fixture();
    for (name, args) in READ_PATHS {
        let file = format!("shrink-{name}.{}.bin", std::process::id());
        let backing = fx.registry.join(&file);
        std::fs::write(&backing, pseudo_random(1 << 20, 3)).unwrap();
        let mount = Mounted::new(&format!("shrink-{name}"), args);
        let path = mount.path(&format!("rootfs/registry/{file}"));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        File::create(&backing).unwrap().set_len(100).unwrap();
        let err = std::fs::read(&path).expect_err("a truncated backing file must not read");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{name}: {err}");
        // Everything else still answers.
        assert!(mount.path("amd64/bin/kubeadm").exists());
        drop(mount);
        let _ = std::fs::remove_file(&backing);
    }
}
