//! Creek's Kafka wire protocol layer.
//!
//! What it is: frame splitting with a size limit, request-header parsing (v0–v2) that never
//! panics, request-body decoding through `kafka-protocol` under an allocation budget, response
//! encoding, the table of implemented API versions, and a zero-copy view of the RecordBatch v2
//! header with CRC-32C checks.
//!
//! What it deliberately does not do: sockets, tokio, files. Records inside batches are never
//! decoded on the produce/fetch path; batches stay opaque bytes.

pub mod batch;
pub mod budget;
pub mod codec;
pub mod frame;
pub mod gather;
pub mod header;
pub mod records;

pub use kafka_protocol;
