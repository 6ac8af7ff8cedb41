//! `rootfs-mount tree`: the merged tree as lines or JSON, each entry with its mode, size,
//! mtime and provenance (the `user.rootfs.source` text of a mount, from
//! [`Node::provenance`]).

use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use super::walk::walk_past_faults;
use crate::layers::{Content, EntryKind};
use crate::tree::{Namespace, Node};

/// One entry as `tree --json` prints it.
#[derive(Debug, Serialize)]
pub struct Listed {
    /// Relative to the tree root; folders end with `/`. Bytes that are not UTF-8 are
    /// shown as U+FFFD here (the text listing writes them as they are).
    pub path: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Permission bits, octal.
    pub mode: String,
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub source: String,
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Dir => "dir",
        EntryKind::File => "file",
        EntryKind::Symlink => "symlink",
        EntryKind::Fifo => "fifo",
        EntryKind::Socket => "socket",
    }
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `ls -l`'s mode column: type, then rwx with setuid, setgid and sticky.
pub fn mode_string(kind: EntryKind, perm: u16) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        EntryKind::Dir => 'd',
        EntryKind::File => '-',
        EntryKind::Symlink => 'l',
        EntryKind::Fifo => 'p',
        EntryKind::Socket => 's',
    });
    for (shift, special, set, unset) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (perm >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, perm & special != 0) {
            (true, true) => set,
            (false, true) => unset,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a time in seconds since the epoch (UTC).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn path_bytes(path: &Path, node: &Node) -> Vec<u8> {
    let mut out = path.as_os_str().as_bytes().to_vec();
    if node.entry.kind == EntryKind::Dir {
        out.push(b'/');
    }
    out
}

fn target(node: &Node) -> Option<&Path> {
    match &node.entry.content {
        Content::Link(t) => Some(t),
        _ => None,
    }
}

/// Entries that could not be read, each said on stderr: the rest is listed, as a mount
/// lists the rest of a folder.
pub type Faults = Vec<(std::path::PathBuf, io::Error)>;

/// Writes the tree below the root, sorted: one path per line, or with `long`
/// `MODE SIZE MTIME PATH[ -> TARGET]`, a tab and the provenance. Entries that cannot be
/// read are left out and returned.
pub fn write_text(ns: &Namespace, long: bool, out: &mut dyn Write) -> io::Result<Faults> {
    walk_below_root(ns, &mut |path, node| {
        let e = &node.entry;
        if long {
            let size = if e.kind == EntryKind::Dir { 0 } else { e.size };
            write!(
                out,
                "{} {size:>12} {} ",
                mode_string(e.kind, e.perm),
                utc(seconds(e.mtime))
            )?;
        }
        out.write_all(&path_bytes(path, node))?;
        if let (true, Some(t)) = (long, target(node)) {
            out.write_all(b" -> ")?;
            out.write_all(t.as_os_str().as_bytes())?;
        }
        if long {
            write!(out, "\t{}", node.provenance())?;
        }
        out.write_all(b"\n")
    })
}

/// Visits every entry below the root (not the root itself), sorted; entries that cannot
/// be read are left out and returned.
fn walk_below_root(
    ns: &Namespace,
    visit: &mut dyn FnMut(&Path, &Node) -> io::Result<()>,
) -> io::Result<Faults> {
    let mut faults = Faults::new();
    walk_past_faults(
        ns,
        Path::new(""),
        &mut |path, node| {
            if path.as_os_str().is_empty() {
                return Ok(());
            }
            visit(path, node)
        },
        &mut |path, e| {
            faults.push((path.to_path_buf(), e));
            Ok(())
        },
    )?;
    Ok(faults)
}

/// Every entry below the root, sorted, for `tree --json`, and the entries that could not
/// be read.
pub fn entries(ns: &Namespace) -> io::Result<(Vec<Listed>, Faults)> {
    let mut out = Vec::new();
    let faults = walk_below_root(ns, &mut |path, node| {
        let e = &node.entry;
        out.push(Listed {
            path: String::from_utf8_lossy(&path_bytes(path, node)).into_owned(),
            kind: kind_name(e.kind),
            mode: format!("{:04o}", e.perm),
            size: if e.kind == EntryKind::Dir { 0 } else { e.size },
            mtime: seconds(e.mtime),
            target: target(node).map(|t| t.to_string_lossy().into_owned()),
            source: node.provenance(),
        });
        Ok(())
    })?;
    Ok((out, faults))
}
