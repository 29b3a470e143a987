//! Record-level access for the few features that need it (ListOffsets by timestamp, compaction,
//! later CDC): bounded decompression and compression, a record iterator, and a batch builder.
//! Never used on the produce or fetch path.
//!
//! [`DecodedBatch`] decompresses a batch (with a cap) and iterates its [`Record`]s as borrowed
//! slices; [`BatchBuilder`] writes records back into a v2 batch with a chosen codec, keeping the
//! header fields of a template (offsets, timestamps, producer fields, leader epoch). Codecs that
//! can be written: none, gzip, snappy (xerial framing, as the Java client writes) and lz4 (frame
//! format); zstd is only decoded here (`ruzstd`'s encoder is young and not relied on), see
//! [`can_compress`].

use std::borrow::Cow;
use std::io::{Read, Write};

use thiserror::Error;

use crate::batch::{BatchView, Compression, HEADER_LEN, LOG_OVERHEAD, put_varint, read_varint};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordsError {
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("decompressed records exceed {0} bytes")]
    TooLarge(usize),
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    #[error("compression failed: {0}")]
    Compress(String),
    #[error("cannot write records with codec {0:?}")]
    UnsupportedCodec(Compression),
    #[error("record does not fit the batch: {0}")]
    OutOfBatch(&'static str),
}

const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";

fn read_capped(mut reader: impl Read, out_max: usize) -> Result<Vec<u8>, RecordsError> {
    let mut out = Vec::new();
    (&mut reader)
        .take(out_max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| RecordsError::Decompress(e.to_string()))?;
    if out.len() > out_max {
        return Err(RecordsError::TooLarge(out_max));
    }
    Ok(out)
}

fn snappy_block(data: &[u8], out: &mut Vec<u8>, out_max: usize) -> Result<(), RecordsError> {
    let len = snap::raw::decompress_len(data).map_err(|e| RecordsError::Decompress(e.to_string()))?;
    if out.len() + len > out_max {
        return Err(RecordsError::TooLarge(out_max));
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new()
        .decompress(data, &mut out[start..])
        .map_err(|e| RecordsError::Decompress(e.to_string()))?;
    Ok(())
}

/// Decompresses a batch's records section, refusing output larger than `out_max`.
pub fn decompress(codec: Compression, data: &[u8], out_max: usize) -> Result<Vec<u8>, RecordsError> {
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => read_capped(flate2::read::MultiGzDecoder::new(data), out_max),
        Compression::Lz4 => read_capped(lz4_flex::frame::FrameDecoder::new(data), out_max),
        Compression::Zstd => {
            let decoder =
                ruzstd::decoding::StreamingDecoder::new(data).map_err(|e| RecordsError::Decompress(e.to_string()))?;
            read_capped(decoder, out_max)
        }
        Compression::Snappy => {
            let mut out = Vec::new();
            if data.starts_with(XERIAL_MAGIC) && data.len() >= 16 {
                // Java's xerial framing: magic, version, compat, then (i32 length, block)*.
                let mut rest = &data[16..];
                while !rest.is_empty() {
                    if rest.len() < 4 {
                        return Err(RecordsError::Malformed("truncated xerial snappy chunk"));
                    }
                    let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    let block = rest.get(4..4 + n).ok_or(RecordsError::Malformed("truncated xerial snappy chunk"))?;
                    snappy_block(block, &mut out, out_max)?;
                    rest = &rest[4 + n..];
                }
            } else {
                snappy_block(data, &mut out, out_max)?;
            }
            Ok(out)
        }
        Compression::Unknown(n) => Err(RecordsError::Decompress(format!("unknown codec {n}"))),
    }
}

/// `(offset, timestamp)` of every record in the batch, decompressing up to `out_max` bytes.
/// LogAppendTime batches report the batch's max timestamp for every record, as Kafka does.
pub fn record_timestamps(view: &BatchView<'_>, out_max: usize) -> Result<Vec<(i64, i64)>, RecordsError> {
    let raw = decompress(view.compression(), view.records(), out_max)?;
    let mut rest = &raw[..];
    let mut out = Vec::with_capacity(view.records_count().clamp(0, 4096) as usize);
    let next = |rest: &mut &[u8]| -> Result<i64, RecordsError> {
        let (v, used) = read_varint(rest).ok_or(RecordsError::Malformed("bad varint"))?;
        *rest = &rest[used..];
        Ok(v)
    };
    while !rest.is_empty() {
        let len = next(&mut rest)?;
        if len < 0 || len as usize > rest.len() {
            return Err(RecordsError::Malformed("record length exceeds the batch"));
        }
        let (mut record, tail) = rest.split_at(len as usize);
        rest = tail;
        if record.is_empty() {
            return Err(RecordsError::Malformed("empty record"));
        }
        record = &record[1..]; // attributes
        let ts_delta = next(&mut record)?;
        let offset_delta = next(&mut record)?;
        let ts =
            if view.is_log_append_time() { view.max_timestamp() } else { view.base_timestamp().wrapping_add(ts_delta) };
        out.push((view.base_offset().wrapping_add(offset_delta), ts));
    }
    Ok(out)
}

/// One record of a batch, borrowed from the (decompressed) records section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Absolute offset: the batch's base offset plus the record's offset delta.
    pub offset: i64,
    /// Absolute timestamp: base timestamp plus delta, or the batch's max timestamp for
    /// LogAppendTime batches (as Kafka reports it).
    pub timestamp: i64,
    pub attributes: i8,
    /// `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// `None` for a null value (a tombstone on compacted topics).
    pub value: Option<&'a [u8]>,
    /// The headers section exactly as stored: a varint count, then each header's key and value.
    pub headers: &'a [u8],
    /// How many headers `headers` holds.
    pub header_count: usize,
}

impl<'a> Record<'a> {
    /// The record's headers as `(key, value)` pairs (already validated by the iterator).
    pub fn header_pairs(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        let mut rest = self.headers;
        let count = take_varint(&mut rest).unwrap_or(0).max(0);
        (0..count).map_while(move |_| {
            let k = take_bytes(&mut rest).ok()??;
            let v = take_bytes(&mut rest).ok()?;
            Some((k, v))
        })
    }
}

fn take_varint(rest: &mut &[u8]) -> Result<i64, RecordsError> {
    let (v, used) = read_varint(rest).ok_or(RecordsError::Malformed("bad varint"))?;
    *rest = &rest[used..];
    Ok(v)
}

/// A varint length (-1 = null) and that many bytes.
fn take_bytes<'a>(rest: &mut &'a [u8]) -> Result<Option<&'a [u8]>, RecordsError> {
    let len = take_varint(rest)?;
    if len == -1 {
        return Ok(None);
    }
    if len < 0 || len as u64 > rest.len() as u64 {
        return Err(RecordsError::Malformed("field length exceeds the record"));
    }
    let (b, tail) = rest.split_at(len as usize);
    *rest = tail;
    Ok(Some(b))
}

/// Iterator over the records of an uncompressed records section. Yields an error once and then
/// stops at the first malformed record; never panics on any input.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
    base_offset: i64,
    base_timestamp: i64,
    log_append_time: Option<i64>,
    failed: bool,
}

impl<'a> RecordIter<'a> {
    /// Walks `records` (already decompressed) of the batch `view`.
    pub fn new(view: &BatchView<'_>, records: &'a [u8]) -> Self {
        RecordIter {
            rest: records,
            base_offset: view.base_offset(),
            base_timestamp: view.base_timestamp(),
            log_append_time: view.is_log_append_time().then(|| view.max_timestamp()),
            failed: false,
        }
    }

    fn parse(&mut self) -> Result<Record<'a>, RecordsError> {
        let len = take_varint(&mut self.rest)?;
        if len < 0 || len as u64 > self.rest.len() as u64 {
            return Err(RecordsError::Malformed("record length exceeds the batch"));
        }
        let (mut r, tail) = self.rest.split_at(len as usize);
        self.rest = tail;
        let (&attributes, tail) = r.split_first().ok_or(RecordsError::Malformed("empty record"))?;
        r = tail;
        let ts_delta = take_varint(&mut r)?;
        let offset_delta = take_varint(&mut r)?;
        if !(0..=i64::from(i32::MAX)).contains(&offset_delta) {
            return Err(RecordsError::Malformed("offset delta out of range"));
        }
        let key = take_bytes(&mut r)?;
        let value = take_bytes(&mut r)?;
        let headers = r;
        let count = take_varint(&mut r)?;
        if count < 0 {
            return Err(RecordsError::Malformed("negative header count"));
        }
        for _ in 0..count {
            if take_bytes(&mut r)?.is_none() {
                return Err(RecordsError::Malformed("null header key"));
            }
            take_bytes(&mut r)?;
        }
        if !r.is_empty() {
            return Err(RecordsError::Malformed("bytes after the record's headers"));
        }
        Ok(Record {
            offset: self.base_offset.wrapping_add(offset_delta),
            timestamp: self.log_append_time.unwrap_or(self.base_timestamp.wrapping_add(ts_delta)),
            attributes: attributes as i8,
            key,
            value,
            headers,
            header_count: count as usize,
        })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, RecordsError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let r = self.parse();
        self.failed = r.is_err();
        Some(r)
    }
}

/// A batch with its records section decompressed (borrowed when it was not compressed).
#[derive(Debug, Clone)]
pub struct DecodedBatch<'a> {
    view: BatchView<'a>,
    records: Cow<'a, [u8]>,
}

impl<'a> DecodedBatch<'a> {
    /// Decompresses `view`'s records, refusing more than `out_max` bytes of output.
    pub fn new(view: BatchView<'a>, out_max: usize) -> Result<Self, RecordsError> {
        let records = match view.compression() {
            Compression::None => Cow::Borrowed(view.records()),
            c => Cow::Owned(decompress(c, view.records(), out_max)?),
        };
        Ok(DecodedBatch { view, records })
    }
    pub fn view(&self) -> &BatchView<'a> {
        &self.view
    }
    /// The uncompressed records section.
    pub fn records_bytes(&self) -> &[u8] {
        &self.records
    }
    pub fn iter(&self) -> RecordIter<'_> {
        RecordIter::new(&self.view, &self.records)
    }
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
        None => put_varint(out, -1),
    }
}

/// Whether [`compress`] (and so [`BatchBuilder::finish`]) can write `codec`.
pub fn can_compress(codec: Compression) -> bool {
    matches!(codec, Compression::None | Compression::Gzip | Compression::Snappy | Compression::Lz4)
}

/// Uncompressed bytes per xerial snappy chunk (the Java client's block size).
const XERIAL_CHUNK: usize = 32 * 1024;

/// Compresses a records section with `codec`. Snappy uses the xerial framing the Java client
/// writes (every Kafka client reads it); lz4 the frame format with independent blocks.
pub fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, RecordsError> {
    let err = |e: std::io::Error| RecordsError::Compress(e.to_string());
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(data).map_err(err)?;
            enc.finish().map_err(err)
        }
        Compression::Lz4 => {
            let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
            enc.write_all(data).map_err(err)?;
            enc.finish().map_err(|e| RecordsError::Compress(e.to_string()))
        }
        Compression::Snappy => {
            let mut out = Vec::with_capacity(16 + data.len() / 2);
            out.extend_from_slice(XERIAL_MAGIC);
            out.extend_from_slice(&1i32.to_be_bytes()); // version
            out.extend_from_slice(&1i32.to_be_bytes()); // minimum compatible version
            let mut enc = snap::raw::Encoder::new();
            for chunk in data.chunks(XERIAL_CHUNK) {
                let block = enc.compress_vec(chunk).map_err(|e| RecordsError::Compress(e.to_string()))?;
                out.extend_from_slice(&(block.len() as i32).to_be_bytes());
                out.extend_from_slice(&block);
            }
            Ok(out)
        }
        c @ (Compression::Zstd | Compression::Unknown(_)) => Err(RecordsError::UnsupportedCodec(c)),
    }
}

/// The header fields a [`BatchBuilder`] writes. Built from a template batch with
/// [`BatchHeader::from_view`] to re-encode a batch's records (compaction) without changing
/// anything a reader or the producer state relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub partition_leader_epoch: i32,
    /// Attributes; the codec bits are replaced by the codec given to `finish`.
    pub attributes: i16,
    /// `None`: the last pushed record's delta (0 when empty). `Some`: kept even if records
    /// were dropped, so the batch still spans the same offsets (as Kafka's cleaner does).
    pub last_offset_delta: Option<i32>,
    pub base_timestamp: i64,
    /// Written as is for LogAppendTime batches and for empty ones; otherwise the largest pushed
    /// record timestamp.
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl BatchHeader {
    /// Every header field of `view`, keeping its offset span.
    pub fn from_view(view: &BatchView<'_>) -> Self {
        BatchHeader {
            base_offset: view.base_offset(),
            partition_leader_epoch: view.partition_leader_epoch(),
            attributes: view.attributes(),
            last_offset_delta: Some(view.last_offset_delta()),
            base_timestamp: view.base_timestamp(),
            max_timestamp: view.max_timestamp(),
            producer_id: view.producer_id(),
            producer_epoch: view.producer_epoch(),
            base_sequence: view.base_sequence(),
        }
    }
}

/// Writes records into a v2 batch: offsets and timestamps are stored as deltas from the header's
/// base offset and base timestamp, so a record keeps its absolute offset and timestamp.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    header: BatchHeader,
    body: Vec<u8>,
    count: i32,
    last_delta: Option<i64>,
    max_timestamp: Option<i64>,
}

impl BatchBuilder {
    pub fn new(header: BatchHeader) -> Self {
        BatchBuilder { header, body: Vec::new(), count: 0, last_delta: None, max_timestamp: None }
    }

    /// Appends a record. Offsets must increase and lie within the header's offset span.
    pub fn push(&mut self, r: &Record<'_>) -> Result<(), RecordsError> {
        let delta = r.offset.checked_sub(self.header.base_offset).ok_or(RecordsError::OutOfBatch("offset"))?;
        let max_delta = self.header.last_offset_delta.map_or(i64::from(i32::MAX), i64::from);
        if delta < 0 || delta > max_delta || self.last_delta.is_some_and(|d| delta <= d) {
            return Err(RecordsError::OutOfBatch("offset not increasing within the batch's span"));
        }
        if self.count == i32::MAX {
            return Err(RecordsError::OutOfBatch("too many records"));
        }
        let mut rec =
            Vec::with_capacity(16 + r.key.map_or(0, <[u8]>::len) + r.value.map_or(0, <[u8]>::len) + r.headers.len());
        rec.push(r.attributes as u8);
        put_varint(&mut rec, r.timestamp.wrapping_sub(self.header.base_timestamp));
        put_varint(&mut rec, delta);
        put_bytes(&mut rec, r.key);
        put_bytes(&mut rec, r.value);
        if r.headers.is_empty() {
            put_varint(&mut rec, 0);
        } else {
            rec.extend_from_slice(r.headers);
        }
        put_varint(&mut self.body, rec.len() as i64);
        self.body.extend_from_slice(&rec);
        self.count += 1;
        self.last_delta = Some(delta);
        self.max_timestamp = Some(self.max_timestamp.map_or(r.timestamp, |m| m.max(r.timestamp)));
        Ok(())
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The finished batch with a fresh CRC. An empty batch is written uncompressed (header only).
    pub fn finish(self, codec: Compression) -> Result<Vec<u8>, RecordsError> {
        let h = self.header;
        let codec = if self.count == 0 { Compression::None } else { codec };
        let records = match codec {
            Compression::None => self.body,
            c => compress(c, &self.body)?,
        };
        let codec_bits: i16 = match codec {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
            Compression::Unknown(n) => i16::from(n & 7),
        };
        let batch_len = i32::try_from(HEADER_LEN - LOG_OVERHEAD + records.len())
            .map_err(|_| RecordsError::OutOfBatch("batch larger than i32::MAX bytes"))?;
        let last_delta = match h.last_offset_delta {
            Some(d) => d,
            None => self.last_delta.unwrap_or(0) as i32,
        };
        let log_append_time = h.attributes & 0x8 != 0;
        let max_ts = match self.max_timestamp {
            Some(m) if !log_append_time => m,
            _ => h.max_timestamp,
        };
        let mut out = Vec::with_capacity(HEADER_LEN + records.len());
        out.extend_from_slice(&h.base_offset.to_be_bytes());
        out.extend_from_slice(&batch_len.to_be_bytes());
        out.extend_from_slice(&h.partition_leader_epoch.to_be_bytes());
        out.push(2); // magic
        out.extend_from_slice(&[0; 4]); // crc, filled below
        out.extend_from_slice(&((h.attributes & !0x7) | codec_bits).to_be_bytes());
        out.extend_from_slice(&last_delta.to_be_bytes());
        out.extend_from_slice(&h.base_timestamp.to_be_bytes());
        out.extend_from_slice(&max_ts.to_be_bytes());
        out.extend_from_slice(&h.producer_id.to_be_bytes());
        out.extend_from_slice(&h.producer_epoch.to_be_bytes());
        out.extend_from_slice(&h.base_sequence.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&records);
        let crc = crc32c::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::build_batch;

    #[test]
    fn timestamps_walk_an_uncompressed_batch() {
        let b = build_batch(10, 5000, &[(None, Some(b"a")), (Some(b"k"), None)]);
        let v = BatchView::new(&b).unwrap();
        assert_eq!(record_timestamps(&v, 1 << 20).unwrap(), vec![(10, 5000), (11, 5000)]);
    }

    #[test]
    fn decompression_is_capped() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&vec![0u8; 100_000]).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(decompress(Compression::Gzip, &gz, 1000), Err(RecordsError::TooLarge(1000)));
        assert_eq!(decompress(Compression::Gzip, &gz, 200_000).unwrap().len(), 100_000);
        let raw = snap::raw::Encoder::new().compress_vec(&[7u8; 5000]).unwrap();
        assert_eq!(decompress(Compression::Snappy, &raw, 10_000).unwrap(), vec![7u8; 5000]);
        assert!(decompress(Compression::Snappy, &raw, 100).is_err());
    }

    /// `(offset, timestamp, key, value, headers)`.
    type Sample = (i64, i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<(Vec<u8>, Option<Vec<u8>>)>);

    fn sample_records() -> Vec<Sample> {
        (0..50)
            .map(|i: i64| {
                let key = (i % 7 != 3).then(|| format!("key-{}", i % 5).into_bytes());
                let value = (i % 11 != 0).then(|| format!("value-{i}-").repeat(i as usize % 9 + 1).into_bytes());
                let headers =
                    (0..i % 3).map(|h| (format!("h{h}").into_bytes(), (h != 1).then(|| vec![h as u8; 3]))).collect();
                (1000 + 2 * i, 1_700_000_000_000 + (i * 37) % 101 - 50, key, value, headers)
            })
            .collect()
    }

    fn encode_headers(headers: &[(Vec<u8>, Option<Vec<u8>>)]) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, headers.len() as i64);
        for (k, v) in headers {
            put_bytes(&mut out, Some(k));
            put_bytes(&mut out, v.as_deref());
        }
        out
    }

    /// A template header like a producer's: idempotent producer fields, CreateTime, a leader epoch.
    fn template(count_span: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 1000,
            partition_leader_epoch: 7,
            attributes: 0,
            last_offset_delta: Some(count_span),
            base_timestamp: 1_700_000_000_000,
            max_timestamp: 0,
            producer_id: 4242,
            producer_epoch: 3,
            base_sequence: 99,
        }
    }

    #[test]
    fn builder_round_trips_records_through_every_writable_codec() {
        let recs = sample_records();
        let headers: Vec<Vec<u8>> = recs.iter().map(|r| encode_headers(&r.4)).collect();
        for codec in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4] {
            let mut b = BatchBuilder::new(template(120));
            for (r, h) in recs.iter().zip(&headers) {
                b.push(&Record {
                    offset: r.0,
                    timestamp: r.1,
                    attributes: 0,
                    key: r.2.as_deref(),
                    value: r.3.as_deref(),
                    headers: h,
                    header_count: r.4.len(),
                })
                .unwrap();
            }
            let bytes = b.finish(codec).unwrap();
            let v = BatchView::new(&bytes).unwrap();
            assert_eq!(v.total_len(), bytes.len());
            v.verify_crc().unwrap();
            assert_eq!(v.compression(), codec);
            assert_eq!((v.base_offset(), v.last_offset_delta(), v.records_count()), (1000, 120, 50));
            assert_eq!(
                (v.producer_id(), v.producer_epoch(), v.base_sequence(), v.partition_leader_epoch()),
                (4242, 3, 99, 7)
            );
            assert_eq!(v.max_timestamp(), recs.iter().map(|r| r.1).max().unwrap());
            let d = DecodedBatch::new(v, 1 << 20).unwrap();
            let got: Vec<Record<'_>> = d.iter().collect::<Result<_, _>>().unwrap();
            assert_eq!(got.len(), recs.len(), "{codec:?}");
            for (g, r) in got.iter().zip(&recs) {
                assert_eq!((g.offset, g.timestamp), (r.0, r.1), "{codec:?}");
                assert_eq!((g.key, g.value), (r.2.as_deref(), r.3.as_deref()));
                let pairs: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                    g.header_pairs().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect();
                assert_eq!(pairs, r.4);
            }
            // Re-encoding what was decoded gives the same batch.
            let mut again = BatchBuilder::new(BatchHeader::from_view(&v));
            for g in &got {
                again.push(g).unwrap();
            }
            if codec == Compression::None {
                assert_eq!(again.finish(codec).unwrap(), bytes);
            }
        }
    }

    #[test]
    fn dropping_records_keeps_offsets_timestamps_and_the_offset_span() {
        let b = build_batch(500, 9000, &[(Some(b"a"), Some(b"1")), (Some(b"b"), Some(b"2")), (Some(b"a"), Some(b"3"))]);
        let v = BatchView::new(&b).unwrap();
        let d = DecodedBatch::new(v, 1 << 20).unwrap();
        let mut kept = BatchBuilder::new(BatchHeader::from_view(&v));
        for r in d.iter() {
            let r = r.unwrap();
            if r.offset != 500 {
                kept.push(&r).unwrap();
            }
        }
        let out = kept.finish(Compression::None).unwrap();
        let ov = BatchView::new(&out).unwrap();
        ov.verify_crc().unwrap();
        ov.validate_for_produce().unwrap_err(); // recordsCount 2 but span 3: only the cleaner writes these
        assert_eq!((ov.base_offset(), ov.last_offset(), ov.records_count(), ov.max_timestamp()), (500, 502, 2, 9000));
        let od = DecodedBatch::new(ov, 1 << 20).unwrap();
        let got: Vec<(i64, i64, Option<&[u8]>)> =
            od.iter().map(|r| r.map(|r| (r.offset, r.timestamp, r.key))).collect::<Result<_, _>>().unwrap();
        assert_eq!(got, vec![(501, 9000, Some(&b"b"[..])), (502, 9000, Some(&b"a"[..]))]);
        // An empty batch keeps its header and span.
        let empty = BatchBuilder::new(BatchHeader::from_view(&v)).finish(Compression::Gzip).unwrap();
        let ev = BatchView::new(&empty).unwrap();
        ev.verify_crc().unwrap();
        assert_eq!(
            (ev.base_offset(), ev.last_offset(), ev.records_count(), ev.compression()),
            (500, 502, 0, Compression::None)
        );
        assert_eq!(DecodedBatch::new(ev, 10).unwrap().iter().count(), 0);
    }

    #[test]
    fn builder_refuses_records_outside_the_span_and_zstd() {
        let mut b = BatchBuilder::new(template(3));
        let r = |offset| Record {
            offset,
            timestamp: 0,
            attributes: 0,
            key: None,
            value: None,
            headers: &[],
            header_count: 0,
        };
        assert!(b.push(&r(999)).is_err());
        assert!(b.push(&r(1004)).is_err());
        b.push(&r(1001)).unwrap();
        assert!(b.push(&r(1001)).is_err());
        assert!(!can_compress(Compression::Zstd));
        assert_eq!(b.finish(Compression::Zstd), Err(RecordsError::UnsupportedCodec(Compression::Zstd)));
    }

    #[test]
    fn log_append_time_records_report_the_batch_max_timestamp() {
        let mut b = build_batch(0, 100, &[(Some(b"k"), Some(b"v"))]);
        b[21..23].copy_from_slice(&8i16.to_be_bytes());
        b[35..43].copy_from_slice(&777i64.to_be_bytes());
        let v = BatchView::new(&b).unwrap();
        let d = DecodedBatch::new(v, 100).unwrap();
        assert_eq!(d.iter().next().unwrap().unwrap().timestamp, 777);
    }

    proptest::proptest! {
        /// Any records, through any writable codec, decode back to the same offsets, timestamps,
        /// keys, values and headers, in a batch with a valid CRC and the template's header fields.
        #[test]
        fn builder_round_trips_arbitrary_records(
            recs in proptest::collection::vec(
                (
                    1i64..5,
                    -10_000i64..10_000,
                    proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20)),
                    proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)),
                    proptest::collection::vec(
                        (proptest::collection::vec(proptest::prelude::any::<u8>(), 0..5),
                         proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..5))),
                        0..3,
                    ),
                ),
                0..30,
            ),
            codec in proptest::sample::select(vec![Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4]),
        ) {
            let mut offset = 1000i64;
            let mut want = Vec::new();
            for (step, ts, k, v, h) in &recs {
                offset += step;
                want.push((offset, 1_700_000_000_000 + ts, k.clone(), v.clone(), h.clone()));
            }
            let headers: Vec<Vec<u8>> = want.iter().map(|r| encode_headers(&r.4)).collect();
            let mut b = BatchBuilder::new(BatchHeader { last_offset_delta: None, ..template(0) });
            for (r, h) in want.iter().zip(&headers) {
                b.push(&Record { offset: r.0, timestamp: r.1, attributes: 0, key: r.2.as_deref(), value: r.3.as_deref(), headers: h, header_count: r.4.len() }).unwrap();
            }
            let bytes = b.finish(codec).unwrap();
            let v = BatchView::new(&bytes).unwrap();
            v.verify_crc().unwrap();
            proptest::prop_assert_eq!(v.records_count() as usize, want.len());
            proptest::prop_assert_eq!(v.last_offset(), want.last().map_or(1000, |r| r.0));
            proptest::prop_assert_eq!(v.producer_id(), 4242);
            let d = DecodedBatch::new(v, 1 << 20).unwrap();
            let got: Vec<Sample> = d
                .iter()
                .map(|r| {
                    let r = r.unwrap();
                    let h = r.header_pairs().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect();
                    (r.offset, r.timestamp, r.key.map(<[u8]>::to_vec), r.value.map(<[u8]>::to_vec), h)
                })
                .collect();
            proptest::prop_assert_eq!(got, want);
        }

        /// The record iterator never panics and stops after an error, whatever the bytes.
        #[test]
        fn record_iter_survives_arbitrary_bytes(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let b = build_batch(0, 0, &[(None, Some(b"x"))]);
            let v = BatchView::new(&b).unwrap();
            let mut it = RecordIter::new(&v, &data);
            let mut n = 0;
            while let Some(r) = it.next() {
                n += 1;
                if r.is_err() {
                    proptest::prop_assert!(it.next().is_none());
                    break;
                }
                proptest::prop_assert!(n <= data.len());
            }
        }
    }
}
