//! A node-aware proxy in front of every node's internal (Raft/RPC) port, so a test can cut one node
//! off from its peers while its Kafka listener keeps serving clients.
//!
//! Only the lower node id dials, and every node dials the addresses in `internal.peers`; a cluster
//! started with [`crate::cluster::CreekCluster::start_with_internal_proxies`] lists these proxies
//! there and makes each node listen on its real port (`internal.listener`). So every connection
//! into node `k` passes through proxy `k`, and the proxy learns who dialed from the first bytes,
//! the handshake: magic `CRPC`, version u16, node id u64 (big-endian), cluster id length u8, cluster
//! id (broker/src/rpc/wire.rs). [`InternalProxies::isolate`] closes, and keeps refusing, every
//! connection into or out of a node; [`InternalProxies::heal`] lets them through again.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Magic, version, node id and cluster id length: the handshake's fixed part.
const HELLO_FIXED_BYTES: usize = 4 + 2 + 8 + 1;
/// How long a dialer may take to send its handshake's fixed part.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// One forwarded connection: who dialed whom, and both sockets so it can be cut.
struct Conn {
    dialer: i32,
    target: i32,
    sockets: (TcpStream, TcpStream),
}

struct Shared {
    isolated: HashSet<i32>,
    conns: HashMap<u64, Conn>,
    next_id: u64,
}

impl Shared {
    fn blocked(&self, dialer: i32, target: i32) -> bool {
        self.isolated.contains(&dialer) || self.isolated.contains(&target)
    }
}

/// One proxy per node, all sharing the set of isolated nodes. Stops accepting and cuts every
/// connection when dropped.
pub struct InternalProxies {
    /// (node id, the port peers dial).
    ports: Vec<(i32, u16)>,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
}

impl InternalProxies {
    /// Starts proxy `id` on `127.0.0.1:listen` forwarding to `127.0.0.1:target`, for every
    /// `(id, listen, target)`.
    pub fn start(nodes: &[(i32, u16, u16)]) -> InternalProxies {
        let shared = Arc::new(Mutex::new(Shared { isolated: HashSet::new(), conns: HashMap::new(), next_id: 0 }));
        let stop = Arc::new(AtomicBool::new(false));
        for &(id, listen, target) in nodes {
            let listener = TcpListener::bind(("127.0.0.1", listen))
                .unwrap_or_else(|e| panic!("bind the internal proxy of node {id} on port {listen}: {e}"));
            let (shared, stop) = (shared.clone(), stop.clone());
            thread::spawn(move || accept_loop(listener, id, target, &shared, &stop));
        }
        InternalProxies { ports: nodes.iter().map(|&(id, listen, _)| (id, listen)).collect(), shared, stop }
    }

    /// Cuts node `id` off: closes every connection into or out of it, and refuses new ones until
    /// [`heal`](Self::heal).
    pub fn isolate(&self, id: i32) {
        let mut s = self.shared.lock().unwrap();
        s.isolated.insert(id);
        let cut: Vec<u64> = s.conns.iter().filter(|(_, c)| c.dialer == id || c.target == id).map(|(k, _)| *k).collect();
        for k in cut {
            if let Some(c) = s.conns.remove(&k) {
                close(&c.sockets);
            }
        }
    }

    /// Lets every node's connections through again.
    pub fn heal(&self) {
        self.shared.lock().unwrap().isolated.clear();
    }

    /// Connections forwarded right now.
    pub fn open_connections(&self) -> usize {
        self.shared.lock().unwrap().conns.len()
    }
}

impl Drop for InternalProxies {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for &(_, port) in &self.ports {
            // Wake each accept loop so it sees the flag.
            let _ = TcpStream::connect(("127.0.0.1", port));
        }
        let mut s = self.shared.lock().unwrap();
        for (_, c) in s.conns.drain() {
            close(&c.sockets);
        }
    }
}

fn close((a, b): &(TcpStream, TcpStream)) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

fn accept_loop(listener: TcpListener, target: i32, target_port: u16, shared: &Arc<Mutex<Shared>>, stop: &AtomicBool) {
    for client in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(client) = client else { continue };
        let shared = shared.clone();
        // The handshake read may wait; never hold up other dialers.
        thread::spawn(move || forward(client, target, target_port, &shared));
    }
}

/// Reads the dialer's handshake, connects to the node and pipes both ways, unless either end is
/// isolated.
fn forward(mut client: TcpStream, target: i32, target_port: u16, shared: &Mutex<Shared>) {
    let mut hello = [0u8; HELLO_FIXED_BYTES];
    let _ = client.set_read_timeout(Some(HELLO_TIMEOUT));
    if client.read_exact(&mut hello).is_err() || &hello[..4] != b"CRPC" {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let dialer = i64::from_be_bytes(hello[6..14].try_into().expect("8 bytes"));
    let dialer = i32::try_from(dialer).unwrap_or(-1);
    if shared.lock().unwrap().blocked(dialer, target) {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", target_port)) else {
        // The node is down: the dialer sees its connection close and backs off, as without a proxy.
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_read_timeout(None);
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    if upstream.write_all(&hello).is_err() {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let clones = (client.try_clone(), upstream.try_clone(), client.try_clone(), upstream.try_clone());
    let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = clones else {
        close(&(client, upstream));
        return;
    };
    let id = {
        let mut s = shared.lock().unwrap();
        // Checked again under the lock that isolate() takes, so no connection slips past a cut.
        if s.blocked(dialer, target) {
            drop(s);
            close(&(client, upstream));
            return;
        }
        s.next_id += 1;
        let id = s.next_id;
        s.conns.insert(id, Conn { dialer, target, sockets: (c3, u3) });
        id
    };
    let pipe = |mut from: TcpStream, mut to: TcpStream| {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    };
    let back = thread::spawn(move || pipe(u2, c2));
    pipe(client, upstream);
    let _ = back.join();
    shared.lock().unwrap().conns.remove(&id);
}
