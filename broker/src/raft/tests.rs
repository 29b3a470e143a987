//! Tests of the Raft log store: openraft's own log-storage suite, reopen after a crash, truncation and purge across segment rolls, and the Kafka view of the same log.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use creek_protocol::batch::{BatchView, build_batch, control_record, set_base_offset, set_producer};
use creek_storage::{LogConfig, PartitionLog};
use futures_util::StreamExt;
use openraft::entry::RaftEntry;
use openraft::impls::BasicNode;
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::type_config::alias::{EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf};
use openraft::vote::RaftVote;
use openraft::vote::leader_id_std::LeaderId;
use openraft::{EntryPayload, LogId, Membership, RaftLogReader, StorageError};
use parking_lot::Mutex;
use tempfile::TempDir;

use super::log_store::{CONTROL_TYPE_BLANK, CONTROL_TYPE_MEMBERSHIP, LogStore, StoredSnapshot};
use super::{KafkaBatch, TypeConfig};

type Entry = EntryOf<TypeConfig>;
type RaftLogId = LogIdOf<TypeConfig>;

/// A state machine in memory, only so that openraft's suite (which tests a log store together
/// with a state machine) can run. The partition's real state machine is the log itself.
#[derive(Clone, Default)]
struct MemStateMachine {
    inner: Arc<Mutex<MemState>>,
}

#[derive(Default)]
struct MemState {
    applied: Option<RaftLogId>,
    membership: StoredMembershipOf<TypeConfig>,
    snapshot: Option<SnapshotMetaOf<TypeConfig>>,
}

impl MemStateMachine {
    fn meta(&self) -> SnapshotMetaOf<TypeConfig> {
        let s = self.inner.lock();
        SnapshotMetaOf::<TypeConfig> { last_log_id: s.applied, last_membership: s.membership.clone() }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MemStateMachine {
    type SnapshotData = ();

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, ()>, io::Error> {
        let meta = self.meta();
        self.inner.lock().snapshot = Some(meta.clone());
        Ok(SnapshotOf::<TypeConfig, ()> { meta, snapshot: () })
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotData = ();
    type SnapshotBuilder = MemStateMachine;

    async fn applied_state(&mut self) -> Result<(Option<RaftLogId>, StoredMembershipOf<TypeConfig>), io::Error> {
        let s = self.inner.lock();
        Ok((s.applied, s.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            {
                let mut s = self.inner.lock();
                if let EntryPayload::Membership(m) = &entry.payload {
                    s.membership = StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), m.clone());
                }
                s.applied = Some(entry.log_id);
            }
            if let Some(r) = responder {
                r.send(super::Applied::Nothing);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<TypeConfig>, _snapshot: ()) -> Result<(), io::Error> {
        let mut s = self.inner.lock();
        s.applied = meta.last_log_id;
        s.membership = meta.last_membership.clone();
        s.snapshot = Some(meta.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, ()>>, io::Error> {
        Ok(self.inner.lock().snapshot.clone().map(|meta| SnapshotOf::<TypeConfig, ()> { meta, snapshot: () }))
    }
}

/// Small segments, so the suite's logs roll across several segment files.
fn small_segments() -> LogConfig {
    LogConfig { segment_bytes: 600, index_interval_bytes: 100, preallocate_chunk_bytes: 512, ..LogConfig::default() }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, MemStateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, MemStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(dir.path(), small_segments()).expect("open log store");
        Ok((dir, store, MemStateMachine::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_log_storage_suite_passes() {
    // Goal: the segment-store-backed log passes every test of openraft's own log-storage suite.
    Suite::<TypeConfig, LogStore, MemStateMachine, Builder, TempDir>::test_all(Builder).await.unwrap();
}

fn log_id(term: u64, index: u64) -> RaftLogId {
    LogId::new_term_index(term, index)
}

fn blank(term: u64, index: u64) -> Entry {
    Entry::new_blank(log_id(term, index))
}

fn membership(term: u64, index: u64, voters: &[u64]) -> Entry {
    let nodes = voters.iter().map(|&id| (id, BasicNode { addr: format!("127.0.0.1:{}", 9000 + id) }));
    let m =
        Membership::new(vec![voters.iter().copied().collect()], nodes.collect::<std::collections::BTreeMap<_, _>>())
            .unwrap();
    Entry::new_membership(log_id(term, index), m)
}

/// A data entry: a batch of `records` records stamped with `base_offset`, as the leader does.
fn data(term: u64, index: u64, base_offset: u64, records: usize) -> Entry {
    let values: Vec<Vec<u8>> = (0..records).map(|i| format!("entry-{index}-record-{i}").into_bytes()).collect();
    let recs: Vec<_> = values.iter().map(|v| (Some(&b"key"[..]), Some(v.as_slice()))).collect();
    let mut b = build_batch(0, 1_700_000_000_000 + index as i64, &recs);
    set_base_offset(&mut b, base_offset as i64);
    Entry::new_normal(log_id(term, index), KafkaBatch(Bytes::from(b)))
}

/// Appends and waits until the store reports the entries flushed.
async fn append(store: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    store.append(entries, IOFlushed::signal(tx)).await.unwrap();
    rx.await.unwrap().unwrap();
}

async fn all_entries(store: &mut LogStore) -> Vec<Entry> {
    store.get_log_reader().await.try_get_log_entries(..).await.unwrap()
}

/// Entries compare by log id and payload; batches read back carry the epoch the store stamped,
/// so compare normal payloads by their bytes after the epoch field.
fn same(a: &[Entry], b: &[Entry]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.log_id == y.log_id
                && match (&x.payload, &y.payload) {
                    (EntryPayload::Normal(p), EntryPayload::Normal(q)) => {
                        p.0[..12] == q.0[..12] && p.0[16..] == q.0[16..]
                    }
                    (p, q) => p == q,
                }
        })
}

/// Ten entries of terms 1 and 2, data entries of 1..=3 records: offsets 0.. are dense.
fn history() -> Vec<Entry> {
    let mut out = vec![blank(1, 0), membership(1, 1, &[1, 2, 3])];
    let mut offset = 2;
    for index in 2..6 {
        let records = (index % 3 + 1) as usize;
        out.push(data(1, index, offset, records));
        offset += records as u64;
    }
    out.push(blank(2, 6));
    offset += 1;
    for index in 7..10 {
        out.push(data(2, index, offset, 2));
        offset += 2;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_and_vote_survive_a_crash_and_a_clean_close() {
    // Goal: whatever the store reported flushed, and the vote, are there after a crash (drop
    // without close) and after a clean close; the committed log id survives a clean close.
    let dir = tempfile::tempdir().unwrap();
    let entries = history();
    let vote = VoteOf::<TypeConfig>::from_leader_id(LeaderId { term: 2, voted_for: 3 }, true);
    {
        let mut store = LogStore::open(dir.path(), small_segments()).unwrap();
        store.save_vote(&vote).await.unwrap();
        append(&mut store, entries[..4].to_vec()).await;
        append(&mut store, entries[4..].to_vec()).await;
        store.save_committed(Some(log_id(2, 8))).await.unwrap();
        assert!(same(&all_entries(&mut store).await, &entries));
        // Dropped here without close: a crash as far as the files are concerned.
    }
    let mut store = LogStore::open(dir.path(), small_segments()).unwrap();
    assert!(same(&all_entries(&mut store).await, &entries), "every flushed entry is back after a crash");
    assert_eq!(store.get_log_reader().await.read_vote().await.unwrap(), Some(vote));
    let state = store.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (None, Some(log_id(2, 9))));
    assert_eq!(store.read_committed().await.unwrap(), None, "committed is written on close only");
    store.save_committed(Some(log_id(2, 8))).await.unwrap();
    store.close().await.unwrap();

    let mut store = LogStore::open(dir.path(), small_segments()).unwrap();
    assert!(same(&all_entries(&mut store).await, &entries));
    assert_eq!(store.get_log_reader().await.read_vote().await.unwrap(), Some(vote));
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 8)));
    // A batch stamped with an offset other than the log end is refused: offsets never move.
    let end = 18; // history() ends at offset 18
    let (tx, _rx) = TypeConfig::oneshot();
    let err = store.append(vec![data(2, 10, end + 1, 1)], IOFlushed::signal(tx)).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    append(&mut store, vec![data(2, 10, end, 1)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_and_purge_work_across_segment_rolls_and_reopen() {
    // Goal: truncating and purging at entries in different segment files leaves the log
    // openraft expects, before and after reopening, and appends continue from there.
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(dir.path(), small_segments()).unwrap();
    let mut entries = vec![blank(1, 0)];
    let mut offset = 1;
    for index in 1..60 {
        entries.push(data(1, index, offset, 2));
        offset += 2;
    }
    for chunk in entries.chunks(4) {
        append(&mut store, chunk.to_vec()).await; // storage rolls between appends, not within one
    }
    let segments = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "log"))
        .count();
    assert!(segments > 5, "the log rolled ({segments} segments)");

    // Truncate in the middle: entries after 40 go, across several segments.
    store.truncate_after(Some(log_id(1, 40))).await.unwrap();
    assert!(same(&all_entries(&mut store).await, &entries[..41]));
    // A new leader's entries follow on, at the offsets after entry 40.
    let mut next = vec![blank(3, 41)];
    let first = 1 + 40 * 2 + 1; // blank 41 takes offset 81
    next.extend((42..50).map(|index| data(3, index, first + (index - 42), 1)));
    append(&mut store, next.clone()).await;
    let mut expected: Vec<Entry> = entries[..41].iter().cloned().chain(next).collect();
    assert!(same(&all_entries(&mut store).await, &expected));

    // Purge a prefix spanning segments: Raft forgets it, the batches stay for Kafka readers.
    store.purge(log_id(1, 25)).await.unwrap();
    expected.drain(..26);
    assert!(same(&all_entries(&mut store).await, &expected));
    let r = store.get_log_reader().await.try_get_log_entries(0..27).await.unwrap();
    assert_eq!(r.iter().map(|e| e.log_id.index()).collect::<Vec<_>>(), vec![26]);
    drop(store); // crash

    let mut store = LogStore::open(dir.path(), small_segments()).unwrap();
    let state = store.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(1, 25)), Some(log_id(3, 49))));
    assert!(same(&all_entries(&mut store).await, &expected));

    // Truncate everything left, purge past the end, then a follower's log restarts after a
    // snapshot at a later index.
    store.truncate_after(None).await.unwrap();
    assert!(all_entries(&mut store).await.is_empty());
    store.purge(log_id(4, 70)).await.unwrap();
    let state = store.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(4, 70)), Some(log_id(4, 70))));
    let resume = 1 + 25 * 2; // the offset after entry 25
    append(&mut store, vec![blank(5, 71), data(5, 72, resume + 1, 3)]).await;
    store.close().await.unwrap();
    let mut store = LogStore::open(dir.path(), small_segments()).unwrap();
    let got = all_entries(&mut store).await;
    assert_eq!(got.iter().map(|e| e.log_id).collect::<Vec<_>>(), vec![log_id(5, 71), log_id(5, 72)]);
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(4, 70)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_readers_see_the_leaders_offsets_and_epochs_and_skip_raft_entries() {
    // Goal: the Raft log is a plain partition log to Kafka: data batches carry the offsets the
    // leader stamped and the term as leader epoch; blank and membership entries are control
    // batches without a producer; producer state still follows idempotent batches.
    let dir = tempfile::tempdir().unwrap();
    let mut entries = history();
    // Entry 10: an idempotent producer's batch.
    let Entry { log_id: id, payload: EntryPayload::Normal(KafkaBatch(b)) } = data(2, 10, 18, 2) else { unreachable!() };
    let mut b = b.to_vec();
    set_producer(&mut b, 4242, 0, 0, false);
    entries.push(Entry::new_normal(id, KafkaBatch(Bytes::from(b))));
    let mut store = LogStore::open(dir.path(), small_segments()).unwrap();
    append(&mut store, entries.clone()).await;
    store.close().await.unwrap();

    let log = PartitionLog::open(dir.path(), small_segments(), 0).unwrap();
    assert_eq!(log.log_end_offset(), 20);
    let mut offset = 0;
    let mut seen = Vec::new();
    while offset < log.log_end_offset() {
        let read = log.read(offset, 1 << 20).unwrap();
        let mut at = 0;
        while at < read.bytes.len() {
            let v = BatchView::new(&read.bytes[at..]).unwrap();
            v.verify_crc().unwrap();
            let kind = if v.is_control() {
                assert_eq!(v.producer_id(), -1);
                assert!(!v.is_transactional());
                let r = control_record(&v).unwrap();
                assert_eq!(r.version, 0);
                format!("control {}", r.control_type)
            } else {
                format!("data {}", v.records_count())
            };
            seen.push((v.base_offset(), v.partition_leader_epoch(), kind));
            at += v.total_len();
        }
        offset = read.next_offset;
    }
    let blank_t = format!("control {CONTROL_TYPE_BLANK}");
    let member_t = format!("control {CONTROL_TYPE_MEMBERSHIP}");
    let want: Vec<(i64, i32, String)> = vec![
        (0, 1, blank_t.clone()),
        (1, 1, member_t),
        (2, 1, "data 3".into()),
        (5, 1, "data 1".into()),
        (6, 1, "data 2".into()),
        (8, 1, "data 3".into()),
        (11, 2, blank_t),
        (12, 2, "data 2".into()),
        (14, 2, "data 2".into()),
        (16, 2, "data 2".into()),
        (18, 2, "data 2".into()),
    ];
    assert_eq!(seen, want);
    assert_eq!(log.end_offset_for_epoch(1), Some((1, 11)), "epochs are the terms");
    let producers = log.producers();
    assert_eq!(producers.len(), 1);
    assert_eq!(producers[0].0, 4242);
    log.close().unwrap();
}

#[test]
fn membership_values_round_trip_and_corrupt_ones_are_errors() {
    // Goal: a membership entry read back equals the one written, and a damaged value (from a
    // torn or hostile replica) is an error, never a panic or a huge allocation.
    use super::log_store::{decode_membership, encode_membership};
    let EntryPayload::Membership(m) = membership(1, 1, &[1, 2, 3]).payload else { unreachable!() };
    let encoded = encode_membership(&m);
    assert_eq!(decode_membership(&encoded).unwrap(), m);
    for cut in 0..encoded.len() {
        assert!(decode_membership(&encoded[..cut]).is_err(), "prefix of {cut} bytes");
    }
    for at in 0..encoded.len() {
        let mut bad = encoded.clone();
        bad[at] ^= 0xff;
        let _ = decode_membership(&bad); // must not panic
    }
    let mut huge = vec![0, 0];
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(decode_membership(&huge).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_entry_is_cut_on_recovery_and_the_raft_log_ends_before_it() {
    // Goal: after a crash that damaged the last entry on disk, recovery cuts it and the Raft
    // log (index, last log id, reads) agrees with what is left; appends continue after it.
    let dir = tempfile::tempdir().unwrap();
    let entries = history();
    {
        let mut store = LogStore::open(dir.path(), LogConfig::default()).unwrap();
        append(&mut store, entries.clone()).await;
    }
    // Flip one byte inside the records of the last entry (its CRC no longer matches).
    let log_file = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    let mut bytes = std::fs::read(&log_file).unwrap();
    let needle = b"entry-9-record-1";
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("last entry on disk");
    bytes[at] ^= 0x20;
    std::fs::write(&log_file, &bytes).unwrap();

    let mut store = LogStore::open(dir.path(), LogConfig::default()).unwrap();
    assert!(same(&all_entries(&mut store).await, &entries[..9]));
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(2, 8)));
    // A corrupt batch offered for append is refused, a good one at the same index accepted.
    let EntryPayload::Normal(KafkaBatch(good)) = entries[9].payload.clone() else { unreachable!() };
    let mut bad = good.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let (tx, _rx) = TypeConfig::oneshot();
    let bad_entry = Entry::new_normal(log_id(2, 9), KafkaBatch(Bytes::from(bad)));
    let err = store.append(vec![bad_entry], IOFlushed::signal(tx)).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    append(&mut store, vec![entries[9].clone()]).await;
    assert!(same(&all_entries(&mut store).await, &entries));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_delete_records_never_remove_entries_raft_has_not_purged() {
    // Goal: with every batch expired, retention and DeleteRecords stop at the Raft log start,
    // before and after a purge and across a reopen, so the log always opens again.
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { retention_ms: 1, ..small_segments() };
    let mut store = LogStore::open(dir.path(), config.clone()).unwrap();
    let mut entries = vec![blank(1, 0)];
    for index in 1..40 {
        entries.push(data(1, index, 1 + (index - 1) * 2, 2));
    }
    for chunk in entries.chunks(4) {
        append(&mut store, chunk.to_vec()).await;
    }
    let late = i64::MAX / 2;
    assert_eq!(store.with_log(|log| log.housekeeping(late).unwrap()), 0, "nothing purged: nothing deleted");
    assert!(store.with_log(|log| log.delete_records_before(1).is_err()));

    store.purge(log_id(1, 25)).await.unwrap();
    let raft_start = 1 + 25 * 2; // the offset of entry 26
    assert!(store.with_log(|log| log.housekeeping(late).unwrap()) > 0);
    let kafka_start = store.with_log(|log| log.log_start_offset());
    assert!(kafka_start > 0 && kafka_start <= raft_start, "Kafka log start {kafka_start}");
    assert!(store.with_log(|log| log.delete_records_before(raft_start + 1).is_err()));
    assert_eq!(store.with_log(|log| log.delete_records_before(raft_start).unwrap()), raft_start);
    assert!(same(&all_entries(&mut store).await, &entries[26..]));
    drop(store); // crash

    let mut store = LogStore::open(dir.path(), config).unwrap();
    store.with_log(|log| log.housekeeping(late).unwrap());
    assert_eq!(store.with_log(|log| log.log_start_offset()), raft_start);
    assert!(same(&all_entries(&mut store).await, &entries[26..]));
    store.close().await.unwrap();
}

/// 40 entries of term 1 (a blank, then 2-record batches at offsets 1, 3, ...) in small segments.
async fn forty_entries(dir: &std::path::Path) -> (LogStore, Vec<Entry>) {
    let mut store = LogStore::open(dir, small_segments()).unwrap();
    let mut entries = vec![blank(1, 0)];
    for index in 1..40 {
        entries.push(data(1, index, 1 + (index - 1) * 2, 2));
    }
    for chunk in entries.chunks(4) {
        append(&mut store, chunk.to_vec()).await;
    }
    (store, entries)
}

fn stored_snapshot(last: RaftLogId, next_offset: u64) -> StoredSnapshot {
    let nodes = (1..=3u64).map(|id| (id, BasicNode::default())).collect::<std::collections::BTreeMap<_, _>>();
    let m = Membership::new(vec![[1u64, 2, 3].into_iter().collect()], nodes).unwrap();
    StoredSnapshot {
        meta: SnapshotMetaOf::<TypeConfig> {
            last_log_id: Some(last),
            last_membership: StoredMembershipOf::<TypeConfig>::new(Some(log_id(1, 0)), m),
        },
        next_offset,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_lets_retention_go_and_an_installed_one_restarts_the_log_at_its_offset() {
    // Goal: a snapshot built at the entry before a retention target lets openraft purge and
    // retention delete up to there, and survives a restart; a replica installing it holds nothing
    // below its offset and takes the leader's next entry.
    let dir = tempfile::tempdir().unwrap();
    let (mut store, entries) = forty_entries(dir.path()).await;
    let reader = store.reader();
    // Entry 20 holds offsets 39..=40, entry 21 starts at 41: upto 41 or 42 both end at entry 20.
    assert_eq!(reader.snapshot_point(42), Some((log_id(1, 20), 41)));
    assert_eq!(reader.snapshot_point(41), Some((log_id(1, 20), 41)));
    assert_eq!(reader.snapshot_point(0), None, "nothing ends at or below offset 0");
    assert_eq!(reader.snapshot_point(u64::MAX), Some((log_id(1, 39), 79)), "the last entry ends at the log end");
    let snap = stored_snapshot(log_id(1, 20), 41);
    assert!(reader.save_built_snapshot(stored_snapshot(log_id(2, 20), 41)).is_err(), "not this log's entry");
    reader.save_built_snapshot(snap.clone()).unwrap();
    store.purge(log_id(1, 20)).await.unwrap();
    assert_eq!(reader.raft_start_offset(), 41);
    store.with_log(|log| log.housekeeping(i64::MAX / 2).unwrap());
    let start = store.with_log(|log| log.log_start_offset());
    assert!(start > 1 && start <= 41, "retention went up to the snapshot: log start {start}");
    drop(reader);
    drop(store); // crash

    let mut store = LogStore::open(dir.path(), small_segments()).unwrap();
    assert_eq!(store.reader().snapshot(), Some(snap.clone()));
    assert!(same(&all_entries(&mut store).await, &entries[21..]));
    drop(store);

    // A replica with a different, shorter history installs the snapshot: it starts over at 41.
    let other = tempfile::tempdir().unwrap();
    let mut replica = LogStore::open(other.path(), small_segments()).unwrap();
    append(&mut replica, vec![blank(1, 0), data(1, 1, 1, 5)]).await;
    let reader = replica.reader();
    reader.install_snapshot(snap.clone()).unwrap();
    assert_eq!((reader.log_start_offset(), reader.log_end_offset()), (41, 41));
    let state = replica.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(1, 20)), Some(log_id(1, 20))));
    append(&mut replica, entries[21..25].to_vec()).await;
    assert!(same(&all_entries(&mut replica).await, &entries[21..25]));
    // Installing it again (openraft does on every start) changes nothing.
    reader.install_snapshot(snap.clone()).unwrap();
    assert!(same(&all_entries(&mut replica).await, &entries[21..25]));
    drop(reader);
    drop(replica);
    let mut replica = LogStore::open(other.path(), small_segments()).unwrap();
    assert!(same(&all_entries(&mut replica).await, &entries[21..25]));
    replica.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_install_interrupted_by_a_crash_is_finished_on_open() {
    // Goal: a crash at any step of an install (snapshot recorded; log reset; start recorded)
    // opens as the installed snapshot, never as a mix of the old log and the new start.
    let snap = stored_snapshot(log_id(1, 20), 41);
    for crash_after_reset in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = forty_entries(dir.path()).await;
        // The snapshot's entry 20 ends elsewhere in this log (offset 41 vs its own), so it
        // does not hold the snapshot: e.g. a follower with a divergent tail.
        let diverged = stored_snapshot(log_id(3, 20), 41);
        store.with_log(|log| {
            log.write_state_file(super::log_store::SNAPSHOT_FILE, diverged.encode().as_bytes()).unwrap();
            if crash_after_reset {
                log.reset_to(41).unwrap();
            }
        });
        drop(store); // crash
        let mut store = LogStore::open(dir.path(), small_segments()).unwrap();
        let reader = store.reader();
        assert_eq!((reader.log_start_offset(), reader.log_end_offset()), (41, 41), "reset: {crash_after_reset}");
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(3, 20)));
        assert!(all_entries(&mut store).await.is_empty());
        drop(reader);
        store.close().await.unwrap();
    }
    // A snapshot this log holds (built here, purge not reached before the crash) keeps the log.
    let dir = tempfile::tempdir().unwrap();
    let (store, entries) = forty_entries(dir.path()).await;
    store.reader().save_built_snapshot(snap).unwrap();
    drop(store);
    let mut store = LogStore::open(dir.path(), small_segments()).unwrap();
    assert!(same(&all_entries(&mut store).await, &entries));
    store.close().await.unwrap();
}
