//! Faults: what went wrong with one file while the rest of the mount is served (a
//! corrupt archive, a template that does not render, a backing file changed under the
//! mount). Each is logged once as a WARN line with the target [`TARGET`] and a `file`
//! field naming the file; the daemon keeps the last few ([`FaultLog`]) for `status`.
//! This module has no dependencies, so every layer of the crate can log a fault.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The `tracing` target of fault lines: `tracing::warn!(target: TARGET, file = ...)`.
pub const TARGET: &str = "rootfs_mount::fault";

/// How many faults `status` shows.
pub const KEPT: usize = 8;

/// One fault, as the state file and `status --json` hold it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// When it was logged, in seconds since the epoch.
    pub time: u64,
    /// The file concerned (a backing path, an archive, a template), or "" when the
    /// line named none.
    pub file: String,
    /// The log line's message and fields.
    pub message: String,
}

/// The last [`KEPT`] faults, and how many there were in all.
#[derive(Debug, Default)]
pub struct FaultLog {
    inner: Mutex<(VecDeque<Fault>, u64)>,
}

impl FaultLog {
    pub const fn new() -> Self {
        FaultLog {
            inner: Mutex::new((VecDeque::new(), 0)),
        }
    }

    pub fn push(&self, fault: Fault) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.0.len() == KEPT {
            inner.0.pop_front();
        }
        inner.0.push_back(fault);
        inner.1 += 1;
    }

    /// The kept faults, oldest first, and the count of all faults so far.
    pub fn snapshot(&self) -> (Vec<Fault>, u64) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (inner.0.iter().cloned().collect(), inner.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_few() {
        let log = FaultLog::default();
        for i in 0..(KEPT as u64 + 3) {
            log.push(Fault {
                time: i,
                ..Fault::default()
            });
        }
        let (kept, total) = log.snapshot();
        assert_eq!(total, KEPT as u64 + 3);
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].time, 3);
    }
}
