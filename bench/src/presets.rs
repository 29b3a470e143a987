//! Named workloads, so every run of a preset measures the same thing on any broker.

use crate::load::{Keys, Workload};

/// Names and one-line descriptions, for `creek-bench presets` and the README.
pub const PRESETS: &[(&str, &str)] = &[
    ("acks1-16p", "1 topic, 16 partitions, 1 KiB, acks=1, 1 producer: throughput and broker CPU/GB"),
    ("acks-all-16p", "as acks1-16p with acks=all (every ack after fsync)"),
    ("idempotent-16p", "as acks-all-16p with an idempotent producer"),
    ("txn-16p", "as idempotent-16p inside transactions of 1,000 messages (transaction cost)"),
    ("p100", "100 partitions, 1 KiB, acks=1"),
    ("p1000-keyed", "1,000 partitions, 1 KiB, round-robin over 10,000 keys, acks=1"),
    ("keyed-small", "16 partitions, 100 B records round-robin over 1,000 keys, linger 0 (small batches)"),
    ("producers-4", "16 partitions, 1 KiB, 4 producers"),
    ("producers-50", "16 partitions, 1 KiB, 50 producers"),
    ("drain", "produce 1 GB, then time consumers reading the backlog from offset 0"),
    ("latency-50mb", "fixed 50 MB/s of 1 KiB records for 20 s with a consumer: ack and end-to-end latency"),
];

/// The workload for `name` against `bootstrap`, or `None` if unknown.
pub fn preset(name: &str, bootstrap: &str) -> Option<Workload> {
    let mut w = Workload {
        name: name.to_string(),
        label: bootstrap.to_string(),
        bootstrap: bootstrap.to_string(),
        topic: format!("bench-{name}"),
        partitions: 16,
        message_bytes: 1024,
        messages: 1_000_000,
        duration: None,
        acks: "1".into(),
        compression: "none".into(),
        producers: 1,
        consumers: 0,
        keys: Keys::None,
        rate: 0,
        linger_ms: 5,
        batch_bytes: 1 << 20,
        drain: false,
        idempotence: false,
        transaction_messages: 0,
        broker_pid: None,
        client_properties: Vec::new(),
    };
    match name {
        "acks1-16p" => {}
        "acks-all-16p" => w.acks = "all".into(),
        "idempotent-16p" => {
            w.acks = "all".into();
            w.idempotence = true;
        }
        "txn-16p" => {
            w.acks = "all".into();
            w.transaction_messages = 1000;
        }
        "p100" => w.partitions = 100,
        "p1000-keyed" => {
            w.partitions = 1000;
            w.keys = Keys::RoundRobin(10_000);
        }
        "keyed-small" => {
            w.message_bytes = 100;
            w.messages = 2_000_000;
            w.keys = Keys::RoundRobin(1000);
            w.linger_ms = 0;
        }
        "producers-4" => w.producers = 4,
        "producers-50" => {
            w.producers = 50;
            w.messages = 1_000_000;
        }
        "drain" => {
            w.drain = true;
            w.consumers = 1;
        }
        "latency-50mb" => {
            w.rate = 50_000_000 / 1024;
            w.messages = w.rate * 20;
            w.consumers = 1;
            w.linger_ms = 1;
        }
        _ => return None,
    }
    Some(w)
}
