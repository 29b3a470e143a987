//! Internal RPC between brokers (issue 5, item 2): one multiplexed TCP connection per node pair
//! carrying opaque payloads of every Raft group, batched per destination.
//!
//! What it is: a transport. A message is `(group, kind, payload)`: [`GroupId`] names the Raft
//! group (a partition's or the metadata group), [`MessageKind`] is chosen by the layer above
//! (AppendEntries, Vote, ...), and the payload is opaque [`Bytes`]. [`Rpc::call`] sends a request
//! and waits for its response (correlated by a request id, with a timeout); [`Rpc::send`] is
//! one-way. Incoming messages go to a [`Handler`]. It deliberately knows nothing of openraft.
//!
//! - **Connection rule.** Exactly one node of a pair dials ([`dials`]): a node that is not a
//!   configured peer (a broker added to a running cluster) dials the configured ones, and
//!   otherwise the lower id dials. So a pair has one connection without a tie-break race. An
//!   accepted connection from a peer replaces the one it had (the peer restarted): the old one is
//!   closed and its calls fail.
//! - **Peers.** The configured peers (`internal.peers`) are known from the start; others are
//!   added at run time ([`Rpc::add_peer`], from the cluster metadata) or accepted when they dial
//!   in, as the connection rule lets them.
//! - **Handshake.** The dialer sends magic, version, its node id and the cluster id; the acceptor
//!   checks them (and that the connection rule lets that node dial it) and answers with its own,
//!   which the dialer checks against the peer it meant to reach. Any mismatch closes the socket.
//! - **Batching.** Each peer has one send queue; the connection's writer drains everything queued
//!   (up to [`Limits::batch_bytes_max`]) into one frame and one vectored write.
//! - **Bounds.** The queue is capped in messages and bytes, calls awaiting an answer in number;
//!   a full queue fails fast with [`RpcError::QueueFull`] (Raft retries). Frames are capped at
//!   [`Limits::frame_bytes_max`]; a connection holds at most [`Limits::receive_bytes_max`] of
//!   received frames and [`Limits::handlers_max`] running handlers, then stops reading. A frame
//!   not written within [`Limits::write_timeout`] closes the connection.
//! - **Down peers.** With no connection to a peer, `send` and `call` fail at once with
//!   [`RpcError::PeerUnavailable`]; nothing is queued for later. When a connection drops, its
//!   queued messages are dropped and its calls fail with [`RpcError::ConnectionLost`].
//!   A response that finds the queue full is dropped; its caller times out.
//! - **Reconnect.** The dialer retries with exponential backoff and full jitter, from
//!   [`Limits::backoff_min`] (50 ms) to [`Limits::backoff_max`] (2 s), reset by a handshake.
//!
//! ```ignore
//! let rpc = Rpc::start(RpcConfig::new(1, "cluster", addr, peers), handler).await?;
//! let answer = rpc.call(2, GroupId(7), MessageKind(1), payload, Duration::from_secs(1)).await?;
//! ```

// Outside tests only an idle listener with `DeclineAll`: `raft::network` carries openraft's
// messages over it, and the next increment of issue 5 (Produce/Fetch on Raft, the metadata
// group) registers the broker's groups with `main.rs`'s transport.
#![allow(dead_code)]

mod conn;
#[cfg(test)]
mod tests;
pub(crate) mod wire;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tokio::task::{AbortHandle, JoinHandle};

use wire::{MESSAGE_HEADER_BYTES, Message, Tag};

/// A broker's id; the same number as the Raft node id.
pub(crate) type NodeId = u64;

/// The Raft group a message belongs to. The mapping from partitions (and the metadata group) to
/// numbers belongs to the layer above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct GroupId(pub(crate) u64);

/// What a message is, chosen by the layer above (e.g. AppendEntries, Vote, InstallSnapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct MessageKind(pub(crate) u16);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RpcError {
    #[error("node {0} is not a known peer")]
    UnknownPeer(NodeId),
    #[error("no connection to node {0}")]
    PeerUnavailable(NodeId),
    #[error("send queue to node {0} is full")]
    QueueFull(NodeId),
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("call to node {0} timed out")]
    Timeout(NodeId),
    #[error("connection to node {0} was lost")]
    ConnectionLost(NodeId),
    #[error("node {0} had no answer")]
    NoAnswer(NodeId),
    #[error("the RPC transport is shut down")]
    Shutdown,
}

/// A future a [`Handler`] returns.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Option<Bytes>> + Send>>;

/// Receives every request and one-way message. Handlers run concurrently, each in its own task.
pub(crate) trait Handler: Send + Sync + 'static {
    /// For a request, `Some` is the response and `None` fails the call with
    /// [`RpcError::NoAnswer`]; for a one-way message the result is ignored.
    fn handle(&self, from: NodeId, group: GroupId, kind: MessageKind, payload: Bytes) -> HandlerFuture;
}

/// Declines every request: `main.rs`'s handler until the broker runs Raft groups (the next
/// increment of issue 5 replaces it with `raft::network::RaftRouter`).
pub(crate) struct DeclineAll;

impl Handler for DeclineAll {
    fn handle(&self, from: NodeId, group: GroupId, kind: MessageKind, _payload: Bytes) -> HandlerFuture {
        tracing::debug!(from, ?group, ?kind, "internal RPC message with no handler yet");
        Box::pin(async { None })
    }
}

/// Limits and timings. Every queue and buffer has one.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Messages queued for one peer.
    pub(crate) queue_messages_max: usize,
    /// Bytes (headers and payloads) queued for one peer.
    pub(crate) queue_bytes_max: usize,
    /// Calls to one peer awaiting an answer.
    pub(crate) calls_in_flight_max: usize,
    /// The writer stops draining the queue into a frame past this many bytes (a bigger single
    /// message goes alone).
    pub(crate) batch_bytes_max: usize,
    /// Largest frame sent or accepted; a larger length prefix closes the connection.
    pub(crate) frame_bytes_max: usize,
    /// Received frames a connection may hold while their handlers run; reading waits for room.
    pub(crate) receive_bytes_max: usize,
    /// Handlers running at once per connection; reading waits for one to finish.
    pub(crate) handlers_max: usize,
    /// Connections in their handshake at once; more are closed at accept.
    pub(crate) handshakes_max: usize,
    /// Peers known at once (configured, added and accepted); a handshake from one more unknown
    /// node is refused.
    pub(crate) peers_max: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    /// A batch frame not written within this closes the connection (a peer that stopped reading,
    /// or a half-open connection), failing its calls.
    pub(crate) write_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            queue_messages_max: 65_536,
            queue_bytes_max: 64 << 20,
            calls_in_flight_max: 65_536,
            batch_bytes_max: 1 << 20,
            frame_bytes_max: 16 << 20,
            receive_bytes_max: 64 << 20,
            handlers_max: 1024,
            handshakes_max: 64,
            peers_max: 4096,
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
        }
    }
}

impl Limits {
    /// Largest payload `send`/`call` accept.
    pub(crate) fn payload_bytes_max(&self) -> usize {
        self.frame_bytes_max.min(self.queue_bytes_max).saturating_sub(MESSAGE_HEADER_BYTES)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RpcConfig {
    pub(crate) node_id: NodeId,
    pub(crate) cluster_id: String,
    pub(crate) listen: SocketAddr,
    /// The configured nodes of the cluster as `(id, "host:port")`; this node's own entry is
    /// skipped. Other nodes may join later ([`Rpc::add_peer`]).
    pub(crate) peers: Vec<(NodeId, String)>,
    pub(crate) limits: Limits,
}

/// Parses `internal.peers`: `id@host:port` entries separated by commas.
pub(crate) fn parse_peers(text: &str) -> Result<Vec<(NodeId, String)>, String> {
    let mut out: Vec<(NodeId, String)> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry.split_once('@').ok_or_else(|| format!("`{entry}` is not id@host:port"))?;
        let id: NodeId = id.trim().parse().map_err(|_| format!("`{entry}`: `{id}` is not a node id"))?;
        let addr = addr.trim();
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(format!("`{entry}`: `{addr}` is not host:port")),
        }
        if out.iter().any(|(other, _)| *other == id) {
            return Err(format!("node {id} is listed twice"));
        }
        out.push((id, addr.to_string()));
    }
    Ok(out)
}

/// Counters over the whole transport, for tests and metrics.
#[derive(Debug, Default)]
struct Stats {
    messages_sent: AtomicU64,
    frames_written: AtomicU64,
    bytes_written: AtomicU64,
    messages_received: AtomicU64,
    frames_read: AtomicU64,
    connections_established: AtomicU64,
    connections_refused: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StatsSnapshot {
    pub(crate) messages_sent: u64,
    pub(crate) frames_written: u64,
    pub(crate) bytes_written: u64,
    pub(crate) messages_received: u64,
    pub(crate) frames_read: u64,
    pub(crate) connections_established: u64,
    pub(crate) connections_refused: u64,
}

/// The transport of one node. Cloning shares it; [`Rpc::shutdown`] stops it.
#[derive(Clone)]
pub(crate) struct Rpc {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    cluster_id: String,
    limits: Limits,
    handler: Arc<dyn Handler>,
    /// The configured nodes (this one included if it is one): see [`dials`].
    configured: std::collections::HashSet<NodeId>,
    peers: RwLock<HashMap<NodeId, Arc<Peer>>>,
    stats: Stats,
    local_addr: SocketAddr,
    closed: AtomicBool,
    /// The accept loop and the dialers.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

struct Peer {
    id: NodeId,
    /// Where to dial it; `None` for a node known only because it dialed in.
    addr: Mutex<Option<String>>,
    next_request_id: AtomicU64,
    state: Mutex<PeerState>,
    /// The task dialing it, when this node is the one that dials.
    dialer: Mutex<Option<AbortHandle>>,
}

impl Peer {
    fn new(id: NodeId, addr: Option<String>) -> Arc<Peer> {
        Arc::new(Peer {
            id,
            addr: Mutex::new(addr),
            next_request_id: AtomicU64::new(0),
            state: Mutex::new(PeerState::default()),
            dialer: Mutex::new(None),
        })
    }
}

/// Whether node `from` is the one that dials node `to` (see the module docs): a node outside the
/// configured set dials the configured ones; within either set, the lower id dials.
fn dials(configured: &std::collections::HashSet<NodeId>, from: NodeId, to: NodeId) -> bool {
    match (configured.contains(&from), configured.contains(&to)) {
        (false, true) => true,
        (true, false) => false,
        _ => from < to,
    }
}

#[derive(Default)]
struct PeerState {
    conn: Option<ConnHandle>,
    queue: VecDeque<Message>,
    queued_bytes: usize,
    pending: HashMap<u64, oneshot::Sender<Result<Bytes, RpcError>>>,
    next_generation: u64,
}

/// The current connection to a peer.
struct ConnHandle {
    generation: u64,
    /// Wakes the connection's writer when something is queued.
    wake: Arc<Notify>,
    task: AbortHandle,
}

impl PeerState {
    /// Forgets the connection: drops queued messages and fails every call waiting on the peer.
    fn reset(&mut self, error: RpcError) {
        if let Some(conn) = self.conn.take() {
            conn.task.abort();
        }
        self.queue.clear();
        self.queued_bytes = 0;
        for (_, tx) in self.pending.drain() {
            let _ = tx.send(Err(error.clone()));
        }
    }

    fn generation(&self) -> Option<u64> {
        self.conn.as_ref().map(|c| c.generation)
    }
}

impl Rpc {
    /// Binds the internal listener and starts accepting and dialing.
    pub(crate) async fn start(config: RpcConfig, handler: Arc<dyn Handler>) -> std::io::Result<Rpc> {
        let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
        if config.cluster_id.len() > wire::CLUSTER_ID_BYTES_MAX {
            return Err(invalid(format!("cluster id longer than {} bytes", wire::CLUSTER_ID_BYTES_MAX)));
        }
        let l = &config.limits;
        if l.frame_bytes_max > l.receive_bytes_max || l.frame_bytes_max > u32::MAX as usize >> 1 {
            return Err(invalid("frame_bytes_max must fit receive_bytes_max and 2 GiB".into()));
        }
        let listener = TcpListener::bind(config.listen).await?;
        let configured = config.peers.iter().map(|(id, _)| *id).collect();
        let inner = Arc::new(Inner {
            node_id: config.node_id,
            cluster_id: config.cluster_id,
            limits: config.limits,
            handler,
            configured,
            peers: RwLock::new(HashMap::new()),
            stats: Stats::default(),
            local_addr: listener.local_addr()?,
            closed: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        });
        *inner.tasks.lock() = vec![tokio::spawn(conn::accept_loop(inner.clone(), listener))];
        let rpc = Rpc { inner };
        for (id, addr) in &config.peers {
            rpc.add_peer(*id, addr);
        }
        Ok(rpc)
    }

    /// Makes `id` a known peer reachable at `addr` (a broker that joined the cluster), or updates
    /// its address; dials it if the connection rule says this node dials. Not for this node.
    pub(crate) fn add_peer(&self, id: NodeId, addr: &str) {
        let inner = &self.inner;
        if id == inner.node_id || inner.closed.load(Ordering::Relaxed) {
            return;
        }
        let peer = inner.peers.write().entry(id).or_insert_with(|| Peer::new(id, None)).clone();
        *peer.addr.lock() = Some(addr.to_string());
        if dials(&inner.configured, inner.node_id, id) {
            let mut dialer = peer.dialer.lock();
            if dialer.is_none() {
                let task = tokio::spawn(conn::dial_loop(inner.clone(), peer.clone()));
                *dialer = Some(task.abort_handle());
                inner.tasks.lock().push(task);
            }
        }
    }

    /// Forgets peer `id` (a broker removed from the cluster): stops dialing it, closes the
    /// connection and fails its calls. It is accepted again if it dials in.
    pub(crate) fn remove_peer(&self, id: NodeId) {
        let Some(peer) = self.inner.peers.write().remove(&id) else { return };
        if let Some(dialer) = peer.dialer.lock().take() {
            dialer.abort();
        }
        peer.state.lock().reset(RpcError::ConnectionLost(id));
    }

    /// The peers this node knows, configured or joined.
    #[cfg(test)]
    pub(crate) fn peer_ids(&self) -> Vec<NodeId> {
        self.inner.peers.read().keys().copied().collect()
    }

    pub(crate) fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The address the internal listener is bound to.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Sends a request and waits up to `timeout` for its response.
    pub(crate) async fn call(
        &self,
        to: NodeId,
        group: GroupId,
        kind: MessageKind,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        let peer = self.peer(to)?;
        let request_id = peer.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let message = Message { tag: Tag::Request, request_id, group, kind, payload };
        self.inner.enqueue(&peer, message, None, Some(tx))?;
        // Removes the pending entry on timeout or when the caller gives up.
        let _guard = PendingGuard { peer: &peer, request_id };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RpcError::ConnectionLost(to)),
            Err(_) => Err(RpcError::Timeout(to)),
        }
    }

    /// Queues a one-way message; fails at once when the peer is down or its queue is full.
    pub(crate) fn send(&self, to: NodeId, group: GroupId, kind: MessageKind, payload: Bytes) -> Result<(), RpcError> {
        let peer = self.peer(to)?;
        let message = Message { tag: Tag::OneWay, request_id: 0, group, kind, payload };
        self.inner.enqueue(&peer, message, None, None)
    }

    /// Whether a connection to `peer` is established.
    pub(crate) fn is_connected(&self, peer: NodeId) -> bool {
        self.inner.peers.read().get(&peer).is_some_and(|p| p.state.lock().conn.is_some())
    }

    /// Bytes queued for `peer` and not yet handed to its socket.
    pub(crate) fn queued_bytes(&self, peer: NodeId) -> usize {
        self.inner.peers.read().get(&peer).map_or(0, |p| p.state.lock().queued_bytes)
    }

    pub(crate) fn stats(&self) -> StatsSnapshot {
        let s = &self.inner.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            messages_sent: get(&s.messages_sent),
            frames_written: get(&s.frames_written),
            bytes_written: get(&s.bytes_written),
            messages_received: get(&s.messages_received),
            frames_read: get(&s.frames_read),
            connections_established: get(&s.connections_established),
            connections_refused: get(&s.connections_refused),
        }
    }

    /// Stops listening and dialing, closes every connection and fails every call.
    pub(crate) async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let tasks = std::mem::take(&mut *self.inner.tasks.lock());
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        for peer in self.inner.peers.read().values() {
            peer.state.lock().reset(RpcError::Shutdown);
        }
    }

    fn peer(&self, id: NodeId) -> Result<Arc<Peer>, RpcError> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(RpcError::Shutdown);
        }
        self.inner.peers.read().get(&id).cloned().ok_or(RpcError::UnknownPeer(id))
    }
}

struct PendingGuard<'a> {
    peer: &'a Peer,
    request_id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.peer.state.lock().pending.remove(&self.request_id);
    }
}

impl Inner {
    /// Queues `message` for `peer`'s current connection (or, for a response, only if that is
    /// still connection `generation`), registering `reply` as a pending call.
    fn enqueue(
        &self,
        peer: &Peer,
        message: Message,
        generation: Option<u64>,
        reply: Option<oneshot::Sender<Result<Bytes, RpcError>>>,
    ) -> Result<(), RpcError> {
        let max = self.limits.payload_bytes_max();
        if message.payload.len() > max {
            return Err(RpcError::TooLarge { len: message.payload.len(), max });
        }
        let bytes = message.wire_bytes();
        let mut st = peer.state.lock();
        let Some(conn) = &st.conn else { return Err(RpcError::PeerUnavailable(peer.id)) };
        if generation.is_some_and(|g| g != conn.generation) {
            return Err(RpcError::ConnectionLost(peer.id));
        }
        let wake = conn.wake.clone();
        if st.queue.len() >= self.limits.queue_messages_max || st.queued_bytes + bytes > self.limits.queue_bytes_max {
            return Err(RpcError::QueueFull(peer.id));
        }
        if let Some(tx) = reply {
            if st.pending.len() >= self.limits.calls_in_flight_max {
                return Err(RpcError::QueueFull(peer.id));
            }
            st.pending.insert(message.request_id, tx);
        }
        st.queued_bytes += bytes;
        st.queue.push_back(message);
        drop(st);
        wake.notify_one();
        Ok(())
    }
}

/// Exponential backoff with full jitter: each delay is uniform in `[d/2, d]`, `d` doubling from
/// `min` to `max`.
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff { min, max, next: min, rng: seed | 1 }
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = d / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_nanos(self.rng % (nanos + 1))
    }
}

/// A random seed without a dependency: std's per-process random hasher keys.
pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    h.finish()
}
