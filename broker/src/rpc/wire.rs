//! The internal RPC wire format: the handshake and batch frames, encoded and decoded without I/O.
//!
//! Handshake (each side sends one, the dialer first): magic `CRPC`, version (u16), node id (u64),
//! cluster id length (u8) and the cluster id's bytes. Then batch frames in both directions: a u32
//! length of the rest, then messages back to back, each a 23-byte header (tag u8, request id u64,
//! group u64, kind u16, payload length u32) and its payload. All integers are big-endian.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{GroupId, MessageKind, NodeId};

pub(crate) const MAGIC: [u8; 4] = *b"CRPC";
pub(crate) const VERSION: u16 = 1;
/// Magic, version, node id and the cluster id's length.
pub(crate) const HELLO_FIXED_BYTES: usize = 4 + 2 + 8 + 1;
pub(crate) const CLUSTER_ID_BYTES_MAX: usize = u8::MAX as usize;
/// Tag, request id, group, kind, payload length.
pub(crate) const MESSAGE_HEADER_BYTES: usize = 1 + 8 + 8 + 2 + 4;
/// Payloads up to this size are copied next to their header, so a batch of small messages is one
/// contiguous buffer (one write); larger ones are written from their own `Bytes`.
const INLINE_PAYLOAD_BYTES_MAX: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum WireError {
    #[error("bad magic {0:02x?}")]
    Magic([u8; 4]),
    #[error("protocol version {0}, expected {VERSION}")]
    Version(u16),
    #[error("message truncated: {needed} bytes needed, {left} left")]
    Truncated { needed: usize, left: usize },
    #[error("unknown message tag {0}")]
    Tag(u8),
}

/// What a message is; requests and responses share a request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    OneWay = 0,
    Request = 1,
    Response = 2,
    /// The handler returned no answer to a request.
    NoAnswer = 3,
}

impl Tag {
    fn from_u8(v: u8) -> Result<Tag, WireError> {
        Ok(match v {
            0 => Tag::OneWay,
            1 => Tag::Request,
            2 => Tag::Response,
            3 => Tag::NoAnswer,
            other => return Err(WireError::Tag(other)),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) tag: Tag,
    pub(crate) request_id: u64,
    pub(crate) group: GroupId,
    pub(crate) kind: MessageKind,
    pub(crate) payload: Bytes,
}

impl Message {
    /// Bytes this message takes in a frame.
    pub(crate) fn wire_bytes(&self) -> usize {
        MESSAGE_HEADER_BYTES + self.payload.len()
    }
}

pub(crate) fn encode_hello(node_id: NodeId, cluster_id: &str) -> Vec<u8> {
    assert!(cluster_id.len() <= CLUSTER_ID_BYTES_MAX, "cluster id checked at start");
    let mut out = Vec::with_capacity(HELLO_FIXED_BYTES + cluster_id.len());
    out.extend_from_slice(&MAGIC);
    out.put_u16(VERSION);
    out.put_u64(node_id);
    out.put_u8(cluster_id.len() as u8);
    out.extend_from_slice(cluster_id.as_bytes());
    out
}

/// Checks the fixed part of a hello; returns the sender's node id and the cluster id's length.
pub(crate) fn decode_hello_fixed(fixed: &[u8; HELLO_FIXED_BYTES]) -> Result<(NodeId, usize), WireError> {
    let mut b = &fixed[..];
    let mut magic = [0u8; 4];
    b.copy_to_slice(&mut magic);
    if magic != MAGIC {
        return Err(WireError::Magic(magic));
    }
    let version = b.get_u16();
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    Ok((b.get_u64(), usize::from(b.get_u8())))
}

/// Encodes `messages` as one frame (length prefix included) in as few chunks as possible.
pub(crate) fn encode_batch(messages: &[Message]) -> Vec<Bytes> {
    let body: usize = messages.iter().map(Message::wire_bytes).sum();
    let body = u32::try_from(body).expect("batches are capped far below 4 GiB");
    let mut chunks = Vec::new();
    let mut buf = BytesMut::with_capacity(4 + messages.len() * (MESSAGE_HEADER_BYTES + 64));
    buf.put_u32(body);
    for m in messages {
        buf.put_u8(m.tag as u8);
        buf.put_u64(m.request_id);
        buf.put_u64(m.group.0);
        buf.put_u16(m.kind.0);
        buf.put_u32(u32::try_from(m.payload.len()).expect("payloads are capped below 4 GiB"));
        if m.payload.len() <= INLINE_PAYLOAD_BYTES_MAX {
            buf.extend_from_slice(&m.payload);
        } else {
            chunks.push(buf.split().freeze());
            chunks.push(m.payload.clone());
        }
    }
    if !buf.is_empty() {
        chunks.push(buf.freeze());
    }
    chunks
}

/// Decodes a frame's body (after the length prefix). Payloads share the frame's memory. Any
/// malformed message fails the whole frame.
pub(crate) fn decode_batch(mut body: Bytes) -> Result<Vec<Message>, WireError> {
    let mut out = Vec::new();
    while body.has_remaining() {
        if body.len() < MESSAGE_HEADER_BYTES {
            return Err(WireError::Truncated { needed: MESSAGE_HEADER_BYTES, left: body.len() });
        }
        let tag = Tag::from_u8(body.get_u8())?;
        let request_id = body.get_u64();
        let group = GroupId(body.get_u64());
        let kind = MessageKind(body.get_u16());
        let len = body.get_u32() as usize;
        if len > body.len() {
            return Err(WireError::Truncated { needed: len, left: body.len() });
        }
        out.push(Message { tag, request_id, group, kind, payload: body.split_to(len) });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: Tag, id: u64, payload: &[u8]) -> Message {
        Message {
            tag,
            request_id: id,
            group: GroupId(id * 3),
            kind: MessageKind(7),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn batches_round_trip_with_small_and_large_payloads() {
        let msgs = vec![msg(Tag::Request, 1, b"abc"), msg(Tag::OneWay, 2, &[9u8; 5000]), msg(Tag::NoAnswer, 3, b"")];
        let frame: Vec<u8> = encode_batch(&msgs).concat();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode_batch(Bytes::from(frame[4..].to_vec())).unwrap(), msgs);
    }

    #[test]
    fn every_truncation_and_bad_tag_is_an_error_not_a_panic() {
        let frame: Vec<u8> = encode_batch(&[msg(Tag::Response, 1, b"hello")]).concat();
        for cut in 5..frame.len() {
            assert!(decode_batch(Bytes::from(frame[4..cut].to_vec())).is_err(), "cut at {cut}");
        }
        let mut bad = frame[4..].to_vec();
        bad[0] = 9;
        assert_eq!(decode_batch(Bytes::from(bad)), Err(WireError::Tag(9)));
    }

    #[test]
    fn hello_checks_magic_and_version() {
        let hello = encode_hello(7, "cluster");
        let fixed: [u8; HELLO_FIXED_BYTES] = hello[..HELLO_FIXED_BYTES].try_into().unwrap();
        assert_eq!(decode_hello_fixed(&fixed), Ok((7, 7)));
        let mut bad = fixed;
        bad[0] = b'X';
        assert!(matches!(decode_hello_fixed(&bad), Err(WireError::Magic(_))));
        let mut bad = fixed;
        bad[5] = 2;
        assert_eq!(decode_hello_fixed(&bad), Err(WireError::Version(2)));
    }
}
