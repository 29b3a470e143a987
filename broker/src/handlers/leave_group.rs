//! LeaveGroup: one member (v0-2) or a batch of members by member or instance id (v3+).

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use super::{Ctx, Request, code, str_bytes};

pub(super) async fn handle(ctx: &Ctx, req: Request<LeaveGroupRequest>) -> Option<LeaveGroupResponse> {
    let version = req.version();
    let b = req.body;
    let group = b.group_id.0.to_string();
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        b.members
            .iter()
            .map(|m| (m.member_id.to_string(), m.group_instance_id.as_ref().map(|s| s.to_string())))
            .collect()
    } else {
        vec![(b.member_id.to_string(), None)]
    };
    let mut resp = LeaveGroupResponse::default();
    let top = if group.is_empty() { Err(code::INVALID_GROUP_ID) } else { ctx.groups.check(&group) };
    let codes = match top {
        Err(e) => {
            resp.error_code = e;
            return Some(resp);
        }
        Ok(()) => ctx.groups.leave(&group, &members),
    };
    if version >= 3 {
        resp.members = members
            .into_iter()
            .zip(codes)
            .map(|((id, instance), error)| {
                let mut m = MemberResponse::default();
                m.member_id = str_bytes(id);
                m.group_instance_id = instance.map(str_bytes);
                m.error_code = error;
                m
            })
            .collect();
    } else {
        resp.error_code = codes.first().copied().unwrap_or(code::NONE);
    }
    Some(resp)
}
