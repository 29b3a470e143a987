//! Creek's compact binary encoding of openraft's RPC messages (AppendEntries, Vote), pure: no I/O, no openraft state.
//!
//! Everything is big-endian and fixed-width; no serde. Building blocks:
//! - vote: u64 term, u64 voted-for node, u8 committed (0/1): 17 bytes.
//! - optional log id: u8 0 (none) or 1 then u64 term, u64 index.
//! - entry: u64 term, u64 index, u8 payload kind (0 blank, 1 normal, 2 membership); normal and
//!   membership then carry u32 length and that many bytes: the whole record batch, or the
//!   membership value of `log_store::encode_membership`.
//!
//! Messages:
//! - AppendEntries request: vote, prev log id, leader commit, u32 entry count, entries.
//! - AppendEntries response: u8 0 success, 1 partial success + optional log id, 2 conflict,
//!   3 higher vote + vote.
//! - Vote (and PreVote) request: vote, last log id, u8 leadership transfer.
//! - Vote response: vote, u8 granted, last log id.
//! - Snapshot (a partition snapshot is metadata only, so one message carries it whole): vote,
//!   last log id, membership log id, u32 length and the membership value, u64 next Kafka offset.
//!   Response: vote.
//!
//! Every response payload starts with a status byte ([`STATUS_OK`], [`STATUS_NO_GROUP`],
//! [`STATUS_RAFT_ERROR`]); only `STATUS_OK` is followed by a body.
//!
//! Copies: encoding copies each batch once into the request (the transport takes one `Bytes`);
//! decoding does not copy: a normal entry's batch is a slice of the received frame.
//!
//! Decoding hostile bytes never panics and never allocates from a wire count: counts are checked
//! against the bytes left, and trailing bytes are an error.

use bytes::{BufMut, Bytes, BytesMut};
use openraft::vote::RaftVote;
use openraft::vote::leader_id_std::LeaderId;
use openraft::{EntryPayload, LogId};

use super::log_store::{decode_membership, encode_membership};
use super::state_machine::{Snapshot, SnapshotData};
use super::{Entry, KafkaBatch, RaftLogId, TypeConfig, Vote};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderError, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, StoredMembershipOf};

/// The response body follows.
pub(crate) const STATUS_OK: u8 = 0;
/// This node runs no Raft instance for the message's group.
pub(crate) const STATUS_NO_GROUP: u8 = 1;
/// The local Raft instance refused the request (shut down or fatal).
pub(crate) const STATUS_RAFT_ERROR: u8 = 2;

const VOTE_BYTES: usize = 17;
/// The smallest encoded entry (a blank): log id and kind.
const ENTRY_BYTES_MIN: usize = 17;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed Raft message: {0}")]
pub(crate) struct DecodeError(&'static str);

type Result<T> = std::result::Result<T, DecodeError>;

/// A cursor over received bytes; every read is bounds-checked.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes> {
        if self.buf.len() < n {
            return Err(DecodeError("truncated"));
        }
        Ok(self.buf.split_to(n))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?[..].try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?[..].try_into().expect("8 bytes")))
    }

    fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError("bad flag")),
        }
    }

    fn vote(&mut self) -> Result<Vote> {
        let term = self.u64()?;
        let voted_for = self.u64()?;
        Ok(Vote::from_leader_id(LeaderId { term, voted_for }, self.bool()?))
    }

    fn log_id(&mut self) -> Result<Option<RaftLogId>> {
        if !self.bool()? {
            return Ok(None);
        }
        let term = self.u64()?;
        Ok(Some(LogId::new_term_index(term, self.u64()?)))
    }

    fn entry(&mut self) -> Result<Entry> {
        let term = self.u64()?;
        let log_id = LogId::new_term_index(term, self.u64()?);
        let payload = match self.u8()? {
            0 => EntryPayload::Blank,
            1 => {
                let len = self.u32()? as usize;
                EntryPayload::Normal(KafkaBatch(self.take(len)?))
            }
            2 => {
                let len = self.u32()? as usize;
                let value = self.take(len)?;
                EntryPayload::Membership(decode_membership(&value).map_err(|_| DecodeError("bad membership"))?)
            }
            _ => return Err(DecodeError("unknown entry kind")),
        };
        Ok(Entry { log_id, payload })
    }

    fn finish<T>(self, value: T) -> Result<T> {
        if self.buf.is_empty() { Ok(value) } else { Err(DecodeError("trailing bytes")) }
    }
}

fn put_vote(out: &mut BytesMut, vote: &Vote) {
    out.put_u64(vote.leader_id.term);
    out.put_u64(vote.leader_id.voted_for);
    out.put_u8(u8::from(vote.is_committed()));
}

fn put_log_id(out: &mut BytesMut, id: &Option<RaftLogId>) {
    match id {
        None => out.put_u8(0),
        Some(id) => {
            out.put_u8(1);
            out.put_u64(id.committed_leader_id().term);
            out.put_u64(id.index());
        }
    }
}

fn put_entry(out: &mut BytesMut, entry: &Entry) {
    out.put_u64(entry.log_id.committed_leader_id().term);
    out.put_u64(entry.log_id.index());
    match &entry.payload {
        EntryPayload::Blank => out.put_u8(0),
        EntryPayload::Normal(KafkaBatch(b)) => {
            out.put_u8(1);
            out.put_u32(b.len() as u32);
            out.extend_from_slice(b);
        }
        EntryPayload::Membership(m) => {
            let value = encode_membership(m);
            out.put_u8(2);
            out.put_u32(value.len() as u32);
            out.extend_from_slice(&value);
        }
    }
}

fn entry_len(entry: &Entry) -> usize {
    ENTRY_BYTES_MIN
        + match &entry.payload {
            EntryPayload::Blank => 0,
            EntryPayload::Normal(KafkaBatch(b)) => 4 + b.len(),
            EntryPayload::Membership(_) => 4 + 256,
        }
}

pub(crate) fn encode_append_request(req: &AppendEntriesRequest<TypeConfig>) -> Bytes {
    let len = VOTE_BYTES + 2 * 17 + 4 + req.entries.iter().map(entry_len).sum::<usize>();
    let mut out = BytesMut::with_capacity(len);
    put_vote(&mut out, &req.vote);
    put_log_id(&mut out, &req.prev_log_id);
    put_log_id(&mut out, &req.leader_commit);
    out.put_u32(req.entries.len() as u32);
    for e in &req.entries {
        put_entry(&mut out, e);
    }
    out.freeze()
}

pub(crate) fn decode_append_request(buf: Bytes) -> Result<AppendEntriesRequest<TypeConfig>> {
    let mut r = Reader { buf };
    let vote = r.vote()?;
    let prev_log_id = r.log_id()?;
    let leader_commit = r.log_id()?;
    let count = r.u32()? as usize;
    if count > r.buf.len() / ENTRY_BYTES_MIN {
        return Err(DecodeError("entry count exceeds the bytes present"));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        entries.push(r.entry()?);
    }
    r.finish(AppendEntriesRequest { vote, prev_log_id, entries, leader_commit })
}

pub(crate) fn encode_append_response(resp: &AppendEntriesResponse<TypeConfig>) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + 1 + VOTE_BYTES + 17);
    out.put_u8(STATUS_OK);
    match resp {
        AppendEntriesResponse::Success => out.put_u8(0),
        AppendEntriesResponse::PartialSuccess(id) => {
            out.put_u8(1);
            put_log_id(&mut out, id);
        }
        AppendEntriesResponse::Conflict => out.put_u8(2),
        AppendEntriesResponse::HigherVote(v) => {
            out.put_u8(3);
            put_vote(&mut out, v);
        }
    }
    out.freeze()
}

/// Decodes a response body (after the status byte: see [`split_status`]).
pub(crate) fn decode_append_response(buf: Bytes) -> Result<AppendEntriesResponse<TypeConfig>> {
    let mut r = Reader { buf };
    let resp = match r.u8()? {
        0 => AppendEntriesResponse::Success,
        1 => AppendEntriesResponse::PartialSuccess(r.log_id()?),
        2 => AppendEntriesResponse::Conflict,
        3 => AppendEntriesResponse::HigherVote(r.vote()?),
        _ => return Err(DecodeError("unknown AppendEntries response")),
    };
    r.finish(resp)
}

pub(crate) fn encode_vote_request(req: &VoteRequest<TypeConfig>) -> Bytes {
    let mut out = BytesMut::with_capacity(VOTE_BYTES + 17 + 1);
    put_vote(&mut out, &req.vote);
    put_log_id(&mut out, &req.last_log_id);
    out.put_u8(u8::from(req.leadership_transfer));
    out.freeze()
}

pub(crate) fn decode_vote_request(buf: Bytes) -> Result<VoteRequest<TypeConfig>> {
    let mut r = Reader { buf };
    let mut req = VoteRequest::new(r.vote()?, r.log_id()?);
    req.leadership_transfer = r.bool()?;
    r.finish(req)
}

pub(crate) fn encode_vote_response(resp: &VoteResponse<TypeConfig>) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + VOTE_BYTES + 1 + 17);
    out.put_u8(STATUS_OK);
    put_vote(&mut out, &resp.vote);
    out.put_u8(u8::from(resp.vote_granted));
    put_log_id(&mut out, &resp.last_log_id);
    out.freeze()
}

pub(crate) fn decode_vote_response(buf: Bytes) -> Result<VoteResponse<TypeConfig>> {
    let mut r = Reader { buf };
    let vote = r.vote()?;
    let granted = r.bool()?;
    let last_log_id = r.log_id()?;
    r.finish(VoteResponse::new(vote, last_log_id, granted))
}

/// TransferLeader (the leader asks a caught-up voter to campaign now): the leader's vote, the
/// target node, the leader's last log id.
pub(crate) fn encode_transfer_request(req: &TransferLeaderRequest<TypeConfig>) -> Bytes {
    let mut out = BytesMut::with_capacity(VOTE_BYTES + 8 + 17);
    put_vote(&mut out, req.from_leader());
    out.put_u64(*req.to_node_id());
    put_log_id(&mut out, &req.last_log_id().copied());
    out.freeze()
}

pub(crate) fn decode_transfer_request(buf: Bytes) -> Result<TransferLeaderRequest<TypeConfig>> {
    let mut r = Reader { buf };
    let (vote, to, last) = (r.vote()?, r.u64()?, r.log_id()?);
    r.finish(TransferLeaderRequest::new(vote, to, last))
}

/// The target's answer: status ok, then 0 (accepted), 1 and two votes (the vote changed), or 2
/// and two log ids (the target has not flushed the leader's log yet).
pub(crate) fn encode_transfer_response(resp: &TransferLeaderResponse<TypeConfig>) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + 1 + 2 * VOTE_BYTES.max(17));
    out.put_u8(STATUS_OK);
    match resp {
        Ok(()) => out.put_u8(0),
        Err(TransferLeaderError::VoteChanged { expected, actual }) => {
            out.put_u8(1);
            put_vote(&mut out, expected);
            put_vote(&mut out, actual);
        }
        Err(TransferLeaderError::LogNotFlushed { expected, actual }) => {
            out.put_u8(2);
            put_log_id(&mut out, expected);
            put_log_id(&mut out, actual);
        }
    }
    out.freeze()
}

pub(crate) fn decode_transfer_response(buf: Bytes) -> Result<TransferLeaderResponse<TypeConfig>> {
    let mut r = Reader { buf };
    let resp = match r.u8()? {
        0 => Ok(()),
        1 => Err(TransferLeaderError::VoteChanged { expected: r.vote()?, actual: r.vote()? }),
        2 => Err(TransferLeaderError::LogNotFlushed { expected: r.log_id()?, actual: r.log_id()? }),
        _ => return Err(DecodeError("unknown transfer-leader answer")),
    };
    r.finish(resp)
}

/// A whole partition snapshot from the leader (see the module docs).
pub(crate) fn encode_snapshot_request(vote: &Vote, snapshot: &Snapshot) -> Bytes {
    let membership = encode_membership(snapshot.meta.last_membership.membership());
    let mut out = BytesMut::with_capacity(VOTE_BYTES + 2 * 17 + 4 + membership.len() + 8);
    put_vote(&mut out, vote);
    put_log_id(&mut out, &snapshot.meta.last_log_id);
    put_log_id(&mut out, snapshot.meta.last_membership.log_id());
    out.put_u32(membership.len() as u32);
    out.extend_from_slice(&membership);
    out.put_u64(snapshot.snapshot.next_offset);
    out.freeze()
}

pub(crate) fn decode_snapshot_request(buf: Bytes) -> Result<(Vote, Snapshot)> {
    let mut r = Reader { buf };
    let vote = r.vote()?;
    let last_log_id = r.log_id()?;
    let membership_id = r.log_id()?;
    let len = r.u32()? as usize;
    let value = r.take(len)?;
    let membership = decode_membership(&value).map_err(|_| DecodeError("bad membership"))?;
    let next_offset = r.u64()?;
    if last_log_id.is_none() {
        return Err(DecodeError("a snapshot without a last log id"));
    }
    let meta = SnapshotMetaOf::<TypeConfig> {
        last_log_id,
        last_membership: StoredMembershipOf::<TypeConfig>::new(membership_id, membership),
    };
    r.finish((vote, Snapshot { meta, snapshot: SnapshotData { next_offset } }))
}

pub(crate) fn encode_snapshot_response(resp: &SnapshotResponse<TypeConfig>) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + VOTE_BYTES);
    out.put_u8(STATUS_OK);
    put_vote(&mut out, &resp.vote);
    out.freeze()
}

pub(crate) fn decode_snapshot_response(buf: Bytes) -> Result<SnapshotResponse<TypeConfig>> {
    let mut r = Reader { buf };
    let vote = r.vote()?;
    r.finish(SnapshotResponse::new(vote))
}

/// A response that carries only a status (no group, Raft error).
pub(crate) fn encode_status(status: u8) -> Bytes {
    Bytes::copy_from_slice(&[status])
}

/// Splits a response into its status byte and body.
pub(crate) fn split_status(mut buf: Bytes) -> Result<(u8, Bytes)> {
    if buf.is_empty() {
        return Err(DecodeError("empty response"));
    }
    let status = buf.split_to(1)[0];
    Ok((status, buf))
}
