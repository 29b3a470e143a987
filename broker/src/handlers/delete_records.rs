//! DeleteRecords: moves partitions' log start up (-1 = the high watermark), refused on topics
//! whose cleanup.policy does not include `delete`. On a replicated partition the leader proposes
//! the deletion as a Raft entry (a Creek control batch), every replica carries it out once it is
//! committed, and the leader answers when its own log start has moved. A replicated log start
//! never falls inside a batch: the deletion stops at the start of the batch holding the offset
//! (the answer's low watermark says where), since a replica that installs a snapshot restarts at
//! a batch boundary and must hold what the others hold.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use super::alter_configs::list_items;
use super::{Ctx, Request, code};
use crate::config::{topic_def, topic_value};
use crate::raft::log_store::delete_records_batch;
use crate::raft::replica::Replica;
use crate::state::{Partition, now_ms};

/// The offset that means "up to the high watermark".
const HIGH_WATERMARK: i64 = -1;
/// The low watermark of a failed partition.
const LOW_WATERMARK_INVALID: i64 = -1;

pub(super) async fn handle(ctx: &Ctx, req: Request<DeleteRecordsRequest>) -> Option<DeleteRecordsResponse> {
    let mut resp = DeleteRecordsResponse::default();
    let wait = Duration::from_millis(req.body.timeout_ms.clamp(0, 60_000) as u64);
    for t in req.body.topics {
        let topic = ctx.broker.topic(&t.name.0);
        let deletable = topic.as_ref().is_some_and(|topic| {
            let def = topic_def("cleanup.policy").expect("cleanup.policy is a topic config");
            let (policy, _) = topic_value(def, &topic.overrides.read(), &ctx.broker.config.read());
            list_items(&policy).contains(&"delete")
        });
        let mut tr = DeleteRecordsTopicResult::default();
        tr.name = t.name;
        for p in t.partitions {
            let mut pr = DeleteRecordsPartitionResult::default();
            pr.partition_index = p.partition_index;
            let outcome = match topic.as_ref().and_then(|topic| topic.partition(p.partition_index)) {
                None => Err(code::UNKNOWN_TOPIC_OR_PARTITION),
                Some(_) if !deletable => Err(code::POLICY_VIOLATION),
                Some(part) => match part.replica.get() {
                    Some(replica) => delete_replicated(&part, &replica, p.offset, wait).await,
                    // An unreplicated partition in a cluster: each node would move its own log start.
                    None if ctx.broker.cluster.get().is_some() => Err(code::POLICY_VIOLATION),
                    None => delete_before(&part, p.offset),
                },
            };
            match outcome {
                Ok(low_watermark) => pr.low_watermark = low_watermark,
                Err(code) => {
                    pr.error_code = code;
                    pr.low_watermark = LOW_WATERMARK_INVALID;
                }
            }
            tr.partitions.push(pr);
        }
        resp.topics.push(tr);
    }
    Some(resp)
}

/// DeleteRecords on a replicated partition (see the module docs): the new log start.
async fn delete_replicated(part: &Partition, replica: &Arc<Replica>, offset: i64, wait: Duration) -> Result<i64, i16> {
    part.check_leader(true)?;
    let high_watermark = replica.high_watermark();
    let target = match offset {
        HIGH_WATERMARK => high_watermark,
        o if o < 0 || o as u64 > high_watermark => return Err(code::OFFSET_OUT_OF_RANGE),
        o => o as u64,
    };
    let log_start = || part.log.lock().log_start_offset();
    if log_start() >= target {
        return Ok(log_start() as i64);
    }
    // Not committed (leadership moved, the group stopped): the client retries with the leader.
    if replica.propose(Bytes::from(delete_records_batch(target, now_ms()))).await.is_err() {
        return Err(code::NOT_LEADER_OR_FOLLOWER);
    }
    // The log start moves to the start of the batch holding `target` (see the module docs).
    let target = replica.delete_records_point(target);
    let deadline = tokio::time::Instant::now() + wait;
    while log_start() < target {
        if tokio::time::Instant::now() >= deadline {
            return Err(code::REQUEST_TIMED_OUT);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(log_start() as i64)
}

/// Deletes records below `offset` and returns the new log start.
fn delete_before(part: &Partition, offset: i64) -> Result<i64, i16> {
    let mut log = part.log.lock();
    let high_watermark = log.log_end_offset();
    let target = match offset {
        HIGH_WATERMARK => high_watermark,
        o if o < 0 => return Err(code::OFFSET_OUT_OF_RANGE),
        o if o as u64 > high_watermark => return Err(code::OFFSET_OUT_OF_RANGE),
        o => o as u64,
    };
    match log.delete_records_before(target) {
        Ok(start) => Ok(start as i64),
        // Past the retention floor (the replicas' Raft log start) is, like past the high
        // watermark, more than may be deleted yet.
        Err(
            creek_storage::StorageError::OffsetOutOfRange { .. }
            | creek_storage::StorageError::AboveRetentionFloor { .. },
        ) => Err(code::OFFSET_OUT_OF_RANGE),
        Err(e) => {
            tracing::warn!(topic = %part.topic, partition = part.index, error = %e, "delete records failed");
            Err(code::KAFKA_STORAGE_ERROR)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use creek_protocol::batch::build_batch;
    use kafka_protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
    use kafka_protocol::messages::{ApiKey, TopicName};

    use super::*;
    use crate::handlers::describe_configs::fixture::{broker, encodes_at_every_version, request};
    use crate::handlers::str_bytes;

    fn topic(name: &str, parts: &[(i32, i64)]) -> DeleteRecordsTopic {
        let mut t = DeleteRecordsTopic::default();
        t.name = TopicName(str_bytes(name));
        t.partitions = parts
            .iter()
            .map(|&(i, o)| {
                let mut p = DeleteRecordsPartition::default();
                p.partition_index = i;
                p.offset = o;
                p
            })
            .collect();
        t
    }

    #[tokio::test]
    async fn delete_records_moves_the_log_start_per_partition() {
        let (ctx, _dir) = broker(&[]);
        let t = ctx.broker.create_topic("t", 2, BTreeMap::new()).unwrap();
        let compact = BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
        ctx.broker.create_topic("c", 1, compact).unwrap();
        for p in [0, 1] {
            let part = t.partition(p).unwrap();
            let mut log = part.log.lock();
            for i in 0..2 {
                let mut b = build_batch(0, 1_000, &[(None, Some(b"x".as_slice())), (None, Some(b"y".as_slice()))]);
                log.append(&mut b, 0, 1_000 + i).unwrap();
            }
        }
        let mut body = DeleteRecordsRequest::default();
        body.topics = vec![
            topic("t", &[(0, 2), (1, -1), (2, 0)]),
            topic("t", &[(0, 10), (0, -7)]),
            topic("c", &[(0, 0)]),
            topic("nope", &[(0, 0)]),
        ];
        let resp = handle(&ctx, request(ApiKey::DeleteRecords, 2, body)).await.unwrap();
        let got: Vec<Vec<(i32, i64, i16)>> = resp
            .topics
            .iter()
            .map(|t| t.partitions.iter().map(|p| (p.partition_index, p.low_watermark, p.error_code)).collect())
            .collect();
        assert_eq!(got[0], [(0, 2, 0), (1, 4, 0), (2, -1, 3)]);
        assert_eq!(got[1], [(0, -1, 1), (0, -1, 1)], "beyond the high watermark and negative are out of range");
        assert_eq!(got[2], [(0, -1, 44)], "compacted topics refuse");
        assert_eq!(got[3], [(0, -1, 3)]);
        assert_eq!(t.partition(0).unwrap().log.lock().log_start_offset(), 2);
        encodes_at_every_version(ApiKey::DeleteRecords, &resp);
    }
}
