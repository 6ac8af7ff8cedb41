//! Embeds `contexts/` into the binary: an installed `rootfs-mount` needs no files beside it.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, std::path::PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        if meta.is_dir() {
            walk(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).expect("under root");
            out.push((rel.to_string_lossy().into_owned(), path));
        }
    }
}

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest).join("contexts");
    println!("cargo:rerun-if-changed=contexts");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let mut files = Vec::new();
    walk(&root, &root, &mut files);

    // Default: 2026-01-01T00:00:00Z, so that a build without SOURCE_DATE_EPOCH is reproducible too.
    let epoch: u64 = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_767_225_600);

    let mut code = String::new();
    writeln!(code, "pub const BUILD_EPOCH: u64 = {epoch};").unwrap();
    writeln!(code, "pub static FILES: &[EmbeddedFile] = &[").unwrap();
    for (rel, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let meta = std::fs::symlink_metadata(path).expect("metadata");
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(path).expect("readlink");
            writeln!(
                code,
                "    EmbeddedFile {{ path: {rel:?}, data: b\"\", mode: 0o777, link: Some({:?}) }},",
                target.to_string_lossy()
            )
            .unwrap();
        } else {
            let mode = meta.permissions().mode() & 0o7777;
            writeln!(
                code,
                "    EmbeddedFile {{ path: {rel:?}, data: include_bytes!({:?}), mode: {mode:#o}, link: None }},",
                path.display().to_string()
            )
            .unwrap();
        }
    }
    writeln!(code, "];").unwrap();
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("embedded_contexts.rs");
    std::fs::write(out, code).expect("write embedded_contexts.rs");
}
