//! An idempotent acks=all producer (`clients/python/cluster_producer.py`) whose acknowledgements
//! a cluster test keeps, and the check that every acknowledged record is stored exactly once.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use crate::cluster::CreekCluster;
use crate::tools::{self, RunningClient};

/// What the producer reported for one record.
#[derive(Clone, Copy)]
pub struct Ack {
    pub partition: i32,
    /// `None` when librdkafka reports the record delivered without an offset: an idempotent
    /// producer whose request failed but a later batch of the partition succeeded knows the
    /// earlier one was stored (the sequence allowed no gap), not where.
    pub offset: Option<i64>,
    /// CLOCK_MONOTONIC ms when the delivery report arrived.
    pub acked_ms: i64,
    /// CLOCK_MONOTONIC ms when the record was handed to the client.
    pub produced_ms: i64,
}

/// Parses `ack <seq> <partition> <offset> <monotonic_ms> <produced_ms>` (`None` for the offset
/// when the client does not know it).
pub fn parse_ack(line: &str) -> (u64, Ack) {
    let f: Vec<&str> = line.split_whitespace().collect();
    assert!(f.len() >= 6 && f[0] == "ack", "malformed ack line `{line}`");
    let num = |i: usize| f[i].parse::<i64>().unwrap_or_else(|e| panic!("field {i} of `{line}`: {e}"));
    let seq = f[1].parse().unwrap_or_else(|e| panic!("seq of `{line}`: {e}"));
    let offset = (f[3] != "None").then(|| num(3));
    (seq, Ack { partition: num(2) as i32, offset, acked_ms: num(4), produced_ms: num(5) })
}

/// `cluster_producer.py` writing to a topic of a cluster, and the acks it reported so far.
pub struct AckedProducer {
    client: RunningClient,
    /// Value prefix: record <seq> is `<run>-<seq>`.
    pub run: String,
    pub acks: HashMap<u64, Ack>,
}

impl AckedProducer {
    pub fn start(cluster: &CreekCluster, topic: &str) -> AckedProducer {
        Self::start_with_rate(cluster, topic, 1000)
    }

    /// Like [`start`](Self::start), producing at most `rate` records per second, with
    /// librdkafka's default request timeout (30 s).
    pub fn start_with_rate(cluster: &CreekCluster, topic: &str, rate: u32) -> AckedProducer {
        Self::start_with(cluster, topic, rate, 30_000)
    }

    /// Like [`start_with_rate`](Self::start_with_rate), with `request.timeout.ms` (also the
    /// Produce `timeout_ms`): it bounds how long the producer stalls on a leader that was cut off.
    pub fn start_with(cluster: &CreekCluster, topic: &str, rate: u32, request_timeout_ms: u32) -> AckedProducer {
        let run = format!("r{}", std::process::id());
        let mut cmd = Command::new(tools::venv_python());
        cmd.arg(tools::client_path("python/cluster_producer.py"));
        cmd.args(["--bootstrap", &cluster.bootstrap(), "--topic", topic, "--run", &run]);
        cmd.args(["--rate", &rate.to_string(), "--request-timeout-ms", &request_timeout_ms.to_string()]);
        AckedProducer { client: RunningClient::spawn("cluster_producer", cmd), run, acks: HashMap::new() }
    }

    /// The next ack the producer reports; panics, with the nodes' logs, after `limit` without one.
    pub fn next_ack(&mut self, cluster: &CreekCluster, limit: Duration, what: &str) -> Ack {
        let line = self
            .client
            .try_wait_for_line("ack ", limit)
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", cluster.log_tails()));
        let (seq, ack) = parse_ack(&line);
        self.acks.insert(seq, ack);
        ack
    }

    /// Takes every ack reported so far without waiting; returns how many were new.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Ok(line) = self.client.try_wait_for_line("ack ", Duration::ZERO) {
            let (seq, ack) = parse_ack(&line);
            self.acks.insert(seq, ack);
            n += 1;
        }
        n
    }

    pub fn wait_acks(&mut self, cluster: &CreekCluster, n: usize, what: &str) {
        for _ in 0..n {
            self.next_ack(cluster, Duration::from_secs(60), what);
        }
    }

    /// Stops the producer with SIGTERM (it flushes) and returns every ack it reported.
    pub fn stop(mut self) -> (String, HashMap<u64, Ack>) {
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
/// once, at its acked partition and offset (any offset of that partition when the ack gave none).
/// Prints how many values are stored more than once.
pub fn assert_acked_stored_once(cluster: &CreekCluster, topic: &str, run: &str, acks: &HashMap<u64, Ack>) {
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
        match found.get(format!("{run}-{seq}").as_str()).map(Vec::as_slice) {
            None | Some([]) => missing.push(*seq),
            Some([at]) if at.0 != ack.partition || ack.offset.is_some_and(|o| o != at.1) => {
                misplaced.push((*seq, (ack.partition, ack.offset), *at))
            }
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

pub fn first<T>(items: &[T]) -> &[T] {
    &items[..items.len().min(10)]
}
