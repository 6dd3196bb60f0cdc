//! Unit tests of the spool's store: round trips, recovery, bounds, locks, damage.

use super::format::SegmentEntry;
use super::*;
use std::time::Duration;

pub(crate) fn record(i: u64) -> SpoolRecord {
    SpoolRecord {
        message_id: i,
        kind: if i % 3 == 0 {
            "use_allocation".into()
        } else {
            "report_call_chain".into()
        },
        frame: format!(r#"{{"type":"use_allocation","id":"{i}","payload":{{"allocationId":"a-{i}"}}}}"#),
        at_least_once: i % 2 == 0,
        first_sent_unix_ms: 1_700_000_000_000 + i,
        rewrites: (i % 4) as u32,
    }
}

/// Records of one size (for tests that compute offsets).
fn fixed(i: u64) -> SpoolRecord {
    SpoolRecord {
        message_id: i,
        ..record(0)
    }
}

fn tmp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ufsock-spool-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn appended_records_survive_a_reopen_in_order_and_released_ones_do_not() {
    let dir = tmp_dir("roundtrip");
    let (spool, recovery) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    assert!(recovery.records.is_empty());
    let keys: Vec<_> = (0..100).map(|i| spool.append(&record(i)).unwrap().key).collect();
    for key in keys.iter().step_by(2) {
        assert!(spool.release(*key));
    }
    assert!(!spool.release(keys[0]), "a second release is a no-op");
    smol::block_on(spool.close(deadline(Duration::from_secs(10)))).unwrap();
    let (spool, recovery) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    let got: Vec<_> = recovery.records.iter().map(|r| r.record.clone()).collect();
    let want: Vec<_> = (0..100).filter(|i| i % 2 == 1).map(record).collect();
    assert_eq!(got, want);
    assert!(recovery.damage.is_clean());
    let next = spool.append(&record(1000)).unwrap().key;
    assert!(
        next > *keys.last().unwrap(),
        "keys keep increasing across processes"
    );
    drop(spool);
    let _ = std::fs::remove_dir_all(&dir);
}

fn deadline(after: Duration) -> impl std::future::Future<Output = ()> {
    let timer = smol::Timer::after(after);
    async move {
        timer.await;
    }
}

#[test]
fn a_failing_disk_is_a_typed_error_and_keeps_what_was_written() {
    let dir = tmp_dir("diskfull");
    let (spool, _) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    let first = spool.append(&record(1)).unwrap();
    assert_eq!(
        smol::block_on(spool.wait_durable(first.mark, deadline(Duration::from_secs(5)))),
        Ok(true)
    );
    let pending = spool.append(&record(5)).unwrap();
    assert!(spool.release(pending.key), "its release waits in the buffer");
    spool.inject_write_error(std::io::ErrorKind::StorageFull);
    // The write happens in `append`: the caller learns of the full disk at once.
    let refused = spool.append(&record(2));
    assert!(
        matches!(
            refused,
            Err(SpoolError::WriteFailed {
                kind: std::io::ErrorKind::StorageFull,
                ..
            })
        ),
        "{refused:?}"
    );
    let waited = smol::block_on(spool.wait_durable(spool.written_mark(), deadline(Duration::from_secs(5))));
    assert!(
        matches!(waited, Err(SpoolError::WriteFailed { .. })),
        "{waited:?}"
    );
    assert!(matches!(
        spool.append(&record(3)),
        Err(SpoolError::WriteFailed { .. })
    ));
    assert!(matches!(
        spool.close_blocking(),
        Err(SpoolError::WriteFailed { .. })
    ));
    let (_spool, recovery) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    let got: Vec<_> = recovery.records.iter().map(|r| r.record.clone()).collect();
    // Record 5's release never reached the disk: it comes back (at least once), record 2
    // was refused and never written.
    assert_eq!(got, vec![record(1), record(5)], "every written record survives");
    assert_eq!(recovery.records[0].record, record(1));
    drop(_spool);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A segment built in memory, with the byte range of each record.
fn segment(n: u64) -> (Vec<u8>, Vec<(std::ops::Range<usize>, SegmentEntry)>) {
    let mut bytes = Vec::new();
    format::encode_header(&mut bytes, 0);
    let mut entries = Vec::new();
    for i in 0..n {
        let start = bytes.len();
        let entry = if i % 5 == 4 {
            format::encode_release(&mut bytes, SpoolKey(i - 2));
            SegmentEntry::Release(SpoolKey(i - 2))
        } else {
            format::encode_append(&mut bytes, SpoolKey(i), &record(i));
            SegmentEntry::Append(SpoolKey(i), record(i))
        };
        entries.push((start..bytes.len(), entry));
    }
    (bytes, entries)
}

#[test]
fn a_segment_cut_at_any_byte_reads_every_complete_record_and_counts_the_torn_one() {
    let (bytes, entries) = segment(40);
    for cut in 0..=bytes.len() {
        let scan = scan_segment(&bytes[..cut]).unwrap();
        let complete: Vec<_> = entries
            .iter()
            .filter(|(r, _)| r.end <= cut)
            .map(|(_, e)| e.clone())
            .collect();
        assert_eq!(scan.entries, complete, "cut at {cut}");
        let on_boundary = cut == 0 || cut == format::HEADER_LEN || entries.iter().any(|(r, _)| r.end == cut);
        let expect_torn = u64::from(!on_boundary && cut > format::HEADER_LEN);
        assert_eq!(
            scan.damage.torn_tails, expect_torn,
            "cut at {cut}: {:?}",
            scan.damage
        );
        assert_eq!(scan.damage.corrupt_regions, 0, "cut at {cut}");
        assert_eq!(
            scan.damage.damaged_headers,
            u64::from(cut > 0 && cut < format::HEADER_LEN)
        );
        check_reader(&bytes[..cut]);
    }
}

#[test]
fn flipped_bytes_lose_only_the_records_they_hit_and_are_counted() {
    let (bytes, entries) = segment(60);
    let mut rng = fastrand::Rng::with_seed(0x5b001);
    for round in 0..400 {
        let mut damaged = bytes.clone();
        let flips: Vec<usize> = (0..rng.usize(1..=3)).map(|_| rng.usize(..bytes.len())).collect();
        for &at in &flips {
            damaged[at] ^= rng.u8(1..=255);
        }
        let scan = scan_segment(&damaged).unwrap();
        let hit = |r: &std::ops::Range<usize>| flips.iter().any(|f| r.contains(f));
        for (range, entry) in &entries {
            if !hit(range) {
                assert!(
                    scan.entries.contains(entry),
                    "round {round}: intact record at {range:?} lost"
                );
            }
        }
        for entry in &scan.entries {
            assert!(
                entries.iter().any(|(_, e)| e == entry),
                "round {round}: a record never written"
            );
        }
        let records_hit = entries.iter().filter(|(r, _)| hit(r)).count() as u64;
        let header_hit = flips.iter().any(|&f| f < format::HEADER_LEN);
        assert_eq!(
            scan.damage.damaged_headers,
            u64::from(header_hit),
            "round {round}"
        );
        if records_hit > 0 {
            let d = scan.damage;
            assert!(
                d.corrupt_regions + d.torn_tails >= 1 && d.skipped_bytes > 0,
                "round {round}: {d:?}"
            );
        }
        check_reader(&damaged);
    }
}

#[test]
fn truncating_the_last_segment_at_every_byte_of_its_last_records_keeps_the_others() {
    let dir = tmp_dir("truncate");
    let (spool, _) = Spool::open(SpoolOptions::new(&dir).sync(SyncPolicy::Never)).unwrap();
    for i in 0..30 {
        spool.append(&fixed(i)).unwrap();
    }
    spool.close_blocking().unwrap();
    let seg = store::segment_path(&dir, 0);
    let full = std::fs::read(&seg).unwrap();
    let last_two = 2 * format::append_len(&fixed(29));
    let work = tmp_dir("truncate-work");
    for cut in full.len() - last_two..=full.len() {
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(store::segment_path(&work, 0), &full[..cut]).unwrap();
        let (spool, recovery) = Spool::open(SpoolOptions::new(&work).sync(SyncPolicy::Never)).unwrap();
        let got: Vec<_> = recovery.records.iter().map(|r| r.record.message_id).collect();
        let complete = (cut - format::HEADER_LEN) / format::append_len(&fixed(0));
        assert_eq!(got, (0..complete as u64).collect::<Vec<_>>(), "cut at {cut}");
        let torn = (cut - format::HEADER_LEN) % format::append_len(&fixed(0)) != 0;
        assert_eq!(recovery.damage.torn_tails, u64::from(torn), "cut at {cut}");
        // The next key never reuses a key of a record that may have been torn.
        assert!(spool.append(&record(99)).unwrap().key.0 >= complete as u64);
        spool.close_blocking().unwrap();
    }
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_segment_of_another_version_is_refused_and_left_untouched() {
    let dir = tmp_dir("version");
    std::fs::create_dir_all(&dir).unwrap();
    let mut header = Vec::new();
    format::encode_header(&mut header, 7);
    header[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32fast::hash(&header[..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header.extend_from_slice(b"records of a future format");
    let path = store::segment_path(&dir, 3);
    std::fs::write(&path, &header).unwrap();
    let err = Spool::open(SpoolOptions::new(&dir)).unwrap_err();
    assert_eq!(
        err,
        SpoolError::IncompatibleVersion {
            path: path.clone(),
            found: 2,
            supported: FORMAT_VERSION
        }
    );
    assert_eq!(std::fs::read(&path).unwrap(), header);
    assert_eq!(
        list_files(&dir),
        vec!["0000000000000003.seg".to_string(), "spool.lock".to_string()]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn list_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_second_opener_gets_locked_until_the_first_closes() {
    let dir = tmp_dir("lock");
    let (spool, _) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    assert_eq!(
        Spool::open(SpoolOptions::new(&dir)).unwrap_err(),
        SpoolError::Locked { dir: dir.clone() }
    );
    assert!(inspect(&dir).unwrap().in_use);
    spool.append(&record(1)).unwrap();
    drop(spool);
    let (spool, recovery) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    assert_eq!(
        recovery.records.len(),
        1,
        "a drop without close keeps what was appended"
    );
    assert!(inspect(&dir).unwrap().in_use);
    spool.close_blocking().unwrap();
    assert!(!inspect(&dir).unwrap().in_use);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unwritable_directory_is_a_typed_error() {
    // A regular file where the directory should be: nothing can be created in it (this holds
    // for root too, unlike permission bits).
    let path = tmp_dir("not-a-dir");
    std::fs::write(&path, b"x").unwrap();
    let err = Spool::open(SpoolOptions::new(path.join("spool"))).unwrap_err();
    assert!(
        matches!(err, SpoolError::Io { .. } | SpoolError::NotWritable { .. }),
        "{err:?}"
    );
    let _ = std::fs::remove_file(&path);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let dir = tmp_dir("read-only");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        let probe = std::fs::File::create(dir.join("probe"));
        if probe.is_err() {
            let err = Spool::open(SpoolOptions::new(&dir)).unwrap_err();
            assert!(matches!(err, SpoolError::NotWritable { .. }), "{err:?}");
        } else {
            eprintln!("running as root: permission bits do not stop writes; read-only case not exercised");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_full_spool_refuses_with_a_typed_counted_error_and_recovers_as_records_are_released() {
    let dir = tmp_dir("full");
    let one = format::append_len(&fixed(0)) as u64;
    let (spool, _) = Spool::open(SpoolOptions::new(&dir).max_bytes(10 * one)).unwrap();
    let keys: Vec<_> = (0..10).map(|i| spool.append(&fixed(i)).unwrap().key).collect();
    let err = spool.append(&fixed(10)).unwrap_err();
    assert_eq!(
        err,
        SpoolError::Full {
            live_bytes: 10 * one,
            record_bytes: one,
            max_bytes: 10 * one
        }
    );
    assert_eq!(spool.stats().refused_full, 1);
    assert!(spool.release(keys[3]));
    spool.append(&fixed(10)).unwrap();
    assert!(spool.append(&fixed(11)).is_err());
    assert_eq!(spool.stats().refused_full, 2);
    spool.close_blocking().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn disk_stays_bounded_under_a_confirmed_stream_even_with_one_record_pinned() {
    let dir = tmp_dir("bounded");
    let segment_bytes = 16 << 10;
    let options = SpoolOptions::new(&dir)
        .segment_bytes(segment_bytes)
        .sync(SyncPolicy::Never);
    let (spool, _) = Spool::open(options.clone()).unwrap();
    let pinned = spool.append(&record(0)).unwrap().key;
    let mut window = std::collections::VecDeque::new();
    let mut peak = 0;
    for i in 1..20_000 {
        window.push_back(spool.append(&record(i)).unwrap().key);
        if window.len() > 50 {
            assert!(spool.release(window.pop_front().unwrap()));
        }
        if i % 500 == 0 {
            // Once the syncer caught up (compaction is its work, in its own rounds: a loaded
            // machine may run them after the durable mark moved), the bound holds.
            let written = spool.written_mark();
            assert_eq!(
                smol::block_on(spool.wait_durable(written, deadline(Duration::from_secs(10)))),
                Ok(true)
            );
            let give_up = std::time::Instant::now() + Duration::from_secs(10);
            let stats = loop {
                let stats = spool.stats();
                let within = stats.disk_bytes <= 2 * stats.live_bytes + 4 * segment_bytes;
                if within || std::time::Instant::now() > give_up {
                    break stats;
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            peak = peak.max(stats.disk_bytes);
            assert!(
                stats.disk_bytes <= 2 * stats.live_bytes + 4 * segment_bytes,
                "at {i}: {stats:?}"
            );
        }
    }
    let stats = spool.stats();
    assert!(stats.compacted > 0 && stats.segments_deleted > 50, "{stats:?}");
    let written = spool.written_mark();
    assert_eq!(
        smol::block_on(spool.wait_durable(written, deadline(Duration::from_secs(10)))),
        Ok(true)
    );
    // Close: the writer carries out every queued deletion before it stops.
    spool.close_blocking().unwrap();
    let on_disk: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        on_disk <= 2 * stats.live_bytes + 4 * segment_bytes,
        "{on_disk} bytes on disk, peak {peak}"
    );
    let (spool, recovery) = Spool::open(options).unwrap();
    assert_eq!(recovery.records.len(), 51);
    assert_eq!(recovery.records[0].key, pinned);
    assert_eq!(recovery.records[0].record, record(0));
    assert!(recovery.damage.is_clean());
    spool.close_blocking().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_policy_reports_durability_and_keeps_appends_from_many_threads_in_key_order() {
    for sync in [
        SyncPolicy::Group(Duration::from_millis(2)),
        SyncPolicy::EverySend,
        SyncPolicy::Never,
    ] {
        let dir = tmp_dir("threads");
        let (spool, _) = Spool::open(SpoolOptions::new(&dir).sync(sync)).unwrap();
        let spool = std::sync::Arc::new(spool);
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let spool = spool.clone();
                std::thread::spawn(move || {
                    (0..200)
                        .map(|i| {
                            let appended = spool.append(&record(t * 1000 + i)).unwrap();
                            let durable = smol::block_on(
                                spool.wait_durable(appended.mark, deadline(Duration::from_secs(10))),
                            );
                            assert_eq!(durable, Ok(true), "{sync:?}");
                            (appended.key, t * 1000 + i)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<_> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        all.sort();
        std::sync::Arc::try_unwrap(spool)
            .unwrap()
            .close_blocking()
            .unwrap();
        let (spool, recovery) = Spool::open(SpoolOptions::new(&dir)).unwrap();
        let got: Vec<_> = recovery
            .records
            .iter()
            .map(|r| (r.key, r.record.message_id))
            .collect();
        assert_eq!(got, all, "{sync:?}");
        spool.close_blocking().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn inspect_counts_records_per_type_and_state_without_changing_the_spool() {
    let dir = tmp_dir("inspect");
    let (spool, _) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    let mut unsent = record(3);
    unsent.first_sent_unix_ms = 0;
    unsent.rewrites = 0;
    spool.append(&unsent).unwrap(); // use_allocation, unsent
    spool.append(&record(1)).unwrap(); // report_call_chain, resent (rewrites 1)
    let k = spool.append(&record(4)).unwrap().key; // report_call_chain, released below
    spool.append(&record(6)).unwrap(); // use_allocation, resent (rewrites 2)
    spool.release(k);
    spool.close_blocking().unwrap();
    let before = list_files(&dir);
    let seen = inspect(&dir).unwrap();
    assert_eq!(list_files(&dir), before);
    assert_eq!(seen.records, 3);
    assert!(!seen.in_use);
    let ua = &seen.by_kind["use_allocation"];
    assert_eq!((ua.records, ua.unsent, ua.sent, ua.resent), (2, 1, 0, 1));
    let rc = &seen.by_kind["report_call_chain"];
    assert_eq!((rc.records, rc.unsent, rc.sent, rc.resent), (1, 0, 0, 1));
    assert_eq!(seen.oldest_first_sent_unix_ms, Some(record(1).first_sent_unix_ms));
    assert_eq!(
        seen.live_bytes,
        [unsent, record(1), record(6)]
            .iter()
            .map(|r| format::append_len(r) as u64)
            .sum::<u64>()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_copy_left_by_a_crash_during_compaction_is_recovered_once() {
    let dir = tmp_dir("dupcopy");
    std::fs::create_dir_all(&dir).unwrap();
    for seq in [0, 1] {
        let mut bytes = Vec::new();
        format::encode_header(&mut bytes, 5);
        format::encode_append(&mut bytes, SpoolKey(5), &record(5));
        std::fs::write(store::segment_path(&dir, seq), bytes).unwrap();
    }
    let (spool, recovery) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    assert_eq!(recovery.records.len(), 1);
    assert!(spool.release(SpoolKey(5)));
    spool.close_blocking().unwrap();
    let (spool, recovery) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    assert!(recovery.records.is_empty());
    spool.close_blocking().unwrap();
    let files = list_files(&dir);
    assert_eq!(
        files,
        vec!["0000000000000003.seg".to_string(), "spool.lock".into()],
        "released segments deleted"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The reader's seed corpus, kept in the crate (the fuzz target `spool_read` starts from a
/// copy in `fuzz/corpus/spool_read`): each seed with what the reader must make of it.
const READER_SEEDS: &[(&str, &[u8])] = &[
    ("valid", include_bytes!("seeds/valid")),
    ("torn", include_bytes!("seeds/torn")),
    ("flipped", include_bytes!("seeds/flipped")),
    ("other_version", include_bytes!("seeds/other_version")),
    ("malformed", include_bytes!("seeds/malformed")),
    ("garbage", include_bytes!("seeds/garbage")),
];

fn reader_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let (valid, entries) = segment(12);
    let mut torn = valid.clone();
    torn.truncate(entries[9].0.start + 17);
    let mut flipped = valid.clone();
    flipped[3] ^= 0x20;
    flipped[entries[5].0.start + 30] ^= 0x01;
    let mut other_version = Vec::new();
    format::encode_header(&mut other_version, 0);
    other_version[8] = 9;
    let crc = crc32fast::hash(&other_version[..20]);
    other_version[20..24].copy_from_slice(&crc.to_le_bytes());
    let mut malformed = Vec::new();
    format::encode_header(&mut malformed, 0);
    format::encode_release(&mut malformed, SpoolKey(1));
    let at = malformed.len();
    format::encode_release(&mut malformed, SpoolKey(2));
    malformed[at + 12] = 9; // an unknown record type, checksum made to hold below
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&malformed[at + 4..at + 8]);
    hasher.update(&malformed[at + 12..]);
    let crc = hasher.finalize();
    malformed[at + 8..at + 12].copy_from_slice(&crc.to_le_bytes());
    let mut rng = fastrand::Rng::with_seed(7);
    let garbage: Vec<u8> = (0..300).map(|_| rng.u8(..)).collect();
    vec![
        ("valid", valid),
        ("torn", torn),
        ("flipped", flipped),
        ("other_version", other_version),
        ("malformed", malformed),
        ("garbage", garbage),
    ]
}

/// Rewrites `client/src/spool/seeds/`; copy them to `fuzz/corpus/spool_read/` after:
/// `cargo test -p usageflow-socket-client --features spool --lib write_reader_seeds -- --ignored`
#[test]
#[ignore = "rewrites the committed seed files"]
fn write_reader_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/spool/seeds");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in reader_seeds() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn the_reader_seeds_replay_with_their_expected_outcomes() {
    let expected = reader_seeds();
    assert_eq!(READER_SEEDS.len(), expected.len());
    for ((name, bytes), (want_name, want)) in READER_SEEDS.iter().zip(&expected) {
        assert_eq!(
            (name, bytes.to_vec()),
            (want_name, want.clone()),
            "seed {name} is stale: rewrite the seeds"
        );
        check_reader(bytes);
    }
    let scan = |name: &str| scan_segment(READER_SEEDS.iter().find(|(n, _)| *n == name).unwrap().1);
    let valid = scan("valid").unwrap();
    assert_eq!((valid.entries.len(), valid.damage), (12, Damage::default()));
    let torn = scan("torn").unwrap();
    assert_eq!((torn.entries.len(), torn.damage.torn_tails), (9, 1));
    let flipped = scan("flipped").unwrap();
    assert_eq!(flipped.entries.len(), 11);
    assert_eq!(
        (flipped.damage.damaged_headers, flipped.damage.corrupt_regions),
        (1, 1)
    );
    assert_eq!(scan("other_version"), Err(UnsupportedVersion { found: 9 }));
    let malformed = scan("malformed").unwrap();
    assert_eq!(
        (malformed.entries.len(), malformed.damage.malformed_records),
        (1, 1)
    );
    let garbage = scan("garbage").unwrap();
    assert!(garbage.entries.is_empty() && garbage.damage.damaged_headers == 1);
}

#[test]
fn a_stalled_sync_delays_durability_but_not_appends() {
    let dir = tmp_dir("stalled");
    let big = SpoolRecord {
        frame: "x".repeat(64 << 10),
        ..record(0)
    };
    let (spool, _) = Spool::open(SpoolOptions::new(&dir).max_bytes(1 << 20)).unwrap();
    spool.pause_syncer(true);
    for _ in 0..200 {
        let appended = spool
            .append(&big)
            .expect("appends never wait for the disk to sync");
        assert!(spool.release(appended.key));
    }
    let kept = spool.append(&record(7)).unwrap();
    let written = spool.written_mark();
    assert!(!spool.is_durable(written));
    let soon = std::time::Instant::now() + Duration::from_millis(50);
    assert_eq!(
        spool.wait_durable_blocking(written, soon),
        Ok(false),
        "the deadline comes first"
    );
    spool.pause_syncer(false);
    assert_eq!(
        spool.wait_durable_blocking(written, std::time::Instant::now() + Duration::from_secs(10)),
        Ok(true)
    );
    assert_eq!(
        smol::block_on(spool.wait_durable(kept.mark, deadline(Duration::from_secs(10)))),
        Ok(true)
    );
    spool.close_blocking().unwrap();
    let (spool, recovery) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    let got: Vec<_> = recovery.records.iter().map(|r| r.record.clone()).collect();
    assert_eq!(got, vec![record(7)]);
    spool.close_blocking().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_record_written_by_append_survives_a_kill_without_any_sync() {
    // What a kill -9 leaves: the files as written to the OS, no close, no sync. A forgotten
    // handle never runs its drop (so its syncer never writes or syncs anything more).
    let dir = tmp_dir("killed");
    let (spool, _) =
        Spool::open(SpoolOptions::new(&dir).sync(SyncPolicy::Group(Duration::from_secs(3600)))).unwrap();
    spool.pause_syncer(true);
    let keys: Vec<_> = (0..50).map(|i| spool.append(&record(i)).unwrap().key).collect();
    for key in &keys[..10] {
        assert!(spool.release(*key));
    }
    let last = spool.append(&record(50)).unwrap();
    assert!(!spool.is_durable(last.mark));
    let summary = inspect(&dir).unwrap();
    std::mem::forget(spool);
    // The lock is still held by the forgotten handle's file: inspect reads without it.
    assert_eq!(
        summary.records, 41,
        "every append is in the OS; the released ones are not"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_handle_can_be_shared_between_threads_and_tasks() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Spool>();
    shareable::<SpoolError>();
}

#[test]
fn stats_name_the_oldest_live_record_after_releases_and_reused_keys() {
    let dir = tmp_dir("oldest");
    let (spool, _) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    let keys: Vec<_> = (1..=5).map(|i| spool.append(&record(i)).unwrap().key).collect();
    assert_eq!(
        spool.stats().oldest_first_sent_unix_ms,
        Some(record(1).first_sent_unix_ms)
    );
    assert!(spool.release(keys[0]));
    assert!(spool.release(keys[1]));
    assert_eq!(
        spool.stats().oldest_first_sent_unix_ms,
        Some(record(3).first_sent_unix_ms)
    );
    // A key released earlier, written again, is the oldest by key again.
    spool.put(keys[0], &record(9)).unwrap();
    assert_eq!(
        spool.stats().oldest_first_sent_unix_ms,
        Some(record(9).first_sent_unix_ms)
    );
    for key in [keys[0], keys[2], keys[3], keys[4]] {
        assert!(spool.release(key));
    }
    assert_eq!(spool.stats().oldest_first_sent_unix_ms, None);
    spool.close_blocking().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_key_hasher_gives_distinct_keys_distinct_hashes() {
    use std::hash::{BuildHasher, BuildHasherDefault};
    // A hasher that collapses keys leaves the live map correct but quadratic.
    let build = BuildHasherDefault::<writer::KeyHasher>::default();
    let keys: std::collections::HashSet<u64> = (0..4096u64).map(|k| build.hash_one(k)).collect();
    assert_eq!(keys.len(), 4096);
    let bytes: std::collections::HashSet<u64> = (0..4096u64).map(|k| build.hash_one(k.to_string())).collect();
    assert_eq!(bytes.len(), 4096);
}

#[test]
fn a_record_replaced_under_its_key_counts_once_and_its_segment_goes_once_released() {
    let dir = tmp_dir("replace");
    let one = format::append_len(&fixed(0)) as u64;
    let header = format::HEADER_LEN as u64;
    let (spool, _) = Spool::open(SpoolOptions::new(&dir).segment_bytes(4096)).unwrap();
    spool.put(SpoolKey(5), &fixed(5)).unwrap();
    spool.put(SpoolKey(5), &fixed(6)).unwrap();
    let stats = spool.stats();
    assert_eq!(
        (stats.records, stats.live_bytes, stats.appended, stats.written),
        (1, one, 2, DurableMark(2)),
        "{stats:?}"
    );
    assert_eq!(stats.disk_bytes, header + 2 * one);
    assert!(spool.release(SpoolKey(5)));
    let stats = spool.stats();
    assert_eq!(
        (stats.records, stats.live_bytes, stats.released, stats.written),
        (0, 0, 1, DurableMark(3)),
        "{stats:?}"
    );
    assert_eq!(stats.disk_bytes, header + 2 * one + format::RELEASE_LEN as u64);
    // Once the active segment moves on, the first one holds nothing live: it is deleted.
    let mut i = 10;
    while !store::segment_path(&dir, 1).exists() {
        assert!(spool.release(spool.append(&fixed(i)).unwrap().key));
        i += 1;
    }
    let written = spool.written_mark();
    let soon = std::time::Instant::now() + Duration::from_secs(10);
    assert_eq!(spool.wait_durable_blocking(written, soon), Ok(true));
    let stats = spool.stats();
    assert_eq!((stats.segments, stats.segments_deleted), (1, 1), "{stats:?}");
    let active = std::fs::metadata(store::segment_path(&dir, 1)).unwrap().len();
    assert_eq!(
        stats.disk_bytes, active,
        "the deleted segment's bytes are gone from the count"
    );
    spool.close_blocking().unwrap();
    assert!(!store::segment_path(&dir, 0).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_record_staged_before_a_roll_is_written_to_the_segment_it_was_counted_in() {
    let dir = tmp_dir("roll");
    let one = format::append_len(&fixed(0));
    let per_segment = (4096 - format::HEADER_LEN) / one;
    let options = SpoolOptions::new(&dir)
        .segment_bytes(4096)
        .sync(SyncPolicy::Group(Duration::from_secs(3600)));
    let (spool, _) = Spool::open(options).unwrap();
    spool.pause_syncer(true);
    for i in 0..per_segment as u64 - 1 {
        spool.append(&fixed(i)).unwrap();
    }
    // The last record that fits, staged only; the next append rolls to a new segment.
    let staged = spool.stage(spool.next_key(), &fixed(100)).unwrap();
    assert_eq!(spool.stats().segments, 1);
    let rolled = spool.append(&fixed(101)).unwrap();
    assert!(rolled.mark > staged.mark);
    let stats = spool.stats();
    assert_eq!(stats.segments, 2, "{stats:?}");
    let read = |seg| {
        let bytes = std::fs::read(store::segment_path(&dir, seg)).unwrap();
        (bytes.len() as u64, scan_segment(&bytes).unwrap().entries)
    };
    let (len0, first) = read(0);
    let (len1, second) = read(1);
    assert_eq!(first.len(), per_segment);
    assert_eq!(first.last(), Some(&SegmentEntry::Append(staged.key, fixed(100))));
    assert_eq!(second, vec![SegmentEntry::Append(rolled.key, fixed(101))]);
    assert_eq!(stats.disk_bytes, len0 + len1, "{stats:?}");
    spool.pause_syncer(false);
    spool.close_blocking().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_record_replaced_under_its_key_fits_where_the_old_one_was() {
    let dir = tmp_dir("replace-full");
    let one = format::append_len(&fixed(0)) as u64;
    let (spool, _) = Spool::open(SpoolOptions::new(&dir).max_bytes(2 * one)).unwrap();
    spool.put(SpoolKey(1), &fixed(1)).unwrap();
    spool.put(SpoolKey(2), &fixed(2)).unwrap();
    spool
        .put(SpoolKey(2), &fixed(3))
        .expect("the replaced record's bytes are not counted twice");
    assert!(matches!(
        spool.put(SpoolKey(3), &fixed(4)),
        Err(SpoolError::Full { .. })
    ));
    assert_eq!(spool.stats().live_bytes, 2 * one);
    spool.close_blocking().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_append_becomes_durable_without_a_waiter_and_an_idle_syncer_stays_idle() {
    let dir = tmp_dir("idle");
    let (spool, _) =
        Spool::open(SpoolOptions::new(&dir).sync(SyncPolicy::Group(Duration::from_millis(1)))).unwrap();
    // Let the syncer fall idle (nothing to do), then append: staging wakes it.
    std::thread::sleep(Duration::from_millis(20));
    let appended = spool.append(&record(1)).unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !spool.is_durable(appended.mark) {
        assert!(
            std::time::Instant::now() < until,
            "nobody made the append durable"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        spool.stats().syncs >= 1,
        "durable under group commit means synced"
    );
    // Nothing more to do: no more rounds (one or two may still be under way), where a
    // syncer that thinks it has work makes one every millisecond.
    std::thread::sleep(Duration::from_millis(50));
    let syncs = spool.stats().syncs;
    std::thread::sleep(Duration::from_millis(200));
    let more = spool.stats().syncs - syncs;
    assert!(more <= 2, "an idle syncer made {more} rounds");
    spool.close_blocking().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_append_is_in_the_file_when_it_returns_even_while_another_caller_writes() {
    let dir = tmp_dir("contended");
    let one = format::append_len(&fixed(0)) as u64;
    let header = format::HEADER_LEN as u64;
    let options = SpoolOptions::new(&dir)
        .segment_bytes(64 << 20)
        .sync(SyncPolicy::Group(Duration::from_secs(3600)));
    let (spool, _) = Spool::open(options).unwrap();
    // Nobody but the appenders writes: each append's own write (or a concurrent caller's,
    // which took its bytes) put it in the file.
    spool.pause_syncer(true);
    let spool = std::sync::Arc::new(spool);
    let seg = store::segment_path(&dir, 0);
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let spool = spool.clone();
            let seg = seg.clone();
            std::thread::spawn(move || {
                for i in 0..300 {
                    let appended = spool.append(&fixed(t * 1000 + i)).unwrap();
                    // Same-size records, no releases: the record with mark m ends here.
                    let end = header + appended.mark.0 * one;
                    let len = std::fs::metadata(&seg).unwrap().len();
                    assert!(
                        len >= end,
                        "mark {:?}: {len} bytes in the file, {end} needed",
                        appended.mark
                    );
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    spool.pause_syncer(false);
    std::sync::Arc::try_unwrap(spool)
        .unwrap()
        .close_blocking()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn staging_past_the_backlog_bound_is_refused_and_counted_and_the_stager_never_writes() {
    let dir = tmp_dir("batch");
    let big = SpoolRecord {
        frame: "x".repeat(60 << 10),
        ..record(0)
    };
    let one = format::append_len(&big) as u64;
    let options = SpoolOptions::new(&dir)
        .max_bytes(64 << 20)
        .segment_bytes(64 << 20)
        .sync(SyncPolicy::Group(Duration::from_secs(3600)));
    let (spool, _) = Spool::open(options).unwrap();
    spool.pause_syncer(true);
    let seg = store::segment_path(&dir, 0);
    let header = format::HEADER_LEN as u64;
    let file_len = || std::fs::metadata(&seg).unwrap().len();
    let fit = (8 << 20) / one;
    for n in 1..=fit {
        spool.stage(SpoolKey(n), &big).unwrap();
    }
    assert_eq!(file_len(), header, "staging never writes");
    let refused = spool.stage(SpoolKey(fit + 1), &big);
    assert_eq!(
        refused,
        Err(SpoolError::Backlogged {
            staged_bytes: fit * one,
            max_bytes: 8 << 20
        })
    );
    assert_eq!(spool.stats().refused_backlogged, 1);
    assert_eq!(file_len(), header, "a refusal writes nothing either");
    spool.write_through(spool.written_mark()).unwrap();
    assert_eq!(
        file_len(),
        header + fit * one,
        "one write takes everything staged"
    );
    spool
        .stage(SpoolKey(fit + 1), &big)
        .expect("room again once written");
    spool.pause_syncer(false);
    spool.close_blocking().unwrap();
    let (spool, recovery) = Spool::open(SpoolOptions::new(&dir).max_bytes(64 << 20)).unwrap();
    assert_eq!(recovery.records.len() as u64, fit + 1);
    spool.close_blocking().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_async_close_reports_the_spools_failure() {
    let dir = tmp_dir("close-failed");
    let (spool, _) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    spool.append(&record(1)).unwrap();
    spool.inject_write_error(std::io::ErrorKind::StorageFull);
    assert!(spool.append(&record(2)).is_err());
    // A failed spool takes no more records but still owns its directory until it is closed.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        Spool::open(SpoolOptions::new(&dir)).unwrap_err(),
        SpoolError::Locked { dir: dir.clone() }
    );
    let closed = smol::block_on(spool.close(deadline(Duration::from_secs(10))));
    assert!(
        matches!(closed, Err(SpoolError::WriteFailed { .. })),
        "{closed:?}"
    );
    let (spool, recovery) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    assert_eq!(recovery.records.len(), 1);
    spool.close_blocking().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn group_commit_keeps_its_interval_even_for_a_waiter() {
    let dir = tmp_dir("group-interval");
    let (spool, _) =
        Spool::open(SpoolOptions::new(&dir).sync(SyncPolicy::Group(Duration::from_secs(3600)))).unwrap();
    let appended = spool.append(&record(1)).unwrap();
    let soon = std::time::Instant::now() + Duration::from_millis(100);
    assert_eq!(
        spool.wait_durable_blocking(appended.mark, soon),
        Ok(false),
        "no sync before the interval is over"
    );
    assert_eq!(spool.stats().syncs, 0);
    // Close syncs what is left whatever the interval.
    spool.close_blocking().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Appends and releases records until the spool rolls to segment 1 (segment 0 then holds
/// nothing live and is queued for deletion).
fn roll_to_segment_1(spool: &Spool, dir: &std::path::Path) {
    let mut i = 0;
    while !store::segment_path(dir, 1).exists() {
        assert!(spool.release(spool.append(&fixed(i)).unwrap().key));
        i += 1;
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < until, "waited 10 s for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn under_never_the_syncer_syncs_only_before_it_deletes_a_segment() {
    let dir = tmp_dir("never-syncs");
    let options = SpoolOptions::new(&dir)
        .segment_bytes(4096)
        .sync(SyncPolicy::Never);
    let (spool, _) = Spool::open(options).unwrap();
    for i in 0..5 {
        spool.append(&fixed(i)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(spool.stats().syncs, 0, "no fdatasync under Never");
    for key in 0..5 {
        assert!(spool.release(SpoolKey(key)));
    }
    roll_to_segment_1(&spool, &dir);
    wait_for("the deletion", || spool.stats().segments_deleted == 1);
    assert!(
        spool.stats().syncs >= 1,
        "the releases are synced before the deletion"
    );
    assert!(!store::segment_path(&dir, 0).exists());
    spool.close_blocking().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_segment_already_gone_is_deleted_quietly_and_one_that_cannot_be_deleted_fails_the_spool() {
    for gone in [true, false] {
        let dir = tmp_dir(if gone { "delete-gone" } else { "delete-fails" });
        let options = SpoolOptions::new(&dir)
            .segment_bytes(4096)
            .sync(SyncPolicy::Group(Duration::from_millis(1)));
        let (spool, _) = Spool::open(options).unwrap();
        spool.pause_syncer(true);
        roll_to_segment_1(&spool, &dir);
        let seg0 = store::segment_path(&dir, 0);
        std::fs::remove_file(&seg0).unwrap();
        if !gone {
            // A directory where the segment was: removing it as a file fails (not NotFound).
            std::fs::create_dir(&seg0).unwrap();
        }
        spool.pause_syncer(false);
        let written = spool.written_mark();
        let soon = std::time::Instant::now() + Duration::from_secs(10);
        let waited = spool.wait_durable_blocking(written, soon);
        if gone {
            assert_eq!(waited, Ok(true));
            assert_eq!(spool.stats().segments_deleted, 1);
            spool.close_blocking().unwrap();
        } else {
            assert!(matches!(waited, Err(SpoolError::Io { .. })), "{waited:?}");
            assert!(spool.close_blocking().is_err());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_pinned_record_is_not_copied_while_the_disk_is_within_its_budget() {
    let dir = tmp_dir("no-compaction");
    let options = SpoolOptions::new(&dir)
        .segment_bytes(4096)
        .sync(SyncPolicy::Group(Duration::from_millis(1)));
    let (spool, _) = Spool::open(options).unwrap();
    let pinned = spool.append(&fixed(0)).unwrap();
    // Segment 0 (the pinned record and released ones) is sealed; the disk holds about one
    // segment more than the live bytes, well within 2 × live + 2 × segment_bytes.
    let mut i = 1;
    while !store::segment_path(&dir, 1).exists() {
        assert!(spool.release(spool.append(&fixed(i)).unwrap().key));
        i += 1;
    }
    for _ in 0..20 {
        let written = spool.written_mark();
        let soon = std::time::Instant::now() + Duration::from_secs(10);
        assert_eq!(spool.wait_durable_blocking(written, soon), Ok(true));
        assert!(spool.release(spool.append(&fixed(i)).unwrap().key));
        i += 1;
    }
    let stats = spool.stats();
    assert!(stats.disk_bytes <= 2 * stats.live_bytes + 2 * 4096, "{stats:?}");
    assert_eq!((stats.compacted, stats.segments), (0, 2), "{stats:?}");
    assert!(spool.release(pinned.key));
    spool.close_blocking().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
