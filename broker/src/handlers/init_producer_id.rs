//! InitProducerId: a fresh producer id for idempotent producers; for transactional ones, the
//! transaction coordinator's id and epoch (KIP-98, KIP-360 bumps, fencing of zombies).

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::{Ctx, Request};
use crate::txn::state::{CONCURRENT_TRANSACTIONS, fenced_code};

pub(super) async fn handle(ctx: &Ctx, req: Request<InitProducerIdRequest>) -> Option<InitProducerIdResponse> {
    let version = req.version();
    let b = req.body;
    let answer = match b.transactional_id.as_ref().map(|t| t.0.to_string()) {
        // No transactional id: always a new producer id at epoch 0 (as Kafka, also for KIP-360).
        None => ctx.txns.allocate_producer_id().map(|id| (id, 0)),
        Some(txn_id) => {
            let expected = (b.producer_id.0 >= 0).then_some((b.producer_id.0, b.producer_epoch));
            let timeout = b.transaction_timeout_ms;
            let mut answer = Err(CONCURRENT_TRANSACTIONS);
            // An open transaction of a previous producer is aborted first (fencing it); the
            // abort completes inside the first call, so the second one gets the new epoch.
            for _ in 0..3 {
                answer = ctx
                    .txns
                    .call(&txn_id, |t, alloc| {
                        t.init_producer_id(&txn_id, timeout, expected, crate::state::now_ms(), alloc)
                    })
                    .await;
                if answer != Err(CONCURRENT_TRANSACTIONS) {
                    break;
                }
            }
            answer.map_err(|e| fenced_code(e, version >= 4))
        }
    };
    let mut resp = InitProducerIdResponse::default();
    match answer {
        Ok((id, epoch)) => {
            resp.producer_id = ProducerId(id);
            resp.producer_epoch = epoch;
        }
        Err(e) => {
            resp.error_code = e;
            resp.producer_id = ProducerId(-1);
            resp.producer_epoch = -1;
        }
    }
    Some(resp)
}
