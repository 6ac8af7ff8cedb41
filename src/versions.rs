//! Kubernetes version facts, read from `contexts/versions.yaml`: which kubeadm API, CRI,
//! images and flags belong to a version. The rules live in the data; this module only
//! parses it and picks the entries whose semver range holds the version.

use std::collections::BTreeMap;
use std::fmt;

use semver::{Version, VersionReq};
use serde::Deserialize;

/// A Kubernetes version as given on the command line (`v1.23.4`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeVersion(Version);

impl KubeVersion {
    /// Accepts `vMAJOR.MINOR.PATCH` (the `v` is optional); nothing else.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bare = text.strip_prefix('v').unwrap_or(text);
        let well_formed = bare.split('.').count() == 3
            && bare
                .split('.')
                .all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()));
        match (well_formed, Version::parse(bare)) {
            (true, Ok(v)) => Ok(KubeVersion(v)),
            _ => Err(format!(
                "invalid Kubernetes version {}: expected vMAJOR.MINOR.PATCH, e.g. v1.23.4",
                crate::render::quote(text)
            )),
        }
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// A semver range over full versions, as written in the data file.
#[derive(Clone, Debug)]
pub struct Range(VersionReq);

impl<'de> Deserialize<'de> for Range {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        VersionReq::parse(&text)
            .map(Range)
            .map_err(|e| serde::de::Error::custom(format!("bad range {text:?}: {e}")))
    }
}

impl Range {
    fn holds(&self, v: &KubeVersion) -> bool {
        self.0.matches(&v.0)
    }
}

#[derive(Debug, Deserialize)]
struct ApiEntry {
    range: Range,
    version: String,
}

#[derive(Debug, Deserialize)]
struct DefaultCri {
    range: Range,
    cri: String,
}

#[derive(Debug, Deserialize)]
pub struct CriFacts {
    pub socket: String,
    pub version: String,
    /// The runtime's daemon binary, which the CRI tarball of the cache must hold.
    #[serde(default)]
    pub daemon: String,
    supported: Range,
    #[serde(default)]
    refusal: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ImageFacts {
    range: Range,
    pub pause: String,
    pub etcd: String,
    pub coredns: String,
    pub coredns_path: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct CniFacts {
    range: Range,
    pub version: String,
    pub images: Vec<String>,
}

/// One CNI: the Kubernetes versions its bundled manifests can run on, and its releases.
#[derive(Debug, Deserialize)]
struct Cni {
    supported: Range,
    refusal: String,
    releases: Vec<CniFacts>,
}

/// The order of `kubeadm config images list` for a range of versions.
#[derive(Debug, Deserialize)]
struct ImageOrder {
    range: Range,
    order: Vec<String>,
}

/// One entry of `tools:`: a range and the versions of the tools it names.
#[derive(Debug, Deserialize)]
struct ToolEntry {
    range: Range,
    #[serde(flatten)]
    versions: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct FeatureGate {
    name: String,
    value: String,
    range: Range,
}

/// The whole data file.
#[derive(Debug, Deserialize)]
pub struct VersionFacts {
    minimum: String,
    pub upstream_registry: String,
    kubeadm_api: Vec<ApiEntry>,
    default_cri: Vec<DefaultCri>,
    cri: BTreeMap<String, CriFacts>,
    images: Vec<ImageFacts>,
    kube_image_order: Vec<ImageOrder>,
    cni: BTreeMap<String, Cni>,
    feature_gates: Vec<FeatureGate>,
    features: BTreeMap<String, Range>,
    /// Versions of the tools `fetch` puts into the cache (crictl, nerdctl, ...).
    #[serde(default)]
    tools: Vec<ToolEntry>,
}

/// Everything the version, CRI and CNI decide, resolved once at start.
#[derive(Clone, Debug)]
pub struct Profile {
    pub version: KubeVersion,
    pub kubeadm_api: String,
    pub cri: String,
    pub cri_socket: String,
    pub cri_version: String,
    /// The daemon binary `<cri>.tar.gz` holds (`dockerd`, `containerd`); empty: unknown.
    pub cri_daemon: String,
    /// `None` for `--cni none`.
    pub cni: Option<(String, CniFacts)>,
    pub images: ImageFacts,
    /// Component names in the order `kubeadm config images list` prints them.
    pub image_order: Vec<String>,
    pub upstream_registry: String,
    /// `Name=value` of every feature gate the version accepts.
    pub feature_gates: Vec<String>,
    pub features: BTreeMap<String, bool>,
    /// Tool name to version (`crictl` -> `1.26.0`): for each tool, the first entry of
    /// `tools:` whose range holds the version.
    pub tools: BTreeMap<String, String>,
}

impl Profile {
    /// What `kubeadm config images list` prints for the version, in its order.
    pub fn kube_images(&self) -> Vec<String> {
        let r = &self.upstream_registry;
        let v = &self.version;
        let i = &self.images;
        self.image_order
            .iter()
            .map(|component| match component.as_str() {
                "pause" => format!("{r}/pause:{}", i.pause),
                "etcd" => format!("{r}/etcd:{}", i.etcd),
                "coredns" => format!("{r}/{}:{}", i.coredns_path, i.coredns),
                kube => format!("{r}/{kube}:{v}"),
            })
            .collect()
    }
}

impl VersionFacts {
    pub fn parse(yaml: &[u8]) -> Result<Self, String> {
        let facts: VersionFacts =
            serde_yaml::from_slice(yaml).map_err(|e| format!("versions.yaml: {e}"))?;
        KubeVersion::parse(&facts.minimum).map_err(|e| format!("versions.yaml: minimum: {e}"))?;
        Ok(facts)
    }

    /// The supported span, `("v1.13.0", "v1.31.x")`: the minimum, and the newest minor
    /// that has image tags (the data decides, so a new release moves it).
    pub fn supported_span(&self) -> (String, String) {
        let newest = (0..100u64)
            .rev()
            .find(|minor| {
                (0..60u64).any(|patch| {
                    let v = KubeVersion(semver::Version::new(1, *minor, patch));
                    self.images.iter().any(|e| e.range.holds(&v))
                })
            })
            .map_or_else(|| "?".to_string(), |minor| format!("v1.{minor}.x"));
        (self.minimum.clone(), newest)
    }

    pub fn cri_names(&self) -> Vec<&str> {
        self.cri.keys().map(String::as_str).collect()
    }

    /// The version ranges the data knows, for "unknown version" messages: the minimum
    /// and the image-tag ranges (every supported version has one).
    pub fn known_versions(&self) -> String {
        let mut ranges: Vec<String> = self.images.iter().map(|e| e.range.0.to_string()).collect();
        ranges.reverse();
        format!(
            "from {} (versions.yaml image ranges: {})",
            self.minimum,
            ranges.join("; ")
        )
    }

    pub fn cni_names(&self) -> Vec<&str> {
        self.cni.keys().map(String::as_str).collect()
    }

    /// The releases of `cni` whose range holds `version`, in data order (the first is
    /// the default).
    pub fn cni_releases(&self, cni: &str, version: &KubeVersion) -> Vec<CniFacts> {
        self.cni
            .get(cni)
            .map(|c| {
                c.releases
                    .iter()
                    .filter(|r| r.range.holds(version))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Resolves the facts for `version`, refusing what the version does not support.
    /// `cri: None` takes the version's default CRI; `cni` is a CNI name or `none`.
    pub fn profile(
        &self,
        version: &KubeVersion,
        cri: Option<&str>,
        cni: &str,
    ) -> Result<Profile, String> {
        let minimum = KubeVersion::parse(&self.minimum)?;
        if *version < minimum {
            let (_, newest) = self.supported_span();
            return Err(format!(
                "Kubernetes {version} is not supported: the oldest supported version is {minimum} (supported: {minimum} to {newest})"
            ));
        }
        let kubeadm_api = self
            .kubeadm_api
            .iter()
            .find(|e| e.range.holds(version))
            .map(|e| e.version.clone())
            .ok_or_else(|| format!("versions.yaml has no kubeadm API version for {version}"))?;
        let cri = match cri {
            Some(c) => c.to_string(),
            None => self
                .default_cri
                .iter()
                .find(|e| e.range.holds(version))
                .map(|e| e.cri.clone())
                .ok_or_else(|| format!("versions.yaml has no default CRI for {version}"))?,
        };
        let cri_facts = self.cri.get(&cri).ok_or_else(|| {
            format!(
                "unknown CRI {cri:?}: expected one of {}",
                self.cri_names().join(", ")
            )
        })?;
        if !cri_facts.supported.holds(version) {
            return Err(format!(
                "--cri {cri} cannot be used with Kubernetes {version}: {}",
                cri_facts.refusal
            ));
        }
        let images = self
            .images
            .iter()
            .find(|e| e.range.holds(version))
            .cloned()
            .ok_or_else(|| {
                let (oldest, newest) = self.supported_span();
                format!(
                    "Kubernetes {version} is not supported: versions.yaml has no image tags for it (supported: {oldest} to {newest}); known versions: {}",
                    self.known_versions()
                )
            })?;
        let image_order = self
            .kube_image_order
            .iter()
            .find(|e| e.range.holds(version))
            .map(|e| e.order.clone())
            .ok_or_else(|| format!("versions.yaml has no kube_image_order for {version}"))?;
        for component in &image_order {
            let known = [
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kube-proxy",
                "pause",
                "etcd",
                "coredns",
            ];
            if !known.contains(&component.as_str()) {
                return Err(format!(
                    "versions.yaml: kube_image_order names {component:?}, expected one of {}",
                    known.join(", ")
                ));
            }
        }
        let mut tools = BTreeMap::new();
        for entry in self.tools.iter().filter(|e| e.range.holds(version)) {
            for (tool, v) in &entry.versions {
                tools.entry(tool.clone()).or_insert_with(|| v.clone());
            }
        }
        let cni = if cni == "none" {
            None
        } else {
            let facts = self.cni.get(cni).ok_or_else(|| {
                format!(
                    "unknown CNI {cni:?}: expected one of {}, none",
                    self.cni_names().join(", ")
                )
            })?;
            if !facts.supported.holds(version) {
                return Err(format!(
                    "--cni {cni} cannot be used with Kubernetes {version}: {}",
                    facts.refusal
                ));
            }
            let facts = facts
                .releases
                .iter()
                .find(|e| e.range.holds(version))
                .cloned()
                .ok_or_else(|| {
                    format!("CNI {cni} has no release for Kubernetes {version} in versions.yaml")
                })?;
            Some((cni.to_string(), facts))
        };
        Ok(Profile {
            version: version.clone(),
            kubeadm_api,
            cri_socket: cri_facts.socket.clone(),
            cri_version: cri_facts.version.clone(),
            cri_daemon: cri_facts.daemon.clone(),
            cri,
            cni,
            images,
            image_order,
            upstream_registry: self.upstream_registry.clone(),
            feature_gates: self
                .feature_gates
                .iter()
                .filter(|g| g.range.holds(version))
                .map(|g| format!("{}={}", g.name, g.value))
                .collect(),
            features: self
                .features
                .iter()
                .map(|(name, range)| (name.clone(), range.holds(version)))
                .collect(),
            tools,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> VersionFacts {
        let yaml = crate::layers::embedded_file("versions.yaml").expect("versions.yaml embedded");
        VersionFacts::parse(yaml).unwrap()
    }

    fn v(text: &str) -> KubeVersion {
        KubeVersion::parse(text).unwrap()
    }

    #[test]
    fn parses_versions_strictly() {
        assert_eq!(v("v1.23.4").to_string(), "v1.23.4");
        assert_eq!(v("1.23.4").to_string(), "v1.23.4");
        for bad in [
            "",
            "v1.23",
            "v1.23.4.5",
            "v1.23.x",
            "v1.23.4-rc.0",
            "latest",
            "v01.2.3x",
            "v1..2",
        ] {
            assert!(KubeVersion::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn kubeadm_api_follows_the_ranges() {
        let f = facts();
        for (ver, api) in [
            ("v1.13.0", "kubeadm.k8s.io/v1beta1"),
            ("v1.14.10", "kubeadm.k8s.io/v1beta1"),
            ("v1.15.0", "kubeadm.k8s.io/v1beta2"),
            ("v1.22.17", "kubeadm.k8s.io/v1beta2"),
            ("v1.23.0", "kubeadm.k8s.io/v1beta3"),
            ("v1.31.1", "kubeadm.k8s.io/v1beta3"),
        ] {
            assert_eq!(
                f.profile(&v(ver), None, "none").unwrap().kubeadm_api,
                api,
                "{ver}"
            );
        }
        assert!(f
            .profile(&v("v1.12.9"), None, "calico")
            .unwrap_err()
            .contains("oldest"));
    }

    #[test]
    fn cri_defaults_and_refusals() {
        let f = facts();
        assert_eq!(
            f.profile(&v("v1.23.17"), None, "none").unwrap().cri,
            "docker"
        );
        let p = f.profile(&v("v1.24.0"), None, "none").unwrap();
        assert_eq!(
            (p.cri.as_str(), p.cri_socket.as_str()),
            ("containerd", "/run/containerd/containerd.sock")
        );
        assert!(f
            .profile(&v("v1.24.0"), Some("docker"), "none")
            .unwrap_err()
            .contains("v1.24.0"));
        assert_eq!(
            f.profile(&v("v1.20.15"), Some("containerd"), "none")
                .unwrap()
                .cri_socket,
            "/run/containerd/containerd.sock"
        );
        assert!(f
            .profile(&v("v1.23.4"), Some("crio"), "none")
            .unwrap_err()
            .contains("unknown CRI"));
        assert!(f
            .profile(&v("v1.23.4"), None, "flannel")
            .unwrap_err()
            .contains("unknown CNI"));
    }

    #[test]
    fn every_supported_version_has_image_tags() {
        let f = facts();
        for minor in 13..=31 {
            for patch in 0..=20 {
                let ver = v(&format!("v1.{minor}.{patch}"));
                let cni = if minor >= 16 { "calico" } else { "none" };
                let p = f.profile(&ver, Some("containerd"), cni).unwrap();
                let list = p.kube_images();
                assert_eq!(list.len(), 7, "{ver}");
                assert_eq!(
                    p.images.coredns_path == "coredns/coredns",
                    minor >= 21,
                    "{ver}"
                );
            }
        }
        let p = f.profile(&v("v1.23.4"), None, "calico").unwrap();
        assert!(p
            .kube_images()
            .contains(&"registry.k8s.io/pause:3.6".to_string()));
        assert!(p
            .kube_images()
            .contains(&"registry.k8s.io/coredns/coredns:v1.8.6".to_string()));
    }

    #[test]
    fn bundled_calico_is_refused_below_its_range() {
        let f = facts();
        let err = f.profile(&v("v1.15.12"), None, "calico").unwrap_err();
        assert!(err.contains("--cni none"), "{err}");
        assert!(err.contains("v1.15.12"), "{err}");
        assert!(f.profile(&v("v1.16.0"), None, "calico").is_ok());
        assert!(f.profile(&v("v1.15.12"), None, "none").is_ok());
    }

    #[test]
    fn image_list_follows_kubeadm_order() {
        let f = facts();
        let names = |ver: &str| -> Vec<String> {
            f.profile(&v(ver), Some("containerd"), "none")
                .unwrap()
                .kube_images()
                .iter()
                .map(|i| {
                    i.rsplit('/')
                        .next()
                        .unwrap()
                        .split(':')
                        .next()
                        .unwrap()
                        .to_string()
                })
                .collect()
        };
        assert_eq!(
            names("v1.28.15")[4..],
            ["pause".to_string(), "etcd".into(), "coredns".into()]
        );
        assert_eq!(
            names("v1.29.0")[4..],
            ["coredns".to_string(), "pause".into(), "etcd".into()]
        );
    }

    #[test]
    fn every_supported_version_has_tool_versions() {
        let f = facts();
        for minor in 13..=31 {
            let p = f
                .profile(&v(&format!("v1.{minor}.3")), Some("containerd"), "none")
                .unwrap();
            for tool in ["crictl", "nerdctl", "conntrack", "seautil", "libseccomp"] {
                assert!(p.tools.contains_key(tool), "v1.{minor}.3 lacks {tool}");
            }
            // crictl follows the minor.
            assert!(
                p.tools["crictl"].starts_with(&format!("1.{minor}.")),
                "v1.{minor}: crictl {}",
                p.tools["crictl"]
            );
        }
    }
}
