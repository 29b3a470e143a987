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
//! - **Topic changes**: config changes, new partitions and deletions are metadata commands too;
//!   the reconciler applies them on every node (a node that was down catches up when it returns).
//! - **Replication factor**: 1 to the node count (-1: every node, at most three); placement
//!   spreads replicas and preferred leaders. A node that hosts no replica of a partition learns
//!   its leader from the nodes that do ([`KIND_LEADERS`], polled every 250 ms while such
//!   partitions exist) for Metadata, KIP-951 hints and ElectLeaders.
//! - **Coordinators**: `__consumer_offsets` and `__transaction_state` are replicated like any
//!   topic, and a group's or transactional id's coordinator is the leader of its partition (see
//!   `group/coordinator.rs` and `txn/coordinator.rs`); they register their own message kinds
//!   ([`Cluster::register_service`]).

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
use crate::raft::metadata::{CONFIGS_CHANGED, MetaCommand, Metadata, PartitionMeta, distinct_nodes, place};
use crate::raft::network::RaftRouter;
use crate::raft::replica::{GroupSpec, PartitionHook, Replica};
use crate::rpc::{GroupId, Handler, HandlerFuture, MessageKind, NodeId, Rpc, RpcConfig};
use crate::state::{Broker, CreateError};

/// A partition being reassigned: its index, replicas and target replicas.
pub(crate) type Moving = (i32, Vec<NodeId>, Vec<NodeId>);

/// A topic's config overrides.
type Configs = std::collections::BTreeMap<String, String>;

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

/// Message kind asking a node for the leaders it knows of the partitions it hosts (no payload;
/// answer: u32 count, then per partition u64 group id, u64 leader or `u64::MAX` for none, u64
/// term), for nodes that host only some partitions.
const KIND_LEADERS: MessageKind = MessageKind(19);
/// How often a node that does not host every partition asks its peers for their leaders.
const REMOTE_LEADERS_INTERVAL: Duration = Duration::from_millis(250);
/// How long a reassignment's leader waits for the new replicas to catch up and the voters to
/// change before it retries.
const REASSIGN_STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The reconciler runs at least this often, besides after every metadata change.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);
/// Replication factor -1 means every node, up to this many.
const DEFAULT_REPLICATION_MAX: usize = 3;

/// Producer ids are handed out in lanes: node `k` hands out only ids `≡ k (mod 2^16)`, so nodes
/// never collide however the cluster grows (node ids are below this, checked at startup).
pub(crate) const PRODUCER_ID_LANES: i64 = 1 << 16;

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
    /// Where other brokers reach this node's internal listener.
    internal_addr: String,
    rpc: Rpc,
    router: Arc<RaftRouter>,
    pub(crate) meta: Arc<Metadata>,
    replicas: Mutex<Vec<Arc<Replica>>>,
    /// When each peer was last heard from (pings).
    heard: Arc<Mutex<HashMap<NodeId, Instant>>>,
    /// Becomes true once the metadata group accepted this broker's registration.
    registered: watch::Sender<bool>,
    /// `replica.lag.time.max.ms`: how long a follower may go without catching up and stay in sync.
    replica_lag: Duration,
    /// The leader and term of each partition this node does not host, as its replicas report
    /// them ([`KIND_LEADERS`]).
    remote_leaders: Mutex<HashMap<GroupId, (Option<NodeId>, u64)>>,
    /// Partitions whose reassignment this node is driving (as their leader).
    reassigning: Mutex<std::collections::HashSet<GroupId>>,
}

/// Answers [`KIND_LEADERS`]: the leader this node sees for every partition it hosts.
struct LeadersHandler(std::sync::Weak<Cluster>);

impl Handler for LeadersHandler {
    fn handle(&self, _from: NodeId, _group: GroupId, _kind: MessageKind, _payload: Bytes) -> HandlerFuture {
        let leaders: Vec<(GroupId, Option<NodeId>, u64)> = match self.0.upgrade() {
            Some(c) => {
                let replicas = c.replicas.lock().clone();
                replicas.iter().map(|r| (r.group, c.visible_leader(r), r.epoch().max(0) as u64)).collect()
            }
            None => Vec::new(),
        };
        Box::pin(async move { Some(Bytes::from(encode_leaders(&leaders))) })
    }
}

/// Encodes a [`KIND_LEADERS`] answer.
fn encode_leaders(leaders: &[(GroupId, Option<NodeId>, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + leaders.len() * 24);
    out.extend_from_slice(&(leaders.len() as u32).to_be_bytes());
    for (group, leader, term) in leaders {
        out.extend_from_slice(&group.0.to_be_bytes());
        out.extend_from_slice(&leader.unwrap_or(u64::MAX).to_be_bytes());
        out.extend_from_slice(&term.to_be_bytes());
    }
    out
}

/// Decodes a [`KIND_LEADERS`] answer; `None` if it is malformed.
fn decode_leaders(answer: &[u8]) -> Option<Vec<(GroupId, Option<NodeId>, u64)>> {
    let count = u32::from_be_bytes(answer.get(..4)?.try_into().ok()?) as usize;
    let body = &answer[4..];
    if body.len() != count.checked_mul(24)? {
        return None;
    }
    let u64_at = |chunk: &[u8], at: usize| u64::from_be_bytes(chunk[at..at + 8].try_into().expect("8 bytes"));
    Some(
        body.chunks_exact(24)
            .map(|c| {
                let leader = u64_at(c, 8);
                (GroupId(u64_at(c, 0)), (leader != u64::MAX).then_some(leader), u64_at(c, 16))
            })
            .collect(),
    )
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
        // A configured node is reached at its `internal.peers` entry; a node added to the cluster
        // announces its listener, which must then be an address the others can dial.
        let internal_addr = match rpc_config.peers.iter().find(|(id, _)| *id == node) {
            Some((_, addr)) => addr.clone(),
            None if listen.ip().is_unspecified() => anyhow::bail!(
                "node {node} is not in internal.peers, so it joins the cluster and announces its internal.listener; \
                 {listen} is not an address other nodes can reach"
            ),
            None => listen.to_string(),
        };
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
            internal_addr,
            rpc,
            router,
            meta,
            replicas: Mutex::new(Vec::new()),
            heard,
            registered: watch::channel(false).0,
            replica_lag: Duration::from_millis(broker.config.read().i64("replica.lag.time.max.ms").max(1) as u64),
            remote_leaders: Mutex::new(HashMap::new()),
            reassigning: Mutex::new(std::collections::HashSet::new()),
        });
        if broker.cluster.set(cluster.clone()).is_err() {
            anyhow::bail!("the cluster was started twice");
        }
        cluster
            .router
            .register_service(KIND_ELECT_PREFERRED, Arc::new(ElectPreferredHandler(Arc::downgrade(&cluster))));
        cluster.router.register_service(KIND_LEADERS, Arc::new(LeadersHandler(Arc::downgrade(&cluster))));
        tokio::spawn(cluster.clone().follow_remote_leaders(stop.clone()));
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

    /// Every node of the cluster, in id order: the configured ones (`internal.peers`, the
    /// metadata group's first voters) and the brokers that registered, less the ones removed.
    pub(crate) fn members(&self) -> Vec<NodeId> {
        self.meta.read(|m| {
            let mut all: std::collections::BTreeSet<NodeId> = self.meta.configured.iter().copied().collect();
            all.extend(m.brokers.keys());
            all.retain(|n| !m.removed.contains(n));
            all.into_iter().collect()
        })
    }

    /// The nodes new replicas may go to: the [members](Self::members) not being decommissioned.
    pub(crate) fn placeable(&self) -> Vec<NodeId> {
        let mut nodes = self.members();
        self.meta.read(|m| nodes.retain(|n| !m.decommissioning.contains(n)));
        nodes
    }

    /// Whether this node reaches a majority of the cluster (itself included).
    pub(crate) fn in_majority(&self) -> bool {
        let members = self.members();
        members.iter().filter(|&&n| self.is_live(n)).count() * 2 > members.len()
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
            for peer in self.members().into_iter().filter(|&n| n != self.node) {
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
                        let first = r.preferred.filter(|&p| self.is_live(p) && leader != Some(p)).or_else(|| {
                            r.assigned.read().iter().copied().find(|&v| self.is_live(v) && leader != Some(v))
                        });
                        first == Some(self.node) || d >= SECOND_CANDIDATE_DELAY
                    });
                    r.set_ticking(campaign);
                } else if let Some(to) = r.removed_leader_successor() {
                    // Out of the voters after a move: no heartbeats (so the voters notice the
                    // silence), and leadership handed to the most caught-up voter meanwhile.
                    r.set_ticking(false);
                    r.transfer_leadership(to).await;
                } else {
                    r.set_ticking(false);
                    let reachable = {
                        let assigned = r.assigned.read();
                        assigned.iter().filter(|&&v| self.is_live(v)).count() * 2 > assigned.len()
                    };
                    r.observe_quorum(reachable);
                    if heartbeat {
                        r.heartbeat().await;
                        r.sample_in_sync();
                    }
                }
            }
        }
    }

    /// A partition's in-sync replicas as Metadata reports them: on its leader, the voters that
    /// caught up within `replica.lag.time.max.ms`; elsewhere, the voters this node sees alive.
    pub(crate) fn in_sync(&self, replica: &Replica) -> Vec<NodeId> {
        if replica.is_leader()
            && let Some(ids) = replica.in_sync(self.replica_lag)
        {
            return ids;
        }
        let mut ids: Vec<NodeId> =
            replica.assigned.read().iter().copied().filter(|&v| v == self.node || self.is_live(v)).collect();
        ids.sort_unstable();
        ids
    }

    /// Keeps [`Cluster::remote_leaders`] current while some partition is not hosted here: every
    /// [`REMOTE_LEADERS_INTERVAL`] asks each live peer for its leaders, and per partition keeps
    /// the answer of the highest term (a known leader over none).
    async fn follow_remote_leaders(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REMOTE_LEADERS_INTERVAL) => {}
                _ = stop.changed() => return,
            }
            let hosts_all = self
                .meta
                .read(|m| m.topics.values().flat_map(|t| &t.partitions).all(|p| p.replicas.contains(&self.node)));
            if hosts_all {
                continue;
            }
            let peers: Vec<NodeId> =
                self.members().into_iter().filter(|&n| n != self.node && self.is_live(n)).collect();
            let asks = peers
                .iter()
                .map(|&peer| self.rpc.call(peer, GroupId(0), KIND_LEADERS, Bytes::new(), REMOTE_LEADERS_INTERVAL * 4));
            let mut table: HashMap<GroupId, (Option<NodeId>, u64)> = HashMap::new();
            for answer in futures_util::future::join_all(asks).await.into_iter().flatten() {
                for (group, leader, term) in decode_leaders(&answer).unwrap_or_default() {
                    let e = table.entry(group).or_insert((leader, term));
                    if term > e.1 || (term == e.1 && e.0.is_none()) {
                        *e = (leader, term);
                    }
                }
            }
            *self.remote_leaders.lock() = table;
        }
    }

    /// A partition as the metadata records it: its Raft group, replicas and any reassignment
    /// target.
    pub(crate) fn partition_meta(&self, topic: &str, partition: i32) -> Option<PartitionMeta> {
        self.meta.read(|m| m.topics.get(topic)?.partitions.get(usize::try_from(partition).ok()?).cloned())
    }

    /// The leader and epoch of a partition this node does not host, as its replicas last
    /// reported them, if that leader is live.
    pub(crate) fn remote_leader(&self, topic: &str, partition: i32) -> Option<(NodeId, u64)> {
        let group = self.partition_meta(topic, partition)?.group;
        match self.remote_leaders.lock().get(&group) {
            Some(&(Some(leader), term)) if self.is_live(leader) => Some((leader, term)),
            _ => None,
        }
    }

    /// ElectLeaders (preferred) for a partition hosted by other nodes: as
    /// [`Cluster::elect_preferred`], with the leader its replicas report.
    pub(crate) async fn elect_preferred_elsewhere(&self, topic: &str, partition: i32, wait: Duration) -> i16 {
        let Some(pm) = self.partition_meta(topic, partition) else { return 3 };
        let Some(&preferred) = pm.replicas.first() else { return 80 };
        self.elect(pm.group, preferred, || self.remote_leader(topic, partition).map(|(l, _)| l), wait).await
    }

    /// Whether this node hosts no replica of the partition (its leader lives elsewhere).
    pub(crate) fn hosted_elsewhere(&self, topic: &str, partition: i32) -> bool {
        self.partition_meta(topic, partition).is_some_and(|pm| !pm.replicas.contains(&self.node))
    }

    /// Serves message `kind` from other nodes with `handler` (the coordinators' own messages,
    /// such as the transaction coordinator's markers, `txn/markers.rs`).
    pub(crate) fn register_service(&self, kind: MessageKind, handler: Arc<dyn Handler>) {
        self.router.register_service(kind, handler);
    }

    /// Sends `payload` to `peer` as message `kind` about `group` and waits up to `timeout` for
    /// its answer.
    pub(crate) async fn call(
        &self,
        peer: NodeId,
        group: GroupId,
        kind: MessageKind,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, crate::rpc::RpcError> {
        self.rpc.call(peer, group, kind, payload, timeout).await
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
        self.elect(r.group, preferred, || r.leader(), wait).await
    }

    /// Hands `group` to `preferred` through its current leader (`leads`, here or elsewhere).
    async fn elect(
        &self,
        group: GroupId,
        preferred: NodeId,
        leads: impl Fn() -> Option<NodeId>,
        wait: Duration,
    ) -> i16 {
        if leads() == Some(preferred) {
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
            if leads() == Some(preferred) {
                return 0;
            }
            if tokio::time::Instant::now() >= deadline {
                return if started { 7 } else { 80 };
            }
            if !started {
                started = match leads() {
                    Some(l) if l == self.node => self.hand_to_preferred(group).await,
                    Some(l) if self.is_live(l) => {
                        let answer = self.rpc.call(l, group, KIND_ELECT_PREFERRED, Bytes::new(), wait).await;
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
        self.partition_meta(topic, partition).map(|pm| pm.replicas).unwrap_or_default()
    }

    /// Creates a topic through the metadata group and waits until this node has it, with
    /// `replication` replicas per partition (-1: every node, at most three), placed by [`place`].
    pub(crate) async fn create_topic(
        &self,
        broker: &Broker,
        name: &str,
        partitions: u32,
        replication: i16,
        configs: std::collections::BTreeMap<String, String>,
    ) -> Result<(), (i16, String)> {
        use crate::handlers::code;
        let nodes = self.placeable();
        let n = nodes.len();
        let rf = match replication {
            -1 => self.default_replication(),
            r if r >= 1 && r as usize <= n => r as usize,
            r => {
                return Err((
                    code::INVALID_REPLICATION_FACTOR,
                    format!("Replication factor: {r} larger than available brokers: {n}, or below 1."),
                ));
            }
        };
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
            replicas: place(&nodes, partitions as usize, rf, offset),
            configs,
        };
        let deadline = tokio::time::Instant::now() + CREATE_WAIT;
        match self.propose_retrying(&cmd, deadline).await? {
            Ok(()) => {}
            Err(m) if m.contains("already exists") => {
                // An earlier attempt whose answer was lost may have created it.
                if !self.meta.read(|meta| meta.topics.get(name).is_some_and(|t| t.id == id)) {
                    return Err((code::TOPIC_ALREADY_EXISTS, m));
                }
            }
            Err(m) => return Err((code::INVALID_REQUEST, m)),
        }
        // The reconciler opens the topic once the command applies here.
        self.wait_applied_here(deadline, || broker.topic(name).is_some(), name).await
    }

    /// Proposes `cmd` to the metadata group, retrying while it has no reachable leader (an
    /// election, a node starting) until `deadline`: the command's own answer, or NOT_CONTROLLER.
    async fn propose_retrying(
        &self,
        cmd: &MetaCommand,
        deadline: tokio::time::Instant,
    ) -> Result<Result<(), String>, (i16, String)> {
        loop {
            match self.meta.propose(cmd).await {
                Ok(answer) => return Ok(answer),
                Err(m) if tokio::time::Instant::now() >= deadline => {
                    return Err((crate::handlers::code::NOT_CONTROLLER, m));
                }
                Err(m) => {
                    tracing::debug!(error = %m, "metadata not writable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Waits until the reconciler has applied a committed change on this node (`done`).
    async fn wait_applied_here(
        &self,
        deadline: tokio::time::Instant,
        done: impl Fn() -> bool,
        topic: &str,
    ) -> Result<(), (i16, String)> {
        while !done() {
            if tokio::time::Instant::now() >= deadline {
                return Err((
                    crate::handlers::code::REQUEST_TIMED_OUT,
                    format!("the change to topic {topic} is committed but not applied on this node yet"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The cluster's record of topic `name`: its id, config overrides and partition count.
    fn topic_meta(&self, name: &str) -> Result<(String, Configs, usize), (i16, String)> {
        let found =
            self.meta.read(|m| m.topics.get(name).map(|t| (t.id.clone(), t.configs.clone(), t.partitions.len())));
        found.ok_or_else(|| {
            (
                crate::handlers::code::UNKNOWN_TOPIC_OR_PARTITION,
                "This server does not host this topic-partition.".to_string(),
            )
        })
    }

    /// Changes topic `name`'s config overrides through the metadata group: `edit` turns the
    /// current overrides into the new ones (or refuses), and is run again if another node changed
    /// them meanwhile. Done once this node applies the new overrides.
    pub(crate) async fn edit_topic_configs(
        &self,
        broker: &Broker,
        name: &str,
        edit: impl Fn(&Configs) -> Result<Configs, (i16, String)>,
    ) -> Result<(), (i16, String)> {
        let deadline = tokio::time::Instant::now() + CREATE_WAIT;
        loop {
            let (id, expected, _) = self.topic_meta(name)?;
            let configs = edit(&expected)?;
            let cmd = MetaCommand::SetTopicConfigs { name: name.to_string(), id, expected, configs: configs.clone() };
            match self.propose_retrying(&cmd, deadline).await? {
                Ok(()) => {
                    let applied = || broker.topic(name).is_none_or(|t| *t.overrides.read() == configs);
                    return self.wait_applied_here(deadline, applied, name).await;
                }
                Err(m) if m == CONFIGS_CHANGED && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(m) => return Err((crate::handlers::code::INVALID_REQUEST, m)),
            }
        }
    }

    /// Deletes topic `name` through the metadata group; done once it is gone from this node.
    pub(crate) async fn delete_topic(&self, broker: &Broker, name: &str) -> Result<(), (i16, String)> {
        let deadline = tokio::time::Instant::now() + CREATE_WAIT;
        let (id, _, _) = self.topic_meta(name)?;
        let cmd = MetaCommand::DeleteTopic { name: name.to_string(), id: id.clone() };
        match self.propose_retrying(&cmd, deadline).await? {
            Ok(()) => {}
            // Deleted by a concurrent request, or an earlier attempt whose answer was lost.
            Err(_) if self.meta.read(|m| m.deleted_topics.contains(&id)) => {}
            Err(m) => return Err((crate::handlers::code::UNKNOWN_TOPIC_OR_PARTITION, m)),
        }
        let gone = || broker.topic(name).is_none_or(|t| t.id.simple().to_string() != id);
        self.wait_applied_here(deadline, gone, name).await
    }

    /// Grows topic `name` to `count` partitions through the metadata group, with the topic's
    /// replication factor, placed like a new topic's unless `assignments` gives each new
    /// partition's replicas (distinct nodes, preferred leader first). Done once this node has
    /// them.
    pub(crate) async fn add_partitions(
        &self,
        broker: &Broker,
        name: &str,
        count: usize,
        assignments: Option<Vec<Vec<NodeId>>>,
    ) -> Result<(), (i16, String)> {
        use crate::handlers::code;
        let deadline = tokio::time::Instant::now() + CREATE_WAIT;
        let (id, _, have) = self.topic_meta(name)?;
        if count <= have {
            return Err((code::INVALID_PARTITIONS, format!("Topic already has {have} partition(s).")));
        }
        // New partitions get the topic's replication factor.
        let rf = self.meta.read(|m| m.topics.get(name).and_then(|t| t.partitions.first()).map(|p| p.replicas.len()));
        let rf = rf.unwrap_or(1);
        let nodes = self.placeable();
        let replicas = match assignments {
            Some(a) => {
                let known = |r: &Vec<NodeId>| distinct_nodes(r) && r.iter().all(|id| nodes.contains(id));
                if let Some(bad) = a.iter().find(|r| r.len() != rf || !known(r)) {
                    return Err((
                        code::INVALID_REPLICA_ASSIGNMENT,
                        format!("{bad:?} is not {rf} distinct nodes of this cluster ({nodes:?})"),
                    ));
                }
                a
            }
            None => {
                let offset = self.meta.read(|m| m.topics.len());
                place(&nodes, count, rf, offset).split_off(have)
            }
        };
        let cmd = MetaCommand::AddPartitions { name: name.to_string(), id, from: have, replicas };
        match self.propose_retrying(&cmd, deadline).await? {
            Ok(()) => {}
            Err(m) => return Err((code::INVALID_PARTITIONS, m)),
        }
        let grown = || broker.topic(name).is_none_or(|t| t.partition_count() >= count);
        self.wait_applied_here(deadline, grown, name).await
    }

    /// The replication factor -1 stands for: every node, at most three.
    pub(crate) fn default_replication(&self) -> usize {
        self.placeable().len().min(DEFAULT_REPLICATION_MAX)
    }

    /// Announces this broker's Kafka and internal addresses until the metadata group accepts
    /// them, then waits until this node's copy of the metadata has them (a broker added to the
    /// cluster receives the metadata only once the leader has made it a learner).
    async fn register(self: Arc<Self>, (host, port): (String, u16), mut stop: watch::Receiver<bool>) {
        let internal = Some(self.internal_addr.clone());
        let cmd = MetaCommand::RegisterBroker { id: self.node, host: host.clone(), port, internal };
        loop {
            match self.meta.propose(&cmd).await {
                Ok(Ok(())) => {
                    let mut changes = self.meta.changes();
                    let seen = || self.meta.read(|m| m.brokers.get(&self.node) == Some(&(host.clone(), port)));
                    while !seen() {
                        tokio::select! {
                            r = changes.changed() => if r.is_err() { return },
                            _ = stop.changed() => return,
                        }
                    }
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
                // Also now and then: a reassignment whose leader changed mid-way is driven by the
                // new leader, with no metadata change to wake it.
                _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
            }
        }
    }

    async fn reconcile_once(self: &Arc<Self>, broker: &Arc<Broker>) -> anyhow::Result<()> {
        let meta = self.meta.snapshot();
        // Brokers added to the cluster are dialed at the address they announced; removed ones
        // are forgotten.
        for (&id, addr) in &meta.internal_addrs {
            if !self.meta.configured.contains(&id) {
                self.rpc.add_peer(id, addr);
            }
        }
        for &id in &meta.removed {
            if id != self.node && !self.meta.configured.contains(&id) {
                self.rpc.remove_peer(id);
            }
        }
        if self.meta.leader() == Some(self.node) {
            self.manage_brokers(&meta).await;
        }
        for topic in broker.topics() {
            if meta.deleted_topics.contains(&topic.id.simple().to_string()) {
                self.remove_topic(broker, &topic).await?;
            }
        }
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
            if *topic.overrides.read() != t.configs {
                let (b, tp, configs) = (broker.clone(), topic.clone(), t.configs.clone());
                tokio::task::spawn_blocking(move || b.set_topic_configs(&tp, configs)).await??;
                tracing::info!(topic = %name, "applied the cluster's topic configs");
            }
            if topic.partition_count() < t.partitions.len() {
                let (b, tp, count) = (broker.clone(), topic.clone(), t.partitions.len() as u32);
                tokio::task::spawn_blocking(move || b.add_partitions(&tp, count)).await??;
                tracing::info!(topic = %name, partitions = t.partitions.len(), "added the cluster's new partitions");
            }
            for (index, pm) in t.partitions.iter().enumerate() {
                let Some(p) = topic.partition(index as i32) else { continue };
                if !pm.hosts().any(|n| n == self.node) {
                    // Moved away by a reassignment: stop the replica and drop the data.
                    if let Some(replica) = p.replica.take() {
                        self.drop_replica(&p, replica).await?;
                    }
                    continue;
                }
                if let Some(replica) = p.replica.get() {
                    let voters: Vec<NodeId> = pm.target.clone().unwrap_or_else(|| pm.replicas.clone());
                    replica.set_assigned(&voters);
                    if let Some(target) = &pm.target
                        && replica.is_leader()
                    {
                        self.drive_reassignment(name, &t.id, index, target, replica);
                    }
                    continue;
                }
                let joining = !pm.replicas.contains(&self.node);
                let log = p.log.clone();
                let store = tokio::task::spawn_blocking(move || LogStore::on(log)).await??;
                let appended = broker.clone();
                let on_commit: Arc<dyn Fn() + Send + Sync> =
                    Arc::new(move || appended.appended.send_modify(|n| *n = n.wrapping_add(1)));
                let replica = Replica::start(
                    (self.node, self.rpc.clone(), &self.router),
                    store,
                    GroupSpec { group: pm.group, voters: &pm.replicas, supervised: true, joining },
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

    /// On the metadata leader: makes every registered broker a member of the metadata group
    /// (added ones as learners), and drains the brokers being decommissioned: their replicas are
    /// reassigned to the other brokers (the least loaded first, in the same place in the replica
    /// list), then they leave the metadata group (a voter's place goes to a learner, if there is
    /// one) and the cluster. Each step is retried by later rounds until it sticks.
    async fn manage_brokers(self: &Arc<Self>, meta: &crate::raft::metadata::ClusterMeta) {
        let group = &self.meta.replica;
        let (voters, learners) = group.members();
        for &id in meta.brokers.keys() {
            if !voters.contains(&id) && !learners.contains(&id) && !meta.decommissioning.contains(&id) {
                match group.add_learner(id).await {
                    Ok(()) => tracing::info!(node = id, "a new broker joined the metadata group as a learner"),
                    Err(e) => tracing::warn!(node = id, error = %e, "adding a broker to the metadata group failed"),
                }
            }
        }
        let placeable = self.placeable();
        for &leaving in &meta.decommissioning {
            // How many replicas each remaining node holds or is to hold.
            let mut load: HashMap<NodeId, usize> = placeable.iter().map(|&n| (n, 0)).collect();
            for (_, _, p) in meta.partitions() {
                for n in p.hosts() {
                    *load.entry(n).or_default() += 1;
                }
            }
            let mut draining = false;
            // Moves to start and moves to cancel, proposed together below: one at a time, a
            // drain of a hundred partitions waited for a hundred metadata commits in a row.
            let (mut moves, mut cancels) = (Vec::new(), Vec::new());
            for (name, index, p) in meta.partitions() {
                if !p.hosts().any(|n| n == leaving) {
                    continue;
                }
                draining = true;
                if let Some(target) = p.moving() {
                    // A move in progress; the next round looks again. One onto a node that has
                    // gone down since would wait for it: cancel it, and a later round picks a
                    // live broker.
                    if target.iter().any(|n| !p.replicas.contains(n) && !self.is_live(*n)) {
                        cancels.push((name, index, target.clone()));
                    }
                    continue;
                }
                if p.target.is_some() {
                    continue; // a cancelled move going back
                }
                let spare = placeable
                    .iter()
                    .copied()
                    .filter(|n| !p.replicas.contains(n) && self.is_live(*n))
                    .min_by_key(|n| (load[n], *n));
                let Some(spare) = spare else {
                    tracing::warn!(node = leaving, topic = %name, partition = index, "no live broker to take over a replica of a decommissioned broker");
                    continue;
                };
                *load.get_mut(&spare).expect("placeable") += 1;
                let target: Vec<NodeId> = p.replicas.iter().map(|&n| if n == leaving { spare } else { n }).collect();
                moves.push((name, index, target));
            }
            let cancelled = cancels.iter().map(|(name, index, target)| async move {
                match self.cancel_reassignment(name, *index as i32).await {
                    Ok(()) => {
                        tracing::info!(node = leaving, topic = %name, partition = index, ?target, "a drain move's new broker is down; cancelled it")
                    }
                    Err((_, e)) => {
                        tracing::warn!(node = leaving, topic = %name, partition = index, error = %e, "cancelling a drain move failed")
                    }
                }
            });
            let moved = moves.into_iter().map(|(name, index, target)| async move {
                match self.reassign(name, index as i32, target.clone()).await {
                    Ok(()) => {
                        tracing::info!(node = leaving, topic = %name, partition = index, ?target, "draining a decommissioned broker")
                    }
                    Err((_, e)) => {
                        tracing::warn!(node = leaving, topic = %name, partition = index, error = %e, "draining a decommissioned broker failed")
                    }
                }
            });
            futures_util::future::join(
                futures_util::future::join_all(cancelled),
                futures_util::future::join_all(moved),
            )
            .await;
            if draining {
                continue;
            }
            if voters.contains(&leaving) || learners.contains(&leaving) {
                let successor = learners
                    .iter()
                    .copied()
                    .find(|&n| n != leaving && placeable.contains(&n) && self.is_live(n) && !voters.contains(&n));
                match group.remove_member(leaving, successor).await {
                    Ok(()) => {
                        tracing::info!(node = leaving, ?successor, "a decommissioned broker left the metadata group")
                    }
                    Err(e) => {
                        tracing::warn!(node = leaving, error = %e, "removing a decommissioned broker from the metadata group failed")
                    }
                }
                continue;
            }
            match self.meta.propose(&MetaCommand::RemoveBroker { id: leaving }).await {
                Ok(Ok(())) => tracing::info!(node = leaving, "a decommissioned broker left the cluster"),
                Ok(Err(e)) | Err(e) => {
                    tracing::warn!(node = leaving, error = %e, "removing a decommissioned broker failed")
                }
            }
        }
    }

    /// Starts decommissioning broker `id` (Kafka's UnregisterBroker): recorded in the metadata;
    /// the metadata leader then moves its replicas to the other brokers and removes it. Refused
    /// if the others could not hold every partition's replicas.
    pub(crate) async fn decommission(&self, id: NodeId) -> Result<(), (i16, String)> {
        use crate::handlers::code;
        let (registered, widest) = self.meta.read(|m| {
            let widest =
                m.partitions().filter(|(_, _, p)| p.hosts().any(|n| n == id)).map(|(_, _, p)| p.replicas.len());
            (m.brokers.contains_key(&id), widest.max().unwrap_or(0))
        });
        if !registered {
            return Err((code::BROKER_ID_NOT_REGISTERED, format!("Broker {id} is not registered in this cluster.")));
        }
        let others = self.placeable().into_iter().filter(|&n| n != id).count();
        if others == 0 || others < widest {
            return Err((
                code::INVALID_REQUEST,
                format!(
                    "Broker {id} holds replicas of a partition with {widest} replicas; the {others} other broker(s) cannot hold them. Add a broker first."
                ),
            ));
        }
        let deadline = tokio::time::Instant::now() + CREATE_WAIT;
        match self.propose_retrying(&MetaCommand::DecommissionBroker { id }, deadline).await? {
            Ok(()) => Ok(()),
            Err(m) => Err((code::BROKER_ID_NOT_REGISTERED, m)),
        }
    }

    /// Every reassignment in progress, per topic.
    pub(crate) fn reassignments(&self) -> Vec<(String, Vec<Moving>)> {
        self.meta.read(|m| {
            m.topics
                .iter()
                .map(|(name, t)| {
                    let moving =
                        t.partitions.iter().enumerate().filter_map(|(i, p)| {
                            p.moving().map(|target| (i as i32, p.replicas.clone(), target.clone()))
                        });
                    (name.clone(), moving.collect::<Vec<_>>())
                })
                .filter(|(_, moving)| !moving.is_empty())
                .collect()
        })
    }

    /// Starts moving a partition to the replicas `target` (preferred leader first): recorded in
    /// the metadata; its leader carries it out. Nothing to do if `target` is the replicas already.
    pub(crate) async fn reassign(&self, topic: &str, partition: i32, target: Vec<NodeId>) -> Result<(), (i16, String)> {
        use crate::handlers::code;
        let (id, _, _) = self.topic_meta(topic)?;
        let Some(PartitionMeta { replicas, target: moving, .. }) = self.partition_meta(topic, partition) else {
            return Err((code::UNKNOWN_TOPIC_OR_PARTITION, format!("{topic} has no partition {partition}")));
        };
        let registered = self.meta.read(|m| target.iter().all(|n| m.brokers.contains_key(n)));
        if !distinct_nodes(&target) || !registered {
            return Err((
                code::INVALID_REPLICA_ASSIGNMENT,
                format!("{target:?} is not a list of distinct registered brokers"),
            ));
        }
        if moving.is_none() && target == replicas {
            return Ok(());
        }
        if moving.is_some() {
            return Err((code::INVALID_REPLICA_ASSIGNMENT, format!("{topic}-{partition} is being reassigned already")));
        }
        let cmd = MetaCommand::Reassign { name: topic.to_string(), id, partition: partition as usize, target };
        let deadline = tokio::time::Instant::now() + CREATE_WAIT;
        match self.propose_retrying(&cmd, deadline).await? {
            Ok(()) => Ok(()),
            Err(m) => Err((code::INVALID_REPLICA_ASSIGNMENT, m)),
        }
    }

    /// Cancels the reassignment of a partition (AlterPartitionReassignments with null replicas):
    /// its leader moves the voters back to the replicas.
    pub(crate) async fn cancel_reassignment(&self, topic: &str, partition: i32) -> Result<(), (i16, String)> {
        let (id, _, _) = self.topic_meta(topic)?;
        let cmd = MetaCommand::CancelReassignment { name: topic.to_string(), id, partition: partition as usize };
        let deadline = tokio::time::Instant::now() + CREATE_WAIT;
        match self.propose_retrying(&cmd, deadline).await? {
            Ok(()) => Ok(()),
            Err(m) => Err((crate::handlers::code::NO_REASSIGNMENT_IN_PROGRESS, m)),
        }
    }

    /// On the leader of a partition being reassigned: changes the group's voters to `target` in
    /// the background (once per partition at a time), then records the reassignment complete.
    fn drive_reassignment(
        self: &Arc<Self>,
        name: &str,
        id: &str,
        partition: usize,
        target: &[NodeId],
        replica: Arc<Replica>,
    ) {
        if !self.reassigning.lock().insert(replica.group) {
            return;
        }
        let cluster = self.clone();
        let (name, id, target) = (name.to_string(), id.to_string(), target.to_vec());
        tokio::spawn(async move {
            let group = replica.group;
            tracing::info!(topic = %name, partition, ?target, "reassigning: changing the group's voters");
            // A new replica on a node that is down never catches up: give up after a while and
            // let a later round (the reconciler runs every few seconds) try again. A cancelled
            // move stops at once, so the move back can start.
            let superseded = async {
                let mut changes = cluster.meta.changes();
                while cluster.partition_meta(&name, partition as i32).and_then(|p| p.target).as_ref() == Some(&target) {
                    if changes.changed().await.is_err() {
                        break;
                    }
                }
            };
            let changed = tokio::select! {
                r = tokio::time::timeout(REASSIGN_STEP_TIMEOUT, replica.change_voters(&target)) => r.unwrap_or_else(|_| {
                    Err(format!("the new replicas did not catch up within {REASSIGN_STEP_TIMEOUT:?}"))
                }),
                () = superseded => Err("the reassignment was cancelled".to_string()),
            };
            let done = match changed {
                Ok(()) => {
                    let cmd = MetaCommand::CompleteReassignment { name: name.clone(), id, partition, target };
                    let deadline = tokio::time::Instant::now() + CREATE_WAIT;
                    cluster.propose_retrying(&cmd, deadline).await.map_err(|(_, m)| m).and_then(|r| r)
                }
                Err(e) => Err(e),
            };
            match done {
                Ok(()) => tracing::info!(topic = %name, partition, "reassignment complete"),
                // Leadership moved or a node is down: the next leader (or this one, on the next
                // metadata change) tries again.
                Err(e) => tracing::warn!(topic = %name, partition, error = %e, "reassignment not finished"),
            }
            cluster.reassigning.lock().remove(&group);
        });
    }

    /// Stops a replica this node no longer hosts and empties its log, so that the partition looks
    /// like one it never hosted (and a later reassignment back starts from nothing).
    async fn drop_replica(&self, p: &Arc<crate::state::Partition>, replica: Arc<Replica>) -> anyhow::Result<()> {
        self.stop_replicas(&[replica]).await;
        let log = p.log.clone();
        tokio::task::spawn_blocking(move || crate::raft::log_store::forget(&mut log.lock())).await??;
        tracing::info!(topic = %p.topic, partition = p.index, "dropped a replica a reassignment moved away");
        Ok(())
    }

    /// Stops `stopping` (taken out of their partitions) and forgets them.
    async fn stop_replicas(&self, stopping: &[Arc<Replica>]) {
        self.replicas.lock().retain(|r| !stopping.iter().any(|s| s.group == r.group));
        futures_util::future::join_all(stopping.iter().map(|r| r.shutdown(&self.router))).await;
    }

    /// Stops this node's replicas of a deleted topic and removes its data.
    async fn remove_topic(&self, broker: &Arc<Broker>, topic: &Arc<crate::state::Topic>) -> anyhow::Result<()> {
        let stopping: Vec<Arc<Replica>> = topic.partitions.read().iter().filter_map(|p| p.replica.take()).collect();
        self.stop_replicas(&stopping).await;
        let (b, name) = (broker.clone(), topic.name.clone());
        tokio::task::spawn_blocking(move || b.delete_topic(&name)).await??;
        tracing::info!(topic = %topic.name, "removed a topic the cluster deleted");
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

    #[test]
    fn leaders_answers_round_trip_and_hostile_bytes_are_refused() {
        let leaders = vec![(GroupId(7), Some(2), 5), (GroupId(9), None, 3)];
        let encoded = encode_leaders(&leaders);
        assert_eq!(decode_leaders(&encoded), Some(leaders));
        assert_eq!(decode_leaders(&encode_leaders(&[])), Some(vec![]));
        for cut in 0..encoded.len() {
            assert_eq!(decode_leaders(&encoded[..cut]), None, "truncated at {cut}");
        }
        let mut longer = encoded.clone();
        longer.push(0);
        assert_eq!(decode_leaders(&longer), None, "trailing bytes");
        // A count far beyond the bytes present allocates nothing and is refused.
        let mut huge = encoded;
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode_leaders(&huge), None);
    }
}
