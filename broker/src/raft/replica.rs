//! One node's replica of a Raft group (a partition, or the cluster metadata): starting it,
//! proposing to it, and what Kafka requests need to know about it.
//!
//! A partition's high watermark is the Kafka offset after the last applied (so committed) entry,
//! moved by [`PartitionHook`] as entries apply; leadership and the leader epoch are openraft's
//! current leader and term.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use creek_protocol::batch::{BatchView, set_base_offset};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::impls::BasicNode;
use openraft::raft::ReadPolicy;
use openraft::{EntryPayload, Raft, ServerState};

use super::log_store::{LogReader, LogStore, Refusal, delete_records_offset, proposal_offset_with_token};
use super::network::{PartitionRaft, RaftRouter, RpcNetworkFactory};
use super::state_machine::{ApplyHook, PartitionStateMachine};
use super::{Applied, Entry, KafkaBatch, partition_config};
use crate::rpc::{GroupId, NodeId, Rpc};

/// A replica that has seen no leader this long after starting initializes the group itself (the
/// preferred leader initializes at once; the others only cover for it being down).
const INITIALIZE_FALLBACK: Duration = Duration::from_secs(3);
/// How long a reopened replica waits for its leader's heartbeat before it may campaign: two of a
/// quiet leader's heartbeat periods.
const STARTUP_QUIET: Duration = Duration::from_secs(2);
/// [`Replica::confirmed_term`] when leadership is not confirmed in any term.
const NOT_CONFIRMED: u64 = u64::MAX;
/// How long a leader that got its majority back waits for a quorum to confirm it still leads.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

/// A leader's view of its followers' lag, sampled about once a second: a follower that has
/// replicated everything the leader held at the previous sample has caught up as of that sample.
#[derive(Default)]
struct InSync {
    /// The term these samples belong to (a new term starts over).
    term: u64,
    /// The leader's last log index at the previous sample.
    last_index: Option<u64>,
    /// When each follower last caught up.
    caught_up: std::collections::HashMap<NodeId, Instant>,
}

/// Which group a replica belongs to and how it runs.
pub(crate) struct GroupSpec<'a> {
    pub(crate) group: GroupId,
    /// The voters, preferred leader first.
    pub(crate) voters: &'a [NodeId],
    /// Whether the cluster's failure detector runs its timer (partition groups).
    pub(crate) supervised: bool,
    /// A replica added to a running group (a reassignment): it waits for the leader to add it
    /// and never initializes the group itself.
    pub(crate) joining: bool,
}

/// Why a proposal was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProposeError {
    /// This node does not lead the group; the leader it knows of, if any.
    NotLeader(Option<NodeId>),
    /// Leadership changed before the entry committed: it may or may not commit (the producer
    /// retries and producer state answers the retry).
    Unknown(Option<NodeId>),
    /// The group is shutting down or failed.
    Stopped(String),
}

/// This node's replica of one Raft group.
pub(crate) struct Replica {
    pub(crate) group: GroupId,
    node: NodeId,
    /// The preferred leader: the first of the replicas the metadata assigned.
    pub(crate) preferred: Option<NodeId>,
    /// The voters the group was started with (membership changes are not supported yet), for
    /// the failure detector's checks, which must not clone openraft's metrics every tick.
    pub(crate) assigned: parking_lot::RwLock<Vec<NodeId>>,
    raft: PartitionRaft,
    high_watermark: Arc<AtomicU64>,
    /// Whether openraft's timer (election timeouts, heartbeats) runs; see [`Replica::set_ticking`].
    ticking: AtomicBool,
    /// A reopened replica (a restart) waits this long for its leader before it may campaign.
    quiet_until: Option<Instant>,
    /// The term in which this node last confirmed its leadership with a quorum (ReadIndex), or
    /// [`NOT_CONFIRMED`]; cleared when the failure detector sees the majority gone (see
    /// [`Replica::is_leader`] and [`Replica::observe_quorum`]).
    confirmed_term: AtomicU64,
    /// A leadership confirmation is under way ([`Replica::observe_quorum`]).
    confirming: AtomicBool,
    /// Since when this follower has had no live leader (see [`Replica::leaderless_for`]).
    leaderless_since: parking_lot::Mutex<Option<Instant>>,
    /// The log, for acks=1 waiters ([`Replica::propose_until_appended`]).
    reader: LogReader,
    /// What a leader knows of its followers' lag (see [`Replica::sample_in_sync`]).
    in_sync: parking_lot::Mutex<InSync>,
    /// Shares the group's applied state, to ask it for snapshots ([`Replica::release_below`]).
    state_machine: PartitionStateMachine,
    next_token: std::sync::atomic::AtomicI64,
}

impl Replica {
    /// Starts this node's replica of `spec.group` on `store` with `hook` applying entries,
    /// registers it with `router`, and makes sure the group gets initialized with `spec.voters`
    /// (the first voter is the preferred leader and initializes at once). A supervised
    /// replica's timer is managed by the cluster ([`Replica::set_ticking`]); when reopened it
    /// starts quiet.
    pub(crate) async fn start(
        (node, rpc, router): (NodeId, Rpc, &Arc<RaftRouter>),
        store: LogStore,
        spec: GroupSpec<'_>,
        hook: impl FnOnce(LogReader, Arc<AtomicU64>) -> Arc<dyn ApplyHook>,
    ) -> std::io::Result<Arc<Replica>> {
        let GroupSpec { group, voters, supervised, joining } = spec;
        let high_watermark = Arc::new(AtomicU64::new(0));
        let reopened = supervised && !store.is_empty();
        let reader = store.reader();
        let sm = PartitionStateMachine::new(reader.clone(), Some(hook(reader.clone(), high_watermark.clone())));
        let state_machine = sm.clone();
        let network = RpcNetworkFactory::new(rpc, group);
        let raft = Raft::new(node, partition_config(), network, store, sm).await.map_err(std::io::Error::other)?;
        router.register(group, raft.clone());
        // A restarted node's groups usually still have a leader, which it hears from within a
        // quiet heartbeat: it stays quiet that long rather than campaign and depose it.
        let quiet_until = reopened.then(|| Instant::now() + STARTUP_QUIET);
        if reopened {
            raft.runtime_config().tick(false);
        }
        let replica = Arc::new(Replica {
            group,
            node,
            preferred: voters.first().copied(),
            assigned: parking_lot::RwLock::new(voters.to_vec()),
            raft,
            high_watermark,
            ticking: AtomicBool::new(!reopened),
            quiet_until,
            confirmed_term: AtomicU64::new(NOT_CONFIRMED),
            confirming: AtomicBool::new(false),
            leaderless_since: parking_lot::Mutex::new(None),
            reader,
            in_sync: parking_lot::Mutex::new(InSync::default()),
            state_machine,
            next_token: std::sync::atomic::AtomicI64::new(0),
        });
        tokio::spawn(delete_records(Arc::downgrade(&replica), replica.reader.deletions()));
        let members: BTreeMap<NodeId, BasicNode> = voters.iter().map(|&id| (id, BasicNode::default())).collect();
        let preferred = voters.first() == Some(&node);
        let starting = replica.clone();
        tokio::spawn(async move {
            if joining {
                return;
            }
            if !preferred {
                tokio::time::sleep(INITIALIZE_FALLBACK).await;
                if starting.leader().is_some() || starting.raft.metrics().borrow_watched().last_log_index.is_some() {
                    return;
                }
            }
            // Refused harmlessly when the log already holds entries (a restart, or a replica
            // that heard from the leader): every voter initializes with the same membership.
            if let Err(e) = starting.raft.initialize(members).await {
                tracing::debug!(group = starting.group.0, error = %e, "not initializing the group");
            }
        });
        Ok(replica)
    }

    /// Where a DeleteRecords below `offset` moves this replica's log start (see
    /// `LogReader::entry_start_at_or_below`).
    pub(crate) fn delete_records_point(&self, offset: u64) -> u64 {
        self.reader.entry_start_at_or_below(offset)
    }

    /// Makes `voters` the replicas the failure detector checks (after a reassignment).
    pub(crate) fn set_assigned(&self, voters: &[NodeId]) {
        let mut assigned = self.assigned.write();
        if *assigned != voters {
            *assigned = voters.to_vec();
        }
    }

    /// Moves the group to the voters `target` (a reassignment): each new one is added as a
    /// learner and caught up first, then the membership changes in one joint-consensus step, and
    /// voters not in `target` leave the group, as do learners (of a cancelled move). Only the
    /// leader can; an error says why not.
    pub(crate) async fn change_voters(&self, target: &[NodeId]) -> Result<(), String> {
        let (current, _) = self.leading_voters()?;
        let joining: Vec<NodeId> = target.iter().copied().filter(|n| !current.contains(n)).collect();
        for &node in &joining {
            self.raft.add_learner(node, BasicNode::default(), false).await.map_err(|e| e.to_string())?;
        }
        // Each new replica must hold the log as it was once all were added before it may vote.
        // (openraft's own wait counts a learner within 5,000 entries as caught up, so a move onto
        // a node that is down completed at once on a short log.)
        let upto = self.raft.metrics().borrow_watched().last_log_index;
        while !joining.iter().all(|&n| self.holds_upto(n, upto)) {
            if self.is_follower() {
                return Err("no longer leading".to_string());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // One change: the new voters, without the learners of a move that was cancelled before
        // they became voters. (A second change after the first could find this node already
        // out of the group it still leads, if the move took it out.)
        let (_, learners) = self.leading_voters()?;
        let voters: std::collections::BTreeSet<NodeId> = target.iter().copied().collect();
        let stray: std::collections::BTreeSet<NodeId> = learners.into_iter().filter(|n| !voters.contains(n)).collect();
        let mut change = vec![openraft::ChangeMembers::ReplaceAllVoters(voters)];
        if !stray.is_empty() {
            change.push(openraft::ChangeMembers::RemoveNodes(stray));
        }
        self.raft.change_membership(openraft::ChangeMembers::Batch(change), false).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The voters and learners, when this node leads the group and is one of its voters. A
    /// leader that a move has just taken out of the group keeps leading until that change
    /// commits; it must not change the membership again (openraft requires a leader's own
    /// membership to name it a voter).
    fn leading_voters(&self) -> Result<(Vec<NodeId>, Vec<NodeId>), String> {
        let (voters, learners) = self.members();
        if self.is_follower() || !voters.contains(&self.node) {
            return Err(format!("node {} is not a voter leading the group (voters {voters:?})", self.node));
        }
        Ok((voters, learners))
    }

    /// The group's voters and learners in its effective membership, each sorted.
    pub(crate) fn members(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        (membership.voter_ids().collect(), membership.learner_ids().collect())
    }

    /// On the leader: adds `node` as a learner, which the leader then replicates to in the
    /// background (a broker joining the metadata group). Returns once the change is committed.
    pub(crate) async fn add_learner(&self, node: NodeId) -> Result<(), String> {
        self.leading_voters()?;
        self.raft.add_learner(node, BasicNode::default(), false).await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// On the leader: takes `node` out of the group, voter or learner (a broker leaving the
    /// cluster); a voter's place is given to `successor`, a learner, when there is one, so the
    /// group keeps its number of voters.
    pub(crate) async fn remove_member(&self, node: NodeId, successor: Option<NodeId>) -> Result<(), String> {
        use openraft::ChangeMembers;
        let (voters, learners) = self.leading_voters()?;
        if voters.contains(&node) {
            let mut next: std::collections::BTreeSet<NodeId> = voters.iter().copied().filter(|&v| v != node).collect();
            next.extend(successor.filter(|s| learners.contains(s)));
            if next.is_empty() {
                return Err(format!("node {node} is the group's last voter"));
            }
            self.raft
                .change_membership(ChangeMembers::ReplaceAllVoters(next), false)
                .await
                .map_err(|e| e.to_string())?;
        } else if learners.contains(&node) {
            let gone = std::collections::BTreeSet::from([node]);
            self.raft.change_membership(ChangeMembers::RemoveNodes(gone), false).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The leader this node knows of.
    pub(crate) fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Whether this node leads the group and has applied an entry of its own term (its first,
    /// blank entry), so its high watermark covers everything committed before it: a new leader
    /// serves nothing until then, and the high watermark clients see never moves back. It must
    /// also have confirmed its leadership with a quorum in this term: a node restarted with a
    /// leader's vote resumes as leader of its old term although the others may have moved on,
    /// and a leader cut off from a majority could not commit anything while the others elect a
    /// new one; neither may serve (stale reads), so clients are sent elsewhere.
    pub(crate) fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        self.confirmed_term.load(Ordering::Acquire) == m.current_term
            && m.state == ServerState::Leader
            && m.current_leader == Some(self.node)
            && m.last_applied.is_some_and(|a| a.committed_leader_id().term == m.current_term)
            && m.membership_config.membership().voter_ids().any(|v| v == self.node)
    }

    /// On a leader that a reassignment took out of the group's voters (it still leads until
    /// openraft reverts it): the voter that holds most of its log, to hand leadership to. `None`
    /// on any other replica. Such a leader serves nothing ([`Replica::is_leader`] is false) and
    /// must stop heartbeating, or the remaining voters, hearing a live leader, never elect one.
    pub(crate) fn removed_leader_successor(&self) -> Option<NodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        if m.state != ServerState::Leader || membership.voter_ids().any(|v| v == self.node) {
            return None;
        }
        let matched = |v: &NodeId| m.replication.as_ref().and_then(|r| r.get(v).copied().flatten());
        membership.voter_ids().max_by_key(matched)
    }

    /// Whether this replica is a follower (or candidate, or not yet initialized) rather than
    /// the leader.
    pub(crate) fn is_follower(&self) -> bool {
        self.raft.metrics().borrow_watched().state != ServerState::Leader
    }

    /// Records whether this follower has a live leader now; returns for how long it has not
    /// had one (`None` while it has one).
    pub(crate) fn leaderless_for(&self, leaderless: bool) -> Option<Duration> {
        let mut since = self.leaderless_since.lock();
        if !leaderless {
            *since = None;
            return None;
        }
        Some(since.get_or_insert_with(Instant::now).elapsed())
    }

    /// Records what the cluster's failure detector sees of this leader's voters. Losing the
    /// majority stops serving at once. With a majority in reach, a leader that has not confirmed
    /// its leadership in the current term (new, restarted, or back from a partition) does so
    /// with a heartbeat round answered by a quorum (openraft's ReadIndex); a deposed leader
    /// learns of the newer term instead and steps down.
    pub(crate) fn observe_quorum(self: &Arc<Self>, reachable: bool) {
        if !reachable {
            self.confirmed_term.store(NOT_CONFIRMED, Ordering::Release);
            return;
        }
        let term = self.raft.metrics().borrow_watched().current_term;
        if self.confirmed_term.load(Ordering::Acquire) == term || self.confirming.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let confirmed = tokio::time::timeout(CONFIRM_TIMEOUT, this.raft.ensure_linearizable(ReadPolicy::ReadIndex))
                .await
                .is_ok_and(|r| r.is_ok());
            let m = this.raft.metrics().borrow_watched().clone();
            if confirmed && m.current_term == term && m.state == ServerState::Leader {
                this.confirmed_term.store(term, Ordering::Release);
            }
            this.confirming.store(false, Ordering::Release);
        });
    }

    /// Whether `follower` holds everything this leader's log holds (from openraft's replication
    /// progress; only a leader knows it).
    pub(crate) fn has_caught_up(&self, follower: NodeId) -> bool {
        let last = self.raft.metrics().borrow_watched().last_log_index;
        last.is_some() && self.holds_upto(follower, last)
    }

    /// Whether `follower` has replicated this leader's log up to index `upto` (`None`: nothing).
    fn holds_upto(&self, follower: NodeId, upto: Option<u64>) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let matched = m.replication.as_ref().and_then(|r| r.get(&follower).copied().flatten());
        matched.map(|l| l.index()) >= upto
    }

    /// Hands leadership to `to`: it campaigns at once with this leader's blessing (openraft's
    /// TransferLeader). Done when `to` leads; the caller checks.
    pub(crate) async fn transfer_leadership(&self, to: NodeId) {
        if let Err(e) = self.raft.trigger().transfer_leader(to).await {
            tracing::debug!(group = self.group.0, to, error = %e, "leadership transfer not started");
        }
    }

    /// Turns openraft's timer on or off. A quiet group (timer off) sends no heartbeats and
    /// starts no elections; replication of writes goes on. The cluster turns it on only while a
    /// follower has no live leader (see `cluster.rs`), so 1,000 idle groups cost nothing.
    pub(crate) fn set_ticking(&self, on: bool) {
        if on && self.quiet_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        if self.ticking.swap(on, Ordering::AcqRel) != on {
            self.raft.runtime_config().tick(on);
        }
    }

    /// Sends one round of heartbeats now (a quiet leader's periodic proof of life: followers
    /// learn the commit index, and a deposed leader learns of the newer term).
    pub(crate) async fn heartbeat(&self) {
        if let Err(e) = self.raft.trigger().heartbeat().await {
            tracing::debug!(group = self.group.0, error = %e, "heartbeat not sent");
        }
    }

    /// Records which followers have caught up since the previous call (the cluster's failure
    /// detector calls it about once a second on leaders). A new leader counts every voter as
    /// caught up at its election, as Kafka keeps the ISR across a leader change.
    pub(crate) fn sample_in_sync(&self) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        if m.state != ServerState::Leader {
            return;
        }
        let now = Instant::now();
        let mut s = self.in_sync.lock();
        if s.term != m.current_term {
            *s = InSync { term: m.current_term, last_index: m.last_log_index, caught_up: HashMap::new() };
            for &v in self.assigned.read().iter() {
                s.caught_up.insert(v, now);
            }
            return;
        }
        if let Some(replication) = &m.replication {
            for (&node, matched) in replication.iter() {
                if s.last_index.is_none_or(|want| matched.is_some_and(|l| l.index() >= want)) {
                    s.caught_up.insert(node, now);
                }
            }
        }
        s.caught_up.insert(self.node, now);
        s.last_index = m.last_log_index;
    }

    /// The voters that caught up with this leader within `lag` (itself included), in id order;
    /// `None` when this node has no samples as leader of the current term.
    pub(crate) fn in_sync(&self, lag: Duration) -> Option<Vec<NodeId>> {
        let term = self.raft.metrics().borrow_watched().current_term;
        let s = self.in_sync.lock();
        if s.term != term || s.caught_up.is_empty() {
            return None;
        }
        let mut ids: Vec<NodeId> = self
            .assigned
            .read()
            .iter()
            .copied()
            .filter(|v| s.caught_up.get(v).is_some_and(|t| t.elapsed() <= lag))
            .collect();
        ids.sort_unstable();
        Some(ids)
    }

    /// The current term, which is the partition's leader epoch.
    pub(crate) fn epoch(&self) -> i32 {
        i32::try_from(self.raft.metrics().borrow_watched().current_term).unwrap_or(i32::MAX)
    }

    /// The Kafka offset after the last committed entry.
    pub(crate) fn high_watermark(&self) -> u64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// Proposes one batch and answers as soon as it is in this leader's log (Kafka's acks=1): not
    /// yet durable or replicated, so a failover may lose it, as with Kafka. The proposal goes on
    /// to commit in the background.
    pub(crate) async fn propose_until_appended(self: &Arc<Self>, mut batch: Vec<u8>) -> Result<Applied, ProposeError> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        set_base_offset(&mut batch, proposal_offset_with_token(token));
        let appended = self.reader.await_append(token);
        let this = self.clone();
        let mut write = tokio::spawn(async move { this.propose(Bytes::from(batch)).await });
        tokio::select! {
            a = appended => a.map_err(|_| ProposeError::Stopped("the log store went away".into())),
            w = &mut write => {
                // Finished before the append was noticed: committed, or refused before the log.
                self.reader.forget_append(token);
                w.map_err(|e| ProposeError::Stopped(e.to_string()))?
            }
        }
    }

    /// Proposes one batch (its `baseOffset` set to [`super::log_store::PROPOSAL_OFFSET`]) and
    /// waits until it is committed and applied: a quorum holds it durably.
    pub(crate) async fn propose(&self, batch: Bytes) -> Result<Applied, ProposeError> {
        match self.raft.client_write(KafkaBatch(batch)).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(ProposeError::NotLeader(f.leader_id)),
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => Err(ProposeError::Unknown(f.leader_id)),
            Err(e) => Err(ProposeError::Stopped(e.to_string())),
        }
    }

    /// Lets retention delete this replica's log below Kafka offset `upto` (at most the high
    /// watermark): builds a snapshot at the last entry ending there and waits, up to `wait`, for
    /// openraft to purge the entries it covers, which raises storage's retention floor. Returns
    /// whether the Raft log now starts at or above the snapshot point. A leader purges only
    /// entries no replication stream still reads; a follower further behind installs the
    /// snapshot instead.
    pub(crate) async fn release_below(&self, upto: u64, wait: Duration) -> bool {
        let upto = upto.min(self.high_watermark());
        if self.reader.raft_start_offset() >= upto {
            return true;
        }
        let Some((last, next_offset)) = self.reader.snapshot_point(upto) else { return false };
        let applied = self.raft.metrics().borrow_watched().last_applied;
        if applied.is_none_or(|a| a < last) {
            return false;
        }
        let deadline = Instant::now() + wait;
        let built = |m: &openraft::RaftMetrics<super::TypeConfig>| m.snapshot.is_some_and(|s| s >= last);
        if !built(&self.raft.metrics().borrow_watched()) {
            self.state_machine.request_snapshot(last, next_offset);
            if self.raft.trigger().snapshot().await.is_err() {
                return false;
            }
        }
        // openraft purges on its own once the snapshot is built (it keeps no entries behind one);
        // asking again covers a snapshot built earlier whose purge was held back.
        let mut asked = false;
        loop {
            let (purged, built_now) = {
                let metrics = self.raft.metrics();
                let m = metrics.borrow_watched();
                (m.purged, built(&m))
            };
            if purged.is_some_and(|p| p >= last) {
                return true;
            }
            if built_now && !asked {
                asked = true;
                if self.raft.trigger().purge_log(last.index()).await.is_err() {
                    return false;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Hands one batch (its `baseOffset` set to [`super::log_store::PROPOSAL_OFFSET`]) to
    /// openraft's queue and returns what resolves as [`Replica::propose`] does. Batches
    /// submitted one after another enter the log in that order, which `propose` from concurrent
    /// tasks does not promise (the group coordinator's records rely on it).
    pub(crate) async fn submit(
        &self,
        batch: Bytes,
    ) -> Result<impl std::future::Future<Output = Result<Applied, ProposeError>> + Send + 'static, ProposeError> {
        let (responder, rx) = openraft::impls::ProgressResponder::complete_only();
        self.raft
            .client_write_ff(KafkaBatch(batch), Some(responder))
            .await
            .map_err(|e| ProposeError::Stopped(e.to_string()))?;
        Ok(async move {
            match rx.await {
                Ok(Ok(resp)) => Ok(resp.data),
                Ok(Err(ClientWriteError::ForwardToLeader(f))) => Err(ProposeError::NotLeader(f.leader_id)),
                Ok(Err(ClientWriteError::LogEntryDiscarded(f))) => Err(ProposeError::Unknown(f.leader_id)),
                Ok(Err(e)) => Err(ProposeError::Stopped(e.to_string())),
                Err(_) => Err(ProposeError::Stopped("the group stopped".into())),
            }
        })
    }

    /// Stops the replica; its store closes (and flushes) when openraft drops it.
    pub(crate) async fn shutdown(&self, router: &RaftRouter) {
        router.unregister(self.group);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(group = self.group.0, error = %e, "stopping a Raft group failed");
        }
    }
}

/// How long a DeleteRecords waits for Raft to release the entries below its offset before the
/// deleter tries again.
const DELETE_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Carries out committed DeleteRecords entries on this replica: Raft releases the entries below
/// the offset (a snapshot, then a purge), then storage moves the log start. Ends with the
/// replica or its store.
async fn delete_records(replica: std::sync::Weak<Replica>, mut wanted: tokio::sync::watch::Receiver<u64>) {
    let mut done = 0;
    loop {
        let offset = *wanted.borrow_and_update();
        if offset > done {
            let Some(r) = replica.upgrade() else { return };
            let upto = r.reader.entry_start_at_or_below(offset);
            if r.release_below(upto, DELETE_RELEASE_WAIT).await {
                match r.reader.delete_records_before(upto) {
                    Ok(start) => {
                        done = offset;
                        tracing::info!(group = r.group.0, log_start = start, "deleted records");
                    }
                    Err(e) => tracing::warn!(group = r.group.0, offset, error = %e, "deleting records failed"),
                }
            }
            if done < offset {
                drop(r);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        if wanted.changed().await.is_err() {
            return;
        }
    }
}

/// A partition's apply hook: moves the high watermark to the end of each applied entry, answers
/// the producer of a data batch with its offsets (or the leader's refusal), and then calls
/// `on_commit` (the broker wakes its long-polling fetches).
pub(crate) struct PartitionHook {
    pub(crate) reader: LogReader,
    pub(crate) high_watermark: Arc<AtomicU64>,
    pub(crate) on_commit: Arc<dyn Fn() + Send + Sync>,
}

impl ApplyHook for PartitionHook {
    fn apply(&self, entry: &Entry) -> Applied {
        // A stored batch carries its offsets; only Raft's own entries need the log's index.
        let view = match &entry.payload {
            EntryPayload::Normal(KafkaBatch(b)) => BatchView::new(b).ok(),
            _ => None,
        };
        let end = match &view {
            Some(v) => Some(v.last_offset() as u64 + 1),
            None => self.reader.end_offset_of(entry.log_id.index()),
        };
        if let Some(end) = end {
            self.high_watermark.fetch_max(end, Ordering::AcqRel);
        }
        if let EntryPayload::Normal(KafkaBatch(b)) = &entry.payload
            && let Some(offset) = delete_records_offset(b)
        {
            self.reader.request_deletion(offset);
        }
        let applied = match (&entry.payload, view) {
            (EntryPayload::Normal(KafkaBatch(b)), Some(v)) => match Refusal::of(b) {
                Some(r) => Applied::Refused(r),
                None => Applied::Batch { base_offset: v.base_offset() as u64, last_offset: v.last_offset() as u64 },
            },
            _ => Applied::Nothing,
        };
        (self.on_commit)();
        applied
    }

    fn restored(&self, next_offset: u64) {
        self.high_watermark.fetch_max(next_offset, Ordering::AcqRel);
    }
}
