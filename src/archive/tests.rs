//! Unit tests of the archive core: random reads against the reference bytes, multi-member
//! gzip, listings through the index, persistence, corrupt and hostile archives.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::gzip_index::{scan, InflateCursor, ScanError};
use super::index_file::{build_in_memory, ArchiveIdentity, BuildError, IndexOrigin, IndexStore};
use super::*;
use crate::test_support::{scratch, Rng};

/// Bytes that compress unevenly: text runs, random runs, long zero runs.
fn mixed_data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let run = 1 + rng.below(100_000) as usize;
        match rng.below(3) {
            0 => {
                let line = format!(
                    "line {} of some fairly compressible text\n",
                    rng.below(1000)
                );
                let end = out.len() + run;
                while out.len() < end {
                    out.extend_from_slice(line.as_bytes());
                }
            }
            1 => out.extend((0..run).map(|_| rng.next() as u8)),
            _ => out.resize(out.len() + run, 0),
        }
    }
    out.truncate(len);
    out
}

fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::new(level));
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// What bgzip and `pigz --independent`-style tools make: one member per chunk.
fn multi_member(data: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in data.chunks(chunk) {
        out.extend_from_slice(&gzip(part, 6));
    }
    // An empty member, as bgzip ends its files.
    out.extend_from_slice(&gzip(b"", 6));
    out
}

fn identity_of(bytes: &[u8]) -> ArchiveIdentity {
    let mut crc = flate2::Crc::new();
    crc.update(&bytes[..bytes.len().min(index_file::HEAD_BYTES)]);
    ArchiveIdentity {
        size: bytes.len() as u64,
        mtime_sec: 0,
        mtime_nsec: 0,
        head_crc: crc.sum(),
    }
}

fn index_of(gz: &[u8], span: u64, with_listing: bool) -> index_file::LoadedIndex {
    build_in_memory(&gz, &identity_of(gz), span, with_listing).unwrap_or_else(|e| panic!("{e:?}"))
}

fn check_random_reads(gz: &[u8], reference: &[u8], span: u64, reads: usize, seed: u64) {
    let index = index_of(gz, span, false).gzip;
    assert_eq!(index.decompressed_size(), reference.len() as u64);
    let mut rng = Rng(seed);
    let mut cursor = InflateCursor::new().unwrap();
    let mut fresh = InflateCursor::new().unwrap();
    for i in 0..reads {
        let pos = rng.below(reference.len() as u64 + 10);
        let len = 1 + rng.below(if i % 4 == 0 { 300_000 } else { 5_000 }) as usize;
        let mut buf = vec![0u8; len];
        // The shared cursor goes forwards and backwards; the fresh one always seeks.
        let n = index.read_at(&gz, &mut cursor, pos, &mut buf).unwrap();
        let start = (pos as usize).min(reference.len());
        let end = (start + len).min(reference.len());
        assert_eq!(n, end - start, "read {i} at {pos}");
        assert!(
            buf[..n] == reference[start..end],
            "bytes differ for read {i} at {pos}+{len}"
        );
        let mut again = vec![0u8; len];
        if i % 2 == 0 {
            fresh = InflateCursor::new().unwrap();
        }
        assert_eq!(index.read_at(&gz, &mut fresh, pos, &mut again).unwrap(), n);
        assert!(again[..n] == reference[start..end]);
    }
    // Sequential reads in kernel-sized pieces give the whole stream.
    let mut whole = Vec::new();
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = index
            .read_at(&gz, &mut cursor, whole.len() as u64, &mut buf)
            .unwrap();
        if n == 0 {
            break;
        }
        whole.extend_from_slice(&buf[..n]);
    }
    assert!(whole == reference);
}

#[test]
fn random_reads_match_the_reference() {
    let data = mixed_data(3 << 20, 7);
    for level in [1, 6, 9] {
        check_random_reads(&gzip(&data, level), &data, 64 * 1024, 200, level as u64);
    }
}

#[test]
fn points_are_spaced_by_the_span() {
    let data = mixed_data(4 << 20, 11);
    let summary = scan(
        &mut &gzip(&data, 6)[..],
        256 * 1024,
        &mut std::io::sink(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(summary.points[0].out, 0);
    assert_eq!(summary.points[0].window_len, 0);
    assert!(summary.points.len() >= 8, "{}", summary.points.len());
    for pair in summary.points.windows(2) {
        assert!(pair[1].out - pair[0].out >= 256 * 1024);
    }
    assert_eq!(summary.total_out, data.len() as u64);
}

#[test]
fn multi_member_gzip_reads_across_members() {
    let data = mixed_data(2 << 20, 3);
    // bgzip-sized members, and members larger than a span.
    for chunk in [65_280, 700_000] {
        let gz = multi_member(&data, chunk);
        let summary = scan(&mut &gz[..], 64 * 1024, &mut std::io::sink(), &mut |_| {}).unwrap();
        assert_eq!(summary.members as usize, data.len().div_ceil(chunk) + 1);
        check_random_reads(&gz, &data, 64 * 1024, 150, chunk as u64);
    }
    // Zero padding after the last member is ignored, as gzip does.
    let mut padded = multi_member(&data[..100_000], 30_000);
    padded.extend_from_slice(&[0u8; 5000]);
    check_random_reads(&padded, &data[..100_000], 32 * 1024, 50, 5);
}

#[test]
fn corrupt_truncated_and_foreign_archives_are_refused() {
    let data = mixed_data(1 << 20, 5);
    let gz = gzip(&data, 6);
    let try_scan = |bytes: &[u8]| {
        scan(
            &mut &bytes[..],
            64 * 1024,
            &mut std::io::sink(),
            &mut |_| {},
        )
    };
    let is_corrupt = |r: Result<_, ScanError>| matches!(r, Err(ScanError::Corrupt(_)));
    // Truncated anywhere.
    for cut in [1, 10, 100, gz.len() / 2, gz.len() - 9, gz.len() - 1] {
        assert!(is_corrupt(try_scan(&gz[..cut])), "cut at {cut}");
    }
    // Flipped bytes in the data or the CRC trailer.
    let mut rng = Rng(99);
    for _ in 0..20 {
        let mut bad = gz.clone();
        let at = 20 + rng.below(gz.len() as u64 - 20) as usize;
        bad[at] ^= 1 << rng.below(8);
        assert!(is_corrupt(try_scan(&bad)), "flip at {at}");
    }
    // Not gzip at all, and empty.
    assert!(is_corrupt(try_scan(b"PK\x03\x04 a zip file")));
    assert!(is_corrupt(try_scan(b"")));
    // Garbage after the last member is left out, as gzip and GNU tar do ("trailing
    // garbage ignored"): the data before it is whole, and its offset is reported.
    let whole = try_scan(&gz).unwrap();
    let mut trailing = gz.clone();
    trailing.extend_from_slice(b"junk");
    let scanned = try_scan(&trailing).unwrap();
    assert_eq!(scanned.total_out, whole.total_out);
    assert_eq!(scanned.trailing_garbage, Some(gz.len() as u64));
    assert_eq!(whole.trailing_garbage, None);
}

#[test]
fn a_damaged_index_or_a_changed_archive_fails_reads_cleanly() {
    let data = mixed_data(1 << 20, 8);
    let gz = gzip(&data, 6);
    let index = index_of(&gz, 64 * 1024, false).gzip;
    // The archive replaced by other bytes of the same size: reads fail, never panic.
    let mut other = gz.clone();
    for b in other[gz.len() / 3..].iter_mut() {
        *b = b.wrapping_mul(7).wrapping_add(1);
    }
    let mut cursor = InflateCursor::new().unwrap();
    let mut buf = vec![0u8; 200_000];
    let mut failures = 0;
    for pos in (0..data.len() as u64).step_by(100_000) {
        match index.read_at(&other, &mut cursor, pos, &mut buf) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
                failures += 1;
            }
        }
    }
    assert!(failures > 0);
    // A short archive.
    assert!(index
        .read_at(
            &&gz[..gz.len() / 2],
            &mut InflateCursor::new().unwrap(),
            900_000,
            &mut buf
        )
        .is_err());
}

/// A tar made by the `tar` crate, with the given files.
fn tar_of(files: &[(&str, Vec<u8>, u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn listing_through_the_index_gives_member_bytes() {
    let files = vec![
        ("tool/bin/crictl", mixed_data(900_000, 1), 0o755),
        ("tool/README", b"read me\n".to_vec(), 0o644),
        ("tool/bin/big", mixed_data(2_500_000, 2), 0o700),
        ("empty", Vec::new(), 0o600),
    ];
    let tar = tar_of(&files);
    for gz in [gzip(&tar, 6), multi_member(&tar, 100_000)] {
        let loaded = index_of(&gz, 128 * 1024, true);
        let listing = loaded.listing.unwrap();
        assert_eq!(listing.members.len(), files.len());
        let mut cursor = InflateCursor::new().unwrap();
        for (name, data, mode) in &files {
            let m = listing.get(Path::new(name)).unwrap();
            assert_eq!(
                (m.size, m.mode, m.mtime, m.kind),
                (data.len() as u64, *mode, 1_700_000_000, MemberKind::File)
            );
            let mut buf = vec![0u8; data.len()];
            assert_eq!(
                loaded
                    .gzip
                    .read_at(&gz, &mut cursor, m.data_offset, &mut buf)
                    .unwrap(),
                data.len()
            );
            assert!(&buf == data, "{name}");
        }
    }
}

#[test]
fn a_gzip_that_is_not_a_tar_fails_its_listing_only() {
    let gz = gzip(&b"plain text, not a tar archive\n".repeat(400), 6);
    assert!(matches!(
        build_in_memory(&gz, &identity_of(&gz), 64 * 1024, true),
        Err(BuildError::Archive { .. })
    ));
    // Without a listing (registry.tar's decompressed view) it is fine.
    assert_eq!(
        index_of(&gz, 64 * 1024, false).gzip.decompressed_size(),
        12_000
    );
}

#[test]
fn a_corrupt_tarball_keeps_what_was_listed_before_the_fault() {
    let files = vec![
        ("a", mixed_data(300_000, 1), 0o755),
        ("b", mixed_data(300_000, 2), 0o755),
    ];
    let tar = tar_of(&files);
    let gz = gzip(&tar, 6);
    let cut = &gz[..gz.len() * 3 / 4];
    match build_in_memory(&cut, &identity_of(cut), 64 * 1024, true) {
        Err(BuildError::Archive {
            partial: Some(l),
            message,
        }) => {
            assert!(message.contains("truncated"), "{message}");
            assert_eq!(l.members.len(), 2);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn malicious_members_are_refused_and_the_rest_served() {
    // Names set in the raw header bytes: the tar crate refuses to write these itself.
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("../../etc/evil", &b"evil"[..]),
        ("/abs/evil", b"evil"),
        ("ok/fine", b"fine"),
    ] {
        let mut h = tar::Header::new_ustar();
        h.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let listing = index_of(&gzip(&tar, 6), 64 * 1024, true).listing.unwrap();
    let names: Vec<_> = listing.members.iter().map(|m| m.path.clone()).collect();
    assert_eq!(names, [PathBuf::from("ok/fine")]);
    assert_eq!(listing.refused, 2);
}

fn lazy(path: &Path, store: &Arc<IndexStore>, with_listing: bool) -> LazyArchive {
    let p = path.to_path_buf();
    LazyArchive::new(
        path.to_path_buf(),
        Box::new(move || Ok(Box::new(File::open(&p)?) as Box<dyn super::ArchiveSource>)),
        store.clone(),
        with_listing,
    )
}

#[test]
fn indexes_are_persisted_reused_and_rebuilt_when_the_archive_changes() {
    let dir = scratch("persist");
    let archive = dir.join("tool.tar.gz");
    let tar = tar_of(&[("tool", mixed_data(2_000_000, 9), 0o755)]);
    std::fs::write(&archive, gzip(&tar, 6)).unwrap();
    let store = IndexStore::with_span(dir.join("index"), 256 * 1024);
    let open = || File::open(&archive).unwrap();

    let (first, origin) = store.load_or_build(&archive, &open(), true).unwrap();
    assert_eq!(origin, IndexOrigin::Written);
    let index_path = store.index_path(&archive);
    assert!(index_path.starts_with(dir.join("index")));
    let index_size = std::fs::metadata(&index_path).unwrap().len();
    assert!(index_size < 100_000, "{index_size}");
    let (again, origin) = store.load_or_build(&archive, &open(), true).unwrap();
    assert_eq!(origin, IndexOrigin::Reused);
    assert_eq!(again.gzip.points(), first.gzip.points());
    assert_eq!(again.listing, first.listing);
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(dir.join("index")).unwrap().count(), 1);

    // A changed archive (same name) gets a new index.
    let tar2 = tar_of(&[("tool", mixed_data(1_000_000, 10), 0o755)]);
    std::fs::write(&archive, gzip(&tar2, 6)).unwrap();
    let (changed, origin) = store.load_or_build(&archive, &open(), true).unwrap();
    assert_eq!(origin, IndexOrigin::Written);
    assert_eq!(changed.listing.unwrap().members[0].size, 1_000_000);

    // A damaged index file is rebuilt, not trusted.
    let mut bytes = std::fs::read(&index_path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&index_path, &bytes).unwrap();
    assert_eq!(
        store.load_or_build(&archive, &open(), true).unwrap().1,
        IndexOrigin::Written
    );
    // So is a truncated one.
    std::fs::write(&index_path, &bytes[..100]).unwrap();
    assert_eq!(
        store.load_or_build(&archive, &open(), true).unwrap().1,
        IndexOrigin::Written
    );

    // An index folder that cannot be made: in memory, and it still reads.
    let blocked = IndexStore::new(dir.join("tool.tar.gz").join("index"));
    let (mem, origin) = blocked.load_or_build(&archive, &open(), true).unwrap();
    assert_eq!(origin, IndexOrigin::InMemory);
    let member = mem.listing.unwrap().members[0].clone();
    let mut buf = vec![0u8; 1000];
    let mut cursor = InflateCursor::new().unwrap();
    mem.gzip
        .read_at(
            &open(),
            &mut cursor,
            member.data_offset + member.size - 1000,
            &mut buf,
        )
        .unwrap();
    assert!(
        buf == tar2[(member.data_offset + member.size - 1000) as usize
            ..(member.data_offset + member.size) as usize]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lazy_archives_serve_concurrent_readers_and_remember_faults() {
    let dir = scratch("lazy");
    let data = mixed_data(3_000_000, 12);
    let path = dir.join("registry.tar.gz");
    std::fs::write(&path, gzip(&data, 6)).unwrap();
    let store = Arc::new(IndexStore::with_span(dir.join("index"), 128 * 1024));
    let archive = Arc::new(lazy(&path, &store, false));
    let data = Arc::new(data);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (archive, data) = (archive.clone(), data.clone());
            std::thread::spawn(move || {
                let a = archive.get().unwrap();
                let slice = ArchiveSlice {
                    archive: a,
                    start: 0,
                    len: data.len() as u64,
                };
                let mut rng = Rng(t + 1);
                for _ in 0..40 {
                    let pos = rng.below(data.len() as u64);
                    let got = slice.read(pos, 70_000).unwrap();
                    assert!(got[..] == data[pos as usize..(pos as usize + 70_000).min(data.len())]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(archive.get().unwrap().check_unchanged().is_ok());

    let bad = dir.join("bad.tar.gz");
    let mut gz = gzip(&data, 6);
    let n = gz.len();
    gz[n / 2] ^= 0xff;
    std::fs::write(&bad, gz).unwrap();
    let broken = lazy(&bad, &store, false);
    let fault = broken.get().unwrap_err();
    assert!(!fault.message.is_empty());
    // Remembered: the same fault, not a second build.
    assert!(Arc::ptr_eq(&fault, &broken.get().unwrap_err()));
    // A faulty index is never written.
    assert!(!store.index_path(&bad).exists());

    // An archive changed in place after indexing: EIO (reported), no panic.
    let a = archive.get().unwrap();
    std::fs::write(&path, b"not the same any more").unwrap();
    let err = a.check_unchanged().unwrap_err();
    assert!(is_reported(&err));
    let slice = ArchiveSlice {
        archive: a,
        start: 0,
        len: data.len() as u64,
    };
    assert!(slice.read(2_000_000, 1000).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_read_failure_is_tried_again_and_a_content_fault_is_not() {
    let dir = scratch("retry");
    let data = mixed_data(500_000, 3);
    let path = dir.join("registry.tar.gz");
    std::fs::write(&path, gzip(&data, 6)).unwrap();
    let store = Arc::new(IndexStore::with_span(dir.join("index"), 128 * 1024));
    // The first two opens fail as a store that is down would.
    let opens = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (p, counter) = (path.clone(), opens.clone());
    let archive = LazyArchive::new(
        path.clone(),
        Box::new(move || {
            if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
                return Err(io::Error::other("store down"));
            }
            Ok(Box::new(File::open(&p)?) as Box<dyn super::ArchiveSource>)
        }),
        store,
        false,
    );
    let first = archive.get().unwrap_err();
    assert!(first.retry_at.is_some(), "{}", first.message);
    // Remembered for a while: no second open at once.
    assert!(Arc::ptr_eq(&first, &archive.get().unwrap_err()));
    assert_eq!(opens.load(std::sync::atomic::Ordering::SeqCst), 1);
    std::thread::sleep(super::RETRY_READ_FAULT_AFTER);
    assert!(archive.get().is_err());
    std::thread::sleep(super::RETRY_READ_FAULT_AFTER);
    let served = archive.get().unwrap();
    assert_eq!(opens.load(std::sync::atomic::Ordering::SeqCst), 3);
    let slice = ArchiveSlice {
        archive: served,
        start: 0,
        len: data.len() as u64,
    };
    assert_eq!(slice.read(1000, 5000).unwrap(), data[1000..6000]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A seeded stand-in for the fuzz targets (fuzz/), run by every `cargo test`: mutated
/// tar streams, gzip archives and index files never make the readers panic, and what a
/// mutated archive still indexes reads back what flate2 decompresses.
#[test]
fn seeded_mutations_never_panic() {
    let files = vec![
        ("pkg/bin/tool", mixed_data(40_000, 21), 0o755),
        ("pkg/README", b"read me\n".to_vec(), 0o644),
        ("pkg/lib/x", mixed_data(9_000, 22), 0o644),
    ];
    let tar = tar_of(&files);
    let gz = multi_member(&tar, 20_000);
    let valid = {
        let mut out = std::io::Cursor::new(Vec::new());
        index_file::write_index(&mut out, &gz, &identity_of(&gz), 32 * 1024, true).unwrap();
        out.into_inner()
    };
    let mut rng = Rng(0xf0f0);
    let mutate = |rng: &mut Rng, base: &[u8]| {
        let mut m = base.to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(m.len() as u64) as usize;
            match rng.below(4) {
                0 => m[at] ^= 1 << rng.below(8),
                1 => m[at] = rng.next() as u8,
                2 => m.truncate(at.max(1)),
                _ => m.insert(at, rng.next() as u8),
            }
        }
        m
    };
    let runs = std::env::var("ROOTFS_MOUNT_FUZZ_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    for _ in 0..runs {
        let _ = tar_listing::list_tar(&mutate(&mut rng, &tar));

        let bad = mutate(&mut rng, &gz);
        if let Ok(index) = build_in_memory(&bad, &identity_of(&bad), 32 * 1024, true) {
            let mut reference = Vec::new();
            let flate = std::io::Read::read_to_end(
                &mut flate2::read::MultiGzDecoder::new(&bad[..]),
                &mut reference,
            );
            let total = index.gzip.decompressed_size();
            let mut cursor = InflateCursor::new().unwrap();
            let pos = rng.below(total + 1);
            let mut buf = vec![0u8; 10_000];
            let n = index
                .gzip
                .read_at(&bad, &mut cursor, pos, &mut buf)
                .unwrap();
            if flate.is_ok() && reference.len() as u64 >= total {
                assert!(buf[..n] == reference[pos as usize..pos as usize + n]);
            }
        }

        let mut damaged = mutate(&mut rng, &valid);
        if damaged.len() >= 128 {
            // Fix the checksums up, so the parser behind them is reached.
            let crc = |b: &[u8]| {
                let mut c = flate2::Crc::new();
                c.update(b);
                c.sum().to_le_bytes()
            };
            let body = crc(&damaged[128..]);
            damaged[88..92].copy_from_slice(&body);
            let header = crc(&damaged[..124]);
            damaged[124..128].copy_from_slice(&header);
        }
        if let Some(index) = index_file::parse_index(damaged) {
            let mut cursor = InflateCursor::new().unwrap();
            let mut buf = vec![0u8; 5_000];
            for p in index.gzip.points().to_vec() {
                let _ = index.gzip.read_at(&gz, &mut cursor, p.out, &mut buf);
            }
        }
    }
}
