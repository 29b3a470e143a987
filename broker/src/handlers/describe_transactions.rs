//! DescribeTransactions: a transactional id's state, producer id and epoch, timeout, start time
//! and partitions, from the transaction coordinator.

use std::collections::BTreeMap;

use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId, TopicName};

use super::{Ctx, Request, str_bytes};

pub(super) async fn handle(
    ctx: &Ctx,
    req: Request<DescribeTransactionsRequest>,
) -> Option<DescribeTransactionsResponse> {
    let mut resp = DescribeTransactionsResponse::default();
    for id in &req.body.transactional_ids {
        let mut ts = TransactionState::default();
        ts.transactional_id = id.clone();
        ts.producer_id = ProducerId(-1);
        ts.producer_epoch = -1;
        ts.transaction_start_time_ms = -1;
        let found = ctx.txns.check(&id.0).and_then(|()| ctx.txns.with_state(|s| s.describe(&id.0).cloned()));
        match found {
            Err(e) => ts.error_code = e,
            Ok(m) => {
                ts.transaction_state = str_bytes(m.state.name());
                ts.transaction_timeout_ms = m.timeout_ms;
                ts.transaction_start_time_ms = m.start_ms;
                ts.producer_id = ProducerId(m.producer_id);
                ts.producer_epoch = m.producer_epoch;
                let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                for (t, p) in m.partitions {
                    by_topic.entry(t).or_default().push(p);
                }
                ts.topics = by_topic
                    .into_iter()
                    .map(|(t, partitions)| {
                        let mut td = TopicData::default();
                        td.topic = TopicName(str_bytes(t));
                        td.partitions = partitions;
                        td
                    })
                    .collect();
            }
        }
        resp.transaction_states.push(ts);
    }
    Some(resp)
}
