//! What a published cache holds, beside its `SHA256SUMS`: `.rootfs-mount/manifest` (every
//! folder, file and symlink with the mode, owner and mtime it had in the cache, so a
//! mount from the store shows the same tree as one from the cache) and, per file,
//! `.rootfs-mount/blocks/<path>`: the sha256 of each [`BLOCK`] of it, so a block read by
//! range is checked on its own. Both are listed in `SHA256SUMS`, which is the root of
//! trust: nothing is served that does not hash to what it lists.
//!
//! Manifest lines, tab-separated: `d PERM UID GID MTIME NSEC PATH`,
//! `f PERM UID GID MTIME NSEC SIZE PATH`, `l UID GID MTIME NSEC PATH TARGET` (PERM in
//! octal). Block lists: a first line `rootfs-mount-blocks BLOCK SIZE`, then one hex digest
//! a line.

use std::collections::BTreeMap;
use std::time::SystemTime;

/// Size of a block: the unit of ranged reads, of verification and of the local cache.
pub const BLOCK: u64 = 1 << 20;
/// Where the manifest and block lists live, relative to the published root.
pub const META_DIR: &str = ".rootfs-mount";
pub const MANIFEST: &str = ".rootfs-mount/manifest";

/// The published seek index of the archive `rel` (an `index_file` file, keyed by the
/// archive's size, mtime and head as any local index is).
pub fn index_path(rel: &str) -> String {
    format!("{META_DIR}/index/{rel}.gzidx")
}

/// Whether `rel` is an archive the mount reads through a seek index (with its member
/// listing for the release tarballs of `oss/`).
pub fn indexed_archive(rel: &str) -> Option<bool> {
    if rel.starts_with("oss/") && rel.ends_with(".tar.gz") {
        Some(true)
    } else if rel.starts_with("cri/") && rel.ends_with("/registry.tar.gz") {
        Some(false)
    } else {
        None
    }
}

/// The block list of the cache path `rel`.
pub fn blocks_path(rel: &str) -> String {
    format!("{META_DIR}/blocks/{rel}")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64 },
    Link { target: String },
}

/// One entry of the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

impl Entry {
    pub fn mtime(&self) -> SystemTime {
        crate::sys::system_time(self.mtime_sec, i64::from(self.mtime_nsec))
    }
}

/// Path (cache-relative, `/`-separated) to entry.
pub type Manifest = BTreeMap<String, Entry>;

pub fn format(manifest: &Manifest) -> String {
    let mut out = String::new();
    for (path, e) in manifest {
        let times = format!("{}\t{}\t{}\t{}", e.uid, e.gid, e.mtime_sec, e.mtime_nsec);
        match &e.kind {
            Kind::Dir => out.push_str(&format!("d\t{:o}\t{times}\t{path}\n", e.perm)),
            Kind::File { size } => {
                out.push_str(&format!("f\t{:o}\t{times}\t{size}\t{path}\n", e.perm))
            }
            Kind::Link { target } => out.push_str(&format!("l\t{times}\t{path}\t{target}\n")),
        }
    }
    out
}

/// Whether `name` can be carried by a manifest line and a SHA256SUMS line.
pub fn carriable(path: &str) -> bool {
    !path.contains(['\t', '\n', '\\', '\r']) && !path.is_empty()
}

pub fn parse(text: &str) -> Result<Manifest, String> {
    let mut out = Manifest::new();
    for (n, line) in text.lines().enumerate() {
        let bad = || format!("{MANIFEST}: line {}: malformed", n + 1);
        let f: Vec<&str> = line.split('\t').collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok()).ok_or_else(bad);
        // Sizes and ids are never negative nor past their type: malformed, not wrapped.
        let unsigned = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or_else(bad);
        let id = |i: usize| f.get(i).and_then(|v| v.parse::<u32>().ok()).ok_or_else(bad);
        let perm = |i: usize| {
            f.get(i)
                .and_then(|v| u32::from_str_radix(v, 8).ok())
                .filter(|p| *p <= 0o7777)
                .ok_or_else(bad)
        };
        let (kind, perm, at, path) = match (f.first().copied(), f.len()) {
            (Some("d"), 7) => (Kind::Dir, perm(1)?, 2, f[6]),
            (Some("f"), 8) => (Kind::File { size: unsigned(6)? }, perm(1)?, 2, f[7]),
            (Some("l"), 7) => (
                Kind::Link {
                    target: f[6].to_string(),
                },
                0o777,
                1,
                f[5],
            ),
            _ => return Err(bad()),
        };
        crate::sources::check_rel_path(path).map_err(|e| format!("{}: {e}", bad()))?;
        out.insert(
            path.to_string(),
            Entry {
                kind,
                perm,
                uid: id(at)?,
                gid: id(at + 1)?,
                mtime_sec: num(at + 2)?,
                mtime_nsec: num(at + 3)?.clamp(0, 999_999_999) as u32,
            },
        );
    }
    Ok(out)
}

/// The sha256 of each block of a file of `size` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDigests {
    pub size: u64,
    pub digests: Vec<[u8; 32]>,
}

impl BlockDigests {
    pub fn count(size: u64) -> u64 {
        size.div_ceil(BLOCK)
    }

    pub fn format(&self) -> String {
        let mut out = format!("rootfs-mount-blocks {BLOCK} {}\n", self.size);
        for d in &self.digests {
            out.push_str(&crate::sums::hex(d));
            out.push('\n');
        }
        out
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
        let (block, size) = match head.as_slice() {
            ["rootfs-mount-blocks", block, size] => (block.parse::<u64>(), size.parse::<u64>()),
            _ => return Err("not a block list".into()),
        };
        let (Ok(block), Ok(size)) = (block, size) else {
            return Err("bad block list header".into());
        };
        if block != BLOCK {
            return Err(format!("block size {block}, expected {BLOCK}"));
        }
        let mut digests = Vec::new();
        for line in lines {
            digests.push(parse_hex(line).ok_or("bad digest in the block list")?);
        }
        if digests.len() as u64 != Self::count(size) {
            return Err("block list does not cover the file".into());
        }
        Ok(BlockDigests { size, digests })
    }
}

/// 64 hex digits as bytes.
pub fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips() {
        let mut m = Manifest::new();
        let e = |kind| Entry {
            kind,
            perm: 0o755,
            uid: 1,
            gid: 2,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 5,
        };
        m.insert("kube".into(), e(Kind::Dir));
        m.insert("kube/a b".into(), e(Kind::File { size: 9 }));
        m.insert(
            "cri/l".into(),
            Entry {
                perm: 0o777,
                ..e(Kind::Link {
                    target: "x.so.2".into(),
                })
            },
        );
        assert_eq!(parse(&format(&m)).unwrap(), m);
        assert!(parse("f\t755\t0\t0\t0\t0\t1\t../x\n").is_err());
    }

    #[test]
    fn block_lists_round_trip() {
        let b = BlockDigests {
            size: BLOCK + 1,
            digests: vec![[1; 32], [2; 32]],
        };
        assert_eq!(BlockDigests::parse(&b.format()).unwrap(), b);
        let short = BlockDigests {
            size: 3 * BLOCK,
            ..b
        };
        assert!(BlockDigests::parse(&short.format()).is_err());
    }
}
