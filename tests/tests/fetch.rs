//! Fetch behaves as consumers rely on: an empty fetch waits `max_wait_ms`, an append wakes a
//! waiting fetch at once, `min_bytes` holds a fetch until enough data arrives, and fetching at an
//! offset inside a batch returns the whole batch.

use std::time::{Duration, Instant};

use creek_protocol::batch::{BatchView, build_batch};
use creek_tests::CreekProcess;
use creek_tests::wire::{self, Wire, topic_name};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, fetch_request};

const TOPIC: &str = "longpoll";

fn fetch_with(w: &mut Wire, offset: i64, max_wait_ms: i32, min_bytes: i32) -> (FetchResponse, Duration) {
    let mut p = fetch_request::FetchPartition::default();
    p.partition = 0;
    p.fetch_offset = offset;
    p.partition_max_bytes = 1 << 20;
    p.current_leader_epoch = -1;
    let mut t = fetch_request::FetchTopic::default();
    t.topic = topic_name(TOPIC);
    t.partitions = vec![p];
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_wait_ms = max_wait_ms;
    req.min_bytes = min_bytes;
    req.max_bytes = 1 << 20;
    req.topics = vec![t];
    let start = Instant::now();
    let resp: FetchResponse = w.call(ApiKey::Fetch, 11, &req);
    (resp, start.elapsed())
}

fn records_len(resp: &FetchResponse) -> usize {
    resp.responses[0].partitions[0].records.as_ref().map_or(0, |r| r.len())
}

#[test]
fn long_poll_waits_wakes_on_append_and_honours_min_bytes() {
    let broker = CreekProcess::start(&[]);
    let mut w = Wire::connect(broker.bootstrap());
    assert_eq!(wire::create_topic(&mut w, TOPIC, 1, &[]), 0);

    // Empty partition: the fetch is answered after max_wait_ms, empty.
    let (resp, took) = fetch_with(&mut w, 0, 400, 1);
    assert_eq!(records_len(&resp), 0);
    assert!(took >= Duration::from_millis(380), "empty fetch returned after {took:?}, before max_wait_ms");

    // A waiting fetch is woken by an append long before its 10 s max wait.
    let addr = broker.bootstrap().to_string();
    let producer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut p = Wire::connect(&addr);
        wire::produce(&mut p, TOPIC, 0, build_batch(0, 1, &[(None, Some(b"wake"))]), 1)
    });
    let (resp, took) = fetch_with(&mut w, 0, 10_000, 1);
    assert_eq!(producer.join().unwrap(), (0, 0));
    assert!(records_len(&resp) > 0, "woken fetch carries the appended batch");
    assert!(took < Duration::from_secs(5), "fetch was not woken by the append (took {took:?})");

    // min_bytes above what is there: the fetch waits for max_wait, then returns what exists.
    let (resp, took) = fetch_with(&mut w, 0, 400, 1 << 20);
    assert!(records_len(&resp) > 0);
    assert!(took >= Duration::from_millis(380), "min_bytes not honoured: returned after {took:?}");

    // Fetching at an offset inside a batch returns the whole batch, starting at its base.
    let five: Vec<(Option<&[u8]>, Option<&[u8]>)> = (0..5).map(|_| (None, Some(&b"r"[..]))).collect();
    assert_eq!(wire::produce(&mut w, TOPIC, 0, build_batch(0, 2, &five), 1), (0, 1));
    let (resp, _) = fetch_with(&mut w, 3, 0, 1);
    let records = resp.responses[0].partitions[0].records.clone().unwrap();
    let view = BatchView::new(&records).unwrap();
    assert_eq!((view.base_offset(), view.last_offset()), (1, 5), "the batch holding offset 3, whole");
}
