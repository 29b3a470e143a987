//! Real Kafka clients (confluent-kafka, kafka-python, aiokafka, kafkajs, kcat) against the real creek binary.
//!
//! Each test starts its own broker and runs one program from `tests/clients/`, which creates a topic,
//! produces with every codec (none, gzip, snappy, lz4, zstd) records with keys, non-UTF-8 values,
//! duplicate-key headers and timestamps, reads them back byte-exact by manual assignment, lists
//! offsets and describes the topic's configs. The programs and their tools come from
//! `tests/setup.sh`; a missing one fails the test with that hint.

use std::process::Command;
use std::time::Duration;

use creek_tests::{CreekProcess, tools};

const CLIENT_LIMIT: Duration = Duration::from_secs(180);

fn scenario_args(cmd: &mut Command, broker: &CreekProcess, topic: &str) {
    cmd.args(["--bootstrap", broker.bootstrap(), "--topic", topic]);
}

fn run_python_client(client: &str, script: &str) -> String {
    // Goal: the Python client round-trips every codec through creek byte-exact.
    let python = tools::venv_python();
    let script = tools::client_path(&format!("python/{script}"));
    let broker = CreekProcess::start(&[]);
    let topic = creek_tests::unique_topic(client);
    let mut cmd = tools::command_in(&python, script.parent().expect("script dir"));
    cmd.arg(&script);
    scenario_args(&mut cmd, &broker, &topic);
    tools::run_client_ok(client, cmd, CLIENT_LIMIT)
}

fn assert_all_codecs(line: &str) {
    assert!(line.contains("codecs=none,gzip,snappy,lz4,zstd"), "not every codec ran: {line}");
}

#[test]
fn confluent_kafka_round_trips_every_codec() {
    let line = run_python_client("confluent-kafka", "confluent_client.py");
    assert_all_codecs(&line);
}

#[test]
fn kafka_python_round_trips_every_codec() {
    let line = run_python_client("kafka-python", "kafka_python_client.py");
    assert_all_codecs(&line);
}

#[test]
fn aiokafka_round_trips_every_codec() {
    let line = run_python_client("aiokafka", "aiokafka_client.py");
    assert_all_codecs(&line);
}

#[test]
fn kafkajs_round_trips_every_codec() {
    // Goal: kafkajs (with npm codecs for snappy, lz4, zstd) round-trips every codec through creek.
    let node = tools::node();
    let script = tools::client_path("node/kafkajs_client.js");
    let broker = CreekProcess::start(&[]);
    let topic = creek_tests::unique_topic("kafkajs");
    let mut cmd = tools::command_in(&node, script.parent().expect("script dir"));
    cmd.arg(&script).env("KAFKAJS_NO_PARTITIONER_WARNING", "1");
    scenario_args(&mut cmd, &broker, &topic);
    let line = tools::run_client_ok("kafkajs", cmd, CLIENT_LIMIT);
    assert_all_codecs(&line);
}

#[test]
fn kcat_round_trips_every_codec_on_an_auto_created_topic() {
    // Goal: kcat produces to a topic that Metadata auto-creates, and reads every codec back byte-exact.
    let kcat = tools::kcat();
    let script = tools::client_path("kcat_client.sh");
    let broker = CreekProcess::start(&[("auto.create.topics.enable", "true"), ("num.partitions", "1")]);
    let topic = creek_tests::unique_topic("kcat");
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    // The script finds kcat on PATH; put the one we found first.
    let dir = kcat.parent().expect("kcat dir").to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let paths = std::iter::once(dir).chain(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(paths).expect("PATH"));
    scenario_args(&mut cmd, &broker, &topic);
    let line = tools::run_client_ok("kcat", cmd, CLIENT_LIMIT);
    assert_all_codecs(&line);
}
