//! Fetch: whole batches from the log as zero-copy slices, long polling on `max_wait_ms` and
//! `min_bytes` (woken by appends), partition and response byte limits, leader-epoch fencing.
//!
//! With `isolation_level` 1 (`read_committed`) reads stop at the last stable offset and the
//! answer lists the aborted transactions in the returned range, so the consumer drops their
//! records; `last_stable_offset` is reported at both levels.
//!
//! Fetch sessions (KIP-227) are declined by answering session id 0, which every client treats
//! as "send full requests", so an empty fetch still honours `max_wait_ms`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use creek_storage::StorageError;
use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ProducerId};
use tokio::time::Instant;

use super::{Ctx, Request, code};
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
    let results = loop {
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
    for (want, pd) in wants.iter().zip(results) {
        topics[want.topic_index].1.partitions.push(pd);
    }
    resp.responses = topics.into_iter().map(|(_, tr)| tr).collect();
    Some(resp)
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
