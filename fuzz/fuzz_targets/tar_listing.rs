//! The tar lister on arbitrary bytes: never panics, and gives the same listing whatever
//! the sizes of the chunks it is fed (the first byte picks the chunk size).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rootfs_mount::archive::tar_listing::{list_tar, TarScanner};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let whole = list_tar(bytes);
    let mut scanner = TarScanner::new();
    for part in bytes.chunks(usize::from(chunk) + 1) {
        scanner.feed(part);
    }
    let chunked = scanner.finish();
    assert_eq!(whole.is_ok(), chunked.is_ok());
    let listing = match (&whole, &chunked) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            a
        }
        (Err((_, a)), Err((_, b))) => {
            assert_eq!(a, b);
            a
        }
        _ => unreachable!(),
    };
    for m in &listing.members {
        // Every listed member lies inside the stream, with a refused-free path.
        assert!(m.data_offset.checked_add(m.size).is_some());
        assert!(m.path.is_relative());
        assert!(!m
            .path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir)));
    }
});
