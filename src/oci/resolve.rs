//! From a reference to the per-platform images to pull: the manifest it names (a single
//! image, or a list/index) and, for a list, the child manifest of each requested arch on
//! linux. Shared by both outputs, so the registry storage and the `docker save` archive
//! always agree on which image an arch gets.

use super::digest::Digest;
use super::image_name::ImageName;
use super::manifest::{entries_for_arch, ImageManifest, Manifest};
use super::source::Source;

/// A manifest as served, with its verified digest.
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub digest: Digest,
}

pub struct PlatformImage {
    pub manifest: Fetched,
    pub image: ImageManifest,
}

pub struct Resolved {
    pub name: ImageName,
    /// What the reference names: the list when there is one.
    pub top: Fetched,
    /// The images to pull: the single image, or the list's children for the arches.
    pub images: Vec<PlatformImage>,
}

pub async fn resolve(
    source: &Source,
    name: ImageName,
    arches: &[String],
) -> Result<Resolved, String> {
    let (bytes, digest) = source.manifest(&name, None).await?;
    let top = Fetched { bytes, digest };
    let entries =
        match Manifest::parse(&top.bytes).map_err(|e| format!("{}: {e}", name.reference))? {
            Manifest::Image(image) => {
                let images = vec![PlatformImage {
                    manifest: Fetched {
                        bytes: top.bytes.clone(),
                        digest: top.digest.clone(),
                    },
                    image,
                }];
                return Ok(Resolved { name, top, images });
            }
            Manifest::List(entries) => entries,
        };
    let mut images: Vec<PlatformImage> = Vec::new();
    for arch in arches {
        let matching = entries_for_arch(&entries, arch);
        if matching.is_empty() {
            let has: Vec<String> = entries
                .iter()
                .map(|e| format!("{}/{}", e.os, e.architecture))
                .collect();
            return Err(format!(
                "{}: the manifest list {} has no linux/{arch} image (it has {})",
                name.reference,
                top.digest,
                has.join(", ")
            ));
        }
        for entry in matching {
            if images.iter().any(|i| i.manifest.digest == entry.digest) {
                continue;
            }
            let (bytes, digest) = source.manifest(&name, Some(&entry.digest)).await?;
            let image = match Manifest::parse(&bytes) {
                Ok(Manifest::Image(image)) => image,
                Ok(Manifest::List(_)) => {
                    return Err(format!(
                        "{}: {digest} is a list inside a list",
                        name.reference
                    ))
                }
                Err(e) => return Err(format!("{}: {digest}: {e}", name.reference)),
            };
            images.push(PlatformImage {
                manifest: Fetched { bytes, digest },
                image,
            });
        }
    }
    Ok(Resolved { name, top, images })
}
