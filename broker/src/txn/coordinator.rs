//! The transaction coordinator's driver: owns the state machine ([`super::state`]) behind one
//! mutex, appends its records to `__transaction_state` in the order they are returned (under
//! that mutex, so the log order is the decision order), writes transaction markers into the
//! partitions of a transaction, allocates producer ids, loads the topic and aborts timed-out
//! transactions.
//!
//! Requests are answered only once their records are durable. EndTxn (and an InitProducerId that
//! had to abort a zombie's transaction) is answered after the markers are durable in every
//! partition and the transaction's `Complete*` record is appended (not waited for: the markers
//! decide the outcome, and recovery rewrites them if the record is lost), so on one node a
//! client never sees the in-between state. Markers that could not be written stay `in_flight` in the state
//! machine; the ticker writes them again.
//!
//! In a cluster `__transaction_state` is a replicated topic and a transactional id's coordinator
//! is the leader of its partition, as for groups (`raft/internal_topic.rs`): each tick loads the
//! partitions this node has come to lead (in a new term) from their committed records, their ids
//! answering COORDINATOR_LOAD_IN_PROGRESS meanwhile, and forgets those it no longer leads (their
//! ids answer NOT_COORDINATOR). Records go through the partition's Raft group in decision order
//! and are answered once a quorum holds them; a write that fails unloads the partition, which is
//! read again from the log. Transactions a loaded partition holds in `PrepareCommit` or
//! `PrepareAbort` (the old coordinator died between the decision and the last marker) get their
//! markers and `Complete*` record written by the ticker, as after a restart on one node; open
//! ones keep running and time out as usual. Markers go through each data partition's Raft leader
//! (`markers.rs`); an answer that would wait more than [`MARKERS_ANSWER_WAIT`] for them (a
//! partition electing a leader) is CONCURRENT_TRANSACTIONS, and the client retries while the
//! markers are written in the background.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use creek_protocol::batch::build_control_batch;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::markers::{self, KIND_TXN_MARKER, Marker, MarkerHandler};
use super::producer_ids::ProducerIds;
use super::state::{CONCURRENT_TRANSACTIONS, Effect, Markers, Reply, Transactions, TxnConfig, TxnMetadata};
use super::store::{self, TXN_TOPIC};
use crate::flusher::Flusher;
use crate::group::coordinator::GroupCoordinator;
use crate::group::store::OFFSETS_TOPIC;
use crate::handlers::code;
use crate::raft::internal_topic::{
    Committed, Load, OrderedWriter, Step, WriteError, check_led, compacted, leadership_changes, led_term,
    read_committed, replicate,
};
use crate::raft::replica::Replica;
use crate::state::{Broker, Partition, now_ms};

/// The coordinator epoch stamped into markers on one node (in a cluster: the leader epoch of
/// the transaction's `__transaction_state` partition).
const COORDINATOR_EPOCH: i32 = 0;
/// Cluster mode: how long a request waits for its transaction's markers before it is answered
/// CONCURRENT_TRANSACTIONS (the markers go on being written; the client retries).
const MARKERS_ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How often the ticker runs: it follows `__transaction_state` leadership in a cluster.
const TICK: Duration = Duration::from_millis(100);
/// Every this many ticks it also picks up markers still to write.
const IN_FLIGHT_EVERY_TICKS: u32 = 5;

/// The state machine and, in a cluster, how far each `__transaction_state` partition is loaded.
struct Inner {
    txns: Transactions,
    /// Cluster mode, by partition index; empty on a single node, which loads all at startup.
    loads: Vec<Load>,
}

/// What to wait for before an answer: a record (or marker) appended locally, durable once the
/// flusher passed this offset; or a record handed to a partition's Raft group.
enum Wait {
    Flush(Arc<Partition>, u64),
    Commit(Committed),
}

pub(crate) struct TxnCoordinator {
    inner: Mutex<Inner>,
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
    /// Cluster mode: the task that hands records to the Raft groups in order.
    raft_writes: OnceLock<OrderedWriter>,
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
            inner: Mutex::new(Inner { txns: Transactions::new(txn_config(&broker)), loads: Vec::new() }),
            ids: Mutex::new(None),
            loaded: AtomicBool::new(false),
            broker,
            flusher,
            groups,
            partitions: AtomicI32::new(partitions),
            writing: Mutex::new(HashSet::new()),
            raft_writes: OnceLock::new(),
        })
    }

    /// Starts the coordinator: [`TxnCoordinator::start`] on a single node. In a cluster it opens
    /// the producer id allocator, serves other nodes' marker requests, and in the background
    /// makes sure the replicated `__transaction_state` exists; its partitions are then loaded as
    /// this node comes to lead them.
    pub(crate) async fn open(self: Arc<Self>, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let Some(cluster) = self.broker.cluster.get().cloned() else {
            let this = self.clone();
            return tokio::task::spawn_blocking(move || this.start()).await?;
        };
        let this = self.clone();
        // Ids other nodes handed out raise the floor as their partitions load here.
        tokio::task::spawn_blocking(move || this.open_ids(-1)).await??;
        cluster.register_service(
            KIND_TXN_MARKER,
            Arc::new(MarkerHandler { broker: self.broker.clone(), groups: self.groups.clone() }),
        );
        tokio::spawn(async move {
            if let Err(e) = self.replicate_txn_topic(stop).await {
                tracing::error!(error = %e, "opening the replicated {TXN_TOPIC} failed");
            }
        });
        Ok(())
    }

    /// Cluster mode: creates `__transaction_state` through the metadata group unless it exists,
    /// waits until it is open here, and starts the writer task.
    async fn replicate_txn_topic(self: Arc<Self>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let cluster = self.broker.cluster.get().cloned().ok_or_else(|| anyhow::anyhow!("not in a cluster"))?;
        let (wanted, configs) = self.txn_topic_config();
        let replication = {
            let rf = self.broker.config.read().i64("transaction.state.log.replication.factor");
            rf.clamp(1, cluster.placeable().len() as i64) as i16
        };
        let Some(topic) = replicate(&self.broker, &cluster, TXN_TOPIC, (wanted, replication), configs, &mut stop).await
        else {
            return Ok(());
        };
        let count = topic.partition_count();
        self.partitions.store(count as i32, Ordering::Release);
        self.inner.lock().loads = vec![Load::Unloaded; count];
        let _ = self.raft_writes.set(OrderedWriter::start_for(&self, Self::write_failed));
        self.loaded.store(true, Ordering::Release);
        tracing::info!(
            partitions = count,
            "{TXN_TOPIC} replicated; coordinating the transactional ids of the partitions led here"
        );
        Ok(())
    }

    /// The partition count and configs `__transaction_state` is created with.
    fn txn_topic_config(&self) -> (u32, BTreeMap<String, String>) {
        let segment_bytes = self.broker.config.read().i64("transaction.state.log.segment.bytes");
        (self.partitions.load(Ordering::Acquire) as u32, compacted(segment_bytes))
    }

    /// Opens the producer id allocator above `floor` (in this node's lane in a cluster).
    fn open_ids(&self, floor: i64) -> anyhow::Result<()> {
        let lane = match self.broker.cluster.get() {
            // Brokers join and leave, so lanes are node ids (below 2^16, checked at startup).
            Some(c) => (c.node as i64, crate::cluster::PRODUCER_ID_LANES),
            None => (0, 1),
        };
        *self.ids.lock() = Some(ProducerIds::open(&self.broker.data_dir().join("meta"), floor, lane)?);
        Ok(())
    }

    /// Creates `__transaction_state` if missing and replays it (blocking I/O), opens the
    /// producer id allocator above every id in the log, then serves requests. In-flight markers
    /// are written by the first tick.
    pub(crate) fn start(&self) -> anyhow::Result<()> {
        let (wanted, configs) = self.txn_topic_config();
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
        self.open_ids(txns.max_producer_id_seen())?;
        let in_flight = txns.in_flight().len();
        self.inner.lock().txns = txns;
        self.loaded.store(true, Ordering::Release);
        tracing::info!(records, in_flight, "loaded {TXN_TOPIC}");
        Ok(())
    }

    /// Aborts timed-out transactions and (re)writes in-flight markers until `shutdown`.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        let mut last_expiry = 0i64;
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if !self.loaded.load(Ordering::Acquire) {
                continue;
            }
            if self.raft_writes.get().is_some() {
                self.follow_leadership();
            }
            ticks = ticks.wrapping_add(1);
            if !ticks.is_multiple_of(IN_FLIGHT_EVERY_TICKS) {
                continue;
            }
            let now = now_ms();
            let interval = self.broker.config.read().i64("transaction.abort.timed.out.transaction.cleanup.interval.ms");
            if now - last_expiry >= interval {
                last_expiry = now;
                let effects = {
                    let mut inner = self.inner.lock();
                    let effects = inner.txns.expire(now);
                    self.persist_now(&mut inner, effects)
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
                inner.txns.in_flight().into_iter().filter(|m| writing.insert(m.txn_id.clone())).collect()
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

    /// Whether this node coordinates `txn_id` (FindCoordinator and every transaction request):
    /// it must lead the id's `__transaction_state` partition (a single node leads all of them)
    /// and have loaded it.
    pub(crate) fn check(&self, txn_id: &str) -> Result<(), i16> {
        self.check_in(&self.inner.lock(), txn_id)
    }

    /// [`TxnCoordinator::check`] under the lock: every state machine call checks again here, so
    /// a partition unloaded since the handler's check is not written to.
    fn check_in(&self, inner: &Inner, txn_id: &str) -> Result<(), i16> {
        self.check_serving()?;
        if self.raft_writes.get().is_none() {
            return Ok(());
        }
        check_led(&self.broker, TXN_TOPIC, self.partition_of(txn_id), &inner.loads)
    }

    /// Whether this node serves transaction requests at all (ListTransactions lists the ids of
    /// the partitions loaded here): loaded on a single node; in a cluster, once
    /// `__transaction_state` exists.
    pub(crate) fn check_serving(&self) -> Result<(), i16> {
        if self.raft_writes.get().is_none() && self.broker.cluster.get().is_some() {
            return Err(code::NOT_COORDINATOR);
        }
        if !self.loaded.load(Ordering::Acquire) {
            return Err(code::COORDINATOR_LOAD_IN_PROGRESS);
        }
        Ok(())
    }

    /// The `__transaction_state` partition that holds `txn_id`.
    pub(crate) fn partition_of(&self, txn_id: &str) -> i32 {
        store::partition_for(txn_id, self.partitions.load(Ordering::Acquire))
    }

    /// This node's replica of `__transaction_state` partition `p` (cluster mode).
    fn txn_replica(&self, p: i32) -> Option<Arc<Replica>> {
        self.broker.topic(TXN_TOPIC)?.partition(p)?.replica.get()
    }

    /// Cluster mode, every tick: loads the partitions this node has come to lead (in a new term)
    /// and forgets those it no longer leads.
    fn follow_leadership(self: &Arc<Self>) {
        let mut inner = self.inner.lock();
        for (p, step) in leadership_changes(&self.broker, TXN_TOPIC, &inner.loads) {
            self.unload(&mut inner, p.index);
            match step {
                Step::Load(t) => {
                    inner.loads[p.index as usize] = Load::Loading(t);
                    tokio::spawn(self.clone().load_partition(p, t));
                }
                _ => tracing::info!(partition = p.index, "no longer leading; unloaded its transactional ids"),
            }
        }
    }

    /// Reads partition `p`'s committed records and serves its ids, unless leadership moved
    /// meanwhile. Their requests get COORDINATOR_LOAD_IN_PROGRESS until then.
    async fn load_partition(self: Arc<Self>, p: Arc<Partition>, term: i32) {
        let started = std::time::Instant::now();
        let reading = p.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut records: Vec<(String, Option<TxnMetadata>)> = Vec::new();
            read_committed(&reading, &mut |bytes| {
                store::replay_batches(bytes, &mut |id, value| records.push((id, value)))
            })
            .map(|()| records)
        })
        .await;
        let mut inner = self.inner.lock();
        if inner.loads.get(p.index as usize) != Some(&Load::Loading(term)) {
            return;
        }
        let records = match read.unwrap_or_else(|e| Err(e.to_string())) {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(partition = p.index, error, "loading a {TXN_TOPIC} partition failed; retrying");
                inner.loads[p.index as usize] = Load::Unloaded;
                return;
            }
        };
        let count = records.len();
        for (id, value) in records {
            inner.txns.replay(&id, value);
        }
        // Ids handed out by the nodes that led this partition before.
        if let Some(ids) = self.ids.lock().as_mut() {
            ids.raise_floor(inner.txns.max_producer_id_seen());
        }
        inner.loads[p.index as usize] = Load::Loaded(term);
        tracing::info!(
            partition = p.index,
            term,
            records = count,
            ms = started.elapsed().as_millis() as u64,
            "leading a {TXN_TOPIC} partition; loaded its transactional ids"
        );
    }

    /// Forgets every transactional id of partition `p`.
    fn unload(&self, inner: &mut Inner, p: i32) {
        let n = self.partitions.load(Ordering::Acquire);
        inner.txns.forget(|id| store::partition_for(id, n) == p);
        if let Some(l) = inner.loads.get_mut(p as usize) {
            *l = Load::Unloaded;
        }
    }

    /// A Raft write of partition `p` failed in `term`: memory may be ahead of the log, so the
    /// partition is unloaded and, if this node still leads it, read again from the log.
    fn write_failed(&self, p: i32, term: i32) {
        let mut inner = self.inner.lock();
        if inner.loads.get(p as usize).is_some_and(|l| l.in_term(term)) {
            self.unload(&mut inner, p);
            tracing::warn!(partition = p, term, "a transaction record did not commit; reloading the partition");
        }
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

    /// Runs one state machine call for `txn_id`: appends its records (under the lock), waits
    /// until they are durable, writes its markers, and returns the answer.
    pub(crate) async fn call<T>(
        self: &Arc<Self>,
        txn_id: &str,
        f: impl FnOnce(&mut Transactions, &mut dyn FnMut() -> i64) -> Reply<T>,
    ) -> Result<T, i16> {
        let (answer, persisted) = {
            let mut guard = self.inner.lock();
            let inner: &mut Inner = &mut guard;
            self.check_in(inner, txn_id)?;
            let mut ids = self.ids.lock();
            let mut alloc_failed = false;
            let mut alloc = || match ids.as_mut().map(|i| i.allocate()) {
                Some(Ok(id)) => id,
                _ => {
                    alloc_failed = true;
                    -1
                }
            };
            let reply = f(&mut inner.txns, &mut alloc);
            if alloc_failed {
                tracing::error!("producer id allocation failed inside a transaction call");
            }
            (reply.answer, self.persist_now(inner, reply.effects))
        };
        let (waits, markers) = persisted?;
        if markers.is_empty() {
            self.wait_all(waits).await?;
            return answer;
        }
        // Markers run in their own task, so that a client that goes away does not stop them.
        let this = self.clone();
        let finished = tokio::spawn(async move { this.finish(waits, markers).await });
        let finished = if self.raft_writes.get().is_some() {
            match tokio::time::timeout(MARKERS_ANSWER_WAIT, finished).await {
                Ok(f) => f,
                Err(_) => return Err(CONCURRENT_TRANSACTIONS),
            }
        } else {
            finished.await
        };
        finished.map_err(|_| code::COORDINATOR_NOT_AVAILABLE)??;
        answer
    }

    /// Appends every `Persist` effect now (the caller holds the state lock) and returns what to
    /// wait for and the markers to write afterwards. In a cluster a record that cannot even be
    /// queued unloads its partition (memory is ahead of the log), which the next tick reloads.
    fn persist_now(&self, inner: &mut Inner, effects: Vec<Effect>) -> Result<(Vec<Wait>, Vec<Markers>), i16> {
        let mut waits = Vec::new();
        let mut markers = Vec::new();
        for e in effects {
            match e {
                Effect::Persist { txn_id, value } => {
                    let key = store::key(&txn_id);
                    let value = value.as_ref().map(store::value);
                    match self.append_record(inner, &txn_id, &key, value.as_deref()) {
                        Ok(w) => waits.push(w),
                        Err(e) => {
                            self.release(&markers);
                            if self.raft_writes.get().is_some() {
                                self.unload(inner, self.partition_of(&txn_id));
                            }
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

    /// Appends one record to `txn_id`'s partition; in a cluster, queues it for the partition's
    /// Raft group, in the term the partition is loaded in.
    fn append_record(&self, inner: &Inner, txn_id: &str, key: &[u8], value: Option<&[u8]>) -> Result<Wait, i16> {
        let index = self.partition_of(txn_id);
        let partition =
            self.broker.topic(TXN_TOPIC).and_then(|t| t.partition(index)).ok_or(code::COORDINATOR_NOT_AVAILABLE)?;
        let now = now_ms();
        let mut batch = creek_protocol::batch::build_batch(0, now, &[(Some(key), value)]);
        if let Some(writer) = self.raft_writes.get() {
            let Some(&Load::Loaded(term)) = inner.loads.get(index as usize) else {
                return Err(code::NOT_COORDINATOR);
            };
            return writer.write(partition, term, batch).map(Wait::Commit).map_err(|e| {
                tracing::warn!(error = %e, "could not queue a {TXN_TOPIC} record");
                code::NOT_COORDINATOR
            });
        }
        let info = partition.log.lock().append(&mut batch, partition.leader_epoch, now).map_err(|e| {
            tracing::error!(error = %e, "could not append to {TXN_TOPIC}");
            code::COORDINATOR_NOT_AVAILABLE
        })?;
        Ok(Wait::Flush(partition, info.last_offset + 1))
    }

    /// Gives up the claims on `markers` (their writes failed or never started); the ticker
    /// picks the transactions up again.
    fn release(&self, markers: &[Markers]) {
        let mut writing = self.writing.lock();
        for m in markers {
            writing.remove(&m.txn_id);
        }
    }

    /// Waits until every record or marker is durable (a local one: the waits are queued together
    /// so one group-commit round covers them all) or committed by a quorum (a replicated one).
    async fn wait_all(&self, waits: Vec<Wait>) -> Result<(), i16> {
        let mut set = tokio::task::JoinSet::new();
        for w in waits {
            let flusher = self.flusher.clone();
            set.spawn(async move {
                match w {
                    Wait::Flush(p, end) => {
                        flusher.wait_durable(p, end).await.map_err(|e| (code::COORDINATOR_NOT_AVAILABLE, e.to_string()))
                    }
                    Wait::Commit(rx) => match rx.await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(WriteError::Refused(error))) => Err((error, "refused".to_string())),
                        Ok(Err(WriteError::Failed(e))) => Err((code::NOT_COORDINATOR, e)),
                        Err(_) => Err((code::NOT_COORDINATOR, "the writer stopped".to_string())),
                    },
                }
            });
        }
        let mut result = Ok(());
        while let Some(r) = set.join_next().await {
            if let Err((error, e)) = r.unwrap_or_else(|e| Err((code::COORDINATOR_NOT_AVAILABLE, e.to_string()))) {
                tracing::warn!(error = %e, "transaction record or marker not durable");
                result = Err(error);
            }
        }
        result
    }

    /// Waits for `waits`, then writes each set of markers and completes its transaction. The
    /// transactions go on side by side: one whose partition has no leader for a while does not
    /// hold up the others. The first error is returned.
    fn finish(
        &self,
        waits: Vec<Wait>,
        markers: Vec<Markers>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), i16>> + Send + '_>> {
        Box::pin(async move {
            if let Err(e) = self.wait_all(waits).await {
                self.release(&markers);
                return Err(e);
            }
            let done = futures_util::future::join_all(markers.iter().map(|m| self.complete(m))).await;
            done.into_iter().collect()
        })
    }

    /// Writes the markers of one transaction and completes it. The caller owns `m` (claimed
    /// when produced); it is released after `markers_written`, or when a step fails.
    async fn complete(&self, m: &Markers) -> Result<(), i16> {
        if let Err(e) = self.write_markers(m).await {
            self.release(std::slice::from_ref(m));
            return Err(e);
        }
        let persisted = {
            let mut inner = self.inner.lock();
            let reply = inner.txns.markers_written(&m.txn_id, m.producer_id, m.producer_epoch, now_ms());
            self.writing.lock().remove(&m.txn_id);
            if let Err(e) = reply.answer {
                tracing::warn!(txn = %m.txn_id, code = e, "completing a transaction after its markers");
            }
            self.persist_now(&mut inner, reply.effects)
        };
        match persisted {
            // The `Complete*` record is not waited for: once the markers are durable the outcome
            // is decided, and a crash that loses the record leaves `Prepare*`, whose markers
            // recovery writes again (a repeated marker ends nothing).
            Ok((_, more)) if more.is_empty() => Ok(()),
            Ok((waits, more)) => self.finish(waits, more).await,
            Err(e) => Err(e),
        }
    }

    /// Appends one marker per partition of `m` and waits until all are durable. Partitions of
    /// deleted topics are skipped. In a cluster each goes through its partition's Raft leader.
    async fn write_markers(&self, m: &Markers) -> Result<(), i16> {
        if let Some(cluster) = self.broker.cluster.get() {
            // Written in the term this node leads the transaction's partition in; a later
            // coordinator writes them again.
            let p = self.partition_of(&m.txn_id);
            let Some(term) = self.txn_replica(p).and_then(|r| led_term(&r)) else {
                return Err(code::NOT_COORDINATOR);
            };
            let deposed = || self.txn_replica(p).and_then(|r| led_term(&r)) != Some(term);
            let writes = m.partitions.iter().map(|(topic, index)| {
                let marker = Marker {
                    topic: topic.clone(),
                    partition: *index,
                    producer_id: m.producer_id,
                    producer_epoch: m.producer_epoch,
                    commit: m.commit,
                    coordinator_epoch: term,
                };
                async move { markers::deliver(&self.broker, &self.groups, cluster, &marker, &deposed).await }
            });
            let results = futures_util::future::join_all(writes).await;
            return if results.iter().all(Result::is_ok) { Ok(()) } else { Err(code::NOT_COORDINATOR) };
        }
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
                Ok(info) => waits.push(Wait::Flush(partition, info.last_offset + 1)),
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
        f(&self.inner.lock().txns)
    }

    /// The `__consumer_offsets` partition of `group` (for AddOffsetsToTxn).
    pub(crate) fn offsets_partition(&self, group: &str) -> (String, i32) {
        (OFFSETS_TOPIC.to_string(), self.groups.partition_of(group))
    }
}
