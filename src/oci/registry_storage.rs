//! The docker distribution registry's on-disk storage (its filesystem driver's layout under
//! `docker/registry/v2/`), written so that a registry serving the folder read-only answers
//! exactly what the source registry answered:
//!
//! ```text
//! blobs/sha256/<2 hex>/<hex>/data                           every blob, manifests included
//! repositories/<name>/_manifests/revisions/sha256/<hex>/link   "sha256:<hex>"
//! repositories/<name>/_manifests/tags/<tag>/current/link
//! repositories/<name>/_manifests/tags/<tag>/index/sha256/<hex>/link
//! repositories/<name>/_layers/sha256/<hex>/link             each config and layer blob
//! ```
//!
//! Every file reaches its final path by rename from `STORAGE/.partial/` (same file
//! system) after fsync, and a blob only once its digest verifies, so a reader or a
//! killed run never sees a half-written file. `.partial/` keeps interrupted blob
//! downloads for the next run to resume and is removed when a run leaves it empty.

use super::digest::Digest;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct RegistryStorage {
    v2: PathBuf,
    partial: PathBuf,
}

fn io_error(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

/// Renames `from` to `to` (creating `to`'s folder) and makes both folders durable.
pub fn rename_into_place(from: &Path, to: &Path) -> Result<(), String> {
    let parent = to
        .parent()
        .ok_or_else(|| format!("{}: no parent folder", to.display()))?;
    fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    fs::rename(from, to)
        .map_err(|e| format!("rename {} -> {}: {e}", from.display(), to.display()))?;
    fs::File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io_error(parent, e))
}

/// Refuses repository names and tags that would not stay one plain path below
/// `repositories/` (the reference grammar already forbids them; this is the backstop).
fn check_path_part(what: &str, text: &str) -> Result<(), String> {
    if text.is_empty()
        || text.starts_with('/')
        || text
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.starts_with('_'))
    {
        return Err(format!("{what} {text:?} cannot be stored in a registry"));
    }
    Ok(())
}

/// Where blob `digest` is stored below `v2` (the `docker/registry/v2` folder); also for
/// readers that must not create anything (`rootfs-mount check`).
pub fn blob_path_in(v2: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    v2.join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]))
}

impl RegistryStorage {
    /// The storage below `root` (the folder holding `docker/registry/v2/`), created if needed.
    pub fn open(root: &Path) -> Result<RegistryStorage, String> {
        let v2 = root.join("docker/registry/v2");
        let partial = root.join(".partial");
        for dir in [&v2, &partial] {
            fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        }
        Ok(RegistryStorage { v2, partial })
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        blob_path_in(&self.v2, digest)
    }

    /// Whether the blob is stored and its content has its digest (a blob that does not
    /// verify is downloaded again and replaced).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        Digest::of_file(&self.blob_path(digest)).as_ref() == Some(digest)
    }

    /// Where a download of `digest` is written before it verifies; stable across runs
    /// so that an interrupted download resumes.
    pub fn partial_blob(&self, digest: &Digest) -> PathBuf {
        self.partial.join(format!("sha256-{}", digest.hex()))
    }

    /// Moves a verified download into place.
    pub fn commit_blob(&self, digest: &Digest) -> Result<(), String> {
        rename_into_place(&self.partial_blob(digest), &self.blob_path(digest))
    }

    /// Stores `bytes` (a manifest) as blob `digest`, which the caller has verified.
    pub fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), String> {
        if self.has_blob(digest) {
            return Ok(());
        }
        self.write_file(&self.blob_path(digest), bytes)
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<(), String> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let temp = self.partial.join(format!(
            "file-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = fs::File::create(&temp)
            .and_then(|mut file| {
                file.write_all(bytes)?;
                file.sync_all()
            })
            .map_err(|e| io_error(&temp, e))
            .and_then(|()| rename_into_place(&temp, path));
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }

    /// Writes a link file (`sha256:<hex>`, no newline, as the registry writes them) unless
    /// it already says that.
    fn link(&self, path: PathBuf, digest: &Digest) -> Result<(), String> {
        let text = digest.to_string();
        if fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
            return Ok(());
        }
        self.write_file(&path, text.as_bytes())
    }

    fn repository(&self, name: &str) -> Result<PathBuf, String> {
        check_path_part("repository", name)?;
        Ok(self.v2.join("repositories").join(name))
    }

    /// Makes manifest `digest` fetchable by digest from repository `name`.
    pub fn link_revision(&self, name: &str, digest: &Digest) -> Result<(), String> {
        let path = self
            .repository(name)?
            .join(format!("_manifests/revisions/sha256/{}/link", digest.hex()));
        self.link(path, digest)
    }

    /// Makes config or layer blob `digest` fetchable from repository `name`.
    pub fn link_layer(&self, name: &str, digest: &Digest) -> Result<(), String> {
        let path = self
            .repository(name)?
            .join(format!("_layers/sha256/{}/link", digest.hex()));
        self.link(path, digest)
    }

    /// Points `name:tag` at manifest `digest`; written last, when all it needs is stored.
    pub fn link_tag(&self, name: &str, tag: &str, digest: &Digest) -> Result<(), String> {
        check_path_part("tag", tag)?;
        let tag_dir = self.repository(name)?.join("_manifests/tags").join(tag);
        self.link(
            tag_dir.join(format!("index/sha256/{}/link", digest.hex())),
            digest,
        )?;
        self.link(tag_dir.join("current/link"), digest)
    }

    /// Removes `.partial/` when nothing is left in it.
    pub fn finish(&self) {
        let _ = fs::remove_dir(&self.partial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_names_that_leave_the_repository_folder() {
        for bad in ["", "../x", "a//b", "a/./b", "/abs", "a/_manifests"] {
            assert!(check_path_part("repository", bad).is_err(), "{bad}");
        }
        assert!(check_path_part("repository", "calico/cni").is_ok());
    }
}
