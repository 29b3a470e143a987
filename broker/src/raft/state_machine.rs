//! The partition group's state machine: it records how far the log is applied and the membership, because the log itself is the data.
//!
//! A partition's "state" is its log: a committed batch is readable by consumers from the segment
//! files (below the high watermark), so applying an entry changes nothing but the applied log id
//! and, for a membership entry, the membership. That is all a snapshot holds (metadata only,
//! `SnapshotData = ()`); snapshots are never built (`SnapshotPolicy::Never` in
//! [`super::partition_config`]) and never sent, so openraft never purges the log and a lagging
//! follower always catches up from log entries. Installing a snapshot for real (a wiped replica
//! starting at the leader's log start) is issue 5, item 5.
//!
//! The applied state is in memory: after a restart openraft re-applies committed entries from
//! the log, which costs a read of their headers and nothing else.

use std::io;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend};
use parking_lot::Mutex;

use super::{Applied, Entry, RaftLogId, TypeConfig};

type Snapshot = SnapshotOf<TypeConfig, ()>;
type SnapshotMeta = SnapshotMetaOf<TypeConfig>;
type StoredMembership = StoredMembershipOf<TypeConfig>;

/// What a group does with each committed entry beyond recording it: a partition moves its high
/// watermark and answers the producer; the metadata group applies the command. Called in log
/// order, on openraft's state-machine task; it must not block for long.
pub(crate) trait ApplyHook: Send + Sync + 'static {
    fn apply(&self, entry: &Entry) -> Applied;
}

/// The applied position and membership of one partition group. Cloning shares it.
#[derive(Clone, Default)]
pub(crate) struct PartitionStateMachine {
    inner: Arc<Mutex<AppliedState>>,
    hook: Option<Arc<dyn ApplyHook>>,
}

#[derive(Default)]
struct AppliedState {
    last_applied: Option<RaftLogId>,
    membership: StoredMembership,
    snapshot: Option<SnapshotMeta>,
}

impl PartitionStateMachine {
    pub(crate) fn with_hook(hook: Arc<dyn ApplyHook>) -> PartitionStateMachine {
        PartitionStateMachine { inner: Arc::default(), hook: Some(hook) }
    }

    fn meta(&self) -> SnapshotMeta {
        let s = self.inner.lock();
        SnapshotMeta { last_log_id: s.last_applied, last_membership: s.membership.clone() }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for PartitionStateMachine {
    type SnapshotData = ();

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let meta = self.meta();
        self.inner.lock().snapshot = Some(meta.clone());
        Ok(Snapshot { meta, snapshot: () })
    }
}

impl RaftStateMachine<TypeConfig> for PartitionStateMachine {
    type SnapshotData = ();
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

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, _snapshot: ()) -> Result<(), io::Error> {
        let mut s = self.inner.lock();
        s.last_applied = meta.last_log_id;
        s.membership = meta.last_membership.clone();
        s.snapshot = Some(meta.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.inner.lock().snapshot.clone().map(|meta| Snapshot { meta, snapshot: () }))
    }
}
