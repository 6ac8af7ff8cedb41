//! Where each cache entry comes from, read from `contexts/sources.yaml`: the cache path
//! it fills, its upstream URL (or OCI image), how its digest is known, and when it
//! applies. The facts live in the data; this module parses them and expands the
//! `@{var}` templates for one version, CRI and arch. It knows nothing of HTTP: `fetch`
//! downloads, `layout` decides what a mount needs, both from these entries.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::versions::Profile;

/// `sha256sums:` of an artifact: a SUMS file and the name its line carries.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SumsSpec {
    url: String,
    name: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct When {
    cri: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArtifactSpec {
    name: String,
    path: String,
    url: Option<String>,
    sha256_url: Option<String>,
    sha256sums: Option<SumsSpec>,
    sha256: Option<BTreeMap<String, String>>,
    image: Option<String>,
    when: Option<When>,
    #[serde(default = "yes")]
    required: bool,
    mode: Option<String>,
}

fn yes() -> bool {
    true
}

/// The whole data file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sources {
    /// Per arch, extra template variables (`uname_arch`).
    arches: BTreeMap<String, BTreeMap<String, String>>,
    artifacts: Vec<ArtifactSpec>,
}

/// Where the bytes of an entry come from upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// An HTTP(S) URL.
    Url(String),
    /// An OCI image reference with a pinned digest, saved as a `docker save` archive.
    Image(String),
    /// No upstream: only a `--mirror` can provide it.
    MirrorOnly,
}

/// How the expected sha256 of an upstream download is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// A file whose first word is the hex digest (`kubeadm.sha256`).
    Sidecar(String),
    /// A `SHA256SUMS`-style file, and the file name of the line to take.
    Sums { url: String, name: String },
    /// Pinned in sources.yaml.
    Pinned(String),
    /// Nothing published and nothing pinned.
    Unpinned,
    /// The image's own pinned digest; the written archive's digest is recorded.
    Image,
}

/// One file of the cache, resolved for a version, CRI and arch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    pub name: String,
    pub arch: String,
    /// Relative to the cache folder, `/`-separated, no `..`.
    pub path: String,
    pub origin: Origin,
    pub checksum: Checksum,
    /// A mount needs it (else fetched when a source has it).
    pub required: bool,
    pub mode: u32,
}

impl Sources {
    pub fn parse(yaml: &[u8]) -> Result<Self, String> {
        let sources: Sources =
            serde_yaml::from_slice(yaml).map_err(|e| format!("sources.yaml: {e}"))?;
        for a in &sources.artifacts {
            let kinds = [a.url.is_some(), a.image.is_some()];
            if kinds.iter().all(|k| *k) {
                return Err(format!(
                    "sources.yaml: {}: both url and image; give one",
                    a.name
                ));
            }
            let sums = [
                a.sha256_url.is_some(),
                a.sha256sums.is_some(),
                a.sha256.is_some(),
            ];
            if sums.iter().filter(|s| **s).count() > 1 {
                return Err(format!(
                    "sources.yaml: {}: more than one of sha256_url, sha256sums, sha256",
                    a.name
                ));
            }
            if let Some(mode) = &a.mode {
                parse_mode(mode).map_err(|e| format!("sources.yaml: {}: {e}", a.name))?;
            }
        }
        Ok(sources)
    }

    /// Every entry for `profile` and `arches` whose `when` holds, in data order per arch.
    pub fn entries(&self, profile: &Profile, arches: &[String]) -> Result<Vec<CacheEntry>, String> {
        let mut out = Vec::new();
        for arch in arches {
            let vars = self.vars(profile, arch)?;
            for spec in &self.artifacts {
                if let Some(cri) = spec.when.as_ref().and_then(|w| w.cri.as_deref()) {
                    if cri != profile.cri {
                        continue;
                    }
                }
                let ctx =
                    |field: &str, e: String| format!("sources.yaml: {}: {field}: {e}", spec.name);
                let path = expand(&spec.path, &vars).map_err(|e| ctx("path", e))?;
                check_rel_path(&path).map_err(|e| ctx("path", e))?;
                let origin = match (&spec.url, &spec.image) {
                    (Some(url), _) => Origin::Url(expand(url, &vars).map_err(|e| ctx("url", e))?),
                    (None, Some(image)) => {
                        Origin::Image(expand(image, &vars).map_err(|e| ctx("image", e))?)
                    }
                    (None, None) => Origin::MirrorOnly,
                };
                let checksum = if let Some(url) = &spec.sha256_url {
                    Checksum::Sidecar(expand(url, &vars).map_err(|e| ctx("sha256_url", e))?)
                } else if let Some(sums) = &spec.sha256sums {
                    Checksum::Sums {
                        url: expand(&sums.url, &vars).map_err(|e| ctx("sha256sums", e))?,
                        name: expand(&sums.name, &vars).map_err(|e| ctx("sha256sums", e))?,
                    }
                } else if let Some(hex) = spec.sha256.as_ref().and_then(|m| m.get(arch)) {
                    let hex = hex.to_ascii_lowercase();
                    if !is_sha256_hex(&hex) {
                        return Err(ctx("sha256", format!("{arch}: not a sha256 hex digest")));
                    }
                    Checksum::Pinned(hex)
                } else if spec.image.is_some() {
                    Checksum::Image
                } else {
                    Checksum::Unpinned
                };
                let mode = match &spec.mode {
                    Some(m) => parse_mode(m).map_err(|e| ctx("mode", e))?,
                    None => 0o644,
                };
                out.push(CacheEntry {
                    name: spec.name.clone(),
                    arch: arch.clone(),
                    path,
                    origin,
                    checksum,
                    required: spec.required,
                    mode,
                });
            }
        }
        Ok(out)
    }

    /// The template variables of one arch.
    fn vars(&self, profile: &Profile, arch: &str) -> Result<BTreeMap<String, String>, String> {
        let mut vars: BTreeMap<String, String> = profile.tools.clone();
        vars.insert("version".into(), profile.version.to_string());
        vars.insert("arch".into(), arch.to_string());
        vars.insert("cri".into(), profile.cri.clone());
        vars.insert("cri_version".into(), profile.cri_version.clone());
        let extra = self
            .arches
            .get(arch)
            .ok_or_else(|| format!("sources.yaml: no entry for arch {arch} in arches:"))?;
        vars.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(vars)
    }
}

/// `@{name}` replaced by its value; an unknown name or an unclosed `@{` is an error.
fn expand(template: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("@{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed @{{ in {template:?}"))?;
        let name = &after[..end];
        let value = vars
            .get(name)
            .ok_or_else(|| format!("unknown variable @{{{name}}}"))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A cache path must stay inside the cache: relative, no `.`/`..`/empty components.
pub fn check_rel_path(path: &str) -> Result<(), String> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a relative path inside the cache",
            crate::render::quote(path)
        ))
    }
}

pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn parse_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("bad mode {text:?}: expected octal like \"0755\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::versions::{KubeVersion, VersionFacts};

    fn embedded(name: &str) -> &'static [u8] {
        crate::layers::embedded_file(name).expect("embedded")
    }

    fn entries(version: &str, cri: Option<&str>) -> Vec<CacheEntry> {
        let facts = VersionFacts::parse(embedded("versions.yaml")).unwrap();
        let sources = Sources::parse(embedded("sources.yaml")).unwrap();
        let profile = facts
            .profile(&KubeVersion::parse(version).unwrap(), cri, "none")
            .unwrap();
        sources
            .entries(&profile, &["amd64".into(), "arm64".into()])
            .unwrap()
    }

    #[test]
    fn every_supported_version_expands() {
        for minor in 13..=31 {
            for cri in ["docker", "containerd"] {
                if cri == "docker" && minor >= 24 {
                    continue;
                }
                let list = entries(&format!("v1.{minor}.2"), Some(cri));
                assert!(list.iter().all(|e| !e.path.contains('@')));
                assert!(list
                    .iter()
                    .any(|e| e.path == format!("cri/{cri}/arm64/{cri}.tar.gz")));
            }
        }
    }

    #[test]
    fn upstream_urls_and_checksums() {
        let list = entries("v1.23.4", None);
        let find = |path: &str| list.iter().find(|e| e.path == path).unwrap().clone();
        let kubeadm = find("kube/v1.23.4/arm64/kubeadm");
        assert_eq!(
            kubeadm.origin,
            Origin::Url("https://dl.k8s.io/release/v1.23.4/bin/linux/arm64/kubeadm".into())
        );
        assert_eq!(
            kubeadm.checksum,
            Checksum::Sidecar(
                "https://dl.k8s.io/release/v1.23.4/bin/linux/arm64/kubeadm.sha256".into()
            )
        );
        assert_eq!(kubeadm.mode, 0o755);
        let docker = find("cri/docker/amd64/docker.tar.gz");
        assert_eq!(
            docker.origin,
            Origin::Url(
                "https://download.docker.com/linux/static/stable/x86_64/docker-19.03.15.tgz".into()
            )
        );
        let nerdctl = find("oss/amd64/bin/nerdctl.tar.gz");
        assert_eq!(
            nerdctl.checksum,
            Checksum::Sums {
                url: "https://github.com/containerd/nerdctl/releases/download/v1.7.6/SHA256SUMS"
                    .into(),
                name: "nerdctl-1.7.6-linux-amd64.tar.gz".into()
            }
        );
        let crictl = find("oss/arm64/bin/crictl.tar.gz");
        assert!(
            matches!(crictl.origin, Origin::Url(u) if u.ends_with("crictl-v1.23.0-linux-arm64.tar.gz"))
        );
        let registry = find("cri/docker/amd64/registry.tar.gz");
        assert!(matches!(registry.origin, Origin::Image(i) if i.contains("@sha256:")));
        // docker has no containerd entries and no libseccomp.
        assert!(!list.iter().any(|e| e.path.contains("containerd")));
        let c = entries("v1.24.0", None);
        let lib = c
            .iter()
            .find(|e| e.name == "libseccomp" && e.arch == "amd64")
            .unwrap();
        assert!(!lib.required && lib.origin == Origin::MirrorOnly);
    }

    #[test]
    fn bad_templates_and_paths_are_refused() {
        let vars = BTreeMap::from([("a".to_string(), "x".to_string())]);
        assert_eq!(expand("1@{a}2", &vars).unwrap(), "1x2");
        assert!(expand("@{b}", &vars)
            .unwrap_err()
            .contains("unknown variable"));
        assert!(expand("@{a", &vars).unwrap_err().contains("unclosed"));
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "./a", "a/"] {
            assert!(check_rel_path(bad).is_err(), "{bad:?}");
        }
        let yaml = b"arches: {amd64: {}}\nartifacts:\n  - {name: x, path: a, url: u, image: i}\n";
        assert!(Sources::parse(yaml).unwrap_err().contains("both"));
    }
}
