//! Mounts as the system sees them: the mount table (/proc/self/mountinfo), the checks of
//! a mountpoint before mounting, and the `status` and `umount` commands. Nothing here
//! runs a daemon (`crate::daemon`) or knows the tree.

use std::path::{Path, PathBuf};

use crate::host_idle;
use crate::state::{self, MountRecord};
use crate::sys;

/// The name our mounts go by: the subtype of their file system type, and the source
/// column of the mount table (`rootfs-mount:v1.23.4`).
pub const FS_NAME: &str = "rootfs-mount";

/// The file system type of every mount, whichever way it was made (`findmnt -t`).
pub const FS_TYPE: &str = "fuse.rootfs-mount";

/// The source column of a mount of `version`: `rootfs-mount:v1.23.4`.
pub fn fs_source(version: &str) -> String {
    format!("{FS_NAME}:{version}")
}

/// Whether a mount table source is one of ours (`rootfs-mount` was the source of mounts
/// made by older versions).
pub fn is_our_source(source: &str) -> bool {
    source == FS_NAME
        || source
            .strip_prefix(FS_NAME)
            .is_some_and(|rest| rest.starts_with(':'))
}

/// One line of /proc/self/mountinfo: the mount point, fs type and source.
pub struct MountInfo {
    /// `major:minor` of the mounted file system.
    pub device: String,
    pub point: PathBuf,
    /// `fuse` for ours (`fuse.rootfs-mount` through fusermount3).
    pub fstype: String,
    pub source: String,
}

/// A path field of /proc/self/mountinfo, its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(state::unescape(field)))
}

/// The mounts of this mount namespace, from /proc/self/mountinfo.
pub fn mounts() -> Vec<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            Some(MountInfo {
                device: fields.get(2)?.to_string(),
                point: unescape(fields.get(4)?),
                fstype: fields.get(dash + 1)?.to_string(),
                source: fields.get(dash + 2)?.to_string(),
            })
        })
        .collect()
}

/// Takes the mount lock of `path`: an exclusive `flock` on the mountpoint folder itself,
/// held from the checks until the mount is up. Of two mounts started at once on one folder exactly one gets it; the other is
/// refused at once, or, starting after the mount is up, opens the mount's root instead
/// and is refused as "already a mount point". `None` when the folder cannot be opened
/// (missing, a stale mount): [`check_mountpoint`] says why, or `--force` clears it and
/// the lock is taken again.
pub fn lock_mountpoint(path: &Path) -> Result<Option<std::fs::File>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(dir) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK)
        .open(path)
    else {
        return Ok(None);
    };
    match dir.try_lock() {
        Ok(()) => Ok(Some(dir)),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "another rootfs-mount is mounting on {} right now",
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(format!("cannot lock mountpoint {}: {e}", path.display()))
        }
    }
}

/// Checks the mountpoint (docs/DESIGN.md §6) and returns its canonical path. With `force`, a
/// stale rootfs-mount mount there (its daemon was killed) is unmounted first; a live
/// mount is never touched.
pub fn check_mountpoint(path: &Path, sources: &[PathBuf], force: bool) -> Result<PathBuf, String> {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) && force => {
            umount(path, true)
                .map_err(|e| format!("cannot recover the stale mount {shown}: {e}"))?;
            eprintln!("rootfs-mount: unmounted the stale mount on {shown}");
            return check_mountpoint(path, sources, false);
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(format!(
                "{shown} is a stale mount whose daemon is gone; run `rootfs-mount umount {shown}` first, or mount with --force"
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("mountpoint {shown} does not exist; create an empty folder there"))
        }
        Err(e) => return Err(format!("mountpoint {shown}: {e}")),
    };
    if !meta.is_dir() {
        return Err(format!("mountpoint {shown} is not a folder"));
    }
    let canonical = std::fs::canonicalize(path).map_err(|e| format!("mountpoint {shown}: {e}"))?;
    if mounts().iter().any(|m| m.point == canonical) {
        return Err(format!(
            "{shown} is already a mount point; unmount it first"
        ));
    }
    let mut entries =
        std::fs::read_dir(&canonical).map_err(|e| format!("mountpoint {shown}: {e}"))?;
    if entries.next().is_some() {
        return Err(format!("mountpoint {shown} is not empty"));
    }
    for source in sources {
        // Resolved as far as it exists (an --index-dir or --upper may not exist yet).
        let root = sys::resolve_existing(source);
        if canonical.starts_with(&root) {
            return Err(format!(
                "mountpoint {shown} is inside {}, which the mount reads from: that would be a mount loop",
                root.display()
            ));
        }
        if root.starts_with(&canonical) {
            return Err(format!(
                "{} is inside the mountpoint {shown}: the daemon would wait on its own mount; choose a folder outside it",
                source.display()
            ));
        }
    }
    Ok(canonical)
}

/// FUSE needs the device; say so plainly when it is not there.
pub fn check_fuse_device() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => format!(
                "cannot open /dev/fuse: {e}: this user has no permission to use it (it is usually mode 0666, crw-rw-rw-); run as root, or ask for `chmod 0666 /dev/fuse`"
            ),
            _ => format!(
                "cannot open /dev/fuse: {e} (load the fuse module with `modprobe fuse`; in a container pass --device /dev/fuse)"
            ),
        })
}

/// `rootfs-mount status [MOUNT] [--json]`: the live mounts with their parameters and
/// counters, and the rootfs-mount mounts of this mount namespace whose daemon is gone.
pub fn status(mountpoint: Option<&Path>, json: bool) -> Result<String, String> {
    let live = state::live_mounts();
    let ours: Vec<PathBuf> = mounts()
        .into_iter()
        .filter(|m| is_our_source(&m.source))
        .map(|m| m.point)
        .collect();
    let now = state::now_secs();
    // Why a mount of ours has no live record: (short reason, what to do).
    let why = |point: &Path| -> (&'static str, String) {
        let shown = point.display();
        match std::fs::metadata(point) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => (
                "stale",
                format!("its daemon is gone; run `rootfs-mount umount {shown}`"),
            ),
            _ => (
                "unknown",
                "not known (another user's mount, or no state folder)".into(),
            ),
        }
    };
    let (live, others): (Vec<&MountRecord>, Vec<PathBuf>) = match mountpoint {
        Some(path) => {
            let target = std::fs::canonicalize(path)
                .or_else(|_| std::path::absolute(path))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            match live.iter().find(|r| r.mountpoint == target) {
                Some(record) => (vec![record], Vec::new()),
                // Not live: say why, on stderr with a non-zero exit.
                None if ours.contains(&target) => {
                    let (kind, text) = why(&target);
                    if kind == "stale" {
                        // Not live: say why, on stderr with a non-zero exit.
                        return Err(format!("{}: stale: {text}", path.display()));
                    }
                    // Live, but its daemon is not known here (another user's mount, or
                    // no state folder without XDG_RUNTIME_DIR): shown, and exit 0.
                    (Vec::new(), vec![target])
                }
                None => return Err(format!("{} is not a rootfs-mount mount", path.display())),
            }
        }
        None => (
            live.iter().collect(),
            ours.into_iter()
                .filter(|p| !live.iter().any(|r| &r.mountpoint == p))
                .collect(),
        ),
    };
    if json {
        let mounts: Vec<serde_json::Value> = live
            .iter()
            .map(|record| {
                let mut value = serde_json::to_value(record).unwrap_or_default();
                value["uptime_seconds"] = now.saturating_sub(record.started).into();
                value
            })
            .collect();
        let others: Vec<serde_json::Value> = others
            .iter()
            .map(|point| {
                let (kind, text) = why(point);
                serde_json::json!({
                    "mountpoint": point.to_string_lossy(),
                    "state": kind,
                    "message": text,
                })
            })
            .collect();
        let out = serde_json::json!({
            "format": state::FORMAT,
            "mounts": mounts,
            "other_mounts": others,
            "host_advice": host_idle::advice(),
        });
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&out).unwrap_or_default()
        ));
    }
    let mut out = String::new();
    for record in &live {
        out.push_str(&record.describe(now));
    }
    for point in &others {
        let (kind, text) = why(point);
        let label = if kind == "stale" { "stale" } else { "daemon" };
        out.push_str(&format!("{}\n  {label}: {text}\n", point.display()));
    }
    if out.is_empty() {
        out.push_str("no rootfs-mount mounts\n");
    }
    if let Some(advice) = host_idle::advice() {
        out.push_str(&format!("host: {advice}\n"));
    }
    Ok(out)
}

/// What `umount` knows of a mount, to decide whether it is ours: a name can be given to
/// any mount (`fsname=rootfs-mount`, a tmpfs whose source is `rootfs-mount`), so the fs
/// type must be FUSE (plain, or with our subtype), and a live mount must be served by one of our
/// daemons (its state file). A stale one (its daemon is gone: ENOTCONN) serves no one.
struct Ownership<'a> {
    fstype: &'a str,
    source: &'a str,
    stale: bool,
    served_by_us: bool,
    /// Whether state files exist for this user (without a state folder, a live mount
    /// can only be told by its type and name).
    state_known: bool,
}

impl Ownership<'_> {
    fn check(&self) -> Result<(), String> {
        // Plain `fuse` for mounts of older versions (mount(2) without the subtype).
        let fuse = self.fstype == "fuse" || self.fstype == FS_TYPE;
        if !fuse || !is_our_source(self.source) {
            return Err(format!("type {:?}, source {:?}", self.fstype, self.source));
        }
        if self.stale || self.served_by_us || !self.state_known {
            return Ok(());
        }
        Err("no rootfs-mount daemon of this user serves it".into())
    }
}

/// `rootfs-mount umount MOUNT`: unmounts one of our mounts, stale ones included.
pub fn umount(path: &Path, lazy: bool) -> Result<(), String> {
    let shown = path.display();
    let target = std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .map_err(|e| format!("{shown}: {e}"))?;
    let all = mounts();
    let Some(found) = all.iter().rev().find(|m| m.point == target) else {
        return Err(format!("{shown} is not mounted"));
    };
    let stale =
        matches!(std::fs::metadata(&target), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN));
    let served_by_us = state::live_mounts().iter().any(|r| r.mountpoint == target);
    let owner = Ownership {
        fstype: &found.fstype,
        source: &found.source,
        stale,
        served_by_us,
        state_known: state::runtime_dir().is_some(),
    };
    if let Err(why) = owner.check() {
        return Err(format!(
            "{shown} is not a rootfs-mount mount ({why}); leaving it alone"
        ));
    }
    let daemon = state::live_mounts()
        .into_iter()
        .find(|r| r.mountpoint == target)
        .map(|r| r.pid);
    let result = unmount_as_allowed(&target, lazy);
    if result.is_ok() {
        // The daemon finishes after the kernel lets the mount go (a remote cache marks
        // the blocks it wrote): a mount made right after sees the cache as it left it.
        if let (Some(pid), false) = (daemon, lazy) {
            wait_for_exit(pid, DAEMON_EXIT_WAIT);
        }
        // A killed daemon left its state file, and maybe a scratch upper layer: clean up.
        state::live_mounts();
    }
    result
}

/// The longest `umount` waits for the daemon to exit after the unmount.
const DAEMON_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits (at most `limit`) until process `pid` is gone or a zombie.
fn wait_for_exit(pid: u32, limit: std::time::Duration) {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        let running = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z ") && !s.contains(") X "));
        if !running {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::warn!(pid, "the daemon is still running after the unmount");
}

fn unmount_as_allowed(target: &Path, lazy: bool) -> Result<(), String> {
    let shown = target.display();
    match sys::unmount(target, lazy) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(format!(
            "{shown} is busy (a process has files open or its working folder there); close them or use --lazy"
        )),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let mut cmd = std::process::Command::new("fusermount3");
            cmd.arg("-u");
            if lazy {
                cmd.arg("-z");
            }
            let status = cmd.arg(target).status().map_err(|e| format!("running fusermount3: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("fusermount3 -u {shown} failed"))
            }
        }
        Err(e) => Err(format!("unmounting {shown}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::Ownership;

    fn owner(fstype: &str, source: &str, stale: bool, served_by_us: bool) -> Ownership<'static> {
        Ownership {
            fstype: Box::leak(fstype.to_string().into_boxed_str()),
            source: Box::leak(source.to_string().into_boxed_str()),
            stale,
            served_by_us,
            state_known: true,
        }
    }

    #[test]
    fn mountinfo_paths_lose_their_escapes() {
        assert_eq!(
            super::unescape("/mnt/a\\040b\\011c"),
            std::path::PathBuf::from("/mnt/a b\tc")
        );
        // Not an escape: kept as is; out of a byte's range: no panic.
        assert_eq!(
            super::unescape("/x\\9y\\04"),
            std::path::PathBuf::from("/x\\9y\\04")
        );
        let _ = super::unescape("\\777");
    }

    #[test]
    fn umount_touches_only_our_mounts() {
        // Ours: live with a state file, or stale.
        assert!(owner("fuse.rootfs-mount", "rootfs-mount", false, true)
            .check()
            .is_ok());
        assert!(owner("fuse.rootfs-mount", "rootfs-mount", true, false)
            .check()
            .is_ok());
        assert!(owner("fuse", "rootfs-mount", false, true).check().is_ok());
        // Named like ours: mergerfs with fsname=rootfs-mount, a tmpfs, our type but
        // served by no daemon of ours.
        assert!(owner("fuse.mergerfs", "rootfs-mount", false, false)
            .check()
            .is_err());
        assert!(owner("tmpfs", "rootfs-mount", false, false)
            .check()
            .is_err());
        assert!(owner("fuse", "rootfs-mount", false, false).check().is_err());
        assert!(owner("fuse.rootfs-mount", "other", true, false)
            .check()
            .is_err());
        // Without a state folder, type and name decide.
        let mut unknown = owner("fuse.rootfs-mount", "rootfs-mount", false, false);
        unknown.state_known = false;
        assert!(unknown.check().is_ok());
    }
}
