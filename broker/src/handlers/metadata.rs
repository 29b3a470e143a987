//! Metadata: brokers, topics with ids and partitions, and topic auto-creation.

use std::collections::BTreeMap;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use uuid::Uuid;

use super::{Ctx, Request, code, str_bytes};
use crate::cluster::Cluster;
use crate::state::{CreateError, Topic, check_topic_name};

/// How long Metadata waits for partitions without a reachable leader to elect one.
const ELECTION_WAIT: std::time::Duration = std::time::Duration::from_millis(1500);

pub(super) async fn handle(ctx: &Ctx, req: Request<MetadataRequest>) -> Option<MetadataResponse> {
    let version = req.version();
    let broker = &ctx.broker;
    let (node_id, host, port, auto_create, partitions_default) = {
        let c = broker.config.read();
        (
            c.node_id,
            c.advertised_host.clone(),
            c.advertised_port,
            c.bool("auto.create.topics.enable"),
            c.i64("num.partitions").max(1) as u32,
        )
    };
    let mut resp = MetadataResponse::default();
    let mut b = MetadataResponseBroker::default();
    b.node_id = BrokerId(node_id);
    b.host = str_bytes(host);
    b.port = i32::from(port);
    resp.brokers = vec![b];
    resp.cluster_id = Some(str_bytes(broker.cluster_id.clone()));
    resp.controller_id = BrokerId(node_id);
    let cluster = broker.cluster.get().map(|c| c.as_ref());
    if let Some(c) = cluster {
        // Every registered broker (this one too, even before its registration applies).
        c.meta.read(|m| {
            for (&id, (host, port)) in &m.brokers {
                if id as i32 != node_id {
                    let mut b = MetadataResponseBroker::default();
                    b.node_id = BrokerId(id as i32);
                    b.host = str_bytes(host.clone());
                    b.port = i32::from(*port);
                    resp.brokers.push(b);
                }
            }
        });
        // Cut off from most of the cluster, this node knows no current leader, and clients that
        // only talk to it would wait until the partition heals. Leaving itself out of the broker
        // list makes them drop it and ask the others (it reappears in their answers once healed).
        if !c.in_majority() && resp.brokers.len() > 1 {
            resp.brokers.retain(|b| b.node_id.0 != node_id);
        }
        resp.brokers.sort_by_key(|b| b.node_id.0);
        resp.controller_id = BrokerId(c.meta.leader().map_or(-1, |l| l as i32));
    }
    resp.cluster_authorized_operations = i32::MIN;

    // v0: an empty list means all topics; v1+: null means all.
    let requested = match req.body.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    let allow_auto = auto_create && (version < 4 || req.body.allow_auto_topic_creation);
    if let Some(c) = cluster {
        // A leader election in progress (the leader died or is cut off) usually ends within a
        // second: answer with its result rather than "no leader", which clients would only
        // retry after their own backoff (librdkafka: up to 1 s).
        let topics: Vec<_> = match &requested {
            None => broker.topics(),
            Some(list) => list.iter().filter_map(|t| t.name.as_ref().and_then(|n| broker.topic(&n.0))).collect(),
        };
        let replicas =
            topics.iter().flat_map(|t| t.partitions.read().iter().filter_map(|p| p.replica.get()).collect::<Vec<_>>());
        c.await_leaders(replicas.collect(), ELECTION_WAIT).await;
    }
    match requested {
        None => {
            for t in broker.topics() {
                resp.topics.push(describe(&t, node_id, version, cluster));
            }
        }
        Some(list) => {
            for rt in list {
                let name = rt.name.as_ref().map(|n| n.0.to_string());
                let topic = match &name {
                    Some(n) => broker.topic(n),
                    None => broker.topic_by_id(rt.topic_id),
                };
                let entry = match (topic, name) {
                    (Some(t), _) => describe(&t, node_id, version, cluster),
                    (None, Some(n)) if allow_auto && check_topic_name(&n).is_ok() && cluster.is_some() => {
                        let c = cluster.expect("checked");
                        match c.create_topic(broker, &n, partitions_default, -1, BTreeMap::new()).await {
                            Ok(()) => match broker.topic(&n) {
                                Some(t) => describe(&t, node_id, version, cluster),
                                None => error_topic(Some(n), rt.topic_id, code::LEADER_NOT_AVAILABLE),
                            },
                            Err((code::TOPIC_ALREADY_EXISTS, _)) => match broker.topic(&n) {
                                Some(t) => describe(&t, node_id, version, cluster),
                                None => error_topic(Some(n), rt.topic_id, code::LEADER_NOT_AVAILABLE),
                            },
                            Err((_, e)) => {
                                tracing::warn!(topic = n, error = %e, "auto-create failed");
                                error_topic(Some(n), rt.topic_id, code::LEADER_NOT_AVAILABLE)
                            }
                        }
                    }
                    (None, Some(n)) if allow_auto && check_topic_name(&n).is_ok() => {
                        match broker.create_topic(&n, partitions_default, BTreeMap::new()) {
                            Ok(t) => describe(&t, node_id, version, cluster),
                            // Someone else created it between our lookup and the create.
                            Err(CreateError::Exists) => match broker.topic(&n) {
                                Some(t) => describe(&t, node_id, version, cluster),
                                None => error_topic(Some(n), rt.topic_id, code::LEADER_NOT_AVAILABLE),
                            },
                            Err(e) => {
                                tracing::warn!(topic = n, error = ?e, "auto-create failed");
                                error_topic(Some(n), rt.topic_id, code::LEADER_NOT_AVAILABLE)
                            }
                        }
                    }
                    (None, Some(n)) if check_topic_name(&n).is_err() => {
                        error_topic(Some(n), rt.topic_id, code::INVALID_TOPIC_EXCEPTION)
                    }
                    (None, Some(n)) => error_topic(Some(n), rt.topic_id, code::UNKNOWN_TOPIC_OR_PARTITION),
                    (None, None) => error_topic(None, rt.topic_id, code::UNKNOWN_TOPIC_ID),
                };
                resp.topics.push(entry);
            }
        }
    }
    Some(resp)
}

fn error_topic(name: Option<String>, id: Uuid, error: i16) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.error_code = error;
    t.name = name.map(|n| TopicName(str_bytes(n)));
    t.topic_id = id;
    t.topic_authorized_operations = i32::MIN;
    t
}

fn describe(topic: &Topic, node_id: i32, version: i16, cluster: Option<&Cluster>) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.name = Some(TopicName(str_bytes(topic.name.clone())));
    t.topic_id = topic.id;
    t.is_internal = topic.name.starts_with("__");
    t.topic_authorized_operations = i32::MIN;
    t.partitions = topic
        .partitions
        .read()
        .iter()
        .map(|p| {
            let mut mp = MetadataResponsePartition::default();
            mp.partition_index = p.index;
            mp.leader_id = BrokerId(node_id);
            mp.leader_epoch = if version >= 7 { p.epoch() } else { -1 };
            mp.replica_nodes = vec![BrokerId(node_id)];
            mp.isr_nodes = vec![BrokerId(node_id)];
            if let Some(c) = cluster {
                let ids = |nodes: Vec<u64>| nodes.into_iter().map(|n| BrokerId(n as i32)).collect::<Vec<_>>();
                match p.replica.get() {
                    Some(r) => {
                        mp.replica_nodes = ids(c.replicas_of(&topic.name, p.index));
                        mp.isr_nodes = ids(c.in_sync(&r));
                        match c.visible_leader(&r) {
                            Some(l) => mp.leader_id = BrokerId(l as i32),
                            None => {
                                mp.leader_id = BrokerId(-1);
                                mp.error_code = code::LEADER_NOT_AVAILABLE;
                            }
                        }
                    }
                    // Hosted by other nodes (or its replica is starting): the leader its replicas
                    // report, and as ISR the replicas this node sees alive.
                    None => {
                        let replicas = c.replicas_of(&topic.name, p.index);
                        mp.replica_nodes = ids(replicas.clone());
                        match c.remote_leader(&topic.name, p.index) {
                            Some((leader, term)) => {
                                mp.leader_id = BrokerId(leader as i32);
                                mp.leader_epoch = if version >= 7 { term as i32 } else { -1 };
                                mp.isr_nodes = ids(replicas.into_iter().filter(|&n| c.is_live(n)).collect());
                            }
                            None => {
                                mp.leader_id = BrokerId(-1);
                                mp.error_code = code::LEADER_NOT_AVAILABLE;
                                mp.isr_nodes = Vec::new();
                            }
                        }
                    }
                }
            }
            mp
        })
        .collect();
    t
}
