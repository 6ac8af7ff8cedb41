//! `SHA256SUMS` files: the format `sha256sum` writes and checks (`<hex>  <path>`), used
//! for three things that must agree: the cache's record of verified digests
//! (`CACHE/SHA256SUMS`, so `cd CACHE && sha256sum -c SHA256SUMS` works too), a mirror's
//! checksum list, and upstream SUMS files (nerdctl's).
//!
//! The cache's record is rewritten whole (temp file, fsync, rename, fsync of the folder)
//! under an exclusive lock on `CACHE/.SHA256SUMS.lock`, so parallel downloads and two
//! `fetch` processes never lose an entry and a reader never sees half a file.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::sources::is_sha256_hex;

/// The cache's record of verified digests, relative to the cache folder.
pub const RECORD: &str = "SHA256SUMS";
const LOCK: &str = ".SHA256SUMS.lock";

/// Cache-relative path to lowercase hex digest.
pub type Sums = BTreeMap<String, String>;

/// Parses a SUMS file strictly: every non-empty line is `<64 hex>  <name>` (or
/// `<hex> *<name>`, binary mode). `origin` names the file in errors.
pub fn parse(text: &str, origin: &str) -> Result<Sums, String> {
    let mut sums = Sums::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let bad = || {
            format!(
                "{origin}: line {}: expected \"<sha256 hex>  <path>\", got {}",
                n + 1,
                crate::render::quote(line)
            )
        };
        let (hex, rest) = line.split_once(' ').ok_or_else(bad)?;
        let name = rest
            .strip_prefix(' ')
            .or_else(|| rest.strip_prefix('*'))
            .ok_or_else(bad)?;
        if !is_sha256_hex(hex) || name.is_empty() {
            return Err(bad());
        }
        sums.insert(name.to_string(), hex.to_ascii_lowercase());
    }
    Ok(sums)
}

/// The text of a SUMS file, sorted by path.
pub fn format(sums: &Sums) -> String {
    sums.iter().map(|(p, h)| format!("{h}  {p}\n")).collect()
}

/// The first word of a `.sha256` sidecar, checked to be a digest.
pub fn parse_sidecar(text: &str, origin: &str) -> Result<String, String> {
    let word = text.split_whitespace().next().unwrap_or("");
    if is_sha256_hex(word) {
        Ok(word.to_ascii_lowercase())
    } else {
        Err(format!(
            "{origin}: not a sha256 checksum file (starts with {})",
            crate::render::quote(&text.chars().take(40).collect::<String>())
        ))
    }
}

/// sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the cache's record (empty when there is none yet).
pub fn read_record(cache: &Path) -> Result<Sums, String> {
    let path = cache.join(RECORD);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, &path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Sums::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Takes an exclusive lock on `path` (made if missing), held until the file is dropped:
/// one writer at a time across threads and processes.
pub fn lock_file(path: &Path) -> Result<File, String> {
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
    Ok(lock)
}

/// Changes the cache's record under its lock: `edit` gets the current entries.
pub fn update_record(cache: &Path, edit: impl FnOnce(&mut Sums)) -> Result<(), String> {
    let _lock = lock_file(&cache.join(LOCK))?;
    let mut sums = read_record(cache)?;
    edit(&mut sums);
    write_atomically(&cache.join(RECORD), format(&sums).as_bytes())
    // The lock is released when `lock` is dropped.
}

/// Writes `path` whole or not at all: a temp file beside it, fsync, rename, fsync of
/// the folder.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        sync_dir(dir)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// `dest` becomes a hard link to `src`, or a whole copy (temp + fsync + rename) across
/// file systems; its folder is made when missing.
pub fn place(src: &Path, dest: &Path) -> Result<(), String> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let temp = parent.join(format!(
        ".{}.{}.tmp",
        dest.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&temp);
    let made = std::fs::hard_link(src, &temp).or_else(|_| {
        std::fs::copy(src, &temp)?;
        File::open(&temp)?.sync_all()
    });
    made.and_then(|()| std::fs::rename(&temp, dest))
        .map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            format!("cannot write {}: {e}", dest.display())
        })
}

/// fsync of a folder, so a rename into it survives a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn parses_what_sha256sum_writes() {
        let text = format!(
            "{A}  kube/v1.23.4/amd64/kubeadm\n{} *b c\n\n",
            A.to_uppercase()
        );
        let sums = parse(&text, "t").unwrap();
        assert_eq!(sums["kube/v1.23.4/amd64/kubeadm"], A);
        assert_eq!(sums["b c"], A);
        assert_eq!(parse(&format(&sums), "t").unwrap(), sums);
        for bad in ["<html>", "abc  x", &format!("{A} x"), &format!("{A}  ")] {
            let e = parse(bad, "M/SHA256SUMS").unwrap_err();
            assert!(e.starts_with("M/SHA256SUMS: line 1:"), "{e}");
        }
        assert_eq!(parse_sidecar(&format!("{A}  kubeadm\n"), "s").unwrap(), A);
        assert_eq!(parse_sidecar(A, "s").unwrap(), A);
        assert!(parse_sidecar("Not Found", "s").is_err());
    }

    #[test]
    fn record_updates_are_whole_and_kept() {
        let dir = std::env::temp_dir().join(format!("sums-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::thread::scope(|s| {
            for i in 0..8 {
                let dir = &dir;
                s.spawn(move || {
                    update_record(dir, |m| {
                        m.insert(format!("f{i}"), A.to_string());
                    })
                    .unwrap()
                });
            }
        });
        assert_eq!(read_record(&dir).unwrap().len(), 8);
        std::fs::write(dir.join("x"), b"abc").unwrap();
        assert_eq!(
            sha256_file(&dir.join("x")).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
