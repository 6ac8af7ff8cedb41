//! How this machine's idle CPUs wait, where that sets the price of a FUSE round trip.
//!
//! Every request the kernel sends the daemon is a round trip between two threads: the
//! caller sleeps until the daemon answers, the daemon sleeps until the next request. On a
//! virtual machine a CPU with nothing to run halts, and waking a halted vCPU costs the
//! host a VM exit and a reschedule, tens of microseconds, twice per round trip. Linux
//! guests avoid most of it by polling a short while before halting (the `haltpoll`
//! cpuidle driver, `guest_halt_poll_ns`). With that driver loaded and its poll set to 0,
//! measured on the benchmark VM (docs/DESIGN.md §7): a warm `tar` of 40k small files
//! took 4.3 s through the mount and 3.0 s with a 200 µs poll; a first `find` 5.0 s and
//! 2.6 s. Native reads do not sleep between syscalls and barely move.
//!
//! The setting belongs to whoever runs the machine; the mount only says so, once in its
//! log and in `status`, with the command that changes it.

use std::path::Path;

/// The poll that halved the first `tar` on the benchmark VM (the kernel's default).
pub const SUGGESTED_HALT_POLL_NS: u64 = 200_000;

/// The guest's halt polling as read from sysfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaltPolling {
    /// `/sys/devices/system/cpu/cpuidle/current_driver`.
    pub driver: String,
    /// `/sys/module/haltpoll/parameters/guest_halt_poll_ns`, where the driver has it.
    pub poll_ns: Option<u64>,
}

impl HaltPolling {
    /// Reads the idle driver under `sys` (`/sys`, or a copy of its shape in tests); `None`
    /// where the machine exposes no cpuidle driver.
    pub fn read(sys: &Path) -> Option<HaltPolling> {
        let read = |rel: &str| std::fs::read_to_string(sys.join(rel)).ok();
        let driver = read("devices/system/cpu/cpuidle/current_driver")?
            .trim()
            .to_string();
        let poll_ns = read("module/haltpoll/parameters/guest_halt_poll_ns")
            .and_then(|v| v.trim().parse().ok());
        Some(HaltPolling { driver, poll_ns })
    }

    /// One line for the operator when idle vCPUs halt at once: what it costs and the
    /// command that changes it. `None` when the guest polls (or is not a haltpoll guest).
    pub fn advice(&self) -> Option<String> {
        if self.driver != "haltpoll" || self.poll_ns != Some(0) {
            return None;
        }
        Some(format!(
            "idle vCPUs halt at once (haltpoll guest_halt_poll_ns=0): every FUSE round trip \
             pays two vCPU wake-ups, which halved a first tar on a VM like this one; to poll \
             before halting: echo {SUGGESTED_HALT_POLL_NS} > \
             /sys/module/haltpoll/parameters/guest_halt_poll_ns"
        ))
    }
}

/// [`HaltPolling::advice`] for this machine.
pub fn advice() -> Option<String> {
    HaltPolling::read(Path::new("/sys")).and_then(|h| h.advice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn sysfs(name: &str, driver: Option<&str>, poll: Option<&str>) -> PathBuf {
        let dir = crate::test_support::scratch(name);
        if let Some(driver) = driver {
            let d = dir.join("devices/system/cpu/cpuidle");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("current_driver"), format!("{driver}\n")).unwrap();
        }
        if let Some(poll) = poll {
            let d = dir.join("module/haltpoll/parameters");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("guest_halt_poll_ns"), format!("{poll}\n")).unwrap();
        }
        dir
    }

    #[test]
    fn a_haltpoll_guest_that_never_polls_gets_the_command_that_changes_it() {
        let dir = sysfs("halt-poll-off", Some("haltpoll"), Some("0"));
        let h = HaltPolling::read(&dir).unwrap();
        assert_eq!(h.poll_ns, Some(0));
        let line = h.advice().expect("advice");
        assert!(line.contains("guest_halt_poll_ns=0"), "{line}");
        assert!(
            line.ends_with("echo 200000 > /sys/module/haltpoll/parameters/guest_halt_poll_ns"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn polling_guests_other_drivers_and_bare_sysfs_get_nothing() {
        for (i, (driver, poll)) in [
            (Some("haltpoll"), Some("200000")),
            (Some("haltpoll"), None),
            (Some("intel_idle"), None),
            (Some("acpi_idle"), Some("0")),
        ]
        .into_iter()
        .enumerate()
        {
            let dir = sysfs(&format!("halt-poll-{i}"), driver, poll);
            let h = HaltPolling::read(&dir).unwrap();
            assert_eq!(h.advice(), None, "{h:?}");
            let _ = std::fs::remove_dir_all(&dir);
        }
        let dir = sysfs("halt-poll-bare", None, Some("0"));
        assert_eq!(HaltPolling::read(&dir), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
