//! The group coordinator's driver: owns the classic groups and committed offsets behind one
//! mutex, turns the state machines' outputs into answers for parked requests and records in
//! `__consumer_offsets`, loads that topic, and ticks the clock every 100 ms.
//!
//! On a single node the topic is local and loaded whole at startup. In a cluster it is a
//! replicated topic, the coordinator of a group is the leader of the group's partition, and the
//! tick follows leadership: a partition this node comes to lead is loaded from its committed log,
//! one it stops leading is unloaded. Records go through the partition's Raft group in the order
//! they were decided (one writer task submits them), and a client is answered once a quorum
//! holds them.
//!
//! No lock is held across `.await`: parked JoinGroup/SyncGroup requests wait on oneshot
//! channels, and OffsetCommit waits for the flusher (or the Raft commit) outside the lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

use super::classic::{
    ClassicConfig, ClassicGroup, GroupState, JoinRequest, JoinResult, Output, ReqId, SyncRequest, SyncResult,
};
use super::consumer::{
    ClassicGroup as ClassicPresence, ConsumerGroupConfig, ConsumerGroups, DescribeResult, Heartbeat, HeartbeatResponse,
    TopicInfo, TopicsSnapshot,
};
use super::consumer_store;
use super::offsets::{Committed, Offsets};
use super::store::{self, Loaded, OFFSETS_TOPIC};
use crate::config::BrokerConfig;
use crate::flusher::Flusher;
use crate::handlers::code;
use crate::raft::internal_topic::{
    Committed as RaftCommitted, Load, OrderedWriter, Step, WriteError, check_led, compacted, leadership_changes,
    led_term, read_committed, replicate,
};
use crate::state::{Broker, Partition, now_ms};

/// One partition's commit in an OffsetCommit, after the handler's own checks.
#[derive(Debug, Clone)]
pub(crate) struct CommitPart {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) leader_epoch: i32,
    pub(crate) metadata: String,
    /// Non-zero when the handler already refused this partition.
    pub(crate) error: i16,
}

/// Committed offsets by topic: (topic, [(partition, offset if committed)]).
pub(crate) type Fetched = Vec<(String, Vec<(i32, Option<Committed>)>)>;

/// One code per (topic, partition) of a request.
pub(crate) type PartCodes = Vec<(String, i32, i16)>;

/// A group as DescribeGroups shows it.
pub(crate) struct Described {
    pub(crate) state: &'static str,
    pub(crate) protocol_type: String,
    pub(crate) protocol: String,
    /// (member id, instance id, client id, client host, metadata, assignment)
    pub(crate) members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

struct Inner {
    cfg: ClassicConfig,
    groups: HashMap<String, ClassicGroup>,
    /// KIP-848 consumer groups. A group id is classic or consumer, never both.
    consumer: ConsumerGroups,
    offsets: Offsets,
    /// Parked JoinGroup and SyncGroup requests, with their group (unloading a partition answers
    /// its groups' requests NOT_COORDINATOR).
    joins: HashMap<ReqId, (String, oneshot::Sender<JoinResult>)>,
    syncs: HashMap<ReqId, (String, oneshot::Sender<SyncResult>)>,
    next_req: ReqId,
    last_expiry_ms: i64,
    /// Offsets committed inside open transactions, by producer id: (offsets partition, group,
    /// topic, partition, offset). They become committed offsets when a COMMIT marker for the
    /// producer lands in that offsets partition, and vanish on ABORT.
    pending_txn: HashMap<i64, Vec<PendingTxnOffset>>,
    /// Cluster mode: how far each `__consumer_offsets` partition is loaded here, by index.
    /// Empty on a single node, which loads everything at startup.
    loads: Vec<Load>,
    /// Cluster mode: transaction markers (offsets partition, producer id, commit) that landed in
    /// a partition while it was loading; the load may have read the log before them, so they
    /// are applied again once it is installed.
    markers_while_loading: Vec<(i32, i64, bool)>,
}

/// A batch on its way into `__consumer_offsets`.
struct Written {
    partition: Arc<Partition>,
    wait: Wait,
}

enum Wait {
    /// Local: durable once the flusher has passed this offset.
    Flush(u64),
    /// Replicated: the writer task answers once a quorum holds the batch (in this term).
    Commit(i32, RaftCommitted),
}

impl Written {
    /// Waits until the batch is durable (a single node) or committed by a quorum (a cluster).
    /// The error is the code for the client: COORDINATOR_NOT_AVAILABLE when a local flush
    /// failed, NOT_COORDINATOR when the Raft write did (leadership moved, or it timed out).
    async fn durable(self, flusher: &Flusher) -> Result<(), (i16, String)> {
        match self.wait {
            Wait::Flush(end) => flusher
                .wait_durable(self.partition, end)
                .await
                .map_err(|e| (code::COORDINATOR_NOT_AVAILABLE, e.to_string())),
            Wait::Commit(_, rx) => match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(WriteError::Refused(error))) => Err((error, "refused by the producer state".into())),
                Ok(Err(WriteError::Failed(m))) => Err((code::NOT_COORDINATOR, m)),
                Err(_) => Err((code::NOT_COORDINATOR, "the coordinator stopped".into())),
            },
        }
    }
}

/// An offset committed in a transaction that has not ended yet.
#[derive(Debug, Clone)]
pub(crate) struct PendingTxnOffset {
    pub(crate) offsets_partition: i32,
    pub(crate) group: String,
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) committed: Committed,
}

/// The group coordinator of this broker.
pub(crate) struct GroupCoordinator {
    inner: Mutex<Inner>,
    loaded: AtomicBool,
    broker: Arc<Broker>,
    flusher: Flusher,
    /// Partitions of `__consumer_offsets`.
    partitions: AtomicI32,
    /// Cluster mode: the task that hands records to the Raft groups in order.
    raft_writes: OnceLock<OrderedWriter>,
}

fn classic_config(c: &BrokerConfig) -> ClassicConfig {
    ClassicConfig {
        session_timeout_min_ms: c.i64("group.min.session.timeout.ms").clamp(0, i64::from(i32::MAX)) as i32,
        session_timeout_max_ms: c.i64("group.max.session.timeout.ms").clamp(0, i64::from(i32::MAX)) as i32,
        initial_rebalance_delay_ms: c.i64("group.initial.rebalance.delay.ms").max(0),
        group_size_max: c.i64("group.max.size").max(1) as usize,
    }
}

fn consumer_config(c: &BrokerConfig) -> ConsumerGroupConfig {
    let as_i32 = |name: &str| c.i64(name).clamp(1, i64::from(i32::MAX)) as i32;
    ConsumerGroupConfig {
        session_timeout_ms: as_i32("group.consumer.session.timeout.ms"),
        heartbeat_interval_ms: as_i32("group.consumer.heartbeat.interval.ms"),
        max_size: as_i32("group.consumer.max.size") as usize,
        ..ConsumerGroupConfig::default()
    }
}

impl GroupCoordinator {
    /// A coordinator that answers COORDINATOR_LOAD_IN_PROGRESS until [`GroupCoordinator::start`].
    pub(crate) fn new(broker: Arc<Broker>, flusher: Flusher) -> Arc<GroupCoordinator> {
        let (cfg, consumer_cfg, partitions) = {
            let c = broker.config.read();
            (classic_config(&c), consumer_config(&c), c.i64("offsets.topic.num.partitions").clamp(1, 100_000) as i32)
        };
        Arc::new(GroupCoordinator {
            inner: Mutex::new(Inner {
                cfg,
                groups: HashMap::new(),
                consumer: ConsumerGroups::new(consumer_cfg, now_ms() as u64),
                offsets: Offsets::default(),
                joins: HashMap::new(),
                syncs: HashMap::new(),
                next_req: 1,
                last_expiry_ms: now_ms(),
                pending_txn: HashMap::new(),
                loads: Vec::new(),
                markers_while_loading: Vec::new(),
            }),
            loaded: AtomicBool::new(false),
            broker,
            flusher,
            partitions: AtomicI32::new(partitions),
            raft_writes: OnceLock::new(),
        })
    }

    /// Starts the coordinator: [`GroupCoordinator::start`] on a single node. In a cluster it
    /// returns at once and, in the background, makes sure the replicated `__consumer_offsets`
    /// exists; partitions are then loaded as this node comes to lead them (see
    /// [`GroupCoordinator::follow_leadership`]).
    pub(crate) async fn open(self: Arc<Self>, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        if self.broker.cluster.get().is_none() {
            let this = self.clone();
            return tokio::task::spawn_blocking(move || this.start()).await?;
        }
        tokio::spawn(async move {
            if let Err(e) = self.replicate_offsets_topic(stop).await {
                tracing::error!(error = %e, "opening the replicated {OFFSETS_TOPIC} failed");
            }
        });
        Ok(())
    }

    /// Cluster mode: creates `__consumer_offsets` through the metadata group unless it exists
    /// (as CreateTopics does: the cluster's topic id, every node a replica), waits until it is
    /// open here, and starts the writer task.
    async fn replicate_offsets_topic(self: Arc<Self>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let cluster = self.broker.cluster.get().cloned().context("not in a cluster")?;
        let (wanted, configs) = self.offsets_topic_config();
        let Some(topic) = replicate(&self.broker, &cluster, OFFSETS_TOPIC, (wanted, -1), configs, &mut stop).await
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
            "{OFFSETS_TOPIC} replicated; coordinating the groups of the partitions led here"
        );
        Ok(())
    }

    /// The partition count and configs `__consumer_offsets` is created with.
    fn offsets_topic_config(&self) -> (u32, BTreeMap<String, String>) {
        let segment_bytes = self.broker.config.read().i64("offsets.topic.segment.bytes");
        (self.partitions.load(Ordering::Acquire) as u32, compacted(segment_bytes))
    }

    /// Creates `__consumer_offsets` if missing, replays every partition of it (blocking I/O),
    /// then starts serving group requests.
    pub(crate) fn start(&self) -> anyhow::Result<()> {
        let (wanted, configs) = self.offsets_topic_config();
        let topic = self.broker.ensure_internal_topic(OFFSETS_TOPIC, wanted, configs)?;
        // An existing topic keeps its partition count, whatever the config says now.
        self.partitions.store(topic.partition_count() as i32, Ordering::Release);
        let mut loaded = Loaded::default();
        topic.replay(|p, bytes| loaded.apply_batches(p.index, bytes))?;
        let (ngroups, noffsets, nconsumer) =
            (loaded.groups.len(), loaded.offsets.groups().count(), loaded.consumer.len());
        install(&mut self.inner.lock(), loaded, now_ms());
        tracing::info!(records = nconsumer, "replayed KIP-848 consumer group records");
        self.loaded.store(true, Ordering::Release);
        tracing::info!(groups = ngroups, groups_with_offsets = noffsets, "loaded {OFFSETS_TOPIC}");
        Ok(())
    }

    /// Ticks the state machines every 100 ms until `shutdown`.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if self.loaded.load(Ordering::Acquire) {
                if self.raft_writes.get().is_some() {
                    self.follow_leadership();
                }
                self.tick(now_ms());
            }
        }
    }

    /// The one place that decides whether this node coordinates `group`: it must lead the
    /// group's `__consumer_offsets` partition (a single node leads all of them) and have loaded it.
    pub(crate) fn check(&self, group: &str) -> Result<(), i16> {
        self.check_in(&self.inner.lock(), group)
    }

    /// [`GroupCoordinator::check`] under the lock: every request that changes a group checks
    /// again here, so a partition unloaded since the handler's check is not written to.
    fn check_in(&self, inner: &Inner, group: &str) -> Result<(), i16> {
        if self.raft_writes.get().is_none() {
            if self.broker.cluster.get().is_some() {
                // A cluster node before `__consumer_offsets` exists.
                return Err(code::NOT_COORDINATOR);
            }
            return if self.loaded.load(Ordering::Acquire) { Ok(()) } else { Err(code::COORDINATOR_LOAD_IN_PROGRESS) };
        }
        check_led(&self.broker, OFFSETS_TOPIC, self.partition_of(group), &inner.loads)
    }

    /// Cluster mode, every tick: loads the partitions this node has come to lead (in a new
    /// term) and unloads those it no longer leads.
    fn follow_leadership(self: &Arc<Self>) {
        let mut inner = self.inner.lock();
        for (p, step) in leadership_changes(&self.broker, OFFSETS_TOPIC, &inner.loads) {
            self.unload(&mut inner, p.index);
            match step {
                Step::Load(t) => {
                    inner.loads[p.index as usize] = Load::Loading(t);
                    tokio::spawn(self.clone().load_partition(p, t));
                }
                _ => tracing::info!(partition = p.index, "no longer leading; unloaded its groups"),
            }
        }
    }

    /// Reads partition `p`'s committed records and serves its groups, unless leadership moved
    /// meanwhile. Requests for its groups get COORDINATOR_LOAD_IN_PROGRESS until then.
    async fn load_partition(self: Arc<Self>, p: Arc<Partition>, term: i32) {
        let started = std::time::Instant::now();
        let reading = p.clone();
        let read = tokio::task::spawn_blocking(move || load_committed(&reading)).await;
        let loaded = match read.unwrap_or_else(|e| Err(e.to_string())) {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::warn!(partition = p.index, error, "loading an offsets partition failed; retrying");
                let mut inner = self.inner.lock();
                if inner.loads.get(p.index as usize) == Some(&Load::Loading(term)) {
                    inner.loads[p.index as usize] = Load::Unloaded;
                }
                return;
            }
        };
        let mut inner = self.inner.lock();
        if inner.loads.get(p.index as usize) != Some(&Load::Loading(term)) {
            return;
        }
        let groups = loaded.groups.len();
        install(&mut inner, loaded, now_ms());
        inner.loads[p.index as usize] = Load::Loaded(term);
        let (early, rest) = std::mem::take(&mut inner.markers_while_loading).into_iter().partition(|m| m.0 == p.index);
        inner.markers_while_loading = rest;
        for (partition, producer_id, commit) in early {
            complete_pending(&mut inner, partition, producer_id, commit);
        }
        tracing::info!(
            partition = p.index,
            term,
            groups,
            ms = started.elapsed().as_millis() as u64,
            "leading an offsets partition; loaded its groups"
        );
    }

    /// Forgets every group of offsets partition `p` and answers its parked requests
    /// NOT_COORDINATOR (their clients find the new coordinator).
    fn unload(&self, inner: &mut Inner, p: i32) {
        let n = self.partitions.load(Ordering::Acquire);
        let here = |id: &str| store::partition_for(id, n) == p;
        inner.groups.retain(|id, _| !here(id));
        let offset_groups: Vec<String> = inner.offsets.groups().filter(|id| here(id)).cloned().collect();
        for id in offset_groups {
            inner.offsets.remove_group(&id);
        }
        inner.consumer.forget(here);
        for pending in inner.pending_txn.values_mut() {
            pending.retain(|o| o.offsets_partition != p);
        }
        inner.pending_txn.retain(|_, pending| !pending.is_empty());
        inner.markers_while_loading.retain(|m| m.0 != p);
        let joins: Vec<ReqId> = inner.joins.iter().filter(|(_, (g, _))| here(g)).map(|(r, _)| *r).collect();
        for r in joins {
            if let Some((_, tx)) = inner.joins.remove(&r) {
                let _ = tx.send(JoinResult::error(code::NOT_COORDINATOR, ""));
            }
        }
        let syncs: Vec<ReqId> = inner.syncs.iter().filter(|(_, (g, _))| here(g)).map(|(r, _)| *r).collect();
        for r in syncs {
            if let Some((_, tx)) = inner.syncs.remove(&r) {
                let _ = tx.send(sync_error(code::NOT_COORDINATOR));
            }
        }
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
            tracing::warn!(partition = p, term, "a coordinator write failed; reloading the partition's groups");
        }
    }

    fn offsets_partition(&self, group: &str) -> Option<Arc<Partition>> {
        self.broker
            .topic(OFFSETS_TOPIC)?
            .partition(store::partition_for(group, self.partitions.load(Ordering::Acquire)))
    }

    /// Appends records for `group` to its partition (in a cluster: queues them for its Raft
    /// group, in this order); returns what to wait for.
    fn append(&self, group: &str, records: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<Written, String> {
        self.append_as(group, records, None)
    }

    /// `append`, as a transactional batch of `producer` (id, epoch) when given.
    fn append_as(
        &self,
        group: &str,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
        producer: Option<(i64, i16)>,
    ) -> Result<Written, String> {
        if records.is_empty() {
            return Err("nothing to append".into());
        }
        let partition = self.offsets_partition(group).ok_or_else(|| format!("{OFFSETS_TOPIC} partition missing"))?;
        let now = now_ms();
        let recs: Vec<_> = records.iter().map(|(k, v)| (Some(&k[..]), v.as_deref())).collect();
        let mut batch = creek_protocol::batch::build_batch(0, now, &recs);
        if let Some((pid, epoch)) = producer {
            creek_protocol::batch::set_producer(&mut batch, pid, epoch, -1, true);
        }
        if let Some(writer) = self.raft_writes.get() {
            let term = partition.replica.get().and_then(|r| led_term(&r)).ok_or("not leading the partition")?;
            let rx = writer.write(partition.clone(), term, batch)?;
            return Ok(Written { partition, wait: Wait::Commit(term, rx) });
        }
        let info = partition.log.lock().append(&mut batch, partition.leader_epoch, now).map_err(|e| e.to_string())?;
        self.broker.appended.send_modify(|n| *n = n.wrapping_add(1));
        Ok(Written { partition, wait: Wait::Flush(info.last_offset + 1) })
    }

    /// Appends the group's metadata record; returns what to wait for to make it durable.
    fn persist_group(&self, g: &ClassicGroup) -> Option<Written> {
        let record = (store::group_key(&g.id), Some(store::group_value(&g.stored())));
        match self.append(&g.id, &[record]) {
            Ok(wait) => Some(wait),
            Err(e) => {
                tracing::warn!(group = %g.id, error = %e, "could not store group metadata");
                None
            }
        }
    }

    /// Carries out a state machine's outputs. The group's record is appended first; answers
    /// produced by the same step are sent only once it is durable, so a member never acts on a
    /// generation or assignment a crash could take back (as Kafka answers SyncGroup after its
    /// group write). In a cluster a record that did not commit turns those answers into
    /// NOT_COORDINATOR (the partition is reloaded from the log meanwhile).
    fn apply(&self, inner: &mut Inner, group: &str, outputs: Vec<Output>) {
        let mut wait = None;
        if outputs.iter().any(|o| matches!(o, Output::Persist))
            && let Some(g) = inner.groups.get(group)
        {
            wait = self.persist_group(g);
        }
        let mut answers: Vec<Box<dyn FnOnce(Option<i16>) + Send>> = Vec::new();
        for o in outputs {
            match o {
                Output::Join(req, r) => {
                    if let Some((_, tx)) = inner.joins.remove(&req) {
                        answers.push(Box::new(move |failed| {
                            let r = match failed {
                                Some(error) => JoinResult::error(error, &r.member_id),
                                None => r,
                            };
                            let _ = tx.send(r);
                        }));
                    }
                }
                Output::Sync(req, r) => {
                    if let Some((_, tx)) = inner.syncs.remove(&req) {
                        answers.push(Box::new(move |failed| {
                            let _ = tx.send(failed.map_or(r, sync_error));
                        }));
                    }
                }
                Output::Persist => {}
            }
        }
        match wait {
            Some(written) if !answers.is_empty() => {
                let flusher = self.flusher.clone();
                let group = group.to_string();
                tokio::spawn(async move {
                    let failed = match written.durable(&flusher).await {
                        Ok(()) => None,
                        Err((error, e)) => {
                            tracing::warn!(group, error = %e, "group metadata not durable");
                            // A single node answers anyway, as before: its record is in the log.
                            (error == code::NOT_COORDINATOR).then_some(error)
                        }
                    };
                    answers.into_iter().for_each(|answer| answer(failed));
                });
            }
            _ => answers.into_iter().for_each(|answer| answer(None)),
        }
    }

    pub(crate) async fn join(&self, group: &str, j: JoinRequest) -> JoinResult {
        let rx = {
            let mut guard = self.inner.lock();
            let inner: &mut Inner = &mut guard;
            if let Err(error) = self.check_in(inner, group) {
                return JoinResult::error(error, &j.member_id);
            }
            let now = now_ms();
            match inner.consumer.state(group) {
                None => {}
                // An empty consumer group gives way to a classic one, as in Kafka.
                Some("Empty") => match inner.consumer.delete_group(group) {
                    Ok(records) => {
                        self.append_consumer_records(&records);
                    }
                    Err((error, _)) => return JoinResult::error(error, &j.member_id),
                },
                Some(_) => return JoinResult::error(code::INCONSISTENT_GROUP_PROTOCOL, &j.member_id),
            }
            if !inner.groups.contains_key(group) {
                if !j.member_id.is_empty() {
                    return JoinResult::error(code::UNKNOWN_MEMBER_ID, &j.member_id);
                }
                let g = ClassicGroup::new(group, now).with_initial_delay(inner.cfg.initial_rebalance_delay_ms);
                inner.groups.insert(group.to_string(), g);
            }
            let req = inner.next_req;
            inner.next_req += 1;
            let (tx, rx) = oneshot::channel();
            inner.joins.insert(req, (group.to_string(), tx));
            let g = inner.groups.get_mut(group).expect("inserted");
            let out = g.join(req, j, &inner.cfg, now);
            self.apply(inner, group, out);
            rx
        };
        rx.await.unwrap_or_else(|_| JoinResult::error(code::COORDINATOR_NOT_AVAILABLE, ""))
    }

    pub(crate) async fn sync(&self, group: &str, s: SyncRequest) -> SyncResult {
        let rx = {
            let mut inner = self.inner.lock();
            if let Err(error) = self.check_in(&inner, group) {
                return sync_error(error);
            }
            let req = inner.next_req;
            inner.next_req += 1;
            let Some(g) = inner.groups.get_mut(group) else { return sync_error(code::UNKNOWN_MEMBER_ID) };
            let out = g.sync(req, s, now_ms());
            let (tx, rx) = oneshot::channel();
            inner.syncs.insert(req, (group.to_string(), tx));
            self.apply(&mut inner, group, out);
            rx
        };
        rx.await.unwrap_or_else(|_| sync_error(code::COORDINATOR_NOT_AVAILABLE))
    }

    pub(crate) fn heartbeat(&self, group: &str, generation: i32, member_id: &str, instance_id: Option<&str>) -> i16 {
        let mut inner = self.inner.lock();
        if let Err(error) = self.check_in(&inner, group) {
            return error;
        }
        match inner.groups.get_mut(group) {
            Some(g) => g.heartbeat(generation, member_id, instance_id, now_ms()),
            None => code::UNKNOWN_MEMBER_ID,
        }
    }

    /// LeaveGroup: one code per leaving member.
    pub(crate) fn leave(&self, group: &str, members: &[(String, Option<String>)]) -> Vec<i16> {
        let mut inner = self.inner.lock();
        if let Err(error) = self.check_in(&inner, group) {
            return vec![error; members.len()];
        }
        let Some(g) = inner.groups.get_mut(group) else { return vec![code::UNKNOWN_MEMBER_ID; members.len()] };
        let (codes, out) = g.leave(members, now_ms());
        self.apply(&mut inner, group, out);
        codes
    }

    /// OffsetCommit: validates membership, appends the commits, and answers once they are durable.
    pub(crate) async fn commit(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        parts: Vec<CommitPart>,
    ) -> Vec<CommitPart> {
        self.commit_as(group, generation, member_id, instance_id, parts, None).await
    }

    /// OffsetCommit, or TxnOffsetCommit when `producer` (id, epoch) is given: then the commits
    /// are written as that producer's transactional batch and stay pending until its marker.
    pub(crate) async fn commit_as(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        mut parts: Vec<CommitPart>,
        producer: Option<(i64, i16)>,
    ) -> Vec<CommitPart> {
        let (written, now) = {
            let mut inner = self.inner.lock();
            if let Err(e) = self.check_in(&inner, group) {
                for p in parts.iter_mut().filter(|p| p.error == code::NONE) {
                    p.error = e;
                }
                return parts;
            }
            let now = now_ms();
            let delay = inner.cfg.initial_rebalance_delay_ms;
            let consumer_group = inner.consumer.state(group).is_some();
            let verdict = match inner.groups.get_mut(group) {
                _ if consumer_group => {
                    inner.consumer.validate_offset_commit(group, member_id, generation).map_err(|(e, _)| e)
                }
                Some(g) => g.check_commit(generation, member_id, instance_id, now),
                None if generation < 0 => {
                    inner.groups.insert(group.to_string(), ClassicGroup::new(group, now).with_initial_delay(delay));
                    Ok(())
                }
                None => Err(code::ILLEGAL_GENERATION),
            };
            if let Err(e) = verdict {
                for p in parts.iter_mut().filter(|p| p.error == code::NONE) {
                    p.error = e;
                }
                return parts;
            }
            let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = parts
                .iter()
                .filter(|p| p.error == code::NONE)
                .map(|p| {
                    let c = committed(p, now);
                    (store::offset_key(group, &p.topic, p.partition), Some(store::offset_value(&c)))
                })
                .collect();
            if records.is_empty() {
                return parts;
            }
            match self.append_as(group, &records, producer) {
                Ok(w) => {
                    // A replicated commit shows only once a quorum holds it (below): OffsetFetch
                    // never returns an offset a failover could take back.
                    if matches!(w.wait, Wait::Flush(_)) {
                        self.record_commits(&mut inner, group, &parts, producer, w.partition.index, now);
                    }
                    (w, now)
                }
                Err(e) => {
                    tracing::warn!(group, error = %e, "offset commit append failed");
                    let error = if self.raft_writes.get().is_some() {
                        code::NOT_COORDINATOR
                    } else {
                        code::COORDINATOR_NOT_AVAILABLE
                    };
                    for p in parts.iter_mut().filter(|p| p.error == code::NONE) {
                        p.error = error;
                    }
                    return parts;
                }
            }
        };
        let replicated = match written.wait {
            Wait::Commit(term, _) => Some((written.partition.index, term)),
            Wait::Flush(_) => None,
        };
        match written.durable(&self.flusher).await {
            Ok(()) => {
                if let Some((index, term)) = replicated {
                    let mut inner = self.inner.lock();
                    // Unless the partition was unloaded meanwhile: its next load reads this.
                    if inner.loads.get(index as usize) == Some(&Load::Loaded(term)) {
                        self.record_commits(&mut inner, group, &parts, producer, index, now);
                    }
                }
            }
            Err((error, e)) => {
                tracing::warn!(group, error = %e, "offset commit not durable");
                for p in parts.iter_mut().filter(|p| p.error == code::NONE) {
                    p.error = error;
                }
            }
        }
        parts
    }

    /// Makes the accepted parts of a commit visible: committed offsets, or a transaction's
    /// pending ones.
    fn record_commits(
        &self,
        inner: &mut Inner,
        group: &str,
        parts: &[CommitPart],
        producer: Option<(i64, i16)>,
        offsets_partition: i32,
        now: i64,
    ) {
        for p in parts.iter().filter(|p| p.error == code::NONE) {
            let c = committed(p, now);
            match producer {
                None => inner.offsets.commit(group, &p.topic, p.partition, c),
                Some((pid, _)) => inner.pending_txn.entry(pid).or_default().push(PendingTxnOffset {
                    offsets_partition,
                    group: group.to_string(),
                    topic: p.topic.clone(),
                    partition: p.partition,
                    committed: c,
                }),
            }
        }
    }

    /// A transaction marker for `producer_id` was written to offsets partition `partition`: its
    /// pending offsets there become committed (COMMIT) or are dropped (ABORT).
    pub(crate) fn complete_txn(&self, partition: i32, producer_id: i64, commit: bool) {
        let mut inner = self.inner.lock();
        if matches!(inner.loads.get(partition as usize), Some(Load::Loading(_))) {
            inner.markers_while_loading.push((partition, producer_id, commit));
            return;
        }
        complete_pending(&mut inner, partition, producer_id, commit);
    }

    /// Whether `group` has an offset for (topic, partition) pending in an open transaction
    /// (OffsetFetch with `require_stable` answers UNSTABLE_OFFSET_COMMIT for it).
    pub(crate) fn has_pending_txn_offset(&self, group: &str, topic: &str, partition: i32) -> bool {
        let inner = self.inner.lock();
        inner.pending_txn.values().flatten().any(|p| p.group == group && p.topic == topic && p.partition == partition)
    }

    /// The `__consumer_offsets` partition that holds `group`.
    pub(crate) fn partition_of(&self, group: &str) -> i32 {
        store::partition_for(group, self.partitions.load(Ordering::Acquire))
    }

    /// OffsetFetch: the committed offsets of `group`, all of them when `wanted` is `None`.
    pub(crate) fn fetch(&self, group: &str, wanted: Option<Vec<(String, Vec<i32>)>>) -> Fetched {
        let inner = self.inner.lock();
        match wanted {
            Some(topics) => topics
                .into_iter()
                .map(|(t, parts)| {
                    let got = parts.into_iter().map(|p| (p, inner.offsets.get(group, &t, p).cloned())).collect();
                    (t, got)
                })
                .collect(),
            None => {
                let mut out: Fetched = Vec::new();
                for ((t, p), c) in inner.offsets.of_group(group) {
                    match out.last_mut() {
                        Some((lt, v)) if lt == t => v.push((*p, Some(c.clone()))),
                        _ => out.push((t.clone(), vec![(*p, Some(c.clone()))])),
                    }
                }
                out
            }
        }
    }

    /// ListGroups: (group id, protocol type, state).
    pub(crate) fn list(&self) -> Vec<(String, String, &'static str)> {
        let inner = self.inner.lock();
        let mut out: Vec<_> = inner
            .groups
            .values()
            .filter(|g| g.state != GroupState::Dead)
            .map(|g| (g.id.clone(), g.protocol_type.clone().unwrap_or_default(), g.state.name()))
            .collect();
        out.sort();
        out
    }

    /// ListGroups' KIP-848 groups: (group id, state).
    pub(crate) fn list_consumer(&self) -> Vec<(String, &'static str)> {
        self.inner.lock().consumer.list()
    }

    /// Every topic's id and partition count, for KIP-848 assignment. Its version is a content
    /// hash, so groups re-resolve subscriptions only when topics change.
    fn topics_snapshot(&self) -> TopicsSnapshot {
        let topics = self
            .broker
            .topics()
            .into_iter()
            .map(|t| (t.name.clone(), TopicInfo { id: t.id, partitions: t.partition_count() as i32 }))
            .collect();
        TopicsSnapshot::new(topics)
    }

    /// Appends KIP-848 records to each group's partition; returns what to wait for.
    fn append_consumer_records(&self, records: &[super::consumer::Record]) -> Vec<Written> {
        let mut by_group: BTreeMap<String, Vec<(Vec<u8>, Option<Vec<u8>>)>> = BTreeMap::new();
        for r in records {
            by_group.entry(consumer_group_id(r).to_string()).or_default().push(consumer_store::encode(r));
        }
        let mut waits = Vec::new();
        for (group, recs) in by_group {
            match self.append(&group, &recs) {
                Ok(w) => waits.push(w),
                Err(e) => tracing::warn!(group, error = %e, "could not store consumer group records"),
            }
        }
        waits
    }

    /// ConsumerGroupHeartbeat: answered once the records it produced are durable.
    pub(crate) async fn consumer_heartbeat(&self, hb: Heartbeat) -> HeartbeatResponse {
        if let Err(error) = self.check(&hb.group_id) {
            return HeartbeatResponse { error_code: error, member_epoch: -1, ..HeartbeatResponse::default() };
        }
        let snapshot = self.topics_snapshot();
        let (response, waits) = {
            let mut guard = self.inner.lock();
            let inner: &mut Inner = &mut guard;
            if let Err(error) = self.check_in(inner, &hb.group_id) {
                return HeartbeatResponse { error_code: error, member_epoch: -1, ..HeartbeatResponse::default() };
            }
            let classic = match inner.groups.get(&hb.group_id) {
                None => ClassicPresence::Absent,
                Some(g) if g.state == GroupState::Empty || g.state == GroupState::Dead => ClassicPresence::Empty,
                Some(_) => ClassicPresence::Active,
            };
            let out = inner.consumer.heartbeat(&hb, classic, &snapshot, now_ms());
            if out.classic_replaced {
                inner.groups.remove(&hb.group_id);
            }
            (out.response, self.append_consumer_records(&out.records))
        };
        for written in waits {
            if let Err((error, e)) = written.durable(&self.flusher).await {
                tracing::warn!(group = %hb.group_id, error = %e, "consumer group records not durable");
                return HeartbeatResponse { error_code: error, member_epoch: -1, ..HeartbeatResponse::default() };
            }
        }
        response
    }

    /// OffsetFetch v9+ with a member of a KIP-848 group: the member must exist at that epoch
    /// (UNKNOWN_MEMBER_ID / STALE_MEMBER_EPOCH otherwise). Other groups are not checked.
    pub(crate) fn check_fetch_member(&self, group: &str, member_id: &str, member_epoch: i32) -> Result<(), i16> {
        let inner = self.inner.lock();
        if inner.consumer.state(group).is_none() {
            return Ok(());
        }
        inner.consumer.validate_offset_fetch(group, member_id, member_epoch).map_err(|(code, _)| code)
    }

    /// Whether `group` is a KIP-848 consumer group (DescribeGroups answers GROUP_ID_NOT_FOUND
    /// for those, as Kafka does, so admin clients fall back to ConsumerGroupDescribe).
    pub(crate) fn is_consumer_group(&self, group: &str) -> bool {
        self.inner.lock().consumer.state(group).is_some()
    }

    /// ConsumerGroupDescribe, one result per id.
    pub(crate) fn consumer_describe(&self, ids: &[String]) -> Vec<DescribeResult> {
        let ids_ref: Vec<&str> = ids.iter().map(String::as_str).collect();
        let inner = self.inner.lock();
        let checked: Vec<Option<i16>> = ids.iter().map(|id| self.check_in(&inner, id).err()).collect();
        let described = inner.consumer.describe(&ids_ref, |id| inner.groups.contains_key(id));
        described
            .into_iter()
            .zip(checked)
            .map(|(d, err)| match err {
                Some(e) => Err((e, String::new())),
                None => d,
            })
            .collect()
    }

    pub(crate) fn describe(&self, group: &str) -> Described {
        let inner = self.inner.lock();
        let Some(g) = inner.groups.get(group) else {
            return Described {
                state: "Dead",
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            };
        };
        let stable = g.state == GroupState::Stable;
        let protocol = if stable { g.protocol.clone().unwrap_or_default() } else { String::new() };
        Described {
            state: g.state.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            members: g
                .member_list()
                .map(|m| {
                    let (meta, asg) = if stable {
                        (m.metadata(&protocol), m.assignment.clone())
                    } else {
                        (Bytes::new(), Bytes::new())
                    };
                    (m.id.clone(), m.instance_id.clone(), m.client_id.clone(), m.client_host.clone(), meta, asg)
                })
                .collect(),
        }
    }

    /// DeleteGroups: one code per group.
    pub(crate) async fn delete_group(&self, group: &str) -> i16 {
        let written = {
            let mut inner = self.inner.lock();
            match self.delete_group_in(&mut inner, group) {
                Ok(written) => written,
                Err(error) => return error,
            }
        };
        self.replicated(written).await.err().unwrap_or(code::NONE)
    }

    fn delete_group_in(&self, inner: &mut Inner, group: &str) -> Result<Written, i16> {
        self.check_in(inner, group)?;
        match inner.groups.get(group) {
            None => return Err(code::GROUP_ID_NOT_FOUND),
            Some(g) if g.state == GroupState::Dead => return Err(code::GROUP_ID_NOT_FOUND),
            Some(g) if g.state != GroupState::Empty => return Err(code::NON_EMPTY_GROUP),
            Some(_) => {}
        }
        let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            inner.offsets.of_group(group).map(|((t, p), _)| (store::offset_key(group, t, *p), None)).collect();
        records.push((store::group_key(group), None));
        let written = self.append(group, &records).map_err(|e| {
            tracing::warn!(group, error = %e, "could not write group tombstones");
            self.append_error()
        })?;
        inner.offsets.remove_group(group);
        inner.groups.remove(group);
        Ok(written)
    }

    /// The code for a write that could not even be queued: NOT_COORDINATOR in a cluster (the
    /// client finds the coordinator again), COORDINATOR_NOT_AVAILABLE on a single node.
    fn append_error(&self) -> i16 {
        if self.raft_writes.get().is_some() { code::NOT_COORDINATOR } else { code::COORDINATOR_NOT_AVAILABLE }
    }

    /// In a cluster, waits until a quorum holds `written` (a failed write also unloads its
    /// partition, see [`GroupCoordinator::write_failed`]); a single node answers at once, as it
    /// always has, since the record is in its log.
    async fn replicated(&self, written: Written) -> Result<(), i16> {
        if matches!(written.wait, Wait::Flush(_)) {
            return Ok(());
        }
        written.durable(&self.flusher).await.map_err(|(error, e)| {
            tracing::warn!(error = %e, "coordinator record not committed");
            error
        })
    }

    /// OffsetDelete: a top-level code, or one code per (topic, partition).
    pub(crate) async fn delete_offsets(
        &self,
        group: &str,
        parts: Vec<(String, i32, i16)>,
    ) -> Result<Vec<(String, i32, i16)>, i16> {
        let (out, written) = {
            let mut inner = self.inner.lock();
            self.delete_offsets_in(&mut inner, group, parts)?
        };
        if let Some(written) = written {
            self.replicated(written).await?;
        }
        Ok(out)
    }

    fn delete_offsets_in(
        &self,
        inner: &mut Inner,
        group: &str,
        parts: Vec<(String, i32, i16)>,
    ) -> Result<(PartCodes, Option<Written>), i16> {
        self.check_in(inner, group)?;
        let Some(g) = inner.groups.get(group) else { return Err(code::GROUP_ID_NOT_FOUND) };
        if g.state == GroupState::Dead {
            return Err(code::GROUP_ID_NOT_FOUND);
        }
        if g.state != GroupState::Empty && g.protocol_type.as_deref() != Some("consumer") {
            return Err(code::NON_EMPTY_GROUP);
        }
        let out: Vec<(String, i32, i16)> = parts
            .into_iter()
            .map(|(t, p, e)| {
                let e = if e == code::NONE && g.subscribed_to(&t) { code::GROUP_SUBSCRIBED_TO_TOPIC } else { e };
                (t, p, e)
            })
            .collect();
        let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = out
            .iter()
            .filter(|(t, p, e)| *e == code::NONE && inner.offsets.get(group, t, *p).is_some())
            .map(|(t, p, _)| (store::offset_key(group, t, *p), None))
            .collect();
        if records.is_empty() {
            return Ok((out, None));
        }
        let written = self.append(group, &records).map_err(|e| {
            tracing::warn!(group, error = %e, "could not write offset tombstones");
            self.append_error()
        })?;
        for (t, p, e) in &out {
            if *e == code::NONE {
                inner.offsets.remove(group, t, *p);
            }
        }
        Ok((out, Some(written)))
    }

    /// Advances every group's clock and expires offsets past `offsets.retention.minutes`.
    pub(crate) fn tick(&self, now: i64) {
        let mut inner = self.inner.lock();
        let out = inner.consumer.tick(now);
        for removed in &out.removed {
            tracing::info!(group = %removed.group_id, member = %removed.member_id, reason = ?removed.reason, "consumer group member removed");
        }
        self.append_consumer_records(&out.records);
        let ids: Vec<String> = inner.groups.keys().cloned().collect();
        for id in &ids {
            let out = inner.groups.get_mut(id).expect("listed").tick(now);
            if !out.is_empty() {
                self.apply(&mut inner, id, out);
            }
        }
        let (retention_ms, interval_ms) = {
            let c = self.broker.config.read();
            (c.i64("offsets.retention.minutes").saturating_mul(60_000), c.i64("offsets.retention.check.interval.ms"))
        };
        if now - inner.last_expiry_ms < interval_ms {
            return;
        }
        inner.last_expiry_ms = now;
        for id in ids {
            let Some(g) = inner.groups.get(&id) else { continue };
            if g.state != GroupState::Empty {
                continue;
            }
            // Standalone groups (no protocol) expire by commit time; others from when they emptied.
            let since = if g.protocol_type.is_none() { None } else { Some(g.state_since_ms) };
            let expired = inner.offsets.expired(&id, since, retention_ms, now);
            let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                expired.iter().map(|(t, p)| (store::offset_key(&id, t, *p), None)).collect();
            let dead = g.is_idle() && expired.len() == inner.offsets.of_group(&id).count();
            if dead {
                records.push((store::group_key(&id), None));
            }
            if records.is_empty() {
                continue;
            }
            if let Err(e) = self.append(&id, &records) {
                tracing::warn!(group = %id, error = %e, "could not expire offsets");
                continue;
            }
            for (t, p) in &expired {
                inner.offsets.remove(&id, t, *p);
            }
            if dead {
                inner.groups.remove(&id);
                tracing::info!(group = %id, expired = expired.len(), "removed expired group");
            }
        }
    }
}

fn consumer_group_id(r: &super::consumer::Record) -> &str {
    use super::consumer::Record;
    match r {
        Record::GroupMetadata { group_id, .. }
        | Record::MemberMetadata { group_id, .. }
        | Record::TargetAssignmentMetadata { group_id, .. }
        | Record::TargetAssignmentMember { group_id, .. }
        | Record::CurrentAssignment { group_id, .. } => group_id,
    }
}

/// The committed records of one offsets partition (see [`read_committed`]).
fn load_committed(p: &Partition) -> Result<Loaded, String> {
    let mut loaded = Loaded::default();
    read_committed(p, &mut |bytes| loaded.apply_batches(p.index, bytes))?;
    Ok(loaded)
}

/// Adds replayed groups, offsets and KIP-848 records to memory.
fn install(inner: &mut Inner, loaded: Loaded, now: i64) {
    let delay = inner.cfg.initial_rebalance_delay_ms;
    for (id, g) in loaded.groups {
        inner.groups.insert(id, ClassicGroup::restore(g, now).with_initial_delay(delay));
    }
    let offset_groups: Vec<String> = loaded.offsets.groups().cloned().collect();
    for id in offset_groups {
        inner.groups.entry(id.clone()).or_insert_with(|| ClassicGroup::new(&id, now).with_initial_delay(delay));
        for ((topic, partition), c) in loaded.offsets.of_group(&id) {
            inner.offsets.commit(&id, topic, *partition, c.clone());
        }
    }
    for ((offsets_partition, pid), entries) in loaded.pending_txn {
        inner.pending_txn.entry(pid).or_default().extend(entries.into_iter().map(|(group, topic, partition, c)| {
            PendingTxnOffset { offsets_partition, group, topic, partition, committed: c }
        }));
    }
    for r in &loaded.consumer {
        inner.consumer.replay(r, now);
    }
}

/// A marker of `producer_id` in offsets partition `partition`: its pending offsets there become
/// committed (COMMIT) or are dropped (ABORT).
fn complete_pending(inner: &mut Inner, partition: i32, producer_id: i64, commit: bool) {
    let Some(mut pending) = inner.pending_txn.remove(&producer_id) else { return };
    let (done, rest): (Vec<_>, Vec<_>) = pending.drain(..).partition(|p| p.offsets_partition == partition);
    if !rest.is_empty() {
        inner.pending_txn.insert(producer_id, rest);
    }
    if commit {
        for p in done {
            inner.offsets.commit(&p.group, &p.topic, p.partition, p.committed);
        }
    }
}

/// The offset a commit part stores.
fn committed(p: &CommitPart, now: i64) -> Committed {
    Committed { offset: p.offset, leader_epoch: p.leader_epoch, metadata: p.metadata.clone(), commit_ms: now }
}

fn sync_error(error: i16) -> SyncResult {
    SyncResult { error, protocol_type: None, protocol_name: None, assignment: Bytes::new() }
}
