//! `rootfs-mount check`: before packing, is everything the image needs there? Every image
//! of the rendered `rootfs/imageList` must be in the registry data (registry v2 storage)
//! for each arch with every blob of its manifest, the Kubefile's labels must agree with
//! the parameters and the CRI in the cache, and no cache entry the tree needs may be
//! missing. Each problem is one line; the fix is the `fetch` command that fills the cache.
//!
//! Repository names in the registry data are the image names without their source
//! registry host (`registry.k8s.io/kube-apiserver` is `kube-apiserver`), and a single
//! docker.io name gets `library/` (`docker.io/nginx` is `library/nginx`), which is where
//! sealer puts them when it pulls the image list into `registry/`.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::layout::{BuildLayout, MountParams};
use crate::pack::content::ContentReader;
use crate::pack::oci::Kubefile;
use crate::pack::walk::resolve;

/// Manifests and indexes are small; anything bigger is not one.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// An image reference of the image list, split the way the registry data stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageRef {
    /// As written in the image list.
    pub image: String,
    /// The repository in the registry data.
    pub repository: String,
    /// A tag, or a digest (`sha256:...`).
    pub reference: String,
}

impl ImageRef {
    pub fn parse(image: &str) -> Result<Self, String> {
        let bad = || format!("{image}: not an image reference");
        let (name, reference) = match image.split_once('@') {
            Some((name, digest)) => (name, digest.to_string()),
            None => {
                // A tag follows the last ':' after the last '/' (a host may have a port).
                let slash = image.rfind('/').map_or(0, |i| i + 1);
                match image[slash..].rfind(':') {
                    Some(i) => (&image[..slash + i], image[slash + i + 1..].to_string()),
                    None => (image, "latest".to_string()),
                }
            }
        };
        let mut parts: Vec<&str> = name.split('/').collect();
        let first = parts[0];
        let has_host =
            parts.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost");
        let host = if has_host {
            parts.remove(0)
        } else {
            "docker.io"
        };
        if (host == "docker.io" || host == "index.docker.io") && parts.len() == 1 {
            parts.insert(0, "library");
        }
        let repository = parts.join("/");
        let plain = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-:+".contains(&b))
        };
        if parts.iter().any(|p| !plain(p)) || !plain(&reference) {
            return Err(bad());
        }
        Ok(ImageRef {
            image: image.to_string(),
            repository,
            reference,
        })
    }
}

/// One finding of `check`.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// `image`, `label` or `cache`.
    pub kind: &'static str,
    /// The image, label or cache path concerned.
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    pub message: String,
}

/// An image found complete for an arch.
#[derive(Clone, Debug, Serialize)]
pub struct Present {
    pub image: String,
    pub arch: String,
    /// The digest of the arch's manifest.
    pub manifest: String,
    pub blobs: usize,
}

/// What `check` found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub registry: PathBuf,
    pub images: Vec<Present>,
    pub problems: Vec<Problem>,
    /// The command that fills the cache, when something is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Registry v2 storage (`docker/registry/v2/` under the registry data folder).
struct Storage {
    v2: PathBuf,
}

fn hex_of(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Storage {
    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = hex_of(digest)?;
        Some(
            self.v2
                .join(format!("blobs/sha256/{}/{hex}/data", &hex[..2])),
        )
    }

    fn link(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
    }

    fn repo(&self, repository: &str) -> PathBuf {
        self.v2.join("repositories").join(repository)
    }

    /// The manifest digest a tag or digest reference points at in `repository`.
    fn manifest_digest(&self, r: &ImageRef) -> Result<String, String> {
        let repo = self.repo(&r.repository);
        if !repo.is_dir() {
            return Err(format!(
                "repository {} is not in the registry data",
                r.repository
            ));
        }
        if hex_of(&r.reference).is_some() {
            self.revision(&r.repository, &r.reference)?;
            return Ok(r.reference.clone());
        }
        let link = repo.join(format!("_manifests/tags/{}/current/link", r.reference));
        self.link(&link)
            .filter(|d| hex_of(d).is_some())
            .ok_or_else(|| {
                format!(
                    "tag {} of {} is not in the registry data",
                    r.reference, r.repository
                )
            })
    }

    /// Checks that `digest` is a manifest revision of `repository` (what the registry
    /// serves for it).
    fn revision(&self, repository: &str, digest: &str) -> Result<(), String> {
        let hex = hex_of(digest).ok_or_else(|| format!("bad digest {digest}"))?;
        let link = self
            .repo(repository)
            .join(format!("_manifests/revisions/sha256/{hex}/link"));
        match self.link(&link) {
            Some(d) if d == digest => Ok(()),
            _ => Err(format!(
                "manifest {digest} is not linked in repository {repository}"
            )),
        }
    }

    /// Checks that the blob `digest` of `size` bytes is stored and linked to `repository`.
    fn blob(&self, repository: &str, digest: &str, size: Option<u64>) -> Result<(), String> {
        let path = self
            .blob_path(digest)
            .ok_or_else(|| format!("bad digest {digest}"))?;
        let meta = std::fs::metadata(&path).map_err(|_| format!("blob {digest} is missing"))?;
        if let Some(size) = size.filter(|&s| s != meta.len()) {
            return Err(format!(
                "blob {digest} has {} bytes, its manifest says {size}",
                meta.len()
            ));
        }
        let hex = hex_of(digest).unwrap_or_default();
        let link = self
            .repo(repository)
            .join(format!("_layers/sha256/{hex}/link"));
        match self.link(&link) {
            Some(d) if d == digest => Ok(()),
            _ => Err(format!(
                "blob {digest} is not linked in repository {repository}"
            )),
        }
    }

    fn json(&self, digest: &str) -> Result<Value, String> {
        let path = self
            .blob_path(digest)
            .ok_or_else(|| format!("bad digest {digest}"))?;
        let file = std::fs::File::open(&path).map_err(|_| format!("blob {digest} is missing"))?;
        let mut bytes = Vec::new();
        file.take(MAX_MANIFEST_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("blob {digest}: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("blob {digest} is not JSON: {e}"))
    }

    /// Checks the image for `arch`: its manifest (through a manifest list or index) and
    /// every blob it names. Returns the arch manifest's digest and its blob count.
    fn check_image(&self, r: &ImageRef, arch: &str) -> Result<(String, usize), String> {
        let top = self.manifest_digest(r)?;
        self.blob(&r.repository, &top, None)
            .or_else(|_| self.revision(&r.repository, &top))?;
        let manifest = self.json(&top)?;
        let (digest, manifest) = match manifest.get("manifests").and_then(Value::as_array) {
            Some(list) => {
                let entry = list
                    .iter()
                    .find(|m| {
                        m["platform"]["architecture"] == arch
                            && m["platform"]["os"].as_str().unwrap_or("linux") == "linux"
                    })
                    .ok_or_else(|| format!("its manifest list has no linux/{arch} manifest"))?;
                let digest = entry["digest"].as_str().unwrap_or_default().to_string();
                self.revision(&r.repository, &digest)?;
                self.blob_path(&digest)
                    .filter(|p| p.is_file())
                    .ok_or_else(|| format!("blob {digest} (linux/{arch} manifest) is missing"))?;
                (digest.clone(), self.json(&digest)?)
            }
            None => (top, manifest),
        };
        let mut blobs = 0;
        let config = &manifest["config"];
        let descriptors = std::iter::once(config).chain(
            manifest["layers"]
                .as_array()
                .map(|l| l.iter())
                .into_iter()
                .flatten(),
        );
        for d in descriptors {
            let digest = d["digest"]
                .as_str()
                .ok_or_else(|| format!("manifest {digest} names a blob without a digest"))?;
            self.blob(&r.repository, digest, d["size"].as_u64())?;
            blobs += 1;
        }
        // A single-platform manifest: its config says which arch it is for.
        let config = self.json(config["digest"].as_str().unwrap_or_default())?;
        match config["architecture"].as_str() {
            Some(a) if a != arch => Err(format!("it is built for {a}, not {arch}")),
            _ => Ok((digest, blobs)),
        }
    }
}

/// Reads the rendered file `path` of the tree.
fn rendered(layout: &BuildLayout, path: &str) -> Result<String, String> {
    let (p, node) = resolve(&layout.namespace, path)?;
    let mut text = String::new();
    ContentReader::open(&p, &node.entry)
        .and_then(|mut r| r.read_to_string(&mut text))
        .map_err(|e| format!("{path}: {e}"))?;
    Ok(text)
}

/// The command that fills the cache for these parameters.
pub fn fetch_command(params: &MountParams, cri: &str) -> String {
    format!(
        "rootfs-mount fetch --k8s {} --cri {cri} --arch {} --cache {}",
        params.version,
        params.arches.join(","),
        params.cache.display()
    )
}

/// Runs every check on a planned layout (made with `allow_missing`, so that missing
/// cache entries are reported here instead of refusing the plan).
pub fn check(params: &MountParams, layout: &BuildLayout) -> Result<Report, String> {
    let mut problems = Vec::new();
    let mut images = Vec::new();
    let profile = &layout.profile;
    for path in &layout.missing {
        problems.push(Problem {
            kind: "cache",
            subject: path.clone(),
            arch: None,
            message: format!("{path} is missing from the cache"),
        });
    }

    let kubefile = Kubefile::parse(&rendered(layout, "rootfs/Kubefile")?);
    let expect = [
        (
            "cluster.alpha.sealer.io/cluster-runtime-version",
            profile.version.to_string(),
        ),
        (
            "cluster.alpha.sealer.io/container-runtime-type",
            profile.cri.clone(),
        ),
        (
            "cluster.alpha.sealer.io/container-runtime-version",
            profile.cri_version.clone(),
        ),
    ];
    for (label, want) in expect {
        match kubefile.labels.get(label) {
            Some(have) if *have == want => {}
            have => problems.push(Problem {
                kind: "label",
                subject: label.to_string(),
                arch: None,
                message: format!(
                    "the Kubefile says {}, the build is for {want}",
                    have.map_or("nothing", String::as_str)
                ),
            }),
        }
    }
    // The label names the CRI sealer installs from the image: its tarball must be the
    // one the cache holds for every arch.
    let cri = kubefile
        .labels
        .get("cluster.alpha.sealer.io/container-runtime-type")
        .cloned()
        .unwrap_or_default();
    for arch in &params.arches {
        let tarball = format!("cri/{cri}/{arch}/{cri}.tar.gz");
        let shown = format!("{arch}/cri/{cri}.tar.gz");
        if !layout.missing.contains(&tarball)
            && !matches!(
                layout.namespace.resolve_path(Path::new(&shown)),
                Ok(Some(_))
            )
        {
            problems.push(Problem {
                kind: "label",
                subject: "cluster.alpha.sealer.io/container-runtime-type".into(),
                arch: Some(arch.clone()),
                message: format!("the Kubefile names {cri}, but the cache has no {tarball}"),
            });
        }
    }

    let registry = params.registry_dir();
    let storage = Storage {
        v2: registry.join("docker/registry/v2"),
    };
    for line in rendered(layout, "rootfs/imageList")?.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let image = match ImageRef::parse(line) {
            Ok(i) => i,
            Err(message) => {
                problems.push(Problem {
                    kind: "image",
                    subject: line.to_string(),
                    arch: None,
                    message,
                });
                continue;
            }
        };
        for arch in &params.arches {
            match storage.check_image(&image, arch) {
                Ok((manifest, blobs)) => images.push(Present {
                    image: image.image.clone(),
                    arch: arch.clone(),
                    manifest,
                    blobs,
                }),
                Err(message) => problems.push(Problem {
                    kind: "image",
                    subject: image.image.clone(),
                    arch: Some(arch.clone()),
                    message: format!(
                        "{} ({}:{}): {message}",
                        image.image, image.repository, image.reference
                    ),
                }),
            }
        }
    }
    let ok = problems.is_empty();
    let images_missing = problems.iter().any(|p| p.kind == "image");
    let fix = problems.iter().any(|p| p.kind != "label").then(|| {
        let fetch = fetch_command(params, &profile.cri);
        // `fetch --images` pulls every image of the image list into CACHE/registry.
        if images_missing {
            format!("{fetch} --images")
        } else {
            fetch
        }
    });
    Ok(Report {
        ok,
        registry,
        images,
        fix,
        problems,
    })
}

impl Report {
    /// The text report: one line per problem, then a summary (and the fix).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for p in &self.problems {
            let arch = p
                .arch
                .as_deref()
                .map(|a| format!(" [{a}]"))
                .unwrap_or_default();
            out.push_str(&format!("missing{arch}: {}\n", p.message));
        }
        let arches: std::collections::BTreeSet<&str> =
            self.images.iter().map(|i| i.arch.as_str()).collect();
        out.push_str(&format!(
            "{}: {} image manifests complete in {} ({}), {} problems\n",
            if self.ok { "ok" } else { "failed" },
            self.images.len(),
            self.registry.display(),
            arches.into_iter().collect::<Vec<_>>().join(","),
            self.problems.len()
        ));
        if let Some(fix) = &self.fix {
            out.push_str(&format!("fix: {fix}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_map_to_registry_repositories() {
        let cases = [
            (
                "registry.k8s.io/kube-apiserver:v1.23.4",
                "kube-apiserver",
                "v1.23.4",
            ),
            (
                "registry.k8s.io/coredns/coredns:v1.8.6",
                "coredns/coredns",
                "v1.8.6",
            ),
            (
                "docker.io/sealerio/lvscare:v1.1.3-beta.8",
                "sealerio/lvscare",
                "v1.1.3-beta.8",
            ),
            ("docker.io/nginx", "library/nginx", "latest"),
            ("nginx:1.25", "library/nginx", "1.25"),
            ("localhost:5000/a/b:c", "a/b", "c"),
            ("calico/cni:v3.26.1", "calico/cni", "v3.26.1"),
        ];
        for (image, repository, reference) in cases {
            let r = ImageRef::parse(image).unwrap();
            assert_eq!(
                (r.repository.as_str(), r.reference.as_str()),
                (repository, reference),
                "{image}"
            );
        }
        let digest = format!("quay.io/x/y@sha256:{}", "a".repeat(64));
        assert_eq!(
            ImageRef::parse(&digest).unwrap().reference,
            format!("sha256:{}", "a".repeat(64))
        );
        for bad in ["", "a b", "x/../y:1", "registry.k8s.io/:tag"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
    }
}
