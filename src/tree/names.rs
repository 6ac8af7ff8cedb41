//! Paths as the inode table keeps them: each entry's last name, with a pointer to its
//! folder's path, which all the folder's entries share. A registry path is ~130 bytes
//! and most of it is its folder's; kept whole per entry the kernel holds, paths were a
//! third of the daemon's memory. A [`TreePath`] is one allocation (a count, the folder
//! pointer, the name's length and bytes) behind a one-word pointer; the whole path is
//! made again (one allocation) when a request needs it.
//!
//! Half the entries of a registry are folders named by a sha256 digest (64 lowercase
//! hex characters: a blob's folder, a layer link's): such a name is kept as its 32
//! bytes and written out again when read, which puts the name's allocation in a 64-byte
//! heap chunk instead of a 96-byte one (see [`StoredName`]).

use std::ffi::OsStr;
use std::ops::Deref;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use triomphe::ThinArc;

/// The bytes a [`TreePath`] keeps for a name. A name of 64 lowercase hex characters
/// (a sha256 digest) is kept as the 32 bytes they spell, and only such a name is kept in
/// exactly 32 bytes: every other name of 32 bytes or more, or that ends in a NUL byte
/// and has 32 bytes or more, gets a NUL byte appended (never seen in practice: names
/// hold no NUL). So the stored bytes say which they are: 32 bytes, a digest; more than
/// 32 ending in NUL, the name without that NUL; anything else, the name itself.
enum StoredName<'a> {
    Plain(&'a [u8]),
    Digest([u8; 32]),
    Escaped(Vec<u8>),
}

/// The length of a digest kept as bytes, and of its hex name.
const DIGEST_BYTES: usize = 32;
const DIGEST_HEX: usize = 2 * DIGEST_BYTES;
const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl<'a> StoredName<'a> {
    fn of(name: &'a [u8]) -> Self {
        if name.len() == DIGEST_HEX {
            let mut digest = [0u8; DIGEST_BYTES];
            let decoded = name
                .chunks_exact(2)
                .zip(digest.iter_mut())
                .all(
                    |(pair, out)| match (hex_value(pair[0]), hex_value(pair[1])) {
                        (Some(high), Some(low)) => {
                            *out = high << 4 | low;
                            true
                        }
                        _ => false,
                    },
                );
            if decoded {
                return StoredName::Digest(digest);
            }
        }
        if name.len() == DIGEST_BYTES || (name.len() > DIGEST_BYTES && name.ends_with(&[0])) {
            let mut escaped = Vec::with_capacity(name.len() + 1);
            escaped.extend_from_slice(name);
            escaped.push(0);
            return StoredName::Escaped(escaped);
        }
        StoredName::Plain(name)
    }
}

impl Deref for StoredName<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            StoredName::Plain(b) => b,
            StoredName::Digest(d) => d,
            StoredName::Escaped(v) => v,
        }
    }
}

/// A name as stored bytes give it back (see [`StoredName`]).
enum Name<'a> {
    Plain(&'a [u8]),
    Hex([u8; DIGEST_HEX]),
}

impl<'a> Name<'a> {
    fn of(stored: &'a [u8]) -> Self {
        match stored.len() {
            DIGEST_BYTES => {
                let mut hex = [0u8; DIGEST_HEX];
                for (byte, out) in stored.iter().zip(hex.chunks_exact_mut(2)) {
                    out[0] = HEX[usize::from(byte >> 4)];
                    out[1] = HEX[usize::from(byte & 0x0f)];
                }
                Name::Hex(hex)
            }
            n if n > DIGEST_BYTES && stored.ends_with(&[0]) => Name::Plain(&stored[..n - 1]),
            _ => Name::Plain(stored),
        }
    }
}

impl Deref for Name<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Name::Plain(b) => b,
            Name::Hex(h) => h,
        }
    }
}

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
        TreePath(ThinArc::from_header_and_slice(
            folder,
            &StoredName::of(name),
        ))
    }

    fn folder(&self) -> Option<&TreePath> {
        self.0.header.header.as_ref()
    }

    fn name(&self) -> Name<'_> {
        Name::of(&self.0.slice)
    }

    /// Whether a `/` stands between this path and a name below it.
    fn needs_separator(&self) -> bool {
        // A digest name is 64 hex digits: no need to write it out to know.
        if self.0.slice.len() == DIGEST_BYTES {
            return true;
        }
        let name = self.name();
        !name.is_empty() && !name.ends_with(b"/")
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
            let Some(before) = rest.strip_suffix(&*at.name()) else {
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
            let name = p.name();
            bytes.extend_from_slice(&name);
            if !std::ptr::eq(*p, self) && !name.is_empty() && !name.ends_with(b"/") {
                bytes.push(b'/');
            }
        }
        Arc::from(Path::new(OsStr::from_bytes(&bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(name: &[u8]) -> Vec<u8> {
        StoredName::of(name).to_vec()
    }

    #[test]
    fn digest_names_are_kept_in_32_bytes_and_come_back() {
        let hex = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let kept = stored(hex);
        assert_eq!(kept.len(), 32);
        assert_eq!(kept[..2], [0x01, 0x23]);
        assert_eq!(&*Name::of(&kept), hex);
        let path = TreePath::child(None, OsStr::from_bytes(hex));
        assert_eq!(path.0.slice.len(), 32);
        assert_eq!(path.to_path().as_os_str().as_bytes(), hex);
        assert!(path.is(Path::new(OsStr::from_bytes(hex))));
        let below = TreePath::child(Some(&path), OsStr::new("data"));
        let mut whole = hex.to_vec();
        whole.extend_from_slice(b"/data");
        assert_eq!(below.to_path().as_os_str().as_bytes(), &whole[..]);
        assert!(below.is(Path::new(OsStr::from_bytes(&whole))));
        assert!(!below.is(Path::new(OsStr::from_bytes(&whole[1..]))));
    }

    #[test]
    fn other_names_stay_plain_whatever_their_length() {
        let upper = b"0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef".to_vec();
        let mut not_hex = upper.to_ascii_lowercase();
        not_hex[63] = b'g';
        let names: Vec<Vec<u8>> = vec![
            upper,
            not_hex,
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde".to_vec(),
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0".to_vec(),
            vec![b'x'; 32],
            vec![0xff; 32],
            [vec![b'x'; 40], vec![0]].concat(),
            [vec![b'x'; 31], vec![0]].concat(),
            vec![b'x'; 33],
            b"data".to_vec(),
            Vec::new(),
        ];
        for name in names {
            let kept = stored(&name);
            assert_ne!(kept.len(), 32, "{name:?} is not kept as a digest");
            assert_eq!(&*Name::of(&kept), &name[..], "{name:?}");
            let path = TreePath::child(None, OsStr::from_bytes(&name));
            assert_eq!(path.to_path().as_os_str().as_bytes(), &name[..]);
        }
        // Short names cost nothing more.
        assert_eq!(stored(b"data"), b"data");
        assert_eq!(stored(&[b'x'; 33]), [b'x'; 33]);
    }

    #[test]
    fn paths_come_back_byte_for_byte_and_share_their_folder() {
        let top = TreePath::of(Path::new("rootfs"), None);
        let reg = TreePath::of(Path::new("rootfs/registry"), Some(&top));
        assert!(reg
            .folder()
            .is_some_and(|f| std::ptr::eq(f.0.slice.as_ptr(), top.0.slice.as_ptr())));
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
