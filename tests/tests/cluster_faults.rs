//! A 3-node replicated cluster under faults (a frozen leader, a leader cut off from its peers, a
//! seeded schedule of crashes, pauses and partitions) never acknowledges a write it then loses,
//! never lets two leaders both accept writes, and its replicas converge to byte-identical logs.
//! A node that lost its disk rejoins and catches up, from the log start or, once retention has
//! let Raft purge the old entries, from the leader's snapshot.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use creek_tests::acked::{Ack, AckedProducer, assert_acked_stored_once, first};
use creek_tests::cluster::CreekCluster;
use creek_tests::partition_log::{
    self, Batch, assert_replicas_identical, check_dense_epochs, fetch_log_from, fetch_log_retrying,
};
use creek_tests::unique_topic;
use creek_tests::wire::{self, Wire};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, fetch_request, produce_request,
};
use uuid::Uuid;

const NODES: usize = 3;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const REQUEST_TIMED_OUT: i16 = 7;
const FENCED_LEADER_EPOCH: i16 = 74;
/// The Produce `timeout_ms` of raw writes to a node that may not be able to commit.
const RAW_PRODUCE_TIMEOUT_MS: i32 = 3000;
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The producer's `request.timeout.ms`: a leader cut off from its quorum holds an acks=-1 Produce
/// this long, and the idempotent producer waits for it before writing to the new leader.
const PRODUCER_REQUEST_TIMEOUT_MS: u32 = 5000;

/// What a node answered to one raw acks=-1 Produce of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawAnswer {
    Stored(i64),
    Error(i16),
    /// The connection broke, or no answer within the request timeout plus 5 s.
    NoAnswer,
}

/// Produces one record with value `value` (no producer id) straight to node `addr`, acks=-1.
fn raw_produce(addr: &str, topic: &str, value: &str) -> RawAnswer {
    let limit = Duration::from_millis(RAW_PRODUCE_TIMEOUT_MS as u64) + Duration::from_secs(5);
    let Ok(mut w) = Wire::connect_timeout(addr, limit) else { return RawAnswer::NoAnswer };
    let batch = creek_protocol::batch::build_batch(0, 1, &[(None, Some(value.as_bytes()))]);
    match wire::try_produce_timeout(&mut w, topic, 0, batch, -1, RAW_PRODUCE_TIMEOUT_MS) {
        Some((0, offset)) => RawAnswer::Stored(offset),
        Some((code, _)) => RawAnswer::Error(code),
        None => RawAnswer::NoAnswer,
    }
}

/// Waits until some node other than `not` leads partition 0 with an epoch above `above`.
fn wait_new_leader(cluster: &CreekCluster, topic: &str, not: i32, above: i32) -> (i32, i32) {
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        if let Some((leader, epoch)) = cluster.leader_of(topic, 0)
            && leader != not
            && epoch > above
        {
            return (leader, epoch);
        }
        assert!(
            Instant::now() < deadline,
            "no leader other than {not} with an epoch above {above} within {LEADER_TIMEOUT:?}\n{}",
            cluster.log_tails()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The leader epoch every node reports for partition 0, checked never to decrease per node.
#[derive(Default)]
struct EpochWatch {
    last: HashMap<i32, i32>,
    observations: usize,
}

impl EpochWatch {
    fn observe(&mut self, cluster: &CreekCluster, topic: &str) {
        for id in cluster.ids().into_iter().filter(|&id| cluster.answers(id)) {
            let Ok(md) = cluster.metadata(id, Some(&[topic])) else { continue };
            let Some(p) = md.topics.first().and_then(|t| t.partitions.first()) else { continue };
            if p.error_code != 0 || p.leader_id.0 < 0 {
                continue;
            }
            self.observations += 1;
            let prev = self.last.insert(id, p.leader_epoch).unwrap_or(-1);
            assert!(
                p.leader_epoch >= prev,
                "node {id} reported leader epoch {} after {prev} (leader {})",
                p.leader_epoch,
                p.leader_id.0
            );
        }
    }
}

/// Waits until node `id`'s stored log of partition 0 holds every offset below `high_watermark`
/// (read while it runs: only whole batches count).
fn wait_log_reaches(cluster: &CreekCluster, id: i32, topic: &str, high_watermark: i64) {
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        let batches = partition_log::read_segments(&cluster.data_dir(id), topic, 0);
        let end = batches.last().map_or(0, |b| b.last_offset + 1);
        if end >= high_watermark {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id}'s log reaches only {end}, not the high watermark {high_watermark}, within \
             {LEADER_TIMEOUT:?}\n{}",
            cluster.log_tails()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Once every node runs: reads the high watermark from the leader, waits until every node's log
/// holds it, stops the cluster cleanly (followers first, so nothing is elected meanwhile), and
/// asserts the three logs are byte-identical over the committed prefix. Returns the high
/// watermark and the committed batches.
fn stop_and_compare_replicas(cluster: &mut CreekCluster, topic: &str) -> (i64, Vec<Batch>) {
    let (leader, _) = cluster.wait_for_leaders(topic, 1, LEADER_TIMEOUT)[0];
    let (hw, _) = fetch_log_retrying_from(&cluster.addr(leader), topic, earliest(cluster, leader, topic));
    for id in cluster.ids() {
        wait_log_reaches(cluster, id, topic, hw);
    }
    for id in cluster.ids().into_iter().filter(|&id| id != leader) {
        cluster.stop(id);
    }
    cluster.stop(leader);
    let replicas: Vec<(i32, Vec<Batch>)> = cluster
        .ids()
        .into_iter()
        .map(|id| (id, partition_log::read_segments(&cluster.data_dir(id), topic, 0)))
        .collect();
    assert_replicas_identical(&replicas, hw);
    let batches = partition_log::committed(&replicas[0].1, hw).to_vec();
    check_dense_epochs(&batches).unwrap_or_else(|e| panic!("committed log of `{topic}`: {e}"));
    eprintln!("replicas identical over the committed prefix: {} batches, high watermark {hw}", batches.len());
    (hw, batches)
}

/// Every record value in `batches`, with its offset and its batch's leader epoch.
fn values_at(batches: &[Batch]) -> HashMap<String, Vec<(i64, i32)>> {
    let mut out: HashMap<String, Vec<(i64, i32)>> = HashMap::new();
    for b in batches {
        for (offset, value) in b.values() {
            let value = value.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
            out.entry(value).or_default().push((offset, b.leader_epoch));
        }
    }
    out
}

/// The acks at or above the first offset of `batches` (what retention has not deleted). An ack
/// without an offset is kept when an ack of an earlier record (the producer keeps its order)
/// is at or above it.
fn kept(acks: &HashMap<u64, Ack>, batches: &[Batch]) -> HashMap<u64, Ack> {
    let start = batches.first().map_or(0, |b| b.base_offset);
    let first_kept = acks.iter().filter(|(_, a)| a.offset.is_some_and(|o| o >= start)).map(|(s, _)| *s).min();
    acks.iter()
        .filter(|(s, a)| match a.offset {
            Some(o) => o >= start,
            None => first_kept.is_some_and(|k| **s > k),
        })
        .map(|(s, a)| (*s, *a))
        .collect()
}

/// Checks that every acked record of `run` is in `batches` exactly once, at its acked offset.
fn check_acked_in_log(
    acks: &HashMap<u64, Ack>,
    run: &str,
    values: &HashMap<String, Vec<(i64, i32)>>,
) -> Result<(), String> {
    let mut bad = Vec::new();
    for (seq, ack) in acks {
        match values.get(&format!("{run}-{seq}")).map(Vec::as_slice) {
            Some([(offset, _)]) if ack.offset.is_none_or(|o| o == *offset) => {}
            other => bad.push((*seq, ack.offset, other.map(<[_]>::to_vec))),
        }
    }
    bad.sort_unstable_by_key(|b| b.0);
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} acked records are missing, moved or duplicated (seq, acked offset, stored at): {:?}",
            bad.len(),
            acks.len(),
            first(&bad)
        ))
    }
}

#[test]
fn sigstop_leader_steps_down_and_no_split_brain() {
    // Goal: a leader frozen (SIGSTOP) past the election timeout is replaced by a leader of a higher
    // epoch; once resumed it refuses writes with NOT_LEADER_OR_FOLLOWER and never takes one in its
    // old epoch; every acked record is stored once and no node's reported epoch goes back.
    let mut cluster = CreekCluster::start(NODES);
    let topic = unique_topic("sigstop");
    cluster.create_topic(&topic, 1);
    let (old, old_epoch) = cluster.wait_for_leaders(&topic, 1, LEADER_TIMEOUT)[0];
    let mut watch = EpochWatch::default();
    watch.observe(&cluster, &topic);
    let mut producer = AckedProducer::start_with(&cluster, &topic, 300, PRODUCER_REQUEST_TIMEOUT_MS);
    producer.wait_acks(&cluster, 100, "acks before the pause");

    cluster.pause(old);
    let paused = Instant::now();
    let (new, new_epoch) = wait_new_leader(&cluster, &topic, old, old_epoch);
    eprintln!(
        "leader {old} (epoch {old_epoch}) paused; node {new} leads in epoch {new_epoch} after {:?}",
        paused.elapsed()
    );
    watch.observe(&cluster, &topic);
    let accepted = match raw_produce(&cluster.addr(new), &topic, "new-leader-write") {
        RawAnswer::Stored(offset) => offset,
        other => panic!("the new leader {new} refused a write: {other:?}\n{}", cluster.log_tails()),
    };
    std::thread::sleep(Duration::from_secs(3).saturating_sub(paused.elapsed()));
    cluster.resume(old);

    // Ask the resumed old leader straight away, and until it says it does not lead.
    let mut old_writes: Vec<(String, RawAnswer)> = Vec::new();
    let asked = Instant::now();
    loop {
        let value = format!("old-leader-write-{}", old_writes.len());
        let answer = raw_produce(&cluster.addr(old), &topic, &value);
        eprintln!("raw Produce to resumed old leader {old} after {:?}: {answer:?}", asked.elapsed());
        old_writes.push((value, answer));
        if answer == RawAnswer::Error(NOT_LEADER_OR_FOLLOWER) {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "the resumed old leader {old} did not answer NOT_LEADER_OR_FOLLOWER within 10 s: {old_writes:?}\n{}",
            cluster.log_tails()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    watch.observe(&cluster, &topic);
    cluster.wait_replicating(old, &topic, LEADER_TIMEOUT);
    producer.wait_acks(&cluster, 200, "acks after the resume");
    watch.observe(&cluster, &topic);
    let (run, acks) = producer.stop();
    assert_acked_stored_once(&cluster, &topic, &run, &acks);

    let (_, batches) = stop_and_compare_replicas(&mut cluster, &topic);
    let values = values_at(&batches);
    let stored = values.get("new-leader-write").map(Vec::as_slice).unwrap_or_default();
    assert!(
        matches!(stored, [(o, e)] if *o == accepted && *e >= new_epoch),
        "the new leader acked its write at {accepted} in epoch {new_epoch}; stored at {stored:?}"
    );
    for (value, answer) in &old_writes {
        let stored = values.get(value).map(Vec::as_slice).unwrap_or_default();
        match answer {
            // A write the old node took must be in the log once, at its offset, in a newer epoch.
            RawAnswer::Stored(offset) => assert!(
                matches!(stored, [(o, e)] if o == offset && *e >= new_epoch),
                "the old leader acked `{value}` at {offset}, but it is stored at {stored:?} (old epoch {old_epoch})"
            ),
            _ => assert!(
                stored.iter().all(|(_, e)| *e > old_epoch),
                "`{value}`, refused by the old leader, is stored in its old epoch: {stored:?}"
            ),
        }
    }
    assert!(watch.observations > 0, "no node reported a leader");
}

#[test]
fn isolated_leader_cannot_commit_and_cluster_converges() {
    // Goal: a leader cut off from its peers acknowledges no acks=-1 write; the majority elects a
    // new leader and keeps taking writes; after the partition heals the old leader converges to a
    // log byte-identical to the others', without its uncommitted writes.
    // Not checked here: that a client producer follows the new leader while the old one stays
    // isolated. The isolated node answers Produce with NOT_LEADER_OR_FOLLOWER but its Metadata
    // still names itself leader (old epoch), so librdkafka, which asks the broker it is connected
    // to, retries on the isolated node until the partition heals.
    let mut cluster = CreekCluster::start_with_internal_proxies(NODES, &[]);
    let topic = unique_topic("isolated");
    cluster.create_topic(&topic, 1);
    let (old, old_epoch) = cluster.wait_for_leaders(&topic, 1, LEADER_TIMEOUT)[0];
    let mut producer = AckedProducer::start_with(&cluster, &topic, 300, PRODUCER_REQUEST_TIMEOUT_MS);
    producer.wait_acks(&cluster, 100, "acks before the isolation");

    cluster.isolate(old);
    let isolated = Instant::now();
    let mut isolated_writes = Vec::new();
    let value = "isolated-write-0".to_string();
    let answer = raw_produce(&cluster.addr(old), &topic, &value);
    eprintln!("raw Produce to isolated leader {old}: {answer:?} after {:?}", isolated.elapsed());
    isolated_writes.push((value, answer));
    let (new, new_epoch) = wait_new_leader(&cluster, &topic, old, old_epoch);
    eprintln!("node {new} leads in epoch {new_epoch} {:?} after isolating {old}", isolated.elapsed());
    let value = "isolated-write-1".to_string();
    let answer = raw_produce(&cluster.addr(old), &topic, &value);
    eprintln!("raw Produce to isolated old leader {old}: {answer:?}");
    isolated_writes.push((value, answer));
    for (value, answer) in &isolated_writes {
        assert!(
            matches!(answer, RawAnswer::Error(NOT_LEADER_OR_FOLLOWER | REQUEST_TIMED_OUT)),
            "the isolated old leader {old} answered `{value}` with {answer:?}, not NOT_LEADER_OR_FOLLOWER or \
             REQUEST_TIMED_OUT\n{}",
            cluster.log_tails()
        );
    }
    // The majority keeps taking writes. (Raw writes to the new leader: the client producer may be
    // stuck on the isolated node while it stays cut off, see the note at the top of this test.)
    let mut majority_writes = Vec::new();
    for i in 0..20 {
        let value = format!("majority-write-{i}");
        // As a client would: NOT_LEADER_OR_FOLLOWER is retried while the new leader finishes
        // taking over (others may name it before it has committed its first entry).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match raw_produce(&cluster.addr(new), &topic, &value) {
                RawAnswer::Stored(offset) => {
                    majority_writes.push((value, offset));
                    break;
                }
                RawAnswer::Error(NOT_LEADER_OR_FOLLOWER) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => panic!("the new leader {new} refused `{value}`: {other:?}\n{}", cluster.log_tails()),
            }
        }
    }

    cluster.heal();
    cluster.wait_replicating(old, &topic, LEADER_TIMEOUT);
    let healed = creek_tests::cluster::monotonic_ms();
    while producer.next_ack(&cluster, LEADER_TIMEOUT, "acks after the heal").produced_ms <= healed {}
    producer.wait_acks(&cluster, 100, "acks after the heal");
    let (run, acks) = producer.stop();
    assert_acked_stored_once(&cluster, &topic, &run, &acks);

    let (_, batches) = stop_and_compare_replicas(&mut cluster, &topic);
    let values = values_at(&batches);
    for (value, _) in &isolated_writes {
        assert!(!values.contains_key(value), "`{value}`, refused by the isolated leader, is in the final log");
    }
    for (value, offset) in &majority_writes {
        let stored = values.get(value).map(Vec::as_slice).unwrap_or_default();
        assert!(
            matches!(stored, [(o, _)] if o == offset),
            "`{value}`, acked by the new leader at {offset}, is stored at {stored:?}"
        );
    }
}

/// xorshift64*: a deterministic stream per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

#[test]
fn wiped_node_rejoins_and_catches_up() {
    // Goal: a node that lost its disk rejoins, copies the whole log from the leader, can lead and
    // serve every acked record, and ends byte-identical to the other replicas.
    let mut cluster = CreekCluster::start(NODES);
    let topic = unique_topic("wiped");
    cluster.create_topic(&topic, 1);
    let (leader, _) = cluster.wait_for_leaders(&topic, 1, LEADER_TIMEOUT)[0];
    let mut producer = AckedProducer::start_with(&cluster, &topic, 500, PRODUCER_REQUEST_TIMEOUT_MS);
    producer.wait_acks(&cluster, 1000, "acks before the wipe");
    let (run, acks) = producer.stop();

    let wiped = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    cluster.stop(wiped);
    cluster.wipe_and_restart(wiped);
    cluster.wait_replicating(wiped, &topic, LEADER_TIMEOUT);
    let (leader, _) = cluster.wait_for_leaders(&topic, 1, LEADER_TIMEOUT)[0];
    let (hw, _) = fetch_log_retrying(&cluster.addr(leader), &topic, 0, LEADER_TIMEOUT).expect("read the log");
    wait_log_reaches(&cluster, wiped, &topic, hw);
    eprintln!("wiped node {wiped} holds the log up to the high watermark {hw}");

    make_leader(&mut cluster, &topic, wiped);
    eprintln!("wiped node {wiped} leads; reading through it");
    assert_acked_stored_once(&cluster, &topic, &run, &acks);
    restart_down_nodes(&mut cluster, &topic);
    let (final_hw, _) = stop_and_compare_replicas(&mut cluster, &topic);
    assert!(final_hw >= hw, "high watermark went back from {hw} to {final_hw}");
}

/// Kills leaders of partition 0 until node `wanted` is elected (a coin toss between two each
/// time); a killed node that lost the toss is restarted. The last one killed stays down.
fn make_leader(cluster: &mut CreekCluster, topic: &str, wanted: i32) {
    let mut attempts = 0;
    loop {
        let (leader, epoch) = cluster.wait_for_leaders(topic, 1, LEADER_TIMEOUT)[0];
        if leader == wanted {
            return;
        }
        attempts += 1;
        assert!(attempts <= 8, "node {wanted} was not elected in 8 leader kills");
        cluster.kill(leader);
        let (next, _) = wait_new_leader(cluster, topic, leader, epoch);
        eprintln!("killed leader {leader}; node {next} leads");
        if next == wanted {
            return;
        }
        cluster.restart(leader);
        cluster.wait_replicating(leader, topic, LEADER_TIMEOUT);
    }
}

fn restart_down_nodes(cluster: &mut CreekCluster, topic: &str) {
    let down: Vec<i32> = cluster.ids().into_iter().filter(|&id| !cluster.running(id)).collect();
    for id in down {
        cluster.restart(id);
        cluster.wait_replicating(id, topic, LEADER_TIMEOUT);
    }
}

/// The first offset node `id` stores of partition 0 (read from its segment files).
fn stored_start(cluster: &CreekCluster, id: i32, topic: &str) -> i64 {
    partition_log::read_segments(&cluster.data_dir(id), topic, 0).first().map_or(0, |b| b.base_offset)
}

#[test]
fn retention_deletes_replicated_segments_and_a_wiped_node_starts_at_the_leaders_log_start() {
    // Goal: with retention.bytes on a replicated topic, every replica deletes its oldest segments
    // (Raft snapshots and purges the entries first), and a node that lost its disk gets the
    // leader's snapshot, starts its log where the leader's retention left off, can lead, and
    // serves every acked record retention kept. Replicas end byte-identical from the latest start.
    let settings =
        [("log.segment.bytes", "16384"), ("log.retention.bytes", "49152"), ("log.retention.check.interval.ms", "200")];
    let mut cluster = CreekCluster::start_with(NODES, &settings);
    let topic = unique_topic("retained");
    cluster.create_topic(&topic, 1);
    let (leader, _) = cluster.wait_for_leaders(&topic, 1, LEADER_TIMEOUT)[0];
    let mut acked: Vec<(i64, String)> = Vec::new();
    produce_padded(&cluster, &topic, 0..300, &mut acked);

    // Every replica deletes old segments: about 300 KiB written, 48 KiB retained.
    let deadline = Instant::now() + LEADER_TIMEOUT;
    for id in cluster.ids() {
        while stored_start(&cluster, id, &topic) == 0 {
            assert!(Instant::now() < deadline, "node {id} deleted nothing\n{}", cluster.log_tails());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let starts: Vec<i64> = cluster.ids().iter().map(|&id| stored_start(&cluster, id, &topic)).collect();
    eprintln!("log starts after retention: {starts:?} (of {} records)", acked.len());
    assert!(starts.iter().all(|&s| s > 150), "retention kept more than 48 KiB: starts {starts:?}");

    let wiped = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    cluster.stop(wiped);
    cluster.wipe_and_restart(wiped);
    cluster.wait_replicating(wiped, &topic, LEADER_TIMEOUT);
    produce_padded(&cluster, &topic, 300..320, &mut acked);
    let (leader, _) = cluster.wait_for_leaders(&topic, 1, LEADER_TIMEOUT)[0];
    let leader_start = stored_start(&cluster, leader, &topic);
    let (hw, _) = fetch_log_from(&cluster.addr(leader), &topic, 0, leader_start, LEADER_TIMEOUT).expect("read the log");
    wait_log_reaches(&cluster, wiped, &topic, hw);
    let wiped_start = stored_start(&cluster, wiped, &topic);
    eprintln!("wiped node {wiped} starts at {wiped_start}; the leader {leader} at {leader_start}; high watermark {hw}");
    assert!(wiped_start > 150, "the wiped node copied entries retention had released: it starts at {wiped_start}");

    make_leader(&mut cluster, &topic, wiped);
    let earliest = earliest(&cluster, wiped, &topic);
    assert_eq!(earliest, wiped_start, "ListOffsets earliest on the wiped leader");
    let (_, batches) = fetch_log_retrying_from(&cluster.addr(wiped), &topic, earliest);
    let stored = values_at(&batches);
    let kept: Vec<&(i64, String)> = acked.iter().filter(|(offset, _)| *offset >= earliest).collect();
    assert!(kept.len() >= 20, "only {} acked records kept", kept.len());
    for (offset, value) in &kept {
        let at: Vec<i64> = stored.get(value.as_str()).map(|v| v.iter().map(|(o, _)| *o).collect()).unwrap_or_default();
        assert_eq!(at, vec![*offset], "acked record at {offset} on the wiped leader");
    }
    restart_down_nodes(&mut cluster, &topic);
    produce_padded(&cluster, &topic, 320..330, &mut acked);
    let (final_hw, _) = stop_and_compare_replicas(&mut cluster, &topic);
    assert!(final_hw > hw, "high watermark went from {hw} to {final_hw}");
}

/// Produces one 1 KiB record per number in `range` to the leader of partition 0, acks=-1, and
/// records each acked (offset, value). A write the leader refuses (leadership moving) is sent
/// again to the new leader under a new value, since the refused one may still commit.
fn produce_padded(cluster: &CreekCluster, topic: &str, range: std::ops::Range<usize>, acked: &mut Vec<(i64, String)>) {
    let padding = "x".repeat(1000);
    let mut leader = cluster.wait_for_leaders(topic, 1, LEADER_TIMEOUT)[0].0;
    let mut w = Wire::connect(&cluster.addr(leader));
    let deadline = Instant::now() + LEADER_TIMEOUT;
    for i in range {
        for attempt in 0.. {
            let value = format!("ret-{i}-{attempt}-{padding}");
            // A current timestamp: only retention.bytes applies, not retention.ms.
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
            let batch = creek_protocol::batch::build_batch(0, now as i64, &[(None, Some(value.as_bytes()))]);
            match wire::try_produce(&mut w, topic, 0, batch, -1) {
                Some((0, offset)) => {
                    acked.push((offset, value));
                    break;
                }
                other => {
                    assert!(Instant::now() < deadline, "produce {i} to leader {leader}: {other:?}");
                    std::thread::sleep(Duration::from_millis(100));
                    leader = cluster.wait_for_leaders(topic, 1, LEADER_TIMEOUT)[0].0;
                    w = Wire::connect(&cluster.addr(leader));
                }
            }
        }
    }
}

/// ListOffsets earliest of partition 0 on node `id`, retried while it settles.
fn earliest(cluster: &CreekCluster, id: i32, topic: &str) -> i64 {
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        if let Ok(mut w) = Wire::connect_timeout(&cluster.addr(id), Duration::from_secs(5)) {
            match wire::list_offset(&mut w, topic, 0, -2) {
                (0, offset) => return offset,
                (code, _) => assert!(Instant::now() < deadline, "ListOffsets earliest on node {id}: error {code}"),
            }
        }
        assert!(Instant::now() < deadline, "node {id} does not answer ListOffsets");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`fetch_log_from`], retrying while the leader settles.
fn fetch_log_retrying_from(addr: &str, topic: &str, start: i64) -> (i64, Vec<Batch>) {
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        match fetch_log_from(addr, topic, 0, start, Duration::from_secs(5)) {
            Ok(log) => return log,
            Err(e) => assert!(Instant::now() < deadline, "read {topic} from {addr}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn producer_follows_new_leader_while_old_leader_is_isolated() {
    // Goal: while the leader is cut off from its peers, a client producer moves to the new leader.
    let cluster = CreekCluster::start_with_internal_proxies(NODES, &[]);
    let topic = unique_topic("isolated-client");
    cluster.create_topic(&topic, 1);
    let (old, old_epoch) = cluster.wait_for_leaders(&topic, 1, LEADER_TIMEOUT)[0];
    let mut producer = AckedProducer::start_with(&cluster, &topic, 300, PRODUCER_REQUEST_TIMEOUT_MS);
    producer.wait_acks(&cluster, 100, "acks before the isolation");
    cluster.isolate(old);
    let (new, new_epoch) = wait_new_leader(&cluster, &topic, old, old_epoch);
    eprintln!("node {new} leads in epoch {new_epoch} after isolating {old}");
    let since = creek_tests::cluster::monotonic_ms();
    while producer.next_ack(&cluster, LEADER_TIMEOUT, "acks while the old leader is isolated").produced_ms <= since {}
    let resumed_ms = creek_tests::cluster::monotonic_ms() - since;
    eprintln!("the producer moved to node {new} {resumed_ms} ms after the new leader was seen");
    cluster.heal();
    let (run, acks) = producer.stop();
    assert_acked_stored_once(&cluster, &topic, &run, &acks);
}

/// What a node's answer tells the client about a partition: error code, `current_leader`
/// (id, epoch) and the response's `node_endpoints` as (id, "host:port").
type Hint = (i16, (i32, i32), Vec<(i32, String)>);

/// A raw acks=-1 Produce v11 of one record to partition 0 of `topic` at `addr`.
fn produce_hint(addr: &str, topic: &str) -> Hint {
    let mut w = Wire::connect(addr);
    let mut p = produce_request::PartitionProduceData::default();
    p.index = 0;
    p.records = Some(Bytes::from(creek_protocol::batch::build_batch(0, 1, &[(None, Some(b"hint".as_slice()))])));
    let mut t = produce_request::TopicProduceData::default();
    t.name = wire::topic_name(topic);
    t.partition_data = vec![p];
    let mut req = ProduceRequest::default();
    req.acks = -1;
    req.timeout_ms = RAW_PRODUCE_TIMEOUT_MS;
    req.topic_data = vec![t];
    let resp: ProduceResponse = w.call(ApiKey::Produce, 11, &req);
    let r = &resp.responses[0].partition_responses[0];
    let endpoints = resp.node_endpoints.iter().map(|e| (e.node_id.0, format!("{}:{}", e.host, e.port))).collect();
    (r.error_code, (r.current_leader.leader_id.0, r.current_leader.leader_epoch), endpoints)
}

/// A raw Fetch of partition 0 of `topic` (by name below v13, by `topic_id` from it) at `addr`,
/// claiming leader epoch `epoch` (-1: none).
fn fetch_hint(addr: &str, version: i16, topic: &str, topic_id: Uuid, epoch: i32) -> Hint {
    let mut w = Wire::connect(addr);
    let mut p = fetch_request::FetchPartition::default();
    p.partition = 0;
    p.current_leader_epoch = epoch;
    p.log_start_offset = -1;
    p.partition_max_bytes = 1 << 20;
    let mut t = fetch_request::FetchTopic::default();
    t.topic = wire::topic_name(topic);
    t.topic_id = topic_id;
    t.partitions = vec![p];
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_bytes = 1 << 20;
    req.topics = vec![t];
    let resp: FetchResponse = w.call(ApiKey::Fetch, version, &req);
    let pd = &resp.responses[0].partitions[0];
    let endpoints = resp.node_endpoints.iter().map(|e| (e.node_id.0, format!("{}:{}", e.host, e.port))).collect();
    (pd.error_code, (pd.current_leader.leader_id.0, pd.current_leader.leader_epoch), endpoints)
}

#[test]
fn not_leader_answers_name_the_new_leader_and_its_address() {
    // Goal (KIP-951): after the leader dies, a node that does not lead answers Produce v11 and
    // Fetch v12/v16 with NOT_LEADER_OR_FOLLOWER naming the new leader, its epoch and (Produce
    // v10+, Fetch v16+) its Kafka address, and the leader fences a Fetch with an older epoch
    // with the same hint, so clients move without a Metadata round trip.
    let mut cluster = CreekCluster::start(NODES);
    let topic = unique_topic("kip951");
    cluster.create_topic(&topic, 1);
    let (old, old_epoch) = cluster.wait_for_leaders(&topic, 1, LEADER_TIMEOUT)[0];
    cluster.kill(old);
    let (new, new_epoch) = wait_new_leader(&cluster, &topic, old, old_epoch);
    let follower = cluster.ids().into_iter().find(|&id| id != old && id != new).expect("a third node");
    let md = cluster.metadata(follower, Some(&[&topic])).expect("metadata from the follower");
    let topic_id = md.topics[0].topic_id;
    eprintln!("node {new} leads in epoch {new_epoch} after killing {old}; asking node {follower}");

    let leader = (new, new_epoch);
    let endpoint = vec![(new, cluster.addr(new))];
    let follower_addr = cluster.addr(follower);
    // The follower may hear of the election a moment after the node that reported it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let produced = loop {
        let answer = produce_hint(&follower_addr, &topic);
        if answer.1 == leader || Instant::now() >= deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(produced, (NOT_LEADER_OR_FOLLOWER, leader, endpoint.clone()), "Produce v11 to node {follower}");
    assert_eq!(
        fetch_hint(&follower_addr, 12, &topic, Uuid::nil(), -1),
        (NOT_LEADER_OR_FOLLOWER, leader, vec![]),
        "Fetch v12 to node {follower} (no node_endpoints before v16)"
    );
    assert_eq!(
        fetch_hint(&follower_addr, 16, &topic, topic_id, -1),
        (NOT_LEADER_OR_FOLLOWER, leader, endpoint.clone()),
        "Fetch v16 to node {follower}"
    );
    // Asked of whoever leads now: on this busy machine a second election right after the first
    // was seen once (the new leader answered with no leader at all), and clients then go to
    // the next one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (now, epoch) = cluster.wait_for_leaders(&topic, 1, LEADER_TIMEOUT)[0];
        let want = (FENCED_LEADER_EPOCH, (now, epoch), vec![(now, cluster.addr(now))]);
        let got = fetch_hint(&cluster.addr(now), 16, &topic, topic_id, old_epoch);
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Fetch v16 with the old epoch {old_epoch} to the leader {now} (first new leader {new}): {got:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn acks_1_is_answered_by_the_leader_alone_acks_all_by_a_quorum() {
    // Goal: Kafka's acks semantics on a replicated partition. With both followers frozen, the
    // leader still answers acks=1 (its own append) but never acknowledges acks=-1.
    let mut cluster = CreekCluster::start(NODES);
    let topic = unique_topic("acks");
    cluster.create_topic(&topic, 1);
    let (leader, _) = cluster.wait_for_leaders(&topic, 1, LEADER_TIMEOUT)[0];
    let addr = cluster.addr(leader);
    let mut w = Wire::connect_timeout(&addr, LEADER_TIMEOUT).expect("connect to the leader");
    let record = |v: &str| creek_protocol::batch::build_batch(0, 1, &[(None, Some(v.as_bytes()))]);
    // Warm up: both kinds are acknowledged while the followers run.
    assert_eq!(wire::try_produce_timeout(&mut w, &topic, 0, record("warm-1"), 1, 5000).map(|a| a.0), Some(0));
    assert_eq!(wire::try_produce_timeout(&mut w, &topic, 0, record("warm-all"), -1, 5000).map(|a| a.0), Some(0));

    let followers: Vec<i32> = cluster.ids().into_iter().filter(|&id| id != leader).collect();
    for &f in &followers {
        cluster.pause(f);
    }
    // Right away, before the failure detector (500 ms) sees the followers gone.
    let started = Instant::now();
    let acks1 = wire::try_produce_timeout(&mut w, &topic, 0, record("acks-1"), 1, 5000);
    let acks1_ms = started.elapsed().as_millis();
    let all = wire::try_produce_timeout(&mut w, &topic, 0, record("acks-all"), -1, 2000);
    for &f in &followers {
        cluster.resume(f);
    }
    eprintln!("followers frozen: acks=1 answered {acks1:?} after {acks1_ms} ms; acks=-1 answered {all:?}");
    assert!(matches!(acks1, Some((0, offset)) if offset >= 0), "acks=1 with frozen followers: {acks1:?}");
    assert!(
        matches!(all, Some((REQUEST_TIMED_OUT | NOT_LEADER_OR_FOLLOWER, _))),
        "acks=-1 with frozen followers must not succeed: {all:?}"
    );
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|e| panic!("{name}={v}: {e}")))
}

#[test]
fn seeded_fault_schedule_keeps_invariants() {
    // Goal: under a seeded schedule of crashes, clean restarts, pauses and partitions with a
    // producer running, after every fault each acked record is on the leader once at its offset,
    // the high watermark never goes back, offsets stay dense with non-decreasing epochs, and the
    // replicas end byte-identical.
    let seed = env_number("CREEK_TEST_SEED").unwrap_or_else(|| {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::process::id()) % 1_000_000
    });
    let rounds = env_number("CREEK_FAULT_ROUNDS").unwrap_or(12);
    // Odd seeds run with small segments and retention.bytes, so Raft snapshots and purges all
    // along and restarted nodes may need the leader's snapshot; only acked records at or above
    // the log start are then checked. CREEK_FAULT_RETENTION=0/1 overrides.
    let retention = env_number("CREEK_FAULT_RETENTION").map_or(seed % 2 == 1, |v| v != 0);
    println!("fault schedule seed={seed} rounds={rounds} retention={retention}");
    eprintln!("fault schedule seed={seed} rounds={rounds} retention={retention}");
    let mut rng = Rng((seed ^ 0x9E37_79B9_7F4A_7C15) | 1);

    let settings: &[(&str, &str)] = if retention {
        &[("log.segment.bytes", "16384"), ("log.retention.bytes", "65536"), ("log.retention.check.interval.ms", "200")]
    } else {
        &[]
    };
    let mut cluster = CreekCluster::start_with_internal_proxies(NODES, settings);
    let topic = unique_topic("schedule");
    cluster.create_topic(&topic, 1);
    cluster.wait_for_leaders(&topic, 1, LEADER_TIMEOUT);
    let mut producer = AckedProducer::start_with(&cluster, &topic, 300, PRODUCER_REQUEST_TIMEOUT_MS);
    producer.wait_acks(&cluster, 50, "first acks");
    let ids = cluster.ids();
    let mut last_hw = 0;
    let started = Instant::now();
    for round in 1..=rounds {
        // Half the faults hit the partition's leader, so most rounds move leadership.
        let (leader_now, _) = cluster.wait_for_leaders(&topic, 1, LEADER_TIMEOUT)[0];
        let node = if rng.below(2) == 0 { leader_now } else { ids[rng.below(ids.len() as u64) as usize] };
        let fault = match rng.below(4) {
            0 => {
                let down = rng.millis(200, 1500);
                cluster.kill(node);
                std::thread::sleep(down);
                cluster.restart(node);
                format!("SIGKILL node {node}, restart after {down:?}")
            }
            1 => {
                let frozen = rng.millis(500, 3000);
                cluster.pause(node);
                std::thread::sleep(frozen);
                cluster.resume(node);
                format!("SIGSTOP node {node} for {frozen:?}")
            }
            2 => {
                let cut = rng.millis(1000, 4000);
                cluster.isolate(node);
                std::thread::sleep(cut);
                cluster.heal();
                format!("isolate node {node} for {cut:?}")
            }
            _ => {
                cluster.stop(node);
                cluster.restart(node);
                format!("SIGTERM node {node}, restart")
            }
        };
        let (leader, epoch) = cluster.wait_for_leaders(&topic, 1, LEADER_TIMEOUT)[0];
        producer.drain();
        let acks = producer.acks.clone();
        // The leader may move while it is read: ask whoever leads until one answers.
        let deadline = Instant::now() + LEADER_TIMEOUT;
        let (hw, batches, read_from) = loop {
            let (leader, _) = cluster.wait_for_leaders(&topic, 1, LEADER_TIMEOUT)[0];
            let start = if retention { earliest(&cluster, leader, &topic) } else { 0 };
            match partition_log::fetch_log_from(&cluster.addr(leader), &topic, 0, start, Duration::from_secs(5)) {
                Ok((hw, batches)) => break (hw, batches, leader),
                Err(e) => {
                    assert!(Instant::now() < deadline, "round {round}: read the log: {e}\n{}", cluster.log_tails())
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let values = values_at(&batches);
        let problem = check_acked_in_log(&kept(&acks, &batches), &producer.run, &values)
            .and_then(|()| {
                if hw < last_hw {
                    Err(format!("the high watermark went back from {last_hw} to {hw} (read from node {read_from})"))
                } else {
                    Ok(())
                }
            })
            .and_then(|()| check_dense_epochs(&batches));
        if let Err(what) = problem {
            panic!("round {round} (seed {seed}, after: {fault}): {what}\n{}", cluster.log_tails());
        }
        last_hw = hw;
        println!(
            "round {round}: {fault}; leader {leader} epoch {epoch}; hw {hw}; {} acked so far, all on the leader",
            acks.len()
        );
    }
    for id in ids.iter().copied() {
        cluster.wait_replicating(id, &topic, LEADER_TIMEOUT);
    }
    let (run, acks) = producer.stop();
    let (hw, batches) = stop_and_compare_replicas(&mut cluster, &topic);
    let kept = kept(&acks, &batches);
    check_acked_in_log(&kept, &run, &values_at(&batches)).unwrap_or_else(|e| panic!("seed {seed}: final log: {e}"));
    let start = batches.first().map_or(0, |b| b.base_offset);
    if retention {
        assert!(start > 0, "seed {seed}: retention deleted nothing in {rounds} rounds");
    }
    println!(
        "fault schedule seed={seed}: {rounds} rounds in {:?}, {} acked records, the {} at or above the log start {start} \
         all stored once, final high watermark {hw}, replicas identical",
        started.elapsed(),
        acks.len(),
        kept.len()
    );
}

/// The in-sync replicas node `id` reports for partition 0, if it answers.
fn isr(cluster: &CreekCluster, id: i32, topic: &str) -> Option<Vec<i32>> {
    let md = cluster.metadata(id, Some(&[topic])).ok()?;
    let p = md.topics.first()?.partitions.first()?;
    let mut ids: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
    ids.sort_unstable();
    Some(ids)
}

/// Waits until node `id` reports `want` as partition 0's ISR.
fn wait_isr(cluster: &CreekCluster, topic: &str, id: i32, want: &[i32], what: &str) {
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        let got = isr(cluster, id, topic);
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: node {id} reports ISR {got:?}, not {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stalled_follower_leaves_the_isr_and_returns_when_caught_up() {
    // Goal: Metadata's ISR tells a lagging replica apart: a follower frozen for longer than
    // replica.lag.time.max.ms while writes go on drops out of the leader's ISR (and out of the
    // other follower's, which sees it down), and is back in once it has caught up.
    let mut cluster = CreekCluster::start_with(NODES, &[("replica.lag.time.max.ms", "2000")]);
    let topic = unique_topic("isr");
    cluster.create_topic(&topic, 1);
    let (leader, _) = cluster.wait_for_leaders(&topic, 1, LEADER_TIMEOUT)[0];
    let all = cluster.ids();
    wait_isr(&cluster, &topic, leader, &all, "all in sync at first");
    let stalled = *all.iter().find(|&&id| id != leader).expect("a follower");
    let other = *all.iter().find(|&&id| id != leader && id != stalled).expect("another follower");
    cluster.pause(stalled);
    let mut w = Wire::connect(&cluster.addr(leader));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let batch = creek_protocol::batch::build_batch(0, 1, &[(None, Some(&b"while stalled"[..]))]);
        assert_eq!(wire::produce(&mut w, &topic, 0, batch, -1).0, 0, "a quorum of two still commits");
        std::thread::sleep(Duration::from_millis(20));
    }
    let without: Vec<i32> = all.iter().copied().filter(|&id| id != stalled).collect();
    wait_isr(&cluster, &topic, leader, &without, "the stalled follower leaves the leader's ISR");
    wait_isr(&cluster, &topic, other, &without, "the other follower sees it out too");
    cluster.resume(stalled);
    wait_isr(&cluster, &topic, leader, &all, "back in sync after resuming");
}
