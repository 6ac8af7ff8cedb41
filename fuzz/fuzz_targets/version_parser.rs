//! The version parsers: `--k8s` strings and the `versions.yaml` data file. Neither may
//! panic; an accepted version prints as a string that parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rootfs_mount::versions::{KubeVersion, VersionFacts};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match KubeVersion::parse(&text) {
        Ok(v) => assert_eq!(KubeVersion::parse(&v.to_string()), Ok(v)),
        Err(e) => assert!(!e.contains('\n'), "multi-line error: {e}"),
    }
    if let Ok(facts) = VersionFacts::parse(data) {
        if let Ok(v) = KubeVersion::parse(&text) {
            let _ = facts.profile(&v, None, "calico");
        }
    }
});
