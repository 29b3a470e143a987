//! Request bodies in (under an allocation budget, panics contained) and framed responses out.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ProduceResponse};
use kafka_protocol::protocol::{Decodable, Encodable};
use thiserror::Error;

use crate::budget::{Budget, GuardedBuf, allocator_installed};
use crate::header::write_response_header;

/// Fixed allowance for decoding any body, on top of [`BUDGET_BYTES_PER_BODY_BYTE`].
pub const BUDGET_BYTES_BASE: usize = 64 * 1024;
/// Decoded structures may be this many times larger than their encoded bytes.
pub const BUDGET_BYTES_PER_BODY_BYTE: usize = 64;
/// No single request may allocate more than this while decoding.
pub const BUDGET_BYTES_MAX: usize = 512 * 1024 * 1024;

/// Why a request body could not be decoded. The request is refused; nothing else happens.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("malformed request body: {0}")]
    Malformed(String),
    #[error("request body would need more than {0} bytes of memory to decode")]
    OverBudget(usize),
    #[error("decoder panicked on malformed input")]
    Panicked,
    #[error("BudgetAllocator is not the global allocator; refusing to decode untrusted bytes")]
    NoBudgetAllocator,
}

/// Decodes an untrusted request body of type `T` at `version`.
///
/// Memory is bounded by a budget proportional to the body size (see [`crate::budget`]); a panic
/// inside the decoder becomes [`DecodeError::Panicked`]. Trailing bytes are ignored, as Kafka does.
pub fn decode_body<T: Decodable>(body: Bytes, version: i16) -> Result<T, DecodeError> {
    if !allocator_installed() {
        return Err(DecodeError::NoBudgetAllocator);
    }
    let limit = BUDGET_BYTES_BASE
        .saturating_add(body.len().saturating_mul(BUDGET_BYTES_PER_BODY_BYTE))
        .min(BUDGET_BYTES_MAX);
    let budget = Budget::start(limit);
    let mut buf = GuardedBuf::new(body);
    let outcome = catch_unwind(AssertUnwindSafe(|| T::decode(&mut buf, version)));
    let exhausted = budget.exhausted();
    // Free whatever the decoder built before the budget ends, so the result is not kept alive.
    let result = match outcome {
        Ok(Ok(_)) if exhausted => Err(DecodeError::OverBudget(limit)),
        Ok(Ok(msg)) => Ok(msg),
        Ok(Err(_)) if exhausted => Err(DecodeError::OverBudget(limit)),
        Ok(Err(e)) => Err(DecodeError::Malformed(e.to_string())),
        Err(_) => Err(DecodeError::Panicked),
    };
    drop(budget);
    result
}

/// Decodes a Produce body of any version 0..=max. Versions 0–2 are version 3 without the leading
/// `transactional_id`, so they are decoded as v3 behind a null one.
pub fn decode_produce(
    body: Bytes,
    version: i16,
) -> Result<kafka_protocol::messages::ProduceRequest, DecodeError> {
    if version >= 3 {
        return decode_body(body, version);
    }
    let mut shimmed = BytesMut::with_capacity(body.len() + 2);
    shimmed.put_i16(-1);
    shimmed.extend_from_slice(&body);
    decode_body(shimmed.freeze(), 3)
}

/// The response header version for `key` at `version`.
pub fn response_header_version(key: ApiKey, version: i16) -> i16 {
    if key == ApiKey::ApiVersions { 0 } else { key.response_header_version(version) }
}

/// Encodes a whole response frame: length prefix, header, body.
pub fn encode_response<T: Encodable + 'static>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<BytesMut, String> {
    let mut out = BytesMut::with_capacity(64);
    out.put_i32(0);
    write_response_header(&mut out, correlation_id, response_header_version(key, version));
    let legacy_produce = (body as &dyn std::any::Any).downcast_ref::<ProduceResponse>().filter(|_| version < 2);
    match legacy_produce {
        Some(resp) => encode_produce_response_v0_v1(resp, version, &mut out),
        // Produce v2 responses are laid out exactly as v3.
        None if key == ApiKey::Produce && version == 2 => body.encode(&mut out, 3).map_err(|e| e.to_string()),
        None => body.encode(&mut out, version).map_err(|e| e.to_string()),
    }
    .map_err(|e| format!("{key:?} v{version}: {e}"))?;
    let len = (out.len() - 4) as i32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Produce responses v0 and v1, which `kafka-protocol` does not encode: v1 is v2 without
/// `log_append_time_ms`, and v0 is v1 without `throttle_time_ms`.
fn encode_produce_response_v0_v1(resp: &ProduceResponse, version: i16, out: &mut BytesMut) -> Result<(), String> {
    let put_str = |out: &mut BytesMut, s: &[u8]| -> Result<(), String> {
        let len = i16::try_from(s.len()).map_err(|_| "topic name too long".to_string())?;
        out.put_i16(len);
        out.put_slice(s);
        Ok(())
    };
    out.put_i32(resp.responses.len() as i32);
    for t in &resp.responses {
        put_str(out, t.name.0.as_bytes())?;
        out.put_i32(t.partition_responses.len() as i32);
        for p in &t.partition_responses {
            out.put_i32(p.index);
            out.put_i16(p.error_code);
            out.put_i64(p.base_offset);
        }
    }
    if version >= 1 {
        out.put_i32(resp.throttle_time_ms);
    }
    Ok(())
}
