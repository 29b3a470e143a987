//! Transaction markers in a cluster: each marker goes through its data partition's Raft leader.
//! The coordinator proposes the control batch through its own replica when it leads the
//! partition, and otherwise sends it to the leader ([`KIND_TXN_MARKER`]), which proposes it and
//! answers once a quorum holds it. A marker is retried with whoever leads now until it is written
//! (Kafka retries markers forever; the transaction stays `Prepare*` meanwhile) or its coordinator
//! is deposed (the next one writes the markers again). A marker in a `__consumer_offsets`
//! partition is applied by the group coordinator there, which is that partition's leader.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use creek_protocol::batch::{build_control_batch, set_base_offset};

use crate::cluster::Cluster;
use crate::group::coordinator::GroupCoordinator;
use crate::group::store::OFFSETS_TOPIC;
use crate::handlers::leader_hints::LeaderView;
use crate::raft::Applied;
use crate::raft::log_store::PROPOSAL_OFFSET;
use crate::raft::replica::ProposeError;
use crate::rpc::{GroupId, Handler, HandlerFuture, MessageKind, NodeId};
use crate::state::{Broker, now_ms};

/// Message kind asking a partition's leader to write a transaction marker (the message's group
/// names the partition's Raft group; payload: [`encode`]; answer: one [`Status`] byte).
pub(crate) const KIND_TXN_MARKER: MessageKind = MessageKind(21);
/// How long one attempt may take: the proposal's commit, or the round trip to the leader.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff between attempts, doubling from the first to the last.
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));
/// The longest topic name Kafka allows.
const TOPIC_BYTES_MAX: usize = 249;
/// Fixed part of a request: producer id, epoch, commit, coordinator epoch, partition, topic length.
const FIXED_BYTES: usize = 8 + 2 + 1 + 4 + 4 + 2;

/// One marker for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) commit: bool,
    /// The leader epoch of the transaction's `__transaction_state` partition.
    pub(crate) coordinator_epoch: i32,
}

/// How a marker write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// A quorum holds it (or the partition's producer state refused it: a newer epoch of the
    /// producer already ended the transaction there).
    Written = 0,
    /// The node asked does not lead the partition (any more).
    NotLeader = 1,
    /// It may not be written; try again.
    Failed = 2,
    /// The partition does not exist there.
    NoPartition = 3,
}

impl Status {
    fn from_byte(b: u8) -> Option<Status> {
        [Status::Written, Status::NotLeader, Status::Failed, Status::NoPartition].into_iter().find(|s| *s as u8 == b)
    }
}

/// Big-endian: producer id (i64), epoch (i16), commit (u8, 0 or 1), coordinator epoch (i32),
/// partition (i32), topic length (u16), topic (UTF-8).
pub(crate) fn encode(m: &Marker) -> Vec<u8> {
    let topic = m.topic.as_bytes();
    let mut out = Vec::with_capacity(FIXED_BYTES + topic.len());
    out.extend_from_slice(&m.producer_id.to_be_bytes());
    out.extend_from_slice(&m.producer_epoch.to_be_bytes());
    out.push(u8::from(m.commit));
    out.extend_from_slice(&m.coordinator_epoch.to_be_bytes());
    out.extend_from_slice(&m.partition.to_be_bytes());
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic);
    out
}

/// Decodes [`encode`]'s bytes; `None` for anything else (short, long, a bad flag or name).
pub(crate) fn decode(b: &[u8]) -> Option<Marker> {
    let fixed = b.get(..FIXED_BYTES)?;
    let producer_id = i64::from_be_bytes(fixed[0..8].try_into().ok()?);
    let producer_epoch = i16::from_be_bytes(fixed[8..10].try_into().ok()?);
    let commit = match fixed[10] {
        0 => false,
        1 => true,
        _ => return None,
    };
    let coordinator_epoch = i32::from_be_bytes(fixed[11..15].try_into().ok()?);
    let partition = i32::from_be_bytes(fixed[15..19].try_into().ok()?);
    let len = usize::from(u16::from_be_bytes(fixed[19..21].try_into().ok()?));
    let topic = &b[FIXED_BYTES..];
    if topic.len() != len || len == 0 || len > TOPIC_BYTES_MAX || partition < 0 || producer_id < 0 {
        return None;
    }
    let topic = std::str::from_utf8(topic).ok()?.to_string();
    Some(Marker { topic, partition, producer_id, producer_epoch, commit, coordinator_epoch })
}

/// Writes `m` into a partition this node leads, through its Raft group, and answers once a
/// quorum holds it; a marker in an offsets partition then ends the producer's pending offsets
/// in the group coordinator here.
pub(crate) async fn write_here(broker: &Broker, groups: &GroupCoordinator, m: &Marker) -> Status {
    let Some(partition) = broker.topic(&m.topic).and_then(|t| t.partition(m.partition)) else {
        return Status::NoPartition;
    };
    let Some(replica) = partition.replica.get().filter(|r| r.is_leader()) else { return Status::NotLeader };
    let mut batch = build_control_batch(m.producer_id, m.producer_epoch, m.commit, m.coordinator_epoch, now_ms());
    set_base_offset(&mut batch, PROPOSAL_OFFSET);
    let status = match tokio::time::timeout(ATTEMPT_TIMEOUT, replica.propose(Bytes::from(batch))).await {
        Ok(Ok(Applied::Batch { .. })) => Status::Written,
        Ok(Ok(Applied::Refused(r))) => {
            tracing::warn!(topic = %m.topic, partition = m.partition, code = r.code, "marker refused by producer state");
            Status::Written
        }
        Ok(Ok(other)) => {
            tracing::warn!(result = ?other, "unexpected result of a marker proposal");
            Status::Failed
        }
        Ok(Err(ProposeError::NotLeader(_) | ProposeError::Unknown(_))) => Status::NotLeader,
        Ok(Err(ProposeError::Stopped(_))) | Err(_) => Status::Failed,
    };
    if status == Status::Written && m.topic == OFFSETS_TOPIC {
        groups.complete_txn(m.partition, m.producer_id, m.commit);
    }
    status
}

/// Writes `m` through the partition's leader, here or on another node, retrying with whoever
/// leads now until it is written. `Err` once `deposed()` says this node no longer coordinates
/// the transaction. A partition that no longer exists here (a deleted topic) is skipped.
pub(crate) async fn deliver(
    broker: &Broker,
    groups: &GroupCoordinator,
    cluster: &Cluster,
    m: &Marker,
    deposed: &(dyn Fn() -> bool + Send + Sync),
) -> Result<(), ()> {
    let mut backoff = RETRY_BACKOFF.0;
    loop {
        if deposed() {
            return Err(());
        }
        let Some(partition) = broker.topic(&m.topic).and_then(|t| t.partition(m.partition)) else {
            tracing::info!(topic = %m.topic, partition = m.partition, "skipping a marker for a partition that no longer exists");
            return Ok(());
        };
        let leader = NodeId::try_from(cluster.leader_of(&partition).id).ok();
        let status = match leader {
            Some(l) if l == cluster.node => write_here(broker, groups, m).await,
            Some(l) => match cluster.partition_meta(&m.topic, m.partition) {
                Some(pm) => ask(cluster, l, pm.group, m).await,
                None => Status::Failed,
            },
            None => Status::NotLeader,
        };
        match status {
            Status::Written => return Ok(()),
            status => {
                tracing::debug!(topic = %m.topic, partition = m.partition, ?leader, ?status, "marker not written yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_BACKOFF.1);
            }
        }
    }
}

/// Asks `leader` to write `m`.
async fn ask(cluster: &Cluster, leader: NodeId, group: GroupId, m: &Marker) -> Status {
    match cluster.call(leader, group, KIND_TXN_MARKER, Bytes::from(encode(m)), ATTEMPT_TIMEOUT).await {
        Ok(answer) => match answer.as_ref() {
            [b] => Status::from_byte(*b).unwrap_or(Status::Failed),
            _ => Status::Failed,
        },
        Err(e) => {
            tracing::debug!(leader, error = %e, "marker request failed");
            Status::Failed
        }
    }
}

/// Serves [`KIND_TXN_MARKER`] on a partition's leader.
pub(crate) struct MarkerHandler {
    pub(crate) broker: Arc<Broker>,
    pub(crate) groups: Arc<GroupCoordinator>,
}

impl Handler for MarkerHandler {
    fn handle(&self, from: NodeId, _group: GroupId, _kind: MessageKind, payload: Bytes) -> HandlerFuture {
        let (broker, groups) = (self.broker.clone(), self.groups.clone());
        Box::pin(async move {
            let status = match decode(&payload) {
                Some(m) => write_here(&broker, &groups, &m).await,
                None => {
                    tracing::warn!(from, bytes = payload.len(), "malformed transaction marker request");
                    Status::Failed
                }
            };
            Some(Bytes::copy_from_slice(&[status as u8]))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_requests_round_trip_and_hostile_bytes_are_refused() {
        // Goal: what one node sends another decodes to the same marker; anything else is refused
        // without a panic.
        let m = Marker {
            topic: "orders".into(),
            partition: 7,
            producer_id: 42,
            producer_epoch: 3,
            commit: true,
            coordinator_epoch: 9,
        };
        let bytes = encode(&m);
        assert_eq!(decode(&bytes), Some(m.clone()));
        let abort = Marker { commit: false, ..m.clone() };
        assert_eq!(decode(&encode(&abort)), Some(abort));
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "truncated at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(b'x');
        assert_eq!(decode(&longer), None, "trailing bytes");
        let mut flag = bytes.clone();
        flag[10] = 2;
        assert_eq!(decode(&flag), None, "commit flag other than 0 or 1");
        let mut not_utf8 = bytes.clone();
        let last = not_utf8.len() - 1;
        not_utf8[last] = 0xff;
        assert_eq!(decode(&not_utf8), None, "topic not UTF-8");
        let mut huge = bytes.clone();
        huge[19..21].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(decode(&huge), None, "a length beyond the bytes present");
        let mut negative = bytes;
        negative[15..19].copy_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(decode(&negative), None, "a negative partition");
        assert_eq!(decode(&[]), None);
        // Arbitrary bytes never panic.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for len in 0..200 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = decode(&junk);
        }
        assert_eq!(Status::from_byte(3), Some(Status::NoPartition));
        assert_eq!(Status::from_byte(4), None);
    }
}
