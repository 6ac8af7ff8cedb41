//! Archives served in place (docs/DESIGN.md §4, issue 3), through real mounts: tarball members in
//! `<arch>/bin/` and `<arch>/images/registry.tar` compared byte for byte with `tar -xzOf`
//! and `gunzip -c`, random-offset reads, corrupt and malicious archives, and the
//! persisted seek indexes.

mod common;

use common::Rng;

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::{demo_cache, scratch, sh, Mount};

/// Mount options for a cache that holds only archives (no kube binaries).
const SPARSE: &[&str] = &["--k8s", "v1.23.4", "--arch", "amd64", "--allow-missing"];

fn q(p: &Path) -> String {
    format!("'{}'", p.display())
}

fn errno_of(result: std::io::Result<Vec<u8>>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

#[test]
fn demo_cache_members_and_registry_tar_equal_the_archives() {
    let cache = demo_cache();
    let m = Mount::new(&["--k8s", "v1.23.4"]);
    for arch in ["amd64", "arm64"] {
        let oss = cache.join(format!("oss/{arch}/bin"));
        let members = [
            ("crictl.tar.gz", "crictl"),
            ("nerdctl.tar.gz", "nerdctl"),
            ("nerdctl.tar.gz", "containerd-rootless.sh"),
            ("nerdctl.tar.gz", "containerd-rootless-setuptool.sh"),
        ];
        for (archive, member) in members {
            let shown = m.path(&format!("{arch}/bin/{member}"));
            let expected = sh(&format!("tar -xzOf {} {member}", q(&oss.join(archive))));
            let got = std::fs::read(&shown).unwrap();
            assert_eq!(got, expected.as_bytes(), "{arch}/bin/{member}");
            let meta = std::fs::metadata(&shown).unwrap();
            assert_eq!(meta.mode() & 0o7777, 0o755, "{arch}/bin/{member}");
            assert_eq!(meta.mtime(), 1_700_000_000);
            let source = sh(&format!(
                "getfattr --only-values -n user.rootfs.source {}",
                q(&shown)
            ));
            assert_eq!(source, format!("{}:{member}", oss.join(archive).display()));
        }
        // The tarballs themselves are not shown; seautil is a plain file and stays one.
        let names = sh(&format!("ls {}", q(&m.path(&format!("{arch}/bin")))));
        assert!(!names.contains(".tar.gz"), "{names}");
        assert!(names.lines().any(|l| l == "seautil"));

        let gz = cache.join(format!("cri/docker/{arch}/registry.tar.gz"));
        let tar = m.path(&format!("{arch}/images/registry.tar"));
        sh(&format!("gunzip -c {} | cmp - {}", q(&gz), q(&tar)));
        assert!(sh(&format!("tar -tf {}", q(&tar)))
            .lines()
            .any(|l| l == "manifest.json"));
        let source = sh(&format!(
            "getfattr --only-values -n user.rootfs.source {}",
            q(&tar)
        ));
        assert_eq!(source, gz.display().to_string());
    }
    // A member runs (amd64 stand-ins are shell scripts).
    let out = sh(&q(&m.path("amd64/bin/crictl")));
    assert!(out.contains("crictl"), "{out}");
    // Packing the folder reads every member by its stat size.
    sh(&format!("tar -cf - -C {} amd64 arm64 | wc -c", q(&m.dir)));
}

/// A cache holding `oss/amd64/bin/big.tar.gz` (one ~28 MB member, written as many
/// gzip members, bgzip-style) and a registry.tar.gz of the same tar.
fn big_archive_cache() -> (PathBuf, PathBuf) {
    let cache = scratch("big-cache");
    let work = scratch("big-work");
    sh(&format!(
        "set -e; cd {w}; mkdir -p pkg; \
         {{ seq 1 1500000; head -c 8000000 /dev/urandom; seq 7 3 3000000; }} > pkg/big.bin; \
         printf 'small file\\n' > pkg/small; chmod 0750 pkg/big.bin; \
         tar -cf big.tar pkg; \
         split -b 1000000 -d -a 4 big.tar part.; \
         for p in part.*; do gzip -c \"$p\"; done > big.tar.gz; \
         mkdir -p {c}/oss/amd64/bin {c}/cri/docker/amd64; \
         cp big.tar.gz {c}/oss/amd64/bin/big.tar.gz; \
         gzip -c big.tar > {c}/cri/docker/amd64/registry.tar.gz",
        w = q(&work),
        c = q(&cache)
    ));
    (cache, work)
}

#[test]
fn members_and_registry_tar_read_right_at_random_offsets() {
    let (cache, work) = big_archive_cache();
    let m = Mount::with_cache(&cache, SPARSE);
    let reference = std::fs::read(work.join("pkg/big.bin")).unwrap();
    let member = m.path("amd64/bin/big.bin");
    let meta = std::fs::metadata(&member).unwrap();
    assert_eq!(meta.len(), reference.len() as u64);
    assert_eq!(meta.mode() & 0o7777, 0o750);

    let file = File::open(&member).unwrap();
    let mut rng = Rng(0x5eed);
    for _ in 0..300 {
        let pos = rng.below(reference.len() as u64 + 100);
        let len = 1 + rng.below(300_000) as usize;
        let mut buf = vec![0u8; len];
        let n = file.read_at(&mut buf, pos).unwrap();
        let start = (pos as usize).min(reference.len());
        let end = (start + len).min(reference.len());
        assert_eq!(n, end - start, "read at {pos}+{len}");
        assert!(
            buf[..n] == reference[start..end],
            "bytes differ at {pos}+{len}"
        );
    }
    // Whole member, as the shell tools see it.
    sh(&format!(
        "tar -xzOf {} pkg/big.bin | cmp - {}",
        q(&cache.join("oss/amd64/bin/big.tar.gz")),
        q(&member)
    ));
    assert_eq!(
        std::fs::read(m.path("amd64/bin/small")).unwrap(),
        b"small file\n"
    );

    // registry.tar (a single-member gzip of the same tar): random reads and gunzip -c.
    let tar_ref = std::fs::read(work.join("big.tar")).unwrap();
    let tar = File::open(m.path("amd64/images/registry.tar")).unwrap();
    for _ in 0..200 {
        let pos = rng.below(tar_ref.len() as u64);
        let mut buf = vec![0u8; 1 + rng.below(200_000) as usize];
        let n = tar.read_at(&mut buf, pos).unwrap();
        assert!(buf[..n] == tar_ref[pos as usize..pos as usize + n]);
    }
    sh(&format!(
        "gunzip -c {} | cmp - {}",
        q(&cache.join("cri/docker/amd64/registry.tar.gz")),
        q(&m.path("amd64/images/registry.tar"))
    ));
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn symlink_and_hard_link_members_come_through() {
    let cache = scratch("links-cache");
    let work = scratch("links-work");
    sh(&format!(
        "set -e; cd {w}; mkdir -p rel/bin; printf 'tool v1\\n' > rel/bin/tool-1.0; \
         chmod 0755 rel/bin/tool-1.0; ln -s tool-1.0 rel/bin/tool; ln rel/bin/tool-1.0 rel/bin/hard; \
         ln -s /usr/bin/env rel/bin/outside; \
         mkdir -p {c}/oss/amd64/bin; tar -czf {c}/oss/amd64/bin/rel.tar.gz rel",
        w = q(&work),
        c = q(&cache)
    ));
    let m = Mount::with_cache(&cache, SPARSE);
    let link = std::fs::read_link(m.path("amd64/bin/tool")).unwrap();
    assert_eq!(link, Path::new("tool-1.0"));
    assert_eq!(
        std::fs::read(m.path("amd64/bin/tool")).unwrap(),
        b"tool v1\n"
    );
    assert_eq!(
        std::fs::read(m.path("amd64/bin/hard")).unwrap(),
        b"tool v1\n"
    );
    assert!(m.path("amd64/bin/outside").symlink_metadata().is_err());
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn a_corrupt_archive_gives_eio_for_its_files_only() {
    let cache = scratch("corrupt-cache");
    let work = scratch("corrupt-work");
    let bin = cache.join("oss/amd64/bin");
    sh(&format!(
        "set -e; cd {w}; mkdir -p good bad; printf 'good\\n' > good/good; \
         head -c 3000000 /dev/urandom > bad/first; printf 'second\\n' > bad/second; \
         mkdir -p {b} {c}/cri/docker/amd64; tar -czf {b}/good.tar.gz good; \
         tar -czf bad.tar.gz bad; \
         size=$(stat -c %s bad.tar.gz); \
         head -c $((size / 2)) bad.tar.gz > {b}/bad.tar.gz; \
         printf '\\037\\213\\010\\000 this is not deflate data at all' > {c}/cri/docker/amd64/registry.tar.gz; \
         printf 'plain\\n' > {b}/plain",
        w = q(&work),
        b = q(&bin),
        c = q(&cache)
    ));
    // A malicious one too: absolute and `..` member names are refused, the rest shown.
    sh(&format!(
        "set -e; cd {w}/good; printf 'evil\\n' > ../evil; \
         tar -czPf {b}/evil.tar.gz ../evil {abs} good",
        w = q(&work),
        b = q(&bin),
        abs = q(&work.join("evil"))
    ));
    let m = Mount::with_cache(&cache, SPARSE);
    let bin_dir = m.path("amd64/bin");
    // The folder lists; the truncated archive's first member was listed before the fault.
    let names = sh(&format!("ls {}", q(&bin_dir)));
    for name in ["good", "plain", "first"] {
        assert!(names.lines().any(|l| l == name), "{name} in {names}");
    }
    assert!(!names.lines().any(|l| l == "evil"), "{names}");
    assert_eq!(
        errno_of(std::fs::read(bin_dir.join("first"))),
        Some(libc::EIO)
    );
    assert_eq!(
        errno_of(std::fs::read(m.path("amd64/images/registry.tar"))),
        Some(libc::EIO)
    );
    // The daemon keeps serving everything else, again and again.
    for _ in 0..3 {
        assert_eq!(std::fs::read(bin_dir.join("good")).unwrap(), b"good\n");
        assert_eq!(std::fs::read(bin_dir.join("plain")).unwrap(), b"plain\n");
        assert_eq!(
            errno_of(std::fs::read(bin_dir.join("first"))),
            Some(libc::EIO)
        );
    }
    assert!(std::fs::read_to_string(m.path("rootfs/etc/kubeadm.yml")).is_ok());
    // No index is kept for a corrupt archive.
    let kept: Vec<_> = std::fs::read_dir(cache.join("index"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !kept.iter().any(|n| n.starts_with("bad.tar.gz")),
        "{kept:?}"
    );
    assert!(!kept.iter().any(|n| n.starts_with("registry")), "{kept:?}");
    let _ = std::fs::remove_dir_all(&work);
}

fn index_files(dir: &Path) -> Vec<(String, u64, i64)> {
    let mut out: Vec<_> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| {
                let e = e.unwrap();
                let meta = e.metadata().unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    meta.ino(),
                    meta.mtime_nsec(),
                )
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

#[test]
fn indexes_are_built_lazily_persisted_and_reused() {
    let cache = scratch("persist-cache");
    let work = scratch("persist-work");
    let build = |text: &str| {
        sh(&format!(
            "set -e; cd {w}; rm -rf t; mkdir t; printf '{text}' > t/tool; seq 1 300000 > t/numbers; \
             mkdir -p {c}/oss/amd64/bin {c}/cri/docker/amd64; \
             tar -czf {c}/oss/amd64/bin/tool.tar.gz.tmp t && mv {c}/oss/amd64/bin/tool.tar.gz.tmp {c}/oss/amd64/bin/tool.tar.gz; \
             tar -cf - t | gzip > {c}/cri/docker/amd64/registry.tar.gz",
            w = q(&work),
            c = q(&cache)
        ))
    };
    build("version one\\n");
    let index_dir = cache.join("index");
    {
        let m = Mount::with_cache(&cache, SPARSE);
        // Nothing is indexed at mount time.
        assert!(index_files(&index_dir).is_empty());
        assert_eq!(m.read("amd64/bin/tool"), "version one\n");
        assert_eq!(index_files(&index_dir).len(), 1);
        // A stat of registry.tar indexes it.
        let size = std::fs::metadata(m.path("amd64/images/registry.tar"))
            .unwrap()
            .len();
        assert!(size > 1_000_000);
        assert_eq!(index_files(&index_dir).len(), 2);
    }
    let first = index_files(&index_dir);
    {
        let m = Mount::with_cache(&cache, SPARSE);
        assert_eq!(m.read("amd64/bin/tool"), "version one\n");
        std::fs::metadata(m.path("amd64/images/registry.tar")).unwrap();
        // Reused: the same files, not rewritten.
        assert_eq!(index_files(&index_dir), first);
    }
    // A changed archive gets a new index (written to a new file and renamed over).
    build("version two!\\n");
    {
        let m = Mount::with_cache(&cache, SPARSE);
        assert_eq!(m.read("amd64/bin/tool"), "version two!\n");
        let now = index_files(&index_dir);
        assert_eq!(now.len(), 2);
        assert_ne!(now, first);
    }
    // --index-dir moves them.
    let elsewhere = scratch("persist-index");
    {
        let dir = elsewhere.to_string_lossy().into_owned();
        let args: Vec<&str> = SPARSE
            .iter()
            .copied()
            .chain(["--index-dir", &dir])
            .collect();
        let m = Mount::with_cache(&cache, &args);
        assert_eq!(m.read("amd64/bin/tool"), "version two!\n");
        assert_eq!(index_files(&elsewhere).len(), 1);
    }
    // An index folder that cannot be written: indexes are kept in memory, reads work.
    {
        let blocked = cache.join("oss/amd64/bin/tool.tar.gz/index");
        let log = work.join("daemon.log");
        let (blocked, log_s) = (
            blocked.to_string_lossy().into_owned(),
            log.to_string_lossy().into_owned(),
        );
        let args: Vec<&str> = SPARSE
            .iter()
            .copied()
            .chain(["--index-dir", &blocked, "--log-file", &log_s])
            .collect();
        let m = Mount::with_cache(&cache, &args);
        assert_eq!(m.read("amd64/bin/tool"), "version two!\n");
        assert!(m.read("amd64/bin/numbers").ends_with("300000\n"));
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.matches("keeping them in memory").count(), 1, "{text}");
    }
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&elsewhere);
}

#[test]
fn writing_a_member_copies_it_up_from_the_archive() {
    let cache = scratch("write-cache");
    let work = scratch("write-work");
    sh(&format!(
        "set -e; cd {w}; mkdir -p rel; seq 1 200000 > rel/tool; chmod 0755 rel/tool; \
         mkdir -p {c}/oss/amd64/bin; tar -czf {c}/oss/amd64/bin/rel.tar.gz rel",
        w = q(&work),
        c = q(&cache)
    ));
    let before = std::fs::read(cache.join("oss/amd64/bin/rel.tar.gz")).unwrap();
    let m = Mount::with_cache(&cache, SPARSE);
    let tool = m.path("amd64/bin/tool");
    let original = std::fs::read(work.join("rel/tool")).unwrap();
    // chmod copies up the metadata only; an append copies the bytes from the archive.
    sh(&format!("chmod 0700 {}", q(&tool)));
    assert_eq!(std::fs::metadata(&tool).unwrap().mode() & 0o7777, 0o700);
    assert!(std::fs::read(&tool).unwrap() == original);
    sh(&format!("printf 'appended\\n' >> {}", q(&tool)));
    let now = std::fs::read(&tool).unwrap();
    assert!(now.starts_with(&original) && now.ends_with(b"appended\n"));
    assert_eq!(now.len(), original.len() + 9);
    drop(m);
    assert!(std::fs::read(cache.join("oss/amd64/bin/rel.tar.gz")).unwrap() == before);
    let _ = std::fs::remove_dir_all(&work);
}

/// A member whose basename is over 255 bytes cannot be shown (no file system name can be
/// that long): it is left out, and the log says so, naming the tarball.
#[test]
fn members_with_overlong_basenames_are_left_out_with_a_log_line() {
    let cache = scratch("long-names");
    let log = scratch("long-names-log").join("daemon.log");
    let script = r#"
import io, sys, tarfile
with tarfile.open(sys.argv[1], 'w:gz') as t:
    for name in ('pkg/' + 'x' * 300, 'pkg/short'):
        data = b'member\n'
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
"#;
    std::fs::create_dir_all(cache.join("oss/amd64/bin")).unwrap();
    let made = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(cache.join("oss/amd64/bin/long.tar.gz"))
        .status()
        .unwrap();
    assert!(made.success());
    let mut args = SPARSE.to_vec();
    args.extend(["--log-file", log.to_str().unwrap()]);
    let m = Mount::with_cache(&cache, &args);
    let names: Vec<String> = std::fs::read_dir(m.path("amd64/bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"short".to_string()), "{names:?}");
    assert!(names.iter().all(|n| n.len() <= 255), "{names:?}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("long.tar.gz") && logged.contains("over 255 bytes"),
        "{logged}"
    );
}
