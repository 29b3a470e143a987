//! Log compaction (`cleanup.policy=compact`): keep the latest record per key in sealed segments, with the log's lock held only briefly.
//!
//! Three steps, so the caller's lock is held only for the cheap ones:
//! 1. [`PartitionLog::compaction_job`] (under the lock): decides whether compaction is due
//!    (dirty ratio, `max.compaction.lag.ms`, expired tombstones) and snapshots the cleanable
//!    sealed segments: their maps (zero-copy `Bytes`) and file identities.
//! 2. [`CompactionJob::run`] (no lock): builds an offset map (key → latest offset) over the dirty
//!    region `[dirty_start, dirty_end)` with bounded memory (`compaction_map_bytes_max`; when it
//!    is full only a prefix is cleaned), then rewrites every segment below the map's end into
//!    `{base}.log.cleaned` (+ `.index.cleaned`, `.timeindex.cleaned`), fsynced.
//! 3. [`PartitionLog::install`] (under the lock): checks the snapshot still describes the log
//!    (same generation, same files; retention or truncation in between discards the result),
//!    then swaps the files by rename and the segments in memory.
//!
//! What is kept. Offsets never change: a rewritten batch keeps its base offset and offset span
//! (`lastOffsetDelta`), its producer fields and leader epoch, and only loses records. A record is
//! removed when a later record with the same key is in the offset map, or when it is a tombstone
//! (null value) that has been in the cleaned region for `delete.retention.ms`. A batch left empty
//! is dropped, except the first and last batch of a segment and the first batch of each leader
//! epoch, which stay as header-only batches (no records, `maxTimestamp` -1, so time lookups skip
//! them): the segment keeps its base and end offsets and the leader-epoch cache can still be
//! rebuilt from the data. A replicated log whose replication layer addresses entries by batch
//! ([`PartitionLog::set_compaction_limit`]) keeps every batch, emptied ones as header-only
//! batches, so the batches and their offsets stay the same. Dropped batches leave offset gaps; a
//! read at an offset in a gap returns the next batch, as in Kafka. Gaps can only lie below the
//! persisted `gap_limit`, so recovery still refuses misnumbered batches everywhere else.
//! Kept as-is, never decoded for removal: control batches (transaction markers), keyless
//! records, and any batch that cannot be decoded within `compaction_decompressed_bytes_max`
//! (never drop data we cannot reason about).
//!
//! Transactions. Only segments wholly below the first unstable offset are cleaned, so every
//! transactional batch the cleaner sees has ended. A batch of a committed transaction is cleaned
//! like any other (its records count in the offset map and can be superseded); a batch of an
//! aborted transaction (its producer id and offset inside an entry of the aborted index) loses
//! all its records, and its keys never enter the map, so aborted records can never shadow
//! committed ones. Markers stay, so `read_committed` readers and producer-state replay still
//! see every transaction end.
//!
//! Codecs: gzip, snappy and lz4 batches are re-compressed with their own codec; zstd batches are
//! written uncompressed (we only decode zstd; `ruzstd`'s encoder is young), which is legal since
//! each batch names its codec.
//!
//! Tombstone timing, like Kafka's "time since the segment was cleaned" but on the injected clock:
//! the cleaner checkpoint records `(end offset, now_ms)` for each completed clean; a tombstone at
//! offset `o` becomes removable `delete.retention.ms` after the first clean whose end passed `o`.
//! The earliest such time is checkpointed too, so a clean runs for expired tombstones alone.
//!
//! Crash protocol. The `.cleaned` files are written and fsynced first; a crash before the commit
//! point leaves them behind and recovery deletes them (the old segments are untouched). The commit
//! point is writing `cleaner-swap` (atomically: temp, fsync, rename, fsync directory), listing the
//! bases and the new cleaner state. Then each segment's `.index`, `.timeindex` and lastly `.log`
//! are renamed over the old files, the directory fsynced, `cleaner-checkpoint` written and
//! `cleaner-swap` removed. Recovery that finds `cleaner-swap` finishes the renames (each one is
//! atomic and the new files were durable before the commit point), so a crash leaves either the
//! old or the new segment set. Old files are replaced by rename, never truncated, so maps held by
//! readers stay valid.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use creek_protocol::batch::{BatchView, Compression};
use creek_protocol::records::{BatchBuilder, BatchHeader, DecodedBatch, Record, can_compress};

use crate::checkpoint::{self, io_err, sync_dir, write_file_atomic};
use crate::segment::{BatchInfo, INDEX_EXT, LOG_EXT, Segment, TIME_INDEX_EXT, file_name};
use crate::{LogConfig, PartitionLog, StorageError, mmap};

pub(crate) const CLEANER_CHECKPOINT: &str = "cleaner-checkpoint";
pub(crate) const CLEANER_SWAP: &str = "cleaner-swap";
/// Suffix of a cleaned segment's files before they are swapped in.
pub(crate) const CLEANED_SUFFIX: &str = ".cleaned";
/// Estimated bytes of offset-map overhead per key, beyond the key itself.
const MAP_ENTRY_OVERHEAD: u64 = 64;
/// Most `(end offset, time)` entries kept; older ones are merged (later time: safe).
const CLEANED_ENTRIES_MAX: usize = 64;

/// The cleaner's persisted progress for one log (`cleaner-checkpoint`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CleanerState {
    /// First offset not yet cleaned (Kafka's "first dirty offset").
    pub(crate) dirty_start: u64,
    /// Compaction may have left gaps between batches only at offsets at or below this.
    pub(crate) gap_limit: u64,
    /// `(end, time)` ascending: offsets below `end` had been cleaned by `time`.
    pub(crate) cleaned: Vec<(u64, i64)>,
    /// Earliest time a kept tombstone becomes removable.
    pub(crate) tombstones_due_ms: Option<i64>,
}

impl CleanerState {
    fn to_lines(&self) -> String {
        let due = self.tombstones_due_ms.map_or("none".to_string(), |t| t.to_string());
        let mut s = format!("{}\n{}\n{}\n{}\n", self.dirty_start, self.gap_limit, due, self.cleaned.len());
        for (o, t) in &self.cleaned {
            s.push_str(&format!("{o} {t}\n"));
        }
        s
    }

    fn parse(lines: &[String]) -> Option<Self> {
        let [dirty, gap, due, n, rest @ ..] = lines else {
            return None;
        };
        let n: usize = n.trim().parse().ok()?;
        if rest.len() < n {
            return None;
        }
        let mut cleaned = Vec::with_capacity(n);
        for l in &rest[..n] {
            let (o, t) = l.trim().split_once(' ')?;
            cleaned.push((o.parse().ok()?, t.parse().ok()?));
        }
        Some(CleanerState {
            dirty_start: dirty.trim().parse().ok()?,
            gap_limit: gap.trim().parse().ok()?,
            tombstones_due_ms: match due.trim() {
                "none" => None,
                t => Some(t.parse().ok()?),
            },
            cleaned,
        })
    }

    /// When the tombstone at `offset` was first cleaned, if it was.
    fn cleaned_at(&self, offset: u64) -> Option<i64> {
        let i = self.cleaned.partition_point(|&(end, _)| end <= offset);
        self.cleaned.get(i).map(|&(_, t)| t)
    }

    /// Forgets everything at or above `offset` (truncation).
    pub(crate) fn truncate(&mut self, offset: u64) -> bool {
        let before = self.clone();
        self.dirty_start = self.dirty_start.min(offset);
        self.gap_limit = self.gap_limit.min(offset);
        for e in &mut self.cleaned {
            e.0 = e.0.min(offset);
        }
        self.cleaned.dedup_by_key(|e| e.0); // keeps the first (earliest) of equal ends
        *self != before
    }
}

pub(crate) fn read_state(dir: &Path) -> CleanerState {
    checkpoint::read_lines(dir, CLEANER_CHECKPOINT).and_then(|l| CleanerState::parse(&l)).unwrap_or_default()
}

pub(crate) fn write_state(dir: &Path, state: &CleanerState) -> Result<(), StorageError> {
    let text = format!("{}\n{}", checkpoint::VERSION, state.to_lines());
    write_file_atomic(dir, CLEANER_CHECKPOINT, text.as_bytes())?;
    sync_dir(dir)
}

fn cleaned_path(dir: &Path, base: u64, ext: &str) -> PathBuf {
    dir.join(format!("{}{CLEANED_SUFFIX}", file_name(base, ext)))
}

/// Creates (or empties) a file open for reading and writing.
fn create_rw(path: &Path) -> Result<File, StorageError> {
    fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).map_err(io_err(path))
}

pub(crate) fn remove_if_exists(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// Renames a cleaned segment's files over the live ones: indexes first, the log last.
fn swap_files(dir: &Path, base: u64) -> Result<(), StorageError> {
    for ext in [INDEX_EXT, TIME_INDEX_EXT, LOG_EXT] {
        let from = cleaned_path(dir, base, ext);
        if from.exists() {
            let to = dir.join(file_name(base, ext));
            fs::rename(&from, &to).map_err(io_err(&to))?;
        }
    }
    Ok(())
}

/// Recovery's part: finishes a committed swap (`cleaner-swap` present) and deletes the files of
/// any uncommitted clean. Runs before segments are listed.
pub(crate) fn recover_swap(dir: &Path) -> Result<(), StorageError> {
    if let Some(lines) = checkpoint::read_lines(dir, CLEANER_SWAP) {
        let parsed = lines.split_first().and_then(|(bases, state)| {
            let bases: Option<Vec<u64>> = bases.split_whitespace().map(|b| b.parse().ok()).collect();
            Some((bases?, CleanerState::parse(state)?))
        });
        match parsed {
            Some((bases, state)) => {
                tracing::info!(dir = %dir.display(), segments = bases.len(), "finishing an interrupted compaction swap");
                for base in bases {
                    swap_files(dir, base)?;
                }
                sync_dir(dir)?;
                write_state(dir, &state)?;
            }
            None => {
                tracing::warn!(dir = %dir.display(), "malformed compaction swap manifest ignored")
            }
        }
    }
    remove_if_exists(&dir.join(CLEANER_SWAP))?;
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if entry.file_name().to_str().is_some_and(|n| n.ends_with(CLEANED_SUFFIX)) {
            remove_if_exists(&entry.path())?;
        }
    }
    Ok(())
}

/// What one compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// Segments replaced by cleaned copies.
    pub segments_rewritten: usize,
    /// Their sizes before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Records removed because a later record has the same key.
    pub records_removed: u64,
    /// Tombstones removed after `delete.retention.ms`.
    pub tombstones_removed: u64,
    /// Batches dropped entirely.
    pub batches_removed: u64,
    /// The new first dirty offset: everything below it has been cleaned.
    pub cleaned_to: u64,
}

/// Clears the log's "a compaction is under way" flag when the job or its result is dropped.
#[derive(Debug)]
struct BusyGuard(Arc<AtomicBool>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[derive(Debug)]
struct SegmentSnapshot {
    base: u64,
    next_offset: u64,
    data: Bytes,
    file: Arc<File>,
}

/// A snapshot of the segments to clean, taken under the lock; [`CompactionJob::run`] it without.
#[derive(Debug)]
pub struct CompactionJob {
    dir: PathBuf,
    config: LogConfig,
    now_ms: i64,
    generation: u64,
    state: CleanerState,
    dirty_start: u64,
    segments: Vec<SegmentSnapshot>,
    /// Aborted transactions overlapping the snapshot (their batches are removed).
    aborted: Vec<crate::AbortedTxn>,
    /// Every batch stays, emptied ones as header-only batches (a replicated log).
    keep_every_batch: bool,
    guard: BusyGuard,
}

#[derive(Debug)]
struct Replacement {
    old_file: Arc<File>,
    old_len: u64,
    segment: Segment,
}

/// Cleaned segment files ready to swap in with [`PartitionLog::install`]. Dropping it without
/// installing deletes its files.
#[derive(Debug)]
pub struct CompactionResult {
    dir: PathBuf,
    generation: u64,
    old_state: CleanerState,
    new_state: CleanerState,
    replaced: Vec<Replacement>,
    stats: CompactionStats,
    committed: bool,
    _guard: BusyGuard,
}

impl CompactionResult {
    pub fn stats(&self) -> &CompactionStats {
        &self.stats
    }
}

impl Drop for CompactionResult {
    fn drop(&mut self) {
        if self.committed {
            return; // recovery needs the files to finish the swap
        }
        for r in &self.replaced {
            for ext in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT] {
                let _ = fs::remove_file(cleaned_path(&self.dir, r.segment.base_offset, ext));
            }
        }
    }
}

/// What to do with one batch.
enum Filtered {
    Keep,
    Rewrite(Vec<u8>),
    Empty,
}

/// The records of `d` if they decode cleanly and agree with the header.
fn records_of<'a>(d: &'a DecodedBatch<'_>) -> Option<Vec<Record<'a>>> {
    let v = d.view();
    let recs: Vec<Record<'a>> = d.iter().collect::<Result<_, _>>().ok()?;
    let in_span = |r: &Record<'_>| r.offset >= v.base_offset() && r.offset <= v.last_offset();
    let increasing = recs.windows(2).all(|w| w[0].offset < w[1].offset);
    (recs.len() == v.records_count().max(0) as usize && increasing && recs.iter().all(in_span)).then_some(recs)
}

impl CompactionJob {
    fn corrupt(&self, seg: &SegmentSnapshot, pos: usize, e: impl ToString) -> StorageError {
        StorageError::Corrupt {
            path: self.dir.join(file_name(seg.base, LOG_EXT)),
            position: pos as u64,
            reason: e.to_string(),
        }
    }

    /// Batch views of a snapshot segment with their positions.
    fn batches<'a>(&self, seg: &'a SegmentSnapshot) -> Result<Vec<(usize, BatchView<'a>)>, StorageError> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < seg.data.len() {
            let v = BatchView::new(&seg.data[pos..]).map_err(|e| self.corrupt(seg, pos, e))?;
            out.push((pos, v));
            pos += v.total_len();
        }
        Ok(out)
    }

    fn decode<'a>(&self, v: BatchView<'a>) -> Option<DecodedBatch<'a>> {
        if v.is_control() || self.is_aborted(&v) {
            return None;
        }
        DecodedBatch::new(v, self.config.compaction_decompressed_bytes_max).ok()
    }

    /// A data batch of a transaction that ended with an abort.
    fn is_aborted(&self, v: &BatchView<'_>) -> bool {
        let (pid, base) = (v.producer_id(), v.base_offset() as u64);
        v.is_transactional()
            && !v.is_control()
            && self.aborted.iter().any(|a| a.producer_id == pid && a.first_offset <= base && base < a.last_offset)
    }

    /// Key → latest offset over the dirty region, within the memory cap. Returns the map and the
    /// offset it covers up to.
    fn build_map(&self) -> Result<(HashMap<Vec<u8>, u64>, u64), StorageError> {
        let cap = self.config.compaction_map_bytes_max;
        let mut map: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut map_bytes = 0u64;
        let mut map_end = self.dirty_start;
        for seg in &self.segments {
            if seg.next_offset <= self.dirty_start {
                continue;
            }
            for (_, v) in self.batches(seg)? {
                let last = v.last_offset() as u64;
                if last < self.dirty_start {
                    continue;
                }
                if let Some(d) = self.decode(v)
                    && let Some(recs) = records_of(&d)
                {
                    let added: u64 = recs
                        .iter()
                        .filter_map(|r| r.key)
                        .filter(|k| !map.contains_key(*k))
                        .map(|k| k.len() as u64 + MAP_ENTRY_OVERHEAD)
                        .sum();
                    if map_bytes + added > cap && !map.is_empty() {
                        return Ok((map, map_end)); // full: clean the prefix below this batch
                    }
                    map_bytes += added;
                    for r in &recs {
                        if let Some(k) = r.key {
                            match map.get_mut(k) {
                                Some(o) => *o = r.offset as u64,
                                None => {
                                    map.insert(k.to_vec(), r.offset as u64);
                                }
                            }
                        }
                    }
                }
                map_end = last + 1;
            }
            map_end = seg.next_offset;
        }
        Ok((map, map_end))
    }

    /// Decides a batch's fate. Never drops what it cannot decode.
    fn filter(
        &self,
        v: &BatchView<'_>,
        map: &HashMap<Vec<u8>, u64>,
        map_end: u64,
        stats: &mut CompactionStats,
        due: &mut Option<i64>,
    ) -> Filtered {
        if self.is_aborted(v) {
            stats.records_removed += v.records_count().max(0) as u64;
            return Filtered::Empty;
        }
        let Some(d) = self.decode(*v) else {
            return Filtered::Keep;
        };
        let Some(recs) = records_of(&d) else {
            return Filtered::Keep;
        };
        let retention = self.config.delete_retention_ms;
        let mut kept = Vec::with_capacity(recs.len());
        let (mut superseded, mut tombstones) = (0u64, 0u64);
        let mut kept_due: Option<i64> = None;
        for r in recs {
            let offset = r.offset as u64;
            let Some(key) = r.key else {
                kept.push(r); // keyless: nothing to reason about
                continue;
            };
            if map.get(key).is_some_and(|&latest| latest > offset) {
                superseded += 1;
                continue;
            }
            if r.value.is_none() {
                match self.state.cleaned_at(offset) {
                    Some(t) if self.now_ms.saturating_sub(t) >= retention => {
                        tombstones += 1;
                        continue;
                    }
                    Some(t) => {
                        let d = t.saturating_add(retention);
                        kept_due = Some(kept_due.map_or(d, |x| x.min(d)));
                    }
                    None if offset < map_end => {
                        let d = self.now_ms.saturating_add(retention);
                        kept_due = Some(kept_due.map_or(d, |x| x.min(d)));
                    }
                    None => {}
                }
            }
            kept.push(r);
        }
        let merge_due = |due: &mut Option<i64>| {
            if let Some(k) = kept_due {
                *due = Some(due.map_or(k, |x| x.min(k)));
            }
        };
        if superseded + tombstones == 0 {
            merge_due(due);
            return Filtered::Keep;
        }
        let filtered = if kept.is_empty() {
            Filtered::Empty
        } else {
            let mut b = BatchBuilder::new(BatchHeader::from_view(v));
            if kept.iter().any(|r| b.push(r).is_err()) {
                merge_due(due);
                return Filtered::Keep;
            }
            let codec = if can_compress(v.compression()) { v.compression() } else { Compression::None };
            match b.clone().finish(codec).or_else(|_| b.finish(Compression::None)) {
                Ok(bytes) => Filtered::Rewrite(bytes),
                Err(_) => {
                    merge_due(due);
                    return Filtered::Keep;
                }
            }
        };
        merge_due(due);
        stats.records_removed += superseded;
        stats.tombstones_removed += tombstones;
        filtered
    }

    /// Writes the cleaned copy of `seg`; `None` if nothing in it changes.
    fn rewrite(
        &self,
        seg: &SegmentSnapshot,
        map: &HashMap<Vec<u8>, u64>,
        map_end: u64,
        stats: &mut CompactionStats,
        due: &mut Option<i64>,
    ) -> Result<Option<Segment>, StorageError> {
        let batches = self.batches(seg)?;
        let path = cleaned_path(&self.dir, seg.base, LOG_EXT);
        let file = create_rw(&path)?;
        let mut w = BufWriter::new(&file);
        let mut infos: Vec<BatchInfo> = Vec::with_capacity(batches.len());
        let mut out_pos = 0u64;
        let mut local = CompactionStats::default();
        let mut local_due = None;
        let mut changed = false;
        let mut prev_epoch = None;
        for (i, (_, v)) in batches.iter().enumerate() {
            let epoch = v.partition_leader_epoch();
            let shell = self.keep_every_batch || i == 0 || i + 1 == batches.len() || prev_epoch != Some(epoch);
            prev_epoch = Some(epoch);
            let out: Vec<u8>;
            let bytes: &[u8] = match self.filter(v, map, map_end, &mut local, &mut local_due) {
                Filtered::Keep => v.as_bytes(),
                Filtered::Rewrite(b) => {
                    changed = true;
                    out = b;
                    &out
                }
                Filtered::Empty => {
                    changed = true;
                    if !shell {
                        local.batches_removed += 1;
                        continue;
                    }
                    // No records, so no timestamp: -1 keeps time lookups (ListOffsets by
                    // timestamp, the time index, retention) on batches that hold records.
                    let header = BatchHeader { max_timestamp: -1, ..BatchHeader::from_view(v) };
                    out = BatchBuilder::new(header)
                        .finish(Compression::None)
                        .expect("an empty uncompressed batch always encodes");
                    &out
                }
            };
            let ov = BatchView::new(bytes).expect("a batch this job just encoded or read");
            if out_pos + bytes.len() as u64 > u64::from(u32::MAX) {
                // Positions are u32. Fail the job rather than skip the segment: a skipped
                // segment would keep records the new checkpoint says are gone.
                return Err(StorageError::Corrupt {
                    path: path.clone(),
                    position: out_pos,
                    reason: "cleaned segment would exceed 4 GiB".into(),
                });
            }
            infos.push(BatchInfo::of(&ov, out_pos));
            w.write_all(bytes).map_err(io_err(&path))?;
            out_pos += bytes.len() as u64;
        }
        w.flush().map_err(io_err(&path))?;
        drop(w);
        if let Some(d) = local_due {
            *due = Some(due.map_or(d, |x| x.min(d)));
        }
        if !changed {
            drop(file);
            remove_if_exists(&path)?;
            return Ok(None);
        }
        file.sync_all().map_err(io_err(&path))?;
        let data = mmap::map_read(&file, out_pos).map_err(io_err(&path))?;
        let mut new = Segment::blank(&self.dir, seg.base, file, out_pos, data);
        for b in &infos {
            new.record_batch(b, self.config.index_interval_bytes);
            new.next_offset = b.last + 1;
        }
        new.valid_len = out_pos;
        assert_eq!(new.next_offset, seg.next_offset, "compaction keeps a segment's last batch");
        assert_eq!(infos.first().map(|b| b.base), Some(seg.base), "compaction keeps a segment's first batch");
        new.push_time_entry();
        for ext in [INDEX_EXT, TIME_INDEX_EXT] {
            let p = cleaned_path(&self.dir, seg.base, ext);
            let bytes = if ext == INDEX_EXT { new.offset_index.bytes() } else { new.time_index.bytes() };
            let mut f = create_rw(&p)?;
            f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io_err(&p))?;
            let m = mmap::map_read(&f, bytes.len() as u64).map_err(io_err(&p))?;
            if ext == INDEX_EXT {
                new.offset_index.set_mapped(m);
            } else {
                new.time_index.set_mapped(m);
            }
        }
        new.sealed = true;
        stats.records_removed += local.records_removed;
        stats.tombstones_removed += local.tombstones_removed;
        stats.batches_removed += local.batches_removed;
        stats.bytes_before += seg.data.len() as u64;
        stats.bytes_after += out_pos;
        stats.segments_rewritten += 1;
        Ok(Some(new))
    }

    /// Builds the offset map and writes cleaned copies of the segments below its end. Reads only
    /// the snapshot; holds no lock. Safe to drop the result instead of installing it.
    pub fn run(self) -> Result<CompactionResult, StorageError> {
        let (map, map_end) = self.build_map()?;
        let mut stats = CompactionStats { cleaned_to: map_end, ..CompactionStats::default() };
        let mut due = None;
        let mut replaced = Vec::new();
        let outcome = (|| {
            for seg in self.segments.iter().filter(|s| s.base < map_end) {
                if let Some(new) = self.rewrite(seg, &map, map_end, &mut stats, &mut due)? {
                    replaced.push(Replacement {
                        old_file: seg.file.clone(),
                        old_len: seg.data.len() as u64,
                        segment: new,
                    });
                }
            }
            sync_dir(&self.dir)
        })();
        let mut new_state = self.state.clone();
        if map_end > new_state.dirty_start {
            new_state.dirty_start = map_end;
            new_state.cleaned.push((map_end, self.now_ms));
        }
        if let Some(r) = replaced.last() {
            new_state.gap_limit = new_state.gap_limit.max(r.segment.next_offset);
        }
        let first = self.segments.first().map_or(0, |s| s.base);
        while new_state.cleaned.len() > 1 && new_state.cleaned[0].0 <= first {
            new_state.cleaned.remove(0);
        }
        while new_state.cleaned.len() > CLEANED_ENTRIES_MAX {
            new_state.cleaned.remove(0); // its offsets fall to the next entry's later time
        }
        new_state.tombstones_due_ms = due;
        let result = CompactionResult {
            dir: self.dir.clone(),
            generation: self.generation,
            old_state: self.state.clone(),
            new_state,
            replaced,
            stats,
            committed: false,
            _guard: self.guard,
        };
        outcome?; // on error, dropping `result` deletes what was written
        Ok(result)
    }
}

/// The part of [`PartitionLog`] that schedules, runs and installs compaction.
impl PartitionLog {
    /// Under the caller's lock, cheap: if `cleanup.policy` includes compact and compaction is
    /// due at `now_ms`, a snapshot of the sealed segments to clean. `None` when not due, when
    /// another job of this log is still alive, or after a failed swap (until the log is reopened).
    pub fn compaction_job(&self, now_ms: i64) -> Result<Option<CompactionJob>, StorageError> {
        let c = &self.config;
        if !c.cleanup_compact || self.cleaner_failed || self.cleaner_busy.load(Ordering::Acquire) {
            return Ok(None);
        }
        let sealed = &self.segments[..self.segments.len() - 1];
        // Open transactions are not cleaned: only segments wholly below the first unstable offset.
        // Nor at or above the retention floor (or a replicated log's compaction limit): only
        // segments ending at or below it.
        let limit = self.compaction_limit.unwrap_or(self.retention_floor);
        let stable_end = self.first_unstable_offset().unwrap_or(u64::MAX).min(limit);
        let lag_ok = |s: &Segment| {
            s.next_offset <= stable_end
                && (c.min_compaction_lag_ms <= 0 || s.max_timestamp <= now_ms.saturating_sub(c.min_compaction_lag_ms))
        };
        let n = sealed.iter().take_while(|s| lag_ok(s)).count();
        if n == 0 {
            return Ok(None);
        }
        let segs = &sealed[..n];
        let dirty_end = segs[n - 1].next_offset;
        let dirty_start = self.cleaner.dirty_start.max(segs[0].base_offset).min(dirty_end);
        let total: u64 = segs.iter().map(|s| s.valid_len).sum();
        let (mut dirty_bytes, mut first_dirty_ts) = (0u64, None);
        if dirty_start < dirty_end {
            let i = segs.partition_point(|s| s.base_offset <= dirty_start) - 1;
            let pos = segs[i].position_of(dirty_start)?;
            first_dirty_ts = Some(segs[i].batch_at(pos)?.max_timestamp());
            dirty_bytes = segs[i].valid_len - pos + segs[i + 1..].iter().map(|s| s.valid_len).sum::<u64>();
        }
        let ratio_due = dirty_bytes > 0 && dirty_bytes as f64 >= c.min_cleanable_dirty_ratio * total as f64;
        let lag_due = c.max_compaction_lag_ms >= 0
            && first_dirty_ts.is_some_and(|t| t <= now_ms.saturating_sub(c.max_compaction_lag_ms));
        let tombstones_due =
            dirty_start > segs[0].base_offset && self.cleaner.tombstones_due_ms.is_some_and(|t| t <= now_ms);
        if !(ratio_due || lag_due || tombstones_due) {
            return Ok(None);
        }
        self.cleaner_busy.store(true, Ordering::Release);
        Ok(Some(CompactionJob {
            dir: self.dir.clone(),
            config: c.clone(),
            now_ms,
            generation: self.generation,
            state: self.cleaner.clone(),
            dirty_start,
            segments: segs
                .iter()
                .map(|s| SegmentSnapshot {
                    base: s.base_offset,
                    next_offset: s.next_offset,
                    data: s.slice(0, s.valid_len),
                    file: s.file.clone(),
                })
                .collect(),
            aborted: self.aborted_transactions(segs[0].base_offset, dirty_end),
            keep_every_batch: self.compaction_limit.is_some(),
            guard: BusyGuard(self.cleaner_busy.clone()),
        }))
    }

    /// Under the caller's lock: swaps in the cleaned segments of `result` (see the module docs
    /// for the crash protocol). Returns `None`, discarding the result, if the log changed under
    /// the job (a truncation, or retention deleting a segment it cleaned).
    pub fn install(&mut self, result: CompactionResult) -> Result<Option<CompactionStats>, StorageError> {
        self.install_inner(result, None)
    }

    /// Fault injection for crash tests: installs like [`PartitionLog::install`] up to and
    /// including the commit point, then renames only the first `renames` files and stops, as a
    /// crash would. The log must then be dropped (it no longer matches its files) and reopened.
    #[doc(hidden)]
    pub fn install_interrupted(&mut self, result: CompactionResult, renames: usize) -> Result<(), StorageError> {
        match self.install_inner(result, Some(renames)) {
            Err(StorageError::Io { source, .. }) if source.to_string() == "injected crash" => Ok(()),
            other => other.map(|_| ()),
        }
    }

    fn install_inner(
        &mut self,
        mut result: CompactionResult,
        crash_after_renames: Option<usize>,
    ) -> Result<Option<CompactionStats>, StorageError> {
        if result.generation != self.generation || result.old_state != self.cleaner {
            return Ok(None);
        }
        let last = self.segments.len() - 1;
        let mut slots = Vec::with_capacity(result.replaced.len());
        for r in &result.replaced {
            let i = self.segments[..last].iter().position(|s| s.base_offset == r.segment.base_offset);
            match i {
                Some(i)
                    if Arc::ptr_eq(&self.segments[i].file, &r.old_file)
                        && self.segments[i].valid_len == r.old_len
                        && self.segments[i].next_offset == r.segment.next_offset =>
                {
                    slots.push(i);
                }
                _ => return Ok(None),
            }
        }
        let mut state = result.new_state.clone();
        state.dirty_start = state.dirty_start.min(self.log_end_offset());
        let swapped = (|| {
            if !result.replaced.is_empty() {
                let bases: Vec<String> = result.replaced.iter().map(|r| r.segment.base_offset.to_string()).collect();
                let manifest = format!("{}\n{}\n{}", checkpoint::VERSION, bases.join(" "), state.to_lines());
                write_file_atomic(&self.dir, CLEANER_SWAP, manifest.as_bytes())?;
                sync_dir(&self.dir)?;
                result.committed = true; // from here on recovery finishes the swap
                if let Some(mut n) = crash_after_renames {
                    self.cleaner_failed = true;
                    'crash: for r in &result.replaced {
                        for ext in [INDEX_EXT, TIME_INDEX_EXT, LOG_EXT] {
                            if n == 0 {
                                break 'crash;
                            }
                            n -= 1;
                            let to = self.dir.join(file_name(r.segment.base_offset, ext));
                            let from = cleaned_path(&self.dir, r.segment.base_offset, ext);
                            fs::rename(&from, &to).map_err(io_err(&to))?;
                        }
                    }
                    return Err(StorageError::Io {
                        path: self.dir.clone(),
                        source: std::io::Error::other("injected crash"),
                    });
                }
                for r in &result.replaced {
                    swap_files(&self.dir, r.segment.base_offset)?;
                }
                sync_dir(&self.dir)?;
            }
            write_state(&self.dir, &state)?;
            remove_if_exists(&self.dir.join(CLEANER_SWAP))?;
            sync_dir(&self.dir)
        })();
        if let Err(e) = swapped {
            if result.committed {
                // Disk and memory may now disagree until the next open finishes the swap.
                self.cleaner_failed = true;
            }
            return Err(e);
        }
        for (r, i) in std::mem::take(&mut result.replaced).into_iter().zip(slots) {
            self.segments[i] = r.segment;
        }
        self.cleaner = state;
        self.check_invariants();
        Ok(Some(result.stats.clone()))
    }

    /// Runs a whole compaction under the caller's lock (`compaction_job`, `run`, `install`):
    /// for tests and callers without concurrency. `None` if none was due or it was discarded.
    pub fn compact(&mut self, now_ms: i64) -> Result<Option<CompactionStats>, StorageError> {
        match self.compaction_job(now_ms)? {
            Some(job) => self.install(job.run()?),
            None => Ok(None),
        }
    }

    /// The first offset not yet compacted (the persisted cleaner checkpoint).
    pub fn cleaner_checkpoint(&self) -> u64 {
        self.cleaner.dirty_start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaner_state_round_trips_and_answers_when_an_offset_was_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_state(dir.path()), CleanerState::default());
        let mut s = CleanerState {
            dirty_start: 300,
            gap_limit: 280,
            cleaned: vec![(100, 5_000), (300, 9_000)],
            tombstones_due_ms: Some(12_000),
        };
        write_state(dir.path(), &s).unwrap();
        assert_eq!(read_state(dir.path()), s);
        assert_eq!(s.cleaned_at(0), Some(5_000));
        assert_eq!(s.cleaned_at(99), Some(5_000));
        assert_eq!(s.cleaned_at(100), Some(9_000));
        assert_eq!(s.cleaned_at(300), None);
        assert!(s.truncate(150));
        assert_eq!((s.dirty_start, s.gap_limit), (150, 150));
        assert_eq!(s.cleaned, vec![(100, 5_000), (150, 9_000)]);
        assert!(!s.truncate(1_000));
        fs::write(dir.path().join(CLEANER_CHECKPOINT), "0\n1\n").unwrap();
        assert_eq!(read_state(dir.path()), CleanerState::default(), "malformed reads as never cleaned");
    }
}
