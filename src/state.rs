//! Per-mount state files and `rootfs-mount status`.
//!
//! A daemon writes `RUNTIME/<pid>.json` once its mount answers, where RUNTIME is
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
//! The format is JSON (serde), the same object `status --json` prints for a mount
//! (README, "status --json"): `format` 2. Paths are JSON strings; a path that is not
//! UTF-8 is an array of its bytes, so any path round-trips. Unknown fields are ignored
//! and missing ones take their defaults. Files of format 1 (`key=value` lines with
//! octal escapes, written by earlier versions whose daemons may still run across an
//! upgrade) are still read. The new files are named `.json`, not `.state`, because
//! earlier versions take a `.state` file they cannot parse for stale and delete it: a
//! daemon of this version must not vanish from `status` when an older binary runs.

use std::fmt::Write as _;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::archive::progress::IndexingStatus;
use crate::fault::Fault;
use crate::fuse::{Counters, ReadPath};

/// The `format` of the state files this version writes.
pub const FORMAT: u32 = 2;

/// What a mount was made from, as `status` shows it (`parameters` in JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MountDescription {
    pub version: String,
    pub cri: String,
    pub cni: String,
    pub arches: Vec<String>,
    /// The registry the image's configs point at (`--registry-domain`).
    pub registry_domain: String,
    #[serde(with = "json_path")]
    pub cache: PathBuf,
    /// `None`: the contexts embedded in the binary.
    #[serde(with = "json_path::option")]
    pub contexts: Option<PathBuf>,
    #[serde(with = "json_path")]
    pub registry_data: PathBuf,
    /// Where the gzip seek indexes are kept (`--index-dir`).
    #[serde(with = "json_path")]
    pub index_dir: PathBuf,
    /// The upper layer writes go to; `None`: a read-only mount.
    #[serde(with = "json_path::option")]
    pub upper: Option<PathBuf>,
    /// The upper layer is a scratch folder, removed with the mount (or, when the daemon
    /// was killed, when its stale state file is cleaned up).
    pub scratch_upper: bool,
    pub allow_other: bool,
    pub auto_unmount: bool,
    /// Where the daemon logs: `stderr`, `journald`, `syslog`, or a file.
    pub log: String,
}

/// The content of one state file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MountRecord {
    /// [`FORMAT`]; 1 for a file read in the old `key=value` form.
    pub format: u32,
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (`/proc/PID/stat` field 22):
    /// tells a live daemon from a reused pid.
    pub start_ticks: u64,
    /// When the mount started answering, in seconds since the epoch.
    pub started: u64,
    #[serde(with = "json_path")]
    pub mountpoint: PathBuf,
    #[serde(rename = "parameters")]
    pub description: MountDescription,
    pub counters: Counters,
    /// The last few faults, oldest first (`crate::fault`).
    pub faults: Vec<Fault>,
    /// How many faults there were in all.
    pub faults_total: u64,
    /// Archives being indexed now (a slow first read), with progress.
    pub indexing: Vec<IndexingStatus>,
    /// The object store of a mount from a remote cache, with its counters.
    pub remote: Option<crate::remote::RemoteStatus>,
    /// When the counters were written, in seconds since the epoch.
    pub updated: u64,
}

/// Paths as JSON: a string when UTF-8, else an array of the path's bytes.
mod json_path {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Bytes(Vec<u8>),
    }

    impl From<Repr> for PathBuf {
        fn from(repr: Repr) -> PathBuf {
            match repr {
                Repr::Text(text) => PathBuf::from(text),
                Repr::Bytes(bytes) => PathBuf::from(OsString::from_vec(bytes)),
            }
        }
    }

    fn put<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        match path.to_str() {
            Some(text) => s.serialize_str(text),
            None => path.as_os_str().as_bytes().serialize(s),
        }
    }

    pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        put(path, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Repr::deserialize(d).map(PathBuf::from)
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
            match path {
                Some(path) => put(path, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
            Option::<Repr>::deserialize(d).map(|r| r.map(PathBuf::from))
        }
    }
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

/// Undoes octal escapes (`\040` for a space), as the kernel writes them in
/// /proc/self/mountinfo and as state files of earlier versions wrote paths.
pub fn unescape(text: &str) -> Vec<u8> {
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

fn path_value(text: &str) -> PathBuf {
    PathBuf::from(std::ffi::OsString::from_vec(unescape(text)))
}

impl MountRecord {
    /// The state file's text, and a mount's object in `status --json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses a state file (JSON, or the `key=value` lines of format 1); `None` when
    /// it is not one or lacks the pid or the mountpoint.
    pub fn parse(text: &str) -> Option<Self> {
        let record = if text.trim_start().starts_with('{') {
            serde_json::from_str::<MountRecord>(text).ok()?
        } else {
            Self::parse_format_1(text)?
        };
        (record.pid != 0 && !record.mountpoint.as_os_str().is_empty()).then_some(record)
    }

    /// Format 1: one `key=value` per line, with bytes outside printable ASCII, `\` and
    /// `=` as octal escapes (`\012`).
    fn parse_format_1(text: &str) -> Option<Self> {
        let mut r = MountRecord {
            format: 1,
            ..MountRecord::default()
        };
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
            ("registry domain", d.registry_domain.clone()),
            ("index dir", d.index_dir.display().to_string()),
            ("log", d.log.clone()),
            ("read path", c.read_path.as_str().to_string()),
            ("requests", c.requests.to_string()),
            ("bytes read", c.bytes_read.to_string()),
            ("errors", c.errors.to_string()),
            ("faults", self.faults_total.to_string()),
        ];
        for (key, value) in rows {
            let _ = writeln!(out, "  {:<16}{value}", format!("{key}:"));
        }
        if let Some(r) = &self.remote {
            let rows = [
                ("store", r.store.clone()),
                ("fetched", format!("{} bytes", r.fetched_bytes)),
                ("local hits", r.hits.to_string()),
                ("local misses", r.misses.to_string()),
                ("local cache", r.local_cache.clone()),
                (
                    "local size",
                    format!("{} of {} bytes", r.local_cache_bytes, r.local_cache_limit),
                ),
            ];
            for (key, value) in rows {
                let _ = writeln!(out, "  {:<16}{value}", format!("{key}:"));
            }
        }
        for i in &self.indexing {
            let eta = i.eta_seconds.map_or_else(|| "unknown".to_string(), uptime);
            let _ = writeln!(
                out,
                "  indexing:       {} {}% ({} of {} bytes, {} left)",
                i.file, i.percent, i.bytes_done, i.bytes_total, eta
            );
        }
        if !self.faults.is_empty() {
            let _ = writeln!(out, "  last faults:");
            for fault in &self.faults {
                let ago = uptime(now.saturating_sub(fault.time));
                let _ = writeln!(out, "    {ago} ago: {}", fault.message);
            }
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
            format: FORMAT,
            pid,
            start_ticks: process_start_ticks(pid).unwrap_or(0),
            started,
            mountpoint: mountpoint.to_path_buf(),
            description,
            updated: started,
            remote: crate::remote::status(),
            ..MountRecord::default()
        };
        let file = StateFile {
            path: dir.join(format!("{pid}.json")),
            record: Mutex::new(None),
        };
        write_atomically(&file.path, &record.to_json())?;
        *file.record.lock().unwrap_or_else(|p| p.into_inner()) = Some(record);
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rewrites the file when the counters, the faults or the indexing in progress
    /// changed since the last write.
    pub fn refresh(
        &self,
        counters: Counters,
        faults: (Vec<Fault>, u64),
        indexing: Vec<IndexingStatus>,
    ) -> std::io::Result<()> {
        let mut guard = self.record.lock().unwrap_or_else(|p| p.into_inner());
        let Some(record) = guard.as_mut() else {
            return Ok(());
        };
        let remote = crate::remote::status();
        if record.counters == counters
            && record.faults_total == faults.1
            && record.indexing == indexing
            && record.remote == remote
        {
            return Ok(());
        }
        record.remote = remote;
        record.counters = counters;
        (record.faults, record.faults_total) = faults;
        record.indexing = indexing;
        record.updated = now();
        write_atomically(&self.path, &record.to_json())
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
                if crate::scratch::is_scratch(&upper) {
                    crate::scratch::remove(Some(&upper));
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
        if path.extension().is_none_or(|e| e != "json" && e != "state") {
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
                registry_domain: "sea.hub:5000".into(),
                index_dir: "/var/cache/rootfs-mount/index".into(),
                log: "journald".into(),
            },
            counters: Counters {
                requests: 9,
                by_op: [("lookup".to_string(), 9)].into_iter().collect(),
                bytes_read: 1 << 40,
                errors: 1,
                read_path: ReadPath::Passthrough,
            },
            faults: vec![Fault {
                time: 100,
                file: "/c/x.tar.gz".into(),
                message: "corrupt archive".into(),
            }],
            faults_total: 3,
            indexing: vec![IndexingStatus {
                file: "/c/registry.tar.gz".into(),
                bytes_done: 50,
                bytes_total: 100,
                percent: 50,
                elapsed_seconds: 2,
                eta_seconds: Some(2),
            }],
            remote: Some(crate::remote::RemoteStatus {
                store: "s3://builds/cache".into(),
                fetched_bytes: 5,
                hits: 2,
                misses: 1,
                local_cache: "/var/cache/rootfs-mount/remote".into(),
                local_cache_bytes: 5,
                local_cache_limit: 10,
            }),
            format: FORMAT,
            updated: 101,
        };
        let text = record.to_json();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        // Not UTF-8: the path's bytes.
        assert_eq!(json["mountpoint"][11], 255, "{text}");
        assert_eq!(json["parameters"]["cache"], "/var/cache/rootfs-mount");
        assert_eq!(json["parameters"]["contexts"], "/src/contexts");
        assert_eq!(json["counters"]["read_path"], "passthrough");
        assert_eq!(json["counters"]["by_op"]["lookup"], 9);
        assert_eq!(json["faults"][0]["file"], "/c/x.tar.gz");
        assert_eq!(MountRecord::parse(&text), Some(record.clone()));
        assert!(MountRecord::parse("pid=1\n").is_none());
        assert!(MountRecord::parse("{\"pid\": 1}").is_none());
        assert!(MountRecord::parse("garbage\n\0\n").is_none());
        let shown = record.describe(100 + 3725);
        assert!(shown.contains("uptime:         1h 02m 05s"), "{shown}");
        assert!(shown.contains("read path:      passthrough"), "{shown}");
        assert!(shown.contains("faults:         3"), "{shown}");
        assert!(shown.contains("ago: corrupt archive"), "{shown}");
        assert!(
            shown.contains("indexing:       /c/registry.tar.gz 50% (50 of 100 bytes, 2s left)"),
            "{shown}"
        );
    }

    #[test]
    fn format_1_files_are_still_read() {
        let text = "pid=42\nstart_ticks=7\nstarted=100\nmountpoint=/mnt/a b\\012c\\075\nversion=v1.23.4\narches=amd64,arm64\ncache=/c\ncontexts=\nupper=/u\nscratch_upper=true\nread_path=passthrough\nrequests=9\nerrors=1\nupdated=101\n";
        let r = MountRecord::parse(text).expect("format 1");
        assert_eq!(r.format, 1);
        assert_eq!(r.pid, 42);
        assert_eq!(r.mountpoint, PathBuf::from("/mnt/a b\nc="));
        assert_eq!(r.description.arches, ["amd64", "arm64"]);
        assert_eq!(r.description.contexts, None);
        assert_eq!(r.description.upper, Some(PathBuf::from("/u")));
        assert!(r.description.scratch_upper);
        assert_eq!(r.counters.read_path, ReadPath::Passthrough);
        assert_eq!(r.counters.requests, 9);
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
