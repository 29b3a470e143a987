//! Transactions (KIP-98): the transaction coordinator's pure state machine and its records in
//! `__transaction_state`. The driver that owns the lock, appends records and writes markers is
//! not here yet; until it lands, the items below are only used by their tests.
#![allow(dead_code)] // the driver (handlers, marker writer, ticker) is written next

pub(crate) mod state;
pub(crate) mod store;
