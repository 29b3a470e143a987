//! A zero-copy view of the 61-byte RecordBatch v2 header, CRC-32C checks and in-place stamping.
//!
//! Layout (big-endian):
//! ```text
//! 0  baseOffset i64        8  batchLength i32      12 partitionLeaderEpoch i32
//! 16 magic i8              17 crc u32 (CRC-32C over bytes 21..end)
//! 21 attributes i16        23 lastOffsetDelta i32  27 baseTimestamp i64
//! 35 maxTimestamp i64      43 producerId i64       51 producerEpoch i16
//! 53 baseSequence i32      57 recordsCount i32     61 records...
//! ```
//! `batchLength` counts the bytes after itself, so a batch occupies `12 + batchLength` bytes.

use thiserror::Error;

/// Bytes in a v2 batch header, before the first record.
pub const HEADER_LEN: usize = 61;
/// Bytes before and including `batchLength`; the rest of the batch is `batchLength` long.
pub const LOG_OVERHEAD: usize = 12;
/// Offset of the CRC-covered region.
const CRC_START: usize = 21;
/// Attribute bit: the batch belongs to a transaction.
pub const ATTR_TRANSACTIONAL: i16 = 0x10;
/// Attribute bit: the batch holds a control record (a transaction marker).
pub const ATTR_CONTROL: i16 = 0x20;

/// Why a byte range is not an acceptable v2 record batch.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    #[error("batch truncated: {have} bytes, need {need}")]
    Truncated { have: usize, need: usize },
    #[error("batch length {0} is invalid")]
    BadLength(i32),
    #[error("unsupported record batch magic {0} (only v2 is accepted)")]
    UnsupportedMagic(i8),
    #[error("CRC mismatch: header says {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("batch header disagrees with its records: {0}")]
    Inconsistent(&'static str),
}

/// Compression codec from the low three attribute bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
    /// Codec ids 5..=7 are not defined by Kafka.
    Unknown(u8),
}

/// A borrowed view of one record batch (header plus records) whose length has been checked.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    bytes: &'a [u8],
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Total size of the batch starting at `bytes[0]`, from its `batchLength` field, without checking
/// that the bytes are present. Needs at least [`LOG_OVERHEAD`] bytes.
pub fn framed_len(bytes: &[u8]) -> Result<usize, BatchError> {
    if bytes.len() < LOG_OVERHEAD {
        return Err(BatchError::Truncated { have: bytes.len(), need: LOG_OVERHEAD });
    }
    let len = be_i32(bytes, 8);
    if len < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(BatchError::BadLength(len));
    }
    Ok(LOG_OVERHEAD + len as usize)
}

impl<'a> BatchView<'a> {
    /// Views the batch at the start of `bytes`. Checks the length and the magic byte only;
    /// `bytes` may extend past the batch (see [`BatchView::total_len`]).
    pub fn new(bytes: &'a [u8]) -> Result<Self, BatchError> {
        let total = framed_len(bytes)?;
        if bytes.len() < 17 {
            return Err(BatchError::Truncated { have: bytes.len(), need: HEADER_LEN });
        }
        let magic = bytes[16] as i8;
        if magic != 2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        if bytes.len() < total {
            return Err(BatchError::Truncated { have: bytes.len(), need: total });
        }
        Ok(BatchView { bytes: &bytes[..total] })
    }

    /// The batch's bytes, header included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    pub fn total_len(&self) -> usize {
        self.bytes.len()
    }
    pub fn base_offset(&self) -> i64 {
        be_i64(self.bytes, 0)
    }
    pub fn batch_length(&self) -> i32 {
        be_i32(self.bytes, 8)
    }
    pub fn partition_leader_epoch(&self) -> i32 {
        be_i32(self.bytes, 12)
    }
    pub fn magic(&self) -> i8 {
        self.bytes[16] as i8
    }
    pub fn crc(&self) -> u32 {
        u32::from_be_bytes(self.bytes[17..21].try_into().expect("4 bytes"))
    }
    pub fn attributes(&self) -> i16 {
        be_i16(self.bytes, 21)
    }
    pub fn last_offset_delta(&self) -> i32 {
        be_i32(self.bytes, 23)
    }
    pub fn base_timestamp(&self) -> i64 {
        be_i64(self.bytes, 27)
    }
    pub fn max_timestamp(&self) -> i64 {
        be_i64(self.bytes, 35)
    }
    pub fn producer_id(&self) -> i64 {
        be_i64(self.bytes, 43)
    }
    pub fn producer_epoch(&self) -> i16 {
        be_i16(self.bytes, 51)
    }
    pub fn base_sequence(&self) -> i32 {
        be_i32(self.bytes, 53)
    }
    pub fn records_count(&self) -> i32 {
        be_i32(self.bytes, 57)
    }
    /// Offset of the last record: `baseOffset + lastOffsetDelta`.
    pub fn last_offset(&self) -> i64 {
        self.base_offset().wrapping_add(self.last_offset_delta() as i64)
    }
    pub fn compression(&self) -> Compression {
        match self.attributes() & 0x7 {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            n => Compression::Unknown(n as u8),
        }
    }
    /// True when timestamps are LogAppendTime (attribute bit 3).
    pub fn is_log_append_time(&self) -> bool {
        self.attributes() & 0x8 != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes() & ATTR_TRANSACTIONAL != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes() & ATTR_CONTROL != 0
    }
    /// The bytes after the header: the records, possibly compressed.
    pub fn records(&self) -> &'a [u8] {
        &self.bytes[HEADER_LEN..]
    }
    /// CRC-32C of bytes 21..end, as it should be stored in the header.
    pub fn computed_crc(&self) -> u32 {
        crc32c::crc32c(&self.bytes[CRC_START..])
    }
    pub fn verify_crc(&self) -> Result<(), BatchError> {
        let (stored, computed) = (self.crc(), self.computed_crc());
        if stored == computed { Ok(()) } else { Err(BatchError::CrcMismatch { stored, computed }) }
    }

    /// Checks what a broker must check before accepting a produced batch, without copying or
    /// decompressing anything: the CRC, that `recordsCount == lastOffsetDelta + 1`, and for an
    /// uncompressed batch that exactly `recordsCount` length-delimited records fill the payload.
    pub fn validate_for_produce(&self) -> Result<(), BatchError> {
        self.verify_crc()?;
        let count = self.records_count();
        if count <= 0 {
            return Err(BatchError::Inconsistent("recordsCount must be positive"));
        }
        if self.last_offset_delta() != count - 1 {
            return Err(BatchError::Inconsistent("lastOffsetDelta must equal recordsCount - 1"));
        }
        if let Compression::Unknown(_) = self.compression() {
            return Err(BatchError::Inconsistent("unknown compression codec"));
        }
        if self.compression() == Compression::None {
            let walked = count_records(self.records())?;
            if walked != count as usize {
                return Err(BatchError::Inconsistent("recordsCount disagrees with records present"));
            }
        }
        Ok(())
    }
}

/// CRC-32C (Castagnoli), the checksum of v2 record batches.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Appends a zig-zag varint, as used inside records.
pub fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
}

/// Reads a zig-zag varint (as used inside records), returning the value and bytes consumed.
pub fn read_varint(bytes: &[u8]) -> Option<(i64, usize)> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let decoded = ((value >> 1) as i64) ^ -((value & 1) as i64);
            return Some((decoded, i + 1));
        }
    }
    None
}

/// Counts the length-delimited records in an uncompressed records section, checking that each
/// record's length fits and that nothing is left over.
fn count_records(mut records: &[u8]) -> Result<usize, BatchError> {
    let mut n = 0usize;
    while !records.is_empty() {
        let (len, used) = read_varint(records).ok_or(BatchError::Inconsistent("bad record length varint"))?;
        if len < 0 || (len as u64) > (records.len() - used) as u64 {
            return Err(BatchError::Inconsistent("record length exceeds the batch"));
        }
        records = &records[used + len as usize..];
        n += 1;
    }
    Ok(n)
}

/// Overwrites `baseOffset` in place. The CRC does not cover it, so it stays valid.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Overwrites `partitionLeaderEpoch` in place. The CRC does not cover it, so it stays valid.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// Splits a records blob (as carried by Produce and Fetch) into the byte ranges of whole batches.
/// A trailing partial batch is an error; use [`BatchView::new`] per item for the magic check.
pub fn batch_ranges(bytes: &[u8]) -> Result<Vec<std::ops::Range<usize>>, BatchError> {
    let mut ranges = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = framed_len(&bytes[at..])?;
        let end = at
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or(BatchError::Truncated { have: bytes.len() - at, need: len })?;
        ranges.push(at..end);
        at = end;
    }
    Ok(ranges)
}

/// Builds an uncompressed v2 batch from `(key, value)` records, for tests and internal writers.
/// Timestamps are `timestamp` for every record; offsets start at `base_offset`.
pub fn build_batch(base_offset: i64, timestamp: i64, records: &[(Option<&[u8]>, Option<&[u8]>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (key, value)) in records.iter().enumerate() {
        let mut rec = Vec::new();
        rec.push(0); // attributes
        put_varint(&mut rec, 0); // timestamp delta
        put_varint(&mut rec, i as i64); // offset delta
        match key {
            Some(k) => {
                put_varint(&mut rec, k.len() as i64);
                rec.extend_from_slice(k);
            }
            None => put_varint(&mut rec, -1),
        }
        match value {
            Some(v) => {
                put_varint(&mut rec, v.len() as i64);
                rec.extend_from_slice(v);
            }
            None => put_varint(&mut rec, -1),
        }
        put_varint(&mut rec, 0); // headers
        put_varint(&mut body, rec.len() as i64);
        body.extend_from_slice(&rec);
    }
    let count = records.len().max(1) as i32;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&base_offset.to_be_bytes());
    out.extend_from_slice(&((HEADER_LEN - LOG_OVERHEAD + body.len()) as i32).to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes()); // partitionLeaderEpoch
    out.push(2); // magic
    out.extend_from_slice(&[0; 4]); // crc, filled below
    out.extend_from_slice(&0i16.to_be_bytes()); // attributes
    out.extend_from_slice(&(count - 1).to_be_bytes());
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&(-1i64).to_be_bytes()); // producerId
    out.extend_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
    out.extend_from_slice(&(-1i32).to_be_bytes()); // baseSequence
    out.extend_from_slice(&(records.len() as i32).to_be_bytes());
    out.extend_from_slice(&body);
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Sets `producerId`, `producerEpoch`, `baseSequence` and the transactional flag of a built
/// batch and re-seals its CRC (tests and internal writers).
pub fn set_producer(batch: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32, transactional: bool) {
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    let attrs = i16::from_be_bytes([batch[21], batch[22]]);
    let attrs = if transactional { attrs | ATTR_TRANSACTIONAL } else { attrs & !ATTR_TRANSACTIONAL };
    batch[21..23].copy_from_slice(&attrs.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Builds a transaction marker: a transactional control batch with one record whose key is
/// (version 0, type 0 abort / 1 commit) and whose value is (version 0, coordinator epoch).
pub fn build_control_batch(
    producer_id: i64,
    epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    timestamp: i64,
) -> Vec<u8> {
    let mut value = vec![0, 0];
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let mut b = build_plain_control_batch(i16::from(commit), &value, timestamp);
    set_producer(&mut b, producer_id, epoch, -1, true);
    b
}

/// Builds a non-transactional control batch (producer id -1) holding one control record whose key
/// is (version 0, `control_type`) and whose value is `value`. Storage treats it as a plain batch
/// (no producer state); consumers skip control batches. Internal writers use it for their own
/// control record types; Kafka's are 0 (abort) and 1 (commit), and KRaft's 2..=6.
pub fn build_plain_control_batch(control_type: i16, value: &[u8], timestamp: i64) -> Vec<u8> {
    let mut key = [0u8; 4];
    key[2..].copy_from_slice(&control_type.to_be_bytes());
    let mut b = build_batch(0, timestamp, &[(Some(&key), Some(value))]);
    let attrs = i16::from_be_bytes([b[21], b[22]]) | ATTR_CONTROL;
    b[21..23].copy_from_slice(&attrs.to_be_bytes());
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// The single control record of an uncompressed control batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlRecord<'a> {
    /// Key version (0 for every type Kafka defines).
    pub version: i16,
    /// Control record type: 0 abort, 1 commit, others by their writer.
    pub control_type: i16,
    /// The record's value (empty when null).
    pub value: &'a [u8],
}

/// Reads the first record of a control batch as a [`ControlRecord`]. Errors (never panics) when
/// the batch is not a control batch, is compressed, or its first record is malformed.
pub fn control_record<'a>(view: &BatchView<'a>) -> Result<ControlRecord<'a>, BatchError> {
    let bad = BatchError::Inconsistent;
    if !view.is_control() {
        return Err(bad("not a control batch"));
    }
    if view.compression() != Compression::None {
        return Err(bad("compressed control batch"));
    }
    let b = view.records();
    let mut at = 0usize;
    let varint = |at: &mut usize| -> Result<i64, BatchError> {
        let (v, n) = read_varint(b.get(*at..).unwrap_or(&[])).ok_or(bad("truncated control record"))?;
        *at += n;
        Ok(v)
    };
    let _len = varint(&mut at)?;
    at += 1; // record attributes
    let _timestamp_delta = varint(&mut at)?;
    let _offset_delta = varint(&mut at)?;
    let key_len = varint(&mut at)?;
    if !(4..=i64::from(i32::MAX)).contains(&key_len) {
        return Err(bad("control key shorter than 4 bytes"));
    }
    let key = b.get(at..at.saturating_add(key_len as usize)).ok_or(bad("truncated control key"))?;
    at += key_len as usize;
    let value_len = varint(&mut at)?;
    let value = if value_len < 0 {
        &[][..]
    } else {
        b.get(at..at.saturating_add(value_len as usize)).ok_or(bad("truncated control value"))?
    };
    Ok(ControlRecord {
        version: i16::from_be_bytes([key[0], key[1]]),
        control_type: i16::from_be_bytes([key[2], key[3]]),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_batch_validates_and_stamping_keeps_crc() {
        let mut b = build_batch(0, 1_700_000_000_000, &[(Some(b"k"), Some(b"v")), (None, Some(b"w"))]);
        let v = BatchView::new(&b).unwrap();
        v.validate_for_produce().unwrap();
        assert_eq!(v.records_count(), 2);
        assert_eq!(v.last_offset_delta(), 1);
        set_base_offset(&mut b, 42);
        set_partition_leader_epoch(&mut b, 7);
        let v = BatchView::new(&b).unwrap();
        assert_eq!((v.base_offset(), v.partition_leader_epoch(), v.last_offset()), (42, 7, 43));
        v.verify_crc().unwrap();
    }

    #[test]
    fn header_disagreeing_with_records_is_refused() {
        let mut b = build_batch(0, 0, &[(None, Some(b"a")), (None, Some(b"b"))]);
        b[57..61].copy_from_slice(&3i32.to_be_bytes()); // recordsCount 3, only 2 present
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(BatchView::new(&b).unwrap().validate_for_produce(), Err(BatchError::Inconsistent(_))));
    }

    #[test]
    fn bad_crc_and_old_magic_are_refused() {
        let mut b = build_batch(0, 0, &[(None, Some(b"a"))]);
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(matches!(BatchView::new(&b).unwrap().verify_crc(), Err(BatchError::CrcMismatch { .. })));
        b[16] = 1;
        assert_eq!(BatchView::new(&b).unwrap_err(), BatchError::UnsupportedMagic(1));
    }

    #[test]
    fn plain_control_batch_round_trips_and_refuses_garbage() {
        let b = build_plain_control_batch(100, b"payload", 5);
        let v = BatchView::new(&b).unwrap();
        v.verify_crc().unwrap();
        v.validate_for_produce().unwrap();
        assert!(v.is_control() && !v.is_transactional());
        assert_eq!((v.producer_id(), v.records_count()), (-1, 1));
        let r = control_record(&v).unwrap();
        assert_eq!(r, ControlRecord { version: 0, control_type: 100, value: b"payload" });
        let marker = build_control_batch(7, 0, true, 3, 5);
        let r = control_record(&BatchView::new(&marker).unwrap()).unwrap();
        assert_eq!((r.version, r.control_type, r.value.len()), (0, 1, 6));
        let plain = build_batch(0, 0, &[(Some(b"k"), Some(b"v"))]);
        assert!(control_record(&BatchView::new(&plain).unwrap()).is_err());
        let mut cut = b.clone();
        let total = cut.len();
        cut.truncate(total - 4);
        let n = (cut.len() - LOG_OVERHEAD) as i32;
        cut[8..12].copy_from_slice(&n.to_be_bytes());
        assert!(control_record(&BatchView::new(&cut).unwrap()).is_err());
    }

    #[test]
    fn batch_ranges_split_and_refuse_partial_tail() {
        let a = build_batch(0, 0, &[(None, Some(b"a"))]);
        let mut blob = a.clone();
        blob.extend_from_slice(&a);
        assert_eq!(batch_ranges(&blob).unwrap().len(), 2);
        blob.truncate(blob.len() - 3);
        assert!(batch_ranges(&blob).is_err());
    }
}
