//! `__consumer_offsets` records in Kafka's formats, the group → partition mapping, and replay of
//! a partition's records into offsets and group metadata.
//!
//! Keys: offset commit key version 1 (group, topic, partition); group metadata key version 2
//! (group). Values: offset commit value version 3; group metadata value version 3. A null value
//! is a tombstone. Decoding never panics on bad bytes: a record that does not parse is skipped.

use std::collections::HashMap;

use bytes::{BufMut, Bytes};
use creek_protocol::batch::{BatchView, read_varint};
use creek_protocol::records::decompress;

use super::classic::{StoredGroup, StoredMember};
use super::offsets::{Committed, Offsets};

pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Largest decompressed batch replay accepts.
const REPLAY_BATCH_BYTES_MAX: usize = 64 << 20;

/// Java's `String.hashCode` (over UTF-16 code units, wrapping).
pub(crate) fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The `__consumer_offsets` partition of a group: Kafka's `Utils.abs(hash) % partitions`.
pub(crate) fn partition_for(group: &str, partitions: i32) -> i32 {
    (java_string_hash(group) & 0x7fff_ffff) % partitions.max(1)
}

/// A decoded record of `__consumer_offsets`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    Offset { group: String, topic: String, partition: i32, value: Option<Committed> },
    Group { group: String, value: Option<StoredGroup> },
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.put_i16(s.len().min(i16::MAX as usize) as i16);
    b.extend_from_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
}
fn put_nullable(b: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_str(b, s),
        None => b.put_i16(-1),
    }
}
fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    b.put_i32(v.len() as i32);
    b.extend_from_slice(v);
}

pub(crate) fn offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_i16(1);
    put_str(&mut b, group);
    put_str(&mut b, topic);
    b.put_i32(partition);
    b
}

pub(crate) fn offset_value(c: &Committed) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_i16(3);
    b.put_i64(c.offset);
    b.put_i32(c.leader_epoch);
    put_str(&mut b, &c.metadata);
    b.put_i64(c.commit_ms);
    b
}

pub(crate) fn group_key(group: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_i16(2);
    put_str(&mut b, group);
    b
}

pub(crate) fn group_value(g: &StoredGroup) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_i16(3);
    put_str(&mut b, g.protocol_type.as_deref().unwrap_or(""));
    b.put_i32(g.generation);
    put_nullable(&mut b, g.protocol.as_deref());
    put_nullable(&mut b, g.leader.as_deref());
    b.put_i64(g.state_since_ms);
    b.put_i32(g.members.len() as i32);
    for m in &g.members {
        put_str(&mut b, &m.member_id);
        put_nullable(&mut b, m.instance_id.as_deref());
        put_str(&mut b, &m.client_id);
        put_str(&mut b, &m.client_host);
        b.put_i32(m.rebalance_timeout_ms);
        b.put_i32(m.session_timeout_ms);
        put_bytes(&mut b, &m.subscription);
        put_bytes(&mut b, &m.assignment);
    }
    b
}

/// A bounds-checked reader over Kafka's classic (non-flexible) encoding.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Some(h)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4).map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")))
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8).map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")))
    }
    fn nullable(&mut self) -> Option<Option<String>> {
        let n = self.i16()?;
        if n < 0 {
            return Some(None);
        }
        self.take(n as usize).map(|b| Some(String::from_utf8_lossy(b).into_owned()))
    }
    fn string(&mut self) -> Option<String> {
        self.nullable().map(Option::unwrap_or_default)
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let n = self.i32()?;
        if n < 0 {
            return Some(Bytes::new());
        }
        self.take(n as usize).map(Bytes::copy_from_slice)
    }
}

/// Decodes one record; `None` for keys this broker does not know.
pub(crate) fn decode(key: &[u8], value: Option<&[u8]>) -> Option<Record> {
    let mut k = Reader(key);
    match k.i16()? {
        0 | 1 => {
            let (group, topic, partition) = (k.string()?, k.string()?, k.i32()?);
            let value = match value {
                None => None,
                Some(v) => Some(decode_offset_value(v)?),
            };
            Some(Record::Offset { group, topic, partition, value })
        }
        2 => {
            let group = k.string()?;
            let value = match value {
                None => None,
                Some(v) => Some(decode_group_value(&group, v)?),
            };
            Some(Record::Group { group, value })
        }
        _ => None,
    }
}

fn decode_offset_value(v: &[u8]) -> Option<Committed> {
    let mut r = Reader(v);
    let version = r.i16()?;
    let offset = r.i64()?;
    let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
    let metadata = r.string()?;
    let commit_ms = r.i64()?;
    Some(Committed { offset, leader_epoch, metadata, commit_ms })
}

fn decode_group_value(group: &str, v: &[u8]) -> Option<StoredGroup> {
    let mut r = Reader(v);
    let version = r.i16()?;
    let protocol_type = r.string()?;
    let generation = r.i32()?;
    let protocol = r.nullable()?;
    let leader = r.nullable()?;
    let state_since_ms = if version >= 2 { r.i64()? } else { -1 };
    let n = r.i32()?;
    let mut members = Vec::new();
    for _ in 0..n.max(0) {
        let member_id = r.string()?;
        let instance_id = if version >= 3 { r.nullable()? } else { None };
        let client_id = r.string()?;
        let client_host = r.string()?;
        let rebalance_timeout_ms = if version >= 1 { r.i32()? } else { 0 };
        let session_timeout_ms = r.i32()?;
        let subscription = r.bytes()?;
        let assignment = r.bytes()?;
        members.push(StoredMember {
            member_id,
            instance_id,
            client_id,
            client_host,
            // v0 has no rebalance timeout: Kafka uses the session timeout.
            rebalance_timeout_ms: if version >= 1 { rebalance_timeout_ms } else { session_timeout_ms },
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Some(StoredGroup {
        id: group.to_string(),
        protocol_type: Some(protocol_type).filter(|t| !t.is_empty()),
        generation,
        protocol,
        leader,
        state_since_ms,
        members,
    })
}

/// (key, value) of every record in a v2 batch.
pub(crate) fn batch_records(view: &BatchView<'_>) -> Result<Vec<(Option<Bytes>, Option<Bytes>)>, String> {
    let raw = decompress(view.compression(), view.records(), REPLAY_BATCH_BYTES_MAX).map_err(|e| e.to_string())?;
    let mut rest = &raw[..];
    let mut out = Vec::new();
    fn varint(b: &mut &[u8]) -> Result<i64, String> {
        let (v, n) = read_varint(b).ok_or("bad varint")?;
        *b = &b[n..];
        Ok(v)
    }
    fn field(b: &mut &[u8]) -> Result<Option<Bytes>, String> {
        let n = varint(b)?;
        if n < 0 {
            return Ok(None);
        }
        let n = n as usize;
        if n > b.len() {
            return Err("field exceeds record".into());
        }
        let v = Bytes::copy_from_slice(&b[..n]);
        *b = &b[n..];
        Ok(Some(v))
    }
    while !rest.is_empty() {
        let len = varint(&mut rest)?;
        if len < 1 || len as usize > rest.len() {
            return Err("record length exceeds the batch".into());
        }
        let (mut rec, tail) = rest.split_at(len as usize);
        rest = tail;
        rec = &rec[1..];
        varint(&mut rec)?; // timestamp delta
        varint(&mut rec)?; // offset delta
        let key = field(&mut rec)?;
        let value = field(&mut rec)?;
        out.push((key, value));
    }
    Ok(out)
}

/// What replaying `__consumer_offsets` yields: the last record per key wins, tombstones delete.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) offsets: Offsets,
    pub(crate) groups: HashMap<String, StoredGroup>,
    /// KIP-848 records in log order, for `ConsumerGroups::replay`.
    pub(crate) consumer: Vec<super::consumer::Record>,
    /// Offsets committed in transactions without a marker yet, by (offsets partition, producer
    /// id): (group, topic, partition, offset).
    pub(crate) pending_txn: HashMap<(i32, i64), Vec<(String, String, i32, Committed)>>,
}

impl Loaded {
    pub(crate) fn apply(&mut self, r: Record) {
        match r {
            Record::Offset { group, topic, partition, value: Some(c) } => {
                self.offsets.commit(&group, &topic, partition, c)
            }
            Record::Offset { group, topic, partition, value: None } => {
                self.offsets.remove(&group, &topic, partition);
            }
            Record::Group { group, value: Some(g) } => {
                self.groups.insert(group, g);
            }
            Record::Group { group, value: None } => {
                self.groups.remove(&group);
            }
        }
    }

    /// Applies every record of a blob of whole batches of offsets partition `partition`. Offsets
    /// in transactional batches wait for their producer's marker: COMMIT applies them, ABORT
    /// drops them.
    pub(crate) fn apply_batches(&mut self, partition: i32, bytes: &[u8]) -> Result<(), String> {
        for range in creek_protocol::batch::batch_ranges(bytes).map_err(|e| e.to_string())? {
            let view = BatchView::new(&bytes[range]).map_err(|e| e.to_string())?;
            let pid = view.producer_id();
            if view.is_control() {
                let commit = creek_protocol::batch::control_record(&view).is_ok_and(|r| r.control_type == 1);
                if let Some(entries) = self.pending_txn.remove(&(partition, pid))
                    && commit
                {
                    for (group, topic, p, c) in entries {
                        self.offsets.commit(&group, &topic, p, c);
                    }
                }
                continue;
            }
            if view.is_transactional() {
                for (k, v) in batch_records(&view)? {
                    let Some(k) = k else { continue };
                    if let Some(Record::Offset { group, topic, partition: p, value: Some(c) }) =
                        decode(&k, v.as_deref())
                    {
                        self.pending_txn.entry((partition, pid)).or_default().push((group, topic, p, c));
                    }
                }
                continue;
            }
            for (k, v) in batch_records(&view)? {
                let Some(k) = k else { continue };
                if k.len() >= 2 && i16::from_be_bytes([k[0], k[1]]) >= super::consumer_store::KEY_VERSION_MIN {
                    if let Some(r) = super::consumer_store::decode(&k, v.as_deref()) {
                        self.consumer.push(r);
                    }
                } else if let Some(r) = decode(&k, v.as_deref()) {
                    self.apply(r);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use creek_protocol::batch::build_batch;

    use super::*;

    #[test]
    fn partition_matches_kafka() {
        // Goal: groups land on the same partition as in Kafka (Java hashCode, Utils.abs, mod 50).
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("abc"), 96354);
        assert_eq!(
            java_string_hash("console-consumer-12345"),
            "console-consumer-12345".chars().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32))
        );
        assert_eq!(partition_for("abc", 50), 96354 % 50);
        // A negative hash: Kafka masks the sign bit rather than negating.
        let h = java_string_hash("polygenelubricants");
        assert_eq!(h, i32::MIN);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
    }

    #[test]
    fn records_round_trip_and_replay_keeps_the_last_per_key() {
        // Goal: what the coordinator writes decodes back, and replay honours order and tombstones.
        let c1 = Committed { offset: 10, leader_epoch: 2, metadata: "meta".into(), commit_ms: 99 };
        let c2 = Committed { offset: 20, leader_epoch: -1, metadata: String::new(), commit_ms: 100 };
        let g = StoredGroup {
            id: "g".into(),
            protocol_type: Some("consumer".into()),
            generation: 4,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            state_since_ms: 77,
            members: vec![StoredMember {
                member_id: "m1".into(),
                instance_id: Some("i1".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 300_000,
                session_timeout_ms: 10_000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"asg"),
            }],
        };
        let (k1, v1, v2) = (offset_key("g", "t", 0), offset_value(&c1), offset_value(&c2));
        let (k2, gv) = (offset_key("g", "t", 1), group_value(&g));
        let gk = group_key("g");
        let batch = build_batch(
            0,
            0,
            &[
                (Some(&k1), Some(&v1)),
                (Some(&k2), Some(&v1)),
                (Some(&gk), Some(&gv)),
                (Some(&k1), Some(&v2)),
                (Some(&k2), None),
            ],
        );
        let mut loaded = Loaded::default();
        loaded.apply_batches(0, &batch).unwrap();
        assert_eq!(loaded.offsets.get("g", "t", 0), Some(&c2));
        assert_eq!(loaded.offsets.get("g", "t", 1), None);
        assert_eq!(loaded.groups.get("g"), Some(&g));
        let tomb = build_batch(0, 0, &[(Some(&gk), None)]);
        loaded.apply_batches(0, &tomb).unwrap();
        assert!(loaded.groups.is_empty());
        // Garbage never panics.
        assert_eq!(decode(&[0, 1, 0xff], Some(&[1, 2])), None);
        assert_eq!(decode(&k1, Some(&[0, 3, 1])), None);
    }
}
