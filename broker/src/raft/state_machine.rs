//! The partition group's state machine: it records how far the log is applied and the membership, because the log itself is the data.
//!
//! A partition's "state" is its log: a committed batch is readable by consumers from the segment
//! files (below the high watermark), so applying an entry changes nothing but the applied log id
//! and, for a membership entry, the membership.
//!
//! **Snapshots** exist so that retention can delete the oldest segments of a replicated log
//! (openraft may then purge their entries; see [`super::log_store::StoredSnapshot`]). A snapshot
//! holds no data: its meta (last log id, membership then) and the Kafka offset after its last
//! entry. Only the cluster's retention asks for one, at a chosen entry
//! ([`PartitionStateMachine::request_snapshot`]): openraft's own policy never builds one
//! (`SnapshotPolicy::Never`), and a build nobody requested is refused. A follower too far behind
//! for the leader's log installs the snapshot: its log restarts empty at the snapshot's offset and
//! continues with the entries after it, so it holds what the leader's retention kept.
//!
//! The applied state is in memory and starts at the stored snapshot: after a restart openraft
//! re-applies committed entries from there, which costs a read of their headers and nothing
//! else.

use std::io;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend};
use parking_lot::Mutex;

use super::log_store::{LogReader, StoredSnapshot};
use super::{Applied, Entry, RaftLogId, TypeConfig};

/// A partition snapshot's data: the Kafka offset after its last entry (where a replica that
/// installs it continues).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapshotData {
    pub(crate) next_offset: u64,
}

pub(crate) type Snapshot = SnapshotOf<TypeConfig, SnapshotData>;
type SnapshotMeta = SnapshotMetaOf<TypeConfig>;
type StoredMembership = StoredMembershipOf<TypeConfig>;

/// What a group does with each committed entry beyond recording it: a partition moves its high
/// watermark and answers the producer; the metadata group applies the command. Called in log
/// order, on openraft's state-machine task; it must not block for long.
pub(crate) trait ApplyHook: Send + Sync + 'static {
    fn apply(&self, entry: &Entry) -> Applied;

    /// Everything below `next_offset` is committed: a snapshot up to there was loaded or
    /// installed.
    fn restored(&self, _next_offset: u64) {}
}

/// The applied position and membership of one partition group. Cloning shares it.
#[derive(Clone)]
pub(crate) struct PartitionStateMachine {
    inner: Arc<Mutex<AppliedState>>,
    hook: Option<Arc<dyn ApplyHook>>,
    reader: LogReader,
}

#[derive(Default)]
struct AppliedState {
    last_applied: Option<RaftLogId>,
    membership: StoredMembership,
    /// Membership entries applied after the stored snapshot, oldest first (a snapshot at an
    /// earlier entry takes the membership in force there).
    memberships: Vec<StoredMembership>,
    /// Where the next snapshot is to be built: its last entry and the offset after it.
    requested: Option<(RaftLogId, u64)>,
}

impl PartitionStateMachine {
    /// The state machine of the log `reader` reads, starting from its stored snapshot if any.
    pub(crate) fn new(reader: LogReader, hook: Option<Arc<dyn ApplyHook>>) -> PartitionStateMachine {
        let mut state = AppliedState::default();
        if let Some(s) = reader.snapshot() {
            state.last_applied = s.meta.last_log_id;
            state.membership = s.meta.last_membership.clone();
            if let Some(h) = &hook {
                h.restored(s.next_offset);
            }
        }
        PartitionStateMachine { inner: Arc::new(Mutex::new(state)), hook, reader }
    }

    /// Asks for the next snapshot to end at `last` (applied already), whose entry ends at Kafka
    /// offset `next_offset`; openraft's trigger then builds it.
    pub(crate) fn request_snapshot(&self, last: RaftLogId, next_offset: u64) {
        self.inner.lock().requested = Some((last, next_offset));
    }

    /// The membership in force at entry `at`.
    fn membership_at(&self, at: &RaftLogId) -> StoredMembership {
        let s = self.inner.lock();
        if let Some(m) = s.memberships.iter().rev().find(|m| m.log_id().as_ref().is_some_and(|id| id <= at)) {
            return m.clone();
        }
        match self.reader.snapshot() {
            Some(snap) => snap.meta.last_membership,
            // Nothing applied after a snapshot changed the membership.
            None => s.membership.clone(),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for PartitionStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let requested = self.inner.lock().requested.take();
        let stored = match requested {
            Some((last, next_offset)) => {
                let meta = SnapshotMeta { last_log_id: Some(last), last_membership: self.membership_at(&last) };
                let stored = StoredSnapshot { meta, next_offset };
                let reader = self.reader.clone();
                let saved = stored.clone();
                tokio::task::spawn_blocking(move || reader.save_built_snapshot(saved))
                    .await
                    .map_err(io::Error::other)??;
                let mut s = self.inner.lock();
                s.memberships.retain(|m| m.log_id().as_ref().is_some_and(|id| *id > last));
                stored
            }
            // openraft builds one on start-up if entries are purged and no snapshot is stored,
            // which the store never lets happen (it saves the snapshot before any purge).
            None => self.reader.snapshot().ok_or_else(|| io::Error::other("no snapshot was requested"))?,
        };
        Ok(Snapshot { meta: stored.meta, snapshot: SnapshotData { next_offset: stored.next_offset } })
    }
}

impl RaftStateMachine<TypeConfig> for PartitionStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = PartitionStateMachine;

    async fn applied_state(&mut self) -> Result<(Option<RaftLogId>, StoredMembership), io::Error> {
        let s = self.inner.lock();
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            {
                let mut s = self.inner.lock();
                if let EntryPayload::Membership(m) = &entry.payload {
                    s.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    let m = s.membership.clone();
                    s.memberships.push(m);
                }
                s.last_applied = Some(entry.log_id);
            }
            let applied = match &self.hook {
                Some(hook) => hook.apply(&entry),
                None => Applied::Nothing,
            };
            if let Some(r) = responder {
                r.send(applied);
            }
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        (force || self.inner.lock().requested.is_some()).then(|| self.clone())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, data: SnapshotData) -> Result<(), io::Error> {
        let stored = StoredSnapshot { meta: meta.clone(), next_offset: data.next_offset };
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || reader.install_snapshot(stored)).await.map_err(io::Error::other)??;
        {
            let mut s = self.inner.lock();
            if s.last_applied < meta.last_log_id {
                s.last_applied = meta.last_log_id;
                s.membership = meta.last_membership.clone();
                s.memberships.clear();
            }
        }
        if let Some(h) = &self.hook {
            h.restored(data.next_offset);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self
            .reader
            .snapshot()
            .map(|s| Snapshot { meta: s.meta, snapshot: SnapshotData { next_offset: s.next_offset } }))
    }
}
