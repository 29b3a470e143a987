//! Fetch: whole batches from the log as zero-copy slices, long polling on `max_wait_ms` and
//! `min_bytes` (woken by appends), partition and response byte limits, leader-epoch fencing.
//!
//! With `isolation_level` 1 (`read_committed`) reads stop at the last stable offset and the
//! answer lists the aborted transactions in the returned range, so the consumer drops their
//! records; `last_stable_offset` is reported at both levels.
//!
//! Fetch sessions (KIP-227) are declined by answering session id 0, which every client treats
//! as "send full requests", so an empty fetch still honours `max_wait_ms`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use creek_storage::StorageError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, NodeEndpoint, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId};
use tokio::time::Instant;

use super::leader_hints::{Leader, LeaderView, endpoints, hinted};
use super::{Ctx, Request, code, str_bytes};
use crate::state::{Partition, Topic};

/// Longest a fetch may park, whatever the client asks.
const WAIT_MS_MAX: i32 = 5 * 60 * 1000;
const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;

/// A requested partition, resolved once per request.
struct Want {
    topic_index: usize,
    partition: Option<Arc<Partition>>,
    index: i32,
    fetch_offset: i64,
    current_leader_epoch: i32,
    partition_max_bytes: usize,
}

pub(super) async fn handle(ctx: &Ctx, req: Request<FetchRequest>) -> Option<FetchResponse> {
    let version = req.version();
    let body = req.body;
    drop(req.frame);
    let mut resp = FetchResponse::default();
    if body.session_id != 0 {
        resp.error_code = FETCH_SESSION_ID_NOT_FOUND;
        return Some(resp);
    }
    let broker_max = ctx.broker.config.read().i64("fetch.max.bytes").max(0) as usize;
    let response_max = if body.max_bytes > 0 { (body.max_bytes as usize).min(broker_max) } else { broker_max };
    let min_bytes = body.min_bytes.max(0) as usize;
    let wait = Duration::from_millis(body.max_wait_ms.clamp(0, WAIT_MS_MAX) as u64);
    let read_committed = body.isolation_level == 1;

    // Resolve topics once: by id from v13, by name before.
    let mut topics: Vec<(Option<Arc<Topic>>, FetchableTopicResponse)> = Vec::new();
    let mut wants = Vec::new();
    for ft in body.topics {
        let topic = if version >= 13 { ctx.broker.topic_by_id(ft.topic_id) } else { ctx.broker.topic(&ft.topic.0) };
        let mut tr = FetchableTopicResponse::default();
        tr.topic = ft.topic.clone();
        tr.topic_id = ft.topic_id;
        let topic_index = topics.len();
        for fp in ft.partitions {
            wants.push(Want {
                topic_index,
                partition: topic.as_ref().and_then(|t| t.partition(fp.partition)),
                index: fp.partition,
                fetch_offset: fp.fetch_offset,
                current_leader_epoch: fp.current_leader_epoch,
                partition_max_bytes: fp.partition_max_bytes.max(0) as usize,
            });
        }
        topics.push((topic, tr));
    }
    let unknown_code = if version >= 13 { code::UNKNOWN_TOPIC_ID } else { code::UNKNOWN_TOPIC_OR_PARTITION };

    let deadline = Instant::now() + wait;
    let mut appended = ctx.broker.appended.subscribe();
    let mut results = loop {
        appended.borrow_and_update();
        let clustered = ctx.broker.cluster.get().is_some();
        let (results, bytes, any_error) =
            read_once(&wants, response_max, unknown_code, version, read_committed, clustered);
        if bytes >= min_bytes || any_error || Instant::now() >= deadline {
            break results;
        }
        tokio::select! {
            changed = appended.changed() => {
                if changed.is_err() {
                    break results;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    };
    if let Some(cluster) = ctx.broker.cluster.get() {
        resp.node_endpoints = add_leader_hints(version, &wants, &mut results, &**cluster);
    }
    for (want, pd) in wants.iter().zip(results) {
        topics[want.topic_index].1.partitions.push(pd);
    }
    resp.responses = topics.into_iter().map(|(_, tr)| tr).collect();
    Some(resp)
}

/// KIP-951 (v12+): every partition refused with NOT_LEADER_OR_FOLLOWER or FENCED_LEADER_EPOCH
/// names its current leader and epoch (-1 and -1 while none is known); returns the named
/// leaders' addresses for the response's `node_endpoints` (v16+, else empty), so the consumer
/// moves without a Metadata round trip.
fn add_leader_hints(
    version: i16,
    wants: &[Want],
    results: &mut [PartitionData],
    view: &impl LeaderView,
) -> Vec<NodeEndpoint> {
    if version < 12 {
        return Vec::new();
    }
    let mut named = BTreeSet::new();
    for (w, pd) in wants.iter().zip(results.iter_mut()).filter(|(_, pd)| hinted(pd.error_code, true)) {
        let leader = w.partition.as_deref().map_or(Leader::UNKNOWN, |p| view.leader_of(p));
        pd.current_leader.leader_id = BrokerId(leader.id);
        pd.current_leader.leader_epoch = leader.epoch;
        if leader.id >= 0 {
            named.insert(leader.id);
        }
    }
    if version < 16 {
        return Vec::new();
    }
    endpoints(view, &named)
        .into_iter()
        .map(|(id, host, port)| {
            let mut e = NodeEndpoint::default();
            e.node_id = BrokerId(id);
            e.host = str_bytes(host);
            e.port = i32::from(port);
            e.rack = None;
            e
        })
        .collect()
}

/// Reads every wanted partition once. Returns the partition answers, the record bytes gathered
/// and whether any partition failed (which makes Kafka answer at once).
fn read_once(
    wants: &[Want],
    response_max: usize,
    unknown_code: i16,
    version: i16,
    read_committed: bool,
    clustered: bool,
) -> (Vec<PartitionData>, usize, bool) {
    let mut out = Vec::with_capacity(wants.len());
    let mut total = 0usize;
    let mut any_error = false;
    for w in wants {
        let mut pd = PartitionData::default();
        pd.partition_index = w.index;
        pd.high_watermark = -1;
        pd.last_stable_offset = -1;
        pd.log_start_offset = -1;
        pd.records = Some(Bytes::new());
        let Some(p) = &w.partition else {
            pd.error_code = unknown_code;
            any_error = true;
            out.push(pd);
            continue;
        };
        let epoch = p.epoch();
        if let Err(c) = p.check_leader(clustered) {
            pd.error_code = c;
            any_error = true;
            out.push(pd);
            continue;
        }
        if w.current_leader_epoch >= 0 && w.current_leader_epoch != epoch {
            pd.error_code =
                if w.current_leader_epoch > epoch { code::UNKNOWN_LEADER_EPOCH } else { code::FENCED_LEADER_EPOCH };
            any_error = true;
            out.push(pd);
            continue;
        }
        let log = p.log.lock();
        let (start, hw) = (log.log_start_offset(), p.high_watermark(&log));
        let lso = log.last_stable_offset(hw);
        pd.high_watermark = hw as i64;
        pd.last_stable_offset = lso as i64;
        // log_start_offset exists from v5.
        pd.log_start_offset = if version >= 5 { start as i64 } else { -1 };
        if w.fetch_offset < 0 {
            pd.error_code = code::OFFSET_OUT_OF_RANGE;
            any_error = true;
            out.push(pd);
            continue;
        }
        let room = response_max.saturating_sub(total);
        // KIP-74: the first batch of the response is returned whole even past the limits, so a
        // consumer always makes progress; after that, batches must fit.
        let limit = w.partition_max_bytes.min(room);
        if limit == 0 && total > 0 {
            out.push(pd);
            continue;
        }
        let upto = if read_committed { lso } else { hw };
        match log.read_below(w.fetch_offset as u64, limit, upto) {
            Ok(read) => {
                let fits = read.bytes.len() <= limit || total == 0;
                if fits && !read.bytes.is_empty() {
                    total += read.bytes.len();
                    pd.records = Some(read.bytes);
                    if read_committed {
                        let aborted = log.aborted_transactions(w.fetch_offset as u64, read.next_offset);
                        pd.aborted_transactions = Some(
                            aborted
                                .into_iter()
                                .map(|a| {
                                    let mut t = AbortedTransaction::default();
                                    t.producer_id = ProducerId(a.producer_id);
                                    t.first_offset = a.first_offset as i64;
                                    t
                                })
                                .collect(),
                        );
                    }
                }
            }
            Err(StorageError::OffsetOutOfRange { .. }) => {
                pd.error_code = code::OFFSET_OUT_OF_RANGE;
                any_error = true;
            }
            Err(e) => {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "read failed");
                pd.error_code = code::KAFKA_STORAGE_ERROR;
                any_error = true;
            }
        }
        out.push(pd);
    }
    (out, total, any_error)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kafka_protocol::messages::ApiKey;

    use super::*;
    use crate::handlers::describe_configs::fixture;
    use crate::handlers::leader_hints::fake::{FakeView, round_trip};

    #[tokio::test]
    async fn refused_partitions_name_their_leader_from_v12_and_its_address_from_v16() {
        let (ctx, _dir) = fixture::broker(&[]);
        let topic = ctx.broker.create_topic("t", 4, BTreeMap::new()).unwrap();
        let view = FakeView {
            leaders: BTreeMap::from([(0, Leader { id: 3, epoch: 5 }), (2, Leader { id: 1, epoch: 9 })]),
            addresses: BTreeMap::from([(1, ("node1".to_string(), 9092)), (3, ("node3".to_string(), 9094))]),
        };
        // 0: not the leader (node 3 is); 1: not the leader, none known; 2: the client's epoch is
        // older than the leader's (node 1); 3: served.
        let errors =
            [code::NOT_LEADER_OR_FOLLOWER, code::NOT_LEADER_OR_FOLLOWER, code::FENCED_LEADER_EPOCH, code::NONE];
        let wants: Vec<Want> = (0..4)
            .map(|i| Want {
                topic_index: 0,
                partition: topic.partition(i),
                index: i,
                fetch_offset: 0,
                current_leader_epoch: -1,
                partition_max_bytes: 1024,
            })
            .collect();

        for version in 4..=16 {
            let mut results: Vec<PartitionData> = wants
                .iter()
                .zip(errors)
                .map(|(w, error_code)| {
                    let mut pd = PartitionData::default();
                    pd.partition_index = w.index;
                    pd.error_code = error_code;
                    pd.records = Some(Bytes::new());
                    pd
                })
                .collect();
            let mut resp = FetchResponse::default();
            resp.node_endpoints = add_leader_hints(version, &wants, &mut results, &view);
            let mut tr = FetchableTopicResponse::default();
            tr.topic = kafka_protocol::messages::TopicName(str_bytes("t"));
            tr.topic_id = topic.id;
            tr.partitions = results;
            resp.responses.push(tr);
            let got = round_trip(ApiKey::Fetch, version, &resp);
            let leaders: Vec<(i32, i32)> = got.responses[0]
                .partitions
                .iter()
                .map(|p| (p.current_leader.leader_id.0, p.current_leader.leader_epoch))
                .collect();
            let endpoints: Vec<(i32, String, i32)> =
                got.node_endpoints.iter().map(|e| (e.node_id.0, e.host.to_string(), e.port)).collect();
            if version >= 12 {
                assert_eq!(leaders, [(3, 5), (-1, -1), (1, 9), (-1, -1)], "v{version}");
            } else {
                assert_eq!(leaders, [(-1, -1); 4], "v{version}");
            }
            if version >= 16 {
                let expected = [(1, "node1".to_string(), 9092), (3, "node3".to_string(), 9094)];
                assert_eq!(endpoints, expected, "v{version}");
            } else {
                assert!(endpoints.is_empty(), "v{version}");
            }
        }
    }
}
