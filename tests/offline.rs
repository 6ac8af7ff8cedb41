//! The tree without FUSE (`render`, `tree`, `pack`, `check`), run the way a CI container
//! runs them: as the unprivileged user 65534 with no capabilities, in a private mount
//! namespace whose `/dev` is a tmpfs holding only `/dev/null`, so there is no
//! `/dev/fuse` at all. (`unshare --user --map-user=65534` would not do: it maps the
//! files root owns to the caller, who could then write them; `setpriv` to a real uid
//! is a real non-root user.) Each result is checked against a real read-only mount of
//! the same parameters, read by the real tools: GNU tar, getfattr, skopeo, buildah.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::buildah::Buildah;
use common::registry::{skopeo, Registry};
use common::{demo_cache, scratch, sh, Mount, BIN};

const NOBODY: &str = "65534";

/// Runs rootfs-mount with `args` as user 65534 in a mount namespace without /dev/fuse.
fn offline(args: &[&str]) -> Output {
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            SANDBOX,
            "sh",
        ])
        .arg(BIN)
        .args(args)
        .output()
        .expect("run unshare")
}

/// Hides /dev/fuse (a tmpfs over /dev with only /dev/null) and runs "$@" as 65534.
const SANDBOX: &str =
    "set -e; mount -t tmpfs -o mode=0755 tmpfs /dev; mknod -m 666 /dev/null c 1 3; \
     exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all -- \"$@\"";

fn ok(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn cache_str() -> &'static str {
    demo_cache().to_str().expect("utf-8 cache path")
}

/// A scratch folder user 65534 may write.
fn writable(name: &str) -> PathBuf {
    let dir = scratch(name);
    sh(&format!("chown {NOBODY}:{NOBODY} '{}'", dir.display()));
    dir
}

fn sha256(path: &Path) -> String {
    sh(&format!("sha256sum < '{}'", path.display()))
}

#[test]
fn the_sandbox_is_non_root_without_dev_fuse() {
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            SANDBOX,
            "sh",
        ])
        .args([
            "sh",
            "-c",
            "id -u; test -e /dev/fuse && echo fuse || echo no-fuse",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ok(out, "sandbox")),
        "65534\nno-fuse\n"
    );
    // And a mount really is impossible there.
    let dir = writable("no-fuse-mnt");
    let out = offline(&[
        dir.to_str().unwrap(),
        "--k8s",
        "v1.23.4",
        "--cache",
        cache_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("/dev/fuse"),
        "refused for another reason: {stderr}"
    );
}

#[test]
fn render_prints_the_files_a_mount_shows() {
    let m = Mount::new(&["--k8s", "v1.24.0", "--read-only"]);
    let files = [
        "rootfs/etc/kubeadm.yml",
        "rootfs/imageList",
        "amd64/bin/crictl",
    ];
    let mut args = vec!["render", "--k8s", "v1.24.0", "--cache", cache_str()];
    args.extend(files);
    let got = ok(offline(&args), "render");
    let mut want = Vec::new();
    for f in files {
        want.extend(std::fs::read(m.path(f)).unwrap());
    }
    assert_eq!(got, want);
    let out = offline(&[
        "render",
        "--k8s",
        "v1.24.0",
        "--cache",
        cache_str(),
        "rootfs/imageList",
        "rootfs/etc/nope.yml",
    ]);
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "nothing is printed when a path is unknown"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("rootfs/etc/nope.yml"), "{err}");
    let out = offline(&[
        "render",
        "--k8s",
        "v1.24.0",
        "--cache",
        cache_str(),
        "rootfs/etc",
    ]);
    assert!(!out.status.success());
}

#[test]
fn tree_lists_the_mount_with_its_provenance() {
    let m = Mount::new(&["--k8s", "v1.24.0", "--read-only"]);
    let json = ok(
        offline(&["tree", "--k8s", "v1.24.0", "--cache", cache_str(), "--json"]),
        "tree --json",
    );
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
    let listed: Vec<String> = entries
        .iter()
        .map(|e| {
            e["path"]
                .as_str()
                .unwrap()
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    let found: Vec<String> = sh(&format!(
        "cd '{}' && find . -mindepth 1 | sort",
        m.dir.display()
    ))
    .lines()
    .map(|l| l.trim_start_matches("./").to_string())
    .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, found, "tree lists what find sees in the mount");
    use std::os::unix::fs::MetadataExt;
    for e in &entries {
        let path = m.path(e["path"].as_str().unwrap());
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            e["mode"],
            format!("{:04o}", meta.mode() & 0o7777),
            "{}",
            path.display()
        );
        assert_eq!(e["mtime"], meta.mtime(), "{}", path.display());
        if meta.is_file() {
            assert_eq!(e["size"], meta.len(), "{}", path.display());
        }
        if meta.file_type().is_symlink() {
            continue; // the kernel keeps user.* attributes off symlinks
        }
        let xattr = sh(&format!(
            "getfattr -h --only-values -n user.rootfs.source '{}'",
            path.display()
        ));
        assert_eq!(e["source"], xattr, "{}", path.display());
    }
    let long = String::from_utf8(ok(
        offline(&["tree", "--k8s", "v1.24.0", "--cache", cache_str(), "--long"]),
        "tree --long",
    ))
    .unwrap();
    assert_eq!(long.lines().count(), entries.len());
    assert!(long.lines().any(|l| l.starts_with("lrwxrwxrwx ")
        && l.contains("amd64/cri/lib64/libseccomp.so.2 -> libseccomp.so.2.5.1\t")));
}

/// `pack` as user 65534 against GNU tar of a read-only mount with the same parameters.
fn pack_equals_tar_of_the_mount(args: &[&str]) {
    let m = Mount::new(&[args, &["--read-only"]].concat());
    let out = writable("pack-out");
    let mounted = scratch("pack-mount").join("mount.tar");
    sh(&format!(
        "tar --sort=name --owner=0 --group=0 --numeric-owner -cf '{}' -C '{}' .",
        mounted.display(),
        m.dir.display()
    ));
    let file = out.join("build.tar");
    let mut pack = vec!["pack", "--cache", cache_str(), "-o", file.to_str().unwrap()];
    pack.extend(args);
    ok(offline(&pack), "pack -o FILE");
    assert_eq!(
        sha256(&file),
        sha256(&mounted),
        "pack {args:?} differs from tar of the mount"
    );
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["build.tar"], "no temporary file is left");
    // To stdout, the same bytes.
    let mut pack = vec!["pack", "--cache", cache_str(), "-o", "-"];
    pack.extend(args);
    let stdout = ok(offline(&pack), "pack -o -");
    assert_eq!(stdout, std::fs::read(&mounted).unwrap());
}

#[test]
fn pack_equals_tar_of_a_mount_v1_23_4_docker() {
    pack_equals_tar_of_the_mount(&["--k8s", "v1.23.4"]);
}

#[test]
fn pack_equals_tar_of_a_mount_v1_24_0_containerd_arm64_v0_8() {
    pack_equals_tar_of_the_mount(&[
        "--k8s", "v1.24.0", "--arch", "arm64", "--sealer", "v0.8", "--cni", "none",
    ]);
}

#[test]
fn pack_refuses_a_missing_cache_and_writes_nothing() {
    let out = writable("pack-missing");
    let empty = writable("empty-cache");
    let file = out.join("build.tar");
    let r = offline(&[
        "pack",
        "--k8s",
        "v1.23.4",
        "--cache",
        empty.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("kube/v1.23.4/amd64/kubeadm"));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    // An output inside the cache would be read back into itself.
    let cache = common::own_cache();
    let inside = cache.join("registry/build.tar");
    let r = Command::new(BIN)
        .args([
            "pack",
            "--k8s",
            "v1.23.4",
            "--cache",
            cache.to_str().unwrap(),
            "-o",
        ])
        .arg(&inside)
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("which the tree is read from"));
    assert!(!inside.exists());
}

#[test]
fn pack_fails_on_a_corrupt_archive_and_leaves_no_file() {
    let cache = common::own_cache();
    let gz = cache.join("cri/docker/arm64/registry.tar.gz");
    let len = std::fs::metadata(&gz).unwrap().len();
    // Cut inside the deflate stream: the size is unknown, the entry cannot be packed.
    sh(&format!("truncate -s {} '{}'", len / 2, gz.display()));
    let out = writable("pack-corrupt");
    let file = out.join("build.tar");
    let r = offline(&[
        "pack",
        "--k8s",
        "v1.23.4",
        "--cache",
        cache.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("registry.tar.gz"), "{err}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "nothing half-written is left"
    );
    // tree lists the rest and names the one entry it could not read.
    let t = offline(&[
        "tree",
        "--k8s",
        "v1.23.4",
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert!(!t.status.success());
    let listed = String::from_utf8_lossy(&t.stdout);
    assert!(
        listed.lines().any(|l| l == "amd64/images/registry.tar"),
        "{listed}"
    );
    assert!(
        !listed.lines().any(|l| l == "arm64/images/registry.tar"),
        "{listed}"
    );
    assert!(
        listed.lines().any(|l| l == "rootfs/etc/kubeadm.yml"),
        "{listed}"
    );
    let err = String::from_utf8_lossy(&t.stderr);
    assert!(err.contains("arm64/images/registry.tar: "), "{err}");
    // The other arch packs.
    let r = offline(&[
        "pack",
        "--k8s",
        "v1.23.4",
        "--arch",
        "amd64",
        "--cache",
        cache.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
fn pack_oci_is_read_by_skopeo_and_buildah() {
    let m = Mount::new(&["--k8s", "v1.23.4", "--read-only"]);
    let out = writable("oci-out");
    let layout = out.join("layout");
    ok(
        offline(&[
            "pack",
            "--k8s",
            "v1.23.4",
            "--cache",
            cache_str(),
            "--format",
            "oci",
            "-o",
            layout.to_str().unwrap(),
        ]),
        "pack --format oci",
    );
    let twice = out.join("twice");
    ok(
        offline(&[
            "pack",
            "--k8s",
            "v1.23.4",
            "--cache",
            cache_str(),
            "--format",
            "oci",
            "-o",
            twice.to_str().unwrap(),
        ]),
        "pack --format oci again",
    );
    assert_eq!(
        std::fs::read(layout.join("index.json")).unwrap(),
        std::fs::read(twice.join("index.json")).unwrap(),
        "the same parameters give the same image digests"
    );
    let again = offline(&[
        "pack",
        "--k8s",
        "v1.23.4",
        "--cache",
        cache_str(),
        "--format",
        "oci",
        "-o",
        layout.to_str().unwrap(),
    ]);
    assert!(
        !again.status.success(),
        "an existing layout is not overwritten"
    );
    let buildah = Buildah::new();
    for arch in ["amd64", "arm64"] {
        let reference = format!("oci:{}:{arch}", layout.display());
        let info: serde_json::Value =
            serde_json::from_str(&skopeo(&["inspect", &reference])).unwrap();
        assert_eq!(info["Architecture"], arch);
        assert_eq!(info["Os"], "linux");
        assert_eq!(
            info["Labels"]["cluster.alpha.sealer.io/container-runtime-type"],
            "docker"
        );
        assert_eq!(
            info["Labels"]["cluster.alpha.sealer.io/cluster-runtime-version"],
            "v1.23.4"
        );
        let container = buildah.run(&["from", "--name", &format!("oci-{arch}"), &reference]);
        let root = PathBuf::from(buildah.run(&["mount", &container]));
        for (image, tree) in [
            ("bin/kubeadm".to_string(), format!("{arch}/bin/kubeadm")),
            ("bin/crictl".into(), format!("{arch}/bin/crictl")),
            (
                "images/registry.tar".into(),
                format!("{arch}/images/registry.tar"),
            ),
            (
                "cri/docker.tar.gz".into(),
                format!("{arch}/cri/docker.tar.gz"),
            ),
            ("etc/kubeadm.yml".into(), "rootfs/etc/kubeadm.yml".into()),
            ("manifests/imageList".into(), "rootfs/imageList".into()),
            ("Kubefile".into(), "rootfs/Kubefile".into()),
        ] {
            assert_eq!(
                std::fs::read(root.join(&image)).unwrap(),
                std::fs::read(m.path(&tree)).unwrap(),
                "{arch}: {image}"
            );
        }
        assert!(root.join("scripts/init-kube.sh").is_file());
        assert!(root.join("registry/docker/registry/v2").is_dir());
        assert!(!root.join("rootfs").exists() && !root.join(arch).exists());
        buildah.run(&["umount", &container]);
    }
}

/// Registry data holding every image of `version`'s image list (the demo cache's pause
/// image under each name), served by the distribution registry to prove it is real.
fn full_registry(version: &str) -> PathBuf {
    let list = String::from_utf8(ok(
        offline(&[
            "render",
            "--k8s",
            version,
            "--cache",
            cache_str(),
            "rootfs/imageList",
        ]),
        "render imageList",
    ))
    .unwrap();
    let data = scratch("registry-data");
    sh(&format!(
        "cp -a '{}/registry/.' '{}/'",
        demo_cache().display(),
        data.display()
    ));
    let repos = data.join("docker/registry/v2/repositories");
    for image in list.lines().filter(|l| !l.trim().is_empty()) {
        let (name, tag) = image.rsplit_once(':').unwrap();
        let mut parts: Vec<&str> = name.split('/').collect();
        if parts.len() > 1 && parts[0].contains('.') {
            parts.remove(0);
        }
        let repo = repos.join(parts.join("/"));
        if repo.join("_manifests/tags").join(tag).exists() {
            continue;
        }
        sh(&format!(
            "mkdir -p '{r}' && cp -a '{p}/_layers' '{p}/_manifests' '{r}/' && \
             rm -rf '{r}/_manifests/tags' && mkdir -p '{r}/_manifests/tags' && \
             cp -a '{p}/_manifests/tags/3.6' '{r}/_manifests/tags/{tag}'",
            r = repo.display(),
            p = repos.join("pause").display(),
        ));
    }
    data
}

#[test]
fn check_passes_on_a_full_registry_and_names_what_is_missing() {
    let data = full_registry("v1.23.4");
    let registry = Registry::start(&data, true);
    let served = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--override-arch",
        "arm64",
        &format!("docker://{}/calico/node:v3.22.1", registry.host()),
    ]);
    assert!(served.contains("\"Architecture\": \"arm64\""), "{served}");
    drop(registry);
    let data_arg = data.to_str().unwrap();
    let check = |extra: &[&str]| {
        let mut args = vec![
            "check",
            "--k8s",
            "v1.23.4",
            "--cache",
            cache_str(),
            "--registry-data",
            data_arg,
        ];
        args.extend(extra);
        offline(&args)
    };
    let good = check(&[]);
    let text = String::from_utf8_lossy(&good.stdout).into_owned();
    assert!(
        good.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(
        text.starts_with("ok: 30 image manifests complete"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&ok(check(&["--json"]), "check --json")).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["images"].as_array().unwrap().len(), 30);

    // One layer blob gone: every image that uses it fails, naming the blob.
    let manifest: serde_json::Value = serde_json::from_str(&sh(&format!(
        "cd '{}/docker/registry/v2' && d=$(cat repositories/pause/_manifests/tags/3.6/current/link) && \
         m=$(jq -r '.manifests[] | select(.platform.architecture==\"arm64\") | .digest' blobs/sha256/${{d:7:2}}/${{d:7}}/data) && \
         cat blobs/sha256/${{m:7:2}}/${{m:7}}/data",
        data.display()
    )))
    .unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let hex = &layer[7..];
    std::fs::remove_file(data.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    )))
    .unwrap();
    let bad = check(&[]);
    assert!(!bad.status.success());
    let text = String::from_utf8_lossy(&bad.stdout).into_owned();
    assert!(
        text.contains(&format!("missing [arm64]: registry.k8s.io/kube-apiserver:v1.23.4 (kube-apiserver): blob {layer} is missing")),
        "{text}"
    );
    assert!(!text.contains("missing [amd64]"), "{text}");
    assert!(
        text.contains(
            "fix: rootfs-mount fetch --k8s v1.23.4 --cri docker --arch amd64,arm64 --cache"
        ),
        "{text}"
    );

    // A repository gone: named by its image.
    std::fs::remove_dir_all(data.join("docker/registry/v2/repositories/sealerio/lvscare")).unwrap();
    let text = String::from_utf8_lossy(&check(&["--arch", "amd64"]).stdout).into_owned();
    assert!(
        text.contains("missing [amd64]: docker.io/sealerio/lvscare:v1.1.3-beta.8 (sealerio/lvscare): repository sealerio/lvscare is not in the registry data"),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("missing")).count(),
        1,
        "{text}"
    );
}

#[test]
fn check_names_missing_cache_entries_with_the_fetch_command() {
    let cache = common::own_cache();
    std::fs::remove_file(cache.join("kube/v1.23.4/arm64/kubelet")).unwrap();
    std::fs::remove_file(cache.join("cri/docker/amd64/docker.tar.gz")).unwrap();
    // A containerd bundle under docker's name: the label and the cache disagree.
    std::fs::copy(
        cache.join("cri/containerd/arm64/containerd.tar.gz"),
        cache.join("cri/docker/arm64/docker.tar.gz"),
    )
    .unwrap();
    let out = offline(&[
        "check",
        "--k8s",
        "v1.23.4",
        "--cache",
        cache.to_str().unwrap(),
        "--json",
    ]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut cache_problems: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "cache")
        .map(|p| p["subject"].as_str().unwrap())
        .collect();
    cache_problems.sort();
    assert_eq!(
        cache_problems,
        [
            "cri/docker/amd64/docker.tar.gz",
            "kube/v1.23.4/arm64/kubelet"
        ]
    );
    assert_eq!(
        report["fix"],
        format!(
            "rootfs-mount fetch --k8s v1.23.4 --cri docker --arch amd64,arm64 --cache {} --images",
            cache.display()
        )
    );
    let label: Vec<&serde_json::Value> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "label")
        .collect();
    assert_eq!(label.len(), 1, "{label:?}");
    assert_eq!(label[0]["arch"], "arm64");
    assert_eq!(
        label[0]["message"],
        "the Kubefile names docker, but the cache's cri/docker/arm64/docker.tar.gz holds no dockerd"
    );
    // The demo registry lacks most images: they are listed too.
    assert!(report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["subject"] == "registry.k8s.io/kube-apiserver:v1.23.4"));
}
