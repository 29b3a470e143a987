//! ListGroups: every group this node coordinates, with state (v4+) and type (v5+) filters.

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::{Ctx, Request, str_bytes};

pub(super) async fn handle(ctx: &Ctx, req: Request<ListGroupsRequest>) -> Option<ListGroupsResponse> {
    let version = req.version();
    let states: Vec<String> = req.body.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let types: Vec<String> = req.body.types_filter.iter().map(|s| s.to_lowercase()).collect();
    let mut resp = ListGroupsResponse::default();
    let wants = |t: &str| types.is_empty() || types.iter().any(|x| x == t);
    let classic =
        ctx.groups.list().into_iter().filter(|_| wants("classic")).map(|(id, pt, st)| (id, pt, st, "classic"));
    // KIP-848 groups use the "consumer" protocol type and group type.
    let consumer = ctx
        .groups
        .list_consumer()
        .into_iter()
        .filter(|_| wants("consumer"))
        .map(|(id, st)| (id, "consumer".to_string(), st, "consumer"));
    for (id, protocol_type, state, group_type) in classic.chain(consumer) {
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
            g.group_type = str_bytes(group_type);
        }
        resp.groups.push(g);
    }
    Some(resp)
}
