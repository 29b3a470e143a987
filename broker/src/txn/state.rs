//! The transaction coordinator as a pure state machine over every transactional id: requests and
//! `now_ms` go in; answers and effects (records to append, markers to write) come out. No clock,
//! socket, file or task; producer ids come from a caller-supplied allocator.
//!
//! Semantics follow Kafka's `TransactionCoordinator` and `TransactionMetadata` (KIP-98, KIP-360
//! epoch bumps and retries, KIP-588 `PRODUCER_FENCED`), without Kafka's "pending state": the
//! driver serialises calls under one lock and appends records in the order they are returned,
//! so the in-memory state may run ahead of the log but every answer waits for its records.
//!
//! # The protocol the driver follows
//! Every mutating call returns a [`Reply`]: `answer` for the client and `effects` in order.
//! 1. Append each [`Effect::Persist`] to `__transaction_state` (partition
//!    [`super::store::partition_for`], key [`super::store::key`], value
//!    [`super::store::value`], `None` = tombstone), in the order returned, across calls.
//! 2. Once those records are durable, send `answer` (an `Err(code)` is sent as that code). If an
//!    append fails, answer with the append's error instead; the state stays as returned (Kafka
//!    would keep the old state; a failed append on one node is a disk failure).
//! 3. For each [`Effect::WriteMarkers`], after the records before it are durable: write one
//!    COMMIT or ABORT control batch with (`producer_id`, `producer_epoch`) to every partition
//!    listed; when all are durable, call [`Transactions::markers_written`] and apply its reply
//!    the same way (it persists `CompleteCommit`/`CompleteAbort`).
//! 4. Call [`Transactions::expire`] periodically (Kafka: every 10 s) and apply its effects:
//!    timed-out transactions are aborted with a bumped epoch, idle ids are tombstoned.
//! 5. At startup, feed every record of `__transaction_state` in log order to
//!    [`Transactions::replay`], then write markers for every entry of
//!    [`Transactions::in_flight`] (and call `markers_written` as in 3). The producer id allocator
//!    must start above [`Transactions::max_producer_id_seen`].
//!
//! Fencing errors are returned as [`PRODUCER_FENCED`]; for requests older than KIP-588 the
//! driver maps them with [`fenced_code`].

use std::collections::{BTreeMap, BTreeSet};

/// `INVALID_PRODUCER_EPOCH`: the fencing error of requests older than KIP-588.
pub(crate) const INVALID_PRODUCER_EPOCH: i16 = 47;
pub(crate) const INVALID_TXN_STATE: i16 = 48;
pub(crate) const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
pub(crate) const INVALID_TRANSACTION_TIMEOUT: i16 = 50;
pub(crate) const CONCURRENT_TRANSACTIONS: i16 = 51;
pub(crate) const PRODUCER_FENCED: i16 = 90;
pub(crate) const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;

/// Kafka's `RecordBatch.NO_PRODUCER_ID` and `NO_PRODUCER_EPOCH`.
pub(crate) const NO_PRODUCER_ID: i64 = -1;
pub(crate) const NO_PRODUCER_EPOCH: i16 = -1;

/// The code to send for a fencing error: `PRODUCER_FENCED` where the request version knows it
/// (InitProducerId v4+, AddPartitionsToTxn v2+, AddOffsetsToTxn v2+, EndTxn v2+, TxnOffsetCommit
/// v3+), `INVALID_PRODUCER_EPOCH` before. Other codes pass through.
pub(crate) fn fenced_code(code: i16, knows_producer_fenced: bool) -> i16 {
    if code == PRODUCER_FENCED && !knows_producer_fenced { INVALID_PRODUCER_EPOCH } else { code }
}

/// Kafka's `TransactionMetadata.isEpochExhausted`: an epoch the coordinator would not bump, so
/// that it can always fence a producer once more.
pub(crate) fn epoch_exhausted(epoch: i16) -> bool {
    epoch >= i16::MAX - 1
}

/// A topic partition taking part in a transaction.
pub(crate) type TopicPartition = (String, i32);

/// Broker settings the state machine obeys.
#[derive(Debug, Clone)]
pub(crate) struct TxnConfig {
    /// `transaction.max.timeout.ms`.
    pub(crate) timeout_max_ms: i32,
    /// `transactional.id.expiration.ms`.
    pub(crate) id_expiration_ms: i64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig { timeout_max_ms: 900_000, id_expiration_ms: 604_800_000 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
    PrepareEpochFence,
}

impl TxnState {
    pub(crate) const ALL: [TxnState; 8] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
        TxnState::Dead,
        TxnState::PrepareEpochFence,
    ];

    /// Kafka's name for the state (DescribeTransactions, ListTransactions).
    pub(crate) fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<TxnState> {
        TxnState::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Kafka's byte id in `__transaction_state` (`TransactionStatus`).
    pub(crate) fn id(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    pub(crate) fn from_id(id: i8) -> Option<TxnState> {
        TxnState::ALL.into_iter().find(|s| s.id() == id)
    }

    /// Markers are being written (or must be, after a restart); `Some(commit)`.
    fn preparing(self) -> Option<bool> {
        match self {
            TxnState::PrepareCommit => Some(true),
            TxnState::PrepareAbort | TxnState::PrepareEpochFence => Some(false),
            _ => None,
        }
    }

    /// No transaction in progress: a new one may start, the id may expire.
    fn idle(self) -> bool {
        matches!(self, TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort)
    }
}

/// What the coordinator knows of one transactional id; also the content of its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnMetadata {
    pub(crate) producer_id: i64,
    /// The producer id before the last rotation (epoch exhaustion), else -1.
    pub(crate) last_producer_id: i64,
    pub(crate) producer_epoch: i16,
    /// The epoch before the last KIP-360 bump, for retries; -1 when none. Kafka does not store
    /// it, so it is -1 after a restart.
    pub(crate) last_producer_epoch: i16,
    pub(crate) timeout_ms: i32,
    pub(crate) state: TxnState,
    pub(crate) partitions: BTreeSet<TopicPartition>,
    /// When the first partition was added (-1 when no transaction started).
    pub(crate) start_ms: i64,
    pub(crate) last_update_ms: i64,
}

/// Markers the driver must write: one control batch per partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Markers {
    pub(crate) txn_id: String,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) commit: bool,
    pub(crate) partitions: Vec<TopicPartition>,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Append this record to `__transaction_state`; `None` is a tombstone.
    Persist { txn_id: String, value: Option<TxnMetadata> },
    /// After the records before it are durable, write these markers, then call
    /// [`Transactions::markers_written`].
    WriteMarkers(Markers),
}

/// The answer to a request and what must happen before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply<T> {
    pub(crate) answer: Result<T, i16>,
    pub(crate) effects: Vec<Effect>,
}

impl<T> Reply<T> {
    fn err(code: i16) -> Reply<T> {
        Reply { answer: Err(code), effects: Vec::new() }
    }
    fn ok(value: T, effects: Vec<Effect>) -> Reply<T> {
        Reply { answer: Ok(value), effects }
    }
}

/// A row of ListTransactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub(crate) txn_id: String,
    pub(crate) producer_id: i64,
    pub(crate) state: TxnState,
}

/// ListTransactions filters; an empty list means "any".
#[derive(Debug, Clone, Default)]
pub(crate) struct ListFilter {
    pub(crate) states: Vec<TxnState>,
    pub(crate) producer_ids: Vec<i64>,
    /// KIP-994 (v1): only transactions running for at least this long; negative means any.
    pub(crate) duration_min_ms: i64,
}

/// Every transactional id this coordinator owns.
#[derive(Debug, Clone, Default)]
pub(crate) struct Transactions {
    pub(crate) config: TxnConfig,
    txns: BTreeMap<String, TxnMetadata>,
    max_producer_id: i64,
}

impl Transactions {
    pub(crate) fn new(config: TxnConfig) -> Transactions {
        Transactions { config, txns: BTreeMap::new(), max_producer_id: NO_PRODUCER_ID }
    }

    /// InitProducerId for a transactional id. `expected` is KIP-360's (producer id, epoch) of a
    /// producer recovering from an error. `Ok((producer_id, epoch))`, or an error code; a
    /// transaction in progress is aborted (fencing its producer) and answered
    /// `CONCURRENT_TRANSACTIONS`, so the client retries once the abort completed.
    pub(crate) fn init_producer_id(
        &mut self,
        txn_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        now_ms: i64,
        alloc: &mut dyn FnMut() -> i64,
    ) -> Reply<(i64, i16)> {
        if timeout_ms <= 0 || timeout_ms > self.config.timeout_max_ms {
            return Reply::err(INVALID_TRANSACTION_TIMEOUT);
        }
        let Some(m) = self.txns.get(txn_id) else {
            // A new id (or one that expired: a producer with `expected` may come back after
            // UNKNOWN_PRODUCER_ID; Kafka hands it the new id too).
            let producer_id = self.allocate(alloc);
            let m = TxnMetadata {
                producer_id,
                last_producer_id: NO_PRODUCER_ID,
                producer_epoch: 0,
                last_producer_epoch: NO_PRODUCER_EPOCH,
                timeout_ms,
                state: TxnState::Empty,
                partitions: BTreeSet::new(),
                start_ms: -1,
                last_update_ms: now_ms,
            };
            return self.commit_init(txn_id, m);
        };
        if let Some((pid, epoch)) = expected {
            let valid = pid == m.producer_id || (pid == m.last_producer_id && epoch_exhausted(epoch));
            if !valid {
                return Reply::err(PRODUCER_FENCED);
            }
        }
        match m.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::PrepareEpochFence => {
                Reply::err(CONCURRENT_TRANSACTIONS)
            }
            TxnState::Ongoing => {
                // The previous producer is a zombie: abort its transaction with a bumped epoch it
                // never learns, and let this one retry; the retry bumps the epoch again.
                let effects = self.fence_and_abort(txn_id, now_ms);
                Reply { answer: Err(CONCURRENT_TRANSACTIONS), effects }
            }
            TxnState::Dead => unreachable!("dead ids are removed from the map"),
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                let mut next = m.clone();
                next.state = TxnState::Empty;
                next.timeout_ms = timeout_ms;
                next.partitions.clear();
                next.start_ms = -1;
                next.last_update_ms = now_ms;
                let expected_epoch = expected.map(|(_, e)| e);
                if epoch_exhausted(m.producer_epoch) && expected_epoch.is_none_or(|e| e == m.producer_epoch) {
                    // Epochs of this producer id are used up: rotate to a new one.
                    next.last_producer_id = m.producer_id;
                    next.last_producer_epoch = if expected.is_some() { m.producer_epoch } else { NO_PRODUCER_EPOCH };
                    next.producer_id = self.allocate(alloc);
                    next.producer_epoch = 0;
                } else {
                    match expected_epoch {
                        None => {
                            next.producer_epoch = bump(m.producer_epoch);
                            next.last_producer_id = NO_PRODUCER_ID;
                            next.last_producer_epoch = NO_PRODUCER_EPOCH;
                        }
                        Some(e) if e == m.producer_epoch && !epoch_exhausted(e) => {
                            next.producer_epoch = bump(m.producer_epoch);
                            next.last_producer_id = NO_PRODUCER_ID;
                            next.last_producer_epoch = m.producer_epoch;
                        }
                        // A retry of a bump (or rotation) whose answer was lost: same answer.
                        Some(e) if e == m.last_producer_epoch && e != NO_PRODUCER_EPOCH => {}
                        Some(_) => return Reply::err(PRODUCER_FENCED),
                    }
                }
                self.commit_init(txn_id, next)
            }
        }
    }

    fn commit_init(&mut self, txn_id: &str, m: TxnMetadata) -> Reply<(i64, i16)> {
        let answer = (m.producer_id, m.producer_epoch);
        let effects = vec![persist(txn_id, &m)];
        self.txns.insert(txn_id.to_string(), m);
        Reply::ok(answer, effects)
    }

    fn allocate(&mut self, alloc: &mut dyn FnMut() -> i64) -> i64 {
        let pid = alloc();
        assert!(pid > self.max_producer_id, "producer id {pid} allocated at or below {}", self.max_producer_id);
        self.max_producer_id = pid;
        pid
    }

    /// Checks a request's producer id and epoch against the id's current ones.
    fn check_producer(&self, txn_id: &str, producer_id: i64, epoch: i16) -> Result<&TxnMetadata, i16> {
        let m = self.txns.get(txn_id).ok_or(INVALID_PRODUCER_ID_MAPPING)?;
        if m.producer_id != producer_id {
            return Err(INVALID_PRODUCER_ID_MAPPING);
        }
        if m.producer_epoch != epoch {
            return Err(PRODUCER_FENCED);
        }
        Ok(m)
    }

    /// AddPartitionsToTxn: one code for all `partitions` (the driver answers unknown topics
    /// itself, before calling). Partitions already in the transaction write no record.
    pub(crate) fn add_partitions(
        &mut self,
        txn_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[TopicPartition],
        now_ms: i64,
    ) -> Reply<()> {
        let m = match self.check_producer(txn_id, producer_id, epoch) {
            Ok(m) => m,
            Err(code) => return Reply::err(code),
        };
        if m.state.preparing().is_some() {
            return Reply::err(CONCURRENT_TRANSACTIONS);
        }
        assert!(m.state == TxnState::Ongoing || m.state.idle(), "unexpected state {:?}", m.state);
        if partitions.is_empty()
            || (m.state == TxnState::Ongoing && partitions.iter().all(|p| m.partitions.contains(p)))
        {
            return Reply::ok((), Vec::new());
        }
        let mut next = m.clone();
        if next.state.idle() {
            next.start_ms = now_ms;
            next.partitions.clear();
        }
        next.state = TxnState::Ongoing;
        next.partitions.extend(partitions.iter().cloned());
        next.last_update_ms = now_ms;
        let effects = vec![persist(txn_id, &next)];
        self.txns.insert(txn_id.to_string(), next);
        Reply::ok((), effects)
    }

    /// AddOffsetsToTxn: adds the group's `__consumer_offsets` partition to the transaction.
    pub(crate) fn add_offsets(
        &mut self,
        txn_id: &str,
        producer_id: i64,
        epoch: i16,
        offsets_partition: TopicPartition,
        now_ms: i64,
    ) -> Reply<()> {
        self.add_partitions(txn_id, producer_id, epoch, &[offsets_partition], now_ms)
    }

    /// EndTxn. Retries are answered as Kafka does: `NONE` once complete, `CONCURRENT_TRANSACTIONS`
    /// while markers are in flight, `INVALID_TXN_STATE` for the other outcome.
    pub(crate) fn end_txn(
        &mut self,
        txn_id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        now_ms: i64,
    ) -> Reply<()> {
        let m = match self.check_producer(txn_id, producer_id, epoch) {
            Ok(m) => m,
            Err(code) => return Reply::err(code),
        };
        match (m.state, commit) {
            (TxnState::Ongoing, _) => {
                let effects = self.prepare_end(txn_id, commit, now_ms);
                Reply::ok((), effects)
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Reply::ok((), Vec::new()),
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort | TxnState::PrepareEpochFence, false) => {
                Reply::err(CONCURRENT_TRANSACTIONS)
            }
            _ => Reply::err(INVALID_TXN_STATE),
        }
    }

    /// Ongoing → PrepareCommit/PrepareAbort with markers to write, or straight to
    /// CompleteCommit/CompleteAbort when no partition joined (nothing to mark).
    fn prepare_end(&mut self, txn_id: &str, commit: bool, now_ms: i64) -> Vec<Effect> {
        let m = self.txns.get_mut(txn_id).expect("caller found the id");
        assert_eq!(m.state, TxnState::Ongoing);
        m.last_update_ms = now_ms;
        if m.partitions.is_empty() {
            m.state = if commit { TxnState::CompleteCommit } else { TxnState::CompleteAbort };
            return vec![persist(txn_id, m)];
        }
        m.state = if commit { TxnState::PrepareCommit } else { TxnState::PrepareAbort };
        let markers = markers(txn_id, m, commit);
        vec![persist(txn_id, m), Effect::WriteMarkers(markers)]
    }

    /// Bumps the epoch of an Ongoing transaction (its producer can no longer write or end it)
    /// and aborts it. Kafka's `prepareFenceProducerEpoch` then `endTransaction(ABORT)`.
    fn fence_and_abort(&mut self, txn_id: &str, now_ms: i64) -> Vec<Effect> {
        let m = self.txns.get_mut(txn_id).expect("caller found the id");
        // Epochs handed to clients stay below i16::MAX - 1, so this never saturates on records
        // we wrote; a foreign log at i16::MAX keeps its epoch rather than wrapping.
        m.producer_epoch = m.producer_epoch.saturating_add(1);
        m.last_producer_epoch = NO_PRODUCER_EPOCH;
        self.prepare_end(txn_id, false, now_ms)
    }

    /// The markers of the transaction (`producer_id`, `epoch`) are durable on every partition:
    /// PrepareCommit/PrepareAbort → CompleteCommit/CompleteAbort. A call that no longer matches
    /// (the id moved on) changes nothing and returns an error the driver only logs.
    pub(crate) fn markers_written(&mut self, txn_id: &str, producer_id: i64, epoch: i16, now_ms: i64) -> Reply<()> {
        let m = match self.check_producer(txn_id, producer_id, epoch) {
            Ok(m) => m,
            Err(code) => return Reply::err(code),
        };
        let Some(commit) = m.state.preparing() else {
            return Reply::err(INVALID_TXN_STATE);
        };
        let mut next = m.clone();
        next.state = if commit { TxnState::CompleteCommit } else { TxnState::CompleteAbort };
        next.partitions.clear();
        next.last_update_ms = now_ms;
        let effects = vec![persist(txn_id, &next)];
        self.txns.insert(txn_id.to_string(), next);
        Reply::ok((), effects)
    }

    /// Aborts transactions past their timeout (`start + timeout < now`) with a bumped epoch, and
    /// removes ids idle for `transactional.id.expiration.ms` (tombstones).
    pub(crate) fn expire(&mut self, now_ms: i64) -> Vec<Effect> {
        let timed_out: Vec<String> = self
            .txns
            .iter()
            .filter(|(_, m)| {
                m.state == TxnState::Ongoing && m.start_ms.saturating_add(i64::from(m.timeout_ms)) < now_ms
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut effects = Vec::new();
        for id in timed_out {
            effects.extend(self.fence_and_abort(&id, now_ms));
        }
        let expiration_ms = self.config.id_expiration_ms;
        let idle: Vec<String> = self
            .txns
            .iter()
            .filter(|(_, m)| m.state.idle() && m.last_update_ms.saturating_add(expiration_ms) <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle {
            // Kafka moves the id to Dead and removes it once the tombstone is written; here it
            // goes at once (a lost tombstone only brings the idle id back after a restart).
            self.txns.remove(&id);
            effects.push(Effect::Persist { txn_id: id, value: None });
        }
        effects
    }

    /// Applies one record of `__transaction_state` (in log order) at startup.
    pub(crate) fn replay(&mut self, txn_id: &str, value: Option<TxnMetadata>) {
        match value {
            Some(m) if m.state != TxnState::Dead => {
                self.max_producer_id = self.max_producer_id.max(m.producer_id).max(m.last_producer_id);
                self.txns.insert(txn_id.to_string(), m);
            }
            _ => {
                self.txns.remove(txn_id);
            }
        }
    }

    /// Forgets every transactional id for which `gone` holds (a cluster node that stopped
    /// leading their `__transaction_state` partition). The largest producer id seen stays.
    pub(crate) fn forget(&mut self, gone: impl Fn(&str) -> bool) {
        self.txns.retain(|id, _| !gone(id));
    }

    /// After replay: transactions whose markers may not all be written. The driver writes them
    /// and calls [`Transactions::markers_written`].
    pub(crate) fn in_flight(&self) -> Vec<Markers> {
        self.txns.iter().filter_map(|(id, m)| m.state.preparing().map(|commit| markers(id, m, commit))).collect()
    }

    /// The largest producer id in the log or handed out (-1 if none).
    pub(crate) fn max_producer_id_seen(&self) -> i64 {
        self.max_producer_id
    }

    /// DescribeTransactions: `TRANSACTIONAL_ID_NOT_FOUND` for an unknown id.
    pub(crate) fn describe(&self, txn_id: &str) -> Result<&TxnMetadata, i16> {
        self.txns.get(txn_id).ok_or(TRANSACTIONAL_ID_NOT_FOUND)
    }

    /// ListTransactions, in transactional id order.
    pub(crate) fn list(&self, filter: &ListFilter, now_ms: i64) -> Vec<Listed> {
        self.txns
            .iter()
            .filter(|(_, m)| filter.states.is_empty() || filter.states.contains(&m.state))
            .filter(|(_, m)| filter.producer_ids.is_empty() || filter.producer_ids.contains(&m.producer_id))
            .filter(|(_, m)| {
                filter.duration_min_ms < 0
                    || (m.start_ms >= 0 && !m.state.idle() && now_ms - m.start_ms >= filter.duration_min_ms)
            })
            .map(|(id, m)| Listed { txn_id: id.clone(), producer_id: m.producer_id, state: m.state })
            .collect()
    }
}

/// The next epoch; callers never bump an exhausted one.
fn bump(epoch: i16) -> i16 {
    assert!(!epoch_exhausted(epoch), "bumping exhausted epoch {epoch}");
    epoch + 1
}

fn persist(txn_id: &str, m: &TxnMetadata) -> Effect {
    Effect::Persist { txn_id: txn_id.to_string(), value: Some(m.clone()) }
}

fn markers(txn_id: &str, m: &TxnMetadata, commit: bool) -> Markers {
    Markers {
        txn_id: txn_id.to_string(),
        producer_id: m.producer_id,
        producer_epoch: m.producer_epoch,
        commit,
        partitions: m.partitions.iter().cloned().collect(),
    }
}

#[cfg(test)]
#[path = "state_test.rs"]
mod tests;
