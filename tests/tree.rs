//! Acceptance tests of the read-only merged build tree, through the kernel.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{DirEntryExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{demo_cache, sh, walk, Mount};

const ROOTFS_COMMON: &[&str] = &[
    "rootfs/Kubefile",
    "rootfs/imageList",
    "rootfs/etc/10-kubeadm.conf",
    "rootfs/etc/Clusterfile",
    "rootfs/etc/kubeadm.yml",
    "rootfs/etc/kubeadm.yml.tmpl",
    "rootfs/etc/kubelet.service",
    "rootfs/etc/registry_config.yml",
    "rootfs/etc/registry.yml",
    "rootfs/registry",
    "rootfs/scripts/clean.sh",
    "rootfs/scripts/clean-kube.sh",
    "rootfs/scripts/init.sh",
    "rootfs/scripts/init-kube.sh",
    "rootfs/scripts/init-registry.sh",
    "rootfs/scripts/kubelet-pre-start.sh",
    "rootfs/statics/audit-policy.yml",
];

fn assert_tree(m: &Mount, extra: &[&str]) {
    for rel in ROOTFS_COMMON.iter().chain(extra) {
        assert!(m.path(rel).symlink_metadata().is_ok(), "{rel} missing");
    }
    for arch in ["amd64", "arm64"] {
        for bin in ["conntrack", "seautil", "kubeadm", "kubectl", "kubelet"] {
            let meta = std::fs::metadata(m.path(&format!("{arch}/bin/{bin}"))).unwrap();
            assert!(
                meta.permissions().mode() & 0o111 != 0,
                "{arch}/bin/{bin} not executable"
            );
        }
        assert!(m.path(&format!("{arch}/images")).is_dir());
    }
    let top: BTreeSet<_> = std::fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        top,
        ["amd64", "arm64", "rootfs"]
            .iter()
            .map(Into::into)
            .collect()
    );
    let all = walk(&m.dir);
    assert!(
        !all.iter().any(|p| p.ends_with(".in")),
        "a template leaked into the tree"
    );
    assert!(
        !all.iter()
            .any(|p| p.ends_with(".tar.gz") && p.contains("/bin/")),
        "a tarball shows in bin/"
    );
}

#[test]
fn docker_tree_matches_the_seed() {
    let m = Mount::new(&["--k8s", "v1.23.4"]);
    assert_tree(
        &m,
        &[
            "rootfs/etc/daemon.json",
            "rootfs/etc/docker.service",
            "rootfs/scripts/docker.sh",
            "amd64/cri/docker.tar.gz",
            "arm64/cri/docker.tar.gz",
        ],
    );
    assert!(!m.path("amd64/cri/lib64").exists());
    assert!(!m.path("rootfs/etc/dump-config.toml").exists());
    let kubeadm = m.read("rootfs/etc/kubeadm.yml");
    for line in [
        "apiVersion: kubeadm.k8s.io/v1beta3",
        "criSocket: /var/run/dockershim.sock",
        "kubernetesVersion: v1.23.4",
        "imageRepository: sea.hub:5000",
        "imageRepository: sea.hub:5000/coredns",
    ] {
        assert!(
            kubeadm.lines().any(|l| l.trim() == line),
            "kubeadm.yml lacks {line:?}:\n{kubeadm}"
        );
    }
    let tmpl = m.read("rootfs/etc/kubeadm.yml.tmpl");
    assert!(
        tmpl.contains(r#"{{or .RegistryURL "sea.hub:5000"}}"#),
        "{tmpl}"
    );
}

#[test]
fn containerd_tree_matches_the_seed() {
    let m = Mount::new(&["--k8s", "v1.24.0"]);
    assert_tree(
        &m,
        &[
            "rootfs/etc/dump-config.toml",
            "rootfs/scripts/containerd.sh",
            "amd64/cri/containerd.tar.gz",
            "amd64/cri/lib64/libseccomp.so.2.5.1",
        ],
    );
    let link = m.path("amd64/cri/lib64/libseccomp.so.2");
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("libseccomp.so.2.5.1")
    );
    assert_eq!(
        std::fs::read(&link).unwrap(),
        std::fs::read(m.path("amd64/cri/lib64/libseccomp.so.2.5.1")).unwrap()
    );
    let config = m.read("rootfs/etc/dump-config.toml");
    assert!(
        config.contains(r#"sandbox_image = "sea.hub:5000/pause:3.7""#),
        "{config}"
    );
    assert!(m
        .read("rootfs/etc/kubeadm.yml")
        .contains("criSocket: /run/containerd/containerd.sock"));
    assert!(!m.path("rootfs/etc/docker.service").exists());
}

/// Maps each file of the demo cache to where the mount shows it.
fn cache_files_in_mount(
    cache: &Path,
    version: &str,
    cri: &str,
) -> Vec<(std::path::PathBuf, String)> {
    let mut pairs = Vec::new();
    for arch in ["amd64", "arm64"] {
        for bin in ["kubeadm", "kubectl", "kubelet"] {
            pairs.push((
                cache.join(format!("kube/{version}/{arch}/{bin}")),
                format!("{arch}/bin/{bin}"),
            ));
        }
        for entry in std::fs::read_dir(cache.join(format!("oss/{arch}/bin"))).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if !name.ends_with(".tar.gz") {
                pairs.push((
                    cache.join(format!("oss/{arch}/bin/{name}")),
                    format!("{arch}/bin/{name}"),
                ));
            }
        }
        pairs.push((
            cache.join(format!("cri/{cri}/{arch}/{cri}.tar.gz")),
            format!("{arch}/cri/{cri}.tar.gz"),
        ));
    }
    for rel in walk(&cache.join("registry")) {
        let path = cache.join("registry").join(&rel);
        if path.is_file() {
            pairs.push((path, format!("rootfs/registry/{rel}")));
        }
    }
    pairs
}

#[test]
fn every_cached_file_reads_byte_for_byte() {
    let cache = demo_cache();
    for (version, cri) in [("v1.23.4", "docker"), ("v1.24.0", "containerd")] {
        let m = Mount::new(&["--k8s", version]);
        let pairs = cache_files_in_mount(cache, version, cri);
        assert!(pairs.len() > 20, "too few files checked: {}", pairs.len());
        for (backing, rel) in &pairs {
            let want = std::fs::read(backing).unwrap();
            let got = std::fs::read(m.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
            assert!(want == got, "{rel} differs from {}", backing.display());
            assert_eq!(
                std::fs::metadata(m.path(rel)).unwrap().len(),
                want.len() as u64,
                "{rel} size"
            );
        }
        // The same through sha256sum, as users check it.
        let sums = |root: &Path, rels: Vec<String>| {
            sh(&format!(
                "cd '{}' && sha256sum {}",
                root.display(),
                rels.join(" ")
            ))
        };
        let backing_rel: Vec<_> = pairs
            .iter()
            .map(|(b, _)| b.strip_prefix(cache).unwrap().display().to_string())
            .collect();
        let mount_rel: Vec<_> = pairs.iter().map(|(_, r)| r.clone()).collect();
        let hashes = |out: String| {
            out.lines()
                .map(|l| l.split(' ').next().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            hashes(sums(cache, backing_rel)),
            hashes(sums(&m.dir, mount_rel))
        );
    }
}

#[test]
fn stat_sizes_are_exact_and_tar_packs_the_tree() {
    let m = Mount::new(&["--k8s", "v1.23.4"]);
    let all = walk(&m.dir);
    for rel in &all {
        let path = m.path(rel);
        let meta = path.symlink_metadata().unwrap();
        if meta.is_file() {
            assert_eq!(
                std::fs::read(&path).unwrap().len() as u64,
                meta.len(),
                "{rel}"
            );
        }
    }
    // tar reads by st_size and warns when a file changes while read: it must not.
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; tar -cf - -C '{}' . | tar -tf -",
            m.dir.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "tar complained: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != ".")
        .collect();
    assert_eq!(listed, all.into_iter().collect::<BTreeSet<_>>());
    // `find` agrees with std's walk, and du answers.
    let found = sh(&format!(
        "cd '{}' && find . -mindepth 1 | wc -l",
        m.dir.display()
    ));
    assert_eq!(found.trim().parse::<usize>().unwrap(), listed.len());
    sh(&format!(
        "du -s '{}' && stat -f '{}'",
        m.dir.display(),
        m.dir.display()
    ));
}

#[test]
fn inodes_are_stable_and_match_readdir() {
    let m = Mount::new(&["--k8s", "v1.23.4"]);
    for dir in ["rootfs/etc", "amd64/bin", "rootfs"] {
        for entry in std::fs::read_dir(m.path(dir)).unwrap() {
            let entry = entry.unwrap();
            let st = entry.path().symlink_metadata().unwrap();
            assert_eq!(entry.ino(), st.ino(), "{:?}: d_ino != st_ino", entry.path());
            assert_eq!(
                std::fs::symlink_metadata(entry.path()).unwrap().ino(),
                st.ino()
            );
        }
    }
    let a = std::fs::metadata(m.path("rootfs/etc/kubeadm.yml")).unwrap();
    let b = std::fs::metadata(m.path("rootfs/etc/kubelet.service")).unwrap();
    assert_ne!(a.ino(), b.ino());
    // Rendered files keep a stable mtime (the template's).
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(
        std::fs::metadata(m.path("rootfs/etc/kubeadm.yml"))
            .unwrap()
            .mtime(),
        a.mtime()
    );
}

#[test]
fn provenance_is_get_only_and_read_only_refuses_writes() {
    let m = Mount::new(&["--k8s", "v1.23.4", "--read-only"]);
    let cache = demo_cache();
    let source = |rel: &str| {
        sh(&format!(
            "getfattr --only-values -n user.rootfs.source '{}'",
            m.path(rel).display()
        ))
    };
    assert_eq!(
        source("amd64/bin/kubeadm"),
        cache
            .join("kube/v1.23.4/amd64/kubeadm")
            .display()
            .to_string()
    );
    assert_eq!(
        source("rootfs/etc/kubeadm.yml"),
        "rendered:embedded:contexts/rootfs/etc/kubeadm.yml.in"
    );
    assert_eq!(
        source("rootfs/etc/kubelet.service"),
        "embedded:contexts/rootfs/etc/kubelet.service"
    );
    // listxattr does not list it, so `getfattr -d` (and tar --xattrs) sees nothing.
    assert_eq!(
        sh(&format!(
            "getfattr -d -m - '{}'",
            m.path("amd64/bin/kubeadm").display()
        ))
        .trim(),
        ""
    );

    let erofs = Some(libc::EROFS);
    assert_eq!(
        std::fs::write(m.path("rootfs/etc/kubeadm.yml"), b"x")
            .unwrap_err()
            .raw_os_error(),
        erofs
    );
    assert_eq!(
        std::fs::write(m.path("rootfs/new"), b"x")
            .unwrap_err()
            .raw_os_error(),
        erofs
    );
    assert_eq!(
        std::fs::create_dir(m.path("rootfs/newdir"))
            .unwrap_err()
            .raw_os_error(),
        erofs
    );
    assert_eq!(
        std::fs::remove_file(m.path("rootfs/Kubefile"))
            .unwrap_err()
            .raw_os_error(),
        erofs
    );
    let kubeadm = std::fs::read(cache.join("kube/v1.23.4/amd64/kubeadm")).unwrap();
    assert_eq!(
        std::fs::read(m.path("amd64/bin/kubeadm")).unwrap(),
        kubeadm,
        "a refused write changed a file"
    );
}

#[test]
fn binaries_run_from_the_mount() {
    let m = Mount::new(&["--k8s", "v1.23.4"]);
    let out = std::process::Command::new(m.path("amd64/bin/kubeadm"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kubeadm v1.23.4"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn allow_missing_mounts_without_the_kube_binaries() {
    let cache = common::scratch("partial-cache");
    std::fs::create_dir_all(cache.join("oss/amd64/bin")).unwrap();
    std::fs::write(cache.join("oss/amd64/bin/conntrack"), b"c").unwrap();
    let refused = common::run(&[
        common::scratch("mp").to_str().unwrap(),
        "--k8s",
        "v1.23.4",
        "--arch",
        "amd64",
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    // One line naming what is missing, then the command that fills it, on its own line.
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].contains("kube/v1.23.4/amd64/kubeadm")
            && lines[0].contains("cri/docker/amd64/registry.tar.gz"),
        "{stderr}"
    );
    assert_eq!(
        lines[1],
        format!(
            "rootfs-mount fetch --k8s v1.23.4 --cri docker --arch amd64 --cache {}",
            cache.display()
        )
    );
    let m = Mount::with_cache(
        &cache,
        &["--k8s", "v1.23.4", "--arch", "amd64", "--allow-missing"],
    );
    let names: Vec<_> = std::fs::read_dir(m.path("amd64/bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["conntrack"]);
    assert!(m.path("amd64/cri").is_dir() && m.path("rootfs/registry").is_dir());
    assert!(!m.path("arm64").exists());
}
