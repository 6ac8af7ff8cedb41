//! The crate's structure, checked from its source: each top-level module imports only
//! modules below it in one declared order (so no import loop can come back), and every
//! `docs/DESIGN.md §N` reference in the code and README names a section that exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The top-level modules of `src/lib.rs`, lowest first: a module may use `crate::X`
/// only for an X listed before it. A new module gets its place here.
const LAYERS: &[&str] = &[
    // Test helpers (`#[cfg(test)]`), importing nothing of the crate.
    "test_support",
    // Foundations: system calls, fault records, archives read in place.
    "sys",
    "fault",
    // How the machine's idle CPUs wait (the price of a round trip).
    "host_idle",
    "archive",
    "embedded_contexts",
    // What the tree is made of.
    "render",
    "layers",
    "sealer",
    "versions",
    "values",
    "sources",
    // SHA256SUMS files: the cache's record, mirrors, a remote cache's listing.
    "sums",
    "mount_vars",
    // A cache held in an object store (a source of the layout, read by range).
    "remote",
    // The filesystem without FUSE, then the FUSE adapter.
    "upper",
    "tree",
    "fuse",
    // Lifecycle.
    "notify",
    "scratch",
    "state",
    "logging",
    "mounts",
    "daemon",
    // Commands over the tree.
    "oci",
    "layout",
    "fetch",
    "pack",
    "check",
    "cli",
];

/// Macros exported at the crate root, by the module that defines them.
const MACROS: &[(&str, &str)] = &[("fs_err", "tree")];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None`: the crate root, `main.rs`).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.iter().next()?.to_string_lossy().into_owned();
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(stem) => Some(stem.to_string()),
        None => Some(first),
    }
}

/// The code of a line, without its `//` comment (doc comments name modules freely).
fn code_of(line: &str) -> &str {
    let mut in_str = false;
    let bytes = line.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'"' if i == 0 || bytes[i - 1] != b'\\' => in_str = !in_str,
            b'/' if !in_str && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The top-level modules that `text` names through `crate::` (paths, and `use
/// crate::{a, b::c}` groups).
fn crate_uses(text: &str) -> BTreeSet<String> {
    let code: String = text.lines().map(|l| format!("{}\n", code_of(l))).collect();
    let mut used = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let macro_path = rest[..at].ends_with('$');
        let word_start = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if macro_path || word_start {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    used.insert(name);
                }
            }
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            used.insert(name);
        }
    }
    used
}

fn rank(module: &str) -> Option<usize> {
    let module = MACROS
        .iter()
        .find(|(m, _)| *m == module)
        .map_or(module, |(_, owner)| owner);
    LAYERS.iter().position(|m| *m == module)
}

#[test]
fn modules_import_only_downward() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let Some(own) = rank(&module) else {
            wrong.push(format!("{module} is not in LAYERS"));
            continue;
        };
        seen.insert(module.clone());
        let text = std::fs::read_to_string(file).unwrap();
        for used in crate_uses(&text) {
            match rank(&used) {
                Some(r) if r < own => {}
                Some(r) if r == own => {}
                Some(_) => wrong.push(format!(
                    "{} uses crate::{used}, which is above {module}",
                    file.strip_prefix(src()).unwrap().display()
                )),
                None => wrong.push(format!(
                    "{} uses crate::{used}, which is not in LAYERS",
                    file.strip_prefix(src()).unwrap().display()
                )),
            }
        }
    }
    // Every top-level module of lib.rs has its place.
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(name) = line.trim().strip_prefix("pub mod ") {
            let name = name.trim_end_matches([';', '{', ' ']);
            if rank(name).is_none() {
                wrong.push(format!("lib.rs declares {name}, which is not in LAYERS"));
            }
        }
    }
    assert!(seen.len() > 20, "found only {seen:?}");
    assert!(
        wrong.is_empty(),
        "imports against the layer order:\n{}",
        wrong.join("\n")
    );
}

/// The checker itself finds what it must (a test that cannot fail checks nothing).
#[test]
fn the_import_scanner_sees_paths_groups_and_skips_comments() {
    let text = "use crate::tree::{MergedTree};\nuse crate::{layers, fuse::Stats};\n\
                // crate::daemon in a comment\nlet x = crate::sys::euid(); /* */\n\
                $crate::tree::FsError::new(); let s = \"// not a comment\"; crate::oci::x();\n";
    let used: Vec<String> = crate_uses(text).into_iter().collect();
    assert_eq!(used, ["fuse", "layers", "oci", "sys", "tree"]);
    assert!(rank("tree") > rank("layers"));
    assert_eq!(rank("fs_err"), rank("tree"));
}

/// Every "docs/DESIGN.md §N" in the code and README names a section of docs/DESIGN.md,
/// and no reference still points at the SPEC that is not in the repository.
#[test]
fn design_references_name_sections_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let design = std::fs::read_to_string(root.join("docs/DESIGN.md")).unwrap();
    let sections: BTreeSet<String> = design
        .lines()
        .filter_map(|l| l.strip_prefix("## §"))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(sections.contains("8"), "sections: {sections:?}");
    let mut files = vec![root.join("README.md")];
    rust_files(&src(), &mut files);
    let mut wrong = Vec::new();
    let mut count = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.contains("SPEC §") {
                wrong.push(format!("{}:{}: SPEC §", file.display(), n + 1));
            }
            let mut rest = line;
            while let Some(at) = rest.find("DESIGN.md §") {
                rest = &rest[at + "DESIGN.md §".len()..];
                let number: String = rest.chars().take_while(char::is_ascii_digit).collect();
                count += 1;
                if !sections.contains(&number) {
                    wrong.push(format!("{}:{}: §{number}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(count >= 16, "only {count} references found");
    assert!(
        wrong.is_empty(),
        "references to missing sections:\n{}",
        wrong.join("\n")
    );
}
