//! Heartbeat: keeps a classic group member's session alive and tells it about rebalances.

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use super::{Ctx, Request, code};

pub(super) async fn handle(ctx: &Ctx, req: Request<HeartbeatRequest>) -> Option<HeartbeatResponse> {
    let b = req.body;
    let group = b.group_id.0.to_string();
    let error = if group.is_empty() {
        code::INVALID_GROUP_ID
    } else if let Err(e) = ctx.groups.check(&group) {
        e
    } else {
        let instance = b.group_instance_id.as_ref().map(|s| s.to_string());
        ctx.groups.heartbeat(&group, b.generation_id, &b.member_id, instance.as_deref())
    };
    let mut resp = HeartbeatResponse::default();
    resp.error_code = error;
    Some(resp)
}
