//! AlterConfigs (the legacy, full-replace API): a topic's overrides become exactly the given set
//! (in a cluster, through the metadata group, so every node applies them).
//!
//! Broker resources are refused with INVALID_REQUEST: Creek has no durable store for dynamic
//! broker configs yet (the metadata Raft group will hold them), and a change that silently
//! vanishes on restart would be worse than a clear refusal. Set broker configs in the config
//! file, environment or flags.

use std::collections::{BTreeMap, HashMap, HashSet};

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

use super::describe_configs::{
    RESOURCE_BROKER, RESOURCE_BROKER_LOGGER, RESOURCE_TOPIC, Refusal, check_broker_name, find_topic,
};
use super::{Ctx, Request, code, str_bytes};
use crate::config::{self, ConfigDef, Kind, topic_def};

pub(super) async fn handle(ctx: &Ctx, req: Request<AlterConfigsRequest>) -> Option<AlterConfigsResponse> {
    let body = req.body;
    let mut gate = RepeatGate::new(body.resources.iter().map(|r| (r.resource_type, r.resource_name.to_string())));
    let mut resp = AlterConfigsResponse::default();
    for res in body.resources {
        let outcome = match gate.check(res.resource_type, &res.resource_name) {
            None => continue,
            Some(Err(refusal)) => Err(refusal),
            Some(Ok(())) => {
                let configs: Vec<(String, Option<String>)> =
                    res.configs.iter().map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string()))).collect();
                alter(ctx, res.resource_type, &res.resource_name, &configs, body.validate_only).await
            }
        };
        resp.responses.push(response(res.resource_type, res.resource_name, outcome));
    }
    Some(resp)
}

async fn alter(
    ctx: &Ctx,
    resource_type: i8,
    name: &str,
    configs: &[(String, Option<String>)],
    validate_only: bool,
) -> Result<(), Refusal> {
    check_resource_type(ctx, resource_type, name)?;
    let keys: Vec<&str> = configs.iter().map(|(k, _)| k.as_str()).collect();
    check_unique_keys(&keys)?;
    let nulls: Vec<&str> = configs.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| k.as_str()).collect();
    if !nulls.is_empty() {
        return Err((code::INVALID_REQUEST, format!("Null value not supported for : {}", nulls.join(","))));
    }
    if resource_type == RESOURCE_BROKER {
        return refuse_broker_change(&keys);
    }
    let topic = find_topic(&ctx.broker, name)?;
    let mut overrides = BTreeMap::new();
    for (k, v) in configs {
        let value = check_topic_config(k, v.as_deref().unwrap_or_default())?;
        overrides.insert(k.clone(), value);
    }
    if validate_only {
        return Ok(());
    }
    if let Some(cluster) = ctx.broker.cluster.get() {
        // Every node applies the change from the metadata group.
        return cluster.edit_topic_configs(&ctx.broker, name, |_| Ok(overrides.clone())).await;
    }
    ctx.broker.set_topic_configs(&topic, overrides).map_err(storage_refusal)
}

/// Refuses resource types other than TOPIC and BROKER, and BROKER names other than this node.
pub(super) fn check_resource_type(ctx: &Ctx, resource_type: i8, name: &str) -> Result<(), Refusal> {
    match resource_type {
        RESOURCE_TOPIC => Ok(()),
        RESOURCE_BROKER => check_broker_name(name, ctx.broker.config.read().node_id),
        RESOURCE_BROKER_LOGGER => {
            Err((code::INVALID_REQUEST, "Creek does not expose broker loggers as configs".to_string()))
        }
        other => Err((code::INVALID_REQUEST, format!("Unsupported resource type: {other}"))),
    }
}

/// A request naming one config twice is refused, as Kafka does.
pub(super) fn check_unique_keys(keys: &[&str]) -> Result<(), Refusal> {
    let mut seen = HashSet::new();
    if keys.iter().all(|k| seen.insert(*k)) {
        Ok(())
    } else {
        Err((code::INVALID_REQUEST, "Error due to duplicate config keys".to_string()))
    }
}

/// See the module docs: no dynamic broker configs until they can be stored durably. An empty
/// change is a no-op and succeeds.
pub(super) fn refuse_broker_change(keys: &[&str]) -> Result<(), Refusal> {
    if keys.is_empty() {
        return Ok(());
    }
    Err((
        code::INVALID_REQUEST,
        format!(
            "Cannot update these configs dynamically: {}. Creek reads broker configs from its config file, \
             environment and flags at start",
            keys.join(",")
        ),
    ))
}

/// Checks a topic config name and value, returning the value as stored (lists normalised).
pub(super) fn check_topic_config(name: &str, value: &str) -> Result<String, Refusal> {
    let def = topic_def(name).ok_or_else(|| (code::INVALID_CONFIG, format!("Unknown topic config name: {name}")))?;
    let value = normalize(def, value);
    config::validate(def, &value).map_err(|msg| (code::INVALID_CONFIG, msg))?;
    Ok(value)
}

/// Lists are stored as `a,b` whatever whitespace the client put around the commas, as Kafka parses
/// them; other values are kept as given.
pub(super) fn normalize(def: &ConfigDef, value: &str) -> String {
    match def.kind {
        Kind::List => list_items(value).join(","),
        _ => value.to_string(),
    }
}

/// The items of a list value; the empty string is the empty list.
pub(super) fn list_items(value: &str) -> Vec<&str> {
    if value.trim().is_empty() { Vec::new() } else { value.split(',').map(str::trim).collect() }
}

pub(super) fn storage_refusal(e: anyhow::Error) -> Refusal {
    tracing::warn!(error = %format!("{e:#}"), "persisting topic configs failed");
    (code::KAFKA_STORAGE_ERROR, format!("{e:#}"))
}

/// Kafka's rule for a resource named more than once in one request: answer it once with
/// INVALID_REQUEST and apply none of its copies.
pub(super) struct RepeatGate {
    repeated: HashSet<(i8, String)>,
    answered: HashSet<(i8, String)>,
}

impl RepeatGate {
    pub(super) fn new(keys: impl Iterator<Item = (i8, String)>) -> Self {
        RepeatGate { repeated: duplicates(keys), answered: HashSet::new() }
    }

    /// `Some(Ok(()))`: handle this resource. `Some(Err(_))`: answer this refusal. `None`: a
    /// repeated resource already answered; say nothing.
    pub(super) fn check(&mut self, resource_type: i8, name: &str) -> Option<Result<(), Refusal>> {
        let key = (resource_type, name.to_string());
        if !self.repeated.contains(&key) {
            return Some(Ok(()));
        }
        if !self.answered.insert(key) {
            return None;
        }
        Some(Err((code::INVALID_REQUEST, "Duplicate resource.".to_string())))
    }
}

/// The keys that occur more than once.
pub(super) fn duplicates<K: std::hash::Hash + Eq + Clone>(keys: impl Iterator<Item = K>) -> HashSet<K> {
    let mut counts: HashMap<K, usize> = HashMap::new();
    for k in keys {
        *counts.entry(k).or_default() += 1;
    }
    counts.into_iter().filter(|&(_, n)| n > 1).map(|(k, _)| k).collect()
}

fn response(
    resource_type: i8,
    resource_name: kafka_protocol::protocol::StrBytes,
    outcome: Result<(), Refusal>,
) -> AlterConfigsResourceResponse {
    let mut r = AlterConfigsResourceResponse::default();
    r.resource_type = resource_type;
    r.resource_name = resource_name;
    if let Err((code, msg)) = outcome {
        r.error_code = code;
        r.error_message = Some(str_bytes(msg));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_config_values_are_checked_and_lists_normalised() {
        assert_eq!(check_topic_config("cleanup.policy", " compact , delete ").unwrap(), "compact,delete");
        assert_eq!(check_topic_config("retention.ms", "1000").unwrap(), "1000");
        assert_eq!(check_topic_config("retention.ms", "soon").unwrap_err().0, code::INVALID_CONFIG);
        assert_eq!(check_topic_config("cleanup.policy", "").unwrap_err().0, code::INVALID_CONFIG);
        assert_eq!(check_topic_config("no.such.config", "1").unwrap_err().0, code::INVALID_CONFIG);
    }

    #[test]
    fn repeated_keys_and_resources_are_found() {
        assert!(check_unique_keys(&["a", "b"]).is_ok());
        assert_eq!(check_unique_keys(&["a", "b", "a"]).unwrap_err().0, code::INVALID_REQUEST);
        let d = duplicates([(2, "t"), (4, "t"), (2, "t")].into_iter());
        assert_eq!(d, HashSet::from([(2, "t")]));
    }
}

#[cfg(test)]
mod handler_tests {
    use kafka_protocol::messages::ApiKey;
    use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};

    use super::*;
    use crate::handlers::describe_configs::fixture::{broker, encodes_at_every_version, request};

    fn resource(ty: i8, name: &str, configs: &[(&str, Option<&str>)]) -> AlterConfigsResource {
        let mut r = AlterConfigsResource::default();
        r.resource_type = ty;
        r.resource_name = str_bytes(name);
        r.configs = configs
            .iter()
            .map(|(k, v)| {
                let mut c = AlterableConfig::default();
                c.name = str_bytes(*k);
                c.value = v.map(str_bytes);
                c
            })
            .collect();
        r
    }

    #[tokio::test]
    async fn alter_configs_replaces_a_topics_overrides_entirely() {
        let (ctx, _dir) = broker(&[]);
        let old = BTreeMap::from([("retention.ms".to_string(), "1".to_string())]);
        let t = ctx.broker.create_topic("t", 1, old.clone()).unwrap();
        let mut body = AlterConfigsRequest::default();
        body.resources = vec![
            resource(RESOURCE_TOPIC, "t", &[("segment.ms", Some("100")), ("cleanup.policy", Some("compact, delete"))]),
            resource(RESOURCE_TOPIC, "nope", &[]),
            resource(RESOURCE_BROKER, "1", &[("num.partitions", Some("3"))]),
            resource(RESOURCE_BROKER, "", &[]),
        ];
        let resp = handle(&ctx, request(ApiKey::AlterConfigs, 2, body)).await.unwrap();
        let codes: Vec<i16> = resp.responses.iter().map(|r| r.error_code).collect();
        assert_eq!(codes, [0, 3, 42, 0]);
        let want = BTreeMap::from([
            ("cleanup.policy".to_string(), "compact,delete".to_string()),
            ("segment.ms".to_string(), "100".to_string()),
        ]);
        assert_eq!(*t.overrides.read(), want, "retention.ms is gone: the set was replaced");
        assert_eq!(t.partition(0).unwrap().log.lock().config().segment_ms, 100, "logs see the new config");
        encodes_at_every_version(ApiKey::AlterConfigs, &resp);

        let mut body = AlterConfigsRequest::default();
        body.resources = vec![
            resource(RESOURCE_TOPIC, "t", &[("segment.ms", Some("x"))]),
            resource(RESOURCE_TOPIC, "t", &[("segment.ms", None)]),
        ];
        let resp = handle(&ctx, request(ApiKey::AlterConfigs, 0, body)).await.unwrap();
        assert_eq!(resp.responses.len(), 1, "a repeated resource is answered once");
        assert_eq!(resp.responses[0].error_code, code::INVALID_REQUEST);
        let mut body = AlterConfigsRequest::default();
        body.resources = vec![resource(RESOURCE_TOPIC, "t", &[("segment.ms", Some("x"))])];
        let resp = handle(&ctx, request(ApiKey::AlterConfigs, 0, body)).await.unwrap();
        assert_eq!(resp.responses[0].error_code, code::INVALID_CONFIG);
        let mut body = AlterConfigsRequest::default();
        body.validate_only = true;
        body.resources = vec![resource(RESOURCE_TOPIC, "t", &[])];
        let resp = handle(&ctx, request(ApiKey::AlterConfigs, 1, body)).await.unwrap();
        assert_eq!(resp.responses[0].error_code, 0);
        assert_eq!(*t.overrides.read(), want, "failed and validate-only requests change nothing");
    }
}
