//! Consumer groups: the classic protocol's coordinator, KIP-848 consumer groups, committed
//! offsets, and their records in `__consumer_offsets`.

pub(crate) mod assignor;
pub(crate) mod consumer;
