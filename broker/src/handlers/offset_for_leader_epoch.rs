//! OffsetForLeaderEpoch (KIP-101/320): where a leader epoch ends, so consumers and followers can
//! detect log truncation; fenced by `current_leader_epoch`.

use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use super::{Ctx, Request, code};
use crate::state::Partition;

/// Kafka's UNDEFINED_EPOCH and UNDEFINED_EPOCH_OFFSET.
const UNDEFINED: (i32, i64) = (-1, -1);

pub(super) async fn handle(
    ctx: &Ctx,
    req: Request<OffsetForLeaderEpochRequest>,
) -> Option<OffsetForLeaderEpochResponse> {
    // replica_id (v3+) tells followers from consumers; a single node answers both alike.
    let clustered = ctx.broker.cluster.get().is_some();
    let mut resp = OffsetForLeaderEpochResponse::default();
    for t in req.body.topics {
        let topic = ctx.broker.topic(&t.topic.0);
        let mut tr = OffsetForLeaderTopicResult::default();
        tr.topic = t.topic;
        for p in t.partitions {
            let mut pr = EpochEndOffset::default();
            pr.partition = p.partition;
            (pr.leader_epoch, pr.end_offset) = UNDEFINED;
            match topic.as_ref().and_then(|topic| topic.partition(p.partition)) {
                None => pr.error_code = code::UNKNOWN_TOPIC_OR_PARTITION,
                Some(part) if part.check_leader(clustered).is_err() => pr.error_code = code::NOT_LEADER_OR_FOLLOWER,
                Some(part) if p.current_leader_epoch >= 0 && p.current_leader_epoch > part.epoch() => {
                    pr.error_code = code::UNKNOWN_LEADER_EPOCH;
                }
                Some(part) if p.current_leader_epoch >= 0 && p.current_leader_epoch < part.epoch() => {
                    pr.error_code = code::FENCED_LEADER_EPOCH;
                }
                Some(part) => (pr.leader_epoch, pr.end_offset) = end_of_epoch(&part, p.leader_epoch),
            }
            tr.partitions.push(pr);
        }
        resp.topics.push(tr);
    }
    Some(resp)
}

/// Kafka's `LeaderEpochFileCache.endOffsetFor`. Kafka records the leader's current epoch at the
/// log end when it becomes leader; Creek's cache only holds epochs that have batches, so the
/// current epoch is answered here: it ends at the log end.
fn end_of_epoch(part: &Partition, requested: i32) -> (i32, i64) {
    let log = part.log.lock();
    let log_end = log.log_end_offset() as i64;
    let current = part.epoch();
    if requested < 0 || requested > current {
        // Undefined, or a future epoch this leader has not reached.
        return UNDEFINED;
    }
    if requested == current {
        return (current, log_end);
    }
    match log.end_offset_for_epoch(requested) {
        Some((epoch, end)) => (epoch, end as i64),
        // Older than every epoch still in the log: Kafka answers the requested epoch with the
        // start of the first known one, which is the log start (or, with no epochs recorded,
        // the current epoch's start, the log end).
        None if log.latest_epoch().is_some() => (requested, log.log_start_offset() as i64),
        None => (requested, log_end),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use creek_protocol::batch::build_batch;
    use kafka_protocol::messages::offset_for_leader_epoch_request::{OffsetForLeaderPartition, OffsetForLeaderTopic};
    use kafka_protocol::messages::{ApiKey, TopicName};

    use super::*;
    use crate::handlers::describe_configs::fixture::{broker, encodes_at_every_version, request};
    use crate::handlers::str_bytes;

    #[tokio::test]
    async fn offset_for_leader_epoch_answers_current_future_and_fenced_epochs() {
        let (ctx, _dir) = broker(&[]);
        let t = ctx.broker.create_topic("t", 2, BTreeMap::new()).unwrap();
        {
            let part = t.partition(0).unwrap();
            let mut b = build_batch(0, 1_000, &[(None, Some(b"x".as_slice())), (None, Some(b"y".as_slice()))]);
            part.log.lock().append(&mut b, 0, 1_000).unwrap();
        }
        // (topic, partition, current_leader_epoch, leader_epoch)
        let asks = [
            ("t", 0, -1, 0),
            ("t", 0, 0, 1),
            ("t", 0, 1, 0),
            ("t", 0, -1, -1),
            ("t", 1, 0, 0),
            ("t", 5, -1, 0),
            ("x", 0, -1, 0),
        ];
        let mut body = OffsetForLeaderEpochRequest::default();
        body.replica_id = (-1).into();
        for (name, p, current, epoch) in asks {
            let mut tp = OffsetForLeaderTopic::default();
            tp.topic = TopicName(str_bytes(name));
            let mut pp = OffsetForLeaderPartition::default();
            pp.partition = p;
            pp.current_leader_epoch = current;
            pp.leader_epoch = epoch;
            tp.partitions.push(pp);
            body.topics.push(tp);
        }
        let resp = handle(&ctx, request(ApiKey::OffsetForLeaderEpoch, 4, body)).await.unwrap();
        let got: Vec<(i16, i32, i64)> = resp
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| (p.error_code, p.leader_epoch, p.end_offset))
            .collect();
        assert_eq!(
            got,
            [
                (0, 0, 2),    // the current epoch ends at the log end
                (0, -1, -1),  // a future epoch is undefined
                (75, -1, -1), // the client knows a newer leader epoch than this broker
                (0, -1, -1),  // undefined epoch asked
                (0, 0, 0),    // an empty partition: the current epoch still ends at the log end
                (3, -1, -1),
                (3, -1, -1),
            ]
        );
        encodes_at_every_version(ApiKey::OffsetForLeaderEpoch, &resp);
    }
}
