//! Writes through the mount (docs/DESIGN.md §8): the upper layer takes every change; the layers
//! and the cache stay byte-identical.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{demo_cache, is_mounted, repo, requests_by_op, run, scratch, sh, walk, Mount};

/// sha256 of every file (and the target of every symlink) below `root`.
/// Everything below `root` but `index/`: the gzip seek indexes are the one thing the
/// daemon writes into a cache (docs/DESIGN.md §4), whenever an archive is first needed.
fn fingerprint(root: &Path) -> BTreeMap<String, String> {
    walk(root)
        .into_iter()
        .filter(|rel| rel != "index" && !rel.starts_with("index/"))
        .filter_map(|rel| {
            let path = root.join(&rel);
            let meta = path.symlink_metadata().ok()?;
            let value = if meta.file_type().is_symlink() {
                std::fs::read_link(&path).ok()?.display().to_string()
            } else if meta.is_file() {
                sh(&format!("sha256sum '{}' | cut -d' ' -f1", path.display()))
                    + &format!("{:o}", meta.mode())
            } else {
                format!("dir {:o}", meta.mode())
            };
            Some((rel, value))
        })
        .collect()
}

fn du_kib(dir: &Path) -> u64 {
    sh(&format!("du -sk '{}' | cut -f1", dir.display()))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn sealer_scenario_and_edits_leave_layers_untouched() {
    let cache = demo_cache();
    let before = fingerprint(cache);
    let contexts_before = fingerprint(&repo().join("contexts"));
    let upper = scratch("upper");
    let m = Mount::new(&["--k8s", "v1.23.4", "--upper", upper.to_str().unwrap()]);

    // sealer build: a temp folder in the context root, files downloaded into it, removed.
    let tmp = m.path("sealer-remote-files");
    std::fs::create_dir(&tmp).unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(tmp.join("calico.tar"), &payload).unwrap();
    assert_eq!(std::fs::read(tmp.join("calico.tar")).unwrap(), payload);
    assert_eq!(
        std::fs::metadata(tmp.join("calico.tar")).unwrap().len(),
        payload.len() as u64
    );
    sh(&format!("rm -rf '{}'", tmp.display()));
    assert!(!tmp.exists());

    // sed -i on a rendered file and on a context file.
    sh(&format!(
        "sed -i 's/clusterName: kubernetes/clusterName: build-farm/' '{}'",
        m.path("rootfs/etc/kubeadm.yml").display()
    ));
    let kubeadm = m.read("rootfs/etc/kubeadm.yml");
    assert!(
        kubeadm.contains("clusterName: build-farm")
            && kubeadm.contains("kubernetesVersion: v1.23.4")
    );
    assert_eq!(
        std::fs::metadata(m.path("rootfs/etc/kubeadm.yml"))
            .unwrap()
            .len() as usize,
        kubeadm.len()
    );
    sh(&format!(
        "sed -i '1i # edited' '{}'",
        m.path("rootfs/etc/registry_config.yml").display()
    ));
    assert!(m
        .read("rootfs/etc/registry_config.yml")
        .starts_with("# edited\n"));

    // rm and mv of lower files and folders.
    std::fs::remove_file(m.path("rootfs/etc/Clusterfile")).unwrap();
    assert!(!m.path("rootfs/etc/Clusterfile").exists());
    assert!(!sh(&format!("ls '{}'", m.path("rootfs/etc").display())).contains("Clusterfile"));
    sh(&format!("rm -rf '{}'", m.path("rootfs/statics").display()));
    assert!(!m.path("rootfs/statics").exists());
    sh(&format!(
        "mv '{}' '{}'",
        m.path("rootfs/Kubefile").display(),
        m.path("rootfs/Kubefile.orig").display()
    ));
    assert!(m.read("rootfs/Kubefile.orig").contains("FROM scratch"));
    assert!(!m.path("rootfs/Kubefile").exists());
    // A folder with lower content: rename(2) says EXDEV and mv copies instead.
    let err = std::fs::rename(m.path("rootfs/scripts"), m.path("rootfs/scripts2")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV));
    sh(&format!(
        "mv '{}' '{}'",
        m.path("rootfs/scripts").display(),
        m.path("rootfs/scripts2").display()
    ));
    assert!(m.path("rootfs/scripts2/init.sh").is_file() && !m.path("rootfs/scripts").exists());
    // A deleted folder made again is empty (opaque), not the old one back.
    std::fs::create_dir(m.path("rootfs/scripts")).unwrap();
    assert_eq!(
        std::fs::read_dir(m.path("rootfs/scripts")).unwrap().count(),
        0
    );
    // Symlinks and hard links in the upper layer.
    std::os::unix::fs::symlink("Kubefile.orig", m.path("rootfs/Kubefile")).unwrap();
    assert!(m.read("rootfs/Kubefile").contains("FROM scratch"));
    std::fs::hard_link(m.path("rootfs/imageList"), m.path("rootfs/imageList.link")).unwrap();
    assert_eq!(m.read("rootfs/imageList.link"), m.read("rootfs/imageList"));
    // Writes into a cache-backed folder.
    std::fs::write(m.path("amd64/bin/extra-tool"), b"#!/bin/sh\n").unwrap();
    assert!(m.path("amd64/bin/kubeadm").is_file());

    drop(m);
    assert_eq!(fingerprint(cache), before, "the cache changed");
    assert_eq!(
        fingerprint(&repo().join("contexts")),
        contexts_before,
        "the contexts changed"
    );
    assert!(
        upper.join("amd64/bin/extra-tool").is_file(),
        "changes are kept in --upper"
    );
}

#[test]
fn chmod_of_a_large_cached_file_copies_no_data() {
    let cache = scratch("big-cache");
    let out = std::process::Command::new("bash")
        .arg(repo().join("scripts/demo-cache.sh"))
        .arg(&cache)
        .arg("v1.23.4")
        .env("DEMO_CACHE_BIG_MB", "64")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let upper = scratch("upper");
    let m = Mount::with_cache(
        &cache,
        &[
            "--k8s",
            "v1.23.4",
            "--arch",
            "amd64",
            "--upper",
            upper.to_str().unwrap(),
        ],
    );
    let blob = m.path("amd64/bin/bigblob");
    let original = std::fs::read(cache.join("oss/amd64/bin/bigblob")).unwrap();
    sh(&format!(
        "chmod 0700 '{}' && touch -d @1700000000 '{}'",
        blob.display(),
        blob.display()
    ));
    let meta = std::fs::metadata(&blob).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(meta.mtime(), 1_700_000_000);
    assert_eq!(meta.len(), original.len() as u64);
    assert!(
        std::fs::read(&blob).unwrap() == original,
        "bytes changed by chmod"
    );
    assert!(
        du_kib(&upper) < 256,
        "chmod copied data: upper uses {} KiB",
        du_kib(&upper)
    );
    // The first write copies the bytes up, once; the inode number stays.
    let ino = meta.ino();
    let f = std::fs::OpenOptions::new().write(true).open(&blob).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"XYZ", 10).unwrap();
    drop(f);
    let after = std::fs::read(&blob).unwrap();
    assert_eq!(&after[10..13], b"XYZ");
    assert_eq!(&after[13..], &original[13..]);
    assert_eq!(std::fs::metadata(&blob).unwrap().ino(), ino);
    assert_eq!(
        std::fs::metadata(&blob).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(
        std::fs::read(cache.join("oss/amd64/bin/bigblob")).unwrap() == original,
        "the cache changed"
    );
}

#[test]
fn upper_persists_across_mounts() {
    let upper = scratch("upper");
    let u = upper.to_str().unwrap();
    {
        let m = Mount::new(&["--k8s", "v1.23.4", "--upper", u]);
        std::fs::write(m.path("rootfs/notes.txt"), b"kept").unwrap();
        std::fs::remove_file(m.path("rootfs/imageList")).unwrap();
        sh(&format!(
            "chmod 600 '{}'",
            m.path("rootfs/etc/kubelet.service").display()
        ));
    }
    let m = Mount::new(&["--k8s", "v1.23.4", "--upper", u]);
    assert_eq!(m.read("rootfs/notes.txt"), "kept");
    assert!(!m.path("rootfs/imageList").exists());
    let mode = std::fs::metadata(m.path("rootfs/etc/kubelet.service"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(m.read("rootfs/etc/kubelet.service").contains("[Unit]"));
}

#[test]
fn scratch_upper_is_removed_at_unmount() {
    let tmpdir = scratch("tmpdir");
    let m = Mount::with_env(demo_cache(), &["--k8s", "v1.23.4"], &[("TMPDIR", &tmpdir)]);
    std::fs::write(m.path("rootfs/scratch.txt"), b"temporary").unwrap();
    assert_eq!(
        std::fs::read_dir(&tmpdir).unwrap().count(),
        1,
        "no scratch upper in TMPDIR"
    );
    let dir: PathBuf = m.dir.clone();
    let out = run(&["umount", dir.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(!is_mounted(&dir));
    let start = std::time::Instant::now();
    while std::fs::read_dir(&tmpdir).unwrap().count() > 0 {
        assert!(start.elapsed().as_secs() < 10, "scratch upper left behind");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn posix_corner_cases() {
    let m = Mount::new(&["--k8s", "v1.23.4"]);
    let f = m.path("rootfs/new.txt");
    // O_EXCL on an existing name, O_TRUNC, append, fsync, fallocate.
    std::fs::write(&f, b"0123456789").unwrap();
    let excl = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&f);
    assert_eq!(excl.unwrap_err().raw_os_error(), Some(libc::EEXIST));
    let mut a = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
    std::io::Write::write_all(&mut a, b"AB").unwrap();
    a.sync_all().unwrap();
    drop(a);
    assert_eq!(m.read("rootfs/new.txt"), "0123456789AB");
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&f)
        .unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 0);
    sh(&format!("fallocate -l 1M '{}'", f.display()));
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 1 << 20);
    // Truncating a lower file copies it up and cuts it.
    sh(&format!(
        "truncate -s 5 '{}'",
        m.path("rootfs/Kubefile").display()
    ));
    assert_eq!(m.read("rootfs/Kubefile").len(), 5);
    // rename(2) with RENAME_NOREPLACE, and over an existing file.
    std::fs::write(m.path("rootfs/a"), b"a").unwrap();
    std::fs::write(m.path("rootfs/b"), b"b").unwrap();
    let noreplace = sh(&format!(
        "mv -n '{}' '{}'; cat '{}'",
        m.path("rootfs/a").display(),
        m.path("rootfs/b").display(),
        m.path("rootfs/b").display()
    ));
    assert_eq!(noreplace, "b");
    std::fs::rename(m.path("rootfs/a"), m.path("rootfs/b")).unwrap();
    assert_eq!(m.read("rootfs/b"), "a");
    // Folder semantics.
    assert_eq!(
        std::fs::remove_dir(m.path("rootfs/etc"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    assert_eq!(
        std::fs::remove_file(m.path("rootfs/etc"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EISDIR)
    );
    // Reserved names, user xattrs on upper files, and provenance still get-only.
    assert_eq!(
        std::fs::write(m.path("rootfs/.wh.x"), b"")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EPERM)
    );
    sh(&format!("setfattr -n user.note -v hi '{}'", f.display()));
    assert_eq!(
        sh(&format!(
            "getfattr --only-values -n user.note '{}'",
            f.display()
        )),
        "hi"
    );
    let listed = sh(&format!("getfattr -d -m - '{}'", f.display()));
    assert!(
        listed.contains("user.note") && !listed.contains("user.rootfs"),
        "{listed}"
    );
    assert!(sh(&format!(
        "getfattr --only-values -n user.rootfs.source '{}'",
        f.display()
    ))
    .ends_with("rootfs/new.txt"));
    // Devices cannot be made.
    assert!(std::process::Command::new("mknod")
        .arg(m.path("rootfs/dev"))
        .args(["c", "1", "3"])
        .status()
        .map(|s| !s.success())
        .unwrap());
}

#[test]
fn read_write_handles_read_before_their_first_write() {
    use std::io::{Read, Seek, SeekFrom, Write};
    let m = Mount::new(&["--k8s", "v1.23.4"]);
    // A rendered file, an archive member and a cache file, each opened O_RDWR.
    for rel in [
        "rootfs/etc/kubeadm.yml",
        "amd64/bin/crictl",
        "amd64/bin/kubeadm",
    ] {
        let before = std::fs::read(m.path(rel)).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.path(rel))
            .unwrap();
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert!(
            got == before,
            "{rel}: read through an O_RDWR handle differs"
        );
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(b"#!").unwrap();
        drop(f);
        let after = std::fs::read(m.path(rel)).unwrap();
        assert_eq!(&after[..2], b"#!", "{rel}");
        assert_eq!(&after[2..], &before[2..], "{rel}");
    }
}

#[test]
fn folder_attribute_changes_show_at_once() {
    let m = Mount::new(&["--k8s", "v1.23.4", "--allow-other"]);
    let dir = m.path("rootfs/work");
    std::fs::create_dir(&dir).unwrap();
    // The kernel checks permissions with what setattr answered: the new owner may
    // create in the folder at once (mode 0755, owner only).
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let made = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "mkdir"])
        .arg(dir.join("by-nobody"))
        .status()
        .unwrap();
    assert!(
        made.success(),
        "the new owner could not create in its folder"
    );
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    // The same for a folder of the layers below (copied up on the change).
    sh(&format!("chmod 0750 '{}'", m.path("rootfs/etc").display()));
    assert_eq!(
        std::fs::metadata(m.path("rootfs/etc"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o750
    );
}

/// New nodes get the mode the caller asked for, whatever the daemon's own umask: under
/// `umask 0`, `mkdir -m 0777` is 0777 (pjdfstest rename::write_access_required_subdir
/// relied on it: its folder came out 0755 and the rename by another user was EACCES,
/// not allowed as on a kernel file system), and so are files and FIFOs.
#[test]
fn new_nodes_keep_the_mode_the_caller_asked_for() {
    let m = Mount::new(&["--k8s", "v1.23.4", "--allow-other"]);
    let work = m.path("rootfs/modes");
    sh(&format!(
        "umask 0; mkdir -m 0777 '{w}' && mkdir -m 0700 '{w}/subdir' && mkdir -m 0777 '{w}/other' \
         && (umask 0; : > '{w}/file'; chmod 0666 '{w}/file'; mkfifo -m 0666 '{w}/fifo') \
         && python3 -c 'import os; os.umask(0); fd = os.open(\"{w}/made\", os.O_CREAT | os.O_WRONLY, 0o666); os.close(fd)'",
        w = work.display()
    ));
    let mode = |rel: &str| std::fs::metadata(work.join(rel)).unwrap().mode() & 0o7777;
    assert_eq!(mode(""), 0o777);
    assert_eq!(mode("subdir"), 0o700);
    assert_eq!(mode("made"), 0o666);
    assert_eq!(mode("fifo"), 0o666);
    // As pjdfstest does it: another user (effective ids only) renames the 0700 subfolder
    // within the 0777 folder (allowed), back, then into another folder (EACCES: moving a
    // folder to a new parent needs write access to the folder itself).
    let script = format!(
        "import os\n\
         os.setgroups([65534]); os.setresgid(-1, 65534, -1); os.setresuid(-1, 65534, -1)\n\
         w = '{w}'\n\
         os.rename(w + '/subdir', w + '/moved')\n\
         os.rename(w + '/moved', w + '/subdir')\n\
         try:\n    os.rename(w + '/subdir', w + '/other/subdir'); print('moved')\n\
         except PermissionError:\n    print('EACCES')\n",
        w = work.display()
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "EACCES");
}

/// An open fd keeps working on its file after the name is gone, as on ext4: unlinked
/// (an upper file, and a lower file opened `O_RDWR` before its first write), or replaced
/// by a rename over it. Writes read back in full, `ftruncate` and `fstat` work.
#[test]
fn open_files_keep_working_after_unlink_and_rename_over() {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::FileExt;
    let m = Mount::new(&["--k8s", "v1.23.4"]);
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();

    // tempfile.TemporaryFile: create, unlink, then write and read back.
    let path = m.path("rootfs/temp-file");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    f.write_all(b"first").unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(!path.exists());
    f.write_all(&payload).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    f.read_to_end(&mut back).unwrap();
    assert_eq!(
        back.len(),
        5 + payload.len(),
        "bytes written after unlink lost"
    );
    assert!(back[5..] == payload[..]);
    assert_eq!(f.metadata().unwrap().len(), 5 + payload.len() as u64);
    f.set_len(1000).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 1000);
    // A new file of the same name is another file.
    std::fs::write(&path, b"new").unwrap();
    assert_eq!(f.metadata().unwrap().len(), 1000);
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    drop(f);

    // A lower file opened O_RDWR, unlinked before its first write.
    let lower = m.path("rootfs/Kubefile");
    let original = std::fs::read(&lower).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lower)
        .unwrap();
    std::fs::remove_file(&lower).unwrap();
    f.write_all_at(b"XY", 0).unwrap();
    let mut back = vec![0u8; original.len()];
    f.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(&back[..2], b"XY");
    assert!(back[2..] == original[2..]);
    f.set_len(3).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 3);
    assert!(!lower.exists());
    drop(f);

    // A rename over an open file: the old fd keeps its file, writes and all.
    let a = m.path("rootfs/a-file");
    let b = m.path("rootfs/b-file");
    std::fs::write(&a, b"old a").unwrap();
    std::fs::write(&b, b"b").unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&a)
        .unwrap();
    std::fs::rename(&b, &a).unwrap();
    f.write_all_at(&payload, 5).unwrap();
    let mut back = Vec::new();
    (&f).read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), 5 + payload.len());
    assert_eq!(&back[..5], b"old a");
    assert_eq!(std::fs::read(&a).unwrap(), b"b");
    // And the same for a lower file opened for writing and replaced before its first write.
    let lower = m.path("rootfs/imageList");
    let original = std::fs::read(&lower).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&lower)
        .unwrap();
    std::fs::write(&b, b"replacement").unwrap();
    std::fs::rename(&b, &lower).unwrap();
    f.write_all_at(b"Z", 0).unwrap();
    assert_eq!(std::fs::read(&lower).unwrap(), b"replacement");
    assert_eq!(f.metadata().unwrap().len(), original.len() as u64);
}

/// A lower entry whose name is in the upper layer's whiteout format (`.wh.X`,
/// `.wh..wh..opq`, or anything inside a `.wh.X` folder) is never copied up as is: there
/// it would hide `X` or make its folder opaque. Changing it is refused with EPERM, and
/// nothing vanishes, now or after a remount of the same upper layer.
#[test]
fn lower_names_in_the_whiteout_format_are_never_copied_up() {
    use std::io::Write;
    let cache = common::own_cache();
    sh(&format!(
        "set -e; c='{}'; printf 'decoy\\n' > \"$c/oss/amd64/bin/.wh.kubeadm\"; \
         printf 'marker\\n' > \"$c/oss/amd64/bin/.wh..wh..opq\"; \
         mkdir -p \"$c/registry/.wh.docker\"; chmod 0777 \"$c/registry/.wh.docker\"",
        cache.display()
    ));
    let upper = scratch("wh-upper");
    let args = ["--k8s", "v1.23.4", "--upper", upper.to_str().unwrap()];
    {
        let m = Mount::with_cache(&cache, &args);
        assert!(m.path("amd64/bin/.wh.kubeadm").is_file());
        let eperm = |r: std::io::Result<()>| common::errno_of(r) == libc::EPERM;
        assert!(eperm(std::fs::set_permissions(
            m.path("amd64/bin/.wh.kubeadm"),
            std::fs::Permissions::from_mode(0o755)
        )));
        assert!(eperm(
            std::fs::OpenOptions::new()
                .append(true)
                .open(m.path("amd64/bin/.wh..wh..opq"))
                .and_then(|mut f| f.write_all(b"more"))
        ));
        assert!(eperm(std::fs::write(
            m.path("rootfs/registry/.wh.docker/new"),
            b"x"
        )));
        for rel in [
            "amd64/bin/kubeadm",
            "amd64/bin/conntrack",
            "rootfs/registry/docker",
        ] {
            assert!(m.path(rel).exists(), "{rel} vanished");
        }
    }
    assert!(
        walk(&upper)
            .iter()
            .all(|p| !p.contains(".wh.") || p == ".wh.copyup.work"),
        "{:?}",
        walk(&upper)
    );
    let m = Mount::with_cache(&cache, &args);
    for rel in [
        "amd64/bin/kubeadm",
        "amd64/bin/conntrack",
        "rootfs/registry/docker",
    ] {
        assert!(m.path(rel).exists(), "{rel} vanished after a remount");
    }
}

/// A daemon killed in the middle of a copy-up leaves its temp file; the next mount of
/// the same upper layer removes it, wherever in the tree the copy-up was.
#[test]
fn copy_up_temp_files_of_a_killed_daemon_are_removed_at_the_next_mount() {
    let cache = common::own_cache();
    sh(&format!(
        "head -c 400000000 /dev/zero > '{}/oss/amd64/bin/huge'",
        cache.display()
    ));
    let upper = scratch("killed-upper");
    let args = ["--k8s", "v1.23.4", "--upper", upper.to_str().unwrap()];
    let leftovers = |upper: &Path| -> Vec<String> {
        walk(upper)
            .into_iter()
            .filter(|p| p.contains(".wh.copyup"))
            .filter(|p| upper.join(p).is_file())
            .collect()
    };
    {
        let m = Mount::with_cache(&cache, &args);
        let pid = common::daemon_pid(&m.dir);
        let target = m.path("amd64/bin/huge");
        let mut writer = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("echo more >> '{}'", target.display()))
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while leftovers(&upper).is_empty() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "no copy-up seen"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // SAFETY: killing the daemon this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let _ = writer.wait();
        assert!(!leftovers(&upper).is_empty());
        common::wait_for("daemon exit", || !common::is_running(pid));
    }
    let m = Mount::with_cache(&cache, &args);
    assert_eq!(leftovers(&upper), Vec::<String>::new());
    assert_eq!(
        std::fs::metadata(m.path("amd64/bin/huge")).unwrap().len(),
        400_000_000
    );
    drop(m);
    let _ = std::fs::remove_dir_all(&cache);
}

/// FIFOs and unix sockets can be made in the mount (they live in the upper layer and come
/// back on the next mount of it); devices stay refused (the mount is `nodev`).
#[test]
fn fifos_and_sockets_live_in_the_upper_layer() {
    use std::os::unix::fs::FileTypeExt;
    let upper = scratch("special-upper");
    let args = ["--k8s", "v1.23.4", "--upper", upper.to_str().unwrap()];
    {
        let m = Mount::new(&args);
        let fifo = m.path("rootfs/pipe");
        sh(&format!("mkfifo -m 0640 '{}'", fifo.display()));
        let meta = std::fs::symlink_metadata(&fifo).unwrap();
        assert!(meta.file_type().is_fifo(), "{meta:?}");
        assert_eq!(meta.mode() & 0o7777, 0o640);
        // It works as a pipe.
        let out = sh(&format!(
            "(echo through-the-pipe > '{p}' &) ; timeout 10 cat '{p}'",
            p = fifo.display()
        ));
        assert_eq!(out.trim(), "through-the-pipe");
        let sock = m.path("rootfs/sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(std::fs::symlink_metadata(&sock)
            .unwrap()
            .file_type()
            .is_socket());
        let _client = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        listener.accept().unwrap();
        // Renamed and listed like any entry.
        std::fs::rename(&fifo, m.path("rootfs/pipe2")).unwrap();
        let names: Vec<String> = std::fs::read_dir(m.path("rootfs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"pipe2".to_string()) && !names.contains(&"pipe".to_string()));
        // Devices stay refused.
        let dev = std::process::Command::new("mknod")
            .arg(m.path("rootfs/null"))
            .args(["c", "1", "3"])
            .output()
            .unwrap();
        assert!(!dev.status.success());
    }
    let m = Mount::new(&args);
    assert!(std::fs::symlink_metadata(m.path("rootfs/pipe2"))
        .unwrap()
        .file_type()
        .is_fifo());
    std::fs::remove_file(m.path("rootfs/pipe2")).unwrap();
    assert!(!m.path("rootfs/pipe2").exists());
}

/// A folder made through the mount counts its links as on a local disk: 2 plus one per
/// subfolder, following mkdir, rmdir and renames between folders.
#[test]
fn folders_of_the_upper_layer_count_their_links() {
    let m = Mount::new(&["--k8s", "v1.23.4"]);
    let nlink = |rel: &str| std::fs::metadata(m.path(rel)).unwrap().nlink();
    std::fs::create_dir(m.path("rootfs/d")).unwrap();
    std::fs::create_dir(m.path("rootfs/e")).unwrap();
    assert_eq!(nlink("rootfs/d"), 2);
    std::fs::create_dir(m.path("rootfs/d/a")).unwrap();
    std::fs::create_dir(m.path("rootfs/d/b")).unwrap();
    std::fs::write(m.path("rootfs/d/file"), b"x").unwrap();
    assert_eq!(nlink("rootfs/d"), 4);
    std::fs::rename(m.path("rootfs/d/a"), m.path("rootfs/e/a")).unwrap();
    assert_eq!(nlink("rootfs/d"), 3);
    assert_eq!(nlink("rootfs/e"), 3);
    std::fs::remove_dir(m.path("rootfs/d/b")).unwrap();
    assert_eq!(nlink("rootfs/d"), 2);
    // Merged and made-up folders are not counted: 1 ("not counted"), never a count that
    // claims fewer subfolders than they have. find walks them whole either way.
    for merged in ["", "rootfs", "amd64", "amd64/bin", "rootfs/etc"] {
        let path = m.path(merged);
        let subfolders = std::fs::read_dir(&path)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
            .count() as u64;
        let links = std::fs::metadata(&path).unwrap().nlink();
        assert!(
            links == 1 || links == 2 + subfolders,
            "{merged:?}: st_nlink {links} with {subfolders} subfolders"
        );
    }
    assert_eq!(nlink("rootfs"), 1);
    // A made-up folder that layers are rooted below, copied up by a new subfolder.
    std::fs::create_dir(m.path("amd64/new")).unwrap();
    assert_eq!(nlink("amd64"), 1);
    assert_eq!(nlink(""), 1);
    let found = sh(&format!("find '{}' -type d | wc -l", m.dir.display()));
    let walked = common::walk(&m.dir)
        .iter()
        .filter(|p| m.dir.join(p).is_dir())
        .count()
        + 1;
    assert_eq!(found.trim(), walked.to_string());
}

/// Hard links are one file, as on a local disk: both names have one inode number (in
/// `stat` and `readdir`), one link count and one set of metadata, and unlinking one name
/// leaves the other whole.
#[test]
fn hard_links_share_one_inode() {
    use std::os::unix::fs::DirEntryExt;
    let m = Mount::new(&["--k8s", "v1.23.4"]);
    let (a, b) = (m.path("rootfs/link-a"), m.path("rootfs/link-b"));
    std::fs::write(&a, b"shared").unwrap();
    let before = std::fs::metadata(&a).unwrap();
    std::fs::hard_link(&a, &b).unwrap();
    let (ma, mb) = (
        std::fs::metadata(&a).unwrap(),
        std::fs::metadata(&b).unwrap(),
    );
    assert_eq!(ma.ino(), before.ino(), "the first name changed its number");
    assert_eq!(ma.ino(), mb.ino());
    assert_eq!((ma.nlink(), mb.nlink()), (2, 2));
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::metadata(&b).unwrap().mode() & 0o7777, 0o600);
    let listed = std::fs::read_dir(m.path("rootfs"))
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.file_name() == "link-b")
        .unwrap();
    assert_eq!(listed.ino(), ma.ino(), "d_ino differs from st_ino");
    std::fs::remove_file(&a).unwrap();
    let mb = std::fs::metadata(&b).unwrap();
    assert_eq!((mb.ino(), mb.nlink()), (ma.ino(), 1));
    assert_eq!(std::fs::read(&b).unwrap(), b"shared");
    // A new file of the first name is another file.
    std::fs::write(&a, b"new").unwrap();
    assert_ne!(std::fs::metadata(&a).unwrap().ino(), mb.ino());
    assert_eq!(std::fs::read(&b).unwrap(), b"shared");
    // The same for a FIFO.
    let (p, q) = (m.path("rootfs/pipe-a"), m.path("rootfs/pipe-b"));
    sh(&format!("mkfifo '{}'", p.display()));
    std::fs::hard_link(&p, &q).unwrap();
    let (mp, mq) = (
        std::fs::symlink_metadata(&p).unwrap(),
        std::fs::symlink_metadata(&q).unwrap(),
    );
    assert_eq!((mp.ino(), mp.nlink()), (mq.ino(), 2));
}

/// Hard links inside the layers below: on a read-only mount their names are one inode
/// (one `st_ino`, the on-disk `st_nlink`), so `tar` stores the second name as a link to
/// the first. On a writable mount each name keeps its own number (a copy-up would split
/// them, as on overlayfs without its index), and a chmod of one leaves the other alone.
#[test]
fn hard_links_of_the_layers_below_are_one_inode_on_a_read_only_mount() {
    let cache = common::own_cache();
    let bin = cache.join("oss/amd64/bin");
    std::fs::hard_link(bin.join("conntrack"), bin.join("conntrack-link")).unwrap();
    let m = Mount::with_cache(&cache, &["--k8s", "v1.23.4", "--read-only"]);
    let a = std::fs::metadata(m.path("amd64/bin/conntrack")).unwrap();
    let b = std::fs::metadata(m.path("amd64/bin/conntrack-link")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!((a.nlink(), b.nlink()), (2, 2));
    let other = std::fs::metadata(m.path("amd64/bin/seautil")).unwrap();
    assert_ne!(other.ino(), a.ino());
    let listed = sh(&format!(
        "tar -cf - -C '{}' amd64/bin/conntrack amd64/bin/conntrack-link | tar -tvf -",
        m.dir.display()
    ));
    assert!(
        listed.contains("amd64/bin/conntrack-link link to amd64/bin/conntrack"),
        "{listed}"
    );
    drop(m);

    let w = Mount::with_cache(&cache, &["--k8s", "v1.23.4"]);
    let a = std::fs::metadata(w.path("amd64/bin/conntrack")).unwrap();
    let b = std::fs::metadata(w.path("amd64/bin/conntrack-link")).unwrap();
    assert_ne!(a.ino(), b.ino());
    sh(&format!(
        "chmod 0700 '{}'",
        w.path("amd64/bin/conntrack").display()
    ));
    let b_mode = std::fs::metadata(w.path("amd64/bin/conntrack-link"))
        .unwrap()
        .mode();
    assert_eq!(b_mode & 0o777, b.mode() & 0o777);
    assert_eq!(
        std::fs::read(w.path("amd64/bin/conntrack")).unwrap(),
        std::fs::read(w.path("amd64/bin/conntrack-link")).unwrap()
    );
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, op: &str) -> u64 {
    after.get(op).copied().unwrap_or(0) - before.get(op).copied().unwrap_or(0)
}

/// Whether the mount negotiated FUSE passthrough (root, Linux >= 6.9); says so if not.
/// Asked once the state file has been written (see [`requests_by_op`]).
fn passes_through(m: &Mount) -> bool {
    let path = common::status_field(&m.dir, "read path");
    if !path.contains("passthrough") {
        eprintln!("note: no FUSE passthrough here (read path: {path}); nothing to check");
    }
    path.contains("passthrough")
}

/// On the default (writable) mount the kernel reads and writes files whose bytes are in
/// the upper layer itself (FUSE passthrough): creating, writing, reading back,
/// truncating and appending to one sends no READ or WRITE to the daemon, and sizes and
/// bytes are what was written; a layer's file is read by the kernel too (all sizes with
/// `--passthrough-min 0`; the demo's files are small).
#[test]
fn upper_files_are_read_and_written_by_the_kernel() {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::FileExt;
    let m = Mount::new(&["--k8s", "v1.23.4", "--passthrough-min", "0"]);
    let before = requests_by_op(&m);
    if !passes_through(&m) {
        return;
    }
    let path = m.path("rootfs/passthrough-file");
    let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    for chunk in payload.chunks(65536) {
        f.write_all(chunk).unwrap();
    }
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        payload.len() as u64
    );
    f.write_all_at(b"middle", 1_000_000).unwrap();
    f.set_len(3_000_000).unwrap();
    f.seek(SeekFrom::End(0)).unwrap();
    f.write_all(b"tail").unwrap();
    drop(f);
    let mut wanted = payload[..3_000_000].to_vec();
    wanted[1_000_000..1_000_006].copy_from_slice(b"middle");
    wanted.extend_from_slice(b"tail");
    let mut back = Vec::new();
    std::fs::File::open(&path)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == wanted, "bytes read back differ from those written");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), wanted.len() as u64);
    // Appends through O_APPEND land at the end the kernel knows.
    let mut appending = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    appending.write_all(b"!").unwrap();
    drop(appending);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        wanted.len() as u64 + 1
    );
    let after = requests_by_op(&m);
    assert!(delta(&before, &after, "create") >= 1, "{after:?}");
    assert!(delta(&before, &after, "open") >= 2, "{after:?}");
    assert_eq!(delta(&before, &after, "read"), 0, "{before:?} -> {after:?}");
    assert_eq!(
        delta(&before, &after, "write"),
        0,
        "{before:?} -> {after:?}"
    );
    // The bytes are in the upper layer's file, as written.
    let upper = std::fs::read(m.path("rootfs/passthrough-file")).unwrap();
    assert_eq!(upper.len(), wanted.len() + 1);

    // A layer's file: read by the kernel too (its backing is the layer's file).
    let lower = std::fs::read(m.path("amd64/bin/kubeadm")).unwrap();
    assert!(!lower.is_empty());
    let later = requests_by_op(&m);
    assert_eq!(delta(&after, &later, "read"), 0, "{after:?} -> {later:?}");
}

/// A reader holds a layer's file open while a writer opens the same file and copies it
/// up: nobody gets EBUSY, ETXTBSY or EIO; new opens see the new bytes; once every open
/// of the old kind is closed, the file's next opens pass through to the upper file.
#[test]
fn a_copy_up_under_an_open_reader_keeps_every_open_working() {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let m = Mount::new(&["--k8s", "v1.23.4", "--passthrough-min", "0"]);
    let path = m.path("amd64/bin/kubeadm");
    let old = std::fs::read(&path).unwrap();
    let reader = std::fs::File::open(&path).unwrap();
    let mut head = [0u8; 8];
    reader.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head[..], &old[..8]);

    let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    writer.write_all_at(b"NEWBYTES", 0).unwrap();
    let mut fresh = Vec::new();
    std::fs::File::open(&path)
        .unwrap()
        .read_to_end(&mut fresh)
        .unwrap();
    assert_eq!(&fresh[..8], b"NEWBYTES");
    assert_eq!(&fresh[8..], &old[8..]);
    // The reader still reads (the bytes it sees are the page cache's).
    let mut again = vec![0u8; old.len()];
    reader.read_exact_at(&mut again, 0).unwrap();
    assert_eq!(&again[8..], &old[8..]);
    drop(writer);
    drop(reader);

    // Every open of the inode is gone: the next ones pass through to the upper file.
    let before = requests_by_op(&m);
    let rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    rw.write_all_at(b"THIRD", 0).unwrap();
    let mut now = vec![0u8; old.len()];
    rw.read_exact_at(&mut now, 0).unwrap();
    assert_eq!(&now[..5], b"THIRD");
    assert_eq!(&now[5..8], b"TES");
    drop(rw);
    let after = requests_by_op(&m);
    if passes_through(&m) {
        assert_eq!(delta(&before, &after, "read"), 0, "{before:?} -> {after:?}");
        assert_eq!(
            delta(&before, &after, "write"),
            0,
            "{before:?} -> {after:?}"
        );
    }
}

/// Readers hold a layer's file through passthrough (the layer's file is the kernel's
/// backing of that inode) while the file is written, truncated, mapped shared and
/// renamed over through the mount: every open succeeds (the kernel retries on the
/// path's new number), earlier readers keep the bytes they opened, later opens see the
/// new ones, and nothing reaches the layer's file in the cache.
#[test]
fn layer_files_held_by_passthrough_readers_can_still_be_changed() {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let cache = common::own_cache();
    let before = fingerprint(&cache);
    let m = Mount::with_cache(&cache, &["--k8s", "v1.23.4", "--passthrough-min", "0"]);
    requests_by_op(&m);
    let passthrough = passes_through(&m);
    let read_all = |rel: &str| {
        let mut bytes = Vec::new();
        std::fs::File::open(m.path(rel))
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    };

    // A write open while a reader holds the file.
    let rel = "amd64/bin/kubeadm";
    let old = read_all(rel);
    let counted = requests_by_op(&m);
    let reader = std::fs::File::open(m.path(rel)).unwrap();
    let mut head = [0u8; 8];
    reader.read_exact_at(&mut head, 0).unwrap();
    if passthrough {
        let now = requests_by_op(&m);
        assert_eq!(delta(&counted, &now, "read"), 0, "{counted:?} -> {now:?}");
    }
    let writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path(rel))
        .unwrap();
    writer.write_all_at(b"WRITTEN!", 0).unwrap();
    // Mapped shared and written through the map: the bytes land in the upper file.
    {
        use std::os::fd::AsRawFd;
        let len = 4096;
        // SAFETY: a fresh shared mapping of the first page of an open file, written
        // only at bytes 8..16 (inside the file), synced and unmapped before it closes.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                writer.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
            std::slice::from_raw_parts_mut(map.cast::<u8>(), len)[8..16]
                .copy_from_slice(b"MAPPED!!");
            assert_eq!(libc::msync(map, len, libc::MS_SYNC), 0);
            assert_eq!(libc::munmap(map, len), 0);
        }
    }
    let fresh = read_all(rel);
    assert_eq!(&fresh[..16], b"WRITTEN!MAPPED!!");
    assert_eq!(&fresh[16..], &old[16..]);
    // The earlier reader keeps the bytes it opened.
    let mut again = vec![0u8; old.len()];
    reader.read_exact_at(&mut again, 0).unwrap();
    assert!(again == old, "the earlier reader's bytes changed");
    drop(writer);
    drop(reader);
    assert_eq!(&read_all(rel)[..16], b"WRITTEN!MAPPED!!");

    // truncate(2) by path while a reader holds another layer file, then a new open.
    let rel = "amd64/bin/kubectl";
    let old = read_all(rel);
    let reader = std::fs::File::open(m.path(rel)).unwrap();
    reader.read_exact_at(&mut head, 0).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(m.path(rel))
        .unwrap()
        .set_len(10)
        .unwrap();
    assert_eq!(read_all(rel), old[..10].to_vec());
    assert_eq!(std::fs::metadata(m.path(rel)).unwrap().len(), 10);
    let mut again = vec![0u8; old.len()];
    reader.read_exact_at(&mut again, 0).unwrap();
    assert!(again == old, "the earlier reader's bytes changed");
    drop(reader);

    // A file renamed over a layer file that a reader holds.
    let rel = "amd64/bin/kubelet";
    let old = read_all(rel);
    let reader = std::fs::File::open(m.path(rel)).unwrap();
    reader.read_exact_at(&mut head, 0).unwrap();
    let new = m.path("amd64/bin/kubelet.new");
    std::fs::write(&new, b"replacement").unwrap();
    std::fs::rename(&new, m.path(rel)).unwrap();
    assert_eq!(read_all(rel), b"replacement".to_vec());
    let mut again = vec![0u8; old.len()];
    reader.read_exact_at(&mut again, 0).unwrap();
    assert!(again == old, "the earlier reader's bytes changed");
    drop(reader);

    // An append through a shell while a reader holds the file.
    let rel = "amd64/bin/kubeadm";
    let reader = std::fs::File::open(m.path(rel)).unwrap();
    reader.read_exact_at(&mut head, 0).unwrap();
    sh(&format!("printf tail >> '{}'", m.path(rel).display()));
    assert!(read_all(rel).ends_with(b"tail"));
    drop(reader);

    // A hard link made while a reader holds the layer's file: both names open, read
    // and append (the retried open must not find the old number through the link).
    let rel = "amd64/bin/conntrack";
    let old = read_all(rel);
    let reader = std::fs::File::open(m.path(rel)).unwrap();
    reader.read_exact_at(&mut head, 0).unwrap();
    std::fs::hard_link(m.path(rel), m.path("amd64/bin/conntrack.link")).unwrap();
    assert!(read_all(rel) == old);
    assert!(read_all("amd64/bin/conntrack.link") == old);
    sh(&format!(
        "printf more >> '{}'",
        m.path("amd64/bin/conntrack.link").display()
    ));
    assert!(read_all(rel).ends_with(b"more"));
    assert_eq!(
        std::fs::metadata(m.path(rel)).unwrap().len(),
        std::fs::metadata(m.path("amd64/bin/conntrack.link"))
            .unwrap()
            .len()
    );
    drop(reader);
    // A superseded number is not a fault: no error was counted.
    requests_by_op(&m);
    let out = run(&["status", "--json", m.dir.to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["mounts"][0]["counters"]["errors"], 0, "{json}");

    drop(m);
    assert_eq!(
        fingerprint(&cache),
        before,
        "a layer's file in the cache changed"
    );
}
