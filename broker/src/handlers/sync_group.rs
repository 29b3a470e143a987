//! SyncGroup: the leader's assignment goes in, each member's assignment bytes come out once the
//! leader has sent them.

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};

use super::{Ctx, Request, code, str_bytes};
use crate::group::classic::{SyncRequest, SyncResult};

pub(super) async fn handle(ctx: &Ctx, req: Request<SyncGroupRequest>) -> Option<SyncGroupResponse> {
    let version = req.version();
    let b = req.body;
    let group = b.group_id.0.to_string();
    let result = if group.is_empty() {
        error(code::INVALID_GROUP_ID)
    } else if let Err(e) = ctx.groups.check(&group) {
        error(e)
    } else {
        let s = SyncRequest {
            generation: b.generation_id,
            member_id: b.member_id.to_string(),
            instance_id: b.group_instance_id.as_ref().map(|s| s.to_string()),
            protocol_type: b.protocol_type.as_ref().map(|s| s.to_string()),
            protocol_name: b.protocol_name.as_ref().map(|s| s.to_string()),
            assignments: b.assignments.iter().map(|a| (a.member_id.to_string(), a.assignment.clone())).collect(),
        };
        ctx.groups.sync(&group, s).await
    };
    let mut resp = SyncGroupResponse::default();
    resp.error_code = result.error;
    resp.assignment = result.assignment;
    if version >= 5 {
        resp.protocol_type = result.protocol_type.map(str_bytes);
        resp.protocol_name = result.protocol_name.map(str_bytes);
    }
    Some(resp)
}

fn error(code: i16) -> SyncResult {
    SyncResult { error: code, protocol_type: None, protocol_name: None, assignment: bytes::Bytes::new() }
}
