//! Security (docs/DESIGN.md §6): symlinks are shown, never followed by the daemon out of a layer;
//! the mount is `nosuid,nodev`; other users are kept out unless `--allow-other`, and then
//! file modes decide (`default_permissions`).

mod common;

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use common::{demo_cache, own_cache, repo, run, scratch, sh, Mount};
use rootfs_mount::layers::{DiskTree, Layer};

/// Runs `cmd` as the unprivileged user `nobody` (uid and gid 65534, no groups).
fn as_nobody(cmd: &str) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "bash",
            "-c",
            cmd,
        ])
        .output()
        .expect("run setpriv")
}

fn denied(out: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    !out.status.success()
        && (stderr.contains("Permission denied") || stderr.contains("Operation not permitted"))
}

fn mount_options(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == dir.to_str())
        .expect("mount in mountinfo");
    line.split([' ', ','])
        .map(str::to_string)
        .collect::<Vec<_>>()
}

#[test]
fn cache_symlinks_are_shown_and_never_followed_by_the_daemon() {
    let cache = own_cache();
    let bin = cache.join("oss/amd64/bin");
    symlink("/etc", bin.join("evil")).unwrap();
    symlink("../../../../../../../../../../etc", bin.join("up")).unwrap();
    symlink("/etc/passwd", bin.join("passwd-link")).unwrap();
    let m = Mount::with_cache(&cache, &["--k8s", "v1.23.4"]);
    let mount_dev = m.dir.metadata().unwrap().dev();
    for (name, target) in [
        ("evil", "/etc"),
        ("up", "../../../../../../../../../../etc"),
        ("passwd-link", "/etc/passwd"),
    ] {
        let shown = m.path(&format!("amd64/bin/{name}"));
        let meta = shown.symlink_metadata().unwrap();
        assert!(meta.file_type().is_symlink(), "{name} is not a symlink");
        assert_eq!(meta.dev(), mount_dev, "{name} not served by the mount");
        assert_eq!(std::fs::read_link(&shown).unwrap(), Path::new(target));
        // (No provenance here: the kernel answers user.* xattrs of symlinks itself.)
    }
    // A path through the link is resolved by the kernel (to the host's /etc, as for
    // any symlink), not by the daemon: what it reaches is not on the mount.
    let through = m.path("amd64/bin/evil/hostname");
    if Path::new("/etc/hostname").exists() {
        assert_ne!(through.metadata().unwrap().dev(), mount_dev);
    }
    // tar packs the link as a link, never what it points at.
    let listing = sh(&format!(
        "tar -cf - -C '{}' amd64/bin/evil | tar -tvf -",
        m.dir.display()
    ));
    assert!(
        listing.starts_with('l') && listing.contains("-> /etc"),
        "{listing}"
    );
}

#[test]
fn the_daemon_never_resolves_a_path_through_a_symlinked_folder() {
    // Below FUSE: the layer refuses a path through a symlink (the kernel never asks,
    // but a request naming one must not leave the layer either).
    let dir = scratch("layer");
    std::fs::create_dir(dir.join("real")).unwrap();
    std::fs::write(dir.join("real/file"), b"inside").unwrap();
    symlink("/etc", dir.join("outside")).unwrap();
    symlink("real", dir.join("inside")).unwrap();
    let layer = DiskTree::open(&dir).unwrap();
    assert!(layer.entry(Path::new("outside/passwd")).unwrap().is_none());
    assert!(layer
        .entry(Path::new("outside/hostname"))
        .unwrap()
        .is_none());
    // Even a symlink that stays inside is not followed by the daemon.
    assert!(layer.entry(Path::new("inside/file")).unwrap().is_none());
    assert!(layer.entry(Path::new("real/file")).unwrap().is_some());
    assert!(layer.entry(Path::new("../etc/passwd")).unwrap().is_none());
}

#[test]
fn context_symlinks_hide_lower_folders_and_expose_nothing() {
    let contexts = scratch("contexts");
    sh(&format!(
        "cp -a '{}/.' '{}/'",
        repo().join("contexts").display(),
        contexts.display()
    ));
    // The CNI context (highest) makes rootfs/statics a symlink to /etc; the base
    // context has a real statics/ folder below it.
    let statics = contexts.join("cni/calico/statics");
    let _ = std::fs::remove_dir_all(&statics);
    symlink("/etc", &statics).unwrap();
    symlink("/etc/shadow", contexts.join("rootfs/etc/shadow-link")).unwrap();
    let m = Mount::new(&["--k8s", "v1.23.4", "--contexts", contexts.to_str().unwrap()]);
    let mount_dev = m.dir.metadata().unwrap().dev();
    let shown = m.path("rootfs/statics");
    assert!(shown.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_link(&shown).unwrap(), Path::new("/etc"));
    // The base context's statics/audit-policy.yml is hidden by the link above it.
    let through = m.path("rootfs/statics/audit-policy.yml");
    assert!(through
        .metadata()
        .map(|m| m.dev() != mount_dev)
        .unwrap_or(true));
    let link = m.path("rootfs/etc/shadow-link");
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
}

#[test]
fn cache_layer_roots_that_lead_out_of_the_cache_are_refused() {
    for (rel, target, ok) in [
        ("oss/amd64/bin", "/etc", false),
        ("kube/v1.23.4/amd64/kubeadm", "/etc/passwd", false),
        (
            "kube/v1.23.4/amd64/kubectl",
            "../../../../../../../etc/passwd",
            false,
        ),
        // A symlink that stays inside the cache is fine (shared downloads).
        ("kube/v1.23.4/arm64/kubeadm", "../amd64/kubeadm", true),
    ] {
        let cache = own_cache();
        let path = cache.join(rel);
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
        symlink(target, &path).unwrap();
        if ok {
            let m = Mount::with_cache(&cache, &["--k8s", "v1.23.4"]);
            assert_eq!(
                std::fs::read(m.path("arm64/bin/kubeadm")).unwrap(),
                std::fs::read(cache.join("kube/v1.23.4/amd64/kubeadm")).unwrap()
            );
            continue;
        }
        let mp = scratch("mp");
        let out = run(&[
            mp.to_str().unwrap(),
            "--k8s",
            "v1.23.4",
            "--cache",
            cache.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{rel} -> {target} accepted");
        assert!(
            stderr.contains("leads out of") && stderr.contains(rel),
            "{rel}: {stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(!common::is_mounted(&mp));
    }
}

#[test]
fn the_mount_is_nosuid_nodev_with_default_permissions() {
    for (args, rw) in [(&["--read-only"][..], "ro"), (&[][..], "rw")] {
        let mut full = vec!["--k8s", "v1.23.4"];
        full.extend_from_slice(args);
        let m = Mount::new(&full);
        let options = mount_options(&m.dir);
        for option in [rw, "nosuid", "nodev", "default_permissions"] {
            assert!(options.iter().any(|o| o == option), "{option}: {options:?}");
        }
        assert!(!options.iter().any(|o| o == "allow_other"), "{options:?}");
    }
}

#[test]
fn other_users_are_kept_out_without_allow_other() {
    let m = Mount::new(&["--k8s", "v1.23.4"]);
    // Reachable: the folders above the mountpoint let everyone through.
    let parent = m.dir.parent().unwrap().display().to_string();
    assert!(as_nobody(&format!("ls '{parent}' >/dev/null"))
        .status
        .success());
    for cmd in ["cat '{}/rootfs/Kubefile'", "ls '{}'", "stat '{}/rootfs'"] {
        let cmd = cmd.replace("{}", m.dir.to_str().unwrap());
        let out = as_nobody(&cmd);
        assert!(
            denied(&out),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn allow_other_lets_other_users_read_where_modes_allow() {
    let cache = own_cache();
    let secret = cache.join("oss/amd64/bin/secret");
    std::fs::write(&secret, b"root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let private = cache.join("registry/private");
    std::fs::create_dir(&private).unwrap();
    std::fs::write(private.join("blob"), b"x").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let m = Mount::with_cache(&cache, &["--k8s", "v1.23.4", "--allow-other"]);
    let d = m.dir.to_str().unwrap();
    let out = as_nobody(&format!("cat '{d}/rootfs/Kubefile'"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout,
        std::fs::read(m.path("rootfs/Kubefile")).unwrap()
    );
    assert!(as_nobody(&format!("'{d}/amd64/bin/kubeadm' >/dev/null"))
        .status
        .success());
    for cmd in [
        format!("cat '{d}/amd64/bin/secret'"),
        format!("ls '{d}/rootfs/registry/private'"),
        format!("cat '{d}/rootfs/registry/private/blob'"),
    ] {
        let out = as_nobody(&cmd);
        assert!(
            denied(&out),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Root reads what its modes allow; nobody writes anything.
    assert_eq!(m.read("amd64/bin/secret"), "root only\n");
    let out = as_nobody(&format!(
        "touch '{d}/rootfs/new' || echo x > '{d}/rootfs/Kubefile'"
    ));
    assert!(!out.status.success());
    let _ = demo_cache();
}
