//! AlterPartitionReassignments and ListPartitionReassignments: moving a partition's replicas to
//! other nodes. In a cluster a reassignment is a metadata command; the partition's Raft leader
//! adds the new replicas as learners, lets them catch up, changes the group's voters, and then
//! records the move complete, when the replicas no longer wanted stop and drop their data (see
//! `cluster.rs`). The request is answered once the reassignment is recorded, as Kafka does; List
//! shows it until it completes. Null replicas cancel a move: the leader moves the voters back to
//! the replicas (the nodes being added keep their copy until then), and List no longer shows it.
//! A single node is every partition's only possible replica.

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};

use super::code::NO_REASSIGNMENT_IN_PROGRESS;
use super::{Ctx, Request, code, str_bytes};

pub(super) async fn alter(
    ctx: &Ctx,
    req: Request<AlterPartitionReassignmentsRequest>,
) -> Option<AlterPartitionReassignmentsResponse> {
    // v0 has no flag: any replication factor.
    let allow_rf_change = req.version() == 0 || req.body.allow_replication_factor_change;
    let mut resp = AlterPartitionReassignmentsResponse::default();
    resp.allow_replication_factor_change = allow_rf_change;
    for t in req.body.topics {
        let mut tr = ReassignableTopicResponse::default();
        tr.name = t.name.clone();
        for p in t.partitions {
            let target: Option<Vec<i32>> = p.replicas.map(|r| r.into_iter().map(|b| b.0).collect());
            let outcome = reassign(ctx, &t.name.0, p.partition_index, target, allow_rf_change).await;
            let mut pr = ReassignablePartitionResponse::default();
            pr.partition_index = p.partition_index;
            if let Err((error, message)) = outcome {
                pr.error_code = error;
                pr.error_message = Some(str_bytes(message));
            }
            tr.partitions.push(pr);
        }
        resp.responses.push(tr);
    }
    Some(resp)
}

async fn reassign(
    ctx: &Ctx,
    topic: &str,
    partition: i32,
    target: Option<Vec<i32>>,
    allow_rf_change: bool,
) -> Result<(), (i16, String)> {
    let unknown = || (code::UNKNOWN_TOPIC_OR_PARTITION, "This server does not host this topic-partition.".to_string());
    if ctx.broker.topic(topic).and_then(|t| t.partition(partition)).is_none() {
        return Err(unknown());
    }
    let Some(cluster) = ctx.broker.cluster.get() else {
        let node = ctx.broker.config.read().node_id;
        return match target {
            Some(t) if t == [node] => Ok(()),
            Some(t) => Err((code::INVALID_REPLICA_ASSIGNMENT, format!("{t:?}: broker {node} is the only broker"))),
            None => Err((NO_REASSIGNMENT_IN_PROGRESS, "No reassignment is in progress.".to_string())),
        };
    };
    let current = cluster.partition_meta(topic, partition).ok_or_else(unknown)?;
    // A cancellation is decided by the metadata group, not by this node's copy, which may not
    // have applied the move yet: the command is refused there if nothing moves.
    let Some(target) = target else { return cluster.cancel_reassignment(topic, partition).await };
    let target: Vec<u64> = target
        .into_iter()
        .map(|id| u64::try_from(id).map_err(|_| (code::INVALID_REPLICA_ASSIGNMENT, format!("{id} is not a broker id"))))
        .collect::<Result<_, _>>()?;
    if !allow_rf_change && target.len() != current.replicas.len() {
        return Err((
            code::INVALID_REPLICATION_FACTOR,
            format!("The replication factor would change from {} to {}.", current.replicas.len(), target.len()),
        ));
    }
    cluster.reassign(topic, partition, target).await
}

pub(super) async fn list(
    ctx: &Ctx,
    req: Request<ListPartitionReassignmentsRequest>,
) -> Option<ListPartitionReassignmentsResponse> {
    let mut resp = ListPartitionReassignmentsResponse::default();
    let Some(cluster) = ctx.broker.cluster.get() else { return Some(resp) };
    let wanted: Option<Vec<(String, Vec<i32>)>> =
        req.body.topics.map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
    let ids = |nodes: Vec<u64>| nodes.into_iter().map(|n| BrokerId(n as i32)).collect::<Vec<_>>();
    for (topic, partitions) in cluster.reassignments() {
        let mut tr = OngoingTopicReassignment::default();
        tr.name = TopicName(str_bytes(topic.clone()));
        for (partition, replicas, target) in partitions {
            let asked = wanted.as_ref().is_none_or(|w| w.iter().any(|(t, ps)| *t == topic && ps.contains(&partition)));
            if !asked {
                continue;
            }
            let mut pr = OngoingPartitionReassignment::default();
            pr.partition_index = partition;
            pr.adding_replicas = ids(target.iter().copied().filter(|n| !replicas.contains(n)).collect());
            pr.removing_replicas = ids(replicas.iter().copied().filter(|n| !target.contains(n)).collect());
            let mut all = replicas.clone();
            all.extend(target.iter().copied().filter(|n| !replicas.contains(n)));
            pr.replicas = ids(all);
            tr.partitions.push(pr);
        }
        if !tr.partitions.is_empty() {
            resp.topics.push(tr);
        }
    }
    Some(resp)
}
