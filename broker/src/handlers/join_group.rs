//! JoinGroup: hands the request to the classic group state machine and waits for its answer,
//! which may come only when the join phase ends.

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};

use super::{Ctx, Request, code, str_bytes};
use crate::group::classic::{JoinRequest, JoinResult};

pub(super) async fn handle(ctx: &Ctx, req: Request<JoinGroupRequest>) -> Option<JoinGroupResponse> {
    let version = req.version();
    let b = req.body;
    let group = b.group_id.0.to_string();
    let client_id = req.header.client_id.clone().unwrap_or_default();
    let result = if group.is_empty() {
        JoinResult::error(code::INVALID_GROUP_ID, &b.member_id)
    } else if let Err(e) = ctx.groups.check(&group) {
        JoinResult::error(e, &b.member_id)
    } else {
        let fresh = format!("{client_id}-{}", uuid::Uuid::new_v4());
        let j = JoinRequest {
            member_id: b.member_id.to_string(),
            instance_id: b.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id,
            client_host: ctx.client_host(),
            session_timeout_ms: b.session_timeout_ms,
            // v0 has no rebalance timeout: Kafka uses the session timeout.
            rebalance_timeout_ms: if version == 0 { b.session_timeout_ms } else { b.rebalance_timeout_ms },
            protocol_type: b.protocol_type.to_string(),
            protocols: b.protocols.iter().map(|p| (p.name.to_string(), p.metadata.clone())).collect(),
            require_known_member: version >= 4,
            fresh_member_id: fresh,
        };
        ctx.groups.join(&group, j).await
    };
    Some(response(result, version))
}

fn response(r: JoinResult, version: i16) -> JoinGroupResponse {
    let mut resp = JoinGroupResponse::default();
    resp.error_code = r.error;
    resp.generation_id = r.generation;
    if version >= 7 {
        resp.protocol_type = r.protocol_type.map(str_bytes);
    }
    resp.protocol_name = if version >= 7 {
        r.protocol_name.map(str_bytes)
    } else {
        Some(str_bytes(r.protocol_name.unwrap_or_default()))
    };
    resp.leader = str_bytes(r.leader);
    resp.member_id = str_bytes(r.member_id);
    if version >= 9 {
        resp.skip_assignment = r.skip_assignment;
    }
    resp.members = r
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let mut m = JoinGroupResponseMember::default();
            m.member_id = str_bytes(id);
            if version >= 5 {
                m.group_instance_id = instance.map(str_bytes);
            }
            m.metadata = metadata;
            m
        })
        .collect();
    resp
}
