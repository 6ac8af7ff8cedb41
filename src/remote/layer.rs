//! A folder or file of a remote cache as a layer: what `DiskTree` is for a local cache.
//! Entries carry the mode, owner and mtime the manifest recorded; file bytes are read by
//! range through [`super::object`].

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::manifest::Kind;
use super::{join, rel_str, RemoteCache};
use crate::archive::ArchiveSlice;
use crate::layers::{Child, Content, EntryKind, Layer, LayerEntry, Source};

#[derive(Debug)]
pub struct RemoteTree {
    cache: Arc<RemoteCache>,
    root: String,
    /// Top-level names with this suffix are not shown (as `DiskTree::hiding_suffix`).
    hide_suffix: Option<&'static str>,
}

impl RemoteTree {
    /// The folder or file `rel` of the cache.
    pub fn new(cache: Arc<RemoteCache>, rel: &str) -> Self {
        RemoteTree {
            cache,
            root: rel.trim_matches('/').to_string(),
            hide_suffix: None,
        }
    }

    pub fn hiding_suffix(mut self, suffix: &'static str) -> Self {
        self.hide_suffix = Some(suffix);
        self
    }

    pub fn exists(&self) -> bool {
        self.cache.entry(&self.root).is_some()
    }

    fn hidden(&self, rel: &str) -> bool {
        match self.hide_suffix {
            Some(suffix) => rel
                .split('/')
                .next()
                .is_some_and(|top| top.ends_with(suffix)),
            None => false,
        }
    }
}

impl Layer for RemoteTree {
    fn entry(&self, rel: &Path) -> io::Result<Option<LayerEntry>> {
        let rel = rel_str(rel);
        if self.hidden(&rel) {
            return Ok(None);
        }
        let path = join(&self.root, &rel);
        let Some(e) = self.cache.entry(&path) else {
            return Ok(None);
        };
        let shown = crate::layers::CacheObjects::shown(&*self.cache, Path::new(&path));
        let (kind, size, content) = match &e.kind {
            Kind::Dir => (EntryKind::Dir, 4096, Content::Dir),
            Kind::Link { target } => (
                EntryKind::Symlink,
                target.len() as u64,
                Content::Link(target.into()),
            ),
            Kind::File { size } => (
                EntryKind::File,
                *size,
                Content::Archive(ArchiveSlice {
                    archive: self.cache.stored(&path)?,
                    start: 0,
                    len: *size,
                }),
            ),
        };
        Ok(Some(LayerEntry {
            kind,
            perm: e.perm as u16,
            size,
            mtime: e.mtime(),
            ctime: None,
            nlink: None,
            uid: e.uid,
            gid: e.gid,
            content,
            source: Source::Path(shown),
        }))
    }

    fn children(&self, rel: &Path) -> io::Result<Vec<Child>> {
        let rel = rel_str(rel);
        let path = join(&self.root, &rel);
        let mut out = Vec::new();
        for name in self.cache.children_of(&path) {
            if rel.is_empty() && self.hidden(name) {
                continue;
            }
            let kind = match self.cache.entry(&join(&path, name)).map(|e| &e.kind) {
                Some(Kind::Dir) => EntryKind::Dir,
                Some(Kind::File { .. }) => EntryKind::File,
                Some(Kind::Link { .. }) => EntryKind::Symlink,
                None => continue,
            };
            out.push(Child {
                name: OsString::from(name),
                kind,
            });
        }
        Ok(out)
    }
}
