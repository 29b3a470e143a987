//! The `rdkafka` crate (librdkafka built from source) against the real creek binary.
//!
//! Same scenario as the programs in `tests/clients/`: create a topic with the admin API, produce with
//! every codec records with non-UTF-8 keys and values, a tombstone, duplicate-key headers and
//! explicit timestamps; read each codec's run back byte-exact by manual assignment from its first and
//! its middle offset; list offsets; describe the topic's configs. No consumer group and no
//! idempotence: creek serves neither yet.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use creek_tests::CreekProcess;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, Timestamp, TopicPartitionList};

const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];
const RECORDS: usize = 20;
const TOMBSTONE: usize = 3;
const RETENTION_MS: &str = "86400000";
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    offset: i64,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp_ms: i64,
}

fn make_run(codec: &str, codec_index: usize, base_ts: i64) -> Vec<Record> {
    (0..RECORDS)
        .map(|i| {
            let mut key = format!("key-{codec}-{i}-").into_bytes();
            key.extend_from_slice(&[0x00, 0xff, 0xfe, 0x80]);
            let value = (i != TOMBSTONE).then(|| {
                let mut v = format!("value-{codec}-{i}-").into_bytes();
                v.extend_from_slice(&[0xc3, 0x28, 0x00, 0xff]);
                v.extend(std::iter::repeat_n(b'a', i * 37));
                v
            });
            let headers = vec![
                ("h".to_string(), format!("first-{i}").into_bytes()),
                ("h".to_string(), vec![0xff, 0x00, i as u8]),
            ];
            let timestamp_ms = base_ts + (codec_index * 1000 + i) as i64;
            Record { offset: -1, key, value, headers, timestamp_ms }
        })
        .collect()
}

fn config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap).set("allow.auto.create.topics", "false");
    config
}

/// Produces one run with one producer and returns the acknowledged offsets in send order.
async fn produce(bootstrap: &str, topic: &str, codec: &str, records: &[Record]) -> Vec<i64> {
    let producer: FutureProducer = config(bootstrap)
        .set("compression.type", codec)
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .set("linger.ms", "50")
        .create()
        .expect("create producer");
    let mut futures = Vec::new();
    for r in records {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header { key: k, value: Some(v) });
        }
        let mut record = FutureRecord::to(topic).partition(0).key(&r.key).headers(headers).timestamp(r.timestamp_ms);
        if let Some(v) = &r.value {
            record = record.payload(v);
        }
        // send_result only queues, so the whole run can travel in one batch.
        futures.push(producer.send_result(record).map_err(|(e, _)| e).expect("queue record"));
    }
    let mut offsets = Vec::new();
    for f in futures {
        let delivery =
            f.await.expect("delivery report").unwrap_or_else(|(e, _)| panic!("{codec}: produce failed: {e}"));
        assert_eq!(delivery.partition, 0);
        offsets.push(delivery.offset);
    }
    offsets
}

fn consume(consumer: &BaseConsumer, topic: &str, start: i64, count: usize) -> Vec<Record> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(start)).expect("partition offset");
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + TIMEOUT;
    let mut out = Vec::new();
    while out.len() < count {
        assert!(Instant::now() < deadline, "consume from {start}: got {} of {count} records in {TIMEOUT:?}", out.len());
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else { continue };
        let msg = msg.unwrap_or_else(|e| panic!("consume from {start}: {e}"));
        let Timestamp::CreateTime(timestamp_ms) = msg.timestamp() else {
            panic!("offset {}: timestamp {:?}, want CreateTime", msg.offset(), msg.timestamp());
        };
        let headers = msg
            .headers()
            .map(|hs| hs.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default();
        out.push(Record {
            offset: msg.offset(),
            key: msg.key().expect("key").to_vec(),
            value: msg.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms,
        });
    }
    consumer.unassign().expect("unassign");
    out
}

fn assert_records(expected: &[Record], got: &[Record], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: record count");
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        assert_eq!(g, e, "{what}: record #{i} differs");
    }
}

#[test]
fn rdkafka_round_trips_every_codec() {
    // Goal: the rdkafka crate round-trips every codec through creek byte-exact, and sees the topic's offsets and configs.
    let (major_minor, version) = rdkafka::util::get_rdkafka_version();
    eprintln!("librdkafka {version} ({major_minor:#x})");
    let broker = CreekProcess::start(&[]);
    let bootstrap = broker.bootstrap().to_string();
    let topic = creek_tests::unique_topic("rdkafka");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");

    let admin: AdminClient<DefaultClientContext> = config(&bootstrap).create().expect("create admin client");
    let opts = AdminOptions::new().request_timeout(Some(TIMEOUT)).operation_timeout(Some(TIMEOUT));
    let new_topic = NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("retention.ms", RETENTION_MS);
    let created = rt.block_on(admin.create_topics([&new_topic], &opts)).expect("CreateTopics");
    assert_eq!(created, vec![Ok(topic.clone())], "CreateTopics result");

    let base_ts = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64 - 600_000;
    let mut runs: Vec<(&str, Vec<Record>)> = Vec::new();
    let mut next_offset = 0;
    for (c, codec) in CODECS.iter().enumerate() {
        let mut records = make_run(codec, c, base_ts);
        let offsets = rt.block_on(produce(&bootstrap, &topic, codec, &records));
        let want: Vec<i64> = (next_offset..next_offset + RECORDS as i64).collect();
        assert_eq!(offsets, want, "{codec}: acknowledged offsets");
        for (r, o) in records.iter_mut().zip(offsets) {
            r.offset = o;
        }
        next_offset += RECORDS as i64;
        runs.push((codec, records));
    }
    let total = next_offset;

    // librdkafka's assign() needs a group.id ("Local: Unknown group" without one), though nothing
    // here uses the group: no subscribe, no offset commit, every read starts at an explicit offset.
    let consumer: BaseConsumer = config(&bootstrap)
        .set("group.id", "creek-tests-unused")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .create()
        .expect("create consumer");
    let mut consumed = 0;
    for (codec, records) in &runs {
        let base = records[0].offset;
        let got = consume(&consumer, &topic, base, RECORDS);
        assert_records(records, &got, &format!("{codec} from {base}"));
        let mid = RECORDS / 2;
        let got = consume(&consumer, &topic, base + mid as i64, RECORDS - mid);
        assert_records(&records[mid..], &got, &format!("{codec} from {}", base + mid as i64));
        consumed += RECORDS + RECORDS - mid;
    }

    let (low, high) = consumer.fetch_watermarks(&topic, 0, TIMEOUT).expect("ListOffsets earliest/latest");
    assert_eq!((low, high), (0, total), "watermarks");
    let probe = &runs[1].1[7];
    let mut query = TopicPartitionList::new();
    query.add_partition_offset(&topic, 0, Offset::Offset(probe.timestamp_ms)).expect("query");
    let found = consumer.offsets_for_times(query, TIMEOUT).expect("ListOffsets by timestamp");
    let found = found.find_partition(&topic, 0).expect("partition in answer").offset();
    assert_eq!(found, Offset::Offset(probe.offset), "offset for timestamp {}", probe.timestamp_ms);
    let mut query = TopicPartitionList::new();
    query.add_partition_offset(&topic, 0, Offset::Offset(base_ts - 60_000)).expect("query");
    let found = consumer.offsets_for_times(query, TIMEOUT).expect("ListOffsets by timestamp");
    assert_eq!(found.find_partition(&topic, 0).expect("partition").offset(), Offset::Offset(0), "before all records");

    let described =
        rt.block_on(admin.describe_configs([&ResourceSpecifier::Topic(&topic)], &opts)).expect("DescribeConfigs");
    let resource = described.into_iter().next().expect("one resource").expect("DescribeConfigs for the topic");
    let entries = resource.entry_map();
    let value = |name: &str| entries.get(name).and_then(|e| e.value.clone());
    assert_eq!(value("retention.ms").as_deref(), Some(RETENTION_MS), "retention.ms");
    assert_eq!(value("cleanup.policy").as_deref(), Some("delete"), "cleanup.policy");
    eprintln!("OK rdkafka produced={total} consumed={consumed} codecs={}", CODECS.join(","));
}
