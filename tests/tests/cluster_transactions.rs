//! Transactions in a 3-node cluster, with confluent-kafka: a transactional id's coordinator is the
//! leader of its `__transaction_state` partition and markers go through each data partition's
//! Raft leader, so transactions span partitions led by different nodes, a consume-transform-
//! produce pipeline is exactly once when its group and transaction coordinators are different
//! nodes, and a transaction survives SIGKILL of the node coordinating it.

use std::process::Command;
use std::time::{Duration, Instant};

use creek_tests::cluster::{CreekCluster, KEY_TYPE_TRANSACTION};
use creek_tests::tools::{self, RunningClient};
use creek_tests::unique_topic;
use creek_tests::wire::{self, TxnDescription, Wire};

const PARTITIONS: i32 = 3;
const CLIENT_LIMIT: Duration = Duration::from_secs(240);
const COORDINATOR_WAIT: Duration = Duration::from_secs(60);
const NOT_COORDINATOR: i16 = 16;

fn settings() -> Vec<(&'static str, &'static str)> {
    vec![
        ("group.initial.rebalance.delay.ms", "0"),
        // Timed-out transactions are looked for every second (Kafka's default is 10 s).
        ("transaction.abort.timed.out.transaction.cleanup.interval.ms", "1000"),
    ]
}

fn python(cluster: &CreekCluster, script: &str, mode: &str) -> Command {
    let script = tools::client_path(&format!("python/{script}"));
    let mut cmd = tools::command_in(&tools::venv_python(), script.parent().expect("script dir"));
    cmd.arg(&script).arg(mode).args(["--bootstrap", &cluster.bootstrap()]);
    cmd
}

/// A topic with [`PARTITIONS`] partitions whose leaders are not all one node.
fn spread_topic(cluster: &CreekCluster, prefix: &str) -> String {
    let topic = unique_topic(prefix);
    cluster.create_topic(&topic, PARTITIONS);
    let leaders = cluster.wait_for_leaders(&topic, PARTITIONS, Duration::from_secs(60));
    let distinct: std::collections::BTreeSet<i32> = leaders.iter().map(|(l, _)| *l).collect();
    assert!(distinct.len() >= 2, "{topic}: every partition led by one node: {leaders:?}");
    topic
}

/// The first `{prefix}-{i}` whose coordinator (key type `key_type`) satisfies `wanted`, with it.
fn key_coordinated(cluster: &CreekCluster, key_type: i8, prefix: &str, wanted: impl Fn(i32) -> bool) -> (String, i32) {
    for i in 0..64 {
        let key = format!("{prefix}-{i}");
        let c = cluster.wait_coordinator_on(&running(cluster), key_type, &key, COORDINATOR_WAIT);
        if wanted(c) {
            return (key, c);
        }
    }
    panic!("no key {prefix}-* with the wanted coordinator\n{}", cluster.log_tails());
}

fn running(cluster: &CreekCluster) -> Vec<i32> {
    cluster.ids().into_iter().filter(|&id| cluster.running(id)).collect()
}

#[test]
fn transactions_spanning_partitions_led_by_different_nodes_commit_and_abort() {
    // Goal: commits and aborts over partitions led by different nodes: read_committed sees
    // exactly the committed records, read_uncommitted all of them.
    let cluster = CreekCluster::start_with(3, &settings());
    let topic = spread_topic(&cluster, "ctxn-spread");
    let txn_id = format!("{topic}-txn");
    let coordinator = cluster.wait_txn_coordinator(&txn_id, COORDINATOR_WAIT);
    println!("transactional id {txn_id}: coordinator {coordinator}");
    let mut cmd = python(&cluster, "cluster_txn.py", "spread");
    cmd.args(["--topic", &topic, "--txn-id", &txn_id]);
    let out = tools::run_with_limit(cmd, CLIENT_LIMIT);
    assert!(out.status.success(), "{}\n{}\n{}", out.stdout, out.stderr, cluster.log_tails());
    assert!(out.stdout.contains("read_committed=60 read_uncommitted=90"), "{}", out.stdout);
}

#[test]
fn transaction_coordinators_are_spread_and_agreed_on() {
    // Goal: every node names the same coordinator for a transactional id, and ids are
    // coordinated by different nodes (not all the lowest node id).
    let cluster = CreekCluster::start_with(3, &settings());
    let mut coordinators = std::collections::BTreeSet::new();
    for i in 0..12 {
        coordinators.insert(cluster.wait_txn_coordinator(&format!("spread-txn-{i}"), COORDINATOR_WAIT));
    }
    assert!(coordinators.len() >= 2, "12 transactional ids all coordinated by {coordinators:?}");
}

#[test]
fn pipeline_with_group_and_transaction_coordinators_on_different_nodes_is_exactly_once() {
    // Goal: consume-transform-produce whose offsets go to another node than its transaction
    // coordinator: offsets sent in a transaction are not committed until the transaction is,
    // and the committed output is exactly the input, once.
    let cluster = CreekCluster::start_with(3, &settings());
    let input = spread_topic(&cluster, "ctxn-pipe-in");
    let output = spread_topic(&cluster, "ctxn-pipe-out");
    let records = 600;
    let (group, group_coordinator) = key_coordinated(&cluster, 0, &format!("{input}-group"), |_| true);
    let (txn_id, txn_coordinator) =
        key_coordinated(&cluster, KEY_TYPE_TRANSACTION, &format!("{input}-txn"), |c| c != group_coordinator);
    println!("group {group} on node {group_coordinator}, transactional id {txn_id} on node {txn_coordinator}");
    let mut cmd = python(&cluster, "txn_pipeline.py", "produce-input");
    cmd.args(["--input", &input, "--records", &records.to_string(), "--partitions", &PARTITIONS.to_string()]);
    tools::run_client_ok("confluent-kafka-txn", cmd, CLIENT_LIMIT);

    let mut cmd = python(&cluster, "txn_pipeline.py", "pipeline");
    cmd.args(["--input", &input, "--output", &output, "--group", &group, "--txn-id", &txn_id]);
    cmd.args(["--batch", "50", "--hold-offsets-after", "3", "--hold-s", "3"]);
    let mut pipeline = RunningClient::spawn("cluster-pipeline", cmd);
    let committed = |cluster: &CreekCluster| -> Vec<i64> {
        let coordinator = cluster.wait_group_coordinator(&group, COORDINATOR_WAIT);
        let mut w = Wire::connect(&cluster.addr(coordinator));
        match wire::committed_offsets(&mut w, &group, &input, PARTITIONS) {
            Some((0, offsets)) => offsets,
            other => panic!("OffsetFetch of {group}: {other:?}"),
        }
    };
    let held = pipeline
        .try_wait_for_line("HOLDING_OFFSETS", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails()));
    let field = |line: &str, key: &str| -> String {
        line.split_whitespace().find_map(|w| w.strip_prefix(key)).expect(key).to_string()
    };
    let sent: Vec<(usize, i64)> = field(&held, "offsets=")
        .split(',')
        .map(|po| po.split_once(':').map(|(p, o)| (p.parse().unwrap(), o.parse().unwrap())).expect("p:o"))
        // A partition not consumed yet has no position (-1001).
        .filter(|&(_, o)| o >= 0)
        .collect();
    // The held transaction's offsets were sent (TxnOffsetCommit answered) but it is not committed.
    let during = committed(&cluster);
    assert!(sent.iter().all(|&(p, o)| during[p] <= o), "offsets beyond those sent: {during:?} vs {held}");
    assert!(sent.iter().any(|&(p, o)| during[p] < o), "offsets of an open transaction are visible: {during:?}, {held}");
    let done = pipeline
        .try_wait_for_line(&format!("COMMITTED txn={} ", field(&held, "txn=")), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails()));
    // The commit's markers are written before EndTxn is answered, so its offsets are visible now.
    let after = committed(&cluster);
    assert!(sent.iter().all(|&(p, o)| after[p] >= o), "offsets {after:?} after {done}, sent {held}");
    let out = pipeline.wait(CLIENT_LIMIT);
    assert!(out.status.success(), "pipeline: {}\n{}", out.stdout, cluster.log_tails());

    let mut cmd = python(&cluster, "txn_pipeline.py", "verify");
    cmd.args(["--input", &input, "--output", &output]);
    cmd.args(["--records", &records.to_string(), "--partitions", &PARTITIONS.to_string()]);
    let out = tools::run_with_limit(cmd, CLIENT_LIMIT);
    let result = out.stdout.lines().find_map(|l| l.strip_prefix("RESULT ")).expect("a RESULT line").to_string();
    println!("pipeline across nodes: {result}");
    for (key, want) in [("duplicates", 0), ("missing", 0), ("unexpected", 0), ("records_out", records)] {
        assert!(result.contains(&format!("\"{key}\": {want}")), "{key} != {want}: {result}");
    }
    assert!(result.contains("\"partitions_not_at_end\": []"), "{result}");
    // The group's final offsets are the ends of the input.
    let ends: Vec<i64> = (0..PARTITIONS)
        .map(|p| {
            let leader = cluster.leader_of(&input, p).expect("a leader").0;
            wire::stable_offsets(&mut Wire::connect(&cluster.addr(leader)), &input, p).1
        })
        .collect();
    assert_eq!(committed(&cluster), ends, "the group's final offsets");
}

/// What happens to the coordinator, and when.
#[derive(Clone, Copy, Debug, PartialEq)]
enum When {
    /// SIGKILL with the transaction open: records written, not committed.
    Open,
    /// SIGKILL just after the producer called commit_transaction.
    Committing,
    /// Cut off from its peers (its Kafka listener still serves) with the transaction open, then
    /// reconnected.
    OpenIsolated,
}

#[test]
fn transaction_survives_killing_its_coordinator_while_open() {
    // Goal: the node coordinating a transactional id is SIGKILLed with a transaction open; a new
    // coordinator takes over within seconds, the producer goes on, no committed record is lost
    // or doubled, and another producer's transaction left open there is aborted.
    survives_killing_the_coordinator(When::Open);
}

#[test]
fn transaction_survives_killing_its_coordinator_while_committing() {
    // Goal: as above, with the kill landing while EndTxn is under way.
    survives_killing_the_coordinator(When::Committing);
}

#[test]
fn transaction_survives_isolating_its_coordinator_while_open() {
    // Goal: a coordinator cut off from its peers stops coordinating (NOT_COORDINATOR while it
    // still runs), the others take over with the open transaction, and the producer goes on.
    survives_killing_the_coordinator(When::OpenIsolated);
}

fn survives_killing_the_coordinator(when: When) {
    let mut cluster = if when == When::OpenIsolated {
        CreekCluster::start_with_internal_proxies_and(3, &settings())
    } else {
        CreekCluster::start_with(3, &settings())
    };
    let topic = spread_topic(&cluster, "ctxn-kill");
    let (txn_id, coordinator) = key_coordinated(&cluster, KEY_TYPE_TRANSACTION, &format!("{topic}-txn"), |_| true);
    // A second producer whose open transaction is coordinated by the same node, abandoned.
    let (hung_id, _) = key_coordinated(&cluster, KEY_TYPE_TRANSACTION, &format!("{topic}-hung"), |c| c == coordinator);
    let mut cmd = python(&cluster, "txn_pipeline.py", "hang");
    cmd.args(["--topic", &topic, "--txn-id", &hung_id, "--txn-timeout-ms", "5000"]);
    let mut hung = RunningClient::spawn("hung", cmd);
    hung.try_wait_for_line("HUNG", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails()));
    hung.kill();

    let go = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let go_path = go.to_path_buf();
    go.close().unwrap();
    let mut cmd = python(&cluster, "cluster_txn.py", "failover");
    cmd.args(["--topic", &topic, "--txn-id", &txn_id, "--txns", "8", "--hold", "3"]);
    cmd.arg("--go").arg(&go_path);
    if when == When::Committing {
        cmd.arg("--kill-on-commit");
    }
    let mut producer = RunningClient::spawn("failover", cmd);
    let line = if when == When::Committing { "COMMITTING" } else { "HOLDING" };
    producer
        .try_wait_for_line(line, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails()));
    println!("transactional id {txn_id} (and {hung_id}): coordinator {coordinator}; {when:?}");
    let before = (when != When::Committing)
        .then(|| wait_txn_state(&cluster, coordinator, &txn_id, "Ongoing", Duration::from_secs(10)));
    if when == When::OpenIsolated {
        cluster.isolate(coordinator);
    } else {
        cluster.kill(coordinator);
    }
    let killed = Instant::now();
    let others: Vec<i32> = running(&cluster).into_iter().filter(|&id| id != coordinator).collect();
    let new = cluster.wait_coordinator_on(&others, KEY_TYPE_TRANSACTION, &txn_id, Duration::from_secs(30));
    let moved = killed.elapsed();
    println!("new coordinator {new} agreed on after {moved:?}");
    assert_ne!(new, coordinator);
    assert!(moved < Duration::from_secs(10), "a new transaction coordinator took {moved:?}");
    if let Some(before) = before {
        // The open transaction, with its producer id and epoch, is in the replicated state.
        let after = wait_txn_state(&cluster, new, &txn_id, "Ongoing", Duration::from_secs(10));
        assert_eq!((after.producer_id, after.producer_epoch), (before.producer_id, before.producer_epoch));
    }
    if when == When::OpenIsolated {
        // The cut-off node no longer coordinates the id, although it runs and serves Kafka.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut w = Wire::connect(&cluster.addr(coordinator));
            let d = wire::describe_transaction(&mut w, &txn_id);
            if d.as_ref().is_some_and(|d| d.error_code == NOT_COORDINATOR) {
                break;
            }
            assert!(Instant::now() < deadline, "the isolated node still answers for {txn_id}: {d:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Only now: the producer's commit must not race the look at the open transaction.
    std::fs::write(&go_path, b"go").unwrap();

    let out = producer.wait(CLIENT_LIMIT);
    println!("{}", out.stdout.lines().filter(|l| !l.starts_with('[')).collect::<Vec<_>>().join("\n"));
    assert!(out.status.success(), "producer: {}\n{}\n{}", out.stdout, out.stderr, cluster.log_tails());
    let ok = out.stdout.lines().find(|l| l.starts_with("OK cluster-txn failover")).expect("an OK line").to_string();
    let committed = ok.split_whitespace().find_map(|w| w.strip_prefix("committed=")).expect("committed=").to_string();
    if when == When::OpenIsolated {
        cluster.heal();
    }

    // The abandoned transaction (timeout 5 s) is aborted by the new coordinator: nothing holds
    // back any partition's last stable offset.
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in 0..PARTITIONS {
        loop {
            let leader = cluster.wait_for_leaders(&topic, PARTITIONS, Duration::from_secs(30))[p as usize].0;
            let (err, hw, lso) = wire::stable_offsets(&mut Wire::connect(&cluster.addr(leader)), &topic, p);
            if err == 0 && lso == hw {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}/{p}: last stable offset {lso} below the high watermark {hw} (error {err}): a transaction stays open\n{}",
                cluster.log_tails()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("{when:?}: {ok}; every partition stable {:?} after the kill", killed.elapsed());
    let mut cmd = python(&cluster, "cluster_txn.py", "check");
    cmd.args(["--topic", &topic, "--committed", &committed, "--forbidden-prefix", "hung-"]);
    let line = tools::run_client_ok("cluster-txn", cmd, CLIENT_LIMIT);
    println!("{when:?}: {line}");
}

/// Kafka's partition of a key in an internal topic: `abs(javaHashCode(key)) % partitions`.
fn internal_partition(key: &str, partitions: i32) -> i32 {
    let hash = key.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    (hash & 0x7fff_ffff) % partitions
}

/// The replicas of `__transaction_state` partition `p`, as node `asked` reports them.
fn txn_state_replicas(cluster: &CreekCluster, asked: i32, p: i32) -> Vec<i32> {
    let md = cluster.metadata(asked, Some(&["__transaction_state"])).expect("Metadata");
    let topic = md.topics.first().expect("__transaction_state in Metadata");
    let part = topic.partitions.iter().find(|x| x.partition_index == p).expect("the partition");
    part.replica_nodes.iter().map(|b| b.0).collect()
}

/// Polls DescribeTransactions on `node` until `txn_id` is in `state`, and returns what it
/// showed. Panics after `limit`.
fn wait_txn_state(cluster: &CreekCluster, node: i32, txn_id: &str, state: &str, limit: Duration) -> TxnDescription {
    let deadline = Instant::now() + limit;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(mut w) = Wire::connect_timeout(&cluster.addr(node), Duration::from_secs(2)) {
            last = wire::describe_transaction(&mut w, txn_id);
            if let Some(d) = last.as_ref().filter(|d| d.error_code == 0 && d.state == state) {
                return d.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{txn_id} on node {node}: {last:?}, never {state}\n{}", cluster.log_tails());
}

#[test]
fn transaction_left_in_prepare_commit_is_completed_by_the_next_coordinator() {
    // Goal: a commit whose markers cannot all be written (a partition's only replica is down)
    // stays PrepareCommit; its coordinator is SIGKILLed; the next one loads PrepareCommit and,
    // once the partition is back, writes the markers and completes it: the producer's commit
    // succeeds and read_committed shows the transaction exactly once.
    let mut cluster = CreekCluster::start_with(5, &settings());
    cluster.create_topic(&unique_topic("ctxn-ready"), 1);
    let topic = unique_topic("ctxn-prepared");
    let mut w = Wire::connect(&cluster.addr(1));
    assert_eq!(wire::create_topic(&mut w, &topic, PARTITIONS, &[]), 0, "a topic of one replica per partition");
    let leaders: Vec<i32> =
        cluster.wait_for_leaders(&topic, PARTITIONS, Duration::from_secs(60)).into_iter().map(|(l, _)| l).collect();
    // A transactional id whose state has no replica on the node (X) that holds one of the
    // topic's partitions: X and the coordinator (Y) both down leave the state a quorum.
    let txn_partitions = 50;
    let (txn_id, y, x) = (0..200)
        .find_map(|i| {
            let id = format!("{topic}-txn-{i}");
            let replicas = txn_state_replicas(&cluster, 1, internal_partition(&id, txn_partitions));
            let x = leaders.iter().copied().find(|l| !replicas.contains(l))?;
            let y = cluster.wait_txn_coordinator(&id, COORDINATOR_WAIT);
            Some((id, y, x))
        })
        .expect("a transactional id placed as wanted");
    println!("{topic}: partition leaders {leaders:?}; {txn_id} coordinated by {y}; partition holder to stop: {x}");

    let go = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let go_path = go.to_path_buf();
    go.close().unwrap();
    let mut cmd = python(&cluster, "cluster_txn.py", "failover");
    cmd.args(["--topic", &topic, "--txn-id", &txn_id, "--txns", "4", "--hold", "1"]).arg("--go").arg(&go_path);
    let mut producer = RunningClient::spawn("prepared", cmd);
    producer
        .try_wait_for_line("HOLDING", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails()));
    cluster.kill(x);
    std::fs::write(&go_path, b"go").unwrap();
    // The commit's markers reach every partition but the one on X: the transaction stays there.
    wait_txn_state(&cluster, y, &txn_id, "PrepareCommit", Duration::from_secs(30));
    cluster.kill(y);
    let killed = Instant::now();
    let z = cluster.wait_coordinator_on(&running(&cluster), KEY_TYPE_TRANSACTION, &txn_id, Duration::from_secs(30));
    println!("new coordinator {z} after {:?}", killed.elapsed());
    wait_txn_state(&cluster, z, &txn_id, "PrepareCommit", Duration::from_secs(10));
    cluster.restart(x);
    cluster.restart(y);
    wait_txn_state(&cluster, z, &txn_id, "CompleteCommit", Duration::from_secs(60));
    println!("completed {:?} after the coordinator's kill", killed.elapsed());

    let out = producer.wait(CLIENT_LIMIT);
    println!("{}", out.stdout);
    assert!(out.status.success(), "producer: {}\n{}\n{}", out.stdout, out.stderr, cluster.log_tails());
    let ok = out.stdout.lines().find(|l| l.starts_with("OK cluster-txn failover")).expect("an OK line").to_string();
    let committed = ok.split_whitespace().find_map(|w| w.strip_prefix("committed=")).expect("committed=").to_string();
    assert!(committed.split(',').any(|k| k == "1"), "the held transaction was not committed: {ok}");
    let mut cmd = python(&cluster, "cluster_txn.py", "check");
    cmd.args(["--topic", &topic, "--committed", &committed]);
    println!("{}", tools::run_client_ok("cluster-txn", cmd, CLIENT_LIMIT));
}
