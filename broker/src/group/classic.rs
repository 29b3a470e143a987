//! The classic consumer group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) as a pure
//! state machine: requests and `now_ms` go in, responses come out; no clock, socket or task.
//!
//! A parked JoinGroup or SyncGroup is named by a driver-supplied [`ReqId`] and answered later
//! through an [`Output`]. [`ClassicGroup::tick`] expires sessions, rebalance timeouts, the sync
//! timeout and the initial rebalance delay. The broker is assignor-agnostic: it picks a protocol
//! all members support and relays the leader's assignment bytes.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::handlers::code;

/// Names a parked request; the driver maps it back to the waiting connection.
pub(crate) type ReqId = u64;

/// How long a brand-new member's JoinGroup is kept alive while it waits (Kafka's
/// `GroupCoordinator.NewMemberJoinTimeoutMs`).
pub(crate) const NEW_MEMBER_JOIN_TIMEOUT_MS: i64 = 5 * 60 * 1000;

/// Broker settings the state machine obeys.
#[derive(Debug, Clone)]
pub(crate) struct ClassicConfig {
    pub(crate) session_timeout_min_ms: i32,
    pub(crate) session_timeout_max_ms: i32,
    pub(crate) initial_rebalance_delay_ms: i64,
    pub(crate) group_size_max: usize,
}

impl Default for ClassicConfig {
    fn default() -> Self {
        ClassicConfig {
            session_timeout_min_ms: 6000,
            session_timeout_max_ms: 1_800_000,
            initial_rebalance_delay_ms: 3000,
            group_size_max: i32::MAX as usize,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// Kafka's name for the state (DescribeGroups, ListGroups).
    pub(crate) fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// One member of the group.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) session_timeout_ms: i32,
    pub(crate) protocol_type: String,
    /// (name, metadata) in the member's order of preference.
    pub(crate) protocols: Vec<(String, Bytes)>,
    pub(crate) assignment: Bytes,
    awaiting_join: Option<ReqId>,
    awaiting_sync: Option<ReqId>,
    last_heartbeat_ms: i64,
    is_new: bool,
}

impl Member {
    /// The member's metadata for `protocol`.
    pub(crate) fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(n, _)| n == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }
    fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(n, _)| n == protocol)
    }
    fn same_protocols(&self, other: &[(String, Bytes)]) -> bool {
        self.protocols == other
    }
}

/// A JoinGroup request as the state machine sees it.
#[derive(Debug, Clone)]
pub(crate) struct JoinRequest {
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout_ms: i32,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) protocol_type: String,
    pub(crate) protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+ (KIP-394): a member without an id is first told its id.
    pub(crate) require_known_member: bool,
    /// The id the member gets if it is new (the driver supplies the randomness).
    pub(crate) fresh_member_id: String,
}

/// The answer to a JoinGroup.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JoinResult {
    pub(crate) error: i16,
    pub(crate) generation: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) leader: String,
    pub(crate) member_id: String,
    /// (member id, instance id, metadata); only the leader gets them.
    pub(crate) members: Vec<(String, Option<String>, Bytes)>,
    /// A static leader rejoining a stable group keeps the current assignment (v9 `skip_assignment`).
    pub(crate) skip_assignment: bool,
}

impl JoinResult {
    /// A JoinGroup answer carrying only an error (and the member id the client sent).
    pub(crate) fn error(error: i16, member_id: &str) -> JoinResult {
        JoinResult {
            error,
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
            skip_assignment: false,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SyncRequest {
    pub(crate) generation: i32,
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyncResult {
    pub(crate) error: i16,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) assignment: Bytes,
}

impl SyncResult {
    fn error(error: i16) -> SyncResult {
        SyncResult { error, protocol_type: None, protocol_name: None, assignment: Bytes::new() }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Output {
    Join(ReqId, JoinResult),
    Sync(ReqId, SyncResult),
    /// The group's metadata (generation, members, assignments) changed: store it.
    Persist,
}

/// One classic group.
#[derive(Debug, Clone)]
pub(crate) struct ClassicGroup {
    pub(crate) id: String,
    pub(crate) state: GroupState,
    pub(crate) generation: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) leader: Option<String>,
    pub(crate) members: BTreeMap<String, Member>,
    /// group.instance.id → member id.
    static_members: HashMap<String, String>,
    /// KIP-394 ids handed out and not yet used, with their expiry.
    pending_members: HashMap<String, i64>,
    /// When the current join phase ends (PreparingRebalance).
    join_deadline_ms: Option<i64>,
    /// During the initial delay of an empty group: what is left of the rebalance timeout.
    initial_delay_remaining_ms: Option<i64>,
    new_member_added: bool,
    /// When the sync phase ends (CompletingRebalance).
    sync_deadline_ms: Option<i64>,
    /// When the group last changed state (offset expiry counts from when it became Empty).
    pub(crate) state_since_ms: i64,
    /// `group.initial.rebalance.delay.ms`, applied when the first members join an empty group.
    initial_delay_ms: i64,
}

impl ClassicGroup {
    pub(crate) fn new(id: &str, now_ms: i64) -> ClassicGroup {
        ClassicGroup {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending_members: HashMap::new(),
            join_deadline_ms: None,
            initial_delay_remaining_ms: None,
            new_member_added: false,
            sync_deadline_ms: None,
            state_since_ms: now_ms,
            initial_delay_ms: 0,
        }
    }

    /// Rebuilds a group from its stored metadata. Members come back as Stable and must heartbeat
    /// within their session timeout, as after a coordinator move in Kafka.
    pub(crate) fn restore(stored: StoredGroup, now_ms: i64) -> ClassicGroup {
        let mut g = ClassicGroup::new(&stored.id, stored.state_since_ms);
        g.generation = stored.generation;
        g.protocol_type = stored.protocol_type.filter(|t| !t.is_empty());
        g.protocol = stored.protocol;
        g.leader = stored.leader;
        for m in stored.members {
            if let Some(i) = &m.instance_id {
                g.static_members.insert(i.clone(), m.member_id.clone());
            }
            let protocols = match &g.protocol {
                Some(p) => vec![(p.clone(), m.subscription.clone())],
                None => Vec::new(),
            };
            g.members.insert(
                m.member_id.clone(),
                Member {
                    id: m.member_id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    protocol_type: g.protocol_type.clone().unwrap_or_default(),
                    protocols,
                    assignment: m.assignment,
                    awaiting_join: None,
                    awaiting_sync: None,
                    last_heartbeat_ms: now_ms,
                    is_new: false,
                },
            );
        }
        g.state = if g.members.is_empty() { GroupState::Empty } else { GroupState::Stable };
        g
    }

    /// The group's metadata as stored in `__consumer_offsets`.
    pub(crate) fn stored(&self) -> StoredGroup {
        let protocol = self.protocol.clone();
        StoredGroup {
            id: self.id.clone(),
            protocol_type: self.protocol_type.clone(),
            generation: self.generation,
            protocol: protocol.clone(),
            leader: self.leader.clone(),
            state_since_ms: self.state_since_ms,
            members: self
                .members
                .values()
                .map(|m| StoredMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: protocol.as_deref().map(|p| m.metadata(p)).unwrap_or_default(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Sets `group.initial.rebalance.delay.ms` for this group.
    pub(crate) fn with_initial_delay(mut self, ms: i64) -> Self {
        self.initial_delay_ms = ms;
        self
    }

    /// Empty, with no member id handed out and not yet used.
    pub(crate) fn is_idle(&self) -> bool {
        self.state == GroupState::Empty && self.members.is_empty() && self.pending_members.is_empty()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn set_state(&mut self, state: GroupState, now_ms: i64) {
        if self.state != state {
            self.state = state;
            self.state_since_ms = now_ms;
        }
    }

    /// FENCED_INSTANCE_ID when `instance_id` belongs to another member id.
    fn fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id.and_then(|i| self.static_members.get(i)).is_some_and(|m| m != member_id)
    }

    /// Protocols every member (and the newcomer) supports.
    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)], except: Option<&str>) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        let others: Vec<&Member> = self.members.values().filter(|m| Some(m.id.as_str()) != except).collect();
        if others.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref().is_some_and(|t| t != protocol_type) {
            return false;
        }
        protocols.iter().any(|(name, _)| others.iter().all(|m| m.supports(name)))
    }

    /// Kafka's protocol selection: among protocols all members support, each member votes for its
    /// most preferred one; most votes wins (ties go to the earliest in the leader's order).
    fn select_protocol(&self) -> Option<String> {
        let leader = self.leader.as_ref().and_then(|l| self.members.get(l)).or_else(|| self.members.values().next())?;
        let candidates: Vec<&String> =
            leader.protocols.iter().map(|(n, _)| n).filter(|n| self.members.values().all(|m| m.supports(n))).collect();
        let mut votes: HashMap<&String, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(&n)) {
                *votes.entry(n).or_default() += 1;
            }
        }
        let best = candidates.iter().map(|c| votes.get(c).copied().unwrap_or(0)).max()?;
        candidates.into_iter().find(|c| votes.get(c).copied().unwrap_or(0) == best).cloned()
    }

    fn rebalance_timeout_ms(&self) -> i64 {
        self.members.values().map(|m| i64::from(m.rebalance_timeout_ms)).max().unwrap_or(0)
    }

    fn current_members(&self) -> Vec<(String, Option<String>, Bytes)> {
        let p = self.protocol.clone().unwrap_or_default();
        self.members.values().map(|m| (m.id.clone(), m.instance_id.clone(), m.metadata(&p))).collect()
    }

    fn result_for(&self, member_id: &str) -> JoinResult {
        let leader = self.leader.clone().unwrap_or_default();
        JoinResult {
            error: code::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            members: if leader == member_id { self.current_members() } else { Vec::new() },
            leader,
            member_id: member_id.to_string(),
            skip_assignment: false,
        }
    }

    /// JoinGroup. The answer comes as an [`Output::Join`] for `req`, now or later.
    pub(crate) fn join(&mut self, req: ReqId, j: JoinRequest, cfg: &ClassicConfig, now_ms: i64) -> Vec<Output> {
        let mut out = Vec::new();
        if j.session_timeout_ms < cfg.session_timeout_min_ms || j.session_timeout_ms > cfg.session_timeout_max_ms {
            out.push(Output::Join(req, JoinResult::error(code::INVALID_SESSION_TIMEOUT, &j.member_id)));
            return out;
        }
        if self.state == GroupState::Dead {
            out.push(Output::Join(req, JoinResult::error(code::COORDINATOR_NOT_AVAILABLE, &j.member_id)));
            return out;
        }
        if j.member_id.is_empty() {
            self.join_unknown(req, j, cfg, now_ms, &mut out);
        } else {
            self.join_known(req, j, now_ms, &mut out);
        }
        self.maybe_complete_join(now_ms, &mut out);
        out
    }

    fn join_unknown(&mut self, req: ReqId, j: JoinRequest, cfg: &ClassicConfig, now_ms: i64, out: &mut Vec<Output>) {
        let static_old = j.instance_id.as_ref().and_then(|i| self.static_members.get(i)).cloned();
        if static_old.is_none() && self.members.len() + self.pending_members.len() >= cfg.group_size_max {
            out.push(Output::Join(req, JoinResult::error(code::GROUP_MAX_SIZE_REACHED, "")));
            return;
        }
        if !self.supports_protocols(&j.protocol_type, &j.protocols, static_old.as_deref()) {
            out.push(Output::Join(req, JoinResult::error(code::INCONSISTENT_GROUP_PROTOCOL, "")));
            return;
        }
        let new_id = j.fresh_member_id.clone();
        if let Some(old_id) = static_old {
            self.replace_static_member(req, &old_id, new_id, j, now_ms, out);
        } else if j.require_known_member && j.instance_id.is_none() {
            self.pending_members.insert(new_id.clone(), now_ms + i64::from(j.session_timeout_ms));
            out.push(Output::Join(req, JoinResult::error(code::MEMBER_ID_REQUIRED, &new_id)));
        } else {
            self.add_member(req, new_id, j, now_ms, out);
        }
    }

    fn join_known(&mut self, req: ReqId, j: JoinRequest, now_ms: i64, out: &mut Vec<Output>) {
        let id = j.member_id.clone();
        if self.pending_members.remove(&id).is_some() {
            if !self.supports_protocols(&j.protocol_type, &j.protocols, None) {
                out.push(Output::Join(req, JoinResult::error(code::INCONSISTENT_GROUP_PROTOCOL, &id)));
                return;
            }
            self.add_member(req, id, j, now_ms, out);
            return;
        }
        if self.fenced(&id, j.instance_id.as_deref()) {
            out.push(Output::Join(req, JoinResult::error(code::FENCED_INSTANCE_ID, &id)));
            return;
        }
        if !self.members.contains_key(&id) || matches!(self.state, GroupState::Empty | GroupState::Dead) {
            out.push(Output::Join(req, JoinResult::error(code::UNKNOWN_MEMBER_ID, &id)));
            return;
        }
        if !self.supports_protocols(&j.protocol_type, &j.protocols, Some(&id)) {
            out.push(Output::Join(req, JoinResult::error(code::INCONSISTENT_GROUP_PROTOCOL, &id)));
            return;
        }
        let is_leader = self.leader.as_deref() == Some(id.as_str());
        let unchanged = self.members[&id].same_protocols(&j.protocols);
        match self.state {
            GroupState::PreparingRebalance => self.update_member(req, &j, now_ms, out),
            GroupState::CompletingRebalance if unchanged => {
                // A retried JoinGroup after the join phase: answer with the current generation.
                let m = self.members.get_mut(&id).expect("checked");
                m.last_heartbeat_ms = now_ms;
                out.push(Output::Join(req, self.result_for(&id)));
            }
            GroupState::Stable if unchanged && !is_leader => {
                let m = self.members.get_mut(&id).expect("checked");
                m.last_heartbeat_ms = now_ms;
                out.push(Output::Join(req, self.result_for(&id)));
            }
            _ => {
                self.update_member(req, &j, now_ms, out);
                self.prepare_rebalance(now_ms, out);
            }
        }
    }

    fn update_member(&mut self, req: ReqId, j: &JoinRequest, now_ms: i64, out: &mut Vec<Output>) {
        let m = self.members.get_mut(&j.member_id).expect("known member");
        if let Some(old) = m.awaiting_join.replace(req) {
            // A duplicate JoinGroup supersedes the earlier one.
            out.push(Output::Join(old, JoinResult::error(code::UNKNOWN_MEMBER_ID, &j.member_id)));
        }
        m.protocols = j.protocols.clone();
        m.protocol_type = j.protocol_type.clone();
        m.session_timeout_ms = j.session_timeout_ms;
        m.rebalance_timeout_ms = j.rebalance_timeout_ms;
        m.client_id = j.client_id.clone();
        m.client_host = j.client_host.clone();
        m.last_heartbeat_ms = now_ms;
    }

    fn add_member(&mut self, req: ReqId, id: String, j: JoinRequest, now_ms: i64, out: &mut Vec<Output>) {
        if let Some(i) = &j.instance_id {
            self.static_members.insert(i.clone(), id.clone());
        }
        self.members.insert(
            id.clone(),
            Member {
                id: id.clone(),
                instance_id: j.instance_id,
                client_id: j.client_id,
                client_host: j.client_host,
                rebalance_timeout_ms: j.rebalance_timeout_ms,
                session_timeout_ms: j.session_timeout_ms,
                protocol_type: j.protocol_type.clone(),
                protocols: j.protocols,
                assignment: Bytes::new(),
                awaiting_join: Some(req),
                awaiting_sync: None,
                last_heartbeat_ms: now_ms,
                is_new: true,
            },
        );
        if self.protocol_type.is_none() || self.members.len() == 1 {
            self.protocol_type = Some(j.protocol_type);
        }
        if self.leader.as_ref().is_none_or(|l| !self.members.contains_key(l)) {
            self.leader = Some(id);
        }
        self.new_member_added = true;
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(now_ms, out);
        }
    }

    /// KIP-345: a static member rejoining with a new member id takes the old one's place.
    fn replace_static_member(
        &mut self,
        req: ReqId,
        old_id: &str,
        new_id: String,
        j: JoinRequest,
        now_ms: i64,
        out: &mut Vec<Output>,
    ) {
        let mut m = self.members.remove(old_id).expect("static member is a member");
        if let Some(old_req) = m.awaiting_join.take() {
            out.push(Output::Join(old_req, JoinResult::error(code::FENCED_INSTANCE_ID, old_id)));
        }
        if let Some(old_req) = m.awaiting_sync.take() {
            out.push(Output::Sync(old_req, SyncResult::error(code::FENCED_INSTANCE_ID)));
        }
        let unchanged = m.same_protocols(&j.protocols);
        m.id = new_id.clone();
        m.client_id = j.client_id.clone();
        m.client_host = j.client_host.clone();
        m.session_timeout_ms = j.session_timeout_ms;
        m.rebalance_timeout_ms = j.rebalance_timeout_ms;
        m.last_heartbeat_ms = now_ms;
        if !unchanged {
            m.protocols = j.protocols.clone();
        }
        let was_leader = self.leader.as_deref() == Some(old_id);
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        self.static_members.insert(j.instance_id.clone().expect("static"), new_id.clone());
        self.members.insert(new_id.clone(), m);
        match self.state {
            GroupState::Stable if unchanged => {
                // Same subscription: keep the generation and the assignment, no rebalance.
                let mut r = self.result_for(&new_id);
                r.skip_assignment = was_leader;
                out.push(Output::Persist);
                out.push(Output::Join(req, r));
            }
            GroupState::PreparingRebalance => {
                let m = self.members.get_mut(&new_id).expect("inserted");
                m.awaiting_join = Some(req);
                m.protocols = j.protocols;
            }
            _ => {
                let m = self.members.get_mut(&new_id).expect("inserted");
                m.awaiting_join = Some(req);
                m.protocols = j.protocols;
                self.prepare_rebalance(now_ms, out);
            }
        }
    }

    fn prepare_rebalance(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        if self.state == GroupState::CompletingRebalance {
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(r) = m.awaiting_sync.take() {
                    out.push(Output::Sync(r, SyncResult::error(code::REBALANCE_IN_PROGRESS)));
                }
            }
        }
        self.sync_deadline_ms = None;
        let was_empty = self.state == GroupState::Empty;
        self.set_state(GroupState::PreparingRebalance, now_ms);
        if was_empty && self.initial_delay_ms > 0 {
            let timeout = self.rebalance_timeout_ms();
            let delay = self.initial_delay_ms.min(timeout.max(0));
            self.join_deadline_ms = Some(now_ms + delay);
            self.initial_delay_remaining_ms = Some((timeout - delay).max(0));
            self.new_member_added = false;
        } else {
            self.join_deadline_ms = Some(now_ms + self.rebalance_timeout_ms());
            self.initial_delay_remaining_ms = None;
        }
    }

    fn all_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.awaiting_join.is_some())
    }

    fn maybe_complete_join(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        if self.state == GroupState::PreparingRebalance
            && self.initial_delay_remaining_ms.is_none()
            && self.all_joined()
        {
            self.complete_join(now_ms, out);
        }
    }

    fn complete_join(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        self.join_deadline_ms = None;
        self.initial_delay_remaining_ms = None;
        // Dynamic members that did not rejoin leave; static ones stay until their session ends.
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none() && m.instance_id.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            self.members.remove(&id);
        }
        if self.leader.as_ref().is_none_or(|l| self.members.get(l).is_none_or(|m| m.awaiting_join.is_none())) {
            self.leader = self.members.values().find(|m| m.awaiting_join.is_some()).map(|m| m.id.clone());
        }
        if !self.members.is_empty() && self.leader.is_none() {
            // Only static members that have not rejoined are left: wait another rebalance timeout
            // for them (their sessions still run), as Kafka does.
            self.join_deadline_ms = Some(now_ms + self.rebalance_timeout_ms());
            return;
        }
        self.generation += 1;
        if self.members.is_empty() {
            self.protocol = None;
            self.leader = None;
            self.set_state(GroupState::Empty, now_ms);
            out.push(Output::Persist);
            return;
        }
        self.protocol = self.select_protocol();
        self.set_state(GroupState::CompletingRebalance, now_ms);
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let r = self.result_for(&id);
            let m = self.members.get_mut(&id).expect("member");
            m.is_new = false;
            m.last_heartbeat_ms = now_ms;
            if let Some(req) = m.awaiting_join.take() {
                out.push(Output::Join(req, r));
            }
        }
        self.sync_deadline_ms = Some(now_ms + self.rebalance_timeout_ms());
    }

    /// SyncGroup. The answer comes as an [`Output::Sync`] for `req`, now or later.
    pub(crate) fn sync(&mut self, req: ReqId, s: SyncRequest, now_ms: i64) -> Vec<Output> {
        let mut out = Vec::new();
        let error = if self.state == GroupState::Dead {
            code::COORDINATOR_NOT_AVAILABLE
        } else if self.fenced(&s.member_id, s.instance_id.as_deref()) {
            code::FENCED_INSTANCE_ID
        } else if !self.members.contains_key(&s.member_id) {
            code::UNKNOWN_MEMBER_ID
        } else if s.generation != self.generation {
            code::ILLEGAL_GENERATION
        } else if s.protocol_type.as_ref().is_some_and(|t| Some(t) != self.protocol_type.as_ref())
            || s.protocol_name.as_ref().is_some_and(|n| Some(n) != self.protocol.as_ref())
        {
            code::INCONSISTENT_GROUP_PROTOCOL
        } else {
            code::NONE
        };
        if error != code::NONE {
            out.push(Output::Sync(req, SyncResult::error(error)));
            return out;
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => {
                out.push(Output::Sync(req, SyncResult::error(code::UNKNOWN_MEMBER_ID)))
            }
            GroupState::PreparingRebalance => {
                out.push(Output::Sync(req, SyncResult::error(code::REBALANCE_IN_PROGRESS)))
            }
            GroupState::CompletingRebalance => {
                let is_leader = self.leader.as_deref() == Some(s.member_id.as_str());
                let m = self.members.get_mut(&s.member_id).expect("checked");
                m.last_heartbeat_ms = now_ms;
                if let Some(old) = m.awaiting_sync.replace(req) {
                    out.push(Output::Sync(old, SyncResult::error(code::REBALANCE_IN_PROGRESS)));
                }
                if is_leader {
                    let given: HashMap<String, Bytes> = s.assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.assignment = given.get(&m.id).cloned().unwrap_or_default();
                    }
                    self.set_state(GroupState::Stable, now_ms);
                    self.sync_deadline_ms = None;
                    out.push(Output::Persist);
                    self.answer_syncs(&mut out);
                }
            }
            GroupState::Stable => {
                let r = self.sync_ok(&s.member_id);
                self.members.get_mut(&s.member_id).expect("checked").last_heartbeat_ms = now_ms;
                out.push(Output::Sync(req, r));
            }
        }
        out
    }

    fn sync_ok(&self, member_id: &str) -> SyncResult {
        SyncResult {
            error: code::NONE,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            assignment: self.members.get(member_id).map(|m| m.assignment.clone()).unwrap_or_default(),
        }
    }

    fn answer_syncs(&mut self, out: &mut Vec<Output>) {
        let waiting: Vec<(String, ReqId)> =
            self.members.values_mut().filter_map(|m| m.awaiting_sync.take().map(|r| (m.id.clone(), r))).collect();
        for (id, r) in waiting {
            out.push(Output::Sync(r, self.sync_ok(&id)));
        }
    }

    /// Heartbeat: an error code.
    pub(crate) fn heartbeat(
        &mut self,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        now_ms: i64,
    ) -> i16 {
        if self.state == GroupState::Dead {
            return code::COORDINATOR_NOT_AVAILABLE;
        }
        if self.fenced(member_id, instance_id) {
            return code::FENCED_INSTANCE_ID;
        }
        let Some(m) = self.members.get_mut(member_id) else { return code::UNKNOWN_MEMBER_ID };
        if generation != self.generation {
            return code::ILLEGAL_GENERATION;
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => code::UNKNOWN_MEMBER_ID,
            GroupState::CompletingRebalance | GroupState::Stable => {
                m.last_heartbeat_ms = now_ms;
                code::NONE
            }
            GroupState::PreparingRebalance => {
                m.last_heartbeat_ms = now_ms;
                code::REBALANCE_IN_PROGRESS
            }
        }
    }

    /// Whether a commit from this member at this generation may proceed (OffsetCommit's checks).
    /// `Ok(true)` for a simple (generation < 0) commit to an empty group.
    pub(crate) fn check_commit(
        &mut self,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        now_ms: i64,
    ) -> Result<(), i16> {
        if self.state == GroupState::Dead {
            return Err(code::COORDINATOR_NOT_AVAILABLE);
        }
        if self.fenced(member_id, instance_id) {
            return Err(code::FENCED_INSTANCE_ID);
        }
        if generation < 0 && self.state == GroupState::Empty {
            return Ok(());
        }
        let Some(m) = self.members.get_mut(member_id) else { return Err(code::UNKNOWN_MEMBER_ID) };
        if generation != self.generation {
            return Err(code::ILLEGAL_GENERATION);
        }
        match self.state {
            GroupState::Stable | GroupState::PreparingRebalance => {
                m.last_heartbeat_ms = now_ms;
                Ok(())
            }
            _ => Err(code::REBALANCE_IN_PROGRESS),
        }
    }

    /// LeaveGroup for a batch of (member id, instance id): one error code per member.
    pub(crate) fn leave(&mut self, leaving: &[(String, Option<String>)], now_ms: i64) -> (Vec<i16>, Vec<Output>) {
        let mut out = Vec::new();
        let mut codes = Vec::new();
        for (member_id, instance_id) in leaving {
            let target = match instance_id {
                Some(i) => match self.static_members.get(i) {
                    None => Err(code::UNKNOWN_MEMBER_ID),
                    Some(m) if !member_id.is_empty() && m != member_id => Err(code::FENCED_INSTANCE_ID),
                    Some(m) => Ok(m.clone()),
                },
                None if self.pending_members.remove(member_id).is_some() => {
                    codes.push(code::NONE);
                    continue;
                }
                None if self.members.contains_key(member_id) => Ok(member_id.clone()),
                None => Err(code::UNKNOWN_MEMBER_ID),
            };
            match target {
                Ok(id) => {
                    self.remove_member(&id, now_ms, &mut out);
                    codes.push(code::NONE);
                }
                Err(e) => codes.push(e),
            }
        }
        self.maybe_complete_join(now_ms, &mut out);
        (codes, out)
    }

    fn remove_member(&mut self, id: &str, now_ms: i64, out: &mut Vec<Output>) {
        let Some(m) = self.members.remove(id) else { return };
        if let Some(i) = &m.instance_id {
            self.static_members.remove(i);
        }
        if let Some(r) = m.awaiting_join {
            out.push(Output::Join(r, JoinResult::error(code::UNKNOWN_MEMBER_ID, id)));
        }
        if let Some(r) = m.awaiting_sync {
            out.push(Output::Sync(r, SyncResult::error(code::UNKNOWN_MEMBER_ID)));
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = self.members.keys().next().cloned();
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => self.prepare_rebalance(now_ms, out),
            _ => {}
        }
    }

    /// Expires sessions, KIP-394 pending ids, the join and sync phases and the initial delay.
    pub(crate) fn tick(&mut self, now_ms: i64) -> Vec<Output> {
        let mut out = Vec::new();
        self.pending_members.retain(|_, deadline| *deadline > now_ms);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                if m.awaiting_join.is_some() {
                    // Parked joins are bounded by the rebalance timeout; new members by 5 minutes.
                    m.is_new && m.last_heartbeat_ms + NEW_MEMBER_JOIN_TIMEOUT_MS <= now_ms
                } else if m.awaiting_sync.is_some() {
                    false
                } else {
                    m.last_heartbeat_ms + i64::from(m.session_timeout_ms) <= now_ms
                }
            })
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            self.remove_member(&id, now_ms, &mut out);
        }
        if self.state == GroupState::PreparingRebalance
            && let Some(deadline) = self.join_deadline_ms
            && deadline <= now_ms
        {
            match self.initial_delay_remaining_ms {
                Some(remaining) if self.new_member_added && remaining > 0 => {
                    let delay = self.initial_delay_ms.min(remaining);
                    self.join_deadline_ms = Some(now_ms + delay);
                    self.initial_delay_remaining_ms = Some(remaining - delay);
                    self.new_member_added = false;
                }
                _ => self.complete_join(now_ms, &mut out),
            }
        }
        if self.state == GroupState::CompletingRebalance
            && let Some(deadline) = self.sync_deadline_ms
            && deadline <= now_ms
        {
            // Members that did not sync in time leave and the group rebalances.
            let late: Vec<String> =
                self.members.values().filter(|m| m.awaiting_sync.is_none()).map(|m| m.id.clone()).collect();
            self.sync_deadline_ms = None;
            for id in late {
                self.remove_member(&id, now_ms, &mut out);
            }
        }
        self.maybe_complete_join(now_ms, &mut out);
        out
    }

    /// Whether the group's members subscribe to `topic` (consumer protocol metadata), which
    /// blocks OffsetDelete for it.
    pub(crate) fn subscribed_to(&self, topic: &str) -> bool {
        if self.protocol_type.as_deref() != Some("consumer") || self.is_empty() {
            return false;
        }
        let Some(p) = &self.protocol else { return false };
        self.members.values().any(|m| consumer_subscription_topics(&m.metadata(p)).iter().any(|t| t == topic))
    }

    /// Every member id and instance id (for describe).
    pub(crate) fn member_list(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }
}

/// Topics in a ConsumerProtocolSubscription (versions 0-3 are not flexible: i16 version, then
/// an array of strings). Anything unreadable yields no topics.
pub(crate) fn consumer_subscription_topics(mut b: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let take = |b: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        if b.len() < n {
            return None;
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Some(h.to_vec())
    };
    let Some(v) = take(&mut b, 2) else { return out };
    if i16::from_be_bytes([v[0], v[1]]) > 3 {
        return out;
    }
    let Some(n) = take(&mut b, 4) else { return out };
    let n = i32::from_be_bytes([n[0], n[1], n[2], n[3]]);
    for _ in 0..n.clamp(0, 100_000) {
        let Some(l) = take(&mut b, 2) else { break };
        let l = i16::from_be_bytes([l[0], l[1]]);
        let Some(s) = take(&mut b, l.max(0) as usize) else { break };
        out.push(String::from_utf8_lossy(&s).into_owned());
    }
    out
}

/// A group as stored in `__consumer_offsets` (group metadata value version 3).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct StoredGroup {
    pub(crate) id: String,
    pub(crate) protocol_type: Option<String>,
    pub(crate) generation: i32,
    pub(crate) protocol: Option<String>,
    pub(crate) leader: Option<String>,
    pub(crate) state_since_ms: i64,
    pub(crate) members: Vec<StoredMember>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct StoredMember {
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) session_timeout_ms: i32,
    pub(crate) subscription: Bytes,
    pub(crate) assignment: Bytes,
}

#[cfg(test)]
#[path = "classic_test.rs"]
mod tests;
