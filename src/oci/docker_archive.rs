//! `save_docker_archive`: one image (a list resolved to an arch on linux) written as the
//! gzip-compressed `docker save` archive that `docker load` and `nerdctl load` read:
//!
//! ```text
//! <chain id>/VERSION, <chain id>/json, <chain id>/layer.tar   one folder per layer, uncompressed
//! <config hex>.json                                            the image config as served
//! manifest.json                                                [{Config, RepoTags, Layers}]
//! repositories                                                 {repo: {tag: top layer id}}
//! ```
//!
//! Layer folders are named by the layers' chain ids (unique per position, as docker save's
//! were). Each layer is decompressed once and its digest checked against the config's
//! `rootfs.diff_ids`. Entries have fixed owners, modes and times, so the same image gives
//! the same archive bytes.

use super::digest::Digest;
use super::image_name::ImageName;
use super::manifest::diff_ids;
use super::resolve::resolve;
use super::source::Source;
use flate2::write::GzEncoder;
use sha2::{Digest as _, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A scratch folder beside the output, removed however the save ends.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A writer that hashes what passes through it (the returned archive digest).
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `sha256(parent + " " + diff_id)`: the OCI chain id, one per layer position.
fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chain: Vec<Digest> = Vec::new();
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => Digest::of_bytes(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

/// Writes the uncompressed form of layer blob `blob` to `tar_path` and returns its digest.
/// Gzip is recognised by its magic bytes (media types vary between docker and OCI).
fn uncompress_layer(blob: &Path, tar_path: &Path) -> Result<Digest, String> {
    let io = |e: std::io::Error| format!("{}: {e}", blob.display());
    let mut magic = [0u8; 4];
    let n = fs::File::open(blob)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(io)?;
    let file = fs::File::open(blob).map_err(io)?;
    let mut reader: Box<dyn Read> = match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(file)),
        [0x28, 0xb5, 0x2f, 0xfd] => {
            return Err(format!("{}: zstd layers are not supported", blob.display()))
        }
        _ => Box::new(file),
    };
    let out = fs::File::create(tar_path).map_err(|e| format!("{}: {e}", tar_path.display()))?;
    let mut writer = HashingWriter {
        inner: std::io::BufWriter::new(out),
        hasher: Sha256::new(),
    };
    std::io::copy(&mut reader, &mut writer).map_err(io)?;
    writer.flush().map_err(io)?;
    Ok(Digest::from_hasher(writer.hasher))
}

fn header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(mode);
    header.set_entry_type(kind);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let mut h = header(bytes.len() as u64, 0o644, tar::EntryType::Regular);
    tar.append_data(&mut h, path, bytes)
}

pub fn save(source: &Source, reference: &str, arch: &str, out: &Path) -> Result<String, String> {
    let name = ImageName::parse(reference)?;
    let resolved = source.block_on(resolve(source, name, &[arch.to_string()]))?;
    let platform = resolved
        .images
        .first()
        .ok_or_else(|| format!("{reference}: no image for linux/{arch}"))?;
    let image = &platform.image;

    let file_name = out
        .file_name()
        .ok_or_else(|| format!("{}: not a file path", out.display()))?
        .to_string_lossy()
        .into_owned();
    let work = WorkDir(out.with_file_name(format!(".{file_name}.blobs-{}", std::process::id())));
    fs::create_dir_all(&work.0).map_err(|e| format!("{}: {e}", work.0.display()))?;
    let blob_path = |d: &Digest| work.0.join(d.hex());

    let mut blobs: Vec<Digest> = vec![image.config.digest.clone()];
    for layer in &image.layers {
        if !blobs.contains(&layer.digest) {
            blobs.push(layer.digest.clone());
        }
    }
    let wanted = blobs
        .iter()
        .map(|d| (resolved.name.clone(), d.clone(), blob_path(d)))
        .collect();
    source.block_on(source.blobs(wanted, |_| Ok(())))?;

    let config_path = blob_path(&image.config.digest);
    let config = fs::read(&config_path).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let diff_ids = diff_ids(&config).map_err(|e| format!("{reference}: {e}"))?;
    if diff_ids.len() != image.layers.len() {
        return Err(format!(
            "{reference}: the manifest has {} layers but the config lists {} diff_ids",
            image.layers.len(),
            diff_ids.len()
        ));
    }
    let mut layer_tars = Vec::new();
    for (i, (layer, want)) in image.layers.iter().zip(&diff_ids).enumerate() {
        let tar_path = work.0.join(format!("layer-{i}.tar"));
        let got = uncompress_layer(&blob_path(&layer.digest), &tar_path)?;
        if got != *want {
            return Err(format!(
                "{reference}: layer {} uncompresses to {got}, but the config says {want}",
                layer.digest
            ));
        }
        layer_tars.push(tar_path);
    }

    let chain = chain_ids(&diff_ids);
    let layer_paths: Vec<String> = chain
        .iter()
        .map(|c| format!("{}/layer.tar", c.hex()))
        .collect();
    let config_name = format!("{}.json", image.config.digest.hex());
    let repo_tags: Vec<String> = resolved.name.repo_tag().into_iter().collect();
    let manifest_json = serde_json::json!([{
        "Config": config_name,
        "RepoTags": repo_tags,
        "Layers": layer_paths,
    }]);
    let mut repositories = serde_json::Map::new();
    if let (Some(tag), Some(top)) = (resolved.name.tag(), chain.last()) {
        repositories.insert(
            resolved.name.familiar_repository(),
            serde_json::json!({ tag: top.hex() }),
        );
    }

    let file = fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let writer = HashingWriter {
        inner: std::io::BufWriter::new(file),
        hasher: Sha256::new(),
    };
    let mut tar = tar::Builder::new(GzEncoder::new(writer, flate2::Compression::default()));
    let written = (|| -> std::io::Result<HashingWriter<std::io::BufWriter<fs::File>>> {
        for (i, (id, tar_path)) in chain.iter().zip(&layer_tars).enumerate() {
            let id = id.hex();
            let mut dir = header(0, 0o755, tar::EntryType::Directory);
            tar.append_data(&mut dir, format!("{id}/"), std::io::empty())?;
            append_bytes(&mut tar, &format!("{id}/VERSION"), b"1.0")?;
            let mut legacy = serde_json::json!({ "id": id });
            if i > 0 {
                legacy["parent"] = serde_json::Value::from(chain[i - 1].hex());
            }
            append_bytes(
                &mut tar,
                &format!("{id}/json"),
                legacy.to_string().as_bytes(),
            )?;
            let size = fs::metadata(tar_path)?.len();
            let mut h = header(size, 0o644, tar::EntryType::Regular);
            tar.append_data(&mut h, format!("{id}/layer.tar"), fs::File::open(tar_path)?)?;
        }
        append_bytes(&mut tar, &config_name, &config)?;
        append_bytes(
            &mut tar,
            "manifest.json",
            manifest_json.to_string().as_bytes(),
        )?;
        let repositories = serde_json::Value::Object(repositories).to_string();
        append_bytes(&mut tar, "repositories", repositories.as_bytes())?;
        let mut writer = tar.into_inner()?.finish()?;
        writer.flush()?;
        Ok(writer)
    })()
    .map_err(|e| format!("{}: {e}", out.display()))?;
    let HashingWriter { inner, hasher } = written;
    let file = inner
        .into_inner()
        .map_err(|e| format!("{}: {e}", out.display()))?;
    file.sync_all()
        .map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(Digest::from_hasher(hasher).hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = Digest::of_bytes(b"a");
        let b = Digest::of_bytes(b"b");
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], Digest::of_bytes(format!("{a} {b}").as_bytes()));
    }
}
