//! `__transaction_state` records in Kafka's format (`TransactionLogKey`, `TransactionLogValue`)
//! and the transactional id → partition mapping.
//!
//! Key: version 0, then the transactional id as a STRING. Value: version 1 (flexible) is written,
//! because only it carries the previous producer id (tag 0), which KIP-360 retries after a
//! producer id rotation need; versions 0 and 1 are read. A null value is a tombstone. The
//! previous epoch is not in Kafka's schema, so it reads back as -1, as in Kafka. Decoding never
//! panics: bytes that do not parse give `None`.

use std::collections::BTreeSet;

use bytes::BufMut;
use creek_protocol::batch::BatchView;

use super::state::{NO_PRODUCER_EPOCH, NO_PRODUCER_ID, TxnMetadata, TxnState};

pub(crate) const TXN_TOPIC: &str = "__transaction_state";

const KEY_VERSION: i16 = 0;
const VALUE_VERSION: i16 = 1;
/// `PreviousProducerId`, `NextProducerId`, `ClientTransactionVersion` in `TransactionLogValue`.
const TAG_PREVIOUS_PRODUCER_ID: u64 = 0;

/// The `__transaction_state` partition of a transactional id: `abs(javaHash(id)) % partitions`,
/// as for groups.
pub(crate) fn partition_for(txn_id: &str, partitions: i32) -> i32 {
    crate::group::store::partition_for(txn_id, partitions)
}

pub(crate) fn key(txn_id: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_i16(KEY_VERSION);
    let id = truncated(txn_id, i16::MAX as usize);
    b.put_i16(id.len() as i16);
    b.extend_from_slice(id);
    b
}

/// The value record (version 1) of `m`.
pub(crate) fn value(m: &TxnMetadata) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_i16(VALUE_VERSION);
    b.put_i64(m.producer_id);
    b.put_i16(m.producer_epoch);
    b.put_i32(m.timeout_ms);
    b.put_i8(m.state.id());
    if m.state == TxnState::Empty {
        put_uvarint(&mut b, 0); // null array, as Kafka writes for Empty
    } else {
        let topics = by_topic(&m.partitions);
        put_uvarint(&mut b, topics.len() as u64 + 1);
        for (topic, parts) in topics {
            let t = truncated(topic, u32::MAX as usize - 1);
            put_uvarint(&mut b, t.len() as u64 + 1);
            b.extend_from_slice(t);
            put_uvarint(&mut b, parts.len() as u64 + 1);
            for p in parts {
                b.put_i32(p);
            }
            put_uvarint(&mut b, 0); // no tagged fields
        }
    }
    b.put_i64(m.last_update_ms);
    b.put_i64(m.start_ms);
    if m.last_producer_id == NO_PRODUCER_ID {
        put_uvarint(&mut b, 0);
    } else {
        put_uvarint(&mut b, 1);
        put_uvarint(&mut b, TAG_PREVIOUS_PRODUCER_ID);
        put_uvarint(&mut b, 8);
        b.put_i64(m.last_producer_id);
    }
    b
}

/// The transactional id of a key; `None` for another key version or bad bytes.
pub(crate) fn decode_key(key: &[u8]) -> Option<String> {
    let mut r = Reader(key);
    if r.i16()? != KEY_VERSION {
        return None;
    }
    let n = r.i16()?;
    let id = r.utf8(usize::try_from(n).ok()?)?;
    Some(id)
}

/// A value record (version 0 or 1); `None` for other versions or bad bytes.
pub(crate) fn decode_value(value: &[u8]) -> Option<TxnMetadata> {
    let mut r = Reader(value);
    let version = r.i16()?;
    if !(0..=1).contains(&version) {
        return None;
    }
    let flexible = version >= 1;
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    let timeout_ms = r.i32()?;
    let state = TxnState::from_id(r.i8()?)?;
    let mut partitions = BTreeSet::new();
    let topics = if flexible { r.uvarint()?.checked_sub(1) } else { u64::try_from(r.i32()?).ok() };
    for _ in 0..topics.unwrap_or(0) {
        let topic = if flexible {
            let n = r.uvarint()?.checked_sub(1)?;
            r.utf8(usize::try_from(n).ok()?)?
        } else {
            let n = r.i16()?;
            r.utf8(usize::try_from(n).ok()?)?
        };
        let count = if flexible { r.uvarint()?.checked_sub(1)? } else { u64::try_from(r.i32()?).ok()? };
        for _ in 0..count {
            partitions.insert((topic.clone(), r.i32()?));
        }
        if flexible {
            r.skip_tagged_fields(|_, _| Some(()))?;
        }
    }
    let last_update_ms = r.i64()?;
    let start_ms = r.i64()?;
    let mut last_producer_id = NO_PRODUCER_ID;
    if flexible {
        r.skip_tagged_fields(|tag, data| {
            if tag == TAG_PREVIOUS_PRODUCER_ID {
                last_producer_id = i64::from_be_bytes(data.try_into().ok()?);
            }
            Some(())
        })?;
    }
    if state == TxnState::Empty {
        partitions.clear(); // Kafka ignores them too
    }
    Some(TxnMetadata {
        producer_id,
        last_producer_id,
        producer_epoch,
        last_producer_epoch: NO_PRODUCER_EPOCH,
        timeout_ms,
        state,
        partitions,
        start_ms,
        last_update_ms,
    })
}

/// One record: the id and its value (`None` = tombstone). `None` if it does not parse.
pub(crate) fn decode(key: &[u8], value: Option<&[u8]>) -> Option<(String, Option<TxnMetadata>)> {
    let id = decode_key(key)?;
    match value {
        None => Some((id, None)),
        Some(v) => Some((id, Some(decode_value(v)?))),
    }
}

/// Calls `apply` for every record of a blob of whole batches of `__transaction_state`, in
/// order; control batches and records that do not parse are skipped.
pub(crate) fn replay_batches(bytes: &[u8], apply: &mut dyn FnMut(String, Option<TxnMetadata>)) -> Result<(), String> {
    for range in creek_protocol::batch::batch_ranges(bytes).map_err(|e| e.to_string())? {
        let view = BatchView::new(&bytes[range]).map_err(|e| e.to_string())?;
        if view.is_control() {
            continue;
        }
        for (k, v) in crate::group::store::batch_records(&view)? {
            if let Some((id, value)) = k.and_then(|k| decode(&k, v.as_deref())) {
                apply(id, value);
            }
        }
    }
    Ok(())
}

/// Partitions grouped by topic, in order.
fn by_topic(partitions: &BTreeSet<(String, i32)>) -> Vec<(&str, Vec<i32>)> {
    let mut out: Vec<(&str, Vec<i32>)> = Vec::new();
    for (topic, p) in partitions {
        match out.last_mut() {
            Some((t, ps)) if *t == topic.as_str() => ps.push(*p),
            _ => out.push((topic.as_str(), vec![*p])),
        }
    }
    out
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncated(s: &str, max: usize) -> &[u8] {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

fn put_uvarint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

/// A bounds-checked reader over Kafka's classic and flexible encodings.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Some(h)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn i8(&mut self) -> Option<i8> {
        self.array::<1>().map(i8::from_be_bytes)
    }
    fn i16(&mut self) -> Option<i16> {
        self.array::<2>().map(i16::from_be_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.array::<4>().map(i32::from_be_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.array::<8>().map(i64::from_be_bytes)
    }
    fn utf8(&mut self, n: usize) -> Option<String> {
        std::str::from_utf8(self.take(n)?).ok().map(str::to_string)
    }
    fn uvarint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.i8()? as u8;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    /// Reads a tagged-field section, handing each (tag, data) to `f`.
    fn skip_tagged_fields(&mut self, mut f: impl FnMut(u64, &[u8]) -> Option<()>) -> Option<()> {
        let n = self.uvarint()?;
        for _ in 0..n {
            let tag = self.uvarint()?;
            let size = usize::try_from(self.uvarint()?).ok()?;
            f(tag, self.take(size)?)?;
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use creek_protocol::batch::build_batch;

    use super::*;

    fn sample(state: TxnState) -> TxnMetadata {
        TxnMetadata {
            producer_id: 4000,
            last_producer_id: NO_PRODUCER_ID,
            producer_epoch: 7,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            timeout_ms: 60_000,
            state,
            partitions: if state == TxnState::Empty {
                BTreeSet::new()
            } else {
                [("a".to_string(), 0), ("a".to_string(), 3), ("bé".to_string(), 1)].into_iter().collect()
            },
            start_ms: if state == TxnState::Empty { -1 } else { 1_000 },
            last_update_ms: 2_000,
        }
    }

    #[test]
    fn every_state_round_trips() {
        // Goal: what the coordinator writes reads back identically, in every state.
        for state in TxnState::ALL {
            let mut m = sample(state);
            assert_eq!(decode_value(&value(&m)), Some(m.clone()), "{state:?}");
            m.last_producer_id = 3999;
            assert_eq!(decode_value(&value(&m)), Some(m.clone()), "{state:?} with a previous producer id");
        }
        assert_eq!(decode(&key("my-txn"), None), Some(("my-txn".to_string(), None)));
        let m = sample(TxnState::Ongoing);
        assert_eq!(decode(&key("t"), Some(&value(&m))), Some(("t".to_string(), Some(m))));
    }

    #[test]
    fn reads_kafka_bytes_written_by_hand_from_the_schema() {
        // Goal: version 0 and 1 records laid out per TransactionLogKey/TransactionLogValue.json
        // decode, and our version 1 encoding is byte for byte that layout.
        let key_bytes = [0, 0, 0, 3, b't', b'x', b'1'];
        assert_eq!(decode_key(&key_bytes).as_deref(), Some("tx1"));
        assert_eq!(key("tx1"), key_bytes);

        #[rustfmt::skip]
        let v0: Vec<u8> = [
            &[0u8, 0][..],                     // version 0
            &1234i64.to_be_bytes(),             // ProducerId
            &5i16.to_be_bytes(),                // ProducerEpoch
            &60_000i32.to_be_bytes(),           // TransactionTimeoutMs
            &[1],                               // TransactionStatus: Ongoing
            &1i32.to_be_bytes(),                // TransactionPartitions: 1 topic
            &[0, 3, b'f', b'o', b'o'],          //   Topic
            &2i32.to_be_bytes(),                //   PartitionIds: 2
            &0i32.to_be_bytes(), &2i32.to_be_bytes(),
            &9_000i64.to_be_bytes(),            // TransactionLastUpdateTimestampMs
            &8_000i64.to_be_bytes(),            // TransactionStartTimestampMs
        ].concat();
        let expected = TxnMetadata {
            producer_id: 1234,
            last_producer_id: NO_PRODUCER_ID,
            producer_epoch: 5,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            timeout_ms: 60_000,
            state: TxnState::Ongoing,
            partitions: [("foo".to_string(), 0), ("foo".to_string(), 2)].into_iter().collect(),
            start_ms: 8_000,
            last_update_ms: 9_000,
        };
        assert_eq!(decode_value(&v0), Some(expected.clone()));

        #[rustfmt::skip]
        let v1: Vec<u8> = [
            &[0u8, 1][..],                      // version 1 (flexible)
            &1234i64.to_be_bytes(),
            &5i16.to_be_bytes(),
            &60_000i32.to_be_bytes(),
            &[1],
            &[2],                               // compact array: 1 topic
            &[4, b'f', b'o', b'o'],             //   compact string
            &[3],                               //   compact array: 2 ids
            &0i32.to_be_bytes(), &2i32.to_be_bytes(),
            &[0],                               //   no tagged fields
            &9_000i64.to_be_bytes(),
            &8_000i64.to_be_bytes(),
            &[1, 0, 8],                         // 1 tagged field: tag 0 (PreviousProducerId), 8 bytes
            &1200i64.to_be_bytes(),
        ].concat();
        let with_previous = TxnMetadata { last_producer_id: 1200, ..expected.clone() };
        assert_eq!(decode_value(&v1), Some(with_previous.clone()));
        assert_eq!(value(&with_previous), v1);

        // Unknown tags (NextProducerId 1, ClientTransactionVersion 2) are skipped.
        let mut v1_more = v1[..v1.len() - 11].to_vec();
        v1_more.extend_from_slice(&[2, 1, 8]);
        v1_more.extend_from_slice(&77i64.to_be_bytes());
        v1_more.extend_from_slice(&[2, 2, 0, 2]);
        assert_eq!(decode_value(&v1_more), Some(expected.clone()));

        // Empty carries a null partition array (-1 in v0).
        #[rustfmt::skip]
        let empty_v0: Vec<u8> = [
            &[0u8, 0][..], &1234i64.to_be_bytes(), &0i16.to_be_bytes(), &60_000i32.to_be_bytes(), &[0],
            &(-1i32).to_be_bytes(), &9_000i64.to_be_bytes(), &(-1i64).to_be_bytes(),
        ].concat();
        let m = decode_value(&empty_v0).unwrap();
        assert_eq!((m.state, m.partitions.len(), m.start_ms), (TxnState::Empty, 0, -1));
    }

    #[test]
    fn garbage_never_panics() {
        // Goal: truncated, oversized and random bytes give None, never a panic.
        let full = value(&sample(TxnState::PrepareCommit));
        for n in 0..full.len() {
            assert_eq!(decode_value(&full[..n]), None, "truncated at {n}");
        }
        let k = key("some-id");
        for n in 0..k.len() {
            assert_eq!(decode_key(&k[..n]), None);
        }
        assert_eq!(decode_value(&[0, 2, 0, 0]), None, "unknown version");
        assert_eq!(decode_key(&[0, 1, 0, 0]), None, "unknown key version");
        // Huge counts with no bytes behind them.
        let mut huge = full[..17].to_vec();
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(decode_value(&huge), None);
        // A deterministic pseudo-random sweep (xorshift; seed printed on failure).
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|j| (seed >> ((j % 8) * 8)) as u8 ^ j as u8).collect();
            if i % 2 == 0 && bytes.len() > 2 {
                bytes[0] = 0;
                bytes[1] = (i % 3) as u8; // mostly valid versions, to reach deeper fields
            }
            let _ = decode_value(&bytes);
            let _ = decode_key(&bytes);
        }
    }

    #[test]
    fn partition_matches_kafka_and_replay_reads_batches() {
        // Goal: ids land where Kafka puts them, and records in batches replay in order.
        assert_eq!(partition_for("abc", 50), 96354 % 50);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        let (k, v1, v2) = (key("t"), value(&sample(TxnState::Ongoing)), value(&sample(TxnState::CompleteCommit)));
        let k2 = key("u");
        let batch = build_batch(
            0,
            0,
            &[(Some(&k), Some(&v1)), (Some(&k2), Some(&v1)), (Some(&k), Some(&v2)), (Some(&k2), None)],
        );
        let mut seen = Vec::new();
        replay_batches(&batch, &mut |id, m| seen.push((id, m.map(|m| m.state)))).unwrap();
        assert_eq!(
            seen,
            vec![
                ("t".to_string(), Some(TxnState::Ongoing)),
                ("u".to_string(), Some(TxnState::Ongoing)),
                ("t".to_string(), Some(TxnState::CompleteCommit)),
                ("u".to_string(), None),
            ]
        );
    }
}
