//! Paths as the inode table keeps them: each entry's last name, with a pointer to its
//! folder's path, which all the folder's entries share. A registry path is ~130 bytes
//! and most of it is its folder's; kept whole per entry the kernel holds, paths were a
//! third of the daemon's memory. A [`TreePath`] is one allocation (a count, the folder
//! pointer, the name's length and bytes) behind a one-word pointer; the whole path is
//! made again (one allocation) when a request needs it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use triomphe::ThinArc;

/// A path of the tree, not empty (the root has none): its last name and its folder's
/// path. The bytes are those of the path as given: the folder's, a `/` unless the
/// folder's name ends with one, then the name.
#[derive(Clone)]
pub(super) struct TreePath(ThinArc<Option<TreePath>, u8>);

impl std::fmt::Debug for TreePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_path())
    }
}

impl TreePath {
    fn node(folder: Option<TreePath>, name: &[u8]) -> Self {
        TreePath(ThinArc::from_header_and_slice(folder, name))
    }

    fn folder(&self) -> Option<&TreePath> {
        self.0.header.header.as_ref()
    }

    fn name(&self) -> &[u8] {
        &self.0.slice
    }

    /// Whether a `/` stands between this path and a name below it.
    fn needs_separator(&self) -> bool {
        !self.name().is_empty() && !self.name().ends_with(b"/")
    }

    /// `name` in the folder `folder` (a plain name, as lookups give).
    pub(super) fn child(folder: Option<&TreePath>, name: &OsStr) -> Self {
        TreePath::node(folder.cloned(), name.as_bytes())
    }

    /// `path` (not empty), sharing `folder` when it is the path of its parent: the
    /// bytes stay those of `path` whatever its shape.
    pub(super) fn of(path: &Path, folder: Option<&TreePath>) -> Self {
        if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
            let built = match folder {
                Some(f) if f.is(parent) => Some(TreePath::child(Some(f), name)),
                _ if parent.as_os_str().is_empty() => Some(TreePath::child(None, name)),
                _ => None,
            };
            if let Some(built) = built.filter(|b| b.is(path)) {
                return built;
            }
        }
        TreePath::node(None, path.as_os_str().as_bytes())
    }

    /// Whether this is the path `path`, compared from its end without making it.
    pub(super) fn is(&self, path: &Path) -> bool {
        let mut rest = path.as_os_str().as_bytes();
        let mut at = self;
        loop {
            let Some(before) = rest.strip_suffix(at.name()) else {
                return false;
            };
            rest = before;
            match at.folder() {
                None => return rest.is_empty(),
                Some(folder) => {
                    if folder.needs_separator() {
                        let Some(before) = rest.strip_suffix(b"/") else {
                            return false;
                        };
                        rest = before;
                    }
                    at = folder;
                }
            }
        }
    }

    /// The whole path.
    pub(super) fn to_path(&self) -> Arc<Path> {
        let mut parts: Vec<&TreePath> = Vec::new();
        let mut len = 0;
        let mut at = Some(self);
        while let Some(p) = at {
            len += p.name().len() + 1;
            parts.push(p);
            at = p.folder();
        }
        let mut bytes: Vec<u8> = Vec::with_capacity(len);
        for p in parts.iter().rev() {
            bytes.extend_from_slice(p.name());
            if !std::ptr::eq(*p, self) && p.needs_separator() {
                bytes.push(b'/');
            }
        }
        Arc::from(Path::new(OsStr::from_bytes(&bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_come_back_byte_for_byte_and_share_their_folder() {
        let top = TreePath::of(Path::new("rootfs"), None);
        let reg = TreePath::of(Path::new("rootfs/registry"), Some(&top));
        assert!(reg
            .folder()
            .is_some_and(|f| std::ptr::eq(f.name().as_ptr(), top.name().as_ptr())));
        let blob = TreePath::child(Some(&reg), OsStr::new("data"));
        assert_eq!(&*blob.to_path(), Path::new("rootfs/registry/data"));
        assert!(blob.is(Path::new("rootfs/registry/data")));
        for other in [
            "rootfs/registrydata",
            "rootfs/registry/dat",
            "registry/data",
            "x/rootfs/registry/data",
            "",
        ] {
            assert!(!blob.is(Path::new(other)), "{other}");
        }
        // A folder that is not the parent is not shared; odd shapes keep their bytes.
        let elsewhere = TreePath::of(Path::new("amd64/bin"), Some(&reg));
        assert!(
            elsewhere.folder().is_some_and(|f| f.is(Path::new("amd64")))
                || elsewhere.folder().is_none()
        );
        for odd in ["/deleted", "a//b", "a/b/", "./a", "a/./b", "/", "a"] {
            let p = TreePath::of(Path::new(odd), Some(&top));
            assert_eq!(p.to_path().as_os_str(), OsStr::new(odd), "{odd}");
            assert!(p.is(Path::new(odd)), "{odd}");
        }
    }
}
