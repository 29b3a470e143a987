//! Hostile request bodies are refused with an error: no abort, no panic, no memory blow-up.

use bytes::Bytes;
use creek_protocol::budget::BudgetAllocator;
use creek_protocol::codec::{DecodeError, decode_body, decode_produce};
use kafka_protocol::messages::{ApiVersionsRequest, FetchRequest, MetadataRequest, ProduceRequest};
use proptest::prelude::*;

#[global_allocator]
static ALLOC: BudgetAllocator = BudgetAllocator;

#[test]
fn metadata_v4_with_huge_topic_count_is_refused_not_aborted() {
    // Four bytes announcing 2^31-1 topics: kafka-protocol would try to reserve ~154 GB.
    let err = decode_body::<MetadataRequest>(Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff]), 4).unwrap_err();
    assert!(matches!(err, DecodeError::OverBudget(_) | DecodeError::Malformed(_)), "{err:?}");
}

#[test]
fn every_flexible_and_classic_array_length_is_bounded() {
    // Compact array (flexible v9+) with length varint 0xffffffff-1 and a classic i32 max.
    for (body, version) in [(&[0xff, 0xff, 0xff, 0xff, 0x0f][..], 12), (&[0x7f, 0xff, 0xff, 0xff][..], 1)] {
        assert!(decode_body::<MetadataRequest>(Bytes::copy_from_slice(body), version).is_err());
    }
    // Fetch v4: replica, max_wait, min_bytes, max_bytes, isolation, then topics = i32::MAX.
    let mut fetch = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0];
    fetch.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
    assert!(decode_body::<FetchRequest>(Bytes::from(fetch), 4).is_err());
}

#[test]
fn negative_lengths_are_malformed() {
    // Produce v3: transactional_id length -2 is invalid.
    assert!(decode_body::<ProduceRequest>(Bytes::from_static(&[0xff, 0xfe, 0, 1]), 3).is_err());
    // Produce v0 topics array length -5.
    assert!(decode_produce(Bytes::from_static(&[0, 1, 0, 0, 0x03, 0xe8, 0xff, 0xff, 0xff, 0xfb]), 0).is_err());
}

#[test]
fn well_formed_bodies_still_decode() {
    let req = decode_body::<ApiVersionsRequest>(
        Bytes::from_static(&[0x05, b'k', b'c', b'a', b't', 0x04, b'2', b'.', b'0', 0x00]),
        3,
    )
    .unwrap();
    assert_eq!(req.client_software_name.as_str(), "kcat");
    let md = decode_body::<MetadataRequest>(Bytes::from_static(&[0, 0, 0, 1, 0, 1, b't', 1]), 4).unwrap();
    assert_eq!(md.topics.unwrap().len(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// Random bodies at every version of the hot APIs decode or fail; they never panic or abort.
    #[test]
    fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..96), version in 0i16..14) {
        let body = Bytes::from(body);
        let _ = decode_body::<MetadataRequest>(body.clone(), version);
        let _ = decode_produce(body.clone(), version);
        let _ = decode_body::<FetchRequest>(body.clone(), version.max(4));
        let _ = decode_body::<ApiVersionsRequest>(body, version.min(4));
    }
}
