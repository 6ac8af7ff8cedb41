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

/// A user who may not open /dev/fuse (mode 0600) is told that, not to load a module.
#[test]
fn fuse_device_without_permission_is_named_as_such() {
    let mp = scratch("fuse-perm");
    let script = format!(
        "set -e; mknod /tmp/fuse-0600-$$ c 10 229; chmod 0600 /tmp/fuse-0600-$$; \
         mount --bind /tmp/fuse-0600-$$ /dev/fuse; rm /tmp/fuse-0600-$$; \
         exec setpriv --reuid 65534 --regid 65534 --clear-groups '{BIN}' '{}' --k8s v1.23.4 --cache '{}'",
        mp.display(),
        demo_cache().display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot open /dev/fuse"), "{stderr}");
    assert!(
        stderr.contains("permission") && !stderr.contains("load the fuse module"),
        "{stderr}"
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

/// A mount merely named `rootfs-mount` (a tmpfs whose source is `rootfs-mount`) is not
/// ours: `umount` leaves it alone.
#[test]
fn umount_leaves_a_mount_named_like_ours_alone() {
    let dir = scratch("fake-ours");
    let _guard = UnmountOnDrop(dir.clone());
    common::sh(&format!(
        "mount -t tmpfs -o size=1m rootfs-mount '{}'",
        dir.display()
    ));
    assert!(is_mounted(&dir));
    let out = run(&["umount", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a tmpfs named rootfs-mount was unmounted"
    );
    assert!(stderr.contains("not a rootfs-mount mount"), "{stderr}");
    assert!(is_mounted(&dir));
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

/// Unmounts `0` on drop, should a mount that must be refused have been made.
struct UnmountOnDrop(std::path::PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new(BIN).arg("umount").arg(&self.0).output();
        }
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).output();
        }
    }
}

/// `--index-dir` inside the mountpoint: the daemon would deadlock on its own mount the
/// first time it indexes an archive.
#[test]
fn index_dir_inside_the_mountpoint_is_refused() {
    let cache = demo_cache().to_str().unwrap().to_string();
    let mp = scratch("mp-index-inside");
    let _guard = UnmountOnDrop(mp.clone());
    let index_inside = mp.join("idx").to_str().unwrap().to_string();
    let args = [
        "--k8s",
        "v1.23.4",
        "--cache",
        cache.as_str(),
        "--index-dir",
        index_inside.as_str(),
    ];
    refused(&mp, &args, "inside the mountpoint");
}

/// `--upper` may be neither inside the mountpoint nor, through a symlink to a folder that
/// does not exist yet (`LINK/new`), inside the cache.
#[test]
fn upper_inside_the_mountpoint_or_through_a_link_into_the_cache_is_refused() {
    let cache = demo_cache().to_str().unwrap().to_string();
    let mp = scratch("mp-upper-inside");
    let _guard = UnmountOnDrop(mp.clone());
    let base = ["--k8s", "v1.23.4", "--cache", cache.as_str()];
    let upper_inside = mp.join("upper").to_str().unwrap().to_string();
    let mut args = base.to_vec();
    args.extend(["--upper", upper_inside.as_str()]);
    refused(&mp, &args, "inside the mountpoint");
    let links = scratch("links");
    let link = links.join("into-cache");
    std::os::unix::fs::symlink(demo_cache().join("oss"), &link).unwrap();
    let sneaky = link.join("new-upper").to_str().unwrap().to_string();
    let mut args = base.to_vec();
    args.extend(["--upper", sneaky.as_str()]);
    refused(&mp, &args, "overlaps");
    assert!(
        !demo_cache().join("oss/new-upper").exists(),
        "the refused upper was made in the cache"
    );
}

/// Two `rootfs-mount M` started at once: exactly one wins, and M carries one mount.
#[test]
fn concurrent_mounts_on_one_mountpoint_one_wins() {
    let cache = demo_cache().to_str().unwrap().to_string();
    for round in 0..5 {
        let mp = scratch("mp-race");
        let _guard = UnmountAll(mp.clone());
        let start = || {
            Command::new(BIN)
                .arg(&mp)
                .args(["--k8s", "v1.23.4", "--cache", cache.as_str()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (start(), start());
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        let won = outs.iter().filter(|o| o.status.success()).count();
        let point = mp.to_string_lossy().into_owned();
        let stacked = std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(1) == Some(point.as_str()))
            .count();
        assert_eq!(
            (won, stacked),
            (1, 1),
            "round {round}: {} mounts returned 0, {stacked} stacked; {:?}",
            won,
            outs.iter()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .collect::<Vec<_>>()
        );
        let loser = outs.iter().find(|o| !o.status.success()).unwrap();
        let stderr = String::from_utf8_lossy(&loser.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
}

/// Unmounts every mount stacked on `0` on drop.
struct UnmountAll(std::path::PathBuf);

impl Drop for UnmountAll {
    fn drop(&mut self) {
        for _ in 0..4 {
            if !is_mounted(&self.0) {
                break;
            }
            let _ = Command::new(BIN).arg("umount").arg(&self.0).output();
            if is_mounted(&self.0) {
                let _ = Command::new("umount").arg("-l").arg(&self.0).output();
            }
        }
    }
}

/// A required cache entry that is there but unusable (a FIFO named `kubeadm` or
/// `registry.tar.gz`) refuses the mount like a missing one, naming it.
#[test]
fn unusable_required_entries_refuse_the_mount() {
    for rel in [
        "kube/v1.23.4/amd64/kubeadm",
        "cri/docker/arm64/registry.tar.gz",
    ] {
        let cache = common::own_cache();
        let path = cache.join(rel);
        std::fs::remove_file(&path).unwrap();
        common::sh(&format!("mkfifo '{}'", path.display()));
        let mp = scratch("mp-fifo-entry");
        let _guard = UnmountOnDrop(mp.clone());
        let c = cache.to_str().unwrap();
        let out = run(&[mp.to_str().unwrap(), "--k8s", "v1.23.4", "--cache", c]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{rel}: a FIFO passed the check");
        assert!(stderr.contains(rel), "{rel}: {stderr}");
        assert!(stderr.contains("not a regular file"), "{rel}: {stderr}");
        assert!(!is_mounted(&mp));
    }
}

/// Options that would be silently ignored are refused (`-f` with `--log-file`), and a `--registry-data` that does not exist is an
/// error; with `--allow-missing`, a missing cache or registry data mounts with a
/// warning instead of silently showing an empty tree.
#[test]
fn ignored_options_and_missing_folders_are_not_silent() {
    let cache = demo_cache().to_str().unwrap().to_string();
    let c = cache.as_str();
    let mp = scratch("mp-silent");
    let _guard = UnmountOnDrop(mp.clone());
    refused(
        &mp,
        &[
            "--k8s",
            "v1.23.4",
            "--cache",
            c,
            "-f",
            "--log-file",
            "/tmp/x.log",
        ],
        "--log-file",
    );
    refused(
        &mp,
        &[
            "--k8s",
            "v1.23.4",
            "--cache",
            c,
            "--registry-data",
            "/nonexistent/registry",
        ],
        "/nonexistent/registry does not exist",
    );
    let out = run(&[
        mp.to_str().unwrap(),
        "--k8s",
        "v1.23.4",
        "--cache",
        "/nonexistent/cache-typo",
        "--allow-missing",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("/nonexistent/cache-typo does not exist"),
        "a missing cache mounted without a word: {stderr:?}"
    );
}

/// `status MOUNT` of a live rootfs-mount mount whose daemon it cannot know (no state
/// folder: no XDG_RUNTIME_DIR, or another user's mount) says so and exits 0: the mount
/// is live. Only a stale or foreign mount exits non-zero.
#[test]
fn status_of_a_live_mount_without_its_state_file_exits_zero() {
    let m = Mount::new(&["--k8s", "v1.23.4"]);
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["env", "-u", "XDG_RUNTIME_DIR", BIN, "status"])
        .arg(&m.dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("daemon: not known"), "{stdout}");
}

/// A mount refused after its scratch upper folder was made (here: a log file that cannot
/// be opened) leaves no `rootfs-mount-upper.*` folder in `$TMPDIR`.
#[test]
fn a_refused_mount_leaves_no_scratch_upper() {
    let tmpdir = scratch("scratch-tmpdir");
    let dir = scratch("mnt-log-refused");
    let out = Command::new(BIN)
        .env("TMPDIR", &tmpdir)
        .arg(&dir)
        .args(["--k8s", "v1.23.4", "--cache"])
        .arg(demo_cache())
        .args(["--log-file", "/proc/no-such-log"])
        .output()
        .expect("run rootfs-mount");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot open log file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&dir));
    assert_eq!(common::walk(&tmpdir), Vec::<String>::new());
}

/// `status` names the machine's vCPU halt polling when it makes every round trip pay two
/// wake-ups (a haltpoll guest that never polls), in text and JSON, and only then. The
/// expectation is read from sysfs here, independently of the daemon's code.
#[test]
fn status_names_halt_polling_that_makes_round_trips_pay_vcpu_wake_ups() {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    let never_polls = read("/sys/devices/system/cpu/cpuidle/current_driver").ok()
        == Some("haltpoll".into())
        && read("/sys/module/haltpoll/parameters/guest_halt_poll_ns").ok() == Some("0".into());
    let out = run(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("host: "));
    assert_eq!(line.is_some(), never_polls, "{text}");
    if let Some(line) = line {
        assert!(
            line.ends_with("echo 200000 > /sys/module/haltpoll/parameters/guest_halt_poll_ns"),
            "{line}"
        );
    }
    let json = run(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["host_advice"].is_string(), never_polls, "{json}");
    assert_eq!(
        json["host_advice"].as_str(),
        line.map(|l| &l["host: ".len()..])
    );
}
