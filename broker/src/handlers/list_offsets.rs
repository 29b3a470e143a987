//! ListOffsets: latest (-1), earliest (-2), max timestamp (-3), earliest local (-4), latest
//! tiered (-5) and by timestamp through the time index, with the epoch of the returned offset.

use creek_protocol::batch::BatchView;
use creek_protocol::records::record_timestamps;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::{Ctx, Request, code};
use crate::state::Partition;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;
/// Largest decompressed batch examined to find a record by timestamp.
const DECOMPRESSED_BYTES_MAX: usize = 64 << 20;

pub(super) async fn handle(ctx: &Ctx, req: Request<ListOffsetsRequest>) -> Option<ListOffsetsResponse> {
    let version = req.version();
    // read_committed (v2+) consumers start at the last stable offset, not the log end.
    let read_committed = version >= 2 && req.body.isolation_level == 1;
    let clustered = ctx.broker.cluster.get().is_some();
    let mut resp = ListOffsetsResponse::default();
    for t in req.body.topics {
        let topic = ctx.broker.topic(&t.name.0);
        let mut tr = ListOffsetsTopicResponse::default();
        tr.name = t.name.clone();
        for p in t.partitions {
            let mut pr = ListOffsetsPartitionResponse::default();
            pr.partition_index = p.partition_index;
            pr.timestamp = -1;
            pr.offset = -1;
            pr.leader_epoch = -1;
            match topic.as_ref().and_then(|t| t.partition(p.partition_index)) {
                None => pr.error_code = code::UNKNOWN_TOPIC_OR_PARTITION,
                Some(part) if part.check_leader(clustered).is_err() => pr.error_code = code::NOT_LEADER_OR_FOLLOWER,
                Some(part) if p.current_leader_epoch >= 0 && p.current_leader_epoch != part.epoch() => {
                    pr.error_code = if p.current_leader_epoch > part.epoch() {
                        code::UNKNOWN_LEADER_EPOCH
                    } else {
                        code::FENCED_LEADER_EPOCH
                    };
                }
                Some(part) => match lookup(&part, p.timestamp, read_committed) {
                    Ok(Some((offset, ts, epoch))) => {
                        pr.offset = offset;
                        pr.timestamp = ts;
                        // The epoch field exists from v4.
                        pr.leader_epoch = if version >= 4 { epoch } else { -1 };
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(topic = %part.topic, partition = part.index, error = %e, "list offsets failed");
                        pr.error_code = code::KAFKA_STORAGE_ERROR;
                    }
                },
            }
            tr.partitions.push(pr);
        }
        resp.topics.push(tr);
    }
    Some(resp)
}

/// `(offset, timestamp, leader epoch)` for a ListOffsets query, or `None` when nothing matches.
fn lookup(p: &Partition, query: i64, read_committed: bool) -> Result<Option<(i64, i64, i32)>, String> {
    let log = p.log.lock();
    let epoch = log.latest_epoch().unwrap_or(p.epoch());
    let end = p.high_watermark(&log);
    match query {
        LATEST if read_committed => Ok(Some((log.last_stable_offset(end) as i64, -1, epoch))),
        LATEST => Ok(Some((end as i64, -1, epoch))),
        EARLIEST | EARLIEST_LOCAL => Ok(Some((log.log_start_offset() as i64, -1, epoch))),
        // Nothing is tiered yet, so there is no latest tiered offset.
        LATEST_TIERED => Ok(None),
        MAX_TIMESTAMP => {
            let Some(bytes) = log.max_timestamp_batch().map_err(|e| e.to_string())? else { return Ok(None) };
            drop(log);
            let view = BatchView::new(&bytes).map_err(|e| e.to_string())?;
            let records = record_timestamps(&view, DECOMPRESSED_BYTES_MAX).map_err(|e| e.to_string())?;
            // The first record carrying the batch's max timestamp.
            let max = view.max_timestamp();
            let hit = records.iter().find(|(_, ts)| *ts == max).or(records.last());
            Ok(hit.map(|&(o, ts)| (o, ts, view.partition_leader_epoch())))
        }
        ts if ts >= 0 => {
            let start = log.log_start_offset() as i64;
            let Some(bytes) = log.batch_at_timestamp(ts).map_err(|e| e.to_string())? else { return Ok(None) };
            drop(log);
            let view = BatchView::new(&bytes).map_err(|e| e.to_string())?;
            let records = record_timestamps(&view, DECOMPRESSED_BYTES_MAX).map_err(|e| e.to_string())?;
            let hit = records.iter().find(|&&(o, t)| t >= ts && o >= start);
            Ok(hit.map(|&(o, t)| (o, t, view.partition_leader_epoch())))
        }
        _ => Ok(None),
    }
}
