//! AddOffsetsToTxn: adds the group's `__consumer_offsets` partition to the transaction, so the
//! offsets the producer then commits with TxnOffsetCommit end with the transaction.

use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};

use super::{Ctx, Request};
use crate::txn::state::fenced_code;

pub(super) async fn handle(ctx: &Ctx, req: Request<AddOffsetsToTxnRequest>) -> Option<AddOffsetsToTxnResponse> {
    let version = req.version();
    let b = req.body;
    let txn_id = b.transactional_id.0.to_string();
    let partition = ctx.txns.offsets_partition(&b.group_id.0);
    let (pid, epoch) = (b.producer_id.0, b.producer_epoch);
    let answer =
        ctx.txns.call(&txn_id, |s, _| s.add_offsets(&txn_id, pid, epoch, partition, crate::state::now_ms())).await;
    let mut resp = AddOffsetsToTxnResponse::default();
    resp.error_code = answer.err().map_or(0, |e| fenced_code(e, version >= 2));
    Some(resp)
}
