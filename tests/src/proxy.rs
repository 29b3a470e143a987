//! A fault-injecting TCP proxy for Kafka connections: it forwards frames both ways and, per
//! response frame, can drop it (optionally closing the connection), delay it, or cut everything.
//!
//! The trick it exists for: a request reaches the broker and is applied, but the client never sees
//! the answer, so it retries. With [`DropMode::DropAndClose`] the client notices at once (the
//! connection breaks) and resends the same batch with the same sequence; with [`DropMode::Drop`] the
//! connection stays up and the client waits for its request timeout.
//!
//! The proxy reads request headers in the client→broker direction (api key and correlation id) so
//! that it knows which API each response answers, and faults can target one API (e.g. Produce).
//! Kafka clients connect to the addresses Metadata advertises, so a broker behind this proxy must
//! advertise the proxy's address: see [`crate::CreekProcess::start_advertising`].
//!
//! ```no_run
//! use creek_tests::proxy::{DropMode, Faults, Proxy};
//! let proxy = Proxy::start();
//! let broker = creek_tests::CreekProcess::start_advertising(&[], &proxy.addr());
//! proxy.set_target(broker.bootstrap());
//! proxy.set_faults(Faults { api_key: Some(0), drop_probability: 0.05, seed: 7, ..Faults::default() });
//! // ... run a client against proxy.addr() ...
//! assert!(proxy.stats().dropped > 0);
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Frames larger than this are treated as a broken stream (the proxy closes the connection).
const FRAME_BYTES_MAX: usize = 256 << 20;

/// What happens to a response the faults select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DropMode {
    /// Do not forward it and close both sides of the connection: the client sees a broken
    /// connection with the request in flight, and retries.
    #[default]
    DropAndClose,
    /// Do not forward it and keep the connection: the client waits until its request timeout.
    Drop,
}

/// The faults applied to broker→client response frames. Switch them at any time with
/// [`Proxy::set_faults`]; the default forwards everything.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Only responses to this API key are subject to drops and delays (`None`: every response).
    pub api_key: Option<i16>,
    /// Drop these matching responses, counted from 1 since the faults were set.
    pub drop_nth: Vec<u64>,
    /// Drop each matching response with this probability, drawn from `seed`.
    pub drop_probability: f64,
    pub seed: u64,
    pub mode: DropMode,
    /// Hold each matching response this long before forwarding it.
    pub delay: Duration,
}

/// Counters since the proxy started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Client connections accepted (and connected through to the target).
    pub connections: u64,
    /// Request frames forwarded (or being forwarded) to the broker.
    pub requests: u64,
    /// Response frames forwarded (or being forwarded) to clients.
    pub forwarded: u64,
    /// Response frames dropped by the faults.
    pub dropped: u64,
    /// Response frames that matched `Faults::api_key` (dropped or not).
    pub matched: u64,
}

struct FaultState {
    faults: Faults,
    rng: u64,
    matched_since_set: u64,
}

enum Action {
    Forward(Duration),
    Drop { close: bool },
}

struct Shared {
    target: Mutex<Option<String>>,
    faults: Mutex<FaultState>,
    /// Both sockets of every open connection, by connection id, so they can be cut.
    conns: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    stop: AtomicBool,
    connections: AtomicU64,
    requests: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    matched: AtomicU64,
}

impl Shared {
    fn decide(&self, api_key: Option<i16>) -> Action {
        let mut st = self.faults.lock().unwrap();
        let f = &st.faults;
        if f.api_key.is_some() && f.api_key != api_key {
            return Action::Forward(Duration::ZERO);
        }
        self.matched.fetch_add(1, Ordering::Relaxed);
        st.matched_since_set += 1;
        let n = st.matched_since_set;
        let nth = st.faults.drop_nth.contains(&n);
        let p = st.faults.drop_probability;
        let random = p > 0.0 && (next_random(&mut st.rng) as f64 / u64::MAX as f64) < p;
        if nth || random {
            return Action::Drop { close: st.faults.mode == DropMode::DropAndClose };
        }
        Action::Forward(st.faults.delay)
    }

    fn close(&self, id: u64) {
        if let Some((a, b)) = self.conns.lock().unwrap().remove(&id) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

/// xorshift64*: deterministic per seed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// A running proxy on 127.0.0.1; it stops accepting and cuts every connection when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Binds 127.0.0.1:0 and starts accepting. Connections accepted before [`Proxy::set_target`]
    /// are closed at once.
    pub fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy on 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            target: Mutex::new(None),
            faults: Mutex::new(FaultState { faults: Faults::default(), rng: 1, matched_since_set: 0 }),
            conns: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            matched: AtomicU64::new(0),
        });
        let accept_shared = shared.clone();
        thread::spawn(move || accept_loop(listener, accept_shared));
        Proxy { addr, shared }
    }

    /// Like [`Proxy::start`], forwarding to `target` (`HOST:PORT`).
    pub fn to(target: &str) -> Proxy {
        let proxy = Proxy::start();
        proxy.set_target(target);
        proxy
    }

    /// `127.0.0.1:PORT` clients connect to.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Where new connections are forwarded (`HOST:PORT`).
    pub fn set_target(&self, target: &str) {
        *self.shared.target.lock().unwrap() = Some(target.to_string());
    }

    /// Replaces the faults; `drop_nth` counts from the next matching response.
    pub fn set_faults(&self, faults: Faults) {
        let mut st = self.shared.faults.lock().unwrap();
        // xorshift needs a non-zero state; distinct seeds give distinct states.
        st.rng = (faults.seed ^ 0x9E37_79B9_7F4A_7C15).max(1);
        st.matched_since_set = 0;
        st.faults = faults;
    }

    /// Forward everything from now on.
    pub fn clear_faults(&self) {
        self.set_faults(Faults::default());
    }

    /// Closes every open connection (both sides); new connections are still accepted.
    pub fn cut_all(&self) {
        let conns: Vec<_> = self.shared.conns.lock().unwrap().drain().collect();
        for (_, (a, b)) in conns {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        Stats {
            connections: s.connections.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            forwarded: s.forwarded.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            matched: s.matched.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        self.cut_all();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_id = 0u64;
    for client in listener.incoming() {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(client) = client else { continue };
        let target = shared.target.lock().unwrap().clone();
        let Some(target) = target else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let Ok(upstream) = TcpStream::connect(&target) else {
            // The broker is down: the client sees a refused-like close, as it would without a proxy.
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) =
            (client.try_clone(), upstream.try_clone(), client.try_clone(), upstream.try_clone())
        else {
            continue;
        };
        shared.conns.lock().unwrap().insert(id, (c3, u3));
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let in_flight: Arc<Mutex<HashMap<i32, i16>>> = Arc::default();
        let (s1, s2, f1, f2) = (shared.clone(), shared.clone(), in_flight.clone(), in_flight);
        thread::spawn(move || {
            client_to_broker(client, upstream, &s1, &f1);
            s1.close(id);
        });
        thread::spawn(move || {
            broker_to_client(u2, c2, &s2, &f2, id);
            s2.close(id);
        });
    }
}

/// Reads one length-prefixed frame (prefix included in the returned bytes).
fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let n = i32::from_be_bytes(len);
    if n < 0 || n as usize > FRAME_BYTES_MAX {
        return None;
    }
    let mut frame = vec![0u8; 4 + n as usize];
    frame[..4].copy_from_slice(&len);
    stream.read_exact(&mut frame[4..]).ok()?;
    Some(frame)
}

fn client_to_broker(
    mut client: TcpStream,
    mut upstream: TcpStream,
    shared: &Shared,
    in_flight: &Mutex<HashMap<i32, i16>>,
) {
    while let Some(frame) = read_frame(&mut client) {
        // Request header: api key i16, api version i16, correlation id i32.
        if frame.len() >= 12 {
            let api_key = i16::from_be_bytes([frame[4], frame[5]]);
            let correlation = i32::from_be_bytes(frame[8..12].try_into().expect("4 bytes"));
            in_flight.lock().unwrap().insert(correlation, api_key);
        }
        // Counted before the write, so a test that saw the answer also sees the count.
        shared.requests.fetch_add(1, Ordering::Relaxed);
        if upstream.write_all(&frame).is_err() {
            return;
        }
    }
}

fn broker_to_client(
    mut upstream: TcpStream,
    mut client: TcpStream,
    shared: &Shared,
    in_flight: &Mutex<HashMap<i32, i16>>,
    id: u64,
) {
    while let Some(frame) = read_frame(&mut upstream) {
        let api_key = (frame.len() >= 8)
            .then(|| i32::from_be_bytes(frame[4..8].try_into().expect("4 bytes")))
            .and_then(|correlation| in_flight.lock().unwrap().remove(&correlation));
        match shared.decide(api_key) {
            Action::Forward(delay) => {
                if !delay.is_zero() {
                    thread::sleep(delay);
                }
                shared.forwarded.fetch_add(1, Ordering::Relaxed);
                if client.write_all(&frame).is_err() {
                    return;
                }
            }
            Action::Drop { close } => {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                if close {
                    shared.close(id);
                    return;
                }
            }
        }
    }
}
