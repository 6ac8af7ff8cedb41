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

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::archive::tar_listing::TarScanner;
use crate::archive::MemberKind;
use crate::layout::{fetch_command, BuildLayout, MountParams};
use crate::oci::digest::Digest;
use crate::oci::image_name::ImageName;
use crate::oci::manifest::{entries_for_arch, Manifest};
use crate::oci::registry_storage::blob_path_in;
use crate::pack::content::ContentReader;
use crate::pack::oci_layout::Kubefile;
use crate::pack::walk::resolve;

/// Manifests and indexes are small; anything bigger is not one.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

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

/// Registry v2 storage (`docker/registry/v2/` under the registry data folder), read only.
struct Storage {
    v2: PathBuf,
}

/// Blob sizes by digest, as the descriptors of a manifest give them.
fn descriptor_sizes(manifest: &Value) -> HashMap<String, u64> {
    let mut sizes = HashMap::new();
    let config = std::iter::once(&manifest["config"]);
    let layers = manifest["layers"].as_array().into_iter().flatten();
    for d in config.chain(layers) {
        if let (Some(digest), Some(size)) = (d["digest"].as_str(), d["size"].as_u64()) {
            sizes.insert(digest.to_string(), size);
        }
    }
    sizes
}

impl Storage {
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        blob_path_in(&self.v2, digest)
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
    fn manifest_digest(&self, image: &ImageName) -> Result<Digest, String> {
        let repository = image.storage_repository();
        if !self.repo(repository).is_dir() {
            return Err(format!(
                "repository {repository} is not in the registry data"
            ));
        }
        if let Some(digest) = &image.digest {
            self.revision(repository, digest)?;
            return Ok(digest.clone());
        }
        let tag = image.tag().unwrap_or("latest");
        let link = self
            .repo(repository)
            .join(format!("_manifests/tags/{tag}/current/link"));
        self.link(&link)
            .and_then(|d| Digest::parse(&d).ok())
            .ok_or_else(|| format!("tag {tag} of {repository} is not in the registry data"))
    }

    /// Checks that `digest` is a manifest revision of `repository` (what the registry
    /// serves for it) and stored.
    fn revision(&self, repository: &str, digest: &Digest) -> Result<(), String> {
        let link = self
            .repo(repository)
            .join(format!("_manifests/revisions/sha256/{}/link", digest.hex()));
        if self.link(&link) != Some(digest.to_string()) {
            return Err(format!(
                "manifest {digest} is not linked in repository {repository}"
            ));
        }
        if !self.blob_path(digest).is_file() {
            return Err(format!("blob {digest} (a manifest) is missing"));
        }
        Ok(())
    }

    /// Checks that the blob `digest` is stored (with the size its manifest gives) and
    /// linked to `repository`.
    fn blob(&self, repository: &str, digest: &Digest, size: Option<u64>) -> Result<(), String> {
        let meta = std::fs::metadata(self.blob_path(digest))
            .map_err(|_| format!("blob {digest} is missing"))?;
        if let Some(size) = size.filter(|&s| s != meta.len()) {
            return Err(format!(
                "blob {digest} has {} bytes, its manifest says {size}",
                meta.len()
            ));
        }
        let link = self
            .repo(repository)
            .join(format!("_layers/sha256/{}/link", digest.hex()));
        if self.link(&link) != Some(digest.to_string()) {
            return Err(format!(
                "blob {digest} is not linked in repository {repository}"
            ));
        }
        Ok(())
    }

    fn read(&self, digest: &Digest) -> Result<Vec<u8>, String> {
        let file = std::fs::File::open(self.blob_path(digest))
            .map_err(|_| format!("blob {digest} is missing"))?;
        let mut bytes = Vec::new();
        file.take(MAX_MANIFEST_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("blob {digest}: {e}"))?;
        Ok(bytes)
    }

    /// Checks the image for `arch`: its manifest (through a manifest list or index) and
    /// every blob it names. Returns the arch manifest's digest and its blob count.
    fn check_image(&self, image: &ImageName, arch: &str) -> Result<(Digest, usize), String> {
        let repository = image.storage_repository();
        let top = self.manifest_digest(image)?;
        self.revision(repository, &top)?;
        let bytes = self.read(&top)?;
        let (digest, bytes) = match Manifest::parse(&bytes)? {
            Manifest::List(entries) => {
                let entry = entries_for_arch(&entries, arch)
                    .into_iter()
                    .next()
                    .ok_or_else(|| format!("its manifest list has no linux/{arch} manifest"))?;
                self.revision(repository, &entry.digest)?;
                (entry.digest.clone(), self.read(&entry.digest)?)
            }
            Manifest::Image(_) => (top, bytes),
        };
        let Manifest::Image(manifest) = Manifest::parse(&bytes)? else {
            return Err(format!("manifest {digest} is a list inside a list"));
        };
        let raw: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        let sizes = descriptor_sizes(&raw);
        let blobs = std::iter::once(&manifest.config).chain(&manifest.layers);
        let mut count = 0;
        for blob in blobs {
            let size = sizes.get(&blob.digest.to_string()).copied();
            self.blob(repository, &blob.digest, size)?;
            count += 1;
        }
        // A single-platform image: its config says which arch it is for.
        let config: Value = serde_json::from_slice(&self.read(&manifest.config.digest)?)
            .map_err(|e| format!("image config {}: {e}", manifest.config.digest))?;
        match config["architecture"].as_str() {
            Some(a) if a != arch => Err(format!("it is built for {a}, not {arch}")),
            _ => Ok((digest, count)),
        }
    }
}

/// Whether the gzipped tarball at `path` holds a regular file named `daemon` (at any
/// depth); the reason when it does not. Read once, streaming: nothing is unpacked.
fn tarball_has(path: &Path, daemon: &str) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let mut gz = flate2::read::MultiGzDecoder::new(file);
    let mut scanner = TarScanner::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = gz
            .read(&mut buf)
            .map_err(|e| format!("cannot be read: {e}"))?;
        if n == 0 {
            break;
        }
        scanner.feed(&buf[..n]);
    }
    let listing = scanner
        .finish()
        .map_err(|(e, _)| format!("is not a tar archive: {e}"))?;
    let holds = listing
        .members
        .iter()
        .any(|m| m.kind == MemberKind::File && m.path.file_name().is_some_and(|n| n == daemon));
    if holds {
        Ok(())
    } else {
        Err(format!("holds no {daemon}"))
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

/// The `fetch` command that fills what is missing: the cache entries, and with
/// `--images` the registry data (whose image list also depends on the CNI and the sealer
/// generation).
fn fill_command(params: &MountParams, layout: &BuildLayout, images: bool) -> String {
    let mut cmd = fetch_command(params, &layout.profile);
    if images {
        if params.cni != "calico" {
            cmd.push_str(&format!(" --cni {}", params.cni));
        }
        if let Some(generation) = &params.sealer {
            cmd.push_str(&format!(" --sealer {generation}"));
        }
        cmd.push_str(" --images");
    }
    cmd
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
    // The label names the CRI sealer installs from the image: the cache must hold that
    // CRI's tarball for every arch, with the runtime's daemon in it.
    let cri = kubefile
        .labels
        .get("cluster.alpha.sealer.io/container-runtime-type")
        .cloned()
        .unwrap_or_default();
    for arch in &params.arches {
        let tarball = format!("cri/{cri}/{arch}/{cri}.tar.gz");
        if layout.missing.contains(&tarball) {
            continue;
        }
        let found = if cri == profile.cri && !profile.cri_daemon.is_empty() {
            tarball_has(&params.cache.join(&tarball), &profile.cri_daemon)
        } else {
            params
                .cache
                .join(&tarball)
                .is_file()
                .then_some(())
                .ok_or_else(|| "missing".into())
        };
        if let Err(why) = found {
            problems.push(Problem {
                kind: "label",
                subject: "cluster.alpha.sealer.io/container-runtime-type".into(),
                arch: Some(arch.clone()),
                message: format!("the Kubefile names {cri}, but the cache's {tarball} {why}"),
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
        let image = match ImageName::parse(line) {
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
                    image: line.to_string(),
                    arch: arch.clone(),
                    manifest: manifest.to_string(),
                    blobs,
                }),
                Err(message) => problems.push(Problem {
                    kind: "image",
                    subject: line.to_string(),
                    arch: Some(arch.clone()),
                    message: format!("{line} ({}): {message}", image.storage_repository()),
                }),
            }
        }
    }
    let ok = problems.is_empty();
    let images_missing = problems.iter().any(|p| p.kind == "image");
    let fix = problems
        .iter()
        .any(|p| p.kind != "label")
        .then(|| fill_command(params, layout, images_missing));
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
    use crate::layout::plan;
    use crate::oci::image_name::ImageName;
    use crate::oci::registry_storage::RegistryStorage;
    use crate::versions::KubeVersion;
    use serde_json::json;

    fn put_json(storage: &RegistryStorage, value: &Value) -> (Digest, usize) {
        let bytes = serde_json::to_vec(value).unwrap();
        let digest = Digest::of_bytes(&bytes);
        storage.put_blob(&digest, &bytes).unwrap();
        (digest, bytes.len())
    }

    /// A two-arch image under `image`'s storage name, written with the storage writer
    /// `fetch --images` uses. Returns the config digest of each arch.
    fn put_image(storage: &RegistryStorage, image: &str) -> Vec<(String, Digest)> {
        let name = ImageName::parse(image).unwrap();
        let repo = name.storage_repository();
        let mut entries = Vec::new();
        let mut configs = Vec::new();
        for arch in ["amd64", "arm64"] {
            let layer = format!("layer of {image} for {arch}").into_bytes();
            let layer_digest = Digest::of_bytes(&layer);
            storage.put_blob(&layer_digest, &layer).unwrap();
            storage.link_layer(repo, &layer_digest).unwrap();
            let (config, config_len) = put_json(
                storage,
                &json!({"architecture": arch, "os": "linux",
                        "rootfs": {"type": "layers", "diff_ids": [layer_digest.to_string()]}}),
            );
            storage.link_layer(repo, &config).unwrap();
            let (manifest, manifest_len) = put_json(
                storage,
                &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                   "digest": config.to_string(), "size": config_len},
                        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                    "digest": layer_digest.to_string(), "size": layer.len()}]}),
            );
            storage.link_revision(repo, &manifest).unwrap();
            entries.push(
                json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "digest": manifest.to_string(), "size": manifest_len,
                                "platform": {"architecture": arch, "os": "linux"}}),
            );
            configs.push((arch.to_string(), config));
        }
        let (index, _) = put_json(
            storage,
            &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": entries}),
        );
        storage.link_revision(repo, &index).unwrap();
        storage.link_tag(repo, name.tag().unwrap(), &index).unwrap();
        configs
    }

    #[test]
    fn check_follows_manifest_lists_to_every_blob_of_each_arch() {
        let data = std::env::temp_dir().join(format!("rootfs-mount-check-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let version = KubeVersion::parse("v1.23.4").unwrap();
        let mut params = MountParams::rendering(version, None, "calico".into(), None);
        params.arches = vec!["amd64".into(), "arm64".into()];
        params.registry_data = Some(data.clone());
        let layout = plan(&params).unwrap();

        let report = check(&params, &layout).unwrap();
        assert!(!report.ok);
        // The cache is not there: its entries are missing; so is every image.
        assert!(report
            .problems
            .iter()
            .any(|p| p.kind == "cache" && p.subject == "kube/v1.23.4/arm64/kubelet"));
        let fix = report.fix.as_deref().unwrap();
        assert!(
            fix.starts_with("rootfs-mount fetch --k8s v1.23.4 --cri docker --arch amd64,arm64"),
            "{fix}"
        );
        assert!(fix.ends_with(" --images"), "{fix}");

        let storage = RegistryStorage::open(&data).unwrap();
        let list = rendered(&layout, "rootfs/imageList").unwrap();
        let images: Vec<&str> = list.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut configs = Vec::new();
        for image in &images {
            configs.push((image.to_string(), put_image(&storage, image)));
        }
        let report = check(&params, &layout).unwrap();
        let image_problems: Vec<_> = report
            .problems
            .iter()
            .filter(|p| p.kind == "image")
            .collect();
        assert!(image_problems.is_empty(), "{image_problems:?}");
        assert_eq!(report.images.len(), images.len() * 2);
        assert!(report.images.iter().all(|i| i.blobs == 2));

        // The arm64 config of one image gone: that image, that arch, that blob.
        let (image, arch_configs) = &configs[3];
        let (_, config) = &arch_configs[1];
        std::fs::remove_file(blob_path_in(&data.join("docker/registry/v2"), config)).unwrap();
        let report = check(&params, &layout).unwrap();
        let image_problems: Vec<_> = report
            .problems
            .iter()
            .filter(|p| p.kind == "image")
            .collect();
        assert_eq!(image_problems.len(), 1, "{image_problems:?}");
        assert_eq!(image_problems[0].subject, *image);
        assert_eq!(image_problems[0].arch.as_deref(), Some("arm64"));
        assert!(image_problems[0]
            .message
            .contains(&format!("blob {config} is missing")));
        std::fs::remove_dir_all(&data).unwrap();
    }
}
