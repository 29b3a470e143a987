//! Transactions with confluent-kafka (`tests/clients/python/txn_pipeline.py`) against the real
//! creek binary: aborted records are invisible to read_committed and visible to read_uncommitted;
//! a hung transaction is aborted after its timeout and stops holding back the last stable offset;
//! and a consume-transform-produce pipeline turns N input records into exactly N output records
//! (read_committed) through a clean run, a SIGKILLed broker, a SIGKILLed pipeline replaced by a new
//! process with the same transactional.id, and a SIGSTOPped zombie that must be fenced.

use std::process::Command;
use std::time::Duration;

use creek_tests::tools::{self, RunningClient};
use creek_tests::wire::{self, Wire};
use creek_tests::{CreekProcess, unique_topic};
use nix::sys::signal::Signal;

const CLIENT: &str = "confluent-kafka-txn";
const CLIENT_LIMIT: Duration = Duration::from_secs(240);
const RECORDS: usize = 5000;
const PARTITIONS: i32 = 3;
const EXIT_FENCED: i32 = 3;
const EXIT_FATAL: i32 = 4;
/// Kafka's name for how often the coordinator looks for timed-out transactions (default 10 s).
const ABORT_INTERVAL_CONFIG: &str = "transaction.abort.timed.out.transaction.cleanup.interval.ms";

fn script(broker: &CreekProcess, mode: &str) -> Command {
    let python = tools::venv_python();
    let script = tools::client_path("python/txn_pipeline.py");
    let mut cmd = tools::command_in(&python, script.parent().expect("script dir"));
    cmd.arg(&script).arg(mode).args(["--bootstrap", broker.bootstrap()]);
    cmd
}

/// Broker settings: no initial rebalance delay, and a 1 s timed-out-transaction scan if this
/// broker has that config (an unknown `--set` stops creek from starting, so ask its source).
fn broker_settings() -> Vec<(&'static str, &'static str)> {
    let mut settings = vec![("group.initial.rebalance.delay.ms", "0")];
    let config_rs = tools::tests_dir().join("../broker/src/config.rs");
    if std::fs::read_to_string(&config_rs).is_ok_and(|s| s.contains(ABORT_INTERVAL_CONFIG)) {
        settings.push((ABORT_INTERVAL_CONFIG, "1000"));
    } else {
        println!("{ABORT_INTERVAL_CONFIG} is not a creek config: the broker's default scan interval applies");
    }
    settings
}

fn start_broker() -> CreekProcess {
    let settings = broker_settings();
    let broker = CreekProcess::start(&settings);
    let mut w = Wire::connect(broker.bootstrap());
    assert!(
        wire::api_versions(&mut w, kafka_protocol::messages::ApiKey::EndTxn).is_some(),
        "the broker does not advertise EndTxn (api key 26): transactions are not implemented"
    );
    broker
}

#[test]
fn aborted_transactions_are_hidden_from_read_committed_only() {
    // Goal: committed, aborted, committed: read_committed sees the two committed transactions in
    // order and nothing of the aborted one; read_uncommitted sees all three.
    let broker = start_broker();
    let topic = unique_topic("txn-basic");
    assert_eq!(wire::create_topic(&mut Wire::connect(broker.bootstrap()), &topic, 1, &[]), 0);
    let mut cmd = script(&broker, "basic");
    cmd.args(["--topic", &topic]);
    let line = tools::run_client_ok(CLIENT, cmd, CLIENT_LIMIT);
    assert!(line.contains("read_committed=20 read_uncommitted=30"), "{line}");
}

#[test]
fn hung_transaction_is_aborted_after_its_timeout_and_unblocks_read_committed() {
    // Goal: a producer SIGKILLed inside a transaction (timeout 5 s) does not hold back the last
    // stable offset forever: the broker aborts it, and read_committed then sees later commits.
    let broker = start_broker();
    let topic = unique_topic("txn-hang");
    assert_eq!(wire::create_topic(&mut Wire::connect(broker.bootstrap()), &topic, 1, &[]), 0);
    let mut cmd = script(&broker, "hang");
    cmd.args(["--topic", &topic, "--txn-id", &format!("{topic}-hung"), "--txn-timeout-ms", "5000"]);
    let mut hung = RunningClient::spawn("txn-hang", cmd);
    hung.wait_for_line("HUNG", Duration::from_secs(60));
    hung.signal(Signal::SIGKILL);
    let _ = hung.wait(Duration::from_secs(10));
    let mut cmd = script(&broker, "after-hang");
    cmd.args(["--topic", &topic, "--wait-s", "60"]);
    let line = tools::run_client_ok(CLIENT, cmd, CLIENT_LIMIT);
    println!("{line}");
    assert!(line.contains("committed_seen=10 hung_in_log=10"), "{line}");
    assert_no_open_transaction(&broker, &topic, 1, "hung transaction");
    // Exactly one marker per transaction: the timeout's ABORT for the hung producer and the COMMIT
    // of the later one, in either order (the commit usually lands before the timeout fires).
    let markers = wire::read_partition_markers(broker.bootstrap(), &topic, 0);
    let aborts = markers.iter().filter(|m| !m.commit).count();
    let commits = markers.iter().filter(|m| m.commit).count();
    assert_eq!((aborts, commits), (1, 1), "want one ABORT and one COMMIT marker, got {markers:?}");
    assert_ne!(markers[0].producer_id, markers[1].producer_id, "{markers:?}");
}

// ---- consume-transform-produce -------------------------------------------------------------------

struct Pipeline {
    input: String,
    output: String,
    group: String,
    txn_id: String,
}

/// Creates input and output topics and fills the input with [`RECORDS`] records.
fn prepare(broker: &CreekProcess, prefix: &str) -> Pipeline {
    let base = unique_topic(prefix);
    let p = Pipeline {
        input: format!("{base}-in"),
        output: format!("{base}-out"),
        group: format!("{base}-group"),
        txn_id: format!("{base}-txn"),
    };
    let mut w = Wire::connect(broker.bootstrap());
    assert_eq!(wire::create_topic(&mut w, &p.input, PARTITIONS, &[]), 0);
    assert_eq!(wire::create_topic(&mut w, &p.output, PARTITIONS, &[]), 0);
    let mut cmd = script(broker, "produce-input");
    cmd.args(["--input", &p.input, "--records", &RECORDS.to_string(), "--partitions", &PARTITIONS.to_string()]);
    tools::run_client_ok(CLIENT, cmd, CLIENT_LIMIT);
    p
}

fn pipeline_cmd(broker: &CreekProcess, p: &Pipeline, extra: &[&str]) -> Command {
    let mut cmd = script(broker, "pipeline");
    cmd.args(["--input", &p.input, "--output", &p.output, "--group", &p.group, "--txn-id", &p.txn_id]);
    cmd.args(["--batch", "100"]).args(extra);
    cmd
}

/// Runs pipeline processes until one exits 0, starting a new one (same transactional.id) after a
/// fatal error, at most `restarts_max` times. Returns how many were started.
fn run_pipeline_to_end(broker: &CreekProcess, p: &Pipeline, first: RunningClient, restarts_max: usize) -> usize {
    let mut running = first;
    let mut started = 1;
    loop {
        let out = running.wait(CLIENT_LIMIT);
        match out.status.code() {
            Some(0) => {
                assert!(out.stdout.contains("OK confluent-kafka-txn pipeline"), "{}", out.stdout);
                return started;
            }
            Some(EXIT_FATAL) if started <= restarts_max => {
                println!("pipeline process {started} exited with a fatal error; starting a new one");
            }
            other => panic!(
                "pipeline process {started} exited with {other:?}: {}",
                out.stdout
                    .lines()
                    .chain(out.stderr.lines())
                    .filter(|l| l.starts_with("FA"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
        started += 1;
        running = RunningClient::spawn(&format!("pipeline-{started}"), pipeline_cmd(broker, p, &[]));
    }
}

/// The output as read_committed sees it; asserts exactly once and prints the numbers.
fn verify_exactly_once(broker: &CreekProcess, p: &Pipeline, scenario: &str) {
    let mut cmd = script(broker, "verify");
    cmd.args(["--input", &p.input, "--output", &p.output]);
    cmd.args(["--records", &RECORDS.to_string(), "--partitions", &PARTITIONS.to_string()]);
    let out = tools::run_with_limit(cmd, CLIENT_LIMIT);
    assert!(out.status.success(), "verify failed: {}", out.stderr);
    let result = out.stdout.lines().find_map(|l| l.strip_prefix("RESULT ")).expect("a RESULT line").to_string();
    let n = |key: &str| json_int(&result, key);
    println!(
        "{scenario}: records in {} / records out {} / duplicates {} / missing {} / unexpected {}",
        n("records_in"),
        n("records_out"),
        n("duplicates"),
        n("missing"),
        n("unexpected")
    );
    assert!(
        result.contains("\"partitions_not_at_end\": []"),
        "{scenario}: read_committed never reached the end of some output partitions: {result}"
    );
    assert_no_open_transaction(broker, &p.output, PARTITIONS, scenario);
    assert_eq!(n("duplicates"), 0, "{scenario}: duplicates in the committed output: {result}");
    assert_eq!(n("missing"), 0, "{scenario}: input records missing from the committed output: {result}");
    assert_eq!(n("unexpected"), 0, "{scenario}: unexpected output values: {result}");
    assert_eq!(n("bad_keys"), 0, "{scenario}: output keys not naming their input record: {result}");
    assert_eq!(n("records_out"), RECORDS as i64, "{scenario}: records out != records in: {result}");
}

/// Every partition's last stable offset equals its high watermark: no transaction is left open.
fn assert_no_open_transaction(broker: &CreekProcess, topic: &str, partitions: i32, scenario: &str) {
    let mut w = Wire::connect(broker.bootstrap());
    for partition in 0..partitions {
        let (err, hw, lso) = wire::stable_offsets(&mut w, topic, partition);
        assert_eq!(err, 0, "{scenario}: read_committed fetch of {topic}/{partition}");
        assert_eq!(lso, hw, "{scenario}: {topic}/{partition} last stable offset {lso} below high watermark {hw}");
    }
}

/// Markers written for a transaction that already had one: a marker of a producer with no data
/// of that producer since its previous marker (or before its first). Kafka writes one marker
/// per partition per transaction. (A transaction that registered a partition but wrote nothing
/// there before aborting would also count, so only a clean run asserts zero.)
fn redundant_markers(broker: &CreekProcess, topic: &str, partitions: i32) -> Vec<String> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let mut events: Vec<(i64, i64, Option<bool>)> = wire::read_partition_records(broker.bootstrap(), topic, p)
            .into_iter()
            .map(|r| (r.offset, r.producer_id, None))
            .collect();
        let markers = wire::read_partition_markers(broker.bootstrap(), topic, p);
        events.extend(markers.iter().map(|m| (m.offset, m.producer_id, Some(m.commit))));
        events.sort();
        let mut data_since_marker = std::collections::HashMap::new();
        for (offset, pid, marker) in events {
            match marker {
                None => {
                    data_since_marker.insert(pid, true);
                }
                Some(commit) => {
                    if !data_since_marker.insert(pid, false).unwrap_or(false) {
                        let kind = if commit { "COMMIT" } else { "ABORT" };
                        out.push(format!(
                            "{topic}/{p} offset {offset}: {kind} of producer {pid} with no data since its last marker"
                        ));
                    }
                }
            }
        }
    }
    out
}

/// The integer value of `"key": N` in a flat JSON object.
fn json_int(json: &str, key: &str) -> i64 {
    let pat = format!("\"{key}\": ");
    let at = json.find(&pat).unwrap_or_else(|| panic!("{key} missing from {json}")) + pat.len();
    let digits: String = json[at..].chars().take_while(|c| c.is_ascii_digit() || *c == '-').collect();
    digits.parse().unwrap_or_else(|_| panic!("{key} is not an integer in {json}"))
}

#[test]
fn pipeline_clean_run_is_exactly_once() {
    let broker = start_broker();
    let p = prepare(&broker, "eos-clean");
    let line = tools::run_client_ok(CLIENT, pipeline_cmd(&broker, &p, &[]), CLIENT_LIMIT);
    println!("{line}");
    assert!(line.contains(&format!("records={RECORDS}")), "{line}");
    verify_exactly_once(&broker, &p, "clean run");
    let redundant = redundant_markers(&broker, &p.output, PARTITIONS);
    assert!(redundant.is_empty(), "clean run: {} redundant markers: {redundant:#?}", redundant.len());
}

#[test]
fn pipeline_survives_broker_sigkill_exactly_once() {
    // Goal: the broker is SIGKILLed and restarted inside a transaction; the pipeline commits it,
    // or aborts and rewinds, or (after a fatal error) is restarted with the same
    // transactional.id; the committed output is exact.
    let mut broker = start_broker();
    let p = prepare(&broker, "eos-broker-kill");
    // The kill lands inside transaction 11: its records are written (flushed), its offsets and
    // commit are not; the broker must bring the open transaction back from its logs.
    let hold = ["--slow-ms", "30", "--hold-after", "10", "--hold-s", "2"];
    let mut first = RunningClient::spawn("pipeline-1", pipeline_cmd(&broker, &p, &hold));
    first.wait_for_line("HOLDING", Duration::from_secs(120));
    broker.kill();
    // Not synchronisation: the broker stays down a moment, so clients see refused connections.
    std::thread::sleep(Duration::from_millis(500));
    broker.restart();
    let started = run_pipeline_to_end(&broker, &p, first, 3);
    println!("broker SIGKILL: {started} pipeline process(es)");
    verify_exactly_once(&broker, &p, "broker SIGKILL");
    let redundant = redundant_markers(&broker, &p.output, PARTITIONS);
    println!("broker SIGKILL: {} redundant markers {redundant:?}", redundant.len());
}

#[test]
fn pipeline_sigkilled_in_a_transaction_and_replaced_is_exactly_once() {
    // Goal: a pipeline killed with a transaction open (produced, not committed) is replaced by a
    // new process with the same transactional.id: the open transaction is aborted, the new process
    // resumes from the committed offsets, and nothing is lost or doubled.
    let broker = start_broker();
    let p = prepare(&broker, "eos-replace");
    let mut first =
        RunningClient::spawn("pipeline-1", pipeline_cmd(&broker, &p, &["--hold-after", "10", "--hold-s", "30"]));
    first.wait_for_line("HOLDING", Duration::from_secs(120));
    first.signal(Signal::SIGKILL);
    let _ = first.wait(Duration::from_secs(10));
    let second = RunningClient::spawn("pipeline-2", pipeline_cmd(&broker, &p, &[]));
    run_pipeline_to_end(&broker, &p, second, 0);
    verify_exactly_once(&broker, &p, "pipeline SIGKILL + replacement");
    let redundant = redundant_markers(&broker, &p.output, PARTITIONS);
    println!("pipeline SIGKILL + replacement: {} redundant markers {redundant:?}", redundant.len());
}

#[test]
fn zombie_pipeline_is_fenced_by_its_replacement() {
    // Goal: the first process is SIGSTOPped inside a transaction, a second one with the same
    // transactional.id runs to the end, then the first resumes: its commit must fail as fenced,
    // and the committed output stays exactly once.
    let broker = start_broker();
    let p = prepare(&broker, "eos-zombie");
    let mut zombie =
        RunningClient::spawn("zombie", pipeline_cmd(&broker, &p, &["--hold-after", "10", "--hold-s", "3"]));
    zombie.wait_for_line("HOLDING", Duration::from_secs(120));
    zombie.signal(Signal::SIGSTOP);
    let second = RunningClient::spawn("pipeline-2", pipeline_cmd(&broker, &p, &[]));
    run_pipeline_to_end(&broker, &p, second, 0);
    zombie.signal(Signal::SIGCONT);
    let out = zombie.wait(CLIENT_LIMIT);
    let after_hold: Vec<&str> = out.stdout.lines().skip_while(|l| !l.starts_with("HOLDING")).collect();
    println!("zombie after SIGCONT: {after_hold:?} ({})", out.status);
    assert!(
        !after_hold.iter().any(|l| l.starts_with("COMMITTED")),
        "the zombie committed a transaction after being replaced: {after_hold:?}"
    );
    assert_eq!(
        out.status.code(),
        Some(EXIT_FENCED),
        "the zombie was not fenced (want exit {EXIT_FENCED} and a FENCED line): {after_hold:?}"
    );
    verify_exactly_once(&broker, &p, "zombie fenced");
    let redundant = redundant_markers(&broker, &p.output, PARTITIONS);
    println!("zombie fenced: {} redundant markers {redundant:?}", redundant.len());
}
