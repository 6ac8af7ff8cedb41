//! An empty folder: keeps a name of the seed's tree present (`<arch>/images`,
//! `rootfs/registry`) when no other layer provides it.

use std::io;
use std::path::Path;

use super::{Child, Layer, LayerEntry, Source};

#[derive(Debug, Default)]
pub struct EmptyDir;

impl Layer for EmptyDir {
    fn entry(&self, rel: &Path) -> io::Result<Option<LayerEntry>> {
        if !rel.as_os_str().is_empty() {
            return Ok(None);
        }
        Ok(Some(LayerEntry::folder(Source::Synthetic)))
    }

    fn children(&self, _rel: &Path) -> io::Result<Vec<Child>> {
        Ok(Vec::new())
    }
}
