//! A context compiled into the binary (see `build.rs`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{build_epoch, Child, Content, EntryKind, Layer, LayerEntry, Source};
use crate::embedded_contexts::{EmbeddedFile, FILES};

/// The embedded files below one folder of `contexts/` (e.g. `cri/docker`), as a layer.
#[derive(Debug)]
pub struct EmbeddedTree {
    prefix: String,
    entries: HashMap<PathBuf, LayerEntry>,
    children: HashMap<PathBuf, Vec<Child>>,
}

impl EmbeddedTree {
    /// The embedded folder `prefix` of `contexts/`; `None` when nothing is embedded there.
    pub fn new(prefix: &str) -> Option<Self> {
        let mut tree = EmbeddedTree {
            prefix: prefix.to_string(),
            entries: HashMap::new(),
            children: HashMap::new(),
        };
        let lead = format!("{prefix}/");
        for file in FILES {
            if let Some(rel) = file.path.strip_prefix(&lead) {
                tree.insert(Path::new(rel), file);
            }
        }
        if tree.entries.is_empty() {
            return None;
        }
        tree.entries.insert(PathBuf::new(), tree.dir_entry(""));
        Some(tree)
    }

    fn dir_entry(&self, rel: &str) -> LayerEntry {
        let path = format!("{}/{rel}", self.prefix);
        LayerEntry::folder(Source::Embedded(path.trim_end_matches('/').to_string()))
    }

    fn insert(&mut self, rel: &Path, file: &'static EmbeddedFile) {
        let (kind, content, size) = match file.link {
            Some(target) => (
                EntryKind::Symlink,
                Content::Link(PathBuf::from(target)),
                target.len() as u64,
            ),
            None => (
                EntryKind::File,
                Content::Bytes(Arc::from(file.data)),
                file.data.len() as u64,
            ),
        };
        self.entries.insert(
            rel.to_path_buf(),
            LayerEntry {
                kind,
                perm: file.mode as u16,
                size,
                mtime: build_epoch(),
                ctime: None,
                nlink: None,
                uid: 0,
                gid: 0,
                content,
                source: Source::Embedded(file.path.to_string()),
            },
        );
        // Register the file and every missing ancestor folder with its parent.
        let mut child = rel.to_path_buf();
        let mut child_kind = kind;
        while let Some(parent) = child.parent().map(Path::to_path_buf) {
            let name: OsString = child.file_name().unwrap_or_default().to_os_string();
            let list = self.children.entry(parent.clone()).or_default();
            if list.iter().any(|c| c.name == name) {
                break;
            }
            list.push(Child {
                name,
                kind: child_kind,
            });
            if parent.as_os_str().is_empty() {
                break;
            }
            let dir = self.dir_entry(&parent.to_string_lossy());
            self.entries.insert(parent.clone(), dir);
            child = parent;
            child_kind = EntryKind::Dir;
        }
    }
}

impl Layer for EmbeddedTree {
    fn entry(&self, rel: &Path) -> io::Result<Option<LayerEntry>> {
        Ok(self.entries.get(rel).cloned())
    }

    fn children(&self, rel: &Path) -> io::Result<Vec<Child>> {
        Ok(self.children.get(rel).cloned().unwrap_or_default())
    }
}

/// Reads one embedded file of `contexts/` (e.g. `versions.yaml`).
pub fn embedded_file(path: &str) -> Option<&'static [u8]> {
    FILES
        .iter()
        .find(|f| f.path == path && f.link.is_none())
        .map(|f| f.data)
}

/// Writes every embedded file of `contexts/` into `dir` (new, or an empty folder), with
/// its mode and the build's mtime, folders 0755 with the same mtime, so that `--contexts
/// DIR` over the export serves the same tree, byte for byte and time for time. The files
/// are written into a sibling folder first and renamed into place: a failed export leaves
/// nothing at `dir`. Returns the number of files.
pub fn export_contexts(dir: &Path) -> Result<usize, String> {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let shown = dir.display();
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err(format!(
                "{shown} is not empty: export into a new or empty folder"
            ));
        }
    }
    let name = dir
        .file_name()
        .ok_or_else(|| format!("{shown}: not a folder name"))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut staging_name = OsString::from(".");
    staging_name.push(name);
    staging_name.push(format!(".export-{}", std::process::id()));
    let staging = parent.join(staging_name);
    let fail = |what: &str, path: &Path, e: io::Error| {
        let _ = std::fs::remove_dir_all(&staging);
        format!("cannot {what} {}: {e}", path.display())
    };
    std::fs::create_dir(&staging).map_err(|e| fail("create", &staging, e))?;
    let times = std::fs::FileTimes::new()
        .set_modified(super::build_epoch())
        .set_accessed(super::build_epoch());
    let mut folders = vec![staging.clone()];
    for file in FILES {
        let path = staging.join(file.path);
        if let Some(parent) = path.parent() {
            let mut missing = Vec::new();
            let mut p = parent.to_path_buf();
            while !p.exists() {
                missing.push(p.clone());
                if !p.pop() {
                    break;
                }
            }
            std::fs::create_dir_all(parent).map_err(|e| fail("create", parent, e))?;
            folders.extend(missing);
        }
        match file.link {
            Some(target) => symlink(target, &path).map_err(|e| fail("write", &path, e))?,
            None => {
                std::fs::write(&path, file.data).map_err(|e| fail("write", &path, e))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode))
                    .map_err(|e| fail("chmod", &path, e))?;
                std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_times(times))
                    .map_err(|e| fail("set the time of", &path, e))?;
            }
        }
    }
    // Deepest first, so that setting a folder's time is not undone by a child's.
    folders.sort_by_key(|f| std::cmp::Reverse(f.components().count()));
    for folder in &folders {
        std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| fail("chmod", folder, e))?;
        std::fs::File::open(folder)
            .and_then(|f| f.set_times(times))
            .map_err(|e| fail("set the time of", folder, e))?;
    }
    std::fs::rename(&staging, dir).map_err(|e| fail("rename into place", dir, e))?;
    Ok(FILES.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_context_is_embedded_with_folders() {
        let tree = EmbeddedTree::new("rootfs").expect("rootfs context embedded");
        let etc = tree.entry(Path::new("etc")).unwrap().unwrap();
        assert_eq!(etc.kind, EntryKind::Dir);
        let names: Vec<_> = tree
            .children(Path::new("etc"))
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert!(names.iter().any(|n| n == "kubelet.service"), "{names:?}");
        assert!(EmbeddedTree::new("no-such-context").is_none());
    }
}
