//! The group coordinator's driver: owns the classic groups and committed offsets behind one
//! mutex, turns the state machines' outputs into answers for parked requests and records in
//! `__consumer_offsets`, loads that topic at startup, and ticks the clock every 100 ms.
//!
//! No lock is held across `.await`: parked JoinGroup/SyncGroup requests wait on oneshot
//! channels, and OffsetCommit waits for the flusher after the append, outside the lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

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
    joins: HashMap<ReqId, oneshot::Sender<JoinResult>>,
    syncs: HashMap<ReqId, oneshot::Sender<SyncResult>>,
    next_req: ReqId,
    last_expiry_ms: i64,
    /// Offsets committed inside open transactions, by producer id: (offsets partition, group,
    /// topic, partition, offset). They become committed offsets when a COMMIT marker for the
    /// producer lands in that offsets partition, and vanish on ABORT.
    pending_txn: HashMap<i64, Vec<PendingTxnOffset>>,
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
            }),
            loaded: AtomicBool::new(false),
            broker,
            flusher,
            partitions: AtomicI32::new(partitions),
        })
    }

    /// Creates `__consumer_offsets` if missing, replays every partition of it (blocking I/O),
    /// then starts serving group requests.
    pub(crate) fn start(&self) -> anyhow::Result<()> {
        let segment_bytes = self.broker.config.read().i64("offsets.topic.segment.bytes");
        let mut configs = BTreeMap::new();
        configs.insert("cleanup.policy".to_string(), "compact".to_string());
        configs.insert("segment.bytes".to_string(), segment_bytes.to_string());
        let wanted = self.partitions.load(Ordering::Acquire) as u32;
        let topic = self.broker.ensure_internal_topic(OFFSETS_TOPIC, wanted, configs)?;
        // An existing topic keeps its partition count, whatever the config says now.
        self.partitions.store(topic.partition_count() as i32, Ordering::Release);
        let mut loaded = Loaded::default();
        topic.replay(|p, bytes| loaded.apply_batches(p.index, bytes))?;
        let now = now_ms();
        let mut inner = self.inner.lock();
        let delay = inner.cfg.initial_rebalance_delay_ms;
        let (ngroups, noffsets) = (loaded.groups.len(), loaded.offsets.groups().count());
        for (id, g) in loaded.groups {
            inner.groups.insert(id, ClassicGroup::restore(g, now).with_initial_delay(delay));
        }
        let offset_groups: Vec<String> = loaded.offsets.groups().cloned().collect();
        for id in offset_groups {
            inner.groups.entry(id.clone()).or_insert_with(|| ClassicGroup::new(&id, now).with_initial_delay(delay));
        }
        inner.offsets = loaded.offsets;
        for ((offsets_partition, pid), entries) in loaded.pending_txn {
            inner.pending_txn.entry(pid).or_default().extend(entries.into_iter().map(
                |(group, topic, partition, c)| PendingTxnOffset {
                    offsets_partition,
                    group,
                    topic,
                    partition,
                    committed: c,
                },
            ));
        }
        let nconsumer = loaded.consumer.len();
        for r in &loaded.consumer {
            inner.consumer.replay(r, now);
        }
        drop(inner);
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
                self.tick(now_ms());
            }
        }
    }

    /// The one place that decides whether this node coordinates `group`: it must lead the
    /// group's `__consumer_offsets` partition (a single node leads all of them) and have loaded it.
    pub(crate) fn check(&self, group: &str) -> Result<(), i16> {
        if !self.leads(store::partition_for(group, self.partitions.load(Ordering::Acquire))) {
            return Err(code::NOT_COORDINATOR);
        }
        if !self.loaded.load(Ordering::Acquire) {
            return Err(code::COORDINATOR_LOAD_IN_PROGRESS);
        }
        Ok(())
    }

    /// Whether this node leads `__consumer_offsets` partition `partition`. A single node leads
    /// every partition; partition leadership (Raft) decides this later.
    fn leads(&self, _partition: i32) -> bool {
        // In a cluster, one node coordinates every group until coordinators follow partition
        // leadership (issue 5, item 6).
        self.broker.cluster.get().is_none_or(|c| c.coordinator() == c.node)
    }

    fn offsets_partition(&self, group: &str) -> Option<Arc<Partition>> {
        self.broker
            .topic(OFFSETS_TOPIC)?
            .partition(store::partition_for(group, self.partitions.load(Ordering::Acquire)))
    }

    /// Appends records for `group` to its partition; returns the partition and the end offset to
    /// wait for.
    fn append(&self, group: &str, records: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(Arc<Partition>, u64), String> {
        self.append_as(group, records, None)
    }

    /// `append`, as a transactional batch of `producer` (id, epoch) when given.
    fn append_as(
        &self,
        group: &str,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
        producer: Option<(i64, i16)>,
    ) -> Result<(Arc<Partition>, u64), String> {
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
        let info = partition.log.lock().append(&mut batch, partition.leader_epoch, now).map_err(|e| e.to_string())?;
        self.broker.appended.send_modify(|n| *n = n.wrapping_add(1));
        Ok((partition, info.last_offset + 1))
    }

    /// Appends the group's metadata record; returns what to wait for to make it durable.
    fn persist_group(&self, g: &ClassicGroup) -> Option<(Arc<Partition>, u64)> {
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
    /// group write).
    fn apply(&self, inner: &mut Inner, group: &str, outputs: Vec<Output>) {
        let mut wait = None;
        if outputs.iter().any(|o| matches!(o, Output::Persist))
            && let Some(g) = inner.groups.get(group)
        {
            wait = self.persist_group(g);
        }
        let mut answers: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
        for o in outputs {
            match o {
                Output::Join(req, r) => {
                    if let Some(tx) = inner.joins.remove(&req) {
                        answers.push(Box::new(move || {
                            let _ = tx.send(r);
                        }));
                    }
                }
                Output::Sync(req, r) => {
                    if let Some(tx) = inner.syncs.remove(&req) {
                        answers.push(Box::new(move || {
                            let _ = tx.send(r);
                        }));
                    }
                }
                Output::Persist => {}
            }
        }
        match wait {
            Some((partition, end)) if !answers.is_empty() => {
                let flusher = self.flusher.clone();
                let group = group.to_string();
                tokio::spawn(async move {
                    if let Err(e) = flusher.wait_durable(partition, end).await {
                        tracing::warn!(group, error = %e, "group metadata not durable");
                    }
                    answers.into_iter().for_each(|answer| answer());
                });
            }
            _ => answers.into_iter().for_each(|answer| answer()),
        }
    }

    pub(crate) async fn join(&self, group: &str, j: JoinRequest) -> JoinResult {
        let rx = {
            let mut guard = self.inner.lock();
            let inner: &mut Inner = &mut guard;
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
            inner.joins.insert(req, tx);
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
            let req = inner.next_req;
            inner.next_req += 1;
            let Some(g) = inner.groups.get_mut(group) else { return sync_error(code::UNKNOWN_MEMBER_ID) };
            let out = g.sync(req, s, now_ms());
            let (tx, rx) = oneshot::channel();
            inner.syncs.insert(req, tx);
            self.apply(&mut inner, group, out);
            rx
        };
        rx.await.unwrap_or_else(|_| sync_error(code::COORDINATOR_NOT_AVAILABLE))
    }

    pub(crate) fn heartbeat(&self, group: &str, generation: i32, member_id: &str, instance_id: Option<&str>) -> i16 {
        let mut inner = self.inner.lock();
        match inner.groups.get_mut(group) {
            Some(g) => g.heartbeat(generation, member_id, instance_id, now_ms()),
            None => code::UNKNOWN_MEMBER_ID,
        }
    }

    /// LeaveGroup: one code per leaving member.
    pub(crate) fn leave(&self, group: &str, members: &[(String, Option<String>)]) -> Vec<i16> {
        let mut inner = self.inner.lock();
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
        let wait = {
            let mut inner = self.inner.lock();
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
                    let c = Committed {
                        offset: p.offset,
                        leader_epoch: p.leader_epoch,
                        metadata: p.metadata.clone(),
                        commit_ms: now,
                    };
                    (store::offset_key(group, &p.topic, p.partition), Some(store::offset_value(&c)))
                })
                .collect();
            if records.is_empty() {
                return parts;
            }
            match self.append_as(group, &records, producer) {
                Ok(w) => {
                    let offsets_partition = w.0.index;
                    for p in parts.iter().filter(|p| p.error == code::NONE) {
                        let c = Committed {
                            offset: p.offset,
                            leader_epoch: p.leader_epoch,
                            metadata: p.metadata.clone(),
                            commit_ms: now,
                        };
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
                    w
                }
                Err(e) => {
                    tracing::warn!(group, error = %e, "offset commit append failed");
                    for p in parts.iter_mut().filter(|p| p.error == code::NONE) {
                        p.error = code::COORDINATOR_NOT_AVAILABLE;
                    }
                    return parts;
                }
            }
        };
        if let Err(e) = self.flusher.wait_durable(wait.0, wait.1).await {
            tracing::warn!(group, error = %e, "offset commit not durable");
            for p in parts.iter_mut().filter(|p| p.error == code::NONE) {
                p.error = code::COORDINATOR_NOT_AVAILABLE;
            }
        }
        parts
    }

    /// A transaction marker for `producer_id` was written to offsets partition `partition`: its
    /// pending offsets there become committed (COMMIT) or are dropped (ABORT).
    pub(crate) fn complete_txn(&self, partition: i32, producer_id: i64, commit: bool) {
        let mut inner = self.inner.lock();
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
    fn append_consumer_records(&self, records: &[super::consumer::Record]) -> Vec<(Arc<Partition>, u64)> {
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
        for (partition, end) in waits {
            if let Err(e) = self.flusher.wait_durable(partition, end).await {
                tracing::warn!(group = %hb.group_id, error = %e, "consumer group records not durable");
                return HeartbeatResponse {
                    error_code: code::COORDINATOR_NOT_AVAILABLE,
                    member_epoch: -1,
                    ..HeartbeatResponse::default()
                };
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
        let checked: Vec<Option<i16>> = ids.iter().map(|id| self.check(id).err()).collect();
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
    pub(crate) fn delete_group(&self, group: &str) -> i16 {
        let mut inner = self.inner.lock();
        match inner.groups.get(group) {
            None => return code::GROUP_ID_NOT_FOUND,
            Some(g) if g.state == GroupState::Dead => return code::GROUP_ID_NOT_FOUND,
            Some(g) if g.state != GroupState::Empty => return code::NON_EMPTY_GROUP,
            Some(_) => {}
        }
        let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            inner.offsets.of_group(group).map(|((t, p), _)| (store::offset_key(group, t, *p), None)).collect();
        records.push((store::group_key(group), None));
        if let Err(e) = self.append(group, &records) {
            tracing::warn!(group, error = %e, "could not write group tombstones");
            return code::COORDINATOR_NOT_AVAILABLE;
        }
        inner.offsets.remove_group(group);
        inner.groups.remove(group);
        code::NONE
    }

    /// OffsetDelete: a top-level code, or one code per (topic, partition).
    pub(crate) fn delete_offsets(
        &self,
        group: &str,
        parts: Vec<(String, i32, i16)>,
    ) -> Result<Vec<(String, i32, i16)>, i16> {
        let mut inner = self.inner.lock();
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
        if !records.is_empty() {
            if let Err(e) = self.append(group, &records) {
                tracing::warn!(group, error = %e, "could not write offset tombstones");
                return Err(code::COORDINATOR_NOT_AVAILABLE);
            }
            for (t, p, e) in &out {
                if *e == code::NONE {
                    inner.offsets.remove(group, t, *p);
                }
            }
        }
        Ok(out)
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

fn sync_error(error: i16) -> SyncResult {
    SyncResult { error, protocol_type: None, protocol_name: None, assignment: Bytes::new() }
}
