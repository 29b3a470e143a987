//! Unit tests of the transaction coordinator state machine: every transition and error path,
//! timeouts, expiry and replay.

use super::*;
use crate::txn::store;

const TIMEOUT: i32 = 60_000;

/// Producer ids 1000, 1001, ...
struct Pids(i64);

impl Pids {
    fn new() -> Pids {
        Pids(1000)
    }
    fn alloc(&mut self) -> impl FnMut() -> i64 + '_ {
        || {
            self.0 += 1;
            self.0 - 1
        }
    }
}

fn tp(topic: &str, p: i32) -> TopicPartition {
    (topic.to_string(), p)
}

fn persisted(effects: &[Effect]) -> Vec<(String, Option<TxnState>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Persist { txn_id, value } => Some((txn_id.clone(), value.as_ref().map(|m| m.state))),
            Effect::WriteMarkers(_) => None,
        })
        .collect()
}

fn markers(effects: &[Effect]) -> Vec<Markers> {
    effects.iter().filter_map(|e| if let Effect::WriteMarkers(m) = e { Some(m.clone()) } else { None }).collect()
}

fn state(t: &Transactions, id: &str) -> TxnState {
    t.describe(id).unwrap().state
}

/// A fresh id "t" initialised at time 0: producer 1000, epoch 0.
fn initialised() -> (Transactions, Pids) {
    let mut t = Transactions::new(TxnConfig::default());
    let mut pids = Pids::new();
    let r = t.init_producer_id("t", TIMEOUT, None, 0, &mut pids.alloc());
    assert_eq!(r.answer, Ok((1000, 0)));
    assert_eq!(persisted(&r.effects), vec![("t".to_string(), Some(TxnState::Empty))]);
    (t, pids)
}

/// "t" with an ongoing transaction over a-0 and b-1, started at time 10.
fn ongoing() -> (Transactions, Pids) {
    let (mut t, pids) = initialised();
    let r = t.add_partitions("t", 1000, 0, &[tp("a", 0), tp("b", 1)], 10);
    assert_eq!(r.answer, Ok(()));
    assert_eq!(persisted(&r.effects), vec![("t".to_string(), Some(TxnState::Ongoing))]);
    (t, pids)
}

#[test]
fn init_new_id_allocates_a_producer_id_at_epoch_0() {
    // Goal: a new transactional id gets a fresh producer id, epoch 0, Empty, and a record.
    let (t, _) = initialised();
    let m = t.describe("t").unwrap();
    assert_eq!((m.producer_id, m.producer_epoch, m.state, m.timeout_ms), (1000, 0, TxnState::Empty, TIMEOUT));
    assert_eq!((m.last_producer_id, m.last_producer_epoch, m.start_ms), (-1, -1, -1));
    assert_eq!(t.max_producer_id_seen(), 1000);
}

#[test]
fn init_rejects_bad_timeouts() {
    // Goal: a timeout of 0, below 0 or above transaction.max.timeout.ms is INVALID_TRANSACTION_TIMEOUT.
    let mut t = Transactions::new(TxnConfig { timeout_max_ms: 1000, ..TxnConfig::default() });
    let mut pids = Pids::new();
    for bad in [0, -5, 1001] {
        let r = t.init_producer_id("t", bad, None, 0, &mut pids.alloc());
        assert_eq!(r, Reply { answer: Err(INVALID_TRANSACTION_TIMEOUT), effects: vec![] });
    }
    assert_eq!(t.init_producer_id("t", 1000, None, 0, &mut pids.alloc()).answer, Ok((1000, 0)));
}

#[test]
fn init_again_bumps_the_epoch_and_updates_the_timeout() {
    // Goal: a second InitProducerId (new producer instance) bumps the epoch, keeps the id.
    let (mut t, mut pids) = initialised();
    let r = t.init_producer_id("t", 30_000, None, 5, &mut pids.alloc());
    assert_eq!(r.answer, Ok((1000, 1)));
    assert_eq!(persisted(&r.effects), vec![("t".to_string(), Some(TxnState::Empty))]);
    let m = t.describe("t").unwrap();
    assert_eq!((m.timeout_ms, m.last_update_ms, m.last_producer_epoch), (30_000, 5, -1));
    // After a completed transaction too.
    t.add_partitions("t", 1000, 1, &[tp("a", 0)], 6);
    t.end_txn("t", 1000, 1, true, 7);
    t.markers_written("t", 1000, 1, 8);
    assert_eq!(state(&t, "t"), TxnState::CompleteCommit);
    assert_eq!(t.init_producer_id("t", TIMEOUT, None, 9, &mut pids.alloc()).answer, Ok((1000, 2)));
    assert_eq!(state(&t, "t"), TxnState::Empty);
}

#[test]
fn kip360_bump_with_expected_epoch_and_its_retry() {
    // Goal: a producer recovering with its (id, epoch) gets the next epoch; a retry of that call
    // (answer lost) gets the same answer; any other epoch is fenced.
    let (mut t, mut pids) = initialised();
    let r = t.init_producer_id("t", TIMEOUT, Some((1000, 0)), 1, &mut pids.alloc());
    assert_eq!(r.answer, Ok((1000, 1)));
    assert_eq!(t.describe("t").unwrap().last_producer_epoch, 0);
    let retry = t.init_producer_id("t", TIMEOUT, Some((1000, 0)), 2, &mut pids.alloc());
    assert_eq!(retry.answer, Ok((1000, 1)), "retry returns the current epoch without a bump");
    assert_eq!(t.init_producer_id("t", TIMEOUT, Some((1000, 5)), 3, &mut pids.alloc()).answer, Err(PRODUCER_FENCED));
    assert_eq!(t.init_producer_id("t", TIMEOUT, Some((999, 1)), 3, &mut pids.alloc()).answer, Err(PRODUCER_FENCED));
    // A new producer instance (no expected) bumps and forgets the last epoch: the old one's
    // retry is now fenced.
    assert_eq!(t.init_producer_id("t", TIMEOUT, None, 4, &mut pids.alloc()).answer, Ok((1000, 2)));
    assert_eq!(t.init_producer_id("t", TIMEOUT, Some((1000, 0)), 5, &mut pids.alloc()).answer, Err(PRODUCER_FENCED));
    assert_eq!(fenced_code(PRODUCER_FENCED, false), INVALID_PRODUCER_EPOCH);
    assert_eq!(fenced_code(PRODUCER_FENCED, true), PRODUCER_FENCED);
    assert_eq!(fenced_code(CONCURRENT_TRANSACTIONS, false), CONCURRENT_TRANSACTIONS);
}

#[test]
fn init_for_an_unknown_id_with_expected_gets_a_new_producer_id() {
    // Goal: a producer whose id expired (UNKNOWN_PRODUCER_ID) and sends its old (id, epoch) is
    // not fenced: the id is new, so it gets a new producer id, as in Kafka.
    let mut t = Transactions::new(TxnConfig::default());
    let mut pids = Pids::new();
    assert_eq!(t.init_producer_id("t", TIMEOUT, Some((5, 3)), 0, &mut pids.alloc()).answer, Ok((1000, 0)));
}

#[test]
fn epoch_exhaustion_rotates_the_producer_id() {
    // Goal: at epoch i16::MAX - 1 the next init hands out a new producer id at epoch 0,
    // remembering the old one; a KIP-360 retry of that rotation gets the same answer.
    let (mut t, mut pids) = initialised();
    let mut m = t.describe("t").unwrap().clone();
    m.producer_epoch = i16::MAX - 1;
    t.replay("t", Some(m));
    let r = t.init_producer_id("t", TIMEOUT, Some((1000, i16::MAX - 1)), 1, &mut pids.alloc());
    assert_eq!(r.answer, Ok((1001, 0)));
    let m = t.describe("t").unwrap();
    assert_eq!((m.last_producer_id, m.last_producer_epoch), (1000, i16::MAX - 1));
    let retry = t.init_producer_id("t", TIMEOUT, Some((1000, i16::MAX - 1)), 2, &mut pids.alloc());
    assert_eq!(retry.answer, Ok((1001, 0)));
    // The old id with a non-exhausted epoch is a zombie.
    assert_eq!(t.init_producer_id("t", TIMEOUT, Some((1000, 3)), 3, &mut pids.alloc()).answer, Err(PRODUCER_FENCED));
    // Without expected: rotation too, no last epoch kept.
    let mut m = t.describe("t").unwrap().clone();
    m.producer_epoch = i16::MAX - 1;
    t.replay("t", Some(m));
    assert_eq!(t.init_producer_id("t", TIMEOUT, None, 4, &mut pids.alloc()).answer, Ok((1002, 0)));
    let m = t.describe("t").unwrap();
    assert_eq!((m.last_producer_id, m.last_producer_epoch), (1001, -1));
    assert_eq!(t.max_producer_id_seen(), 1002);
}

#[test]
fn init_while_ongoing_fences_the_zombie_and_aborts() {
    // Goal: a new producer instance while a transaction is open aborts it with a bumped epoch
    // (answering CONCURRENT_TRANSACTIONS); the old producer is fenced; the retry after the abort
    // completes gets a further bumped epoch.
    let (mut t, mut pids) = ongoing();
    let r = t.init_producer_id("t", TIMEOUT, None, 20, &mut pids.alloc());
    assert_eq!(r.answer, Err(CONCURRENT_TRANSACTIONS));
    assert_eq!(persisted(&r.effects), vec![("t".to_string(), Some(TxnState::PrepareAbort))]);
    let mk = markers(&r.effects);
    assert_eq!(
        mk,
        vec![Markers {
            txn_id: "t".into(),
            producer_id: 1000,
            producer_epoch: 1,
            commit: false,
            partitions: vec![tp("a", 0), tp("b", 1)]
        }]
    );
    assert!(matches!(r.effects[0], Effect::Persist { .. }), "the record comes before the markers");
    // While markers are in flight: the new producer retries, the zombie is fenced.
    assert_eq!(t.init_producer_id("t", TIMEOUT, None, 21, &mut pids.alloc()).answer, Err(CONCURRENT_TRANSACTIONS));
    assert_eq!(t.end_txn("t", 1000, 0, true, 21).answer, Err(PRODUCER_FENCED));
    assert_eq!(t.add_partitions("t", 1000, 0, &[tp("c", 0)], 21).answer, Err(PRODUCER_FENCED));
    let done = t.markers_written("t", 1000, 1, 22);
    assert_eq!(done.answer, Ok(()));
    assert_eq!(persisted(&done.effects), vec![("t".to_string(), Some(TxnState::CompleteAbort))]);
    assert!(t.describe("t").unwrap().partitions.is_empty());
    assert_eq!(t.init_producer_id("t", TIMEOUT, None, 23, &mut pids.alloc()).answer, Ok((1000, 2)));
}

#[test]
fn add_partitions_starts_a_transaction_and_is_idempotent() {
    // Goal: the first AddPartitions moves to Ongoing with a start time; adding partitions
    // already present succeeds without a record; new ones extend the set.
    let (mut t, _) = ongoing();
    let m = t.describe("t").unwrap();
    assert_eq!((m.state, m.start_ms, m.partitions.len()), (TxnState::Ongoing, 10, 2));
    let again = t.add_partitions("t", 1000, 0, &[tp("a", 0)], 11);
    assert_eq!(again, Reply { answer: Ok(()), effects: vec![] });
    let more = t.add_partitions("t", 1000, 0, &[tp("a", 0), tp("c", 2)], 12);
    assert_eq!(persisted(&more.effects), vec![("t".to_string(), Some(TxnState::Ongoing))]);
    let m = t.describe("t").unwrap();
    assert_eq!((m.start_ms, m.last_update_ms, m.partitions.len()), (10, 12, 3), "the start time stays");
    assert_eq!(t.add_partitions("t", 1000, 0, &[], 13), Reply { answer: Ok(()), effects: vec![] });
    // AddOffsets adds the group's offsets partition.
    let r = t.add_offsets("t", 1000, 0, tp("__consumer_offsets", 7), 14);
    assert_eq!(r.answer, Ok(()));
    assert!(t.describe("t").unwrap().partitions.contains(&tp("__consumer_offsets", 7)));
}

#[test]
fn add_partitions_error_paths() {
    // Goal: unknown id or producer id → INVALID_PRODUCER_ID_MAPPING, wrong epoch → fenced,
    // markers in flight → CONCURRENT_TRANSACTIONS; none of them writes a record.
    let (mut t, _) = ongoing();
    let p = [tp("x", 0)];
    assert_eq!(t.add_partitions("nope", 1000, 0, &p, 20), Reply::err(INVALID_PRODUCER_ID_MAPPING));
    assert_eq!(t.add_partitions("t", 999, 0, &p, 20), Reply::err(INVALID_PRODUCER_ID_MAPPING));
    assert_eq!(t.add_partitions("t", 1000, 1, &p, 20), Reply::err(PRODUCER_FENCED));
    t.end_txn("t", 1000, 0, true, 20);
    assert_eq!(t.add_partitions("t", 1000, 0, &p, 21), Reply::err(CONCURRENT_TRANSACTIONS));
    assert_eq!(t.add_offsets("t", 1000, 0, tp("__consumer_offsets", 1), 21), Reply::err(CONCURRENT_TRANSACTIONS));
}

#[test]
fn commit_then_markers_then_a_new_transaction() {
    // Goal: EndTxn(commit) persists PrepareCommit and asks for commit markers; once written the
    // id is CompleteCommit with no partitions; the next AddPartitions starts a new transaction.
    let (mut t, _) = ongoing();
    let r = t.end_txn("t", 1000, 0, true, 30);
    assert_eq!(r.answer, Ok(()));
    assert_eq!(persisted(&r.effects), vec![("t".to_string(), Some(TxnState::PrepareCommit))]);
    let mk = markers(&r.effects);
    assert_eq!((mk.len(), mk[0].commit, mk[0].producer_epoch, mk[0].partitions.len()), (1, true, 0, 2));
    // Retries: in flight → CONCURRENT_TRANSACTIONS, the other outcome → INVALID_TXN_STATE.
    assert_eq!(t.end_txn("t", 1000, 0, true, 31), Reply::err(CONCURRENT_TRANSACTIONS));
    assert_eq!(t.end_txn("t", 1000, 0, false, 31), Reply::err(INVALID_TXN_STATE));
    assert_eq!(
        t.init_producer_id("t", TIMEOUT, None, 31, &mut Pids::new().alloc()).answer,
        Err(CONCURRENT_TRANSACTIONS)
    );
    // Stale markers_written calls change nothing.
    assert_eq!(t.markers_written("t", 1000, 1, 32), Reply::err(PRODUCER_FENCED));
    assert_eq!(t.markers_written("t", 7, 0, 32), Reply::err(INVALID_PRODUCER_ID_MAPPING));
    let done = t.markers_written("t", 1000, 0, 33);
    assert_eq!(persisted(&done.effects), vec![("t".to_string(), Some(TxnState::CompleteCommit))]);
    assert_eq!(t.markers_written("t", 1000, 0, 34), Reply::err(INVALID_TXN_STATE), "already complete");
    // Retries after completion.
    assert_eq!(t.end_txn("t", 1000, 0, true, 35), Reply { answer: Ok(()), effects: vec![] });
    assert_eq!(t.end_txn("t", 1000, 0, false, 35), Reply::err(INVALID_TXN_STATE));
    // A new transaction.
    let r = t.add_partitions("t", 1000, 0, &[tp("c", 0)], 40);
    assert_eq!(r.answer, Ok(()));
    let m = t.describe("t").unwrap();
    assert_eq!((m.state, m.start_ms, m.partitions.len()), (TxnState::Ongoing, 40, 1));
}

#[test]
fn abort_and_its_retries() {
    // Goal: EndTxn(abort) mirrors commit: abort markers, CompleteAbort, retries answered as Kafka.
    let (mut t, _) = ongoing();
    let r = t.end_txn("t", 1000, 0, false, 30);
    assert_eq!(persisted(&r.effects), vec![("t".to_string(), Some(TxnState::PrepareAbort))]);
    assert!(!markers(&r.effects)[0].commit);
    assert_eq!(t.end_txn("t", 1000, 0, false, 31), Reply::err(CONCURRENT_TRANSACTIONS));
    assert_eq!(t.end_txn("t", 1000, 0, true, 31), Reply::err(INVALID_TXN_STATE));
    t.markers_written("t", 1000, 0, 32);
    assert_eq!(state(&t, "t"), TxnState::CompleteAbort);
    assert_eq!(t.end_txn("t", 1000, 0, false, 33), Reply { answer: Ok(()), effects: vec![] });
    assert_eq!(t.end_txn("t", 1000, 0, true, 33), Reply::err(INVALID_TXN_STATE));
}

#[test]
fn end_txn_error_paths() {
    // Goal: EndTxn on an unknown id, wrong producer, wrong epoch, or with no transaction.
    let (mut t, _) = initialised();
    assert_eq!(t.end_txn("nope", 1000, 0, true, 1), Reply::err(INVALID_PRODUCER_ID_MAPPING));
    assert_eq!(t.end_txn("t", 1001, 0, true, 1), Reply::err(INVALID_PRODUCER_ID_MAPPING));
    assert_eq!(t.end_txn("t", 1000, 3, true, 1), Reply::err(PRODUCER_FENCED));
    assert_eq!(t.end_txn("t", 1000, 0, true, 1), Reply::err(INVALID_TXN_STATE), "Empty");
    assert_eq!(t.end_txn("t", 1000, 0, false, 1), Reply::err(INVALID_TXN_STATE), "Empty");
}

#[test]
fn ending_a_transaction_without_partitions_completes_at_once() {
    // Goal: an Ongoing transaction with no partitions (possible from a replayed record) goes
    // straight to CompleteCommit/CompleteAbort: one record, no markers.
    let (mut t, _) = ongoing();
    let mut m = t.describe("t").unwrap().clone();
    m.partitions.clear();
    t.replay("t", Some(m));
    let r = t.end_txn("t", 1000, 0, true, 30);
    assert_eq!(r.answer, Ok(()));
    assert_eq!(persisted(&r.effects), vec![("t".to_string(), Some(TxnState::CompleteCommit))]);
    assert!(markers(&r.effects).is_empty());
}

#[test]
fn timeout_aborts_with_a_fence_and_the_old_producer_is_fenced() {
    // Goal: an Ongoing transaction older than its timeout is aborted with a bumped epoch; its
    // producer's next AddPartitions/EndTxn is fenced; a KIP-360 init from it is fenced too.
    let (mut t, mut pids) = ongoing();
    let deadline = 10 + i64::from(TIMEOUT);
    assert!(t.expire(deadline).is_empty(), "not before start + timeout");
    let effects = t.expire(deadline + 1);
    assert_eq!(persisted(&effects), vec![("t".to_string(), Some(TxnState::PrepareAbort))]);
    let mk = markers(&effects);
    assert_eq!((mk[0].producer_epoch, mk[0].commit), (1, false));
    let m = t.describe("t").unwrap();
    assert_eq!((m.producer_epoch, m.last_producer_epoch), (1, -1));
    assert_eq!(t.end_txn("t", 1000, 0, true, deadline + 2), Reply::err(PRODUCER_FENCED));
    assert_eq!(t.add_partitions("t", 1000, 0, &[tp("a", 0)], deadline + 2), Reply::err(PRODUCER_FENCED));
    assert!(t.expire(deadline + 3).is_empty(), "aborting once");
    t.markers_written("t", 1000, 1, deadline + 4);
    assert_eq!(state(&t, "t"), TxnState::CompleteAbort);
    assert_eq!(t.end_txn("t", 1000, 0, false, deadline + 5), Reply::err(PRODUCER_FENCED));
    let r = t.init_producer_id("t", TIMEOUT, Some((1000, 0)), deadline + 6, &mut pids.alloc());
    assert_eq!(r.answer, Err(PRODUCER_FENCED));
}

#[test]
fn idle_ids_expire_to_a_tombstone() {
    // Goal: an Empty or Complete id untouched for transactional.id.expiration.ms is removed with
    // a tombstone; an Ongoing one is not; a later init starts afresh with a new producer id.
    let mut t = Transactions::new(TxnConfig { id_expiration_ms: 1000, timeout_max_ms: i32::MAX });
    let mut pids = Pids::new();
    t.init_producer_id("idle", TIMEOUT, None, 0, &mut pids.alloc());
    t.init_producer_id("busy", i32::MAX, None, 0, &mut pids.alloc());
    t.add_partitions("busy", 1001, 0, &[tp("a", 0)], 0);
    assert!(t.expire(999).is_empty());
    let effects = t.expire(1000);
    assert_eq!(effects, vec![Effect::Persist { txn_id: "idle".into(), value: None }]);
    assert_eq!(t.describe("idle"), Err(TRANSACTIONAL_ID_NOT_FOUND));
    assert_eq!(state(&t, "busy"), TxnState::Ongoing);
    assert_eq!(t.add_partitions("idle", 1000, 0, &[tp("a", 0)], 1001), Reply::err(INVALID_PRODUCER_ID_MAPPING));
    assert_eq!(t.init_producer_id("idle", TIMEOUT, None, 1002, &mut pids.alloc()).answer, Ok((1002, 0)));
}

#[test]
fn replay_rebuilds_the_same_state_and_lists_in_flight_markers() {
    // Goal: replaying every record the coordinator wrote, through the store's encoding, gives
    // the same state (but the unstored last epoch), the max producer id, and the transactions
    // whose markers must be rewritten; Ongoing ones keep their start time and still time out.
    let mut t = Transactions::new(TxnConfig::default());
    let mut pids = Pids::new();
    let mut log: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut keep = |effects: &[Effect]| {
        for e in effects {
            if let Effect::Persist { txn_id, value } = e {
                log.push((store::key(txn_id), value.as_ref().map(store::value)));
            }
        }
    };
    for (id, n) in [("commit", 0), ("abort", 1), ("open", 2), ("done", 3), ("gone", 4)] {
        keep(&t.init_producer_id(id, TIMEOUT, None, 0, &mut pids.alloc()).effects);
        keep(&t.add_partitions(id, 1000 + n, 0, &[tp("a", n as i32), tp("b", 0)], 5).effects);
    }
    keep(&t.end_txn("commit", 1000, 0, true, 6).effects);
    keep(&t.end_txn("abort", 1001, 0, false, 6).effects);
    keep(&t.end_txn("done", 1003, 0, true, 6).effects);
    keep(&t.markers_written("done", 1003, 0, 12).effects);
    keep(&t.end_txn("gone", 1004, 0, true, 6).effects);
    keep(&t.markers_written("gone", 1004, 0, 7).effects);
    t.config.id_expiration_ms = 10;
    keep(&t.expire(17));
    assert_eq!(t.describe("gone"), Err(TRANSACTIONAL_ID_NOT_FOUND));

    let mut r = Transactions::new(TxnConfig::default());
    for (k, v) in &log {
        let (id, value) = store::decode(k, v.as_deref()).unwrap();
        r.replay(&id, value);
    }
    let original: Vec<_> = t.txns.iter().collect();
    let replayed: Vec<_> = r.txns.iter().collect();
    assert_eq!(original, replayed);
    assert_eq!(r.max_producer_id_seen(), 1004);
    let in_flight = r.in_flight();
    assert_eq!(
        in_flight.iter().map(|m| (m.txn_id.as_str(), m.commit, m.partitions.len())).collect::<Vec<_>>(),
        vec![("abort", false, 2), ("commit", true, 2)]
    );
    assert_eq!(r.describe("open").unwrap().start_ms, 5);
    let effects = r.expire(5 + i64::from(TIMEOUT) + 1);
    assert_eq!(persisted(&effects), vec![("open".to_string(), Some(TxnState::PrepareAbort))]);
    // The driver finishes the in-flight ones.
    for m in in_flight {
        assert_eq!(r.markers_written(&m.txn_id, m.producer_id, m.producer_epoch, 8).answer, Ok(()));
    }
    assert_eq!(state(&r, "commit"), TxnState::CompleteCommit);
    assert_eq!(state(&r, "abort"), TxnState::CompleteAbort);
    // A replayed PrepareEpochFence (never written by us) is finished as an abort.
    let mut m = r.describe("done").unwrap().clone();
    (m.state, m.partitions) = (TxnState::PrepareEpochFence, [tp("a", 0)].into_iter().collect());
    r.replay("done", Some(m));
    assert!(r.in_flight().iter().any(|m| m.txn_id == "done" && !m.commit));
    r.markers_written("done", 1003, 0, 9);
    assert_eq!(state(&r, "done"), TxnState::CompleteAbort);
}

#[test]
fn describe_and_list() {
    // Goal: DescribeTransactions and ListTransactions see states by Kafka's names and filter by
    // state, producer id and duration.
    let (mut t, mut pids) = ongoing();
    t.init_producer_id("u", TIMEOUT, None, 0, &mut pids.alloc());
    assert_eq!(t.describe("x"), Err(TRANSACTIONAL_ID_NOT_FOUND));
    assert_eq!(t.describe("t").unwrap().state.name(), "Ongoing");
    let all = t.list(&ListFilter { duration_min_ms: -1, ..ListFilter::default() }, 100);
    assert_eq!(
        all,
        vec![
            Listed { txn_id: "t".into(), producer_id: 1000, state: TxnState::Ongoing },
            Listed { txn_id: "u".into(), producer_id: 1001, state: TxnState::Empty },
        ]
    );
    let f = ListFilter { states: vec![TxnState::Empty], producer_ids: vec![], duration_min_ms: -1 };
    assert_eq!(t.list(&f, 100).len(), 1);
    let f = ListFilter { states: vec![], producer_ids: vec![1000], duration_min_ms: -1 };
    assert_eq!(t.list(&f, 100)[0].txn_id, "t");
    let f = ListFilter { states: vec![], producer_ids: vec![], duration_min_ms: 90 };
    assert_eq!(t.list(&f, 100)[0].txn_id, "t", "running for 90 ms");
    assert!(t.list(&f, 99).is_empty());
    for s in TxnState::ALL {
        assert_eq!(TxnState::from_name(s.name()), Some(s));
        assert_eq!(TxnState::from_id(s.id()), Some(s));
    }
    assert_eq!(TxnState::from_name("Bogus"), None);
    assert_eq!(TxnState::PrepareEpochFence.name(), "PrepareEpochFence");
}

#[test]
fn forgetting_a_partition_keeps_the_others_and_the_largest_producer_id() {
    // Goal: a cluster node that stops leading a `__transaction_state` partition forgets exactly
    // its ids, answers for the rest as before, and never hands out a producer id again at or
    // below one it has seen.
    let mut t = Transactions::new(TxnConfig::default());
    let mut pids = Pids::new();
    for id in ["a", "b", "c"] {
        assert!(t.init_producer_id(id, TIMEOUT, None, 0, &mut pids.alloc()).answer.is_ok());
    }
    let seen = t.max_producer_id_seen();
    t.forget(|id| id == "a" || id == "c");
    assert_eq!(t.describe("a").err(), Some(TRANSACTIONAL_ID_NOT_FOUND));
    assert_eq!(t.describe("c").err(), Some(TRANSACTIONAL_ID_NOT_FOUND));
    assert_eq!(state(&t, "b"), TxnState::Empty);
    assert_eq!(t.max_producer_id_seen(), seen);
    // Loaded again from its records (another term), "a" is as it was.
    let m = TxnMetadata { producer_id: seen + 7, ..t.describe("b").unwrap().clone() };
    t.replay("a", Some(m));
    assert_eq!(t.describe("a").unwrap().producer_id, seen + 7);
    assert_eq!(t.max_producer_id_seen(), seen + 7);
}
