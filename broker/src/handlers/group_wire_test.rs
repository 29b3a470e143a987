//! Every group API, at every version the broker advertises, answers through the real frame path
//! (`server::handle_frame`) with a response a client can decode and the outcome Kafka gives.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::describe_configs::fixture;
use super::{Outcome, code, supported};
use crate::server::handle_frame;

pub(super) fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

pub(super) async fn call<Req: Encodable, Resp: Decodable>(
    ctx: &super::Ctx,
    key: ApiKey,
    version: i16,
    body: &Req,
) -> Resp {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = 42;
    header.client_id = Some(s("wire"));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, key.request_header_version(version)).unwrap();
    body.encode(&mut buf, version).unwrap_or_else(|e| panic!("{key:?} v{version} request: {e}"));
    let Outcome::Reply(chunks) = handle_frame(ctx, buf.freeze()).await else { panic!("{key:?} v{version}: no reply") };
    let mut b = Bytes::from(chunks.concat());
    let _ = b.split_to(4);
    let h = ResponseHeader::decode(&mut b, key.response_header_version(version)).unwrap();
    assert_eq!(h.correlation_id, 42);
    Resp::decode(&mut b, version).unwrap_or_else(|e| panic!("{key:?} v{version} response: {e}"))
}

pub(super) fn versions(key: ApiKey) -> std::ops::RangeInclusive<i16> {
    let (min, max) = supported(key).unwrap();
    min..=max
}

fn protocols() -> Vec<join_group_request::JoinGroupRequestProtocol> {
    let mut p = join_group_request::JoinGroupRequestProtocol::default();
    p.name = s("range");
    p.metadata = Bytes::from_static(&[0, 0, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 0]);
    vec![p]
}

#[tokio::test]
async fn group_apis_answer_and_encode_at_every_advertised_version() {
    let (ctx, _dir) = fixture::broker(&[("group.initial.rebalance.delay.ms", "0")]);
    let mut req = FindCoordinatorRequest::default();
    req.key = s("a");
    let r: FindCoordinatorResponse = call(&ctx, ApiKey::FindCoordinator, 3, &req).await;
    assert_eq!(r.error_code, code::COORDINATOR_NOT_AVAILABLE, "not loaded yet: retry");
    let mut hb = HeartbeatRequest::default();
    hb.group_id = GroupId(s("a"));
    let r: HeartbeatResponse = call(&ctx, ApiKey::Heartbeat, 4, &hb).await;
    assert_eq!(r.error_code, code::COORDINATOR_LOAD_IN_PROGRESS);
    ctx.groups.start().unwrap();
    ctx.broker.create_topic("t", 2, BTreeMap::new()).unwrap();

    for v in versions(ApiKey::FindCoordinator) {
        let mut req = FindCoordinatorRequest::default();
        if v >= 4 {
            req.coordinator_keys = vec![s("a"), s("b")];
        } else {
            req.key = s("a");
        }
        let r: FindCoordinatorResponse = call(&ctx, ApiKey::FindCoordinator, v, &req).await;
        if v >= 4 {
            assert_eq!(r.coordinators.len(), 2, "FindCoordinator v{v}");
            assert!(r.coordinators.iter().all(|c| c.error_code == 0 && c.node_id.0 == 1));
        } else {
            assert_eq!((r.error_code, r.node_id.0), (0, 1), "FindCoordinator v{v}");
        }
    }

    for v in versions(ApiKey::JoinGroup) {
        let group = format!("g{v}");
        let mut req = JoinGroupRequest::default();
        req.group_id = GroupId(s(&group));
        req.session_timeout_ms = 10_000;
        req.rebalance_timeout_ms = 10_000;
        req.protocol_type = s("consumer");
        req.protocols = protocols();
        let mut r: JoinGroupResponse = call(&ctx, ApiKey::JoinGroup, v, &req).await;
        if v >= 4 {
            assert_eq!(r.error_code, code::MEMBER_ID_REQUIRED, "JoinGroup v{v}");
            req.member_id = r.member_id.clone();
            r = call(&ctx, ApiKey::JoinGroup, v, &req).await;
        }
        assert_eq!((r.error_code, r.generation_id), (0, 1), "JoinGroup v{v}");
        assert_eq!(r.leader, r.member_id);
        assert_eq!(r.members.len(), 1);
        assert_eq!(r.protocol_name.as_deref(), Some("range"));
        let member = r.member_id.clone();

        let sv = v.min(5);
        let mut sync = SyncGroupRequest::default();
        sync.group_id = GroupId(s(&group));
        sync.generation_id = 1;
        sync.member_id = member.clone();
        if sv >= 5 {
            sync.protocol_type = Some(s("consumer"));
            sync.protocol_name = Some(s("range"));
        }
        let mut a = sync_group_request::SyncGroupRequestAssignment::default();
        a.member_id = member.clone();
        a.assignment = Bytes::from_static(b"assignment");
        sync.assignments = vec![a];
        let r: SyncGroupResponse = call(&ctx, ApiKey::SyncGroup, sv, &sync).await;
        assert_eq!((r.error_code, &r.assignment[..]), (0, &b"assignment"[..]), "SyncGroup v{sv}");

        let hv = v.min(4);
        let mut hb = HeartbeatRequest::default();
        hb.group_id = GroupId(s(&group));
        hb.generation_id = 1;
        hb.member_id = member.clone();
        let r: HeartbeatResponse = call(&ctx, ApiKey::Heartbeat, hv, &hb).await;
        assert_eq!(r.error_code, 0, "Heartbeat v{hv}");
        hb.generation_id = 7;
        let r: HeartbeatResponse = call(&ctx, ApiKey::Heartbeat, hv, &hb).await;
        assert_eq!(r.error_code, code::ILLEGAL_GENERATION, "Heartbeat v{hv}");

        let cv = v.clamp(2, 9);
        let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
        p.partition_index = 1;
        p.committed_offset = 100 + i64::from(v);
        p.committed_leader_epoch = 5;
        p.committed_metadata = Some(s("md"));
        let mut bad = offset_commit_request::OffsetCommitRequestPartition::default();
        bad.partition_index = 9;
        let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
        t.name = TopicName(s("t"));
        t.partitions = vec![p, bad];
        let mut oc = OffsetCommitRequest::default();
        oc.group_id = GroupId(s(&group));
        oc.generation_id_or_member_epoch = 1;
        oc.member_id = member.clone();
        oc.topics = vec![t];
        let r: OffsetCommitResponse = call(&ctx, ApiKey::OffsetCommit, cv, &oc).await;
        let codes: Vec<i16> = r.topics[0].partitions.iter().map(|p| p.error_code).collect();
        assert_eq!(codes, vec![0, code::UNKNOWN_TOPIC_OR_PARTITION], "OffsetCommit v{cv}");
        oc.generation_id_or_member_epoch = 3;
        let r: OffsetCommitResponse = call(&ctx, ApiKey::OffsetCommit, cv, &oc).await;
        assert_eq!(r.topics[0].partitions[0].error_code, code::ILLEGAL_GENERATION, "OffsetCommit v{cv}");

        let lv = v.min(5);
        let mut leave = LeaveGroupRequest::default();
        leave.group_id = GroupId(s(&group));
        if lv >= 3 {
            let mut m = leave_group_request::MemberIdentity::default();
            m.member_id = member.clone();
            leave.members = vec![m];
        } else {
            leave.member_id = member.clone();
        }
        let r: LeaveGroupResponse = call(&ctx, ApiKey::LeaveGroup, lv, &leave).await;
        assert_eq!(r.error_code, 0, "LeaveGroup v{lv}");
        if lv >= 3 {
            assert_eq!(r.members[0].error_code, 0);
        }
    }

    for v in versions(ApiKey::OffsetFetch) {
        let group = format!("g{}", v.min(9));
        let (offset, epoch, md) = if v >= 8 {
            let mut t = offset_fetch_request::OffsetFetchRequestTopics::default();
            t.name = TopicName(s("t"));
            t.partition_indexes = vec![0, 1];
            let mut g = offset_fetch_request::OffsetFetchRequestGroup::default();
            g.group_id = GroupId(s(&group));
            g.topics = Some(vec![t]);
            let mut all = offset_fetch_request::OffsetFetchRequestGroup::default();
            all.group_id = GroupId(s("g2"));
            all.topics = None;
            let mut req = OffsetFetchRequest::default();
            req.groups = vec![g, all];
            req.require_stable = true;
            let r: OffsetFetchResponse = call(&ctx, ApiKey::OffsetFetch, v, &req).await;
            assert_eq!(r.groups.len(), 2);
            assert_eq!(r.groups[1].topics[0].partitions[0].committed_offset, 102, "null topics fetch all");
            let p = &r.groups[0].topics[0].partitions;
            assert_eq!(p[0].committed_offset, -1);
            (p[1].committed_offset, p[1].committed_leader_epoch, p[1].metadata.clone())
        } else {
            let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
            t.name = TopicName(s("t"));
            t.partition_indexes = vec![0, 1];
            let mut req = OffsetFetchRequest::default();
            req.group_id = GroupId(s(&group));
            req.topics = Some(vec![t]);
            let r: OffsetFetchResponse = call(&ctx, ApiKey::OffsetFetch, v, &req).await;
            let p = &r.topics[0].partitions;
            assert_eq!(p[0].committed_offset, -1);
            (p[1].committed_offset, p[1].committed_leader_epoch, p[1].metadata.clone())
        };
        // Group g{v} was committed by the JoinGroup v{v} round above, with OffsetCommit v{clamp(v, 2, 9)}.
        let cv = v.clamp(2, 9);
        assert_eq!(offset, 100 + i64::from(v), "OffsetFetch v{v}");
        assert_eq!(md.as_deref(), Some("md"), "OffsetFetch v{v} metadata round-trips");
        if v >= 5 {
            let committed_with = if cv >= 6 { 5 } else { -1 };
            assert_eq!(epoch, committed_with, "OffsetFetch v{v} committed_leader_epoch");
        }
    }

    for v in versions(ApiKey::ListGroups) {
        let mut req = ListGroupsRequest::default();
        if v >= 4 {
            req.states_filter = vec![s("empty")];
        }
        if v >= 5 {
            req.types_filter = vec![s("classic")];
        }
        let r: ListGroupsResponse = call(&ctx, ApiKey::ListGroups, v, &req).await;
        assert_eq!(r.groups.len(), 10, "ListGroups v{v}: {:?}", r.groups);
        if v >= 4 {
            assert!(r.groups.iter().all(|g| g.group_state.as_str() == "Empty"));
        }
    }

    for v in versions(ApiKey::DescribeGroups) {
        let mut req = DescribeGroupsRequest::default();
        req.groups = vec![GroupId(s("g3")), GroupId(s("nope"))];
        let r: DescribeGroupsResponse = call(&ctx, ApiKey::DescribeGroups, v, &req).await;
        assert_eq!(r.groups[0].group_state.as_str(), "Empty", "DescribeGroups v{v}");
        assert_eq!(r.groups[0].protocol_type.as_str(), "consumer");
        assert_eq!((r.groups[1].error_code, r.groups[1].group_state.as_str()), (0, "Dead"));
    }

    let mut od = OffsetDeleteRequest::default();
    od.group_id = GroupId(s("g4"));
    let mut t = offset_delete_request::OffsetDeleteRequestTopic::default();
    t.name = TopicName(s("t"));
    let mut p = offset_delete_request::OffsetDeleteRequestPartition::default();
    p.partition_index = 1;
    t.partitions = vec![p];
    od.topics = vec![t];
    let r: OffsetDeleteResponse = call(&ctx, ApiKey::OffsetDelete, 0, &od).await;
    assert_eq!((r.error_code, r.topics[0].partitions[0].error_code), (0, 0));
    assert!(ctx.groups.fetch("g4", None).is_empty());

    for v in versions(ApiKey::DeleteGroups) {
        let mut req = DeleteGroupsRequest::default();
        req.groups_names = vec![GroupId(StrBytes::from_string(format!("g{v}"))), GroupId(s("nope"))];
        let r: DeleteGroupsResponse = call(&ctx, ApiKey::DeleteGroups, v, &req).await;
        let codes: Vec<i16> = r.results.iter().map(|g| g.error_code).collect();
        assert_eq!(codes, vec![0, code::GROUP_ID_NOT_FOUND], "DeleteGroups v{v}");
    }
}

#[tokio::test]
async fn clients_cannot_produce_to_consumer_offsets() {
    // Goal: __consumer_offsets is written only by the coordinator.
    let (ctx, _dir) = fixture::broker(&[]);
    ctx.groups.start().unwrap();
    let mut p = produce_request::PartitionProduceData::default();
    p.index = 0;
    p.records = Some(Bytes::from(creek_protocol::batch::build_batch(0, 0, &[(Some(b"k"), Some(b"v"))])));
    let mut t = produce_request::TopicProduceData::default();
    t.name = TopicName(s("__consumer_offsets"));
    t.partition_data = vec![p];
    let mut req = ProduceRequest::default();
    req.acks = -1;
    req.timeout_ms = 5000;
    req.topic_data = vec![t];
    let r: ProduceResponse = call(&ctx, ApiKey::Produce, 9, &req).await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, code::INVALID_TOPIC_EXCEPTION);
}

#[tokio::test]
async fn offsets_expire_after_retention_and_survive_a_reload() {
    // Goal: standalone commits expire offsets.retention.minutes after the commit (tombstoned, so
    // they stay gone after a reload); other commits come back from a reload with epoch and metadata.
    let (ctx, dir) =
        fixture::broker(&[("offsets.retention.minutes", "1"), ("offsets.retention.check.interval.ms", "0")]);
    ctx.groups.start().unwrap();
    ctx.broker.create_topic("t", 1, BTreeMap::new()).unwrap();
    let part = |offset| crate::group::coordinator::CommitPart {
        topic: "t".into(),
        partition: 0,
        offset,
        leader_epoch: 2,
        metadata: "m".into(),
        error: 0,
    };
    let out = ctx.groups.commit("solo", -1, "", None, vec![part(5)]).await;
    assert_eq!(out[0].error, 0);
    let now = crate::state::now_ms();
    ctx.groups.tick(now + 30_000);
    assert_eq!(ctx.groups.fetch("solo", None).len(), 1, "not expired yet");
    ctx.groups.tick(now + 61_000);
    assert!(ctx.groups.fetch("solo", None).is_empty(), "expired");
    assert!(ctx.groups.list().is_empty(), "the empty group without offsets is removed");

    ctx.groups.commit("again", -1, "", None, vec![part(9)]).await;
    // A fresh coordinator over the same data replays __consumer_offsets.
    let reloaded = crate::group::coordinator::GroupCoordinator::new(ctx.broker.clone(), ctx.flusher.clone());
    reloaded.start().unwrap();
    assert!(reloaded.fetch("solo", None).is_empty());
    let again = reloaded.fetch("again", None);
    let c = again[0].1[0].1.clone().unwrap();
    assert_eq!((c.offset, c.leader_epoch, c.metadata.as_str()), (9, 2, "m"));
    drop(dir);
}

#[tokio::test]
async fn describe_groups_sends_consumer_groups_to_consumer_group_describe() {
    // Goal: as Kafka 4 does, DescribeGroups answers a KIP-848 group with GROUP_ID_NOT_FOUND (so
    // admin clients retry with ConsumerGroupDescribe), and ConsumerGroupDescribe describes it.
    let (ctx, _dir) = fixture::broker(&[]);
    ctx.groups.start().unwrap();
    ctx.broker.create_topic("t", 2, BTreeMap::new()).unwrap();
    let mut hb = ConsumerGroupHeartbeatRequest::default();
    hb.group_id = GroupId(s("kip848"));
    hb.member_id = s("m1");
    hb.member_epoch = 0;
    hb.rebalance_timeout_ms = 30_000;
    hb.subscribed_topic_names = Some(vec![TopicName(s("t"))]);
    hb.topic_partitions = Some(Vec::new());
    let r: ConsumerGroupHeartbeatResponse = call(&ctx, ApiKey::ConsumerGroupHeartbeat, 0, &hb).await;
    assert_eq!(r.error_code, 0);
    for v in versions(ApiKey::DescribeGroups) {
        let mut req = DescribeGroupsRequest::default();
        req.groups = vec![GroupId(s("kip848"))];
        let r: DescribeGroupsResponse = call(&ctx, ApiKey::DescribeGroups, v, &req).await;
        assert_eq!((r.groups[0].error_code, r.groups[0].group_state.as_str()), (code::GROUP_ID_NOT_FOUND, "Dead"));
    }
    let mut req = ConsumerGroupDescribeRequest::default();
    req.group_ids = vec![GroupId(s("kip848"))];
    let r: ConsumerGroupDescribeResponse = call(&ctx, ApiKey::ConsumerGroupDescribe, 0, &req).await;
    assert_eq!((r.groups[0].error_code, r.groups[0].members.len()), (0, 1));
    let epoch = r.groups[0].members[0].member_epoch;

    // OffsetFetch v9 checks the fetching member's id and epoch.
    for (member, member_epoch, want) in [
        ("m1", epoch, code::NONE),
        ("m1", epoch + 1, crate::group::consumer::codes::STALE_MEMBER_EPOCH),
        ("ghost", epoch, code::UNKNOWN_MEMBER_ID),
    ] {
        let mut g = offset_fetch_request::OffsetFetchRequestGroup::default();
        g.group_id = GroupId(s("kip848"));
        g.member_id = Some(s(member));
        g.member_epoch = member_epoch;
        let mut req = OffsetFetchRequest::default();
        req.groups = vec![g];
        let r: OffsetFetchResponse = call(&ctx, ApiKey::OffsetFetch, 9, &req).await;
        assert_eq!(r.groups[0].error_code, want, "{member} at epoch {member_epoch}");
    }
}

#[tokio::test]
async fn join_and_sync_answers_wait_for_the_group_record_to_be_durable() {
    // Goal: a member never acts on a generation or assignment a crash could take back.
    let (ctx, _dir) = fixture::broker(&[("group.initial.rebalance.delay.ms", "0")]);
    ctx.groups.start().unwrap();
    let mut join = JoinGroupRequest::default();
    join.group_id = GroupId(s("durable"));
    join.session_timeout_ms = 10_000;
    join.rebalance_timeout_ms = 10_000;
    join.member_id = s("");
    join.protocol_type = s("consumer");
    join.protocols = protocols();
    let r: JoinGroupResponse = call(&ctx, ApiKey::JoinGroup, 3, &join).await;
    assert_eq!(r.error_code, 0);
    let mut sync = SyncGroupRequest::default();
    sync.group_id = GroupId(s("durable"));
    sync.generation_id = r.generation_id;
    sync.member_id = r.member_id.clone();
    let mut a = sync_group_request::SyncGroupRequestAssignment::default();
    a.member_id = r.member_id.clone();
    a.assignment = Bytes::from_static(b"assignment");
    sync.assignments = vec![a];
    let r: SyncGroupResponse = call(&ctx, ApiKey::SyncGroup, 3, &sync).await;
    assert_eq!((r.error_code, &r.assignment[..]), (0, &b"assignment"[..]));
    let offsets = ctx.broker.topic(crate::group::store::OFFSETS_TOPIC).unwrap();
    let partition = offsets.partition(ctx.groups.partition_of("durable")).unwrap();
    let log = partition.log.lock();
    assert!(log.log_end_offset() > 0, "the group's records were written");
    assert_eq!(log.flushed_offset(), log.log_end_offset(), "and fsynced before the answers");
}
