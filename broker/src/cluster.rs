//! Cluster mode (issue 5): the nodes listed in `internal.peers` form one cluster. This module
//! starts the internal RPC and the metadata group, registers the broker, and keeps the local
//! topics and partition Raft groups in step with the applied metadata.
//!
//! - **Cluster id**: derived from the peer list, so every node of a cluster computes the same
//!   one with no bootstrap step, and nodes configured for different clusters refuse each other
//!   in the RPC handshake.
//! - **Topics**: CreateTopics (and auto-creation) on any node proposes a `CreateTopic` to the
//!   metadata group; every node applies it, creates the partitions' logs and starts a Raft
//!   replica for each partition it holds ([`Cluster::reconcile`]).
//! - **Replication factor**: this increment replicates every partition to every node (the
//!   replication factor is the node count); placement spreads the preferred leaders.
//! - **Coordinators**: `__consumer_offsets` is replicated like any topic and a group's
//!   coordinator is the leader of its partition (see `group/coordinator.rs`). The transaction
//!   coordinator keeps its state in a local, unreplicated `__transaction_state` on the lowest
//!   node id ([`Cluster::coordinator`]); transactions are refused in a cluster for now.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use creek_storage::LogConfig;
use parking_lot::Mutex;
use tokio::sync::watch;
use uuid::Uuid;

use crate::raft::log_store::LogStore;
use crate::raft::metadata::{MetaCommand, Metadata, place};
use crate::raft::network::RaftRouter;
use crate::raft::replica::{GroupSpec, PartitionHook, Replica};
use crate::rpc::{GroupId, Handler, HandlerFuture, MessageKind, NodeId, Rpc, RpcConfig};
use crate::state::{Broker, CreateError};

/// Every node pings every other this often over the internal RPC (one small message per pair).
const PING_INTERVAL: Duration = Duration::from_millis(100);
/// A peer not heard from for this long (or whose connection is gone) is down: the partitions it
/// leads start electing.
const LIVENESS_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the other followers of a leaderless partition wait for the first candidate.
const SECOND_CANDIDATE_DELAY: Duration = Duration::from_millis(1000);
/// A quiet leader's heartbeat period.
const QUIET_HEARTBEAT: Duration = Duration::from_secs(1);
/// A follower that has not heard from its group's leader for this long (three quiet heartbeats)
/// elects even if the leader's node is up: that node may have restarted and lost the lead.
const LEADER_SILENCE_MAX: Duration = Duration::from_secs(3);
/// Message kind of a liveness ping (no payload, no answer).
const KIND_PING: MessageKind = MessageKind(17);
/// Message kind asking a partition's leader to hand leadership to its preferred replica (the
/// message's group names the partition; answer: one byte, 0 started, 1 not leading here).
const KIND_ELECT_PREFERRED: MessageKind = MessageKind(18);

/// How often a node retries registering itself until the metadata group has a leader.
const REGISTER_RETRY: Duration = Duration::from_millis(300);
/// How long CreateTopics waits for the topic to exist on the node that was asked.
const CREATE_WAIT: Duration = Duration::from_secs(30);

/// The cluster id every node with this peer list derives: FNV-1a over the sorted `id@address`
/// entries, as 32 hex digits.
pub(crate) fn cluster_id(peers: &[(NodeId, String)]) -> String {
    let mut sorted: Vec<String> = peers.iter().map(|(id, addr)| format!("{id}@{addr}")).collect();
    sorted.sort();
    let (mut a, mut b) = (0xcbf2_9ce4_8422_2325_u64, 0x8422_2325_cbf2_9ce4_u64);
    for byte in sorted.join(",").bytes() {
        a = (a ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        b = (b ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(7);
    }
    format!("{a:016x}{b:016x}")
}

/// This node's part in the cluster.
pub(crate) struct Cluster {
    pub(crate) node: NodeId,
    /// Every configured node, in id order.
    pub(crate) nodes: Vec<NodeId>,
    rpc: Rpc,
    router: Arc<RaftRouter>,
    pub(crate) meta: Arc<Metadata>,
    replicas: Mutex<Vec<Arc<Replica>>>,
    /// When each peer was last heard from (pings).
    heard: Arc<Mutex<HashMap<NodeId, Instant>>>,
    /// Becomes true once the metadata group accepted this broker's registration.
    registered: watch::Sender<bool>,
}

/// Serves other nodes' ElectLeaders: the leader starts the transfer.
struct ElectPreferredHandler(std::sync::Weak<Cluster>);

impl Handler for ElectPreferredHandler {
    fn handle(&self, _from: NodeId, group: GroupId, _kind: MessageKind, _payload: Bytes) -> HandlerFuture {
        let cluster = self.0.upgrade();
        Box::pin(async move {
            let started = match cluster {
                Some(c) => c.hand_to_preferred(group).await,
                None => false,
            };
            Some(Bytes::from_static(if started { &[0] } else { &[1] }))
        })
    }
}

/// Records pings.
struct PingHandler(Arc<Mutex<HashMap<NodeId, Instant>>>);

impl Handler for PingHandler {
    fn handle(&self, from: NodeId, _group: GroupId, _kind: MessageKind, _payload: Bytes) -> HandlerFuture {
        self.0.lock().insert(from, Instant::now());
        Box::pin(async { None })
    }
}

impl Cluster {
    /// Starts the internal RPC and the metadata replica, then (in the background) registers this
    /// broker's Kafka address and follows the metadata.
    pub(crate) async fn start(
        broker: Arc<Broker>,
        rpc_config: RpcConfig,
        advertised: (String, u16),
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Cluster>> {
        let node = rpc_config.node_id;
        let mut nodes: Vec<NodeId> = rpc_config.peers.iter().map(|(id, _)| *id).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let listen = rpc_config.listen;
        let router = RaftRouter::new();
        let rpc = Rpc::start(rpc_config, router.clone())
            .await
            .with_context(|| format!("binding the internal listener on {listen}"))?;
        tracing::info!(addr = %rpc.local_addr(), "internal RPC listening");
        let dir = broker.data_dir().join("meta/cluster-metadata");
        let store = tokio::task::spawn_blocking(move || LogStore::open(&dir, LogConfig::default()))
            .await?
            .context("opening the cluster metadata log")?;
        let heard = Arc::new(Mutex::new(HashMap::new()));
        router.register_service(KIND_PING, Arc::new(PingHandler(heard.clone())));
        let meta = Metadata::start(node, rpc.clone(), &router, store, &nodes).await?;
        let cluster = Arc::new(Cluster {
            node,
            nodes,
            rpc,
            router,
            meta,
            replicas: Mutex::new(Vec::new()),
            heard,
            registered: watch::channel(false).0,
        });
        if broker.cluster.set(cluster.clone()).is_err() {
            anyhow::bail!("the cluster was started twice");
        }
        cluster
            .router
            .register_service(KIND_ELECT_PREFERRED, Arc::new(ElectPreferredHandler(Arc::downgrade(&cluster))));
        tokio::spawn(cluster.clone().register(advertised, stop.clone()));
        tokio::spawn(cluster.clone().reconcile(broker.clone(), stop.clone()));
        tokio::spawn(cluster.clone().supervise(broker, stop));
        Ok(cluster)
    }

    /// Waits until this broker is registered: a metadata quorum is up and knows its address.
    pub(crate) async fn wait_registered(&self) {
        let mut rx = self.registered.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Whether this node reaches a majority of the cluster (itself included).
    pub(crate) fn in_majority(&self) -> bool {
        self.nodes.iter().filter(|&&n| self.is_live(n)).count() * 2 > self.nodes.len()
    }

    /// Whether `peer` is up as far as this node can tell: connected, and heard from recently.
    pub(crate) fn is_live(&self, peer: NodeId) -> bool {
        peer == self.node
            || (self.rpc.is_connected(peer)
                && self.heard.lock().get(&peer).is_some_and(|t| t.elapsed() < LIVENESS_TIMEOUT))
    }

    /// Failure detection per node instead of per group. Every [`PING_INTERVAL`] this node pings
    /// its peers and looks at its partition replicas: a follower whose leader is live keeps its
    /// Raft timer off (no heartbeats expected, no election timeout), one whose leader is down or
    /// unknown turns it on and so elects after the usual timeout; a leader keeps its timer off
    /// and sends one heartbeat round every [`QUIET_HEARTBEAT`]. Idle partitions thus cost a
    /// heartbeat a second instead of a timer every 20 ms and ten heartbeats a second.
    async fn supervise(self: Arc<Self>, broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(PING_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heartbeat = Instant::now();
        let mut last_balance = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            for &peer in self.nodes.iter().filter(|&&n| n != self.node) {
                // A down peer is simply not pinged (`PeerUnavailable`).
                let _ = self.rpc.send(peer, GroupId(0), KIND_PING, Bytes::new());
            }
            let heartbeat = last_heartbeat.elapsed() >= QUIET_HEARTBEAT;
            if heartbeat {
                last_heartbeat = Instant::now();
            }
            let (rebalance, every) = {
                let c = broker.config.read();
                (c.bool("auto.leader.rebalance.enable"), c.i64("leader.imbalance.check.interval.seconds").max(1))
            };
            if rebalance && last_balance.elapsed() >= Duration::from_secs(every as u64) {
                last_balance = Instant::now();
                let moved = self.balance_leaders().await;
                if moved > 0 {
                    tracing::info!(moved, "handing leaderships back to preferred replicas");
                }
            }
            let replicas = self.replicas.lock().clone();
            for r in replicas {
                if r.is_follower() {
                    let heard = self.router.since_append(r.group).is_some_and(|d| d < LEADER_SILENCE_MAX);
                    let led = heard && r.leader().is_some_and(|l| l != self.node && self.is_live(l));
                    // All followers notice a dead leader at once (its connections reset), and
                    // campaigning together splits the vote. One of them goes first: the
                    // preferred replica if it is live, else the lowest live voter; the others
                    // join only if no leader appears within SECOND_CANDIDATE_DELAY.
                    let campaign = r.leaderless_for(!led).is_some_and(|d| {
                        let leader = r.leader();
                        let first = r
                            .preferred
                            .filter(|&p| self.is_live(p) && leader != Some(p))
                            .or_else(|| r.assigned.iter().copied().find(|&v| self.is_live(v) && leader != Some(v)));
                        first == Some(self.node) || d >= SECOND_CANDIDATE_DELAY
                    });
                    r.set_ticking(campaign);
                } else {
                    r.set_ticking(false);
                    let live = r.assigned.iter().filter(|&&v| self.is_live(v)).count();
                    r.observe_quorum(live * 2 > r.assigned.len());
                    if heartbeat {
                        r.heartbeat().await;
                    }
                }
            }
        }
    }

    /// The node that runs the transaction coordinator (group coordinators follow the leaders of
    /// `__consumer_offsets` partitions).
    pub(crate) fn coordinator(&self) -> NodeId {
        self.nodes[0]
    }

    /// The leader of a partition as clients should see it: the one its replica knows, unless
    /// that is another node this one has no connection to (it died or is cut off; a new leader
    /// is being elected). Then `None`, so clients keep refreshing metadata instead of retrying a
    /// dead broker.
    pub(crate) fn visible_leader(&self, replica: &Replica) -> Option<NodeId> {
        match replica.leader() {
            Some(l) if l == self.node => replica.is_leader().then_some(l),
            Some(l) => self.is_live(l).then_some(l),
            None => None,
        }
    }

    /// Waits until every one of `replicas` has a [visible leader](Self::visible_leader), or
    /// `limit` has passed.
    pub(crate) async fn await_leaders(&self, replicas: Vec<Arc<Replica>>, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut waiting = replicas;
        loop {
            waiting.retain(|r| self.visible_leader(r).is_none());
            if waiting.is_empty() || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts handing every partition this node leads to its preferred replica, where that one
    /// is live and caught up (Kafka's `auto.leader.rebalance.enable`); returns how many.
    async fn balance_leaders(&self) -> usize {
        let replicas = self.replicas.lock().clone();
        let mut moved = 0;
        for r in replicas {
            if self.may_hand_to_preferred(&r) {
                r.transfer_leadership(r.preferred.expect("checked")).await;
                moved += 1;
            }
        }
        moved
    }

    fn may_hand_to_preferred(&self, r: &Replica) -> bool {
        r.is_leader() && r.preferred.is_some_and(|p| p != self.node && self.is_live(p) && r.has_caught_up(p))
    }

    /// The local replica of `group`.
    pub(crate) fn replica(&self, group: GroupId) -> Option<Arc<Replica>> {
        self.replicas.lock().iter().find(|r| r.group == group).cloned()
    }

    /// On the leader of `group`: starts handing it to its preferred replica. `false` if this
    /// node does not lead it or the preferred replica is down or behind.
    async fn hand_to_preferred(&self, group: GroupId) -> bool {
        match self.replica(group) {
            Some(r) if self.may_hand_to_preferred(&r) => {
                r.transfer_leadership(r.preferred.expect("checked")).await;
                true
            }
            _ => false,
        }
    }

    /// ElectLeaders (preferred) for one partition: asks its leader, here or elsewhere, to hand
    /// it to the preferred replica and waits until that one leads or `wait` passes. Kafka's
    /// answers: NONE, ELECTION_NOT_NEEDED (84), PREFERRED_LEADER_NOT_AVAILABLE (80),
    /// REQUEST_TIMED_OUT (7).
    pub(crate) async fn elect_preferred(&self, r: &Arc<Replica>, wait: Duration) -> i16 {
        let Some(preferred) = r.preferred else { return 80 };
        if r.leader() == Some(preferred) {
            return 84;
        }
        if !self.is_live(preferred) {
            return 80;
        }
        // The preferred replica may still be catching up (just restarted): keep asking the
        // leader until it starts the transfer, then wait for the new leader.
        let deadline = tokio::time::Instant::now() + wait;
        let mut started = false;
        loop {
            if r.leader() == Some(preferred) {
                return 0;
            }
            if tokio::time::Instant::now() >= deadline {
                return if started { 7 } else { 80 };
            }
            if !started {
                started = match r.leader() {
                    Some(l) if l == self.node => self.hand_to_preferred(r.group).await,
                    Some(l) if self.is_live(l) => {
                        let answer = self.rpc.call(l, r.group, KIND_ELECT_PREFERRED, Bytes::new(), wait).await;
                        matches!(answer.as_deref(), Ok([0]))
                    }
                    _ => false,
                };
            }
            tokio::time::sleep(Duration::from_millis(if started { 20 } else { 100 })).await;
        }
    }

    /// The Kafka address a registered broker announced.
    pub(crate) fn broker_address(&self, id: NodeId) -> Option<(String, u16)> {
        self.meta.read(|m| m.brokers.get(&id).cloned())
    }

    /// The replicas of a topic's partition, preferred leader first.
    pub(crate) fn replicas_of(&self, topic: &str, partition: i32) -> Vec<NodeId> {
        self.meta.read(|m| {
            m.topics
                .get(topic)
                .and_then(|t| t.partitions.get(usize::try_from(partition).ok()?))
                .map(|p| p.replicas.clone())
                .unwrap_or_default()
        })
    }

    /// Creates a topic through the metadata group and waits until this node has it. Every node
    /// holds every partition, so `replication` must be -1 or the node count.
    pub(crate) async fn create_topic(
        &self,
        broker: &Broker,
        name: &str,
        partitions: u32,
        replication: i16,
        configs: std::collections::BTreeMap<String, String>,
    ) -> Result<(), (i16, String)> {
        use crate::handlers::code;
        let n = self.nodes.len();
        if replication != -1 && usize::try_from(replication).ok() != Some(n) {
            return Err((
                code::INVALID_REPLICATION_FACTOR,
                format!("this cluster replicates every partition to all {n} nodes: use replication factor -1 or {n}"),
            ));
        }
        broker.check_create(name).map_err(|e| match e {
            CreateError::Exists => (code::TOPIC_ALREADY_EXISTS, format!("Topic '{name}' already exists.")),
            CreateError::InvalidName(m) => (code::INVALID_TOPIC_EXCEPTION, m),
            CreateError::Storage(m) => (code::KAFKA_STORAGE_ERROR, m),
        })?;
        let offset = self.meta.read(|m| m.topics.len());
        let id = Uuid::new_v4().simple().to_string();
        let cmd = MetaCommand::CreateTopic {
            name: name.to_string(),
            id: id.clone(),
            replicas: place(&self.nodes, partitions as usize, n, offset),
            configs,
        };
        // No metadata leader (an election, a node starting) is retried here until the deadline.
        let deadline = tokio::time::Instant::now() + CREATE_WAIT;
        loop {
            match self.meta.propose(&cmd).await {
                Ok(Ok(())) => break,
                Ok(Err(m)) if m.contains("already exists") => {
                    // An earlier attempt whose answer was lost may have created it.
                    if self.meta.read(|meta| meta.topics.get(name).is_some_and(|t| t.id == id)) {
                        break;
                    }
                    return Err((code::TOPIC_ALREADY_EXISTS, m));
                }
                Ok(Err(m)) => return Err((code::INVALID_REQUEST, m)),
                Err(m) if tokio::time::Instant::now() >= deadline => return Err((code::NOT_CONTROLLER, m)),
                Err(m) => {
                    tracing::debug!(topic = name, error = %m, "metadata not writable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        // The reconciler opens the topic once the command applies here.
        while broker.topic(name).is_none() {
            if tokio::time::Instant::now() >= deadline {
                return Err((code::REQUEST_TIMED_OUT, format!("topic {name} was created but is not open here yet")));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Announces this broker's Kafka address until the metadata group accepts it.
    async fn register(self: Arc<Self>, (host, port): (String, u16), mut stop: watch::Receiver<bool>) {
        let cmd = MetaCommand::RegisterBroker { id: self.node, host, port };
        loop {
            match self.meta.propose(&cmd).await {
                Ok(Ok(())) => {
                    tracing::info!(node = self.node, "registered with the cluster");
                    self.registered.send_replace(true);
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "registration refused"),
                Err(e) => tracing::debug!(error = %e, "registration not done yet"),
            }
            tokio::select! {
                _ = tokio::time::sleep(REGISTER_RETRY) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// After every metadata change: creates the topics this node lacks and starts a replica of
    /// every partition it holds.
    async fn reconcile(self: Arc<Self>, broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
        let mut changes = self.meta.changes();
        loop {
            if let Err(e) = self.reconcile_once(&broker).await {
                tracing::error!(error = %format!("{e:#}"), "applying cluster metadata failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    }

    async fn reconcile_once(&self, broker: &Arc<Broker>) -> anyhow::Result<()> {
        let meta = self.meta.snapshot();
        for (name, t) in &meta.topics {
            let id = Uuid::parse_str(&t.id).with_context(|| format!("topic {name} id"))?;
            let topic = match broker.topic(name) {
                Some(topic) => topic,
                None => {
                    let (b, n, count, configs) =
                        (broker.clone(), name.clone(), t.partitions.len() as u32, t.configs.clone());
                    match tokio::task::spawn_blocking(move || b.create_topic_with_id(&n, id, count, configs)).await? {
                        Ok(topic) => topic,
                        Err(e) => anyhow::bail!("creating topic {name}: {e:?}"),
                    }
                }
            };
            if topic.id != id {
                tracing::error!(topic = %name, local = %topic.id, cluster = %id, "a local topic of the same name has another id; not replicating it");
                continue;
            }
            for (index, pm) in t.partitions.iter().enumerate() {
                if !pm.replicas.contains(&self.node) {
                    continue;
                }
                let Some(p) = topic.partition(index as i32) else { continue };
                if p.replica.get().is_some() {
                    continue;
                }
                let log = p.log.clone();
                let store = tokio::task::spawn_blocking(move || LogStore::on(log)).await??;
                let appended = broker.clone();
                let on_commit: Arc<dyn Fn() + Send + Sync> =
                    Arc::new(move || appended.appended.send_modify(|n| *n = n.wrapping_add(1)));
                let replica = Replica::start(
                    (self.node, self.rpc.clone(), &self.router),
                    store,
                    GroupSpec { group: pm.group, voters: &pm.replicas, supervised: true },
                    move |reader, high_watermark| Arc::new(PartitionHook { reader, high_watermark, on_commit }),
                )
                .await?;
                if p.replica.set(replica.clone()).is_ok() {
                    self.replicas.lock().push(replica);
                }
            }
        }
        Ok(())
    }

    /// Stops every Raft group and the internal RPC.
    pub(crate) async fn shutdown(&self) {
        let replicas = std::mem::take(&mut *self.replicas.lock());
        futures_util::future::join_all(replicas.iter().map(|r| r.shutdown(&self.router))).await;
        self.meta.shutdown(&self.router).await;
        self.rpc.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_derives_the_same_cluster_id() {
        let a = vec![(1, "127.0.0.1:1".to_string()), (2, "127.0.0.1:2".to_string())];
        let b = vec![(2, "127.0.0.1:2".to_string()), (1, "127.0.0.1:1".to_string())];
        assert_eq!(cluster_id(&a), cluster_id(&b));
        assert_eq!(cluster_id(&a).len(), 32);
        let c = vec![(1, "127.0.0.1:1".to_string()), (2, "127.0.0.1:3".to_string())];
        assert_ne!(cluster_id(&a), cluster_id(&c));
    }
}
