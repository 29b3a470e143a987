//! OffsetFetch: committed offsets with their metadata and leader epoch, for one group (v1-7) or
//! a batch of groups (v8+). With `require_stable` (v7+, KIP-447), a partition whose offset is
//! pending in an open transaction answers UNSTABLE_OFFSET_COMMIT, and the client retries.

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName};

use super::{Ctx, Request, code, str_bytes};
use crate::group::coordinator::Fetched;
use crate::group::offsets::Committed;

fn fetch(ctx: &Ctx, group: &str, wanted: Option<Vec<(String, Vec<i32>)>>) -> Result<Fetched, i16> {
    ctx.groups.check(group)?;
    Ok(ctx.groups.fetch(group, wanted))
}

pub(super) async fn handle(ctx: &Ctx, req: Request<OffsetFetchRequest>) -> Option<OffsetFetchResponse> {
    let version = req.version();
    let b = req.body;
    let stable = version >= 7 && b.require_stable;
    let unstable = |group: &str, topic: &str, p: i32| stable && ctx.groups.has_pending_txn_offset(group, topic, p);
    let mut resp = OffsetFetchResponse::default();
    if version >= 8 {
        for g in b.groups {
            let group = g.group_id.0.to_string();
            let wanted =
                g.topics.map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
            let mut rg = OffsetFetchResponseGroup::default();
            rg.group_id = GroupId(str_bytes(group.clone()));
            // v9 (KIP-848): a consumer group member fetches with its id and epoch.
            let member = match &g.member_id {
                Some(m) if version >= 9 => ctx.groups.check_fetch_member(&group, m, g.member_epoch),
                _ => Ok(()),
            };
            match member.and_then(|()| fetch(ctx, &group, wanted)) {
                Err(e) => rg.error_code = e,
                Ok(topics) => {
                    rg.topics = topics
                        .into_iter()
                        .map(|(name, parts)| {
                            let mut t = OffsetFetchResponseTopics::default();
                            t.name = TopicName(str_bytes(name.clone()));
                            t.partitions = parts
                                .into_iter()
                                .map(|(p, c)| {
                                    let mut rp = OffsetFetchResponsePartitions::default();
                                    rp.partition_index = p;
                                    let c = c.unwrap_or(Committed {
                                        offset: -1,
                                        leader_epoch: -1,
                                        metadata: String::new(),
                                        commit_ms: -1,
                                    });
                                    rp.committed_offset = c.offset;
                                    rp.committed_leader_epoch = c.leader_epoch;
                                    rp.metadata = Some(str_bytes(c.metadata));
                                    if unstable(&group, &name, p) {
                                        rp.error_code = code::UNSTABLE_OFFSET_COMMIT;
                                        rp.committed_offset = -1;
                                    }
                                    rp
                                })
                                .collect();
                            t
                        })
                        .collect();
                }
            }
            resp.groups.push(rg);
        }
        return Some(resp);
    }
    let group = b.group_id.0.to_string();
    let wanted: Option<Vec<(String, Vec<i32>)>> =
        b.topics.map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
    let result = fetch(ctx, &group, wanted.clone());
    let topics = match (&result, wanted) {
        (Ok(t), _) => t.clone(),
        // v1 has no top-level error: report it on every requested partition.
        (Err(_), Some(w)) => w.into_iter().map(|(t, ps)| (t, ps.into_iter().map(|p| (p, None)).collect())).collect(),
        (Err(_), None) => Vec::new(),
    };
    let part_error = match result {
        Err(e) if version < 2 => e,
        _ => code::NONE,
    };
    if let Err(e) = result
        && version >= 2
    {
        resp.error_code = e;
    }
    resp.topics = topics
        .into_iter()
        .map(|(name, parts)| {
            let mut t = OffsetFetchResponseTopic::default();
            t.name = TopicName(str_bytes(name.clone()));
            t.partitions = parts
                .into_iter()
                .map(|(p, c)| {
                    let mut rp = OffsetFetchResponsePartition::default();
                    rp.partition_index = p;
                    let c =
                        c.unwrap_or(Committed { offset: -1, leader_epoch: -1, metadata: String::new(), commit_ms: -1 });
                    rp.committed_offset = c.offset;
                    if version >= 5 {
                        rp.committed_leader_epoch = c.leader_epoch;
                    }
                    rp.metadata = Some(str_bytes(c.metadata));
                    rp.error_code = part_error;
                    if part_error == code::NONE && unstable(&group, &name, p) {
                        rp.error_code = code::UNSTABLE_OFFSET_COMMIT;
                        rp.committed_offset = -1;
                    }
                    rp
                })
                .collect();
            t
        })
        .collect();
    Some(resp)
}
