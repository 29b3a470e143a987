//! Multi-node tests of a partition Raft group over the internal RPC on 127.0.0.1: election, replication, failover, restart and catch-up; and the message codec on hostile bytes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use creek_protocol::batch::{BatchView, build_batch, set_base_offset};
use creek_storage::LogConfig;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::RPCError;
use openraft::impls::BasicNode;
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderError, TransferLeaderRequest,
    VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, StoredMembershipOf};
use openraft::vote::RaftVote;
use openraft::vote::leader_id_std::LeaderId;
use openraft::{EntryPayload, LogId, Membership, Raft, ServerState};
use tempfile::TempDir;

use super::codec::{self, STATUS_NO_GROUP};
use super::log_store::{LogReader, LogStore};
use super::network::{KIND_VOTE, PartitionRaft, RaftRouter, RpcNetworkFactory};
use super::state_machine::{PartitionStateMachine, Snapshot, SnapshotData};
use super::{ELECTION_TIMEOUT_MS, Entry, KafkaBatch, TypeConfig, Vote, partition_config};
use crate::rpc::{GroupId, Limits, NodeId, Rpc, RpcConfig};

const GROUP: GroupId = GroupId(7);

/// One broker of the test cluster: its transport, its Raft instance of [`GROUP`] and a reader of
/// its partition log.
struct Node {
    id: NodeId,
    rpc: Rpc,
    router: Arc<RaftRouter>,
    raft: PartitionRaft,
    log: LogReader,
    sm: PartitionStateMachine,
}

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let held: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap()).collect()
}

fn peers(addrs: &[SocketAddr]) -> Vec<(NodeId, String)> {
    addrs.iter().enumerate().map(|(i, a)| (i as NodeId + 1, a.to_string())).collect()
}

async fn start_node(id: NodeId, addrs: &[SocketAddr], dir: &Path) -> Node {
    let router = RaftRouter::new();
    let config = RpcConfig {
        node_id: id,
        cluster_id: "raft-test".into(),
        listen: addrs[id as usize - 1],
        peers: peers(addrs),
        limits: Limits::default(),
    };
    let rpc = Rpc::start(config, router.clone()).await.unwrap();
    let store = LogStore::open(dir, LogConfig::default()).unwrap();
    let log = store.reader();
    let network = RpcNetworkFactory::new(rpc.clone(), GROUP);
    let sm = PartitionStateMachine::new(log.clone(), None);
    let raft = Raft::new(id, partition_config(), network, store, sm.clone()).await.unwrap();
    router.register(GROUP, raft.clone());
    Node { id, rpc, router, raft, log, sm }
}

/// Stops a node as a crash would look to its peers (Raft and transport gone at once), and
/// waits until nothing holds its partition log any more, so its directory may be reopened.
async fn kill(node: Node) {
    let Node { id, rpc, router, raft, log, sm } = node;
    drop(sm); // it reads the log too
    router.unregister(GROUP);
    raft.shutdown().await.unwrap();
    rpc.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.is_sole_owner() {
        assert!(Instant::now() < deadline, "node {id}'s log is still held after shutdown");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until exactly one of `nodes` leads and has applied its own term's first entry (so its
/// log end is where its next proposal lands); returns its index in `nodes`.
async fn wait_leader(nodes: &[&Node], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let leaders: Vec<usize> = (0..nodes.len())
            .filter(|&i| {
                let m = nodes[i].raft.metrics().borrow_watched().clone();
                m.state == ServerState::Leader
                    && m.last_applied.is_some_and(|a| a.committed_leader_id().term == m.current_term)
            })
            .collect();
        if leaders.len() == 1 {
            return leaders[0];
        }
        assert!(Instant::now() < deadline, "no single leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The leader side of a Kafka write, reduced to its essentials: stamp the batch with the offset
/// where it will land (the leader's log end) and propose it to whichever of `nodes` leads,
/// trying again while leadership moves (a busy machine may delay a heartbeat past the lease).
/// Correct only with one proposal at a time.
async fn propose(nodes: &[&Node], seq: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = nodes[wait_leader(nodes, Duration::from_secs(10)).await];
        let offset = leader.log.log_end_offset();
        let values: Vec<Vec<u8>> = (0..3).map(|r| format!("batch-{seq}-record-{r}").into_bytes()).collect();
        let records: Vec<_> = values.iter().map(|v| (Some(&b"k"[..]), Some(v.as_slice()))).collect();
        let mut batch = build_batch(0, 1_700_000_000_000 + seq as i64, &records);
        set_base_offset(&mut batch, offset as i64);
        match leader.raft.client_write(KafkaBatch(Bytes::from(batch))).await {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "proposal {seq} to node {}: {e}", leader.id),
        }
    }
}

/// Every batch of a log, in order, read the way Kafka consumers read it.
fn batches(log: &LogReader) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let read = log.read(offset, 1 << 20).unwrap();
        let mut bytes = read.bytes;
        while !bytes.is_empty() {
            let len = BatchView::new(&bytes).unwrap().total_len();
            out.push(bytes.split_to(len));
        }
        offset = read.next_offset;
    }
    out
}

/// Waits until every node's log holds what `leader`'s holds, then checks they are identical.
async fn assert_replicas_identical(nodes: &[&Node], leader: &Node, data_batches: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let end = leader.log.log_end_offset();
    for n in nodes {
        while n.log.log_end_offset() != end {
            assert!(Instant::now() < deadline, "node {} stuck at {} of {end}", n.id, n.log.log_end_offset());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Byte for byte, Raft's own control batches included (built without a clock), from the
    // latest log start (a replica that installed a snapshot starts there).
    let start = nodes.iter().map(|n| n.log.log_start_offset()).max().unwrap_or(0);
    let from = |log: &LogReader| -> Vec<Bytes> {
        batches(log).into_iter().filter(|b| BatchView::new(b).unwrap().base_offset() as u64 >= start).collect()
    };
    let want = from(&leader.log);
    let data = batches(&leader.log).iter().filter(|b| !BatchView::new(b).unwrap().is_control()).count();
    assert_eq!(data, data_batches, "every proposed batch is in the leader's log once");
    for n in nodes {
        let got = from(&n.log);
        assert_eq!(got.len(), want.len(), "node {} batch count", n.id);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g == w, "node {} batch {i} differs from the leader's", n.id);
        }
    }
}

/// Three nodes on fresh directories, node 1 initializing the group with all three as voters: the
/// directories (kept alive), their paths, the nodes' addresses and the nodes.
async fn start_three() -> (Vec<TempDir>, Vec<PathBuf>, Vec<SocketAddr>, Vec<Option<Node>>) {
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let paths: Vec<PathBuf> = dirs.iter().map(|d| d.path().to_path_buf()).collect();
    let addrs = free_addrs(3);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(Some(start_node(id, &addrs, &paths[id as usize - 1]).await));
    }
    let members: BTreeMap<NodeId, BasicNode> =
        peers(&addrs).into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect();
    nodes[0].as_ref().unwrap().raft.initialize(members).await.unwrap();
    (dirs, paths, addrs, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_elect_replicate_fail_over_and_catch_up() {
    // Goal: a 3-voter partition group over real sockets elects a leader, commits 500 batches
    // identically on all replicas, survives the leader's death (a new leader within a few
    // seconds, more writes committed by the two left) and the dead node, restarted on its data
    // directory, catches up to the same log.
    let started = Instant::now();
    let (_dirs, paths, addrs, mut nodes) = start_three().await;

    let live: Vec<&Node> = nodes.iter().flatten().collect();
    let leader = wait_leader(&live, Duration::from_secs(10)).await;
    let leader_id = live[leader].id;
    for seq in 0..500 {
        propose(&live, seq).await;
    }
    assert_replicas_identical(&live, live[leader], 500).await;
    let replicated_at = started.elapsed();

    // An unknown group is answered "no such group", and the adapter maps it to Unreachable
    // (openraft backs off and retries).
    let other = live[(leader + 1) % 3];
    let answer = live[leader]
        .rpc
        .call(other.id, GroupId(999), KIND_VOTE, Bytes::from_static(b"junk"), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(&answer[..], &[STATUS_NO_GROUP]);
    let mut net = RpcNetworkFactory::new(live[leader].rpc.clone(), GroupId(999))
        .new_client(other.id, &BasicNode { addr: String::new() })
        .await;
    let vote = Vote::from_leader_id(LeaderId { term: 1, voted_for: 1 }, false);
    let err = net.vote(VoteRequest::new(vote, None), RPCOption::new(Duration::from_secs(2))).await.unwrap_err();
    assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");

    // Kill the leader; the other two elect a new one and keep committing.
    let old_index = leader_id as usize - 1;
    kill(nodes[old_index].take().unwrap()).await;
    let killed_at = Instant::now();
    let live: Vec<&Node> = nodes.iter().flatten().collect();
    let leader = wait_leader(&live, Duration::from_secs(5)).await;
    let failover = killed_at.elapsed();
    assert_ne!(live[leader].id, leader_id);
    for seq in 500..600 {
        propose(&live, seq).await;
    }
    assert_replicas_identical(&live, live[leader], 600).await;
    let (new_leader_id, term) = (live[leader].id, live[leader].raft.metrics().borrow_watched().current_term);

    // The old leader restarts on its data directory and catches up, without deposing the new
    // one (Pre-Vote).
    let restarted = start_node(leader_id, &addrs, &paths[old_index]).await;
    nodes[old_index] = Some(restarted);
    let live: Vec<&Node> = nodes.iter().flatten().collect();
    let leader = wait_leader(&live, Duration::from_secs(10)).await;
    propose(&live, 600).await;
    assert_replicas_identical(&live, live[leader], 601).await;
    assert_eq!((live[leader].id, live[leader].raft.metrics().borrow_watched().current_term), (new_leader_id, term));

    println!(
        "replicated 500 batches at {replicated_at:?}; new leader {failover:?} after the kill (election timeout \
         {ELECTION_TIMEOUT_MS:?} ms); total {:?}",
        started.elapsed()
    );
    for n in nodes.into_iter().flatten() {
        kill(n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_installs_the_leaders_snapshot_and_continues_from_its_offset() {
    // Goal: once every replica has snapshotted and purged its log below an offset (what
    // retention asks for), a follower restarted with an empty directory gets the snapshot, starts
    // its log there and ends byte-identical to the leader from there on; replicas that purged
    // open again after a restart and keep replicating.
    let (_dirs, paths, addrs, mut nodes) = start_three().await;
    let live: Vec<&Node> = nodes.iter().flatten().collect();
    let leader = wait_leader(&live, Duration::from_secs(10)).await;
    for seq in 0..200 {
        propose(&live, seq).await;
    }
    assert_replicas_identical(&live, live[leader], 200).await;
    let upto = live[leader].log.log_end_offset() / 2;
    let mut point = None;
    for n in &live {
        let (last, next) = n.log.snapshot_point(upto).unwrap();
        point = Some((last, next));
        n.sm.request_snapshot(last, next);
        n.raft.trigger().snapshot().await.unwrap();
    }
    let (last, next) = point.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in &live {
        while n.raft.metrics().borrow_watched().purged.is_none_or(|p| p < last) {
            assert!(Instant::now() < deadline, "node {} did not purge up to {last}", n.id);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(n.log.raft_start_offset(), next);
    }

    // Node 3 loses its disk: the leader no longer has the entries it needs, only the snapshot.
    let wiped = live.iter().position(|n| n.id != live[leader].id).unwrap();
    let wiped_id = live[wiped].id;
    kill(nodes[wiped_id as usize - 1].take().unwrap()).await;
    std::fs::remove_dir_all(&paths[wiped_id as usize - 1]).unwrap();
    std::fs::create_dir_all(&paths[wiped_id as usize - 1]).unwrap();
    nodes[wiped_id as usize - 1] = Some(start_node(wiped_id, &addrs, &paths[wiped_id as usize - 1]).await);
    let live: Vec<&Node> = nodes.iter().flatten().collect();
    let leader = wait_leader(&live, Duration::from_secs(10)).await;
    for seq in 200..220 {
        propose(&live, seq).await;
    }
    assert_replicas_identical(&live, live[leader], 220).await;
    let rejoined = live.iter().find(|n| n.id == wiped_id).unwrap();
    assert_eq!(rejoined.log.log_start_offset(), next, "the wiped replica starts at the snapshot");
    assert_eq!(rejoined.raft.metrics().borrow_watched().snapshot, Some(last));

    // Every node restarts on its directory (purged logs, stored snapshots) and goes on.
    for slot in nodes.iter_mut() {
        kill(slot.take().unwrap()).await;
    }
    for id in 1..=3 {
        nodes[id as usize - 1] = Some(start_node(id, &addrs, &paths[id as usize - 1]).await);
    }
    let live: Vec<&Node> = nodes.iter().flatten().collect();
    let leader = wait_leader(&live, Duration::from_secs(15)).await;
    propose(&live, 220).await;
    assert_replicas_identical(&live, live[leader], 221).await;
    for n in nodes.into_iter().flatten() {
        kill(n).await;
    }
}

fn sample_entries() -> Vec<Entry> {
    let nodes: BTreeMap<NodeId, BasicNode> =
        (1..=3).map(|id| (id, BasicNode { addr: format!("127.0.0.1:{}", 9000 + id) })).collect();
    let membership = Membership::new(vec![(1..=3).collect()], nodes).unwrap();
    let mut batch = build_batch(0, 1_700_000_000_000, &[(Some(&b"k"[..]), Some(&b"v"[..]))]);
    set_base_offset(&mut batch, 2);
    vec![
        Entry { log_id: LogId::new_term_index(3, 10), payload: EntryPayload::Blank },
        Entry { log_id: LogId::new_term_index(3, 11), payload: EntryPayload::Membership(membership) },
        Entry { log_id: LogId::new_term_index(3, 12), payload: EntryPayload::Normal(KafkaBatch(Bytes::from(batch))) },
    ]
}

/// Every prefix and every single-byte corruption of `encoded` decodes to an error or a value,
/// never a panic; every strict prefix is an error.
fn assert_hostile_bytes_are_safe<T>(encoded: &Bytes, decode: impl Fn(Bytes) -> Result<T, codec::DecodeError>) {
    for cut in 0..encoded.len() {
        assert!(decode(encoded.slice(..cut)).is_err(), "a prefix of {cut} bytes decoded");
    }
    for at in 0..encoded.len() {
        for flip in [0x01, 0x80, 0xff] {
            let mut bad = encoded.to_vec();
            bad[at] ^= flip;
            let _ = decode(Bytes::from(bad));
        }
    }
    let mut trailing = encoded.to_vec();
    trailing.push(0);
    assert!(decode(Bytes::from(trailing)).is_err(), "trailing bytes are refused");
}

#[test]
fn raft_messages_round_trip_and_hostile_bytes_never_panic() {
    // Goal: every message the adapter sends decodes to what was encoded (batches as zero-copy
    // slices of the received bytes), and damaged or hostile bytes are errors, not panics or
    // allocations sized by a wire count.
    let vote = Vote::from_leader_id(LeaderId { term: 3, voted_for: 2 }, true);
    let req = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(LogId::new_term_index(2, 9)),
        entries: sample_entries(),
        leader_commit: Some(LogId::new_term_index(2, 8)),
    };
    let encoded = codec::encode_append_request(&req);
    let decoded = codec::decode_append_request(encoded.clone()).unwrap();
    assert_eq!(
        (decoded.vote, decoded.prev_log_id, decoded.leader_commit, &decoded.entries),
        (req.vote, req.prev_log_id, req.leader_commit, &req.entries)
    );
    let EntryPayload::Normal(KafkaBatch(b)) = &decoded.entries[2].payload else { unreachable!() };
    let inside = encoded.as_ptr() as usize..encoded.as_ptr() as usize + encoded.len();
    assert!(inside.contains(&(b.as_ptr() as usize)), "the batch is a slice of the message, not a copy");
    assert_hostile_bytes_are_safe(&encoded, codec::decode_append_request);

    for resp in [
        AppendEntriesResponse::Success,
        AppendEntriesResponse::PartialSuccess(Some(LogId::new_term_index(3, 4))),
        AppendEntriesResponse::PartialSuccess(None),
        AppendEntriesResponse::Conflict,
        AppendEntriesResponse::HigherVote(vote),
    ] {
        let (status, body) = codec::split_status(codec::encode_append_response(&resp)).unwrap();
        assert_eq!(status, codec::STATUS_OK);
        assert_eq!(codec::decode_append_response(body.clone()).unwrap(), resp);
        assert_hostile_bytes_are_safe(&body, codec::decode_append_response);
    }

    let mut vreq = VoteRequest::<TypeConfig>::new(vote, Some(LogId::new_term_index(3, 12)));
    vreq.leadership_transfer = true;
    let encoded = codec::encode_vote_request(&vreq);
    assert_eq!(codec::decode_vote_request(encoded.clone()).unwrap(), vreq);
    assert_hostile_bytes_are_safe(&encoded, codec::decode_vote_request);

    let vresp = VoteResponse::<TypeConfig>::new(vote, Some(LogId::new_term_index(3, 12)), true);
    let (_, body) = codec::split_status(codec::encode_vote_response(&vresp)).unwrap();
    assert_eq!(codec::decode_vote_response(body.clone()).unwrap(), vresp);
    assert_hostile_bytes_are_safe(&body, codec::decode_vote_response);

    let EntryPayload::Membership(m) = sample_entries()[1].payload.clone() else { unreachable!() };
    let snapshot = Snapshot {
        meta: SnapshotMetaOf::<TypeConfig> {
            last_log_id: Some(LogId::new_term_index(3, 40)),
            last_membership: StoredMembershipOf::<TypeConfig>::new(Some(LogId::new_term_index(1, 1)), m),
        },
        snapshot: SnapshotData { next_offset: 1234 },
    };
    let encoded = codec::encode_snapshot_request(&vote, &snapshot);
    let (v, decoded) = codec::decode_snapshot_request(encoded.clone()).unwrap();
    assert_eq!((v, &decoded.meta, decoded.snapshot), (vote, &snapshot.meta, snapshot.snapshot));
    assert_hostile_bytes_are_safe(&encoded, codec::decode_snapshot_request);
    let sresp = SnapshotResponse::<TypeConfig>::new(vote);
    let (_, body) = codec::split_status(codec::encode_snapshot_response(&sresp)).unwrap();
    assert_eq!(codec::decode_snapshot_response(body.clone()).unwrap().vote, vote);
    assert_hostile_bytes_are_safe(&body, codec::decode_snapshot_response);

    let treq = TransferLeaderRequest::<TypeConfig>::new(vote, 3, Some(LogId::new_term_index(3, 12)));
    let encoded = codec::encode_transfer_request(&treq);
    let decoded = codec::decode_transfer_request(encoded.clone()).unwrap();
    assert_eq!(
        (decoded.from_leader(), decoded.to_node_id(), decoded.last_log_id()),
        (treq.from_leader(), treq.to_node_id(), treq.last_log_id())
    );
    assert_hostile_bytes_are_safe(&encoded, codec::decode_transfer_request);
    for tresp in [
        Ok(()),
        Err(TransferLeaderError::VoteChanged {
            expected: vote,
            actual: Vote::from_leader_id(LeaderId { term: 4, voted_for: 3 }, true),
        }),
        Err(TransferLeaderError::LogNotFlushed { expected: Some(LogId::new_term_index(3, 12)), actual: None }),
    ] {
        let (_, body) = codec::split_status(codec::encode_transfer_response(&tresp)).unwrap();
        assert_eq!(codec::decode_transfer_response(body.clone()).unwrap(), tresp);
        assert_hostile_bytes_are_safe(&body, codec::decode_transfer_response);
    }

    // A count of 2^32-1 entries in a few bytes is refused before anything is allocated.
    let mut huge = codec::encode_append_request(&AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    })
    .to_vec();
    let n = huge.len();
    huge[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(codec::decode_append_request(Bytes::from(huge)).is_err());
    assert!(codec::split_status(Bytes::new()).is_err());
}
