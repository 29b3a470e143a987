//! A response buffer that keeps record batches as shared `Bytes` instead of copying them, so a
//! Fetch response can go to the socket as a vectored write straight from the segment maps.
//!
//! `kafka-protocol` encodes a message by calling `put_slice` on its buffer; for a records field
//! the slice is the `Bytes` we put in the message. [`GatherBuf`] recognises those slices by
//! address and length and stores a clone of the `Bytes` (a reference count, no copy) as its own
//! chunk; every other byte goes into an owned chunk.
#![allow(unsafe_code)]

use std::ops::Range;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;

/// Slices shorter than this are copied: a separate chunk costs more than the copy.
pub const SHARE_MIN_BYTES: usize = 512;

/// An encoding buffer that gathers owned bytes and shared record chunks, in order.
pub struct GatherBuf {
    chunks: Vec<Bytes>,
    cur: BytesMut,
    shareable: Vec<Bytes>,
    /// Bytes in `chunks`, so `offset()` is the logical position.
    done_len: usize,
}

impl GatherBuf {
    /// A buffer that will share (not copy) any of `shareable` when the encoder writes it.
    pub fn new(shareable: Vec<Bytes>) -> Self {
        GatherBuf { chunks: Vec::new(), cur: BytesMut::with_capacity(256), shareable, done_len: 0 }
    }

    fn seal_current(&mut self) {
        if !self.cur.is_empty() {
            let owned = self.cur.split().freeze();
            self.done_len += owned.len();
            self.chunks.push(owned);
        }
    }

    /// The encoded bytes as chunks, in order.
    pub fn into_chunks(mut self) -> Vec<Bytes> {
        self.seal_current();
        self.chunks
    }

    /// Total encoded length.
    pub fn len(&self) -> usize {
        self.done_len + self.cur.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// SAFETY: every method delegates to the owned `BytesMut`, which upholds BufMut's contract;
// `put_slice` only appends (to `cur` or as a whole new chunk) and never exposes uninitialised
// memory.
unsafe impl BufMut for GatherBuf {
    fn remaining_mut(&self) -> usize {
        self.cur.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialised `cnt` bytes of the chunk `chunk_mut` returned, which
        // is `cur`'s.
        unsafe { self.cur.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.cur.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= SHARE_MIN_BYTES {
            let found = self.shareable.iter().find(|b| b.as_ptr() == src.as_ptr() && b.len() == src.len()).cloned();
            if let Some(shared) = found {
                self.seal_current();
                self.done_len += shared.len();
                self.chunks.push(shared);
                return;
            }
        }
        self.cur.extend_from_slice(src);
    }
}

impl ByteBufMut for GatherBuf {
    fn offset(&self) -> usize {
        self.len()
    }

    fn seek(&mut self, offset: usize) {
        // Message encoding never seeks (only record-batch building does); allow forward
        // padding within the owned chunk, which is all ByteBufMut's defaults need.
        assert!(offset >= self.done_len, "GatherBuf cannot seek back into a sealed chunk");
        self.cur.resize(offset - self.done_len, 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        assert!(r.start >= self.done_len, "GatherBuf cannot address a sealed chunk");
        &mut self.cur[r.start - self.done_len..r.end - self.done_len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_slices_are_shared_and_everything_else_copied() {
        let records = Bytes::from(vec![9u8; 4096]);
        let mut buf = GatherBuf::new(vec![records.clone()]);
        buf.put_i32(7);
        buf.put_slice(&records);
        buf.put_slice(&[1, 2, 3]);
        buf.put_slice(&records[..]);
        let chunks = buf.into_chunks();
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks[1].as_ptr(), records.as_ptr(), "shared, not copied");
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut expected = 7i32.to_be_bytes().to_vec();
        expected.extend_from_slice(&records);
        expected.extend_from_slice(&[1, 2, 3]);
        expected.extend_from_slice(&records);
        assert_eq!(joined, expected);
    }
}
