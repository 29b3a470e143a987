//! Hostile bytes from a client are refused without moving any offset, and the broker keeps
//! serving other clients afterwards.

use creek_protocol::batch::{build_batch, crc32c};
use creek_tests::CreekProcess;
use creek_tests::wire::{self, Wire};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest};

const TOPIC: &str = "hostile";

fn reseal(batch: &mut [u8]) {
    let crc = crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

fn good_batch() -> Vec<u8> {
    build_batch(0, 1_700_000_000_000, &[(Some(b"k1"), Some(b"v1")), (Some(b"k2"), Some(b"v2"))])
}

/// Asserts the partition still ends at `end` and a fresh client is served.
fn assert_unmoved(broker: &CreekProcess, end: i64, case: &str) {
    let mut w = Wire::connect(broker.bootstrap());
    assert_eq!(wire::list_offset(&mut w, TOPIC, 0, -1), (0, end), "log end moved after {case}");
}

/// Sends raw bytes on a new connection and asserts the broker closes it.
fn assert_closes(broker: &CreekProcess, bytes: &[u8], case: &str) {
    let mut w = Wire::connect(broker.bootstrap());
    w.send_raw(bytes).unwrap();
    assert!(w.closed_by_peer(), "broker kept the connection open after {case}");
}

fn frame_with_body(key: ApiKey, version: i16, header_version: i16, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&(key as i16).to_be_bytes());
    f.extend_from_slice(&version.to_be_bytes());
    f.extend_from_slice(&7i32.to_be_bytes());
    if header_version >= 1 {
        f.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
    }
    if header_version >= 2 {
        f.push(0); // no tagged fields
    }
    f.extend_from_slice(body);
    let mut out = (f.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&f);
    out
}

#[test]
fn hostile_frames_and_batches_are_refused_and_the_broker_keeps_serving() {
    let broker = CreekProcess::start(&[("auto.create.topics.enable", "false")]);
    let mut w = Wire::connect(broker.bootstrap());
    assert_eq!(wire::create_topic(&mut w, TOPIC, 1, &[("max.message.bytes", "4096")]), 0);
    assert_eq!(wire::produce(&mut w, TOPIC, 0, good_batch(), -1), (0, 0));
    let end = 2;

    // Frame-level attacks: each closes only the offending connection.
    let metadata_v4 = frame_with_body(ApiKey::Metadata, 4, 1, &[0x7f, 0xff, 0xff, 0xff]);
    assert_closes(&broker, &metadata_v4, "Metadata v4 with 2^31-1 topics");
    assert_closes(&broker, &[0, 0, 0, 2, 0, 3], "a 2-byte frame");
    assert_closes(&broker, &[0x7f, 0xff, 0x00, 0x00], "a frame over the size limit");
    assert_closes(&broker, &[0xff, 0xff, 0xff, 0xfb], "a negative frame length");
    assert_closes(
        &broker,
        &frame_with_body(ApiKey::Metadata, 1, 1, &[0xff, 0xff, 0xff, 0xfb]),
        "a negative array length",
    );
    let mut unknown = frame_with_body(ApiKey::Metadata, 1, 1, &[0, 0, 0, 0]);
    unknown[4..6].copy_from_slice(&999i16.to_be_bytes());
    assert_closes(&broker, &unknown, "an unknown API key");
    assert_closes(&broker, &frame_with_body(ApiKey::Metadata, 99, 2, &[0]), "an unsupported Metadata version");
    assert_unmoved(&broker, end, "frame attacks");

    // KIP-511: an unknown ApiVersions version gets a v0 answer with UNSUPPORTED_VERSION.
    let mut w = Wire::connect(broker.bootstrap());
    let mut probe = w.frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    probe[6..8].copy_from_slice(&99i16.to_be_bytes());
    w.send_raw(&probe).unwrap();
    let resp = w.read_frame().expect("an ApiVersions answer");
    let mut body = bytes::Bytes::from(resp[4..].to_vec());
    let av = <ApiVersionsResponse as kafka_protocol::protocol::Decodable>::decode(&mut body, 0).unwrap();
    assert_eq!(av.error_code, 35);
    assert!(av.api_keys.iter().any(|k| k.api_key == ApiKey::Produce as i16 && k.min_version == 0));

    // Batch-level attacks: refused with an error code, nothing appended.
    let mut w = Wire::connect(broker.bootstrap());
    let mut bad_crc = good_batch();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x55;
    assert_eq!(wire::produce(&mut w, TOPIC, 0, bad_crc, -1).0, 2, "bad CRC gives CORRUPT_MESSAGE");
    for magic in [0u8, 1] {
        let mut old = good_batch();
        old[16] = magic;
        assert_eq!(wire::produce(&mut w, TOPIC, 0, old, -1).0, 87, "magic {magic} is refused");
    }
    let mut count_lies = good_batch();
    count_lies[57..61].copy_from_slice(&3i32.to_be_bytes());
    count_lies[23..27].copy_from_slice(&2i32.to_be_bytes());
    reseal(&mut count_lies);
    assert_eq!(wire::produce(&mut w, TOPIC, 0, count_lies, -1).0, 87, "recordsCount above the records present");
    let mut delta_lies = good_batch();
    delta_lies[23..27].copy_from_slice(&5i32.to_be_bytes());
    reseal(&mut delta_lies);
    assert_eq!(wire::produce(&mut w, TOPIC, 0, delta_lies, -1).0, 87, "lastOffsetDelta against recordsCount");
    let mut long = good_batch();
    let len = i32::from_be_bytes(long[8..12].try_into().unwrap());
    long[8..12].copy_from_slice(&(len + 40).to_be_bytes());
    assert_eq!(wire::produce(&mut w, TOPIC, 0, long, -1).0, 2, "batch length beyond the bytes sent");
    let mut short = good_batch();
    short[8..12].copy_from_slice(&(len - 5).to_be_bytes());
    assert_eq!(wire::produce(&mut w, TOPIC, 0, short, -1).0, 2, "batch length short of the bytes sent");
    let big = build_batch(0, 0, &[(None, Some(&[7u8; 5000]))]);
    assert_eq!(wire::produce(&mut w, TOPIC, 0, big, -1).0, 10, "MESSAGE_TOO_LARGE over max.message.bytes");
    assert_eq!(wire::produce(&mut w, TOPIC, 0, good_batch(), 5).0, 21, "acks=5 gives INVALID_REQUIRED_ACKS");
    assert_unmoved(&broker, end, "batch attacks");

    // The broker still serves: metadata, and the next good batch lands right after the first.
    let mut w = Wire::connect(broker.bootstrap());
    let mut all_topics = MetadataRequest::default();
    all_topics.topics = None;
    let md: kafka_protocol::messages::MetadataResponse = w.call(ApiKey::Metadata, 12, &all_topics);
    assert!(md.topics.iter().any(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == TOPIC)));
    assert_eq!(wire::produce(&mut w, TOPIC, 0, good_batch(), -1), (0, end));
}
