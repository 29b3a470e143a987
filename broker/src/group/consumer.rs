//! The KIP-848 consumer group state machine (ConsumerGroupHeartbeat, ConsumerGroupDescribe).
//!
//! A pure core: no clock, no socket, no tokio, no randomness source of its own. The driver passes
//! `now_ms` (the broker's `state::now_ms()`), a snapshot of topic metadata and the decoded
//! request fields in; it gets the response fields and the [`Record`]s to append to
//! `__consumer_offsets` out. Nothing else leaves.
//!
//! # API
//!
//! ```text
//! ConsumerGroups::new(config: ConsumerGroupConfig, seed: u64) -> ConsumerGroups
//! heartbeat(&mut self, &Heartbeat, ClassicGroup, &TopicsSnapshot, now_ms: i64) -> HeartbeatOutcome
//! tick(&mut self, now_ms: i64) -> TickOutcome                 // session + rebalance timeouts
//! next_deadline_ms(&self) -> Option<i64>                      // earliest time tick has work
//! describe(&self, &[&str], is_classic: impl Fn(&str) -> bool) -> Vec<DescribeResult>
//! state(&self, group_id) -> Option<&'static str>              // "Empty" | "Assigning" | ...
//! list(&self) -> Vec<(String, &'static str)>                  // ListGroups
//! delete_group(&mut self, group_id) -> Result<Vec<Record>, (i16, String)>
//! validate_offset_commit(&self, group_id, member_id, member_epoch) -> Result<(), (i16, String)>
//! validate_offset_fetch(&self, group_id, member_id, member_epoch) -> Result<(), (i16, String)>
//! replay(&mut self, &Record, now_ms: i64)                     // loading __consumer_offsets
//! TopicsSnapshot::new(BTreeMap<String, TopicInfo>) -> TopicsSnapshot   // version = content hash
//! ```
//!
//! # What the driver must do
//! - **Inputs.** Decode ConsumerGroupHeartbeat into [`Heartbeat`] (with the request's
//!   `api_version`, the header's client id, and `client_host` as Kafka shows it, `/` + peer IP
//!   without the port, so that reconnects do not rewrite the member record). Ask the classic
//!   coordinator what it holds under the group id ([`ClassicGroup`]). Pass a [`TopicsSnapshot`]
//!   of every topic (name, id, partition count) whose `version` changes whenever any topic is
//!   created, deleted or grows (a counter, or [`TopicsSnapshot::new`]'s content hash); groups
//!   re-resolve names and regexes only when the version differs from the last one they saw.
//! - **Outputs.** Append `records` to the group's `__consumer_offsets` partition, in order, and
//!   answer only once they are durable (Kafka answers after the write commits). The state here
//!   has already moved on: if the append fails, unload the partition's groups and rebuild them
//!   with `replay`, as on a coordinator move. When `classic_replaced` is true, the empty classic
//!   group with that id is gone: the classic coordinator drops it and writes its tombstones.
//! - **Timers.** Call `tick(now)` regularly (every few hundred ms, or at `next_deadline_ms`) and
//!   append its records the same way.
//! - **Describe.** Map [`DescribedGroup`] to ConsumerGroupDescribe (member_type 1 = consumer in
//!   v1; authorized operations are the driver's).
//! - **Load.** On becoming coordinator for an offsets partition, `replay` every record of the
//!   types above in log order; members get a fresh session from `now_ms`.
//! - **Other group APIs.** A group id is either classic or consumer, never both: classic
//!   JoinGroup on an id where `state(id)` is `Some("Empty")` may `delete_group` it and take over
//!   (Kafka does); on a non-empty consumer group it answers as Kafka's classic path does.
//!   OffsetCommit/OffsetFetch on consumer groups check members with `validate_offset_*`.
//!
//! # Semantics (Kafka's, KIP-848)
//! - **Group epoch** goes up when a member joins or leaves, when a member's subscription
//!   (names, regex, server assignor, rack) changes, or when the metadata of the subscribed topics
//!   changes. The **target assignment** is recomputed right away at the new epoch by the group's
//!   server assignor (the one most members ask for, else the configured default `uniform`).
//! - **Reconciliation**: a member moves towards its target one step at a time, only on its own
//!   heartbeat. If it holds partitions that are not in its target, it first gets an assignment
//!   without them (state `UnrevokedPartitions`, epoch unchanged) and keeps its old epoch until a
//!   heartbeat's owned partitions show it let them go. Then it moves to the target epoch and gets
//!   the partitions of its target that no other member holds (assigned or pending revocation);
//!   those still held elsewhere are granted on a later heartbeat (`UnreleasedPartitions`). So no
//!   partition is ever assigned to two members at once (an `assert!` guards it).
//! - **Epochs**: a heartbeat with an epoch above the member's, or below it (other than the
//!   previous epoch with owned partitions inside the current assignment: a lost response), is
//!   FENCED_MEMBER_EPOCH. Epoch 0 with a known member id is a rejoin: the member owns nothing,
//!   keeps its id and gets its full assignment again.
//! - **Timeouts**: a member that does not heartbeat for `session_timeout_ms` is removed; a
//!   member that does not revoke within its `rebalance_timeout_ms` of being asked is removed;
//!   both by `tick`. A removed member's next heartbeat gets UNKNOWN_MEMBER_ID.
//! - **Static members** (`instance_id`): epoch -2 leaves temporarily, keeping the assignment and
//!   no rebalance; a new member with the same instance id then takes over the subscription and
//!   assignment without a group epoch bump. The session timeout still removes a static member
//!   that does not come back. Epoch -1 from a static member is a permanent leave.
//! - **Regex** subscriptions use RE2 syntax (the `regex` crate), match whole topic names, and
//!   never match Kafka's internal topics.
//! - Online upgrade of a non-empty classic group is not supported: such a group answers
//!   GROUP_ID_NOT_FOUND, as Kafka does when its upgrade policy refuses.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use regex::Regex;
use uuid::Uuid;

use super::assignor::{Assignment, Assignor, GroupSpec, MemberSpec};

/// Kafka error codes this module answers with (checked against `kafka-protocol` in tests).
pub(crate) mod codes {
    pub(crate) const NONE: i16 = 0;
    pub(crate) const UNKNOWN_MEMBER_ID: i16 = 25;
    pub(crate) const INVALID_REQUEST: i16 = 42;
    pub(crate) const NON_EMPTY_GROUP: i16 = 68;
    pub(crate) const GROUP_ID_NOT_FOUND: i16 = 69;
    pub(crate) const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub(crate) const FENCED_INSTANCE_ID: i16 = 82;
    pub(crate) const FENCED_MEMBER_EPOCH: i16 = 110;
    pub(crate) const UNRELEASED_INSTANCE_ID: i16 = 111;
    pub(crate) const UNSUPPORTED_ASSIGNOR: i16 = 112;
    pub(crate) const STALE_MEMBER_EPOCH: i16 = 113;
    pub(crate) const INVALID_REGULAR_EXPRESSION: i16 = 128;
}

/// Member epoch sent to join (or rejoin).
pub(crate) const JOIN_GROUP_MEMBER_EPOCH: i32 = 0;
/// Member epoch sent to leave for good.
pub(crate) const LEAVE_GROUP_MEMBER_EPOCH: i32 = -1;
/// Member epoch sent by a static member that will come back.
pub(crate) const LEAVE_GROUP_STATIC_MEMBER_EPOCH: i32 = -2;

/// Topics Kafka never lets a regex subscription match.
const INTERNAL_TOPICS: [&str; 3] = ["__consumer_offsets", "__transaction_state", "__share_group_state"];

/// The `group.consumer.*` broker configs this state machine uses.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerGroupConfig {
    /// `group.consumer.session.timeout.ms`.
    pub(crate) session_timeout_ms: i32,
    /// `group.consumer.heartbeat.interval.ms`.
    pub(crate) heartbeat_interval_ms: i32,
    /// `group.consumer.max.size`.
    pub(crate) max_size: usize,
    /// `group.consumer.assignors`: the first is the default.
    pub(crate) assignors: Vec<Assignor>,
}

impl Default for ConsumerGroupConfig {
    fn default() -> Self {
        ConsumerGroupConfig {
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 5_000,
            max_size: i32::MAX as usize,
            assignors: Assignor::ALL.to_vec(),
        }
    }
}

/// One topic in a [`TopicsSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TopicInfo {
    pub(crate) id: Uuid,
    pub(crate) partitions: i32,
}

/// Every topic on the cluster, by name. `version` must change whenever the map does: groups
/// re-resolve their subscriptions only when it differs from the one they last saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct TopicsSnapshot {
    pub(crate) version: u64,
    pub(crate) topics: BTreeMap<String, TopicInfo>,
}

impl TopicsSnapshot {
    /// A snapshot whose `version` is a hash of its content, for drivers without a metadata
    /// counter. Build it when topics change, not per request: it costs O(topics).
    pub(crate) fn new(topics: BTreeMap<String, TopicInfo>) -> TopicsSnapshot {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        for (name, info) in &topics {
            (name, info.id, info.partitions).hash(&mut h);
        }
        TopicsSnapshot { version: h.finish(), topics }
    }
}

/// What the classic coordinator holds under a group id, as far as this module cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClassicGroup {
    /// No classic group with this id.
    Absent,
    /// A classic group without members (e.g. only committed offsets): a joining consumer
    /// replaces it.
    Empty,
    /// A classic group with members: heartbeats get GROUP_ID_NOT_FOUND.
    Active,
}

/// The fields of a ConsumerGroupHeartbeat request (v0-v1) plus who sent it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Heartbeat {
    pub(crate) api_version: i16,
    pub(crate) group_id: String,
    pub(crate) member_id: String,
    pub(crate) member_epoch: i32,
    pub(crate) instance_id: Option<String>,
    pub(crate) rack_id: Option<String>,
    /// -1 when unchanged since the last heartbeat.
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) subscribed_topic_names: Option<Vec<String>>,
    pub(crate) subscribed_topic_regex: Option<String>,
    pub(crate) server_assignor: Option<String>,
    /// The partitions the member owns, by topic id; `None` when unchanged.
    pub(crate) owned_partitions: Option<Vec<(Uuid, Vec<i32>)>>,
    /// From the request header and the connection; shown by ConsumerGroupDescribe.
    pub(crate) client_id: String,
    pub(crate) client_host: String,
}

/// The fields of a ConsumerGroupHeartbeat response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct HeartbeatResponse {
    pub(crate) error_code: i16,
    pub(crate) error_message: Option<String>,
    pub(crate) member_id: Option<String>,
    pub(crate) member_epoch: i32,
    pub(crate) heartbeat_interval_ms: i32,
    /// `None`: unchanged since the last response (the member keeps what it has).
    pub(crate) assignment: Option<Assignment>,
}

/// A heartbeat's result: the response and what to persist.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct HeartbeatOutcome {
    pub(crate) response: HeartbeatResponse,
    pub(crate) records: Vec<Record>,
    /// True when an empty classic group with this id was replaced by the new consumer group.
    pub(crate) classic_replaced: bool,
}

/// Why `tick` removed a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RemovalReason {
    SessionTimeout,
    RebalanceTimeout,
}

/// A member removed by `tick`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Removal {
    pub(crate) group_id: String,
    pub(crate) member_id: String,
    pub(crate) reason: RemovalReason,
}

/// `tick`'s result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct TickOutcome {
    pub(crate) records: Vec<Record>,
    pub(crate) removed: Vec<Removal>,
}

/// A member's reconciliation state (Kafka's `MemberState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub(crate) enum MemberState {
    #[default]
    Stable,
    UnrevokedPartitions,
    UnreleasedPartitions,
}

impl MemberState {
    /// The value Kafka writes in `ConsumerGroupCurrentMemberAssignmentValue.State`.
    #[cfg_attr(not(test), allow(dead_code))] // for Kafka's binary record format; Creek stores JSON today
    pub(crate) fn value(self) -> i8 {
        match self {
            MemberState::Stable => 0,
            MemberState::UnrevokedPartitions => 1,
            MemberState::UnreleasedPartitions => 2,
        }
    }

    #[cfg_attr(not(test), allow(dead_code))] // for Kafka's binary record format; Creek stores JSON today
    pub(crate) fn from_value(v: i8) -> Option<MemberState> {
        match v {
            0 => Some(MemberState::Stable),
            1 => Some(MemberState::UnrevokedPartitions),
            2 => Some(MemberState::UnreleasedPartitions),
            _ => None,
        }
    }
}

/// Group-level persisted state (Kafka: `ConsumerGroupMetadata` + subscription metadata).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct GroupMetadataValue {
    pub(crate) epoch: i32,
    /// Metadata of every subscribed topic that exists, as of this epoch.
    pub(crate) topics: BTreeMap<String, TopicInfo>,
}

/// A member's subscription and identity (Kafka: `ConsumerGroupMemberMetadata`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct MemberMetadataValue {
    pub(crate) instance_id: Option<String>,
    pub(crate) rack_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) subscribed_topic_names: Vec<String>,
    pub(crate) subscribed_topic_regex: Option<String>,
    pub(crate) server_assignor: Option<String>,
    pub(crate) rebalance_timeout_ms: i32,
}

/// A member's current assignment (Kafka: `ConsumerGroupCurrentMemberAssignment`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct CurrentAssignmentValue {
    pub(crate) member_epoch: i32,
    pub(crate) previous_member_epoch: i32,
    pub(crate) state: MemberState,
    pub(crate) assigned: Assignment,
    pub(crate) pending_revocation: Assignment,
}

/// What the driver appends to `__consumer_offsets`. `None` values are tombstones. Keys are the
/// group id (and member id); the latest value per key is the state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Record {
    GroupMetadata { group_id: String, value: Option<GroupMetadataValue> },
    MemberMetadata { group_id: String, member_id: String, value: Option<MemberMetadataValue> },
    TargetAssignmentMetadata { group_id: String, epoch: Option<i32> },
    TargetAssignmentMember { group_id: String, member_id: String, partitions: Option<Assignment> },
    CurrentAssignment { group_id: String, member_id: String, value: Option<CurrentAssignmentValue> },
}

/// One row of a ConsumerGroupDescribe response.
pub(crate) type DescribeResult = Result<DescribedGroup, (i16, String)>;

/// A topic's partitions with its name, as ConsumerGroupDescribe shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DescribedPartitions {
    pub(crate) topic_id: Uuid,
    pub(crate) topic_name: String,
    pub(crate) partitions: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DescribedMember {
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) rack_id: Option<String>,
    pub(crate) member_epoch: i32,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) subscribed_topic_names: Vec<String>,
    pub(crate) subscribed_topic_regex: Option<String>,
    pub(crate) assignment: Vec<DescribedPartitions>,
    pub(crate) target_assignment: Vec<DescribedPartitions>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DescribedGroup {
    pub(crate) group_id: String,
    /// "Empty", "Assigning", "Reconciling", "Stable" (Kafka's `ConsumerGroupState` names).
    pub(crate) state: &'static str,
    pub(crate) group_epoch: i32,
    pub(crate) assignment_epoch: i32,
    pub(crate) assignor_name: String,
    pub(crate) members: Vec<DescribedMember>,
}

/// Every KIP-848 consumer group on this coordinator.
#[derive(Debug)]
pub(crate) struct ConsumerGroups {
    config: ConsumerGroupConfig,
    groups: HashMap<String, Group>,
    /// splitmix64 state for member ids the coordinator generates (v0 joins).
    rng: u64,
}

#[derive(Debug, Clone, Default)]
struct Member {
    meta: MemberMetadataValue,
    current: CurrentAssignmentValue,
    session_deadline_ms: i64,
    /// Set while the member must revoke partitions.
    revocation_deadline_ms: Option<i64>,
}

#[derive(Debug, Default)]
struct Group {
    group_id: String,
    group_epoch: i32,
    assignment_epoch: i32,
    members: BTreeMap<String, Member>,
    /// instance id -> member id.
    static_members: HashMap<String, String>,
    target: BTreeMap<String, Assignment>,
    /// Metadata of every subscribed topic that exists.
    subscribed_topics: BTreeMap<String, TopicInfo>,
    /// The `TopicsSnapshot::version` `subscribed_topics` was computed from.
    metadata_version: Option<u64>,
    /// Partition -> the member holding it (assigned or pending revocation).
    owners: HashMap<(Uuid, i32), String>,
    regexes: HashMap<String, Regex>,
}

/// A refused request: a Kafka error code and message.
pub(crate) type Refusal = (i16, String);

fn refuse<T>(code: i16, message: impl Into<String>) -> Result<T, Refusal> {
    Err((code, message.into()))
}

/// Compiles a subscription regex the way Kafka applies it: to the whole topic name.
fn compile_regex(re: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{re})$"))
}

fn to_assignment(parts: &[(Uuid, Vec<i32>)]) -> Assignment {
    let mut a = Assignment::new();
    for (t, ps) in parts {
        a.entry(*t).or_default().extend(ps.iter().copied());
    }
    a.retain(|_, ps| !ps.is_empty());
    a
}

fn is_subset(a: &Assignment, of: &Assignment) -> bool {
    a.iter().all(|(t, ps)| of.get(t).is_some_and(|o| ps.is_subset(o)))
}

fn intersects(a: &Assignment, b: &Assignment) -> bool {
    a.iter().any(|(t, ps)| b.get(t).is_some_and(|o| !ps.is_disjoint(o)))
}

fn partitions(a: &Assignment) -> impl Iterator<Item = (Uuid, i32)> + '_ {
    a.iter().flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
}

impl Member {
    fn holds(&self) -> impl Iterator<Item = (Uuid, i32)> + '_ {
        partitions(&self.current.assigned).chain(partitions(&self.current.pending_revocation))
    }
}

impl Group {
    fn new(group_id: &str) -> Group {
        Group { group_id: group_id.to_string(), ..Group::default() }
    }

    fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.group_epoch > self.assignment_epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.current.member_epoch != self.assignment_epoch || m.current.state != MemberState::Stable)
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    /// The assignor most members ask for; ties and no preference go to the configured order.
    fn preferred_assignor(&self, config: &ConsumerGroupConfig) -> Assignor {
        let mut votes: BTreeMap<usize, usize> = BTreeMap::new(); // index in config -> votes
        for m in self.members.values() {
            if let Some(a) = m.meta.server_assignor.as_deref().and_then(Assignor::from_name)
                && let Some(i) = config.assignors.iter().position(|c| *c == a)
            {
                *votes.entry(i).or_default() += 1;
            }
        }
        let best = votes.iter().max_by_key(|&(i, n)| (*n, std::cmp::Reverse(*i))).map(|(i, _)| *i);
        config.assignors[best.unwrap_or(0)]
    }

    /// Recomputes `subscribed_topics` from the members' subscriptions against `source`.
    /// Returns whether it changed.
    fn refresh_subscribed_topics(&mut self, source: &BTreeMap<String, TopicInfo>) -> bool {
        let mut names: BTreeSet<&str> = BTreeSet::new();
        let mut res: BTreeSet<&str> = BTreeSet::new();
        for m in self.members.values() {
            names.extend(m.meta.subscribed_topic_names.iter().map(String::as_str));
            if let Some(r) = &m.meta.subscribed_topic_regex {
                res.insert(r.as_str());
            }
        }
        for r in &res {
            if !self.regexes.contains_key(*r) {
                // Stored regexes were validated on the heartbeat that set them.
                let compiled = compile_regex(r).expect("subscription regexes are validated before they are stored");
                self.regexes.insert(r.to_string(), compiled);
            }
        }
        let compiled: Vec<&Regex> = res.iter().map(|r| &self.regexes[*r]).collect();
        let mut topics = BTreeMap::new();
        for name in names {
            if let Some(info) = source.get(name) {
                topics.insert(name.to_string(), *info);
            }
        }
        if !compiled.is_empty() {
            for (name, info) in source {
                if !INTERNAL_TOPICS.contains(&name.as_str()) && compiled.iter().any(|re| re.is_match(name)) {
                    topics.insert(name.clone(), *info);
                }
            }
        }
        self.regexes.retain(|r, _| res.contains(r.as_str()));
        let changed = topics != self.subscribed_topics;
        self.subscribed_topics = topics;
        changed
    }

    /// The ids of the existing topics a member subscribes to.
    fn member_topic_ids(&self, m: &Member) -> BTreeSet<Uuid> {
        let re = m.meta.subscribed_topic_regex.as_ref().and_then(|r| self.regexes.get(r));
        self.subscribed_topics
            .iter()
            .filter(|(name, _)| {
                m.meta.subscribed_topic_names.iter().any(|n| n == *name)
                    || re.is_some_and(|re| !INTERNAL_TOPICS.contains(&name.as_str()) && re.is_match(name))
            })
            .map(|(_, info)| info.id)
            .collect()
    }

    fn group_metadata_record(&self) -> Record {
        Record::GroupMetadata {
            group_id: self.group_id.clone(),
            value: Some(GroupMetadataValue { epoch: self.group_epoch, topics: self.subscribed_topics.clone() }),
        }
    }

    fn current_record(&self, member_id: &str) -> Record {
        Record::CurrentAssignment {
            group_id: self.group_id.clone(),
            member_id: member_id.to_string(),
            value: Some(self.members[member_id].current.clone()),
        }
    }

    fn member_record(&self, member_id: &str) -> Record {
        Record::MemberMetadata {
            group_id: self.group_id.clone(),
            member_id: member_id.to_string(),
            value: Some(self.members[member_id].meta.clone()),
        }
    }

    /// Bumps the group epoch and recomputes the target assignment at it.
    fn bump_and_assign(&mut self, config: &ConsumerGroupConfig, records: &mut Vec<Record>) {
        self.group_epoch += 1;
        records.push(self.group_metadata_record());
        self.compute_target(config, records);
    }

    fn compute_target(&mut self, config: &ConsumerGroupConfig, records: &mut Vec<Record>) {
        let spec = GroupSpec {
            members: self
                .members
                .iter()
                .map(|(id, m)| {
                    let current = self.target.get(id).cloned().unwrap_or_default();
                    (id.clone(), MemberSpec { subscribed: self.member_topic_ids(m), current })
                })
                .collect(),
            topics: self.subscribed_topics.values().map(|i| (i.id, i.partitions)).collect(),
        };
        let target = self.preferred_assignor(config).assign(&spec);
        for (id, a) in &target {
            if self.target.get(id) != Some(a) {
                records.push(Record::TargetAssignmentMember {
                    group_id: self.group_id.clone(),
                    member_id: id.clone(),
                    partitions: Some(a.clone()),
                });
            }
        }
        self.target = target;
        self.assignment_epoch = self.group_epoch;
        records.push(Record::TargetAssignmentMetadata {
            group_id: self.group_id.clone(),
            epoch: Some(self.assignment_epoch),
        });
    }

    /// Replaces a member's current assignment, keeping `owners` in step.
    fn set_current(&mut self, member_id: &str, current: CurrentAssignmentValue) {
        let m = self.members.get_mut(member_id).expect("member exists");
        for tp in m.holds() {
            if self.owners.get(&tp).is_some_and(|o| o == member_id) {
                self.owners.remove(&tp);
            }
        }
        m.current = current;
        for tp in m.holds() {
            let prev = self.owners.insert(tp, member_id.to_string());
            assert!(
                prev.is_none() || prev.as_deref() == Some(member_id),
                "partition {tp:?} held by {prev:?} and {member_id} at once"
            );
        }
    }

    /// Removes a member with its tombstones, then bumps the epoch and reassigns.
    fn remove_member(&mut self, member_id: &str, config: &ConsumerGroupConfig, records: &mut Vec<Record>) {
        self.drop_member(member_id, records);
        self.refresh_subscribed_topics(&self.subscribed_topics.clone());
        self.bump_and_assign(config, records);
    }

    /// Removes a member and writes its tombstones, without touching the group epoch.
    fn drop_member(&mut self, member_id: &str, records: &mut Vec<Record>) {
        self.set_current(member_id, CurrentAssignmentValue::default());
        let m = self.members.remove(member_id).expect("member exists");
        if let Some(inst) = &m.meta.instance_id
            && self.static_members.get(inst).is_some_and(|id| id == member_id)
        {
            self.static_members.remove(inst);
        }
        self.target.remove(member_id);
        let (group_id, member_id) = (self.group_id.clone(), member_id.to_string());
        records.push(Record::CurrentAssignment {
            group_id: group_id.clone(),
            member_id: member_id.clone(),
            value: None,
        });
        records.push(Record::TargetAssignmentMember {
            group_id: group_id.clone(),
            member_id: member_id.clone(),
            partitions: None,
        });
        records.push(Record::MemberMetadata { group_id, member_id, value: None });
    }

    /// Moves a member one step towards its target (Kafka's `CurrentAssignmentBuilder`).
    /// `owned` is what the member reported, `None` if it did not report.
    fn reconcile(&mut self, member_id: &str, owned: Option<&Assignment>, now_ms: i64) {
        let m = &self.members[member_id];
        let cur = &m.current;
        let target_epoch = self.assignment_epoch;
        let advance = match cur.state {
            MemberState::Stable => cur.member_epoch != target_epoch,
            MemberState::UnrevokedPartitions => owned.is_some_and(|o| !intersects(o, &cur.pending_revocation)),
            MemberState::UnreleasedPartitions => true,
        };
        if !advance {
            return;
        }
        let empty = Assignment::new();
        let target = self.target.get(member_id).unwrap_or(&empty);
        let mut kept = Assignment::new();
        let mut revoke = Assignment::new();
        // What the member holds and may keep; pending partitions that were already revoked
        // (the member said so) are released rather than revoked again.
        let pending = (cur.state != MemberState::UnrevokedPartitions).then_some(&cur.pending_revocation);
        for (t, p) in partitions(&cur.assigned).chain(pending.into_iter().flat_map(partitions)) {
            if target.get(&t).is_some_and(|ps| ps.contains(&p)) {
                kept.entry(t).or_default().insert(p);
            } else {
                revoke.entry(t).or_default().insert(p);
            }
        }
        let mut next = cur.clone();
        if !revoke.is_empty() {
            next.state = MemberState::UnrevokedPartitions;
            next.assigned = kept;
            next.pending_revocation = revoke;
        } else {
            let mut unreleased = false;
            let mut assigned = kept;
            for (t, p) in partitions(target) {
                if assigned.get(&t).is_some_and(|ps| ps.contains(&p)) {
                    continue;
                }
                match self.owners.get(&(t, p)) {
                    Some(o) if o != member_id => unreleased = true,
                    _ => {
                        assigned.entry(t).or_default().insert(p);
                    }
                }
            }
            next.state = if unreleased { MemberState::UnreleasedPartitions } else { MemberState::Stable };
            next.assigned = assigned;
            next.pending_revocation = Assignment::new();
            if next.member_epoch != target_epoch {
                next.previous_member_epoch = next.member_epoch;
                next.member_epoch = target_epoch;
            }
        }
        let entering_revocation = next.state == MemberState::UnrevokedPartitions
            && (cur.state != MemberState::UnrevokedPartitions || next.pending_revocation != cur.pending_revocation);
        let timeout = i64::from(m.meta.rebalance_timeout_ms.max(0));
        self.set_current(member_id, next);
        let m = self.members.get_mut(member_id).expect("member exists");
        if m.current.state != MemberState::UnrevokedPartitions {
            m.revocation_deadline_ms = None;
        } else if entering_revocation {
            m.revocation_deadline_ms = Some(now_ms + timeout);
        }
    }
}

impl ConsumerGroups {
    /// `seed` drives the member ids the coordinator generates; give it real randomness in
    /// production and a constant in tests.
    pub(crate) fn new(config: ConsumerGroupConfig, seed: u64) -> ConsumerGroups {
        assert!(!config.assignors.is_empty(), "at least one server assignor");
        ConsumerGroups { config, groups: HashMap::new(), rng: seed }
    }

    #[cfg_attr(not(test), allow(dead_code))] // the driver ticks every 100 ms instead
    pub(crate) fn config(&self) -> &ConsumerGroupConfig {
        &self.config
    }

    /// A member id like Kafka's `Uuid.randomUuid().toString()`: 16 random bytes (version 4) in
    /// URL-safe base64 without padding, never starting with '-'.
    fn new_member_id(&mut self) -> String {
        loop {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&splitmix64(&mut self.rng).to_be_bytes());
            bytes[8..].copy_from_slice(&splitmix64(&mut self.rng).to_be_bytes());
            bytes[6] = (bytes[6] & 0x0f) | 0x40;
            bytes[8] = (bytes[8] & 0x3f) | 0x80;
            let id = base64url(&bytes);
            if !id.starts_with('-') {
                return id;
            }
        }
    }

    /// Handles one ConsumerGroupHeartbeat. On an error nothing changes and no record is written.
    pub(crate) fn heartbeat(
        &mut self,
        req: &Heartbeat,
        classic: ClassicGroup,
        topics: &TopicsSnapshot,
        now_ms: i64,
    ) -> HeartbeatOutcome {
        match self.try_heartbeat(req, classic, topics, now_ms) {
            Ok(out) => out,
            Err((code, message)) => HeartbeatOutcome {
                response: HeartbeatResponse { error_code: code, error_message: Some(message), ..Default::default() },
                ..Default::default()
            },
        }
    }

    fn validate(&self, req: &Heartbeat) -> Result<(), Refusal> {
        const INVALID: i16 = codes::INVALID_REQUEST;
        if (req.api_version >= 1 || req.member_epoch > 0 || req.member_epoch == LEAVE_GROUP_MEMBER_EPOCH)
            && req.member_id.is_empty()
        {
            return refuse(INVALID, "MemberId can't be empty.");
        }
        if req.group_id.is_empty() {
            return refuse(INVALID, "GroupId can't be empty.");
        }
        if req.instance_id.as_deref() == Some("") {
            return refuse(INVALID, "InstanceId can't be empty.");
        }
        if req.rack_id.as_deref() == Some("") {
            return refuse(INVALID, "RackId can't be empty.");
        }
        if req.member_epoch == JOIN_GROUP_MEMBER_EPOCH {
            if req.rebalance_timeout_ms == -1 {
                return refuse(INVALID, "RebalanceTimeoutMs must be provided in first request.");
            }
            if req.owned_partitions.as_ref().is_none_or(|o| o.iter().any(|(_, ps)| !ps.is_empty())) {
                return refuse(INVALID, "TopicPartitions must be empty when (re-)joining.");
            }
            if req.subscribed_topic_names.is_none() && req.subscribed_topic_regex.is_none() {
                return refuse(
                    INVALID,
                    "Either SubscribedTopicNames or SubscribedTopicRegex must be non-null when (re-)joining.",
                );
            }
        } else if req.member_epoch == LEAVE_GROUP_STATIC_MEMBER_EPOCH {
            if req.instance_id.is_none() {
                return refuse(INVALID, "InstanceId can't be null.");
            }
        } else if req.member_epoch < LEAVE_GROUP_STATIC_MEMBER_EPOCH {
            return refuse(INVALID, "MemberEpoch is invalid.");
        }
        if let Some(name) = &req.server_assignor
            && !self.config.assignors.iter().any(|a| a.name() == name)
        {
            let supported: Vec<&str> = self.config.assignors.iter().map(|a| a.name()).collect();
            return refuse(
                codes::UNSUPPORTED_ASSIGNOR,
                format!("ServerAssignor {name} is not supported. Supported assignors: {}.", supported.join(", ")),
            );
        }
        // A regex the group already uses was valid; clients may resend it on every heartbeat.
        let known = |re: &str| self.groups.get(&req.group_id).is_some_and(|g| g.regexes.contains_key(re));
        if let Some(re) = &req.subscribed_topic_regex
            && !known(re)
            && let Err(e) = compile_regex(re)
        {
            return refuse(
                codes::INVALID_REGULAR_EXPRESSION,
                format!("SubscribedTopicRegex `{re}` is not a valid regular expression: {e}."),
            );
        }
        Ok(())
    }

    fn try_heartbeat(
        &mut self,
        req: &Heartbeat,
        classic: ClassicGroup,
        topics: &TopicsSnapshot,
        now_ms: i64,
    ) -> Result<HeartbeatOutcome, Refusal> {
        self.validate(req)?;
        let joining = req.member_epoch == JOIN_GROUP_MEMBER_EPOCH;
        let mut classic_replaced = false;
        // Take the group out of the map; it goes back unless it was created by a refused join.
        let (mut group, existed) = match self.groups.remove(&req.group_id) {
            Some(g) => (g, true),
            None => match classic {
                ClassicGroup::Absent if joining => (Group::new(&req.group_id), false),
                ClassicGroup::Empty if joining => {
                    classic_replaced = true;
                    (Group::new(&req.group_id), false)
                }
                ClassicGroup::Absent => {
                    return refuse(codes::GROUP_ID_NOT_FOUND, format!("Consumer group {} not found.", req.group_id));
                }
                ClassicGroup::Empty | ClassicGroup::Active => {
                    return refuse(
                        codes::GROUP_ID_NOT_FOUND,
                        format!("Group {} is not a consumer group.", req.group_id),
                    );
                }
            },
        };
        let result = if req.member_epoch < 0 {
            self.leave(&mut group, req, now_ms)
        } else {
            self.join_or_heartbeat(&mut group, req, topics, now_ms)
        };
        if existed || result.is_ok() {
            self.groups.insert(req.group_id.clone(), group);
        }
        let (response, records) = result?;
        Ok(HeartbeatOutcome { response, records, classic_replaced })
    }

    fn leave(
        &mut self,
        group: &mut Group,
        req: &Heartbeat,
        now_ms: i64,
    ) -> Result<(HeartbeatResponse, Vec<Record>), Refusal> {
        let mut records = Vec::new();
        let member_id = match &req.instance_id {
            None => {
                if !group.members.contains_key(&req.member_id) {
                    return refuse(
                        codes::UNKNOWN_MEMBER_ID,
                        format!("Member {} is not a member of group {}.", req.member_id, group.group_id),
                    );
                }
                req.member_id.clone()
            }
            Some(inst) => {
                let Some(id) = group.static_members.get(inst).cloned() else {
                    return refuse(codes::UNKNOWN_MEMBER_ID, format!("Instance id {inst} is unknown."));
                };
                if id != req.member_id {
                    return refuse(
                        codes::FENCED_INSTANCE_ID,
                        format!("Static member {} with instance id {inst} was fenced by member {id}.", req.member_id),
                    );
                }
                id
            }
        };
        if req.member_epoch == LEAVE_GROUP_STATIC_MEMBER_EPOCH {
            // Temporary leave: keep the assignment, no rebalance. The member has one session
            // timeout from now to come back before it is removed.
            let mut current = group.members[&member_id].current.clone();
            current.member_epoch = LEAVE_GROUP_STATIC_MEMBER_EPOCH;
            group.set_current(&member_id, current);
            let m = group.members.get_mut(&member_id).expect("member exists");
            m.session_deadline_ms = now_ms + i64::from(self.config.session_timeout_ms.max(0));
            records.push(group.current_record(&member_id));
        } else {
            group.remove_member(&member_id, &self.config, &mut records);
        }
        let response =
            HeartbeatResponse { member_id: Some(member_id), member_epoch: req.member_epoch, ..Default::default() };
        Ok((response, records))
    }

    fn join_or_heartbeat(
        &mut self,
        group: &mut Group,
        req: &Heartbeat,
        topics: &TopicsSnapshot,
        now_ms: i64,
    ) -> Result<(HeartbeatResponse, Vec<Record>), Refusal> {
        let mut records = Vec::new();
        let joining = req.member_epoch == JOIN_GROUP_MEMBER_EPOCH;
        // 1. Find the member, or decide how it joins. Nothing is changed until every check passed.
        let mut replaces: Option<String> = None;
        let member_id = if joining {
            let member_id =
                if req.member_id.is_empty() { self.new_member_id_for(group) } else { req.member_id.clone() };
            if let Some(inst) = &req.instance_id
                && let Some(existing) = group.static_members.get(inst)
                && *existing != member_id
            {
                let old = &group.members[existing];
                if old.current.member_epoch != LEAVE_GROUP_STATIC_MEMBER_EPOCH {
                    return refuse(
                        codes::UNRELEASED_INSTANCE_ID,
                        format!(
                            "Static member {member_id} with instance id {inst} cannot join the group because the \
                             instance id is owned by {existing} member."
                        ),
                    );
                }
                replaces = Some(existing.clone());
            }
            let is_new = !group.members.contains_key(&member_id);
            if is_new && replaces.is_none() && group.members.len() >= self.config.max_size {
                return refuse(
                    codes::GROUP_MAX_SIZE_REACHED,
                    format!("The consumer group has reached its maximum capacity of {} members.", self.config.max_size),
                );
            }
            member_id
        } else {
            if let Some(inst) = &req.instance_id {
                let Some(id) = group.static_members.get(inst) else {
                    return refuse(codes::UNKNOWN_MEMBER_ID, format!("Instance id {inst} is unknown."));
                };
                if *id != req.member_id {
                    return refuse(
                        codes::FENCED_INSTANCE_ID,
                        format!("Static member {} with instance id {inst} was fenced by member {id}.", req.member_id),
                    );
                }
            }
            let Some(m) = group.members.get(&req.member_id) else {
                return refuse(
                    codes::UNKNOWN_MEMBER_ID,
                    format!("Member {} is not a member of group {}.", req.member_id, group.group_id),
                );
            };
            let known = m.current.member_epoch;
            if req.member_epoch > known {
                return refuse(
                    codes::FENCED_MEMBER_EPOCH,
                    format!(
                        "The consumer group member has a greater member epoch ({}) than the one known by the group \
                         coordinator ({known}). The member must abandon all its partitions and rejoin.",
                        req.member_epoch
                    ),
                );
            }
            if req.member_epoch < known {
                // The response that moved the member on may have been lost: accept the previous
                // epoch if the member owns nothing it should not.
                let owned = req.owned_partitions.as_deref().map(to_assignment);
                let lost_response = req.member_epoch == m.current.previous_member_epoch
                    && owned.is_some_and(|o| is_subset(&o, &m.current.assigned));
                if !lost_response {
                    return refuse(
                        codes::FENCED_MEMBER_EPOCH,
                        format!(
                            "The consumer group member has a smaller member epoch ({}) than the one known by the group \
                             coordinator ({known}). The member must abandon all its partitions and rejoin.",
                            req.member_epoch
                        ),
                    );
                }
            }
            req.member_id.clone()
        };

        // 2. Apply. A static member replacing one that left with epoch -2 takes over its
        // subscription and assignments, so nothing changes for the rest of the group.
        let mut is_new = false;
        let mut dropped_other = false;
        if let Some(old_id) = &replaces {
            if group.members.contains_key(&member_id) {
                // The new member id was a dynamic member of its own: it becomes the static one,
                // and the group loses a member.
                group.drop_member(&member_id, &mut records);
                dropped_other = true;
            }
            let old = group.members[old_id].clone();
            let target = group.target.get(old_id).cloned();
            group.drop_member(old_id, &mut records);
            group.members.insert(member_id.clone(), Member { meta: old.meta, ..Member::default() });
            let mut current = old.current;
            current.member_epoch = 0;
            current.previous_member_epoch = 0;
            group.set_current(&member_id, current);
            if let Some(t) = target {
                records.push(Record::TargetAssignmentMember {
                    group_id: group.group_id.clone(),
                    member_id: member_id.clone(),
                    partitions: Some(t.clone()),
                });
                group.target.insert(member_id.clone(), t);
            }
        } else if !group.members.contains_key(&member_id) {
            group.members.insert(member_id.clone(), Member::default());
            is_new = true;
        }
        let before = group.members[&member_id].clone();
        {
            let m = group.members.get_mut(&member_id).expect("member was just ensured");
            let meta = &mut m.meta;
            if let Some(inst) = &req.instance_id {
                meta.instance_id = Some(inst.clone());
            }
            if let Some(rack) = &req.rack_id {
                meta.rack_id = Some(rack.clone());
            }
            if req.rebalance_timeout_ms != -1 {
                meta.rebalance_timeout_ms = req.rebalance_timeout_ms;
            }
            meta.client_id = req.client_id.clone();
            meta.client_host = req.client_host.clone();
            if let Some(names) = &req.subscribed_topic_names {
                let mut names = names.clone();
                names.sort();
                names.dedup();
                meta.subscribed_topic_names = names;
            }
            if let Some(re) = &req.subscribed_topic_regex {
                meta.subscribed_topic_regex = if re.is_empty() { None } else { Some(re.clone()) };
            }
            if let Some(a) = &req.server_assignor {
                meta.server_assignor = Some(a.clone());
            }
            m.session_deadline_ms = now_ms + i64::from(self.config.session_timeout_ms.max(0));
        }
        if let Some(inst) = &req.instance_id {
            group.static_members.insert(inst.clone(), member_id.clone());
        }
        let after = &group.members[&member_id];
        let subscription_changed = is_new
            || before.meta.subscribed_topic_names != after.meta.subscribed_topic_names
            || before.meta.subscribed_topic_regex != after.meta.subscribed_topic_regex
            || before.meta.server_assignor != after.meta.server_assignor
            || before.meta.rack_id != after.meta.rack_id;
        if is_new || replaces.is_some() || before.meta != after.meta {
            records.push(group.member_record(&member_id));
        }

        // 3. Metadata: re-resolve subscriptions when they or the topics changed.
        let mut metadata_changed = false;
        if subscription_changed || group.metadata_version != Some(topics.version) {
            metadata_changed = group.refresh_subscribed_topics(&topics.topics);
            group.metadata_version = Some(topics.version);
        }
        if subscription_changed || metadata_changed || dropped_other {
            group.bump_and_assign(&self.config, &mut records);
        } else if group.group_epoch > group.assignment_epoch {
            group.compute_target(&self.config, &mut records);
        }

        // 4. Reconcile this member towards its target.
        let owned = if joining { Some(Assignment::new()) } else { req.owned_partitions.as_deref().map(to_assignment) };
        let before_current = group.members[&member_id].current.clone();
        group.reconcile(&member_id, owned.as_ref(), now_ms);
        let current = group.members[&member_id].current.clone();
        if current != before_current || is_new || replaces.is_some() {
            records.push(group.current_record(&member_id));
        }

        let full_request = req.rebalance_timeout_ms != -1
            && (req.subscribed_topic_names.is_some() || req.subscribed_topic_regex.is_some())
            && req.owned_partitions.is_some();
        let send_assignment = joining || full_request || current.assigned != before_current.assigned;
        let response = HeartbeatResponse {
            error_code: codes::NONE,
            error_message: None,
            member_id: Some(member_id),
            member_epoch: current.member_epoch,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            assignment: send_assignment.then(|| current.assigned.clone()),
        };
        Ok((response, records))
    }

    fn new_member_id_for(&mut self, group: &Group) -> String {
        loop {
            let id = self.new_member_id();
            if !group.members.contains_key(&id) {
                return id;
            }
        }
    }

    /// Removes members whose session or revocation deadline passed.
    pub(crate) fn tick(&mut self, now_ms: i64) -> TickOutcome {
        let mut out = TickOutcome::default();
        let mut ids: Vec<&String> = self.groups.keys().collect();
        ids.sort();
        let ids: Vec<String> = ids.into_iter().cloned().collect();
        for gid in ids {
            let group = self.groups.get_mut(&gid).expect("group id was just listed");
            let expired: Vec<(String, RemovalReason)> = group
                .members
                .iter()
                .filter_map(|(id, m)| {
                    if now_ms >= m.session_deadline_ms {
                        Some((id.clone(), RemovalReason::SessionTimeout))
                    } else if m.revocation_deadline_ms.is_some_and(|d| now_ms >= d) {
                        Some((id.clone(), RemovalReason::RebalanceTimeout))
                    } else {
                        None
                    }
                })
                .collect();
            if expired.is_empty() {
                continue;
            }
            for (member_id, reason) in expired {
                group.drop_member(&member_id, &mut out.records);
                out.removed.push(Removal { group_id: gid.clone(), member_id, reason });
            }
            group.refresh_subscribed_topics(&group.subscribed_topics.clone());
            group.bump_and_assign(&self.config, &mut out.records);
        }
        out
    }

    /// The earliest deadline `tick` acts on, for a driver that wants to sleep until then.
    #[cfg_attr(not(test), allow(dead_code))] // the driver ticks every 100 ms instead
    pub(crate) fn next_deadline_ms(&self) -> Option<i64> {
        self.groups
            .values()
            .flat_map(|g| g.members.values())
            .flat_map(|m| std::iter::once(m.session_deadline_ms).chain(m.revocation_deadline_ms))
            .min()
    }

    /// ConsumerGroupDescribe rows, in request order. `is_classic` says whether the classic
    /// coordinator has a group with that id (for the error message).
    pub(crate) fn describe(&self, group_ids: &[&str], is_classic: impl Fn(&str) -> bool) -> Vec<DescribeResult> {
        group_ids
            .iter()
            .map(|&id| match self.groups.get(id) {
                Some(g) => Ok(self.describe_group(g)),
                None if is_classic(id) => {
                    Err((codes::GROUP_ID_NOT_FOUND, format!("Group {id} is not a consumer group.")))
                }
                None => Err((codes::GROUP_ID_NOT_FOUND, format!("Group {id} not found."))),
            })
            .collect()
    }

    fn describe_group(&self, g: &Group) -> DescribedGroup {
        let names: HashMap<Uuid, &str> = g.subscribed_topics.iter().map(|(n, i)| (i.id, n.as_str())).collect();
        let show = |a: &Assignment| -> Vec<DescribedPartitions> {
            let mut rows: Vec<DescribedPartitions> = a
                .iter()
                .map(|(t, ps)| DescribedPartitions {
                    topic_id: *t,
                    topic_name: names.get(t).map(|n| n.to_string()).unwrap_or_default(),
                    partitions: ps.iter().copied().collect(),
                })
                .collect();
            rows.sort_by(|a, b| a.topic_name.cmp(&b.topic_name).then(a.topic_id.cmp(&b.topic_id)));
            rows
        };
        let empty = Assignment::new();
        DescribedGroup {
            group_id: g.group_id.clone(),
            state: g.state(),
            group_epoch: g.group_epoch,
            assignment_epoch: g.assignment_epoch,
            assignor_name: g.preferred_assignor(&self.config).name().to_string(),
            members: g
                .members
                .iter()
                .map(|(id, m)| DescribedMember {
                    member_id: id.clone(),
                    instance_id: m.meta.instance_id.clone(),
                    rack_id: m.meta.rack_id.clone(),
                    member_epoch: m.current.member_epoch,
                    client_id: m.meta.client_id.clone(),
                    client_host: m.meta.client_host.clone(),
                    subscribed_topic_names: m.meta.subscribed_topic_names.clone(),
                    subscribed_topic_regex: m.meta.subscribed_topic_regex.clone(),
                    assignment: show(&m.current.assigned),
                    target_assignment: show(g.target.get(id).unwrap_or(&empty)),
                })
                .collect(),
        }
    }

    /// The group's state name, or `None` if there is no consumer group with this id.
    pub(crate) fn state(&self, group_id: &str) -> Option<&'static str> {
        self.groups.get(group_id).map(Group::state)
    }

    /// Every consumer group with its state (ListGroups), sorted by id.
    pub(crate) fn list(&self) -> Vec<(String, &'static str)> {
        let mut all: Vec<(String, &'static str)> =
            self.groups.values().map(|g| (g.group_id.clone(), g.state())).collect();
        all.sort();
        all
    }

    /// Forgets the groups `gone` names, writing nothing (their coordinator moved elsewhere).
    pub(crate) fn forget(&mut self, gone: impl Fn(&str) -> bool) {
        self.groups.retain(|id, _| !gone(id));
    }

    /// DeleteGroups (and a classic join taking over an empty consumer group): only an empty
    /// group can go. Returns the tombstones to write.
    pub(crate) fn delete_group(&mut self, group_id: &str) -> Result<Vec<Record>, Refusal> {
        let Some(g) = self.groups.get(group_id) else {
            return refuse(codes::GROUP_ID_NOT_FOUND, format!("Group {group_id} not found."));
        };
        if !g.members.is_empty() {
            return refuse(codes::NON_EMPTY_GROUP, format!("Group {group_id} is not empty."));
        }
        self.groups.remove(group_id);
        Ok(vec![
            Record::TargetAssignmentMetadata { group_id: group_id.to_string(), epoch: None },
            Record::GroupMetadata { group_id: group_id.to_string(), value: None },
        ])
    }

    /// OffsetCommit against a consumer group (Kafka's `ConsumerGroup.validateOffsetCommit`): a
    /// commit with a negative epoch is allowed only while the group is empty (admin tools);
    /// otherwise the member must exist and its epoch match.
    pub(crate) fn validate_offset_commit(
        &self,
        group_id: &str,
        member_id: &str,
        member_epoch: i32,
    ) -> Result<(), Refusal> {
        let Some(g) = self.groups.get(group_id) else {
            return refuse(codes::GROUP_ID_NOT_FOUND, format!("Group {group_id} not found."));
        };
        if member_epoch < 0 && g.members.is_empty() {
            return Ok(());
        }
        Self::validate_member_epoch(g, member_id, member_epoch)
    }

    /// OffsetFetch with a member (KIP-848 `require_stable` fetches): epoch -1 means no member
    /// check.
    pub(crate) fn validate_offset_fetch(
        &self,
        group_id: &str,
        member_id: &str,
        member_epoch: i32,
    ) -> Result<(), Refusal> {
        let Some(g) = self.groups.get(group_id) else {
            return refuse(codes::GROUP_ID_NOT_FOUND, format!("Group {group_id} not found."));
        };
        if member_epoch < 0 {
            return Ok(());
        }
        Self::validate_member_epoch(g, member_id, member_epoch)
    }

    fn validate_member_epoch(g: &Group, member_id: &str, member_epoch: i32) -> Result<(), Refusal> {
        let Some(m) = g.members.get(member_id) else {
            return refuse(
                codes::UNKNOWN_MEMBER_ID,
                format!("Member {member_id} is not a member of group {}.", g.group_id),
            );
        };
        if m.current.member_epoch != member_epoch {
            return refuse(
                codes::STALE_MEMBER_EPOCH,
                format!(
                    "The received member epoch {member_epoch} does not match the expected member epoch {}.",
                    m.current.member_epoch
                ),
            );
        }
        Ok(())
    }

    /// Applies one record read back from `__consumer_offsets` at load time. Every member loaded
    /// gets a fresh session of `session_timeout_ms` from `now_ms`.
    pub(crate) fn replay(&mut self, record: &Record, now_ms: i64) {
        let session = now_ms + i64::from(self.config.session_timeout_ms.max(0));
        let gid = match record {
            Record::GroupMetadata { group_id, .. }
            | Record::MemberMetadata { group_id, .. }
            | Record::TargetAssignmentMetadata { group_id, .. }
            | Record::TargetAssignmentMember { group_id, .. }
            | Record::CurrentAssignment { group_id, .. } => group_id,
        };
        if matches!(record, Record::GroupMetadata { value: None, .. }) {
            self.groups.remove(gid);
            return;
        }
        let g = self.groups.entry(gid.clone()).or_insert_with(|| Group::new(gid));
        match record {
            Record::GroupMetadata { value: Some(v), .. } => {
                g.group_epoch = v.epoch;
                g.subscribed_topics = v.topics.clone();
                g.metadata_version = None;
            }
            Record::GroupMetadata { value: None, .. } => unreachable!("handled above"),
            Record::MemberMetadata { member_id, value: Some(v), .. } => {
                let m = g.members.entry(member_id.clone()).or_default();
                if let Some(old) = &m.meta.instance_id {
                    g.static_members.remove(old);
                }
                m.meta = v.clone();
                m.session_deadline_ms = session;
                if let Some(inst) = &v.instance_id {
                    g.static_members.insert(inst.clone(), member_id.clone());
                }
                if let Some(re) = &v.subscribed_topic_regex
                    && !g.regexes.contains_key(re)
                    && let Ok(c) = compile_regex(re)
                {
                    g.regexes.insert(re.clone(), c);
                }
            }
            Record::MemberMetadata { member_id, value: None, .. } => {
                if g.members.contains_key(member_id) {
                    g.set_current(member_id, CurrentAssignmentValue::default());
                    let m = g.members.remove(member_id).expect("checked");
                    if let Some(inst) = &m.meta.instance_id
                        && g.static_members.get(inst) == Some(member_id)
                    {
                        g.static_members.remove(inst);
                    }
                }
            }
            Record::TargetAssignmentMetadata { epoch, .. } => {
                if let Some(e) = epoch {
                    g.assignment_epoch = *e;
                }
            }
            Record::TargetAssignmentMember { member_id, partitions, .. } => match partitions {
                Some(a) => {
                    g.target.insert(member_id.clone(), a.clone());
                }
                None => {
                    g.target.remove(member_id);
                }
            },
            Record::CurrentAssignment { member_id, value, .. } => {
                if !g.members.contains_key(member_id) {
                    g.members.insert(member_id.clone(), Member { session_deadline_ms: session, ..Member::default() });
                }
                let v = value.clone().unwrap_or_default();
                // A log we wrote never has two members holding a partition; if one does anyway,
                // the later record wins rather than the load failing.
                for tp in partitions(&v.assigned).chain(partitions(&v.pending_revocation)) {
                    if let Some(other) = g.owners.get(&tp).filter(|o| *o != member_id).cloned() {
                        g.owners.remove(&tp);
                        let c = &mut g.members.get_mut(&other).expect("owners point at members").current;
                        for a in [&mut c.assigned, &mut c.pending_revocation] {
                            if let Some(ps) = a.get_mut(&tp.0) {
                                ps.remove(&tp.1);
                                if ps.is_empty() {
                                    a.remove(&tp.0);
                                }
                            }
                        }
                    }
                }
                g.set_current(member_id, v);
                let rebalance = i64::from(g.members[member_id].meta.rebalance_timeout_ms.max(0));
                let m = g.members.get_mut(member_id).expect("inserted above");
                m.revocation_deadline_ms =
                    (m.current.state == MemberState::UnrevokedPartitions).then_some(now_ms + rebalance);
            }
        }
    }
}

#[cfg(test)]
impl ConsumerGroups {
    /// Checks the cross-references every method relies on: `owners` is exactly what members
    /// hold, static ids point at members with that instance id, targets belong to members.
    fn check_invariants(&self) {
        for g in self.groups.values() {
            let mut held: HashMap<(Uuid, i32), String> = HashMap::new();
            for (id, m) in &g.members {
                for tp in m.holds() {
                    assert!(held.insert(tp, id.clone()).is_none(), "{tp:?} held twice");
                }
                if let Some(inst) = &m.meta.instance_id {
                    assert_eq!(g.static_members.get(inst), Some(id), "static map for {inst}");
                }
                assert_eq!(
                    m.revocation_deadline_ms.is_some(),
                    m.current.state == MemberState::UnrevokedPartitions,
                    "revocation timer of {id}"
                );
            }
            assert_eq!(held, g.owners, "owners of group {}", g.group_id);
            assert!(g.static_members.values().all(|id| g.members.contains_key(id)));
            assert!(g.target.keys().all(|id| g.members.contains_key(id)));
            assert!(g.assignment_epoch <= g.group_epoch);
        }
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// URL-safe base64 without padding.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "g";

    fn tid(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn snapshot(version: u64, topics: &[(&str, u8, i32)]) -> TopicsSnapshot {
        TopicsSnapshot {
            version,
            topics: topics
                .iter()
                .map(|&(n, id, p)| (n.to_string(), TopicInfo { id: tid(id), partitions: p }))
                .collect(),
        }
    }

    fn groups() -> ConsumerGroups {
        ConsumerGroups::new(ConsumerGroupConfig::default(), 42)
    }

    fn join_req(member: &str, names: &[&str]) -> Heartbeat {
        Heartbeat {
            api_version: 1,
            group_id: G.into(),
            member_id: member.into(),
            member_epoch: 0,
            rebalance_timeout_ms: 30_000,
            subscribed_topic_names: Some(names.iter().map(|s| s.to_string()).collect()),
            owned_partitions: Some(vec![]),
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            ..Heartbeat::default()
        }
    }

    fn hb_req(member: &str, epoch: i32, owned: Option<&Assignment>) -> Heartbeat {
        Heartbeat {
            api_version: 1,
            group_id: G.into(),
            member_id: member.into(),
            member_epoch: epoch,
            rebalance_timeout_ms: -1,
            owned_partitions: owned.map(|a| a.iter().map(|(t, ps)| (*t, ps.iter().copied().collect())).collect()),
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            ..Heartbeat::default()
        }
    }

    fn count(a: &Assignment) -> usize {
        a.values().map(BTreeSet::len).sum()
    }

    /// A consumer as the coordinator sees it from outside: it owns what it was last given.
    #[derive(Debug, Clone)]
    struct Client {
        id: String,
        epoch: i32,
        owned: Assignment,
    }

    impl Client {
        fn join(gs: &mut ConsumerGroups, id: &str, names: &[&str], topics: &TopicsSnapshot, now: i64) -> Client {
            let out = gs.heartbeat(&join_req(id, names), ClassicGroup::Absent, topics, now);
            assert_eq!(out.response.error_code, 0, "{:?}", out.response.error_message);
            let mut c = Client { id: id.into(), epoch: 0, owned: Assignment::new() };
            c.apply(&out.response);
            c
        }

        fn apply(&mut self, r: &HeartbeatResponse) {
            assert_eq!(r.error_code, 0, "{:?}", r.error_message);
            self.epoch = r.member_epoch;
            if let Some(a) = &r.assignment {
                self.owned = a.clone();
            }
        }

        fn beat(&mut self, gs: &mut ConsumerGroups, topics: &TopicsSnapshot, now: i64) -> HeartbeatOutcome {
            let out = gs.heartbeat(&hb_req(&self.id, self.epoch, Some(&self.owned)), ClassicGroup::Absent, topics, now);
            self.apply(&out.response);
            out
        }
    }

    /// No partition is owned by two clients at once.
    fn assert_disjoint(clients: &[&Client]) {
        let mut seen = BTreeSet::new();
        for c in clients {
            for tp in partitions(&c.owned) {
                assert!(seen.insert(tp), "{tp:?} owned by two members at once ({})", c.id);
            }
        }
    }

    fn describe_one(gs: &ConsumerGroups) -> DescribedGroup {
        gs.describe(&[G], |_| false).pop().unwrap().unwrap()
    }

    #[test]
    fn snapshot_version_follows_content() {
        // Goal: TopicsSnapshot::new gives equal versions for equal topics and new ones otherwise.
        let make =
            |p: i32| TopicsSnapshot::new(BTreeMap::from([("a".to_string(), TopicInfo { id: tid(1), partitions: p })]));
        assert_eq!(make(1).version, make(1).version);
        assert_ne!(make(1).version, make(2).version);
    }

    #[test]
    fn member_state_values_round_trip() {
        // Goal: the member states persist as Kafka's byte values and read back.
        for s in [MemberState::Stable, MemberState::UnrevokedPartitions, MemberState::UnreleasedPartitions] {
            assert_eq!(MemberState::from_value(s.value()), Some(s));
        }
        assert_eq!(MemberState::from_value(127), None);
        assert_eq!(groups().config().heartbeat_interval_ms, 5000);
    }

    #[test]
    fn error_codes_match_kafka() {
        // Goal: every error code we answer with is Kafka's number for that error.
        use kafka_protocol::ResponseError as E;
        assert_eq!(codes::UNKNOWN_MEMBER_ID, E::UnknownMemberId.code());
        assert_eq!(codes::INVALID_REQUEST, E::InvalidRequest.code());
        assert_eq!(codes::NON_EMPTY_GROUP, E::NonEmptyGroup.code());
        assert_eq!(codes::GROUP_ID_NOT_FOUND, E::GroupIdNotFound.code());
        assert_eq!(codes::GROUP_MAX_SIZE_REACHED, E::GroupMaxSizeReached.code());
        assert_eq!(codes::FENCED_INSTANCE_ID, E::FencedInstanceId.code());
        assert_eq!(codes::FENCED_MEMBER_EPOCH, E::FencedMemberEpoch.code());
        assert_eq!(codes::UNRELEASED_INSTANCE_ID, E::UnreleasedInstanceId.code());
        assert_eq!(codes::UNSUPPORTED_ASSIGNOR, E::UnsupportedAssignor.code());
        assert_eq!(codes::STALE_MEMBER_EPOCH, E::StaleMemberEpoch.code());
        assert_eq!(codes::INVALID_REGULAR_EXPRESSION, E::InvalidRegularExpression.code());
    }

    #[test]
    fn first_join_creates_group_and_assigns_every_partition() {
        // Goal: a lone member joining gets epoch 1, every partition, the heartbeat interval, and
        // the records that persist the group.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 3), ("b", 2, 2)]);
        let out = gs.heartbeat(&join_req("m1", &["a", "b", "missing"]), ClassicGroup::Absent, &t, 0);
        let r = &out.response;
        assert_eq!(
            (r.error_code, r.member_id.as_deref(), r.member_epoch, r.heartbeat_interval_ms),
            (0, Some("m1"), 1, 5000)
        );
        let a = r.assignment.as_ref().unwrap();
        assert_eq!(a[&tid(1)], BTreeSet::from([0, 1, 2]));
        assert_eq!(a[&tid(2)], BTreeSet::from([0, 1]));
        assert!(!out.classic_replaced);
        let kinds: Vec<&str> = out
            .records
            .iter()
            .map(|r| match r {
                Record::GroupMetadata { .. } => "group",
                Record::MemberMetadata { .. } => "member",
                Record::TargetAssignmentMetadata { .. } => "target-epoch",
                Record::TargetAssignmentMember { .. } => "target",
                Record::CurrentAssignment { .. } => "current",
            })
            .collect();
        assert_eq!(kinds, ["member", "group", "target", "target-epoch", "current"]);
        let d = describe_one(&gs);
        assert_eq!((d.state, d.group_epoch, d.assignment_epoch, d.assignor_name.as_str()), ("Stable", 1, 1, "uniform"));
        assert_eq!(d.members[0].assignment[0].topic_name, "a");
        assert_eq!(d.members[0].client_host, "/127.0.0.1");
    }

    #[test]
    fn member_id_generated_on_v0_and_required_on_v1() {
        // Goal: v0 joins without a member id get a 22-character Kafka-style id; v1 must send one.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 1)]);
        let mut req = join_req("", &["a"]);
        req.api_version = 0;
        let out = gs.heartbeat(&req, ClassicGroup::Absent, &t, 0);
        let id = out.response.member_id.unwrap();
        assert_eq!(id.len(), 22);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') && !id.starts_with('-'));
        req.api_version = 1;
        let out = gs.heartbeat(&req, ClassicGroup::Absent, &t, 0);
        assert_eq!(out.response.error_code, codes::INVALID_REQUEST);
        assert_eq!(out.response.error_message.as_deref(), Some("MemberId can't be empty."));
        assert!(out.records.is_empty());
    }

    #[test]
    fn steady_heartbeat_changes_nothing() {
        // Goal: a stable member's heartbeat returns its epoch, no assignment and writes nothing.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 2)]);
        let mut c = Client::join(&mut gs, "m1", &["a"], &t, 0);
        let out = c.beat(&mut gs, &t, 1000);
        assert_eq!(out.response.member_epoch, 1);
        assert_eq!(out.response.assignment, None);
        assert!(out.records.is_empty(), "{:?}", out.records);
        // A heartbeat that does not report owned partitions is fine too.
        let out = gs.heartbeat(&hb_req("m1", 1, None), ClassicGroup::Absent, &t, 2000);
        assert_eq!((out.response.error_code, out.response.member_epoch), (0, 1));
    }

    #[test]
    fn second_member_gets_partitions_only_after_first_revokes() {
        // Goal: revocation before assignment: when B joins, A is first asked to give up half its
        // partitions; B gets them only once A's heartbeat shows they are released; no partition
        // is ever owned by both.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 6)]);
        let mut a = Client::join(&mut gs, "A", &["a"], &t, 0);
        assert_eq!(count(&a.owned), 6);
        let mut b = Client::join(&mut gs, "B", &["a"], &t, 10);
        assert_eq!(b.epoch, 2, "B is at the new epoch");
        assert_eq!(count(&b.owned), 0, "but gets nothing A still owns");
        assert_eq!(describe_one(&gs).state, "Reconciling");
        assert_disjoint(&[&a, &b]);

        // A learns it must revoke: assignment shrinks, epoch stays.
        let out = a.beat(&mut gs, &t, 20);
        assert_eq!(count(&a.owned), 3);
        assert_eq!(a.epoch, 1);
        assert!(out.response.assignment.is_some());
        // B heartbeats meanwhile: still nothing, A has not confirmed.
        let out = b.beat(&mut gs, &t, 25);
        assert_eq!(out.response.assignment, None);
        assert_eq!(count(&b.owned), 0);
        assert_disjoint(&[&a, &b]);

        // A confirms (owned = its 3): moves to epoch 2.
        a.beat(&mut gs, &t, 30);
        assert_eq!(a.epoch, 2);
        // Now B gets the other 3.
        let out = b.beat(&mut gs, &t, 40);
        assert_eq!(count(&b.owned), 3);
        assert!(out.response.assignment.is_some());
        assert_disjoint(&[&a, &b]);
        assert_eq!(describe_one(&gs).state, "Stable");
    }

    #[test]
    fn leave_removes_member_and_rebalances() {
        // Goal: epoch -1 removes the member (tombstones), bumps the epoch, and the remaining
        // member takes over all partitions.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 4)]);
        let mut a = Client::join(&mut gs, "A", &["a"], &t, 0);
        let mut b = Client::join(&mut gs, "B", &["a"], &t, 0);
        a.beat(&mut gs, &t, 1);
        a.beat(&mut gs, &t, 2);
        b.beat(&mut gs, &t, 3);
        assert_eq!((count(&a.owned), count(&b.owned)), (2, 2));
        let out = gs.heartbeat(&hb_req("B", -1, None), ClassicGroup::Absent, &t, 5);
        assert_eq!(out.response.error_code, 0);
        let d = describe_one(&gs);
        assert_eq!(d.members.len(), 1);
        assert_eq!(d.group_epoch, 3);
        a.beat(&mut gs, &t, 6);
        assert_eq!((count(&a.owned), a.epoch), (4, 3));
        let out = gs.heartbeat(&hb_req("B", 2, None), ClassicGroup::Absent, &t, 7);
        assert_eq!(out.response.error_code, codes::UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn leave_writes_tombstones_and_answers_minus_one() {
        // Goal: a leave's response carries epoch -1 and its records tombstone the member.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 1)]);
        Client::join(&mut gs, "A", &["a"], &t, 0);
        let out = gs.heartbeat(&hb_req("A", -1, None), ClassicGroup::Absent, &t, 1);
        assert_eq!((out.response.error_code, out.response.member_epoch), (0, -1));
        assert!(out.records.contains(&Record::MemberMetadata {
            group_id: G.into(),
            member_id: "A".into(),
            value: None
        }));
        assert!(out.records.contains(&Record::CurrentAssignment {
            group_id: G.into(),
            member_id: "A".into(),
            value: None
        }));
        assert_eq!(describe_one(&gs).state, "Empty");
    }

    #[test]
    fn session_timeout_removes_silent_member() {
        // Goal: a member that stops heartbeating is removed after 45 s, not before, and the
        // others take over its partitions.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 2)]);
        let mut a = Client::join(&mut gs, "A", &["a"], &t, 0);
        let _b = Client::join(&mut gs, "B", &["a"], &t, 0);
        a.beat(&mut gs, &t, 40_000);
        assert!(gs.tick(44_999).removed.is_empty());
        assert_eq!(gs.next_deadline_ms(), Some(45_000));
        let out = gs.tick(45_000);
        assert_eq!(
            out.removed,
            vec![Removal { group_id: G.into(), member_id: "B".into(), reason: RemovalReason::SessionTimeout }]
        );
        assert!(!out.records.is_empty());
        a.beat(&mut gs, &t, 45_001);
        assert_eq!(count(&a.owned), 2);
    }

    #[test]
    fn rebalance_timeout_removes_member_that_does_not_revoke() {
        // Goal: a member asked to revoke that keeps reporting the partitions is removed after its
        // rebalance timeout; then the newcomer gets the partitions.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 2)]);
        let a = Client::join(&mut gs, "A", &["a"], &t, 0);
        let mut b = Client::join(&mut gs, "B", &["a"], &t, 1000);
        // A hears about the revocation at t=2000 but keeps owning both partitions.
        let stubborn = a.owned.clone();
        let out = gs.heartbeat(&hb_req("A", 1, Some(&stubborn)), ClassicGroup::Absent, &t, 2000);
        assert_eq!(count(out.response.assignment.as_ref().unwrap()), 1);
        for now in [10_000, 20_000, 31_000] {
            let out = gs.heartbeat(&hb_req("A", 1, Some(&stubborn)), ClassicGroup::Absent, &t, now);
            assert_eq!(out.response.error_code, 0);
            b.beat(&mut gs, &t, now);
            assert_eq!(count(&b.owned), 0, "B waits while A holds on");
        }
        assert!(gs.tick(31_999).removed.is_empty());
        let out = gs.tick(32_000);
        assert_eq!(out.removed[0].reason, RemovalReason::RebalanceTimeout);
        let out = gs.heartbeat(&hb_req("A", 1, Some(&stubborn)), ClassicGroup::Absent, &t, 32_001);
        assert_eq!(out.response.error_code, codes::UNKNOWN_MEMBER_ID);
        b.beat(&mut gs, &t, 32_002);
        assert_eq!(count(&b.owned), 2);
        assert_eq!(a.owned, stubborn);
    }

    #[test]
    fn fenced_member_epochs() {
        // Goal: a member ahead of or behind the coordinator is fenced (110), except when it
        // comes back with the previous epoch owning a subset of its assignment (lost response);
        // after a fence it can rejoin with epoch 0 and the same member id.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 4)]);
        let mut a = Client::join(&mut gs, "A", &["a"], &t, 0);
        let out = gs.heartbeat(&hb_req("A", 2, Some(&a.owned)), ClassicGroup::Absent, &t, 1);
        assert_eq!(out.response.error_code, codes::FENCED_MEMBER_EPOCH);
        assert!(out.response.error_message.unwrap().contains("greater member epoch (2)"));

        // B joins; A revokes and moves to epoch 2 but "loses" the response.
        let _b = Client::join(&mut gs, "B", &["a"], &t, 2);
        a.beat(&mut gs, &t, 3); // revocation asked: A now owns 2
        let owned_at_1 = a.owned.clone();
        let out = gs.heartbeat(&hb_req("A", 1, Some(&owned_at_1)), ClassicGroup::Absent, &t, 4);
        assert_eq!(out.response.member_epoch, 2, "A moved to epoch 2");
        // The response was lost: A still sends epoch 1 with a subset of its assignment: accepted.
        let out = gs.heartbeat(&hb_req("A", 1, Some(&owned_at_1)), ClassicGroup::Absent, &t, 5);
        assert_eq!((out.response.error_code, out.response.member_epoch), (0, 2));
        // Epoch 0 is a join, anything else old is fenced.
        let out = gs.heartbeat(
            &hb_req("A", 1, Some(&Assignment::from([(tid(1), BTreeSet::from([0, 1, 2, 3]))]))),
            ClassicGroup::Absent,
            &t,
            6,
        );
        assert_eq!(out.response.error_code, codes::FENCED_MEMBER_EPOCH);
        let out = gs.heartbeat(&hb_req("A", 1, None), ClassicGroup::Absent, &t, 6);
        assert_eq!(out.response.error_code, codes::FENCED_MEMBER_EPOCH, "previous epoch without owned partitions");
        // Rejoin with the same id after being fenced.
        let out = gs.heartbeat(&join_req("A", &["a"]), ClassicGroup::Absent, &t, 7);
        assert_eq!((out.response.error_code, out.response.member_epoch), (0, 2));
        assert_eq!(count(out.response.assignment.as_ref().unwrap()), 2);
        assert_eq!(describe_one(&gs).members.len(), 2, "a rejoin is not a new member");
    }

    #[test]
    fn unknown_member_and_unknown_group() {
        // Goal: heartbeats for members or groups the coordinator does not know get Kafka's errors.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 1)]);
        let out = gs.heartbeat(&hb_req("X", 3, None), ClassicGroup::Absent, &t, 0);
        assert_eq!(out.response.error_code, codes::GROUP_ID_NOT_FOUND);
        assert_eq!(out.response.error_message.as_deref(), Some("Consumer group g not found."));
        Client::join(&mut gs, "A", &["a"], &t, 0);
        let out = gs.heartbeat(&hb_req("X", 3, None), ClassicGroup::Absent, &t, 0);
        assert_eq!(out.response.error_code, codes::UNKNOWN_MEMBER_ID);
        let out = gs.heartbeat(&hb_req("X", -1, None), ClassicGroup::Absent, &t, 0);
        assert_eq!(out.response.error_code, codes::UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn join_validation_errors() {
        // Goal: malformed joins are INVALID_REQUEST with Kafka's messages and create nothing.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 1)]);
        let cases: Vec<(Heartbeat, &str)> = vec![
            (
                Heartbeat { rebalance_timeout_ms: -1, ..join_req("m", &["a"]) },
                "RebalanceTimeoutMs must be provided in first request.",
            ),
            (
                Heartbeat { owned_partitions: None, ..join_req("m", &["a"]) },
                "TopicPartitions must be empty when (re-)joining.",
            ),
            (
                Heartbeat { owned_partitions: Some(vec![(tid(1), vec![0])]), ..join_req("m", &["a"]) },
                "TopicPartitions must be empty when (re-)joining.",
            ),
            (
                Heartbeat { subscribed_topic_names: None, ..join_req("m", &["a"]) },
                "Either SubscribedTopicNames or SubscribedTopicRegex must be non-null when (re-)joining.",
            ),
            (Heartbeat { group_id: String::new(), ..join_req("m", &["a"]) }, "GroupId can't be empty."),
            (Heartbeat { instance_id: Some(String::new()), ..join_req("m", &["a"]) }, "InstanceId can't be empty."),
            (Heartbeat { rack_id: Some(String::new()), ..join_req("m", &["a"]) }, "RackId can't be empty."),
            (Heartbeat { member_epoch: -3, ..join_req("m", &["a"]) }, "MemberEpoch is invalid."),
            (Heartbeat { member_epoch: -2, ..join_req("m", &["a"]) }, "InstanceId can't be null."),
        ];
        for (req, message) in cases {
            let out = gs.heartbeat(&req, ClassicGroup::Absent, &t, 0);
            assert_eq!(out.response.error_code, codes::INVALID_REQUEST, "{message}");
            assert_eq!(out.response.error_message.as_deref(), Some(message));
            assert!(out.records.is_empty());
        }
        assert!(gs.list().is_empty(), "no group was created");
    }

    #[test]
    fn unknown_assignor_is_refused_and_range_can_be_chosen() {
        // Goal: an unknown server assignor is UNSUPPORTED_ASSIGNOR; `range` is used when asked.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 4)]);
        let out = gs.heartbeat(
            &Heartbeat { server_assignor: Some("sticky".into()), ..join_req("m", &["a"]) },
            ClassicGroup::Absent,
            &t,
            0,
        );
        assert_eq!(out.response.error_code, codes::UNSUPPORTED_ASSIGNOR);
        assert_eq!(
            out.response.error_message.as_deref(),
            Some("ServerAssignor sticky is not supported. Supported assignors: uniform, range.")
        );
        assert!(gs.list().is_empty());
        let out = gs.heartbeat(
            &Heartbeat { server_assignor: Some("range".into()), ..join_req("m", &["a"]) },
            ClassicGroup::Absent,
            &t,
            0,
        );
        assert_eq!(out.response.error_code, 0);
        assert_eq!(describe_one(&gs).assignor_name, "range");
    }

    #[test]
    fn bad_regex_is_invalid_regular_expression() {
        // Goal: a regex RE2 would reject is INVALID_REGULAR_EXPRESSION and creates no group.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 1)]);
        for bad in ["(", "a[", "(?<name", "\\1"] {
            let req = Heartbeat {
                subscribed_topic_names: None,
                subscribed_topic_regex: Some(bad.into()),
                ..join_req("m", &[])
            };
            let out = gs.heartbeat(&req, ClassicGroup::Absent, &t, 0);
            assert_eq!(out.response.error_code, codes::INVALID_REGULAR_EXPRESSION, "{bad}");
            assert!(
                out.response
                    .error_message
                    .unwrap()
                    .starts_with(&format!("SubscribedTopicRegex `{bad}` is not a valid regular expression"))
            );
        }
        assert!(gs.list().is_empty());
    }

    #[test]
    fn regex_subscription_picks_up_new_matching_topic() {
        // Goal: a regex subscription matches whole topic names, skips internal topics, and a
        // newly created matching topic is assigned on the next heartbeat after a metadata change.
        let mut gs = groups();
        let t1 =
            snapshot(1, &[("orders-1", 1, 2), ("xorders-1", 2, 1), ("__consumer_offsets", 9, 50), ("other", 3, 1)]);
        let req = Heartbeat {
            subscribed_topic_names: None,
            subscribed_topic_regex: Some("orders-.*|__.*".into()),
            ..join_req("m", &[])
        };
        let out = gs.heartbeat(&req, ClassicGroup::Absent, &t1, 0);
        let a = out.response.assignment.unwrap();
        assert_eq!(a.keys().copied().collect::<Vec<_>>(), vec![tid(1)]);
        let mut c = Client { id: "m".into(), epoch: out.response.member_epoch, owned: a };
        // Same version: nothing changes.
        let out = c.beat(&mut gs, &t1, 1);
        assert!(out.records.is_empty());
        // A new matching topic appears.
        let mut t2 = t1.clone();
        t2.version = 2;
        t2.topics.insert("orders-2".into(), TopicInfo { id: tid(4), partitions: 3 });
        let out = c.beat(&mut gs, &t2, 2);
        assert_eq!(c.epoch, 2);
        assert!(out.response.assignment.is_some());
        assert_eq!(count(&c.owned), 5);
        assert_eq!(describe_one(&gs).members[0].subscribed_topic_regex.as_deref(), Some("orders-.*|__.*"));
        // A new topic that does not match changes nothing.
        let mut t3 = t2.clone();
        t3.version = 3;
        t3.topics.insert("unrelated".into(), TopicInfo { id: tid(5), partitions: 3 });
        let out = c.beat(&mut gs, &t3, 3);
        assert_eq!(c.epoch, 2);
        assert!(out.records.is_empty());
    }

    #[test]
    fn partition_growth_and_subscription_change_bump_epoch() {
        // Goal: more partitions in a subscribed topic, or a changed subscription, bump the group
        // epoch and change the assignment.
        let mut gs = groups();
        let t1 = snapshot(1, &[("a", 1, 1), ("b", 2, 1)]);
        let mut c = Client::join(&mut gs, "m", &["a"], &t1, 0);
        let t2 = snapshot(2, &[("a", 1, 3), ("b", 2, 1)]);
        c.beat(&mut gs, &t2, 1);
        assert_eq!((c.epoch, count(&c.owned)), (2, 3));
        let mut req = hb_req("m", c.epoch, Some(&c.owned));
        req.subscribed_topic_names = Some(vec!["b".into()]);
        let out = gs.heartbeat(&req, ClassicGroup::Absent, &t2, 2);
        // The member must first revoke topic a: assignment empty, epoch unchanged.
        assert_eq!(out.response.member_epoch, 2);
        c.apply(&out.response);
        assert_eq!(count(&c.owned), 0);
        c.beat(&mut gs, &t2, 3);
        assert_eq!(c.epoch, 3);
        assert_eq!(c.owned, Assignment::from([(tid(2), BTreeSet::from([0]))]));
    }

    #[test]
    fn static_member_leaves_temporarily_and_is_replaced_without_rebalance() {
        // Goal: a static member leaving with -2 keeps its partitions; a new process with the same
        // instance id takes them over with no group epoch bump; meanwhile the instance id cannot
        // be used twice.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 4)]);
        let static_join = |member: &str| Heartbeat { instance_id: Some("i1".into()), ..join_req(member, &["a"]) };
        let out = gs.heartbeat(&static_join("S1"), ClassicGroup::Absent, &t, 0);
        assert_eq!(out.response.member_epoch, 1);
        let mut other = Client::join(&mut gs, "D", &["a"], &t, 0);
        let s1_owned = {
            let out = gs.heartbeat(
                &Heartbeat {
                    instance_id: Some("i1".into()),
                    ..hb_req("S1", 1, Some(&Assignment::from([(tid(1), BTreeSet::from([0, 1, 2, 3]))])))
                },
                ClassicGroup::Absent,
                &t,
                1,
            );
            out.response.assignment.unwrap()
        };
        let out = gs.heartbeat(
            &Heartbeat { instance_id: Some("i1".into()), ..hb_req("S1", 1, Some(&s1_owned)) },
            ClassicGroup::Absent,
            &t,
            2,
        );
        assert_eq!(out.response.member_epoch, 2);
        other.beat(&mut gs, &t, 3);
        assert_eq!(count(&other.owned), 2);

        // Another process with the same instance id while S1 is active: refused.
        let out = gs.heartbeat(&static_join("S2"), ClassicGroup::Absent, &t, 4);
        assert_eq!(out.response.error_code, codes::UNRELEASED_INSTANCE_ID);
        // A heartbeat from the wrong member id for i1: fenced.
        let out = gs.heartbeat(
            &Heartbeat { instance_id: Some("i1".into()), ..hb_req("S2", 2, None) },
            ClassicGroup::Absent,
            &t,
            4,
        );
        assert_eq!(out.response.error_code, codes::FENCED_INSTANCE_ID);
        // Unknown instance id on a static leave.
        let out = gs.heartbeat(
            &Heartbeat { instance_id: Some("nope".into()), ..hb_req("S1", -2, None) },
            ClassicGroup::Absent,
            &t,
            4,
        );
        assert_eq!(out.response.error_code, codes::UNKNOWN_MEMBER_ID);

        // Temporary leave.
        let epoch_before = describe_one(&gs).group_epoch;
        let out = gs.heartbeat(
            &Heartbeat { instance_id: Some("i1".into()), ..hb_req("S1", -2, None) },
            ClassicGroup::Absent,
            &t,
            5,
        );
        assert_eq!((out.response.error_code, out.response.member_epoch), (0, -2));
        assert_eq!(describe_one(&gs).group_epoch, epoch_before, "no rebalance on a static leave");
        other.beat(&mut gs, &t, 6);
        assert_eq!(count(&other.owned), 2, "S1's partitions are not handed out");

        // The restarted process (new member id) takes over S1's partitions.
        let out = gs.heartbeat(&static_join("S2"), ClassicGroup::Absent, &t, 7);
        assert_eq!(out.response.error_code, 0);
        assert_eq!(out.response.member_epoch, epoch_before);
        assert_eq!(out.response.assignment.unwrap(), s1_owned);
        let d = describe_one(&gs);
        assert_eq!(d.group_epoch, epoch_before);
        assert_eq!(d.members.iter().map(|m| m.member_id.as_str()).collect::<Vec<_>>(), vec!["D", "S2"]);
        assert!(out.records.contains(&Record::MemberMetadata {
            group_id: G.into(),
            member_id: "S1".into(),
            value: None
        }));
    }

    #[test]
    fn static_member_that_does_not_return_is_removed_after_session_timeout() {
        // Goal: a static member that left with -2 and never came back is removed when its
        // session expires, and the group rebalances.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 2)]);
        let out = gs.heartbeat(
            &Heartbeat { instance_id: Some("i1".into()), ..join_req("S1", &["a"]) },
            ClassicGroup::Absent,
            &t,
            0,
        );
        assert_eq!(out.response.error_code, 0);
        gs.heartbeat(
            &Heartbeat { instance_id: Some("i1".into()), ..hb_req("S1", -2, None) },
            ClassicGroup::Absent,
            &t,
            1000,
        );
        assert!(gs.tick(45_999).removed.is_empty(), "one session timeout from the leave");
        let out = gs.tick(46_000);
        assert_eq!(out.removed.len(), 1);
        let d = describe_one(&gs);
        assert_eq!((d.state, d.group_epoch), ("Empty", 2));
        // The instance id is free again.
        let out = gs.heartbeat(
            &Heartbeat { instance_id: Some("i1".into()), ..join_req("S2", &["a"]) },
            ClassicGroup::Absent,
            &t,
            46_000,
        );
        assert_eq!(out.response.error_code, 0);
    }

    #[test]
    fn group_max_size() {
        // Goal: joins beyond group.consumer.max.size are GROUP_MAX_SIZE_REACHED; members
        // already in the group can still rejoin.
        let mut gs = ConsumerGroups::new(ConsumerGroupConfig { max_size: 1, ..ConsumerGroupConfig::default() }, 1);
        let t = snapshot(1, &[("a", 1, 1)]);
        Client::join(&mut gs, "A", &["a"], &t, 0);
        let out = gs.heartbeat(&join_req("B", &["a"]), ClassicGroup::Absent, &t, 0);
        assert_eq!(out.response.error_code, codes::GROUP_MAX_SIZE_REACHED);
        assert_eq!(
            out.response.error_message.as_deref(),
            Some("The consumer group has reached its maximum capacity of 1 members.")
        );
        let out = gs.heartbeat(&join_req("A", &["a"]), ClassicGroup::Absent, &t, 0);
        assert_eq!(out.response.error_code, 0);
    }

    #[test]
    fn classic_group_ids_are_refused_or_replaced() {
        // Goal: a group id held by an active classic group is GROUP_ID_NOT_FOUND; an empty classic
        // group is replaced by a joining consumer, and the driver is told.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 1)]);
        let out = gs.heartbeat(&join_req("m", &["a"]), ClassicGroup::Active, &t, 0);
        assert_eq!(out.response.error_code, codes::GROUP_ID_NOT_FOUND);
        assert_eq!(out.response.error_message.as_deref(), Some("Group g is not a consumer group."));
        let out = gs.heartbeat(&hb_req("m", 1, None), ClassicGroup::Empty, &t, 0);
        assert_eq!(out.response.error_code, codes::GROUP_ID_NOT_FOUND);
        let out = gs.heartbeat(&join_req("m", &["a"]), ClassicGroup::Empty, &t, 0);
        assert_eq!(out.response.error_code, 0);
        assert!(out.classic_replaced);
        assert_eq!(gs.state(G), Some("Stable"));
    }

    #[test]
    fn describe_reports_groups_and_errors() {
        // Goal: ConsumerGroupDescribe rows: a known group with members, target and current
        // assignment; unknown and classic ids get GROUP_ID_NOT_FOUND with Kafka's messages.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 2)]);
        Client::join(&mut gs, "A", &["a"], &t, 0);
        Client::join(&mut gs, "B", &["a"], &t, 0);
        let rows = gs.describe(&[G, "nope", "old"], |id| id == "old");
        let d = rows[0].as_ref().unwrap();
        assert_eq!((d.state, d.group_epoch, d.assignment_epoch), ("Reconciling", 2, 2));
        let a = &d.members[0];
        assert_eq!((a.member_id.as_str(), a.member_epoch), ("A", 1));
        assert_eq!(a.assignment[0].partitions, vec![0, 1], "A still holds both");
        assert_eq!(a.target_assignment[0].partitions.len(), 1, "but its target is one");
        assert_eq!(rows[1], Err((codes::GROUP_ID_NOT_FOUND, "Group nope not found.".into())));
        assert_eq!(rows[2], Err((codes::GROUP_ID_NOT_FOUND, "Group old is not a consumer group.".into())));
    }

    #[test]
    fn delete_and_offset_validation() {
        // Goal: only empty groups can be deleted; offset commits/fetches check member and epoch.
        let mut gs = groups();
        let t = snapshot(1, &[("a", 1, 1)]);
        let c = Client::join(&mut gs, "A", &["a"], &t, 0);
        assert_eq!(gs.delete_group(G).unwrap_err().0, codes::NON_EMPTY_GROUP);
        assert_eq!(gs.validate_offset_commit(G, "A", c.epoch), Ok(()));
        assert_eq!(gs.validate_offset_commit(G, "A", c.epoch + 1).unwrap_err().0, codes::STALE_MEMBER_EPOCH);
        assert_eq!(gs.validate_offset_commit(G, "", -1).unwrap_err().0, codes::UNKNOWN_MEMBER_ID);
        assert_eq!(gs.validate_offset_fetch(G, "", -1), Ok(()));
        assert_eq!(gs.validate_offset_fetch(G, "Z", 1).unwrap_err().0, codes::UNKNOWN_MEMBER_ID);
        gs.heartbeat(&hb_req("A", -1, None), ClassicGroup::Absent, &t, 1);
        assert_eq!(gs.validate_offset_commit(G, "", -1), Ok(()), "admin commits on an empty group");
        let tombstones = gs.delete_group(G).unwrap();
        assert!(tombstones.contains(&Record::GroupMetadata { group_id: G.into(), value: None }));
        assert_eq!(gs.state(G), None);
        assert_eq!(gs.delete_group(G).unwrap_err().0, codes::GROUP_ID_NOT_FOUND);
    }

    #[test]
    fn replay_of_conflicting_records_does_not_fail_the_load() {
        // Goal: a log where two members claim one partition loads (the later claim wins).
        let mut gs = groups();
        let claim = |member: &str, parts: &[i32]| Record::CurrentAssignment {
            group_id: G.into(),
            member_id: member.into(),
            value: Some(CurrentAssignmentValue {
                member_epoch: 1,
                previous_member_epoch: 0,
                state: MemberState::Stable,
                assigned: Assignment::from([(tid(1), parts.iter().copied().collect())]),
                pending_revocation: Assignment::new(),
            }),
        };
        gs.replay(&claim("A", &[0, 1]), 0);
        gs.replay(&claim("B", &[1, 2]), 0);
        let d = describe_one(&gs);
        assert_eq!(d.members[0].assignment[0].partitions, vec![0]);
        assert_eq!(d.members[1].assignment[0].partitions, vec![1, 2]);
    }

    /// Everything `describe` shows, for comparing two state machines.
    fn snapshot_of(gs: &ConsumerGroups) -> Vec<DescribedGroup> {
        let mut ids: Vec<String> = gs.list().into_iter().map(|(id, _)| id).collect();
        ids.sort();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        gs.describe(&refs, |_| false).into_iter().map(|r| r.unwrap()).collect()
    }

    #[test]
    fn randomized_clients_never_overlap_and_replay_rebuilds_state() {
        // Goal: with members joining, leaving, heartbeating, stalling and topics growing in a
        // random order, no partition is ever owned by two clients; when everyone keeps
        // heartbeating the group converges to Stable with every partition owned; and replaying
        // every record written rebuilds the same groups.
        let seed: u64 = std::env::var("CREEK_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
        println!("seed {seed} (set CREEK_TEST_SEED to replay)");
        let mut rng = seed;
        for round in 0..60 {
            let mut gs = ConsumerGroups::new(ConsumerGroupConfig::default(), round);
            let mut log: Vec<Record> = Vec::new();
            let mut t = snapshot(
                1,
                &[("a", 1, 1 + (splitmix64(&mut rng) % 8) as i32), ("b", 2, 1 + (splitmix64(&mut rng) % 4) as i32)],
            );
            let mut clients: Vec<Client> = Vec::new();
            let mut now = 0i64;
            let mut next_id = 0;
            let mut instances: HashMap<String, String> = HashMap::new();
            for _ in 0..80 {
                now += 100;
                match splitmix64(&mut rng) % 10 {
                    0 | 1 if clients.len() < 6 => {
                        next_id += 1;
                        let id = format!("m{next_id}");
                        let mut req = join_req(&id, &["a", "b"]);
                        if next_id % 2 == 1 {
                            req.instance_id = Some(format!("i{next_id}"));
                            instances.insert(id.clone(), format!("i{next_id}"));
                        }
                        let out = gs.heartbeat(&req, ClassicGroup::Absent, &t, now);
                        log.extend(out.records.clone());
                        let mut c = Client { id, epoch: 0, owned: Assignment::new() };
                        c.apply(&out.response);
                        clients.push(c);
                    }
                    2 if !clients.is_empty() => {
                        let k = (splitmix64(&mut rng) % clients.len() as u64) as usize;
                        let c = clients.remove(k);
                        let out = gs.heartbeat(&hb_req(&c.id, -1, None), ClassicGroup::Absent, &t, now);
                        assert_eq!(out.response.error_code, 0);
                        log.extend(out.records);
                    }
                    5 if !clients.is_empty() => {
                        // A static member restarts: leave with -2, a new process rejoins.
                        let k = (splitmix64(&mut rng) % clients.len() as u64) as usize;
                        let Some(inst) = instances.get(&clients[k].id).cloned() else {
                            continue;
                        };
                        // Heartbeat first so the group has seen the latest metadata.
                        let out = clients[k].beat(&mut gs, &t, now);
                        log.extend(out.records);
                        let leave = Heartbeat { instance_id: Some(inst.clone()), ..hb_req(&clients[k].id, -2, None) };
                        let out = gs.heartbeat(&leave, ClassicGroup::Absent, &t, now);
                        assert_eq!(out.response.error_code, 0);
                        log.extend(out.records);
                        let old = clients.remove(k);
                        let id = format!("{}r", old.id);
                        let join = Heartbeat { instance_id: Some(inst.clone()), ..join_req(&id, &["a", "b"]) };
                        let out = gs.heartbeat(&join, ClassicGroup::Absent, &t, now + 1);
                        log.extend(out.records.clone());
                        assert!(!out.records.iter().any(|r| matches!(r, Record::GroupMetadata { .. })), "no rebalance");
                        let mut c = Client { id: id.clone(), epoch: 0, owned: Assignment::new() };
                        c.apply(&out.response);
                        clients.push(c);
                        instances.insert(id, inst);
                    }
                    4 if !clients.is_empty() && splitmix64(&mut rng).is_multiple_of(4) => {
                        // Everyone but one client stalls past the session timeout.
                        let k = (splitmix64(&mut rng) % clients.len() as u64) as usize;
                        now += 30_000;
                        let out = clients[k].beat(&mut gs, &t, now);
                        log.extend(out.records);
                        now += 20_000;
                        let out = gs.tick(now);
                        log.extend(out.records);
                        let removed: BTreeSet<String> = out.removed.into_iter().map(|r| r.member_id).collect();
                        assert!(!removed.contains(&clients[k].id));
                        clients.retain(|c| !removed.contains(&c.id));
                    }
                    3 => {
                        let grow = t.topics.get_mut("a").unwrap();
                        if grow.partitions < 12 {
                            grow.partitions += 1;
                            t.version += 1;
                        }
                    }
                    _ if !clients.is_empty() => {
                        let k = (splitmix64(&mut rng) % clients.len() as u64) as usize;
                        let out = clients[k].beat(&mut gs, &t, now);
                        log.extend(out.records);
                    }
                    _ => {}
                }
                let refs: Vec<&Client> = clients.iter().collect();
                assert_disjoint(&refs);
                gs.check_invariants();
            }
            // Everyone heartbeats until stable.
            for _ in 0..4 {
                for c in clients.iter_mut() {
                    now += 10;
                    let out = c.beat(&mut gs, &t, now);
                    log.extend(out.records);
                }
                let refs: Vec<&Client> = clients.iter().collect();
                assert_disjoint(&refs);
            }
            if !clients.is_empty() {
                let d = describe_one(&gs);
                assert_eq!(d.state, "Stable", "round {round}: {d:?}");
                let total: usize = clients.iter().map(|c| count(&c.owned)).sum();
                let expected: i32 = t.topics.values().map(|i| i.partitions).sum();
                assert_eq!(total, expected as usize, "round {round}: every partition owned");
                let counts: Vec<usize> = clients.iter().map(|c| count(&c.owned)).collect();
                assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1, "round {round}: {counts:?}");
            }
            let mut replayed = ConsumerGroups::new(ConsumerGroupConfig::default(), 0);
            for r in &log {
                replayed.replay(r, now);
            }
            assert_eq!(snapshot_of(&replayed), snapshot_of(&gs), "round {round}: replay");
            replayed.check_invariants();
            // The replayed coordinator keeps serving the same clients without a rebalance.
            for c in clients.iter_mut() {
                let out = c.beat(&mut replayed, &t, now + 1);
                assert_eq!(out.response.error_code, 0);
                assert!(out.records.is_empty(), "round {round}: no change after reload: {:?}", out.records);
            }
        }
    }
}
