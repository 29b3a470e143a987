//! End-to-end test support: run the real `creek` binary and drive it with real Kafka clients.
//!
//! [`CreekProcess`] starts one broker on a free loopback port with a fresh temporary data
//! directory, waits for its `creek ready kafka=HOST:PORT` line, and kills it when dropped. It can also
//! be stopped cleanly (SIGTERM) or crashed (SIGKILL) and started again on the same data directory,
//! for crash tests. [`tools`] finds the client programs that `tests/setup.sh` installs and runs them
//! with a time limit.
//!
//! [`proxy`] is a fault-injecting TCP proxy (drop, delay, cut responses); a broker started with
//! [`CreekProcess::start_advertising`] tells clients to connect through it.
//!
//! [`cluster::CreekCluster`] starts N brokers that replicate with Raft, each on free ports with its
//! own data directory and a log file, and can kill, pause, stop, restart or wipe any one of them;
//! started with [`rpc_proxy::InternalProxies`] in front of the internal ports, it can also cut a
//! node off from its peers. [`acked`] is the idempotent producer whose acks cluster tests check,
//! and [`partition_log`] reads a partition's batches from segment files or a leader and compares
//! replicas.
//!
//! This crate does not start network namespaces yet, and it never skips: a missing binary or tool
//! is a test failure that says what to run.
//!
//! ```no_run
//! let broker = creek_tests::CreekProcess::start(&[("auto.create.topics.enable", "true")]);
//! println!("bootstrap servers: {}", broker.bootstrap());
//! ```

pub mod acked;
pub mod cluster;
pub mod partition_log;
pub mod proxy;
pub mod rpc_proxy;
pub mod tools;
pub mod wire;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a broker may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a clean shutdown may take after SIGTERM before the broker is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const READY_PREFIX: &str = "creek ready kafka=";

/// Path of the `creek` binary: `$CREEK_BIN`, else `creek` next to the directory of the running
/// test executable (`target/debug/deps/..` = `target/debug`). Panics with what to run if it is missing.
pub fn creek_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CREEK_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "CREEK_BIN={} does not exist", bin.display());
        return bin;
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile_dir = exe.parent().and_then(Path::parent).expect("test executable lives in <target>/<profile>/deps");
    let bin = profile_dir.join("creek");
    assert!(
        bin.is_file(),
        "the creek binary is missing at {}: run `cargo build -p creek` first (or set CREEK_BIN)",
        bin.display()
    );
    bin
}

/// A free TCP port on 127.0.0.1 at the time of the call.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on 127.0.0.1");
    listener.local_addr().expect("local address").port()
}

/// One running `creek` broker process.
pub struct CreekProcess {
    child: Option<Child>,
    port: u16,
    bootstrap: String,
    settings: Vec<(String, String)>,
    /// What Metadata tells clients to connect to, when not the listener itself (a proxy).
    advertised: Option<String>,
    // Held so the directory lives as long as the process, and is removed after it.
    data_dir: tempfile::TempDir,
}

impl CreekProcess {
    /// Starts a broker with node id 1 on a free port and a new data directory, with extra broker
    /// configs passed as `--set key=value`. Panics if it does not become ready in [`READY_TIMEOUT`].
    pub fn start(settings: &[(&str, &str)]) -> Self {
        Self::start_inner(settings, None)
    }

    /// Like [`start`](Self::start), but Metadata advertises `advertised` (`HOST:PORT`, e.g. a
    /// [`proxy::Proxy`]'s address) instead of the listener. [`bootstrap`](Self::bootstrap) is still
    /// the listener itself, for reading around the proxy.
    pub fn start_advertising(settings: &[(&str, &str)], advertised: &str) -> Self {
        Self::start_inner(settings, Some(advertised.to_string()))
    }

    fn start_inner(settings: &[(&str, &str)], advertised: Option<String>) -> Self {
        let data_dir =
            tempfile::Builder::new().prefix("creek-test-").tempdir().expect("create a temporary data directory");
        let settings: Vec<(String, String)> = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut broker =
            CreekProcess { child: None, port: free_port(), bootstrap: String::new(), settings, advertised, data_dir };
        broker.spawn();
        broker
    }

    /// `HOST:PORT` of the Kafka listener, as the broker announced it (not the advertised address).
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Process id of the running broker, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Crashes the broker with SIGKILL and reaps it. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The process may have exited on its own already; both calls are then harmless.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker with SIGTERM and waits for it to exit; returns its exit status.
    /// Panics if it does not exit within [`STOP_TIMEOUT`] (the process is killed first).
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("stop() on a broker that is not running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
        kill(pid, Signal::SIGTERM).expect("send SIGTERM to creek");
        match tools::wait_timeout(&mut child, STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("creek did not exit within {STOP_TIMEOUT:?} of SIGTERM");
            }
        }
    }

    /// Starts the broker again on the same port and data directory, after [`kill`](Self::kill)
    /// or [`stop`](Self::stop).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() while the broker still runs");
        self.spawn();
    }

    fn spawn(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        let advertised = self.advertised.clone().unwrap_or_else(|| listen.clone());
        let args = ServeArgs {
            node_id: 1,
            listen: &listen,
            advertised: &advertised,
            data_dir: self.data_dir.path(),
            settings: &self.settings,
            stderr_log: None,
        };
        let (child, addr) = spawn_creek(&args).wait_ready(Instant::now() + READY_TIMEOUT);
        self.bootstrap = addr;
        self.child = Some(child);
    }
}

/// How to run one `creek serve`; shared by [`CreekProcess`] and [`cluster::CreekCluster`].
pub(crate) struct ServeArgs<'a> {
    pub(crate) node_id: i32,
    pub(crate) listen: &'a str,
    pub(crate) advertised: &'a str,
    pub(crate) data_dir: &'a Path,
    pub(crate) settings: &'a [(String, String)],
    /// Where the broker's stderr goes: appended to this file, else echoed to the test's stderr.
    pub(crate) stderr_log: Option<&'a Path>,
}

/// A spawned `creek serve` that has not printed its ready line yet.
pub(crate) struct Starting {
    /// `None` once handed out by `wait_ready`; dropping a `Starting` that still holds it kills it.
    child: Option<Child>,
    ready: mpsc::Receiver<String>,
    cmd: String,
    stderr_log: Option<PathBuf>,
}

/// Spawns `creek serve` with `args`; [`Starting::wait_ready`] waits for it to serve.
pub(crate) fn spawn_creek(args: &ServeArgs<'_>) -> Starting {
    let mut cmd = Command::new(creek_bin());
    cmd.arg("serve")
        .args(["--listen", args.listen, "--advertised-listener", args.advertised])
        .arg("--data-dir")
        .arg(args.data_dir)
        .args(["--node-id", &args.node_id.to_string()]);
    for (k, v) in args.settings {
        cmd.args(["--set", &format!("{k}={v}")]);
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info,openraft=warn");
    }
    let stderr = match args.stderr_log {
        Some(path) => {
            cmd.env("NO_COLOR", "1"); // plain text in log files
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            Stdio::from(file)
        }
        None => Stdio::piped(),
    };
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let label = if args.stderr_log.is_some() { "creek" } else { "creek stdout" };
    let (ready_tx, ready) = mpsc::channel();
    forward_lines(label, args.node_id, child.stdout.take().expect("piped stdout"), Some(ready_tx));
    if let Some(stderr) = child.stderr.take() {
        forward_lines("creek stderr", args.node_id, stderr, None);
    }
    Starting { child: Some(child), ready, cmd: format!("{cmd:?}"), stderr_log: args.stderr_log.map(Path::to_path_buf) }
}

impl Starting {
    /// Waits until the broker prints `creek ready kafka=ADDR`; returns it and ADDR. Panics, after
    /// killing it, if it exits first or `deadline` passes; the panic shows its log's tail.
    pub(crate) fn wait_ready(mut self, deadline: Instant) -> (Child, String) {
        let log = self.stderr_log.clone();
        let where_output = move || match &log {
            Some(path) => format!("its log {}, ends with:\n{}", path.display(), log_tail(path, 30)),
            None => "its output is above".to_string(),
        };
        let child = self.child.as_mut().expect("a Starting holds its child until it is ready");
        loop {
            match self.ready.recv_timeout(Duration::from_millis(100)) {
                Ok(addr) => return (self.child.take().expect("child"), addr),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().expect("wait for creek");
                    panic!("creek exited before it was ready ({status}): {}\n{}", self.cmd, where_output());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("creek exited before it was ready ({status}): {}\n{}", self.cmd, where_output());
            }
            if Instant::now() > deadline {
                // Drop kills and reaps it.
                panic!("creek printed no `{READY_PREFIX}...` line in time: {}\n{}", self.cmd, where_output());
            }
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last `lines` lines of a log file but openraft's (or why it cannot be read), for panic
/// messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            // openraft's warnings about a peer that is down repeat many times a second and
            // would push Creek's own lines out of the tail.
            let all: Vec<&str> = text.lines().filter(|l| !l.contains(" openraft::")).collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

impl Drop for CreekProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies a child's output lines to this process's stderr (which the test runner captures), and
/// sends the address from the first ready line to `ready`.
fn forward_lines(
    label: &'static str,
    node_id: i32,
    stream: impl Read + Send + 'static,
    ready: Option<mpsc::Sender<String>>,
) {
    thread::spawn(move || {
        let mut ready = ready;
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{label} {node_id}] {line}");
            if let Some(addr) = line.trim().strip_prefix(READY_PREFIX)
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
}

/// The first of `n` consecutive loopback ports that were all free at the time of the call, for
/// programs that take a base port (deploy/local-cluster.sh) and for cluster nodes. Tries random
/// bases in 20000..32000: below Linux's ephemeral range (32768..), so while a node is down no
/// outgoing connection can take its port and keep it from restarting.
pub fn free_consecutive_ports(n: u16) -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new();
    for attempt in 0u32..200 {
        let base = 20_000 + (random.hash_one(attempt) % u64::from(12_000 - n)) as u16;
        // Hold every listener until all n are bound, so the range is free as a whole.
        let bound: Vec<TcpListener> = (0..n).map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok()).collect();
        if bound.len() == usize::from(n) {
            return base;
        }
    }
    panic!("found no {n} consecutive free ports on 127.0.0.1 in 20000..32000 after 200 tries");
}

/// A topic name unique within this test process and across concurrent processes.
pub fn unique_topic(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}
