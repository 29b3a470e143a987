//! TxnOffsetCommit: offsets committed inside a transaction. They are written to
//! `__consumer_offsets` as the producer's transactional batch and become the group's committed
//! offsets only when the transaction commits (its marker lands in that partition).

use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{TopicName, TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use super::offset_commit::{Wanted, by_topic, commit_parts};
use super::{Ctx, Request, code, str_bytes};
use crate::txn::state::{INVALID_TXN_STATE, TxnState, fenced_code};

pub(super) async fn handle(ctx: &Ctx, req: Request<TxnOffsetCommitRequest>) -> Option<TxnOffsetCommitResponse> {
    let version = req.version();
    let b = req.body;
    let group = b.group_id.0.to_string();
    let txn_id = b.transactional_id.0.to_string();
    let (pid, epoch) = (b.producer_id.0, b.producer_epoch);
    // The producer must be the transaction's current one, with the group's partition added.
    // Where this node does not coordinate the transaction (a cluster: the group's and the
    // transaction's coordinators are the leaders of different partitions), the producer's epoch
    // is checked by the offsets partition's producer state when the batch is appended, as Kafka's
    // group coordinator does.
    let offsets_partition = ctx.txns.offsets_partition(&group);
    let txn_check = match ctx.txns.check(&txn_id) {
        Err(_) if ctx.broker.cluster.get().is_some() => Ok(()),
        Err(e) => Err(e),
        Ok(()) => ctx.txns.with_state(|s| match s.describe(&txn_id) {
            Err(_) => Err(crate::txn::state::INVALID_PRODUCER_ID_MAPPING),
            Ok(m) if m.producer_id != pid => Err(crate::txn::state::INVALID_PRODUCER_ID_MAPPING),
            Ok(m) if m.producer_epoch != epoch => Err(crate::txn::state::PRODUCER_FENCED),
            Ok(m) if m.state != TxnState::Ongoing || !m.partitions.contains(&offsets_partition) => {
                Err(INVALID_TXN_STATE)
            }
            Ok(_) => Ok(()),
        }),
    };
    let top = if group.is_empty() { Err(code::INVALID_GROUP_ID) } else { ctx.groups.check(&group) }
        .and(txn_check)
        .map_err(|e| fenced_code(e, version >= 3));
    let wanted = b.topics.iter().flat_map(|t| {
        t.partitions.iter().map(move |p| Wanted {
            topic: &t.name.0,
            partition: p.partition_index,
            offset: p.committed_offset,
            leader_epoch: if version >= 2 { p.committed_leader_epoch } else { -1 },
            metadata: p.committed_metadata.as_deref(),
        })
    });
    let mut parts = commit_parts(ctx, top, wanted);
    if top.is_ok() && parts.iter().any(|p| p.error == code::NONE) {
        // v3+ (KIP-447) carries the consumer's group metadata: fence commits from old members.
        let (generation, member) =
            if version >= 3 { (b.generation_id, b.member_id.to_string()) } else { (-1, String::new()) };
        let instance = b.group_instance_id.as_ref().map(|s| s.to_string());
        parts = ctx.groups.commit_as(&group, generation, &member, instance.as_deref(), parts, Some((pid, epoch))).await;
    }
    let mut resp = TxnOffsetCommitResponse::default();
    resp.topics = by_topic(parts)
        .into_iter()
        .map(|(name, partitions)| {
            let mut t = TxnOffsetCommitResponseTopic::default();
            t.name = TopicName(str_bytes(name));
            t.partitions = partitions
                .into_iter()
                .map(|(index, error)| {
                    let mut rp = TxnOffsetCommitResponsePartition::default();
                    rp.partition_index = index;
                    rp.error_code = error;
                    rp
                })
                .collect();
            t
        })
        .collect();
    Some(resp)
}
