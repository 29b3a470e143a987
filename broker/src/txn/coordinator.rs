//! The transaction coordinator's driver: owns the state machine ([`super::state`]) behind one
//! mutex, appends its records to `__transaction_state` in the order they are returned (under
//! that mutex, so the log order is the decision order), writes transaction markers into the
//! partitions of a transaction, allocates producer ids, loads the topic at startup and aborts
//! timed-out transactions.
//!
//! Requests are answered only once their records are durable. EndTxn (and an InitProducerId that
//! had to abort a zombie's transaction) is answered after the markers are durable in every
//! partition and the transaction's `Complete*` record is appended (not waited for: the markers
//! decide the outcome, and recovery rewrites them if the record is lost), so on one node a
//! client never sees the in-between state. Markers that could not be written stay `in_flight` in the state
//! machine; the ticker writes them again.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use creek_protocol::batch::build_control_batch;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::producer_ids::ProducerIds;
use super::state::{Effect, Markers, Reply, Transactions, TxnConfig};
use super::store::{self, TXN_TOPIC};
use crate::flusher::Flusher;
use crate::group::coordinator::GroupCoordinator;
use crate::group::store::OFFSETS_TOPIC;
use crate::handlers::code;
use crate::state::{Broker, Partition, now_ms};

/// The coordinator epoch stamped into markers: the leader epoch of the transaction's
/// `__transaction_state` partition, always 0 on one node.
const COORDINATOR_EPOCH: i32 = 0;

pub(crate) struct TxnCoordinator {
    inner: Mutex<Transactions>,
    ids: Mutex<Option<ProducerIds>>,
    loaded: AtomicBool,
    broker: Arc<Broker>,
    flusher: Flusher,
    groups: Arc<GroupCoordinator>,
    partitions: AtomicI32,
    /// Transactional ids whose markers some task owns: claimed under the state lock when the
    /// state machine asks for markers (or the ticker picks up an in-flight transaction), released
    /// after `markers_written` or a failed write. At most one task writes a transaction's markers,
    /// and never before its `Prepare*` record is durable. Lock order: `inner`, then `writing`.
    writing: Mutex<HashSet<String>>,
}

fn txn_config(broker: &Broker) -> TxnConfig {
    let c = broker.config.read();
    TxnConfig {
        timeout_max_ms: c.i64("transaction.max.timeout.ms").clamp(1, i64::from(i32::MAX)) as i32,
        id_expiration_ms: c.i64("transactional.id.expiration.ms").max(1),
    }
}

impl TxnCoordinator {
    pub(crate) fn new(broker: Arc<Broker>, flusher: Flusher, groups: Arc<GroupCoordinator>) -> Arc<TxnCoordinator> {
        let partitions = broker.config.read().i64("transaction.state.log.num.partitions").clamp(1, 100_000) as i32;
        Arc::new(TxnCoordinator {
            inner: Mutex::new(Transactions::new(txn_config(&broker))),
            ids: Mutex::new(None),
            loaded: AtomicBool::new(false),
            broker,
            flusher,
            groups,
            partitions: AtomicI32::new(partitions),
            writing: Mutex::new(HashSet::new()),
        })
    }

    /// Creates `__transaction_state` if missing and replays it (blocking I/O), opens the
    /// producer id allocator above every id in the log, then serves requests. In-flight markers
    /// are written by the first tick.
    pub(crate) fn start(&self) -> anyhow::Result<()> {
        let (segment_bytes, wanted) = {
            let c = self.broker.config.read();
            (c.i64("transaction.state.log.segment.bytes"), self.partitions.load(Ordering::Acquire) as u32)
        };
        let mut configs = BTreeMap::new();
        configs.insert("cleanup.policy".to_string(), "compact".to_string());
        configs.insert("segment.bytes".to_string(), segment_bytes.to_string());
        let topic = self.broker.ensure_internal_topic(TXN_TOPIC, wanted, configs)?;
        self.partitions.store(topic.partition_count() as i32, Ordering::Release);
        let mut txns = Transactions::new(txn_config(&self.broker));
        let mut records = 0usize;
        topic.replay(|_, bytes| {
            store::replay_batches(bytes, &mut |id, value| {
                records += 1;
                txns.replay(&id, value);
            })
        })?;
        let lane = match self.broker.cluster.get() {
            // Brokers join and leave, so lanes are node ids (below 2^16, checked at startup).
            Some(c) => (c.node as i64, crate::cluster::PRODUCER_ID_LANES),
            None => (0, 1),
        };
        let ids = ProducerIds::open(&self.broker.data_dir().join("meta"), txns.max_producer_id_seen(), lane)?;
        let in_flight = txns.in_flight().len();
        *self.ids.lock() = Some(ids);
        *self.inner.lock() = txns;
        self.loaded.store(true, Ordering::Release);
        tracing::info!(records, in_flight, "loaded {TXN_TOPIC}");
        Ok(())
    }

    /// Aborts timed-out transactions and (re)writes in-flight markers until `shutdown`.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut last_expiry = 0i64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if !self.loaded.load(Ordering::Acquire) {
                continue;
            }
            let now = now_ms();
            let interval = self.broker.config.read().i64("transaction.abort.timed.out.transaction.cleanup.interval.ms");
            if now - last_expiry >= interval {
                last_expiry = now;
                let effects = {
                    let mut inner = self.inner.lock();
                    let effects = inner.expire(now);
                    self.persist_now(effects)
                };
                match effects {
                    Ok((waits, markers)) => {
                        let this = self.clone();
                        tokio::spawn(async move {
                            if let Err(e) = this.finish(waits, markers).await {
                                tracing::warn!(code = e, "aborting timed-out transactions failed; retrying later");
                            }
                        });
                    }
                    Err(e) => tracing::warn!(code = e, "could not persist transaction expiry"),
                }
            }
            // Markers the state machine still waits for (after a restart, or a failed write).
            let pending: Vec<Markers> = {
                let inner = self.inner.lock();
                let mut writing = self.writing.lock();
                inner.in_flight().into_iter().filter(|m| writing.insert(m.txn_id.clone())).collect()
            };
            if !pending.is_empty() {
                let this = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = this.finish(Vec::new(), pending).await {
                        tracing::warn!(code = e, "writing transaction markers failed; retrying later");
                    }
                });
            }
        }
    }

    /// Whether this node coordinates `txn_id` (FindCoordinator and every transaction request).
    pub(crate) fn check(&self, _txn_id: &str) -> Result<(), i16> {
        if self.broker.cluster.get().is_some_and(|c| c.coordinator() != c.node) {
            return Err(code::NOT_COORDINATOR);
        }
        if !self.loaded.load(Ordering::Acquire) {
            return Err(code::COORDINATOR_LOAD_IN_PROGRESS);
        }
        Ok(())
    }

    /// A new producer id (idempotent producers without a transactional id).
    pub(crate) fn allocate_producer_id(&self) -> Result<i64, i16> {
        let mut ids = self.ids.lock();
        let ids = ids.as_mut().ok_or(code::COORDINATOR_LOAD_IN_PROGRESS)?;
        ids.allocate().map_err(|e| {
            tracing::error!(error = %e, "could not reserve producer ids");
            code::KAFKA_STORAGE_ERROR
        })
    }

    /// Runs one state machine call: appends its records (under the lock), waits until they are
    /// durable, writes its markers, and returns the answer.
    pub(crate) async fn call<T>(
        &self,
        f: impl FnOnce(&mut Transactions, &mut dyn FnMut() -> i64) -> Reply<T>,
    ) -> Result<T, i16> {
        self.check("")?;
        let (answer, persisted) = {
            let mut inner = self.inner.lock();
            let mut ids = self.ids.lock();
            let mut alloc_failed = false;
            let mut alloc = || match ids.as_mut().map(|i| i.allocate()) {
                Some(Ok(id)) => id,
                _ => {
                    alloc_failed = true;
                    -1
                }
            };
            let reply = f(&mut inner, &mut alloc);
            if alloc_failed {
                tracing::error!("producer id allocation failed inside a transaction call");
            }
            (reply.answer, self.persist_now(reply.effects))
        };
        let (waits, markers) = persisted?;
        self.finish(waits, markers).await?;
        answer
    }

    /// Appends every `Persist` effect now (the caller holds the state lock) and returns what to
    /// wait for and the markers to write afterwards.
    #[allow(clippy::type_complexity)]
    fn persist_now(&self, effects: Vec<Effect>) -> Result<(Vec<(Arc<Partition>, u64)>, Vec<Markers>), i16> {
        let mut waits = Vec::new();
        let mut markers = Vec::new();
        for e in effects {
            match e {
                Effect::Persist { txn_id, value } => {
                    let key = store::key(&txn_id);
                    let value = value.as_ref().map(store::value);
                    match self.append_record(&txn_id, &key, value.as_deref()) {
                        Ok(w) => waits.push(w),
                        Err(e) => {
                            self.release(&markers);
                            return Err(e);
                        }
                    }
                }
                Effect::WriteMarkers(m) => {
                    // Claimed here, under the state lock, so the ticker cannot write them too.
                    self.writing.lock().insert(m.txn_id.clone());
                    markers.push(m);
                }
            }
        }
        Ok((waits, markers))
    }

    fn append_record(&self, txn_id: &str, key: &[u8], value: Option<&[u8]>) -> Result<(Arc<Partition>, u64), i16> {
        let index = store::partition_for(txn_id, self.partitions.load(Ordering::Acquire));
        let partition =
            self.broker.topic(TXN_TOPIC).and_then(|t| t.partition(index)).ok_or(code::COORDINATOR_NOT_AVAILABLE)?;
        let now = now_ms();
        let mut batch = creek_protocol::batch::build_batch(0, now, &[(Some(key), value)]);
        let info = partition.log.lock().append(&mut batch, partition.leader_epoch, now).map_err(|e| {
            tracing::error!(error = %e, "could not append to {TXN_TOPIC}");
            code::COORDINATOR_NOT_AVAILABLE
        })?;
        Ok((partition, info.last_offset + 1))
    }

    /// Gives up the claims on `markers` (their writes failed or never started); the ticker
    /// picks the transactions up again.
    fn release(&self, markers: &[Markers]) {
        let mut writing = self.writing.lock();
        for m in markers {
            writing.remove(&m.txn_id);
        }
    }

    /// Waits until every `(partition, end offset)` is durable; the waits are queued together so
    /// one group-commit round covers them all.
    async fn wait_all(&self, waits: Vec<(Arc<Partition>, u64)>) -> Result<(), i16> {
        let mut set = tokio::task::JoinSet::new();
        for (p, end) in waits {
            let flusher = self.flusher.clone();
            set.spawn(async move { flusher.wait_durable(p, end).await });
        }
        let mut result = Ok(());
        while let Some(r) = set.join_next().await {
            if let Err(e) = r.map_err(|e| e.to_string()).and_then(|r| r) {
                tracing::error!(error = %e, "transaction record or marker not durable");
                result = Err(code::COORDINATOR_NOT_AVAILABLE);
            }
        }
        result
    }

    /// Waits for `waits`, then writes each set of markers and completes its transaction.
    fn finish(
        &self,
        waits: Vec<(Arc<Partition>, u64)>,
        markers: Vec<Markers>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), i16>> + Send + '_>> {
        Box::pin(async move {
            if let Err(e) = self.wait_all(waits).await {
                self.release(&markers);
                return Err(e);
            }
            // This task owns every entry of `markers` (claimed when produced): each is released
            // after `markers_written`, or with the rest when a step fails.
            for (i, m) in markers.iter().enumerate() {
                if let Err(e) = self.write_markers(m).await {
                    self.release(&markers[i..]);
                    return Err(e);
                }
                let persisted = {
                    let mut inner = self.inner.lock();
                    let reply = inner.markers_written(&m.txn_id, m.producer_id, m.producer_epoch, now_ms());
                    self.writing.lock().remove(&m.txn_id);
                    if let Err(e) = reply.answer {
                        tracing::warn!(txn = %m.txn_id, code = e, "completing a transaction after its markers");
                    }
                    self.persist_now(reply.effects)
                };
                let result = match persisted {
                    // The `Complete*` record is not waited for: once the markers are durable the
                    // outcome is decided, and a crash that loses the record leaves `Prepare*`,
                    // whose markers recovery writes again (a repeated marker ends nothing).
                    Ok((_, more)) if more.is_empty() => Ok(()),
                    Ok((waits, more)) => self.finish(waits, more).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    self.release(&markers[i + 1..]);
                    return Err(e);
                }
            }
            Ok(())
        })
    }

    /// Appends one marker per partition of `m` and waits until all are durable. Partitions of
    /// deleted topics are skipped.
    async fn write_markers(&self, m: &Markers) -> Result<(), i16> {
        let mut waits = Vec::new();
        for (topic, index) in &m.partitions {
            let Some(partition) = self.broker.topic(topic).and_then(|t| t.partition(*index)) else {
                tracing::info!(topic, partition = index, "skipping a marker for a partition that no longer exists");
                continue;
            };
            let now = now_ms();
            let mut batch = build_control_batch(m.producer_id, m.producer_epoch, m.commit, COORDINATOR_EPOCH, now);
            let appended = partition.log.lock().append(&mut batch, partition.leader_epoch, now);
            match appended {
                Ok(info) => waits.push((partition, info.last_offset + 1)),
                // A newer epoch of this producer already closed the transaction here.
                Err(creek_storage::StorageError::Producer(e)) => {
                    tracing::warn!(topic, partition = index, error = %e, "marker refused by producer state");
                }
                Err(e) => {
                    tracing::error!(topic, partition = index, error = %e, "could not write a transaction marker");
                    return Err(code::KAFKA_STORAGE_ERROR);
                }
            }
            if topic == OFFSETS_TOPIC {
                self.groups.complete_txn(*index, m.producer_id, m.commit);
            }
        }
        self.broker.appended.send_modify(|n| *n = n.wrapping_add(1));
        self.wait_all(waits).await.map_err(|_| code::KAFKA_STORAGE_ERROR)
    }

    /// Read access for DescribeTransactions and ListTransactions.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&Transactions) -> R) -> R {
        f(&self.inner.lock())
    }

    /// The `__consumer_offsets` partition of `group` (for AddOffsetsToTxn).
    pub(crate) fn offsets_partition(&self, group: &str) -> (String, i32) {
        (OFFSETS_TOPIC.to_string(), self.groups.partition_of(group))
    }
}
