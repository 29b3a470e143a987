//! DescribeProducers: the idempotent and transactional producers each partition knows, with
//! their epoch, last sequence and open transaction (what `kafka-transactions.sh` shows).

use kafka_protocol::messages::describe_producers_response::{PartitionResponse, ProducerState, TopicResponse};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};

use super::{Ctx, Request, code};

pub(super) async fn handle(ctx: &Ctx, req: Request<DescribeProducersRequest>) -> Option<DescribeProducersResponse> {
    let mut resp = DescribeProducersResponse::default();
    for t in &req.body.topics {
        let topic = ctx.broker.topic(&t.name.0);
        let mut tr = TopicResponse::default();
        tr.name = t.name.clone();
        for &index in &t.partition_indexes {
            let mut pr = PartitionResponse::default();
            pr.partition_index = index;
            match topic.as_ref().and_then(|t| t.partition(index)) {
                None => pr.error_code = code::UNKNOWN_TOPIC_OR_PARTITION,
                Some(p) => {
                    let mut producers = p.log.lock().producers();
                    producers.sort_by_key(|(id, _)| *id);
                    pr.active_producers = producers
                        .into_iter()
                        .map(|(id, e)| {
                            let mut s = ProducerState::default();
                            s.producer_id = ProducerId(id);
                            s.producer_epoch = i32::from(e.epoch);
                            s.last_sequence = e.last_sequence();
                            s.last_timestamp = e.last_timestamp;
                            s.coordinator_epoch = e.coordinator_epoch;
                            s.current_txn_start_offset = e.txn_first_offset.map_or(-1, |o| o as i64);
                            s
                        })
                        .collect();
                }
            }
            tr.partitions.push(pr);
        }
        resp.topics.push(tr);
    }
    Some(resp)
}
