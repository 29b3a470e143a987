//! Opening a partition directory: find segments, trust or rebuild their indexes, cut a torn tail.
//!
//! After a clean shutdown (marker present) indexes are trusted once they pass cheap checks.
//! Otherwise every segment that may hold data above the recovery point (and always the last one)
//! is re-read from its start with CRC-32C checks; the first partial, corrupt or misnumbered batch
//! ends the log there. Leftover zeros from preallocation are the normal end of data.

use std::fs;
use std::path::Path;

use bytes::Bytes;

use crate::checkpoint::{self, io_err, sync_dir};
use crate::compaction::{self, CLEANED_SUFFIX, CleanerState};
use crate::epoch::EpochCache;
use crate::index::{OffsetIndex, TimeIndex};
use crate::segment::{INDEX_EXT, LOG_EXT, Segment, TIME_INDEX_EXT, file_name, scan};
use crate::{LogConfig, StorageError, mmap};

pub(crate) struct Recovered {
    pub(crate) segments: Vec<Segment>,
    pub(crate) log_start: u64,
    pub(crate) epochs: EpochCache,
    pub(crate) cleaner: CleanerState,
}

/// Parses `{20 digits}.{ext}`.
fn parse_name(name: &str) -> Option<(u64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, ext))
}

fn read_index_file(path: &Path) -> Option<Bytes> {
    let f = fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    mmap::map_read(&f, len).ok()
}

/// Loads a segment whose indexes should be right, checking them cheaply: well-formed entries, the
/// last offset entry pointing at the batch it names, a clean end after it, a time index that
/// covers the data. `None` means "rebuild".
fn load_trusted(
    dir: &Path,
    base: u64,
    file_len: u64,
    map: &Bytes,
    gap_limit: u64,
) -> Option<(OffsetIndex, TimeIndex, u64, u64, u64)> {
    let oi = OffsetIndex::parse(read_index_file(&dir.join(file_name(base, INDEX_EXT)))?, file_len)?;
    let ti = TimeIndex::parse(read_index_file(&dir.join(file_name(base, TIME_INDEX_EXT)))?)?;
    let (rel, pos) = oi.last().unwrap_or((0, 0));
    let mut seen = 0usize;
    let mut max_seen = i64::MIN;
    let end = scan(map, u64::from(pos), base + u64::from(rel), base, false, gap_limit, |b| {
        seen += 1;
        max_seen = max_seen.max(b.max_ts);
    });
    if !end.clean || (oi.len() > 0 && seen == 0) {
        return None;
    }
    if end.pos == 0 {
        return (oi.len() == 0 && ti.len() == 0).then_some((oi, ti, 0, base, 0));
    }
    let (t, r) = ti.last()?;
    if base + u64::from(r) >= end.next_offset || max_seen > t {
        return None;
    }
    Some((oi, ti, end.pos, end.next_offset, u64::from(pos)))
}

/// Opens one segment file. `trusted` says whether its indexes may be used (after checks);
/// otherwise, or if they fail the checks, the segment is re-read with CRC checks and its indexes
/// rebuilt, and `on_scanned` sees each batch. Returns the segment and whether it was rebuilt.
fn open_segment(
    dir: &Path,
    base: u64,
    trusted: bool,
    interval: u32,
    gap_limit: u64,
    on_scanned: &mut impl FnMut(u64, i32),
) -> Result<(Segment, bool), StorageError> {
    let path = dir.join(file_name(base, LOG_EXT));
    let file = Segment::open_file(&path, false)?;
    let file_len = file.metadata().map_err(io_err(&path))?.len();
    let map = mmap::map_read(&file, file_len).map_err(io_err(&path))?;
    let mut seg = Segment::blank(dir, base, file, file_len, map.clone());
    if trusted
        && let Some((oi, ti, valid_len, next_offset, last_entry_pos)) =
            load_trusted(dir, base, file_len, &map, gap_limit)
    {
        if let Some((t, r)) = ti.last() {
            seg.max_timestamp = t;
            seg.max_timestamp_offset = base + u64::from(r);
        }
        seg.offset_index = oi;
        seg.time_index = ti;
        seg.valid_len = valid_len;
        seg.next_offset = next_offset;
        seg.bytes_since_index = valid_len - last_entry_pos;
        return Ok((seg, false));
    }
    if trusted {
        tracing::warn!(path = %path.display(), "segment index missing or inconsistent; rebuilding");
    }
    let end = scan(&map, 0, base, base, true, gap_limit, |b| {
        seg.record_batch(b, interval);
        on_scanned(b.base, b.epoch);
    });
    if !end.clean {
        tracing::warn!(
            path = %path.display(),
            position = end.pos,
            next_offset = end.next_offset,
            reason = end.reason.as_deref().unwrap_or(""),
            "truncating torn or corrupt tail"
        );
    }
    seg.valid_len = end.pos;
    seg.next_offset = end.next_offset;
    Ok((seg, true))
}

pub(crate) fn recover(dir: &Path, config: &LogConfig, now_ms: i64) -> Result<Recovered, StorageError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let marker = dir.join(checkpoint::CLEAN_SHUTDOWN);
    let clean = marker.exists();
    if clean {
        fs::remove_file(&marker).map_err(io_err(&marker))?;
        sync_dir(dir)?; // a crash from now on must be seen as unclean
    }

    // Finish a reset the crash interrupted (it discards everything, so it goes first), then
    // finish or discard a compaction, before looking at segments.
    if let Some(offset) = checkpoint::read_u64(dir, checkpoint::LOG_RESET) {
        tracing::warn!(dir = %dir.display(), offset, "finishing an interrupted log reset");
        drop(finish_reset(dir, offset)?);
    }
    compaction::recover_swap(dir)?;
    let mut cleaner = compaction::read_state(dir);
    let gap_limit = cleaner.gap_limit;

    let mut bases = Vec::new();
    let mut index_files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") || name.ends_with(CLEANED_SUFFIX) {
            let _ = fs::remove_file(entry.path());
            continue;
        }
        match parse_name(name) {
            Some((base, LOG_EXT)) => bases.push(base),
            Some((base, INDEX_EXT | TIME_INDEX_EXT)) => index_files.push((base, entry.path())),
            _ => {}
        }
    }
    bases.sort_unstable();
    for (base, path) in index_files {
        if bases.binary_search(&base).is_err() {
            let _ = fs::remove_file(path);
        }
    }

    let recovery_point =
        if clean { u64::MAX } else { checkpoint::read_u64(dir, checkpoint::RECOVERY_POINT).unwrap_or(0) };
    let log_start_ck = checkpoint::read_u64(dir, checkpoint::LOG_START_OFFSET);
    let epochs_ck = checkpoint::read_epochs(dir);
    // Without the epoch checkpoint, rebuild it from every batch.
    let force_full = epochs_ck.is_none() && !bases.is_empty();
    let mut epochs = EpochCache::from_entries(epochs_ck.unwrap_or_default());
    let mut observe = |offset: u64, epoch: i32| epochs_observe(&mut epochs, epoch, offset);

    let mut segments: Vec<Segment> = Vec::new();
    let mut rebuilt = Vec::new();
    for (i, &base) in bases.iter().enumerate() {
        if let Some(prev) = segments.last()
            && prev.next_offset != base
        {
            // A gap or overlap: everything from here on cannot be trusted to follow on.
            tracing::warn!(dir = %dir.display(), expected = prev.next_offset, found = base, "discarding segments after a discontinuity");
            for &b in &bases[i..] {
                for ext in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT, crate::producer::TXN_INDEX_EXT] {
                    let p = dir.join(file_name(b, ext));
                    match fs::remove_file(&p) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(io_err(&p)(e));
                        }
                        _ => {}
                    }
                }
            }
            break;
        }
        let below_recovery_point = bases.get(i + 1).is_some_and(|&next| next <= recovery_point);
        let trusted = !force_full && (clean || below_recovery_point);
        let (seg, was_rebuilt) = open_segment(
            dir,
            base,
            trusted,
            config.index_interval_bytes,
            // Sealed segments may hold compaction gaps anywhere: this way a lost cleaner
            // checkpoint cannot make recovery cut them. The last one (which may have been
            // truncated into a compacted region) is held to the checkpoint's gap limit, so a
            // misnumbered torn tail is still caught.
            if i + 1 < bases.len() { u64::MAX } else { gap_limit },
            &mut observe,
        )?;
        rebuilt.push(was_rebuilt);
        segments.push(seg);
    }

    // Everything but the last segment is sealed: trimmed, indexes on disk and mapped.
    let n = segments.len();
    for (seg, &was_rebuilt) in segments.iter_mut().zip(&rebuilt).take(n.saturating_sub(1)) {
        if seg.allocated_len != seg.valid_len || was_rebuilt {
            seg.trim_and_sync()?;
        }
        if was_rebuilt {
            seg.push_time_entry();
            seg.write_indexes(true)?;
        }
        seg.sealed = true;
    }
    if let Some(active) = segments.last_mut() {
        // Drop the preallocated (or torn) tail; the next append preallocates again. Nothing
        // outside this function has seen the map yet, so shrinking is safe.
        if active.allocated_len != active.valid_len || rebuilt.last() == Some(&true) {
            active.trim_and_sync()?;
        }
        if !active.is_empty() {
            active.first_append_ms = Some(now_ms);
        }
    }

    let mut log_start = log_start_ck.unwrap_or(0);
    if let Some(first) = segments.first() {
        log_start = log_start.max(first.base_offset);
    }
    let log_end = segments.last().map_or(log_start, |s| s.next_offset);
    if log_start > log_end || segments.is_empty() {
        // Everything below the log start was deleted (or unflushed data below it was lost).
        for seg in segments.drain(..) {
            seg.delete_files()?;
        }
        epochs = EpochCache::default();
        segments.push(Segment::create(dir, log_start)?);
    } else {
        // Finish deletions a crash interrupted.
        while segments.len() > 1 && segments[0].next_offset <= log_start {
            segments.remove(0).delete_files()?;
        }
    }
    let log_end = segments.last().map_or(log_start, |s| s.next_offset);
    if cleaner.truncate(log_end) {
        compaction::write_state(dir, &cleaner)?;
    }
    epochs.truncate_from_end(log_end);
    epochs.truncate_from_start(log_start, log_end);
    sync_dir(dir)?;
    checkpoint::write_epochs(dir, epochs.entries())?;
    checkpoint::write_u64(dir, checkpoint::LOG_START_OFFSET, log_start)?;
    checkpoint::write_u64(dir, checkpoint::RECOVERY_POINT, log_end)?;
    Ok(Recovered { segments, log_start, epochs, cleaner })
}

/// Carries out a reset whose commit point (`log-reset` holding `offset`, durable) is passed:
/// removes every segment, index, aborted index, producer snapshot and compaction file, writes
/// the checkpoints of an empty log at `offset` (no epochs, log start and recovery point
/// `offset`), creates the empty segment `offset` and removes the marker last. Idempotent, so a
/// crash at any point is finished by running it again; until the marker is gone, recovery runs
/// it again whatever else it finds.
pub(crate) fn finish_reset(dir: &Path, offset: u64) -> Result<Segment, StorageError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // Every `{offset}.{ext}` file is the log's, except caller-owned `{name}.state` files.
        let log_file =
            parse_name(name).is_some_and(|(_, ext)| !ext.starts_with("state")) || name.ends_with(CLEANED_SUFFIX);
        if log_file || name == compaction::CLEANER_SWAP || name == compaction::CLEANER_CHECKPOINT {
            compaction::remove_if_exists(&entry.path())?;
        }
    }
    sync_dir(dir)?;
    checkpoint::write_epochs(dir, &[])?;
    checkpoint::write_u64(dir, checkpoint::LOG_START_OFFSET, offset)?;
    checkpoint::write_u64(dir, checkpoint::RECOVERY_POINT, offset)?;
    let segment = Segment::create(dir, offset)?;
    sync_dir(dir)?;
    compaction::remove_if_exists(&dir.join(checkpoint::LOG_RESET))?;
    sync_dir(dir)?;
    Ok(segment)
}

/// Recovery's lenient form of `EpochCache::assign`: a batch of a newer epoch starts a new entry;
/// anything else (an old epoch in untrusted data) is ignored.
fn epochs_observe(cache: &mut EpochCache, epoch: i32, offset: u64) {
    let newer = match cache.entries().last() {
        Some(&(e, o)) => epoch > e && offset > o,
        None => epoch >= 0,
    };
    if newer {
        cache.assign(epoch, offset);
    }
}
