//! Every boundary version of docs/DESIGN.md §5, mounted: the rendered files follow the version rules.

mod common;

use common::{Mount, VERSIONS};

struct Expect {
    api: &'static str,
    cri: &'static str,
    pause: &'static str,
    coredns: &'static str,
    ttl_gate: bool,
    ephemeral_gate: bool,
}

fn expect(version: &str) -> Expect {
    let minor: u32 = version.split('.').nth(1).unwrap().parse().unwrap();
    let api = match minor {
        13..=14 => "kubeadm.k8s.io/v1beta1",
        15..=22 => "kubeadm.k8s.io/v1beta2",
        _ => "kubeadm.k8s.io/v1beta3",
    };
    // kubeadm constants of each tested release.
    let (pause, coredns) = match version {
        "v1.13.0" => ("3.1", "coredns:1.2.6"),
        "v1.14.10" | "v1.15.0" => ("3.1", "coredns:1.3.1"),
        "v1.20.15" => ("3.2", "coredns:1.7.0"),
        "v1.21.0" => ("3.4.1", "coredns/coredns:v1.8.0"),
        "v1.22.17" => ("3.5", "coredns/coredns:v1.8.4"),
        "v1.23.0" | "v1.23.4" => ("3.6", "coredns/coredns:v1.8.6"),
        "v1.24.0" => ("3.7", "coredns/coredns:v1.8.6"),
        "v1.27.16" => ("3.9", "coredns/coredns:v1.10.1"),
        "v1.31.1" => ("3.10", "coredns/coredns:v1.11.3"),
        other => panic!("no expectation for {other}"),
    };
    Expect {
        api,
        cri: if minor < 24 { "docker" } else { "containerd" },
        pause,
        coredns,
        ttl_gate: minor < 25,
        ephemeral_gate: (16..27).contains(&minor),
    }
}

fn yaml_documents(text: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("valid YAML"))
        .collect()
}

#[test]
fn rendered_files_follow_the_version_rules() {
    for version in VERSIONS {
        let e = expect(version);
        let minor: u32 = version.split('.').nth(1).unwrap().parse().unwrap();
        // The bundled Calico needs apiextensions.k8s.io/v1 (v1.16+).
        let cni = if minor >= 16 { "calico" } else { "none" };
        let m = Mount::new(&["--k8s", version, "--cni", cni]);
        let kubeadm = m.read("rootfs/etc/kubeadm.yml");
        let docs = yaml_documents(&kubeadm);
        let kinds: Vec<_> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert!(
            kinds.contains(&"InitConfiguration") && kinds.contains(&"ClusterConfiguration"),
            "{version}: {kinds:?}"
        );
        let cluster = docs
            .iter()
            .find(|d| d["kind"] == "ClusterConfiguration")
            .unwrap();
        assert_eq!(cluster["apiVersion"].as_str(), Some(e.api), "{version}");
        assert_eq!(cluster["kubernetesVersion"].as_str(), Some(*version));
        assert_eq!(
            cluster["imageRepository"].as_str(),
            Some("sea.hub:5000"),
            "{version}"
        );
        let dns = cluster["dns"]["imageRepository"].as_str();
        let nested = e.coredns.starts_with("coredns/");
        // Always set, so that sealer does not fill it with <registry>/coredns (v0.9+),
        // which is where CoreDNS is stored only from v1.21.
        assert_eq!(
            dns,
            Some(if nested {
                "sea.hub:5000/coredns"
            } else {
                "sea.hub:5000"
            }),
            "{version}: dns imageRepository"
        );
        let socket = if e.cri == "docker" {
            "/var/run/dockershim.sock"
        } else {
            "/run/containerd/containerd.sock"
        };
        let init = docs
            .iter()
            .find(|d| d["kind"] == "InitConfiguration")
            .unwrap();
        assert_eq!(
            init["nodeRegistration"]["criSocket"].as_str(),
            Some(socket),
            "{version}"
        );
        assert_eq!(
            kubeadm.contains("TTLAfterFinished"),
            e.ttl_gate,
            "{version}: TTLAfterFinished gate"
        );
        assert_eq!(
            kubeadm.contains("EphemeralContainers"),
            e.ephemeral_gate,
            "{version}: EphemeralContainers gate"
        );
        // The flag was renamed in v1.19 and the old name removed in v1.25.
        assert_eq!(
            kubeadm.contains("experimental-cluster-signing-duration"),
            minor < 19,
            "{version}"
        );
        assert!(
            kubeadm.contains("cluster-signing-duration: 876000h"),
            "{version}"
        );

        let images = m.read("rootfs/imageList");
        for image in [
            format!("registry.k8s.io/kube-apiserver:{version}"),
            format!("registry.k8s.io/kube-proxy:{version}"),
            format!("registry.k8s.io/pause:{}", e.pause),
            format!("registry.k8s.io/{}", e.coredns),
        ] {
            assert!(
                images.lines().any(|l| l == image),
                "{version}: imageList lacks {image}:\n{images}"
            );
        }
        assert_eq!(
            images.lines().any(|l| l.contains("calico/node:")),
            cni == "calico",
            "{version}: CNI images"
        );

        let kubefile = m.read("rootfs/Kubefile");
        assert!(kubefile.contains("COPY ${ARCH} ."), "{version}");
        assert!(!kubefile.contains("COPY amd64"), "{version}");
        assert!(kubefile.contains(&format!(
            "cluster.alpha.sealer.io/cluster-runtime-version=\"{version}\""
        )));
        assert!(
            kubefile.contains(&format!("container-runtime-type=\"{}\"", e.cri)),
            "{version}"
        );
        if e.cri == "containerd" {
            let config = m.read("rootfs/etc/dump-config.toml");
            assert!(
                config.contains(&format!(
                    "sandbox_image = \"sea.hub:5000/pause:{}\"",
                    e.pause
                )),
                "{version}"
            );
        }
    }
}

#[test]
fn flags_change_the_rendering() {
    let m = Mount::new(&[
        "--k8s",
        "v1.23.4",
        "--cri",
        "containerd",
        "--cni",
        "none",
        "--registry-domain",
        "hub.example:5000",
    ]);
    let kubeadm = m.read("rootfs/etc/kubeadm.yml");
    assert!(
        kubeadm.contains("imageRepository: hub.example:5000\n"),
        "{kubeadm}"
    );
    assert!(kubeadm.contains("criSocket: /run/containerd/containerd.sock"));
    assert!(m
        .read("rootfs/etc/kubeadm.yml.tmpl")
        .contains(r#"{{or .RegistryURL "hub.example:5000"}}"#));
    assert!(!m.read("rootfs/imageList").contains("calico"));
    assert!(m
        .read("rootfs/Kubefile")
        .contains("container-runtime-type=\"containerd\""));
    assert!(m.path("rootfs/etc/dump-config.toml").exists());
    assert!(!m.path("rootfs/etc/tigera-operator.yaml").exists());
}
