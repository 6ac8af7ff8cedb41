//! The index file parser and the reads it allows, on hostile index files: a valid index
//! (with a tar listing) is damaged where the input says, its checksums are made right
//! again (else the damage would just be refused), and then it is parsed and read
//! through. Nothing may panic; what parses must only ever fail reads cleanly.
#![no_main]

use std::io::{Cursor, Write};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use rootfs_mount::archive::gzip_index::InflateCursor;
use rootfs_mount::archive::index_file::{parse_index, write_index, ArchiveIdentity};

const HEADER_LEN: usize = 128;

/// A small tarball and a valid index of it, made once.
fn base() -> &'static (Vec<u8>, Vec<u8>) {
    static BASE: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut b = tar::Builder::new(Vec::new());
        for (i, name) in ["a/tool", "b/other", "c/third"].iter().enumerate() {
            let data: Vec<u8> = (0..100_000u32)
                .map(|x| (x.wrapping_mul(i as u32 + 7) >> 3) as u8)
                .collect();
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            b.append_data(&mut h, name, &data[..]).expect("tar");
        }
        let tar = b.into_inner().expect("tar");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let identity = ArchiveIdentity {
            size: gz.len() as u64,
            mtime_sec: 0,
            mtime_nsec: 0,
            head_crc: 0,
        };
        let mut index = Cursor::new(Vec::new());
        write_index(&mut index, &&gz[..], &identity, 32 * 1024, true).expect("index");
        (gz, index.into_inner())
    })
}

fn crc(bytes: &[u8]) -> [u8; 4] {
    let mut c = flate2::Crc::new();
    c.update(bytes);
    c.sum().to_le_bytes()
}

fuzz_target!(|data: &[u8]| {
    let (gz, index) = base();
    let mut bytes = index.clone();
    // Each 3 input bytes: a position (16 bits) and a byte to XOR there.
    for edit in data.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % bytes.len();
        bytes[at] ^= edit[2];
    }
    if data.len() % 3 == 1 {
        // Sometimes cut the file short too.
        bytes.truncate(bytes.len() - usize::from(data[data.len() - 1]) % 64);
    }
    if bytes.len() >= HEADER_LEN {
        let body = crc(&bytes[HEADER_LEN..]);
        bytes[88..92].copy_from_slice(&body);
        let header = crc(&bytes[..HEADER_LEN - 4]);
        bytes[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&header);
    }
    let Some(parsed) = parse_index(bytes) else {
        return;
    };
    let mut cursor = InflateCursor::new().expect("cursor");
    let mut buf = vec![0u8; 50_000];
    let archive: &[u8] = gz;
    for p in parsed.gzip.points().to_vec() {
        let _ = parsed.gzip.read_at(&archive, &mut cursor, p.out, &mut buf);
        let _ = parsed
            .gzip
            .read_at(&archive, &mut cursor, p.out + 1000, &mut buf);
    }
    if let Some(listing) = &parsed.listing {
        for m in &listing.members {
            let _ = parsed.gzip.read_at(
                &archive,
                &mut cursor,
                m.data_offset,
                &mut buf[..m.size.min(50_000) as usize],
            );
        }
    }
});
