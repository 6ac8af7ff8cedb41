//! Archives shown in place (docs/DESIGN.md §4), read through their seek index (`crate::archive`):
//!
//! - [`TarballMembers`]: the members of every `oss/<arch>/bin/*.tar.gz`, flattened into
//!   `<arch>/bin/` by basename;
//! - [`GunzippedFile`]: `cri/<cri>/<arch>/registry.tar.gz` as `<arch>/images/registry.tar`,
//!   its decompressed bytes.
//!
//! Nothing is read at mount time: an archive is indexed when one of its entries is first
//! looked up or its folder first listed (the index is then reused across mounts).
//!
//! Rules of the flattened `bin/` (a plain file of the cache is mounted higher and wins
//! over all of these):
//! - a regular-file member (or a hard link to one) is shown by its basename, with its
//!   own mode and mtime; directories and special members are not shown;
//! - two members of one archive with the same basename: the later one in the archive
//!   wins (what extracting the archive flattened into one folder leaves);
//! - two archives with the same basename: the archive whose file name sorts first wins;
//! - a symlink member is shown as a symlink to the basename of the regular-file member
//!   it leads to inside the archive (`nerdctl -> nerdctl-1.7.6`), when that member is
//!   the one shown under that basename; a symlink that leaves the archive, dangles or
//!   loops is not shown.
//!
//! Archives are opened beneath the cache folder, as every layer root of the cache is:
//! a symlink (to the archive, or on the way to it) is followed while it stays inside the
//! cache, never out of it (such a tarball is left out, logged; such a `registry.tar.gz`
//! refuses the mount).
//!
//! A corrupt archive is logged once; the members listed before the fault are shown and
//! opening them fails with EIO; the rest of the mount is not affected.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use super::{Child, Content, EntryKind, Layer, LayerEntry, Source};
use crate::archive::{
    reported, ArchiveFault, ArchiveSlice, ArchiveSource, IndexStore, IndexedArchive, LazyArchive,
    MemberKind, Opener, TarListing, TarMember,
};
use crate::sys;

/// How many symlinks a member may go through before it is given up as a loop.
const MAX_LINK_HOPS: usize = 16;

/// The last second of year 9999: later (hostile) member times are clamped to it.
const LATEST_MTIME: i64 = 253_402_300_799;

fn time_of(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs.clamp(0, LATEST_MTIME) as u64)
}

/// A path of the cache's documented layout (`oss/amd64/bin/crictl.tar.gz`), resolved
/// beneath the cache folder as `DiskTree::open_in` does: symlinks on the way are followed
/// only while they stay inside the cache, so an archive may be a symlink to another file
/// of the cache, never to a file elsewhere on the host.
#[derive(Clone, Debug)]
struct InCache {
    cache: PathBuf,
    rel: PathBuf,
    /// A cache held in a remote store instead of the folder `cache`.
    objects: Option<Arc<dyn CacheObjects>>,
}

/// A cache held in a remote store (`crate::remote`): what the archive layers need of it.
/// Paths are cache-relative.
pub trait CacheObjects: Send + Sync + std::fmt::Debug {
    fn is_file(&self, rel: &Path) -> bool;
    fn is_dir(&self, rel: &Path) -> bool;
    /// The names of the files directly in the folder `rel`, sorted.
    fn files_in(&self, rel: &Path) -> Vec<OsString>;
    fn open(&self, rel: &Path) -> io::Result<Box<dyn ArchiveSource>>;
    /// How the path is shown (`s3://bucket/prefix/rel`): messages, provenance, index key.
    fn shown(&self, rel: &Path) -> PathBuf;
}

/// What an [`InCache`] path is.
enum Found {
    /// Opened `O_PATH`.
    At(OwnedFd),
    /// An object of a remote cache.
    RemoteFile,
    /// A folder of a remote cache.
    RemoteDir,
    Missing,
    /// A symlink on the way leads out of the cache: never followed.
    Escapes,
}

impl InCache {
    fn path(&self) -> PathBuf {
        match &self.objects {
            Some(objects) => objects.shown(&self.rel),
            None => self.cache.join(&self.rel),
        }
    }

    fn join(&self, name: &OsStr) -> InCache {
        InCache {
            cache: self.cache.clone(),
            rel: self.rel.join(name),
            objects: self.objects.clone(),
        }
    }

    fn find(&self) -> io::Result<Found> {
        if let Some(objects) = &self.objects {
            return Ok(if objects.is_file(&self.rel) {
                Found::RemoteFile
            } else if objects.is_dir(&self.rel) {
                Found::RemoteDir
            } else {
                Found::Missing
            });
        }
        let cache = match sys::open_path(&self.cache) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Found::Missing),
            Err(e) => return Err(e),
        };
        match sys::open_path_beneath(&cache, &self.rel) {
            Ok(fd) => Ok(Found::At(fd)),
            Err(e) => match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => Ok(Found::Missing),
                Some(libc::EXDEV) | Some(libc::ELOOP) => Ok(Found::Escapes),
                _ => Err(e),
            },
        }
    }

    /// Whether a regular file is there.
    fn is_regular_file(&self) -> io::Result<bool> {
        match self.find()? {
            Found::At(fd) => Ok(sys::fstat(&fd)?.st_mode & libc::S_IFMT == libc::S_IFREG),
            Found::RemoteFile => Ok(true),
            _ => Ok(false),
        }
    }

    /// Opens the archive for reading.
    fn open(&self) -> io::Result<Box<dyn ArchiveSource>> {
        match self.find()? {
            Found::At(fd) if sys::fstat(&fd)?.st_mode & libc::S_IFMT == libc::S_IFREG => {
                Ok(Box::new(sys::reopen_readonly(&fd)?))
            }
            Found::RemoteFile => match &self.objects {
                Some(objects) => objects.open(&self.rel),
                None => Err(io::Error::from_raw_os_error(libc::ENOENT)),
            },
            Found::At(_) | Found::RemoteDir => Err(io::Error::other("not a regular file")),
            Found::Missing => Err(io::Error::from_raw_os_error(libc::ENOENT)),
            Found::Escapes => Err(io::Error::other(ESCAPES)),
        }
    }

    fn opener(&self) -> Opener {
        let at = self.clone();
        Box::new(move || at.open())
    }
}

const ESCAPES: &str = "a symlink on the way leads out of the cache; the mount never follows those";

/// `a/b` joined with a symlink target, lexically; `None` when it leaves the archive.
fn resolve_link(member: &Path, target: &Path) -> Option<PathBuf> {
    let mut out: Vec<&OsStr> = member
        .parent()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    for part in target.components() {
        match part {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out.iter().collect())
}

/// One archive's contribution to `bin/`.
#[derive(Debug, Default)]
struct Flattened {
    entries: HashMap<OsString, LayerEntry>,
}

/// The longest file name Linux file systems take (bytes).
const NAME_MAX: usize = 255;

impl Flattened {
    fn new(
        listing: &TarListing,
        archive: &Path,
        content: &dyn Fn(&TarMember) -> Content,
        owner: (u32, u32),
    ) -> Self {
        let members = &listing.members;
        let mut by_path: HashMap<&Path, usize> = HashMap::new();
        let mut by_name: HashMap<&OsStr, usize> = HashMap::new();
        let mut overlong: Vec<&Path> = Vec::new();
        for (i, m) in members.iter().enumerate() {
            by_path.insert(&m.path, i);
            if matches!(m.kind, MemberKind::File | MemberKind::Symlink) {
                if let Some(name) = m.path.file_name() {
                    // No file system name is longer (NAME_MAX): listed, it could never
                    // be looked up.
                    if name.len() > NAME_MAX {
                        overlong.push(&m.path);
                        continue;
                    }
                    by_name.insert(name, i);
                }
            }
        }
        if let Some(first) = overlong.first() {
            tracing::warn!(
                archive = %archive.display(),
                count = overlong.len(),
                example = %first.display(),
                "members with a basename over 255 bytes are not shown"
            );
        }
        let mut entries = HashMap::new();
        for (name, &i) in &by_name {
            let m = &members[i];
            let source = Source::ArchiveMember {
                archive: archive.to_path_buf(),
                member: m.path.clone(),
            };
            let (kind, perm, size, content) = match m.kind {
                MemberKind::File => (
                    EntryKind::File,
                    (m.mode & 0o7777) as u16,
                    m.size,
                    content(m),
                ),
                _ => {
                    // Follow the symlink inside the archive to a regular file.
                    let mut at = i;
                    let mut target = None;
                    for _ in 0..MAX_LINK_HOPS {
                        let cur = &members[at];
                        let Some(next) =
                            cur.link.as_deref().and_then(|l| resolve_link(&cur.path, l))
                        else {
                            break;
                        };
                        let Some(&j) = by_path.get(next.as_path()) else {
                            break;
                        };
                        match members[j].kind {
                            MemberKind::File => {
                                target = Some(j);
                                break;
                            }
                            MemberKind::Symlink => at = j,
                            _ => break,
                        }
                    }
                    let Some(j) = target else {
                        continue;
                    };
                    let Some(target_name) = members[j].path.file_name() else {
                        continue;
                    };
                    if by_name.get(target_name) != Some(&j) {
                        continue;
                    }
                    let link = PathBuf::from(target_name);
                    let len = link.as_os_str().len() as u64;
                    (EntryKind::Symlink, 0o777, len, Content::Link(link))
                }
            };
            let entry = LayerEntry {
                kind,
                perm,
                size,
                mtime: time_of(m.mtime),
                ctime: None,
                nlink: None,
                uid: owner.0,
                gid: owner.1,
                content,
                source,
            };
            entries.insert(name.to_os_string(), entry);
        }
        Flattened { entries }
    }

    /// The members of `archive`; an error when the request gave up waiting for its
    /// index (EINTR, EAGAIN).
    fn of_archive(archive: &LazyArchive) -> io::Result<Self> {
        Ok(match archive.get_for_request()? {
            Ok(indexed) => {
                let Some(listing) = indexed.listing() else {
                    return Ok(Flattened::default());
                };
                let attrs = *indexed.attrs();
                let content = |m: &TarMember| {
                    Content::Archive(ArchiveSlice {
                        archive: indexed.clone(),
                        start: m.data_offset,
                        len: m.size,
                    })
                };
                Flattened::new(listing, archive.path(), &content, (attrs.uid, attrs.gid))
            }
            Err(fault) => {
                let Some(listing) = &fault.partial else {
                    return Ok(Flattened::default());
                };
                let fault: &ArchiveFault = &fault;
                let message: Arc<str> =
                    Arc::from(format!("{}: {}", archive.path().display(), fault.message));
                let content = |_: &TarMember| Content::Faulty(message.clone());
                Flattened::new(listing, archive.path(), &content, (0, 0))
            }
        })
    }
}

#[derive(Debug)]
struct Tarball {
    archive: LazyArchive,
    flattened: OnceLock<Flattened>,
}

impl Tarball {
    /// The members, once the index is there (a request that gave up waiting for it
    /// leaves nothing behind: the next one asks again).
    fn flattened(&self) -> io::Result<&Flattened> {
        if let Some(done) = self.flattened.get() {
            return Ok(done);
        }
        let made = Flattened::of_archive(&self.archive)?;
        Ok(self.flattened.get_or_init(|| made))
    }
}

/// `<arch>/bin/`: the members of the release tarballs in `oss/<arch>/bin/` (see the
/// module doc for the rules).
#[derive(Debug)]
pub struct TarballMembers {
    dir: InCache,
    store: Arc<IndexStore>,
    /// The tarballs, by file name; found on first use.
    tarballs: OnceLock<Vec<Tarball>>,
}

impl TarballMembers {
    /// The tarballs in the folder `rel` of the cache folder `cache` (`oss/<arch>/bin`).
    pub fn new(cache: &Path, rel: &Path, store: Arc<IndexStore>) -> Self {
        Self::in_cache(
            InCache {
                cache: cache.to_path_buf(),
                rel: rel.to_path_buf(),
                objects: None,
            },
            store,
        )
    }

    /// The tarballs in the folder `rel` of a remote cache.
    pub fn remote(objects: Arc<dyn CacheObjects>, rel: &Path, store: Arc<IndexStore>) -> Self {
        Self::in_cache(
            InCache {
                cache: PathBuf::new(),
                rel: rel.to_path_buf(),
                objects: Some(objects),
            },
            store,
        )
    }

    fn in_cache(dir: InCache, store: Arc<IndexStore>) -> Self {
        TarballMembers {
            dir,
            store,
            tarballs: OnceLock::new(),
        }
    }

    fn tarballs(&self) -> io::Result<&[Tarball]> {
        if let Some(found) = self.tarballs.get() {
            return Ok(found);
        }
        let mut found = Vec::new();
        if let (Found::RemoteDir, Some(objects)) = (self.dir.find()?, &self.dir.objects) {
            for name in objects.files_in(&self.dir.rel) {
                if name.as_bytes().ends_with(b".tar.gz") {
                    let at = self.dir.join(&name);
                    let archive =
                        LazyArchive::new(at.path(), at.opener(), self.store.clone(), true);
                    found.push(Tarball {
                        archive,
                        flattened: OnceLock::new(),
                    });
                }
            }
        } else if let Found::At(dir) = self.dir.find()? {
            let mut names: Vec<OsString> = Vec::new();
            for (name, kind) in sys::read_dir_fd(&dir)? {
                if !name.as_bytes().ends_with(b".tar.gz")
                    || !matches!(kind, libc::DT_REG | libc::DT_LNK | libc::DT_UNKNOWN)
                {
                    continue;
                }
                let at = self.dir.join(&name);
                match at.find()? {
                    Found::Escapes => tracing::warn!(
                        target: crate::fault::TARGET,
                        file = %at.path().display(),
                        "{ESCAPES}: its members are not shown"
                    ),
                    _ if at.is_regular_file()? => names.push(name),
                    _ => {}
                }
            }
            names.sort();
            for name in names {
                let at = self.dir.join(&name);
                let archive = LazyArchive::new(at.path(), at.opener(), self.store.clone(), true);
                found.push(Tarball {
                    archive,
                    flattened: OnceLock::new(),
                });
            }
        }
        Ok(self.tarballs.get_or_init(|| found))
    }
}

impl Layer for TarballMembers {
    fn entry(&self, rel: &Path) -> io::Result<Option<LayerEntry>> {
        let mut parts = rel.components();
        let name = match (parts.next(), parts.next()) {
            (None, _) => return Ok(Some(LayerEntry::folder(Source::Path(self.dir.path())))),
            (Some(Component::Normal(name)), None) => name,
            _ => return Ok(None),
        };
        // The first tarball that has the name wins, unless its member is faulty (listed
        // before the tarball failed): then a good one of a later tarball is served.
        let mut faulty = None;
        for tarball in self.tarballs()? {
            match tarball.flattened()?.entries.get(name) {
                Some(e) if matches!(e.content, Content::Faulty(_)) => {
                    faulty.get_or_insert_with(|| e.clone());
                }
                Some(e) => return Ok(Some(e.clone())),
                None => {}
            }
        }
        Ok(faulty)
    }

    fn children(&self, rel: &Path) -> io::Result<Vec<Child>> {
        if !rel.as_os_str().is_empty() {
            return Ok(Vec::new());
        }
        let mut out: Vec<Child> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for tarball in self.tarballs()? {
            let mut names: Vec<(&OsString, &LayerEntry)> =
                tarball.flattened()?.entries.iter().collect();
            names.sort_by(|a, b| a.0.cmp(b.0));
            for (name, e) in names {
                if seen.insert(name.clone()) {
                    out.push(Child {
                        name: name.clone(),
                        kind: e.kind,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// A folder holding one file: the decompressed bytes of a `.gz` (`<arch>/images/` with
/// `registry.tar` from `registry.tar.gz`).
#[derive(Debug)]
pub struct GunzippedFile {
    gz: InCache,
    name: OsString,
    archive: LazyArchive,
    /// Whether "the .gz leads out of the cache" was logged.
    escape_logged: AtomicBool,
}

impl GunzippedFile {
    /// Shows the gzip file `rel` of the cache folder `cache` as `name` in the layer's
    /// root folder.
    pub fn new(cache: &Path, rel: &Path, name: &str, store: Arc<IndexStore>) -> Self {
        Self::in_cache(
            InCache {
                cache: cache.to_path_buf(),
                rel: rel.to_path_buf(),
                objects: None,
            },
            name,
            store,
        )
    }

    /// Shows the gzip object `rel` of a remote cache as `name`.
    pub fn remote(
        objects: Arc<dyn CacheObjects>,
        rel: &Path,
        name: &str,
        store: Arc<IndexStore>,
    ) -> Self {
        Self::in_cache(
            InCache {
                cache: PathBuf::new(),
                rel: rel.to_path_buf(),
                objects: Some(objects),
            },
            name,
            store,
        )
    }

    fn in_cache(gz: InCache, name: &str, store: Arc<IndexStore>) -> Self {
        let archive = LazyArchive::new(gz.path(), gz.opener(), store, false);
        GunzippedFile {
            gz,
            name: OsString::from(name),
            archive,
            escape_logged: AtomicBool::new(false),
        }
    }

    /// Whether the `.gz` is there, for the mount's start-up check: a symlink that leads
    /// out of the cache is an error (as for every layer root of the cache).
    pub fn probe(&self) -> Result<bool, String> {
        let shown = || self.gz.path().display().to_string();
        match self
            .gz
            .find()
            .map_err(|e| format!("cannot read {}: {e}", shown()))?
        {
            Found::Escapes => Err(format!("cannot read {}: {ESCAPES}", shown())),
            Found::Missing => Ok(false),
            Found::At(_) | Found::RemoteFile | Found::RemoteDir => Ok(true),
        }
    }

    fn exists(&self) -> io::Result<bool> {
        if let Found::Escapes = self.gz.find()? {
            if !self.escape_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(target: crate::fault::TARGET, file = %self.gz.path().display(), "{ESCAPES}: not shown");
            }
            return Ok(false);
        }
        self.gz.is_regular_file()
    }

    fn file_entry(&self, indexed: Arc<IndexedArchive>) -> LayerEntry {
        let attrs = *indexed.attrs();
        let size = indexed.decompressed_size();
        LayerEntry {
            kind: EntryKind::File,
            perm: attrs.perm as u16,
            size,
            mtime: attrs.mtime,
            ctime: None,
            nlink: None,
            uid: attrs.uid,
            gid: attrs.gid,
            content: Content::Archive(ArchiveSlice {
                archive: indexed.clone(),
                start: 0,
                len: size,
            }),
            source: Source::Path(self.gz.path()),
        }
    }
}

impl Layer for GunzippedFile {
    fn entry(&self, rel: &Path) -> io::Result<Option<LayerEntry>> {
        if rel.as_os_str().is_empty() {
            return Ok(Some(LayerEntry::folder(Source::Synthetic)));
        }
        if rel.as_os_str() != self.name || !self.exists()? {
            return Ok(None);
        }
        match self.archive.get_for_request()? {
            Ok(indexed) => Ok(Some(self.file_entry(indexed))),
            // Its size is unknown: the entry itself fails (EIO), logged once already.
            Err(fault) => Err(reported(format!(
                "{}: {}",
                self.gz.path().display(),
                fault.message
            ))),
        }
    }

    fn children(&self, rel: &Path) -> io::Result<Vec<Child>> {
        if !rel.as_os_str().is_empty() || !self.exists()? {
            return Ok(Vec::new());
        }
        Ok(vec![Child {
            name: self.name.clone(),
            kind: EntryKind::File,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::scratch;
    use std::io::Write;

    /// A .tar.gz of (name, bytes or symlink target, kind) made with the tar crate.
    fn tarball(path: &Path, members: &[(&str, &[u8], tar::EntryType)]) {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data, kind) in members {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o755);
            h.set_mtime(1_700_000_000);
            if kind.is_symlink() || kind.is_hard_link() {
                h.set_size(0);
                b.append_link(&mut h, name, std::str::from_utf8(data).unwrap())
                    .unwrap();
            } else {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&b.into_inner().unwrap()).unwrap();
        std::fs::write(path, gz.finish().unwrap()).unwrap();
    }

    fn read(e: &LayerEntry) -> Vec<u8> {
        crate::layers::read_all(e).unwrap()
    }

    #[test]
    fn members_are_flattened_by_the_documented_rules() {
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        let dir = scratch("flat");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        tarball(
            &bin.join("a.tar.gz"),
            &[
                ("pkg/", b"", Directory),
                ("pkg/bin/tool-1.0", b"tool v1", Regular),
                ("pkg/bin/tool", b"tool-1.0", Symlink),
                ("pkg/bin/hard", b"pkg/bin/tool-1.0", Link),
                ("pkg/README", b"first", Regular),
                ("pkg/docs/README", b"second", Regular),
                ("pkg/bin/out", b"/usr/bin/env", Symlink),
                ("pkg/bin/loop", b"loop", Symlink),
            ],
        );
        tarball(
            &bin.join("b.tar.gz"),
            &[("README", b"from b", Regular), ("only-b", b"b!", Regular)],
        );
        std::fs::write(bin.join("c.tar.gz"), b"not gzip at all").unwrap();
        // A symlink to an archive elsewhere in the cache is followed; one that leads out
        // of the cache is not.
        tarball(&dir.join("shared.tar.gz"), &[("zero", b"0", Regular)]);
        std::os::unix::fs::symlink("../shared.tar.gz", bin.join("0.tar.gz")).unwrap();
        let outside = scratch("flat-outside");
        tarball(&outside.join("x.tar.gz"), &[("outside", b"x", Regular)]);
        std::os::unix::fs::symlink(outside.join("x.tar.gz"), bin.join("1.tar.gz")).unwrap();
        let store = Arc::new(IndexStore::new(dir.join("index")));
        let layer = TarballMembers::new(&dir, Path::new("bin"), store);

        let names: Vec<String> = layer
            .children(Path::new(""))
            .unwrap()
            .iter()
            .map(|c| c.name.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["zero", "README", "hard", "tool", "tool-1.0", "only-b"]
        );
        assert_eq!(
            get_source(&layer, "zero"),
            format!("{}:zero", bin.join("0.tar.gz").display())
        );
        let get = |n: &str| layer.entry(Path::new(n)).unwrap().unwrap();
        assert_eq!(read(&get("tool-1.0")), b"tool v1");
        assert_eq!(get("tool-1.0").perm, 0o755);
        assert_eq!(read(&get("hard")), b"tool v1");
        assert!(matches!(get("tool").content, Content::Link(ref t) if t == Path::new("tool-1.0")));
        // Later member of one archive wins; the first archive wins over the second.
        assert_eq!(read(&get("README")), b"second");
        assert_eq!(
            get("README").source.to_string(),
            format!("{}:pkg/docs/README", bin.join("a.tar.gz").display())
        );
        assert!(layer.entry(Path::new("out")).unwrap().is_none());
        assert!(layer.entry(Path::new("loop")).unwrap().is_none());
        assert!(layer.entry(Path::new("pkg")).unwrap().is_none());
        assert_eq!(
            layer.entry(Path::new("")).unwrap().unwrap().kind,
            EntryKind::Dir
        );
        // The index was written under the store's folder.
        assert!(dir.join("index").read_dir().unwrap().count() >= 2);
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    /// A member of a tarball that fails after listing it (its bytes give EIO) does not
    /// hide a good member of that name in a later tarball.
    #[test]
    fn a_faulty_member_does_not_hide_a_good_one_of_a_later_tarball() {
        let dir = scratch("faulty-shadow");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let noise: Vec<u8> = (0..400_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        tarball(
            &bin.join("a.tar.gz"),
            &[("tool", &noise, tar::EntryType::Regular)],
        );
        // Cut in the middle of the member's bytes: listed, then corrupt.
        let a = std::fs::read(bin.join("a.tar.gz")).unwrap();
        std::fs::write(bin.join("a.tar.gz"), &a[..a.len() / 2]).unwrap();
        tarball(
            &bin.join("b.tar.gz"),
            &[("tool", b"good tool", tar::EntryType::Regular)],
        );
        let store = Arc::new(IndexStore::new(dir.join("index")));
        let layer = TarballMembers::new(&dir, Path::new("bin"), store);
        let e = layer.entry(Path::new("tool")).unwrap().unwrap();
        assert_eq!(read(&e), b"good tool");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn get_source(layer: &dyn Layer, name: &str) -> String {
        let e = layer.entry(Path::new(name)).unwrap().unwrap();
        e.source.to_string()
    }

    #[test]
    fn gunzipped_file_shows_decompressed_bytes_or_fails_alone() {
        let dir = scratch("gunzip");
        let store = Arc::new(IndexStore::new(dir.join("index")));
        let view =
            |rel: &str| GunzippedFile::new(&dir, Path::new(rel), "registry.tar", store.clone());
        let missing = view("none.tar.gz");
        assert_eq!(missing.probe(), Ok(false));
        assert!(missing.children(Path::new("")).unwrap().is_empty());
        assert!(missing.entry(Path::new("registry.tar")).unwrap().is_none());

        tarball(
            &dir.join("registry.tar.gz"),
            &[("manifest.json", b"[]", tar::EntryType::Regular)],
        );
        let e = view("registry.tar.gz")
            .entry(Path::new("registry.tar"))
            .unwrap()
            .unwrap();
        assert_eq!(e.size, 2048);
        let bytes = read(&e);
        assert_eq!(&bytes[..13], b"manifest.json");
        assert_eq!(
            e.source.to_string(),
            dir.join("registry.tar.gz").display().to_string()
        );

        // A symlink inside the cache is followed (docker's and containerd's registry.tar.gz
        // are often one file); one leading out of it refuses the mount.
        std::fs::create_dir(dir.join("containerd")).unwrap();
        std::os::unix::fs::symlink("../registry.tar.gz", dir.join("containerd/registry.tar.gz"))
            .unwrap();
        let linked = view("containerd/registry.tar.gz");
        assert_eq!(linked.probe(), Ok(true));
        assert_eq!(
            linked
                .entry(Path::new("registry.tar"))
                .unwrap()
                .unwrap()
                .size,
            2048
        );
        std::os::unix::fs::symlink("/etc/hostname", dir.join("escape.tar.gz")).unwrap();
        let escape = view("escape.tar.gz");
        assert!(escape
            .probe()
            .unwrap_err()
            .contains("leads out of the cache"));
        assert!(escape.entry(Path::new("registry.tar")).unwrap().is_none());

        std::fs::write(dir.join("bad.tar.gz"), b"\x1f\x8b\x08\x00garbage").unwrap();
        let bad = view("bad.tar.gz");
        assert_eq!(bad.children(Path::new("")).unwrap().len(), 1);
        let err = bad.entry(Path::new("registry.tar")).unwrap_err();
        assert!(crate::archive::is_reported(&err));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
