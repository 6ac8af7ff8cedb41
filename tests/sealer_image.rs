//! The ClusterImage as sealer's own tools see it: `buildah` (the builder sealer v0.9+
//! embeds) builds an image from the mount with the rendered Kubefile, the image's entry
//! scripts run as sealer runs them (in a sandbox that keeps the host untouched), and the
//! distribution registry serves `rootfs/registry` from the mount to `skopeo`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::buildah::Buildah;
use common::registry::{skopeo, Registry};
use common::{demo_cache, scratch, Mount};

/// The image built by buildah from a mount, for one arch, and its root on disk.
struct BuiltImage {
    root: PathBuf,
    labels: serde_yaml::Value,
}

/// `buildah bud` with the mount as the build context and its rendered Kubefile. sealer
/// defines `ARCH` itself; plain buildah needs it declared after `FROM`.
fn build(buildah: &Buildah, m: &Mount, arch: &str) -> BuiltImage {
    let kubefile = m.read("rootfs/Kubefile");
    let with_arg = kubefile.replacen("FROM scratch\n", "FROM scratch\nARG ARCH\n", 1);
    assert_ne!(
        with_arg, kubefile,
        "the Kubefile has no `FROM scratch` line"
    );
    let file = buildah.root.join(format!("Kubefile.{arch}"));
    std::fs::write(&file, with_arg).unwrap();
    let tag = format!("localhost/base-{arch}:test");
    buildah.run(&[
        "bud",
        "--quiet",
        "--platform",
        &format!("linux/{arch}"),
        "--build-arg",
        &format!("ARCH={arch}"),
        "-f",
        file.to_str().unwrap(),
        "-t",
        &tag,
        m.dir.to_str().unwrap(),
    ]);
    let inspect: serde_yaml::Value =
        serde_yaml::from_str(&buildah.run(&["inspect", "--type", "image", &tag])).unwrap();
    let labels = inspect["OCIv1"]["config"]["Labels"].clone();
    let container = buildah.run(&["from", "--name", &format!("c-{arch}"), &tag]);
    let root = PathBuf::from(buildah.run(&["mount", &container]));
    BuiltImage { root, labels }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn gunzip(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The image root as sealer v0.9+ copies it to a node: what the Kubefile's COPY lines put
/// there, checked against the cache and the mount.
fn check_image_root(image: &BuiltImage, m: &Mount, version: &str, cri: &str, arch: &str) {
    let root = &image.root;
    let cache = demo_cache();
    let manifests = root.join("manifests");
    assert!(manifests.is_dir(), "manifests/ is not a folder");
    assert_eq!(
        read(&manifests.join("imageList")),
        read(&m.path("rootfs/imageList")),
        "manifests/imageList"
    );
    for script in [
        "init.sh".to_string(),
        "clean.sh".into(),
        format!("{cri}.sh"),
        format!("uninstall-{cri}.sh"),
        "init-registry.sh".into(),
        "init-kube.sh".into(),
    ] {
        assert!(
            root.join("scripts").join(&script).is_file(),
            "scripts/{script} missing from the image"
        );
    }
    for bin in ["kubeadm", "kubectl", "kubelet"] {
        assert_eq!(
            read(&root.join("bin").join(bin)),
            read(&cache.join(format!("kube/{version}/{arch}/{bin}"))),
            "bin/{bin}"
        );
    }
    for member in ["crictl", "nerdctl", "conntrack", "seautil"] {
        assert!(root.join("bin").join(member).is_file(), "bin/{member}");
    }
    assert_eq!(
        read(&root.join("images/registry.tar")),
        gunzip(&cache.join(format!("cri/{cri}/{arch}/registry.tar.gz"))),
        "images/registry.tar"
    );
    assert_eq!(
        read(&root.join(format!("cri/{cri}.tar.gz"))),
        read(&cache.join(format!("cri/{cri}/{arch}/{cri}.tar.gz"))),
        "cri/{cri}.tar.gz"
    );
    for folder in ["etc", "statics", "registry"] {
        assert!(root.join(folder).is_dir(), "{folder}/ missing");
    }
    assert!(
        !root.join("rootfs").exists(),
        "a rootfs/ folder in the image"
    );
    assert!(!root.join(arch).exists(), "an {arch}/ folder in the image");
    let label = |key: &str| {
        image.labels[format!("cluster.alpha.sealer.io/{key}")]
            .as_str()
            .unwrap_or_else(|| panic!("label {key} missing: {:?}", image.labels))
            .to_string()
    };
    assert_eq!(label("cluster-runtime-version"), version);
    assert_eq!(label("cluster-runtime-type"), "kubernetes");
    assert_eq!(label("container-runtime-type"), cri);
    assert!(!label("container-runtime-version").is_empty());
}

/// Runs `command` in the image root's `dir` inside the sandbox (tests/sandbox/run.sh),
/// with `state` kept between calls; returns the calls made to the host stubs so far.
fn in_sandbox(state: &Path, root: &Path, dir: &str, command: &[&str]) -> String {
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash"])
        .arg(common::repo().join("tests/sandbox/run.sh"))
        .arg(state)
        .arg(root)
        .arg(dir)
        .args(command)
        .output()
        .expect("run unshare");
    assert!(
        out.status.success(),
        "{command:?} in the sandbox failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(state.join("calls.log")).unwrap_or_default()
}

/// A file the sandboxed scripts left on the "host", or None.
fn installed(state: &Path, path: &str) -> Option<Vec<u8>> {
    let p = state.join("upper").join(path.trim_start_matches('/'));
    std::fs::symlink_metadata(&p)
        .ok()
        .filter(|m| m.is_file())
        .map(|_| read(&p))
}

/// How one sealer generation calls the entry scripts on a node, from the image root (the
/// node's /var/lib/sealer/data/<cluster>/rootfs).
#[derive(Clone, Copy, PartialEq)]
enum Sealer {
    /// v0.9.2 to v0.11.0: `bash <rootfs>/scripts/<cri>.sh`; `cd <rootfs>/scripts && export
    /// RegistryURL=... && bash init-kube.sh`; `cd <rootfs>/scripts && bash init-registry.sh
    /// PORT DATADIR DOMAIN`; on delete `bash <rootfs>/scripts/uninstall-<cri>.sh`.
    V09,
    /// v0.8.6: `cd <rootfs> && chmod +x scripts/* && cd scripts && bash init.sh
    /// /var/lib/docker DOMAIN PORT`; `cd <rootfs>/scripts && ./init-registry.sh PORT DATADIR
    /// DOMAIN`; on delete `<rootfs>/scripts/clean.sh`.
    V08,
}

/// Runs the entry points as `sealer` calls them, in the sandbox, and checks what each
/// installed and that the delete entry point removes it again.
fn run_entry_points(image: &BuiltImage, cri: &str, sealer: Sealer) {
    let state = scratch("sandbox");
    let root = &image.root;
    let root_str = root.to_str().unwrap();
    let calls = match sealer {
        Sealer::V09 => {
            in_sandbox(
                &state,
                root,
                ".",
                &["bash", &format!("{root_str}/scripts/{cri}.sh")],
            );
            in_sandbox(
                &state,
                root,
                "scripts",
                &["env", "RegistryURL=sea.hub:5000", "bash", "init-kube.sh"],
            )
        }
        Sealer::V08 => in_sandbox(
            &state,
            root,
            "scripts",
            &["bash", "init.sh", "/var/lib/docker", "sea.hub", "5000"],
        ),
    };
    for bin in [
        "kubeadm",
        "kubectl",
        "kubelet",
        "crictl",
        "nerdctl",
        "conntrack",
    ] {
        assert_eq!(
            installed(&state, &format!("usr/bin/{bin}")).as_deref(),
            Some(read(&root.join("bin").join(bin)).as_slice()),
            "init-kube.sh did not install bin/{bin}"
        );
    }
    assert!(installed(&state, "etc/systemd/system/kubelet.service").is_some());
    assert!(installed(
        &state,
        "etc/systemd/system/kubelet.service.d/10-kubeadm.conf"
    )
    .is_some());
    assert!(
        calls.contains("systemctl enable kubelet.service"),
        "{calls}"
    );
    match cri {
        "docker" => {
            assert!(installed(&state, "usr/bin/dockerd").is_some(), "no dockerd");
            let daemon = installed(&state, "etc/docker/daemon.json").expect("daemon.json");
            assert!(String::from_utf8_lossy(&daemon).contains("sea.hub:5000"));
            assert!(
                calls.contains("systemctl restart docker.service"),
                "{calls}"
            );
        }
        _ => {
            assert!(
                installed(&state, "usr/local/bin/containerd").is_some(),
                "no containerd"
            );
            let config =
                installed(&state, "etc/containerd/config.toml").expect("containerd config");
            assert_eq!(config, read(&root.join("etc/dump-config.toml")));
            let hosts = installed(&state, "etc/containerd/certs.d/sea.hub:5000/hosts.toml")
                .expect("hosts.toml of the image's registry");
            assert!(String::from_utf8_lossy(&hosts).contains("server = \"https://sea.hub:5000\""));
            assert!(
                calls.contains("systemctl restart containerd.service"),
                "{calls}"
            );
        }
    }
    let data = format!("{root_str}/registry");
    let registry: Vec<&str> = match sealer {
        Sealer::V09 => vec!["bash", "init-registry.sh", "5000", &data, "sea.hub"],
        Sealer::V08 => vec!["./init-registry.sh", "5000", &data, "sea.hub"],
    };
    let calls = in_sandbox(&state, root, "scripts", &registry);
    let cli = if cri == "docker" { "docker" } else { "nerdctl" };
    let run_line = calls
        .lines()
        .find(|l| l.starts_with(&format!("{cli} run ")))
        .unwrap_or_else(|| panic!("init-registry.sh started no registry: {calls}"));
    assert!(
        run_line.contains(&format!("{data}:/var/lib/registry"))
            && run_line.contains("REGISTRY_HTTP_ADDR=0.0.0.0:5000")
            && run_line.ends_with("registry:2.8.1"),
        "{run_line}"
    );

    let mut gone = vec![
        "usr/bin/dockerd",
        "usr/local/bin/containerd",
        "etc/containerd/config.toml",
        "etc/docker/daemon.json",
    ];
    match sealer {
        // sealer v0.9+ resets the Kubernetes node itself (kubeadm reset, rm of the kube
        // binaries: pkg/runtime/kubernetes/utils.go); the image undoes its CRI.
        Sealer::V09 => {
            in_sandbox(
                &state,
                root,
                ".",
                &["bash", &format!("{root_str}/scripts/uninstall-{cri}.sh")],
            );
        }
        Sealer::V08 => {
            in_sandbox(
                &state,
                root,
                ".",
                &[&format!("{root_str}/scripts/clean.sh")],
            );
            gone.extend([
                "usr/bin/kubeadm",
                "usr/bin/kubelet",
                "etc/systemd/system/kubelet.service",
            ]);
        }
    }
    for path in gone {
        assert!(
            installed(&state, path).is_none(),
            "{path} is still installed after the delete entry point"
        );
    }
    let _ = std::fs::remove_dir_all(&state);
}

fn build_and_deploy(version: &str, cri: &str) {
    let m = Mount::new(&["--k8s", version, "--cri", cri]);
    let buildah = Buildah::new();
    for arch in ["amd64", "arm64"] {
        let image = build(&buildah, &m, arch);
        check_image_root(&image, &m, version, cri, arch);
        if arch == "amd64" {
            run_entry_points(&image, cri, Sealer::V09);
        }
    }
}

#[test]
fn buildah_builds_v1_23_4_docker() {
    build_and_deploy("v1.23.4", "docker");
}

#[test]
fn buildah_builds_v1_24_0_containerd() {
    build_and_deploy("v1.24.0", "containerd");
}

#[test]
fn buildah_builds_v1_31_1_containerd() {
    build_and_deploy("v1.31.1", "containerd");
}

/// The distribution registry serves rootfs/registry from the mount: skopeo pulls what was
/// pushed into the registry data, with the same digests.
#[test]
fn registry_serves_the_mounts_registry_folder() {
    let data = scratch("registry-data");
    let buildah = Buildah::new();
    // A small two-layer image, pushed into the registry data by a writable registry.
    let payload = scratch("payload");
    std::fs::write(payload.join("hello"), b"served through the mount\n").unwrap();
    let c = buildah.run(&["from", "scratch"]);
    buildah.run(&[
        "copy",
        &c,
        payload.join("hello").to_str().unwrap(),
        "/hello",
    ]);
    buildah.run(&["config", "--label", "test=registry", &c]);
    buildah.run(&["commit", "--quiet", &c, "localhost/pushed:test"]);
    let pushed_digest = {
        let source = Registry::start(&data, false);
        let target = format!("docker://{}/calico/cni:v3.22.1", source.host());
        buildah.run(&[
            "push",
            "--quiet",
            "--tls-verify=false",
            "localhost/pushed:test",
            &target,
        ]);
        skopeo(&[
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &target,
        ])
        .trim()
        .to_string()
    };
    assert!(pushed_digest.starts_with("sha256:"), "{pushed_digest}");

    let m = Mount::new(&[
        "--k8s",
        "v1.23.4",
        "--registry-data",
        data.to_str().unwrap(),
        "--read-only",
    ]);
    let served = Registry::start(&m.path("rootfs/registry"), true);
    let source = format!("docker://{}/calico/cni:v3.22.1", served.host());
    let digest = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &source,
    ]);
    assert_eq!(digest.trim(), pushed_digest);
    let out = scratch("pulled");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &source,
        &format!("dir:{}", out.display()),
    ]);
    let manifest: serde_yaml::Value =
        serde_yaml::from_slice(&read(&out.join("manifest.json"))).unwrap();
    let layers = manifest["layers"].as_sequence().expect("layers");
    assert!(!layers.is_empty());
    for layer in layers {
        let digest = layer["digest"].as_str().unwrap();
        let hex = digest.trim_start_matches("sha256:");
        // skopeo checked each blob against its digest; the bytes equal the registry data's.
        assert_eq!(
            read(&out.join(hex)),
            read(&data.join(format!(
                "docker/registry/v2/blobs/sha256/{}/{hex}/data",
                &hex[..2]
            )))
        );
    }
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&data);
}

/// sealer v0.8's builder is not buildah: each COPY source (after `${ARCH}` and `*`) is copied
/// by name into the destination folder (utils/collector/local_context.go:29-56 @v0.8.6).
/// This applies the Kubefile's COPY lines that way, with `cp -a`, into `root`.
fn copy_as_sealer_v0_8(m: &Mount, arch: &str, root: &Path) {
    let kubefile = m.read("rootfs/Kubefile");
    let copies: Vec<(String, String)> = kubefile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .map(|rest| {
            let (src, dest) = rest.split_once(' ').expect("COPY SRC DEST");
            (src.replace("${ARCH}", arch), dest.to_string())
        })
        .collect();
    assert_eq!(copies.len(), 3, "{kubefile}");
    for (src, dest) in copies {
        let sources: Vec<PathBuf> = match src.strip_suffix("/*") {
            Some(dir) => std::fs::read_dir(m.path(dir))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect(),
            None => vec![m.path(&src)],
        };
        let into = root.join(&dest);
        std::fs::create_dir_all(&into).unwrap();
        for source in sources {
            let out = Command::new("cp")
                .arg("-a")
                .arg(&source)
                .arg(&into)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn sealer_v0_8_image_and_entry_points() {
    let m = Mount::new(&["--k8s", "v1.23.4", "--sealer", "v0.8", "--arch", "amd64"]);
    let kubefile = m.read("rootfs/Kubefile");
    assert!(kubefile.contains("\nCOPY rootfs/* .\n"), "{kubefile}");
    assert!(m
        .read("rootfs/imageList")
        .contains("docker.io/fanux/lvscare:latest\n"));
    assert!(m
        .read("rootfs/etc/Clusterfile")
        .contains("apiVersion: sealer.cloud/v2\n"));
    let root = scratch("v08-image");
    copy_as_sealer_v0_8(&m, "amd64", &root);
    let labels = kubefile
        .lines()
        .filter_map(|l| l.strip_prefix("LABEL "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                serde_yaml::Value::from(k),
                serde_yaml::Value::from(v.trim_matches('"')),
            )
        })
        .collect::<serde_yaml::Mapping>();
    let image = BuiltImage {
        root: root.clone(),
        labels: serde_yaml::Value::Mapping(labels),
    };
    check_image_root(&image, &m, "v1.23.4", "docker", "amd64");
    run_entry_points(&image, "docker", Sealer::V08);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn sealer_v0_9_image_list_names_lvscare() {
    let m = Mount::new(&["--k8s", "v1.27.16", "--arch", "amd64"]);
    let list = m.read("rootfs/imageList");
    assert!(
        list.contains("docker.io/sealerio/lvscare:v1.1.3-beta.8\n"),
        "{list}"
    );
    assert!(m
        .read("rootfs/etc/Clusterfile")
        .contains("apiVersion: sealer.io/v2\n"));
    let registry = m.read("rootfs/etc/registry.yml");
    assert!(registry.contains("domain: sea.hub\n") && registry.contains("port: \"5000\"\n"));
}

/// docker-ce's containerd.io ships a config.toml with the CRI plugin disabled: containerd.sh
/// keeps the installed binaries but always installs the image's config (the old one is kept
/// as a backup, and put back by uninstall-containerd.sh).
#[test]
fn containerd_already_installed_is_configured() {
    let m = Mount::new(&[
        "--k8s", "v1.24.0", "--arch", "amd64", "--cni", "none", "--sealer", "v0.8",
    ]);
    let root = scratch("containerd-image");
    copy_as_sealer_v0_8(&m, "amd64", &root);
    let state = scratch("sandbox");
    let root_str = root.to_str().unwrap();
    let preinstalled = "disabled_plugins = ['cri']\n";
    in_sandbox(
        &state,
        &root,
        ".",
        &[
            "bash",
            "-c",
            &format!(
                "mkdir -p /etc/containerd && printf '{}' >/etc/containerd/config.toml && printf '#!/bin/sh\\n' >/usr/bin/containerd && chmod +x /usr/bin/containerd && bash {root_str}/scripts/containerd.sh",
                preinstalled.replace('\'', "'\\''").replace('\n', "\\n")
            ),
        ],
    );
    assert_eq!(
        installed(&state, "etc/containerd/config.toml").unwrap(),
        read(&root.join("etc/dump-config.toml"))
    );
    assert_eq!(
        installed(&state, "etc/containerd/config.toml.sealer.bak").unwrap(),
        preinstalled.as_bytes()
    );
    assert!(installed(&state, "etc/containerd/certs.d/sea.hub:5000/hosts.toml").is_some());
    assert!(installed(&state, "usr/local/bin/containerd").is_none());
    in_sandbox(
        &state,
        &root,
        ".",
        &[
            "bash",
            &format!("{root_str}/scripts/uninstall-containerd.sh"),
        ],
    );
    assert_eq!(
        installed(&state, "etc/containerd/config.toml").unwrap(),
        preinstalled.as_bytes()
    );
    assert!(installed(&state, "usr/bin/containerd").is_some());
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_dir_all(&root);
}
