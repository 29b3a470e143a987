//! Data, topic configs, topic ids and offsets survive a clean restart (SIGTERM, then start again).

use creek_protocol::batch::build_batch;
use creek_tests::CreekProcess;
use creek_tests::wire::{self, Wire};
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};

const TOPIC: &str = "durable";

fn topic_config(w: &mut Wire, name: &str) -> (String, i8) {
    let (code, config) = wire::topic_config(w, TOPIC, name);
    assert_eq!(code, 0, "DescribeConfigs error");
    config.expect("requested config is described")
}

fn topic_id(w: &mut Wire) -> uuid::Uuid {
    let mut req = MetadataRequest::default();
    req.topics = None;
    let md: MetadataResponse = w.call(ApiKey::Metadata, 12, &req);
    md.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == TOPIC)).expect("topic listed").topic_id
}

fn snapshot(broker: &CreekProcess) -> Vec<(i64, i64, Vec<u8>)> {
    let mut w = Wire::connect(broker.bootstrap());
    (0..2)
        .map(|p| {
            let (_, start) = wire::list_offset(&mut w, TOPIC, p, -2);
            let (_, end) = wire::list_offset(&mut w, TOPIC, p, -1);
            let mut all = Vec::new();
            let mut offset = start;
            while offset < end {
                let (err, _, records) = wire::fetch(&mut w, TOPIC, p, offset, 0);
                assert_eq!(err, 0);
                let ranges = creek_protocol::batch::batch_ranges(&records).unwrap();
                for r in ranges {
                    let v = creek_protocol::batch::BatchView::new(&records[r.clone()]).unwrap();
                    offset = v.last_offset() + 1;
                    all.extend_from_slice(&records[r]);
                }
            }
            (start, end, all)
        })
        .collect()
}

#[test]
fn data_configs_and_offsets_survive_a_clean_restart() {
    let mut broker = CreekProcess::start(&[]);
    let mut w = Wire::connect(broker.bootstrap());
    let configs = [("retention.ms", "123456789"), ("segment.bytes", "65536"), ("cleanup.policy", "delete")];
    assert_eq!(wire::create_topic(&mut w, TOPIC, 2, &configs), 0);
    for i in 0..400i64 {
        let value = format!("value-{i}-").repeat(20);
        let batch =
            build_batch(0, 1_700_000_000_000 + i, &[(Some(format!("k{i}").as_bytes()), Some(value.as_bytes()))]);
        // acks=1: not fsynced per request, so the clean shutdown must flush it.
        assert_eq!(wire::produce(&mut w, TOPIC, (i % 2) as i32, batch, 1).0, 0);
    }
    let id = topic_id(&mut w);
    let before = snapshot(&broker);
    assert!(before.iter().all(|(_, end, _)| *end == 200));

    assert!(broker.stop().success(), "clean shutdown exits 0");
    broker.restart();

    let mut w = Wire::connect(broker.bootstrap());
    assert_eq!(snapshot(&broker), before, "data and offsets after restart");
    assert_eq!(topic_id(&mut w), id, "topic id after restart");
    assert_eq!(
        topic_config(&mut w, "retention.ms"),
        ("123456789".to_string(), 1),
        "override kept as DYNAMIC_TOPIC_CONFIG"
    );
    assert_eq!(topic_config(&mut w, "segment.bytes").0, "65536");
    let next = build_batch(0, 1_700_000_001_000, &[(None, Some(b"after restart"))]);
    assert_eq!(wire::produce(&mut w, TOPIC, 0, next, -1), (0, 200), "appends continue at the old log end");
}
