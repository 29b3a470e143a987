//! Raft for partitions (issue 5): openraft's type configuration and its log storage on the segment store.
//!
//! Decision 2 of DESIGN.md: one Raft group per partition, and the partition log *is* the Raft
//! log. This module is the only place that names openraft; everything else in the broker will
//! talk to it through the types here.
//!
//! How a Raft log maps onto a Kafka partition log ([`log_store`] holds the details):
//! - **One entry is one record batch.** A normal entry's payload is the batch ([`KafkaBatch`]),
//!   with the `baseOffset` the leader assigned already in it; the store refuses a batch whose
//!   offset is not the log end, so leader and followers hold the same offsets with no
//!   translation layer. openraft's blank and membership entries are control batches (producer
//!   id -1, not transactional) with Creek's control record types [`log_store::CONTROL_TYPE_BLANK`]
//!   and [`log_store::CONTROL_TYPE_MEMBERSHIP`]; like a transaction marker each takes one offset and
//!   consumers skip it.
//! - **Term = `partitionLeaderEpoch`.** The leader id is openraft's `leader_id_std` (a committed
//!   leader is just its term), so a batch header carries the whole log id but the index.
//! - **Index = ordinal.** Raft index `first_index + k` is the `k`-th batch at or after the Kafka
//!   offset where the Raft log starts (`raft-log-start.state`, rewritten durably on purge). An
//!   in-memory index (base offset and term per entry) is rebuilt on open by reading the batch
//!   headers from there; a per-segment sidecar replaces that scan in a later increment.
//! - **Purge moves only the Raft log start.** The batches stay readable by Kafka consumers until
//!   retention deletes them. Compaction, retention and DeleteRecords stay below the Raft log
//!   start (the purged point; storage's retention floor, set by the log store): entries below it
//!   are never needed by openraft again. Opening a log whose Kafka log start has passed the Raft
//!   log start is refused.
//! - **Durability (decision 5).** `append` writes the batches and returns; a per-store flusher
//!   task fsyncs (one fsync for every append queued behind it: group commit) and only then
//!   signals openraft's `IOFlushed`. The vote is a state file written durably before
//!   `save_vote` returns; truncation and purge are durable before they return.

//!
//! A partition group runs over the internal RPC ([`network`]): one [`crate::rpc::GroupId`] per
//! group, one [`crate::rpc::MessageKind`] per RPC type, messages in Creek's own binary encoding
//! ([`codec`]), and a [`network::RaftRouter`] that routes incoming messages to the local instance
//! of their group. The state machine ([`state_machine`]) only records the applied log id and the
//! membership: the log is the data. Timing is [`partition_config`].
//!
//! Snapshots ([`state_machine`]) are metadata only and exist so that retention can delete a
//! replicated log's oldest segments: a replica that needs purged entries installs one, and its
//! log restarts empty at the snapshot's Kafka offset. Not built yet: the per-segment sidecar
//! index.

#[cfg(test)]
mod cluster_tests;
pub(crate) mod codec;
pub(crate) mod internal_topic;
pub(crate) mod log_store;
pub(crate) mod metadata;
pub(crate) mod network;
pub(crate) mod replica;
pub(crate) mod state_machine;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use creek_protocol::batch::BatchView;

openraft::declare_raft_types!(
    /// Creek's openraft configuration: node ids are broker ids, terms are leader epochs.
    pub(crate) TypeConfig:
        D = KafkaBatch,
        R = Applied,
        NodeId = u64,
        Node = openraft::impls::BasicNode,
        Term = u64,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

pub(crate) type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub(crate) type RaftLogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub(crate) type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;

/// Heartbeat (an empty AppendEntries from the leader to each follower) every this many ms.
pub(crate) const HEARTBEAT_INTERVAL_MS: u64 = 100;
/// A follower that hears no leader for a random time in this range (ms) starts an election.
/// Three to six heartbeats. openraft's leader lease is the upper bound (a voter refuses to vote
/// for that long after the leader's last heartbeat), so a dead leader is replaced after about
/// 0.6–1 s, which leaves clients most of the 2 s failover budget; a busy machine losing a
/// heartbeat or two still does not depose a live leader.
pub(crate) const ELECTION_TIMEOUT_MS: (u64, u64) = (300, 600);

/// openraft's configuration of a partition group: the timing above, Pre-Vote, no snapshots (the
/// log is the data, see [`state_machine`]), and at most 64 entries (batches) per AppendEntries so that a
/// message stays far below the transport's 16 MiB frame limit for ordinary batch sizes.
pub(crate) fn partition_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "creek-partition".to_string(),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: ELECTION_TIMEOUT_MS.0,
        election_timeout_max: ELECTION_TIMEOUT_MS.1,
        max_payload_entries: 64,
        // Snapshots only when retention asks for one (see `state_machine`); the entries behind
        // one are purged at once, since retention wants their segments gone.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        // A node that was cut off or restarted asks before it campaigns, so it cannot depose a
        // live leader by bumping the term.
        enable_pre_vote: Some(true),
        // A node restarted with an empty data directory rejoins as itself: its leader sees the
        // follower's log go back to nothing and sends it everything again, instead of stopping.
        // (Such a node has also forgotten its vote; see the issue-5 notes in ARCHITECTURE.md.)
        allow_log_reversion: Some(true),
        ..openraft::Config::default()
    };
    Arc::new(config.validate().expect("the partition Raft configuration is valid"))
}

/// What applying one entry produced, handed to whoever proposed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Nothing to report (Raft's own entries; groups without an apply hook).
    #[default]
    Nothing,
    /// A data batch is committed at these offsets.
    Batch { base_offset: u64, last_offset: u64 },
    /// The leader refused the batch (its producer is answered with this).
    Refused(log_store::Refusal),
    /// A metadata command was applied, or refused with this message.
    Meta(Result<(), String>),
}

/// A normal Raft entry's payload: one whole RecordBatch v2, `baseOffset` already stamped by the
/// leader. Cloning is cheap (shared bytes, zero-copy from the segment map when read back).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct KafkaBatch(pub(crate) Bytes);

impl fmt::Debug for KafkaBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for KafkaBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match BatchView::new(&self.0) {
            Ok(v) => write!(f, "batch(offsets {}..={}, {} bytes)", v.base_offset(), v.last_offset(), self.0.len()),
            Err(_) => write!(f, "batch(invalid, {} bytes)", self.0.len()),
        }
    }
}
