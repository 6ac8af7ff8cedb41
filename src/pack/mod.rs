//! The tree without FUSE: what `render`, `tree` and `pack` print or write, for build
//! hosts with no `/dev/fuse` (CI containers, pods, rootless hosts) and for inspection.
//! Everything here reads the same [`Namespace`] a mount serves, so a packed tar equals a
//! `tar` of the mount byte for byte.
//!
//! - [`walk`]: the tree in GNU tar `--sort=name` order, and paths as users type them;
//! - [`content`]: an entry's bytes as a reader, streamed from its layer;
//! - [`tar`]: GNU tar's exact bytes;
//! - [`listing`]: `tree`'s text and JSON;
//! - [`oci_layout`]: an OCI image layout of what the Kubefile's COPY lines put in the image.

pub mod content;
pub mod listing;
pub mod oci_layout;
pub mod tar;
pub mod walk;

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::layout::MountParams;
use crate::tree::Namespace;

/// Refuses an output inside a folder the tree is read from (the cache, the registry
/// data, the contexts): the pack would read its own half-written output.
pub fn check_output(params: &MountParams, out: &Path) -> Result<(), String> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(dir) = std::fs::canonicalize(parent) else {
        return Err(format!(
            "cannot write {}: no folder {}",
            out.display(),
            parent.display()
        ));
    };
    for root in params.source_roots() {
        let root = std::fs::canonicalize(&root).unwrap_or(root);
        if dir.starts_with(&root) {
            return Err(format!(
                "-o {} is inside {}, which the tree is read from; write it elsewhere",
                out.display(),
                root.display()
            ));
        }
    }
    Ok(())
}

/// Writes the whole tree to `out` as `tar --sort=name --owner=0 --group=0
/// --numeric-owner -cf - -C MOUNT .` would; returns the bytes written.
pub fn pack_tar<W: Write>(ns: &Namespace, out: W) -> io::Result<u64> {
    let mut tar = tar::TarWriter::new(
        io::BufWriter::with_capacity(1 << 16, out),
        tar::Naming::DotSlash,
    );
    walk::walk(ns, Path::new(""), &mut |path, node| tar.append(path, node))?;
    let (mut out, written) = tar.finish()?;
    out.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests;

/// A file written under a temporary name beside `path` and renamed over it once
/// complete and synced: nothing half-written ever shows under `path`.
pub struct AtomicFile {
    file: Option<File>,
    temp: PathBuf,
    path: PathBuf,
}

impl AtomicFile {
    pub fn create(path: &Path) -> io::Result<Self> {
        if path.is_dir() {
            return Err(io::Error::other("it is a folder; name the file to write"));
        }
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other(format!("{}: not a file name", path.display())))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".tmp.{}", std::process::id()));
        let temp = path.with_file_name(temp_name);
        let file = File::create(&temp)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", temp.display())))?;
        Ok(AtomicFile {
            file: Some(file),
            temp,
            path: path.to_path_buf(),
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until commit")
    }

    /// Syncs the file, renames it into place and syncs the folder.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().expect("open until commit");
        let placed = file
            .sync_all()
            .and_then(|()| std::fs::rename(&self.temp, &self.path));
        drop(file);
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&self.temp);
            return Err(e);
        }
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty());
        File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
