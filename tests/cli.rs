//! Bad input gets one clear line and a non-zero exit, and leaves no mount; the daemon's
//! lifecycle (signals, stale mounts, `umount`).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{demo_cache, is_mounted, run, scratch, Mount, BIN};

/// Runs a mount that must be refused; checks the message and that nothing is mounted.
fn refused(mountpoint: &Path, args: &[&str], needle: &str) {
    refused_keeping(mountpoint, args, needle, false)
}

fn refused_keeping(mountpoint: &Path, args: &[&str], needle: &str, mounted_before: bool) {
    let mut full = vec![mountpoint.to_str().unwrap()];
    full.extend_from_slice(args);
    let out = run(&full);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{args:?}: {stderr:?} lacks {needle:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        is_mounted(mountpoint),
        mounted_before,
        "{args:?} changed what is mounted"
    );
}

#[test]
fn bad_input_is_refused_in_one_line() {
    let cache = demo_cache().to_str().unwrap().to_string();
    let mp = scratch("mp");
    let c = cache.as_str();
    for (args, needle) in [
        (vec!["--k8s", "v1.23"], "invalid Kubernetes version"),
        (vec!["--k8s", "latest"], "invalid Kubernetes version"),
        (
            vec!["--k8s", "v1.12.10"],
            "oldest supported version is v1.13.0",
        ),
        (vec!["--k8s", "v1.24.0", "--cri", "docker"], "dockershim"),
        (
            vec!["--k8s", "v1.23.4", "--arch", "amd64,s390x"],
            "unknown arch \"s390x\"",
        ),
        (
            vec!["--k8s", "v1.23.4", "--cri", "crio"],
            "unknown CRI \"crio\"",
        ),
        (
            vec!["--k8s", "v1.23.4", "--cni", "flannel"],
            "unknown CNI \"flannel\"",
        ),
        (
            vec!["--k8s", "v1.23.4", "--contexts", "/nonexistent/contexts"],
            "cannot read contexts folder",
        ),
        (
            vec!["--k8s", "v1.23.4", "--registry-domain", "bad domain"],
            "invalid --registry-domain",
        ),
    ] {
        let mut full = args.clone();
        full.extend(["--cache", c]);
        refused(&mp, &full, needle);
    }
    // Missing cache entries: one line naming them, then the command that fills them.
    let out = run(&[mp.to_str().unwrap(), "--k8s", "v1.25.3", "--cache", c]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].contains("kube/v1.25.3/amd64/kubeadm"), "{stderr}");
    assert_eq!(
        lines[1],
        format!("rootfs-mount fetch --k8s v1.25.3 --cri containerd --arch amd64,arm64 --cache {c}")
    );
    assert!(!is_mounted(&mp));
    let ok_args = ["--k8s", "v1.23.4", "--cache", c];
    refused(&mp.join("missing"), &ok_args, "does not exist");
    let file = mp.join("file");
    std::fs::write(&file, b"x").unwrap();
    refused(&file, &ok_args, "is not a folder");
    refused(&mp, &ok_args, "is not empty");
    std::fs::remove_file(&file).unwrap();
    refused(&demo_cache().join("oss"), &ok_args, "is not empty");
    let inside = demo_cache().join("empty-mountpoint");
    std::fs::create_dir_all(&inside).unwrap();
    refused(&inside, &ok_args, "mount loop");
    std::fs::remove_dir(&inside).unwrap();
    let m = Mount::new(&["--k8s", "v1.23.4"]);
    refused_keeping(&m.dir, &ok_args, "already a mount point", true);
    assert!(
        m.path("rootfs/Kubefile").exists(),
        "the refused mount disturbed the live one"
    );
}

#[test]
fn no_fuse_device_is_a_clear_error() {
    let mp = scratch("nofuse");
    // A private mount namespace whose /dev lacks the fuse device.
    let script = format!(
        "mount -t tmpfs none /dev && exec '{BIN}' '{}' --k8s v1.23.4 --cache '{}'",
        mp.display(),
        demo_cache().display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot open /dev/fuse"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

fn daemon_pid(mountpoint: &Path) -> i32 {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(format!("{BIN} {}", mountpoint.display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .expect("daemon running")
        .parse()
        .unwrap()
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_and_sigint_unmount_cleanly() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let m = Mount::new(&["--k8s", "v1.23.4"]);
        let pid = daemon_pid(&m.dir);
        // SAFETY: sending a signal to the daemon this test started.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        wait_until("unmount", || !is_mounted(&m.dir));
        wait_until("daemon exit", || {
            !Path::new(&format!("/proc/{pid}")).exists()
        });
    }
}

#[test]
fn stale_mount_is_recovered_by_umount() {
    let tmpdir = scratch("tmpdir");
    let m = Mount::with_env(demo_cache(), &["--k8s", "v1.23.4"], &[("TMPDIR", &tmpdir)]);
    assert_eq!(
        std::fs::read_dir(&tmpdir).unwrap().count(),
        1,
        "no scratch upper"
    );
    let pid = daemon_pid(&m.dir);
    // SAFETY: killing the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until("daemon exit", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    let err = std::fs::read_dir(&m.dir).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN));
    let cache = demo_cache().to_str().unwrap().to_string();
    refused_stale(&m.dir, &cache);
    let out = run(&["umount", m.dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&m.dir));
    // The killed daemon's scratch upper layer goes with its stale state file.
    assert_eq!(
        std::fs::read_dir(&tmpdir).unwrap().count(),
        0,
        "scratch upper left behind"
    );
    // The same mountpoint works again.
    let out = run(&[
        m.dir.to_str().unwrap(),
        "--k8s",
        "v1.23.4",
        "--cache",
        &cache,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(m.dir.join("rootfs/Kubefile").exists());
}

fn refused_stale(mountpoint: &Path, cache: &str) {
    let out = run(&[
        mountpoint.to_str().unwrap(),
        "--k8s",
        "v1.23.4",
        "--cache",
        cache,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("stale mount") && stderr.contains("rootfs-mount umount"),
        "{stderr}"
    );
}

#[test]
fn umount_refuses_what_is_not_ours() {
    let dir = scratch("notmounted");
    let out = run(&["umount", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not mounted"));
    let out = run(&["umount", "/proc"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a rootfs-mount mount"));
}

#[test]
fn foreground_mode_serves_until_signalled() {
    let mp = scratch("fg");
    let mut child = Command::new(BIN)
        .arg(&mp)
        .args(["--k8s", "v1.23.4", "-f", "--cache"])
        .arg(demo_cache())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Reap(std::process::Child, std::path::PathBuf);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = Command::new("umount").arg("-l").arg(&self.1).output();
        }
    }
    let pid = child.id() as i32;
    wait_until("foreground mount", || is_mounted(&mp));
    assert!(mp.join("rootfs/Kubefile").exists());
    // SAFETY: signalling the child this test spawned.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let _reap = Reap(child, mp.clone());
    assert!(status.success(), "{status:?}");
    assert!(!is_mounted(&mp));
}

/// `rootfs-mount status MOUNT`, as `key: value` pairs.
fn status_of(mountpoint: &Path) -> std::collections::BTreeMap<String, String> {
    let out = run(&["status", mountpoint.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn status_lists_parameters_pid_and_counters_and_state_is_removed_at_unmount() {
    let m = Mount::new(&["--k8s", "v1.23.4", "--arch", "amd64", "--cni", "none"]);
    let pid = daemon_pid(&m.dir);
    let kubefile = m.read("rootfs/Kubefile");
    let s = status_of(&m.dir);
    assert_eq!(s["pid"], pid.to_string());
    assert_eq!(s["version"], "v1.23.4");
    assert_eq!(s["cri"], "docker");
    assert_eq!(s["cni"], "none");
    assert_eq!(s["arches"], "amd64");
    assert_eq!(s["cache"], demo_cache().to_str().unwrap());
    assert_eq!(s["contexts"], "embedded");
    assert_eq!(s["read path"], "userspace");
    assert_eq!(s["allow other"], "no");
    assert!(s["uptime"].ends_with('s'), "{s:?}");
    // Counters are published within a second.
    wait_until("counters", || {
        let s = status_of(&m.dir);
        s["bytes read"].parse::<usize>().unwrap() >= kubefile.len()
            && s["requests"].parse::<u64>().unwrap() > 0
    });
    assert_eq!(status_of(&m.dir)["errors"], "0");
    let all = run(&["status"]);
    assert!(String::from_utf8_lossy(&all.stdout).contains(m.dir.to_str().unwrap()));
    let state = Path::new("/run/rootfs-mount").join(format!("{pid}.json"));
    assert!(state.exists(), "{} missing", state.display());

    let out = run(&["umount", m.dir.to_str().unwrap()]);
    assert!(out.status.success());
    wait_until("state file removal", || !state.exists());
    let out = run(&["status", m.dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a rootfs-mount mount"));
}

#[test]
fn stale_state_files_are_ignored_and_removed() {
    let dir = Path::new("/run/rootfs-mount");
    std::fs::create_dir_all(dir).unwrap();
    // No process has this pid (above pid_max); a reused pid is caught by its start time.
    let stale = dir.join("2147483647.state");
    std::fs::write(
        &stale,
        "pid=2147483647\nstart_ticks=1\nmountpoint=/nonexistent/stale-test\nversion=v1.23.4\n",
    )
    .unwrap();
    let me = std::process::id();
    let reused = dir.join(format!("{me}.state"));
    std::fs::write(
        &reused,
        format!("pid={me}\nstart_ticks=1\nmountpoint=/nonexistent/reused-test\n"),
    )
    .unwrap();
    let out = run(&["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("stale-test") && !text.contains("reused-test"),
        "{text}"
    );
    assert!(
        !stale.exists() && !reused.exists(),
        "stale state files kept"
    );
}

#[test]
fn force_recovers_a_stale_mountpoint() {
    let m = Mount::new(&["--k8s", "v1.23.4"]);
    let pid = daemon_pid(&m.dir);
    // SAFETY: killing the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until("daemon exit", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    let out = run(&["status", m.dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stale"));
    let cache = demo_cache().to_str().unwrap().to_string();
    let mp = m.dir.to_str().unwrap();
    let out = run(&[mp, "--k8s", "v1.23.4", "--cache", &cache, "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(m.path("rootfs/Kubefile").exists());
    assert_ne!(daemon_pid(&m.dir), pid);
    // --force never touches a live mount.
    let out = run(&[mp, "--k8s", "v1.23.4", "--cache", &cache, "--force"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already a mount point"));
    assert!(m.path("rootfs/Kubefile").exists());
}

#[test]
fn allow_other_mounts_unmount_themselves_when_the_daemon_is_killed() {
    let m = Mount::new(&["--k8s", "v1.23.4", "--allow-other"]);
    assert_eq!(status_of(&m.dir)["auto unmount"], "yes");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == m.dir.to_str())
        .expect("mount in mountinfo");
    for option in ["nosuid", "nodev", "default_permissions", "allow_other"] {
        assert!(
            line.split([' ', ',']).any(|o| o == option),
            "{option} missing: {line}"
        );
    }
    // A listing of the root first: the kernel must still ask the daemon to open it, or
    // fusermount3 finds the root of the dead mount openable and leaves it stale.
    assert!(std::fs::read_dir(&m.dir).unwrap().count() > 0);
    let pid = daemon_pid(&m.dir);
    // SAFETY: killing the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until("auto unmount", || !is_mounted(&m.dir));
}

#[test]
fn allow_other_mounts_unmount_cleanly_on_sigterm() {
    let m = Mount::new(&["--k8s", "v1.23.4", "--allow-other"]);
    let pid = daemon_pid(&m.dir);
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_until("unmount", || !is_mounted(&m.dir));
    wait_until("daemon exit", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z"))
            .unwrap_or(true)
    });
    assert!(!Path::new(&format!("/run/rootfs-mount/{pid}.json")).exists());
}
