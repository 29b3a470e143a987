//! A replicated cluster keeps every acknowledged record through leader crashes, and
//! `deploy/local-cluster.sh` starts and stops a local cluster.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use creek_tests::cluster::{CreekCluster, monotonic_ms};
use creek_tests::tools::{self, RunningClient};
use creek_tests::{creek_bin, free_consecutive_ports, unique_topic};

const NODES: u16 = 3;

/// True if `pid` is a process that has not exited (a zombie has exited).
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn run_script(args: &[&str], dir: &Path, kafka_base: u16, internal_base: u16) -> tools::ClientOutput {
    let script = tools::tests_dir().join("../deploy/local-cluster.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .args(args)
        .arg(dir)
        .env("CREEK_BIN", creek_bin())
        .env("CREEK_KAFKA_BASE_PORT", kafka_base.to_string())
        .env("CREEK_INTERNAL_BASE_PORT", internal_base.to_string());
    tools::run_with_limit(cmd, Duration::from_secs(90))
}

/// Runs `local-cluster.sh stop DIR` when dropped, so a failing test leaves no nodes behind (they
/// are not this process's children).
struct StopOnDrop<'a>(&'a Path);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let script = tools::tests_dir().join("../deploy/local-cluster.sh");
        let _ = Command::new("bash").arg(script).arg("stop").arg(self.0).output();
    }
}

#[test]
fn local_cluster_script_starts_and_stops() {
    // Goal: `local-cluster.sh start 3 DIR` runs three serving nodes and says where; `stop DIR` ends them.
    let dir = tempfile::Builder::new().prefix("creek-local-cluster-").tempdir().unwrap();
    let _stop = StopOnDrop(dir.path());
    let base = free_consecutive_ports(2 * NODES);
    let (kafka_base, internal_base) = (base, base + NODES);

    let out = run_script(&["start", "3"], dir.path(), kafka_base, internal_base);
    let node_logs = || {
        (1..=NODES)
            .map(|id| {
                let log = dir.path().join(format!("node-{id}/creek.log"));
                format!("--- node {id}:\n{}", creek_tests::log_tail(&log, 20))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(out.status.success(), "start failed ({}): {}\n{}", out.status, out.stderr, node_logs());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), usize::from(NODES), "one line per node, got:\n{}", out.stdout);
    let mut pids = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let id = i as u16 + 1;
        let fields: Vec<&str> = line.split(' ').collect();
        let port = kafka_base + id - 1;
        assert!(
            fields.len() == 6 && fields[0] == "node" && fields[2] == "pid" && fields[4] == "kafka",
            "line `{line}` is not `node <id> pid <pid> kafka 127.0.0.1:<port>`"
        );
        assert_eq!(fields[1], id.to_string(), "node id in `{line}`");
        assert_eq!(fields[5], format!("127.0.0.1:{port}"), "Kafka address in `{line}`");
        let pid: u32 = fields[3].parse().unwrap_or_else(|e| panic!("pid in `{line}`: {e}"));
        assert!(pid_alive(pid), "node {id} (pid {pid}) is not running\n{}", node_logs());
        TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("node {id}'s Kafka port {port} refuses connections: {e}\n{}", node_logs()));
        TcpStream::connect(("127.0.0.1", internal_base + id - 1)).unwrap_or_else(|e| {
            panic!("node {id}'s internal port {} refuses connections: {e}\n{}", internal_base + id - 1, node_logs())
        });
        pids.push(pid);
    }

    let again = run_script(&["start", "3"], dir.path(), kafka_base, internal_base);
    assert!(!again.status.success(), "a second start on a running cluster's directory must refuse");

    let stopped = run_script(&["stop"], dir.path(), kafka_base, internal_base);
    assert!(stopped.status.success(), "stop failed ({}): {}", stopped.status, stopped.stderr);
    for pid in &pids {
        assert!(!pid_alive(*pid), "pid {pid} still runs after stop");
    }
    let twice = run_script(&["stop"], dir.path(), kafka_base, internal_base);
    assert!(twice.status.success(), "stopping a stopped cluster must succeed: {}", twice.stderr);
}

/// What the producer reported for one record.
#[derive(Clone, Copy)]
struct Ack {
    partition: i32,
    offset: i64,
    /// CLOCK_MONOTONIC ms when the delivery report arrived.
    acked_ms: i64,
    /// CLOCK_MONOTONIC ms when the record was handed to the client.
    produced_ms: i64,
}

/// Parses `ack <seq> <partition> <offset> <monotonic_ms> <produced_ms>`.
fn parse_ack(line: &str) -> (u64, Ack) {
    let f: Vec<&str> = line.split_whitespace().collect();
    assert!(f.len() >= 6 && f[0] == "ack", "malformed ack line `{line}`");
    let num = |i: usize| f[i].parse::<i64>().unwrap_or_else(|e| panic!("field {i} of `{line}`: {e}"));
    let seq = f[1].parse().unwrap_or_else(|e| panic!("seq of `{line}`: {e}"));
    (seq, Ack { partition: num(2) as i32, offset: num(3), acked_ms: num(4), produced_ms: num(5) })
}

/// `cluster_producer.py` writing to a topic of a cluster, and the acks it reported so far.
struct AckedProducer {
    client: RunningClient,
    /// Value prefix: record <seq> is `<run>-<seq>`.
    run: String,
    acks: HashMap<u64, Ack>,
}

impl AckedProducer {
    fn start(cluster: &CreekCluster, topic: &str) -> AckedProducer {
        let run = format!("r{}", std::process::id());
        let mut cmd = Command::new(tools::venv_python());
        cmd.arg(tools::client_path("python/cluster_producer.py"));
        cmd.args(["--bootstrap", &cluster.bootstrap(), "--topic", topic, "--run", &run]);
        AckedProducer { client: RunningClient::spawn("cluster_producer", cmd), run, acks: HashMap::new() }
    }

    /// The next ack the producer reports; panics, with the nodes' logs, after `limit` without one.
    fn next_ack(&mut self, cluster: &CreekCluster, limit: Duration, what: &str) -> Ack {
        let line = self
            .client
            .try_wait_for_line("ack ", limit)
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", cluster.log_tails()));
        let (seq, ack) = parse_ack(&line);
        self.acks.insert(seq, ack);
        ack
    }

    fn wait_acks(&mut self, cluster: &CreekCluster, n: usize, what: &str) {
        for _ in 0..n {
            self.next_ack(cluster, Duration::from_secs(60), what);
        }
    }

    /// Stops the producer with SIGTERM (it flushes) and returns every ack it reported.
    fn stop(mut self) -> (String, HashMap<u64, Ack>) {
        self.client.signal(nix::sys::signal::Signal::SIGTERM);
        let out = self.client.wait(Duration::from_secs(60));
        assert!(out.status.success(), "the producer failed ({}):\n{}", out.status, out.stderr);
        let done = out.stdout.lines().find(|l| l.starts_with("done ")).expect("the producer prints `done ...`");
        let errors: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("err ")).collect();
        for line in out.stdout.lines().filter(|l| l.starts_with("ack ")) {
            let (seq, ack) = parse_ack(line);
            self.acks.insert(seq, ack);
        }
        let first_errors = &errors[..errors.len().min(3)];
        eprintln!(
            "producer: {done}; {} acked, {} delivery errors, first: {first_errors:?}",
            self.acks.len(),
            errors.len()
        );
        (self.run, self.acks)
    }
}

/// Reads `topic` with `cluster_reader.py` and asserts that every acked record is stored exactly
/// once, at its acked partition and offset. Prints how many values are stored more than once.
fn assert_acked_stored_once(cluster: &CreekCluster, topic: &str, run: &str, acks: &HashMap<u64, Ack>) {
    let mut cmd = Command::new(tools::venv_python());
    cmd.arg(tools::client_path("python/cluster_reader.py"));
    cmd.args(["--bootstrap", &cluster.bootstrap(), "--topic", topic]);
    let read = tools::run_with_limit(cmd, Duration::from_secs(180));
    assert!(read.status.success(), "the reader failed ({}): {}\n{}", read.status, read.stderr, cluster.log_tails());
    let mut found: HashMap<&str, Vec<(i32, i64)>> = HashMap::new();
    for line in read.stdout.lines().filter(|l| l.starts_with("rec ")) {
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        assert_eq!(f.len(), 4, "malformed reader line `{line}`");
        let at = (f[1].parse().expect("partition"), f[2].parse().expect("offset"));
        found.entry(f[3]).or_default().push(at);
    }
    let duplicated = found.values().filter(|at| at.len() > 1).count();
    eprintln!(
        "records read: {}, distinct values: {}, values stored more than once: {duplicated}",
        found.values().map(Vec::len).sum::<usize>(),
        found.len()
    );
    let (mut missing, mut acked_twice, mut misplaced) = (Vec::new(), Vec::new(), Vec::new());
    for (seq, ack) in acks {
        let acked_at = (ack.partition, ack.offset);
        match found.get(format!("{run}-{seq}").as_str()).map(Vec::as_slice) {
            None | Some([]) => missing.push(*seq),
            Some([at]) if *at != acked_at => misplaced.push((*seq, acked_at, *at)),
            Some([_]) => {}
            Some(at) => acked_twice.push((*seq, at.to_vec())),
        }
    }
    missing.sort_unstable();
    assert!(!acks.is_empty(), "the producer reported no acks");
    assert!(missing.is_empty(), "{} acked records are lost, first seqs: {:?}", missing.len(), first(&missing));
    assert!(
        acked_twice.is_empty(),
        "{} acked records are stored more than once: {:?}",
        acked_twice.len(),
        first(&acked_twice)
    );
    assert!(
        misplaced.is_empty(),
        "{} acked records are not at their acked offset (seq, acked, stored): {:?}",
        misplaced.len(),
        first(&misplaced)
    );
}

fn first<T>(items: &[T]) -> &[T] {
    &items[..items.len().min(10)]
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|e| panic!("{name}={v}: {e}")))
}

#[test]
fn one_node_cluster_harness_pauses_restarts_and_wipes() {
    // Goal: the cluster harness and the producer/reader pair work on a one-node "cluster": acked
    // records survive a pause and a SIGKILL restart, and a wiped node has lost the topic.
    let mut cluster = CreekCluster::start(1);
    let topic = unique_topic("harness");
    cluster.create_topic(&topic, 2);
    let leaders = cluster.wait_for_leaders(&topic, 2, Duration::from_secs(60));
    assert!(leaders.iter().all(|(leader, _)| *leader == 1), "leaders {leaders:?}");
    let pid = cluster.pid(1).expect("node 1 runs");

    let mut producer = AckedProducer::start(&cluster, &topic);
    producer.wait_acks(&cluster, 200, "first acks");
    cluster.pause(1);
    cluster.resume(1);
    producer.wait_acks(&cluster, 100, "acks after a pause");
    cluster.kill(1);
    assert_eq!(cluster.pid(1), None, "a killed node has no pid");
    cluster.restart(1);
    cluster.wait_serving(1, Duration::from_secs(30));
    assert_ne!(cluster.pid(1), Some(pid), "a restarted node is a new process");
    producer.wait_acks(&cluster, 200, "acks after a restart");
    let (run, acks) = producer.stop();
    assert_acked_stored_once(&cluster, &topic, &run, &acks);
    assert_eq!(cluster.leader_of(&topic, 0).map(|(leader, _)| leader), Some(1));

    cluster.wipe_and_restart(1);
    cluster.wait_serving(1, Duration::from_secs(30));
    assert_eq!(cluster.leader_of(&topic, 0), None, "a wiped node still knows `{topic}`");
}

#[test]
fn sigkill_leader_failover_keeps_every_acked_record() {
    // Goal: SIGKILL the partition leader over and over under an idempotent acks=all producer; every
    // acknowledged record is in the log exactly once at its acknowledged offset, and the producer
    // resumes within CREEK_FAILOVER_MAX_MS of each kill.
    const ACKS_PER_ROUND: usize = 200;
    const FAILOVER_WAIT_MS: i64 = 30_000;
    let rounds = env_number("CREEK_FAILOVER_ROUNDS", 20);
    let failover_max_ms = env_number("CREEK_FAILOVER_MAX_MS", 10_000) as i64;

    let mut cluster = CreekCluster::start(usize::from(NODES));
    let topic = unique_topic("failover");
    cluster.create_topic(&topic, 1);
    cluster.wait_for_leaders(&topic, 1, Duration::from_secs(60));

    let mut producer = AckedProducer::start(&cluster, &topic);
    let mut failovers_ms = Vec::new();
    for round in 1..=rounds {
        producer.wait_acks(&cluster, ACKS_PER_ROUND, &format!("round {round}: waiting for {ACKS_PER_ROUND} acks"));
        let (leader, epoch) = cluster.wait_for_leaders(&topic, 1, Duration::from_secs(30))[0];
        let killed_ms = monotonic_ms();
        cluster.kill(leader);
        // Acks of records handed to the client before the kill may still arrive from the old
        // leader's last responses; the first ack of a record produced after the kill cannot.
        let failover_ms = loop {
            let left = Duration::from_millis((killed_ms + FAILOVER_WAIT_MS - monotonic_ms()).max(1) as u64);
            let what = format!("round {round}: failover after killing leader {leader}");
            let ack = producer.next_ack(&cluster, left, &what);
            if ack.produced_ms > killed_ms && ack.acked_ms > killed_ms {
                break ack.acked_ms - killed_ms;
            }
            assert!(
                monotonic_ms() - killed_ms < FAILOVER_WAIT_MS,
                "round {round}: no record produced after killing leader {leader} was acked within \
                 {FAILOVER_WAIT_MS} ms\n{}",
                cluster.log_tails()
            );
        };
        eprintln!("round {round}: killed leader {leader} (epoch {epoch}); producer resumed after {failover_ms} ms");
        assert!(
            failover_ms < FAILOVER_WAIT_MS,
            "round {round}: failover took {failover_ms} ms\n{}",
            cluster.log_tails()
        );
        failovers_ms.push(failover_ms);
        cluster.restart(leader);
        cluster.wait_serving(leader, Duration::from_secs(30));
        // Each kill starts from a whole cluster: the restarted node follows a leader again.
        cluster.wait_replicating(leader, &topic, Duration::from_secs(30));
    }
    let (run, acks) = producer.stop();

    failovers_ms.sort_unstable();
    let (p50, p99) = (percentile(&failovers_ms, 50.0), percentile(&failovers_ms, 99.0));
    let max = failovers_ms.last().copied().unwrap_or(0);
    eprintln!("failover samples (ms, sorted): {failovers_ms:?}; target with default settings: 2000 ms");
    println!("failover rounds={} p50={p50} p99={p99} max={max}", failovers_ms.len());

    assert_acked_stored_once(&cluster, &topic, &run, &acks);
    assert!(
        max < failover_max_ms,
        "slowest failover {max} ms >= CREEK_FAILOVER_MAX_MS={failover_max_ms}; samples {failovers_ms:?}"
    );
}
