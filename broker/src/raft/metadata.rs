//! The cluster metadata group (issue 5, item 3): one Raft group, [`METADATA_GROUP`], whose
//! voters are the configured nodes. Its log (`<data>/meta/cluster-metadata`) is a Kafka log like
//! any partition's; each normal entry is a batch of one record whose value is a
//! [`MetaCommand`] in JSON. Every node applies the commands to its [`ClusterMeta`] in log order,
//! so all nodes agree on brokers, topics and partition assignments, and the broker builds its
//! local topics from it.
//!
//! Any node may propose: a node that does not lead forwards the command over the internal RPC
//! ([`KIND_META_PROPOSE`]) to the leader it knows, which proposes it and answers once applied.
//! The state is in memory and rebuilt by re-applying the log at startup (snapshots are off, so
//! the log is never purged; metadata is small).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use creek_protocol::batch::{build_batch, set_base_offset};
use creek_protocol::records::DecodedBatch;
use openraft::EntryPayload;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::log_store::{LogStore, PROPOSAL_OFFSET};
use super::network::RaftRouter;
use super::replica::{GroupSpec, ProposeError, Replica};
use super::state_machine::ApplyHook;
use super::{Applied, Entry, KafkaBatch};
use crate::rpc::{GroupId, Handler, HandlerFuture, MessageKind, NodeId, Rpc};
use crate::state::now_ms;

/// The metadata group's id; partition groups are numbered from 1 by [`ClusterMeta`].
pub(crate) const METADATA_GROUP: GroupId = GroupId(0);
/// A command forwarded to the metadata leader: JSON [`MetaCommand`] in, JSON
/// `Result<(), String>` out.
pub(crate) const KIND_META_PROPOSE: MessageKind = MessageKind(16);
/// A command sent by a node that knows no metadata leader (a broker that is not a member yet) to
/// a configured voter, which proposes it as its own, forwarding it to its leader: JSON in and
/// out as [`KIND_META_PROPOSE`].
pub(crate) const KIND_META_RELAY: MessageKind = MessageKind(20);
/// How long a forwarded proposal may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// A metadata command larger than this is refused (topic configs are small).
const COMMAND_BYTES_MAX: usize = 1 << 20;

/// A change to the cluster metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum MetaCommand {
    /// A broker announces where Kafka clients reach it, and where other brokers reach its
    /// internal listener, at every start. A broker that was removed joins again.
    RegisterBroker {
        id: NodeId,
        host: String,
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        internal: Option<String>,
    },
    /// Starts draining broker `id`: the metadata leader moves its replicas to other brokers and
    /// then removes it.
    DecommissionBroker { id: NodeId },
    /// Broker `id`, which hosts no replica any more, leaves the cluster.
    RemoveBroker { id: NodeId },
    /// A new topic; partition `i` is replicated on `replicas[i]`, the first one preferred as
    /// leader.
    CreateTopic { name: String, id: String, replicas: Vec<Vec<NodeId>>, configs: BTreeMap<String, String> },
    /// Replaces topic `id`'s config overrides with `configs` if they are still `expected` (a
    /// compare-and-set, so two concurrent edits on different nodes cannot lose one).
    SetTopicConfigs { name: String, id: String, expected: BTreeMap<String, String>, configs: BTreeMap<String, String> },
    /// Deletes topic `id`; every node stops its replicas and removes its data.
    DeleteTopic { name: String, id: String },
    /// Appends partitions to topic `id`, which must still have `from` partitions, replicated on
    /// `replicas[i]` like a new topic's.
    AddPartitions { name: String, id: String, from: usize, replicas: Vec<Vec<NodeId>> },
    /// Starts moving a partition of topic `id` to the replicas `target` (preferred leader
    /// first): nodes in `target` start a replica that joins the group, and its leader changes
    /// the group's voters.
    Reassign { name: String, id: String, partition: usize, target: Vec<NodeId> },
    /// The group's voters are now `target`: it becomes the partition's replicas, and nodes no
    /// longer among them stop their replica and drop its data.
    CompleteReassignment { name: String, id: String, partition: usize, target: Vec<NodeId> },
    /// Cancels a reassignment in progress: the target becomes the replicas again, so the leader
    /// moves the group's voters back; the nodes the move was adding keep their replica until
    /// the move back completes (they may be voters already).
    CancelReassignment { name: String, id: String, partition: usize },
}

/// Whether `nodes` is a replica list: not empty, no node twice.
pub(crate) fn distinct_nodes(nodes: &[NodeId]) -> bool {
    let set: std::collections::BTreeSet<NodeId> = nodes.iter().copied().collect();
    !nodes.is_empty() && set.len() == nodes.len()
}

/// What a refused [`MetaCommand::SetTopicConfigs`] says when the configs changed under it.
pub(crate) const CONFIGS_CHANGED: &str = "the topic's configs changed concurrently";

/// One partition as the metadata records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionMeta {
    pub(crate) group: GroupId,
    pub(crate) replicas: Vec<NodeId>,
    /// The replicas a reassignment in progress moves the partition to.
    pub(crate) target: Option<Vec<NodeId>>,
    /// Nodes a cancelled reassignment was adding: they keep hosting until the voters are the
    /// replicas again.
    pub(crate) cancelled: Vec<NodeId>,
}

impl PartitionMeta {
    /// Every node that hosts (or is to host) a replica: the replicas and the target.
    /// A node appears once: `cancelled` is filled only when the target becomes the replicas.
    pub(crate) fn hosts(&self) -> impl Iterator<Item = NodeId> + '_ {
        let extra = self.target.iter().flatten().chain(&self.cancelled).filter(|n| !self.replicas.contains(n));
        self.replicas.iter().chain(extra).copied()
    }

    /// Whether a reassignment (not a cancellation moving the voters back) is in progress.
    pub(crate) fn moving(&self) -> Option<&Vec<NodeId>> {
        self.target.as_ref().filter(|t| **t != self.replicas)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicMeta {
    pub(crate) id: String,
    pub(crate) partitions: Vec<PartitionMeta>,
    pub(crate) configs: BTreeMap<String, String>,
}

/// The applied cluster metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClusterMeta {
    /// Kafka `host:port` per registered broker.
    pub(crate) brokers: BTreeMap<NodeId, (String, u16)>,
    /// The internal listener's `host:port` of each broker that announced one.
    pub(crate) internal_addrs: BTreeMap<NodeId, String>,
    /// Brokers being drained ([`MetaCommand::DecommissionBroker`]).
    pub(crate) decommissioning: std::collections::BTreeSet<NodeId>,
    /// Brokers that left the cluster ([`MetaCommand::RemoveBroker`]).
    pub(crate) removed: std::collections::BTreeSet<NodeId>,
    pub(crate) topics: BTreeMap<String, TopicMeta>,
    /// Ids of deleted topics: a node that still holds one removes it.
    pub(crate) deleted_topics: std::collections::BTreeSet<String>,
    next_group: u64,
}

impl ClusterMeta {
    /// Applies one command; an error leaves the state unchanged and is the proposer's answer.
    pub(crate) fn apply(&mut self, cmd: MetaCommand) -> Result<(), String> {
        match cmd {
            MetaCommand::RegisterBroker { id, host, port, internal } => {
                self.brokers.insert(id, (host, port));
                if let Some(addr) = internal {
                    self.internal_addrs.insert(id, addr);
                }
                self.removed.remove(&id);
                Ok(())
            }
            MetaCommand::DecommissionBroker { id } => {
                if !self.brokers.contains_key(&id) {
                    return Err(format!("broker {id} is not registered"));
                }
                self.decommissioning.insert(id);
                Ok(())
            }
            MetaCommand::RemoveBroker { id } => {
                if let Some((name, i, _)) = self.partitions().find(|(_, _, p)| p.hosts().any(|n| n == id)) {
                    return Err(format!("broker {id} still hosts {name}-{i}"));
                }
                self.brokers.remove(&id);
                self.internal_addrs.remove(&id);
                self.decommissioning.remove(&id);
                self.removed.insert(id);
                Ok(())
            }
            MetaCommand::CreateTopic { name, id, replicas, configs } => {
                if self.topics.contains_key(&name) {
                    return Err(format!("Topic '{name}' already exists."));
                }
                if replicas.is_empty() || replicas.iter().any(|r| r.is_empty()) {
                    return Err(format!("topic {name}: every partition needs at least one replica"));
                }
                let partitions = self.new_partitions(replicas);
                self.topics.insert(name, TopicMeta { id, partitions, configs });
                Ok(())
            }
            MetaCommand::SetTopicConfigs { name, id, expected, configs } => {
                let t = self.topic_mut(&name, &id)?;
                if t.configs != expected {
                    return Err(CONFIGS_CHANGED.to_string());
                }
                t.configs = configs;
                Ok(())
            }
            MetaCommand::DeleteTopic { name, id } => {
                self.topic_mut(&name, &id)?;
                self.topics.remove(&name);
                self.deleted_topics.insert(id);
                Ok(())
            }
            MetaCommand::AddPartitions { name, id, from, replicas } => {
                if replicas.iter().any(|r| r.is_empty()) {
                    return Err(format!("topic {name}: every partition needs at least one replica"));
                }
                let have = self.topic_mut(&name, &id)?.partitions.len();
                if have != from {
                    return Err(format!("The topic {name} has {have} partitions now, not {from}."));
                }
                let added = self.new_partitions(replicas);
                self.topic_mut(&name, &id)?.partitions.extend(added);
                Ok(())
            }
            MetaCommand::Reassign { name, id, partition, target } => {
                if !distinct_nodes(&target) {
                    return Err(format!("topic {name}: a reassignment needs distinct replicas"));
                }
                let p = self.partition_mut(&name, &id, partition)?;
                if p.target.is_some() {
                    return Err(format!("{name}-{partition} is being reassigned already"));
                }
                p.target = Some(target);
                Ok(())
            }
            MetaCommand::CompleteReassignment { name, id, partition, target } => {
                let p = self.partition_mut(&name, &id, partition)?;
                if p.target.as_ref() != Some(&target) {
                    return Err(format!("{name}-{partition} is not being reassigned to {target:?}"));
                }
                p.replicas = target;
                p.target = None;
                p.cancelled.clear();
                Ok(())
            }
            MetaCommand::CancelReassignment { name, id, partition } => {
                let p = self.partition_mut(&name, &id, partition)?;
                let Some(target) = p.moving().cloned() else {
                    return Err(format!("{name}-{partition} is not being reassigned"));
                };
                p.cancelled.extend(target.into_iter().filter(|n| !p.replicas.contains(n)));
                p.target = Some(p.replicas.clone());
                Ok(())
            }
        }
    }

    /// Every partition: topic name, index and record.
    pub(crate) fn partitions(&self) -> impl Iterator<Item = (&String, usize, &PartitionMeta)> {
        self.topics.iter().flat_map(|(name, t)| t.partitions.iter().enumerate().map(move |(i, p)| (name, i, p)))
    }

    /// Topic `name`, if it is still the one with `id`.
    fn topic_mut(&mut self, name: &str, id: &str) -> Result<&mut TopicMeta, String> {
        match self.topics.get_mut(name) {
            Some(t) if t.id == id => Ok(t),
            _ => Err(format!("Topic '{name}' does not exist.")),
        }
    }

    fn partition_mut(&mut self, name: &str, id: &str, partition: usize) -> Result<&mut PartitionMeta, String> {
        self.topic_mut(name, id)?
            .partitions
            .get_mut(partition)
            .ok_or_else(|| format!("topic {name} has no partition {partition}"))
    }

    /// Partitions with the next group ids, replicated on `replicas[i]`.
    fn new_partitions(&mut self, replicas: Vec<Vec<NodeId>>) -> Vec<PartitionMeta> {
        replicas
            .into_iter()
            .map(|replicas| {
                self.next_group += 1;
                PartitionMeta { group: GroupId(self.next_group), replicas, target: None, cancelled: Vec::new() }
            })
            .collect()
    }
}

/// Places `partitions` partitions with `replication` replicas each on `nodes` (sorted ids):
/// partition `p`'s replicas are `replication` consecutive nodes starting at `(p + offset) % n`,
/// so preferred leaders (the first replica) and replicas spread evenly, and topics created one
/// after another start on different nodes.
pub(crate) fn place(nodes: &[NodeId], partitions: usize, replication: usize, offset: usize) -> Vec<Vec<NodeId>> {
    let n = nodes.len();
    (0..partitions).map(|p| (0..replication.min(n)).map(|r| nodes[(p + offset + r) % n]).collect()).collect()
}

fn encode_command(cmd: &MetaCommand) -> Bytes {
    let value = serde_json::to_vec(cmd).expect("metadata commands serialize");
    let mut batch = build_batch(0, now_ms(), &[(None, Some(value.as_slice()))]);
    set_base_offset(&mut batch, PROPOSAL_OFFSET);
    Bytes::from(batch)
}

/// The commands in a stored batch (one per record).
fn decode_commands(batch: &[u8]) -> Result<Vec<MetaCommand>, String> {
    let view = creek_protocol::batch::BatchView::new(batch).map_err(|e| e.to_string())?;
    let decoded = DecodedBatch::new(view, COMMAND_BYTES_MAX).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for record in decoded.iter() {
        let record = record.map_err(|e| e.to_string())?;
        let value = record.value.ok_or("a metadata record without a value")?;
        out.push(serde_json::from_slice(value).map_err(|e| format!("metadata record: {e}"))?);
    }
    Ok(out)
}

/// Applies committed commands to the shared state and bumps `changed`.
struct MetaHook {
    state: Arc<RwLock<ClusterMeta>>,
    changed: watch::Sender<u64>,
}

impl ApplyHook for MetaHook {
    fn apply(&self, entry: &Entry) -> Applied {
        let EntryPayload::Normal(KafkaBatch(b)) = &entry.payload else {
            return Applied::Nothing;
        };
        if let Some(r) = super::log_store::Refusal::of(b) {
            return Applied::Meta(Err(format!("refused by the leader (error {})", r.code)));
        }
        let result = match decode_commands(b) {
            Ok(cmds) => {
                let mut state = self.state.write();
                let mut result = Ok(());
                for cmd in cmds {
                    result = result.and(state.apply(cmd));
                }
                result
            }
            Err(e) => {
                tracing::error!(index = entry.log_id.index(), error = %e, "skipping an unreadable metadata entry");
                Err(e)
            }
        };
        self.changed.send_modify(|n| *n += 1);
        Applied::Meta(result)
    }
}

/// This node's member of the metadata group.
pub(crate) struct Metadata {
    pub(crate) replica: Arc<Replica>,
    rpc: Rpc,
    /// The configured voters (`internal.peers`), in id order: where a node that knows no
    /// leader sends its proposals.
    pub(crate) configured: Vec<NodeId>,
    state: Arc<RwLock<ClusterMeta>>,
    changed: watch::Receiver<u64>,
}

impl Metadata {
    /// Starts the metadata replica on `store` with every configured node as a voter, and serves
    /// forwarded proposals. A node that is not configured joins: it waits for the leader to add
    /// it as a learner once it has registered.
    pub(crate) async fn start(
        node: NodeId,
        rpc: Rpc,
        router: &Arc<RaftRouter>,
        store: LogStore,
        voters: &[NodeId],
    ) -> std::io::Result<Arc<Metadata>> {
        let state = Arc::new(RwLock::new(ClusterMeta::default()));
        let (tx, changed) = watch::channel(0);
        let hook_state = state.clone();
        let joining = !voters.contains(&node);
        let spec = GroupSpec { group: METADATA_GROUP, voters, supervised: false, joining };
        let replica = Replica::start((node, rpc.clone(), router), store, spec, move |_, _| {
            Arc::new(MetaHook { state: hook_state, changed: tx })
        })
        .await?;
        let meta = Arc::new(Metadata { replica, rpc, configured: voters.to_vec(), state, changed });
        router.register_service(KIND_META_PROPOSE, Arc::new(ForwardHandler(meta.clone())));
        router.register_service(KIND_META_RELAY, Arc::new(ForwardHandler(meta.clone())));
        Ok(meta)
    }

    /// A copy of the applied metadata.
    pub(crate) fn snapshot(&self) -> ClusterMeta {
        self.state.read().clone()
    }

    /// Reads the applied metadata without copying it.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&ClusterMeta) -> R) -> R {
        f(&self.state.read())
    }

    /// Bumped after every applied command.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }

    /// The metadata leader (Kafka's "controller").
    pub(crate) fn leader(&self) -> Option<NodeId> {
        self.replica.leader()
    }

    /// Proposes `cmd` here or at the leader and waits until it is applied on the leader; the
    /// outer error is "not done, retry" (no leader, leader change, unreachable), the inner one
    /// the command's own refusal.
    pub(crate) async fn propose(&self, cmd: &MetaCommand) -> Result<Result<(), String>, String> {
        self.propose_via(cmd, true).await
    }

    /// [`Metadata::propose`]; with `relay`, a node that knows no leader asks a configured voter
    /// to propose for it (a relayed proposal is not relayed again, so voters without a leader
    /// do not pass it around).
    async fn propose_via(&self, cmd: &MetaCommand, relay: bool) -> Result<Result<(), String>, String> {
        let (to, kind) = match self.propose_local(cmd).await {
            Err(ProposeError::NotLeader(Some(leader))) => (leader, KIND_META_PROPOSE),
            Err(ProposeError::NotLeader(None)) if relay => {
                let voter = self.configured.iter().copied().find(|&v| self.rpc.is_connected(v));
                (voter.ok_or("no metadata leader known and no configured node reachable")?, KIND_META_RELAY)
            }
            Err(e) => return Err(format!("{e:?}")),
            Ok(r) => return Ok(r),
        };
        let payload = Bytes::from(serde_json::to_vec(cmd).expect("metadata commands serialize"));
        let answer = self
            .rpc
            .call(to, METADATA_GROUP, kind, payload, FORWARD_TIMEOUT)
            .await
            .map_err(|e| format!("forwarding to node {to}: {e}"))?;
        serde_json::from_slice::<Result<Result<(), String>, String>>(&answer)
            .map_err(|e| format!("node {to} answered badly: {e}"))?
    }

    async fn propose_local(&self, cmd: &MetaCommand) -> Result<Result<(), String>, ProposeError> {
        match self.replica.propose(encode_command(cmd)).await? {
            Applied::Meta(r) => Ok(r),
            other => Ok(Err(format!("unexpected apply result {other:?}"))),
        }
    }

    pub(crate) async fn shutdown(&self, router: &RaftRouter) {
        self.replica.shutdown(router).await;
    }
}

/// Answers proposals forwarded by other nodes: [`KIND_META_PROPOSE`] only on the leader,
/// [`KIND_META_RELAY`] by passing it on to the leader.
struct ForwardHandler(Arc<Metadata>);

impl Handler for ForwardHandler {
    fn handle(&self, from: NodeId, _group: GroupId, kind: MessageKind, payload: Bytes) -> HandlerFuture {
        let meta = self.0.clone();
        Box::pin(async move {
            let answer: Result<Result<(), String>, String> = match serde_json::from_slice::<MetaCommand>(&payload) {
                Ok(cmd) if kind == KIND_META_RELAY => meta.propose_via(&cmd, false).await,
                Ok(cmd) => meta.propose_local(&cmd).await.map_err(|e| format!("{e:?}")),
                Err(e) => {
                    tracing::warn!(from, error = %e, "a malformed forwarded metadata command");
                    Ok(Err(format!("malformed command: {e}")))
                }
            };
            Some(Bytes::from(serde_json::to_vec(&answer).expect("results serialize")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_spreads_leaders_and_replicas() {
        let p = place(&[1, 2, 3], 6, 3, 0);
        assert_eq!(p[0], vec![1, 2, 3]);
        assert_eq!(p[1], vec![2, 3, 1]);
        let mut leaders = [0; 4];
        for r in &p {
            leaders[r[0] as usize] += 1;
        }
        assert_eq!(leaders[1..], [2, 2, 2]);
        assert_eq!(place(&[1, 2, 3], 1, 5, 1), vec![vec![2, 3, 1]], "at most one replica per node");
    }

    #[test]
    fn commands_round_trip_and_apply_in_order() {
        let cmd = MetaCommand::CreateTopic {
            name: "t".into(),
            id: "00000000000000000000000000000001".into(),
            replicas: vec![vec![1, 2], vec![2, 1]],
            configs: BTreeMap::new(),
        };
        let batch = encode_command(&cmd);
        assert_eq!(decode_commands(&batch).unwrap(), vec![cmd.clone()]);
        let mut meta = ClusterMeta::default();
        meta.apply(cmd.clone()).unwrap();
        assert!(meta.apply(cmd).unwrap_err().contains("already exists"));
        let t = &meta.topics["t"];
        assert_eq!(t.partitions.iter().map(|p| p.group.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!(decode_commands(b"not a batch").is_err());
    }

    #[test]
    fn brokers_register_are_decommissioned_and_removed_only_once_they_host_nothing() {
        let mut meta = ClusterMeta::default();
        let register = |id: NodeId, internal: Option<&str>| MetaCommand::RegisterBroker {
            id,
            host: "127.0.0.1".into(),
            port: 9092 + id as u16,
            internal: internal.map(str::to_string),
        };
        meta.apply(register(1, Some("127.0.0.1:19092"))).unwrap();
        meta.apply(register(4, Some("127.0.0.1:19095"))).unwrap();
        assert_eq!(meta.internal_addrs[&4], "127.0.0.1:19095");
        // Registrations written before brokers announced an internal address still decode.
        let old: MetaCommand = serde_json::from_str(r#"{"op":"register_broker","id":2,"host":"h","port":1}"#).unwrap();
        meta.apply(old).unwrap();
        assert!(meta.brokers.contains_key(&2) && !meta.internal_addrs.contains_key(&2));
        assert!(meta.apply(MetaCommand::DecommissionBroker { id: 9 }).is_err(), "not registered");
        let create = MetaCommand::CreateTopic {
            name: "t".into(),
            id: "00000000000000000000000000000001".into(),
            replicas: vec![vec![4, 1]],
            configs: BTreeMap::new(),
        };
        meta.apply(create).unwrap();
        meta.apply(MetaCommand::DecommissionBroker { id: 4 }).unwrap();
        assert!(meta.decommissioning.contains(&4));
        let err = meta.apply(MetaCommand::RemoveBroker { id: 4 }).unwrap_err();
        assert!(err.contains("still hosts t-0"), "{err}");
        let id = "00000000000000000000000000000001".to_string();
        let moved =
            |cmd: fn(String, String, usize, Vec<NodeId>) -> MetaCommand| cmd("t".into(), id.clone(), 0, vec![2, 1]);
        meta.apply(moved(|name, id, partition, target| MetaCommand::Reassign { name, id, partition, target })).unwrap();
        assert!(meta.apply(MetaCommand::RemoveBroker { id: 4 }).is_err(), "a target replica is not enough");
        meta.apply(moved(|name, id, partition, target| MetaCommand::CompleteReassignment {
            name,
            id,
            partition,
            target,
        }))
        .unwrap();
        meta.apply(MetaCommand::RemoveBroker { id: 4 }).unwrap();
        assert!(!meta.brokers.contains_key(&4) && !meta.decommissioning.contains(&4) && meta.removed.contains(&4));
        // A removed broker that starts again joins again.
        meta.apply(register(4, Some("127.0.0.1:19095"))).unwrap();
        assert!(meta.brokers.contains_key(&4) && !meta.removed.contains(&4));
    }

    #[test]
    fn topic_changes_apply_only_to_the_topic_they_name() {
        let id = "00000000000000000000000000000001".to_string();
        let mut meta = ClusterMeta::default();
        let create = MetaCommand::CreateTopic {
            name: "t".into(),
            id: id.clone(),
            replicas: vec![vec![1, 2]],
            configs: BTreeMap::new(),
        };
        meta.apply(create.clone()).unwrap();
        let retention: BTreeMap<String, String> = [("retention.ms".to_string(), "1000".to_string())].into();
        let set =
            |expected: &BTreeMap<String, String>, configs: &BTreeMap<String, String>| MetaCommand::SetTopicConfigs {
                name: "t".into(),
                id: id.clone(),
                expected: expected.clone(),
                configs: configs.clone(),
            };
        meta.apply(set(&BTreeMap::new(), &retention)).unwrap();
        assert_eq!(meta.apply(set(&BTreeMap::new(), &BTreeMap::new())), Err(CONFIGS_CHANGED.to_string()));
        assert_eq!(meta.topics["t"].configs, retention);
        let add = MetaCommand::AddPartitions { name: "t".into(), id: id.clone(), from: 1, replicas: vec![vec![2, 1]] };
        meta.apply(add.clone()).unwrap();
        assert!(meta.apply(add).is_err(), "a second request to grow from 1 partition");
        assert_eq!(meta.topics["t"].partitions.iter().map(|p| p.group.0).collect::<Vec<_>>(), vec![1, 2]);
        let other = MetaCommand::DeleteTopic { name: "t".into(), id: "another".into() };
        assert!(meta.apply(other).is_err(), "a delete of an older topic of the same name");
        meta.apply(MetaCommand::DeleteTopic { name: "t".into(), id: id.clone() }).unwrap();
        assert!(meta.topics.is_empty() && meta.deleted_topics.contains(&id));
        // Re-created under a new id, the name gets new groups.
        let again = MetaCommand::CreateTopic {
            name: "t".into(),
            id: "00000000000000000000000000000002".into(),
            replicas: vec![vec![1, 2]],
            configs: BTreeMap::new(),
        };
        meta.apply(again).unwrap();
        assert_eq!(meta.topics["t"].partitions[0].group.0, 3);
    }
}
