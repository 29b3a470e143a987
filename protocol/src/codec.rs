//! Request bodies in (under an allocation budget, panics contained) and framed responses out.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, FetchResponse, ProduceResponse};
use kafka_protocol::protocol::{Decodable, Encodable};
use thiserror::Error;

use crate::budget::{Budget, GuardedBuf, allocator_installed};
use crate::gather::GatherBuf;
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
    let limit =
        BUDGET_BYTES_BASE.saturating_add(body.len().saturating_mul(BUDGET_BYTES_PER_BODY_BYTE)).min(BUDGET_BYTES_MAX);
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

/// Decodes the body of a request for `key` at `version`, as [`decode_body`] does, except that
/// Produce v0–2 (which `kafka-protocol` does not decode) are version 3 without the leading
/// `transactional_id`, so they are decoded as v3 behind a null one.
pub fn decode_request<T: Decodable>(key: ApiKey, body: Bytes, version: i16) -> Result<T, DecodeError> {
    if key != ApiKey::Produce || version >= 3 {
        return decode_body(body, version);
    }
    let mut shimmed = BytesMut::with_capacity(body.len() + 2);
    shimmed.put_i16(-1);
    shimmed.extend_from_slice(&body);
    decode_body(shimmed.freeze(), 3)
}

/// Decodes a Produce body of any version 0..=max (see [`decode_request`]).
pub fn decode_produce(body: Bytes, version: i16) -> Result<kafka_protocol::messages::ProduceRequest, DecodeError> {
    decode_request(ApiKey::Produce, body, version)
}

/// The response header version for `key` at `version`.
pub fn response_header_version(key: ApiKey, version: i16) -> i16 {
    if key == ApiKey::ApiVersions { 0 } else { key.response_header_version(version) }
}

/// Encodes a whole response frame (length prefix, header, body) as chunks to write in order.
///
/// Record batches in a Fetch response are not copied: their `Bytes` (zero-copy slices of segment
/// maps) become chunks of their own (see [`crate::gather`]).
pub fn encode_response<T: Encodable + 'static>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Vec<Bytes>, String> {
    let any = body as &dyn std::any::Any;
    let shareable: Vec<Bytes> = any
        .downcast_ref::<FetchResponse>()
        .map(|f| f.responses.iter().flat_map(|t| t.partitions.iter().filter_map(|p| p.records.clone())).collect())
        .unwrap_or_default();
    let mut out = GatherBuf::new(shareable);
    let mut header = BytesMut::with_capacity(8);
    write_response_header(&mut header, correlation_id, response_header_version(key, version));
    out.put_slice(&header);
    match any.downcast_ref::<ProduceResponse>().filter(|_| version < 2) {
        Some(resp) => encode_produce_response_v0_v1(resp, version, &mut out),
        // Produce v2 responses are laid out exactly as v3.
        None if key == ApiKey::Produce && version == 2 => body.encode(&mut out, 3).map_err(|e| e.to_string()),
        None => body.encode(&mut out, version).map_err(|e| e.to_string()),
    }
    .map_err(|e| format!("{key:?} v{version}: {e}"))?;
    let len = i32::try_from(out.len()).map_err(|_| format!("{key:?} response exceeds 2 GiB"))?;
    let mut chunks = vec![Bytes::copy_from_slice(&len.to_be_bytes())];
    chunks.extend(out.into_chunks());
    Ok(chunks)
}

/// Produce responses v0 and v1, which `kafka-protocol` does not encode: v1 is v2 without
/// `log_append_time_ms`, and v0 is v1 without `throttle_time_ms`.
fn encode_produce_response_v0_v1(resp: &ProduceResponse, version: i16, out: &mut GatherBuf) -> Result<(), String> {
    let put_str = |out: &mut GatherBuf, s: &[u8]| -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::protocol::Decodable;

    #[test]
    fn fetch_responses_share_record_bytes_and_still_decode() {
        let records = Bytes::from(crate::batch::build_batch(5, 1, &[(Some(&b"k"[..]), Some(&[3u8; 2000][..]))]));
        let mut pd = PartitionData::default();
        pd.records = Some(records.clone());
        pd.high_watermark = 6;
        let mut t = FetchableTopicResponse::default();
        t.partitions = vec![pd];
        let mut resp = FetchResponse::default();
        resp.responses = vec![t];
        for version in [4, 11, 12, 16] {
            let chunks = encode_response(ApiKey::Fetch, version, 9, &resp).unwrap();
            assert!(chunks.iter().any(|c| c.as_ptr() == records.as_ptr()), "v{version}: records were copied");
            let whole = chunks.concat();
            assert_eq!(i32::from_be_bytes(whole[..4].try_into().unwrap()) as usize, whole.len() - 4);
            let mut body = Bytes::from(whole).slice(4..);
            let _ = kafka_protocol::messages::ResponseHeader::decode(
                &mut body,
                ApiKey::Fetch.response_header_version(version),
            )
            .unwrap();
            let back = FetchResponse::decode(&mut body, version).unwrap();
            assert_eq!(back.responses[0].partitions[0].records.as_ref(), Some(&records));
        }
    }
}
