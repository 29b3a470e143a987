//! Record-level access for the few features that need it (ListOffsets by timestamp, later
//! compaction and CDC): bounded decompression and a walk over record offsets and timestamps.
//! Never used on the produce or fetch path.

use std::io::Read;

use thiserror::Error;

use crate::batch::{BatchView, Compression, read_varint};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordsError {
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("decompressed records exceed {0} bytes")]
    TooLarge(usize),
    #[error("malformed record: {0}")]
    Malformed(&'static str),
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
            let decoder = ruzstd::decoding::StreamingDecoder::new(data)
                .map_err(|e| RecordsError::Decompress(e.to_string()))?;
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
        let ts = if view.is_log_append_time() { view.max_timestamp() } else { view.base_timestamp().wrapping_add(ts_delta) };
        out.push((view.base_offset().wrapping_add(offset_delta), ts));
    }
    Ok(out)
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
}
