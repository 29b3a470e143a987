//! IncrementalAlterConfigs: SET, DELETE, APPEND and SUBTRACT on a topic's overrides, applied
//! atomically per resource (in a cluster, through the metadata group, so every node applies
//! them). Broker resources are refused as in AlterConfigs (see its docs).

use std::collections::BTreeMap;

use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};

use super::alter_configs::{
    RepeatGate, check_resource_type, check_topic_config, check_unique_keys, list_items, refuse_broker_change,
    storage_refusal,
};
use super::describe_configs::{RESOURCE_BROKER, Refusal, find_topic};
use super::{Ctx, Request, code, str_bytes};
use crate::config::{BrokerConfig, Kind, topic_def, topic_value};

/// One requested change to one config.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Set(String),
    Delete,
    Append(String),
    Subtract(String),
}

impl Op {
    /// Decodes Kafka's `AlterConfigOp.OpType` id and its value.
    fn decode(name: &str, op: i8, value: Option<&str>) -> Result<Op, Refusal> {
        let value = || {
            value
                .map(str::to_string)
                .ok_or_else(|| (code::INVALID_CONFIG, format!("Null value not supported for : {name}")))
        };
        match op {
            0 => Ok(Op::Set(value()?)),
            1 => Ok(Op::Delete),
            2 => Ok(Op::Append(value()?)),
            3 => Ok(Op::Subtract(value()?)),
            other => Err((code::INVALID_REQUEST, format!("Unknown alter config operation type {other} for {name}"))),
        }
    }
}

pub(super) async fn handle(
    ctx: &Ctx,
    req: Request<IncrementalAlterConfigsRequest>,
) -> Option<IncrementalAlterConfigsResponse> {
    let body = req.body;
    let mut gate = RepeatGate::new(body.resources.iter().map(|r| (r.resource_type, r.resource_name.to_string())));
    let mut resp = IncrementalAlterConfigsResponse::default();
    for res in body.resources {
        let outcome = match gate.check(res.resource_type, &res.resource_name) {
            None => continue,
            Some(Err(refusal)) => Err(refusal),
            Some(Ok(())) => {
                let ops: Vec<(String, i8, Option<String>)> = res
                    .configs
                    .iter()
                    .map(|c| (c.name.to_string(), c.config_operation, c.value.as_ref().map(|v| v.to_string())))
                    .collect();
                alter(ctx, res.resource_type, &res.resource_name, &ops, body.validate_only).await
            }
        };
        let mut r = AlterConfigsResourceResponse::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name;
        if let Err((code, msg)) = outcome {
            r.error_code = code;
            r.error_message = Some(str_bytes(msg));
        }
        resp.responses.push(r);
    }
    Some(resp)
}

async fn alter(
    ctx: &Ctx,
    resource_type: i8,
    name: &str,
    raw: &[(String, i8, Option<String>)],
    validate_only: bool,
) -> Result<(), Refusal> {
    check_resource_type(ctx, resource_type, name)?;
    let keys: Vec<&str> = raw.iter().map(|(k, _, _)| k.as_str()).collect();
    check_unique_keys(&keys)?;
    let ops = raw
        .iter()
        .map(|(k, op, v)| Op::decode(k, *op, v.as_deref()).map(|op| (k.clone(), op)))
        .collect::<Result<Vec<_>, _>>()?;
    if resource_type == RESOURCE_BROKER {
        return refuse_broker_change(&keys);
    }
    let topic = find_topic(&ctx.broker, name)?;
    let broker = &ctx.broker;
    if validate_only {
        let current = topic.overrides.read().clone();
        return apply(&current, &ops, &broker.config.read()).map(drop);
    }
    // The broker config is read before the metadata lock is taken, never inside it.
    let bc = broker.config.read().clone();
    if let Some(cluster) = broker.cluster.get() {
        // Every node applies the change from the metadata group.
        return cluster.edit_topic_configs(broker, name, |current| apply(current, &ops, &bc)).await;
    }
    broker.edit_topic_configs(&topic, |current| apply(current, &ops, &bc)).map_err(storage_refusal)?
}

/// The overrides after `ops`, every changed value validated; nothing is applied on error.
/// APPEND and SUBTRACT work on the effective value (the override, else the broker default).
fn apply(
    current: &BTreeMap<String, String>,
    ops: &[(String, Op)],
    bc: &BrokerConfig,
) -> Result<BTreeMap<String, String>, Refusal> {
    let mut next = current.clone();
    for (name, op) in ops {
        let def =
            topic_def(name).ok_or_else(|| (code::INVALID_CONFIG, format!("Unknown topic config name: {name}")))?;
        let is_list = def.kind == Kind::List;
        let value = match op {
            Op::Set(v) => v.clone(),
            Op::Delete => {
                next.remove(name);
                continue;
            }
            Op::Append(_) | Op::Subtract(_) if !is_list => {
                let verb = if matches!(op, Op::Append(_)) { "APPEND" } else { "SUBTRACT" };
                return Err((
                    code::INVALID_CONFIG,
                    format!("Can't {verb} to key {name} because its type is not LIST."),
                ));
            }
            Op::Append(v) => {
                let (old, _) = topic_value(def, &next, bc);
                let mut items: Vec<&str> = list_items(&old);
                for item in list_items(v) {
                    if !items.contains(&item) {
                        items.push(item);
                    }
                }
                items.join(",")
            }
            Op::Subtract(v) => {
                let (old, _) = topic_value(def, &next, bc);
                let remove = list_items(v);
                list_items(&old).into_iter().filter(|i| !remove.contains(i)).collect::<Vec<_>>().join(",")
            }
        };
        next.insert(name.clone(), check_topic_config(name, &value)?);
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(current: &[(&str, &str)], ops: &[(&str, Op)]) -> Result<BTreeMap<String, String>, Refusal> {
        let bc = BrokerConfig::from_settings(&[]).unwrap();
        let current = current.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let ops: Vec<_> = ops.iter().map(|(k, op)| (k.to_string(), op.clone())).collect();
        apply(&current, &ops, &bc)
    }

    fn policy(m: &BTreeMap<String, String>) -> Option<&str> {
        m.get("cleanup.policy").map(String::as_str)
    }

    #[test]
    fn append_and_subtract_edit_cleanup_policy_as_a_list() {
        // The broker default is "delete": appending compact gives both.
        let m = run(&[], &[("cleanup.policy", Op::Append("compact".into()))]).unwrap();
        assert_eq!(policy(&m), Some("delete,compact"));
        // Appending an item already present changes nothing.
        let m = run(&[("cleanup.policy", "compact")], &[("cleanup.policy", Op::Append("compact".into()))]).unwrap();
        assert_eq!(policy(&m), Some("compact"));
        let m =
            run(&[("cleanup.policy", "compact,delete")], &[("cleanup.policy", Op::Subtract("delete".into()))]).unwrap();
        assert_eq!(policy(&m), Some("compact"));
        // Subtracting the last item leaves an empty list, which cleanup.policy does not accept.
        let e =
            run(&[("cleanup.policy", "compact")], &[("cleanup.policy", Op::Subtract("compact".into()))]).unwrap_err();
        assert_eq!(e.0, code::INVALID_CONFIG);
    }

    #[test]
    fn list_operations_on_scalar_configs_are_invalid_config() {
        let e = run(&[], &[("retention.ms", Op::Append("5".into()))]).unwrap_err();
        assert_eq!(e.0, code::INVALID_CONFIG);
        let e = run(&[], &[("retention.ms", Op::Subtract("5".into()))]).unwrap_err();
        assert_eq!(e.0, code::INVALID_CONFIG);
    }

    #[test]
    fn set_and_delete_validate_and_apply_all_or_nothing() {
        let m = run(&[("retention.ms", "5")], &[("segment.ms", Op::Set("100".into())), ("retention.ms", Op::Delete)])
            .unwrap();
        assert_eq!(m, BTreeMap::from([("segment.ms".to_string(), "100".to_string())]));
        // One bad value refuses the whole resource.
        let e = run(&[], &[("segment.ms", Op::Set("100".into())), ("retention.ms", Op::Set("x".into()))]).unwrap_err();
        assert_eq!(e.0, code::INVALID_CONFIG);
        let e = run(&[], &[("no.such", Op::Delete)]).unwrap_err();
        assert_eq!(e.0, code::INVALID_CONFIG);
        // Deleting an override that is not there is a no-op.
        assert!(run(&[], &[("retention.ms", Op::Delete)]).unwrap().is_empty());
    }

    #[test]
    fn operation_ids_decode_like_kafka() {
        assert_eq!(Op::decode("a", 0, Some("1")).unwrap(), Op::Set("1".into()));
        assert_eq!(Op::decode("a", 1, None).unwrap(), Op::Delete);
        assert_eq!(Op::decode("a", 2, Some("x")).unwrap(), Op::Append("x".into()));
        assert_eq!(Op::decode("a", 3, Some("x")).unwrap(), Op::Subtract("x".into()));
        assert_eq!(Op::decode("a", 0, None).unwrap_err().0, code::INVALID_CONFIG);
        assert_eq!(Op::decode("a", 4, Some("x")).unwrap_err().0, code::INVALID_REQUEST);
        assert_eq!(Op::decode("a", -1, Some("x")).unwrap_err().0, code::INVALID_REQUEST);
    }
}

#[cfg(test)]
mod handler_tests {
    use kafka_protocol::messages::ApiKey;
    use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};

    use super::*;
    use crate::handlers::describe_configs::RESOURCE_TOPIC;
    use crate::handlers::describe_configs::fixture::{broker, encodes_at_every_version, request};

    fn resource(ty: i8, name: &str, ops: &[(&str, i8, Option<&str>)]) -> AlterConfigsResource {
        let mut r = AlterConfigsResource::default();
        r.resource_type = ty;
        r.resource_name = str_bytes(name);
        r.configs = ops
            .iter()
            .map(|(k, op, v)| {
                let mut c = AlterableConfig::default();
                c.name = str_bytes(*k);
                c.config_operation = *op;
                c.value = v.map(str_bytes);
                c
            })
            .collect();
        r
    }

    #[tokio::test]
    async fn incremental_alter_configs_applies_each_resource_atomically() {
        let (ctx, _dir) = broker(&[]);
        let t = ctx.broker.create_topic("t", 1, BTreeMap::new()).unwrap();
        let mut body = IncrementalAlterConfigsRequest::default();
        body.validate_only = true;
        body.resources = vec![resource(RESOURCE_TOPIC, "t", &[("cleanup.policy", 2, Some("compact"))])];
        let resp = handle(&ctx, request(ApiKey::IncrementalAlterConfigs, 1, body)).await.unwrap();
        assert_eq!(resp.responses[0].error_code, 0);
        assert!(t.overrides.read().is_empty(), "validate_only changes nothing");

        let mut body = IncrementalAlterConfigsRequest::default();
        body.resources = vec![
            resource(RESOURCE_TOPIC, "t", &[("cleanup.policy", 2, Some("compact")), ("retention.ms", 0, Some("9"))]),
            resource(RESOURCE_TOPIC, "nope", &[("retention.ms", 0, Some("9"))]),
            resource(4, "1", &[("num.partitions", 0, Some("2"))]),
            resource(4, "7", &[]),
        ];
        let resp = handle(&ctx, request(ApiKey::IncrementalAlterConfigs, 0, body)).await.unwrap();
        let codes: Vec<i16> = resp.responses.iter().map(|r| r.error_code).collect();
        assert_eq!(codes, [0, 3, 42, 42]);
        assert_eq!(t.overrides.read().get("cleanup.policy").map(String::as_str), Some("delete,compact"));
        assert_eq!(t.partition(0).unwrap().log.lock().config().retention_ms, 9);
        encodes_at_every_version(ApiKey::IncrementalAlterConfigs, &resp);

        let before = t.overrides.read().clone();
        let mut body = IncrementalAlterConfigsRequest::default();
        body.resources =
            vec![resource(RESOURCE_TOPIC, "t", &[("retention.ms", 1, None), ("segment.ms", 2, Some("5"))])];
        let resp = handle(&ctx, request(ApiKey::IncrementalAlterConfigs, 1, body)).await.unwrap();
        assert_eq!(resp.responses[0].error_code, code::INVALID_CONFIG);
        assert_eq!(*t.overrides.read(), before, "the valid DELETE was not applied either");
    }
}
