//! The broker's state: topics, their partitions' logs, and the persisted topic metadata.
//!
//! Topic metadata lives in `<data>/meta/topics.toml`, rewritten atomically (temp file, fsync,
//! rename, fsync of the directory) on every change. The metadata Raft group replaces this file
//! when replication lands; until then this is the single-node source of truth.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use creek_storage::PartitionLog;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::{BrokerConfig, TopicConfig};
use crate::raft::log_store::SharedLog;
use crate::raft::replica::Replica;

/// Milliseconds since the Unix epoch, the broker's clock. Only the broker reads the clock;
/// storage and protocol code are given `now`.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// One partition: its log and what readers wait on.
pub(crate) struct Partition {
    pub(crate) topic: String,
    pub(crate) index: i32,
    /// Shared with the partition's Raft log store when it is replicated.
    pub(crate) log: SharedLog,
    pub(crate) config: RwLock<TopicConfig>,
    /// The leader epoch stamped into appended batches of an unreplicated partition (a single
    /// node, internal topics): always 0. A replicated one's is its Raft term ([`Partition::epoch`]).
    pub(crate) leader_epoch: i32,
    /// This node's replica of the partition's Raft group, once started (cluster mode).
    pub(crate) replica: ReplicaSlot,
    /// Serialises fsyncs of this partition so two flushers never race on `mark_flushed`.
    pub(crate) flush_lock: tokio::sync::Mutex<()>,
    pub(crate) last_flush_ms: Mutex<i64>,
}

/// This node's replica of a partition's Raft group: set when it starts, taken when this node
/// stops hosting the partition (a reassignment moved it away).
#[derive(Default)]
pub(crate) struct ReplicaSlot(parking_lot::RwLock<Option<Arc<Replica>>>);

impl ReplicaSlot {
    pub(crate) fn get(&self) -> Option<Arc<Replica>> {
        self.0.read().clone()
    }

    /// Sets the replica unless one is set already (which is handed back).
    pub(crate) fn set(&self, replica: Arc<Replica>) -> Result<(), Arc<Replica>> {
        let mut slot = self.0.write();
        if slot.is_some() {
            return Err(replica);
        }
        *slot = Some(replica);
        Ok(())
    }

    pub(crate) fn take(&self) -> Option<Arc<Replica>> {
        self.0.write().take()
    }
}

impl Partition {
    /// The current leader epoch.
    pub(crate) fn epoch(&self) -> i32 {
        self.replica.get().map_or(self.leader_epoch, |r| r.epoch())
    }

    /// The high watermark: the committed end of a replicated partition, else the log end.
    pub(crate) fn high_watermark(&self, log: &PartitionLog) -> u64 {
        match self.replica.get() {
            Some(r) => r.high_watermark().min(log.log_end_offset()),
            None => log.log_end_offset(),
        }
    }

    /// Whether this node may serve Kafka reads and writes of the partition: always when it is not
    /// replicated; when it is, only its leader, else `NOT_LEADER_OR_FOLLOWER` (6).
    pub(crate) fn check_leader(&self, clustered: bool) -> Result<(), i16> {
        match self.replica.get() {
            Some(r) if r.is_leader() => Ok(()),
            None if !clustered => Ok(()),
            _ => Err(crate::handlers::code::NOT_LEADER_OR_FOLLOWER),
        }
    }
}

pub(crate) struct Topic {
    pub(crate) name: String,
    pub(crate) id: Uuid,
    pub(crate) overrides: RwLock<BTreeMap<String, String>>,
    pub(crate) partitions: RwLock<Vec<Arc<Partition>>>,
}

impl Topic {
    pub(crate) fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        usize::try_from(index).ok().and_then(|i| self.partitions.read().get(i).cloned())
    }
    pub(crate) fn partition_count(&self) -> usize {
        self.partitions.read().len()
    }

    /// Startup replay of an internal topic: hands `apply` every partition's batches from its log
    /// start to its current end, 1 MiB at a time. A chunk `apply` cannot read is logged and
    /// skipped, so one bad record does not stop the load.
    pub(crate) fn replay(
        &self,
        mut apply: impl FnMut(&Partition, &[u8]) -> Result<(), String>,
    ) -> Result<(), creek_storage::StorageError> {
        for p in self.partitions.read().iter() {
            let (mut at, end) = {
                let log = p.log.lock();
                (log.log_start_offset(), log.log_end_offset())
            };
            while at < end {
                let read = p.log.lock().read(at, 1 << 20)?;
                if read.next_offset <= at {
                    break;
                }
                if let Err(e) = apply(p, &read.bytes) {
                    tracing::warn!(topic = %self.name, partition = p.index, offset = at, error = %e, "skipping unreadable batches");
                }
                at = read.next_offset;
            }
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Default)]
struct MetaFile {
    cluster_id: String,
    #[serde(default)]
    topics: Vec<TopicRecord>,
}

#[derive(Serialize, Deserialize, Clone)]
struct TopicRecord {
    name: String,
    id: String,
    partitions: u32,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

/// Everything a request handler can reach.
pub(crate) struct Broker {
    pub(crate) config: RwLock<BrokerConfig>,
    pub(crate) cluster_id: String,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises topic creation, deletion and metadata writes.
    meta_lock: Mutex<()>,
    /// Bumped after every append; long-polling fetches wait on it.
    pub(crate) appended: watch::Sender<u64>,
    data_dir: PathBuf,
    /// Set once at startup when this node is part of a replicated cluster.
    pub(crate) cluster: OnceLock<Arc<crate::cluster::Cluster>>,
}

/// Why a topic could not be created; each maps to a Kafka error code.
#[derive(Debug)]
pub(crate) enum CreateError {
    InvalidName(String),
    Exists,
    Storage(String),
}

/// Kafka's legal topic names: 1–249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub(crate) fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Topic name is illegal, it can't be empty".into());
    }
    if name == "." || name == ".." {
        return Err("Topic name cannot be \".\" or \"..\"".into());
    }
    if name.len() > 249 {
        return Err(format!("Topic name is illegal, it can't be longer than 249 characters, topic name: {name}"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return Err(format!(
            "Topic name {name} is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}

fn partition_dir(data_dir: &Path, topic: &str, index: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{index}"))
}

impl Broker {
    /// Opens the data directory: reads topic metadata and recovers every partition log.
    /// `cluster_id` is the replicated cluster's id (every node derives the same one); a data
    /// directory holding topics of another cluster is refused.
    pub(crate) fn open(config: BrokerConfig, cluster_id: Option<String>) -> anyhow::Result<Arc<Broker>> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(data_dir.join("meta"))
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let meta_path = data_dir.join("meta/topics.toml");
        let meta: MetaFile = match std::fs::read_to_string(&meta_path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("parsing {}", meta_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                MetaFile { cluster_id: Uuid::new_v4().simple().to_string(), topics: Vec::new() }
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", meta_path.display())),
        };
        let mut meta = meta;
        if let Some(id) = cluster_id
            && id != meta.cluster_id
        {
            anyhow::ensure!(
                meta.topics.is_empty(),
                "{} holds topics of cluster {}, but internal.peers makes this cluster {id}; use an empty data directory",
                data_dir.display(),
                meta.cluster_id
            );
            meta.cluster_id = id;
        }
        let now = now_ms();
        let mut topics = BTreeMap::new();
        for rec in &meta.topics {
            let id = Uuid::parse_str(&rec.id).with_context(|| format!("topic {} id", rec.name))?;
            let tc = TopicConfig::resolve(&rec.configs, &config);
            let mut parts = Vec::new();
            for p in 0..rec.partitions as i32 {
                parts.push(open_partition(&data_dir, &rec.name, p, &tc, now)?);
            }
            tracing::info!(topic = %rec.name, partitions = rec.partitions, "recovered topic");
            topics.insert(
                rec.name.clone(),
                Arc::new(Topic {
                    name: rec.name.clone(),
                    id,
                    overrides: RwLock::new(rec.configs.clone()),
                    partitions: RwLock::new(parts),
                }),
            );
        }
        remove_orphan_dirs(&data_dir, &topics);
        let (appended, _) = watch::channel(0);
        let broker = Arc::new(Broker {
            config: RwLock::new(config),
            cluster_id: meta.cluster_id,
            topics: RwLock::new(topics),
            meta_lock: Mutex::new(()),
            appended,
            data_dir,
            cluster: OnceLock::new(),
        });
        broker.persist_meta()?;
        Ok(broker)
    }

    pub(crate) fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }
    pub(crate) fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.topics.read().values().find(|t| t.id == id).cloned()
    }
    pub(crate) fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().values().cloned().collect()
    }
    pub(crate) fn partitions(&self) -> Vec<Arc<Partition>> {
        self.topics.read().values().flat_map(|t| t.partitions.read().clone()).collect()
    }
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Checks a topic could be created, without creating it (CreateTopics validate_only).
    pub(crate) fn check_create(&self, name: &str) -> Result<(), CreateError> {
        check_topic_name(name).map_err(CreateError::InvalidName)?;
        let topics = self.topics.read();
        if topics.contains_key(name) {
            return Err(CreateError::Exists);
        }
        // '.' and '_' collide in metric names; Kafka refuses such pairs.
        let norm = name.replace('.', "_");
        if let Some(other) = topics.keys().find(|t| t.replace('.', "_") == norm) {
            return Err(CreateError::InvalidName(format!("Topic '{name}' collides with existing topic: {other}")));
        }
        Ok(())
    }

    /// Creates a topic with `partitions` partitions and `configs` overrides (already validated).
    pub(crate) fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, CreateError> {
        self.create_topic_with_id(name, Uuid::new_v4(), partitions, configs)
    }

    /// [`create_topic`](Self::create_topic) with the id the cluster metadata gave the topic.
    pub(crate) fn create_topic_with_id(
        &self,
        name: &str,
        id: Uuid,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, CreateError> {
        let _guard = self.meta_lock.lock();
        self.check_create(name)?;
        let tc = TopicConfig::resolve(&configs, &self.config.read());
        let now = now_ms();
        let mut parts = Vec::new();
        for p in 0..partitions as i32 {
            let dir = partition_dir(&self.data_dir, name, p);
            // A leftover directory from a deleted topic of the same name must not leak data.
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| CreateError::Storage(e.to_string()))?;
            }
            parts.push(
                new_partition(&self.data_dir, name, p, &tc, now).map_err(|e| CreateError::Storage(format!("{e:#}")))?,
            );
        }
        // One sync for every new directory and segment file, before the metadata names them.
        creek_storage::sync_filesystem(&self.data_dir).map_err(|e| CreateError::Storage(e.to_string()))?;
        let topic = Arc::new(Topic {
            name: name.to_string(),
            id,
            overrides: RwLock::new(configs),
            partitions: RwLock::new(parts),
        });
        self.topics.write().insert(name.to_string(), topic.clone());
        if let Err(e) = self.persist_meta() {
            self.topics.write().remove(name);
            return Err(CreateError::Storage(format!("{e:#}")));
        }
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    /// Returns the internal topic `name`, creating it with `partitions` partitions and `configs`
    /// if it is missing (at startup, for `__consumer_offsets`).
    pub(crate) fn ensure_internal_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> anyhow::Result<Arc<Topic>> {
        if let Some(t) = self.topic(name) {
            return Ok(t);
        }
        match self.create_topic(name, partitions, configs) {
            Ok(t) => Ok(t),
            Err(CreateError::Exists) => self.topic(name).context("internal topic vanished"),
            Err(e) => anyhow::bail!("creating internal topic {name}: {e:?}"),
        }
    }

    /// Deletes a topic: forgets it durably, then removes its partition directories.
    pub(crate) fn delete_topic(&self, name: &str) -> anyhow::Result<bool> {
        let _guard = self.meta_lock.lock();
        let Some(topic) = self.topics.write().remove(name) else { return Ok(false) };
        self.persist_meta()?;
        let parts = std::mem::take(&mut *topic.partitions.write());
        for p in parts {
            let dir = partition_dir(&self.data_dir, name, p.index);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove deleted partition");
            }
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(true)
    }

    /// Grows a topic to `count` partitions.
    pub(crate) fn add_partitions(&self, topic: &Topic, count: u32) -> anyhow::Result<()> {
        let _guard = self.meta_lock.lock();
        let tc = TopicConfig::resolve(&topic.overrides.read(), &self.config.read());
        let now = now_ms();
        let have = topic.partition_count() as i32;
        let mut added = Vec::new();
        for p in have..count as i32 {
            let dir = partition_dir(&self.data_dir, &topic.name, p);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            added.push(new_partition(&self.data_dir, &topic.name, p, &tc, now)?);
        }
        creek_storage::sync_filesystem(&self.data_dir)?;
        topic.partitions.write().extend(added);
        self.persist_meta()
    }

    /// Replaces a topic's config overrides (already validated) and applies them to its logs.
    pub(crate) fn set_topic_configs(&self, topic: &Topic, configs: BTreeMap<String, String>) -> anyhow::Result<()> {
        let _guard = self.meta_lock.lock();
        let old = std::mem::replace(&mut *topic.overrides.write(), configs);
        if let Err(e) = self.persist_meta() {
            *topic.overrides.write() = old;
            return Err(e);
        }
        self.refresh_topic_config(topic);
        Ok(())
    }

    /// Read-modify-write of a topic's overrides under the metadata lock, so two concurrent
    /// IncrementalAlterConfigs cannot lose each other's changes. `edit` gets the current overrides
    /// and returns the new ones (already validated) or refuses, in which case nothing changes.
    /// The outer error is a failure to persist (the old overrides are kept).
    pub(crate) fn edit_topic_configs<E>(
        &self,
        topic: &Topic,
        edit: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, E>,
    ) -> anyhow::Result<Result<(), E>> {
        let _guard = self.meta_lock.lock();
        let configs = match edit(&topic.overrides.read()) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let old = std::mem::replace(&mut *topic.overrides.write(), configs);
        if let Err(e) = self.persist_meta() {
            *topic.overrides.write() = old;
            return Err(e);
        }
        self.refresh_topic_config(topic);
        Ok(Ok(()))
    }

    /// Re-resolves a topic's effective config (after a topic or broker config change).
    pub(crate) fn refresh_topic_config(&self, topic: &Topic) {
        let tc = TopicConfig::resolve(&topic.overrides.read(), &self.config.read());
        for p in topic.partitions.read().iter() {
            p.log.lock().set_config(tc.log.clone());
            *p.config.write() = tc.clone();
        }
    }

    fn persist_meta(&self) -> anyhow::Result<()> {
        let topics = self
            .topics
            .read()
            .values()
            .map(|t| TopicRecord {
                name: t.name.clone(),
                id: t.id.to_string(),
                partitions: t.partition_count() as u32,
                configs: t.overrides.read().clone(),
            })
            .collect();
        let meta = MetaFile { cluster_id: self.cluster_id.clone(), topics };
        let text = toml::to_string(&meta).context("serialising topic metadata")?;
        write_atomically(&self.data_dir.join("meta/topics.toml"), text.as_bytes())
    }

    /// Flushes and closes every log (clean shutdown).
    pub(crate) fn close(&self) {
        let topics = std::mem::take(&mut *self.topics.write());
        let parts: Vec<Arc<Partition>> =
            topics.into_values().flat_map(|t| std::mem::take(&mut *t.partitions.write())).collect();
        // Closing is a few fsyncs per partition, mostly waiting on the disk: a handful of threads
        // overlap them (1,000 partitions took 14 s one at a time on a VM disk).
        let next = std::sync::atomic::AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<Arc<Partition>>>> = parts.into_iter().map(|p| Mutex::new(Some(p))).collect();
        std::thread::scope(|scope| {
            for _ in 0..CLOSE_THREADS.min(slots.len()) {
                scope.spawn(|| {
                    while let Some(slot) = slots.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                        if let Some(p) = slot.lock().take() {
                            close_partition(p);
                        }
                    }
                });
            }
        });
    }
}

/// Threads closing logs at shutdown.
const CLOSE_THREADS: usize = 8;

/// Closes one partition's log cleanly, or flushes it if something still holds it (an in-flight
/// request, a Raft store).
fn close_partition(p: Arc<Partition>) {
    let (topic, index) = (p.topic.clone(), p.index);
    let log = match Arc::try_unwrap(p).map(|p| Arc::try_unwrap(p.log)) {
        Ok(Ok(log)) => log.into_inner(),
        Ok(Err(shared)) => return flush_shared(&shared, &topic, index),
        Err(p) => return flush_shared(&p.log, &topic, index),
    };
    if let Err(e) = log.close() {
        tracing::error!(topic, partition = index, error = %e, "closing log failed");
    }
}

fn flush_shared(log: &SharedLog, topic: &str, index: i32) {
    if let Err(e) = log.lock().flush() {
        tracing::error!(topic, partition = index, error = %e, "flush failed");
    }
}

/// A new, empty partition (its directory must not exist); not yet durable: the caller syncs the
/// filesystem once for all the partitions it creates.
fn new_partition(
    data_dir: &Path,
    topic: &str,
    index: i32,
    tc: &TopicConfig,
    now: i64,
) -> anyhow::Result<Arc<Partition>> {
    let dir = partition_dir(data_dir, topic, index);
    let log = PartitionLog::create(&dir, tc.log.clone()).with_context(|| format!("creating log {}", dir.display()))?;
    Ok(partition(topic, index, log, tc, now))
}

fn open_partition(
    data_dir: &Path,
    topic: &str,
    index: i32,
    tc: &TopicConfig,
    now: i64,
) -> anyhow::Result<Arc<Partition>> {
    let dir = partition_dir(data_dir, topic, index);
    let mut log =
        PartitionLog::open(&dir, tc.log.clone(), now).with_context(|| format!("opening log {}", dir.display()))?;
    crate::raft::log_store::hold_retention_if_replicated(&mut log)
        .with_context(|| format!("reading the Raft state of {}", dir.display()))?;
    Ok(partition(topic, index, log, tc, now))
}

fn partition(topic: &str, index: i32, log: PartitionLog, tc: &TopicConfig, now: i64) -> Arc<Partition> {
    Arc::new(Partition {
        topic: topic.to_string(),
        index,
        log: Arc::new(Mutex::new(log)),
        config: RwLock::new(tc.clone()),
        leader_epoch: 0,
        replica: ReplicaSlot::default(),
        flush_lock: tokio::sync::Mutex::new(()),
        last_flush_ms: Mutex::new(now),
    })
}

/// Removes partition directories whose topic no longer exists (a deletion interrupted by a crash).
fn remove_orphan_dirs(data_dir: &Path, topics: &BTreeMap<String, Arc<Topic>>) {
    let Ok(entries) = std::fs::read_dir(data_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "meta" || !entry.path().is_dir() {
            continue;
        }
        let known = name.rsplit_once('-').is_some_and(|(t, p)| {
            p.parse::<usize>().is_ok_and(|p| topics.get(t).is_some_and(|t| p < t.partition_count()))
        });
        if !known {
            tracing::warn!(dir = %entry.path().display(), "removing data of a deleted topic");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
