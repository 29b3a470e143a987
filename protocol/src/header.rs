//! Request and response headers, parsed and written by hand so that no input can panic.
//!
//! `kafka-protocol` 0.18 panics on a 2-byte frame in `decode_request_header_from_buffer`, so the
//! header never goes through it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use thiserror::Error;

/// A parsed request header. `client_id` is `None` for header v0 and for a null client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    #[error("request header truncated")]
    Truncated,
    #[error("client id length {0} is invalid")]
    BadClientId(i16),
    #[error("bad tagged fields in request header")]
    BadTaggedFields,
}

/// The request header version a request with this key and version uses, or `None` for an API
/// key this library does not know.
pub fn request_header_version(api_key: i16, api_version: i16) -> Option<i16> {
    let key = ApiKey::try_from(api_key).ok()?;
    Some(key.request_header_version(api_version))
}

/// Reads an unsigned varint as used by flexible versions.
pub fn get_uvarint(buf: &mut Bytes) -> Option<u32> {
    let mut value: u32 = 0;
    for i in 0..5 {
        if !buf.has_remaining() {
            return None;
        }
        let b = buf.get_u8();
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Skips a tagged-field section, checking every length against the bytes present.
pub fn skip_tagged_fields(buf: &mut Bytes) -> Option<()> {
    let n = get_uvarint(buf)?;
    for _ in 0..n {
        let _tag = get_uvarint(buf)?;
        let len = get_uvarint(buf)? as usize;
        if buf.remaining() < len {
            return None;
        }
        buf.advance(len);
    }
    Some(())
}

/// Parses the header at the front of `frame`, leaving `frame` at the body. `header_version` is
/// 0, 1 or 2 (from [`request_header_version`]); other values are treated as 1.
pub fn parse_request_header(frame: &mut Bytes, header_version: i16) -> Result<RequestHeader, HeaderError> {
    if frame.remaining() < 8 {
        return Err(HeaderError::Truncated);
    }
    let api_key = frame.get_i16();
    let api_version = frame.get_i16();
    let correlation_id = frame.get_i32();
    let mut client_id = None;
    if header_version >= 1 {
        if frame.remaining() < 2 {
            return Err(HeaderError::Truncated);
        }
        let len = frame.get_i16();
        if len < -1 {
            return Err(HeaderError::BadClientId(len));
        }
        if len >= 0 {
            let len = len as usize;
            if frame.remaining() < len {
                return Err(HeaderError::Truncated);
            }
            client_id = Some(String::from_utf8_lossy(&frame.split_to(len)).into_owned());
        }
    }
    if header_version >= 2 {
        skip_tagged_fields(frame).ok_or(HeaderError::BadTaggedFields)?;
    }
    Ok(RequestHeader { api_key, api_version, correlation_id, client_id })
}

/// Writes a response header: the correlation id, and for header v1 an empty tagged-field section.
pub fn write_response_header(out: &mut BytesMut, correlation_id: i32, header_version: i16) {
    out.put_i32(correlation_id);
    if header_version >= 1 {
        out.put_u8(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_by_version_and_never_panic_on_short_input() {
        let mut v1 = Bytes::from_static(&[0, 3, 0, 4, 0, 0, 0, 9, 0, 2, b'c', b'k', 0xaa]);
        let h = parse_request_header(&mut v1, 1).unwrap();
        assert_eq!((h.api_key, h.api_version, h.correlation_id), (3, 4, 9));
        assert_eq!(h.client_id.as_deref(), Some("ck"));
        assert_eq!(&v1[..], &[0xaa]);
        for n in 0..13 {
            for hv in 0..3 {
                let mut b = Bytes::copy_from_slice(&[0, 3, 0, 4, 0, 0, 0, 9, 0, 2, b'c', b'k', 0x80][..n]);
                let _ = parse_request_header(&mut b, hv);
            }
        }
        let mut neg = Bytes::from_static(&[0, 3, 0, 4, 0, 0, 0, 9, 0x80, 0]);
        assert_eq!(parse_request_header(&mut neg, 1), Err(HeaderError::BadClientId(i16::MIN)));
    }
}
