//! Property test: the partition log against an in-memory `BTreeMap` model, across rolls, retention, compaction, truncation and reboots.
//!
//! Compaction is checked against its contract rather than re-implemented: the records that remain
//! are a subset of those before (same offsets and contents), everything at or above the cleaned
//! offset stays, keyless records stay, keys are unique below the cleaned offset, a consumer's
//! table (latest value per key, tombstones deleting) is unchanged, and a tombstone disappears only
//! `delete.retention.ms` after its region was first cleaned. The model then adopts the log's
//! batches, so every later read is still compared byte for byte.
//! Reboots are clean (close + open) or crashes (drop without close), optionally damaging the last
//! segment file after the flushed offset (cut, zero-fill or flip a byte). Flushed data must
//! survive; unflushed data may vanish but only as a suffix of whole batches, never corrupted.
//! proptest prints the failing case and stores its seed under `proptest-regressions/`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use creek_protocol::batch::{BatchView, batch_ranges, build_batch, framed_len};
use creek_protocol::records::DecodedBatch;
use creek_storage::{LogConfig, PartitionLog, StorageError};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct BatchSpec {
    records: usize,
    ts_delta: i64,
    no_timestamp: bool,
    value_len: usize,
    /// Picks the records' keys (from a small key space) and which are tombstones.
    key_seed: usize,
    keyless: bool,
}

#[derive(Debug, Clone)]
enum Damage {
    None,
    Cut(u64),
    Zero(u64),
    Flip(u64),
}

#[derive(Debug, Clone)]
enum Op {
    Append { batches: Vec<BatchSpec>, bump_epoch: bool },
    Read { pick: u64, max_bytes: usize },
    TimeLookup { pick: i64 },
    Flush,
    Tick { ms: i64 },
    DeleteRecords { pick: u64 },
    Truncate { pick: u64 },
    Compact { ms: i64 },
    CleanReboot,
    Crash { damage: Damage },
}

fn batch_spec() -> impl Strategy<Value = BatchSpec> {
    (1usize..=10, -3_000i64..3_000, prop::bool::weighted(0.05), 0usize..40, any::<usize>(), prop::bool::weighted(0.1))
        .prop_map(|(records, ts_delta, no_timestamp, value_len, key_seed, keyless)| BatchSpec {
            records,
            ts_delta,
            no_timestamp,
            value_len,
            key_seed: key_seed % 1_000,
            keyless,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (prop::collection::vec(batch_spec(), 1..=5), prop::bool::weighted(0.15))
            .prop_map(|(batches, bump_epoch)| Op::Append { batches, bump_epoch }),
        4 => (any::<u64>(), 1usize..3_000).prop_map(|(pick, max_bytes)| Op::Read { pick, max_bytes }),
        1 => any::<i64>().prop_map(|pick| Op::TimeLookup { pick }),
        2 => Just(Op::Flush),
        2 => (0i64..30_000).prop_map(|ms| Op::Tick { ms }),
        1 => any::<u64>().prop_map(|pick| Op::DeleteRecords { pick }),
        1 => any::<u64>().prop_map(|pick| Op::Truncate { pick }),
        2 => (0i64..40_000).prop_map(|ms| Op::Compact { ms }),
        1 => Just(Op::CleanReboot),
        2 => prop_oneof![
            Just(Damage::None),
            any::<u64>().prop_map(Damage::Cut),
            any::<u64>().prop_map(Damage::Zero),
            any::<u64>().prop_map(Damage::Flip),
        ]
        .prop_map(|damage| Op::Crash { damage }),
    ]
}

fn config() -> impl Strategy<Value = LogConfig> {
    (
        1024u64..4096,
        prop_oneof![Just(i64::MAX / 4), 5_000i64..60_000],
        prop_oneof![Just(-1i64), 20_000i64..200_000],
        prop_oneof![Just(-1i64), 2_000i64..12_000],
        0u32..600,
        prop_oneof![Just(10u32 << 20), 48u32..256],
        prop_oneof![Just(8u64 << 20), 100u64..2_000],
        compaction_config(),
    )
        .prop_map(
            |(
                segment_bytes,
                segment_ms,
                retention_ms,
                retention_bytes,
                index_interval_bytes,
                segment_index_bytes,
                preallocate_chunk_bytes,
                compaction,
            )| {
                LogConfig {
                    segment_bytes,
                    segment_ms,
                    retention_ms,
                    retention_bytes,
                    index_interval_bytes,
                    segment_index_bytes,
                    preallocate_chunk_bytes,
                    ..compaction
                }
            },
        )
}

/// The compaction settings (the rest of the config is filled in by `config`).
fn compaction_config() -> impl Strategy<Value = LogConfig> {
    (
        prop::bool::weighted(0.7),
        prop::bool::weighted(0.8),
        0.0f64..1.0,
        prop_oneof![Just(0i64), 0i64..20_000],
        prop_oneof![Just(i64::MAX), 0i64..60_000],
        0i64..30_000,
        prop_oneof![Just(64u64 << 20), 100u64..1_000],
    )
        .prop_map(|(compact, delete, ratio, min_lag, max_lag, delete_retention, map_bytes)| LogConfig {
            cleanup_compact: compact,
            cleanup_delete: delete,
            min_cleanable_dirty_ratio: ratio,
            min_compaction_lag_ms: min_lag,
            max_compaction_lag_ms: max_lag,
            delete_retention_ms: delete_retention,
            compaction_map_bytes_max: map_bytes,
            ..LogConfig::default()
        })
}

/// One record as a consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    offset: u64,
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

fn records(batches: &BTreeMap<u64, Vec<u8>>) -> Vec<Rec> {
    let mut out = Vec::new();
    for b in batches.values() {
        let d = DecodedBatch::new(BatchView::new(b).unwrap(), 1 << 20).unwrap();
        for r in d.iter() {
            let r = r.unwrap();
            out.push(Rec {
                offset: r.offset as u64,
                timestamp: r.timestamp,
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.map(<[u8]>::to_vec),
            });
        }
    }
    out
}

/// Latest value per key, tombstones deleting: what a consumer reading from the start builds.
fn table(recs: &[Rec]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut t = BTreeMap::new();
    for r in recs {
        if let Some(k) = &r.key {
            match &r.value {
                Some(v) => t.insert(k.clone(), v.clone()),
                None => t.remove(k),
            };
        }
    }
    t
}

/// Visible batches by base offset (those ending at or after the log start).
#[derive(Debug, Default)]
struct Model {
    batches: BTreeMap<u64, Vec<u8>>,
    log_start: u64,
    log_end: u64,
    flushed: u64,
    epoch: i32,
    now: i64,
    /// `(cleaned offset, time)` of each compaction that moved the cleaned offset.
    cleaned: Vec<(u64, i64)>,
}

fn last_offset(b: &[u8]) -> u64 {
    BatchView::new(b).unwrap().last_offset() as u64
}

impl Model {
    /// The batch holding `offset`, or the next one if compaction removed it.
    fn containing(&self, offset: u64) -> Option<(u64, &Vec<u8>)> {
        if let Some((&base, b)) = self.batches.range(..=offset).next_back()
            && last_offset(b) >= offset
        {
            return Some((base, b));
        }
        self.batches.range(offset..).next().map(|(&base, b)| (base, b))
    }
    fn drop_below_start(&mut self) {
        let start = self.log_start;
        self.batches.retain(|_, b| last_offset(b) >= start);
    }
    fn epochs(&self) -> Vec<(i32, u64)> {
        let mut out: Vec<(i32, u64)> = Vec::new();
        for (&base, b) in &self.batches {
            let e = BatchView::new(b).unwrap().partition_leader_epoch();
            if out.last().is_none_or(|&(le, _)| e > le) {
                out.push((e, base.max(self.log_start)));
            }
        }
        out
    }
}

/// A record's key and value as `build_batch` takes them.
type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

fn build(spec: &BatchSpec, now: i64) -> Vec<u8> {
    let keys: Vec<Vec<u8>> =
        (0..spec.records).map(|i| format!("k{}", (spec.key_seed + 3 * i) % 6).into_bytes()).collect();
    let values: Vec<Vec<u8>> = (0..spec.records)
        .map(|i| {
            let mut v = format!("{}-{i}-", spec.key_seed).into_bytes();
            v.resize(v.len() + spec.value_len, b'x');
            v
        })
        .collect();
    let recs: Vec<KeyValue<'_>> = (0..spec.records)
        .map(|i| {
            let key = (!spec.keyless).then_some(keys[i].as_slice());
            let tombstone = (spec.key_seed + i).is_multiple_of(7);
            (key, (!tombstone).then_some(values[i].as_slice()))
        })
        .collect();
    let ts = if spec.no_timestamp { -1 } else { now + spec.ts_delta };
    build_batch(0, ts, &recs)
}

fn check_read(log: &PartitionLog, m: &Model, offset: u64, max_bytes: usize) -> Result<(), TestCaseError> {
    let r = log.read(offset, max_bytes);
    if offset < m.log_start || offset > m.log_end {
        prop_assert!(matches!(r, Err(StorageError::OffsetOutOfRange { .. })), "read {offset}: {r:?}");
        return Ok(());
    }
    let r = r.map_err(|e| TestCaseError::fail(format!("read {offset}: {e}")))?;
    if offset == m.log_end {
        prop_assert!(r.bytes.is_empty());
        prop_assert_eq!(r.next_offset, m.log_end);
        return Ok(());
    }
    let (first, _) = m.containing(offset).expect("model holds every visible offset");
    let ranges = batch_ranges(&r.bytes).unwrap();
    prop_assert!(!ranges.is_empty());
    prop_assert!(ranges.len() == 1 || r.bytes.len() <= max_bytes, "{} bytes for max {max_bytes}", r.bytes.len());
    let mut expect = m.batches.range(first..);
    for range in ranges {
        let (_, want) = expect.next().expect("read beyond the model");
        prop_assert_eq!(&r.bytes[range], &want[..], "read at {}", offset);
    }
    let last = last_offset(&r.bytes[batch_ranges(&r.bytes).unwrap().pop().unwrap()]);
    prop_assert_eq!(r.next_offset, last + 1);
    Ok(())
}

fn verify_all(log: &PartitionLog, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.log_start_offset(), m.log_start);
    prop_assert_eq!(log.log_end_offset(), m.log_end);
    for (&base, b) in &m.batches {
        check_read(log, m, base.max(m.log_start), 1)?;
        check_read(log, m, last_offset(b), 0)?;
    }
    // Chained reads cover exactly the visible batches.
    let mut all = Vec::new();
    let mut at = m.log_start;
    while at < m.log_end {
        let r = log.read(at, 1500).map_err(|e| TestCaseError::fail(e.to_string()))?;
        all.extend_from_slice(&r.bytes);
        prop_assert!(r.next_offset > at);
        at = r.next_offset;
    }
    prop_assert_eq!(all, m.batches.values().flatten().copied().collect::<Vec<u8>>());
    // Timestamps.
    let max = m
        .batches
        .values()
        .max_by_key(|b| (BatchView::new(b).unwrap().max_timestamp(), std::cmp::Reverse(last_offset(b))));
    let got = log.max_timestamp_batch().map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(got.as_deref(), max.map(|b| &b[..]));
    for b in m.batches.values().step_by(3) {
        check_time(log, m, BatchView::new(b).unwrap().max_timestamp())?;
    }
    // Leader epochs.
    // Compaction may remove every visible batch of the epoch covering the log start (it keeps
    // the first batch of each epoch, but that one may lie below the log start); the log's epoch
    // cache still has it, starting at the log start, and the model cannot see it.
    let epochs = m.epochs();
    let hidden_first = |got: Option<(i32, u64)>| {
        !m.cleaned.is_empty()
            && got.is_some_and(|(e, end)| {
                epochs.first().is_none_or(|&(first, start)| e < first && end == start)
                    && (epochs.is_empty() || end > m.log_start)
            })
    };
    let latest = log.latest_epoch();
    if !(epochs.is_empty() && latest.is_some() && !m.cleaned.is_empty()) {
        prop_assert_eq!(latest, epochs.last().map(|e| e.0));
    }
    for e in -1..=m.epoch + 1 {
        let i = epochs.iter().rposition(|&(le, _)| le <= e);
        let want = i.map(|i| (epochs[i].0, epochs.get(i + 1).map_or(m.log_end, |x| x.1)));
        let got = log.end_offset_for_epoch(e);
        if want.is_none() && hidden_first(got) {
            continue;
        }
        prop_assert_eq!(got, want, "epoch {}", e);
    }
    prop_assert!(
        log.size_bytes()
            >= m.batches.iter().filter(|(b, _)| **b >= m.log_start).map(|(_, v)| v.len() as u64).sum::<u64>()
    );
    Ok(())
}

fn check_time(log: &PartitionLog, m: &Model, ts: i64) -> Result<(), TestCaseError> {
    let want = m.batches.values().find(|b| BatchView::new(b).unwrap().max_timestamp() >= ts);
    let got = log.batch_at_timestamp(ts).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(got.as_deref(), want.map(|b| &b[..]), "timestamp {}", ts);
    Ok(())
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut logs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().expect("a segment")
}

/// Damages the last segment file somewhere after the flushed offset. Returns whether it did.
fn damage(dir: &Path, flushed: u64, damage: &Damage) -> bool {
    let path = last_segment(dir);
    let data = fs::read(&path).unwrap();
    // Walk the file's batches to find where unflushed data starts and where data ends.
    let (mut pos, mut from, mut starts) = (0usize, None, Vec::new());
    while let Ok(len) = framed_len(&data[pos..]) {
        if data[pos..pos + 12].iter().all(|&b| b == 0) || pos + len > data.len() {
            break;
        }
        let base = BatchView::new(&data[pos..]).unwrap().base_offset() as u64;
        if base >= flushed && from.is_none() {
            from = Some(pos);
        }
        starts.push(pos);
        pos += len;
    }
    let (Some(from), end) = (from, pos) else {
        return false;
    };
    if from == end {
        return false;
    }
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    use std::os::unix::fs::FileExt;
    match *damage {
        Damage::None => return false,
        Damage::Cut(p) => f.set_len(from as u64 + p % (end - from) as u64).unwrap(),
        Damage::Zero(p) => {
            let at = from + (p % (end - from) as u64) as usize;
            f.write_all_at(&vec![0; end - at], at as u64).unwrap();
        }
        Damage::Flip(p) => {
            let mut at = from + (p % (end - from) as u64) as usize;
            // partitionLeaderEpoch (header bytes 12..16) is outside the CRC, as in Kafka: a flip
            // there is undetectable by design, so flip a CRC byte instead.
            let start = starts[starts.partition_point(|&s| s <= at) - 1];
            if (12..16).contains(&(at - start)) {
                at = start + 17;
            }
            f.write_all_at(&[data[at] ^ 0x5a], at as u64).unwrap();
        }
    }
    true
}

fn fail(e: StorageError) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// Compacts and checks the result against compaction's contract (see the file docs), then
/// adopts the log's batches.
fn compact(l: &mut PartitionLog, m: &mut Model, config: &LogConfig) -> Result<(), TestCaseError> {
    let before = records(&m.batches);
    let outcome = l.compact(m.now).map_err(fail)?;
    prop_assert_eq!(l.log_end_offset(), m.log_end);
    prop_assert_eq!(l.log_start_offset(), m.log_start);
    let mut batches = BTreeMap::new();
    let mut at = m.log_start;
    while at < m.log_end {
        let r = l.read(at, 4096).map_err(fail)?;
        for range in batch_ranges(&r.bytes).unwrap() {
            let b = r.bytes[range].to_vec();
            let v = BatchView::new(&b).unwrap();
            v.verify_crc().unwrap();
            batches.insert(v.base_offset() as u64, b);
        }
        prop_assert!(r.next_offset > at);
        at = r.next_offset;
    }
    let Some(stats) = outcome else {
        prop_assert!(batches == m.batches, "no compaction, no change");
        return Ok(());
    };
    prop_assert!(config.cleanup_compact);
    let after = records(&batches);
    let ck = stats.cleaned_to;
    // A subsequence of what was there, with everything at or above the cleaned offset.
    let mut it = after.iter().peekable();
    for r in &before {
        if it.peek() == Some(&r) {
            it.next();
            continue;
        }
        prop_assert!(r.offset < ck, "record at {} >= cleaned offset {} removed", r.offset, ck);
        prop_assert!(r.key.is_some(), "keyless record at {} removed", r.offset);
        let superseded = before.iter().any(|x| x.offset > r.offset && x.key == r.key);
        if !superseded {
            prop_assert!(r.value.is_none(), "latest value of a key removed at {}", r.offset);
            let first_clean = m.cleaned.iter().find(|&&(end, _)| end > r.offset);
            prop_assert!(
                first_clean.is_some_and(|&(_, t)| m.now - t >= config.delete_retention_ms),
                "tombstone at {} removed too early (cleaned {:?}, now {})",
                r.offset,
                m.cleaned,
                m.now
            );
        }
    }
    prop_assert!(it.next().is_none(), "compaction invented records");
    prop_assert_eq!(table(&after), table(&before));
    let mut keys = std::collections::BTreeSet::new();
    for r in after.iter().filter(|r| r.offset < ck) {
        if let Some(k) = &r.key {
            prop_assert!(keys.insert(k.clone()), "key {:?} twice below {}", k, ck);
        }
    }
    if m.cleaned.last().is_none_or(|&(end, _)| ck > end) {
        m.cleaned.push((ck, m.now));
    }
    m.batches = batches;
    Ok(())
}

fn run(config: LogConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("topic-0");
    let mut m = Model { now: 1_700_000_000_000, ..Model::default() };
    let mut log = Some(PartitionLog::open(&dir, config.clone(), m.now).map_err(fail)?);
    for op in ops {
        let l = log.as_mut().unwrap();
        match op {
            Op::Append { batches, bump_epoch } => {
                if bump_epoch {
                    m.epoch += 1;
                }
                let built: Vec<Vec<u8>> = batches.iter().map(|s| build(s, m.now)).collect();
                let mut blob = built.concat();
                let info = l.append(&mut blob, m.epoch, m.now).map_err(fail)?;
                prop_assert_eq!(info.base_offset, m.log_end);
                for r in batch_ranges(&blob).unwrap() {
                    let b = blob[r].to_vec();
                    let v = BatchView::new(&b).unwrap();
                    prop_assert_eq!(v.partition_leader_epoch(), m.epoch);
                    v.verify_crc().unwrap();
                    m.log_end = last_offset(&b) + 1;
                    m.batches.insert(v.base_offset() as u64, b);
                }
                prop_assert_eq!(info.last_offset + 1, m.log_end);
                prop_assert_eq!(l.log_end_offset(), m.log_end);
            }
            Op::Read { pick, max_bytes } => {
                let span = m.log_end - m.log_start + 5;
                let offset = (m.log_start + pick % span).saturating_sub(2);
                check_read(l, &m, offset, max_bytes)?;
            }
            Op::TimeLookup { pick } => check_time(l, &m, m.now - 5_000 + pick.rem_euclid(10_000))?,
            Op::Flush => {
                prop_assert_eq!(l.flush().map_err(fail)?, m.log_end);
            }
            Op::Tick { ms } => {
                m.now += ms;
                let before = m.log_start;
                l.housekeeping(m.now).map_err(fail)?;
                let start = l.log_start_offset();
                prop_assert!(start >= before && start <= m.log_end);
                prop_assert!(start == before || start == m.log_end || m.batches.contains_key(&start));
                let removed: Vec<&Vec<u8>> = m.batches.values().filter(|b| last_offset(b) < start).collect();
                if config.retention_bytes < 0 {
                    if config.retention_ms < 0 {
                        prop_assert!(removed.is_empty());
                    }
                    for b in removed {
                        prop_assert!(BatchView::new(b).unwrap().max_timestamp() < m.now - config.retention_ms);
                    }
                }
                m.log_start = start;
                m.drop_below_start();
            }
            Op::DeleteRecords { pick } => {
                let offset = m.log_start + pick % (m.log_end - m.log_start + 1);
                prop_assert_eq!(l.delete_records_before(offset).map_err(fail)?, offset);
                m.log_start = offset;
                m.drop_below_start();
            }
            Op::Truncate { pick } => {
                let mut points: Vec<u64> = m.batches.keys().copied().filter(|&b| b >= m.log_start).collect();
                points.push(m.log_end);
                let offset = points[(pick % points.len() as u64) as usize];
                match l.truncate_to(offset) {
                    Err(StorageError::TruncateIntoCompactedGap { previous_end, .. }) => {
                        // Only where compaction removed the batches just below `offset`.
                        prop_assert!(!m.cleaned.is_empty() && previous_end < offset);
                        let before = m.batches.range(..offset).next_back();
                        prop_assert!(before.is_none_or(|(_, b)| last_offset(b) + 1 < offset));
                        continue;
                    }
                    r => r.map_err(fail)?,
                }
                for e in &mut m.cleaned {
                    e.0 = e.0.min(offset);
                }
                m.cleaned.dedup_by_key(|e| e.0);
                m.batches.retain(|&b, _| b < offset);
                m.log_end = offset;
                m.flushed = m.flushed.min(offset);
            }
            Op::Compact { ms } => {
                m.now += ms;
                compact(l, &mut m, &config)?;
            }
            Op::CleanReboot => {
                log.take().unwrap().close().map_err(fail)?;
                log = Some(PartitionLog::open(&dir, config.clone(), m.now).map_err(fail)?);
                verify_all(log.as_ref().unwrap(), &m)?;
            }
            Op::Crash { damage: d } => {
                let flushed = l.flushed_offset();
                prop_assert!(flushed >= m.flushed);
                drop(log.take());
                let damaged = damage(&dir, flushed, &d);
                let l = PartitionLog::open(&dir, config.clone(), m.now).map_err(fail)?;
                let end = l.log_end_offset();
                prop_assert!(
                    end >= flushed && end <= m.log_end.max(m.log_start),
                    "end {} flushed {} was {}",
                    end,
                    flushed,
                    m.log_end
                );
                if !damaged {
                    prop_assert_eq!(end, m.log_end);
                }
                let boundary = end == m.log_end || m.batches.contains_key(&end) || end == m.log_start;
                prop_assert!(boundary, "log end {} is not a batch boundary", end);
                m.batches.retain(|_, b| last_offset(b) < end);
                m.log_end = end;
                log = Some(l);
                verify_all(log.as_ref().unwrap(), &m)?;
            }
        }
        let l = log.as_ref().unwrap();
        prop_assert!(l.flushed_offset() >= m.flushed.min(m.log_end));
        m.flushed = l.flushed_offset();
        prop_assert_eq!(l.log_end_offset(), m.log_end);
        prop_assert_eq!(l.log_start_offset(), m.log_start);
    }
    let l = log.take().unwrap();
    verify_all(&l, &m)?;
    l.close().map_err(fail)?;
    let l = PartitionLog::open(&dir, config, m.now).map_err(fail)?;
    verify_all(&l, &m)?;
    l.delete().map_err(fail)?;
    prop_assert!(!dir.exists());
    Ok(())
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N overrides.
    /// The log behaves like the model through every operation, reboot and crash.
    #[test]
    fn log_matches_model(config in config(), ops in prop::collection::vec(op(), 1..60)) {
        run(config, ops)?;
    }
}
