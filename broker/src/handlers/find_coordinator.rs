//! FindCoordinator: this node coordinates every group whose `__consumer_offsets` partition it
//! leads, and every transactional id whose `__transaction_state` partition it leads (all of them
//! on a single node).

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};

use super::{Ctx, Request, code, str_bytes};

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub(super) async fn handle(ctx: &Ctx, req: Request<FindCoordinatorRequest>) -> Option<FindCoordinatorResponse> {
    let version = req.version();
    let (node_id, host, port) = {
        let c = ctx.broker.config.read();
        (c.node_id, c.advertised_host.clone(), i32::from(c.advertised_port))
    };
    // In a cluster one node coordinates everything (see `cluster.rs`); the others point to it.
    let (node_id, host, port, remote) = match ctx.broker.cluster.get() {
        Some(c) if c.coordinator() != c.node => match c.broker_address(c.coordinator()) {
            Some((h, p)) => (c.coordinator() as i32, h, i32::from(p), Some(true)),
            None => (-1, String::new(), -1, Some(false)),
        },
        _ => (node_id, host, port, None),
    };
    let key_type = req.body.key_type;
    let keys: Vec<String> = if version >= 4 {
        req.body.coordinator_keys.iter().map(|k| k.to_string()).collect()
    } else {
        vec![req.body.key.to_string()]
    };
    let answers: Vec<Coordinator> = keys
        .into_iter()
        .map(|key| {
            let checked = match (key_type, remote) {
                (KEY_TYPE_GROUP | KEY_TYPE_TRANSACTION, Some(true)) => Ok(()),
                (KEY_TYPE_GROUP | KEY_TYPE_TRANSACTION, Some(false)) => Err(code::COORDINATOR_NOT_AVAILABLE),
                (KEY_TYPE_GROUP, None) => ctx.groups.check(&key),
                (KEY_TYPE_TRANSACTION, None) => ctx.txns.check(&key),
                _ => Err(code::INVALID_REQUEST),
            };
            let error = match checked {
                Ok(()) => code::NONE,
                // Clients wait and retry on COORDINATOR_NOT_AVAILABLE while we load.
                Err(code::COORDINATOR_LOAD_IN_PROGRESS) => code::COORDINATOR_NOT_AVAILABLE,
                Err(e) => e,
            };
            let mut c = Coordinator::default();
            c.key = str_bytes(key);
            c.error_code = error;
            if error == code::NONE {
                c.node_id = BrokerId(node_id);
                c.host = str_bytes(host.clone());
                c.port = port;
            } else {
                c.node_id = BrokerId(-1);
                c.port = -1;
            }
            c
        })
        .collect();
    let mut resp = FindCoordinatorResponse::default();
    if version >= 4 {
        resp.coordinators = answers;
    } else {
        let c = answers.into_iter().next().unwrap_or_default();
        resp.error_code = c.error_code;
        resp.node_id = c.node_id;
        resp.host = c.host;
        resp.port = c.port;
    }
    Some(resp)
}
