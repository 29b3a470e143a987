//! Classic consumer groups and committed offsets with real clients against the real creek binary.
//!
//! confluent-kafka (librdkafka, classic protocol) runs `tests/clients/python/confluent_group.py`:
//! a group consuming a stream while members join and leave, static membership, and committed
//! offsets that survive a clean restart and a SIGKILL. kafka-python and aiokafka
//! (`python/py_group.py`) and kafkajs (`node/kafkajs_group.js`) run a group of three members, one
//! leaving midway, with manual commits. Timeouts are small (session 6 s, heartbeat
//! 1 s, `group.initial.rebalance.delay.ms=0`) so each test takes seconds.

use std::process::Command;
use std::time::Duration;

use creek_tests::{CreekProcess, tools};

const CLIENT_LIMIT: Duration = Duration::from_secs(150);
const BROKER: &[(&str, &str)] = &[("group.initial.rebalance.delay.ms", "0")];

fn group_script(broker: &CreekProcess, mode: &str, topic: &str, group: &str) -> Command {
    let python = tools::venv_python();
    let script = tools::client_path("python/confluent_group.py");
    let mut cmd = tools::command_in(&python, script.parent().expect("script dir"));
    cmd.arg(&script).arg(mode).args(["--bootstrap", broker.bootstrap(), "--topic", topic, "--group", group]);
    cmd
}

#[test]
fn confluent_group_consumes_a_stream_while_members_join_and_leave() {
    // Goal: 3 members on 6 partitions, with joins and a leave mid-stream: nothing lost, no
    // redelivery without a failed commit, no overlapping assignments.
    let broker = CreekProcess::start(BROKER);
    let topic = creek_tests::unique_topic("group-stream");
    let line =
        tools::run_client_ok("confluent-kafka-group", group_script(&broker, "stream", &topic, &topic), CLIENT_LIMIT);
    assert!(line.contains("produced=3000"), "{line}");
}

#[test]
fn confluent_cooperative_sticky_group_consumes_a_stream_while_members_join_and_leave() {
    // Goal: the broker is assignor-agnostic: incremental (cooperative-sticky) rebalancing keeps the
    // same guarantees as eager.
    let broker = CreekProcess::start(BROKER);
    let topic = creek_tests::unique_topic("group-coop");
    let mut cmd = group_script(&broker, "stream", &topic, &topic);
    cmd.args(["--assignor", "cooperative-sticky"]);
    let line = tools::run_client_ok("confluent-kafka-group", cmd, CLIENT_LIMIT);
    assert!(line.contains("assignor=cooperative-sticky produced=3000"), "{line}");
}

#[test]
fn confluent_kip848_consumer_group_consumes_a_stream_while_members_join_and_leave() {
    // Goal: the KIP-848 protocol (group.protocol=consumer, broker-side uniform assignor) keeps the
    // same guarantees: nothing lost, no redelivery without a failed commit, no overlap.
    let broker = CreekProcess::start(&[
        ("group.consumer.heartbeat.interval.ms", "500"),
        ("group.consumer.session.timeout.ms", "6000"),
    ]);
    let topic = creek_tests::unique_topic("group-kip848");
    let mut cmd = group_script(&broker, "stream", &topic, &topic);
    cmd.args(["--protocol", "consumer"]);
    let line = tools::run_client_ok("confluent-kafka-group", cmd, CLIENT_LIMIT);
    assert!(line.contains("protocol=consumer") && line.contains("produced=3000"), "{line}");
    // The group ran on the KIP-848 protocol: ListGroups v5 lists it with type "consumer".
    let mut w = creek_tests::wire::Wire::connect(broker.bootstrap());
    let mut req = kafka_protocol::messages::ListGroupsRequest::default();
    req.types_filter = vec![kafka_protocol::protocol::StrBytes::from_static_str("consumer")];
    let resp: kafka_protocol::messages::ListGroupsResponse =
        w.call(kafka_protocol::messages::ApiKey::ListGroups, 5, &req);
    assert!(
        resp.groups.iter().any(|g| g.group_id.0.as_str() == topic && g.group_type.as_str() == "consumer"),
        "group {topic} is not listed as a KIP-848 consumer group: {:?}",
        resp.groups
    );
}

#[test]
fn confluent_static_member_restarts_without_rebalance_and_silent_member_expires() {
    // Goal: KIP-345 static member restart keeps its partitions without disturbing the other member;
    // once it stops, the session timeout removes it and the other member takes everything.
    let broker = CreekProcess::start(BROKER);
    let topic = creek_tests::unique_topic("group-static");
    tools::run_client_ok("confluent-kafka-group", group_script(&broker, "static", &topic, &topic), CLIENT_LIMIT);
}

#[test]
fn committed_offsets_survive_sigkill_and_clean_restart() {
    // Goal: an acknowledged commit (offset, metadata) is present after SIGKILL and after SIGTERM.
    let mut broker = CreekProcess::start(BROKER);
    let topic = creek_tests::unique_topic("group-durable");
    let group = format!("{topic}-g");
    tools::run_client_ok("confluent-kafka-group", group_script(&broker, "commit", &topic, &group), CLIENT_LIMIT);
    broker.kill();
    broker.restart();
    tools::run_client_ok("confluent-kafka-group", group_script(&broker, "verify", &topic, &group), CLIENT_LIMIT);
    assert!(broker.stop().success(), "clean shutdown");
    broker.restart();
    tools::run_client_ok("confluent-kafka-group", group_script(&broker, "verify", &topic, &group), CLIENT_LIMIT);
}

fn run_py_group(client: &str) -> String {
    // Goal: the client's classic group reads every record once per successful commit, with a member
    // leaving midway, and never assigns a partition to two members at once.
    let broker = CreekProcess::start(BROKER);
    let topic = creek_tests::unique_topic(client);
    let python = tools::venv_python();
    let script = tools::client_path("python/py_group.py");
    let mut cmd = tools::command_in(&python, script.parent().expect("script dir"));
    cmd.arg(&script).arg(client).args(["--bootstrap", broker.bootstrap(), "--topic", &topic, "--group", &topic]);
    tools::run_client_ok(client, cmd, CLIENT_LIMIT)
}

#[test]
fn kafka_python_group_shares_partitions_and_commits() {
    let line = run_py_group("kafka-python");
    assert!(line.contains("delivered="), "{line}");
}

#[test]
fn aiokafka_group_shares_partitions_and_commits() {
    let line = run_py_group("aiokafka");
    assert!(line.contains("delivered="), "{line}");
}

#[test]
fn kafkajs_group_shares_partitions_and_commits() {
    // Goal: kafkajs's consumer.run() group reads every record with manual commits while a member
    // leaves midway, and the remaining members' assignments are disjoint and complete.
    let broker = CreekProcess::start(BROKER);
    let topic = creek_tests::unique_topic("kafkajs-group");
    let node = tools::node();
    let script = tools::client_path("node/kafkajs_group.js");
    let mut cmd = tools::command_in(&node, script.parent().expect("script dir"));
    cmd.arg(&script).args(["--bootstrap", broker.bootstrap(), "--topic", &topic, "--group", &topic]);
    let line = tools::run_client_ok("kafkajs-group", cmd, CLIENT_LIMIT);
    assert!(line.contains("delivered="), "{line}");
}

#[test]
fn describe_groups_shows_each_member_s_client_host() {
    use creek_tests::wire::Wire;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    let broker = CreekProcess::start(BROKER);
    let mut w = Wire::connect(broker.bootstrap());
    let mut join = JoinGroupRequest::default();
    join.group_id = GroupId(StrBytes::from_static_str("hosts"));
    join.session_timeout_ms = 10_000;
    join.rebalance_timeout_ms = 10_000;
    join.protocol_type = StrBytes::from_static_str("consumer");
    let mut p = JoinGroupRequestProtocol::default();
    p.name = StrBytes::from_static_str("range");
    join.protocols = vec![p];
    // The coordinator may still be loading right after start: retry like clients do.
    let mut r: JoinGroupResponse = w.call(ApiKey::JoinGroup, 5, &join);
    for _ in 0..50 {
        if r.error_code != 14 && r.error_code != 15 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        r = w.call(ApiKey::JoinGroup, 5, &join);
    }
    assert_eq!(r.error_code, 79, "v4+ first asks for a member id");
    join.member_id = r.member_id.clone();
    let r: JoinGroupResponse = w.call(ApiKey::JoinGroup, 5, &join);
    assert_eq!(r.error_code, 0);
    let mut req = DescribeGroupsRequest::default();
    req.groups = vec![GroupId(StrBytes::from_static_str("hosts"))];
    let d: DescribeGroupsResponse = w.call(ApiKey::DescribeGroups, 5, &req);
    let hosts: Vec<&str> = d.groups[0].members.iter().map(|m| m.client_host.as_str()).collect();
    assert_eq!(hosts, vec!["/127.0.0.1"]);
}
