//! systemd readiness (`sd_notify`), written by hand: a unit with `Type=notify` waits for
//! `READY=1` on the datagram socket named by `NOTIFY_SOCKET` (a path, or `@name` for an
//! abstract socket). The protocol is newline-separated `KEY=value` lines in one datagram,
//! so a crate would add nothing but a dependency.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where systemd listens, from `NOTIFY_SOCKET`; `None` when not run by systemd.
fn socket_address() -> Option<SocketAddr> {
    let name = std::env::var_os("NOTIFY_SOCKET")?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str());
    match bytes.split_first() {
        Some((b'@', rest)) => SocketAddr::from_abstract_name(rest).ok(),
        Some((b'/', _)) => SocketAddr::from_pathname(std::path::Path::new(&name)).ok(),
        _ => None,
    }
}

/// Sends `state` (e.g. `"READY=1\nSTATUS=serving"`) to the service manager. Best
/// effort: without `NOTIFY_SOCKET` it does nothing, and a failure is logged, never fatal.
pub fn notify(state: &str) {
    let Some(addr) = socket_address() else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|s| s.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        tracing::debug!(error = %e, "cannot notify the service manager");
    }
}

/// `READY=1` with a status line and our pid: a daemon that forked is not the process
/// systemd started, and `MAINPID` tells it which one to watch.
pub fn ready(status: &str) {
    notify(&format!(
        "READY=1\nSTATUS={status}\nMAINPID={}\n",
        std::process::id()
    ));
}

pub fn stopping(status: &str) {
    notify(&format!("STOPPING=1\nSTATUS={status}\n"));
}

/// A start-up failure, so `systemctl status` shows why.
pub fn failed(status: &str, errno: i32) {
    notify(&format!("STATUS={status}\nERRNO={errno}\n"));
}
