//! OffsetCommit: checks the committer against its group (generation, member, instance id), or
//! takes a standalone commit (generation -1), and answers once the commit is durable in
//! `__consumer_offsets`.

use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse, TopicName};

use super::{Ctx, Request, code, str_bytes};
use crate::group::coordinator::CommitPart;

pub(super) async fn handle(ctx: &Ctx, req: Request<OffsetCommitRequest>) -> Option<OffsetCommitResponse> {
    let version = req.version();
    let b = req.body;
    let group = b.group_id.0.to_string();
    let metadata_max = ctx.broker.config.read().i64("offset.metadata.max.bytes").max(0) as usize;
    let top = if group.is_empty() { Err(code::INVALID_GROUP_ID) } else { ctx.groups.check(&group) };
    let mut parts = Vec::new();
    for t in &b.topics {
        let topic = ctx.broker.topic(&t.name.0);
        for p in &t.partitions {
            let metadata = p.committed_metadata.as_ref().map(|m| m.to_string()).unwrap_or_default();
            let error = match top {
                Err(e) => e,
                Ok(()) if topic.as_ref().and_then(|t| t.partition(p.partition_index)).is_none() => {
                    code::UNKNOWN_TOPIC_OR_PARTITION
                }
                Ok(()) if metadata.len() > metadata_max => code::OFFSET_METADATA_TOO_LARGE,
                Ok(()) => code::NONE,
            };
            parts.push(CommitPart {
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: if version >= 6 { p.committed_leader_epoch } else { -1 },
                metadata,
                error,
            });
        }
    }
    if top.is_ok() && parts.iter().any(|p| p.error == code::NONE) {
        let instance = b.group_instance_id.as_ref().map(|s| s.to_string());
        parts =
            ctx.groups.commit(&group, b.generation_id_or_member_epoch, &b.member_id, instance.as_deref(), parts).await;
    }
    let mut resp = OffsetCommitResponse::default();
    for p in parts {
        if resp.topics.last().is_none_or(|t: &OffsetCommitResponseTopic| t.name.0.as_str() != p.topic) {
            let mut t = OffsetCommitResponseTopic::default();
            t.name = TopicName(str_bytes(p.topic.clone()));
            resp.topics.push(t);
        }
        let mut rp = OffsetCommitResponsePartition::default();
        rp.partition_index = p.partition;
        rp.error_code = p.error;
        resp.topics.last_mut().expect("pushed").partitions.push(rp);
    }
    Some(resp)
}
