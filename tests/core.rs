//! The merged tree without FUSE: a `MergedTree` over folders on disk and an upper folder,
//! driven the way the adapter drives it, with the upper folder's on-disk format checked
//! after each change (whiteouts, opaque folders, metacopy xattrs). No mount, no root.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rootfs_mount::layers::DiskTree;
use rootfs_mount::tree::{AttrChange, Branch, Caller, MergedTree, Namespace, ROOT_INO};
use rootfs_mount::upper::{UpperDir, METACOPY_XATTR, OPAQUE_MARKER};

/// A tree of one lower folder (mounted at the root) and an upper folder.
struct Fixture {
    lower: PathBuf,
    upper: PathBuf,
    tree: MergedTree,
}

fn caller() -> Caller {
    let meta = std::fs::metadata("/proc/self").expect("stat /proc/self");
    Caller {
        uid: meta.uid(),
        gid: meta.gid(),
    }
}

/// `files`: (path, content) pairs of the lower folder; a path ending in `/` is a folder.
fn fixture(name: &str, files: &[(&str, &str)]) -> Fixture {
    let dir = common::scratch(&format!("core-{name}"));
    let (lower, upper) = (dir.join("lower"), dir.join("upper"));
    std::fs::create_dir_all(&lower).unwrap();
    for (path, content) in files {
        let at = lower.join(path);
        if path.ends_with('/') {
            std::fs::create_dir_all(&at).unwrap();
        } else {
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::write(&at, content).unwrap();
        }
    }
    let ns = Namespace::new(vec![Branch {
        at: PathBuf::new(),
        layer: Arc::new(DiskTree::open(&lower).unwrap()),
    }])
    .with_upper(Arc::new(UpperDir::open(&upper).unwrap()));
    let tree = MergedTree::new(ns, dir.clone()).unwrap();
    Fixture { lower, upper, tree }
}

impl Fixture {
    /// The inode of `path`, looked up one name at a time as the kernel does.
    fn ino(&self, path: &str) -> u64 {
        self.try_ino(path)
            .unwrap_or_else(|e| panic!("lookup {path}: errno {e}"))
    }

    fn try_ino(&self, path: &str) -> Result<u64, i32> {
        let mut ino = ROOT_INO;
        for name in Path::new(path).iter() {
            ino = self.tree.lookup(ino, name).map_err(|e| e.errno)?.0;
        }
        Ok(ino)
    }

    fn read(&self, path: &str) -> Vec<u8> {
        let ino = self.ino(path);
        // Opened now (as for passthrough) and opened by the first read: the same bytes.
        let [bytes, eager] = [None, Some(0)].map(|backing_from| {
            let opened = self.tree.open(ino, backing_from).unwrap();
            let bytes = self
                .tree
                .read(opened.fh, 0, 1 << 20, |r| r.map(|b| b.to_vec()))
                .unwrap();
            self.tree.release(opened.fh);
            bytes
        });
        assert_eq!(bytes, eager, "both opens of {path}");
        // The read of a file the kernel did not open gives the same bytes.
        let unopened = self
            .tree
            .read_unopened(ino, 0, 1 << 20, |r| r.map(|b| b.to_vec()))
            .unwrap();
        assert_eq!(bytes, unopened, "both read paths of {path}");
        bytes
    }

    fn names(&self, path: &str) -> Vec<String> {
        let ino = if path.is_empty() {
            ROOT_INO
        } else {
            self.ino(path)
        };
        let listing = self.tree.listing(ino, 0).unwrap();
        self.tree.listing_done(ino);
        listing
            .iter()
            .map(|i| i.name.to_string_lossy().into_owned())
            .collect()
    }

    fn write(&self, path: &str, offset: u64, data: &[u8]) {
        let fh = self
            .tree
            .open_for_write(self.ino(path), libc::O_RDWR)
            .unwrap();
        self.tree.write(fh, offset, data).unwrap();
        self.tree.release(fh);
    }

    fn upper_names(&self, path: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.upper.join(path))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            // The work folder of copy-ups belongs to the upper layer itself.
            .filter(|n| n != ".wh.copyup.work")
            .collect();
        names.sort();
        names
    }
}

fn has_xattr(path: &Path, name: &str) -> bool {
    let file = std::fs::File::open(path).unwrap();
    rootfs_mount::sys::at::flistxattr(&file)
        .unwrap()
        .iter()
        .any(|n| n == name)
}

#[test]
fn first_write_copies_the_file_up_with_its_folders() {
    let f = fixture("copyup", &[("a/b/file", "lower bytes")]);
    assert!(f.upper_names("").is_empty());
    f.write("a/b/file", 0, b"UPPER");
    assert_eq!(f.read("a/b/file"), b"UPPER bytes");
    assert_eq!(
        std::fs::read(f.upper.join("a/b/file")).unwrap(),
        b"UPPER bytes"
    );
    assert_eq!(
        std::fs::read(f.lower.join("a/b/file")).unwrap(),
        b"lower bytes",
        "the layer below is never written"
    );
    assert!(!has_xattr(&f.upper.join("a/b/file"), METACOPY_XATTR));
}

#[test]
fn open_for_write_without_a_write_copies_nothing() {
    let f = fixture("pending", &[("file", "x")]);
    let fh = f.tree.open_for_write(f.ino("file"), libc::O_RDWR).unwrap();
    let read = f.tree.read(fh, 0, 10, |r| r.map(|b| b.to_vec())).unwrap();
    assert_eq!(read, b"x");
    f.tree.release(fh);
    assert!(f.upper_names("").is_empty());
}

#[test]
fn chmod_is_a_metadata_only_copy_up() {
    let f = fixture("metacopy", &[("dir/file", "bytes below")]);
    let ino = f.ino("dir/file");
    let node = f
        .tree
        .setattr(
            ino,
            AttrChange {
                mode: Some(0o600),
                ..AttrChange::default()
            },
        )
        .unwrap();
    assert_eq!(node.entry.perm, 0o600);
    assert_eq!(node.entry.size, 11);
    let up = f.upper.join("dir/file");
    let meta = std::fs::metadata(&up).unwrap();
    assert_eq!(meta.len(), 0, "no bytes copied");
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert!(has_xattr(&up, METACOPY_XATTR), "metacopy marker on {up:?}");
    assert_eq!(f.read("dir/file"), b"bytes below");
    // The first write completes the copy-up: the marker goes, the bytes come up.
    f.write("dir/file", 0, b"B");
    assert_eq!(std::fs::read(&up).unwrap(), b"Bytes below");
    assert!(!has_xattr(&up, METACOPY_XATTR));
    assert_eq!(
        std::fs::metadata(&up).unwrap().mode() & 0o7777,
        0o600,
        "the mode set before the copy-up stays"
    );
}

#[test]
fn truncate_to_zero_copies_no_bytes() {
    let f = fixture("truncate", &[("file", "some bytes")]);
    f.tree
        .setattr(
            f.ino("file"),
            AttrChange {
                size: Some(0),
                ..AttrChange::default()
            },
        )
        .unwrap();
    assert_eq!(std::fs::read(f.upper.join("file")).unwrap(), b"");
    assert!(!has_xattr(&f.upper.join("file"), METACOPY_XATTR));
    assert_eq!(f.read("file"), b"");
}

#[test]
fn unlink_of_a_lower_file_leaves_a_whiteout() {
    let f = fixture("whiteout", &[("dir/gone", "x"), ("dir/kept", "y")]);
    let dir = f.ino("dir");
    f.tree.unlink(dir, OsStr::new("gone")).unwrap();
    assert_eq!(f.try_ino("dir/gone"), Err(libc::ENOENT));
    assert_eq!(f.names("dir"), ["kept"]);
    assert_eq!(f.upper_names("dir"), [".wh.gone"]);
    let wh = std::fs::metadata(f.upper.join("dir/.wh.gone")).unwrap();
    assert!(wh.is_file() && wh.len() == 0, "a whiteout is an empty file");
    // A new file of that name replaces the whiteout.
    let (_, _, fh) = f
        .tree
        .create(dir, OsStr::new("gone"), 0o644, libc::O_WRONLY, caller())
        .unwrap();
    f.tree.write(fh, 0, b"new").unwrap();
    f.tree.release(fh);
    assert_eq!(f.upper_names("dir"), ["gone"]);
    assert_eq!(f.read("dir/gone"), b"new");
}

#[test]
fn a_folder_made_where_one_was_removed_is_opaque() {
    let f = fixture("opaque", &[("dir/old", "x"), ("other/", "")]);
    let dir = f.ino("dir");
    f.tree.unlink(dir, OsStr::new("old")).unwrap();
    f.tree.rmdir(ROOT_INO, OsStr::new("dir")).unwrap();
    assert_eq!(f.upper_names(""), [".wh.dir"]);
    assert_eq!(f.names(""), ["other"]);
    f.tree
        .mkdir(ROOT_INO, OsStr::new("dir"), 0o755, caller())
        .unwrap();
    assert_eq!(f.upper_names(""), ["dir"]);
    assert_eq!(f.upper_names("dir"), [OPAQUE_MARKER]);
    assert!(
        f.names("dir").is_empty(),
        "nothing from below shows through"
    );
    // A folder made where nothing was is not opaque.
    f.tree
        .mkdir(ROOT_INO, OsStr::new("fresh"), 0o755, caller())
        .unwrap();
    assert!(f.upper_names("fresh").is_empty());
}

#[test]
fn rename_of_a_lower_file_copies_it_up_and_hides_the_old_name() {
    let f = fixture("rename", &[("from/file", "content"), ("to/", "")]);
    let (from, to) = (f.ino("from"), f.ino("to"));
    let ino = f.ino("from/file");
    f.tree
        .rename(from, OsStr::new("file"), to, OsStr::new("moved"), 0)
        .unwrap();
    assert_eq!(f.upper_names("from"), [".wh.file"]);
    assert_eq!(f.upper_names("to"), ["moved"]);
    assert_eq!(f.read("to/moved"), b"content");
    assert_eq!(f.ino("to/moved"), ino, "a rename keeps the inode number");
    assert_eq!(f.try_ino("from/file"), Err(libc::ENOENT));
    // A folder with content below is refused (EXDEV), as overlayfs without redirects.
    let err = f
        .tree
        .rename(ROOT_INO, OsStr::new("from"), ROOT_INO, OsStr::new("x"), 0)
        .unwrap_err();
    assert_eq!(err.errno, libc::EXDEV);
    // Over an existing file, NOREPLACE refuses.
    let err = f
        .tree
        .rename(
            to,
            OsStr::new("moved"),
            to,
            OsStr::new("moved"),
            rootfs_mount::tree::RENAME_NOREPLACE,
        )
        .err();
    assert!(err.is_none(), "a rename onto itself is a no-op");
}

#[test]
fn hard_link_copies_up_and_shares_the_inode() {
    let f = fixture("link", &[("file", "linked")]);
    let ino = f.ino("file");
    let (linked, node) = f.tree.link(ino, ROOT_INO, OsStr::new("again")).unwrap();
    assert_eq!(linked, ino);
    assert_eq!(node.entry.nlink, Some(2));
    let (a, b) = (
        std::fs::metadata(f.upper.join("file")).unwrap(),
        std::fs::metadata(f.upper.join("again")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    f.write("again", 0, b"L");
    assert_eq!(f.read("file"), b"Linked");
}

#[test]
fn unlinked_open_file_keeps_its_handle() {
    let f = fixture("unlinked", &[]);
    let (ino, _, fh) = f
        .tree
        .create(ROOT_INO, OsStr::new("tmp"), 0o600, libc::O_RDWR, caller())
        .unwrap();
    f.tree.write(fh, 0, b"still here").unwrap();
    f.tree.unlink(ROOT_INO, OsStr::new("tmp")).unwrap();
    assert!(f.upper_names("").is_empty());
    let read = f.tree.read(fh, 0, 64, |r| r.map(|b| b.to_vec())).unwrap();
    assert_eq!(read, b"still here");
    assert_eq!(f.tree.getattr(ino).unwrap().entry.size, 10);
    f.tree.release(fh);
}

#[test]
fn whiteout_names_are_reserved() {
    let f = fixture("reserved", &[]);
    let err = f
        .tree
        .mkdir(ROOT_INO, OsStr::new(".wh.x"), 0o755, caller())
        .unwrap_err();
    assert_eq!(err.errno, libc::EPERM);
}

/// Copy-up of a file 20 folders deep resolves each folder once on the way down, not
/// again from the root for each folder it copies.
#[test]
fn deep_copy_up_resolves_each_folder_once() {
    let depth = 20;
    let dirs: Vec<String> = (0..depth).map(|i| format!("d{i}")).collect();
    let path = format!("{}/file", dirs.join("/"));
    let f = fixture("deep", &[(path.as_str(), "deep")]);
    let ino = f.ino(&path);
    let fh = f.tree.open_for_write(ino, libc::O_WRONLY).unwrap();
    let before = f.tree.names_resolved();
    f.tree.write(fh, 0, b"D").unwrap();
    let resolved = f.tree.names_resolved() - before;
    f.tree.release(fh);
    assert!(f.upper.join(&path).is_file());
    // The root, each of the 20 folders once, the file before and after the copy (the
    // walk from the root for each copied folder resolved ~270).
    assert!(
        resolved <= depth + 3,
        "copy-up {depth} folders deep resolved {resolved} names"
    );
    assert_eq!(f.read(&path), b"Deep");
}

/// A lower file opened for writing, unlinked before its first write, keeps its bytes
/// and is described by what its fd has (`ftruncate`, then `fstat`).
#[test]
fn unlinked_pending_file_is_copied_up_and_described_by_its_fd() {
    let f = fixture("unlinked-lower", &[("file", "lower content")]);
    let ino = f.ino("file");
    let fh = f.tree.open_for_write(ino, libc::O_RDWR).unwrap();
    f.tree.unlink(ROOT_INO, OsStr::new("file")).unwrap();
    assert_eq!(f.upper_names(""), [".wh.file"]);
    f.tree.write(fh, 0, b"L").unwrap();
    let read = f.tree.read(fh, 0, 64, |r| r.map(|b| b.to_vec())).unwrap();
    assert_eq!(read, b"Lower content");
    let node = f
        .tree
        .setattr(
            ino,
            AttrChange {
                size: Some(3),
                ..AttrChange::default()
            },
        )
        .unwrap();
    assert_eq!(node.entry.size, 3);
    assert_eq!(f.tree.getattr(ino).unwrap().entry.size, 3);
    f.tree.release(fh);
}

/// A change in one folder makes only that folder's entries (and below) resolve again:
/// entries elsewhere keep their resolved nodes.
#[test]
fn a_change_invalidates_its_own_folder_only() {
    let f = fixture("invalidation", &[("a/x", "1"), ("b/y", "2")]);
    let (a, y) = (f.ino("a"), f.ino("b/y"));
    let x = f.ino("a/x");
    let (_, _, fh) = f
        .tree
        .create(a, OsStr::new("new"), 0o644, libc::O_WRONLY, caller())
        .unwrap();
    f.tree.release(fh);
    let before = f.tree.names_resolved();
    f.tree.getattr(y).unwrap();
    assert_eq!(
        f.tree.names_resolved(),
        before,
        "b/y is not below the change"
    );
    f.tree.getattr(x).unwrap();
    assert!(
        f.tree.names_resolved() > before,
        "a/x is below the change: resolved again"
    );
    assert_eq!(f.names("a"), ["new", "x"]);
    assert_eq!(f.names("b"), ["y"]);
}

#[test]
fn setxattr_copies_metadata_up_and_symlinks_copy_whole() {
    let f = fixture("xattr", &[("file", "bytes")]);
    std::os::unix::fs::symlink("file", f.lower.join("link")).unwrap();
    let ino = f.ino("file");
    f.tree
        .setxattr(ino, OsStr::new("user.note"), b"hi", 0)
        .unwrap();
    assert!(has_xattr(&f.upper.join("file"), METACOPY_XATTR));
    assert_eq!(
        f.tree.getxattr(ino, OsStr::new("user.note")).unwrap(),
        b"hi"
    );
    // The internal marker is never shown.
    let names = f.tree.listxattr(ino).unwrap();
    assert_eq!(names, [OsStr::new("user.note")]);
    // A symlink copies up whole (a chown of the link itself).
    let link = f.ino("link");
    f.tree
        .setattr(
            link,
            AttrChange {
                uid: Some(caller().uid),
                ..AttrChange::default()
            },
        )
        .unwrap();
    assert_eq!(
        std::fs::read_link(f.upper.join("link")).unwrap(),
        Path::new("file")
    );
}

/// The inode table holds what the kernel holds and nothing more: a walk (listings and
/// lookups, some names twice), a rename and a hard link, then a FORGET of every lookup
/// leaves the root alone; a later walk gives the same numbers.
#[test]
fn forget_of_every_lookup_empties_the_table() {
    let f = fixture(
        "forget",
        &[
            ("a/b/c/one", "1"),
            ("a/b/two", "2"),
            ("a/three", "3"),
            ("d/", ""),
            ("four", "4"),
        ],
    );
    assert_eq!(f.tree.inode_count(), 1, "the root only, at first");
    // Lookups as the kernel counts them: (inode, lookups).
    let mut held: Vec<(u64, u64)> = Vec::new();
    let mut walk = vec![(ROOT_INO, String::new())];
    let mut numbers = Vec::new();
    while let Some((dir, path)) = walk.pop() {
        let listing = f.tree.listing(dir, 0).unwrap();
        f.tree.listing_done(dir);
        for item in listing.iter() {
            // READDIRPLUS looks every entry up; `stat` of some looks them up again.
            let (ino, node) = f.tree.lookup(dir, &item.name).unwrap();
            assert_eq!(ino, item.ino, "d_ino == st_ino");
            held.push((ino, 1));
            let (again, _) = f.tree.lookup(dir, &item.name).unwrap();
            assert_eq!(again, ino);
            held.push((ino, 1));
            let child = format!("{path}/{}", item.name.to_string_lossy());
            numbers.push((child.clone(), ino));
            if node.entry.kind == rootfs_mount::layers::EntryKind::Dir {
                walk.push((ino, child));
            }
        }
    }
    assert_eq!(f.tree.inode_count(), 1 + numbers.len());
    // A rename and a hard link add names (`moved`, aliases) that FORGET must drop too.
    let (a, d) = (f.ino("a"), f.ino("d"));
    held.push((a, 1));
    held.push((d, 1));
    f.tree
        .rename(a, OsStr::new("three"), d, OsStr::new("three"), 0)
        .unwrap();
    // `d/three` is two lookups: of `d`, then of `three` in it.
    held.push((d, 1));
    held.push((f.ino("d/three"), 1));
    let four = f.ino("four");
    held.push((four, 1));
    let (linked, _) = f.tree.link(four, d, OsStr::new("five")).unwrap();
    held.push((linked, 1));
    // The kernel forgets children before their folders: last looked up, first forgotten.
    for (ino, n) in held.into_iter().rev() {
        f.tree.forget(ino, n);
    }
    assert_eq!(
        f.tree.inode_count(),
        1,
        "only the root is left after FORGET"
    );
    // Numbers are a function of the path: the same after the table emptied.
    for (path, ino) in numbers {
        let path = path.trim_start_matches('/');
        if path == "a/three" || path == "four" {
            continue; // renamed away / copied up and linked: checked above
        }
        assert_eq!(f.ino(path), ino, "{path} numbered again");
    }
}
