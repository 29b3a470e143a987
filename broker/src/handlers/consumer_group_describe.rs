//! ConsumerGroupDescribe (KIP-848): state, epochs, assignor and members of consumer groups.

use kafka_protocol::messages::consumer_group_describe_response::{Assignment, DescribedGroup, Member, TopicPartitions};
use kafka_protocol::messages::{ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, TopicName};

use super::{Ctx, Request, str_bytes};
use crate::group::consumer::DescribedPartitions;

/// Every operation Kafka lists for a group when no authorizer is configured.
const ALL_GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

fn assignment(parts: Vec<DescribedPartitions>) -> Assignment {
    let mut a = Assignment::default();
    a.topic_partitions = parts
        .into_iter()
        .map(|p| {
            let mut tp = TopicPartitions::default();
            tp.topic_id = p.topic_id;
            tp.topic_name = TopicName(str_bytes(p.topic_name));
            tp.partitions = p.partitions;
            tp
        })
        .collect();
    a
}

pub(super) async fn handle(
    ctx: &Ctx,
    req: Request<ConsumerGroupDescribeRequest>,
) -> Option<ConsumerGroupDescribeResponse> {
    let version = req.version();
    let ids: Vec<String> = req.body.group_ids.iter().map(|g| g.0.to_string()).collect();
    let mut resp = ConsumerGroupDescribeResponse::default();
    for (id, result) in ids.iter().zip(ctx.groups.consumer_describe(&ids)) {
        let mut g = DescribedGroup::default();
        g.group_id = kafka_protocol::messages::GroupId(str_bytes(id.clone()));
        g.authorized_operations = if req.body.include_authorized_operations { ALL_GROUP_OPERATIONS } else { i32::MIN };
        match result {
            Ok(d) => {
                g.group_state = str_bytes(d.state);
                g.group_epoch = d.group_epoch;
                g.assignment_epoch = d.assignment_epoch;
                g.assignor_name = str_bytes(d.assignor_name);
                g.members = d
                    .members
                    .into_iter()
                    .map(|m| {
                        let mut out = Member::default();
                        out.member_id = str_bytes(m.member_id);
                        out.instance_id = m.instance_id.map(str_bytes);
                        out.rack_id = m.rack_id.map(str_bytes);
                        out.member_epoch = m.member_epoch;
                        out.client_id = str_bytes(m.client_id);
                        out.client_host = str_bytes(m.client_host);
                        out.subscribed_topic_names =
                            m.subscribed_topic_names.into_iter().map(|t| TopicName(str_bytes(t))).collect();
                        out.subscribed_topic_regex = m.subscribed_topic_regex.map(str_bytes);
                        out.assignment = assignment(m.assignment);
                        out.target_assignment = assignment(m.target_assignment);
                        // member_type exists from v1: 1 = consumer protocol member.
                        out.member_type = if version >= 1 { 1 } else { -1 };
                        out
                    })
                    .collect();
            }
            Err((code, msg)) => {
                g.error_code = code;
                g.error_message = Some(str_bytes(msg));
            }
        }
        resp.groups.push(g);
    }
    Some(resp)
}
