//! The parts of image manifests, manifest lists/indexes and image configs that pulling
//! needs: which blobs an image has, which child manifest serves an arch, and the layers'
//! uncompressed digests. Both the docker schema 2 and the OCI media types are read; the
//! raw bytes are always kept as the registry served them, since their digest is the name.

use super::digest::Digest;
use serde::Deserialize;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The manifest media types we ask registries for (the `Accept` header).
pub const ACCEPTED: &[&str] = &[
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    OCI_MANIFEST,
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<RawEntry>>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
}

#[derive(Deserialize)]
struct RawEntry {
    digest: String,
    #[serde(default)]
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    architecture: String,
    os: String,
}

/// A blob an image manifest refers to.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub digest: Digest,
}

/// One image (one platform).
#[derive(Clone, Debug)]
pub struct ImageManifest {
    pub config: Blob,
    pub layers: Vec<Blob>,
}

/// One child of a manifest list.
#[derive(Clone, Debug)]
pub struct ListEntry {
    pub digest: Digest,
    /// `os/architecture`, empty when the entry has no platform (attestations and the like).
    pub os: String,
    pub architecture: String,
}

/// A manifest as served: an image, or a list of per-platform images.
#[derive(Clone, Debug)]
pub enum Manifest {
    Image(ImageManifest),
    List(Vec<ListEntry>),
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let raw: Raw =
            serde_json::from_slice(bytes).map_err(|e| format!("manifest is not JSON: {e}"))?;
        if raw.schema_version != 2 {
            return Err(format!(
                "manifest schema version {} is not supported (only 2)",
                raw.schema_version
            ));
        }
        let media_type = raw.media_type.unwrap_or_default();
        let is_list = match media_type.as_str() {
            DOCKER_MANIFEST_LIST | OCI_INDEX => true,
            DOCKER_MANIFEST | OCI_MANIFEST => false,
            // OCI allows leaving the media type out: the fields tell.
            "" => raw.manifests.is_some(),
            other => return Err(format!("manifest media type {other:?} is not supported")),
        };
        if is_list {
            let entries = raw
                .manifests
                .unwrap_or_default()
                .into_iter()
                .map(|entry| {
                    let platform = entry.platform.unwrap_or(RawPlatform {
                        architecture: String::new(),
                        os: String::new(),
                    });
                    Ok(ListEntry {
                        digest: Digest::parse(&entry.digest)?,
                        os: platform.os,
                        architecture: platform.architecture,
                    })
                })
                .collect::<Result<_, String>>()?;
            return Ok(Manifest::List(entries));
        }
        let blob = |d: RawDescriptor| -> Result<Blob, String> {
            Ok(Blob {
                digest: Digest::parse(&d.digest)?,
                media_type: d.media_type,
            })
        };
        let config = blob(raw.config.ok_or("image manifest has no config")?)?;
        let layers = raw
            .layers
            .unwrap_or_default()
            .into_iter()
            .map(blob)
            .collect::<Result<_, _>>()?;
        Ok(Manifest::Image(ImageManifest { config, layers }))
    }
}

/// The children of a list that serve `arch` on linux, in list order.
pub fn entries_for_arch<'a>(entries: &'a [ListEntry], arch: &str) -> Vec<&'a ListEntry> {
    entries
        .iter()
        .filter(|e| e.os == "linux" && e.architecture == arch)
        .collect()
}

/// The uncompressed layer digests (`rootfs.diff_ids`) of an image config.
pub fn diff_ids(config: &[u8]) -> Result<Vec<Digest>, String> {
    #[derive(Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    #[derive(Deserialize)]
    struct RootFs {
        diff_ids: Vec<String>,
    }
    let config: Config =
        serde_json::from_slice(config).map_err(|e| format!("image config: {e}"))?;
    config
        .rootfs
        .diff_ids
        .iter()
        .map(|d| Digest::parse(d))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn reads_images_and_lists() {
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{A}","size":1}},"layers":[{{"mediaType":"y","digest":"{B}","size":2}}]}}"#
        );
        let Manifest::Image(image) = Manifest::parse(image.as_bytes()).unwrap() else {
            panic!("not an image")
        };
        assert_eq!(image.config.digest.to_string(), A);
        assert_eq!(image.layers[0].media_type, "y");
        let list = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{A}","platform":{{"os":"linux","architecture":"amd64"}}}},{{"digest":"{B}","platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        );
        let Manifest::List(entries) = Manifest::parse(list.as_bytes()).unwrap() else {
            panic!("not a list")
        };
        assert_eq!(entries_for_arch(&entries, "arm64")[0].digest.to_string(), B);
        assert!(entries_for_arch(&entries, "s390x").is_empty());
        assert!(Manifest::parse(br#"{"schemaVersion":1}"#).is_err());
    }
}
