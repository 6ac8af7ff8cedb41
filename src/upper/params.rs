//! The parameters an `--upper` folder was last mounted with, kept in an xattr of the
//! folder itself (never a file in it: everything in the folder is shown in the tree). A
//! kept upper layer mounted with other parameters shadows rendered files with bytes
//! rendered for the old ones; the mount warns, or refuses with `--strict`.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::sys::at;

/// The extended attribute on the upper folder holding the parameters line.
const PARAMS_XATTR: &str = "user.rootfs.params";

/// The parameters recorded on `dir`, or `None` for a folder no mount has recorded on (or
/// a file system without user xattrs).
pub fn recorded(dir: &Path) -> io::Result<Option<String>> {
    let folder = File::open(dir)?;
    match at::fgetxattr(&folder, OsStr::new(PARAMS_XATTR)) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Records `parameters` on `dir` (a file system without user xattrs records nothing).
pub fn record(dir: &Path, parameters: &str) -> io::Result<()> {
    let folder = File::open(dir)?;
    match at::fsetxattr(&folder, OsStr::new(PARAMS_XATTR), parameters.as_bytes(), 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(()),
        other => other,
    }
}

/// The regular files of `dir`, relative to it, sorted (whiteouts and other upper-format
/// names included: the caller asks the tree what each one hides).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(dir.join(&rel)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = rel.join(entry.file_name());
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => out.push(path),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// What differs between two parameter records (`key=value` lines), as `key old -> new`.
pub fn differences(old: &str, new: &str) -> Vec<String> {
    let split = |line: &str| -> Vec<(String, String)> {
        line.lines()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let (old, new) = (split(old), split(new));
    let mut out = Vec::new();
    for (key, value) in &new {
        match old.iter().find(|(k, _)| k == key) {
            Some((_, before)) if before != value => out.push(format!("{key} {before} -> {value}")),
            None => out.push(format!("{key} (unset) -> {value}")),
            _ => {}
        }
    }
    for (key, before) in &old {
        if !new.iter().any(|(k, _)| k == key) {
            out.push(format!("{key} {before} -> (unset)"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_changed_key() {
        assert_eq!(
            differences(
                "k8s=v1.23.4\ncri=docker\na.x=1",
                "k8s=v1.24.0\ncri=docker\nb=2"
            ),
            vec![
                "k8s v1.23.4 -> v1.24.0".to_string(),
                "b (unset) -> 2".into(),
                "a.x 1 -> (unset)".into()
            ]
        );
        assert!(differences("k8s=v1\ncri=x y", "k8s=v1\ncri=x y").is_empty());
    }
}
