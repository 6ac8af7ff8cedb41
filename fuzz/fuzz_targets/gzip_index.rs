//! The gzip seek index on arbitrary bytes, checked against flate2: when both accept the
//! stream, every read through the index (at offsets picked from the input) gives the
//! bytes that flate2 decompresses; when the index refuses it, nothing panics.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use rootfs_mount::archive::gzip_index::InflateCursor;
use rootfs_mount::archive::index_file::{build_in_memory, ArchiveIdentity};

/// Decompressed bytes beyond this are not compared (keeps each run fast).
const LIMIT: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    // A tiny span places many seek points; the first bytes pick it and the offsets.
    let span = 32 * 1024 + u64::from(u16::from_le_bytes([data[0], data[1]]));
    let seed = u64::from(data[2]) << 8 | u64::from(data[3]);
    let gz = &data[4..];
    let identity = ArchiveIdentity {
        size: gz.len() as u64,
        mtime_sec: 0,
        mtime_nsec: 0,
        head_crc: 0,
    };
    let Ok(index) = build_in_memory(&gz, &identity, span, data[2] & 1 == 1) else {
        return;
    };
    let total = index.gzip.decompressed_size();
    if total > LIMIT {
        return;
    }
    let mut reference = Vec::new();
    let decoded = flate2::read::MultiGzDecoder::new(gz)
        .take(LIMIT + 1)
        .read_to_end(&mut reference);
    if decoded.is_err() {
        // zlib and flate2 disagree only on streams flate2 refuses more strictly.
        return;
    }
    if reference.len() as u64 != total {
        // flate2 keeps going past trailing zeros differently; compare the common part.
        reference.truncate(total as usize);
    }
    let mut cursor = InflateCursor::new().expect("cursor");
    let mut x = seed | 1;
    for _ in 0..16 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let pos = x % (total + 1);
        let len = (x >> 32) as usize % 70_000;
        let mut buf = vec![0u8; len];
        let n = index
            .gzip
            .read_at(&gz, &mut cursor, pos, &mut buf)
            .expect("read through a valid index");
        let start = pos as usize;
        assert_eq!(
            &buf[..n],
            &reference[start..(start + len).min(reference.len())]
        );
    }
});
