//! DeleteGroups: removes empty groups with their committed offsets (tombstones in
//! `__consumer_offsets`); a group with members gets NON_EMPTY_GROUP.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse, GroupId};

use super::{Ctx, Request, str_bytes};

pub(super) async fn handle(ctx: &Ctx, req: Request<DeleteGroupsRequest>) -> Option<DeleteGroupsResponse> {
    let mut resp = DeleteGroupsResponse::default();
    for id in req.body.groups_names {
        let group = id.0.to_string();
        let mut r = DeletableGroupResult::default();
        r.group_id = GroupId(str_bytes(group.clone()));
        r.error_code = match ctx.groups.check(&group) {
            Err(e) => e,
            Ok(()) => ctx.groups.delete_group(&group).await,
        };
        resp.results.push(r);
    }
    Some(resp)
}
