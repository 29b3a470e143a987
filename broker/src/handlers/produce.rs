//! Produce: validate batches by their headers (never decoding records), stamp base offset and
//! leader epoch in place in the request frame, append, and acknowledge per `acks`.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use creek_protocol::batch::{self, BatchError, BatchView};
use creek_protocol::records::DecodedBatch;
use creek_storage::StorageError;
use kafka_protocol::messages::produce_response::{NodeEndpoint, PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse, TopicName};

use super::leader_hints::{Leader, LeaderView, endpoints, hinted};
use super::{Ctx, Request, code, str_bytes};
use crate::raft::Applied;
use crate::raft::log_store::PROPOSAL_OFFSET;
use crate::raft::replica::ProposeError;
use crate::state::{Broker, Partition, now_ms};

/// Where a partition's records are once the decoded message is gone.
enum Records {
    /// A range of the request frame (the normal case: stamped in place, no copy).
    InFrame(Range<usize>),
    /// Records decoded from another buffer (the Produce v0-2 shim); copied to be stamped.
    Owned(bytes::Bytes),
}

/// One partition's part of the request, detached from the decoded message.
struct Part {
    partition: i32,
    records: Option<Records>,
    result: PartitionProduceResponse,
}

struct TopicPart {
    name: String,
    parts: Vec<Part>,
}

pub(super) async fn handle(ctx: &Ctx, req: Request<ProduceRequest>) -> Option<ProduceResponse> {
    let version = req.version();
    let Request { body, frame, .. } = req;
    let (acks, timeout_ms) = (body.acks, body.timeout_ms);
    let (base, frame_end) = (frame.as_ptr() as usize, frame.as_ptr() as usize + frame.len());
    let mut topics: Vec<TopicPart> = body
        .topic_data
        .into_iter()
        .map(|t| TopicPart {
            name: t.name.0.to_string(),
            parts: t
                .partition_data
                .into_iter()
                .map(|p| {
                    let records = p.records.map(|r| {
                        let at = r.as_ptr() as usize;
                        if at >= base && at + r.len() <= frame_end {
                            Records::InFrame(at - base..at - base + r.len())
                        } else {
                            Records::Owned(r)
                        }
                    });
                    let mut result = PartitionProduceResponse::default();
                    result.index = p.index;
                    result.base_offset = -1;
                    result.log_append_time_ms = -1;
                    result.log_start_offset = -1;
                    Part { partition: p.index, records, result }
                })
                .collect(),
        })
        .collect();
    // Every slice of the decoded request is gone, so the frame is ours to stamp in place.
    let mut frame = frame.try_into_mut().unwrap_or_else(|shared| {
        tracing::debug!("produce frame still shared; copying it to stamp offsets");
        BytesMut::from(&shared[..])
    });

    let clustered = ctx.broker.cluster.get().is_some();
    let mut proposals = Vec::new();
    let mut durable_waits = Vec::new();
    let mut appended_any = false;
    for t in &mut topics {
        let topic = ctx.broker.topic(&t.name);
        for part in &mut t.parts {
            let r = &mut part.result;
            if !matches!(acks, -1..=1) {
                r.error_code = code::INVALID_REQUIRED_ACKS;
                continue;
            }
            let Some(partition) = topic.as_ref().and_then(|t| t.partition(part.partition)) else {
                r.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                continue;
            };
            if t.name == crate::group::store::OFFSETS_TOPIC || t.name == crate::txn::store::TXN_TOPIC {
                // Only the group coordinator writes its internal topic, as in Kafka.
                r.error_code = code::INVALID_TOPIC_EXCEPTION;
                continue;
            }
            let mut owned;
            let records: &mut [u8] = match part.records.take() {
                Some(Records::InFrame(range)) if !range.is_empty() => &mut frame[range],
                Some(Records::Owned(bytes)) if !bytes.is_empty() => {
                    owned = bytes.to_vec();
                    &mut owned
                }
                _ => {
                    r.error_code = code::CORRUPT_MESSAGE;
                    continue;
                }
            };
            if let Some(replica) = partition.replica.get() {
                // Replicated: the leader proposes each batch; it is answered once committed.
                if !replica.is_leader() {
                    r.error_code = code::NOT_LEADER_OR_FOLLOWER;
                    continue;
                }
                match prepare(&partition, records, version) {
                    Ok(prepared) => {
                        let batches = prepared
                            .ranges
                            .iter()
                            .map(|range| {
                                let mut b = records[range.clone()].to_vec();
                                batch::set_base_offset(&mut b, PROPOSAL_OFFSET);
                                b
                            })
                            .collect();
                        let append_time = prepared.log_append_time.then_some(prepared.now);
                        proposals.push((t.name.clone(), part.partition, partition.clone(), batches, append_time));
                    }
                    Err((code, msg)) => refuse(r, t.name.as_str(), part.partition, code, msg, version),
                }
                continue;
            }
            if clustered && !t.name.starts_with("__") {
                // Its Raft replica has not started here yet.
                r.error_code = code::NOT_LEADER_OR_FOLLOWER;
                continue;
            }
            match append(&partition, records, version) {
                Ok(info) => {
                    appended_any |= !info.duplicate;
                    r.base_offset = info.base_offset as i64;
                    if version >= 5 {
                        r.log_start_offset = info.log_start_offset as i64;
                    }
                    if info.log_append_time {
                        r.log_append_time_ms = info.append_time_ms;
                    }
                    if acks == -1 {
                        durable_waits.push((partition.clone(), info.last_offset + 1, t.name.clone(), part.partition));
                    }
                }
                Err((code, msg)) => refuse(r, t.name.as_str(), part.partition, code, msg, version),
            }
        }
    }
    if appended_any {
        ctx.broker.appended.send_modify(|n| *n = n.wrapping_add(1));
    }
    if !proposals.is_empty() {
        let deadline = Duration::from_millis(timeout_ms.max(0) as u64);
        let outcomes = futures_util::future::join_all(proposals.into_iter().map(
            |(topic, index, partition, batches, append_time)| async move {
                let outcome =
                    tokio::time::timeout(deadline, propose(&partition, batches, acks)).await.unwrap_or_else(|_| {
                        Err((code::REQUEST_TIMED_OUT, "not committed within the request timeout".into()))
                    });
                let log_start = partition.log.lock().log_start_offset();
                (topic, index, outcome, append_time, log_start)
            },
        ))
        .await;
        for (topic, index, outcome, append_time, log_start) in outcomes {
            let Some(r) = topics
                .iter_mut()
                .filter(|t| t.name == topic)
                .flat_map(|t| t.parts.iter_mut())
                .find(|p| p.partition == index)
                .map(|p| &mut p.result)
            else {
                continue;
            };
            match outcome {
                Ok((base_offset, duplicate)) => {
                    r.base_offset = base_offset;
                    if version >= 5 {
                        r.log_start_offset = log_start as i64;
                    }
                    if let (Some(t), false) = (append_time, duplicate) {
                        r.log_append_time_ms = t;
                    }
                }
                Err((code, msg)) => refuse(r, &topic, index, code, msg, version),
            }
        }
    }

    // acks=all: answer once an fsync covers every appended batch (group commit).
    if !durable_waits.is_empty() {
        let mut waits = tokio::task::JoinSet::new();
        for (partition, end, topic, index) in durable_waits {
            let flusher = ctx.flusher.clone();
            waits.spawn(async move { (topic, index, flusher.wait_durable(partition, end).await) });
        }
        let deadline = Duration::from_millis(timeout_ms.max(0) as u64);
        let collected = tokio::time::timeout(deadline, async {
            let mut out = Vec::new();
            while let Some(Ok(r)) = waits.join_next().await {
                out.push(r);
            }
            out
        })
        .await;
        match collected {
            Ok(results) => {
                for (topic, index, result) in results {
                    if let Err(e) = result {
                        set_error(&mut topics, &topic, index, code::KAFKA_STORAGE_ERROR, &e);
                    }
                }
            }
            Err(_) => {
                for t in &mut topics {
                    for p in &mut t.parts {
                        if p.result.error_code == code::NONE && p.result.base_offset >= 0 {
                            p.result.error_code = code::REQUEST_TIMED_OUT;
                        }
                    }
                }
            }
        }
    }

    if acks == 0 {
        return None;
    }
    let mut resp = ProduceResponse::default();
    resp.responses = topics
        .into_iter()
        .map(|t| {
            let mut tr = TopicProduceResponse::default();
            tr.name = TopicName(str_bytes(t.name));
            tr.partition_responses = t.parts.into_iter().map(|p| p.result).collect();
            tr
        })
        .collect();
    if let Some(cluster) = ctx.broker.cluster.get() {
        add_leader_hints(&mut resp, version, &ctx.broker, &**cluster);
    }
    Some(resp)
}

/// KIP-951 (v10+): every partition refused with NOT_LEADER_OR_FOLLOWER names its current leader
/// and epoch (-1 and -1 while none is known), and the response lists the named leaders'
/// addresses, so the producer moves without a Metadata round trip.
fn add_leader_hints(resp: &mut ProduceResponse, version: i16, broker: &Broker, view: &impl LeaderView) {
    if version < 10 {
        return;
    }
    let mut named = BTreeSet::new();
    for t in &mut resp.responses {
        let topic = broker.topic(&t.name.0);
        for r in t.partition_responses.iter_mut().filter(|r| hinted(r.error_code, false)) {
            let leader =
                topic.as_ref().and_then(|t| t.partition(r.index)).map_or(Leader::UNKNOWN, |p| view.leader_of(&p));
            r.current_leader.leader_id = BrokerId(leader.id);
            r.current_leader.leader_epoch = leader.epoch;
            if leader.id >= 0 {
                named.insert(leader.id);
            }
        }
    }
    resp.node_endpoints = endpoints(view, &named)
        .into_iter()
        .map(|(id, host, port)| {
            let mut e = NodeEndpoint::default();
            e.node_id = BrokerId(id);
            e.host = str_bytes(host);
            e.port = i32::from(port);
            e.rack = None;
            e
        })
        .collect();
}

fn set_error(topics: &mut [TopicPart], topic: &str, index: i32, error: i16, msg: &str) {
    tracing::warn!(topic, partition = index, error, %msg, "acks=all write not confirmed durable");
    for t in topics.iter_mut().filter(|t| t.name == topic) {
        for p in t.parts.iter_mut().filter(|p| p.partition == index) {
            p.result.error_code = error;
        }
    }
}

/// Refuses a batch with a keyless record (compacted topics), decompressing at most `max_bytes`
/// times a small factor.
fn check_keyed(view: BatchView<'_>, max_bytes: usize) -> Result<(), (i16, String)> {
    let cap = max_bytes.saturating_mul(16).max(1 << 20);
    let decoded = DecodedBatch::new(view, cap).map_err(|e| (code::CORRUPT_MESSAGE, e.to_string()))?;
    for record in decoded.iter() {
        let record = record.map_err(|e| (code::CORRUPT_MESSAGE, e.to_string()))?;
        if record.key.is_none() {
            return Err((
                code::INVALID_RECORD,
                format!(
                    "Compacted topic cannot accept message without key (offset delta {})",
                    record.offset - view.base_offset()
                ),
            ));
        }
    }
    Ok(())
}

struct Appended {
    base_offset: u64,
    last_offset: u64,
    log_start_offset: u64,
    log_append_time: bool,
    append_time_ms: i64,
    /// A producer's retry of a batch already written: the original offsets, nothing appended.
    duplicate: bool,
}

fn refuse(r: &mut PartitionProduceResponse, topic: &str, index: i32, code: i16, msg: String, version: i16) {
    tracing::debug!(topic, partition = index, code, %msg, "produce refused");
    r.error_code = code;
    if version >= 8 {
        r.error_message = Some(str_bytes(msg));
    }
}

/// Proposes a partition's batches in order and waits for each to commit: the first batch's
/// offset and whether it was a retried duplicate, or the error its producer gets.
/// acks=-1 waits for the commit (a quorum holds the batch durably); acks=1 (and 0) only for the
/// leader's own append, as in Kafka.
async fn propose(partition: &Partition, batches: Vec<Vec<u8>>, acks: i16) -> Result<(i64, bool), (i16, String)> {
    let replica = partition.replica.get().expect("only replicated partitions propose");
    let mut first = None;
    for b in batches {
        let proposal = async {
            if acks == -1 {
                replica.propose(bytes::Bytes::from(b)).await
            } else {
                replica.propose_until_appended(b).await
            }
        };
        // A leader cut off from its quorum cannot commit: tell the producer at once (it retries
        // on the new leader; producer state answers a retry of a batch that did commit).
        let proposed = tokio::select! {
            r = proposal => r,
            () = lost_leadership(&replica) => Err(ProposeError::NotLeader(None)),
        };
        let answer = match proposed {
            Ok(Applied::Batch { base_offset, .. }) => (base_offset as i64, false),
            Ok(Applied::Refused(r)) if r.code == 0 => (r.base_offset, true),
            Ok(Applied::Refused(r)) => {
                return Err((r.code, format!("the leader refused the batch (error {})", r.code)));
            }
            Ok(other) => return Err((code::KAFKA_STORAGE_ERROR, format!("unexpected apply result {other:?}"))),
            Err(ProposeError::NotLeader(_) | ProposeError::Unknown(_)) => {
                return Err((code::NOT_LEADER_OR_FOLLOWER, "leadership moved; retry on the new leader".into()));
            }
            Err(ProposeError::Stopped(m)) => return Err((code::NOT_LEADER_OR_FOLLOWER, m)),
        };
        first.get_or_insert(answer);
    }
    Ok(first.unwrap_or((-1, false)))
}

/// Resolves once `replica` no longer serves as leader.
async fn lost_leadership(replica: &crate::raft::replica::Replica) {
    while replica.is_leader() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A partition's batches, checked and ready to append or propose.
struct Prepared {
    ranges: Vec<Range<usize>>,
    log_append_time: bool,
    now: i64,
}

/// Validates every batch in `records` and appends them, or refuses them all with an error code.
fn append(partition: &Arc<Partition>, records: &mut [u8], version: i16) -> Result<Appended, (i16, String)> {
    let Prepared { log_append_time, now, .. } = prepare(partition, records, version)?;
    let mut log = partition.log.lock();
    let info = log.append(records, partition.leader_epoch, now).map_err(|e| (storage_code(&e), e.to_string()))?;
    Ok(Appended {
        base_offset: info.base_offset,
        last_offset: info.last_offset,
        log_start_offset: log.log_start_offset(),
        log_append_time: log_append_time && !info.duplicate,
        append_time_ms: now,
        duplicate: info.duplicate,
    })
}

/// Validates every batch in `records` (and sets LogAppendTime when the topic asks for it).
fn prepare(partition: &Partition, records: &mut [u8], version: i16) -> Result<Prepared, (i16, String)> {
    let (max_bytes, log_append_time, compacted) = {
        let c = partition.config.read();
        (c.max_message_bytes, c.log_append_time, c.log.cleanup_compact)
    };
    let ranges = batch::batch_ranges(records).map_err(|e| (code::CORRUPT_MESSAGE, e.to_string()))?;
    let now = now_ms();
    for range in &ranges {
        let view = BatchView::new(&records[range.clone()]).map_err(|e| match e {
            BatchError::UnsupportedMagic(m) if version >= 3 => {
                (code::INVALID_RECORD, format!("Produce v3+ requires record batch magic 2, got {m}"))
            }
            BatchError::UnsupportedMagic(m) => (43, format!("record batch magic {m} is not supported")),
            other => (code::CORRUPT_MESSAGE, other.to_string()),
        })?;
        if view.total_len() > max_bytes {
            return Err((
                code::MESSAGE_TOO_LARGE,
                format!("batch of {} bytes exceeds max.message.bytes {max_bytes}", view.total_len()),
            ));
        }
        view.validate_for_produce().map_err(|e| match e {
            BatchError::CrcMismatch { .. } | BatchError::Truncated { .. } => (code::CORRUPT_MESSAGE, e.to_string()),
            other => (code::INVALID_RECORD, other.to_string()),
        })?;
        if view.is_control() {
            return Err((code::INVALID_RECORD, "clients may not produce control batches".into()));
        }
        if view.producer_id() >= 0 && view.base_sequence() < 0 {
            return Err((code::INVALID_RECORD, "a batch with a producer id needs a base sequence".into()));
        }
        if compacted {
            // Compaction keeps the latest record per key, so a record without one is refused.
            // Only compacted topics pay for this walk over the records.
            check_keyed(view, max_bytes)?;
        }
    }
    if log_append_time {
        // The topic overrides timestamps: set LogAppendTime and re-seal the CRC it covers.
        for range in &ranges {
            let b = &mut records[range.clone()];
            let attrs = i16::from_be_bytes([b[21], b[22]]) | 0x8;
            b[21..23].copy_from_slice(&attrs.to_be_bytes());
            b[35..43].copy_from_slice(&now.to_be_bytes());
            let crc = batch::crc32c(&b[21..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
        }
    }
    Ok(Prepared { ranges, log_append_time, now })
}

/// The Kafka error code for a refused append.
fn storage_code(e: &StorageError) -> i16 {
    match e {
        StorageError::Producer(p) => super::producer_error_code(p),
        StorageError::InvalidBatch(_) => code::CORRUPT_MESSAGE,
        _ => code::KAFKA_STORAGE_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kafka_protocol::messages::ApiKey;

    use super::*;
    use crate::handlers::describe_configs::fixture;
    use crate::handlers::leader_hints::fake::{FakeView, round_trip};

    #[tokio::test]
    async fn a_refused_partition_names_its_leader_and_address_from_v10_only() {
        let (ctx, _dir) = fixture::broker(&[]);
        ctx.broker.create_topic("t", 3, BTreeMap::new()).unwrap();
        let view = FakeView {
            leaders: BTreeMap::from([(0, Leader { id: 2, epoch: 7 })]),
            addresses: BTreeMap::from([(2, ("node2".to_string(), 9093))]),
        };
        let mut resp = ProduceResponse::default();
        let mut t = TopicProduceResponse::default();
        t.name = TopicName(str_bytes("t"));
        // Partition 0 moved to node 2, partition 1 has no leader yet, partition 2 succeeded.
        for (index, error_code) in [(0, code::NOT_LEADER_OR_FOLLOWER), (1, code::NOT_LEADER_OR_FOLLOWER), (2, 0)] {
            let mut r = PartitionProduceResponse::default();
            r.index = index;
            r.error_code = error_code;
            t.partition_responses.push(r);
        }
        resp.responses.push(t);

        for version in 3..=11 {
            let mut hinted = resp.clone();
            add_leader_hints(&mut hinted, version, &ctx.broker, &view);
            let got = round_trip(ApiKey::Produce, version, &hinted);
            let leaders: Vec<(i32, i32)> = got.responses[0]
                .partition_responses
                .iter()
                .map(|r| (r.current_leader.leader_id.0, r.current_leader.leader_epoch))
                .collect();
            let endpoints: Vec<(i32, String, i32, Option<String>)> = got
                .node_endpoints
                .iter()
                .map(|e| (e.node_id.0, e.host.to_string(), e.port, e.rack.as_ref().map(|r| r.to_string())))
                .collect();
            if version >= 10 {
                assert_eq!(leaders, [(2, 7), (-1, -1), (-1, -1)], "v{version}");
                assert_eq!(endpoints, [(2, "node2".to_string(), 9093, None)], "v{version}");
            } else {
                assert_eq!(leaders, [(-1, -1); 3], "v{version}");
                assert!(endpoints.is_empty(), "v{version}");
            }
        }
    }
}
