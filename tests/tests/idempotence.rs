//! Idempotent producers: a retried batch is appended once. Real clients (confluent-kafka, kafkajs,
//! aiokafka) produce through a proxy that drops Produce responses and closes the connection, so
//! they retry batches the broker already appended; the topic is then read directly from the broker
//! and must hold every record exactly once, in send order per partition. Raw-wire tests pin down
//! the broker's answers: duplicates get the original offset (also after SIGKILL and restart), a
//! sequence gap is OUT_OF_ORDER_SEQUENCE, an older epoch INVALID_PRODUCER_EPOCH.
//!
//! The drops are random with a printed seed; set `CREEK_TEST_SEED` to replay a run.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use creek_tests::proxy::{DropMode, Faults, Proxy, Stats};
use creek_tests::wire::{self, Wire};
use creek_tests::{CreekProcess, tools};
use kafka_protocol::messages::ApiKey;

const RECORDS: usize = 2000;
const PARTITIONS: i32 = 3;
const CLIENT_LIMIT: Duration = Duration::from_secs(240);
const PRODUCE: i16 = ApiKey::Produce as i16;

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const UNKNOWN_PRODUCER_ID: i16 = 59;

fn seed() -> u64 {
    std::env::var("CREEK_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    })
}

/// A broker that advertises a proxy, the proxy, and a fresh topic of [`PARTITIONS`] partitions.
fn broker_behind_proxy(prefix: &str) -> (Proxy, CreekProcess, String) {
    let proxy = Proxy::start();
    let broker = CreekProcess::start_advertising(&[], &proxy.addr());
    proxy.set_target(broker.bootstrap());
    let topic = creek_tests::unique_topic(prefix);
    assert_eq!(wire::create_topic(&mut Wire::connect(broker.bootstrap()), &topic, PARTITIONS, &[]), 0);
    (proxy, broker, topic)
}

/// Fails clearly when the broker cannot serve an idempotent producer at all.
fn assert_broker_supports_idempotence(broker: &CreekProcess) {
    let mut w = Wire::connect(broker.bootstrap());
    assert!(
        wire::api_versions(&mut w, ApiKey::InitProducerId).is_some(),
        "the broker does not advertise InitProducerId (api key 22): idempotent producers are not implemented"
    );
}

/// ~5% of Produce responses dropped at random, plus the 3rd and 10th so every run drops some.
fn produce_drops(seed: u64) -> Faults {
    Faults {
        api_key: Some(PRODUCE),
        drop_nth: vec![3, 10],
        drop_probability: 0.05,
        seed,
        mode: DropMode::DropAndClose,
        ..Faults::default()
    }
}

/// What the topic holds compared with what `label`'s producer sent.
#[derive(Debug, Default)]
struct Report {
    stored: usize,
    duplicates: usize,
    missing: usize,
    /// Partitions whose records are not exactly the sent sequence, with the first difference.
    out_of_order: Vec<String>,
}

/// Reads every partition directly from the broker and compares with record i = "<label>-<i>" sent
/// to partition i % PARTITIONS, in order.
fn check_topic(broker: &CreekProcess, topic: &str, label: &str) -> Report {
    let mut report = Report::default();
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    for p in 0..PARTITIONS {
        let got: Vec<Vec<u8>> = wire::read_partition_records(broker.bootstrap(), topic, p)
            .into_iter()
            .map(|r| r.value.expect("no null values were sent"))
            .collect();
        let want: Vec<Vec<u8>> =
            (0..RECORDS).filter(|i| *i as i32 % PARTITIONS == p).map(|i| format!("{label}-{i}").into_bytes()).collect();
        report.stored += got.len();
        for v in &got {
            *seen.entry(v.clone()).or_default() += 1;
        }
        if got != want {
            let at = got.iter().zip(&want).position(|(g, w)| g != w).unwrap_or(got.len().min(want.len()));
            let show = |v: Option<&Vec<u8>>| v.map(|v| String::from_utf8_lossy(v).into_owned());
            report.out_of_order.push(format!(
                "partition {p}: {} records, want {}; first difference at index {at}: got {:?}, want {:?}",
                got.len(),
                want.len(),
                show(got.get(at)),
                show(want.get(at))
            ));
        }
    }
    report.duplicates = seen.values().map(|n| n.saturating_sub(1)).sum();
    report.missing = (0..RECORDS).filter(|i| !seen.contains_key(format!("{label}-{i}").as_bytes())).count();
    report
}

fn print_summary(client: &str, seed: u64, stats: &Stats, report: &Report) {
    println!(
        "{client} seed {seed}: sent {RECORDS}, stored {}, duplicates {}, missing {}; proxy: {} Produce responses, \
         {} dropped, {} connections",
        report.stored, report.duplicates, report.missing, stats.matched, stats.dropped, stats.connections
    );
}

/// Runs an idempotent client through a dropping proxy and asserts exactly-once, in order.
fn idempotent_client_survives_dropped_acks(client: &str, label: &str, command: impl FnOnce(&str, &str) -> Command) {
    let seed = seed();
    idempotent_client_survives(client, label, seed, produce_drops(seed), command);
}

fn idempotent_client_survives(
    client: &str,
    label: &str,
    seed: u64,
    faults: Faults,
    command: impl FnOnce(&str, &str) -> Command,
) {
    println!("{client} idempotence seed: {seed} (replay with CREEK_TEST_SEED={seed}), faults {faults:?}");
    let (proxy, broker, topic) = broker_behind_proxy(label);
    assert_broker_supports_idempotence(&broker);
    proxy.set_faults(faults);
    let line = tools::run_client_ok(client, command(&proxy.addr(), &topic), CLIENT_LIMIT);
    assert!(line.contains(&format!("delivered={RECORDS}")), "{line}");
    let stats = proxy.stats();
    proxy.clear_faults();
    let report = check_topic(&broker, &topic, label);
    print_summary(client, seed, &stats, &report);
    assert!(stats.dropped > 0, "the proxy dropped no Produce response, so nothing was retried: {stats:?}");
    assert_eq!(report.duplicates, 0, "{client} seed {seed}: retried batches were appended twice: {report:?}");
    assert_eq!(report.missing, 0, "{client} seed {seed}: acknowledged records are missing: {report:?}");
    assert_eq!(report.stored, RECORDS, "{client} seed {seed}: record count: {report:?}");
    assert!(report.out_of_order.is_empty(), "{client} seed {seed}: partitions out of send order: {report:?}");
}

fn python_producer(client: &'static str) -> impl FnOnce(&str, &str) -> Command {
    move |bootstrap, topic| {
        let python = tools::venv_python();
        let script = tools::client_path("python/idempotent_producer.py");
        let mut cmd = tools::command_in(&python, script.parent().expect("script dir"));
        cmd.arg(&script).arg(client).args(["--bootstrap", bootstrap, "--topic", topic]);
        cmd.args(["--records", &RECORDS.to_string(), "--partitions", &PARTITIONS.to_string()]);
        cmd
    }
}

#[test]
fn confluent_idempotent_producer_writes_each_record_once_despite_dropped_acks() {
    idempotent_client_survives_dropped_acks("confluent-kafka", "confluent-kafka", python_producer("confluent-kafka"));
}

#[test]
fn confluent_idempotent_producer_writes_each_record_once_when_acks_never_arrive() {
    // Goal: the same with the connection kept open: the 3rd and 10th Produce answers are swallowed,
    // librdkafka times the requests out after 3 s and retries them.
    let faults = Faults { api_key: Some(PRODUCE), drop_nth: vec![3, 10], mode: DropMode::Drop, ..Faults::default() };
    let command = python_producer("confluent-kafka");
    idempotent_client_survives("confluent-kafka", "confluent-kafka", 0, faults, |bootstrap, topic| {
        let mut cmd = command(bootstrap, topic);
        cmd.args(["--request-timeout-ms", "3000"]);
        cmd
    });
}

#[test]
fn aiokafka_idempotent_producer_writes_each_record_once_despite_dropped_acks() {
    idempotent_client_survives_dropped_acks("aiokafka", "aiokafka", python_producer("aiokafka"));
}

#[test]
fn kafkajs_idempotent_producer_writes_each_record_once_despite_dropped_acks() {
    idempotent_client_survives_dropped_acks("kafkajs-idempotent", "kafkajs", |bootstrap, topic| {
        let node = tools::node();
        let script = tools::client_path("node/kafkajs_idempotent.js");
        let mut cmd = tools::command_in(&node, script.parent().expect("script dir"));
        cmd.arg(&script).args(["--bootstrap", bootstrap, "--topic", topic]);
        cmd.args(["--records", &RECORDS.to_string(), "--partitions", &PARTITIONS.to_string()]);
        cmd
    });
}

#[test]
fn non_idempotent_producer_duplicates_on_dropped_acks_so_the_check_can_fail() {
    // Goal: the control experiment. Without idempotence the same faults make retried batches land
    // twice, and `check_topic` sees it: the idempotence tests above are not vacuous. Both drop
    // modes: closing the connection, and swallowing the answer until the 3 s request timeout.
    let seed = seed();
    println!("control seed: {seed} (replay with CREEK_TEST_SEED={seed})");
    let swallow = Faults { api_key: Some(PRODUCE), drop_nth: vec![3, 10], mode: DropMode::Drop, ..Faults::default() };
    for faults in [produce_drops(seed), swallow] {
        let (proxy, broker, topic) = broker_behind_proxy("plain");
        proxy.set_faults(faults.clone());
        let client = "confluent-kafka-plain";
        let mut cmd = python_producer(client)(&proxy.addr(), &topic);
        cmd.args(["--request-timeout-ms", "3000"]);
        tools::run_client_ok(client, cmd, CLIENT_LIMIT);
        let stats = proxy.stats();
        let report = check_topic(&broker, &topic, client);
        print_summary(&format!("{client} ({:?})", faults.mode), seed, &stats, &report);
        assert!(stats.dropped > 0, "{stats:?}");
        assert!(
            report.duplicates > 0,
            "{:?}: dropped acks without idempotence left no duplicate: {report:?}",
            faults.mode
        );
        assert_eq!(report.missing, 0, "{report:?}");
    }
}

// ---- raw wire ---------------------------------------------------------------------------------

const TS: i64 = 1_700_000_000_000;

/// A fresh one-partition topic and an idempotent producer id: (connection, topic, pid, epoch).
fn raw_setup(broker: &CreekProcess, prefix: &str) -> (Wire, String, i64, i16) {
    let mut w = Wire::connect(broker.bootstrap());
    let topic = creek_tests::unique_topic(prefix);
    assert_eq!(wire::create_topic(&mut w, &topic, 1, &[]), 0);
    let (err, pid, epoch) = wire::init_producer_id(&mut w, None, 60_000);
    assert_eq!(err, 0, "InitProducerId (idempotent) error");
    assert!(pid >= 0 && epoch >= 0, "InitProducerId returned producer id {pid} epoch {epoch}");
    (w, topic, pid, epoch)
}

/// A batch of `n` records from (pid, epoch) starting at `seq`.
fn batch(pid: i64, epoch: i16, seq: i32, n: usize) -> Vec<u8> {
    let values: Vec<String> = (0..n).map(|i| format!("seq-{}", seq as usize + i)).collect();
    let records: Vec<wire::KeyValue<'_>> = values.iter().map(|v| (None, Some(v.as_bytes()))).collect();
    wire::producer_batch(pid, epoch, seq, false, TS, &records)
}

fn log_end(w: &mut Wire, topic: &str) -> i64 {
    let (err, offset) = wire::list_offset(w, topic, 0, -1);
    assert_eq!(err, 0, "ListOffsets latest");
    offset
}

#[test]
fn raw_same_sequence_twice_gets_the_original_offset_and_is_appended_once() {
    let broker = CreekProcess::start(&[]);
    let (mut w, topic, pid, epoch) = raw_setup(&broker, "raw-dup");
    assert_eq!(wire::produce(&mut w, &topic, 0, batch(pid, epoch, 0, 3), -1), (0, 0));
    assert_eq!(wire::produce(&mut w, &topic, 0, batch(pid, epoch, 0, 3), -1), (0, 0), "retry of the last batch");
    assert_eq!(log_end(&mut w, &topic), 3, "the retry moved the log end");
    assert_eq!(wire::produce(&mut w, &topic, 0, batch(pid, epoch, 3, 2), -1), (0, 3));
    // An older batch still among the last five is a duplicate too, answered with its offset.
    assert_eq!(wire::produce(&mut w, &topic, 0, batch(pid, epoch, 0, 3), -1), (0, 0), "retry of an older batch");
    assert_eq!(wire::produce(&mut w, &topic, 0, batch(pid, epoch, 3, 2), -1), (0, 3));
    assert_eq!(log_end(&mut w, &topic), 5);
    let stored = wire::read_partition_records(broker.bootstrap(), &topic, 0);
    let seqs: Vec<i32> = stored.iter().map(|r| r.sequence).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4], "stored sequences: {stored:?}");
    assert!(stored.iter().all(|r| r.producer_id == pid && r.producer_epoch == epoch), "{stored:?}");
}

#[test]
fn raw_sequence_gap_is_out_of_order_sequence() {
    let broker = CreekProcess::start(&[]);
    let (mut w, topic, pid, epoch) = raw_setup(&broker, "raw-gap");
    assert_eq!(wire::produce(&mut w, &topic, 0, batch(pid, epoch, 0, 2), -1), (0, 0));
    let (err, _) = wire::produce(&mut w, &topic, 0, batch(pid, epoch, 5, 1), -1);
    assert_eq!(err, OUT_OF_ORDER_SEQUENCE_NUMBER, "sequence 5 after 0..=1");
    assert_eq!(log_end(&mut w, &topic), 2, "the refused batch was appended");
    // The producer can go on from where it really is.
    assert_eq!(wire::produce(&mut w, &topic, 0, batch(pid, epoch, 2, 1), -1), (0, 2));
}

#[test]
fn raw_older_epoch_is_invalid_producer_epoch() {
    let broker = CreekProcess::start(&[]);
    let (mut w, topic, pid, epoch) = raw_setup(&broker, "raw-epoch");
    assert_eq!(wire::produce(&mut w, &topic, 0, batch(pid, epoch, 0, 2), -1), (0, 0));
    // A newer epoch restarts sequences at 0 (as after KIP-360's epoch bump); the partition now
    // knows epoch + 1, so the old epoch is fenced.
    assert_eq!(wire::produce(&mut w, &topic, 0, batch(pid, epoch + 1, 0, 1), -1), (0, 2), "new epoch, sequence 0");
    let (err, _) = wire::produce(&mut w, &topic, 0, batch(pid, epoch, 2, 1), -1);
    assert_eq!(err, INVALID_PRODUCER_EPOCH, "a batch from the older epoch");
    assert_eq!(log_end(&mut w, &topic), 3);
}

#[test]
fn raw_unknown_producer_with_nonzero_sequence_is_refused() {
    let broker = CreekProcess::start(&[]);
    let (mut w, topic, pid, _) = raw_setup(&broker, "raw-unknown");
    // A producer id this partition has never seen, starting mid-stream.
    let (err, _) = wire::produce(&mut w, &topic, 0, batch(pid + 1000, 0, 7, 1), -1);
    assert!(
        err == UNKNOWN_PRODUCER_ID || err == OUT_OF_ORDER_SEQUENCE_NUMBER,
        "unknown producer with sequence 7: error {err}, want {UNKNOWN_PRODUCER_ID} or {OUT_OF_ORDER_SEQUENCE_NUMBER}"
    );
    assert_eq!(log_end(&mut w, &topic), 0);
}

#[test]
fn raw_duplicate_is_detected_after_sigkill_and_restart() {
    // Goal: producer state is rebuilt from the log: a retry that reaches a restarted broker is
    // still answered with the original offset and not appended again.
    let mut broker = CreekProcess::start(&[]);
    let (mut w, topic, pid, epoch) = raw_setup(&broker, "raw-crash");
    assert_eq!(wire::produce(&mut w, &topic, 0, batch(pid, epoch, 0, 3), -1), (0, 0));
    assert_eq!(wire::produce(&mut w, &topic, 0, batch(pid, epoch, 3, 3), -1), (0, 3));
    broker.kill();
    broker.restart();
    let mut w = Wire::connect(broker.bootstrap());
    assert_eq!(wire::produce(&mut w, &topic, 0, batch(pid, epoch, 3, 3), -1), (0, 3), "retry after SIGKILL");
    assert_eq!(wire::produce(&mut w, &topic, 0, batch(pid, epoch, 0, 3), -1), (0, 0), "older retry after SIGKILL");
    assert_eq!(log_end(&mut w, &topic), 6, "a retry after restart was appended again");
    let (err, _) = wire::produce(&mut w, &topic, 0, batch(pid, epoch, 9, 1), -1);
    assert_eq!(err, OUT_OF_ORDER_SEQUENCE_NUMBER, "the rebuilt state knows the next sequence is 6");
    assert_eq!(wire::produce(&mut w, &topic, 0, batch(pid, epoch, 6, 1), -1), (0, 6));
    // And after a clean restart too.
    assert!(broker.stop().success());
    broker.restart();
    let mut w = Wire::connect(broker.bootstrap());
    assert_eq!(wire::produce(&mut w, &topic, 0, batch(pid, epoch, 6, 1), -1), (0, 6), "retry after a clean restart");
    assert_eq!(log_end(&mut w, &topic), 7);
}
