//! How a coordinator (groups, transactions) keeps its state in a replicated internal topic
//! (`__consumer_offsets`, `__transaction_state`) in a cluster: the topic is created through the
//! metadata group at startup ([`replicate`]); a partition's records are loaded when this node
//! comes to lead it and forgotten when it stops ([`Load`]); one writer task per coordinator
//! hands records to their partitions' Raft groups in the order they were decided, only while
//! this node still leads the partition in the term they were decided in, and tells each caller
//! once a quorum holds its record ([`OrderedWriter`]); and a new leader reads a partition's
//! committed records back ([`read_committed`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::Applied;
use super::log_store::PROPOSAL_OFFSET;
use super::replica::{ProposeError, Replica};
use crate::cluster::Cluster;
use crate::handlers::code;
use crate::state::{Broker, Partition, Topic};

/// Records waiting for the writer task. When the queue is full a write fails at once and its
/// client retries.
const WRITES_QUEUED_MAX: usize = 4096;
/// How long a coordinator record may take to be accepted, and then to commit, before its
/// client is told to retry.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a node retries creating an internal topic until the metadata takes it.
const CREATE_RETRY: Duration = Duration::from_millis(300);

/// Creates the internal topic `name` through the metadata group unless it exists (as
/// CreateTopics does: the cluster's topic id; every node tries at startup, the first proposal
/// wins and the rest see TOPIC_ALREADY_EXISTS), and waits until it is open here, where the
/// reconciler starts a replica of every partition. `None` once `stop` fires first. A local topic
/// of that name that the metadata does not know is removed if it holds no record (older builds
/// created every internal topic locally on every node); one holding records (a data directory
/// from a single node) is not adopted: it is logged and waited on forever.
pub(crate) async fn replicate(
    broker: &Broker,
    cluster: &Cluster,
    name: &str,
    (partitions, replication): (u32, i16),
    configs: BTreeMap<String, String>,
    stop: &mut watch::Receiver<bool>,
) -> Option<Arc<Topic>> {
    let mut warned = false;
    loop {
        // Local first: the reconciler opens the topic only after the metadata has it, so a local
        // topic the metadata does not know then was not made by the reconciler.
        let local = broker.topic(name);
        let known = cluster.meta.read(|m| m.topics.contains_key(name));
        match local {
            Some(t) if known => return Some(t),
            Some(t) if t.partitions.read().iter().all(|p| p.log.lock().log_end_offset() == 0) => {
                match tokio::task::block_in_place(|| broker.delete_topic(name)) {
                    Ok(_) => tracing::info!("removed an empty local {name} unknown to the cluster metadata"),
                    Err(e) => tracing::warn!(error = %e, "could not remove the empty local {name}"),
                }
            }
            Some(_) if !warned => {
                warned = true;
                tracing::error!(
                    "{name} exists here but not in the cluster metadata (a data directory from a single node?); \
                     its coordinator does not serve until it is removed"
                );
            }
            None if !known => {
                if let Err((error, m)) =
                    cluster.create_topic(broker, name, partitions, replication, configs.clone()).await
                {
                    tracing::debug!(error, message = %m, "{name} not created here");
                }
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(CREATE_RETRY) => {}
            _ = stop.changed() => return None,
        }
    }
}

/// How far this node has loaded one partition of an internal topic (cluster mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    /// Not led here: none of its state is in memory.
    Unloaded,
    /// Led here in this term; its committed records are being read.
    Loading(i32),
    /// Led here in this term; its state is in memory and served.
    Loaded(i32),
}

/// What a coordinator's tick does with one partition, given the term this node leads it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing changed.
    Stay,
    /// No longer led here: forget its state.
    Unload,
    /// Led here in a new term: forget what is held (if anything) and load it for this term.
    Load(i32),
}

impl Load {
    /// The step for a partition in this state when this node leads it in `led` (`None`: not).
    pub(crate) fn step(self, led: Option<i32>) -> Step {
        match (led, self) {
            (None, Load::Unloaded) => Step::Stay,
            (Some(t), Load::Loading(l) | Load::Loaded(l)) if t == l => Step::Stay,
            (None, _) => Step::Unload,
            (Some(t), _) => Step::Load(t),
        }
    }

    /// Whether the partition is served in `term`.
    pub(crate) fn serves(self, term: i32) -> bool {
        self == Load::Loaded(term)
    }

    /// Whether the partition is loading or loaded in `term`.
    pub(crate) fn in_term(self, term: i32) -> bool {
        matches!(self, Load::Loading(t) | Load::Loaded(t) if t == term)
    }
}

/// The configs of a coordinator's internal topic: compacted, with these segments.
pub(crate) fn compacted(segment_bytes: i64) -> BTreeMap<String, String> {
    let mut configs = BTreeMap::new();
    configs.insert("cleanup.policy".to_string(), "compact".to_string());
    configs.insert("segment.bytes".to_string(), segment_bytes.to_string());
    configs
}

/// Whether this node serves the keys of partition `p` of internal topic `topic`, whose loads
/// are `loads`: NOT_COORDINATOR unless it leads the partition (confirmed in its term),
/// COORDINATOR_LOAD_IN_PROGRESS until it has loaded it in that term.
pub(crate) fn check_led(broker: &Broker, topic: &str, p: i32, loads: &[Load]) -> Result<(), i16> {
    let replica = broker.topic(topic).and_then(|t| t.partition(p)).and_then(|p| p.replica.get());
    let Some(term) = replica.and_then(|r| led_term(&r)) else {
        return Err(code::NOT_COORDINATOR);
    };
    match loads.get(p as usize) {
        Some(l) if l.serves(term) => Ok(()),
        _ => Err(code::COORDINATOR_LOAD_IN_PROGRESS),
    }
}

/// The partitions of internal topic `topic` whose load must change now (cluster mode, every
/// coordinator tick), with the step. Reads one watch per partition; nothing else while
/// leadership is stable.
pub(crate) fn leadership_changes(broker: &Broker, topic: &str, loads: &[Load]) -> Vec<(Arc<Partition>, Step)> {
    let Some(topic) = broker.topic(topic) else { return Vec::new() };
    let partitions = topic.partitions.read().clone();
    partitions
        .into_iter()
        .filter_map(|p| {
            let replica = p.replica.get()?;
            let step = loads.get(p.index as usize)?.step(led_term(&replica));
            (step != Step::Stay).then_some((p, step))
        })
        .collect()
}

/// Why a coordinator record did not commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteError {
    /// The partition's producer state refused it with this Kafka error code (a transactional
    /// offset commit of a fenced producer): the log holds the refusal, so memory is not ahead.
    Refused(i16),
    /// Not committed in its term (leadership moved, no quorum, too slow); it may still commit.
    Failed(String),
}

/// Resolves with `Ok` once a quorum holds the record, or why it may not have.
pub(crate) type Committed = oneshot::Receiver<Result<(), WriteError>>;

/// A record batch for a partition's Raft group, in decision order.
struct Write {
    partition: Arc<Partition>,
    /// The leader's term when the batch was decided.
    term: i32,
    batch: Bytes,
    reply: oneshot::Sender<Result<(), WriteError>>,
}

/// Called with (partition index, term) when a write decided in that term failed
/// ([`WriteError::Failed`]): the coordinator's memory may be ahead of the log.
pub(crate) type OnFailed = Arc<dyn Fn(i32, i32) + Send + Sync>;

/// The queue of one coordinator's writer task.
pub(crate) struct OrderedWriter {
    queue: mpsc::Sender<Write>,
}

impl OrderedWriter {
    /// Starts the writer task; `on_failed` hears of every write that did not commit.
    pub(crate) fn start(on_failed: OnFailed) -> OrderedWriter {
        let (queue, rx) = mpsc::channel(WRITES_QUEUED_MAX);
        tokio::spawn(write_in_order(rx, on_failed));
        OrderedWriter { queue }
    }

    /// [`OrderedWriter::start`] for a coordinator `owner`, told of failed writes through
    /// `on_failed` while it exists.
    pub(crate) fn start_for<T: Send + Sync + 'static>(owner: &Arc<T>, on_failed: fn(&T, i32, i32)) -> OrderedWriter {
        let owner = Arc::downgrade(owner);
        OrderedWriter::start(Arc::new(move |p, term| {
            if let Some(o) = owner.upgrade() {
                on_failed(&o, p, term);
            }
        }))
    }

    /// Queues `batch` (a whole batch; its base offset is set here) for `partition`, decided
    /// while this node led it in `term`.
    pub(crate) fn write(&self, partition: Arc<Partition>, term: i32, mut batch: Vec<u8>) -> Result<Committed, String> {
        creek_protocol::batch::set_base_offset(&mut batch, PROPOSAL_OFFSET);
        let (reply, rx) = oneshot::channel();
        let write = Write { partition, term, batch: Bytes::from(batch), reply };
        self.queue.try_send(write).map_err(|_| "too many coordinator writes queued")?;
        Ok(rx)
    }
}

/// The one writer: submits records in the order they were decided, then waits for each commit
/// in its own task.
async fn write_in_order(mut queue: mpsc::Receiver<Write>, on_failed: OnFailed) {
    while let Some(w) = queue.recv().await {
        let Some(replica) = w.partition.replica.get() else { continue };
        // A record decided in an earlier term must not enter a later term's log: that term's
        // leader loaded the partition without it.
        let submitted = if led_term(&replica) != Some(w.term) {
            Err(ProposeError::NotLeader(None))
        } else {
            // Bounded like the commit below: a group that does not take the entry must not
            // hold up every other partition's writes.
            tokio::time::timeout(WRITE_TIMEOUT, replica.submit(w.batch))
                .await
                .unwrap_or_else(|_| Err(ProposeError::Stopped("not accepted in time".into())))
        };
        let on_failed = on_failed.clone();
        tokio::spawn(async move {
            let result = match submitted {
                Ok(committed) => tokio::select! {
                    r = committed => match r {
                        Ok(Applied::Batch { .. }) => Ok(()),
                        // Code 0: a duplicate, already in the log.
                        Ok(Applied::Refused(r)) if r.code == 0 => Ok(()),
                        Ok(Applied::Refused(r)) => Err(WriteError::Refused(r.code)),
                        Ok(other) => Err(WriteError::Failed(format!("unexpected apply result {other:?}"))),
                        Err(e) => Err(WriteError::Failed(format!("{e:?}"))),
                    },
                    () = lost_leadership(&replica, w.term) => Err(WriteError::Failed("leadership moved".into())),
                    () = tokio::time::sleep(WRITE_TIMEOUT) => Err(WriteError::Failed("not committed in time".into())),
                },
                Err(e) => Err(WriteError::Failed(format!("{e:?}"))),
            };
            if let Err(e) = &result {
                tracing::debug!(topic = %w.partition.topic, partition = w.partition.index, error = ?e, "coordinator write failed");
                if matches!(e, WriteError::Failed(_)) {
                    on_failed(w.partition.index, w.term);
                }
            }
            let _ = w.reply.send(result);
        });
    }
}

/// The term in which this node leads a replica and serves it (see `Replica::is_leader`).
pub(crate) fn led_term(replica: &Replica) -> Option<i32> {
    replica.is_leader().then(|| replica.epoch())
}

/// Resolves once `replica` no longer serves as leader in `term`.
pub(crate) async fn lost_leadership(replica: &Replica, term: i32) {
    while led_term(replica) == Some(term) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Hands `apply` the committed batches of a partition, in order: from its log start to its high
/// watermark (a new leader's high watermark covers everything committed before its term).
/// Unreadable batches are skipped with a warning.
pub(crate) fn read_committed(p: &Partition, apply: &mut dyn FnMut(&[u8]) -> Result<(), String>) -> Result<(), String> {
    let (mut at, end) = {
        let log = p.log.lock();
        (log.log_start_offset(), p.high_watermark(&log))
    };
    while at < end {
        let read = p.log.lock().read(at, 1 << 20).map_err(|e| e.to_string())?;
        if read.next_offset <= at {
            break;
        }
        let bytes = committed_prefix(&read.bytes, end);
        if let Err(e) = apply(bytes) {
            tracing::warn!(topic = %p.topic, partition = p.index, offset = at, error = %e, "skipping unreadable batches");
        }
        at = read.next_offset;
    }
    Ok(())
}

/// The whole batches of `bytes` that end below `end`.
fn committed_prefix(bytes: &[u8], end: u64) -> &[u8] {
    let mut cut = 0;
    for range in creek_protocol::batch::batch_ranges(bytes).unwrap_or_default() {
        match creek_protocol::batch::BatchView::new(&bytes[range.clone()]) {
            Ok(v) if (v.last_offset() as u64) < end => cut = range.end,
            _ => break,
        }
    }
    &bytes[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_load_in_each_new_term_and_unload_when_not_led() {
        // Goal: a coordinator loads a partition once per term it leads it in, never twice.
        assert_eq!(Load::Unloaded.step(None), Step::Stay);
        assert_eq!(Load::Unloaded.step(Some(3)), Step::Load(3));
        assert_eq!(Load::Loading(3).step(Some(3)), Step::Stay);
        assert_eq!(Load::Loaded(3).step(Some(3)), Step::Stay);
        assert_eq!(Load::Loaded(3).step(Some(5)), Step::Load(5), "led again in a later term: reload");
        assert_eq!(Load::Loading(3).step(None), Step::Unload);
        assert_eq!(Load::Loaded(3).step(None), Step::Unload);
        assert!(Load::Loaded(3).serves(3) && !Load::Loading(3).serves(3) && !Load::Loaded(3).serves(4));
    }

    #[test]
    fn a_load_reads_only_batches_below_the_high_watermark() {
        // Goal: a new leader loads what is committed, never an uncommitted tail.
        let (k, v, k2): (&[u8], &[u8], &[u8]) = (b"k", b"v", b"k2");
        let records = [(Some(k), Some(v)), (Some(k2), None)];
        let mut bytes = creek_protocol::batch::build_batch(0, 1, &records);
        let first = bytes.len();
        bytes.extend(creek_protocol::batch::build_batch(2, 1, &records));
        assert_eq!(committed_prefix(&bytes, 4).len(), bytes.len());
        assert_eq!(committed_prefix(&bytes, 3).len(), first);
        assert_eq!(committed_prefix(&bytes, 2).len(), first);
        assert!(committed_prefix(&bytes, 1).is_empty());
        assert!(committed_prefix(&bytes[..first - 1], 10).is_empty(), "a torn batch is not read");
    }
}
