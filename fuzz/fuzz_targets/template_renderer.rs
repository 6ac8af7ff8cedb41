//! The build-time template renderer. It may refuse a template, naming `file:line`, but
//! never panics, and text without template syntax passes through byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rootfs_mount::render::{render, Value, Vars};

fn vars() -> Vars {
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

fuzz_target!(|data: &[u8]| {
    match render("fuzz.in", data, &vars()) {
        Ok(out) => {
            if !data.windows(2).any(|w| w == b"@{" || w == b"#@") {
                assert_eq!(out, data);
            }
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.in:")),
    }
});
