//! UnregisterBroker (`kafka-cluster unregister --id N`, Admin `unregisterBroker`): in Creek this
//! decommissions the broker. The metadata records it as leaving; the metadata leader moves each
//! of its replicas to another broker (a reassignment, visible in ListPartitionReassignments),
//! then takes it out of the metadata group and the cluster, after which Metadata and
//! DescribeCluster no longer list it and it may be stopped. The request is answered once the
//! decommission is recorded; the moves follow (see `cluster.rs`). Kafka's UnregisterBroker only
//! forgets a broker that is already gone; draining its replicas first is what an operator wants
//! from it here, since every replica needs a home.

use kafka_protocol::messages::{UnregisterBrokerRequest, UnregisterBrokerResponse};

use super::{Ctx, Request, code, str_bytes};

pub(super) async fn handle(ctx: &Ctx, req: Request<UnregisterBrokerRequest>) -> Option<UnregisterBrokerResponse> {
    let mut resp = UnregisterBrokerResponse::default();
    let id = req.body.broker_id.0;
    let outcome = match (ctx.broker.cluster.get(), u64::try_from(id)) {
        (Some(cluster), Ok(node)) => cluster.decommission(node).await,
        (Some(_), Err(_)) => Err((code::BROKER_ID_NOT_REGISTERED, format!("Broker {id} is not registered."))),
        (None, _) => Err((
            code::INVALID_REQUEST,
            "This broker runs alone (no internal.peers): there is no cluster to leave.".to_string(),
        )),
    };
    if let Err((error, message)) = outcome {
        resp.error_code = error;
        resp.error_message = Some(str_bytes(message));
    }
    Some(resp)
}
