//! CreateTopics: name, partition, replication and config validation; validate_only; the v5+
//! answer listing every effective config.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};

use super::{Ctx, Request, code, str_bytes};
use crate::config::{self, TOPIC_CONFIGS, topic_def, topic_value};
use crate::state::CreateError;

/// Largest partition count one request may create, so a typo cannot fill the disk with files.
const PARTITIONS_MAX: i32 = 10_000;

pub(super) async fn handle(ctx: &Ctx, req: Request<CreateTopicsRequest>) -> Option<CreateTopicsResponse> {
    let version = req.version();
    let broker = &ctx.broker;
    let (node_id, default_partitions, default_rf) = {
        let c = broker.config.read();
        (c.node_id, c.i64("num.partitions") as i32, c.i64("default.replication.factor") as i16)
    };
    let cluster = broker.cluster.get().map(|c| c.as_ref());
    let mut resp = CreateTopicsResponse::default();
    let mut seen = std::collections::HashSet::new();
    for t in req.body.topics {
        let name = t.name.0.to_string();
        let mut r = CreatableTopicResult::default();
        r.name = t.name.clone();
        r.num_partitions = -1;
        r.replication_factor = -1;
        let fail = |mut r: CreatableTopicResult, code: i16, msg: String| {
            r.error_code = code;
            r.error_message = Some(str_bytes(msg));
            r
        };
        if !seen.insert(name.clone()) {
            resp.topics.push(fail(r, code::INVALID_REQUEST, format!("Duplicate topic {name} in request")));
            continue;
        }
        // Partitions and replication: explicit assignments, or counts (-1 = broker default).
        let partitions = if !t.assignments.is_empty() {
            if t.num_partitions != -1 || t.replication_factor != -1 {
                resp.topics.push(fail(
                    r,
                    code::INVALID_REQUEST,
                    "Both numPartitions or replicationFactor and replicasAssignments were set".into(),
                ));
                continue;
            }
            let mut indexes: Vec<i32> = t.assignments.iter().map(|a| a.partition_index).collect();
            indexes.sort_unstable();
            let dense = indexes.iter().enumerate().all(|(i, &p)| p == i as i32);
            let on_us = t.assignments.iter().all(|a| a.broker_ids.len() == 1 && a.broker_ids[0].0 == node_id);
            if !dense || !on_us {
                resp.topics.push(fail(
                    r,
                    code::INVALID_REPLICA_ASSIGNMENT,
                    format!("Replica assignment must place partitions 0..n on broker {node_id}"),
                ));
                continue;
            }
            indexes.len() as i32
        } else {
            match t.num_partitions {
                -1 => default_partitions,
                n if n >= 1 && n <= PARTITIONS_MAX => n,
                n => {
                    resp.topics.push(fail(
                        r,
                        code::INVALID_PARTITIONS,
                        format!("Number of partitions must be between 1 and {PARTITIONS_MAX}, got {n}"),
                    ));
                    continue;
                }
            }
        };
        // A cluster places 1..=nodes replicas per partition (-1: every node, at most three); a
        // single node holds the only one.
        let nodes = cluster.map_or(1, |c| c.placeable().len() as i16);
        let rf = match (t.replication_factor, cluster) {
            (-1, Some(c)) => c.default_replication() as i16,
            (-1, None) => default_rf,
            (rf, _) => rf,
        };
        let valid = if cluster.is_some() { (1..=nodes).contains(&rf) } else { rf == 1 };
        if !valid {
            let msg = if rf < 1 {
                format!("Replication factor must be larger than 0, got {rf}.")
            } else {
                format!("Replication factor: {rf} larger than available brokers: {nodes}.")
            };
            resp.topics.push(fail(r, code::INVALID_REPLICATION_FACTOR, msg));
            continue;
        }
        // Configs: known names, valid values.
        let mut overrides = BTreeMap::new();
        let mut bad = None;
        for c in &t.configs {
            let key = c.name.to_string();
            let Some(def) = topic_def(&key) else {
                bad = Some(format!("Unknown topic config name: {key}"));
                break;
            };
            let Some(value) = &c.value else { continue };
            if let Err(e) = config::validate(def, value) {
                bad = Some(e);
                break;
            }
            overrides.insert(key, value.to_string());
        }
        if let Some(msg) = bad {
            resp.topics.push(fail(r, code::INVALID_CONFIG, msg));
            continue;
        }
        let outcome = if req.body.validate_only {
            broker.check_create(&name).map(|()| None).map_err(|e| create_error(&name, e))
        } else if let Some(c) = cluster {
            match c.create_topic(broker, &name, partitions as u32, rf, overrides.clone()).await {
                Ok(()) => Ok(broker.topic(&name)),
                Err(e) => Err(e),
            }
        } else {
            broker
                .create_topic(&name, partitions as u32, overrides.clone())
                .map(Some)
                .map_err(|e| create_error(&name, e))
        };
        match outcome {
            Ok(created) => {
                if let Some(topic) = created {
                    r.topic_id = topic.id;
                }
                r.num_partitions = partitions;
                r.replication_factor = rf;
                if version >= 5 {
                    let bc = broker.config.read();
                    r.configs = Some(
                        TOPIC_CONFIGS
                            .iter()
                            .map(|def| {
                                let (value, source) = topic_value(def, &overrides, &bc);
                                let mut e = CreatableTopicConfigs::default();
                                e.name = str_bytes(def.name);
                                e.value = Some(str_bytes(value));
                                e.read_only = def.read_only;
                                e.config_source = source as i8;
                                e
                            })
                            .collect(),
                    );
                }
            }
            Err((code, msg)) => r = fail(r, code, msg),
        }
        resp.topics.push(r);
    }
    Some(resp)
}

/// The Kafka error for a topic this node could not create.
fn create_error(name: &str, e: CreateError) -> (i16, String) {
    match e {
        CreateError::Exists => (code::TOPIC_ALREADY_EXISTS, format!("Topic '{name}' already exists.")),
        CreateError::InvalidName(msg) => (code::INVALID_TOPIC_EXCEPTION, msg),
        CreateError::Storage(msg) => (code::KAFKA_STORAGE_ERROR, msg),
    }
}
