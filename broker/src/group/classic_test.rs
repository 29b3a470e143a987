//! Unit tests of the classic group state machine: every transition, including timeouts.

use bytes::Bytes;

use super::*;

const SESSION: i32 = 10_000;
const REBALANCE: i32 = 30_000;

fn cfg() -> ClassicConfig {
    ClassicConfig { initial_rebalance_delay_ms: 0, ..ClassicConfig::default() }
}

fn jr(member: &str, fresh: &str) -> JoinRequest {
    JoinRequest {
        member_id: member.into(),
        instance_id: None,
        client_id: "c".into(),
        client_host: "h".into(),
        session_timeout_ms: SESSION,
        rebalance_timeout_ms: REBALANCE,
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), Bytes::from_static(b"r")), ("roundrobin".into(), Bytes::from_static(b"rr"))],
        require_known_member: false,
        fresh_member_id: fresh.into(),
    }
}

fn joins(out: &[Output]) -> Vec<(ReqId, JoinResult)> {
    out.iter().filter_map(|o| if let Output::Join(r, j) = o { Some((*r, j.clone())) } else { None }).collect()
}
fn syncs(out: &[Output]) -> Vec<(ReqId, SyncResult)> {
    out.iter().filter_map(|o| if let Output::Sync(r, s) = o { Some((*r, s.clone())) } else { None }).collect()
}

fn sr(member: &str, generation: i32, assignments: &[(&str, &'static [u8])]) -> SyncRequest {
    SyncRequest {
        generation,
        member_id: member.into(),
        instance_id: None,
        protocol_type: Some("consumer".into()),
        protocol_name: None,
        assignments: assignments.iter().map(|(m, a)| (m.to_string(), Bytes::from_static(a))).collect(),
    }
}

/// A stable group of `ids` (first is the leader) at generation 1, built around time 0: they all
/// join during a 1 ms initial delay.
fn stable(ids: &[&str]) -> ClassicGroup {
    let mut g = ClassicGroup::new("g", 0).with_initial_delay(1);
    let c = ClassicConfig { initial_rebalance_delay_ms: 1, ..cfg() };
    for (req, id) in ids.iter().enumerate() {
        g.join(req as ReqId + 1, jr("", id), &c, 0);
    }
    let mut t = 1;
    while g.state == GroupState::PreparingRebalance {
        g.tick(t);
        t += 1;
    }
    assert_eq!((g.generation, g.members.len()), (1, ids.len()));
    let leader = g.leader.clone().unwrap();
    assert_eq!(leader, ids[0]);
    let mut s = sr(&leader, 1, &[]);
    s.assignments = g.members.keys().map(|m| (m.clone(), Bytes::from(format!("a-{m}")))).collect();
    let out = g.sync(100, s, t);
    assert!(out.contains(&Output::Persist));
    assert_eq!(g.state, GroupState::Stable);
    g
}

#[test]
fn first_member_joins_syncs_and_becomes_stable() {
    // Goal: Empty -> PreparingRebalance -> CompletingRebalance -> Stable for a single member.
    let mut g = ClassicGroup::new("g", 0);
    let out = g.join(1, jr("", "m1"), &cfg(), 5);
    let j = joins(&out);
    assert_eq!(j.len(), 1);
    assert_eq!((j[0].1.error, j[0].1.generation, j[0].1.leader.as_str()), (0, 1, "m1"));
    assert_eq!(j[0].1.protocol_name.as_deref(), Some("range"));
    assert_eq!(j[0].1.members.len(), 1, "the leader gets the members");
    assert_eq!(g.state, GroupState::CompletingRebalance);
    let out = g.sync(2, sr("m1", 1, &[("m1", b"A")]), 6);
    let s = syncs(&out);
    assert_eq!((s[0].1.error, &s[0].1.assignment[..]), (0, &b"A"[..]));
    assert_eq!(g.state, GroupState::Stable);
    assert_eq!(g.stored().members[0].assignment, Bytes::from_static(b"A"));
}

#[test]
fn kip394_member_id_required_then_join() {
    // Goal: JoinGroup v4+ without a member id gets MEMBER_ID_REQUIRED and the id to use.
    let mut g = ClassicGroup::new("g", 0);
    let mut j = jr("", "m1");
    j.require_known_member = true;
    let out = g.join(1, j, &cfg(), 0);
    assert_eq!(joins(&out)[0].1.error, code::MEMBER_ID_REQUIRED);
    assert_eq!(joins(&out)[0].1.member_id, "m1");
    assert_eq!(g.state, GroupState::Empty);
    let out = g.join(2, jr("m1", "x"), &cfg(), 1);
    assert_eq!(joins(&out)[0].1.error, code::NONE);
    assert_eq!(joins(&out)[0].1.member_id, "m1");
    // An unused pending id expires after the session timeout.
    let mut j = jr("", "m2");
    j.require_known_member = true;
    g.join(3, j, &cfg(), 10);
    g.tick(10 + i64::from(SESSION));
    let out = g.join(4, jr("m2", "x"), &cfg(), 10 + i64::from(SESSION) + 1);
    assert_eq!(joins(&out)[0].1.error, code::UNKNOWN_MEMBER_ID);
}

#[test]
fn second_member_triggers_rebalance_and_heartbeats_report_it() {
    // Goal: a join to a Stable group moves it to PreparingRebalance; heartbeats say
    // REBALANCE_IN_PROGRESS; the join completes once every member rejoined.
    let mut g = stable(&["m1"]);
    let out = g.join(10, jr("", "m2"), &cfg(), 100);
    assert!(joins(&out).is_empty(), "parked until m1 rejoins");
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_eq!(g.heartbeat(1, "m1", None, 101), code::REBALANCE_IN_PROGRESS);
    assert_eq!(g.sync(11, sr("m1", 1, &[]), 101).len(), 1);
    assert_eq!(syncs(&g.sync(11, sr("m1", 1, &[]), 101))[0].1.error, code::REBALANCE_IN_PROGRESS);
    let out = g.join(12, jr("m1", "x"), &cfg(), 102);
    let j = joins(&out);
    assert_eq!(j.len(), 2);
    assert!(j.iter().all(|(_, r)| r.generation == 2 && r.leader == "m1"));
    let leader = j.iter().find(|(r, _)| *r == 12).unwrap();
    assert_eq!(leader.1.members.len(), 2);
    let follower = j.iter().find(|(r, _)| *r == 10).unwrap();
    assert!(follower.1.members.is_empty());
    // Follower syncs first and waits for the leader.
    assert!(syncs(&g.sync(13, sr("m2", 2, &[]), 103)).is_empty());
    assert_eq!(g.heartbeat(2, "m2", None, 103), code::NONE, "heartbeats are fine while completing");
    let out = g.sync(14, sr("m1", 2, &[("m1", b"1"), ("m2", b"2")]), 104);
    let s = syncs(&out);
    assert_eq!(s.len(), 2);
    assert_eq!(s.iter().find(|(r, _)| *r == 13).unwrap().1.assignment, Bytes::from_static(b"2"));
    assert_eq!(g.state, GroupState::Stable);
}

#[test]
fn rebalance_timeout_removes_members_that_did_not_rejoin() {
    // Goal: a dynamic member that does not rejoin within the rebalance timeout is dropped.
    let mut g = stable(&["m1", "m2"]);
    let generation = g.generation;
    g.join(20, jr("", "m3"), &cfg(), 1000);
    g.join(21, jr("m1", "x"), &cfg(), 1001);
    // m2 keeps heartbeating (told REBALANCE_IN_PROGRESS) but never rejoins.
    for t in (1000..1000 + i64::from(REBALANCE)).step_by(5000) {
        assert_eq!(g.heartbeat(generation, "m2", None, t), code::REBALANCE_IN_PROGRESS);
        assert!(g.tick(t).is_empty());
    }
    let out = g.tick(1000 + i64::from(REBALANCE));
    assert_eq!(joins(&out).len(), 2);
    assert!(!g.members.contains_key("m2"));
    assert_eq!(g.generation, generation + 1);
    assert_eq!(g.state, GroupState::CompletingRebalance);
}

#[test]
fn session_timeout_expires_a_silent_member_and_rebalances() {
    // Goal: a member that stops heartbeating is removed after session.timeout.ms.
    let mut g = stable(&["m1", "m2"]);
    let generation = g.generation;
    g.heartbeat(generation, "m1", None, 9_000);
    assert!(g.tick(9_000).is_empty());
    g.tick(i64::from(SESSION) + 10);
    assert!(!g.members.contains_key("m2"));
    assert_eq!(g.state, GroupState::PreparingRebalance);
    // m1 rejoins: the join completes at once since everyone left has joined.
    let out = g.join(30, jr("m1", "x"), &cfg(), 10_001);
    assert_eq!(joins(&out)[0].1.generation, generation + 1);
    assert_eq!(g.state, GroupState::CompletingRebalance);
}

#[test]
fn last_member_leaving_empties_the_group() {
    // Goal: LeaveGroup of the last member takes the group to Empty (via a join with no one).
    let mut g = stable(&["m1"]);
    let (codes, out) = g.leave(&[("m1".into(), None), ("nobody".into(), None)], 50);
    assert_eq!(codes, vec![code::NONE, code::UNKNOWN_MEMBER_ID]);
    assert!(out.contains(&Output::Persist));
    assert_eq!(g.state, GroupState::Empty);
    assert_eq!(g.state_since_ms, 50);
    assert_eq!(g.heartbeat(g.generation, "m1", None, 51), code::UNKNOWN_MEMBER_ID);
}

#[test]
fn leaving_during_the_join_phase_completes_it() {
    // Goal: a batched leave of the members that have not rejoined completes the join phase.
    let mut g = stable(&["m1", "m2", "m3"]);
    g.join(40, jr("m1", "x"), &cfg(), 10);
    g.join(41, jr("m2", "x"), &cfg(), 10);
    // m2 is told to leave while parked: its join is answered with UNKNOWN_MEMBER_ID.
    let (codes, out) = g.leave(&[("m2".into(), None), ("m3".into(), None)], 11);
    assert_eq!(codes, vec![0, 0]);
    let j = joins(&out);
    assert!(j.iter().any(|(r, x)| *r == 41 && x.error == code::UNKNOWN_MEMBER_ID));
    assert!(j.iter().any(|(r, x)| *r == 40 && x.error == code::NONE));
    assert_eq!(g.members.len(), 1);
}

#[test]
fn errors_for_bad_generation_unknown_member_protocol_and_session_timeout() {
    // Goal: ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, INCONSISTENT_GROUP_PROTOCOL, INVALID_SESSION_TIMEOUT.
    let mut g = stable(&["m1"]);
    assert_eq!(g.heartbeat(99, "m1", None, 1), code::ILLEGAL_GENERATION);
    assert_eq!(g.heartbeat(g.generation, "zz", None, 1), code::UNKNOWN_MEMBER_ID);
    assert_eq!(syncs(&g.sync(1, sr("m1", 99, &[]), 1))[0].1.error, code::ILLEGAL_GENERATION);
    let mut bad = sr("m1", g.generation, &[]);
    bad.protocol_name = Some("other".into());
    assert_eq!(syncs(&g.sync(1, bad, 1))[0].1.error, code::INCONSISTENT_GROUP_PROTOCOL);
    let mut j = jr("", "m9");
    j.protocols = vec![("cooperative-sticky".into(), Bytes::new())];
    assert_eq!(joins(&g.join(2, j, &cfg(), 1))[0].1.error, code::INCONSISTENT_GROUP_PROTOCOL);
    let mut j = jr("", "m9");
    j.protocol_type = "connect".into();
    assert_eq!(joins(&g.join(3, j, &cfg(), 1))[0].1.error, code::INCONSISTENT_GROUP_PROTOCOL);
    let mut j = jr("", "m9");
    j.session_timeout_ms = 10;
    assert_eq!(joins(&g.join(4, j, &cfg(), 1))[0].1.error, code::INVALID_SESSION_TIMEOUT);
    let mut j = jr("", "m9");
    j.session_timeout_ms = 1_800_001;
    assert_eq!(joins(&g.join(5, j, &cfg(), 1))[0].1.error, code::INVALID_SESSION_TIMEOUT);
    assert_eq!(joins(&g.join(6, jr("ghost", "x"), &cfg(), 1))[0].1.error, code::UNKNOWN_MEMBER_ID);
    assert_eq!(g.state, GroupState::Stable, "refused joins change nothing");
}

#[test]
fn group_max_size_is_enforced() {
    // Goal: a join beyond group.max.size gets GROUP_MAX_SIZE_REACHED.
    let c = ClassicConfig { group_size_max: 1, ..cfg() };
    let mut g = ClassicGroup::new("g", 0);
    g.join(1, jr("", "m1"), &c, 0);
    assert_eq!(joins(&g.join(2, jr("", "m2"), &c, 0))[0].1.error, code::GROUP_MAX_SIZE_REACHED);
}

#[test]
fn protocol_selection_takes_the_common_most_preferred() {
    // Goal: members preferring different but shared protocols settle on one all support.
    let mut g = ClassicGroup::new("g", 0);
    let c = ClassicConfig { initial_rebalance_delay_ms: 100, ..cfg() };
    g = g.with_initial_delay(100);
    let mut a = jr("", "a");
    a.protocols = vec![("sticky".into(), Bytes::new()), ("range".into(), Bytes::new())];
    let mut b = jr("", "b");
    b.protocols = vec![("range".into(), Bytes::new()), ("sticky".into(), Bytes::new())];
    let mut c3 = jr("", "c");
    c3.protocols = vec![("range".into(), Bytes::new())];
    g.join(1, a, &c, 0);
    g.join(2, b, &c, 0);
    g.join(3, c3, &c, 0);
    assert!(joins(&g.tick(10_000)).is_empty(), "members arrived during the delay: it extends once");
    let out = g.tick(20_000);
    assert_eq!(joins(&out).len(), 3);
    assert_eq!(g.protocol.as_deref(), Some("range"));
}

#[test]
fn initial_delay_waits_for_more_members_and_extends() {
    // Goal: group.initial.rebalance.delay.ms holds the first rebalance and extends while members
    // keep arriving, bounded by the rebalance timeout.
    let mut g = ClassicGroup::new("g", 0).with_initial_delay(3000);
    let c = ClassicConfig { initial_rebalance_delay_ms: 3000, ..cfg() };
    assert!(joins(&g.join(1, jr("", "m1"), &c, 0)).is_empty());
    assert!(g.tick(2999).is_empty());
    g.join(2, jr("", "m2"), &c, 2000);
    assert!(joins(&g.tick(3000)).is_empty(), "a member arrived during the delay: extend");
    let out = g.tick(6000);
    assert_eq!(joins(&out).len(), 2);
    assert_eq!(g.generation, 1);
}

#[test]
fn static_member_restart_keeps_generation_and_fences_the_old_id() {
    // Goal: KIP-345: a static member rejoining with no member id takes its old place without a
    // rebalance; the old member id is then fenced.
    let mut g = ClassicGroup::new("g", 0);
    let mut j = jr("", "s1");
    j.instance_id = Some("i1".into());
    g.join(1, j.clone(), &cfg(), 0);
    g.sync(2, sr("s1", 1, &[("s1", b"A")]), 0);
    assert_eq!(g.state, GroupState::Stable);
    let mut again = j.clone();
    again.fresh_member_id = "s1-new".into();
    let out = g.join(3, again, &cfg(), 5000);
    let r = &joins(&out)[0].1;
    assert_eq!((r.error, r.generation, r.member_id.as_str()), (0, 1, "s1-new"));
    assert!(r.skip_assignment, "the static leader keeps the current assignment");
    assert!(out.contains(&Output::Persist));
    assert_eq!(g.state, GroupState::Stable);
    let mut s = sr("s1-new", 1, &[]);
    s.instance_id = Some("i1".into());
    assert_eq!(syncs(&g.sync(4, s, 5001))[0].1.assignment, Bytes::from_static(b"A"));
    assert_eq!(g.heartbeat(1, "s1", Some("i1"), 5002), code::FENCED_INSTANCE_ID);
    let mut stale = jr("s1", "x");
    stale.instance_id = Some("i1".into());
    assert_eq!(joins(&g.join(5, stale, &cfg(), 5003))[0].1.error, code::FENCED_INSTANCE_ID);
    // A changed subscription does rebalance.
    let mut changed = j.clone();
    changed.fresh_member_id = "s1-3".into();
    changed.protocols = vec![("range".into(), Bytes::from_static(b"new"))];
    assert!(joins(&g.join(6, changed, &cfg(), 6000)).len() == 1);
    assert_eq!(g.generation, 2);
    // Leaving by instance id removes it; a wrong member id for the instance is fenced.
    let (codes, _) = g.leave(&[("wrong".into(), Some("i1".into()))], 7000);
    assert_eq!(codes, vec![code::FENCED_INSTANCE_ID]);
    let (codes, _) = g.leave(&[(String::new(), Some("i1".into()))], 7000);
    assert_eq!(codes, vec![code::NONE]);
    assert!(g.members.is_empty());
}

#[test]
fn static_member_that_does_not_rejoin_stays_until_its_session_ends() {
    // Goal: static members are not dropped at the end of a join phase, only by session timeout.
    let mut g = ClassicGroup::new("g", 0);
    let mut s = jr("", "s1");
    s.instance_id = Some("i1".into());
    g.join(1, s, &cfg(), 0);
    g.sync(2, sr("s1", 1, &[]), 0);
    g.join(3, jr("", "d1"), &cfg(), 100);
    let end = 100 + i64::from(REBALANCE);
    for t in (100..end).step_by(5000) {
        g.heartbeat(1, "s1", Some("i1"), t);
        g.tick(t);
    }
    let out = g.tick(end);
    assert_eq!(joins(&out).len(), 1);
    assert!(g.members.contains_key("s1"));
    g.heartbeat(2, "d1", None, end + i64::from(SESSION));
    g.tick(end + i64::from(SESSION));
    assert!(!g.members.contains_key("s1"));
}

#[test]
fn sync_timeout_removes_members_that_never_synced() {
    // Goal: members that do not send SyncGroup within the rebalance timeout are removed.
    let mut g = stable(&["m1", "m2"]);
    g.join(1, jr("m1", "x"), &cfg(), 10);
    g.join(2, jr("m2", "x"), &cfg(), 10);
    assert_eq!(g.state, GroupState::CompletingRebalance);
    g.sync(3, sr("m2", g.generation, &[]), 11);
    let out = g.tick(10 + i64::from(REBALANCE));
    assert_eq!(syncs(&out)[0].1.error, code::REBALANCE_IN_PROGRESS);
    assert!(!g.members.contains_key("m1"));
    assert_eq!(g.state, GroupState::PreparingRebalance);
}

#[test]
fn follower_rejoin_in_stable_answers_at_once_and_leader_rejoin_rebalances() {
    // Goal: an unchanged follower rejoin returns the current generation; a leader rejoin rebalances.
    let mut g = stable(&["m1", "m2"]);
    let generation = g.generation;
    let out = g.join(1, jr("m2", "x"), &cfg(), 10);
    assert_eq!(joins(&out)[0].1.generation, generation);
    assert_eq!(g.state, GroupState::Stable);
    let out = g.join(2, jr("m1", "x"), &cfg(), 10);
    assert!(joins(&out).is_empty());
    assert_eq!(g.state, GroupState::PreparingRebalance);
}

#[test]
fn commits_are_checked_against_membership() {
    // Goal: OffsetCommit's group checks: simple commits only to empty groups; members by generation.
    let mut g = ClassicGroup::new("g", 0);
    assert_eq!(g.check_commit(-1, "", None, 0), Ok(()));
    let mut g = stable(&["m1"]);
    assert_eq!(g.check_commit(-1, "", None, 0), Err(code::UNKNOWN_MEMBER_ID));
    assert_eq!(g.check_commit(g.generation, "m1", None, 0), Ok(()));
    assert_eq!(g.check_commit(g.generation + 1, "m1", None, 0), Err(code::ILLEGAL_GENERATION));
    g.join(1, jr("", "m2"), &cfg(), 1);
    assert_eq!(g.check_commit(g.generation, "m1", None, 1), Ok(()), "allowed while preparing");
    g.join(2, jr("m1", "x"), &cfg(), 2);
    assert_eq!(g.check_commit(g.generation, "m1", None, 2), Err(code::REBALANCE_IN_PROGRESS));
}

#[test]
fn restore_brings_back_members_who_must_heartbeat() {
    // Goal: a group loaded from __consumer_offsets is Stable with its members, who expire if silent.
    let g = stable(&["m1"]);
    let stored = g.stored();
    let mut r = ClassicGroup::restore(stored.clone(), 1000);
    assert_eq!((r.state, r.generation), (GroupState::Stable, g.generation));
    assert_eq!(r.stored().members, stored.members);
    assert_eq!(r.heartbeat(g.generation, "m1", None, 2000), code::NONE);
    r.tick(2000 + i64::from(SESSION));
    assert!(r.members.is_empty());
}

#[test]
fn subscription_topics_parse_consumer_protocol_metadata() {
    // Goal: OffsetDelete's GROUP_SUBSCRIBED_TO_TOPIC reads topics from the consumer protocol.
    let mut b = vec![0, 1, 0, 0, 0, 2, 0, 1, b'a', 0, 2, b'b', b'c'];
    b.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(consumer_subscription_topics(&b), vec!["a".to_string(), "bc".to_string()]);
    assert!(consumer_subscription_topics(&[0xff]).is_empty());
    assert!(consumer_subscription_topics(&[0, 1, 0x7f, 0xff, 0xff, 0xff]).is_empty());
}

#[test]
fn a_join_phase_with_only_absent_static_members_waits_again() {
    // Goal: when no member rejoined and only static members remain, the join phase restarts
    // instead of emptying a group that still has members; their session timeout ends it.
    let mut g = ClassicGroup::new("g", 0);
    let mut s = jr("", "s1");
    s.instance_id = Some("i1".into());
    g.join(1, s, &cfg(), 0);
    g.sync(2, sr("s1", 1, &[]), 0);
    // The leader's subscription change is seen by a new dynamic member that then leaves.
    g.join(3, jr("", "d1"), &cfg(), 100);
    g.leave(&[("d1".into(), None)], 200);
    assert_eq!(g.state, GroupState::PreparingRebalance);
    // s1 keeps heartbeating (REBALANCE_IN_PROGRESS) but never rejoins, past the join deadline.
    let mut t = 200;
    while t <= 100 + i64::from(REBALANCE) + 5000 {
        g.heartbeat(1, "s1", Some("i1"), t);
        g.tick(t);
        t += 5000;
    }
    assert_eq!((g.state, g.generation, g.members.len()), (GroupState::PreparingRebalance, 1, 1));
    g.tick(t + i64::from(SESSION));
    assert!(g.members.is_empty());
    assert_eq!(g.state, GroupState::Empty);
}
