//! Fitting the system: the mount(8) helper form driven by mount(8) itself (`mount -t
//! fuse.rootfs-mount`, an fstab line with `mount -T`), `findmnt -t fuse.rootfs-mount`,
//! and systemd readiness through a notify socket the test owns.

mod common;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{demo_cache, is_mounted, scratch, Mount, BIN};

/// Daemons serving these mountpoints are stopped (SIGTERM, then SIGKILL) on drop, even
/// when they live in a mount namespace the test cannot see, so a failed test leaves
/// nothing behind.
struct Daemons(Vec<PathBuf>);

impl Daemons {
    fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let ours = args.first().is_some_and(|a| a.ends_with(b"rootfs-mount"));
            let serves = self
                .0
                .iter()
                .any(|p| args.iter().any(|a| *a == p.as_os_str().as_encoded_bytes()));
            if ours && serves {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for signal in ["-TERM", "-KILL"] {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = Command::new("kill")
                    .arg(signal)
                    .arg(pid.to_string())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        for point in &self.0 {
            if is_mounted(point) {
                let _ = Command::new("umount").arg("-l").arg(point).status();
            }
        }
    }
}

fn bash(script: &str) -> (bool, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run bash");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `mount -t fuse.rootfs-mount` and an fstab line go through mount(8) and
/// /sbin/mount.fuse3, which runs `rootfs-mount SOURCE MOUNTPOINT -o OPTIONS` through
/// `/bin/sh` with mount(8)'s environment, which has no PATH: the shell's default PATH
/// (`/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`) finds the helper.
/// The test installs the binary as /usr/local/sbin/rootfs-mount inside a private mount
/// namespace (a bind mount of a temp folder), so the host is not touched.
#[test]
fn mount_helper_and_fstab_and_findmnt() {
    let cache = demo_cache();
    let bin_dir = scratch("helper-bin");
    std::fs::copy(BIN, bin_dir.join("rootfs-mount")).expect("install the helper");
    // One mount made directly, before the namespace is made, so it is in both.
    let direct = Mount::new(&["--k8s", "v1.23.4", "--read-only"]);
    let by_type = scratch("mnt-type");
    let by_fstab = scratch("mnt-fstab");
    let _daemons = Daemons(vec![by_type.clone(), by_fstab.clone()]);
    let fstab = scratch("fstab").join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# the README's line, with the test's cache\nrootfs-mount:v1.24.0 {} fuse.rootfs-mount cache={},read_only,arch=arm64,allow_other,nofail,_netdev,x-systemd.requires=network-online.target,noauto 0 0\n",
            by_fstab.display(),
            cache.display()
        ),
    )
    .unwrap();
    let script = format!(
        r#"set -e
trap 'rc=$?; set +e; umount {t} 2>/dev/null; umount {f} 2>/dev/null; exit $rc' EXIT
mount --bind {bin} /usr/local/sbin
mount -t fuse.rootfs-mount rootfs-mount {t} -o k8s=v1.23.4,cache={c},arch=amd64,arm64,registry_domain=reg.example:5000,nofail,_netdev,x-systemd.automount
mount -T {fstab} {f}
echo "== findmnt"
findmnt -rn -t fuse.rootfs-mount -o TARGET,SOURCE,FSTYPE,OPTIONS
echo "== type"
ls {t}
grep -c reg.example:5000 {t}/rootfs/etc/kubeadm.yml
echo "== fstab"
ls {f}
touch {f}/x 2>&1 || true
umount {t}
umount {f}
echo "== after"
findmnt -rn -t fuse.rootfs-mount -o TARGET || true
"#,
        t = by_type.display(),
        f = by_fstab.display(),
        bin = bin_dir.display(),
        c = cache.display(),
        fstab = fstab.display(),
    );
    let (ok, out) = bash(&format!(
        "unshare --mount --propagation private bash -c '{}'",
        script.replace('\'', r"'\''")
    ));
    assert!(ok, "mount(8) run failed:\n{out}");
    let section = |name: &str| -> String {
        out.split(&format!("== {name}\n"))
            .nth(1)
            .and_then(|s| s.split("\n== ").next())
            .unwrap_or_else(|| panic!("no {name} section in:\n{out}"))
            .to_string()
    };
    let found = section("findmnt");
    for (point, source, ro) in [
        (&by_type, "rootfs-mount:v1.23.4", "rw,"),
        (&by_fstab, "rootfs-mount:v1.24.0", "ro,"),
        (&direct.dir, "rootfs-mount:v1.23.4", "ro,"),
    ] {
        let line = found
            .lines()
            .find(|l| l.split(' ').next() == Some(&*point.to_string_lossy()))
            .unwrap_or_else(|| {
                panic!(
                    "findmnt -t fuse.rootfs-mount lacks {}:\n{out}",
                    point.display()
                )
            });
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[1], source, "{line}");
        assert_eq!(fields[2], "fuse.rootfs-mount", "{line}");
        assert!(fields[3].starts_with(ro), "{line}");
        assert!(fields[3].contains("nosuid,nodev"), "{line}");
    }
    // The fstab mount has allow_other, so auto_unmount: fusermount3 mounted it, and the
    // type is fuse.rootfs-mount on that path too.
    assert!(
        found
            .lines()
            .any(|l| l.starts_with(&*by_fstab.to_string_lossy()) && l.contains("allow_other")),
        "{found}"
    );
    assert_eq!(
        section("type").lines().take(3).collect::<Vec<_>>(),
        ["amd64", "arm64", "rootfs"]
    );
    assert_ne!(
        section("type").lines().nth(3),
        Some("0"),
        "registry_domain did not reach kubeadm.yml:\n{out}"
    );
    let fstab_listing = section("fstab");
    assert!(fstab_listing.starts_with("arm64\nrootfs\n"), "{out}");
    assert!(fstab_listing.contains("Read-only file system"), "{out}");
    let after = section("after");
    assert!(!after.contains(&*by_type.to_string_lossy()), "{out}");
    assert!(!after.contains(&*by_fstab.to_string_lossy()), "{out}");
}

/// mount(8)'s own error path: a helper that refuses gives mount(8) a non-zero exit and
/// our one-line message.
#[test]
fn mount_helper_refusal_reaches_mount() {
    let bin_dir = scratch("helper-bin-bad");
    std::fs::copy(BIN, bin_dir.join("rootfs-mount")).expect("install the helper");
    let point = scratch("mnt-bad");
    let _daemons = Daemons(vec![point.clone()]);
    let script = format!(
        "mount --bind {} /usr/local/sbin && mount -t fuse.rootfs-mount rootfs-mount {} -o k8s=v1.23.4,bogus=1",
        bin_dir.display(),
        point.display()
    );
    let (ok, out) = bash(&format!(
        "unshare --mount --propagation private bash -c '{script}'"
    ));
    assert!(!ok, "mount accepted a bad option:\n{out}");
    assert!(out.contains("unknown mount option \"bogus=1\""), "{out}");
}

/// Receives datagrams until one holds `READY=1` (or 20 s pass); returns them all.
fn until_ready(socket: &UnixDatagram) -> Vec<String> {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let ready = text.lines().any(|l| l == "READY=1");
            got.push(text);
            if ready {
                return got;
            }
        }
    }
    panic!("no READY=1 within 20 s; got {got:?}");
}

/// `Type=notify`: a foreground daemon (as the unit runs it) sends READY=1 to
/// `NOTIFY_SOCKET` only once its mount answers, and STOPPING=1 when told to stop.
#[test]
fn sd_notify_ready_once_the_mount_answers() {
    let dir = scratch("notify");
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let point = scratch("mnt-notify");
    let _daemons = Daemons(vec![point.clone()]);
    let mut child = Command::new(BIN)
        .arg(&point)
        .args(["--k8s", "v1.23.4", "--foreground", "--cache"])
        .arg(demo_cache())
        .env("NOTIFY_SOCKET", &path)
        .stderr(Stdio::null())
        .spawn()
        .expect("start the daemon");
    let got = until_ready(&socket);
    // At the moment READY=1 arrives the mount is there and answers.
    assert!(is_mounted(&point), "READY=1 before the mount: {got:?}");
    let names: Vec<String> = std::fs::read_dir(&point)
        .expect("the mount answers")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"rootfs".to_string()), "{names:?}");
    let ready = got.last().unwrap();
    assert!(
        ready.contains(&format!("MAINPID={}", child.id())),
        "{ready}"
    );
    assert!(
        ready.contains("STATUS=serving Kubernetes v1.23.4 on"),
        "{ready}"
    );
    assert!(got[..got.len() - 1].iter().all(|m| !m.contains("READY=1")));
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let mut buf = [0u8; 4096];
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = socket.recv(&mut buf).expect("STOPPING=1 on SIGTERM");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    let status = child.wait().expect("daemon exits");
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&point));
}

/// An abstract socket (`@name`) works too, and a backgrounded daemon names itself as
/// MAINPID (the process systemd started has exited by then).
#[test]
fn sd_notify_abstract_socket_and_background_daemon() {
    let name = format!("rootfs-mount-test-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).expect("bind an abstract socket");
    let point = scratch("mnt-notify-bg");
    let _daemons = Daemons(vec![point.clone()]);
    let out = Command::new(BIN)
        .arg(&point)
        .args(["--k8s", "v1.23.4", "--cache"])
        .arg(demo_cache())
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .output()
        .expect("mount");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = until_ready(&socket);
    let pid = common::daemon_pid(&point);
    assert!(
        got.last().unwrap().contains(&format!("MAINPID={pid}")),
        "{got:?}"
    );
    let out = common::run(&["umount", point.to_str().unwrap()]);
    assert!(out.status.success());
    wait_gone(&point);
}

fn wait_gone(point: &Path) {
    common::wait_for("the unmount", || !is_mounted(point));
}

/// The three fault kinds, each made to happen once on `m`: a corrupt release tarball
/// (listed through `amd64/bin`), a template edited into an error (`--contexts`), and a
/// backing file rewritten under the mount. Returns the file each one names.
fn cause_faults(m: &Mount, cache: &Path, contexts: &Path) -> [String; 3] {
    // Changed backing file: looked up first, then rewritten with another size.
    let conntrack = cache.join("oss/arm64/bin/conntrack");
    assert!(m.path("arm64/bin/conntrack").metadata().unwrap().len() > 0);
    std::fs::write(&conntrack, b"rewritten under the mount\n").unwrap();
    assert_eq!(
        common::errno_of(std::fs::read(m.path("arm64/bin/conntrack"))),
        libc::EIO
    );
    // Corrupt archive: its members are listed when amd64/bin is.
    let _ = std::fs::read_dir(m.path("amd64/bin")).map(|d| d.count());
    // Template error: kubeadm.yml read once, then its template broken.
    let template = contexts.join("rootfs/etc/kubeadm.yml.in");
    assert!(!m.read("rootfs/etc/kubeadm.yml").is_empty());
    let mut text = std::fs::read_to_string(&template).unwrap();
    text.push_str("\n@{no_such_variable}\n");
    std::fs::write(&template, text).unwrap();
    common::wait_for("the broken template to be noticed", || {
        let _ = std::fs::read(m.path("rootfs/etc/kubeadm.yml"));
        fault_files(&m.dir)
            .iter()
            .any(|f| f.contains("kubeadm.yml.in"))
    });
    [
        conntrack.display().to_string(),
        cache
            .join("oss/amd64/bin/crictl.tar.gz")
            .display()
            .to_string(),
        "kubeadm.yml.in".to_string(),
    ]
}

/// A cache whose amd64 crictl tarball is corrupt, and a contexts copy to break.
fn faulty_sources() -> (PathBuf, PathBuf) {
    let cache = common::own_cache();
    let tarball = cache.join("oss/amd64/bin/crictl.tar.gz");
    let mut bytes = std::fs::read(&tarball).unwrap();
    let mid = bytes.len() / 2;
    bytes.truncate(mid);
    bytes.extend_from_slice(&[0x55; 4096]);
    std::fs::write(&tarball, bytes).unwrap();
    let contexts = scratch("contexts");
    common::sh(&format!(
        "cp -a '{}/contexts/.' '{}/'",
        common::repo().display(),
        contexts.display()
    ));
    (cache, contexts)
}

fn status_json(point: &Path) -> serde_json::Value {
    let out = common::run(&["status", "--json", point.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

fn fault_files(point: &Path) -> Vec<String> {
    let json = status_json(point);
    json["mounts"][0]["faults"]
        .as_array()
        .map(|faults| {
            faults
                .iter()
                .map(|f| f["file"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `status --json` lists a fault naming each of `files`.
fn wait_for_faults(point: &Path, files: &[String]) {
    let start = Instant::now();
    loop {
        let listed = fault_files(point);
        if files
            .iter()
            .all(|want| listed.iter().any(|f| f.ends_with(want.as_str())))
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "status lacks faults for {files:?}: {}",
            status_json(point)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A background daemon without --log-file and without journald logs to the log file in
/// the state folder: each fault one WARN line naming its file, `status` keeps them.
#[test]
fn faults_are_logged_to_the_state_folder_file_and_shown_in_status() {
    let (cache, contexts) = faulty_sources();
    let contexts_arg = contexts.to_str().unwrap().to_string();
    let no_journal = scratch("no-journal").join("socket");
    let m = Mount::with_env(
        &cache,
        &["--k8s", "v1.23.4", "--contexts", &contexts_arg],
        &[
            ("ROOTFS_MOUNT_JOURNAL_SOCKET", &no_journal),
            ("ROOTFS_MOUNT_SYSLOG_SOCKET", &no_journal),
        ],
    );
    let json = status_json(&m.dir);
    let log_path = PathBuf::from(json["mounts"][0]["parameters"]["log"].as_str().unwrap());
    assert_eq!(log_path, Path::new("/run/rootfs-mount/rootfs-mount.log"));
    let pid = json["mounts"][0]["pid"].as_u64().unwrap();
    let files = cause_faults(&m, &cache, &contexts);
    wait_for_faults(&m.dir, &files);
    // The log file is shared by daemons: our lines carry our pid.
    let log = std::fs::read_to_string(&log_path).unwrap();
    let ours: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with(&format!("[pid {pid}] ")))
        .collect();
    assert!(ours.iter().any(|l| l.contains("mounted")), "{log}");
    for file in &files {
        let lines: Vec<&&str> = ours
            .iter()
            .filter(|l| l.contains(" WARN ") && l.contains(file.as_str()))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "not one WARN line for {file}:\n{}",
            ours.join("\n")
        );
    }
    assert!(
        !ours.iter().any(|l| l.contains(" ERROR ")),
        "{}",
        ours.join("\n")
    );
    // The first listing of amd64/bin indexed its tarballs: a line when each started and
    // one when it ended.
    let nerdctl = cache
        .join("oss/amd64/bin/nerdctl.tar.gz")
        .display()
        .to_string();
    for needle in [
        "indexing the archive (first use)",
        "indexing the archive ended",
    ] {
        assert!(
            ours.iter()
                .any(|l| l.contains(needle) && l.contains(&format!("file={nerdctl}"))),
            "no {needle:?} line for {nerdctl}:\n{}",
            ours.join("\n")
        );
    }
    // The text status shows them too.
    let out = common::run(&["status", m.dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("last faults:"), "{text}");
    assert!(text.contains("corrupt archive"), "{text}");
}

/// With journald there (a socket the test owns, speaking for it), a background daemon
/// sends native journal entries: one WARN (PRIORITY=4) entry per fault naming the file.
#[test]
fn faults_are_logged_to_journald_when_it_runs() {
    let (cache, contexts) = faulty_sources();
    let contexts_arg = contexts.to_str().unwrap().to_string();
    let socket_path = scratch("journal").join("socket");
    let journal = UnixDatagram::bind(&socket_path).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Read as journald does, all along.
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (received, done) = (received.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = journal.recv(&mut buf) {
                    let entry = String::from_utf8_lossy(&buf[..n]).into_owned();
                    received.lock().unwrap().push(entry);
                }
            }
        })
    };
    let m = Mount::with_env(
        &cache,
        &["--k8s", "v1.23.4", "--contexts", &contexts_arg],
        &[("ROOTFS_MOUNT_JOURNAL_SOCKET", &socket_path)],
    );
    assert_eq!(
        status_json(&m.dir)["mounts"][0]["parameters"]["log"],
        "journald"
    );
    let files = cause_faults(&m, &cache, &contexts);
    wait_for_faults(&m.dir, &files);
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    let entries = received.lock().unwrap().clone();
    assert!(
        entries
            .iter()
            .any(|e| e.contains("MESSAGE=") && e.contains("mounted")),
        "{entries:?}"
    );
    for file in &files {
        let warns: Vec<&String> = entries
            .iter()
            .filter(|e| e.contains("PRIORITY=4\n") && e.contains(file.as_str()))
            .collect();
        assert_eq!(warns.len(), 1, "not one WARN entry for {file}: {entries:?}");
        assert!(warns[0].contains("SYSLOG_IDENTIFIER=rootfs-mount\n"));
    }
}

/// Without journald but with a syslog daemon (a socket the test owns, speaking for
/// /dev/log), a background daemon sends syslog messages of the facility `daemon`: one
/// WARN (`<28>`) message per fault naming the file.
#[test]
fn faults_are_logged_to_syslog_without_journald() {
    let (cache, contexts) = faulty_sources();
    let contexts_arg = contexts.to_str().unwrap().to_string();
    let folder = scratch("syslog");
    let socket_path = folder.join("log");
    let no_journal = folder.join("no-journal");
    let syslog = UnixDatagram::bind(&socket_path).unwrap();
    syslog
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (received, done) = (received.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = syslog.recv(&mut buf) {
                    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                    received.lock().unwrap().push(message);
                }
            }
        })
    };
    let m = Mount::with_env(
        &cache,
        &["--k8s", "v1.23.4", "--contexts", &contexts_arg],
        &[
            ("ROOTFS_MOUNT_JOURNAL_SOCKET", &no_journal),
            ("ROOTFS_MOUNT_SYSLOG_SOCKET", &socket_path),
        ],
    );
    let json = status_json(&m.dir);
    assert_eq!(json["mounts"][0]["parameters"]["log"], "syslog");
    let pid = json["mounts"][0]["pid"].as_u64().unwrap();
    let files = cause_faults(&m, &cache, &contexts);
    wait_for_faults(&m.dir, &files);
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    let messages = received.lock().unwrap().clone();
    let ours = format!("rootfs-mount[{pid}]: ");
    assert!(
        messages
            .iter()
            .any(|e| e.starts_with(&format!("<30>{ours}")) && e.contains("mounted")),
        "{messages:?}"
    );
    for file in &files {
        let warns: Vec<&String> = messages
            .iter()
            .filter(|e| e.starts_with(&format!("<28>{ours}")) && e.contains(file.as_str()))
            .collect();
        assert_eq!(
            warns.len(),
            1,
            "not one WARN message for {file}: {messages:?}"
        );
    }
    assert!(
        !messages.iter().any(|e| e.starts_with("<27>")),
        "{messages:?}"
    );
}

/// `status --json`: every documented field, with its type.
#[test]
fn status_json_has_the_documented_fields() {
    let m = Mount::new(&["--k8s", "v1.23.4", "--registry-domain", "reg.example:5000"]);
    let _ = std::fs::read(m.path("rootfs/Kubefile")).unwrap();
    let all = common::run(&["status", "--json"]);
    let all: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(all["format"], 2);
    let mount = all["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["mountpoint"] == m.dir.to_str().unwrap())
        .expect("our mount in status --json")
        .clone();
    assert_eq!(status_json(&m.dir)["mounts"][0]["pid"], mount["pid"]);
    for key in [
        "pid",
        "started",
        "updated",
        "uptime_seconds",
        "faults_total",
    ] {
        assert!(mount[key].is_u64(), "{key}: {mount}");
    }
    let p = &mount["parameters"];
    assert_eq!(p["version"], "v1.23.4");
    assert_eq!(p["cri"], "docker");
    assert_eq!(p["cni"], "calico");
    assert_eq!(p["arches"], serde_json::json!(["amd64", "arm64"]));
    assert_eq!(p["registry_domain"], "reg.example:5000");
    assert_eq!(p["cache"], demo_cache().to_str().unwrap());
    assert_eq!(p["contexts"], serde_json::Value::Null);
    assert_eq!(
        p["registry_data"],
        demo_cache().join("registry").to_str().unwrap()
    );
    assert_eq!(p["index_dir"], demo_cache().join("index").to_str().unwrap());
    assert!(p["upper"].is_string());
    for key in ["scratch_upper", "allow_other", "auto_unmount"] {
        assert!(p[key].is_boolean(), "{key}: {p}");
    }
    assert!(p["log"].is_string());
    let c = &mount["counters"];
    assert_eq!(c["read_path"], "userspace");
    for key in ["requests", "bytes_read", "errors"] {
        assert!(c[key].is_u64(), "{key}: {c}");
    }
    common::wait_for("counters in the state file", || {
        status_json(&m.dir)["mounts"][0]["counters"]["bytes_read"]
            .as_u64()
            .is_some_and(|n| n > 0)
    });
    assert!(mount["faults"].as_array().unwrap().is_empty());
}

/// scripts/install.sh into a DESTDIR: binary, the helper link mount.fuse3 finds, man
/// pages that man(1) renders, completions bash loads, and the unit pointing at the
/// installed binary.
#[test]
fn install_script_installs_binary_helper_man_completions_and_unit() {
    let dest = scratch("destdir");
    let out = Command::new("bash")
        .arg(common::repo().join("scripts/install.sh"))
        .env("BIN", BIN)
        .env("PREFIX", "/opt/rootfs-mount")
        .env("DESTDIR", &dest)
        .output()
        .expect("run install.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = dest.join("opt/rootfs-mount/bin/rootfs-mount");
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("rootfs-mount "));
    assert_eq!(
        std::fs::read_link(dest.join("usr/local/sbin/rootfs-mount")).unwrap(),
        Path::new("/opt/rootfs-mount/bin/rootfs-mount")
    );
    let man = dest.join("opt/rootfs-mount/share/man/man1");
    let page = Command::new("man")
        .arg("-l")
        .arg(man.join("rootfs-mount.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "200")
        .output()
        .expect("man");
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(page.contains("--k8s"), "{page}");
    assert!(
        page.contains("possible values: containerd, docker"),
        "{page}"
    );
    assert!(man.join("rootfs-mount-umount.1").exists());
    assert!(!man.join("rootfs-mount-generate.1").exists());
    let bash = dest.join("opt/rootfs-mount/share/bash-completion/completions/rootfs-mount");
    let loaded = common::sh(&format!(
        "source '{}'; complete -p rootfs-mount",
        bash.display()
    ));
    assert!(loaded.contains("rootfs-mount"), "{loaded}");
    for file in [
        "opt/rootfs-mount/share/zsh/site-functions/_rootfs-mount",
        "opt/rootfs-mount/share/fish/vendor_completions.d/rootfs-mount.fish",
    ] {
        let text = std::fs::read_to_string(dest.join(file)).unwrap();
        assert!(text.contains("registry-domain"), "{file}");
    }
    let unit =
        std::fs::read_to_string(dest.join("etc/systemd/system/rootfs-mount@.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/opt/rootfs-mount/bin/rootfs-mount /mnt/build/%i --k8s %i"),
        "{unit}"
    );
}

/// contrib/rootfs-mount@.service, run as systemd runs it: ExecStart with the instance
/// (`%i` = v1.23.4) and NOTIFY_SOCKET; READY=1 once mounted, STOPPING=1 on SIGTERM.
#[test]
fn systemd_unit_runs_as_systemd_would() {
    let unit =
        std::fs::read_to_string(common::repo().join("contrib/rootfs-mount@.service")).unwrap();
    let value = |key: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the unit"))
            .to_string()
    };
    assert_eq!(value("Type"), "notify");
    let base = scratch("unit-mnt");
    let point = base.join("v1.23.4");
    let _daemons = Daemons(vec![point.clone()]);
    let command_line = value("ExecStart")
        .replace("/usr/local/bin/rootfs-mount", BIN)
        .replace("/mnt/build", base.to_str().unwrap())
        .replace("%i", "v1.23.4")
        .replace(
            "$ROOTFS_MOUNT_ARGS",
            &format!("--cache {}", demo_cache().display()),
        );
    let pre = value("ExecStartPre")
        .replace("/mnt/build", base.to_str().unwrap())
        .replace("%i", "v1.23.4");
    common::sh(&pre);
    let socket_path = scratch("unit-notify").join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let words: Vec<&str> = command_line.split_whitespace().collect();
    let mut child = Command::new(words[0])
        .args(&words[1..])
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(Stdio::null())
        .spawn()
        .expect("ExecStart");
    let got = until_ready(&socket);
    assert!(is_mounted(&point), "{got:?}");
    assert!(point.join("rootfs/Kubefile").exists());
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert!(child.wait().unwrap().success());
    assert!(!is_mounted(&point));
}

/// CLI polish: typos of subcommands, value lists and the version span in --help, only
/// known log levels, the span in the out-of-range error.
#[test]
fn cli_names_subcommands_values_and_the_version_span() {
    let point = scratch("cli-polish");
    let p = point.to_str().unwrap();
    let out = common::run(&["unmount", p]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("did you mean `rootfs-mount umount`"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    let help = String::from_utf8_lossy(&common::run(&["--help"]).stdout).into_owned();
    for needle in [
        "possible values: containerd, docker",
        "possible values: calico, none",
        "possible values: amd64, arm64",
        "possible values: error, warn, info, debug, trace",
        "v1.13.0 to v1.31.x",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    let out = common::run(&[p, "--k8s", "v1.23.4", "--log-level", "verbose"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("verbose"));
    let out = common::run(&[p, "--k8s", "v1.40.0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("supported: v1.13.0 to v1.31.x"), "{stderr}");
    assert!(!is_mounted(&point));
}

/// `rootfs-mount index` builds every seek index a mount reads (the release tarballs of
/// both arches and registry.tar.gz), logging each build; a second run reuses them, and a
/// mount with that index folder indexes nothing on its first listing.
#[test]
fn index_builds_every_seek_index_ahead_of_time() {
    let cache = demo_cache().to_str().unwrap().to_string();
    let dir = scratch("index-ahead");
    let d = dir.to_str().unwrap();
    let out = common::run(&[
        "index",
        "--k8s",
        "v1.24.0",
        "--cache",
        &cache,
        "--index-dir",
        d,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for archive in [
        "oss/amd64/bin/crictl.tar.gz",
        "oss/arm64/bin/nerdctl.tar.gz",
        "cri/containerd/amd64/registry.tar.gz",
        "cri/containerd/arm64/registry.tar.gz",
    ] {
        let line = format!("file={cache}/{archive}");
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("indexing the archive (first use)") && l.contains(&line)),
            "no indexing line for {archive}:\n{stderr}"
        );
    }
    let built = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".gzidx")
        })
        .count();
    let archives = common::sh(&format!(
        "ls {cache}/oss/*/bin/*.tar.gz {cache}/cri/containerd/*/registry.tar.gz | wc -l"
    ));
    assert_eq!(built.to_string(), archives.trim(), "one index per archive");
    let again = common::run(&[
        "index",
        "--k8s",
        "v1.24.0",
        "--cache",
        &cache,
        "--index-dir",
        d,
    ]);
    assert!(again.status.success());
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains("indexing the archive"),
        "rebuilt: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    let out = common::run(&["index", "--k8s", "v1.24.0", "--cache", "/nonexistent/cache"]);
    assert!(!out.status.success());
}

/// The signal that ended a child, if one did.
fn killed_by(status: std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

/// An index build in progress (slowed by the test-only pace knob) shows in `status` and
/// `status --json` with its file, percent and ETA, and in a log line when it starts and
/// ends. A request waiting for it gives up with EINTR as soon as its caller has a signal
/// pending (fuser never passes FUSE_INTERRUPT on), and with EAGAIN after the wait bound
/// (`ROOTFS_MOUNT_INDEX_WAIT_SECS`); neither is an ERROR line, and the build goes on.
#[test]
fn index_build_shows_in_status_and_waiting_requests_give_up() {
    let cache = common::own_cache();
    // 8 MiB that do not compress, at 1 s per MiB: an 8 s build.
    for cri in ["docker", "containerd"] {
        let gz = cache.join(format!("cri/{cri}/amd64/registry.tar.gz"));
        let _ = std::fs::remove_file(&gz);
        common::sh(&format!(
            "head -c 8388608 /dev/urandom | gzip -1 > '{}'",
            gz.display()
        ));
    }
    let gz_size = std::fs::metadata(cache.join("cri/docker/amd64/registry.tar.gz"))
        .unwrap()
        .len();
    let log = scratch("index-progress-log").join("daemon.log");
    let log_arg = log.to_str().unwrap().to_string();
    let m = Mount::with_env(
        &cache,
        &["--k8s", "v1.23.4", "--log-file", &log_arg],
        &[
            ("ROOTFS_MOUNT_TEST_INDEX_PACE_MS", Path::new("1000")),
            ("ROOTFS_MOUNT_INDEX_WAIT_SECS", Path::new("3")),
        ],
    );
    let registry = m.path("amd64/images/registry.tar");

    // The first stat starts the build and waits; SIGTERM ends the wait at once.
    let started = Instant::now();
    let mut first = Command::new("stat")
        .arg(&registry)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // status and status --json show the build while it runs.
    let building = loop {
        let json = status_json(&m.dir);
        let now = json["mounts"][0]["indexing"].as_array().cloned();
        if let Some(b) = now.and_then(|v| {
            v.into_iter().find(|b| {
                b["file"]
                    .as_str()
                    .unwrap_or("")
                    .ends_with("amd64/registry.tar.gz")
                    && b["percent"].as_u64().is_some_and(|p| p > 0)
                    && b["eta_seconds"].as_u64().is_some()
            })
        }) {
            break b;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "status --json never showed the build: {json}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        building["bytes_total"].as_u64(),
        Some(gz_size),
        "{building}"
    );
    assert!(building["percent"].as_u64().unwrap() < 100, "{building}");
    let text = common::run(&["status", m.dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines().any(|l| l.contains("indexing:")
            && l.contains("registry.tar.gz")
            && l.contains("% (")
            && l.contains("left")),
        "{text}"
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first stat did not wait for the build"
    );
    let sent = Instant::now();
    kill_with(first.id(), "TERM");
    let status = first.wait().unwrap();
    let gave_up_in = sent.elapsed();
    assert_eq!(killed_by(status), Some(SIGTERM), "{status:?}");
    assert!(
        gave_up_in < Duration::from_millis(1500),
        "a waiting request ignored its caller's signal for {gave_up_in:?}"
    );

    // A request that waits past the bound gets EAGAIN; the build is still running.
    let asked = Instant::now();
    let err = std::fs::metadata(&registry).expect_err("EAGAIN while the build runs");
    let waited = asked.elapsed();
    assert_eq!(err.raw_os_error(), Some(11), "{err}");
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(6),
        "waited {waited:?} for a 3 s bound"
    );
    assert!(
        !status_json(&m.dir)["mounts"][0]["indexing"]
            .as_array()
            .unwrap()
            .is_empty(),
        "the build stopped with its waiters"
    );

    // Once the build is done, the file is there.
    let done = Instant::now();
    while !status_json(&m.dir)["mounts"][0]["indexing"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            done.elapsed() < Duration::from_secs(20),
            "the build never ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::metadata(&registry).unwrap().len(), 8 << 20);

    let log = std::fs::read_to_string(&log).unwrap();
    let file = format!(
        "file={}",
        cache.join("cri/docker/amd64/registry.tar.gz").display()
    );
    let file_c = file.replace("/docker/", "/containerd/");
    for needle in [
        "indexing the archive (first use)",
        "indexing the archive ended",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(needle) && (l.contains(&file) || l.contains(&file_c))),
            "no {needle:?} line:\n{log}"
        );
    }
    assert!(!log.contains(" ERROR "), "{log}");
}

/// Sends `signal` (a name for kill(1)) to `pid`.
fn kill_with(pid: u32, signal: &str) {
    common::sh(&format!("kill -{signal} {pid}"));
}

const SIGTERM: i32 = 15;
