//! How long a kernel request may wait for an archive's index build, and when it gives up.
//!
//! An index build (seconds for a GB-sized archive) runs on a thread of its own; the
//! requests that need it wait for it, and each waiting request gives up:
//! - with EINTR as soon as its calling thread has a signal pending that it does not
//!   block (Ctrl-C on `ls`, SIGTERM, SIGKILL), and
//! - with EAGAIN after [`wait_bound`] (60 s unless `ROOTFS_MOUNT_INDEX_WAIT_SECS` says
//!   otherwise), so that no request waits on a build forever.
//!
//! The build itself goes on either way; the next request finds it done.
//!
//! Why a signal check and not FUSE_INTERRUPT: fuser 0.18 answers the kernel's INTERRUPT
//! request with ENOSYS itself (the file system never sees it), after which the kernel
//! sends no more INTERRUPTs on that connection. The kernel would have sent one exactly
//! when the calling thread has a pending signal it does not block; so a waiting request
//! reads that from `/proc/TID/status` (the request header carries the caller's thread
//! id) every [`POLL`]. What this cannot do: interrupt a request that is not waiting on a
//! build (the others are short, or bounded by the backing file's own I/O).
//!
//! The FUSE adapter enters a [`RequestScope`] for the requests that may wait; code run
//! outside one (the `index` and `tree` commands) waits for the build without a bound.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often a waiting request looks at its caller's signals.
pub const POLL: Duration = Duration::from_millis(50);

/// The longest a request waits for an index build, unless set.
pub const DEFAULT_WAIT_BOUND: Duration = Duration::from_secs(60);

/// The environment variable that sets the wait bound in seconds (tests use a short one).
pub const WAIT_BOUND_ENV: &str = "ROOTFS_MOUNT_INDEX_WAIT_SECS";

/// The wait bound of this process: `ROOTFS_MOUNT_INDEX_WAIT_SECS` (at least 1), else
/// [`DEFAULT_WAIT_BOUND`].
pub fn wait_bound() -> Duration {
    static BOUND: OnceLock<Duration> = OnceLock::new();
    *BOUND.get_or_init(|| {
        std::env::var(WAIT_BOUND_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(DEFAULT_WAIT_BOUND, |s| Duration::from_secs(s.max(1)))
    })
}

thread_local! {
    static CALLER: Cell<Option<u32>> = const { Cell::new(None) };
}

/// A kernel request being served on this thread, from the calling thread `tid`; left on
/// drop.
pub struct RequestScope {
    outer: Option<u32>,
}

impl RequestScope {
    pub fn enter(tid: u32) -> Self {
        RequestScope {
            outer: CALLER.with(|c| c.replace(Some(tid))),
        }
    }
}

impl Drop for RequestScope {
    fn drop(&mut self) {
        CALLER.with(|c| c.set(self.outer));
    }
}

/// Why a waiting request stopped waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// Its caller has a signal pending (answered EINTR).
    Interrupted,
    /// The bound passed (answered EAGAIN).
    TooLong(Duration),
}

impl GaveUp {
    pub fn errno(self) -> i32 {
        match self {
            GaveUp::Interrupted => libc::EINTR,
            GaveUp::TooLong(_) => libc::EAGAIN,
        }
    }
}

/// The rule the waiting request on this thread follows, taken when it starts to wait.
#[derive(Debug, Clone, Copy)]
pub struct Waiter {
    /// The caller's thread id and the deadline; `None`: wait without a bound.
    request: Option<(u32, Instant, Duration)>,
}

impl Waiter {
    /// The rule for this thread: bounded, with a signal check, inside a request scope.
    pub fn for_this_thread() -> Self {
        Self::with(CALLER.with(Cell::get), wait_bound())
    }

    pub fn with(caller: Option<u32>, bound: Duration) -> Self {
        Waiter {
            request: caller.map(|tid| (tid, Instant::now() + bound, bound)),
        }
    }

    /// How long to wait before asking [`Waiter::check`] again; `None`: as long as it
    /// takes.
    pub fn next_wait(&self) -> Option<Duration> {
        self.request.map(|(_, deadline, _)| {
            deadline
                .saturating_duration_since(Instant::now())
                .min(POLL)
                .max(Duration::from_millis(1))
        })
    }

    /// Whether to stop waiting now.
    pub fn check(&self) -> Result<(), GaveUp> {
        let Some((tid, deadline, bound)) = self.request else {
            return Ok(());
        };
        if signal_pending(tid) {
            return Err(GaveUp::Interrupted);
        }
        if Instant::now() >= deadline {
            return Err(GaveUp::TooLong(bound));
        }
        Ok(())
    }
}

/// Whether thread `tid` has a pending signal that it does not block (the condition
/// under which the kernel sends FUSE_INTERRUPT). A thread that cannot be read (gone, or
/// in another pid namespace) has none.
pub fn signal_pending(tid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .map(|s| pending_in_status(&s))
        .unwrap_or(false)
}

/// The test of [`signal_pending`] on the text of `/proc/TID/status`: (SigPnd | ShdPnd)
/// & !SigBlk.
fn pending_in_status(status: &str) -> bool {
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    (mask("SigPnd:") | mask("ShdPnd:")) & !mask("SigBlk:") != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_signals_count_unless_blocked() {
        let status = |pnd: &str, shd: &str, blk: &str| {
            format!("Name:\tls\nSigQ:\t0/1\nSigPnd:\t{pnd}\nShdPnd:\t{shd}\nSigBlk:\t{blk}\nSigIgn:\t0\n")
        };
        let none = "0000000000000000";
        let sigint = "0000000000000002";
        assert!(!pending_in_status(&status(none, none, none)));
        assert!(pending_in_status(&status(none, sigint, none)));
        assert!(pending_in_status(&status(sigint, none, none)));
        assert!(!pending_in_status(&status(none, sigint, sigint)));
        // SIGKILL (9) is bit 8; it cannot be blocked, and the kernel never shows it so.
        assert!(pending_in_status(&status("0000000000000100", none, sigint)));
    }

    #[test]
    fn this_thread_has_no_signal_pending() {
        let tid = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|p| p.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap();
        assert!(!signal_pending(tid));
    }

    #[test]
    fn outside_a_request_there_is_no_bound() {
        let w = Waiter::for_this_thread();
        assert_eq!(w.next_wait(), None);
        assert_eq!(w.check(), Ok(()));
        let _scope = RequestScope::enter(std::process::id());
        assert!(Waiter::for_this_thread().next_wait().is_some());
        let past = Waiter::with(Some(std::process::id()), Duration::ZERO);
        assert_eq!(past.check(), Err(GaveUp::TooLong(Duration::ZERO)));
    }
}
