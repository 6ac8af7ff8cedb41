//! Making your own base image: values (`--set`, `--values`, `rootfs-mount values`), the
//! exported contexts as a `--contexts` tree, and CNI releases as data.

mod common;

use std::path::Path;

use common::{run, scratch, sh, Mount};

fn yaml_docs(text: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("valid YAML"))
        .collect()
}

fn kind<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn set_changes_kubeadm_and_the_cni_pool_together() {
    let m = Mount::new(&[
        "--k8s",
        "v1.23.4",
        "--arch",
        "amd64",
        "--set",
        "podSubnet=10.244.0.0/16",
        "--set",
        "clusterDomain=k8s.example",
        "--set",
        "apiServerExtraArgs.max-requests-inflight=800",
        "--set",
        "kubeletExtraArgs.node-labels=role=base, \"quoted\"",
        "--set",
        "proxyMode=iptables",
    ]);
    let docs = yaml_docs(&m.read("rootfs/etc/kubeadm.yml"));
    let cluster = kind(&docs, "ClusterConfiguration");
    assert_eq!(cluster["networking"]["podSubnet"], "10.244.0.0/16");
    assert_eq!(cluster["networking"]["dnsDomain"], "k8s.example");
    assert_eq!(
        cluster["apiServer"]["extraArgs"]["max-requests-inflight"],
        "800"
    );
    // The image's own flags are still there.
    assert!(cluster["apiServer"]["extraArgs"]["audit-log-maxage"].is_string());
    for doc in ["InitConfiguration", "JoinConfiguration"] {
        assert_eq!(
            kind(&docs, doc)["nodeRegistration"]["kubeletExtraArgs"]["node-labels"],
            "role=base, \"quoted\"",
            "{doc}"
        );
    }
    assert_eq!(kind(&docs, "KubeProxyConfiguration")["mode"], "iptables");
    assert_eq!(
        kind(&docs, "KubeletConfiguration")["clusterDomain"],
        "k8s.example"
    );
    let pool = yaml_docs(&m.read("rootfs/etc/custom-resources.yaml"));
    assert_eq!(
        kind(&pool, "Installation")["spec"]["calicoNetwork"]["ipPools"][0]["cidr"],
        "10.244.0.0/16"
    );
}

#[test]
fn bad_values_are_refused_naming_the_key() {
    let dir = scratch("mnt-refused");
    for (set, needle) in [
        ("podSubnet=10.244.0.1/16", "podSubnet"),
        ("serviceSubnet=nonsense", "serviceSubnet"),
        ("maxPods=1", "maxPods"),
        ("registryDomain=::1:5000", "registryDomain"),
        ("cniVersion=v9.9.9", "cniVersion"),
        ("noSuchKey=1", "unknown value \"noSuchKey\""),
        ("apiServerExtraArgs.audit-log-maxage=3", "already sets"),
        ("no-equals-sign", "expected KEY=VALUE"),
    ] {
        let out = run(&[
            dir.to_str().unwrap(),
            "--k8s",
            "v1.23.4",
            "--allow-missing",
            "--set",
            set,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} accepted");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{set}: {stderr}");
        assert!(stderr.contains(needle), "{set}: {stderr}");
        assert!(!common::is_mounted(&dir));
    }
}

#[test]
fn values_command_output_is_a_values_file() {
    let out = run(&[
        "values",
        "--k8s",
        "v1.27.16",
        "--set",
        "maxPods=250",
        "--set",
        "schedulerExtraArgs.v=3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(doc["maxPods"], "250");
    assert_eq!(doc["podSubnet"], "100.64.0.0/10");
    assert_eq!(doc["cniVersion"], "v3.26.4");
    assert_eq!(doc["schedulerExtraArgs"]["v"], "3");
    let file = scratch("values").join("values.yaml");
    std::fs::write(&file, &text).unwrap();
    let m = Mount::new(&[
        "--k8s",
        "v1.27.16",
        "--arch",
        "amd64",
        "--values",
        file.to_str().unwrap(),
    ]);
    let docs = yaml_docs(&m.read("rootfs/etc/kubeadm.yml"));
    assert_eq!(kind(&docs, "KubeletConfiguration")["maxPods"], 250);
    assert_eq!(
        kind(&docs, "ClusterConfiguration")["scheduler"]["extraArgs"]["v"],
        "3"
    );
}

fn export(name: &str) -> std::path::PathBuf {
    let dir = scratch(name).join("contexts");
    let out = run(&["contexts", "export", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn tar_sha(m: &Mount) -> String {
    sh(&format!(
        "tar --sort=name --owner=0 --group=0 --numeric-owner -cf - -C '{}' . | sha256sum",
        m.dir.display()
    ))
}

#[test]
fn exported_contexts_give_the_same_tar_bytes() {
    let dir = export("export");
    for version in ["v1.23.4", "v1.31.1"] {
        let args = ["--k8s", version, "--read-only"];
        let embedded = Mount::new(&args);
        let mut with_dir = args.to_vec();
        with_dir.extend(["--contexts", dir.to_str().unwrap()]);
        let exported = Mount::new(&with_dir);
        assert_eq!(tar_sha(&embedded), tar_sha(&exported), "{version}");
    }
    // Exporting over a folder with content is refused and changes nothing.
    let out = run(&["contexts", "export", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}

/// A new Calico release is a data edit in versions.yaml alone: the operator tag, the
/// images and the imageList follow, and --set cniVersion picks among the releases.
#[test]
fn a_calico_release_is_a_data_edit() {
    let dir = export("calico-release");
    let versions = dir.join("versions.yaml");
    let text = std::fs::read_to_string(&versions).unwrap();
    let release = r#"      - range: ">=1.31.0, <1.32.0"
        version: v3.30.9
        images:
          - quay.io/tigera/operator:v1.38.9
          - docker.io/calico/cni:v3.30.9
          - docker.io/calico/node:v3.30.9
"#;
    let anchor = "    releases:\n";
    assert!(text.contains(anchor));
    std::fs::write(
        &versions,
        text.replacen(anchor, &format!("{anchor}{release}"), 1),
    )
    .unwrap();
    let ctx = dir.to_str().unwrap();
    let m = Mount::new(&["--k8s", "v1.31.1", "--arch", "amd64", "--contexts", ctx]);
    let operator = m.read("rootfs/etc/tigera-operator.yaml");
    assert!(
        operator.contains("image: sea.hub:5000/tigera/operator:v1.38.9\n"),
        "operator image"
    );
    assert!(operator.contains("value: v1.38.9\n"));
    let list = m.read("rootfs/imageList");
    assert!(list.contains("docker.io/calico/node:v3.30.9\n"), "{list}");
    drop(m);
    let m = Mount::new(&[
        "--k8s",
        "v1.31.1",
        "--arch",
        "amd64",
        "--contexts",
        ctx,
        "--set",
        "cniVersion=v3.29.3",
    ]);
    assert!(m
        .read("rootfs/etc/tigera-operator.yaml")
        .contains("tigera/operator:v1.36.7\n"));
}

/// No template repeats a fact of versions.yaml: every image tag in a rendered file is the
/// tag of an image the data lists for that version (the imageList).
#[test]
fn every_image_tag_in_a_rendered_file_comes_from_the_data() {
    for version in ["v1.20.15", "v1.23.4", "v1.27.16", "v1.31.1"] {
        let cri = if version < "v1.24" {
            "docker"
        } else {
            "containerd"
        };
        let m = Mount::new(&["--k8s", version, "--arch", "amd64", "--cri", cri]);
        let list = m.read("rootfs/imageList");
        let tags: Vec<&str> = list
            .lines()
            .filter_map(|l| l.rsplit_once(':').map(|(_, t)| t))
            .collect();
        let mut checked = 0;
        for rel in common::walk(&m.path("rootfs")) {
            if rel.starts_with("registry") || rel == "imageList" {
                continue;
            }
            let path = m.path(&format!("rootfs/{rel}"));
            if !path.is_file() {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for line in text.lines() {
                let line = line.trim();
                let Some(image) = line
                    .strip_prefix("image: ")
                    .or_else(|| line.strip_prefix("sandbox_image = "))
                else {
                    continue;
                };
                let image = image.trim_matches('"');
                let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
                assert!(
                    tags.contains(&tag),
                    "{version} {rel}: {image} has a tag the data does not list"
                );
                checked += 1;
            }
        }
        assert!(checked > 0 || !Path::new(&m.path("rootfs/etc/tigera-operator.yaml")).exists());
    }
}

/// An --upper folder remembers the parameters it was last mounted with: the same ones
/// mount silently; others warn naming the rendered files it shadows, or refuse with
/// --strict.
#[test]
fn upper_remembers_its_parameters() {
    let upper = scratch("upper-params");
    let upper_s = upper.to_str().unwrap();
    let cache = common::demo_cache().to_str().unwrap().to_string();
    {
        let m = Mount::new(&["--k8s", "v1.23.4", "--arch", "amd64", "--upper", upper_s]);
        let path = m.path("rootfs/etc/kubeadm.yml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}# edited for v1.23.4\n")).unwrap();
    }
    let mount = |extra: &[&str]| {
        let dir = scratch("mnt-upper");
        let mut args = vec![
            dir.to_str().unwrap().to_string(),
            "--cache".into(),
            cache.clone(),
            "--arch".into(),
            "amd64".into(),
            "--upper".into(),
            upper_s.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&refs);
        (Mount { dir }, out)
    };
    let (same, out) = mount(&["--k8s", "v1.23.4"]);
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(same);
    let (refused, out) = mount(&["--k8s", "v1.23.0", "--strict"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert!(!common::is_mounted(&refused.dir));
    assert!(
        stderr.contains("k8s v1.23.4 -> v1.23.0") && stderr.contains("rootfs/etc/kubeadm.yml"),
        "{stderr}"
    );
    drop(refused);
    let (warned, out) = mount(&["--k8s", "v1.23.0", "--set", "podSubnet=10.244.0.0/16"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning")
            && stderr.contains("podSubnet 100.64.0.0/10 -> 10.244.0.0/16")
            && stderr.contains("rootfs/etc/kubeadm.yml"),
        "{stderr}"
    );
    assert!(warned
        .read("rootfs/etc/kubeadm.yml")
        .ends_with("# edited for v1.23.4\n"));
}
