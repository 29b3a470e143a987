//! AddPartitionsToTxn: adds partitions to a producer's transaction before it writes to them.
//! v0–3 carry one transaction; v4+ (KIP-890) carry a batch of them, answered per transaction.

use kafka_protocol::messages::add_partitions_to_txn_request::{AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction};
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse};

use super::{Ctx, Request, code};
use crate::txn::state::fenced_code;

/// Kafka's OPERATION_NOT_ATTEMPTED: other partitions of the request failed.
const OPERATION_NOT_ATTEMPTED: i16 = 55;

pub(super) async fn handle(ctx: &Ctx, req: Request<AddPartitionsToTxnRequest>) -> Option<AddPartitionsToTxnResponse> {
    let version = req.version();
    let b = req.body;
    let mut resp = AddPartitionsToTxnResponse::default();
    if version <= 3 {
        let mut t = AddPartitionsToTxnTransaction::default();
        t.transactional_id = b.v3_and_below_transactional_id;
        t.producer_id = b.v3_and_below_producer_id;
        t.producer_epoch = b.v3_and_below_producer_epoch;
        t.topics = b.v3_and_below_topics;
        resp.results_by_topic_v3_and_below = add(ctx, &t, version).await;
    } else {
        for t in &b.transactions {
            let mut r = AddPartitionsToTxnResult::default();
            r.transactional_id = t.transactional_id.clone();
            r.topic_results = add(ctx, t, version).await;
            resp.results_by_transaction.push(r);
        }
    }
    Some(resp)
}

async fn add(ctx: &Ctx, t: &AddPartitionsToTxnTransaction, version: i16) -> Vec<AddPartitionsToTxnTopicResult> {
    let txn_id = t.transactional_id.0.to_string();
    let exists = |topic: &AddPartitionsToTxnTopic, p: i32| {
        ctx.broker.topic(&topic.name.0).and_then(|x| x.partition(p)).is_some()
    };
    let unknown = t.topics.iter().any(|topic| topic.partitions.iter().any(|&p| !exists(topic, p)));
    let code = if unknown {
        None
    } else if t.verify_only {
        // Verification (KIP-890 part 1) is not served: answer as if the partitions are in the
        // transaction only when they are.
        Some(Err(code::INVALID_REQUEST))
    } else {
        let parts: Vec<(String, i32)> =
            t.topics.iter().flat_map(|x| x.partitions.iter().map(|&p| (x.name.0.to_string(), p))).collect();
        let (pid, epoch) = (t.producer_id.0, t.producer_epoch);
        Some(ctx.txns.call(&txn_id, |s, _| s.add_partitions(&txn_id, pid, epoch, &parts, crate::state::now_ms())).await)
    };
    t.topics
        .iter()
        .map(|topic| {
            let mut tr = AddPartitionsToTxnTopicResult::default();
            tr.name = topic.name.clone();
            tr.results_by_partition = topic
                .partitions
                .iter()
                .map(|&p| {
                    let mut pr = AddPartitionsToTxnPartitionResult::default();
                    pr.partition_index = p;
                    pr.partition_error_code = match &code {
                        None if !exists(topic, p) => code::UNKNOWN_TOPIC_OR_PARTITION,
                        None => OPERATION_NOT_ATTEMPTED,
                        Some(Ok(())) => code::NONE,
                        Some(Err(e)) => fenced_code(*e, version >= 2),
                    };
                    pr
                })
                .collect();
            tr
        })
        .collect()
}
