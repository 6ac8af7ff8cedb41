//! `pack --format oci`: an OCI image layout holding one image per arch, each with the
//! content the rendered Kubefile's COPY lines give that arch's image root (what
//! `buildah`/sealer would copy from a mount), as one uncompressed layer.
//!
//! Layout: `DIR/oci-layout`, `DIR/index.json` with one manifest per arch (platform
//! `linux/<arch>`, annotation `org.opencontainers.image.ref.name: <arch>`, so
//! `oci:DIR:amd64` names it), blobs under `DIR/blobs/sha256/`. The image config carries
//! the Kubefile's `LABEL`s and its `CMD` (shell form, as buildah records it).
//!
//! COPY semantics (both sealer generations give the same root): `SRC/*` and a folder
//! `SRC` copy the folder's content into `DEST`; a file `SRC` lands as `DEST/<name>`.
//! `${ARCH}` is the arch. A later COPY wins over an earlier one for the same name.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::tar::{Naming, TarWriter};
use super::walk::{tree_path, walk};
use crate::layers::{build_epoch, Child, EntryKind, Layer, LayerEntry};
use crate::oci::digest::Digest;
use crate::tree::{Branch, Namespace};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A folder or file of the build tree, presented as a layer of the image's namespace.
#[derive(Debug)]
struct Subtree {
    ns: Arc<Namespace>,
    at: PathBuf,
}

impl Layer for Subtree {
    fn entry(&self, rel: &Path) -> io::Result<Option<LayerEntry>> {
        Ok(self.ns.resolve_path(&self.at.join(rel))?.map(|n| n.entry))
    }

    fn children(&self, rel: &Path) -> io::Result<Vec<Child>> {
        let path = self.at.join(rel);
        match self.ns.resolve_path(&path)? {
            Some(node) if node.entry.kind == EntryKind::Dir => self.ns.children(&path, &node),
            _ => Ok(Vec::new()),
        }
    }
}

/// What the Kubefile says of the image: its COPY lines (source, destination), labels
/// and CMD.
#[derive(Debug, Default, PartialEq)]
pub struct Kubefile {
    pub copies: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    pub cmd: Option<String>,
}

fn unquote(value: &str) -> String {
    let v = value.trim();
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .map(|v| v.replace("\\\"", "\""))
        .unwrap_or_else(|| v.to_string())
}

impl Kubefile {
    /// Reads the instructions rootfs-mount's Kubefiles use (`COPY`, `LABEL k=v ...`,
    /// `CMD`); comments and others are skipped.
    pub fn parse(text: &str) -> Self {
        let mut k = Kubefile::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("COPY ") {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                if let [src, dest] = parts[..] {
                    k.copies.push((src.to_string(), dest.to_string()));
                }
            } else if let Some(rest) = line.strip_prefix("LABEL ") {
                // One `key="value"` per line in our Kubefiles; a quoted value may hold spaces.
                if let Some((key, value)) = rest.split_once('=') {
                    k.labels.insert(key.trim().to_string(), unquote(value));
                }
            } else if let Some(rest) = line.strip_prefix("CMD ") {
                k.cmd = Some(rest.trim().to_string());
            }
        }
        k
    }
}

/// The image root of `arch`: the COPY lines of `kubefile` applied to the build tree.
pub fn image_namespace(
    ns: &Arc<Namespace>,
    kubefile: &Kubefile,
    arch: &str,
) -> Result<Namespace, String> {
    let mut branches = Vec::new();
    for (src, dest) in &kubefile.copies {
        let src = src.replace("${ARCH}", arch);
        let (src, contents) = match src.strip_suffix("/*") {
            Some(dir) => (dir.to_string(), true),
            None => (src.clone(), false),
        };
        let bad = || format!("Kubefile: COPY {src} {dest}: not a path of the tree");
        let from = tree_path(&src).ok_or_else(bad)?;
        let dest = tree_path(dest).ok_or_else(bad)?;
        let node = ns
            .resolve_path(&from)
            .map_err(|e| format!("{src}: {e}"))?
            .ok_or_else(|| format!("Kubefile: COPY {src}: no such file in the tree"))?;
        let at = if node.entry.kind == EntryKind::Dir || contents {
            dest
        } else {
            dest.join(from.file_name().ok_or_else(bad)?)
        };
        branches.push(Branch {
            at,
            layer: Arc::new(Subtree {
                ns: ns.clone(),
                at: from,
            }),
        });
    }
    // A later COPY overwrites an earlier one: highest first.
    branches.reverse();
    Ok(Namespace::new(branches))
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W: Write> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A blob's descriptor fields.
struct Blob {
    digest: String,
    size: u64,
}

/// Streams a blob into `blobs/sha256/`, named by its digest once written.
fn write_blob(dir: &Path, fill: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<Blob> {
    let blobs = dir.join("blobs/sha256");
    let temp = blobs.join(format!(".incoming.{}", std::process::id()));
    let file = std::fs::File::create(&temp)?;
    let mut w = Hashing {
        inner: io::BufWriter::with_capacity(1 << 16, file),
        hasher: Sha256::new(),
        len: 0,
    };
    fill(&mut w)?;
    w.flush()?;
    let digest = Digest::from_hasher(w.hasher);
    let file = w.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&temp, blobs.join(digest.hex()))?;
    Ok(Blob {
        digest: digest.to_string(),
        size: w.len,
    })
}

fn json_blob(dir: &Path, value: &Value) -> io::Result<Blob> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_blob(dir, |w| w.write_all(&bytes))
}

/// Writes one arch's image into the layout at `dir`; returns its manifest descriptor.
fn write_image(
    dir: &Path,
    image: &Namespace,
    kubefile: &Kubefile,
    arch: &str,
) -> io::Result<Value> {
    let layer = write_blob(dir, |w| {
        let mut tar = TarWriter::new(w, Naming::Bare);
        walk(image, Path::new(""), &mut |path, node| {
            if path.as_os_str().is_empty() {
                return Ok(());
            }
            tar.append(path, node)
        })?;
        tar.finish().map(|_| ())
    })?;
    let created = super::listing::utc(
        build_epoch()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    let mut config = json!({ "Labels": kubefile.labels });
    if let Some(cmd) = &kubefile.cmd {
        config["Cmd"] = json!(["/bin/sh", "-c", cmd]);
    }
    let config = json_blob(
        dir,
        &json!({
            "created": created,
            "architecture": arch,
            "os": "linux",
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
            "history": [{ "created": created, "created_by": "rootfs-mount pack --format oci" }],
        }),
    )?;
    let manifest = json_blob(
        dir,
        &json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": { "mediaType": CONFIG, "digest": config.digest, "size": config.size },
            "layers": [{ "mediaType": LAYER, "digest": layer.digest, "size": layer.size }],
        }),
    )?;
    Ok(json!({
        "mediaType": MANIFEST,
        "digest": manifest.digest,
        "size": manifest.size,
        "platform": { "architecture": arch, "os": "linux" },
        "annotations": { REF_NAME: arch },
    }))
}

/// Writes an OCI image layout with one image per arch of `arches` into `out`, which
/// must not exist yet (or be an empty folder). It is made beside `out` and renamed into
/// place when complete.
pub fn write_layout(
    ns: &Arc<Namespace>,
    kubefile: &Kubefile,
    arches: &[String],
    out: &Path,
) -> Result<(), String> {
    let shown = out.display();
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) || out.is_file() {
        return Err(format!(
            "{shown} already exists; remove it or name a new folder for the OCI layout"
        ));
    }
    let name = out
        .file_name()
        .ok_or_else(|| format!("{shown}: not a folder name"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp.{}", std::process::id()));
    let temp = out.with_file_name(temp_name);
    let result = (|| -> Result<(), String> {
        let io = |e: io::Error| format!("writing the OCI layout {shown}: {e}");
        std::fs::create_dir_all(temp.join("blobs/sha256")).map_err(io)?;
        let mut manifests = Vec::new();
        for arch in arches {
            let image = image_namespace(ns, kubefile, arch)?;
            manifests.push(write_image(&temp, &image, kubefile, arch).map_err(io)?);
        }
        let index = json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": manifests });
        std::fs::write(
            temp.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .map_err(io)?;
        std::fs::write(
            temp.join("index.json"),
            serde_json::to_vec(&index).map_err(|e| e.to_string())?,
        )
        .map_err(io)?;
        let _ = std::fs::remove_dir(out);
        std::fs::rename(&temp, out).map_err(io)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}
