//! openraft's `RaftLogStorage` over a `PartitionLog`: one Raft entry is one record batch in the segment files.
//!
//! State beside the batches, in the log directory as storage state files (see
//! `PartitionLog::write_state_file`; each is text, a version line first, replaced atomically):
//! - `raft-vote.state`: `0`, term, voted-for node, committed flag (0/1). Durable before
//!   `save_vote` returns.
//! - `raft-log-start.state`: `0`, the Raft index of the first entry, the Kafka offset where it is
//!   (or will be) stored, and the last purged log id (term and index, or `-`). Rewritten durably
//!   by `purge` and when an empty log receives an entry at an index other than the expected one
//!   (a follower's first entry after a snapshot).
//! - `raft-committed.state`: `0`, term and index of the committed log id, written on `close`
//!   only (openraft treats it as a hint; an older value is safe).
//! - `raft-snapshot.state`: `0`, the snapshot's last log id (term, index), the Kafka offset after
//!   it, the log id of the membership it holds (term and index, or `-`) and that membership as
//!   hex of the control value below. A partition's snapshot is only this: the log is the data, so
//!   a snapshot marks where the Raft log may start (see [`StoredSnapshot`]). Written durably before
//!   any purge it allows, and before an installed snapshot resets the log.
//!
//! Entries read back are zero-copy views of the segment maps. Storage may zero and reuse the
//! bytes of truncated batches, so nobody may hold entries across their own truncation: openraft
//! truncates only a follower's uncommitted tail, which it neither replicates nor applies.
//! `append` writes on the caller's thread (positioned writes into the page cache; a segment roll,
//! rare, fsyncs the sealed segment there too); everything else that fsyncs runs on a blocking
//! thread.
//!
//! Control records (key version 0, producer id -1, not transactional): type
//! [`CONTROL_TYPE_BLANK`] with value `00 00` (version 0), and [`CONTROL_TYPE_MEMBERSHIP`] whose
//! value is version `00 00`, then big-endian: u32 config count, per config a u32 id count and
//! u64 ids; u32 node count, per node a u64 id, a u32 address length and the UTF-8 address. Kafka
//! uses types 0 (abort), 1 (commit) and KRaft 2..=6; 100 and up are Creek's (100 blank, 101
//! membership, 102 a refused proposal, 103 DeleteRecords), as are its key
//! versions 100–104 in `__consumer_offsets`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use creek_protocol::batch::{BatchView, build_plain_control_batch, control_record, framed_len};
use creek_storage::{FlushTarget, LogConfig, PartitionLog, StorageError};
use openraft::impls::BasicNode;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::type_config::alias::{EntryOf, LogIdOf, SnapshotMetaOf, StoredMembershipOf, VoteOf};
use openraft::vote::RaftVote;
use openraft::vote::leader_id_std::LeaderId;
use openraft::{EntryPayload, LogId, Membership, OptionalSend, RaftLogReader};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{KafkaBatch, TypeConfig};
use crate::state::now_ms;

type Entry = EntryOf<TypeConfig>;
type RaftLogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

/// Control record type of openraft's blank entry (a new leader's first entry).
pub(crate) const CONTROL_TYPE_BLANK: i16 = 100;
/// Control record type of an openraft membership entry.
pub(crate) const CONTROL_TYPE_MEMBERSHIP: i16 = 101;

/// Control record type of a batch the leader refused (see [`Refusal`]): it takes the Raft index
/// of the proposal so every replica answers the producer the same way.
pub(crate) const CONTROL_TYPE_REFUSED: i16 = 102;

/// Control record type of a DeleteRecords: every replica moves its log start to the offset in
/// the value (version `00 00`, then the offset as a big-endian i64) once the entry is committed.
pub(crate) const CONTROL_TYPE_DELETE_RECORDS: i16 = 103;

/// A DeleteRecords proposal: records below `offset` go on every replica.
pub(crate) fn delete_records_batch(offset: u64, now_ms: i64) -> Vec<u8> {
    let mut value = vec![0, 0];
    value.extend_from_slice(&(offset as i64).to_be_bytes());
    let mut batch = build_plain_control_batch(CONTROL_TYPE_DELETE_RECORDS, &value, now_ms);
    creek_protocol::batch::set_base_offset(&mut batch, PROPOSAL_OFFSET);
    batch
}

/// The offset a stored DeleteRecords batch deletes below, if `batch` is one.
pub(crate) fn delete_records_offset(batch: &[u8]) -> Option<u64> {
    let v = BatchView::new(batch).ok()?;
    match raft_control_type(&v)? {
        (CONTROL_TYPE_DELETE_RECORDS, [0, 0, rest @ ..]) if rest.len() == 8 => {
            u64::try_from(i64::from_be_bytes(rest.try_into().ok()?)).ok()
        }
        _ => None,
    }
}

/// The `baseOffset` of a batch proposed to a leader's log: not stamped yet. The leader's store
/// stamps it when it appends the entry (in log order), so concurrent proposals need no lock.
/// Any negative `baseOffset` is a proposal; `-2 - token` also asks the store to tell the waiter
/// registered for `token` (see [`LogReader::await_append`]) once the batch is in the leader's
/// log (acks=1). `baseOffset` is not covered by the CRC.
pub(crate) const PROPOSAL_OFFSET: i64 = -1;

/// The proposal `baseOffset` carrying an append waiter's token.
pub(crate) fn proposal_offset_with_token(token: i64) -> i64 {
    -2 - token
}

/// Why a proposed batch was not stored, as its producer is answered: `code` 0 is a retried
/// duplicate (answered with the original offsets), any other a Kafka error code. Encoded as the
/// value of a [`CONTROL_TYPE_REFUSED`] record: version `00 00`, i16 code, i64 base and last
/// offset (-1 when there are none), big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: i16,
    pub(crate) base_offset: i64,
    pub(crate) last_offset: i64,
}

impl Refusal {
    fn encode(&self) -> Vec<u8> {
        let mut v = vec![0, 0];
        v.extend_from_slice(&self.code.to_be_bytes());
        v.extend_from_slice(&self.base_offset.to_be_bytes());
        v.extend_from_slice(&self.last_offset.to_be_bytes());
        v
    }

    /// The refusal a stored batch carries, if it is one.
    pub(crate) fn of(batch: &[u8]) -> Option<Refusal> {
        let v = BatchView::new(batch).ok()?;
        let (kind, value) = raft_control_type(&v)?;
        if kind != CONTROL_TYPE_REFUSED || value.len() != 20 || value[0..2] != [0, 0] {
            return None;
        }
        Some(Refusal {
            code: i16::from_be_bytes(value[2..4].try_into().ok()?),
            base_offset: i64::from_be_bytes(value[4..12].try_into().ok()?),
            last_offset: i64::from_be_bytes(value[12..20].try_into().ok()?),
        })
    }
}

const VOTE_FILE: &str = "raft-vote";
const START_FILE: &str = "raft-log-start";
const COMMITTED_FILE: &str = "raft-committed";
pub(super) const SNAPSHOT_FILE: &str = "raft-snapshot";
const FORMAT_VERSION: &str = "0";
/// Bytes read from a segment per read call when collecting entries.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// Appends waiting for the flusher; `append` waits (backpressure) when it is full.
const PENDING_FLUSHES_MAX: usize = 1024;
/// Membership entries are small; a larger value is corrupt, not a membership.
const MEMBERSHIP_BYTES_MAX: usize = 1 << 20;

/// Where one Raft entry is: its batch's base offset and its term (= the batch's leader epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    base_offset: u64,
    term: u64,
}

/// A partition group's snapshot: openraft's meta (the last log id it covers and the membership
/// then) and the Kafka offset right after that entry. A replica that installs it holds nothing
/// below `next_offset` and continues there; the leader's retention has already deleted (or is
/// about to delete) what lies below, so the replica holds what the leader holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredSnapshot {
    pub(crate) meta: SnapshotMetaOf<TypeConfig>,
    pub(crate) next_offset: u64,
}

impl StoredSnapshot {
    fn last(&self) -> RaftLogId {
        self.meta.last_log_id.expect("a stored snapshot covers an entry")
    }

    pub(super) fn encode(&self) -> String {
        let last = self.last();
        let m = &self.meta.last_membership;
        let m_id = match m.log_id() {
            Some(id) => format!("{}\n{}", term_of(id), id.index()),
            None => "-\n-".to_string(),
        };
        let hex: String = encode_membership(m.membership()).iter().map(|b| format!("{b:02x}")).collect();
        format!("{FORMAT_VERSION}\n{}\n{}\n{}\n{m_id}\n{hex}\n", term_of(&last), last.index(), self.next_offset)
    }

    fn decode(lines: &[String]) -> io::Result<StoredSnapshot> {
        if lines.len() != 6 {
            return Err(invalid(format!("{SNAPSHOT_FILE}: expected 6 fields")));
        }
        let last = parse_log_id(lines, 0)?.ok_or_else(|| invalid(format!("{SNAPSHOT_FILE}: no last log id")))?;
        let next_offset = parse_u64(&lines[2])?;
        let m_id = parse_log_id(lines, 3)?;
        let hex = lines[5].as_bytes();
        if !hex.len().is_multiple_of(2) {
            return Err(invalid(format!("{SNAPSHOT_FILE}: odd hex length")));
        }
        let bytes = hex
            .chunks(2)
            .map(|pair| std::str::from_utf8(pair).ok().and_then(|p| u8::from_str_radix(p, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| invalid(format!("{SNAPSHOT_FILE}: bad hex")))?;
        let membership = decode_membership(&bytes)?;
        Ok(StoredSnapshot {
            meta: SnapshotMetaOf::<TypeConfig> {
                last_log_id: Some(last),
                last_membership: StoredMembershipOf::<TypeConfig>::new(m_id, membership),
            },
            next_offset,
        })
    }
}

/// A partition log shared by its Raft store and the broker's Kafka handlers (which read it and,
/// for internal topics, append to it). Lock order: the store's lock before this one.
pub(crate) type SharedLog = Arc<Mutex<PartitionLog>>;

/// Everything behind the store's lock.
#[derive(Debug)]
struct State {
    log: SharedLog,
    /// Raft index of `slots[0]`, or of the next entry when `slots` is empty.
    first_index: u64,
    /// Kafka offset of `slots[0]`, or the log end when `slots` is empty: every batch from here
    /// to the log end is a Raft entry, in index order.
    start_offset: u64,
    purged: Option<RaftLogId>,
    slots: VecDeque<Slot>,
    vote: Option<Vote>,
    committed: Option<RaftLogId>,
    /// The latest snapshot built or installed here.
    snapshot: Option<StoredSnapshot>,
    /// The log start committed DeleteRecords entries ask for (the replica's deleter acts on it).
    deletions: tokio::sync::watch::Sender<u64>,
    /// Producers waiting for their proposal to reach the leader's log (acks=1), by token.
    append_waiters: std::collections::HashMap<i64, tokio::sync::oneshot::Sender<super::Applied>>,
}

/// openraft's log storage for one partition. Dropping it without [`LogStore::close`] is a crash
/// as far as the files are concerned (recovery runs on the next open); nothing reported flushed
/// is lost.
pub(crate) struct LogStore {
    shared: Arc<Mutex<State>>,
    flushes: mpsc::Sender<(FlushTarget, IOFlushed<TypeConfig>)>,
    // Awaited by `close`; in the broker openraft owns the store and drops it (its flusher then
    // ends with the channel).
    #[cfg_attr(not(test), allow(dead_code))]
    flusher: tokio::task::JoinHandle<()>,
}

/// A reader of the same log (openraft reads entries for replication and apply through it).
#[derive(Clone)]
pub(crate) struct LogReader {
    shared: Arc<Mutex<State>>,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn storage_err(e: StorageError) -> io::Error {
    io::Error::other(e)
}

fn log_id(term: u64, index: u64) -> RaftLogId {
    LogId::new_term_index(term, index)
}

fn term_of(id: &RaftLogId) -> u64 {
    id.committed_leader_id().term
}

impl LogStore {
    /// Opens (creating if missing) the partition log in `dir` and the Raft state beside it, and
    /// starts the store's flusher task (so it must run inside a tokio runtime).
    pub(crate) fn open(dir: &Path, config: LogConfig) -> io::Result<LogStore> {
        let log = PartitionLog::open(dir, config, now_ms()).map_err(storage_err)?;
        LogStore::on(Arc::new(Mutex::new(log)))
    }

    /// The store of an already open partition log (the broker's), and its flusher task.
    pub(crate) fn on(log: SharedLog) -> io::Result<LogStore> {
        let state = State::load(log)?;
        let shared = Arc::new(Mutex::new(state));
        let (flushes, rx) = mpsc::channel(PENDING_FLUSHES_MAX);
        let flusher = tokio::spawn(run_flusher(shared.clone(), rx));
        Ok(LogStore { shared, flushes, flusher })
    }

    /// Whether the Raft log holds no entry yet (a new replica).
    pub(crate) fn is_empty(&self) -> bool {
        self.shared.lock().last_log_id().is_none()
    }

    /// Runs `f` on the partition log under the store's lock (tests: retention, DeleteRecords).
    #[cfg(test)]
    pub(crate) fn with_log<R>(&self, f: impl FnOnce(&mut PartitionLog) -> R) -> R {
        f(&mut self.shared.lock().log.lock())
    }

    /// Waits for queued flushes, records the committed log id and closes the partition log
    /// cleanly. Fails if a [`LogReader`] is still alive.
    #[cfg(test)]
    pub(crate) async fn close(self) -> io::Result<()> {
        let LogStore { shared, flushes, flusher } = self;
        drop(flushes);
        flusher.await.map_err(io::Error::other)?;
        let state = Arc::try_unwrap(shared).map_err(|_| io::Error::other("log readers still open"))?.into_inner();
        tokio::task::spawn_blocking(move || state.close()).await.map_err(io::Error::other)?
    }

    /// Runs `f` on the state on a blocking thread (it may fsync).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&mut shared.lock())).await.map_err(io::Error::other)?
    }
}

/// The flusher: one fsync for every append queued so far (the latest flush target covers the
/// earlier ones: rolls fsync sealed segments), then the appends' callbacks, in order.
async fn run_flusher(shared: Arc<Mutex<State>>, mut rx: mpsc::Receiver<(FlushTarget, IOFlushed<TypeConfig>)>) {
    let mut queued = Vec::new();
    while rx.recv_many(&mut queued, PENDING_FLUSHES_MAX).await > 0 {
        let target = queued.last().expect("recv_many returned some").0.clone();
        let shared2 = shared.clone();
        let synced = tokio::task::spawn_blocking(move || {
            target.sync()?;
            shared2.lock().log.lock().mark_flushed_target(&target);
            Ok::<(), io::Error>(())
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
        for (_, callback) in queued.drain(..) {
            let result = match &synced {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            callback.io_completed(result);
        }
    }
}

impl State {
    /// Reads the Raft state files and rebuilds the index from the batch headers. A snapshot
    /// install that a crash interrupted (the snapshot is durable, the log was not yet reset to
    /// it, or the reset was not yet recorded) is finished here.
    fn load(shared_log: SharedLog) -> io::Result<State> {
        let log = shared_log.lock();
        let vote = read_lines(&log, VOTE_FILE)?.map(|l| parse_vote(&l)).transpose()?;
        let committed = read_lines(&log, COMMITTED_FILE)?.map(|l| parse_log_id(&l, 0)).transpose()?.flatten();
        let snapshot = read_lines(&log, SNAPSHOT_FILE)?.map(|l| StoredSnapshot::decode(&l)).transpose()?;
        let (first_index, start_offset, purged) = match read_lines(&log, START_FILE)? {
            Some(l) if l.len() == 4 => (parse_u64(&l[0])?, parse_u64(&l[1])?, parse_log_id(&l, 2)?),
            Some(_) => return Err(invalid(format!("{START_FILE}: expected 4 fields"))),
            None => (0, log.log_start_offset(), None),
        };
        let scanned = scan(&log, start_offset);
        drop(log);
        let pending = snapshot.clone().filter(|s| purged.is_none_or(|p| p.index() < s.last().index()));
        let (slots, install) = match (scanned, pending) {
            (Ok(slots), None) => (slots, None),
            (Ok(slots), Some(s)) => (slots, Some(s)),
            (Err(_), Some(s)) => (VecDeque::new(), Some(s)),
            (Err(e), None) => return Err(e),
        };
        let mut state = State {
            log: shared_log,
            first_index,
            start_offset,
            purged,
            slots,
            vote,
            committed,
            snapshot,
            deletions: tokio::sync::watch::Sender::new(0),
            append_waiters: Default::default(),
        };
        match install {
            // Built here and not purged yet, or installed over a log that already held it.
            Some(s) if state.holds(&s) => {}
            Some(s) => {
                tracing::info!(
                    snapshot = %s.last(), next_offset = s.next_offset,
                    "finishing a snapshot install interrupted by a restart"
                );
                state.reset_to_snapshot(&s)?;
            }
            None => {}
        }
        state.set_retention_floor();
        Ok(state)
    }

    /// Whether the log holds the snapshot's last entry, ending where the snapshot says.
    fn holds(&self, s: &StoredSnapshot) -> bool {
        let last = s.last();
        let Some(k) = last.index().checked_sub(self.first_index) else { return false };
        self.slots.get(k as usize).is_some_and(|slot| slot.term == term_of(&last))
            && self.end_offset_of(last.index()) == Some(s.next_offset)
    }

    /// Makes the log what a replica that installed `s` holds: nothing, continuing at the
    /// snapshot's next offset with the Raft entry after it. The reset is storage's atomic "start
    /// over at" (its own checkpoint is the commit point), recorded in the start file after.
    fn reset_to_snapshot(&mut self, s: &StoredSnapshot) -> io::Result<()> {
        self.log.lock().reset_to(s.next_offset).map_err(storage_err)?;
        self.slots.clear();
        self.first_index = s.last().index() + 1;
        self.start_offset = s.next_offset;
        self.purged = Some(s.last());
        self.write_start()?;
        self.set_retention_floor();
        self.check();
        Ok(())
    }

    /// Records a snapshot this node built, durably, before openraft may purge up to it.
    fn save_built_snapshot(&mut self, s: StoredSnapshot) -> io::Result<()> {
        if !self.holds(&s) && self.purged.is_none_or(|p| p < s.last()) {
            return Err(invalid(format!("snapshot at {} does not match the log", s.last())));
        }
        self.log.lock().write_state_file(SNAPSHOT_FILE, s.encode().as_bytes()).map_err(storage_err)?;
        self.snapshot = Some(s);
        Ok(())
    }

    /// Installs a snapshot received from the leader: recorded durably first, then the log is
    /// reset to it unless it already holds the snapshot's last entry (openraft then only purges
    /// up to it) or has purged past it.
    fn install_snapshot(&mut self, s: StoredSnapshot) -> io::Result<()> {
        self.log.lock().write_state_file(SNAPSHOT_FILE, s.encode().as_bytes()).map_err(storage_err)?;
        self.snapshot = Some(s.clone());
        if self.holds(&s) || self.purged.is_some_and(|p| p >= s.last()) {
            return Ok(());
        }
        self.reset_to_snapshot(&s)
    }

    /// The last entry that ends at or below Kafka offset `upto`, and the offset after it: where a
    /// snapshot lets retention delete everything below `upto`.
    fn snapshot_point(&self, upto: u64) -> Option<(RaftLogId, u64)> {
        // An entry ends where the next one starts (the last one at the log end), so with `c`
        // entries starting at or below `upto`, those before the `c`-th end at or below it, and the
        // last entry too if the log ends at or below `upto`.
        let c = self.slots.partition_point(|s| s.base_offset <= upto);
        let after =
            if c == self.slots.len() && self.log.lock().log_end_offset() <= upto { c } else { c.checked_sub(1)? };
        let last = after.checked_sub(1)?;
        let end = self.slots.get(after).map_or_else(|| self.log.lock().log_end_offset(), |s| s.base_offset);
        Some((log_id(self.slots[last].term, self.first_index + last as u64), end))
    }

    /// Keeps storage's retention, DeleteRecords and compaction below the Raft log start (the
    /// floor is in memory only: set on every open and whenever the start moves).
    fn set_retention_floor(&mut self) {
        self.log.lock().set_retention_floor(self.start_offset);
    }

    #[cfg(test)]
    fn close(self) -> io::Result<()> {
        if let Some(c) = &self.committed {
            let text = format!("{FORMAT_VERSION}\n{}\n{}\n", term_of(c), c.index());
            self.log.lock().write_state_file(COMMITTED_FILE, text.as_bytes()).map_err(storage_err)?;
        }
        // The broker's handlers may share the log; then its owner closes it.
        match Arc::try_unwrap(self.log) {
            Ok(log) => log.into_inner().close().map_err(storage_err),
            Err(shared) => shared.lock().flush().map(|_| ()).map_err(storage_err),
        }
    }

    fn check(&self) {
        if self.slots.is_empty() {
            assert_eq!(self.start_offset, self.log.lock().log_end_offset(), "an empty Raft log starts at the log end");
        } else {
            assert_eq!(self.start_offset, self.slots[0].base_offset);
        }
        if let Some(p) = &self.purged {
            assert!(p.index() < self.first_index, "entries start after the purged one");
        }
        assert_eq!(self.log.lock().retention_floor(), self.start_offset, "storage keeps what Raft may still need");
    }

    /// The index the next appended entry must have.
    fn next_index(&self) -> u64 {
        self.first_index + self.slots.len() as u64
    }

    fn last_log_id(&self) -> Option<RaftLogId> {
        match self.slots.back() {
            Some(s) => Some(log_id(s.term, self.next_index() - 1)),
            None => self.purged,
        }
    }

    fn write_start(&self) -> io::Result<()> {
        let purged = match &self.purged {
            Some(p) => format!("{}\n{}", term_of(p), p.index()),
            None => "-\n-".to_string(),
        };
        let text = format!("{FORMAT_VERSION}\n{}\n{}\n{purged}\n", self.first_index, self.start_offset);
        self.log.lock().write_state_file(START_FILE, text.as_bytes()).map_err(storage_err)
    }

    /// Writes `entries` to the log (not yet durable) and returns what to fsync.
    fn append(&mut self, entries: Vec<Entry>, now_ms: i64) -> io::Result<FlushTarget> {
        // Consecutive entries of one term go to storage in one append (one write).
        let mut run: Vec<u8> = Vec::new();
        let mut run_slots: Vec<Slot> = Vec::new();
        let mut next_offset = self.log.lock().log_end_offset();
        for entry in entries {
            let index = entry.log_id.index();
            let term = term_of(&entry.log_id);
            if index != self.next_index() + run_slots.len() as u64 {
                if !(self.slots.is_empty() && run_slots.is_empty()) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("entry {index} does not follow the last entry {}", self.next_index() - 1),
                    ));
                }
                // An empty log may start anywhere after the purged entry (a follower's first
                // entry after a snapshot): move the start there, durably, before writing.
                if self.purged.as_ref().is_some_and(|p| p.index() >= index) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("entry {index} is at or below the purged entry"),
                    ));
                }
                self.first_index = index;
                self.write_start()?;
            }
            if run_slots.last().is_some_and(|s| s.term != term) {
                self.append_run(&mut run, &mut run_slots, now_ms)?;
            }
            let mut bytes = match entry.payload {
                // Every replica builds these batches itself: timestamp 0 (no clock) keeps the
                // replicas' logs byte-identical.
                EntryPayload::Blank => build_plain_control_batch(CONTROL_TYPE_BLANK, &[0, 0], 0),
                EntryPayload::Membership(m) => {
                    build_plain_control_batch(CONTROL_TYPE_MEMBERSHIP, &encode_membership(&m), 0)
                }
                EntryPayload::Normal(KafkaBatch(b)) => {
                    let v = BatchView::new(&b).map_err(|e| invalid(e.to_string()))?;
                    if v.total_len() != b.len() {
                        return Err(invalid(format!("entry {index}: a payload is exactly one batch")));
                    }
                    v.verify_crc().map_err(|e| invalid(format!("entry {index}: {e}")))?;
                    if v.base_offset() < 0 {
                        // This node leads and proposed the batch: it is stamped here, in log
                        // order, and stored as it will be replicated.
                        if !run_slots.is_empty() {
                            self.append_run(&mut run, &mut run_slots, now_ms)?;
                        }
                        let token = (v.base_offset() <= -2).then(|| -2 - v.base_offset());
                        self.append_proposal(&b, term, now_ms, token)?;
                        next_offset = self.log.lock().log_end_offset();
                        continue;
                    }
                    if v.base_offset() as u64 != next_offset {
                        return Err(invalid(format!(
                            "entry {index}: batch stamped with offset {}, but the log continues at {next_offset}",
                            v.base_offset()
                        )));
                    }
                    b.to_vec()
                }
            };
            let v = BatchView::new(&bytes).map_err(|e| invalid(e.to_string()))?;
            run_slots.push(Slot { base_offset: next_offset, term });
            next_offset += v.last_offset_delta() as u64 + 1;
            bytes[0..8].copy_from_slice(&(run_slots.last().expect("pushed").base_offset as i64).to_be_bytes());
            run.extend_from_slice(&bytes);
        }
        if !run_slots.is_empty() {
            self.append_run(&mut run, &mut run_slots, now_ms)?;
        }
        self.check();
        Ok(self.log.lock().flush_target())
    }

    fn append_run(&mut self, run: &mut Vec<u8>, run_slots: &mut Vec<Slot>, now_ms: i64) -> io::Result<()> {
        let first = run_slots[0];
        let epoch = i32::try_from(first.term)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("term {} exceeds i32", first.term)))?;
        // Entries the leader already accepted: producers were checked when it stamped them.
        let info = self.log.lock().append_replica(run, epoch, now_ms).map_err(storage_err)?;
        if info.duplicate || info.base_offset != first.base_offset {
            return Err(invalid(format!(
                "storage placed entries at offset {} (duplicate: {}), expected {}",
                info.base_offset, info.duplicate, first.base_offset
            )));
        }
        if self.slots.is_empty() {
            self.start_offset = first.base_offset;
            self.set_retention_floor();
        }
        self.slots.extend(run_slots.drain(..));
        run.clear();
        Ok(())
    }

    /// Stores a batch this node proposed as leader: storage stamps its offsets and checks its
    /// producer. A batch storage refuses (a retried duplicate, a sequence gap, a fenced epoch)
    /// still takes its Raft index, as a refusal control batch ([`CONTROL_TYPE_REFUSED`]) that
    /// every replica stores and the state machine turns into the producer's answer.
    fn append_proposal(&mut self, batch: &[u8], term: u64, now_ms: i64, token: Option<i64>) -> io::Result<()> {
        let epoch = i32::try_from(term)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("term {term} exceeds i32")))?;
        let mut bytes = batch.to_vec();
        let mut log = self.log.lock();
        let base_offset = log.log_end_offset();
        // Creek's own control batches (a DeleteRecords) have no producer to check.
        let ours = BatchView::new(&bytes).ok().is_some_and(|v| raft_control_type(&v).is_some());
        let stored =
            if ours { log.append_replica(&mut bytes, epoch, now_ms) } else { log.append(&mut bytes, epoch, now_ms) };
        let refusal = match stored {
            Ok(info) if !info.duplicate => None,
            Ok(info) => {
                Some(Refusal { code: 0, base_offset: info.base_offset as i64, last_offset: info.last_offset as i64 })
            }
            Err(StorageError::Producer(e)) => {
                Some(Refusal { code: crate::handlers::producer_error_code(&e), base_offset: -1, last_offset: -1 })
            }
            Err(e) => return Err(storage_err(e)),
        };
        if let Some(r) = refusal {
            let mut control = build_plain_control_batch(CONTROL_TYPE_REFUSED, &r.encode(), now_ms);
            log.append_replica(&mut control, epoch, now_ms).map_err(storage_err)?;
        }
        let appended = match refusal {
            Some(r) => super::Applied::Refused(r),
            None => super::Applied::Batch { base_offset, last_offset: log.log_end_offset() - 1 },
        };
        drop(log);
        if let Some(waiter) = token.and_then(|t| self.append_waiters.remove(&t)) {
            let _ = waiter.send(appended);
        }
        if self.slots.is_empty() {
            self.start_offset = base_offset;
            self.set_retention_floor();
        }
        self.slots.push_back(Slot { base_offset, term });
        Ok(())
    }

    /// Removes the entries after `last` (all of them for `None`), durably.
    fn truncate_after(&mut self, last: Option<RaftLogId>) -> io::Result<()> {
        let keep = match &last {
            None => 0,
            Some(id) => (id.index() + 1).saturating_sub(self.first_index).min(self.slots.len() as u64) as usize,
        };
        if keep == self.slots.len() {
            return Ok(());
        }
        let offset = self.slots[keep].base_offset;
        self.log.lock().truncate_to(offset).map_err(storage_err)?;
        self.slots.truncate(keep);
        self.check();
        Ok(())
    }

    /// Forgets the entries up to `id` (inclusive) for Raft; their batches stay in the log.
    fn purge(&mut self, id: RaftLogId) -> io::Result<()> {
        if self.purged.as_ref().is_some_and(|p| p.index() >= id.index()) {
            return Ok(());
        }
        let next = id.index() + 1;
        if next > self.first_index {
            let drop = ((next - self.first_index).min(self.slots.len() as u64)) as usize;
            self.start_offset = match self.slots.get(drop) {
                Some(s) => s.base_offset,
                None => self.log.lock().log_end_offset(),
            };
            self.slots.drain(..drop);
            self.first_index = next;
        }
        self.purged = Some(id);
        self.write_start()?;
        self.set_retention_floor(); // only after the new start is durable
        self.check();
        Ok(())
    }

    fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let text = format!(
            "{FORMAT_VERSION}\n{}\n{}\n{}\n",
            vote.leader_id.term,
            vote.leader_id.voted_for,
            u8::from(vote.is_committed())
        );
        self.log.lock().write_state_file(VOTE_FILE, text.as_bytes()).map_err(storage_err)?;
        self.vote = Some(*vote);
        Ok(())
    }

    /// The Kafka offset after the entry at `index`, if the log holds it.
    fn end_offset_of(&self, index: u64) -> Option<u64> {
        let k = usize::try_from(index.checked_sub(self.first_index)?).ok()?;
        if k >= self.slots.len() {
            return None;
        }
        Some(match self.slots.get(k + 1) {
            Some(next) => next.base_offset,
            None => self.log.lock().log_end_offset(),
        })
    }

    /// The entries with indexes in `range` that the log holds.
    fn entries(&self, range: impl RangeBounds<u64>) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .max(self.first_index);
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        }
        .min(self.next_index());
        let mut out = Vec::with_capacity(end.saturating_sub(start).min(1024) as usize);
        let mut chunk = Bytes::new();
        for index in start..end {
            let slot = self.slots[(index - self.first_index) as usize];
            if chunk.is_empty() {
                chunk = self.log.lock().read(slot.base_offset, READ_CHUNK_BYTES).map_err(storage_err)?.bytes;
            }
            let len = framed_len(&chunk).map_err(|e| invalid(e.to_string()))?;
            if len > chunk.len() {
                return Err(invalid(format!("entry {index}: batch truncated")));
            }
            let batch = chunk.split_to(len);
            out.push(decode_entry(batch, index, slot)?);
        }
        Ok(out)
    }
}

/// The index of the log from Raft's start offset `start_offset` on: one slot per batch.
fn scan(log: &PartitionLog, start_offset: u64) -> io::Result<VecDeque<Slot>> {
    if start_offset < log.log_start_offset() {
        return Err(invalid(format!(
            "the Kafka log start {} has passed the Raft log start {start_offset}: retention or DeleteRecords removed Raft entries",
            log.log_start_offset()
        )));
    }
    if start_offset > log.log_end_offset() {
        return Err(invalid(format!(
            "the Raft log starts at offset {start_offset}, past the log end {}",
            log.log_end_offset()
        )));
    }
    let mut slots = VecDeque::new();
    let mut offset = start_offset;
    while offset < log.log_end_offset() {
        let read = log.read(offset, READ_CHUNK_BYTES).map_err(storage_err)?;
        let mut at = 0;
        while at < read.bytes.len() {
            let v = BatchView::new(&read.bytes[at..]).map_err(|e| invalid(e.to_string()))?;
            if v.base_offset() as u64 != offset {
                return Err(invalid(format!(
                    "expected a batch at offset {offset}, found {}: batches were removed above the Raft log start",
                    v.base_offset()
                )));
            }
            slots.push_back(Slot { base_offset: offset, term: term_of_batch(&v)? });
            offset = v.last_offset() as u64 + 1;
            at += v.total_len();
        }
        if offset != read.next_offset {
            return Err(invalid("a read returned a partial batch"));
        }
    }
    Ok(slots)
}

/// Makes a log whose replica this node no longer hosts look like one it never hosted: its Raft
/// state files go first (so a crash in between leaves a plain log, never a Raft log with missing
/// entries), then the log restarts empty at offset 0.
pub(crate) fn forget(log: &mut PartitionLog) -> Result<(), StorageError> {
    for name in [START_FILE, SNAPSHOT_FILE, VOTE_FILE, COMMITTED_FILE] {
        log.remove_state_file(name)?;
    }
    log.set_retention_floor(u64::MAX);
    log.reset_to(0)
}

/// Holds retention, DeleteRecords and compaction back on a log that was a Raft log, from its
/// open until its store starts and sets the real floor: storage's default floor is none, and a
/// restarted broker runs housekeeping before its cluster starts the partition's replica.
pub(crate) fn hold_retention_if_replicated(log: &mut PartitionLog) -> Result<(), StorageError> {
    if log.read_state_file(START_FILE)?.is_some() {
        let start = log.log_start_offset();
        log.set_retention_floor(start);
    }
    Ok(())
}

/// The Raft entry stored as `batch` at `index`.
fn decode_entry(batch: Bytes, index: u64, slot: Slot) -> io::Result<Entry> {
    let v = BatchView::new(&batch).map_err(|e| invalid(e.to_string()))?;
    if v.base_offset() as u64 != slot.base_offset || term_of_batch(&v)? != slot.term {
        return Err(invalid(format!(
            "entry {index}: batch at offset {} epoch {} does not match the index (offset {}, term {})",
            v.base_offset(),
            v.partition_leader_epoch(),
            slot.base_offset,
            slot.term
        )));
    }
    let payload = match raft_control_type(&v) {
        Some((CONTROL_TYPE_BLANK, _)) => EntryPayload::Blank,
        Some((CONTROL_TYPE_MEMBERSHIP, value)) => EntryPayload::Membership(decode_membership(value)?),
        _ => EntryPayload::Normal(KafkaBatch(batch.clone())),
    };
    Ok(Entry { log_id: log_id(slot.term, index), payload })
}

/// The Creek control record type of a Raft control batch, with its value; `None` for every
/// other batch (data, transaction markers: those have a producer id).
fn raft_control_type<'a>(v: &BatchView<'a>) -> Option<(i16, &'a [u8])> {
    if !v.is_control() || v.is_transactional() || v.producer_id() >= 0 {
        return None;
    }
    let r = control_record(v).ok()?;
    let creek_type = matches!(
        r.control_type,
        CONTROL_TYPE_BLANK | CONTROL_TYPE_MEMBERSHIP | CONTROL_TYPE_REFUSED | CONTROL_TYPE_DELETE_RECORDS
    );
    (r.version == 0 && creek_type).then_some((r.control_type, r.value))
}

fn term_of_batch(v: &BatchView<'_>) -> io::Result<u64> {
    u64::try_from(v.partition_leader_epoch())
        .map_err(|_| invalid(format!("batch at offset {} has no leader epoch", v.base_offset())))
}

pub(super) fn encode_membership(m: &Membership<u64, BasicNode>) -> Vec<u8> {
    let mut out = vec![0, 0];
    let configs = m.get_joint_config();
    out.extend_from_slice(&(configs.len() as u32).to_be_bytes());
    for config in configs {
        out.extend_from_slice(&(config.len() as u32).to_be_bytes());
        for id in config {
            out.extend_from_slice(&id.to_be_bytes());
        }
    }
    let nodes: Vec<_> = m.nodes().collect();
    out.extend_from_slice(&(nodes.len() as u32).to_be_bytes());
    for (id, node) in nodes {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(node.addr.len() as u32).to_be_bytes());
        out.extend_from_slice(node.addr.as_bytes());
    }
    out
}

/// Decodes [`encode_membership`]'s format; counts are checked against the bytes present, so a
/// corrupt value is an error, never a large allocation or a panic.
pub(super) fn decode_membership(value: &[u8]) -> io::Result<Membership<u64, BasicNode>> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
            if self.0.len() < n {
                return Err(invalid("membership value truncated"));
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        fn u32(&mut self) -> io::Result<u32> {
            Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
        }
        fn u64(&mut self) -> io::Result<u64> {
            Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
        }
    }
    if value.len() > MEMBERSHIP_BYTES_MAX {
        return Err(invalid("membership value too large"));
    }
    let mut r = Reader(value);
    if r.take(2)? != [0, 0] {
        return Err(invalid("unknown membership value version"));
    }
    let mut configs = Vec::new();
    for _ in 0..r.u32()? {
        let mut config = BTreeSet::new();
        for _ in 0..r.u32()? {
            config.insert(r.u64()?);
        }
        configs.push(config);
    }
    let mut nodes = BTreeMap::new();
    for _ in 0..r.u32()? {
        let id = r.u64()?;
        let len = r.u32()? as usize;
        let addr = std::str::from_utf8(r.take(len)?).map_err(|_| invalid("node address is not UTF-8"))?;
        nodes.insert(id, BasicNode { addr: addr.to_string() });
    }
    if !r.0.is_empty() {
        return Err(invalid("trailing bytes after the membership"));
    }
    Membership::new(configs, nodes).map_err(|e| invalid(e.to_string()))
}

/// A state file's lines after its version line; `None` if it does not exist.
fn read_lines(log: &PartitionLog, name: &str) -> io::Result<Option<Vec<String>>> {
    let Some(bytes) = log.read_state_file(name).map_err(storage_err)? else { return Ok(None) };
    let text = String::from_utf8(bytes).map_err(|_| invalid(format!("{name}: not UTF-8")))?;
    let mut lines = text.lines().map(str::to_string);
    if lines.next().as_deref() != Some(FORMAT_VERSION) {
        return Err(invalid(format!("{name}: unknown format version")));
    }
    Ok(Some(lines.collect()))
}

fn parse_u64(s: &str) -> io::Result<u64> {
    s.parse().map_err(|_| invalid(format!("bad number {s:?} in a Raft state file")))
}

/// A log id from the lines `at` (term) and `at + 1` (index); `-` `-` is `None`.
fn parse_log_id(lines: &[String], at: usize) -> io::Result<Option<RaftLogId>> {
    match (lines.get(at).map(String::as_str), lines.get(at + 1).map(String::as_str)) {
        (Some("-"), Some("-")) => Ok(None),
        (Some(t), Some(i)) => Ok(Some(log_id(parse_u64(t)?, parse_u64(i)?))),
        _ => Err(invalid("missing log id in a Raft state file")),
    }
}

fn parse_vote(lines: &[String]) -> io::Result<Vote> {
    if lines.len() != 3 {
        return Err(invalid(format!("{VOTE_FILE}: expected 3 fields")));
    }
    let leader_id = LeaderId { term: parse_u64(&lines[0])?, voted_for: parse_u64(&lines[1])? };
    let committed = match lines[2].as_str() {
        "0" => false,
        "1" => true,
        other => return Err(invalid(format!("{VOTE_FILE}: bad committed flag {other:?}"))),
    };
    Ok(Vote::from_leader_id(leader_id, committed))
}

impl LogStore {
    /// A reader of the partition log as Kafka sees it, for the leader's offset assignment and
    /// for tests. Like every [`LogReader`], it must be dropped before [`LogStore::close`].
    pub(crate) fn reader(&self) -> LogReader {
        LogReader { shared: self.shared.clone() }
    }
}

impl LogReader {
    /// The next Kafka offset the log will assign (the log end offset).
    #[cfg(test)]
    pub(crate) fn log_end_offset(&self) -> u64 {
        self.shared.lock().log.lock().log_end_offset()
    }

    /// Registers for the leader's append of the proposal carrying `token`
    /// ([`proposal_offset_with_token`]): the receiver gets its offsets (or its refusal) as soon as
    /// it is in this node's log, before it is durable or replicated.
    pub(crate) fn await_append(&self, token: i64) -> tokio::sync::oneshot::Receiver<super::Applied> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.lock().append_waiters.insert(token, tx);
        rx
    }

    /// Drops the waiter of a proposal that will not be appended here.
    pub(crate) fn forget_append(&self, token: i64) {
        self.shared.lock().append_waiters.remove(&token);
    }

    /// The Kafka offset after the entry at Raft `index`: the high watermark once it is applied.
    pub(crate) fn end_offset_of(&self, index: u64) -> Option<u64> {
        self.shared.lock().end_offset_of(index)
    }

    /// The latest snapshot built or installed here.
    pub(crate) fn snapshot(&self) -> Option<StoredSnapshot> {
        self.shared.lock().snapshot.clone()
    }

    /// Records a snapshot built here, durably (blocking I/O).
    pub(crate) fn save_built_snapshot(&self, s: StoredSnapshot) -> io::Result<()> {
        self.shared.lock().save_built_snapshot(s)
    }

    /// Installs a snapshot from the leader (blocking I/O): see [`StoredSnapshot`].
    pub(crate) fn install_snapshot(&self, s: StoredSnapshot) -> io::Result<()> {
        self.shared.lock().install_snapshot(s)
    }

    /// The last entry ending at or below Kafka offset `upto`, with the offset after it.
    pub(crate) fn snapshot_point(&self, upto: u64) -> Option<(RaftLogId, u64)> {
        self.shared.lock().snapshot_point(upto)
    }

    /// Asks for the log start to move up to `offset` (a committed DeleteRecords).
    pub(crate) fn request_deletion(&self, offset: u64) {
        self.shared.lock().deletions.send_if_modified(|wanted| {
            let raise = offset > *wanted;
            *wanted = (*wanted).max(offset);
            raise
        });
    }

    /// Follows the log start committed DeleteRecords entries ask for.
    pub(crate) fn deletions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.lock().deletions.subscribe()
    }

    /// Where a replicated DeleteRecords below `offset` moves the log start: the start of the
    /// entry holding `offset` (or `offset` itself when an entry starts there, or when the Raft log
    /// holds nothing at or below it). A replica that installs a snapshot restarts at an entry
    /// boundary, so a log start inside an entry would not be the same on every replica.
    pub(crate) fn entry_start_at_or_below(&self, offset: u64) -> u64 {
        let s = self.shared.lock();
        let c = s.slots.partition_point(|slot| slot.base_offset <= offset);
        match c.checked_sub(1).and_then(|k| s.slots.get(k)) {
            Some(slot) => slot.base_offset,
            None => offset,
        }
    }

    /// Moves the Kafka log start up to `offset` (DeleteRecords; never past the retention
    /// floor): the new log start.
    pub(crate) fn delete_records_before(&self, offset: u64) -> Result<u64, StorageError> {
        self.shared.lock().log.lock().delete_records_before(offset)
    }

    /// The Kafka offset where the Raft log starts (storage keeps everything from here).
    pub(crate) fn raft_start_offset(&self) -> u64 {
        self.shared.lock().start_offset
    }

    /// The first offset the Kafka log holds.
    #[cfg(test)]
    pub(crate) fn log_start_offset(&self) -> u64 {
        self.shared.lock().log.lock().log_start_offset()
    }

    /// Whether this reader is the last holder of the log (the store and openraft's readers are
    /// gone), so the directory may be opened again.
    #[cfg(test)]
    pub(crate) fn is_sole_owner(&self) -> bool {
        Arc::strong_count(&self.shared) == 1
    }

    /// Whole batches from `offset`, at most about `max_bytes` (see `PartitionLog::read`).
    #[cfg(test)]
    pub(crate) fn read(&self, offset: u64, max_bytes: usize) -> io::Result<creek_storage::ReadResult> {
        self.shared.lock().log.lock().read(offset, max_bytes).map_err(storage_err)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.shared.lock().entries(range)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let state = self.shared.lock();
        Ok(LogState { last_purged_log_id: state.purged, last_log_id: state.last_log_id() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader { shared: self.shared.clone() }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let vote = *vote;
        self.blocking(move |s| s.save_vote(&vote)).await
    }

    async fn save_committed(&mut self, committed: Option<RaftLogId>) -> Result<(), io::Error> {
        self.shared.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<RaftLogId>, io::Error> {
        Ok(self.shared.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // Positioned writes into the page cache: readable on return, durable when the flusher
        // calls back.
        let target = self.shared.lock().append(entries, now_ms())?;
        self.flushes.send((target, callback)).await.map_err(|_| io::Error::other("log flusher stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<RaftLogId>) -> Result<(), io::Error> {
        self.blocking(move |s| s.truncate_after(last_log_id)).await
    }

    async fn purge(&mut self, log_id: RaftLogId) -> Result<(), io::Error> {
        self.blocking(move |s| s.purge(log_id)).await
    }
}
