//! Transactions (KIP-98): the transaction coordinator's pure state machine (`state`), its
//! records in `__transaction_state` (`store`), the driver that appends them and writes markers
//! (`coordinator`), and producer id allocation (`producer_ids`).

pub(crate) mod coordinator;
pub(crate) mod markers;
pub(crate) mod producer_ids;
pub(crate) mod state;
pub(crate) mod store;
