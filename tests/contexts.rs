//! The contexts: scripts pass `bash -n` and shellcheck; an on-disk `--contexts` tree is
//! served live, and a broken template refuses the mount with file:line.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{demo_cache, repo, run, scratch, walk, Mount};

#[test]
fn shell_scripts_pass_bash_n_and_shellcheck() {
    let mut scripts: Vec<_> = walk(&repo().join("contexts"))
        .into_iter()
        .filter(|p| p.ends_with(".sh"))
        .map(|p| repo().join("contexts").join(p))
        .collect();
    scripts.push(repo().join("scripts/demo-cache.sh"));
    scripts.push(repo().join("scripts/soak.sh"));
    scripts.push(repo().join("scripts/fuzz.sh"));
    scripts.push(repo().join("scripts/bench-fetch.sh"));
    assert!(scripts.len() >= 10, "found only {} scripts", scripts.len());
    for script in &scripts {
        let out = Command::new("bash").arg("-n").arg(script).output().unwrap();
        assert!(
            out.status.success(),
            "bash -n {}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("shellcheck")
            .arg(script)
            .output()
            .expect("shellcheck is installed (.ci/run installs it)");
        assert!(
            out.status.success(),
            "shellcheck {}:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

fn copy_contexts() -> std::path::PathBuf {
    let dir = scratch("contexts");
    common::sh(&format!(
        "cp -a '{}/.' '{}/'",
        repo().join("contexts").display(),
        dir.display()
    ));
    dir
}

#[test]
fn contexts_folder_edits_show_without_remount() {
    let dir = copy_contexts();
    let m = Mount::new(&["--k8s", "v1.23.4", "--contexts", dir.to_str().unwrap()]);
    let registry = dir.join("rootfs/etc/registry_config.yml");
    let before = m.read("rootfs/etc/registry_config.yml");
    assert_eq!(before, std::fs::read_to_string(&registry).unwrap());
    std::fs::write(&registry, format!("{before}# edited\n")).unwrap();
    // Entries of an on-disk contexts tree are cached by the kernel for at most 1 s.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(m
        .read("rootfs/etc/registry_config.yml")
        .ends_with("# edited\n"));

    let template = dir.join("rootfs/etc/kubeadm.yml.in");
    let text = std::fs::read_to_string(&template).unwrap();
    std::fs::write(
        &template,
        text.replace("clusterName: kubernetes", "clusterName: edited"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let rendered = m.read("rootfs/etc/kubeadm.yml");
    assert!(rendered.contains("clusterName: edited"), "{rendered}");
    assert_eq!(
        std::fs::metadata(m.path("rootfs/etc/kubeadm.yml"))
            .unwrap()
            .len() as usize,
        rendered.len()
    );

    // A template edited into an error keeps its last good rendering.
    std::fs::write(&template, format!("{text}\n@{{no_such_variable}}\n")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(m
        .read("rootfs/etc/kubeadm.yml")
        .contains("clusterName: edited"));
}

#[test]
fn broken_templates_refuse_the_mount_with_file_and_line() {
    for (edit, message) in [
        (
            "@{no_such_variable}",
            "unknown variable \"no_such_variable\"",
        ),
        ("#@if cri == \"docker\"", "#@if is not closed"),
        ("#@end", "#@end without #@if"),
    ] {
        let dir = copy_contexts();
        let template = dir.join("rootfs/etc/kubeadm.yml.in");
        let text = std::fs::read_to_string(&template).unwrap();
        let line = text.lines().count() + 1;
        std::fs::write(&template, format!("{text}{edit}\n")).unwrap();
        let mp = scratch("mp");
        let out = run(&[
            mp.to_str().unwrap(),
            "--k8s",
            "v1.23.4",
            "--cache",
            demo_cache().to_str().unwrap(),
            "--contexts",
            dir.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        let at = if edit.starts_with("#@if") {
            text.lines().count() + 1
        } else {
            line
        };
        assert!(
            stderr.contains(&format!("kubeadm.yml.in:{at}: {message}")),
            "{stderr}"
        );
        assert!(!common::is_mounted(&mp));
    }
}
