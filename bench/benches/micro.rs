//! Micro-benchmarks of the hot path's pieces: segment append and read, batch header validation,
//! request decoding, and offset lookup through the index. Run: `cargo bench -p creek-bench`.

use bytes::{Bytes, BytesMut};
use creek_protocol::batch::{BatchView, build_batch};
use creek_protocol::budget::BudgetAllocator;
use creek_protocol::codec::decode_body;
use creek_storage::{LogConfig, PartitionLog};
use divan::Bencher;
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::protocol::{Encodable, StrBytes};

#[global_allocator]
static ALLOC: BudgetAllocator = BudgetAllocator;

fn main() {
    divan::main();
}

/// A 16 KiB batch of 16 records of 1 KiB, as a producer with linger would send.
fn batch_16k() -> Vec<u8> {
    let value = vec![b'v'; 1024];
    let records: Vec<(Option<&[u8]>, Option<&[u8]>)> = (0..16).map(|_| (Some(&b"key"[..]), Some(&value[..]))).collect();
    build_batch(0, 1_700_000_000_000, &records)
}

#[divan::bench]
fn validate_batch_header_and_crc(b: Bencher) {
    let batch = batch_16k();
    b.counter(divan::counter::BytesCount::new(batch.len()))
        .bench(|| BatchView::new(divan::black_box(&batch)).unwrap().validate_for_produce().unwrap());
}

#[divan::bench]
fn decode_produce_request(b: Bencher) {
    let mut p = PartitionProduceData::default();
    p.records = Some(Bytes::from(batch_16k()));
    let mut t = TopicProduceData::default();
    t.name = kafka_protocol::messages::TopicName(StrBytes::from_static_str("bench"));
    t.partition_data = vec![p];
    let mut req = ProduceRequest::default();
    req.acks = 1;
    req.topic_data = vec![t];
    let mut buf = BytesMut::new();
    req.encode(&mut buf, 9).unwrap();
    let body = buf.freeze();
    b.counter(divan::counter::BytesCount::new(body.len()))
        .bench(|| decode_body::<ProduceRequest>(divan::black_box(body.clone()), 9).unwrap());
}

fn config() -> LogConfig {
    LogConfig { segment_bytes: 64 << 20, ..LogConfig::default() }
}

#[divan::bench]
fn segment_append_16k(b: Bencher) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(), 0).unwrap();
    let template = batch_16k();
    b.counter(divan::counter::BytesCount::new(template.len()))
        .with_inputs(|| template.clone())
        .bench_local_values(|mut batch| log.append(&mut batch, 0, 0).unwrap());
}

/// As `segment_append_16k`, from an idempotent producer: the cost of the sequence check and of
/// recording the batch in producer state.
#[divan::bench]
fn segment_append_16k_idempotent(b: Bencher) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(), 0).unwrap();
    let template = batch_16k();
    let mut seq = 0i32;
    // The batches are made (and their CRCs sealed) outside the timed part.
    b.counter(divan::counter::BytesCount::new(template.len()))
        .with_inputs(|| {
            let mut batch = template.clone();
            creek_protocol::batch::set_producer(&mut batch, 7, 0, seq, false);
            seq = (seq + 16) & i32::MAX;
            batch
        })
        .bench_local_values(|mut batch| log.append(&mut batch, 0, 0).unwrap());
}

/// A log of 10,000 16 KiB batches across several segments, for reads and index lookups.
fn filled_log(dir: &std::path::Path) -> PartitionLog {
    let mut log = PartitionLog::open(dir, config(), 0).unwrap();
    let template = batch_16k();
    for _ in 0..10_000 {
        let mut batch = template.clone();
        log.append(&mut batch, 0, 0).unwrap();
    }
    log
}

#[divan::bench]
fn segment_read_sequential_1mb(b: Bencher) {
    let dir = tempfile::tempdir().unwrap();
    let log = filled_log(dir.path());
    let end = log.log_end_offset();
    let mut offset = 0;
    b.counter(divan::counter::BytesCount::new(1usize << 20)).bench_local(|| {
        let r = log.read(offset, 1 << 20).unwrap();
        offset = if r.next_offset >= end { 0 } else { r.next_offset };
        r.bytes.len()
    });
}

#[divan::bench]
fn index_lookup_random_offset(b: Bencher) {
    let dir = tempfile::tempdir().unwrap();
    let log = filled_log(dir.path());
    let end = log.log_end_offset();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    b.bench_local(|| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        log.read(x % end, 1).unwrap().next_offset
    });
}
