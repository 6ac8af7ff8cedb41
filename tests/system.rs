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
            "# the README's line, with the test's cache\nrootfs-mount:v1.24.0 {} fuse.rootfs-mount cache={},read_only,arch=arm64,nofail,_netdev,x-systemd.requires=network-online.target,noauto 0 0\n",
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
