//! Broker and topic configuration: Kafka config names, defaults, sources, validation and loading
//! from a TOML file, environment variables and command-line flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use creek_storage::LogConfig;

/// The value type of a config, as DescribeConfigs v3+ reports it (`config_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

/// One known config: its Kafka name, type, default and (for topic configs) the broker config that
/// supplies the default.
#[derive(Debug)]
pub(crate) struct ConfigDef {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) default: &'static str,
    /// For a topic config, the broker config whose value is its default.
    pub(crate) synonym: Option<&'static str>,
    /// Allowed values for enumerations, empty when any value of `kind` is fine.
    pub(crate) choices: &'static [&'static str],
    pub(crate) read_only: bool,
    pub(crate) doc: &'static str,
}

const fn def(name: &'static str, kind: Kind, default: &'static str, doc: &'static str) -> ConfigDef {
    ConfigDef { name, kind, default, synonym: None, choices: &[], read_only: false, doc }
}
const fn topic(
    name: &'static str,
    kind: Kind,
    synonym: &'static str,
    choices: &'static [&'static str],
    doc: &'static str,
) -> ConfigDef {
    ConfigDef { name, kind, default: "", synonym: Some(synonym), choices, read_only: false, doc }
}
const fn read_only(name: &'static str, kind: Kind, default: &'static str, doc: &'static str) -> ConfigDef {
    ConfigDef { name, kind, default, synonym: None, choices: &[], read_only: true, doc }
}

const CLEANUP: &[&str] = &["delete", "compact", "compact,delete", "delete,compact"];
const COMPRESSION: &[&str] = &["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"];
const TIMESTAMP_TYPE: &[&str] = &["CreateTime", "LogAppendTime"];

/// Broker configs. Read-only ones are fixed at start; the `log.*` ones are topic defaults.
pub(crate) const BROKER_CONFIGS: &[ConfigDef] = &[
    read_only("node.id", Kind::Int, "1", "This broker's id."),
    read_only("listeners", Kind::String, "127.0.0.1:9092", "Address the Kafka listener binds."),
    read_only(
        "advertised.listeners",
        Kind::String,
        "",
        "Address clients are told to connect to; defaults to the listener.",
    ),
    read_only("log.dirs", Kind::String, "./creek-data", "Directory holding all data."),
    read_only(
        "internal.listener",
        Kind::String,
        "",
        "Address the internal (broker-to-broker) RPC listener binds; defaults to this node's entry in internal.peers.",
    ),
    read_only(
        "internal.peers",
        Kind::List,
        "",
        "Every node of the cluster as id@host:port, comma-separated, the same on every node; empty runs a single node.",
    ),
    def(
        "auto.create.topics.enable",
        Kind::Boolean,
        "true",
        "Create a topic when a client asks for its metadata or produces to it.",
    ),
    def("num.partitions", Kind::Int, "1", "Partitions of an auto-created topic, and of CreateTopics asking for -1."),
    def("default.replication.factor", Kind::Int, "1", "Replication factor of auto-created topics."),
    def("delete.topic.enable", Kind::Boolean, "true", "Allow DeleteTopics."),
    def(
        "auto.leader.rebalance.enable",
        Kind::Boolean,
        "true",
        "In a cluster, move each partition's leadership back to its preferred (first) replica when that is up and caught up.",
    ),
    def(
        "replica.lag.time.max.ms",
        Kind::Long,
        "30000",
        "In a cluster, a follower that has not caught up with its leader for this long leaves the partition's in-sync replicas (Metadata's ISR).",
    ),
    def(
        "leader.imbalance.check.interval.seconds",
        Kind::Long,
        "300",
        "How often a cluster node hands leaderships back to preferred replicas.",
    ),
    def(
        "message.max.bytes",
        Kind::Int,
        "1048588",
        "Largest record batch a topic accepts (default of max.message.bytes).",
    ),
    read_only("socket.request.max.bytes", Kind::Int, "104857600", "Largest request frame the broker reads."),
    read_only(
        "queued.max.request.bytes",
        Kind::Long,
        "536870912",
        "Total bytes of request frames being read or handled at once; readers wait for room.",
    ),
    def("fetch.max.bytes", Kind::Int, "57671680", "Upper bound on a Fetch response's records."),
    def("log.segment.bytes", Kind::Int, "1073741824", "Default segment.bytes."),
    def("log.roll.ms", Kind::Long, "604800000", "Default segment.ms."),
    def("log.retention.ms", Kind::Long, "604800000", "Default retention.ms."),
    def("log.retention.bytes", Kind::Long, "-1", "Default retention.bytes."),
    def("log.index.interval.bytes", Kind::Int, "4096", "Default index.interval.bytes."),
    def("log.index.size.max.bytes", Kind::Int, "10485760", "Default segment.index.bytes."),
    def("log.cleanup.policy", Kind::List, "delete", "Default cleanup.policy."),
    def("log.message.timestamp.type", Kind::String, "CreateTime", "Default message.timestamp.type."),
    def("log.cleaner.delete.retention.ms", Kind::Long, "86400000", "Default delete.retention.ms."),
    def("log.cleaner.min.cleanable.ratio", Kind::Double, "0.5", "Default min.cleanable.dirty.ratio."),
    def("log.cleaner.min.compaction.lag.ms", Kind::Long, "0", "Default min.compaction.lag.ms."),
    def("log.cleaner.max.compaction.lag.ms", Kind::Long, "9223372036854775807", "Default max.compaction.lag.ms."),
    def("log.flush.interval.messages", Kind::Long, "9223372036854775807", "Default flush.messages."),
    def(
        "log.flush.interval.ms",
        Kind::Long,
        "1000",
        "Default flush.ms: the longest unflushed data waits for a background fsync. acks=all always waits for its own fsync.",
    ),
    def("log.retention.check.interval.ms", Kind::Long, "300000", "How often retention and time-based rolls run."),
    def(
        "log.preallocate",
        Kind::Boolean,
        "false",
        "Default preallocate (Creek always preallocates the active segment in chunks).",
    ),
    def(
        "log.message.timestamp.before.max.ms",
        Kind::Long,
        "9223372036854775807",
        "Default message.timestamp.before.max.ms.",
    ),
    def(
        "log.message.timestamp.after.max.ms",
        Kind::Long,
        "9223372036854775807",
        "Default message.timestamp.after.max.ms.",
    ),
    def("compression.type", Kind::String, "producer", "Default compression.type."),
    def("min.insync.replicas", Kind::Int, "1", "Default min.insync.replicas."),
    def("unclean.leader.election.enable", Kind::Boolean, "false", "Default unclean.leader.election.enable."),
    def(
        "group.initial.rebalance.delay.ms",
        Kind::Int,
        "3000",
        "How long the first rebalance of an empty group waits for more members to join.",
    ),
    def(
        "group.min.session.timeout.ms",
        Kind::Int,
        "6000",
        "Smallest session.timeout.ms a classic group member may ask for.",
    ),
    def(
        "group.max.session.timeout.ms",
        Kind::Int,
        "1800000",
        "Largest session.timeout.ms a classic group member may ask for.",
    ),
    def("group.max.size", Kind::Int, "2147483647", "Most members a classic group may have."),
    def(
        "group.consumer.session.timeout.ms",
        Kind::Int,
        "45000",
        "KIP-848 groups: a member silent this long is removed.",
    ),
    def("group.consumer.heartbeat.interval.ms", Kind::Int, "5000", "KIP-848 groups: how often members heartbeat."),
    def("group.consumer.max.size", Kind::Int, "2147483647", "Most members a KIP-848 consumer group may have."),
    read_only(
        "offsets.topic.num.partitions",
        Kind::Int,
        "50",
        "Partitions of __consumer_offsets, fixed when it is created.",
    ),
    read_only(
        "offsets.topic.segment.bytes",
        Kind::Int,
        "104857600",
        "segment.bytes of __consumer_offsets when it is created.",
    ),
    def(
        "offsets.retention.minutes",
        Kind::Int,
        "10080",
        "How long committed offsets are kept after a group becomes empty (or after the commit, for standalone consumers).",
    ),
    def("offsets.retention.check.interval.ms", Kind::Long, "600000", "How often expired offsets are removed."),
    def("offset.metadata.max.bytes", Kind::Int, "4096", "Largest metadata string an offset commit may carry."),
    def(
        "producer.id.expiration.ms",
        Kind::Int,
        "86400000",
        "A partition forgets an idle producer's sequence state after this long (its next batch must start again at sequence 0).",
    ),
    def(
        "transaction.max.timeout.ms",
        Kind::Int,
        "900000",
        "Largest transaction.timeout.ms a producer may ask for (INVALID_TRANSACTION_TIMEOUT above it).",
    ),
    def(
        "transactional.id.expiration.ms",
        Kind::Int,
        "604800000",
        "A transactional id idle this long (no transaction open) is forgotten.",
    ),
    def(
        "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        Kind::Int,
        "10000",
        "How often the transaction coordinator aborts (and fences) transactions past their timeout.",
    ),
    read_only(
        "transaction.state.log.num.partitions",
        Kind::Int,
        "50",
        "Partitions of __transaction_state, fixed when it is created.",
    ),
    read_only(
        "transaction.state.log.replication.factor",
        Kind::Int,
        "3",
        "Replicas of each __transaction_state partition in a cluster (at most the node count), fixed when it is created.",
    ),
    read_only(
        "transaction.state.log.segment.bytes",
        Kind::Int,
        "104857600",
        "segment.bytes of __transaction_state when it is created.",
    ),
];

/// Topic configs, each defaulting to a broker config.
pub(crate) const TOPIC_CONFIGS: &[ConfigDef] = &[
    topic("cleanup.policy", Kind::List, "log.cleanup.policy", CLEANUP, "delete and/or compact old segments."),
    topic(
        "compression.type",
        Kind::String,
        "compression.type",
        COMPRESSION,
        "Final compression of the topic's data; producer keeps what the producer sent.",
    ),
    topic(
        "delete.retention.ms",
        Kind::Long,
        "log.cleaner.delete.retention.ms",
        &[],
        "How long tombstones are kept on compacted topics.",
    ),
    topic("flush.messages", Kind::Long, "log.flush.interval.messages", &[], "Force an fsync after this many messages."),
    topic("flush.ms", Kind::Long, "log.flush.interval.ms", &[], "Force an fsync after this long."),
    topic("index.interval.bytes", Kind::Int, "log.index.interval.bytes", &[], "Bytes between offset index entries."),
    topic(
        "max.compaction.lag.ms",
        Kind::Long,
        "log.cleaner.max.compaction.lag.ms",
        &[],
        "Longest a record stays uncompacted.",
    ),
    topic("max.message.bytes", Kind::Int, "message.max.bytes", &[], "Largest record batch the topic accepts."),
    topic(
        "message.timestamp.after.max.ms",
        Kind::Long,
        "log.message.timestamp.after.max.ms",
        &[],
        "How far in the future a CreateTime may be.",
    ),
    topic(
        "message.timestamp.before.max.ms",
        Kind::Long,
        "log.message.timestamp.before.max.ms",
        &[],
        "How far in the past a CreateTime may be.",
    ),
    topic(
        "message.timestamp.type",
        Kind::String,
        "log.message.timestamp.type",
        TIMESTAMP_TYPE,
        "CreateTime or LogAppendTime.",
    ),
    topic(
        "min.cleanable.dirty.ratio",
        Kind::Double,
        "log.cleaner.min.cleanable.ratio",
        &[],
        "Dirty share of the log before compaction runs.",
    ),
    topic(
        "min.compaction.lag.ms",
        Kind::Long,
        "log.cleaner.min.compaction.lag.ms",
        &[],
        "Shortest a record stays uncompacted.",
    ),
    topic("min.insync.replicas", Kind::Int, "min.insync.replicas", &[], "Replicas that must hold an acks=all write."),
    topic("preallocate", Kind::Boolean, "log.preallocate", &[], "Preallocate segment files."),
    topic(
        "retention.bytes",
        Kind::Long,
        "log.retention.bytes",
        &[],
        "Largest size of a partition before old segments are deleted; -1 for no limit.",
    ),
    topic("retention.ms", Kind::Long, "log.retention.ms", &[], "Longest a segment is kept; -1 for no limit."),
    topic("segment.bytes", Kind::Int, "log.segment.bytes", &[], "Segment file size at which the log rolls."),
    topic("segment.index.bytes", Kind::Int, "log.index.size.max.bytes", &[], "Largest offset index of a segment."),
    topic("segment.ms", Kind::Long, "log.roll.ms", &[], "Age at which the active segment rolls."),
    topic(
        "unclean.leader.election.enable",
        Kind::Boolean,
        "unclean.leader.election.enable",
        &[],
        "Allow an out-of-sync replica to become leader.",
    ),
];

pub(crate) fn broker_def(name: &str) -> Option<&'static ConfigDef> {
    BROKER_CONFIGS.iter().find(|d| d.name == name)
}
pub(crate) fn topic_def(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks that `value` is acceptable for `def`.
pub(crate) fn validate(def: &ConfigDef, value: &str) -> Result<(), String> {
    let ok = match def.kind {
        Kind::Boolean => value == "true" || value == "false",
        Kind::Int => value.parse::<i32>().is_ok(),
        Kind::Long => value.parse::<i64>().is_ok(),
        Kind::Double => value.parse::<f64>().is_ok(),
        Kind::String | Kind::List => true,
    };
    if !ok {
        return Err(format!("Invalid value {value} for configuration {}: not a valid {:?}", def.name, def.kind));
    }
    if !def.choices.is_empty() && !def.choices.contains(&value) {
        return Err(format!("Invalid value {value} for configuration {}: must be one of {:?}", def.name, def.choices));
    }
    let numeric_min = match def.name {
        "segment.bytes" | "log.segment.bytes" => Some(14),
        "max.message.bytes" | "message.max.bytes" => Some(0),
        "segment.ms" | "log.roll.ms" => Some(1),
        "index.interval.bytes" | "segment.index.bytes" => Some(4),
        "num.partitions" => Some(1),
        "retention.ms" | "retention.bytes" | "log.retention.ms" | "log.retention.bytes" => Some(-1),
        _ => None,
    };
    if let Some(min) = numeric_min {
        if value.parse::<i64>().map(|v| v < min).unwrap_or(false) {
            return Err(format!("Invalid value {value} for configuration {}: Value must be at least {min}", def.name));
        }
    }
    Ok(())
}

/// Where an effective value came from, with DescribeConfigs' source codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    DynamicTopic = 1,
    StaticBroker = 4,
    Default = 5,
}

/// The broker's configuration: every known broker config with its value and source.
#[derive(Debug, Clone)]
pub(crate) struct BrokerConfig {
    values: BTreeMap<String, (String, Source)>,
    pub(crate) node_id: i32,
    pub(crate) listen: SocketAddr,
    pub(crate) advertised_host: String,
    pub(crate) advertised_port: u16,
    pub(crate) data_dir: PathBuf,
}

impl BrokerConfig {
    /// Builds the config from explicit settings (file, environment and flags, later ones winning),
    /// validating every name and value.
    pub(crate) fn from_settings(settings: &[(String, String)]) -> anyhow::Result<Self> {
        let mut values: BTreeMap<String, (String, Source)> =
            BROKER_CONFIGS.iter().map(|d| (d.name.to_string(), (d.default.to_string(), Source::Default))).collect();
        for (k, v) in settings {
            let def = broker_def(k).with_context(|| format!("unknown broker config `{k}`"))?;
            validate(def, v).map_err(anyhow::Error::msg)?;
            values.insert(k.clone(), (v.clone(), Source::StaticBroker));
        }
        let get = |k: &str| values[k].0.clone();
        let node_id: i32 = get("node.id").parse()?;
        let listen: SocketAddr = get("listeners")
            .trim_start_matches("PLAINTEXT://")
            .parse()
            .with_context(|| format!("listeners `{}` is not host:port", get("listeners")))?;
        let advertised = match get("advertised.listeners") {
            a if a.is_empty() => listen.to_string(),
            a => a.trim_start_matches("PLAINTEXT://").to_string(),
        };
        let (host, port) = advertised
            .rsplit_once(':')
            .with_context(|| format!("advertised.listeners `{advertised}` is not host:port"))?;
        let advertised_port: u16 = port.parse().context("advertised port")?;
        let advertised_port = if advertised_port == 0 { listen.port() } else { advertised_port };
        Ok(BrokerConfig {
            node_id,
            listen,
            advertised_host: host.trim_matches(['[', ']']).to_string(),
            advertised_port,
            data_dir: PathBuf::from(get("log.dirs")),
            values,
        })
    }

    /// Sets the port actually bound (for `listeners` with port 0).
    pub(crate) fn bound(&mut self, addr: SocketAddr) {
        // Advertising the listener's own port (0 included) means advertising the port bound.
        if self.advertised_port == self.listen.port() {
            self.advertised_port = addr.port();
        }
        self.listen = addr;
    }

    pub(crate) fn get(&self, name: &str) -> &str {
        &self.values.get(name).unwrap_or_else(|| panic!("unknown broker config {name}")).0
    }
    pub(crate) fn source(&self, name: &str) -> Source {
        self.values[name].1
    }
    pub(crate) fn i64(&self, name: &str) -> i64 {
        self.get(name).parse().unwrap_or_else(|_| panic!("broker config {name} was validated"))
    }
    pub(crate) fn bool(&self, name: &str) -> bool {
        self.get(name) == "true"
    }
}

/// A topic's effective configuration: its overrides over the broker defaults.
#[derive(Debug, Clone)]
pub(crate) struct TopicConfig {
    pub(crate) log: LogConfig,
    pub(crate) max_message_bytes: usize,
    pub(crate) log_append_time: bool,
    pub(crate) flush_ms: i64,
}

/// The effective value and source of topic config `def` for `overrides`.
pub(crate) fn topic_value(
    def: &ConfigDef,
    overrides: &BTreeMap<String, String>,
    broker: &BrokerConfig,
) -> (String, Source) {
    if let Some(v) = overrides.get(def.name) {
        return (v.clone(), Source::DynamicTopic);
    }
    let syn = def.synonym.expect("topic configs have a broker synonym");
    (broker.get(syn).to_string(), broker.source(syn))
}

impl TopicConfig {
    pub(crate) fn resolve(overrides: &BTreeMap<String, String>, broker: &BrokerConfig) -> TopicConfig {
        let v = |name: &str| topic_value(topic_def(name).expect("known topic config"), overrides, broker).0;
        let num = |name: &str| -> i64 { v(name).parse().unwrap_or_else(|_| panic!("{name} was validated")) };
        let segment_bytes = num("segment.bytes").max(14) as u64;
        let log = LogConfig {
            segment_bytes,
            segment_ms: num("segment.ms"),
            retention_ms: num("retention.ms"),
            retention_bytes: num("retention.bytes"),
            index_interval_bytes: num("index.interval.bytes").max(0) as u32,
            segment_index_bytes: num("segment.index.bytes").max(4) as u32,
            preallocate_chunk_bytes: (8u64 << 20).min(segment_bytes),
            cleanup_delete: v("cleanup.policy").split(',').any(|p| p.trim() == "delete"),
            cleanup_compact: v("cleanup.policy").split(',').any(|p| p.trim() == "compact"),
            delete_retention_ms: num("delete.retention.ms"),
            min_cleanable_dirty_ratio: v("min.cleanable.dirty.ratio")
                .parse()
                .unwrap_or_else(|_| panic!("min.cleanable.dirty.ratio was validated")),
            min_compaction_lag_ms: num("min.compaction.lag.ms"),
            max_compaction_lag_ms: num("max.compaction.lag.ms"),
            producer_id_expiration_ms: broker.i64("producer.id.expiration.ms"),
            ..LogConfig::default()
        };
        TopicConfig {
            log,
            max_message_bytes: num("max.message.bytes").max(0) as usize,
            log_append_time: v("message.timestamp.type") == "LogAppendTime",
            flush_ms: num("flush.ms"),
        }
    }
}

/// Reads a TOML config file into flat Kafka-style settings: nested tables join with dots, so
/// `log.retention.ms = 1000` and `[log.retention]\nms = 1000` both set `log.retention.ms`.
pub(crate) fn read_toml(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("parsing config file {}", path.display()))?;
    let mut out = Vec::new();
    fn walk(prefix: &str, t: &toml::Table, out: &mut Vec<(String, String)>) -> anyhow::Result<()> {
        for (k, v) in t {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match v {
                toml::Value::Table(inner) => walk(&key, inner, out)?,
                toml::Value::String(s) => out.push((key, s.clone())),
                toml::Value::Integer(i) => out.push((key, i.to_string())),
                toml::Value::Float(f) => out.push((key, f.to_string())),
                toml::Value::Boolean(b) => out.push((key, b.to_string())),
                other => bail!("config `{key}`: unsupported value {other}"),
            }
        }
        Ok(())
    }
    walk("", &table, &mut out)?;
    Ok(out)
}

/// Settings from environment variables: `CREEK_` followed by the config name in upper case with
/// dots as underscores, e.g. `CREEK_LOG_RETENTION_MS` for `log.retention.ms`.
pub(crate) fn from_env() -> Vec<(String, String)> {
    BROKER_CONFIGS
        .iter()
        .filter_map(|d| {
            let var = format!("CREEK_{}", d.name.to_uppercase().replace('.', "_"));
            std::env::var(var).ok().map(|v| (d.name.to_string(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_a_single_node_on_9092() {
        let c = BrokerConfig::from_settings(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9092");
        assert_eq!((c.advertised_host.as_str(), c.advertised_port), ("127.0.0.1", 9092));
        assert_eq!(c.data_dir, PathBuf::from("./creek-data"));
        assert_eq!(c.node_id, 1);
    }

    #[test]
    fn topic_overrides_win_and_bad_values_are_refused() {
        let b = BrokerConfig::from_settings(&[("log.retention.ms".into(), "1000".into())]).unwrap();
        let mut o = BTreeMap::new();
        assert_eq!(TopicConfig::resolve(&o, &b).log.retention_ms, 1000);
        o.insert("retention.ms".to_string(), "5".to_string());
        assert_eq!(TopicConfig::resolve(&o, &b).log.retention_ms, 5);
        assert!(validate(topic_def("cleanup.policy").unwrap(), "nope").is_err());
        assert!(validate(topic_def("segment.bytes").unwrap(), "abc").is_err());
        assert!(BrokerConfig::from_settings(&[("no.such".into(), "1".into())]).is_err());
    }

    #[test]
    fn readme_documents_every_config() {
        let readme = include_str!("../../README.md");
        for def in BROKER_CONFIGS.iter().chain(TOPIC_CONFIGS) {
            assert!(readme.contains(&format!("| `{}` |", def.name)), "README lacks a row for {}", def.name);
        }
    }

    #[test]
    fn example_config_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/creek.toml");
        let c = BrokerConfig::from_settings(&read_toml(&path).unwrap()).unwrap();
        assert_eq!((c.advertised_host.as_str(), c.advertised_port), ("broker1.example.internal", 9092));
        assert_eq!(c.get("log.retention.ms"), "604800000");
        assert_eq!(c.source("log.flush.interval.ms"), Source::StaticBroker);
        assert!(!c.bool("auto.create.topics.enable"));
    }
}
