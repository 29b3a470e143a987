//! Creek's partition log: segment files of opaque RecordBatch v2 bytes, with indexes, recovery and retention.
//!
//! What it is: one [`PartitionLog`] per partition directory. Batches are appended whole (their
//! `baseOffset` and `partitionLeaderEpoch` stamped in place), read back zero-copy as
//! [`bytes::Bytes`] sliced from read-only memory maps, and made durable by fsync in a group-commit
//! friendly way ([`PartitionLog::flush_target`] syncs outside the caller's lock). Segments roll by
//! size, time and index size; retention deletes whole segments by time and size; DeleteRecords
//! moves the log start; truncation cuts the tail at a batch boundary; [`PartitionLog::reset_to`]
//! starts over, empty, at any offset; a caller-set retention floor
//! ([`PartitionLog::set_retention_floor`]) bounds retention, DeleteRecords and compaction, and a
//! replicated log's compaction limit ([`PartitionLog::set_compaction_limit`]) lets compaction run
//! above it while keeping every batch.
//! Opening a directory recovers it: a torn or corrupt tail after a crash is cut off, missing or
//! bad indexes are rebuilt.
//! Compaction (`cleanup.policy=compact`, see [`CompactionJob`]) keeps the latest record per key
//! in sealed segments, in three steps so the caller's lock is held only for the cheap ones:
//! [`PartitionLog::compaction_job`] (lock), [`CompactionJob::run`] (no lock),
//! [`PartitionLog::install`] (lock).
//!
//! What it deliberately does not do: it knows nothing of sockets, Raft or Kafka requests, decodes
//! records only to compact (appends and reads see the 61-byte batch header only), never reads a
//! clock (time is passed in) and spawns no threads. Locking is the caller's: `PartitionLog` is
//! `Send` and is used behind a mutex.
//!
//! Main types: [`PartitionLog`], [`LogConfig`], [`AppendInfo`], [`ReadResult`], [`FlushTarget`],
//! [`CompactionJob`], [`CompactionResult`], [`CompactionStats`], [`StorageError`].
//!
//! On disk, per partition directory: `{base_offset:020}.log` (batches), `.index` (sparse
//! relative offset → position), `.timeindex` (sparse max timestamp → relative offset), and the
//! checkpoints `recovery-point`, `log-start-offset`, `leader-epoch-checkpoint`,
//! `cleaner-checkpoint` (compaction progress), plus `clean-shutdown` while closed cleanly, and the
//! caller's opaque `{name}.state` files ([`PartitionLog::write_state_file`]). A
//! compaction in flight leaves `*.cleaned` files and, between its commit point and its end,
//! `cleaner-swap`; recovery finishes or discards them. A reset in flight leaves `log-reset`
//! (its commit point); recovery finishes the reset.
//!
//! Offsets in a segment are dense except where compaction removed whole batches (only below
//! the cleaner's persisted gap limit); a read at a removed offset returns the next batch.
//!
//! ```
//! use creek_protocol::batch::build_batch;
//! use creek_storage::{LogConfig, PartitionLog};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let mut log = PartitionLog::open(dir.path(), LogConfig::default(), 1_000).unwrap();
//! let mut batch = build_batch(0, 1_000, &[(None, Some(b"hello")), (None, Some(b"world"))]);
//! let info = log.append(&mut batch, 0, 1_000).unwrap();
//! assert_eq!((info.base_offset, info.last_offset), (0, 1));
//! log.flush().unwrap();
//! let read = log.read(1, 1 << 20).unwrap(); // offset 1 is inside the batch: the whole batch
//! assert_eq!(&read.bytes[..], &batch[..]);
//! assert_eq!(read.next_offset, 2);
//! log.close().unwrap();
//! ```

mod checkpoint;
mod compaction;
mod epoch;
mod index;
mod mmap;
mod producer;
mod recovery;
mod segment;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use creek_protocol::batch::{
    BatchError, BatchView, HEADER_LEN, batch_ranges, set_base_offset, set_partition_leader_epoch,
};

use crate::checkpoint::{io_err, sync_dir};
use crate::compaction::CleanerState;
pub use crate::compaction::{CompactionJob, CompactionResult, CompactionStats};
use crate::epoch::EpochCache;
use crate::index::{OFFSET_ENTRY_LEN, TIME_ENTRY_LEN};
pub use crate::producer::{AbortedTxn, MAX_CACHED_BATCHES, ProducerEntry, ProducerError};
use crate::producer::{Check, ProducerState, SNAPSHOT_EXT};
use crate::segment::{BatchInfo, LOG_EXT, Segment};

/// Per-partition log settings, named after the Kafka topic configs they implement.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would exceed it.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the active segment's first append is at least this old.
    pub segment_ms: i64,
    /// `retention.ms`: delete segments whose largest timestamp is older; -1 = unlimited.
    pub retention_ms: i64,
    /// `retention.bytes`: delete the oldest segments while the log is larger; -1 = unlimited.
    pub retention_bytes: i64,
    /// `index.interval.bytes`: bytes between sparse index entries.
    pub index_interval_bytes: u32,
    /// `segment.index.bytes`: roll when an index would exceed it.
    pub segment_index_bytes: u32,
    /// The active segment grows by `fallocate` in chunks of this (capped by `segment_bytes`).
    pub preallocate_chunk_bytes: u64,
    /// `cleanup.policy` contains `delete`: retention by time and size applies.
    pub cleanup_delete: bool,
    /// `cleanup.policy` contains `compact`: sealed segments are compacted by key.
    pub cleanup_compact: bool,
    /// `delete.retention.ms`: how long a tombstone survives after the first compaction that
    /// cleaned past it (measured on the `now_ms` passed to compaction, not file times).
    pub delete_retention_ms: i64,
    /// `min.cleanable.dirty.ratio`: compact when dirty bytes / cleanable bytes reach this.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: segments holding a record newer than this are not compacted.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: compact regardless of the dirty ratio once the oldest dirty
    /// batch is this old.
    pub max_compaction_lag_ms: i64,
    /// Memory cap of one compaction's offset map (keys plus overhead); a full map cleans a prefix.
    pub compaction_map_bytes_max: u64,
    /// Cap on one batch's decompressed records during compaction; larger batches are kept as-is.
    pub compaction_decompressed_bytes_max: usize,
    /// `producer.id.expiration.ms`: producer state idle this long (by batch timestamps) is
    /// dropped, unless it has a transaction open.
    pub producer_id_expiration_ms: i64,
    /// Most producers whose state one partition keeps; beyond it the longest idle are forgotten
    /// (see `ProducerState::bound`), so invented producer ids cannot exhaust memory.
    pub producer_state_max_entries: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            segment_index_bytes: 10 << 20,
            preallocate_chunk_bytes: 8 << 20,
            cleanup_delete: true,
            cleanup_compact: false,
            delete_retention_ms: 24 * 60 * 60 * 1000,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            compaction_map_bytes_max: 64 << 20,
            compaction_decompressed_bytes_max: 64 << 20,
            producer_id_expiration_ms: 24 * 60 * 60 * 1000,
            producer_state_max_entries: 10_000,
        }
    }
}

/// Offsets assigned by an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: u64,
    pub last_offset: u64,
    /// Largest `maxTimestamp` among the appended batches.
    pub max_timestamp: i64,
    /// The `now_ms` of the append, for LogAppendTime topics.
    pub log_append_time_ms: i64,
    /// The batch was a producer's retry of one already in the log: nothing was written and the
    /// offsets are the original ones (`max_timestamp` is -1).
    pub duplicate: bool,
}

/// Whole batches read from the log.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Whole batches, zero-copy from a read-only map. Empty at the log end.
    pub bytes: Bytes,
    /// Offset after the last returned batch (the read offset itself if nothing was returned).
    pub next_offset: u64,
}

/// What to fsync to make the log durable up to [`FlushTarget::covers`], taken under the
/// caller's lock and synced outside it (group commit).
#[derive(Debug, Clone)]
pub struct FlushTarget {
    files: Vec<Arc<File>>,
    covers: u64,
    generation: u64,
}

impl FlushTarget {
    /// fsyncs the data (not metadata that reads do not need) of every file with unsynced appends.
    pub fn sync(&self) -> std::io::Result<()> {
        for f in &self.files {
            f.sync_data()?;
        }
        Ok(())
    }
    /// The log end offset this target makes durable.
    pub fn covers(&self) -> u64 {
        self.covers
    }
}

/// Makes everything written to any file of the filesystem holding `dir` durable with one
/// `syncfs(2)`. After it returns, a [`FlushTarget`] taken before the call may be reported with
/// [`PartitionLog::mark_flushed_target`] without syncing it: one call instead of one fsync per
/// partition when many partitions are dirty.
pub fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
    mmap::sync_filesystem(dir)
}

/// Operating errors of the partition log. Broken invariants are panics, not errors.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("offset {offset} is out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange { offset: u64, log_start: u64, log_end: u64 },
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("disk full writing {path} ({needed_bytes} bytes needed)")]
    DiskFull { path: PathBuf, needed_bytes: u64 },
    #[error("offset {offset} is not a batch boundary (the batch holding it starts at {batch_base})")]
    NotBatchBoundary { offset: u64, batch_base: u64 },
    #[error(
        "cannot truncate to {offset}: compaction removed the offsets just below it (the previous batch ends at {previous_end})"
    )]
    TruncateIntoCompactedGap { offset: u64, previous_end: u64 },
    #[error("leader epoch {epoch} is older than the log's latest epoch {latest}")]
    StaleLeaderEpoch { epoch: i32, latest: i32 },
    #[error("corrupt segment {path} at position {position}: {reason}")]
    Corrupt { path: PathBuf, position: u64, reason: String },
    #[error("cannot delete records below {offset}: the retention floor is {floor}")]
    AboveRetentionFloor { offset: u64, floor: u64 },
    #[error(transparent)]
    Producer(#[from] ProducerError),
}

/// One partition's log in one directory. See the crate docs.
#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    config: LogConfig,
    /// Sorted by base offset, contiguous (each starts where the previous ends), never empty.
    /// The last one is the active segment.
    segments: Vec<Segment>,
    log_start: u64,
    flushed: u64,
    recovery_point_written: u64,
    epochs: EpochCache,
    /// The epoch cache changed since `leader-epoch-checkpoint` was last written. It is written
    /// (durably) before the recovery point moves: recovery trusts the checkpoint below the
    /// recovery point and re-derives epochs from the batches it scans above it, so a new epoch
    /// need not cost an fsync on the append path.
    epochs_dirty: bool,
    /// Bumped by every truncation, so flush targets taken before it can be recognised.
    generation: u64,
    /// Compaction progress (persisted in `cleaner-checkpoint`).
    cleaner: CleanerState,
    /// True while a compaction job or result of this log is alive.
    cleaner_busy: Arc<AtomicBool>,
    /// A swap failed part-way; no more compaction until the log is reopened.
    cleaner_failed: bool,
    /// Idempotent and transactional producers, open transactions, the aborted index.
    producers: ProducerState,
    /// The caller's retention floor (see [`PartitionLog::set_retention_floor`]); not persisted.
    retention_floor: u64,
    /// A replicated log's compaction limit (see [`PartitionLog::set_compaction_limit`]); not
    /// persisted.
    compaction_limit: Option<u64>,
}

impl PartitionLog {
    /// Opens (creating if missing) and recovers the log in `dir`.
    pub fn open(dir: &Path, config: LogConfig, now_ms: i64) -> Result<Self, StorageError> {
        let rec = recovery::recover(dir, &config, now_ms)?;
        let log_end = rec.segments.last().expect("recovery leaves a segment").next_offset;
        let mut log = PartitionLog {
            dir: dir.to_path_buf(),
            config,
            segments: rec.segments,
            log_start: rec.log_start,
            flushed: log_end,
            recovery_point_written: log_end,
            epochs_dirty: false,
            epochs: rec.epochs,
            generation: 0,
            cleaner: rec.cleaner,
            cleaner_busy: Arc::new(AtomicBool::new(false)),
            cleaner_failed: false,
            producers: ProducerState::default(),
            retention_floor: u64::MAX,
            compaction_limit: None,
        };
        log.rebuild_producer_state(true)?;
        log.check_invariants();
        Ok(log)
    }

    /// Creates a new, empty log in `dir`, which must not exist yet (its parent must). Unlike
    /// [`PartitionLog::open`] it writes no checkpoint and syncs nothing, so creating a topic of
    /// many partitions costs no fsync per partition: the caller makes the new directories durable
    /// with one [`sync_filesystem`] before relying on them. A crash before that leaves the
    /// directory missing or partial, which `open` recovers as an empty log; a missing checkpoint
    /// reads as "scan everything", so nothing written later depends on them.
    pub fn create(dir: &Path, config: LogConfig) -> Result<Self, StorageError> {
        std::fs::create_dir(dir).map_err(io_err(dir))?;
        let log = PartitionLog {
            dir: dir.to_path_buf(),
            config,
            segments: vec![Segment::create(dir, 0)?],
            log_start: 0,
            flushed: 0,
            recovery_point_written: 0,
            epochs_dirty: false,
            epochs: EpochCache::default(),
            generation: 0,
            cleaner: CleanerState::default(),
            cleaner_busy: Arc::new(AtomicBool::new(false)),
            cleaner_failed: false,
            producers: ProducerState::default(),
            retention_floor: u64::MAX,
            compaction_limit: None,
        };
        log.check_invariants();
        Ok(log)
    }

    fn check_invariants(&self) {
        assert!(!self.segments.is_empty());
        for w in self.segments.windows(2) {
            assert_eq!(w[0].next_offset, w[1].base_offset, "segments must be contiguous");
            assert!(w[0].sealed && !w[0].is_empty(), "only the last segment may be active or empty");
        }
        assert!(self.log_start <= self.log_end_offset());
        assert!(self.flushed <= self.log_end_offset());
    }

    fn active(&self) -> &Segment {
        self.segments.last().expect("never empty")
    }
    fn active_mut(&mut self) -> &mut Segment {
        self.segments.last_mut().expect("never empty")
    }
    fn out_of_range(&self, offset: u64) -> StorageError {
        StorageError::OffsetOutOfRange { offset, log_start: self.log_start, log_end: self.log_end_offset() }
    }
    /// Index of the segment holding `offset` (the last one whose base is `<= offset`).
    fn segment_index(&self, offset: u64) -> usize {
        self.segments.partition_point(|s| s.base_offset <= offset).saturating_sub(1)
    }

    /// Appends one or more concatenated v2 batches (already CRC-validated by the caller):
    /// stamps dense offsets and `leader_epoch` in place, rolls first if needed, writes them with
    /// one positioned write and updates the indexes.
    pub fn append(&mut self, batches: &mut [u8], leader_epoch: i32, now_ms: i64) -> Result<AppendInfo, StorageError> {
        self.append_inner(batches, leader_epoch, now_ms, true)
    }

    /// Appends batches a leader already accepted (a Raft follower, or a leader replaying its own
    /// entries): offsets and epoch are stamped as in [`append`](Self::append) and producer state
    /// is updated, but producers are not checked. A follower must take exactly what its leader
    /// took, whatever its own clock says about producer expiry.
    pub fn append_replica(
        &mut self,
        batches: &mut [u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, StorageError> {
        self.append_inner(batches, leader_epoch, now_ms, false)
    }

    fn append_inner(
        &mut self,
        batches: &mut [u8],
        leader_epoch: i32,
        now_ms: i64,
        check_producers: bool,
    ) -> Result<AppendInfo, StorageError> {
        let ranges = batch_ranges(batches)?;
        if ranges.is_empty() {
            return Err(BatchError::Truncated { have: 0, need: HEADER_LEN }.into());
        }
        if let Some(latest) = self.epochs.latest()
            && leader_epoch >= 0
            && leader_epoch < latest
        {
            return Err(StorageError::StaleLeaderEpoch { epoch: leader_epoch, latest });
        }
        // One pass over the headers: the offsets each batch will take, and producer state: a
        // retried batch is answered with its original offsets; out-of-order or fenced batches
        // refuse the whole append. Batches are checked in order, each against the state the
        // earlier ones of this append leave.
        let base = self.log_end_offset();
        let mut staged: HashMap<i64, ProducerEntry> = HashMap::new();
        let mut next = base;
        for r in &ranges {
            let v = BatchView::new(&batches[r.clone()])?;
            if v.last_offset_delta() < 0 {
                return Err(BatchError::Inconsistent("negative lastOffsetDelta").into());
            }
            let last = next + v.last_offset_delta() as u64;
            let check = if check_producers {
                self.producers.check(&v, &staged)?
            } else if v.producer_id() >= 0 {
                Check::Append
            } else {
                Check::Plain
            };
            match check {
                Check::Plain => {}
                Check::Append => {
                    let mut entry = self.producers.staged(v.producer_id(), &staged);
                    producer::stage(&mut entry, &v, next, last);
                    staged.insert(v.producer_id(), entry);
                }
                Check::Duplicate { first_offset, last_offset } => {
                    return Ok(AppendInfo {
                        base_offset: first_offset,
                        last_offset,
                        max_timestamp: -1,
                        log_append_time_ms: now_ms,
                        duplicate: true,
                    });
                }
            }
            next = last + 1;
        }
        assert!(next <= i64::MAX as u64, "offsets exhausted");
        let records = next - base;
        if self.should_roll(batches.len() as u64, ranges.len(), records, now_ms) {
            self.roll()?;
        }

        let mut next = base;
        let mut max_timestamp = i64::MIN;
        let mut infos = Vec::with_capacity(ranges.len());
        let has_producers = !staged.is_empty();
        for r in ranges {
            let b = &mut batches[r.clone()];
            set_base_offset(b, next as i64);
            set_partition_leader_epoch(b, leader_epoch);
            let v = BatchView::new(b)?;
            let info = BatchInfo::of(&v, r.start as u64);
            max_timestamp = max_timestamp.max(info.max_ts);
            next = info.last + 1;
            infos.push(info);
        }

        // A new epoch is written to its checkpoint lazily (see `epochs_dirty`).
        let new_epoch = self.epochs.assign(leader_epoch, base);
        self.epochs_dirty |= new_epoch;
        let config = self.config.clone();
        if let Err(e) = self.active_mut().append(batches, &infos, &config, now_ms) {
            if new_epoch {
                self.epochs.truncate_from_end(base);
            }
            return Err(e);
        }
        if has_producers {
            let segment_base = self.active().base_offset;
            for info in &infos {
                let v = BatchView::new(&batches[info.pos as usize..(info.pos + info.len) as usize])?;
                self.producers.apply(&v, info.base, info.last, segment_base);
            }
            self.producers.bound(self.config.producer_state_max_entries);
        }
        Ok(AppendInfo {
            base_offset: base,
            last_offset: next - 1,
            max_timestamp,
            log_append_time_ms: now_ms,
            duplicate: false,
        })
    }

    fn should_roll(&self, bytes: u64, batches: usize, records: u64, now_ms: i64) -> bool {
        let a = self.active();
        if a.is_empty() {
            return false;
        }
        let c = &self.config;
        let index_bytes = |entries: usize, len: usize| ((entries + batches + 1) * len) as u64;
        a.valid_len + bytes > c.segment_bytes
            || a.valid_len + bytes > u64::from(u32::MAX)
            || a.first_append_ms.is_some_and(|t| now_ms.saturating_sub(t) >= c.segment_ms)
            || index_bytes(a.offset_index.len(), OFFSET_ENTRY_LEN) > u64::from(c.segment_index_bytes)
            || index_bytes(a.time_index.len(), TIME_ENTRY_LEN) > u64::from(c.segment_index_bytes)
            || a.next_offset + records - a.base_offset > u64::from(u32::MAX)
    }

    /// Seals the (non-empty) active segment and starts a new one at the log end.
    fn roll(&mut self) -> Result<(), StorageError> {
        let active = self.active_mut();
        assert!(!active.is_empty(), "never roll an empty segment");
        active.seal()?;
        let (sealed_base, base) = (active.base_offset, active.next_offset);
        // The sealed segment's aborted index is durable before the snapshot that lets recovery
        // skip re-deriving it.
        producer::write_txn_index(&self.dir, sealed_base, self.producers.aborted_in_segment(sealed_base))?;
        sync_dir(&self.dir)?;
        self.write_producer_snapshot(base)?;
        let seg = Segment::create(&self.dir, base)?;
        sync_dir(&self.dir)?;
        self.segments.push(seg);
        // Sealing fsynced everything below the new segment.
        self.flushed = self.flushed.max(base);
        Ok(())
    }

    /// Whole batches starting with the one containing `offset`: at least one batch, then more
    /// while the total stays within `max_bytes`; may stop at a segment end (read again from
    /// `next_offset`). At the log end the result is empty.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<ReadResult, StorageError> {
        self.read_below(offset, max_bytes, u64::MAX)
    }

    /// [`PartitionLog::read`], returning only batches that start below `upto` (the last stable
    /// offset, for `read_committed`); empty if the batch at `offset` starts at or above it.
    pub fn read_below(&self, offset: u64, max_bytes: usize, upto: u64) -> Result<ReadResult, StorageError> {
        let log_end = self.log_end_offset();
        if offset < self.log_start || offset > log_end {
            return Err(self.out_of_range(offset));
        }
        if offset >= log_end.min(upto) {
            return Ok(ReadResult { bytes: Bytes::new(), next_offset: offset });
        }
        let seg = &self.segments[self.segment_index(offset)];
        let start = seg.position_of(offset)?;
        let (mut end, mut next_offset) = (start, offset);
        while end < seg.valid_len {
            let v = seg.batch_at(end)?;
            let len = v.total_len() as u64;
            if (end > start && end - start + len > max_bytes as u64) || v.base_offset() as u64 >= upto {
                break;
            }
            end += len;
            next_offset = v.last_offset() as u64 + 1;
        }
        Ok(ReadResult { bytes: seg.slice(start, end), next_offset })
    }

    /// What to fsync to make everything appended so far durable; sync it without holding the
    /// log, then report it with [`PartitionLog::mark_flushed_target`] (or `mark_flushed`).
    pub fn flush_target(&self) -> FlushTarget {
        let covers = self.log_end_offset();
        // Rolls fsync sealed segments, so only the active one can hold unsynced appends.
        let files = if self.flushed < covers { vec![self.active().file.clone()] } else { Vec::new() };
        FlushTarget { files, covers, generation: self.generation }
    }

    /// Records that everything below `offset` is durable. Monotonic; clamped to the log end.
    /// The caller must not report a target taken before a `truncate_to`; prefer
    /// [`PartitionLog::mark_flushed_target`], which checks that.
    pub fn mark_flushed(&mut self, offset: u64) {
        self.flushed = self.flushed.max(offset.min(self.log_end_offset()));
    }

    /// Records a synced [`FlushTarget`], ignoring one taken before a truncation (its files and
    /// offsets may belong to data that no longer exists).
    pub fn mark_flushed_target(&mut self, target: &FlushTarget) {
        if target.generation == self.generation {
            self.mark_flushed(target.covers);
        }
    }

    /// Syncs now and returns the flushed offset.
    pub fn flush(&mut self) -> Result<u64, StorageError> {
        let target = self.flush_target();
        target.sync().map_err(io_err(&self.active().path(LOG_EXT)))?;
        self.mark_flushed_target(&target);
        Ok(self.flushed)
    }

    /// Every offset below this is durable (fsynced).
    pub fn flushed_offset(&self) -> u64 {
        self.flushed
    }
    pub fn log_start_offset(&self) -> u64 {
        self.log_start
    }
    /// The next offset to assign.
    pub fn log_end_offset(&self) -> u64 {
        self.active().next_offset
    }
    /// Bytes of batches held in segment files (including any below the log start in the first one).
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.valid_len).sum()
    }
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Positions of visible batches (ending at or after the log start) in segment `i`, from `pos`,
    /// until `stop` says so. Returns the position where `stop` returned true.
    fn find_in_segment(
        &self,
        i: usize,
        mut pos: u64,
        mut stop: impl FnMut(&BatchView<'_>) -> bool,
    ) -> Result<Option<u64>, StorageError> {
        let seg = &self.segments[i];
        while pos < seg.valid_len {
            let v = seg.batch_at(pos)?;
            if v.last_offset() as u64 >= self.log_start && stop(&v) {
                return Ok(Some(pos));
            }
            pos += v.total_len() as u64;
        }
        Ok(None)
    }

    fn batch_bytes(&self, i: usize, pos: u64) -> Result<Bytes, StorageError> {
        let seg = &self.segments[i];
        let len = seg.batch_at(pos)?.total_len() as u64;
        Ok(seg.slice(pos, pos + len))
    }

    /// The first batch (from the log start) whose `maxTimestamp >= ts`, found through the time
    /// indexes; `None` if there is none.
    pub fn batch_at_timestamp(&self, ts: i64) -> Result<Option<Bytes>, StorageError> {
        for (i, seg) in self.segments.iter().enumerate() {
            if seg.is_empty() || seg.next_offset <= self.log_start || seg.max_timestamp < ts {
                continue;
            }
            let start = match seg.time_index.last_below(ts) {
                Some(rel) => seg.position_of(seg.base_offset + u64::from(rel))?,
                None => 0,
            };
            if let Some(pos) = self.find_in_segment(i, start, |v| v.max_timestamp() >= ts)? {
                return Ok(Some(self.batch_bytes(i, pos)?));
            }
        }
        Ok(None)
    }

    /// The first batch holding the largest timestamp in the log (ListOffsets -3); `None` if empty.
    pub fn max_timestamp_batch(&self) -> Result<Option<Bytes>, StorageError> {
        let mut best: Option<(i64, usize)> = None;
        for (i, seg) in self.segments.iter().enumerate() {
            if seg.is_empty() || seg.next_offset <= self.log_start {
                continue;
            }
            let seg_max = if seg.base_offset >= self.log_start {
                seg.max_timestamp
            } else {
                // The first segment may hold batches below the log start: look only at visible ones.
                let mut m = None::<i64>;
                self.find_in_segment(i, 0, |v| {
                    m = Some(m.map_or(v.max_timestamp(), |m| m.max(v.max_timestamp())));
                    false
                })?;
                match m {
                    Some(m) => m,
                    None => continue,
                }
            };
            if best.is_none_or(|(t, _)| seg_max > t) {
                best = Some((seg_max, i));
            }
        }
        let Some((ts, i)) = best else { return Ok(None) };
        let seg = &self.segments[i];
        let start = if seg.base_offset >= self.log_start && seg.max_timestamp_offset >= self.log_start {
            seg.position_of(seg.max_timestamp_offset)?
        } else {
            0
        };
        match self.find_in_segment(i, start, |v| v.max_timestamp() == ts)? {
            Some(pos) => Ok(Some(self.batch_bytes(i, pos)?)),
            None => Err(StorageError::Corrupt {
                path: seg.path(LOG_EXT),
                position: start,
                reason: format!("no batch with the segment's max timestamp {ts}"),
            }),
        }
    }

    /// Removes every batch at or above `offset`, which must be a batch boundary at or above the
    /// log start (or the log end, a no-op). Durable before it returns: recovery never brings the
    /// removed batches back. Bytes already handed out for removed batches may change under their
    /// holders (they are zeroed, then reused); callers must not keep reads across a truncation.
    pub fn truncate_to(&mut self, offset: u64) -> Result<(), StorageError> {
        let log_end = self.log_end_offset();
        if offset == log_end {
            return Ok(());
        }
        if offset > log_end || offset < self.log_start {
            return Err(self.out_of_range(offset));
        }
        let i = self.segment_index(offset);
        let seg = &self.segments[i];
        let pos = seg.position_of(offset)?;
        let batch_base = seg.batch_at(pos)?.base_offset() as u64;
        if batch_base != offset {
            return Err(StorageError::NotBatchBoundary { offset, batch_base });
        }
        if offset <= self.cleaner.gap_limit {
            // The log end comes from the data after a restart, so it must not fall in a gap.
            let previous_end = self.previous_batch_end(i, pos)?;
            if previous_end != offset {
                return Err(StorageError::TruncateIntoCompactedGap { offset, previous_end });
            }
        }
        self.generation += 1;
        if self.cleaner.truncate(offset) {
            compaction::write_state(&self.dir, &self.cleaner)?;
        }
        if self.flushed > offset {
            self.flushed = offset;
        }
        if self.recovery_point_written > offset {
            checkpoint::write_u64(&self.dir, checkpoint::RECOVERY_POINT, self.flushed)?;
            self.recovery_point_written = self.flushed;
        }
        if self.epochs.truncate_from_end(offset) | self.epochs_dirty {
            self.write_epochs_now()?;
        }
        // Cut the segment first: the segments after it then no longer follow on, so a crash
        // part-way through deleting them cannot bring them back.
        let interval = self.config.index_interval_bytes;
        let gap_limit = self.cleaner.gap_limit;
        self.segments[i].truncate_at(pos, offset, interval, gap_limit)?;
        for seg in self.segments.drain(i + 1..).rev() {
            seg.delete_files()?;
        }
        self.rebuild_producer_state(false)?;
        sync_dir(&self.dir)?;
        self.check_invariants();
        Ok(())
    }

    /// Discards every batch and starts over as an empty log whose log start and log end are
    /// `offset`, which may be anywhere (below, inside or past the current log): what a replica
    /// needs when it installs a snapshot or learns that the leader's log starts later. Producer
    /// state, aborted indexes, leader epochs and compaction progress are discarded with the
    /// batches; the retention floor and caller-owned state files are kept. Durable before it
    /// returns.
    ///
    /// Crash safety: the durable `log-reset` checkpoint holding `offset` is the commit point.
    /// A crash before it leaves the old log untouched; from it on, recovery finds the marker
    /// and finishes the reset (deleting whatever files remain, writing the checkpoints of the
    /// empty log, creating the segment `offset`) before it looks at any segment, and the marker
    /// is removed only after all that is durable. So a reopen sees the old log or the new empty
    /// one, never a mix. On an error the log must be dropped and reopened (recovery finishes the
    /// reset). Bytes already handed out stay readable; flush targets taken before are ignored.
    pub fn reset_to(&mut self, offset: u64) -> Result<(), StorageError> {
        self.reset_to_inner(offset, false)
    }

    /// Fault injection for crash tests: a [`PartitionLog::reset_to`] that stops right after its
    /// commit point, as a crash would. The log must then be dropped and reopened.
    #[doc(hidden)]
    pub fn reset_to_interrupted(&mut self, offset: u64) -> Result<(), StorageError> {
        self.reset_to_inner(offset, true)
    }

    fn reset_to_inner(&mut self, offset: u64, crash_after_commit: bool) -> Result<(), StorageError> {
        assert!(offset <= i64::MAX as u64, "offset {offset} beyond Kafka's offset range");
        checkpoint::write_u64(&self.dir, checkpoint::LOG_RESET, offset)?;
        if crash_after_commit {
            return Ok(());
        }
        let segment = recovery::finish_reset(&self.dir, offset)?;
        self.generation += 1;
        self.segments = vec![segment];
        self.log_start = offset;
        self.flushed = offset;
        self.recovery_point_written = offset;
        self.epochs = EpochCache::default();
        self.epochs_dirty = false;
        self.cleaner = CleanerState::default();
        self.cleaner_failed = false;
        self.producers = ProducerState::default();
        self.check_invariants();
        Ok(())
    }

    /// Never deletes (by retention or DeleteRecords) or compacts data at or above `offset`: a
    /// segment goes or is cleaned only if it ends at or below the floor. Default `u64::MAX` (no
    /// floor). A replication layer sets it to the first offset it may still need (its log start).
    /// In memory only: the caller sets it again after every open, before any housekeeping.
    /// Lowering it does not bring anything back; a compaction job taken before the call may
    /// still install.
    pub fn set_retention_floor(&mut self, offset: u64) {
        self.retention_floor = offset;
    }
    pub fn retention_floor(&self) -> u64 {
        self.retention_floor
    }

    /// For a replicated log whose replication layer addresses entries by batch (a Raft log):
    /// compaction may clean segments ending at or below `offset` (the committed end, which is
    /// never truncated), above the retention floor, and then keeps every batch: one it empties
    /// stays as a header-only batch with the same offsets, leader epoch and producer fields, so
    /// the replication layer finds the same batches at the same offsets, only with fewer
    /// records. Raising it is the caller's promise that nothing below `offset` is rewritten or
    /// truncated by anyone else. `None` (the default) bounds compaction by the retention floor
    /// alone, dropping emptied batches. In memory only.
    pub fn set_compaction_limit(&mut self, offset: Option<u64>) {
        self.compaction_limit = offset;
    }

    /// Snapshot files in the directory, by offset.
    fn producer_snapshots(&self) -> Result<Vec<u64>, StorageError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let Some((stem, ext)) = name.to_str().and_then(|n| n.split_once('.')) else { continue };
            if ext == SNAPSHOT_EXT
                && stem.len() == 20
                && let Ok(offset) = stem.parse::<u64>()
            {
                out.push(offset);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Writes the producer state as of `offset` (everything below it applied) and keeps the
    /// ten latest snapshots at or above the first segment.
    fn write_producer_snapshot(&mut self, offset: u64) -> Result<(), StorageError> {
        let name = segment::file_name(offset, SNAPSHOT_EXT);
        checkpoint::write_file_atomic(&self.dir, &name, &self.producers.encode_snapshot())?;
        let first_base = self.segments.first().map_or(0, |s| s.base_offset);
        let snapshots = self.producer_snapshots()?;
        let keep_from = snapshots.len().saturating_sub(10);
        for (i, &o) in snapshots.iter().enumerate() {
            if i < keep_from || o < first_base {
                let p = self.dir.join(segment::file_name(o, SNAPSHOT_EXT));
                std::fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
        Ok(())
    }

    /// Rebuilds producer state for the current log: the latest readable snapshot at or below the
    /// log end (and at or above the first segment), then every batch after it. Sealed segments'
    /// aborted indexes are loaded from their files (`opening`) or kept, and re-derived for the
    /// segments the replay covers. Snapshots above the log end are deleted (truncation).
    fn rebuild_producer_state(&mut self, opening: bool) -> Result<(), StorageError> {
        let log_end = self.log_end_offset();
        let first_base = self.segments[0].base_offset;
        let mut from = first_base;
        let mut state = ProducerState::default();
        let mut found = false;
        for o in self.producer_snapshots()?.into_iter().rev() {
            let path = self.dir.join(segment::file_name(o, SNAPSHOT_EXT));
            if o > log_end {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            if found || o < first_base {
                continue;
            }
            match std::fs::read(&path).ok().and_then(|b| ProducerState::decode_snapshot(&b)) {
                Some(s) => {
                    (state, from, found) = (s, o, true);
                }
                None => tracing::warn!(path = %path.display(), "unreadable producer snapshot; ignoring it"),
            }
        }
        // Aborted indexes: below `from` from files (or memory), from `from` on by replay.
        let mut aborted: Vec<(u64, Vec<AbortedTxn>)> = Vec::new();
        for seg in &self.segments {
            let mut entries = if opening {
                let path = seg.path(producer::TXN_INDEX_EXT);
                match std::fs::read(&path) {
                    Ok(b) => match producer::decode_txn_index(&b) {
                        Some(e) => e,
                        None => {
                            // Re-derive it: replay from this segment with no snapshot.
                            tracing::warn!(path = %path.display(), "unreadable aborted-transaction index; rebuilding");
                            if seg.base_offset < from {
                                from = first_base;
                                state = ProducerState::default();
                            }
                            Vec::new()
                        }
                    },
                    Err(_) => Vec::new(),
                }
            } else {
                self.producers.aborted_in_segment(seg.base_offset).to_vec()
            };
            entries.retain(|a| a.last_offset < from);
            aborted.push((seg.base_offset, entries));
        }
        let mut rebuilt = ProducerState::default();
        rebuilt.restore(state);
        for (base, entries) in aborted {
            rebuilt.set_aborted_for_segment(base, entries);
        }
        // Replay every batch from `from` to the log end.
        let mut replayed_sealed = Vec::new();
        let start = self.segment_index(from);
        for i in start..self.segments.len() {
            let seg = &self.segments[i];
            let mut pos = match i == start && from > seg.base_offset {
                true if from >= seg.next_offset => continue,
                true => seg.position_of(from)?,
                false => 0,
            };
            let mut any_control = false;
            while pos < seg.valid_len {
                let v = seg.batch_at(pos)?;
                if v.producer_id() >= 0 {
                    any_control |= v.is_control();
                    rebuilt.apply(&v, v.base_offset() as u64, v.last_offset() as u64, seg.base_offset);
                }
                pos += v.total_len() as u64;
            }
            if seg.sealed && (any_control || !opening) {
                replayed_sealed.push(seg.base_offset);
            }
        }
        self.producers = rebuilt;
        for base in replayed_sealed {
            producer::write_txn_index(&self.dir, base, self.producers.aborted_in_segment(base))?;
        }
        Ok(())
    }

    /// The offset after the batch before position `pos` of segment `i` (its base if none).
    fn previous_batch_end(&self, i: usize, pos: u64) -> Result<u64, StorageError> {
        let seg = &self.segments[i];
        let (mut at, mut end) = (0, seg.base_offset);
        while at < pos {
            let v = seg.batch_at(at)?;
            end = v.last_offset() as u64 + 1;
            at += v.total_len() as u64;
        }
        Ok(end)
    }

    /// DeleteRecords: moves the log start up to `offset` (durably, in `log-start-offset`) and
    /// deletes segments entirely below it. Offsets never move. Returns the new log start.
    /// An offset above the retention floor is refused (`AboveRetentionFloor`), not clamped: the
    /// user asked for more than may be deleted yet, as Kafka refuses one past the high watermark.
    pub fn delete_records_before(&mut self, offset: u64) -> Result<u64, StorageError> {
        if offset > self.log_end_offset() {
            return Err(self.out_of_range(offset));
        }
        if offset > self.retention_floor {
            return Err(StorageError::AboveRetentionFloor { offset, floor: self.retention_floor });
        }
        if offset <= self.log_start {
            return Ok(self.log_start);
        }
        self.log_start = offset;
        checkpoint::write_u64(&self.dir, checkpoint::LOG_START_OFFSET, offset)?;
        if !self.active().is_empty() && self.active().next_offset <= offset {
            self.roll()?;
        }
        let n = self.segments.iter().take_while(|s| s.next_offset <= offset).count();
        self.delete_oldest(n.min(self.segments.len() - 1))?;
        if self.epochs.truncate_from_start(self.log_start, self.log_end_offset()) {
            self.write_epochs_now()?;
        }
        Ok(self.log_start)
    }

    /// Writes `leader-epoch-checkpoint` durably now.
    fn write_epochs_now(&mut self) -> Result<(), StorageError> {
        checkpoint::write_epochs(&self.dir, self.epochs.entries())?;
        self.epochs_dirty = false;
        Ok(())
    }

    /// Makes the epoch checkpoint durable if it lags the cache; called before the recovery point
    /// moves past batches whose epochs only the cache knows.
    fn persist_epochs_if_dirty(&mut self) -> Result<(), StorageError> {
        if self.epochs_dirty {
            self.write_epochs_now()?;
        }
        Ok(())
    }

    /// Deletes the `n` oldest segments (never the active one) and moves the log start past them.
    fn delete_oldest(&mut self, n: usize) -> Result<(), StorageError> {
        assert!(n < self.segments.len(), "the active segment is never deleted");
        if n == 0 {
            return Ok(());
        }
        for seg in self.segments.drain(..n) {
            seg.delete_files()?;
        }
        sync_dir(&self.dir)?;
        self.log_start = self.log_start.max(self.segments[0].base_offset);
        self.producers.drop_segments_below(self.segments[0].base_offset);
        if self.epochs.truncate_from_start(self.log_start, self.log_end_offset()) {
            self.write_epochs_now()?;
        }
        Ok(())
    }

    /// Periodic work: roll by `segment.ms`, delete segments past `retention.ms` (largest timestamp
    /// older) and `retention.bytes` (oldest first) when `cleanup.policy` includes `delete`, never
    /// past the retention floor (see [`PartitionLog::set_retention_floor`]), and
    /// checkpoint the recovery point. Compaction is separate (`compaction_job`), so the caller
    /// can run its heavy part without the lock. The active
    /// segment is deleted by time only after rolling it, when everything before it is gone too.
    /// Returns how many segments were deleted.
    pub fn housekeeping(&mut self, now_ms: i64) -> Result<usize, StorageError> {
        let c = self.config.clone();
        let active = self.active();
        if !active.is_empty() && active.first_append_ms.is_some_and(|t| now_ms.saturating_sub(t) >= c.segment_ms) {
            self.roll()?;
        }
        let mut deleted = 0;
        // Only segments ending at or below the retention floor may go.
        let floor = self.retention_floor;
        if c.cleanup_delete && c.retention_ms >= 0 {
            let expired = |s: &Segment| {
                !s.is_empty() && now_ms.saturating_sub(s.max_timestamp) > c.retention_ms && s.next_offset <= floor
            };
            let n = self.segments.iter().take_while(|s| expired(s)).count();
            if n == self.segments.len() {
                self.roll()?; // the active segment expired too: seal it so it can go
            }
            let n = n.min(self.segments.len() - 1);
            self.delete_oldest(n)?;
            deleted += n;
        }
        if c.cleanup_delete && c.retention_bytes >= 0 {
            let mut excess = self.size_bytes().saturating_sub(c.retention_bytes as u64);
            let mut n = 0;
            for seg in &self.segments[..self.segments.len() - 1] {
                if seg.valid_len > excess || seg.next_offset > floor {
                    break;
                }
                excess -= seg.valid_len;
                n += 1;
            }
            self.delete_oldest(n)?;
            deleted += n;
        }
        self.producers.expire(now_ms, c.producer_id_expiration_ms);
        if self.flushed > self.recovery_point_written {
            self.persist_epochs_if_dirty()?;
            checkpoint::write_u64(&self.dir, checkpoint::RECOVERY_POINT, self.flushed)?;
            self.recovery_point_written = self.flushed;
        }
        Ok(deleted)
    }

    /// Where retention would move the log start now if there were no retention floor: the end
    /// of the segments `housekeeping` would delete by `retention.ms` and `retention.bytes` (the
    /// log end when every segment has expired), or the log start when nothing is due. A
    /// replication layer releases its entries up to here, then raises the floor.
    pub fn retention_target(&self, now_ms: i64) -> u64 {
        let c = &self.config;
        let mut target = self.log_start;
        if !c.cleanup_delete {
            return target;
        }
        if c.retention_ms >= 0 {
            let expired = self
                .segments
                .iter()
                .take_while(|s| !s.is_empty() && now_ms.saturating_sub(s.max_timestamp) > c.retention_ms)
                .last();
            if let Some(s) = expired {
                target = target.max(s.next_offset);
            }
        }
        if c.retention_bytes >= 0 {
            let mut excess = self.size_bytes().saturating_sub(c.retention_bytes as u64);
            for seg in &self.segments[..self.segments.len() - 1] {
                if seg.valid_len > excess {
                    break;
                }
                excess -= seg.valid_len;
                target = target.max(seg.next_offset);
            }
        }
        target
    }

    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// OffsetForLeaderEpoch: the largest epoch `<= epoch` and its end offset (the start of the
    /// next epoch, or the log end for the latest); `None` if no epoch `<= epoch` is known.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, u64)> {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }
    pub fn latest_epoch(&self) -> Option<i32> {
        self.epochs.latest()
    }

    /// The offset of the first batch of the oldest transaction still open in this partition.
    pub fn first_unstable_offset(&self) -> Option<u64> {
        self.producers.first_unstable_offset()
    }
    /// The last stable offset: `read_committed` readers see offsets below it. `high_watermark`
    /// is the replication bound (the log end on a single node).
    pub fn last_stable_offset(&self, high_watermark: u64) -> u64 {
        self.first_unstable_offset().map_or(high_watermark, |f| f.min(high_watermark))
    }
    /// Aborted transactions with records in `[from, upto)` (Fetch's `aborted_transactions`).
    pub fn aborted_transactions(&self, from: u64, upto: u64) -> Vec<AbortedTxn> {
        self.producers.aborted_between(from, upto)
    }
    /// Producers with state in this partition (DescribeProducers).
    pub fn producers(&self) -> Vec<(i64, ProducerEntry)> {
        self.producers.producers().map(|(p, e)| (p, e.clone())).collect()
    }

    /// Flushes everything, writes the active segment's indexes, trims it to its real size and
    /// leaves a clean-shutdown marker so the next open trusts the indexes.
    pub fn close(mut self) -> Result<(), StorageError> {
        let active = self.active_mut();
        active.trim_and_sync()?;
        active.push_time_entry();
        active.write_indexes(false)?;
        let log_end = self.log_end_offset();
        self.write_epochs_now()?;
        let active_base = self.active().base_offset;
        producer::write_txn_index(&self.dir, active_base, self.producers.aborted_in_segment(active_base))?;
        self.write_producer_snapshot(log_end)?;
        checkpoint::write_u64(&self.dir, checkpoint::LOG_START_OFFSET, self.log_start)?;
        checkpoint::write_u64(&self.dir, checkpoint::RECOVERY_POINT, log_end)?;
        let marker = self.dir.join(checkpoint::CLEAN_SHUTDOWN);
        File::create(&marker).and_then(|f| f.sync_all()).map_err(io_err(&marker))?;
        sync_dir(&self.dir)
    }

    /// Replaces the caller-owned state file `name` (stored as `{name}.state` in the log
    /// directory) with `contents`, durably: written to a temporary file, fsynced, renamed and the
    /// directory fsynced before it returns, so after a crash it holds the old or the new contents,
    /// never a mix. For small, rarely written state that belongs with the log (a replication
    /// layer's vote, say); storage never interprets it. `name` is lowercase ASCII letters, digits
    /// and `-`, at most 64 bytes.
    pub fn write_state_file(&self, name: &str, contents: &[u8]) -> Result<(), StorageError> {
        checkpoint::write_file_atomic(&self.dir, &state_file_name(name), contents)?;
        sync_dir(&self.dir)
    }

    /// The contents of the state file `name` (see [`PartitionLog::write_state_file`]); `None` if
    /// it was never written.
    pub fn read_state_file(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.dir.join(state_file_name(name));
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Removes the state file `name`, durably; nothing happens if it does not exist.
    pub fn remove_state_file(&self, name: &str) -> Result<(), StorageError> {
        let path = self.dir.join(state_file_name(name));
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Removes the directory and all its files. Bytes already handed out stay readable.
    pub fn delete(self) -> Result<(), StorageError> {
        let dir = self.dir.clone();
        drop(self);
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))
    }
}

/// The file name of a caller-owned state file; a bad name is a caller bug, not an operating error.
fn state_file_name(name: &str) -> String {
    assert!(
        !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "bad state file name {name:?}"
    );
    format!("{name}.state")
}
