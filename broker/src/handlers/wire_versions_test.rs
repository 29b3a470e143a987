//! Every hot-path API, at every version the broker advertises, answers a realistic request with a
//! response a client can decode: requests go through the real frame path (`server::handle_frame`).

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use creek_protocol::batch::build_batch;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::describe_configs::fixture;
use super::{Outcome, supported};
use crate::server::handle_frame;

fn frame<T: Encodable>(key: ApiKey, version: i16, body: &T) -> Bytes {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = 42;
    header.client_id = Some(StrBytes::from_static_str("t"));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, key.request_header_version(version)).unwrap();
    if key == ApiKey::Produce && version < 3 {
        // v0-2 are v3 without the leading null transactional id.
        let mut v3 = BytesMut::new();
        body.encode(&mut v3, 3).unwrap();
        buf.extend_from_slice(&v3[2..]);
    } else {
        body.encode(&mut buf, version).unwrap();
    }
    buf.freeze()
}

fn answer<R: Decodable>(outcome: Outcome, key: ApiKey, version: i16) -> R {
    let Outcome::Reply(chunks) = outcome else { panic!("{key:?} v{version}: no reply") };
    let mut b = Bytes::from(chunks.concat());
    let len = i32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
    assert_eq!(len, b.len() - 4, "{key:?} v{version}: frame length");
    let _ = b.split_to(4);
    let hv = if key == ApiKey::ApiVersions { 0 } else { key.response_header_version(version) };
    let h = ResponseHeader::decode(&mut b, hv).unwrap();
    assert_eq!(h.correlation_id, 42);
    if key == ApiKey::Produce && version < 2 {
        // kafka-protocol cannot decode v0-1 responses; check the shape by hand below.
        return R::decode(&mut Bytes::new(), 3).unwrap_or_else(|_| panic!("legacy produce"));
    }
    let v = if key == ApiKey::Produce && version == 2 { 3 } else { version };
    R::decode(&mut b, v).unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"))
}

fn versions(key: ApiKey) -> std::ops::RangeInclusive<i16> {
    let (min, max) = supported(key).unwrap();
    min..=max
}

#[tokio::test]
async fn hot_apis_answer_and_encode_at_every_advertised_version() {
    let (ctx, _dir) = fixture::broker(&[]);
    let topic = ctx.broker.create_topic("t", 2, BTreeMap::new()).unwrap();

    for v in versions(ApiKey::ApiVersions) {
        let r: ApiVersionsResponse = answer(
            handle_frame(&ctx, frame(ApiKey::ApiVersions, v, &ApiVersionsRequest::default())).await,
            ApiKey::ApiVersions,
            v,
        );
        assert_eq!(r.error_code, 0);
    }

    for v in versions(ApiKey::Produce) {
        let mut p0 = produce_request::PartitionProduceData::default();
        p0.index = 0;
        p0.records = Some(Bytes::from(build_batch(0, 1000 + v as i64, &[(Some(b"k"), Some(b"v"))])));
        let mut p1 = produce_request::PartitionProduceData::default();
        p1.index = 9;
        p1.records = Some(Bytes::from(build_batch(0, 0, &[(None, Some(b"x"))])));
        let mut t = produce_request::TopicProduceData::default();
        t.name = TopicName(StrBytes::from_static_str("t"));
        t.partition_data = vec![p0, p1];
        let mut req = ProduceRequest::default();
        req.acks = -1;
        req.timeout_ms = 5000;
        req.topic_data = vec![t];
        let out = handle_frame(&ctx, frame(ApiKey::Produce, v, &req)).await;
        if v < 2 {
            let Outcome::Reply(chunks) = out else { panic!("Produce v{v}: no reply") };
            let bytes = chunks.concat();
            // length, correlation id, 1 topic "t", 2 partitions, (index, error, offset)x2, [throttle]
            let expect = 4 + 4 + 4 + 2 + 1 + 4 + 2 * (4 + 2 + 8) + if v == 1 { 4 } else { 0 };
            assert_eq!(bytes.len(), expect, "Produce v{v} layout");
            continue;
        }
        let r: ProduceResponse = answer(out, ApiKey::Produce, v);
        let parts = &r.responses[0].partition_responses;
        assert_eq!((parts[0].error_code, parts[1].error_code), (0, 3), "Produce v{v}");
    }
    let end = topic.partition(0).unwrap().log.lock().log_end_offset() as i64;

    for v in versions(ApiKey::Metadata) {
        let mut req = MetadataRequest::default();
        let mut named = metadata_request::MetadataRequestTopic::default();
        named.name = Some(TopicName(StrBytes::from_static_str("t")));
        let mut bad = metadata_request::MetadataRequestTopic::default();
        bad.name = Some(TopicName(StrBytes::from_static_str("bad name!")));
        req.topics = Some(vec![named, bad]);
        req.allow_auto_topic_creation = true;
        let r: MetadataResponse =
            answer(handle_frame(&ctx, frame(ApiKey::Metadata, v, &req)).await, ApiKey::Metadata, v);
        assert_eq!(r.topics.len(), 2, "Metadata v{v}");
        assert_eq!((r.topics[0].error_code, r.topics[0].partitions.len()), (0, 2));
        assert_eq!(r.topics[1].error_code, 17);
    }

    for v in versions(ApiKey::Fetch) {
        let mut p = fetch_request::FetchPartition::default();
        p.partition = 0;
        p.fetch_offset = 0;
        p.partition_max_bytes = 1 << 20;
        let mut t = fetch_request::FetchTopic::default();
        if v >= 13 {
            t.topic_id = topic.id;
        } else {
            t.topic = TopicName(StrBytes::from_static_str("t"));
        }
        t.partitions = vec![p];
        let mut req = FetchRequest::default();
        req.max_wait_ms = 0;
        req.min_bytes = 1;
        req.max_bytes = 1 << 20;
        req.topics = vec![t];
        let r: FetchResponse = answer(handle_frame(&ctx, frame(ApiKey::Fetch, v, &req)).await, ApiKey::Fetch, v);
        let pd = &r.responses[0].partitions[0];
        assert_eq!((pd.error_code, pd.high_watermark), (0, end), "Fetch v{v}");
        assert!(!pd.records.as_ref().unwrap().is_empty(), "Fetch v{v} returns records");
    }

    for v in versions(ApiKey::ListOffsets) {
        let mut p = list_offsets_request::ListOffsetsPartition::default();
        p.partition_index = 0;
        p.timestamp = -1;
        let mut t = list_offsets_request::ListOffsetsTopic::default();
        t.name = TopicName(StrBytes::from_static_str("t"));
        t.partitions = vec![p];
        let mut req = ListOffsetsRequest::default();
        req.topics = vec![t];
        let r: ListOffsetsResponse =
            answer(handle_frame(&ctx, frame(ApiKey::ListOffsets, v, &req)).await, ApiKey::ListOffsets, v);
        assert_eq!(r.topics[0].partitions[0].offset, end, "ListOffsets v{v}");
    }

    for v in versions(ApiKey::CreateTopics) {
        let mut t = create_topics_request::CreatableTopic::default();
        t.name = TopicName(StrBytes::from_string(format!("created-v{v}")));
        t.num_partitions = 1;
        t.replication_factor = 1;
        let mut req = CreateTopicsRequest::default();
        req.topics = vec![t];
        let r: CreateTopicsResponse =
            answer(handle_frame(&ctx, frame(ApiKey::CreateTopics, v, &req)).await, ApiKey::CreateTopics, v);
        assert_eq!(r.topics[0].error_code, 0, "CreateTopics v{v}");
    }
}
