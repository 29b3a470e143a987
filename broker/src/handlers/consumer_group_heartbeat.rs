//! ConsumerGroupHeartbeat (KIP-848): joins, heartbeats, reconciliation and leaves of consumer
//! groups whose assignment is computed by the broker.

use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse};

use super::{Ctx, Request, str_bytes};
use crate::group::consumer::Heartbeat;

pub(super) async fn handle(
    ctx: &Ctx,
    req: Request<ConsumerGroupHeartbeatRequest>,
) -> Option<ConsumerGroupHeartbeatResponse> {
    let version = req.version();
    let b = req.body;
    let hb = Heartbeat {
        api_version: version,
        group_id: b.group_id.0.to_string(),
        member_id: b.member_id.to_string(),
        member_epoch: b.member_epoch,
        instance_id: b.instance_id.map(|s| s.to_string()),
        rack_id: b.rack_id.map(|s| s.to_string()),
        rebalance_timeout_ms: b.rebalance_timeout_ms,
        subscribed_topic_names: b.subscribed_topic_names.map(|v| v.into_iter().map(|t| t.0.to_string()).collect()),
        subscribed_topic_regex: b.subscribed_topic_regex.map(|s| s.to_string()),
        server_assignor: b.server_assignor.map(|s| s.to_string()),
        owned_partitions: b.topic_partitions.map(|v| v.into_iter().map(|tp| (tp.topic_id, tp.partitions)).collect()),
        client_id: req.header.client_id.clone().unwrap_or_default(),
        client_host: ctx.client_host(),
    };
    let r = ctx.groups.consumer_heartbeat(hb).await;
    let mut resp = ConsumerGroupHeartbeatResponse::default();
    resp.error_code = r.error_code;
    resp.error_message = r.error_message.map(str_bytes);
    resp.member_id = r.member_id.map(str_bytes);
    resp.member_epoch = r.member_epoch;
    resp.heartbeat_interval_ms = r.heartbeat_interval_ms;
    resp.assignment = r.assignment.map(|a| {
        let mut out = Assignment::default();
        out.topic_partitions = a
            .into_iter()
            .map(|(topic_id, parts)| {
                let mut tp = TopicPartitions::default();
                tp.topic_id = topic_id;
                tp.partitions = parts.into_iter().collect();
                tp
            })
            .collect();
        out
    });
    Some(resp)
}
