//! Faults while mounted (docs/DESIGN.md §6): a backing file deleted, truncated or replaced, a cache
//! folder removed, contexts edited under `--contexts`. Each fault gives EIO (or ENOENT,
//! or the new content for contexts) on what it touched only; the daemon keeps serving
//! the rest and stays up.

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{daemon_pid, errno_of, is_running, own_cache, repo, scratch, sh, status_field, Mount};

/// What must still be served after any fault of a test (a file of each layer kind).
const WITNESSES: &[&str] = &[
    "rootfs/Kubefile",
    "rootfs/etc/kubeadm.yml",
    "rootfs/scripts/init.sh",
    "arm64/bin/conntrack",
    "arm64/bin/kubeadm",
    "amd64/bin/seautil",
    "arm64/cri/docker.tar.gz",
];

/// Reads every witness (but `skip`) and checks the daemon is the one that mounted.
fn assert_still_serving(m: &Mount, pid: u32, skip: &[&str]) {
    for rel in WITNESSES.iter().filter(|w| !skip.contains(w)) {
        let bytes = std::fs::read(m.path(rel))
            .unwrap_or_else(|e| panic!("{rel} no longer served after the fault: {e}"));
        assert!(!bytes.is_empty(), "{rel} is empty");
    }
    assert!(is_running(pid), "the daemon died");
    assert_eq!(daemon_pid(&m.dir), pid, "the daemon was replaced");
    sh(&format!("find '{}' >/dev/null", m.dir.display()));
}

fn mount(cache: &Path, args: &[&str]) -> (Mount, u32) {
    let mut full = vec!["--k8s", "v1.23.4"];
    full.extend_from_slice(args);
    let m = Mount::with_cache(cache, &full);
    let pid = daemon_pid(&m.dir);
    (m, pid)
}

#[test]
fn backing_file_deleted_gives_eio_on_that_file_only() {
    let cache = own_cache();
    let (m, pid) = mount(&cache, &[]);
    // Looked up before the fault: the kernel keeps the entry, opening it fails.
    let shown = m.path("amd64/bin/conntrack");
    assert!(shown.metadata().unwrap().len() > 0);
    std::fs::remove_file(cache.join("oss/amd64/bin/conntrack")).unwrap();
    assert_eq!(errno_of(std::fs::read(&shown)), libc::EIO);
    // Never looked up: simply absent.
    std::fs::remove_file(cache.join("kube/v1.23.4/amd64/kubelet")).unwrap();
    assert_eq!(
        errno_of(std::fs::metadata(m.path("amd64/bin/kubelet"))),
        libc::ENOENT
    );
    assert_still_serving(&m, pid, &[]);
    // Faults are counted (within the state file's refresh period).
    common::wait_for("the error counter", || {
        status_field(&m.dir, "errors").parse::<u64>().unwrap() >= 1
    });
}

#[test]
fn backing_file_truncated_gives_eio_on_that_file_only() {
    for args in [&["--no-passthrough"][..], &["--passthrough-min", "0"][..]] {
        let cache = own_cache();
        let (m, pid) = mount(&cache, args);
        let backing = cache.join("kube/v1.23.4/amd64/kubectl");
        let size = m.path("amd64/bin/kubectl").metadata().unwrap().len();
        // Truncated after being opened: through the daemon, the open file's reads past
        // the new end fail (with passthrough the kernel reads the backing file itself).
        let open = std::fs::File::open(m.path("amd64/bin/kubectl")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&backing)
            .unwrap()
            .set_len(size / 2)
            .unwrap();
        if args.contains(&"--no-passthrough") {
            let mut buf = Vec::new();
            use std::io::Read;
            assert_eq!(
                errno_of((&open).read_to_end(&mut buf)),
                libc::EIO,
                "a short backing file must not read as a short file"
            );
        }
        drop(open);
        // Opened again: refused, the file no longer is the one stat described.
        assert_eq!(
            errno_of(std::fs::read(m.path("amd64/bin/kubectl"))),
            libc::EIO,
            "{args:?}"
        );
        assert_still_serving(&m, pid, &[]);
    }
}

#[test]
fn backing_file_replaced_gives_eio_never_mixed_bytes() {
    let cache = own_cache();
    let (m, pid) = mount(&cache, &[]);
    for (rel, backing, new) in [
        // Longer: serving it would cut it at the old size.
        (
            "amd64/bin/kubeadm",
            "kube/v1.23.4/amd64/kubeadm",
            vec![b'x'; 100_000],
        ),
        // Same size, new bytes (written with a new mtime).
        ("arm64/bin/seautil", "oss/arm64/bin/seautil", Vec::new()),
    ] {
        let shown = m.path(rel);
        let old = std::fs::metadata(&shown).unwrap().len();
        let backing = cache.join(backing);
        let new = if new.is_empty() {
            vec![b'y'; old as usize]
        } else {
            new
        };
        // Replaced the way downloaders do: write aside, rename over.
        let tmp = backing.with_extension("new");
        std::fs::write(&tmp, &new).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::rename(&tmp, &backing).unwrap();
        assert_eq!(errno_of(std::fs::read(&shown)), libc::EIO, "{rel}");
        assert_eq!(std::fs::metadata(&shown).unwrap().len(), old, "{rel}");
    }
    assert_still_serving(&m, pid, &["arm64/bin/seautil"]);
}

#[test]
fn cache_folders_removed_while_mounted() {
    let cache = own_cache();
    let (m, pid) = mount(&cache, &[]);
    let before = m.path("amd64/bin/seautil");
    assert!(before.metadata().is_ok());
    let registry_files = common::walk(&m.path("rootfs/registry")).len();
    assert!(registry_files > 10);
    std::fs::remove_dir_all(cache.join("oss/amd64")).unwrap();
    std::fs::remove_dir_all(cache.join("registry")).unwrap();
    // Looked-up files of the removed folder fail, the folder lists what is left.
    assert_eq!(errno_of(std::fs::read(&before)), libc::EIO);
    let names: Vec<_> = std::fs::read_dir(m.path("amd64/bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.contains(&"kubeadm".to_string()), "{names:?}");
    assert!(!names.contains(&"conntrack".to_string()), "{names:?}");
    std::fs::read(m.path("amd64/bin/kubeadm")).unwrap();
    assert!(m.path("rootfs/registry").is_dir());
    assert_still_serving(&m, pid, &["amd64/bin/seautil"]);
    // Even with the whole cache gone, `df` answers and the contexts are served.
    std::fs::rename(&cache, cache.with_extension("gone")).unwrap();
    sh(&format!("df '{}' >/dev/null", m.dir.display()));
    assert!(m.read("rootfs/Kubefile").contains("FROM"));
    assert!(is_running(pid));
}

fn copy_contexts() -> PathBuf {
    let dir = scratch("contexts");
    sh(&format!(
        "cp -a '{}/.' '{}/'",
        repo().join("contexts").display(),
        dir.display()
    ));
    dir
}

/// Entries of an on-disk contexts tree are cached by the kernel for at most 1 s.
fn settle() {
    std::thread::sleep(Duration::from_millis(1300));
}

#[test]
fn contexts_edited_while_mounted() {
    let contexts = copy_contexts();
    let cache = own_cache();
    let log = scratch("log").join("daemon.log");
    let (m, pid) = mount(
        &cache,
        &[
            "--contexts",
            contexts.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
        ],
    );
    let kubeadm = m.read("rootfs/etc/kubeadm.yml");

    // A file deleted: gone from the mount (ENOENT), the rest stays.
    std::fs::remove_file(contexts.join("rootfs/statics/audit-policy.yml")).unwrap();
    // A template edited into an error: its last good rendering is served.
    let template = contexts.join("rootfs/etc/kubeadm.yml.in");
    let text = std::fs::read_to_string(&template).unwrap();
    std::fs::write(&template, format!("{text}@{{no_such_variable}}\n")).unwrap();
    // A whole context removed: the lower layers show through.
    let calico = contexts.join("cni/calico");
    let calico_only: Vec<String> = common::walk(&calico)
        .into_iter()
        .filter(|p| calico.join(p).is_file())
        .collect();
    assert!(!calico_only.is_empty());
    std::fs::remove_dir_all(&calico).unwrap();
    // A file turned into a folder, and a folder into a file.
    let registry_yml = contexts.join("rootfs/etc/registry_config.yml");
    std::fs::remove_file(&registry_yml).unwrap();
    std::fs::create_dir(&registry_yml).unwrap();
    std::fs::write(registry_yml.join("inside"), b"now a folder\n").unwrap();
    settle();

    assert_eq!(
        errno_of(std::fs::metadata(m.path("rootfs/statics/audit-policy.yml"))),
        libc::ENOENT
    );
    assert_eq!(m.read("rootfs/etc/kubeadm.yml"), kubeadm);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("serving its last good rendering") && logged.contains("no_such_variable"),
        "the broken template is not logged: {logged}"
    );
    for rel in &calico_only {
        let shown = m.path(&format!("rootfs/{rel}"));
        if !contexts.join("rootfs").join(rel).exists()
            && !contexts.join("cri/docker").join(rel).exists()
        {
            assert!(
                std::fs::symlink_metadata(&shown).is_err(),
                "{rel} still shown after its context was removed"
            );
        }
    }
    assert_eq!(
        m.read("rootfs/etc/registry_config.yml/inside"),
        "now a folder\n"
    );
    assert_still_serving(&m, pid, &[]);

    // Put back: served again, without remounting.
    std::fs::write(&template, &text).unwrap();
    std::fs::remove_dir_all(&registry_yml).unwrap();
    std::fs::write(&registry_yml, b"restored: true\n").unwrap();
    settle();
    assert_eq!(m.read("rootfs/etc/registry_config.yml"), "restored: true\n");
    assert_eq!(m.read("rootfs/etc/kubeadm.yml"), kubeadm);
    assert!(is_running(pid));
}

/// Index files are derived data beside the cache and anyone who can write there can
/// change them: truncating or rewriting one while it is in use must not kill the daemon
/// (a memory-mapped index gave SIGBUS), and reads stay right.
#[test]
fn index_file_truncated_or_rewritten_while_mounted() {
    use std::os::unix::fs::FileExt;
    let cache = own_cache();
    // Indexes other tests made in the demo cache came along with the copy.
    let _ = std::fs::remove_dir_all(cache.join("index"));
    let work = scratch("index-fault");
    // A registry.tar.gz of ~40 MB output: about 40 seek points, each with its window.
    sh(&format!(
        "set -e; cd '{w}'; seq 1 5000000 > big.tar; gzip -c big.tar > '{c}/cri/docker/amd64/registry.tar.gz'",
        w = work.display(),
        c = cache.display()
    ));
    let reference = std::fs::read(work.join("big.tar")).unwrap();
    let (m, pid) = mount(&cache, &[]);
    let shown = m.path("amd64/images/registry.tar");
    // The stat builds the index; nothing of the file is read yet.
    assert_eq!(
        std::fs::metadata(&shown).unwrap().len(),
        reference.len() as u64
    );
    let index: Vec<PathBuf> = std::fs::read_dir(cache.join("index"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("registry.tar.gz"))
        .collect();
    assert_eq!(index.len(), 1, "{index:?}");
    let len = std::fs::metadata(&index[0]).unwrap().len();
    // Truncated in place to its header, then rewritten with other bytes.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&index[0])
        .unwrap();
    f.set_len(128).unwrap();
    let file = std::fs::File::open(&shown).unwrap();
    let check = |pos: usize| {
        let mut buf = vec![0u8; 4096];
        let n = file.read_at(&mut buf, pos as u64).unwrap();
        assert!(
            n > 0 && buf[..n] == reference[pos..pos + n],
            "bytes at {pos}"
        );
    };
    // Far apart, backwards: each read starts from another seek point.
    for pos in (1..10).rev().map(|i| i * reference.len() / 10) {
        check(pos);
    }
    f.set_len(len).unwrap();
    f.write_all_at(&vec![0x5a; len as usize], 0).unwrap();
    for pos in (1..10)
        .rev()
        .map(|i| i * reference.len() / 10 + 4_000_000 % reference.len())
    {
        if pos + 4096 < reference.len() {
            check(pos);
        }
    }
    assert_still_serving(&m, pid, &[]);
    let _ = std::fs::remove_dir_all(&work);
}

/// Reads `path` with `cat`; true when that ends within 10 s (whatever its status). A
/// read still hanging then is let go by opening `fifo` for writing (a FUSE request
/// already sent to the daemon cannot be interrupted), so a failing run ends too.
fn read_finishes(path: &Path, fifo: &Path) -> bool {
    let mut cat = std::process::Command::new("cat")
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if cat.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::process::Command::new("timeout")
        .args(["5", "sh", "-c"])
        .arg(format!("echo > '{}'", fifo.display()))
        .output();
    let _ = cat.kill();
    let _ = cat.wait();
    false
}

/// Nothing in the cache is opened in a way that can block: a FIFO at an index path or
/// in place of a cache file gives an error or a rebuilt index, never a hung worker (with
/// few worker threads, one hung open hung the whole mount).
#[test]
fn fifos_in_the_cache_never_block_the_mount() {
    let cache = own_cache();
    // Indexes other tests made in the demo cache came along with the copy.
    let _ = std::fs::remove_dir_all(cache.join("index"));
    let tar = "amd64/images/registry.tar";
    let index = {
        let (m, _) = mount(&cache, &[]);
        std::fs::metadata(m.path(tar)).unwrap();
        let found: Vec<PathBuf> = std::fs::read_dir(cache.join("index"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("registry.tar.gz"))
            .collect();
        assert_eq!(found.len(), 1);
        found[0].clone()
    };
    std::fs::remove_file(&index).unwrap();
    sh(&format!("mkfifo '{}'", index.display()));
    let (m, pid) = mount(&cache, &[]);
    let finished = read_finishes(&m.path(tar), &index);
    assert!(finished, "a FIFO at the index path hung the read");
    assert!(is_running(pid));
    // A cache file replaced by a FIFO after its lookup.
    let shown = m.path("amd64/bin/conntrack");
    std::fs::metadata(&shown).unwrap();
    let backing = cache.join("oss/amd64/bin/conntrack");
    std::fs::remove_file(&backing).unwrap();
    sh(&format!("mkfifo '{}'", backing.display()));
    let finished = read_finishes(&shown, &backing);
    assert!(finished, "a FIFO in the cache hung the read");
    assert_eq!(errno_of(std::fs::read(&shown)), libc::EIO);
    assert_still_serving(&m, pid, &["amd64/bin/conntrack"]);
}

/// When the daemon runs out of file descriptors, opens or reads get EMFILE (the caller
/// can wait and retry), never EIO, and work again once files are closed. The daemon is
/// started with a hard limit of 256 so the test can reach it. A layer's file is opened
/// on disk by its first read (an open costs the daemon no descriptor until then), so
/// each file is read as well.
#[test]
fn fd_exhaustion_answers_emfile_not_eio() {
    // Through the daemon (O_DIRECT: every read reaches it, not the pages an earlier one
    // cached), and with passthrough (the daemon opens the file to hand it over).
    let passthrough = &["--passthrough-min", "0"][..];
    for (args, direct) in [(&["--no-passthrough"][..], true), (passthrough, false)] {
        let mp = scratch("mnt-fds");
        let out = std::process::Command::new("prlimit")
            .arg("--nofile=256:256")
            .arg(common::BIN)
            .arg(&mp)
            .args(["--k8s", "v1.23.4", "--cache"])
            .arg(common::demo_cache())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = Mount { dir: mp };
        let pid = daemon_pid(&m.dir);
        let mut open = Vec::new();
        let mut failure = None;
        for _ in 0..600 {
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(if direct { libc::O_DIRECT } else { 0 })
                .open(m.path("amd64/bin/conntrack"))
                .and_then(|mut f| {
                    let mut byte = [0u8; 1];
                    std::io::Read::read(&mut f, &mut byte).map(|_| f)
                });
            match opened {
                Ok(f) => open.push(f),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let failure = failure.expect("600 files open through a daemon limited to 256 fds");
        assert!(
            matches!(
                failure.raw_os_error(),
                Some(libc::EMFILE) | Some(libc::ENFILE)
            ),
            "out of fds ({args:?}): {failure:?}"
        );
        open.clear();
        std::thread::sleep(Duration::from_millis(200));
        assert_still_serving(&m, pid, &[]);
    }
}

/// Read EIOs on open fds whose backing file was cut or rewritten under the mount are
/// counted (`errors`) and logged as a fault naming the file, on both read paths through
/// the daemon: a read-only mount without passthrough (reads by inode, no open round
/// trip) and a writable mount without passthrough (reads through its open handle).
#[test]
fn read_eios_on_open_fds_of_changed_files_are_counted_and_logged() {
    use std::os::unix::fs::FileExt;
    for args in [
        &["--read-only", "--no-passthrough"][..],
        &["--no-passthrough"][..],
    ] {
        let cache = own_cache();
        let (m, pid) = mount(&cache, args);
        let backing = cache.join("kube/v1.23.4/amd64/kubectl");
        let open = std::fs::File::open(m.path("amd64/bin/kubectl")).unwrap();
        let size = open.metadata().unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&backing)
            .unwrap()
            .set_len(size / 2)
            .unwrap();
        let mut buf = vec![0u8; size as usize];
        assert_eq!(
            errno_of(open.read_exact_at(&mut buf, 0)),
            libc::EIO,
            "{args:?}"
        );
        let wanted = backing.display().to_string();
        common::wait_for("the read fault in status", || {
            let out = common::run(&["status", "--json", m.dir.to_str().unwrap()]);
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let mount = &json["mounts"][0];
            mount["counters"]["errors"].as_u64() >= Some(1)
                && mount["faults"].as_array().is_some_and(|faults| {
                    faults.iter().any(|f| {
                        f["file"].as_str() == Some(&wanted)
                            && f["message"].as_str().is_some_and(|m| m.contains("op=read"))
                    })
                })
        });
        if args.is_empty() {
            assert_still_serving(&m, pid, &[]);
            continue;
        }
        // Without open round trips every read opens the backing file again: one renamed
        // over is refused, and the fault says it was replaced (not "no such file").
        let replaced = cache.join("kube/v1.23.4/amd64/kubeadm");
        let open = std::fs::File::open(m.path("amd64/bin/kubeadm")).unwrap();
        let tmp = replaced.with_extension("new");
        std::fs::write(&tmp, b"another file").unwrap();
        std::fs::rename(&tmp, &replaced).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(errno_of(open.read_at(&mut buf, 0)), libc::EIO);
        let wanted = replaced.display().to_string();
        common::wait_for("the replaced file's fault in status", || {
            let out = common::run(&["status", "--json", m.dir.to_str().unwrap()]);
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            json["mounts"][0]["faults"]
                .as_array()
                .is_some_and(|faults| {
                    faults.iter().any(|f| {
                        f["file"].as_str() == Some(&wanted)
                            && f["message"]
                                .as_str()
                                .is_some_and(|m| m.contains("replaced under the mount"))
                    })
                })
        });
        assert_still_serving(&m, pid, &[]);
    }
}
