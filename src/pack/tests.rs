//! The tree without FUSE, checked against the real programs where there is one: GNU
//! tar's bytes for the same folder, and the tree of a planned layout.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::*;
use crate::layers::DiskTree;
use crate::layout::{plan, MountParams};
use crate::test_support::scratch;
use crate::tree::Branch;
use crate::versions::KubeVersion;

fn sh(script: &str) {
    let out = Command::new("bash").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A folder with every case of GNU tar's format: names and link targets around the
/// 100-byte field, folders whose trailing `/` crosses it, empty and block-sized files,
/// a file spanning records, special mode bits, non-UTF-8 names.
fn tricky_folder(dir: &Path) {
    let n = |k: usize| "n".repeat(k);
    let script = format!(
        r#"set -e; cd '{dir}'
        mkdir -p a/deep/er 'd{d97}' 'e{d98}'
        printf x > 'f{f97}'; printf xy > 'f{f98}'; printf xyz > 'f{f99}'; printf 1 > 'f{f150}'
        : > empty; head -c 512 /dev/zero > block; head -c 10241 /dev/urandom > records
        printf s > 'a/deep/er/{f90}'
        ln -s 'short' link1; ln -s '{t100}' link100; ln -s '{t101}' link101; ln -s '{t200}' 'l{f120}'
        printf u > setuid; chmod 4755 setuid; printf p > private; chmod 600 private
        printf q > "$(printf 'bad\xff\x01name')"
        chmod 1777 a/deep
        find . -exec touch -h -d '2024-02-03 04:05:06.789 UTC' {{}} +
        touch -d '1999-12-31 23:59:59 UTC' block"#,
        dir = dir.display(),
        d97 = n(96),
        d98 = n(97),
        f97 = n(96),
        f98 = n(97),
        f99 = n(98),
        f150 = n(149),
        f90 = n(90),
        f120 = n(119),
        t100 = "t".repeat(100),
        t101 = "t".repeat(101),
        t200 = "t".repeat(200),
    );
    sh(&script);
}

#[test]
fn tar_bytes_equal_gnu_tar_of_the_same_folder() {
    let dir = scratch("gnu");
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    tricky_folder(&tree);
    let ns = Namespace::new(vec![Branch {
        at: PathBuf::new(),
        layer: Arc::new(DiskTree::open(&tree).unwrap()),
    }]);
    let mut ours = Vec::new();
    let written = pack_tar(&ns, &mut ours).unwrap();
    assert_eq!(written, ours.len() as u64);
    assert_eq!(ours.len() % tar::RECORD as usize, 0);
    let gnu = Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-cf",
            "-",
            "-C",
        ])
        .arg(&tree)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        gnu.status.success(),
        "{}",
        String::from_utf8_lossy(&gnu.stderr)
    );
    if ours != gnu.stdout {
        let at = ours.iter().zip(&gnu.stdout).position(|(a, b)| a != b);
        panic!(
            "tar bytes differ: ours {} bytes, GNU tar {} bytes, first difference at {at:?}",
            ours.len(),
            gnu.stdout.len()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn numbers_too_big_for_octal_are_base_256() {
    let mut field = [0u8; 12];
    tar::number_field(&mut field, 0o77777777777);
    assert_eq!(&field, b"77777777777\0");
    tar::number_field(&mut field, 1 << 33);
    assert_eq!(field[0], 0x80);
    assert_eq!(&field[4..], &(1u64 << 33).to_be_bytes());
}

fn params() -> MountParams {
    let version = KubeVersion::parse("v1.23.4").unwrap();
    MountParams::rendering(version, None, "calico".into(), None)
}

#[test]
fn tree_listing_is_sorted_with_provenance() {
    let layout = plan(&params()).unwrap();
    let (entries, faults) = listing::entries(&layout.namespace).unwrap();
    assert!(faults.is_empty());
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort_by(|a, b| {
        // Tar order: a folder's content right after it, names compared per component.
        a.trim_end_matches('/')
            .split('/')
            .cmp(b.trim_end_matches('/').split('/'))
    });
    assert_eq!(paths, sorted);
    let kubeadm = entries
        .iter()
        .find(|e| e.path == "rootfs/etc/kubeadm.yml")
        .unwrap();
    assert_eq!(
        kubeadm.source,
        "rendered:embedded:contexts/rootfs/etc/kubeadm.yml.in"
    );
    assert_eq!(kubeadm.kind, "file");
    let rendered = walk::resolve(&layout.namespace, "./rootfs/etc/kubeadm.yml")
        .unwrap()
        .1;
    assert_eq!(kubeadm.size, rendered.entry.size);
    assert_eq!(kubeadm.source, rendered.provenance());
    assert!(entries
        .iter()
        .any(|e| e.path == "amd64/images/" && e.source == "synthetic"));
    let mut text = Vec::new();
    assert!(listing::write_text(&layout.namespace, true, &mut text)
        .unwrap()
        .is_empty());
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("drwxr-xr-x ") && l.contains(" rootfs/etc/\t")),
        "{text}"
    );
    assert!(walk::resolve(&layout.namespace, "rootfs/../etc").is_err());
    assert!(walk::resolve(&layout.namespace, "rootfs/nope")
        .unwrap_err()
        .contains("rootfs/nope"));
}

#[test]
fn image_root_follows_the_kubefile_copy_lines() {
    for generation in ["v0.9", "v0.8"] {
        let mut p = params();
        p.sealer = Some(generation.into());
        let layout = plan(&p).unwrap();
        let (path, node) = walk::resolve(&layout.namespace, "rootfs/Kubefile").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut content::ContentReader::open(&path, &node.entry).unwrap(),
            &mut text,
        )
        .unwrap();
        let kubefile = oci_layout::Kubefile::parse(&text);
        assert_eq!(kubefile.copies.len(), 3, "{text}");
        assert_eq!(
            kubefile
                .labels
                .get("cluster.alpha.sealer.io/container-runtime-type")
                .map(String::as_str),
            Some("docker")
        );
        let ns = Arc::new(layout.namespace);
        let image = oci_layout::image_namespace(&ns, &kubefile, "amd64").unwrap();
        let root = image.root().unwrap();
        let mut names: Vec<String> = image
            .children(Path::new(""), &root)
            .unwrap()
            .into_iter()
            .map(|c| String::from_utf8_lossy(c.name.as_bytes()).into_owned())
            .collect();
        names.sort();
        for want in [
            "Kubefile",
            "bin",
            "cri",
            "etc",
            "imageList",
            "images",
            "manifests",
            "registry",
            "scripts",
            "statics",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{generation}: {want} not in {names:?}"
            );
        }
        let list = image
            .resolve_path(Path::new("manifests/imageList"))
            .unwrap()
            .unwrap();
        assert_eq!(
            list.entry.size,
            ns.resolve_path(Path::new("rootfs/imageList"))
                .unwrap()
                .unwrap()
                .entry
                .size
        );
        assert!(image.resolve_path(Path::new("rootfs")).unwrap().is_none());
    }
}
