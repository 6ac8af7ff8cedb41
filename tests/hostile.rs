//! Hostile input: malformed versions, huge or binary templates, deeply nested folders,
//! names with newlines and non-UTF-8 bytes, 10k-entry folders. Each gets a clear error or
//! correct behaviour, never a panic. Plus a seeded stand-in for the fuzz targets in
//! `fuzz/` that CI always runs.

mod common;

use common::Rng;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Command;

use common::{daemon_pid, is_running, own_cache, repo, scratch, sh, status_field, Mount, BIN};
use rootfs_mount::render::{render, Value, Vars};
use rootfs_mount::versions::KubeVersion;

/// Runs a mount that must be refused with one clear line naming `needle`.
fn refused(args: &[&OsStr], needle: &str) {
    let mp = scratch("mp");
    let out = Command::new(BIN)
        .arg(&mp)
        .args(args)
        .output()
        .expect("run rootfs-mount");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} accepted");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: {stderr:?} lacks {needle:?}"
    );
    assert!(
        stderr.len() < 600,
        "error not kept short: {} bytes",
        stderr.len()
    );
    assert!(!common::is_mounted(&mp));
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn malformed_versions_and_options_get_one_clear_line() {
    let cache = own_cache();
    let long = format!("v1.{}.4", "9".repeat(100_000));
    let binary = OsStr::from_bytes(b"v1.\xff\xfe.4");
    for version in [
        "v1.23.4\n",
        " v1.23.4",
        "v\u{ff11}.23.4",
        "v1.23.4-rc.1+meta",
        "v99999999999.0.0",
        "v-1.2.3",
        "v1.23.4\u{202e}",
        "\u{1b}[31mv1.23.4",
        long.as_str(),
    ] {
        refused(
            &[os("--k8s"), os(version), os("--cache"), cache.as_os_str()],
            "invalid Kubernetes version",
        );
    }
    // Non-UTF-8 argument bytes: clap refuses them (its own message and exit code).
    let out = Command::new(BIN)
        .arg(scratch("mp"))
        .arg("--k8s")
        .arg(binary)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    for (option, value, needle) in [
        (
            "--registry-domain",
            "evil\n  injected: true",
            "invalid --registry-domain",
        ),
        ("--registry-domain", "a\"b", "invalid --registry-domain"),
        (
            "--registry-domain",
            "sea.hub:5000/x",
            "invalid --registry-domain",
        ),
        ("--cni", "../../../etc", "unknown CNI"),
        ("--cri", "../docker", "unknown CRI"),
        ("--arch", "amd64,,s390x\u{7}", "unknown arch"),
    ] {
        refused(
            &[
                os("--k8s"),
                os("v1.23.4"),
                os("--cache"),
                cache.as_os_str(),
                os(option),
                os(value),
            ],
            needle,
        );
    }
}

fn copy_contexts() -> PathBuf {
    let dir = scratch("contexts");
    sh(&format!(
        "cp -a '{}/.' '{}/'",
        repo().join("contexts").display(),
        dir.display()
    ));
    dir
}

#[test]
fn huge_and_binary_templates() {
    let cache = own_cache();
    let mut rng = Rng(0x5eed);
    // Binary bytes without template syntax pass through byte for byte.
    let binary: Vec<u8> = rng
        .bytes(300_000)
        .into_iter()
        .map(|b| if b == b'@' { b'A' } else { b })
        .collect();
    // Big, but under the limit: rendered exactly.
    let big = "line @{k8s_version} {{ .Go }}\n".repeat(200_000);
    let contexts = copy_contexts();
    std::fs::write(contexts.join("rootfs/etc/binary.bin.in"), &binary).unwrap();
    std::fs::write(contexts.join("rootfs/etc/big.txt.in"), &big).unwrap();
    let m = Mount::with_cache(
        &cache,
        &["--k8s", "v1.23.4", "--contexts", contexts.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read(m.path("rootfs/etc/binary.bin")).unwrap(),
        binary
    );
    let rendered = std::fs::read(m.path("rootfs/etc/big.txt")).unwrap();
    assert_eq!(
        rendered,
        big.replace("@{k8s_version}", "v1.23.4").into_bytes()
    );
    assert_eq!(
        std::fs::metadata(m.path("rootfs/etc/big.txt"))
            .unwrap()
            .len() as usize,
        rendered.len()
    );
    drop(m);

    // Over the limit, or with binary directives: refused, naming the file.
    let huge = copy_contexts();
    let file = std::fs::File::create(huge.join("rootfs/etc/huge.in")).unwrap();
    file.set_len(17 << 20).unwrap();
    let broken = copy_contexts();
    let mut bad = rng.bytes(1000);
    bad.extend_from_slice(b"\n#@\xff\xfe\x00\n");
    std::fs::write(broken.join("rootfs/etc/bad.in"), &bad).unwrap();
    let controls = copy_contexts();
    std::fs::write(
        controls.join("rootfs/etc/ctl.in"),
        format!("#@{}\n", "\u{1b}[2J\r".repeat(10_000)),
    )
    .unwrap();
    for (dir, needle) in [
        (&huge, "huge.in:0: template is 17825792 bytes"),
        (&broken, "bad.in:"),
        (&controls, "unknown directive #@\"\\u{1b}[2J\""),
    ] {
        refused(
            &[
                os("--k8s"),
                os("v1.23.4"),
                os("--cache"),
                cache.as_os_str(),
                os("--contexts"),
                dir.as_os_str(),
            ],
            needle,
        );
    }
}

#[test]
fn hostile_versions_yaml_is_a_clear_error() {
    let cache = own_cache();
    let mut bomb = String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
    for level in b'b'..=b'z' {
        let prev = (level - 1) as char;
        let this = level as char;
        bomb.push_str(&format!(
            "{this}: &{this} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for content in [
        Rng(7).bytes(10_000),
        bomb.into_bytes(),
        nested.into_bytes(),
        b"minimum: v1.13.0\n".to_vec(),
    ] {
        let contexts = copy_contexts();
        std::fs::write(contexts.join("versions.yaml"), &content).unwrap();
        let start = std::time::Instant::now();
        refused(
            &[
                os("--k8s"),
                os("v1.23.4"),
                os("--cache"),
                cache.as_os_str(),
                os("--contexts"),
                contexts.as_os_str(),
            ],
            "versions.yaml",
        );
        assert!(
            start.elapsed().as_secs() < 10,
            "versions.yaml took too long"
        );
    }
}

#[test]
fn deeply_nested_folders() {
    let cache = own_cache();
    let registry = cache.join("registry");
    // 150 levels of 20-byte names: a 3150-byte path below the layer, served whole.
    // 250 levels: past PATH_MAX below the layer, answered with ENAMETOOLONG.
    sh(&format!(
        "cd '{}' && for i in $(seq 150); do mkdir n123456789012345678; cd n123456789012345678; done && echo leaf >leaf",
        registry.display()
    ));
    sh(&format!(
        "cd '{}' && mkdir deeper && cd deeper && for i in $(seq 250); do mkdir n123456789012345678; cd n123456789012345678; done && echo leaf >leaf",
        registry.display()
    ));
    let m = Mount::with_cache(&cache, &["--k8s", "v1.23.4"]);
    let pid = daemon_pid(&m.dir);
    let rel = format!("{}/leaf", ["n123456789012345678"; 150].join("/"));
    let deep = sh(&format!(
        "cd '{}' && cat '{rel}'",
        m.path("rootfs/registry").display()
    ));
    assert_eq!(deep, "leaf\n");
    // `find` walks with openat, so it can go past PATH_MAX; the daemon answers the
    // part it can and refuses the rest with ENAMETOOLONG.
    let out = Command::new("find")
        .arg(m.path("rootfs/registry/deeper"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.contains("File name too long"),
        "{stderr}"
    );
    eprintln!(
        "past PATH_MAX: find listed {} entries, {}",
        String::from_utf8_lossy(&out.stdout).lines().count(),
        stderr.lines().next().unwrap_or("no error")
    );
    let native = sh(&format!(
        "find '{}' -path '*deeper*' -prune -o -print | wc -l",
        registry.display()
    ));
    let mounted = sh(&format!(
        "find '{}' -path '*deeper*' -prune -o -print | wc -l",
        m.path("rootfs/registry").display()
    ));
    assert_eq!(native, mounted);
    assert!(is_running(pid));
    assert!(m.read("rootfs/Kubefile").contains("FROM"));
}

#[test]
fn names_with_newlines_and_non_utf8_bytes() {
    let cache = own_cache();
    let bin = cache.join("oss/amd64/bin");
    let names: Vec<&[u8]> = vec![
        b"new\nline",
        b"bad\xff\xfeutf8",
        b"tab\tname",
        b" leading space",
        b"-dash",
        b"back\\slash",
        b"\xe2\x80\xaeright-to-left",
    ];
    for name in &names {
        std::fs::write(bin.join(OsStr::from_bytes(name)), name).unwrap();
    }
    let contexts = copy_contexts();
    std::fs::write(
        contexts.join(OsStr::from_bytes(b"rootfs/etc/t\xff\nx.conf.in")),
        "v=@{k8s_version}\n",
    )
    .unwrap();
    let m = Mount::with_cache(
        &cache,
        &["--k8s", "v1.23.4", "--contexts", contexts.to_str().unwrap()],
    );
    let listed: Vec<Vec<u8>> = std::fs::read_dir(m.path("amd64/bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    for name in &names {
        assert!(listed.iter().any(|l| l == name), "{name:?} not listed");
        let shown = m.path("amd64/bin").join(OsStr::from_bytes(name));
        assert_eq!(std::fs::read(&shown).unwrap(), *name);
    }
    let rendered = m
        .path("rootfs/etc")
        .join(OsStr::from_bytes(b"t\xff\nx.conf"));
    assert_eq!(std::fs::read(rendered).unwrap(), b"v=v1.23.4\n");
    // find and tar carry them through.
    let count = sh(&format!(
        "find '{}' -print0 | tr -cd '\\0' | wc -c",
        m.path("amd64/bin").display()
    ));
    assert_eq!(count.trim().parse::<usize>().unwrap(), listed.len() + 1);
    sh(&format!(
        "tar -cf - -C '{}' amd64 rootfs/etc | tar -tf - >/dev/null",
        m.dir.display()
    ));
    common::wait_for("counters", || status_field(&m.dir, "requests") != "0");
    assert_eq!(status_field(&m.dir, "errors"), "0");
}

#[test]
fn ten_thousand_entry_folders() {
    let cache = own_cache();
    let bin = cache.join("oss/amd64/bin");
    let registry = cache.join("registry/wide");
    std::fs::create_dir_all(&registry).unwrap();
    for i in 0..10_000 {
        let name = format!("f{i:05}");
        std::fs::write(bin.join(&name), &name).unwrap();
        std::fs::write(registry.join(&name), &name).unwrap();
    }
    let m = Mount::with_cache(&cache, &["--k8s", "v1.23.4"]);
    for (shown, backing) in [
        (m.path("amd64/bin"), &bin),
        (m.path("rootfs/registry/wide"), &registry),
    ] {
        let mut listed: Vec<String> = std::fs::read_dir(&shown)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('f'))
            .collect();
        listed.sort();
        assert_eq!(listed.len(), 10_000, "{}", shown.display());
        assert_eq!(listed.first().map(String::as_str), Some("f00000"));
        assert_eq!(listed.last().map(String::as_str), Some("f09999"));
        // `ls -l` goes through READDIRPLUS, paged by the kernel.
        let long = sh(&format!("ls -l '{}' | grep -c ' f[0-9]'", shown.display()));
        assert_eq!(long.trim(), "10000");
        for i in (0..10_000).step_by(997) {
            let name = format!("f{i:05}");
            assert_eq!(std::fs::read_to_string(shown.join(&name)).unwrap(), name);
        }
        assert!(backing.join("f09999").exists());
    }
}

// ---- Stand-in for the cargo-fuzz targets (fuzz/): seeded mutations, run by `cargo test`.

const DICTIONARY: &[&[u8]] = &[
    b"@{",
    b"}",
    b"#@if ",
    b"#@else",
    b"#@end",
    b"\n",
    b"==",
    b"!=",
    b"\"",
    b"!",
    b" ",
    b"k8s_version",
    b"cri",
    b"on",
    b"images",
    b"empty",
    b"{{",
    b"}}",
    b"\xff",
    b"\0",
    b"#@",
    b"v",
    b".",
    b"-",
    b"+",
    b"0",
    b"9",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.index(8) {
        let at = rng.index(out.len() + 1);
        match rng.index(6) {
            0 if !out.is_empty() => {
                let i = rng.index(out.len());
                out[i] ^= 1 << rng.index(8);
            }
            1 => {
                let word = DICTIONARY[rng.index(DICTIONARY.len())];
                out.splice(at..at, word.iter().copied());
            }
            2 if !out.is_empty() => {
                let end = (at + rng.index(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            3 => {
                let byte = rng.next() as u8;
                out.insert(at, byte);
            }
            4 if !out.is_empty() => {
                let start = rng.index(out.len());
                let end = (start + rng.index(64)).min(out.len());
                let chunk = out[start..end].to_vec();
                out.splice(at..at, chunk);
            }
            _ => {
                let n = rng.index(8);
                let noise = rng.bytes(n);
                out.splice(at..at, noise);
            }
        }
    }
    out
}

fn fuzz_vars() -> Vars {
    let mut v = Vars::new();
    v.insert("k8s_version".into(), Value::Str("v1.23.4".into()));
    v.insert("cri".into(), Value::Str("docker".into()));
    v.insert("empty".into(), Value::Str(String::new()));
    v.insert("on".into(), Value::Bool(true));
    v.insert(
        "images".into(),
        Value::List(vec!["a:1".into(), "b:2".into()]),
    );
    v
}

/// The seeds of the renderer: every template of contexts/ and a few edge cases.
fn template_seeds() -> Vec<Vec<u8>> {
    let contexts = repo().join("contexts");
    let mut seeds: Vec<Vec<u8>> = common::walk(&contexts)
        .into_iter()
        .filter(|p| p.ends_with(".in"))
        .map(|p| std::fs::read(contexts.join(p)).unwrap())
        .collect();
    assert!(!seeds.is_empty());
    seeds.extend(
        [
            "",
            "@{k8s_version}",
            "#@if on\na\n#@else\nb\n#@end\n",
            "#@if cri == \"docker\"\n@{images}\n#@end\n",
            "{{or .RegistryURL \"sea.hub:5000\"}}",
        ]
        .map(|s| s.as_bytes().to_vec()),
    );
    seeds
}

#[test]
fn seeded_mutations_never_panic_the_version_parser_or_the_renderer() {
    // ROOTFS_MOUNT_FUZZ_RUNS=N runs longer by hand; CI runs the default.
    let runs: usize = std::env::var("ROOTFS_MOUNT_FUZZ_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let mut rng = Rng(0x00c0_ffee_d00d_f00d);
    let vars = fuzz_vars();
    let seeds = template_seeds();
    let (mut ok, mut errors) = (0, 0);
    for _ in 0..runs {
        let seed = &seeds[rng.index(seeds.len())];
        let input = mutate(&mut rng, seed);
        match render("fuzz.in", &input, &vars) {
            Ok(out) => {
                ok += 1;
                if !input.windows(2).any(|w| w == b"@{" || w == b"#@") {
                    assert_eq!(out, input, "plain text must pass through");
                }
            }
            Err(e) => {
                errors += 1;
                let shown = e.to_string();
                assert!(shown.starts_with("fuzz.in:"), "{shown}");
                assert!(shown.len() < 400, "error message too long: {shown}");
            }
        }
    }
    assert!(
        ok > 0 && errors > 0,
        "mutations too weak: {ok} ok, {errors} errors"
    );

    let version_seeds = ["v1.23.4", "1.13.0", "v1.31.1", "v0.0.0", "v999999999.1.2"];
    let mut accepted = 0;
    for _ in 0..runs {
        let seed = version_seeds[rng.index(version_seeds.len())].as_bytes();
        let input = mutate(&mut rng, seed);
        let text = String::from_utf8_lossy(&input);
        match KubeVersion::parse(&text) {
            Ok(v) => {
                accepted += 1;
                assert_eq!(
                    KubeVersion::parse(&v.to_string()),
                    Ok(v.clone()),
                    "{text:?}"
                );
            }
            Err(e) => assert!(e.len() < 1000 && !e.contains('\n'), "{e}"),
        }
    }
    assert!(accepted > 0);
    eprintln!(
        "stand-in fuzz: {runs} renderer inputs ({ok} rendered, {errors} refused), {runs} versions ({accepted} accepted)"
    );
}

/// Renderings are kept in memory: one that expands past 32 MiB, or renderings past
/// 128 MiB together (however many templates), refuse the mount, naming the bound. A
/// 2 MB template of `@{kube_images}` lines renders to about 40 MB.
#[test]
fn templates_that_render_past_the_memory_bounds_are_refused() {
    let cache = own_cache();
    let expanding = |lines: usize| "@{kube_images}\n".repeat(lines);
    let one_big = copy_contexts();
    std::fs::write(one_big.join("rootfs/etc/bomb.yml.in"), expanding(150_000)).unwrap();
    let many = copy_contexts();
    for i in 0..6 {
        std::fs::write(
            many.join(format!("rootfs/etc/part{i}.yml.in")),
            expanding(90_000),
        )
        .unwrap();
    }
    for (dir, needle) in [
        (&one_big, "renders to more than 32 MiB"),
        (&many, "more than 128 MiB in total"),
    ] {
        refused(
            &[
                os("--k8s"),
                os("v1.23.4"),
                os("--cache"),
                cache.as_os_str(),
                os("--contexts"),
                dir.as_os_str(),
            ],
            needle,
        );
    }
}

/// The 32 MiB bound of one rendering holds while rendering: a template of loops in loops
/// that would render to gigabytes is refused as soon as its output passes 32 MiB, under
/// an address-space limit it could not render whole within, and quickly.
#[test]
fn a_rendering_stops_at_its_bound_while_it_renders() {
    let cache = own_cache();
    let contexts = copy_contexts();
    // 7 images: 7^9 = 40 million lines of about 250 bytes (10 GB) if rendered whole.
    let depth = 9;
    let mut template = String::new();
    for i in 0..depth {
        template.push_str(&format!("#@for i{i} in kube_images\n"));
    }
    template.push_str("@{kube_images}\n");
    for _ in 0..depth {
        template.push_str("#@end\n");
    }
    std::fs::write(contexts.join("rootfs/etc/loops.yml.in"), template).unwrap();
    let mp = scratch("mp");
    let started = std::time::Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"ulimit -v 3000000; exec timeout 60 "$@""#)
        .arg("bash")
        .arg(BIN)
        .arg(&mp)
        .arg("--k8s")
        .arg("v1.23.4")
        .arg("--cache")
        .arg(&cache)
        .arg("--contexts")
        .arg(&contexts)
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted");
    assert!(!common::is_mounted(&mp));
    assert!(
        stderr.contains("loops.yml.in") && stderr.contains("renders to more than 32 MiB"),
        "{stderr}"
    );
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
}

/// Listings of tarball members are kept in memory: the cap of 200,000 members holds per
/// tarball, and all tarballs of a mount together list at most 250,000. Past that, the
/// tarball that would go over is refused (its members are not shown, logged), the
/// others are served.
#[test]
fn members_of_all_tarballs_together_are_bounded() {
    let cache = own_cache();
    let log = scratch("members-log").join("daemon.log");
    let script = r#"
import io, sys, tarfile
for prefix in ('many-a', 'many-b'):
    with tarfile.open(sys.argv[1] + '/' + prefix + '.tar.gz', 'w:gz', compresslevel=1) as t:
        for i in range(130000):
            t.addfile(tarfile.TarInfo('%s-%06d' % (prefix, i)), io.BytesIO(b''))
"#;
    let made = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(cache.join("oss/amd64/bin"))
        .status()
        .unwrap();
    assert!(made.success());
    let m = Mount::with_cache(
        &cache,
        &["--k8s", "v1.23.4", "--log-file", log.to_str().unwrap()],
    );
    let names: Vec<String> = std::fs::read_dir(m.path("amd64/bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let a = names.iter().filter(|n| n.starts_with("many-a-")).count();
    let b = names.iter().filter(|n| n.starts_with("many-b-")).count();
    assert_eq!(a, 130_000, "the first tarball is served whole");
    assert_eq!(b, 0, "the tarball past the total was listed");
    assert!(m.path("amd64/bin/kubeadm").is_file());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("250000 members in total"), "{logged}");
}
