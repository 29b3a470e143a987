//! OffsetDelete: removes a group's committed offsets for some partitions, unless the group's
//! members still subscribe to the topic (GROUP_SUBSCRIBED_TO_TOPIC).

use kafka_protocol::messages::offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse, TopicName};

use super::{Ctx, Request, code, str_bytes};

pub(super) async fn handle(ctx: &Ctx, req: Request<OffsetDeleteRequest>) -> Option<OffsetDeleteResponse> {
    let b = req.body;
    let group = b.group_id.0.to_string();
    let mut resp = OffsetDeleteResponse::default();
    let mut parts = Vec::new();
    for t in &b.topics {
        let topic = ctx.broker.topic(&t.name.0);
        for p in &t.partitions {
            let known = topic.as_ref().and_then(|t| t.partition(p.partition_index)).is_some();
            let e = if known { code::NONE } else { code::UNKNOWN_TOPIC_OR_PARTITION };
            parts.push((t.name.0.to_string(), p.partition_index, e));
        }
    }
    let result = match ctx.groups.check(&group) {
        Err(e) => Err(e),
        Ok(()) => ctx.groups.delete_offsets(&group, parts).await,
    };
    match result {
        Err(e) => resp.error_code = e,
        Ok(parts) => {
            for (topic, partition, error) in parts {
                if resp.topics.last().is_none_or(|t: &OffsetDeleteResponseTopic| t.name.0.as_str() != topic) {
                    let mut t = OffsetDeleteResponseTopic::default();
                    t.name = TopicName(str_bytes(topic.clone()));
                    resp.topics.push(t);
                }
                let mut rp = OffsetDeleteResponsePartition::default();
                rp.partition_index = partition;
                rp.error_code = error;
                resp.topics.last_mut().expect("pushed").partitions.push(rp);
            }
        }
    }
    Some(resp)
}
