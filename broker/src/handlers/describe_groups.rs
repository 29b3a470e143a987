//! DescribeGroups: state, protocol and members (with metadata and assignment once Stable).
//! An unknown group is reported as Dead, as Kafka does; a KIP-848 consumer group is Dead with
//! GROUP_ID_NOT_FOUND, as Kafka 4 answers, which tells admin clients to use
//! ConsumerGroupDescribe for it.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse, GroupId};

use super::{Ctx, Request, str_bytes};

pub(super) async fn handle(ctx: &Ctx, req: Request<DescribeGroupsRequest>) -> Option<DescribeGroupsResponse> {
    let version = req.version();
    let mut resp = DescribeGroupsResponse::default();
    for id in req.body.groups {
        let group = id.0.to_string();
        let mut g = DescribedGroup::default();
        g.group_id = GroupId(str_bytes(group.clone()));
        if version >= 3 {
            g.authorized_operations = i32::MIN;
        }
        match ctx.groups.check(&group) {
            Err(e) => {
                g.error_code = e;
                g.group_state = str_bytes("Dead");
            }
            Ok(()) if ctx.groups.is_consumer_group(&group) => {
                g.error_code = super::code::GROUP_ID_NOT_FOUND;
                g.group_state = str_bytes("Dead");
            }
            Ok(()) => {
                let d = ctx.groups.describe(&group);
                g.group_state = str_bytes(d.state);
                g.protocol_type = str_bytes(d.protocol_type);
                g.protocol_data = str_bytes(d.protocol);
                g.members = d
                    .members
                    .into_iter()
                    .map(|(member_id, instance, client_id, host, metadata, assignment)| {
                        let mut m = DescribedGroupMember::default();
                        m.member_id = str_bytes(member_id);
                        if version >= 4 {
                            m.group_instance_id = instance.map(str_bytes);
                        }
                        m.client_id = str_bytes(client_id);
                        m.client_host = str_bytes(host);
                        m.member_metadata = metadata;
                        m.member_assignment = assignment;
                        m
                    })
                    .collect();
            }
        }
        resp.groups.push(g);
    }
    Some(resp)
}
