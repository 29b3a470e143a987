//! Scenario tests of log compaction: latest value per key, tombstones, lags, dirty ratio, memory cap, codecs, crashes.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use creek_protocol::batch::{BatchView, Compression, batch_ranges, build_batch};
use creek_protocol::records::{BatchBuilder, BatchHeader, DecodedBatch};
use creek_storage::{LogConfig, PartitionLog, StorageError};

const T0: i64 = 1_700_000_000_000;

/// A record's key and value as `build_batch` takes them.
type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);
const RETENTION_MS: i64 = 60_000;

/// One record as a consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    offset: u64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

fn compact_config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        index_interval_bytes: 1024,
        preallocate_chunk_bytes: 4096,
        cleanup_compact: true,
        cleanup_delete: false,
        delete_retention_ms: RETENTION_MS,
        min_cleanable_dirty_ratio: 0.5,
        ..LogConfig::default()
    }
}

fn key(k: usize) -> Vec<u8> {
    format!("key-{k:04}").into_bytes()
}

/// Appends one batch of `(key, value)` records with timestamp `ts`.
fn append(log: &mut PartitionLog, ts: i64, recs: &[(Vec<u8>, Option<Vec<u8>>)]) -> u64 {
    let r: Vec<KeyValue<'_>> = recs.iter().map(|(k, v)| (Some(k.as_slice()), v.as_deref())).collect();
    let mut b = build_batch(0, ts, &r);
    log.append(&mut b, 0, ts).unwrap().base_offset
}

/// `updates` updates over `keys` keys in batches of `per_batch`, value = "<key>=<update number>".
fn produce(log: &mut PartitionLog, updates: usize, keys: usize, per_batch: usize, ts: i64) {
    let mut i = 0;
    while i < updates {
        let recs: Vec<(Vec<u8>, Option<Vec<u8>>)> = (i..(i + per_batch).min(updates))
            .map(|u| {
                let k = (u * 7919) % keys;
                (key(k), Some(format!("k{k}=u{u}").into_bytes()))
            })
            .collect();
        append(log, ts, &recs);
        i += per_batch;
    }
}

/// Every record from `from` to the log end, checking batches on the way: CRCs valid, offsets
/// strictly increasing, a read never returns a batch ending before the offset asked for.
fn read_records(log: &PartitionLog, from: u64) -> Vec<Rec> {
    let mut out: Vec<Rec> = Vec::new();
    let mut at = from;
    while at < log.log_end_offset() {
        let r = log.read(at, 64 * 1024).unwrap();
        assert!(!r.bytes.is_empty());
        for range in batch_ranges(&r.bytes).unwrap() {
            let v = BatchView::new(&r.bytes[range]).unwrap();
            v.verify_crc().unwrap();
            assert!(v.last_offset() as u64 >= at, "batch before the read offset");
            let d = DecodedBatch::new(v, 1 << 24).unwrap();
            for rec in d.iter() {
                let rec = rec.unwrap();
                let offset = rec.offset as u64;
                assert!(out.last().is_none_or(|p| p.offset < offset), "offsets must increase");
                out.push(Rec { offset, key: rec.key.map(<[u8]>::to_vec), value: rec.value.map(<[u8]>::to_vec) });
            }
        }
        assert!(r.next_offset > at);
        at = r.next_offset;
    }
    out
}

/// What compaction must leave: below `cleaned_to`, only the latest record per key (tombstones
/// too unless `tombstones_gone`); from it on, everything.
fn expected(all: &[Rec], cleaned_to: u64, tombstones_gone: bool) -> Vec<Rec> {
    let mut latest: BTreeMap<&[u8], u64> = BTreeMap::new();
    for r in all.iter().filter(|r| r.offset < cleaned_to) {
        if let Some(k) = &r.key {
            latest.insert(k, r.offset);
        }
    }
    all.iter()
        .filter(|r| {
            r.offset >= cleaned_to
                || match &r.key {
                    None => true,
                    Some(k) => latest[k.as_slice()] == r.offset && !(tombstones_gone && r.value.is_none()),
                }
        })
        .cloned()
        .collect()
}

/// The table a consumer builds by reading from 0.
fn table(recs: &[Rec]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut t = BTreeMap::new();
    for r in recs {
        let k = r.key.clone().unwrap();
        match &r.value {
            Some(v) => t.insert(k, v.clone()),
            None => t.remove(&k),
        };
    }
    t
}

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".cleaned") || n.contains("swap") || n.ends_with(".tmp"))
        .collect()
}

#[test]
fn hundred_thousand_updates_over_a_thousand_keys_compact_to_the_latest_value_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    produce(&mut log, 100_000, 1_000, 10, T0);
    let all = read_records(&log, 0);
    assert_eq!(all.len(), 100_000);
    let segments = log.segment_count();
    assert!(segments > 100, "small segments roll: {segments}");
    let size_before = log.size_bytes();
    let end = log.log_end_offset();

    let stats = log.compact(T0).unwrap().expect("a dirty log compacts");
    let cleaned_to = log.cleaner_checkpoint();
    assert_eq!(stats.cleaned_to, cleaned_to);
    assert!(cleaned_to > 90_000, "everything sealed is cleaned: {cleaned_to}");
    assert_eq!(log.log_end_offset(), end, "offsets never change");
    assert_eq!(log.segment_count(), segments);
    let got = read_records(&log, 0);
    assert_eq!(got, expected(&all, cleaned_to, false));
    assert_eq!(table(&got), table(&all), "a consumer from 0 sees the same table");
    let below: Vec<&Rec> = got.iter().filter(|r| r.offset < cleaned_to).collect();
    assert_eq!(below.len(), 1_000, "one record per key below the cleaned offset");
    assert!(log.size_bytes() < size_before / 10, "{} -> {}", size_before, log.size_bytes());
    assert!(stats.records_removed > 90_000 && stats.batches_removed > 0, "{stats:?}");

    // A read at a compacted-away offset returns the next batch that still exists.
    let kept: Vec<u64> = got.iter().map(|r| r.offset).collect();
    for probe in [1u64, 777, 5_000, 12_345, 50_001] {
        let r = log.read(probe, 1).unwrap();
        let v = BatchView::new(&r.bytes).unwrap();
        assert!(v.last_offset() as u64 >= probe);
        let next_kept = kept.iter().find(|&&o| o >= probe).unwrap();
        assert!(v.base_offset() as u64 <= *next_kept);
    }

    // Time lookups (ListOffsets by timestamp) land on batches that still hold records.
    for ts in [0, T0 - 1, T0] {
        let b = log.batch_at_timestamp(ts).unwrap().expect("records at T0");
        assert!(BatchView::new(&b).unwrap().records_count() > 0);
    }
    let b = log.max_timestamp_batch().unwrap().unwrap();
    assert!(BatchView::new(&b).unwrap().records_count() > 0);

    // Nothing more to do, and the result survives a clean reboot and a crash.
    assert_eq!(log.compact(T0).unwrap(), None);
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    assert_eq!(read_records(&log, 0), got);
    assert_eq!(log.cleaner_checkpoint(), cleaned_to);
    drop(log);
    let log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    assert_eq!(read_records(&log, 0), got);
    assert!(leftovers(dir.path()).is_empty());
}

#[test]
fn tombstoned_keys_disappear_after_delete_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    produce(&mut log, 5_000, 100, 10, T0);
    // Keys 1000..1010 get values, then tombstones, then filler on other keys seals them.
    let doomed: Vec<(Vec<u8>, Option<Vec<u8>>)> =
        (1000..1010).map(|k| (key(k), Some(b"soon deleted".to_vec()))).collect();
    append(&mut log, T0, &doomed);
    produce(&mut log, 500, 100, 10, T0);
    let tombstones: Vec<(Vec<u8>, Option<Vec<u8>>)> = (1000..1010).map(|k| (key(k), None)).collect();
    append(&mut log, T0, &tombstones);
    produce(&mut log, 2_000, 100, 10, T0);
    let all = read_records(&log, 0);

    log.compact(T0).unwrap().unwrap();
    let ck = log.cleaner_checkpoint();
    let got = read_records(&log, 0);
    assert_eq!(got, expected(&all, ck, false), "tombstones stay for delete.retention.ms");
    assert!(got.iter().any(|r| r.value.is_none()));

    // Not yet: nothing is dirty and no tombstone has expired.
    assert_eq!(log.compact(T0 + RETENTION_MS - 1).unwrap(), None);
    let stats = log.compact(T0 + RETENTION_MS).unwrap().expect("expired tombstones make it due");
    assert_eq!(stats.tombstones_removed, 10);
    let got = read_records(&log, 0);
    assert_eq!(got, expected(&all, ck, true));
    for k in 1000..1010 {
        assert!(got.iter().all(|r| r.key.as_deref() != Some(&key(k)[..])), "key {k} is gone");
    }
    assert_eq!(table(&got), table(&all));
    // Persisted: a reboot does not bring them back.
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    assert_eq!(read_records(&log, 0), got);
}

#[test]
fn min_compaction_lag_keeps_recent_segments_uncompacted() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { min_compaction_lag_ms: 10_000, ..compact_config() };
    let mut log = PartitionLog::open(dir.path(), config, T0).unwrap();
    produce(&mut log, 3_000, 50, 10, T0);
    produce(&mut log, 3_000, 50, 10, T0 + 20_000);
    let all = read_records(&log, 0);
    assert_eq!(log.compact(T0 + 5_000).unwrap(), None, "every segment is too recent");
    let stats = log.compact(T0 + 15_000).unwrap().unwrap();
    let ck = log.cleaner_checkpoint();
    assert_eq!(stats.cleaned_to, ck);
    // Only the segments older than the lag were cleaned: everything after them is intact.
    let got = read_records(&log, 0);
    assert_eq!(got, expected(&all, ck, false));
    assert!(ck <= 3_000 + 10, "cleaned only the old records: {ck}");
    assert!(got.iter().filter(|r| r.offset >= 3_000).count() >= 2_990);
    log.compact(T0 + 40_000).unwrap().unwrap();
    assert!(log.cleaner_checkpoint() > 5_000);
    assert_eq!(read_records(&log, 0), expected(&all, log.cleaner_checkpoint(), false));
}

#[test]
fn dirty_ratio_decides_when_compaction_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { min_cleanable_dirty_ratio: 0.99, ..compact_config() };
    let mut log = PartitionLog::open(dir.path(), config, T0).unwrap();
    produce(&mut log, 20_000, 2_000, 10, T0);
    // Never cleaned: all of it is dirty, so even a 0.99 ratio is met.
    log.compact(T0).unwrap().unwrap();
    let ck = log.cleaner_checkpoint();
    // Some clean, some dirty: below 0.99 nothing runs; at a low ratio it does.
    produce(&mut log, 5_000, 2_000, 10, T0);
    assert_eq!(log.compact(T0).unwrap(), None, "dirty share below min.cleanable.dirty.ratio");
    assert_eq!(log.cleaner_checkpoint(), ck);
    log.set_config(LogConfig { min_cleanable_dirty_ratio: 0.05, ..log.config().clone() });
    assert!(log.compact(T0).unwrap().is_some());
    assert!(log.cleaner_checkpoint() > ck);

    // max.compaction.lag.ms makes old dirty data due whatever the ratio.
    log.set_config(LogConfig { min_cleanable_dirty_ratio: 0.99, ..log.config().clone() });
    let ck = log.cleaner_checkpoint();
    produce(&mut log, 5_000, 2_000, 10, T0);
    assert_eq!(log.compact(T0).unwrap(), None);
    log.set_config(LogConfig { max_compaction_lag_ms: 1_000, ..log.config().clone() });
    assert_eq!(log.compact(T0 + 999).unwrap(), None);
    assert!(log.compact(T0 + 1_000).unwrap().is_some());
    assert!(log.cleaner_checkpoint() > ck);
}

#[test]
fn a_full_offset_map_cleans_a_prefix_and_later_runs_finish() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        compaction_map_bytes_max: 300 * (8 + 64), // ~300 keys of 8 bytes
        min_cleanable_dirty_ratio: 0.01,
        ..compact_config()
    };
    let mut log = PartitionLog::open(dir.path(), config, T0).unwrap();
    produce(&mut log, 8_000, 1_000, 10, T0);
    let all = read_records(&log, 0);
    let mut checkpoints = Vec::new();
    while let Some(stats) = log.compact(T0).unwrap() {
        checkpoints.push(stats.cleaned_to);
        assert_eq!(read_records(&log, 0), expected_multi(&all, &checkpoints));
        assert!(checkpoints.len() < 1_000);
    }
    assert!(checkpoints.len() > 5, "a small map needs several runs: {checkpoints:?}");
    assert!(checkpoints.windows(2).all(|w| w[0] < w[1]));
    let got = read_records(&log, 0);
    assert_eq!(table(&got), table(&all));
}

/// After several runs with maps covering `[c_{i-1}, c_i)`: a record survives unless a later
/// record with its key lies in the region of some run that came after... equivalently, unless
/// a later record with the same key lies below the last checkpoint at least at that run.
fn expected_multi(all: &[Rec], checkpoints: &[u64]) -> Vec<Rec> {
    let mut kept: Vec<Rec> = all.to_vec();
    let mut start = 0;
    for &end in checkpoints {
        let mut latest: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for r in kept.iter().filter(|r| r.offset >= start && r.offset < end) {
            latest.insert(r.key.clone().unwrap(), r.offset);
        }
        kept.retain(|r| latest.get(r.key.as_ref().unwrap()).is_none_or(|&l| l <= r.offset));
        start = end;
    }
    kept
}

#[test]
fn compressed_batches_are_recompressed_or_written_plain_for_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    let codecs = [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd, Compression::None];
    for round in 0..400 {
        let codec = codecs[round % codecs.len()];
        // Half the keys are updated by later batches, half are unique: every batch shrinks.
        let recs: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..20)
            .map(|i| {
                let k = if i % 2 == 0 { key(i) } else { format!("unique-{round}-{i}").into_bytes() };
                (k, Some(format!("r{round}-{i}-padding-padding").into_bytes()))
            })
            .collect();
        let plain = {
            let r: Vec<KeyValue<'_>> = recs.iter().map(|(k, v)| (Some(k.as_slice()), v.as_deref())).collect();
            build_batch(0, T0, &r)
        };
        let mut batch = if codec == Compression::None {
            plain
        } else {
            let v = BatchView::new(&plain).unwrap();
            let d = DecodedBatch::new(v, 1 << 20).unwrap();
            let mut b = BatchBuilder::new(BatchHeader::from_view(&v));
            for r in d.iter() {
                b.push(&r.unwrap()).unwrap();
            }
            if codec == Compression::Zstd {
                // ruzstd can encode for the test; the broker writes zstd batches back plain.
                let raw = d.records_bytes().to_vec();
                let z = ruzstd::encoding::compress_to_vec(&raw[..], ruzstd::encoding::CompressionLevel::Fastest);
                let mut out = plain[..61].to_vec();
                out[21..23].copy_from_slice(&4i16.to_be_bytes());
                out.extend_from_slice(&z);
                let len = (out.len() - 12) as i32;
                out[8..12].copy_from_slice(&len.to_be_bytes());
                let crc = creek_protocol::batch::crc32c(&out[21..]);
                out[17..21].copy_from_slice(&crc.to_be_bytes());
                out
            } else {
                b.finish(codec).unwrap()
            }
        };
        assert_eq!(BatchView::new(&batch).unwrap().compression(), codec);
        log.append(&mut batch, 0, T0).unwrap();
    }
    let all = read_records(&log, 0);
    log.compact(T0).unwrap().unwrap();
    let got = read_records(&log, 0);
    assert_eq!(got, expected(&all, log.cleaner_checkpoint(), false));
    // Rewritten batches keep their codec, except zstd, which is written uncompressed.
    let mut seen = BTreeMap::new();
    let mut at = 0;
    while at < log.cleaner_checkpoint() {
        let r = log.read(at, 1).unwrap();
        let v = BatchView::new(&r.bytes).unwrap();
        if v.records_count() > 0 && v.records_count() < 20 {
            *seen.entry(format!("{:?}", v.compression())).or_insert(0) += 1;
        }
        at = r.next_offset;
    }
    for c in ["Gzip", "Snappy", "Lz4", "None"] {
        assert!(seen.contains_key(c), "{c} rewritten: {seen:?}");
    }
    assert!(!seen.contains_key("Zstd"), "{seen:?}");
}

#[test]
fn keyless_and_control_records_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    let k: &[u8] = b"same";
    for i in 0..600 {
        let v = format!("v{i}-xxxxxxxxxxxxxxxxxxxxxxxxxxxxx").into_bytes();
        let mut b = build_batch(0, T0, &[(Some(k), Some(&v)), (None, Some(&v))]);
        if i % 200 == 105 {
            // A batch with the control bit (5) set, re-CRC.
            b[21..23].copy_from_slice(&0x20i16.to_be_bytes());
            let crc = creek_protocol::batch::crc32c(&b[21..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
        }
        log.append(&mut b, 0, T0).unwrap();
    }
    let all = read_records(&log, 0);
    log.compact(T0).unwrap().unwrap();
    let got = read_records(&log, 0);
    let ck = log.cleaner_checkpoint();
    assert_eq!(got.iter().filter(|r| r.key.is_none()).count(), 600, "keyless records all stay");
    // The control batches (offsets 210, 610, 1010) are untouched.
    for i in (105..600).step_by(200) {
        let o = 2 * i as u64;
        assert!(got.iter().any(|r| r.offset == o && r.key.as_deref() == Some(k)), "offset {o}");
    }
    let keyed_below = got.iter().filter(|r| r.key.is_some() && r.offset < ck).count();
    assert!(keyed_below <= 1 + 3, "{keyed_below}");
    assert_eq!(
        table(&got.iter().filter(|r| r.key.is_some()).cloned().collect::<Vec<_>>()),
        table(&all.iter().filter(|r| r.key.is_some()).cloned().collect::<Vec<_>>())
    );
}

#[test]
fn a_crash_before_install_leaves_the_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    produce(&mut log, 20_000, 300, 10, T0);
    log.flush().unwrap();
    let all = read_records(&log, 0);
    let job = log.compaction_job(T0).unwrap().unwrap();
    assert!(log.compaction_job(T0).unwrap().is_none(), "one job at a time");
    let result = job.run().unwrap();
    assert!(!leftovers(dir.path()).is_empty(), "cleaned files are written before install");
    // Crash: the process dies with the result never installed (and never dropped).
    std::mem::forget(result);
    drop(log);
    // Plus garbage a crash can leave: a half-written cleaned file and a temp manifest.
    fs::write(dir.path().join("00000000000000000000.log.cleaned"), b"partial").unwrap();
    fs::write(dir.path().join("cleaner-swap.tmp"), b"0\n").unwrap();
    let log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    assert_eq!(read_records(&log, 0), all);
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
    assert_eq!(log.cleaner_checkpoint(), 0);
}

#[test]
fn a_lost_cleaner_checkpoint_loses_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    produce(&mut log, 20_000, 300, 10, T0);
    log.compact(T0).unwrap().unwrap();
    let got = read_records(&log, 0);
    drop(log); // crash, so recovery rescans
    fs::remove_file(dir.path().join("cleaner-checkpoint")).unwrap();
    fs::remove_file(dir.path().join("recovery-point")).unwrap();
    let log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    assert_eq!(read_records(&log, 0), got);
}

#[test]
fn a_crash_during_the_swap_is_finished_by_recovery() {
    for renames in [0usize, 1, 2, 3, 4, 7, 20, 1_000] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
        produce(&mut log, 20_000, 300, 10, T0);
        let all = read_records(&log, 0);
        let result = log.compaction_job(T0).unwrap().unwrap().run().unwrap();
        let cleaned_to = result.stats().cleaned_to;
        log.install_interrupted(result, renames).unwrap();
        assert!(log.compaction_job(T0).unwrap().is_none(), "no compaction after a failed swap");
        drop(log); // crash
        let log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
        assert_eq!(log.cleaner_checkpoint(), cleaned_to, "renames {renames}");
        assert_eq!(read_records(&log, 0), expected(&all, cleaned_to, false), "renames {renames}");
        assert!(leftovers(dir.path()).is_empty());
        drop(log);
        // And a crash-free reopen after that agrees.
        let log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
        assert_eq!(read_records(&log, 0), expected(&all, cleaned_to, false));
    }
}

#[test]
fn a_result_is_discarded_if_the_log_changed_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    produce(&mut log, 10_000, 300, 10, T0);
    let all = read_records(&log, 0);
    let end = log.log_end_offset();

    // Truncation in between.
    let result = log.compaction_job(T0).unwrap().unwrap().run().unwrap();
    let last_base = {
        let r = log.read(end - 1, 1).unwrap();
        BatchView::new(&r.bytes).unwrap().base_offset() as u64
    };
    log.truncate_to(last_base).unwrap();
    assert_eq!(log.install(result).unwrap(), None);
    assert!(leftovers(dir.path()).is_empty(), "a discarded result removes its files");
    let all: Vec<Rec> = all.into_iter().filter(|r| r.offset < last_base).collect();
    assert_eq!(read_records(&log, 0), all);

    // Retention (DeleteRecords) removing cleaned segments in between.
    let result = log.compaction_job(T0).unwrap().unwrap().run().unwrap();
    log.delete_records_before(1_000).unwrap();
    assert_eq!(log.install(result).unwrap(), None);
    let all: Vec<Rec> = all.into_iter().filter(|r| r.offset >= log.log_start_offset()).collect();
    assert_eq!(read_records(&log, log.log_start_offset()), all);
    // A fresh job works.
    assert!(log.compact(T0).unwrap().is_some());
    let ck = log.cleaner_checkpoint();
    assert_eq!(table(&read_records(&log, log.log_start_offset())), table(&all));
    assert!(ck > 1_000);
}

#[test]
fn compact_only_topics_ignore_retention_and_delete_only_topics_never_compact() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { retention_ms: 1, retention_bytes: 1, ..compact_config() };
    let mut log = PartitionLog::open(dir.path(), config.clone(), T0).unwrap();
    produce(&mut log, 2_000, 10, 10, T0);
    assert_eq!(log.housekeeping(T0 + 1_000_000).unwrap(), 0);
    assert_eq!(log.log_start_offset(), 0);
    log.set_config(LogConfig { cleanup_compact: false, ..config });
    assert!(log.compaction_job(T0).unwrap().is_none());
    assert_eq!(log.compact(T0).unwrap(), None);
}

#[test]
fn truncation_into_a_compacted_gap_is_refused_and_at_a_real_boundary_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    produce(&mut log, 20_000, 100, 10, T0);
    log.compact(T0).unwrap().unwrap();
    let ck = log.cleaner_checkpoint();
    let got = read_records(&log, 0);
    // Find a kept batch that follows a gap, and one that follows its predecessor directly.
    let mut at = 0;
    let (mut prev_end, mut after_gap, mut dense) = (0u64, None, None);
    while at < ck {
        let r = log.read(at, 1).unwrap();
        let v = BatchView::new(&r.bytes).unwrap();
        let base = v.base_offset() as u64;
        if base > prev_end && after_gap.is_none() {
            after_gap = Some((base, prev_end));
        }
        if base == prev_end && base > 0 {
            dense = Some(base);
        }
        prev_end = v.last_offset() as u64 + 1;
        at = r.next_offset;
    }
    let (gap_base, previous_end) = after_gap.expect("compaction dropped a batch");
    assert!(matches!(
        log.truncate_to(gap_base),
        Err(StorageError::TruncateIntoCompactedGap { offset, previous_end: p }) if offset == gap_base && p == previous_end
    ));
    let dense = dense.expect("a batch directly after its predecessor");
    log.truncate_to(dense).unwrap();
    assert_eq!(log.log_end_offset(), dense);
    assert!(log.cleaner_checkpoint() <= dense);
    let kept: Vec<Rec> = got.into_iter().filter(|r| r.offset < dense).collect();
    assert_eq!(read_records(&log, 0), kept);
    // Appends continue, and a crash keeps the log end where the truncation put it.
    let next = append(&mut log, T0, &[(key(1), Some(b"after".to_vec()))]);
    assert_eq!(next, dense);
    log.flush().unwrap();
    drop(log);
    let log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    assert_eq!(log.log_end_offset(), dense + 1);
    let after = read_records(&log, 0);
    assert_eq!(after.last().unwrap().value.as_deref(), Some(&b"after"[..]));
}

#[test]
fn aborted_transactions_are_removed_committed_ones_compacted_and_open_ones_left_alone() {
    use creek_protocol::batch::{build_control_batch, set_producer};
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    let txn = |log: &mut PartitionLog, pid: i64, value: &[u8]| {
        let mut b = build_batch(0, T0, &[(Some(b"k"), Some(value))]);
        set_producer(&mut b, pid, 0, 0, true);
        log.append(&mut b, 0, T0).unwrap().base_offset
    };
    let end = |log: &mut PartitionLog, pid: i64, commit: bool| {
        log.append(&mut build_control_batch(pid, 0, commit, 0, T0), 0, T0).unwrap();
    };
    let filler = |log: &mut PartitionLog, from: usize| {
        for i in from..from + 20 {
            append(log, T0, &[(format!("filler-{i}").into_bytes(), Some(vec![b'p'; 2000]))]);
        }
    };
    append(&mut log, T0, &[(b"k".to_vec(), Some(b"v1".to_vec()))]);
    txn(&mut log, 1, b"v2-aborted");
    end(&mut log, 1, false);
    txn(&mut log, 2, b"v3-committed");
    end(&mut log, 2, true);
    filler(&mut log, 0);
    let open = txn(&mut log, 3, b"v4-open");
    filler(&mut log, 100);
    assert!(log.segment_count() >= 4);
    assert_eq!(log.first_unstable_offset(), Some(open));

    let stats = log.compact(T0).unwrap().expect("compaction is due");
    assert!(stats.records_removed >= 2, "{stats:?}");
    let values: Vec<Vec<u8>> =
        read_records(&log, 0).into_iter().filter(|r| r.key.as_deref() == Some(b"k")).filter_map(|r| r.value).collect();
    // v1 is superseded by the committed v3, the aborted v2 is gone, and the open v4 sits in a
    // segment the cleaner may not touch yet.
    assert_eq!(values, vec![b"v3-committed".to_vec(), b"v4-open".to_vec()]);
    assert_eq!(log.first_unstable_offset(), Some(open));
    assert_eq!(log.aborted_transactions(0, log.log_end_offset()).len(), 1, "the aborted index is kept");
    // Producer state replayed over the compacted log still ends every transaction.
    drop(log);
    let log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    assert_eq!(log.first_unstable_offset(), Some(open));
}

#[test]
fn compaction_never_cleans_at_or_above_the_retention_floor() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    produce(&mut log, 20_000, 100, 10, T0);
    let all = read_records(&log, 0);
    log.set_retention_floor(0);
    assert_eq!(log.compact(T0).unwrap(), None, "nothing ends at or below a floor of 0");
    log.set_retention_floor(5_000);
    let stats = log.compact(T0).unwrap().expect("the segments below the floor are due");
    let ck = log.cleaner_checkpoint();
    assert!(stats.cleaned_to == ck && ck > 0 && ck <= 5_000, "cleaned to {ck}");
    let got = read_records(&log, 0);
    assert_eq!(got, expected(&all, ck, false));
    let above: Vec<&Rec> = all.iter().filter(|r| r.offset >= 5_000).collect();
    assert_eq!(got.iter().filter(|r| r.offset >= 5_000).collect::<Vec<_>>(), above, "untouched above the floor");
    // Without a floor, compaction goes on past it.
    log.set_retention_floor(u64::MAX);
    log.compact(T0).unwrap().unwrap();
    assert!(log.cleaner_checkpoint() > 5_000);
}

/// `(base offset, last offset, leader epoch)` of every batch from `from` to the log end.
fn batch_spans(log: &PartitionLog, from: u64) -> Vec<(i64, i64, i32)> {
    let mut out = Vec::new();
    let mut at = from;
    while at < log.log_end_offset() {
        let r = log.read(at, 64 * 1024).unwrap();
        for range in batch_ranges(&r.bytes).unwrap() {
            let v = BatchView::new(&r.bytes[range]).unwrap();
            v.verify_crc().unwrap();
            out.push((v.base_offset(), v.last_offset(), v.partition_leader_epoch()));
        }
        at = r.next_offset;
    }
    out
}

#[test]
fn a_replicated_log_compacts_up_to_its_limit_and_keeps_every_batch() {
    // A Raft log addresses entries by batch: compaction above the retention floor (here 0, so
    // Raft still holds every entry) may clean only up to the committed end and must leave every
    // batch in place, with the same offsets and epoch, emptied ones as header-only batches.
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    produce(&mut log, 20_000, 50, 10, T0);
    let all = read_records(&log, 0);
    let spans = batch_spans(&log, 0);
    log.set_retention_floor(0);
    log.set_compaction_limit(Some(10_000));
    let stats = log.compact(T0).unwrap().expect("the segments below the limit are due");
    let ck = log.cleaner_checkpoint();
    assert!(stats.cleaned_to == ck && ck > 0 && ck <= 10_000, "cleaned to {ck}");
    assert_eq!(stats.batches_removed, 0, "{stats:?}");
    assert!(stats.records_removed > 0 && stats.bytes_after < stats.bytes_before, "{stats:?}");
    assert_eq!(batch_spans(&log, 0), spans, "the same batches, offsets and epochs");
    assert_eq!(read_records(&log, 0), expected(&all, ck, false));
    // Reopened (recovery scans the header-only batches), the batches are still all there.
    drop(log);
    let mut log = PartitionLog::open(dir.path(), compact_config(), T0).unwrap();
    assert_eq!(batch_spans(&log, 0), spans);
    // Without a limit the floor rules again: nothing ends at or below 0.
    log.set_retention_floor(0);
    assert_eq!(log.compact(T0).unwrap(), None);
}
