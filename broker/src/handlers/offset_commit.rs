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
    let top = if group.is_empty() { Err(code::INVALID_GROUP_ID) } else { ctx.groups.check(&group) };
    let wanted = b.topics.iter().flat_map(|t| {
        t.partitions.iter().map(move |p| Wanted {
            topic: &t.name.0,
            partition: p.partition_index,
            offset: p.committed_offset,
            leader_epoch: if version >= 6 { p.committed_leader_epoch } else { -1 },
            metadata: p.committed_metadata.as_deref(),
        })
    });
    let mut parts = commit_parts(ctx, top, wanted);
    if top.is_ok() && parts.iter().any(|p| p.error == code::NONE) {
        let instance = b.group_instance_id.as_ref().map(|s| s.to_string());
        parts =
            ctx.groups.commit(&group, b.generation_id_or_member_epoch, &b.member_id, instance.as_deref(), parts).await;
    }
    let mut resp = OffsetCommitResponse::default();
    resp.topics = by_topic(parts)
        .into_iter()
        .map(|(name, partitions)| {
            let mut t = OffsetCommitResponseTopic::default();
            t.name = TopicName(str_bytes(name));
            t.partitions = partitions
                .into_iter()
                .map(|(index, error)| {
                    let mut rp = OffsetCommitResponsePartition::default();
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

/// One partition of an OffsetCommit or TxnOffsetCommit request.
pub(super) struct Wanted<'a> {
    pub(super) topic: &'a str,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) leader_epoch: i32,
    pub(super) metadata: Option<&'a str>,
}

/// The commits of a request after the checks shared by OffsetCommit and TxnOffsetCommit: the
/// request-wide verdict `top`, an existing partition, metadata within `offset.metadata.max.bytes`.
pub(super) fn commit_parts<'a>(
    ctx: &Ctx,
    top: Result<(), i16>,
    wanted: impl Iterator<Item = Wanted<'a>>,
) -> Vec<CommitPart> {
    let metadata_max = ctx.broker.config.read().i64("offset.metadata.max.bytes").max(0) as usize;
    wanted
        .map(|w| {
            let metadata = w.metadata.unwrap_or_default().to_string();
            let error = match top {
                Err(e) => e,
                Ok(()) if ctx.broker.topic(w.topic).and_then(|t| t.partition(w.partition)).is_none() => {
                    code::UNKNOWN_TOPIC_OR_PARTITION
                }
                Ok(()) if metadata.len() > metadata_max => code::OFFSET_METADATA_TOO_LARGE,
                Ok(()) => code::NONE,
            };
            CommitPart {
                topic: w.topic.to_string(),
                partition: w.partition,
                offset: w.offset,
                leader_epoch: w.leader_epoch,
                metadata,
                error,
            }
        })
        .collect()
}

/// Per-partition answers grouped by topic, in request order: (topic, [(partition, error)]).
pub(super) fn by_topic(parts: Vec<CommitPart>) -> Vec<(String, Vec<(i32, i16)>)> {
    let mut out: Vec<(String, Vec<(i32, i16)>)> = Vec::new();
    for p in parts {
        match out.last_mut() {
            Some((t, v)) if *t == p.topic => v.push((p.partition, p.error)),
            _ => out.push((p.topic, vec![(p.partition, p.error)])),
        }
    }
    out
}
