//! EndTxn: commits or aborts the producer's transaction. Answered once the markers are durable
//! in every partition of the transaction and the transaction is complete.

use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse, ProducerId};

use super::{Ctx, Request};
use crate::txn::state::fenced_code;

pub(super) async fn handle(ctx: &Ctx, req: Request<EndTxnRequest>) -> Option<EndTxnResponse> {
    let version = req.version();
    let b = req.body;
    let txn_id = b.transactional_id.0.to_string();
    let (pid, epoch, commit) = (b.producer_id.0, b.producer_epoch, b.committed);
    let answer = ctx.txns.call(&txn_id, |s, _| s.end_txn(&txn_id, pid, epoch, commit, crate::state::now_ms())).await;
    let mut resp = EndTxnResponse::default();
    resp.error_code = answer.err().map_or(0, |e| fenced_code(e, version >= 2));
    resp.producer_id = ProducerId(-1);
    resp.producer_epoch = -1;
    Some(resp)
}
