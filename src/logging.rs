//! Where the daemon's log goes, and what is kept of it.
//!
//! - In the foreground: stderr (under systemd that is the journal too).
//! - A background daemon: `--log-file` when given; else journald, when its socket
//!   (`/run/systemd/journal/socket`) is there; else syslog, when `/dev/log` is there;
//!   else `STATE/rootfs-mount.log` (STATE is the state folder of `crate::state`,
//!   `/run/rootfs-mount` for root), appended to by every daemon, each line with its pid.
//!   A backgrounded daemon never logs nowhere.
//!
//! Journal entries are written by hand in journald's native protocol (one datagram of
//! `KEY=value` lines per entry: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, SYSLOG_PID), a
//! dozen lines that need no crate. Syslog messages likewise: one datagram per line to
//! `/dev/log`, `<PRI>rootfs-mount[PID]: MESSAGE` with the facility `daemon` (as glibc's
//! syslog(3) sends them, less the timestamp, which the local syslog daemon adds).
//!
//! Every fault line (target `crate::fault::TARGET`) is also kept in a [`FaultLog`] for
//! `status`, whatever the log level. fuser's "Failed to send FUSE reply: No such file
//! or directory" is dropped: the kernel answers ENOENT to a reply whose request was
//! interrupted (the caller gave up, e.g. Ctrl-C on `ls`), which is not an error.

use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::fault::{self, Fault, FaultLog};

/// journald's socket for native entries.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The local syslog socket.
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// syslog's facility `daemon` (3), shifted as in a priority value.
const FACILITY_DAEMON: u8 = 3 << 3;

/// Where a log goes.
#[derive(Debug)]
pub enum Destination {
    /// stderr (the foreground, or a file stderr was pointed at).
    Stderr,
    /// Native journal entries to this socket.
    Journal(PathBuf),
    /// Syslog messages to this socket.
    Syslog(PathBuf),
}

/// The journal socket, when journald runs. `ROOTFS_MOUNT_JOURNAL_SOCKET` points
/// elsewhere (the tests own a socket that speaks for journald).
pub fn journal_socket() -> Option<PathBuf> {
    socket_at("ROOTFS_MOUNT_JOURNAL_SOCKET", JOURNAL_SOCKET)
}

/// The syslog socket, when a syslog daemon listens. `ROOTFS_MOUNT_SYSLOG_SOCKET` points
/// elsewhere (the tests own a socket that speaks for syslog).
pub fn syslog_socket() -> Option<PathBuf> {
    socket_at("ROOTFS_MOUNT_SYSLOG_SOCKET", SYSLOG_SOCKET)
}

/// `default`, or the path in the environment variable `env`, when it is a datagram
/// socket someone listens on (a stream socket, as some syslog-ng set-ups have, would
/// take no datagram: the daemon would log nowhere).
fn socket_at(env: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from);
    let probe = UnixDatagram::unbound().ok()?;
    probe.connect(&path).is_ok().then_some(path)
}

/// The log file of a background daemon without journald and without `--log-file`:
/// `STATE/rootfs-mount.log`, or `$XDG_STATE_HOME/rootfs-mount/rootfs-mount.log`
/// (`~/.local/state/...`) for a user without a runtime folder.
pub fn default_log_file() -> Option<PathBuf> {
    if let Some(dir) = crate::state::runtime_dir() {
        return Some(dir.join("rootfs-mount.log"));
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(state.join("rootfs-mount/rootfs-mount.log"))
}

/// Opens a log file for appending, making its folder.
pub fn open_log_file(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Installs the global subscriber: `level` (or `RUST_LOG`) to `destination`, faults
/// into `faults`. `pid_prefix` starts every line with `[pid N]` (a log file shared by
/// daemons).
pub fn init(level: &str, destination: Destination, pid_prefix: bool, faults: &'static FaultLog) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let keep_faults =
        FaultLayer(faults).with_filter(Targets::new().with_target(fault::TARGET, Level::WARN));
    let registry = tracing_subscriber::registry()
        .with(DropInterruptedReplies)
        .with(keep_faults);
    let _ = match destination {
        Destination::Stderr => {
            use std::io::IsTerminal;
            let ansi = std::io::stderr().is_terminal();
            let writer = PrefixedStderr { pid_prefix };
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(ansi)
                        .with_writer(writer)
                        .with_filter(filter),
                )
                .try_init()
        }
        Destination::Journal(socket) => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .without_time()
                    .with_writer(Datagrams::new(socket, Protocol::Journal))
                    .with_filter(filter),
            )
            .try_init(),
        Destination::Syslog(socket) => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .without_time()
                    .with_writer(Datagrams::new(socket, Protocol::Syslog))
                    .with_filter(filter),
            )
            .try_init(),
    };
}

/// Drops fuser's error for a reply the kernel no longer wanted (see the module doc).
struct DropInterruptedReplies;

impl<S: Subscriber> Layer<S> for DropInterruptedReplies {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        // fuser logs through the `log` crate: its records arrive with the target "log"
        // and their own target in the field `log.target`. The reply error is an ERROR;
        // nothing else is formatted here (fuser logs every request at DEBUG: formatting
        // those was an eighth of the daemon's user CPU on a first walk).
        let target = event.metadata().target();
        if *event.metadata().level() > Level::WARN
            || (target != "log" && !target.starts_with("fuser::reply"))
        {
            return true;
        }
        let mut text = Text::default();
        event.record(&mut text);
        let from_reply =
            target.starts_with("fuser::reply") || text.log_target.starts_with("fuser::reply");
        !(from_reply && text.message.contains("No such file or directory"))
    }
}

/// Keeps fault lines in the [`FaultLog`].
struct FaultLayer(&'static FaultLog);

impl<S: Subscriber> Layer<S> for FaultLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut text = Text::default();
        event.record(&mut text);
        self.0.push(Fault {
            time: crate::state::now_secs(),
            file: text.file,
            message: text.fields.trim_start().to_string(),
        });
    }
}

/// The message, the `file` field, and the whole line of an event.
#[derive(Default)]
struct Text {
    message: String,
    file: String,
    fields: String,
    /// The target of a record of the `log` crate.
    log_target: String,
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        match field.name() {
            "message" => {
                self.message = format!("{value:?}");
                self.fields = format!("{}{}", self.message, self.fields);
            }
            "file" => self.file = format!("{value:?}"),
            "log.target" => self.log_target = format!("{value:?}"),
            name => {
                let _ = write!(self.fields, " {name}={value:?}");
            }
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }
}

/// stderr, with `[pid N] ` before each line when asked.
#[derive(Clone, Copy)]
struct PrefixedStderr {
    pid_prefix: bool,
}

impl<'a> MakeWriter<'a> for PrefixedStderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            buf: Vec::new(),
            sink: if self.pid_prefix {
                Sink::StderrPid
            } else {
                Sink::Stderr
            },
        }
    }
}

/// What a datagram socket log speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// journald's native entries.
    Journal,
    /// Local syslog messages.
    Syslog,
}

/// One datagram per log line to a socket (journald's or syslog's).
struct Datagrams {
    socket: Option<Arc<UnixDatagram>>,
    path: PathBuf,
    protocol: Protocol,
}

impl Datagrams {
    fn new(path: PathBuf, protocol: Protocol) -> Self {
        // Non-blocking: a log daemon that does not keep up loses lines; it never stalls
        // a thread that answers the kernel.
        let socket = UnixDatagram::unbound()
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .ok();
        Datagrams {
            socket: socket.map(Arc::new),
            path,
            protocol,
        }
    }
}

impl<'a> MakeWriter<'a> for Datagrams {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        self.line(6)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        self.line(match *meta.level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        })
    }
}

impl Datagrams {
    /// A line at syslog `priority` (severity).
    fn line(&self, priority: u8) -> Line {
        Line {
            buf: Vec::new(),
            sink: match &self.socket {
                Some(socket) => Sink::Datagram {
                    socket: socket.clone(),
                    path: self.path.clone(),
                    protocol: self.protocol,
                    priority,
                },
                None => Sink::Stderr,
            },
        }
    }
}

enum Sink {
    Stderr,
    StderrPid,
    Datagram {
        socket: Arc<UnixDatagram>,
        path: PathBuf,
        protocol: Protocol,
        priority: u8,
    },
}

/// One formatted log line, sent whole when dropped: one write(2) per line, so lines of
/// daemons sharing a file never interleave, and one datagram per journal entry.
struct Line {
    buf: Vec<u8>,
    sink: Sink,
}

impl Write for Line {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        match &self.sink {
            Sink::Stderr => {
                let _ = std::io::stderr().write_all(&self.buf);
            }
            Sink::StderrPid => {
                let mut line = format!("[pid {}] ", std::process::id()).into_bytes();
                line.extend_from_slice(&self.buf);
                let _ = std::io::stderr().write_all(&line);
            }
            Sink::Datagram {
                socket,
                path,
                protocol,
                priority,
            } => {
                let message = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
                let datagram = match protocol {
                    Protocol::Journal => journal_entry(&[
                        ("PRIORITY", priority.to_string().as_bytes()),
                        ("SYSLOG_IDENTIFIER", b"rootfs-mount"),
                        ("SYSLOG_PID", std::process::id().to_string().as_bytes()),
                        ("MESSAGE", message),
                    ]),
                    Protocol::Syslog => syslog_message(*priority, std::process::id(), message),
                };
                let _ = socket.send_to(&datagram, path);
            }
        }
    }
}

/// One entry of journald's native protocol: `KEY=value\n`, or for a value with a
/// newline `KEY\n`, its length as 64-bit little endian, the value and `\n`.
pub fn journal_entry(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in fields {
        out.extend_from_slice(key.as_bytes());
        if value.contains(&b'\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

/// One local syslog message: `<PRI>rootfs-mount[PID]: MESSAGE`, facility `daemon`.
/// Newlines in the message become spaces (one line per message, as syslog keeps them).
pub fn syslog_message(severity: u8, pid: u32, message: &[u8]) -> Vec<u8> {
    let mut out = format!("<{}>rootfs-mount[{pid}]: ", FACILITY_DAEMON | severity).into_bytes();
    out.extend(message.iter().map(|&b| if b == b'\n' { b' ' } else { b }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_to_an_interrupted_request_is_not_logged() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Count(Arc<AtomicUsize>);
        impl<S: Subscriber> Layer<S> for Count {
            fn on_event(&self, _: &Event<'_>, _: Context<'_, S>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let seen = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(DropInterruptedReplies)
            .with(Count(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: No such file or directory (os error 2)");
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: Broken pipe (os error 32)");
            tracing::warn!(target: "rootfs_mount::fault", "x: No such file or directory");
            // As fuser logs it: a record of the `log` crate, through tracing-log.
            let record = log::Record::builder()
                .target("fuser::reply")
                .level(log::Level::Error)
                .args(format_args!(
                    "Failed to send FUSE reply: No such file or directory (os error 2)"
                ))
                .build();
            tracing_log::format_trace(&record).unwrap();
        });
        assert_eq!(seen.load(Ordering::Relaxed), 2);
    }

    /// fuser logs every request at DEBUG; the veto above must not format those records
    /// (it did, an eighth of the daemon's user CPU on a first walk).
    #[test]
    fn debug_records_of_fuser_are_not_formatted_by_the_reply_veto() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static FORMATTED: AtomicUsize = AtomicUsize::new(0);
        struct Request;
        impl std::fmt::Display for Request {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                FORMATTED.fetch_add(1, Ordering::Relaxed);
                f.write_str("FUSE(2) ino 0x1 READDIRPLUS")
            }
        }
        let subscriber = tracing_subscriber::registry().with(DropInterruptedReplies);
        tracing::subscriber::with_default(subscriber, || {
            for level in [log::Level::Debug, log::Level::Trace, log::Level::Info] {
                tracing_log::format_trace(
                    &log::Record::builder()
                        .target("fuser::session")
                        .level(level)
                        .args(format_args!("{}", Request))
                        .build(),
                )
                .unwrap();
            }
        });
        assert_eq!(FORMATTED.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn syslog_messages_name_the_facility_severity_and_pid() {
        assert_eq!(
            syslog_message(4, 77, b"WARN a\nb"),
            b"<28>rootfs-mount[77]: WARN a b".to_vec()
        );
    }

    #[test]
    fn journal_entries_carry_newlines_in_binary_form() {
        let entry = journal_entry(&[("PRIORITY", b"4"), ("MESSAGE", b"a\nb")]);
        let mut want = b"PRIORITY=4\nMESSAGE\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\n");
        assert_eq!(entry, want);
    }
}
