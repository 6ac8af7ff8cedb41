//! Per-mount state files and `rootfs-mount status`.
//!
//! A daemon writes `RUNTIME/<pid>.state` once its mount answers, where RUNTIME is
//! `/run/rootfs-mount` for root and `$XDG_RUNTIME_DIR/rootfs-mount` for other users
//! (without `XDG_RUNTIME_DIR` a non-root daemon keeps no state file). The file holds the
//! mount's parameters and its counters; a small thread of the daemon rewrites it once a
//! second while the counters move, so `status` shows counters at most a second old and
//! no request ever waits on it. The daemon removes the file when it unmounts cleanly.
//!
//! A file whose process is gone, or whose pid now belongs to another process (the
//! process start time is recorded and compared), is stale: `status` and every new daemon
//! ignore it and remove it.
//!
//! The format is one `key=value` per line, with bytes outside printable ASCII, `\` and
//! `=` written as octal escapes (`\012`), so any path round-trips and the file stays
//! greppable. Unknown keys are ignored.

use std::fmt::Write as _;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fuse::{Counters, ReadPath};

/// What a mount was made from, as `status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountDescription {
    pub version: String,
    pub cri: String,
    pub cni: String,
    pub arches: Vec<String>,
    pub cache: PathBuf,
    /// `None`: the contexts embedded in the binary.
    pub contexts: Option<PathBuf>,
    pub registry_data: PathBuf,
    /// The upper layer writes go to; `None`: a read-only mount.
    pub upper: Option<PathBuf>,
    /// The upper layer is a scratch folder, removed with the mount (or, when the daemon
    /// was killed, when its stale state file is cleaned up).
    pub scratch_upper: bool,
    pub allow_other: bool,
    pub auto_unmount: bool,
}

/// The content of one state file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountRecord {
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (`/proc/PID/stat` field 22):
    /// tells a live daemon from a reused pid.
    pub start_ticks: u64,
    /// When the mount started answering, in seconds since the epoch.
    pub started: u64,
    pub mountpoint: PathBuf,
    pub description: MountDescription,
    pub counters: Counters,
    /// When the counters were written, in seconds since the epoch.
    pub updated: u64,
}

/// The folder of the state files of the calling user, if it has one.
pub fn runtime_dir() -> Option<PathBuf> {
    if crate::sys::euid() == 0 {
        return Some(PathBuf::from("/run/rootfs-mount"));
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(|v| PathBuf::from(v).join("rootfs-mount"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Field 22 of `/proc/PID/stat`, the process start time; `None` if there is no such
/// process or it has exited (a zombie not yet reaped is dead too).
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: skip past its last ')'.
    let close = stat.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    // After ')' come fields 3 (the state), 4, ...: the start time is the 20th of them.
    let mut fields = rest.split_whitespace();
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'\\' && b != b'=' {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\{b:03o}");
        }
    }
    out
}

fn unescape(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let v = u32::from(d[0] - b'0') * 64
                    + u32::from(d[1] - b'0') * 8
                    + u32::from(d[2] - b'0');
                out.push(v as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn path_field(path: &Path) -> String {
    escape(path.as_os_str().as_bytes())
}

fn path_value(text: &str) -> PathBuf {
    PathBuf::from(std::ffi::OsString::from_vec(unescape(text)))
}

impl MountRecord {
    pub fn to_text(&self) -> String {
        let d = &self.description;
        let c = &self.counters;
        let contexts = d.contexts.as_deref().map(path_field).unwrap_or_default();
        let upper = d.upper.as_deref().map(path_field).unwrap_or_default();
        let fields: [(&str, String); 20] = [
            ("pid", self.pid.to_string()),
            ("start_ticks", self.start_ticks.to_string()),
            ("started", self.started.to_string()),
            ("mountpoint", path_field(&self.mountpoint)),
            ("version", escape(d.version.as_bytes())),
            ("cri", escape(d.cri.as_bytes())),
            ("cni", escape(d.cni.as_bytes())),
            ("arches", escape(d.arches.join(",").as_bytes())),
            ("cache", path_field(&d.cache)),
            ("contexts", contexts),
            ("registry_data", path_field(&d.registry_data)),
            ("upper", upper),
            ("scratch_upper", d.scratch_upper.to_string()),
            ("allow_other", d.allow_other.to_string()),
            ("auto_unmount", d.auto_unmount.to_string()),
            ("read_path", c.read_path.as_str().to_string()),
            ("requests", c.requests.to_string()),
            ("bytes_read", c.bytes_read.to_string()),
            ("errors", c.errors.to_string()),
            ("updated", self.updated.to_string()),
        ];
        let mut out = String::new();
        for (key, value) in fields {
            let _ = writeln!(out, "{key}={value}");
        }
        out
    }

    /// Parses a state file; `None` when it lacks the pid or the mountpoint.
    pub fn parse(text: &str) -> Option<Self> {
        let mut r = MountRecord::default();
        let (mut has_pid, mut has_mountpoint) = (false, false);
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let string = || String::from_utf8_lossy(&unescape(value)).into_owned();
            let number = || value.parse::<u64>().unwrap_or(0);
            let d = &mut r.description;
            match key {
                "pid" => {
                    r.pid = value.parse().ok()?;
                    has_pid = true;
                }
                "start_ticks" => r.start_ticks = number(),
                "started" => r.started = number(),
                "mountpoint" => {
                    r.mountpoint = path_value(value);
                    has_mountpoint = true;
                }
                "version" => d.version = string(),
                "cri" => d.cri = string(),
                "cni" => d.cni = string(),
                "arches" => {
                    d.arches = string()
                        .split(',')
                        .filter(|a| !a.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                "cache" => d.cache = path_value(value),
                "contexts" if !value.is_empty() => d.contexts = Some(path_value(value)),
                "registry_data" => d.registry_data = path_value(value),
                "upper" if !value.is_empty() => d.upper = Some(path_value(value)),
                "scratch_upper" => d.scratch_upper = value == "true",
                "allow_other" => d.allow_other = value == "true",
                "auto_unmount" => d.auto_unmount = value == "true",
                "read_path" => {
                    r.counters.read_path = if value == "passthrough" {
                        ReadPath::Passthrough
                    } else {
                        ReadPath::Userspace
                    }
                }
                "requests" => r.counters.requests = number(),
                "bytes_read" => r.counters.bytes_read = number(),
                "errors" => r.counters.errors = number(),
                "updated" => r.updated = number(),
                _ => {}
            }
        }
        (has_pid && has_mountpoint).then_some(r)
    }

    /// True while the process that wrote the record is still the same process.
    pub fn is_live(&self) -> bool {
        process_start_ticks(self.pid) == Some(self.start_ticks)
    }

    /// Human-readable, one `key: value` per line under the mountpoint.
    pub fn describe(&self, now: u64) -> String {
        let d = &self.description;
        let c = &self.counters;
        let mut out = format!("{}\n", self.mountpoint.display());
        let contexts = match &d.contexts {
            Some(p) => p.display().to_string(),
            None => "embedded".into(),
        };
        let rows = [
            ("pid", self.pid.to_string()),
            ("uptime", uptime(now.saturating_sub(self.started))),
            ("version", d.version.clone()),
            ("cri", d.cri.clone()),
            ("cni", d.cni.clone()),
            ("arches", d.arches.join(",")),
            ("cache", d.cache.display().to_string()),
            ("contexts", contexts),
            ("registry data", d.registry_data.display().to_string()),
            (
                "upper",
                d.upper
                    .as_ref()
                    .map_or_else(|| "none (read-only)".into(), |p| p.display().to_string()),
            ),
            ("allow other", yes_no(d.allow_other)),
            ("auto unmount", yes_no(d.auto_unmount)),
            ("read path", c.read_path.as_str().to_string()),
            ("requests", c.requests.to_string()),
            ("bytes read", c.bytes_read.to_string()),
            ("errors", c.errors.to_string()),
        ];
        for (key, value) in rows {
            let _ = writeln!(out, "  {:<16}{value}", format!("{key}:"));
        }
        out
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// `3725` → `1h 02m 05s`.
pub fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m {s:02}s"),
        _ => format!("{d}d {h:02}h {m:02}m {s:02}s"),
    }
}

/// The state file a live daemon keeps up to date; removed by [`StateFile::remove`]
/// (the daemon calls it once unmounted) and on drop.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    /// `None` once removed: a late refresh must not write the file again.
    record: Mutex<Option<MountRecord>>,
}

impl StateFile {
    /// Writes the first state file of this process, after removing stale ones.
    pub fn create(mountpoint: &Path, description: MountDescription) -> std::io::Result<Self> {
        let dir = runtime_dir().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no runtime folder: XDG_RUNTIME_DIR is not set",
            )
        })?;
        std::fs::create_dir_all(&dir)?;
        clean_stale(&dir);
        let pid = std::process::id();
        let started = now();
        let record = MountRecord {
            pid,
            start_ticks: process_start_ticks(pid).unwrap_or(0),
            started,
            mountpoint: mountpoint.to_path_buf(),
            description,
            counters: Counters::default(),
            updated: started,
        };
        let file = StateFile {
            path: dir.join(format!("{pid}.state")),
            record: Mutex::new(None),
        };
        write_atomically(&file.path, &record.to_text())?;
        *file.record.lock().unwrap_or_else(|p| p.into_inner()) = Some(record);
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rewrites the file when the counters changed since the last write.
    pub fn refresh(&self, counters: Counters) -> std::io::Result<()> {
        let mut guard = self.record.lock().unwrap_or_else(|p| p.into_inner());
        let Some(record) = guard.as_mut() else {
            return Ok(());
        };
        if record.counters == counters {
            return Ok(());
        }
        record.counters = counters;
        record.updated = now();
        write_atomically(&self.path, &record.to_text())
    }

    pub fn remove(&self) {
        let mut guard = self.record.lock().unwrap_or_else(|p| p.into_inner());
        if guard.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        self.remove();
    }
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// A state file whose daemon is gone, with what could be read of it.
struct Stale {
    path: PathBuf,
    record: Option<MountRecord>,
}

impl Stale {
    /// Removes the file, and the scratch upper layer of a killed daemon with it. Only a
    /// folder named like the ones the daemon makes is ever removed.
    fn remove(self) {
        if let Some(d) = self.record.map(|r| r.description) {
            if let (true, Some(upper)) = (d.scratch_upper, d.upper) {
                let ours = upper.file_name().is_some_and(|n| {
                    n.as_bytes()
                        .starts_with(crate::daemon::SCRATCH_PREFIX.as_bytes())
                });
                if ours {
                    let _ = std::fs::remove_dir_all(&upper);
                }
            }
        }
        let _ = std::fs::remove_file(self.path);
    }
}

/// Reads every state file in `dir`: live records, and the stale ones.
fn scan(dir: &Path) -> (Vec<MountRecord>, Vec<Stale>) {
    let mut live = Vec::new();
    let mut stale = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (live, stale);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "state") {
            continue;
        }
        let record = crate::sys::read_regular(&path)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| MountRecord::parse(&t));
        match record {
            Some(r) if r.is_live() => live.push(r),
            // Unreadable, unparsable or left by a dead process.
            record => stale.push(Stale { path, record }),
        }
    }
    live.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    (live, stale)
}

/// Removes the stale state files of `dir` (those this user may remove).
pub fn clean_stale(dir: &Path) {
    for stale in scan(dir).1 {
        stale.remove();
    }
}

/// The live mounts recorded in this user's state folder; stale files are removed.
pub fn live_mounts() -> Vec<MountRecord> {
    let Some(dir) = runtime_dir() else {
        return Vec::new();
    };
    let (live, stale) = scan(&dir);
    for s in stale {
        s.remove();
    }
    live
}

/// Seconds since the epoch, for [`MountRecord::describe`].
pub fn now_secs() -> u64 {
    now()
}

/// How often a daemon refreshes its state file.
pub const REFRESH: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_any_path() {
        let record = MountRecord {
            pid: 42,
            start_ticks: 7,
            started: 100,
            mountpoint: path_value("/mnt/a b\\012c=\\377"),
            description: MountDescription {
                version: "v1.23.4".into(),
                cri: "docker".into(),
                cni: "calico".into(),
                arches: vec!["amd64".into(), "arm64".into()],
                cache: "/var/cache/rootfs-mount".into(),
                contexts: Some("/src/contexts".into()),
                registry_data: "/var/cache/rootfs-mount/registry".into(),
                upper: Some("/build/upper".into()),
                scratch_upper: true,
                allow_other: true,
                auto_unmount: false,
            },
            counters: Counters {
                requests: 9,
                bytes_read: 1 << 40,
                errors: 1,
                read_path: ReadPath::Passthrough,
            },
            updated: 101,
        };
        let text = record.to_text();
        assert!(
            text.contains("mountpoint=/mnt/a b\\012c\\075\\377\n"),
            "{text}"
        );
        assert_eq!(MountRecord::parse(&text), Some(record.clone()));
        assert!(MountRecord::parse("pid=1\n").is_none());
        assert!(MountRecord::parse("garbage\n\0\n").is_none());
        let shown = record.describe(100 + 3725);
        assert!(shown.contains("uptime:         1h 02m 05s"), "{shown}");
        assert!(shown.contains("read path:      passthrough"), "{shown}");
    }

    #[test]
    fn liveness_follows_the_process_start_time() {
        let me = std::process::id();
        let ticks = process_start_ticks(me).expect("own start time");
        let mut r = MountRecord {
            pid: me,
            start_ticks: ticks,
            mountpoint: "/x".into(),
            ..MountRecord::default()
        };
        assert!(r.is_live());
        r.start_ticks += 1;
        assert!(!r.is_live(), "a reused pid is not the daemon");
        r.pid = u32::MAX;
        assert!(!r.is_live());
        assert_eq!(uptime(5), "5s");
        assert_eq!(uptime(65), "1m 05s");
        assert_eq!(uptime(90061), "1d 01h 01m 01s");
    }
}
