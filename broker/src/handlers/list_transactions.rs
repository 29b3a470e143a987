//! ListTransactions: transactional ids with their producer id and state, filtered by state,
//! producer id and (v1, KIP-994) minimum running time.

use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId};

use super::{Ctx, Request, str_bytes};
use crate::txn::state::{ListFilter, TxnState};

pub(super) async fn handle(ctx: &Ctx, req: Request<ListTransactionsRequest>) -> Option<ListTransactionsResponse> {
    let b = req.body;
    let mut resp = ListTransactionsResponse::default();
    if let Err(e) = ctx.txns.check_serving() {
        resp.error_code = e;
        return Some(resp);
    }
    let mut filter = ListFilter { duration_min_ms: b.duration_filter, ..ListFilter::default() };
    for s in &b.state_filters {
        match TxnState::from_name(s) {
            Some(state) => filter.states.push(state),
            None => resp.unknown_state_filters.push(s.clone()),
        }
    }
    // Only unknown filters: nothing can match them.
    if !b.state_filters.is_empty() && filter.states.is_empty() {
        return Some(resp);
    }
    filter.producer_ids = b.producer_id_filters.iter().map(|p| p.0).collect();
    let pattern = match b.transactional_id_pattern.as_ref().map(|p| regex::Regex::new(p)) {
        Some(Err(_)) => {
            resp.error_code = super::code::INVALID_REQUEST;
            return Some(resp);
        }
        Some(Ok(r)) => Some(r),
        None => None,
    };
    let listed = ctx.txns.with_state(|s| s.list(&filter, crate::state::now_ms()));
    resp.transaction_states = listed
        .into_iter()
        .filter(|l| pattern.as_ref().is_none_or(|r| r.is_match(&l.txn_id)))
        .map(|l| {
            let mut ts = TransactionState::default();
            ts.transactional_id = TransactionalId(str_bytes(l.txn_id));
            ts.producer_id = ProducerId(l.producer_id);
            ts.transaction_state = str_bytes(l.state.name());
            ts
        })
        .collect();
    Some(resp)
}
