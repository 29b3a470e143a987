//! Consumer groups: the classic protocol's coordinator, KIP-848 consumer groups, committed
//! offsets, and their records in `__consumer_offsets`.

pub(crate) mod assignor;
pub(crate) mod classic;
pub(crate) mod consumer;
pub(crate) mod consumer_store;
pub(crate) mod coordinator;
pub(crate) mod offsets;
pub(crate) mod store;
