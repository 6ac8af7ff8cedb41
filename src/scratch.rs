//! The scratch upper layer of a writable mount without `--upper`: one owner from its
//! creation to its removal. [`ScratchUpper`] removes the folder when dropped unless the
//! mount took it over ([`ScratchUpper::hand_over`]), so a mount refused at any point
//! after the folder was made leaves nothing behind; the daemon removes it at unmount,
//! and `status`/`umount` remove one that a killed daemon left (only folders named like
//! the ones made here).

use std::path::{Path, PathBuf};

/// How scratch upper layers are named (and recognised when a killed daemon left one).
pub const SCRATCH_PREFIX: &str = "rootfs-mount-upper.";

/// Where scratch upper layers go: `$TMPDIR` (default /var/tmp: on disk, not in memory,
/// since builds may download large files into the mount).
fn base() -> PathBuf {
    std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

fn make_dir(base: &Path) -> Result<PathBuf, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = base.join(format!("{SCRATCH_PREFIX}{}.{nanos}", std::process::id()));
    std::fs::create_dir(&dir)
        .map_err(|e| format!("cannot make a scratch upper layer {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Removes a scratch upper layer (already gone is fine).
pub fn remove(dir: Option<&Path>) {
    if let Some(dir) = dir {
        // Already gone is fine: a failed start removes it in the daemon and again in the
        // command that waited for it.
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove the scratch upper layer")
            }
            _ => {}
        }
    }
}

/// Whether `dir` is named like a scratch upper layer made by [`ScratchUpper::create`].
pub fn is_scratch(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    dir.file_name()
        .is_some_and(|n| n.as_bytes().starts_with(SCRATCH_PREFIX.as_bytes()))
}

/// A scratch upper layer this process made and still owns.
#[derive(Debug)]
pub struct ScratchUpper {
    dir: Option<PathBuf>,
}

impl ScratchUpper {
    /// Makes a new scratch upper layer in `$TMPDIR`.
    pub fn create() -> Result<Self, String> {
        Self::create_in(&base())
    }

    fn create_in(base: &Path) -> Result<Self, String> {
        Ok(ScratchUpper {
            dir: Some(make_dir(base)?),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.as_deref().unwrap_or(Path::new(""))
    }

    /// The mount is up and its daemon owns the folder now (and removes it at unmount).
    pub fn hand_over(mut self) {
        self.dir = None;
    }
}

impl Drop for ScratchUpper {
    fn drop(&mut self) {
        remove(self.dir.as_deref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_upper_is_removed_unless_handed_over() {
        let base =
            std::env::temp_dir().join(format!("rootfs-mount-scratch-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let refused = ScratchUpper::create_in(&base).unwrap();
        let dir = refused.path().to_path_buf();
        assert!(dir.is_dir() && is_scratch(&dir));
        drop(refused);
        assert!(!dir.exists(), "a refused mount leaves no scratch folder");
        let mounted = ScratchUpper::create_in(&base).unwrap();
        let kept = mounted.path().to_path_buf();
        mounted.hand_over();
        assert!(kept.is_dir(), "the daemon owns it now");
        remove(Some(&kept));
        assert!(!kept.exists());
        assert!(!is_scratch(Path::new("/var/tmp/upper")));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
