//! ListGroups: every group this node coordinates, with state (v4+) and type (v5+) filters.

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::{Ctx, Request, str_bytes};

pub(super) async fn handle(ctx: &Ctx, req: Request<ListGroupsRequest>) -> Option<ListGroupsResponse> {
    let version = req.version();
    let states: Vec<String> = req.body.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let types: Vec<String> = req.body.types_filter.iter().map(|s| s.to_lowercase()).collect();
    let mut resp = ListGroupsResponse::default();
    if !types.is_empty() && !types.iter().any(|t| t == "classic") {
        return Some(resp);
    }
    for (id, protocol_type, state) in ctx.groups.list() {
        if !states.is_empty() && !states.contains(&state.to_lowercase()) {
            continue;
        }
        let mut g = ListedGroup::default();
        g.group_id = GroupId(str_bytes(id));
        g.protocol_type = str_bytes(protocol_type);
        if version >= 4 {
            g.group_state = str_bytes(state);
        }
        if version >= 5 {
            g.group_type = str_bytes("classic");
        }
        resp.groups.push(g);
    }
    Some(resp)
}
