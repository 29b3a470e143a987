//! Producer state per partition: idempotent sequence checks, open transactions and the
//! aborted-transaction index, with snapshots so recovery does not rescan the whole log.
//!
//! For every producer id seen in a partition it keeps the epoch, the sequence and offset ranges
//! of the last [`MAX_CACHED_BATCHES`] data batches (so a retried batch is answered with its
//! original offsets instead of being written twice), the coordinator epoch of its last
//! transaction marker and, while it has a transaction open here, the offset of that
//! transaction's first batch. The smallest such offset is the first unstable offset, which bounds
//! the last stable offset (LSO) that `read_committed` consumers may read up to. A transaction
//! ended by an abort marker becomes an [`AbortedTxn`] entry in the index of the segment holding
//! the marker; Fetch returns them so consumers can drop the aborted records.
//!
//! The rules are Kafka's: a duplicate is recognised first (same epoch, same first and last
//! sequence as a cached batch); an older epoch is refused (`InvalidEpoch`); a new epoch must start
//! at sequence 0; within an epoch each batch must follow the last one, wrapping from `i32::MAX`
//! to 0; a producer with no state (never seen, or expired) sending a sequence other than 0 is
//! `UnknownProducer`. Markers (control batches) only check epochs.
//!
//! On disk: `{offset:020}.snapshot` holds the state as of `offset` (every batch below it
//! applied), written at each roll and at close; `{base:020}.txnindex` holds the aborted
//! transactions whose markers are in that (sealed) segment. Both are rebuilt from batches when
//! missing. Nothing here reads the clock or touches sockets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;

use creek_protocol::batch::{BatchView, control_record, crc32c};

use crate::StorageError;
use crate::checkpoint::write_file_atomic;

/// Data batches remembered per producer for duplicate detection (Kafka's number: a producer
/// has at most five requests in flight).
pub const MAX_CACHED_BATCHES: usize = 5;

pub(crate) const SNAPSHOT_EXT: &str = "snapshot";
pub(crate) const TXN_INDEX_EXT: &str = "txnindex";
const SNAPSHOT_MAGIC: &[u8; 8] = b"CRKPS\0\0\x01";
const TXN_INDEX_ENTRY: usize = 24;

/// Why a batch was refused by producer state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    #[error("producer {producer_id} epoch {epoch} is older than its current epoch {current}")]
    InvalidEpoch { producer_id: i64, epoch: i16, current: i16 },
    #[error("out of order sequence for producer {producer_id} epoch {epoch}: got {got} after {last}")]
    OutOfOrder { producer_id: i64, epoch: i16, last: i32, got: i32 },
    #[error("no state for producer {producer_id} (never seen here, or expired) and its batch starts at sequence {got}")]
    UnknownProducer { producer_id: i64, got: i32 },
    #[error("invalid transaction state for producer {producer_id}: {reason}")]
    InvalidTxnState { producer_id: i64, reason: String },
    #[error("transaction marker from coordinator epoch {got} is older than {current} for producer {producer_id}")]
    CoordinatorFenced { producer_id: i64, got: i32, current: i32 },
    #[error("malformed producer batch: {0}")]
    Malformed(String),
}

/// A transaction that ended with an abort marker: its records from `first_offset` up to the
/// marker at `last_offset` with this producer id are not visible to `read_committed` readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: u64,
    pub last_offset: u64,
}

/// One cached data batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchMeta {
    first_seq: i32,
    last_seq: i32,
    first_offset: u64,
    last_offset: u64,
}

/// What a partition knows about one producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub coordinator_epoch: i32,
    /// Largest `maxTimestamp` of its batches (drives `producer.id.expiration.ms`).
    pub last_timestamp: i64,
    /// Offset of the first batch of its open transaction in this partition.
    pub txn_first_offset: Option<u64>,
    batches: VecDeque<BatchMeta>,
}

impl ProducerEntry {
    fn new() -> Self {
        ProducerEntry {
            epoch: -1,
            coordinator_epoch: -1,
            last_timestamp: -1,
            txn_first_offset: None,
            batches: VecDeque::new(),
        }
    }
    /// Sequence of the last record written, -1 if none at this epoch.
    pub fn last_sequence(&self) -> i32 {
        self.batches.back().map_or(-1, |b| b.last_seq)
    }
    /// Offset of the last data batch's last record, -1 if none at this epoch.
    pub fn last_offset(&self) -> i64 {
        self.batches.back().map_or(-1, |b| b.last_offset as i64)
    }
    fn set_epoch(&mut self, epoch: i16) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.batches.clear();
        }
    }
}

/// What the producer fields of a batch mean for an append.
pub(crate) enum Check {
    /// Not a producer batch (no producer id): nothing to check or record.
    Plain,
    /// A new batch to append; record it with [`ProducerState::apply`].
    Append,
    /// A retry of a batch already in the log at these offsets: answer, do not append.
    Duplicate { first_offset: u64, last_offset: u64 },
}

/// A transaction marker's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Marker {
    pub(crate) commit: bool,
    pub(crate) coordinator_epoch: i32,
}

/// Wrapping sequence arithmetic: the sequence `n` records after `seq`.
pub(crate) fn seq_add(seq: i32, n: i64) -> i32 {
    ((i64::from(seq) + n) % (i64::from(i32::MAX) + 1)) as i32
}

fn in_sequence(last: i32, next: i32) -> bool {
    next == seq_add(last, 1) || (last == -1 && next == 0)
}

/// Reads the control record of a marker batch (uncompressed, one record): key = version i16,
/// type i16 (0 abort, 1 commit); value = version i16, coordinator epoch i32.
pub(crate) fn parse_marker(view: &BatchView<'_>) -> Result<Marker, ProducerError> {
    let bad = |why: String| ProducerError::Malformed(format!("control batch: {why}"));
    let record = control_record(view).map_err(|e| bad(e.to_string()))?;
    let commit = match record.control_type {
        0 => false,
        1 => true,
        other => return Err(bad(format!("unknown control type {other}"))),
    };
    let coordinator_epoch = match record.value {
        [_, _, a, b, c, d, ..] => i32::from_be_bytes([*a, *b, *c, *d]),
        _ => return Err(bad("control value shorter than 6 bytes".into())),
    };
    Ok(Marker { commit, coordinator_epoch })
}

/// Producer state of one partition. See the module docs.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ProducerState {
    producers: HashMap<i64, ProducerEntry>,
    /// First offset of each open transaction → producer id.
    ongoing: BTreeMap<u64, i64>,
    /// Aborted transactions by the base offset of the segment holding their marker.
    aborted: BTreeMap<u64, Vec<AbortedTxn>>,
}

impl ProducerState {
    /// Decides what `view` (a batch about to be appended by a client) means. `pending` holds
    /// entries already updated by earlier batches of the same append.
    pub(crate) fn check(
        &self,
        view: &BatchView<'_>,
        pending: &HashMap<i64, ProducerEntry>,
    ) -> Result<Check, ProducerError> {
        let pid = view.producer_id();
        if pid < 0 {
            if view.is_transactional() {
                return Err(ProducerError::Malformed("transactional batch without a producer id".into()));
            }
            return Ok(Check::Plain);
        }
        let epoch = view.producer_epoch();
        let entry = pending.get(&pid).or_else(|| self.producers.get(&pid));
        if view.is_control() {
            let marker = parse_marker(view)?;
            if let Some(e) = entry {
                if epoch < e.epoch {
                    return Err(ProducerError::InvalidEpoch { producer_id: pid, epoch, current: e.epoch });
                }
                if marker.coordinator_epoch < e.coordinator_epoch {
                    return Err(ProducerError::CoordinatorFenced {
                        producer_id: pid,
                        got: marker.coordinator_epoch,
                        current: e.coordinator_epoch,
                    });
                }
            }
            return Ok(Check::Append);
        }
        let first = view.base_sequence();
        if epoch < 0 || (first < 0 && !view.is_transactional()) {
            return Err(ProducerError::Malformed(format!(
                "producer {pid} batch with epoch {epoch} and base sequence {first}"
            )));
        }
        if first < 0 {
            // A coordinator's transactional write (offsets committed in a transaction): it has
            // no sequence, so only its epoch is checked.
            if let Some(e) = entry
                && epoch < e.epoch
            {
                return Err(ProducerError::InvalidEpoch { producer_id: pid, epoch, current: e.epoch });
            }
            return Ok(Check::Append);
        }
        let last = seq_add(first, i64::from(view.last_offset_delta()));
        let Some(e) = entry else {
            if first != 0 {
                return Err(ProducerError::UnknownProducer { producer_id: pid, got: first });
            }
            return Ok(Check::Append);
        };
        if e.epoch == epoch
            && let Some(b) = e.batches.iter().find(|b| b.first_seq == first && b.last_seq == last)
        {
            return Ok(Check::Duplicate { first_offset: b.first_offset, last_offset: b.last_offset });
        }
        if epoch < e.epoch {
            return Err(ProducerError::InvalidEpoch { producer_id: pid, epoch, current: e.epoch });
        }
        if epoch > e.epoch {
            if first != 0 {
                return Err(ProducerError::OutOfOrder { producer_id: pid, epoch, last: -1, got: first });
            }
        } else if !in_sequence(e.last_sequence(), first) {
            return Err(ProducerError::OutOfOrder { producer_id: pid, epoch, last: e.last_sequence(), got: first });
        }
        if !view.is_transactional() && e.txn_first_offset.is_some() {
            return Err(ProducerError::InvalidTxnState {
                producer_id: pid,
                reason: "a non-transactional batch while a transaction is open".into(),
            });
        }
        Ok(Check::Append)
    }

    /// The entry `apply` would produce, for staging within one append.
    pub(crate) fn staged(&self, pid: i64, pending: &HashMap<i64, ProducerEntry>) -> ProducerEntry {
        pending.get(&pid).or_else(|| self.producers.get(&pid)).cloned().unwrap_or_else(ProducerEntry::new)
    }

    /// Records an appended batch at `base..=last` in the segment starting at `segment_base`.
    /// Used for client appends (after [`ProducerState::check`]) and when replaying the log, so it
    /// never refuses: replayed data was accepted once.
    pub(crate) fn apply(&mut self, view: &BatchView<'_>, base: u64, last: u64, segment_base: u64) {
        let pid = view.producer_id();
        if pid < 0 {
            return;
        }
        let mut entry = self.producers.remove(&pid).unwrap_or_else(ProducerEntry::new);
        apply_to(&mut entry, view, base, last, |first, commit| {
            self.ongoing.remove(&first);
            if !commit {
                self.aborted.entry(segment_base).or_default().push(AbortedTxn {
                    producer_id: pid,
                    first_offset: first,
                    last_offset: base,
                });
            }
        });
        if let Some(first) = entry.txn_first_offset {
            self.ongoing.insert(first, pid);
        }
        self.producers.insert(pid, entry);
    }

    pub(crate) fn first_unstable_offset(&self) -> Option<u64> {
        self.ongoing.keys().next().copied()
    }

    pub(crate) fn producers(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> {
        self.producers.iter().map(|(&p, e)| (p, e))
    }

    /// Aborted transactions overlapping `[from, upto)`, oldest marker first.
    pub(crate) fn aborted_between(&self, from: u64, upto: u64) -> Vec<AbortedTxn> {
        // A marker comes after its transaction's records, so it lives in the segment of `from`
        // or a later one.
        let start = self.aborted.range(..=from).next_back().map_or(0, |(&b, _)| b);
        self.aborted
            .range(start..)
            .flat_map(|(_, v)| v.iter())
            .filter(|a| a.last_offset >= from && a.first_offset < upto)
            .copied()
            .collect()
    }

    pub(crate) fn aborted_in_segment(&self, base: u64) -> &[AbortedTxn] {
        self.aborted.get(&base).map_or(&[], |v| v.as_slice())
    }

    pub(crate) fn set_aborted_for_segment(&mut self, base: u64, entries: Vec<AbortedTxn>) {
        if entries.is_empty() {
            self.aborted.remove(&base);
        } else {
            self.aborted.insert(base, entries);
        }
    }

    /// Forgets aborted-index entries of segments below `first_segment_base` (deleted).
    pub(crate) fn drop_segments_below(&mut self, first_segment_base: u64) {
        self.aborted = self.aborted.split_off(&first_segment_base);
    }

    /// Keeps at most `max` producers: beyond it, the tenth of them idle longest (by batch
    /// timestamps, never one with an open transaction) is forgotten at once, so a client
    /// inventing producer ids cannot grow this without bound, at an amortised O(log n) per new
    /// producer. A forgotten producer's next batch is refused as unknown unless it starts again
    /// at sequence 0, as after expiry.
    pub(crate) fn bound(&mut self, max: usize) -> usize {
        if self.producers.len() <= max {
            return 0;
        }
        let mut idle: Vec<(i64, i64)> = self
            .producers
            .iter()
            .filter(|(_, e)| e.txn_first_offset.is_none())
            .map(|(&p, e)| (e.last_timestamp, p))
            .collect();
        idle.sort_unstable();
        let n = (self.producers.len() - max + max / 10).min(idle.len());
        for &(_, pid) in &idle[..n] {
            self.producers.remove(&pid);
        }
        n
    }

    /// Removes producers idle longer than `expiration_ms` (by their batches' timestamps) that
    /// have no open transaction. Their next batch gets `UnknownProducer` unless it starts a new
    /// sequence at 0.
    pub(crate) fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| e.txn_first_offset.is_some() || now_ms.saturating_sub(e.last_timestamp) < expiration_ms);
        before - self.producers.len()
    }

    /// The state with only its producers and open transactions (what a snapshot holds).
    pub(crate) fn encode_snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.producers.len() * 64);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        let mut pids: Vec<_> = self.producers.keys().copied().collect();
        pids.sort_unstable();
        for pid in pids {
            let e = &self.producers[&pid];
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.extend_from_slice(&e.coordinator_epoch.to_be_bytes());
            out.extend_from_slice(&e.last_timestamp.to_be_bytes());
            out.extend_from_slice(&e.txn_first_offset.map_or(-1, |o| o as i64).to_be_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.first_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
            }
        }
        let crc = crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Parses a snapshot; `None` if it is malformed (the caller then rebuilds from the log).
    pub(crate) fn decode_snapshot(bytes: &[u8]) -> Option<ProducerState> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) || !body.starts_with(SNAPSHOT_MAGIC) {
            return None;
        }
        let mut r = Reader(&body[SNAPSHOT_MAGIC.len()..]);
        let n = r.u32()?;
        let mut state = ProducerState::default();
        for _ in 0..n {
            let pid = r.i64()?;
            let mut e = ProducerEntry::new();
            e.epoch = r.i16()?;
            e.coordinator_epoch = r.i32()?;
            e.last_timestamp = r.i64()?;
            let txn = r.i64()?;
            e.txn_first_offset = (txn >= 0).then_some(txn as u64);
            let batches = r.u8()?;
            if usize::from(batches) > MAX_CACHED_BATCHES {
                return None;
            }
            for _ in 0..batches {
                e.batches.push_back(BatchMeta {
                    first_seq: r.i32()?,
                    last_seq: r.i32()?,
                    first_offset: r.i64()? as u64,
                    last_offset: r.i64()? as u64,
                });
            }
            if let Some(first) = e.txn_first_offset {
                state.ongoing.insert(first, pid);
            }
            state.producers.insert(pid, e);
        }
        r.0.is_empty().then_some(state)
    }

    /// Replaces producers and open transactions with those of `snapshot`, keeping the aborted index.
    pub(crate) fn restore(&mut self, snapshot: ProducerState) {
        self.producers = snapshot.producers;
        self.ongoing = snapshot.ongoing;
    }
}

/// Applies a batch to one producer's entry; `complete(first_offset, commit)` is called when a
/// marker ends an open transaction.
fn apply_to(
    entry: &mut ProducerEntry,
    view: &BatchView<'_>,
    base: u64,
    last: u64,
    mut complete: impl FnMut(u64, bool),
) {
    entry.set_epoch(view.producer_epoch());
    entry.last_timestamp = entry.last_timestamp.max(view.max_timestamp());
    if view.is_control() {
        // Replayed markers were validated when written; a malformed one cannot end anything.
        if let Ok(marker) = parse_marker(view) {
            entry.coordinator_epoch = marker.coordinator_epoch;
            if let Some(first) = entry.txn_first_offset.take() {
                complete(first, marker.commit);
            }
        }
        return;
    }
    let first_seq = view.base_sequence();
    if first_seq >= 0 {
        entry.batches.push_back(BatchMeta {
            first_seq,
            last_seq: seq_add(first_seq, i64::from(view.last_offset_delta())),
            first_offset: base,
            last_offset: last,
        });
        while entry.batches.len() > MAX_CACHED_BATCHES {
            entry.batches.pop_front();
        }
    }
    if view.is_transactional() && entry.txn_first_offset.is_none() {
        entry.txn_first_offset = Some(base);
    }
}

/// Stages a client batch into `pending` (the same rules as [`ProducerState::apply`]), so a
/// later batch of the same append is checked against it.
pub(crate) fn stage(entry: &mut ProducerEntry, view: &BatchView<'_>, base: u64, last: u64) {
    apply_to(entry, view, base, last, |_, _| {});
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn i16(&mut self) -> Option<i16> {
        self.take().map(i16::from_be_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_be_bytes)
    }
}

/// Encodes a segment's aborted-transaction index: fixed 24-byte entries and a CRC-32C.
pub(crate) fn encode_txn_index(entries: &[AbortedTxn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * TXN_INDEX_ENTRY + 4);
    for a in entries {
        out.extend_from_slice(&a.producer_id.to_be_bytes());
        out.extend_from_slice(&a.first_offset.to_be_bytes());
        out.extend_from_slice(&a.last_offset.to_be_bytes());
    }
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Parses a segment's aborted-transaction index; `None` if malformed.
pub(crate) fn decode_txn_index(bytes: &[u8]) -> Option<Vec<AbortedTxn>> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) || !body.len().is_multiple_of(TXN_INDEX_ENTRY) {
        return None;
    }
    let mut r = Reader(body);
    let mut out = Vec::with_capacity(body.len() / TXN_INDEX_ENTRY);
    while !r.0.is_empty() {
        out.push(AbortedTxn { producer_id: r.i64()?, first_offset: r.i64()? as u64, last_offset: r.i64()? as u64 });
    }
    Some(out)
}

/// Writes a sealed segment's aborted-transaction index (removing the file when there are none).
pub(crate) fn write_txn_index(dir: &Path, base: u64, entries: &[AbortedTxn]) -> Result<(), StorageError> {
    let name = crate::segment::file_name(base, TXN_INDEX_EXT);
    if entries.is_empty() {
        let path = dir.join(&name);
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(crate::checkpoint::io_err(&path)(e)),
            _ => Ok(()),
        };
    }
    write_file_atomic(dir, &name, &encode_txn_index(entries))
}

#[cfg(test)]
mod tests {
    use creek_protocol::batch::{BatchView, build_batch, build_control_batch, set_producer};

    use super::*;

    /// A data batch of `n` records from producer `pid` at `epoch`, starting at `seq`.
    fn batch(pid: i64, epoch: i16, seq: i32, n: usize, txn: bool) -> Vec<u8> {
        let values: Vec<(Option<&[u8]>, Option<&[u8]>)> = (0..n).map(|_| (None, Some(&b"v"[..]))).collect();
        let mut b = build_batch(0, 1_000, &values);
        set_producer(&mut b, pid, epoch, seq, txn);
        b
    }

    fn marker(pid: i64, epoch: i16, commit: bool, coordinator_epoch: i32) -> Vec<u8> {
        build_control_batch(pid, epoch, commit, coordinator_epoch, 1_000)
    }

    fn check(s: &ProducerState, b: &[u8]) -> Result<Check, ProducerError> {
        s.check(&BatchView::new(b).unwrap(), &HashMap::new())
    }

    fn apply(s: &mut ProducerState, b: &[u8], base: u64) {
        let v = BatchView::new(b).unwrap();
        s.apply(&v, base, base + v.last_offset_delta() as u64, 0);
    }

    #[test]
    fn duplicates_are_recognised_and_gaps_refused() {
        let mut s = ProducerState::default();
        let b0 = batch(7, 0, 0, 3, false);
        assert!(matches!(check(&s, &b0), Ok(Check::Append)));
        apply(&mut s, &b0, 10);
        assert!(matches!(check(&s, &b0), Ok(Check::Duplicate { first_offset: 10, last_offset: 12 })));
        let gap = batch(7, 0, 5, 1, false);
        assert_eq!(
            check(&s, &gap).err(),
            Some(ProducerError::OutOfOrder { producer_id: 7, epoch: 0, last: 2, got: 5 })
        );
        let next = batch(7, 0, 3, 1, false);
        assert!(matches!(check(&s, &next), Ok(Check::Append)));
        // Only the last five batches are remembered: the first one is forgotten after five more.
        for i in 0..5 {
            apply(&mut s, &batch(7, 0, 3 + i, 1, false), 13 + i as u64);
        }
        assert!(matches!(check(&s, &b0), Err(ProducerError::OutOfOrder { .. })));
        assert!(matches!(check(&s, &batch(7, 0, 7, 1, false)), Ok(Check::Duplicate { first_offset: 17, .. })));
    }

    #[test]
    fn epochs_unknown_producers_and_wrapping() {
        let mut s = ProducerState::default();
        assert_eq!(
            check(&s, &batch(1, 0, 4, 1, false)).err(),
            Some(ProducerError::UnknownProducer { producer_id: 1, got: 4 })
        );
        apply(&mut s, &batch(1, 3, 0, 1, false), 0);
        assert!(matches!(check(&s, &batch(1, 2, 1, 1, false)), Err(ProducerError::InvalidEpoch { current: 3, .. })));
        assert!(matches!(check(&s, &batch(1, 4, 1, 1, false)), Err(ProducerError::OutOfOrder { .. })));
        assert!(matches!(check(&s, &batch(1, 4, 0, 1, false)), Ok(Check::Append)));
        // A batch ending exactly at i32::MAX is followed by sequence 0.
        let mut s = ProducerState::default();
        apply(&mut s, &batch(2, 0, 0, 1, false), 0);
        let mut e = s.producers[&2].clone();
        e.batches.back_mut().unwrap().last_seq = i32::MAX - 2;
        s.producers.insert(2, e);
        let wraps = batch(2, 0, i32::MAX - 1, 3, false); // MAX-1, MAX, 0
        assert!(matches!(check(&s, &wraps), Ok(Check::Append)));
        apply(&mut s, &wraps, 1);
        assert_eq!(s.producers[&2].last_sequence(), 0);
        assert!(matches!(check(&s, &batch(2, 0, 1, 1, false)), Ok(Check::Append)));
        assert!(matches!(check(&s, &wraps), Ok(Check::Duplicate { first_offset: 1, last_offset: 3 })));
    }

    #[test]
    fn transactions_open_close_and_abort_index() {
        let mut s = ProducerState::default();
        apply(&mut s, &batch(5, 0, 0, 2, true), 100);
        apply(&mut s, &batch(6, 0, 0, 1, true), 102);
        assert_eq!(s.first_unstable_offset(), Some(100));
        assert!(matches!(
            check(&s, &batch(5, 0, 2, 1, false)),
            Err(ProducerError::InvalidTxnState { producer_id: 5, .. })
        ));
        apply(&mut s, &marker(5, 0, false, 0), 103);
        assert_eq!(s.first_unstable_offset(), Some(102));
        apply(&mut s, &marker(6, 0, true, 0), 104);
        assert_eq!(s.first_unstable_offset(), None);
        assert_eq!(s.aborted_between(0, 200), vec![AbortedTxn { producer_id: 5, first_offset: 100, last_offset: 103 }]);
        assert!(s.aborted_between(104, 200).is_empty());
        assert!(s.aborted_between(0, 100).is_empty());
        // Markers from an older epoch or coordinator epoch are fenced.
        apply(&mut s, &batch(5, 1, 0, 1, true), 105);
        assert!(matches!(check(&s, &marker(5, 0, true, 0)), Err(ProducerError::InvalidEpoch { .. })));
        apply(&mut s, &marker(5, 1, true, 3), 106);
        assert!(matches!(check(&s, &marker(5, 1, true, 2)), Err(ProducerError::CoordinatorFenced { .. })));
    }

    #[test]
    fn snapshot_round_trip_and_garbage() {
        let mut s = ProducerState::default();
        apply(&mut s, &batch(5, 2, 0, 2, true), 100);
        apply(&mut s, &batch(9, 0, 0, 1, false), 102);
        let bytes = s.encode_snapshot();
        let mut back = ProducerState::default();
        back.restore(ProducerState::decode_snapshot(&bytes).unwrap());
        assert_eq!(back.producers, s.producers);
        assert_eq!(back.first_unstable_offset(), Some(100));
        for cut in 0..bytes.len() {
            assert!(ProducerState::decode_snapshot(&bytes[..cut]).is_none());
        }
        let mut flipped = bytes.clone();
        flipped[12] ^= 1;
        assert!(ProducerState::decode_snapshot(&flipped).is_none());
        let idx = vec![AbortedTxn { producer_id: 1, first_offset: 2, last_offset: 3 }];
        assert_eq!(decode_txn_index(&encode_txn_index(&idx)).unwrap(), idx);
        assert!(decode_txn_index(&encode_txn_index(&idx)[1..]).is_none());
    }

    #[test]
    fn the_number_of_producers_is_bounded_oldest_idle_first() {
        let mut s = ProducerState::default();
        for pid in 0..100 {
            let mut b = batch(pid, 0, 0, 1, pid == 0);
            b[35..43].copy_from_slice(&(1_000 + pid).to_be_bytes()); // maxTimestamp grows with pid
            let crc = creek_protocol::batch::crc32c(&b[21..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            apply(&mut s, &b, pid as u64);
        }
        assert_eq!(s.bound(100), 0);
        assert_eq!(s.bound(50), 55, "down to the cap minus a tenth of it");
        assert_eq!(s.producers.len(), 45);
        assert!(s.producers.contains_key(&0), "an open transaction is never forgotten");
        assert!(!s.producers.contains_key(&1) && s.producers.contains_key(&99), "the oldest idle go first");
    }

    #[test]
    fn expiry_keeps_open_transactions() {
        let mut s = ProducerState::default();
        apply(&mut s, &batch(1, 0, 0, 1, false), 0); // timestamp 1000
        apply(&mut s, &batch(2, 0, 0, 1, true), 1);
        assert_eq!(s.expire(10_000, 5_000), 1);
        assert!(s.producers.contains_key(&2));
        assert!(matches!(check(&s, &batch(1, 0, 1, 1, false)), Err(ProducerError::UnknownProducer { .. })));
    }
}
