//! KIP-848 consumer-group records in `__consumer_offsets`.
//!
//! Kafka stores these with its own generated schemas (key versions 3–8). Creek owns this topic's
//! contents, so it uses its own keys, versions 100–104 (one per record kind, so compaction keeps
//! the latest of each kind per group and member), with the record as JSON in the value; a null
//! value is a tombstone. Classic offsets and group metadata keep Kafka's binary formats
//! (`store.rs`). Decoding never panics: a record that does not parse is skipped.

use bytes::BufMut;

use super::consumer::Record;

/// The first key version this module owns.
pub(crate) const KEY_VERSION_MIN: i16 = 100;
const KINDS: [&str; 5] = ["group", "member", "target-epoch", "target-member", "current"];

fn kind_of(r: &Record) -> (i16, &str, &str) {
    match r {
        Record::GroupMetadata { group_id, .. } => (0, group_id, ""),
        Record::MemberMetadata { group_id, member_id, .. } => (1, group_id, member_id),
        Record::TargetAssignmentMetadata { group_id, .. } => (2, group_id, ""),
        Record::TargetAssignmentMember { group_id, member_id, .. } => (3, group_id, member_id),
        Record::CurrentAssignment { group_id, member_id, .. } => (4, group_id, member_id),
    }
}

fn is_tombstone(r: &Record) -> bool {
    match r {
        Record::GroupMetadata { value, .. } => value.is_none(),
        Record::MemberMetadata { value, .. } => value.is_none(),
        Record::TargetAssignmentMetadata { epoch, .. } => epoch.is_none(),
        Record::TargetAssignmentMember { partitions, .. } => partitions.is_none(),
        Record::CurrentAssignment { value, .. } => value.is_none(),
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    let len = s.len().min(i16::MAX as usize);
    b.put_i16(len as i16);
    b.extend_from_slice(&s.as_bytes()[..len]);
}

/// The key and value (None: tombstone) of a record.
pub(crate) fn encode(r: &Record) -> (Vec<u8>, Option<Vec<u8>>) {
    let (kind, group, member) = kind_of(r);
    let mut key = Vec::with_capacity(6 + group.len() + member.len());
    key.put_i16(KEY_VERSION_MIN + kind);
    put_str(&mut key, group);
    put_str(&mut key, member);
    let value = (!is_tombstone(r)).then(|| serde_json::to_vec(r).expect("records serialise"));
    (key, value)
}

fn get_str(b: &mut &[u8]) -> Option<String> {
    if b.len() < 2 {
        return None;
    }
    let len = i16::from_be_bytes([b[0], b[1]]);
    let len = usize::try_from(len).ok()?;
    let s = b.get(2..2 + len)?;
    let out = String::from_utf8(s.to_vec()).ok()?;
    *b = &b[2 + len..];
    Some(out)
}

/// Decodes a record of one of our key versions; `None` for anything else or bad bytes.
pub(crate) fn decode(key: &[u8], value: Option<&[u8]>) -> Option<Record> {
    if key.len() < 2 {
        return None;
    }
    let kind = i16::from_be_bytes([key[0], key[1]]).checked_sub(KEY_VERSION_MIN)?;
    if !(0..KINDS.len() as i16).contains(&kind) {
        return None;
    }
    let mut rest = &key[2..];
    let group_id = get_str(&mut rest)?;
    let member_id = get_str(&mut rest)?;
    if let Some(v) = value {
        let r: Record = serde_json::from_slice(v).ok()?;
        // The value must describe the key it is stored under.
        let (k, g, m) = kind_of(&r);
        return (k == kind && g == group_id && m == member_id).then_some(r);
    }
    Some(match kind {
        0 => Record::GroupMetadata { group_id, value: None },
        1 => Record::MemberMetadata { group_id, member_id, value: None },
        2 => Record::TargetAssignmentMetadata { group_id, epoch: None },
        3 => Record::TargetAssignmentMember { group_id, member_id, partitions: None },
        _ => Record::CurrentAssignment { group_id, member_id, value: None },
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::group::consumer::{CurrentAssignmentValue, MemberMetadataValue};

    #[test]
    fn records_round_trip_and_tombstones_keep_their_key() {
        let id = uuid::Uuid::new_v4();
        let records = vec![
            Record::MemberMetadata {
                group_id: "g".into(),
                member_id: "m1".into(),
                value: Some(MemberMetadataValue {
                    client_id: "c".into(),
                    subscribed_topic_names: vec!["t".into()],
                    ..Default::default()
                }),
            },
            Record::CurrentAssignment {
                group_id: "g".into(),
                member_id: "m1".into(),
                value: Some(CurrentAssignmentValue {
                    member_epoch: 3,
                    assigned: BTreeMap::from([(id, BTreeSet::from([0, 2]))]),
                    ..Default::default()
                }),
            },
            Record::TargetAssignmentMetadata { group_id: "g".into(), epoch: Some(3) },
            Record::TargetAssignmentMember { group_id: "g".into(), member_id: "m1".into(), partitions: None },
        ];
        for r in records {
            let (k, v) = encode(&r);
            assert_eq!(decode(&k, v.as_deref()), Some(r));
        }
        let (k, _) = encode(&Record::GroupMetadata { group_id: "g".into(), value: None });
        assert!(decode(&k, Some(b"{not json")).is_none());
        assert!(decode(&[0, 1], None).is_none(), "classic keys are not ours");
        assert!(decode(&[0, 100, 0xff], None).is_none(), "truncated keys are refused");
    }
}
