//! `pull_into_registry_storage`: every reference for every arch into the registry's
//! on-disk storage, blobs shared by all images and versions. Order makes a killed run
//! harmless: blobs first (verified, renamed into place), then manifests and their
//! revision and layer links, and the tag last, so a tag never points at an image that
//! is not complete.

use super::digest::Digest;
use super::image_name::ImageName;
use super::registry_storage::RegistryStorage;
use super::resolve::{resolve, Resolved};
use super::source::Source;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub fn pull(
    source: &Source,
    references: &[String],
    arches: &[String],
    storage_root: &Path,
) -> Result<(), String> {
    let names = references
        .iter()
        .map(|r| ImageName::parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    let storage = RegistryStorage::open(storage_root)?;
    let resolved: Vec<Resolved> = source.block_on(async {
        let mut resolved = Vec::new();
        for name in names {
            resolved.push(resolve(source, name, arches).await?);
        }
        Ok::<_, String>(resolved)
    })?;

    // Each blob once, fetched through the first image that has it.
    let mut blobs: BTreeMap<Digest, &ImageName> = BTreeMap::new();
    for image in &resolved {
        for platform in &image.images {
            let manifest = &platform.image;
            for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
                blobs.entry(blob.digest.clone()).or_insert(&image.name);
            }
        }
    }
    let wanted: Vec<(ImageName, Digest, PathBuf)> = blobs
        .into_iter()
        .filter(|(digest, _)| !storage.has_blob(digest))
        .map(|(digest, name)| {
            let partial = storage.partial_blob(&digest);
            (name.clone(), digest, partial)
        })
        .collect();
    tracing::info!(
        blobs = wanted.len(),
        "downloading blobs into the registry storage"
    );
    source.block_on(source.blobs(wanted, |digest| storage.commit_blob(digest)))?;

    for image in &resolved {
        let repository = image.name.storage_repository();
        for platform in &image.images {
            let manifest = &platform.image;
            for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
                storage.link_layer(repository, &blob.digest)?;
            }
            storage.put_blob(&platform.manifest.digest, &platform.manifest.bytes)?;
            storage.link_revision(repository, &platform.manifest.digest)?;
        }
        storage.put_blob(&image.top.digest, &image.top.bytes)?;
        storage.link_revision(repository, &image.top.digest)?;
        if let Some(tag) = image.name.tag() {
            storage.link_tag(repository, tag, &image.top.digest)?;
        }
    }
    storage.finish();
    Ok(())
}
