//! DescribeConfigs: every topic or broker config with its effective value, source, synonyms,
//! type and documentation, as Kafka's admin tools expect.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::{Ctx, Request, code, str_bytes};
use crate::config::{BROKER_CONFIGS, BrokerConfig, ConfigDef, Source, TOPIC_CONFIGS, broker_def, topic_value};
use crate::state::{Broker, Topic, check_topic_name};

/// Kafka's `ConfigResource.Type` ids.
pub(super) const RESOURCE_TOPIC: i8 = 2;
pub(super) const RESOURCE_BROKER: i8 = 4;
pub(super) const RESOURCE_BROKER_LOGGER: i8 = 8;

/// A refused resource: a Kafka error code and its message.
pub(super) type Refusal = (i16, String);

/// The topic a TOPIC resource names: a legal name of an existing topic.
pub(super) fn find_topic(broker: &Broker, name: &str) -> Result<Arc<Topic>, Refusal> {
    check_topic_name(name).map_err(|msg| (code::INVALID_TOPIC_EXCEPTION, msg))?;
    broker.topic(name).ok_or_else(|| (code::UNKNOWN_TOPIC_OR_PARTITION, format!("The topic '{name}' does not exist.")))
}

/// Checks that a BROKER resource names this node: its id, or "" (the cluster-wide default,
/// which a single node answers with its own configs).
pub(super) fn check_broker_name(name: &str, node_id: i32) -> Result<(), Refusal> {
    if name.is_empty() {
        return Ok(());
    }
    match name.parse::<i32>() {
        Ok(id) if id == node_id => Ok(()),
        Ok(_) => Err((
            code::INVALID_REQUEST,
            format!("Unexpected broker id, expected {node_id} or empty string, but received {name}"),
        )),
        Err(_) => Err((code::INVALID_REQUEST, format!("Broker id must be an integer, but it is: {name}"))),
    }
}

pub(super) async fn handle(ctx: &Ctx, req: Request<DescribeConfigsRequest>) -> Option<DescribeConfigsResponse> {
    let body = req.body;
    let opts = Options { synonyms: body.include_synonyms, documentation: body.include_documentation };
    let mut resp = DescribeConfigsResponse::default();
    for res in body.resources {
        let mut r = DescribeConfigsResult::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        let keys: Option<Vec<String>> = res.configuration_keys.map(|k| k.iter().map(|s| s.to_string()).collect());
        let wanted = |name: &str| keys.as_ref().is_none_or(|k| k.iter().any(|w| w == name));
        match describe(&ctx.broker, res.resource_type, &res.resource_name, &wanted, opts) {
            Ok(configs) => r.configs = configs,
            Err((code, msg)) => {
                r.error_code = code;
                r.error_message = Some(str_bytes(msg));
            }
        }
        resp.results.push(r);
    }
    Some(resp)
}

#[derive(Clone, Copy)]
struct Options {
    synonyms: bool,
    documentation: bool,
}

fn describe(
    broker: &Broker,
    resource_type: i8,
    name: &str,
    wanted: &dyn Fn(&str) -> bool,
    opts: Options,
) -> Result<Vec<DescribeConfigsResourceResult>, Refusal> {
    match resource_type {
        RESOURCE_TOPIC => {
            let topic = find_topic(broker, name)?;
            let overrides = topic.overrides.read().clone();
            let bc = broker.config.read();
            Ok(topic_entries(&overrides, &bc, wanted, opts))
        }
        RESOURCE_BROKER => {
            let bc = broker.config.read();
            check_broker_name(name, bc.node_id)?;
            Ok(broker_entries(&bc, wanted, opts))
        }
        RESOURCE_BROKER_LOGGER => {
            Err((code::INVALID_REQUEST, "Creek does not expose broker loggers as configs".to_string()))
        }
        other => Err((code::INVALID_REQUEST, format!("Unsupported resource type: {other}"))),
    }
}

/// Every topic config: the override (source 1) or the broker synonym's value and source.
fn topic_entries(
    overrides: &BTreeMap<String, String>,
    bc: &BrokerConfig,
    wanted: &dyn Fn(&str) -> bool,
    opts: Options,
) -> Vec<DescribeConfigsResourceResult> {
    TOPIC_CONFIGS
        .iter()
        .filter(|def| wanted(def.name))
        .map(|def| {
            let (value, source) = topic_value(def, overrides, bc);
            let mut e = entry(def, value, source, opts);
            if opts.synonyms {
                if let Some(v) = overrides.get(def.name) {
                    e.synonyms.push(synonym(def.name, v, Source::DynamicTopic));
                }
                if let Some(syn) = def.synonym.and_then(broker_def) {
                    e.synonyms.extend(broker_synonyms(syn, bc));
                }
            }
            e
        })
        .collect()
}

/// Every broker config with its value and source (4 static, 5 default).
fn broker_entries(
    bc: &BrokerConfig,
    wanted: &dyn Fn(&str) -> bool,
    opts: Options,
) -> Vec<DescribeConfigsResourceResult> {
    BROKER_CONFIGS
        .iter()
        .filter(|def| wanted(def.name))
        .map(|def| {
            let mut e = entry(def, bc.get(def.name).to_string(), bc.source(def.name), opts);
            if opts.synonyms {
                e.synonyms = broker_synonyms(def, bc);
            }
            e
        })
        .collect()
}

/// A broker config at each level it is set, most specific first: its current value, then the
/// built-in default when something overrides it (as Kafka lists `STATIC_BROKER_CONFIG` then
/// `DEFAULT_CONFIG`).
fn broker_synonyms(def: &ConfigDef, bc: &BrokerConfig) -> Vec<DescribeConfigsSynonym> {
    let source = bc.source(def.name);
    let mut out = vec![synonym(def.name, bc.get(def.name), source)];
    if source != Source::Default {
        out.push(synonym(def.name, def.default, Source::Default));
    }
    out
}

fn entry(def: &ConfigDef, value: String, source: Source, opts: Options) -> DescribeConfigsResourceResult {
    let mut e = DescribeConfigsResourceResult::default();
    e.name = str_bytes(def.name);
    e.value = Some(str_bytes(value));
    e.read_only = def.read_only;
    e.config_source = source as i8;
    e.is_sensitive = false;
    e.config_type = def.kind as i8;
    e.documentation = opts.documentation.then(|| str_bytes(def.doc));
    e
}

fn synonym(name: &str, value: &str, source: Source) -> DescribeConfigsSynonym {
    let mut s = DescribeConfigsSynonym::default();
    s.name = str_bytes(name);
    s.value = Some(str_bytes(value));
    s.source = source as i8;
    s
}

/// A broker in a temporary directory and helpers to call handlers as the dispatcher does.
#[cfg(test)]
pub(super) mod fixture {
    use bytes::Bytes;
    use creek_protocol::header::RequestHeader;
    use kafka_protocol::messages::ApiKey;
    use kafka_protocol::protocol::Encodable;

    use crate::config::BrokerConfig;
    use crate::flusher::Flusher;
    use crate::handlers::{Ctx, Request, supported};
    use crate::state::Broker;

    /// Opens a broker on a fresh data directory with `settings` (must run inside a runtime).
    pub(in crate::handlers) fn broker(settings: &[(&str, &str)]) -> (Ctx, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut all = vec![("log.dirs".to_string(), dir.path().display().to_string())];
        all.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let broker = Broker::open(BrokerConfig::from_settings(&all).unwrap(), None).unwrap();
        let flusher = Flusher::start();
        // Group tests call `ctx.groups.start()`; others see no `__consumer_offsets`.
        let groups = crate::group::coordinator::GroupCoordinator::new(broker.clone(), flusher.clone());
        let txns = crate::txn::coordinator::TxnCoordinator::new(broker.clone(), flusher.clone(), groups.clone());
        (Ctx { broker, flusher, groups, txns, peer: None }, dir)
    }

    pub(in crate::handlers) fn request<T>(key: ApiKey, version: i16, body: T) -> Request<T> {
        let header = RequestHeader { api_key: key as i16, api_version: version, correlation_id: 7, client_id: None };
        Request { header, body, frame: Bytes::new() }
    }

    /// Asserts `resp` encodes at every version the broker serves for `key`.
    pub(in crate::handlers) fn encodes_at_every_version<T: Encodable + 'static>(key: ApiKey, resp: &T) {
        let (min, max) = supported(key).unwrap();
        for v in min..=max {
            creek_protocol::codec::encode_response(key, v, 7, resp).unwrap_or_else(|e| panic!("{key:?} v{v}: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Options = Options { synonyms: true, documentation: true };

    #[test]
    fn topic_configs_list_every_config_with_its_source_and_synonyms() {
        let bc = BrokerConfig::from_settings(&[("log.retention.ms".into(), "1000".into())]).unwrap();
        let overrides = BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
        let entries = topic_entries(&overrides, &bc, &|_| true, ALL);
        assert_eq!(entries.len(), TOPIC_CONFIGS.len(), "every topic config is described");
        let get = |n: &str| entries.iter().find(|e| e.name.as_str() == n).unwrap();

        let cp = get("cleanup.policy");
        assert_eq!((cp.value.as_deref(), cp.config_source), (Some("compact"), 1));
        let syn: Vec<_> = cp.synonyms.iter().map(|s| (s.name.to_string(), s.source)).collect();
        assert_eq!(syn, [("cleanup.policy".to_string(), 1), ("log.cleanup.policy".to_string(), 5)]);

        let rm = get("retention.ms");
        assert_eq!((rm.value.as_deref(), rm.config_source), (Some("1000"), 4));
        let syn: Vec<_> = rm.synonyms.iter().map(|s| (s.value.as_deref().unwrap().to_string(), s.source)).collect();
        assert_eq!(syn, [("1000".to_string(), 4), ("604800000".to_string(), 5)]);

        let sb = get("segment.bytes");
        assert_eq!((sb.config_source, sb.config_type, sb.read_only, sb.is_sensitive), (5, 3, false, false));
        assert_eq!(
            sb.documentation.as_deref(),
            Some(TOPIC_CONFIGS.iter().find(|d| d.name == "segment.bytes").unwrap().doc)
        );
    }

    #[test]
    fn configuration_keys_filter_and_options_off_leave_out_synonyms_and_docs() {
        let bc = BrokerConfig::from_settings(&[]).unwrap();
        let off = Options { synonyms: false, documentation: false };
        let entries = topic_entries(&BTreeMap::new(), &bc, &|n| n == "retention.ms", off);
        assert_eq!(entries.len(), 1);
        assert!(entries[0].synonyms.is_empty());
        assert_eq!(entries[0].documentation, None);
        let broker = broker_entries(&bc, &|_| true, off);
        assert_eq!(broker.len(), BROKER_CONFIGS.len());
        let node = broker.iter().find(|e| e.name.as_str() == "node.id").unwrap();
        assert!(node.read_only);
        assert_eq!(node.config_source, 5);
    }

    #[test]
    fn broker_resource_names_are_checked_against_this_node() {
        assert!(check_broker_name("", 1).is_ok());
        assert!(check_broker_name("1", 1).is_ok());
        assert_eq!(check_broker_name("2", 1).unwrap_err().0, code::INVALID_REQUEST);
        assert_eq!(check_broker_name("x", 1).unwrap_err().0, code::INVALID_REQUEST);
    }

    #[tokio::test]
    async fn describe_configs_answers_topics_brokers_and_refusals_per_resource() {
        use kafka_protocol::messages::ApiKey;
        use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;

        use super::fixture::{broker, encodes_at_every_version, request};

        let (ctx, _dir) = broker(&[]);
        let overrides = BTreeMap::from([("retention.ms".to_string(), "5000".to_string())]);
        ctx.broker.create_topic("t", 1, overrides).unwrap();
        let res = |ty: i8, name: &str, keys: Option<Vec<&str>>| {
            let mut r = DescribeConfigsResource::default();
            r.resource_type = ty;
            r.resource_name = str_bytes(name);
            r.configuration_keys = keys.map(|k| k.into_iter().map(str_bytes).collect());
            r
        };
        let mut body = DescribeConfigsRequest::default();
        body.include_synonyms = true;
        body.resources = vec![
            res(RESOURCE_TOPIC, "t", None),
            res(RESOURCE_TOPIC, "t", Some(vec!["retention.ms", "no.such"])),
            res(RESOURCE_TOPIC, "missing", None),
            res(RESOURCE_TOPIC, "bad/name", None),
            res(RESOURCE_BROKER, "", None),
            res(RESOURCE_BROKER, "1", Some(vec!["num.partitions"])),
            res(RESOURCE_BROKER, "2", None),
            res(RESOURCE_BROKER_LOGGER, "1", None),
            res(16, "x", None),
        ];
        let resp = handle(&ctx, request(ApiKey::DescribeConfigs, 4, body)).await.unwrap();
        let codes: Vec<i16> = resp.results.iter().map(|r| r.error_code).collect();
        assert_eq!(codes, [0, 0, 3, 17, 0, 0, 42, 42, 42]);
        assert_eq!(resp.results[0].configs.len(), TOPIC_CONFIGS.len());
        let only: Vec<_> = resp.results[1]
            .configs
            .iter()
            .map(|c| (c.name.to_string(), c.value.as_deref().map(str::to_string), c.config_source))
            .collect();
        assert_eq!(only, [("retention.ms".to_string(), Some("5000".to_string()), 1)]);
        assert_eq!(resp.results[4].configs.len(), BROKER_CONFIGS.len());
        assert_eq!(resp.results[5].configs.len(), 1);
        assert_eq!(resp.results[3].resource_name.as_str(), "bad/name");
        encodes_at_every_version(ApiKey::DescribeConfigs, &resp);
    }
}
