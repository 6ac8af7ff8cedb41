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
