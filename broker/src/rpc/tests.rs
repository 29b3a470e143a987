//! Tests of the internal RPC over real sockets on 127.0.0.1: many concurrent calls, batching,
//! restarts, full queues and hostile bytes on the listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::wire::{self, HELLO_FIXED_BYTES};
use super::*;

const CLUSTER: &str = "test-cluster";
/// Kind whose handler declines to answer.
const KIND_DECLINE: MessageKind = MessageKind(99);
/// Kind whose handler never finishes in time.
const KIND_SLOW: MessageKind = MessageKind(98);

/// Answers `node id, group, kind, payload` and counts every message it sees.
struct Echo {
    node: NodeId,
    seen: Arc<AtomicU64>,
}

impl Handler for Echo {
    fn handle(&self, _from: NodeId, group: GroupId, kind: MessageKind, payload: Bytes) -> HandlerFuture {
        self.seen.fetch_add(1, Ordering::Relaxed);
        let node = self.node;
        Box::pin(async move {
            if kind == KIND_DECLINE {
                return None;
            }
            if kind == KIND_SLOW {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            let mut out = BytesMut::new();
            out.put_u64(node);
            out.put_u64(group.0);
            out.put_u16(kind.0);
            out.extend_from_slice(&payload);
            Some(out.freeze())
        })
    }
}

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let held: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap()).collect()
}

fn peer_list(addrs: &[SocketAddr]) -> Vec<(NodeId, String)> {
    addrs.iter().enumerate().map(|(i, a)| (i as NodeId + 1, a.to_string())).collect()
}

async fn start_node(id: NodeId, addrs: &[SocketAddr], limits: Limits) -> (Rpc, Arc<AtomicU64>) {
    let seen = Arc::new(AtomicU64::new(0));
    let config = RpcConfig {
        node_id: id,
        cluster_id: CLUSTER.into(),
        listen: addrs[id as usize - 1],
        peers: peer_list(addrs),
        limits,
    };
    let rpc = Rpc::start(config, Arc::new(Echo { node: id, seen: seen.clone() })).await.unwrap();
    (rpc, seen)
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_connected(nodes: &[&Rpc]) {
    for a in nodes {
        for b in nodes {
            if a.node_id() != b.node_id() {
                wait_until("all nodes are connected", || a.is_connected(b.node_id())).await;
            }
        }
    }
}

fn check_echo(answer: &Bytes, node: NodeId, group: GroupId, kind: MessageKind, payload: &[u8]) {
    let mut a = &answer[..];
    assert_eq!((a.get_u64(), a.get_u64(), a.get_u16()), (node, group.0, kind.0));
    assert_eq!(a, payload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_answer_20000_concurrent_calls_across_200_groups_in_batches() {
    let addrs = free_addrs(3);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start_node(id, &addrs, Limits::default()).await.0);
    }
    wait_connected(&nodes.iter().collect::<Vec<_>>()).await;

    let calls = (0..20_000u64).map(|i| {
        let from = &nodes[(i % 3) as usize];
        let to = (i % 3 + 1 + (i / 3) % 2) % 3 + 1;
        let (group, kind) = (GroupId(i % 200), MessageKind((i % 5) as u16));
        let payload = Bytes::from(format!("request {i} from {}", from.node_id()));
        async move {
            let answer = from.call(to, group, kind, payload.clone(), Duration::from_secs(20)).await.unwrap();
            check_echo(&answer, to, group, kind, &payload);
        }
    });
    futures_util::future::join_all(calls).await;

    let (mut messages, mut frames) = (0, 0);
    for n in &nodes {
        let s = n.stats();
        messages += s.messages_sent;
        frames += s.frames_written;
    }
    assert_eq!(messages, 40_000, "every request and every response was sent once");
    eprintln!("{messages} messages in {frames} frames");
    assert!(frames < messages / 2, "{messages} messages went out in {frames} frames: batching did not happen");
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn messages_queued_together_leave_in_one_frame() {
    let addrs = free_addrs(2);
    let (a, _) = start_node(1, &addrs, Limits::default()).await;
    let (b, seen) = start_node(2, &addrs, Limits::default()).await;
    wait_connected(&[&a, &b]).await;
    let before = a.stats();
    // On this single-threaded runtime the writer cannot run until the loop yields.
    for i in 0..1000u64 {
        a.send(2, GroupId(i % 200), MessageKind(1), Bytes::from(vec![7u8; 100])).unwrap();
    }
    wait_until("b received 1000 messages", || seen.load(Ordering::Relaxed) == 1000).await;
    let after = a.stats();
    assert_eq!(after.messages_sent - before.messages_sent, 1000);
    assert_eq!(after.frames_written - before.frames_written, 1, "1000 queued messages share one frame");
    assert_eq!(b.stats().frames_read, 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_reconnected_without_intervention() {
    let addrs = free_addrs(3);
    let (n1, _) = start_node(1, &addrs, Limits::default()).await;
    let (n2, _) = start_node(2, &addrs, Limits::default()).await;
    let (n3, _) = start_node(3, &addrs, Limits::default()).await;
    wait_connected(&[&n1, &n2, &n3]).await;
    let t = Duration::from_secs(2);
    n1.call(2, GroupId(1), MessageKind(1), Bytes::from_static(b"x"), t).await.unwrap();

    // Node 2 is dialed by 1 and dials 3: its restart exercises both sides.
    n2.shutdown().await;
    wait_until("1 and 3 notice node 2 is gone", || !n1.is_connected(2) && !n3.is_connected(2)).await;
    for (from, to) in [(&n1, 2), (&n3, 2)] {
        let err = from.call(to, GroupId(1), MessageKind(1), Bytes::from_static(b"x"), t).await.unwrap_err();
        assert_eq!(err, RpcError::PeerUnavailable(2));
        assert_eq!(from.send(to, GroupId(1), MessageKind(1), Bytes::new()), Err(RpcError::PeerUnavailable(2)));
    }
    assert_eq!(n2.call(1, GroupId(1), MessageKind(1), Bytes::new(), t).await, Err(RpcError::Shutdown));

    let (n2, _) = start_node(2, &addrs, Limits::default()).await;
    wait_connected(&[&n1, &n2, &n3]).await;
    for (from, to) in [(&n1, 2), (&n2, 1), (&n2, 3), (&n3, 2), (&n1, 3)] {
        let answer = from.call(to, GroupId(5), MessageKind(2), Bytes::from_static(b"again"), t).await.unwrap();
        check_echo(&answer, to, GroupId(5), MessageKind(2), b"again");
    }
    for n in [&n1, &n2, &n3] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_fail_when_the_connection_drops() {
    let addrs = free_addrs(2);
    let (a, _) = start_node(1, &addrs, Limits::default()).await;
    let (b, _) = start_node(2, &addrs, Limits::default()).await;
    wait_connected(&[&a, &b]).await;
    let started = Instant::now();
    let call = tokio::spawn({
        let a = a.clone();
        async move { a.call(2, GroupId(1), KIND_SLOW, Bytes::new(), Duration::from_secs(20)).await }
    });
    wait_until("the request reached b", || b.stats().messages_received == 1).await;
    b.shutdown().await;
    assert_eq!(call.await.unwrap(), Err(RpcError::ConnectionLost(2)));
    assert!(started.elapsed() < Duration::from_secs(10), "failed by the drop, not by the timeout");
    a.shutdown().await;
}

#[tokio::test]
async fn a_stalled_peer_is_cut_off_by_the_write_timeout() {
    let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = vec![free_addrs(1)[0], fake.local_addr().unwrap()];
    let limits = Limits { write_timeout: Duration::from_millis(300), ..Limits::default() };
    let (a, _) = start_node(1, &addrs, limits).await;
    let _stalled = stalled_peer(fake, 2).await;
    wait_until("connected to the stalled peer", || a.is_connected(2)).await;
    let payload = Bytes::from(vec![1u8; 1 << 20]);
    // Enough to fill the socket buffers, so a write blocks.
    for _ in 0..40 {
        if a.send(2, GroupId(1), MessageKind(1), payload.clone()).is_err() {
            break;
        }
        tokio::task::yield_now().await;
    }
    wait_until("the stalled connection is dropped", || !a.is_connected(2)).await;
    assert_eq!(a.queued_bytes(2), 0, "its queue was dropped with it");
    a.shutdown().await;
}

/// A peer that completes the handshake as node `id` and then never reads.
async fn stalled_peer(listener: TcpListener, id: NodeId) -> TcpStream {
    let (mut s, _) = listener.accept().await.unwrap();
    let mut hello = [0u8; HELLO_FIXED_BYTES + CLUSTER.len()];
    s.read_exact(&mut hello).await.unwrap();
    s.write_all(&wire::encode_hello(id, CLUSTER)).await.unwrap();
    s
}

#[tokio::test]
async fn a_full_queue_fails_fast_and_stops_growing() {
    let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = vec![free_addrs(1)[0], fake.local_addr().unwrap()];
    let limits = Limits { queue_bytes_max: 256 << 10, queue_messages_max: 1000, ..Limits::default() };
    let cap = limits.queue_bytes_max;
    let (a, _) = start_node(1, &addrs, limits).await;
    let _stalled = stalled_peer(fake, 2).await;
    wait_until("connected to the stalled peer", || a.is_connected(2)).await;

    let payload = Bytes::from(vec![1u8; 16 << 10]);
    let mut accepted = 0;
    let full = loop {
        match a.send(2, GroupId(1), MessageKind(1), payload.clone()) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100_000, "the queue never filled");
        // Let the writer fill the socket buffers.
        tokio::task::yield_now().await;
    };
    assert_eq!(full, RpcError::QueueFull(2));
    let queued = a.queued_bytes(2);
    assert!(queued <= cap && queued > cap - 2 * payload.len(), "queued {queued} of {cap}");
    for _ in 0..1000 {
        assert_eq!(a.send(2, GroupId(1), MessageKind(1), payload.clone()), Err(RpcError::QueueFull(2)));
        tokio::task::yield_now().await;
    }
    let err = a.call(2, GroupId(1), MessageKind(1), payload.clone(), Duration::from_secs(1)).await.unwrap_err();
    assert_eq!(err, RpcError::QueueFull(2));
    assert_eq!(a.queued_bytes(2), queued, "memory did not grow");
    a.shutdown().await;
}

/// Asserts the listener closes `s` (after whatever it answered) within a few seconds.
async fn assert_closed(mut s: TcpStream, what: &str) {
    let mut sink = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await {
        Ok(_) => {}
        Err(_) => panic!("{what}: connection still open"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_on_the_listener_close_the_connection_and_good_peers_still_connect() {
    // Nodes 1 to 3 are configured; 2 listens, and its peer table has room for one node more.
    let addrs = free_addrs(3);
    let limits =
        Limits { handshake_timeout: Duration::from_millis(1000), handshakes_max: 4, peers_max: 3, ..Limits::default() };
    let (n2, _) = start_node(2, &addrs, limits).await;
    let target = addrs[1];
    let connect = || TcpStream::connect(target);

    // Silent connections hold handshake slots until the timeout; past the limit they are closed
    // at once.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(connect().await.unwrap());
    }
    let started = Instant::now();
    assert_closed(connect().await.unwrap(), "a connection past the handshake limit").await;
    assert!(started.elapsed() < Duration::from_millis(500), "closed at accept, not by the timeout");
    for s in silent {
        assert_closed(s, "a silent connection (handshake timeout)").await;
    }

    let mut s = connect().await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: creek\r\n\r\n").await.unwrap();
    assert_closed(s, "garbage").await;

    let mut bad_magic = wire::encode_hello(1, CLUSTER);
    bad_magic[..4].copy_from_slice(b"KAFK");
    let mut bad_version = wire::encode_hello(1, CLUSTER);
    bad_version[4..6].copy_from_slice(&9u16.to_be_bytes());
    let cases = [
        ("wrong magic", bad_magic),
        ("wrong version", bad_version),
        ("wrong cluster id", wire::encode_hello(1, "other-cluster")),
        ("a configured node with a higher id dialing", wire::encode_hello(3, CLUSTER)),
        ("its own id", wire::encode_hello(2, CLUSTER)),
    ];
    for (what, hello) in cases {
        let mut s = connect().await.unwrap();
        s.write_all(&hello).await.unwrap();
        assert_closed(s, what).await;
    }
    // An unknown node (a broker that joined) is accepted while the peer table has room.
    let mut joined = connect().await.unwrap();
    joined.write_all(&wire::encode_hello(9, CLUSTER)).await.unwrap();
    let mut hello = [0u8; HELLO_FIXED_BYTES + CLUSTER.len()];
    joined.read_exact(&mut hello).await.unwrap();
    let mut s = connect().await.unwrap();
    s.write_all(&wire::encode_hello(10, CLUSTER)).await.unwrap();
    assert_closed(s, "an unknown node past the peer limit").await;
    drop(joined);

    let mut s = connect().await.unwrap();
    s.write_all(&wire::encode_hello(1, CLUSTER)[..7]).await.unwrap();
    assert_closed(s, "a hello cut short (handshake timeout)").await;

    let frames: [(&str, Vec<u8>); 4] = [
        ("an oversized length prefix", u32::MAX.to_be_bytes().to_vec()),
        ("a length prefix over the frame limit", ((16u32 << 20) + 1).to_be_bytes().to_vec()),
        ("a zero length prefix", 0u32.to_be_bytes().to_vec()),
        ("a message with an unknown tag", [&30u32.to_be_bytes()[..], &[7u8; 30]].concat()),
    ];
    for (what, bytes) in frames {
        let mut s = connect().await.unwrap();
        s.write_all(&wire::encode_hello(1, CLUSTER)).await.unwrap();
        let mut hello = [0u8; HELLO_FIXED_BYTES + CLUSTER.len()];
        s.read_exact(&mut hello).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        assert_closed(s, what).await;
    }
    // A payload length running past the frame.
    let mut frame = BytesMut::new();
    frame.put_u32(23);
    frame.put_u8(1);
    frame.put_u64(1);
    frame.put_u64(1);
    frame.put_u16(1);
    frame.put_u32(1000);
    let mut s = connect().await.unwrap();
    s.write_all(&wire::encode_hello(1, CLUSTER)).await.unwrap();
    s.write_all(&frame).await.unwrap();
    assert_closed(s, "a payload past the frame").await;
    assert!(n2.stats().connections_refused >= 9);

    let (n1, _) = start_node(1, &addrs, Limits::default()).await;
    wait_connected(&[&n1, &n2]).await;
    let answer = n1.call(2, GroupId(3), MessageKind(4), Bytes::from_static(b"ok"), Duration::from_secs(2)).await;
    check_echo(&answer.unwrap(), 2, GroupId(3), MessageKind(4), b"ok");
    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test]
async fn calls_fail_with_a_clear_error() {
    let addrs = free_addrs(2);
    let (a, _) = start_node(1, &addrs, Limits::default()).await;
    let (b, _) = start_node(2, &addrs, Limits::default()).await;
    wait_connected(&[&a, &b]).await;
    let t = Duration::from_millis(200);
    let g = GroupId(1);
    assert_eq!(a.call(9, g, MessageKind(1), Bytes::new(), t).await, Err(RpcError::UnknownPeer(9)));
    assert_eq!(a.send(9, g, MessageKind(1), Bytes::new()), Err(RpcError::UnknownPeer(9)));
    assert_eq!(a.call(2, g, KIND_DECLINE, Bytes::new(), t).await, Err(RpcError::NoAnswer(2)));
    assert_eq!(a.call(2, g, KIND_SLOW, Bytes::new(), t).await, Err(RpcError::Timeout(2)));
    let max = Limits::default().payload_bytes_max();
    let big = Bytes::from(vec![0u8; max + 1]);
    assert_eq!(a.send(2, g, MessageKind(1), big), Err(RpcError::TooLarge { len: max + 1, max }));
    // The connection still works after all that.
    let answer = a.call(2, g, MessageKind(1), Bytes::from_static(b"fine"), t).await.unwrap();
    check_echo(&answer, 2, g, MessageKind(1), b"fine");
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn backoff_doubles_with_jitter_up_to_its_cap() {
    let (min, max) = (Duration::from_millis(50), Duration::from_secs(2));
    let mut b = Backoff::new(min, max, 42);
    let mut ceiling = min;
    for _ in 0..20 {
        let d = b.next_delay();
        assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} outside [{:?}, {ceiling:?}]", ceiling / 2);
        ceiling = (ceiling * 2).min(max);
    }
    b.reset();
    assert!(b.next_delay() <= min);
}

#[test]
fn peer_lists_parse_and_refuse_nonsense() {
    assert_eq!(
        parse_peers("1@127.0.0.1:9094, 2@broker2:9094,").unwrap(),
        vec![(1, "127.0.0.1:9094".to_string()), (2, "broker2:9094".to_string())]
    );
    assert_eq!(parse_peers("").unwrap(), vec![]);
    for bad in ["1", "x@h:1", "1@h", "1@:9", "1@h:99999", "1@a:1,1@b:2"] {
        assert!(parse_peers(bad).is_err(), "{bad}");
    }
}

/// A node outside `internal.peers` (a broker added to a running cluster) dials the configured
/// nodes, which accept it without knowing it; two such nodes connect once one learns the other's
/// address; a removed peer is forgotten.
#[tokio::test]
async fn a_node_outside_the_configured_peers_dials_in_and_joined_nodes_connect_to_each_other() {
    let addrs = free_addrs(4);
    let configured = &addrs[..2];
    let (one, _) = start_node(1, configured, Limits::default()).await;
    let (two, _) = start_node(2, configured, Limits::default()).await;
    let join = |id: NodeId| {
        let config = RpcConfig {
            node_id: id,
            cluster_id: CLUSTER.into(),
            listen: addrs[id as usize - 1],
            peers: peer_list(configured),
            limits: Limits::default(),
        };
        async move { Rpc::start(config, Arc::new(Echo { node: id, seen: Arc::new(AtomicU64::new(0)) })).await.unwrap() }
    };
    let (three, four) = (join(3).await, join(4).await);
    wait_until("the joined nodes dial the configured ones", || {
        [1, 2].iter().all(|&n| three.is_connected(n) && four.is_connected(n))
            && [3, 4].iter().all(|&n| one.is_connected(n) && two.is_connected(n))
    })
    .await;
    // Either side calls over the connection the joined node dialed.
    let answer = one.call(3, GroupId(5), MessageKind(1), Bytes::from_static(b"hi"), Duration::from_secs(5)).await;
    assert_eq!(answer.unwrap().slice(..8), Bytes::copy_from_slice(&3u64.to_be_bytes()));
    assert!(three.call(2, GroupId(5), MessageKind(1), Bytes::new(), Duration::from_secs(5)).await.is_ok());
    // Joined nodes learn each other's address from the cluster metadata; the lower id dials.
    assert_eq!(
        three.call(4, GroupId(1), MessageKind(1), Bytes::new(), Duration::from_secs(1)).await,
        Err(RpcError::UnknownPeer(4))
    );
    three.add_peer(4, &addrs[3].to_string());
    four.add_peer(3, &addrs[2].to_string());
    wait_until("the joined nodes connect", || three.is_connected(4) && four.is_connected(3)).await;
    assert!(four.call(3, GroupId(1), MessageKind(1), Bytes::new(), Duration::from_secs(5)).await.is_ok());
    // A configured node never dials a joined one (it would be refused): one connection per pair.
    assert_eq!(one.stats().connections_refused + three.stats().connections_refused, 0);
    one.remove_peer(3);
    assert!(!one.is_connected(3) && !one.peer_ids().contains(&3));
    for rpc in [one, two, three, four] {
        rpc.shutdown().await;
    }
}
