//! DescribeCluster: the cluster id, the controller and the brokers (this node, or in a cluster
//! every registered one) as clients should reach them.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{DescribeClusterRequest, DescribeClusterResponse};

use super::{Ctx, Request, code, str_bytes};

/// Kafka's `EndpointType` ids: brokers answer for BROKER; CONTROLLER is for KRaft controllers.
const ENDPOINT_BROKER: i8 = 1;
const ENDPOINT_CONTROLLER: i8 = 2;
/// Error codes only this API uses.
const MISMATCHED_ENDPOINT_TYPE: i16 = 114;
const UNSUPPORTED_ENDPOINT_TYPE: i16 = 115;
/// "Not requested" for `cluster_authorized_operations`.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;
/// Without an authorizer Kafka grants every operation a CLUSTER resource supports: CREATE (5),
/// ALTER (7), DESCRIBE (8), CLUSTER_ACTION (9), DESCRIBE_CONFIGS (10), ALTER_CONFIGS (11) and
/// IDEMPOTENT_WRITE (12), one bit per `AclOperation` id.
const CLUSTER_OPERATIONS_ALL: i32 = (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

pub(super) async fn handle(ctx: &Ctx, req: Request<DescribeClusterRequest>) -> Option<DescribeClusterResponse> {
    let version = req.version();
    let body = req.body;
    let mut resp = DescribeClusterResponse::default();
    resp.endpoint_type = ENDPOINT_BROKER;
    // v0 has no endpoint_type (it decodes as BROKER); Kafka answers INVALID_REQUEST there anyway.
    if body.endpoint_type != ENDPOINT_BROKER {
        let (code, msg) = if body.endpoint_type == ENDPOINT_CONTROLLER {
            (
                MISMATCHED_ENDPOINT_TYPE,
                "The request was sent to an endpoint of type BROKER, but we wanted an endpoint of type CONTROLLER"
                    .to_string(),
            )
        } else {
            (UNSUPPORTED_ENDPOINT_TYPE, format!("Unsupported endpoint type {}", body.endpoint_type))
        };
        resp.error_code = if version == 0 { code::INVALID_REQUEST } else { code };
        resp.error_message = Some(str_bytes(msg));
        return Some(resp);
    }
    let c = ctx.broker.config.read();
    resp.cluster_id = str_bytes(ctx.broker.cluster_id.clone());
    resp.controller_id = c.node_id.into();
    let mut b = DescribeClusterBroker::default();
    b.broker_id = c.node_id.into();
    b.host = str_bytes(c.advertised_host.clone());
    b.port = i32::from(c.advertised_port);
    b.rack = None;
    resp.brokers.push(b);
    if let Some(cluster) = ctx.broker.cluster.get() {
        // Every registered broker, and the metadata group's leader as the controller.
        cluster.meta.read(|m| {
            for (&id, (host, port)) in m.brokers.iter().filter(|(id, _)| **id as i32 != c.node_id) {
                let mut b = DescribeClusterBroker::default();
                b.broker_id = (id as i32).into();
                b.host = str_bytes(host.clone());
                b.port = i32::from(*port);
                resp.brokers.push(b);
            }
        });
        resp.brokers.sort_by_key(|b| b.broker_id.0);
        resp.controller_id = cluster.meta.leader().map_or(-1, |l| l as i32).into();
    }
    resp.cluster_authorized_operations =
        if body.include_cluster_authorized_operations { CLUSTER_OPERATIONS_ALL } else { AUTHORIZED_OPERATIONS_OMITTED };
    Some(resp)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::ApiKey;

    use super::*;
    use crate::handlers::describe_configs::fixture::{broker, encodes_at_every_version, request};

    #[tokio::test]
    async fn describe_cluster_lists_this_broker_as_controller() {
        let (ctx, _dir) = broker(&[("advertised.listeners", "kafka.example:9999")]);
        let resp = handle(&ctx, request(ApiKey::DescribeCluster, 1, DescribeClusterRequest::default())).await.unwrap();
        assert_eq!(resp.error_code, 0);
        assert_eq!(resp.cluster_id.as_str(), ctx.broker.cluster_id);
        assert_eq!(resp.controller_id.0, 1);
        let b: Vec<_> = resp.brokers.iter().map(|b| (b.broker_id.0, b.host.to_string(), b.port)).collect();
        assert_eq!(b, [(1, "kafka.example".to_string(), 9999)]);
        assert_eq!(resp.cluster_authorized_operations, i32::MIN);
        encodes_at_every_version(ApiKey::DescribeCluster, &resp);

        let mut body = DescribeClusterRequest::default();
        body.include_cluster_authorized_operations = true;
        let resp = handle(&ctx, request(ApiKey::DescribeCluster, 0, body)).await.unwrap();
        assert_eq!(resp.cluster_authorized_operations, 8096);

        for (endpoint, want) in
            [(2, MISMATCHED_ENDPOINT_TYPE), (0, UNSUPPORTED_ENDPOINT_TYPE), (9, UNSUPPORTED_ENDPOINT_TYPE)]
        {
            let mut body = DescribeClusterRequest::default();
            body.endpoint_type = endpoint;
            let resp = handle(&ctx, request(ApiKey::DescribeCluster, 1, body)).await.unwrap();
            assert_eq!(resp.error_code, want, "endpoint type {endpoint}");
            assert!(resp.brokers.is_empty());
        }
    }
}
