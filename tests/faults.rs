//! Faults while mounted (SPEC §6): a backing file deleted, truncated or replaced, a cache
//! folder removed, contexts edited under `--contexts`. Each fault gives EIO (or ENOENT,
//! or the new content for contexts) on what it touched only; the daemon keeps serving
//! the rest and stays up.

mod common;

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
    let cache = own_cache();
    let (m, pid) = mount(&cache, &[]);
    let backing = cache.join("kube/v1.23.4/amd64/kubectl");
    let size = m.path("amd64/bin/kubectl").metadata().unwrap().len();
    // Truncated after being opened: the open file's reads past the new end fail.
    let open = std::fs::File::open(m.path("amd64/bin/kubectl")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&backing)
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    let mut buf = Vec::new();
    use std::io::Read;
    assert_eq!(
        errno_of((&open).read_to_end(&mut buf)),
        libc::EIO,
        "a short backing file must not read as a short file"
    );
    drop(open);
    // Opened again: refused, the file no longer is the one stat described.
    assert_eq!(
        errno_of(std::fs::read(m.path("amd64/bin/kubectl"))),
        libc::EIO
    );
    assert_still_serving(&m, pid, &[]);
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
