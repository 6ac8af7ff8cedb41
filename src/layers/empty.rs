//! An empty folder: keeps a name of the seed's tree present (`<arch>/images`,
//! `rootfs/registry`) when no other layer provides it.

use std::io;
use std::path::Path;

use super::{build_epoch, Child, Content, EntryKind, Layer, LayerEntry, Source};

#[derive(Debug, Default)]
pub struct EmptyDir;

impl Layer for EmptyDir {
    fn entry(&self, rel: &Path) -> io::Result<Option<LayerEntry>> {
        if !rel.as_os_str().is_empty() {
            return Ok(None);
        }
        Ok(Some(LayerEntry {
            kind: EntryKind::Dir,
            perm: 0o755,
            size: 4096,
            mtime: build_epoch(),
            ctime: None,
            nlink: None,
            uid: 0,
            gid: 0,
            content: Content::Dir,
            source: Source::Synthetic,
        }))
    }

    fn children(&self, _rel: &Path) -> io::Result<Vec<Child>> {
        Ok(Vec::new())
    }
}
