//! FindCoordinator: a group's coordinator is the leader of its `__consumer_offsets` partition,
//! a transactional id's the leader of its `__transaction_state` partition (this node for every
//! key on a single node); in a cluster any node names that leader, or answers
//! COORDINATOR_NOT_AVAILABLE while there is none or it is still loading.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};

use super::leader_hints::LeaderView;
use super::{Ctx, Request, code, str_bytes};
use crate::cluster::Cluster;
use crate::group::store::OFFSETS_TOPIC;
use crate::rpc::NodeId;
use crate::txn::store::TXN_TOPIC;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub(super) async fn handle(ctx: &Ctx, req: Request<FindCoordinatorRequest>) -> Option<FindCoordinatorResponse> {
    let version = req.version();
    let (node_id, host, port) = {
        let c = ctx.broker.config.read();
        (c.node_id, c.advertised_host.clone(), i32::from(c.advertised_port))
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
            if let Some(c) = ctx.broker.cluster.get() {
                match key_type {
                    KEY_TYPE_GROUP => {
                        let p = ctx.groups.partition_of(&key);
                        return in_cluster(ctx, c, (OFFSETS_TOPIC, p), key, &|k| ctx.groups.check(k));
                    }
                    KEY_TYPE_TRANSACTION => {
                        let p = ctx.txns.partition_of(&key);
                        return in_cluster(ctx, c, (TXN_TOPIC, p), key, &|k| ctx.txns.check(k));
                    }
                    _ => {}
                }
            }
            let checked = match key_type {
                KEY_TYPE_GROUP => ctx.groups.check(&key),
                KEY_TYPE_TRANSACTION => ctx.txns.check(&key),
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

/// A key's coordinator in a cluster: the visible leader of its internal partition (`topic`,
/// `partition`); `check` says whether this node serves the key.
fn in_cluster(
    ctx: &Ctx,
    cluster: &Cluster,
    (topic, partition): (&str, i32),
    key: String,
    check: &dyn Fn(&str) -> Result<(), i16>,
) -> Coordinator {
    let mut c = Coordinator::default();
    // The partition's leader as Produce and Fetch hints name it (here, or reported by the nodes
    // that host it).
    let leader = ctx
        .broker
        .topic(topic)
        .and_then(|t| t.partition(partition))
        .and_then(|p| NodeId::try_from(cluster.leader_of(&p).id).ok());
    let found = match leader {
        // This node: only once the partition is loaded.
        Some(l) if l == cluster.node => match check(&key) {
            Ok(()) => {
                let conf = ctx.broker.config.read();
                Ok((l, conf.advertised_host.clone(), conf.advertised_port))
            }
            Err(_) => Err(code::COORDINATOR_NOT_AVAILABLE),
        },
        Some(l) => cluster.broker_address(l).map(|(h, p)| (l, h, p)).ok_or(code::COORDINATOR_NOT_AVAILABLE),
        None => Err(code::COORDINATOR_NOT_AVAILABLE),
    };
    c.key = str_bytes(key);
    match found {
        Ok((node, host, port)) => {
            c.node_id = BrokerId(node as i32);
            c.host = str_bytes(host);
            c.port = i32::from(port);
        }
        Err(error) => {
            c.error_code = error;
            c.node_id = BrokerId(-1);
            c.port = -1;
        }
    }
    c
}
