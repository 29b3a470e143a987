//! openraft's network over the internal RPC: the outgoing adapter (`RaftNetworkFactory`/`RaftNetworkV2`) and the incoming router from `GroupId` to the local Raft instance.
//!
//! - **Outgoing.** [`RpcNetworkFactory`] belongs to one Raft group ([`GroupId`]); each client it
//!   makes calls [`Rpc::call`] to one target with the group's id, a [`MessageKind`] per RPC type
//!   (see the `KIND_*` constants) and a payload encoded by [`super::codec`], with openraft's
//!   hard TTL as the timeout. Transport failures become openraft errors it retries: a down or
//!   busy peer, a lost connection or a remote "no such group" is `Unreachable` (openraft backs
//!   off), a timeout is `Timeout`, a malformed answer is `NetworkError`.
//! - **Incoming.** [`RaftRouter`] is the transport's [`Handler`]: it finds the group's Raft
//!   instance in its registry, decodes the request, calls the instance and answers with the
//!   encoded response; an unknown group is answered with `STATUS_NO_GROUP`, an instance that
//!   refuses (shut down) with `STATUS_RAFT_ERROR`, an undecodable request with no answer at all
//!   (the caller times out or sees `NoAnswer`).
//! - **Snapshots** go whole in one [`KIND_SNAPSHOT`] message: a partition snapshot is metadata
//!   only (see [`super::state_machine`]), sent to a follower that needs entries the leader has
//!   purged after retention.
//! - TransferLeader keeps openraft's default (unsupported); leader balancing is item 4.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::impls::BasicNode;
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Raft};
use parking_lot::RwLock;

use super::codec::{self, DecodeError, STATUS_NO_GROUP, STATUS_OK, STATUS_RAFT_ERROR};
use super::state_machine::{PartitionStateMachine, Snapshot, SnapshotData};
use super::{TypeConfig, Vote};
use crate::rpc::{GroupId, Handler, HandlerFuture, MessageKind, NodeId, Rpc, RpcError};

/// AppendEntries (and heartbeats, which are empty AppendEntries).
pub(crate) const KIND_APPEND: MessageKind = MessageKind(1);
pub(crate) const KIND_VOTE: MessageKind = MessageKind(2);
pub(crate) const KIND_PRE_VOTE: MessageKind = MessageKind(3);
/// A whole snapshot (InstallSnapshot).
pub(crate) const KIND_SNAPSHOT: MessageKind = MessageKind(4);
pub(crate) const KIND_TRANSFER: MessageKind = MessageKind(5);

/// The Raft instance of a partition group.
pub(crate) type PartitionRaft = Raft<TypeConfig, PartitionStateMachine>;

type RpcErr = RPCError<TypeConfig>;

/// Makes openraft's clients for one Raft group over this node's transport.
#[derive(Clone)]
pub(crate) struct RpcNetworkFactory {
    rpc: Rpc,
    group: GroupId,
}

impl RpcNetworkFactory {
    pub(crate) fn new(rpc: Rpc, group: GroupId) -> RpcNetworkFactory {
        RpcNetworkFactory { rpc, group }
    }
}

impl RaftNetworkFactory<TypeConfig> for RpcNetworkFactory {
    type Network = RpcNetwork;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> RpcNetwork {
        // The address in the membership is informational: the transport dials from its own peer
        // list, so a node's address lives in one place.
        RpcNetwork { rpc: self.rpc.clone(), group: self.group, target }
    }
}

/// openraft's client for one (group, target) pair; cheap, it holds no connection of its own.
pub(crate) struct RpcNetwork {
    rpc: Rpc,
    group: GroupId,
    target: NodeId,
}

impl RpcNetwork {
    /// One call: the body of a `STATUS_OK` answer, or the openraft error to retry with.
    async fn call(
        &self,
        kind: MessageKind,
        action: RPCTypes,
        payload: Bytes,
        option: &RPCOption,
    ) -> Result<Bytes, RpcErr> {
        let timeout = option.hard_ttl();
        let answer = self.rpc.call(self.target, self.group, kind, payload, timeout).await.map_err(|e| match e {
            RpcError::Timeout(_) => {
                RPCError::Timeout(Timeout { action, id: self.rpc.node_id(), target: self.target, timeout })
            }
            RpcError::TooLarge { .. } | RpcError::NoAnswer(_) => RPCError::Network(NetworkError::new(&e)),
            RpcError::UnknownPeer(_)
            | RpcError::PeerUnavailable(_)
            | RpcError::QueueFull(_)
            | RpcError::ConnectionLost(_)
            | RpcError::Shutdown => RPCError::Unreachable(Unreachable::new(&e)),
        })?;
        let (status, body) = codec::split_status(answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        match status {
            STATUS_OK => Ok(body),
            STATUS_NO_GROUP => Err(RPCError::Unreachable(Unreachable::from_string(format!(
                "node {} has no Raft group {}",
                self.target, self.group.0
            )))),
            STATUS_RAFT_ERROR => Err(RPCError::Unreachable(Unreachable::from_string(format!(
                "the Raft instance of group {} on node {} refused the request",
                self.group.0, self.target
            )))),
            _ => Err(RPCError::Network(NetworkError::from_string(format!("unknown response status {status}")))),
        }
    }
}

fn decode_err(e: DecodeError) -> RpcErr {
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetworkV2<TypeConfig> for RpcNetwork {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcErr> {
        let body = self.call(KIND_APPEND, RPCTypes::AppendEntries, codec::encode_append_request(&rpc), &option).await?;
        codec::decode_append_response(body).map_err(decode_err)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        let body = self.call(KIND_VOTE, RPCTypes::Vote, codec::encode_vote_request(&rpc), &option).await?;
        codec::decode_vote_response(body).map_err(decode_err)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        let body = self.call(KIND_PRE_VOTE, RPCTypes::Vote, codec::encode_vote_request(&rpc), &option).await?;
        codec::decode_vote_response(body).map_err(decode_err)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcErr> {
        let body =
            self.call(KIND_TRANSFER, RPCTypes::TransferLeader, codec::encode_transfer_request(&req), &option).await?;
        codec::decode_transfer_response(body).map_err(decode_err)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let payload = codec::encode_snapshot_request(&vote, &snapshot);
        let body = self.call(KIND_SNAPSHOT, RPCTypes::InstallSnapshot, payload, &option).await?;
        codec::decode_snapshot_response(body).map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }
}

/// The registry of this node's Raft instances and the transport's handler: routes each incoming
/// message by its group to the instance, answers with the encoded response.
#[derive(Default)]
pub(crate) struct RaftRouter {
    groups: RwLock<HashMap<GroupId, PartitionRaft>>,
    /// Handlers of message kinds other than Raft's own (the metadata group's forwarded
    /// proposals), whatever group they name.
    services: RwLock<HashMap<MessageKind, Arc<dyn Handler>>>,
    /// When each group last received an AppendEntries (a leader's write or heartbeat).
    last_append: parking_lot::Mutex<HashMap<GroupId, std::time::Instant>>,
}

impl RaftRouter {
    pub(crate) fn new() -> Arc<RaftRouter> {
        Arc::new(RaftRouter::default())
    }

    /// Routes `group`'s messages to `raft` from now on (replacing an earlier instance).
    pub(crate) fn register(&self, group: GroupId, raft: PartitionRaft) {
        self.groups.write().insert(group, raft);
    }

    /// Stops routing to `group`; its messages are answered "no such group".
    pub(crate) fn unregister(&self, group: GroupId) -> Option<PartitionRaft> {
        self.groups.write().remove(&group)
    }

    /// Hands every message of `kind` to `handler` from now on.
    pub(crate) fn register_service(&self, kind: MessageKind, handler: Arc<dyn Handler>) {
        self.services.write().insert(kind, handler);
    }

    /// How long ago `group` last received an AppendEntries here, if ever.
    pub(crate) fn since_append(&self, group: GroupId) -> Option<std::time::Duration> {
        self.last_append.lock().get(&group).map(|t| t.elapsed())
    }

    fn get(&self, group: GroupId) -> Option<PartitionRaft> {
        self.groups.read().get(&group).cloned()
    }
}

/// The handler's answer to a request it could decode.
async fn dispatch(raft: PartitionRaft, kind: MessageKind, payload: Bytes) -> Result<Option<Bytes>, DecodeError> {
    let raft_error = || Some(codec::encode_status(STATUS_RAFT_ERROR));
    Ok(match kind {
        KIND_APPEND => {
            let req = codec::decode_append_request(payload)?;
            match raft.append_entries(req).await {
                Ok(resp) => Some(codec::encode_append_response(&resp)),
                Err(_) => raft_error(),
            }
        }
        KIND_VOTE | KIND_PRE_VOTE => {
            let req = codec::decode_vote_request(payload)?;
            let resp = if kind == KIND_VOTE { raft.vote(req).await } else { raft.pre_vote(req).await };
            match resp {
                Ok(resp) => Some(codec::encode_vote_response(&resp)),
                Err(_) => raft_error(),
            }
        }
        KIND_SNAPSHOT => {
            let (vote, snapshot) = codec::decode_snapshot_request(payload)?;
            match raft.install_full_snapshot(vote, snapshot).await {
                Ok(resp) => Some(codec::encode_snapshot_response(&resp)),
                Err(_) => raft_error(),
            }
        }
        KIND_TRANSFER => {
            let req = codec::decode_transfer_request(payload)?;
            match raft.handle_transfer_leader(req).await {
                Ok(resp) => Some(codec::encode_transfer_response(&resp)),
                Err(_) => raft_error(),
            }
        }
        _ => None,
    })
}

impl Handler for RaftRouter {
    fn handle(&self, from: NodeId, group: GroupId, kind: MessageKind, payload: Bytes) -> HandlerFuture {
        let service = self.services.read().get(&kind).cloned();
        if let Some(service) = service {
            return service.handle(from, group, kind, payload);
        }
        let Some(raft) = self.get(group) else {
            return Box::pin(async { Some(codec::encode_status(STATUS_NO_GROUP)) });
        };
        if kind == KIND_APPEND {
            self.last_append.lock().insert(group, std::time::Instant::now());
        }
        Box::pin(async move {
            match dispatch(raft, kind, payload).await {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::warn!(from, group = group.0, kind = kind.0, error = %e, "dropping a malformed Raft message");
                    None
                }
            }
        })
    }
}
