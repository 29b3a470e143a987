//! The internal RPC's sockets: accepting and dialing with the handshake, and each connection's
//! reader and writer.

use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::wire::{self, HELLO_FIXED_BYTES, MESSAGE_HEADER_BYTES, Message, Tag};
use super::{Backoff, ConnHandle, Inner, NodeId, Peer, RpcError, random_seed};

type IoResult<T> = std::io::Result<T>;

fn refused(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// Accepts connections from the peers that dial this node until aborted.
pub(super) async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let handshakes = Arc::new(Semaphore::new(inner.limits.handshakes_max));
    // Dropped with this task, which aborts handshakes still running.
    let mut running = JoinSet::new();
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "internal listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        while running.try_join_next().is_some() {}
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%addr, "internal listener: too many handshakes in progress, closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let inner = inner.clone();
        running.spawn(async move {
            let _permit = permit;
            let result = tokio::time::timeout(inner.limits.handshake_timeout, accept_handshake(&inner, stream)).await;
            match result {
                Ok(Ok((peer, stream))) => {
                    tracing::info!(peer = peer.id, %addr, "internal connection accepted");
                    install(&inner, &peer, stream);
                }
                Ok(Err(e)) => {
                    inner.stats.connections_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%addr, error = %e, "internal listener: refusing connection");
                }
                Err(_) => {
                    inner.stats.connections_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%addr, "internal listener: handshake timed out");
                }
            }
        });
    }
}

async fn read_hello(inner: &Inner, stream: &mut TcpStream) -> IoResult<NodeId> {
    let mut fixed = [0u8; HELLO_FIXED_BYTES];
    stream.read_exact(&mut fixed).await?;
    let (node, cluster_len) = wire::decode_hello_fixed(&fixed).map_err(|e| refused(e.to_string()))?;
    let mut cluster = vec![0u8; cluster_len];
    stream.read_exact(&mut cluster).await?;
    if cluster != inner.cluster_id.as_bytes() {
        return Err(refused(format!(
            "node {node} belongs to cluster `{}`, not `{}`",
            String::from_utf8_lossy(&cluster),
            inner.cluster_id
        )));
    }
    Ok(node)
}

async fn accept_handshake(inner: &Inner, mut stream: TcpStream) -> IoResult<(Arc<Peer>, TcpStream)> {
    let node = read_hello(inner, &mut stream).await?;
    if node == inner.node_id || !super::dials(&inner.configured, node, inner.node_id) {
        return Err(refused(format!("node {node} must wait to be dialed")));
    }
    let peer = {
        let mut peers = inner.peers.write();
        let known = peers.len();
        match peers.get(&node) {
            Some(peer) => peer.clone(),
            // A broker that joined the cluster, dialing in before this node learned its address.
            None if known < inner.limits.peers_max => {
                let peer = Peer::new(node, None);
                peers.insert(node, peer.clone());
                peer
            }
            None => return Err(refused(format!("node {node} is unknown and {known} peers are known already"))),
        }
    };
    stream.write_all(&wire::encode_hello(inner.node_id, &inner.cluster_id)).await?;
    Ok((peer, stream))
}

async fn dial(inner: &Inner, peer: &Peer) -> IoResult<TcpStream> {
    let addr = peer.addr.lock().clone().ok_or_else(|| std::io::Error::other("no address known"))?;
    let connect = TcpStream::connect(addr.as_str());
    let mut stream = tokio::time::timeout(inner.limits.connect_timeout, connect)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let _ = stream.set_nodelay(true);
    let handshake = async {
        stream.write_all(&wire::encode_hello(inner.node_id, &inner.cluster_id)).await?;
        let node = read_hello(inner, &mut stream).await?;
        if node != peer.id {
            return Err(refused(format!("{addr} answered as node {node}, expected {}", peer.id)));
        }
        Ok(())
    };
    tokio::time::timeout(inner.limits.handshake_timeout, handshake)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(stream)
}

/// Keeps a connection to a peer this node dials: dial, run it until it ends, back off, again.
pub(super) async fn dial_loop(inner: Arc<Inner>, peer: Arc<Peer>) {
    let mut backoff = Backoff::new(inner.limits.backoff_min, inner.limits.backoff_max, random_seed() ^ peer.id);
    loop {
        match dial(&inner, &peer).await {
            Ok(stream) => {
                tracing::info!(peer = peer.id, "internal connection established");
                backoff.reset();
                let _ = install(&inner, &peer, stream).await;
                tracing::info!(peer = peer.id, "internal connection closed");
            }
            Err(e) => tracing::debug!(peer = peer.id, error = %e, "dialing failed"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Makes `stream` the peer's connection, replacing (and failing) any previous one.
fn install(inner: &Arc<Inner>, peer: &Arc<Peer>, stream: TcpStream) -> JoinHandle<()> {
    inner.stats.connections_established.fetch_add(1, Ordering::Relaxed);
    let mut st = peer.state.lock();
    st.reset(RpcError::ConnectionLost(peer.id));
    let generation = st.next_generation;
    st.next_generation += 1;
    let wake = Arc::new(Notify::new());
    let task = tokio::spawn(connection(inner.clone(), peer.clone(), generation, wake.clone(), stream));
    st.conn = Some(ConnHandle { generation, wake, task: task.abort_handle() });
    task
}

/// Runs one connection until either direction fails, then forgets it (unless replaced).
async fn connection(inner: Arc<Inner>, peer: Arc<Peer>, generation: u64, wake: Arc<Notify>, stream: TcpStream) {
    let (rd, wr) = stream.into_split();
    let result = tokio::select! {
        r = reader(&inner, &peer, generation, rd) => r,
        w = writer(&inner, &peer, generation, &wake, wr) => w,
    };
    if let Err(e) = result {
        tracing::info!(peer = peer.id, error = %e, "internal connection failed");
    }
    let mut st = peer.state.lock();
    if st.generation() == Some(generation) {
        // Do not abort ourselves from inside: we are returning anyway.
        st.conn = None;
        st.reset(RpcError::ConnectionLost(peer.id));
    }
}

async fn writer(inner: &Inner, peer: &Peer, generation: u64, wake: &Notify, mut wr: OwnedWriteHalf) -> IoResult<()> {
    let mut batch = Vec::new();
    loop {
        {
            let mut st = peer.state.lock();
            if st.generation() != Some(generation) {
                return Ok(());
            }
            let mut bytes = 0;
            while let Some(m) = st.queue.front() {
                if !batch.is_empty() && bytes + m.wire_bytes() > inner.limits.batch_bytes_max {
                    break;
                }
                bytes += m.wire_bytes();
                batch.push(st.queue.pop_front().expect("front was Some"));
            }
            st.queued_bytes -= bytes;
        }
        if batch.is_empty() {
            wake.notified().await;
            continue;
        }
        let chunks = wire::encode_batch(&batch);
        let written = tokio::time::timeout(inner.limits.write_timeout, write_chunks(&mut wr, &chunks))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "writing a batch frame timed out"))??;
        let s = &inner.stats;
        s.messages_sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
        s.frames_written.fetch_add(1, Ordering::Relaxed);
        s.bytes_written.fetch_add(written as u64, Ordering::Relaxed);
        batch.clear();
    }
}

/// Writes every chunk in order with vectored writes; returns the bytes written.
async fn write_chunks<W: AsyncWrite + Unpin>(wr: &mut W, chunks: &[Bytes]) -> IoResult<usize> {
    const SLICES_MAX: usize = 64;
    let (mut index, mut offset, mut total) = (0, 0, 0);
    while index < chunks.len() {
        let slices: Vec<IoSlice<'_>> = chunks[index..]
            .iter()
            .take(SLICES_MAX)
            .enumerate()
            .map(|(i, c)| IoSlice::new(if i == 0 { &c[offset..] } else { &c[..] }))
            .collect();
        let mut written = wr.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        total += written;
        while written > 0 && index < chunks.len() {
            let left = chunks[index].len() - offset;
            if written >= left {
                written -= left;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
    }
    Ok(total)
}

async fn reader(inner: &Arc<Inner>, peer: &Arc<Peer>, generation: u64, rd: OwnedReadHalf) -> IoResult<()> {
    let limits = &inner.limits;
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let receive_budget = Arc::new(Semaphore::new(limits.receive_bytes_max));
    let handlers = Arc::new(Semaphore::new(limits.handlers_max));
    loop {
        let mut prefix = [0u8; 4];
        rd.read_exact(&mut prefix).await?;
        let len = u32::from_be_bytes(prefix) as usize;
        if len < MESSAGE_HEADER_BYTES || len > limits.frame_bytes_max {
            return Err(refused(format!("frame of {len} bytes (limit {})", limits.frame_bytes_max)));
        }
        // Held until every handler of this frame is done: the payloads share its memory.
        let permit =
            receive_budget.clone().acquire_many_owned(len as u32).await.map_err(|_| refused("closed".into()))?;
        // Memory is committed only as bytes arrive.
        let mut frame = BytesMut::with_capacity(len.min(1 << 20));
        while frame.len() < len {
            let want = len - frame.len();
            if frame.capacity() == frame.len() {
                frame.reserve(want.min(1 << 20));
            }
            let n = (&mut rd).take(want as u64).read_buf(&mut frame).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        let messages = wire::decode_batch(frame.freeze()).map_err(|e| refused(e.to_string()))?;
        inner.stats.frames_read.fetch_add(1, Ordering::Relaxed);
        inner.stats.messages_received.fetch_add(messages.len() as u64, Ordering::Relaxed);
        let permit = Arc::new(permit);
        for m in messages {
            match m.tag {
                Tag::Response | Tag::NoAnswer => {
                    let tx = peer.state.lock().pending.remove(&m.request_id);
                    if let Some(tx) = tx {
                        let _ = tx.send(match m.tag {
                            Tag::Response => Ok(m.payload),
                            _ => Err(RpcError::NoAnswer(peer.id)),
                        });
                    }
                }
                Tag::Request | Tag::OneWay => {
                    let running = handlers.clone().acquire_owned().await.map_err(|_| refused("closed".into()))?;
                    let (inner, peer, permit) = (inner.clone(), peer.clone(), permit.clone());
                    tokio::spawn(async move {
                        let answer = inner.handler.handle(peer.id, m.group, m.kind, m.payload).await;
                        drop((running, permit));
                        if m.tag == Tag::Request {
                            let (tag, payload) = match answer {
                                Some(payload) => (Tag::Response, payload),
                                None => (Tag::NoAnswer, Bytes::new()),
                            };
                            let reply =
                                Message { tag, request_id: m.request_id, group: m.group, kind: m.kind, payload };
                            if let Err(e) = inner.enqueue(&peer, reply, Some(generation), None) {
                                tracing::debug!(peer = peer.id, error = %e, "dropping a response");
                            }
                        }
                    });
                }
            }
        }
    }
}
