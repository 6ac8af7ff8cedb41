//! Registry images: pulling images over the OCI distribution API (with `oci-client`) into
//! the two forms the cache holds — a `docker save` archive (`cri/<cri>/<arch>/registry.tar.gz`)
//! and the docker distribution registry's on-disk storage (`CACHE/registry`, shown as
//! `rootfs/registry/`). Nothing from a registry is kept before its digest verifies.
//!
//! [`image_name`] parses references, [`manifest`] reads manifests, [`source`] talks to
//! registries, [`resolve`] picks the images for the arches, and the two outputs are
//! [`registry_storage`] (with [`into_registry`]) and [`docker_archive`].

pub mod digest;
pub mod docker_archive;
pub mod image_name;
pub mod into_registry;
pub mod manifest;
pub mod registry_storage;
pub mod resolve;
pub mod source;

use std::path::Path;

/// Where and how images are pulled.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Registry host -> base URL to use instead (e.g. "docker.io" -> "http://127.0.0.1:5001"); tried for that host.
    pub mirrors: Vec<(String, String)>,
    /// Hosts (or mirror URLs) reached over plain http (loopback tests); https otherwise.
    pub insecure: Vec<String>,
    pub jobs: usize,
}

/// Pull `reference` (e.g. "docker.io/library/registry:2.8.3@sha256:...", a tag or digest; resolve a manifest list/index to `arch` on linux) and write it to `out` as a gzip-compressed `docker save` archive (manifest.json, repositories, <config>.json, one layer tar per layer — the format `docker load` and `nerdctl load` accept; layers stored uncompressed inside, as docker save does). Write to `out` atomically is the caller's job: write straight to `out`. Returns the sha256 hex of the written file.
pub fn save_docker_archive(
    reference: &str,
    arch: &str,
    opts: &PullOptions,
    out: &Path,
) -> Result<String, String> {
    let source = source::Source::new(opts)?;
    docker_archive::save(&source, reference, arch, out)
}

/// Pull every reference for every arch into a docker distribution registry's on-disk
/// storage under `storage_root` (the folder that holds `docker/registry/v2/`). A manifest
/// list is stored as served and its tag points at it; its children for `arches` are stored
/// with their blobs, children for other arches are not stored at all (the registry answers
/// "manifest unknown" for them). See [`registry_storage`] for the layout and its atomicity.
pub fn pull_into_registry_storage(
    references: &[String],
    arches: &[String],
    opts: &PullOptions,
    storage_root: &Path,
) -> Result<(), String> {
    let source = source::Source::new(opts)?;
    into_registry::pull(&source, references, arches, storage_root)
}
