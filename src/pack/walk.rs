//! The merged tree walked without FUSE, in the order GNU tar's `--sort=name` packs a
//! folder: a folder, then its entries sorted by the bytes of their names, each folder's
//! content right after it (depth first).

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::layers::EntryKind;
use crate::tree::{Namespace, Node};

/// A path of the tree as users type it (`rootfs/etc/kubeadm.yml`, `./rootfs/etc/`,
/// `/rootfs`) made relative to the tree root; `None` for `..` and other escapes.
pub fn tree_path(typed: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in Path::new(typed).components() {
        match part {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => out.push(name),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The entry at `typed`, or a one-line error naming it.
pub fn resolve(ns: &Namespace, typed: &str) -> Result<(PathBuf, Node), String> {
    let not_found = || format!("{typed}: no such file in the tree");
    let path = tree_path(typed).ok_or_else(not_found)?;
    match ns.resolve_path(&path) {
        Ok(Some(node)) => Ok((path, node)),
        Ok(None) => Err(not_found()),
        Err(e) => Err(format!("{typed}: {e}")),
    }
}

/// Visits `start` and everything below it in GNU tar `--sort=name` order. Paths are
/// relative to the tree root (empty = the root itself). The first fault ends the walk.
pub fn walk(
    ns: &Namespace,
    start: &Path,
    visit: &mut dyn FnMut(&Path, &Node) -> io::Result<()>,
) -> io::Result<()> {
    walk_past_faults(ns, start, visit, &mut |_, e| Err(e))
}

/// [`walk`], handing an entry that cannot be looked up or listed (a corrupt archive, a
/// vanished backing folder) to `fault`, which may carry on past it (`Ok`) or stop.
pub fn walk_past_faults(
    ns: &Namespace,
    start: &Path,
    visit: &mut dyn FnMut(&Path, &Node) -> io::Result<()>,
    fault: &mut dyn FnMut(&Path, io::Error) -> io::Result<()>,
) -> io::Result<()> {
    let root = ns
        .resolve_path(start)?
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
    visit(start, &root)?;
    if root.entry.kind != EntryKind::Dir {
        return Ok(());
    }
    // Each level holds a folder's path, its node and its remaining children, reversed.
    let mut stack = vec![(
        start.to_path_buf(),
        root.clone(),
        sorted_children(ns, start, &root)?,
    )];
    while let Some((dir, node, pending)) = stack.last_mut() {
        let Some(name) = pending.pop() else {
            stack.pop();
            continue;
        };
        let path = dir.join(&name);
        let child = match ns.lookup(dir, node, &name) {
            Ok(Some(child)) => child,
            Ok(None) => continue,
            Err(e) => {
                fault(&path, e)?;
                continue;
            }
        };
        visit(&path, &child)?;
        if child.entry.kind == EntryKind::Dir {
            match sorted_children(ns, &path, &child) {
                Ok(children) => stack.push((path, child, children)),
                Err(e) => fault(&path, e)?,
            }
        }
    }
    Ok(())
}

/// The names of a folder, sorted by bytes (as `strcmp`, which GNU tar's name sort uses),
/// reversed so that popping gives them in order.
fn sorted_children(
    ns: &Namespace,
    path: &Path,
    node: &Node,
) -> io::Result<Vec<std::ffi::OsString>> {
    let mut names: Vec<_> = ns
        .children(path, node)?
        .into_iter()
        .map(|c| c.name)
        .collect();
    names.sort_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    Ok(names)
}
