//! The fault-injecting proxy itself, against a tiny frame echo server: it forwards, drops the
//! chosen responses (closing or not), delays, cuts connections and counts what it did.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use creek_tests::proxy::{DropMode, Faults, Proxy};

/// A server that answers every request frame with a frame of its correlation id and `resp`.
fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            thread::spawn(move || {
                loop {
                    let mut len = [0u8; 4];
                    if conn.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
                    if conn.read_exact(&mut body).is_err() {
                        return;
                    }
                    let mut resp = 8i32.to_be_bytes().to_vec();
                    resp.extend_from_slice(&body[4..8]);
                    resp.extend_from_slice(b"resp");
                    if conn.write_all(&resp).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

struct Client {
    stream: TcpStream,
}

impl Client {
    fn connect(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { stream }
    }

    /// Sends a request header (api key, version 0, correlation id) with no body.
    fn send(&mut self, api_key: i16, correlation: i32) {
        let mut frame = 8i32.to_be_bytes().to_vec();
        frame.extend_from_slice(&api_key.to_be_bytes());
        frame.extend_from_slice(&0i16.to_be_bytes());
        frame.extend_from_slice(&correlation.to_be_bytes());
        self.stream.write_all(&frame).unwrap();
    }

    /// The correlation id of the next response; `None` on EOF, a reset or a timeout.
    fn recv(&mut self) -> Option<i32> {
        let mut frame = [0u8; 12];
        self.stream.read_exact(&mut frame).ok()?;
        Some(i32::from_be_bytes(frame[4..8].try_into().unwrap()))
    }
}

#[test]
fn forwards_every_frame_and_counts_them() {
    let proxy = Proxy::to(&echo_server());
    let mut c = Client::connect(&proxy.addr());
    for i in 1..=10 {
        c.send(3, i);
    }
    let got: Vec<_> = (0..10).map(|_| c.recv().expect("response")).collect();
    assert_eq!(got, (1..=10).collect::<Vec<_>>());
    let s = proxy.stats();
    assert_eq!((s.connections, s.requests, s.forwarded, s.dropped), (1, 10, 10, 0), "{s:?}");
}

#[test]
fn drop_and_close_drops_the_nth_matching_response_and_closes_the_connection() {
    let proxy = Proxy::to(&echo_server());
    // Only Produce (0) responses count; the 2nd Produce response is dropped.
    proxy.set_faults(Faults { api_key: Some(0), drop_nth: vec![2], ..Faults::default() });
    let mut c = Client::connect(&proxy.addr());
    c.send(3, 1); // Metadata: not matched
    assert_eq!(c.recv(), Some(1));
    c.send(0, 2); // 1st Produce: forwarded
    assert_eq!(c.recv(), Some(2));
    c.send(3, 3);
    assert_eq!(c.recv(), Some(3));
    c.send(0, 4); // 2nd Produce: dropped, connection closed
    assert_eq!(c.recv(), None, "the connection must close instead of answering");
    let s = proxy.stats();
    assert_eq!((s.forwarded, s.dropped, s.matched), (3, 1, 2), "{s:?}");
    assert_eq!(proxy.open_connections(), 0);
    // The broker side of the connection was closed too, and new connections still work.
    let mut c = Client::connect(&proxy.addr());
    c.send(0, 5);
    assert_eq!(c.recv(), Some(5));
}

#[test]
fn drop_without_close_skips_the_response_and_keeps_the_connection() {
    let proxy = Proxy::to(&echo_server());
    proxy.set_faults(Faults { drop_nth: vec![2, 4], mode: DropMode::Drop, ..Faults::default() });
    let mut c = Client::connect(&proxy.addr());
    for i in 1..=5 {
        c.send(0, i);
    }
    assert_eq!((c.recv(), c.recv(), c.recv()), (Some(1), Some(3), Some(5)));
    assert_eq!((proxy.stats().forwarded, proxy.stats().dropped), (3, 2));
    assert_eq!(proxy.open_connections(), 1);
}

fn dropped_pattern(seed: u64) -> Vec<i32> {
    let proxy = Proxy::to(&echo_server());
    proxy.set_faults(Faults { drop_probability: 0.3, seed, mode: DropMode::Drop, ..Faults::default() });
    let mut c = Client::connect(&proxy.addr());
    for i in 1..=50 {
        c.send(0, i);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.stats().matched < 50 {
        assert!(Instant::now() < deadline, "the proxy saw {} of 50 responses", proxy.stats().matched);
        thread::sleep(Duration::from_millis(5));
    }
    // A sentinel that is not dropped marks the end of the responses.
    proxy.clear_faults();
    c.send(18, 1000);
    let mut got = Vec::new();
    loop {
        match c.recv().expect("responses up to the sentinel") {
            1000 => break,
            corr => got.push(corr),
        }
    }
    (1..=50).filter(|i| !got.contains(i)).collect()
}

#[test]
fn probabilistic_drops_are_reproducible_from_the_seed() {
    let a = dropped_pattern(42);
    let b = dropped_pattern(42);
    let c = dropped_pattern(43);
    println!("seed 42 drops {a:?}; seed 43 drops {c:?}");
    assert!(!a.is_empty() && a.len() < 50, "p=0.3 over 50 responses dropped {}", a.len());
    assert_eq!(a, b, "the same seed drops the same responses");
    assert_ne!(a, c, "another seed drops others");
}

#[test]
fn delay_holds_responses() {
    let proxy = Proxy::to(&echo_server());
    proxy.set_faults(Faults { delay: Duration::from_millis(300), ..Faults::default() });
    let mut c = Client::connect(&proxy.addr());
    let start = Instant::now();
    c.send(0, 1);
    assert_eq!(c.recv(), Some(1));
    assert!(start.elapsed() >= Duration::from_millis(300), "answered after {:?}", start.elapsed());
}

#[test]
fn cut_all_closes_every_connection_and_new_ones_are_accepted() {
    let proxy = Proxy::to(&echo_server());
    let mut clients: Vec<_> = (0..3).map(|_| Client::connect(&proxy.addr())).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(0, i as i32);
        assert_eq!(c.recv(), Some(i as i32));
    }
    assert_eq!(proxy.open_connections(), 3);
    proxy.cut_all();
    for c in &mut clients {
        assert_eq!(c.recv(), None, "a cut connection reads EOF");
    }
    assert_eq!(proxy.open_connections(), 0);
    let mut c = Client::connect(&proxy.addr());
    c.send(0, 9);
    assert_eq!(c.recv(), Some(9));
}
