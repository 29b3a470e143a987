//! A cluster of `creek` brokers on this machine that replicate with Raft, for multi-node fault tests.
//!
//! Every node gets a free Kafka port and a free internal (Raft/RPC) port, below the ephemeral
//! range, and its own temporary directory holding `data/` and `creek.log` (the broker's stderr,
//! appended across restarts). All nodes share one `internal.peers` list. Nodes are numbered 1..=n. Waits have deadlines and their
//! panics show the tail of every node's log.
//!
//! [`CreekCluster::start_with_internal_proxies`] puts an [`InternalProxies`] in front of every
//! node's internal port, so [`CreekCluster::isolate`] can cut a node off from its peers.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    ApiKey, CreateTopicsResponse, FindCoordinatorRequest, FindCoordinatorResponse, MetadataRequest, MetadataResponse,
    metadata_request::MetadataRequestTopic,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::rpc_proxy::InternalProxies;
use crate::wire::{self, Wire};
use crate::{READY_TIMEOUT, STOP_TIMEOUT, ServeArgs, Starting, free_consecutive_ports, log_tail, spawn_creek, tools};

/// How long one request to one node may take before that node counts as not answering.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two looks at the cluster's state while waiting for it to change.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long [`CreekCluster::create_topic`] keeps retrying.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// CreateTopics errors to retry: LEADER_NOT_AVAILABLE, REQUEST_TIMED_OUT, BROKER_NOT_AVAILABLE,
/// NOT_CONTROLLER.
const CREATE_RETRIABLE: [i16; 4] = [5, 7, 8, 41];
const TOPIC_ALREADY_EXISTS: i16 = 36;
/// FindCoordinator key types.
pub const KEY_TYPE_GROUP: i8 = 0;
pub const KEY_TYPE_TRANSACTION: i8 = 1;
/// Log lines per node shown in a panic.
const TAIL_LINES: usize = 25;

/// One node of a [`CreekCluster`].
struct Node {
    id: i32,
    kafka_port: u16,
    internal_port: u16,
    /// The port the node really listens on for internal RPC when a proxy holds `internal_port`.
    listener_port: Option<u16>,
    /// Holds `data/` and `creek.log`; removed when the cluster is dropped.
    dir: tempfile::TempDir,
    /// Added to the running cluster ([`CreekCluster::add_node`]): not in `internal.peers`, so it
    /// announces its own `internal.listener`.
    joined: bool,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("creek.log")
    }

    /// Running and not stopped with SIGSTOP: worth asking.
    fn answers(&self) -> bool {
        self.child.is_some() && !self.paused
    }
}

/// n `creek` processes forming one Raft-replicated cluster. Every process is killed when dropped.
pub struct CreekCluster {
    nodes: Vec<Node>,
    /// `--set` settings of every node, `internal.peers` first.
    settings: Vec<(String, String)>,
    proxies: Option<InternalProxies>,
}

impl CreekCluster {
    /// Starts `n` nodes and waits until each one's Kafka listener serves (not until they form a
    /// cluster: see [`wait_for_leaders`](Self::wait_for_leaders)).
    pub fn start(n: usize) -> CreekCluster {
        Self::start_with(n, &[])
    }

    /// Like [`start`](Self::start), with extra broker configs for every node.
    pub fn start_with(n: usize, settings: &[(&str, &str)]) -> CreekCluster {
        Self::start_inner(n, settings, false)
    }

    /// Like [`start`](Self::start), with an [`InternalProxies`] in front of every node's internal
    /// port (`internal.peers` lists the proxies; each node listens on its own real port), so that
    /// [`isolate`](Self::isolate) can cut a node off from its peers.
    pub fn start_with_internal_proxies(n: usize, settings: &[(&str, &str)]) -> CreekCluster {
        Self::start_inner(n, settings, true)
    }

    /// [`start_with_internal_proxies`](Self::start_with_internal_proxies) with extra broker
    /// configs for every node.
    pub fn start_with_internal_proxies_and(n: usize, settings: &[(&str, &str)]) -> CreekCluster {
        Self::start_inner(n, settings, true)
    }

    fn start_inner(n: usize, settings: &[(&str, &str)], proxied: bool) -> CreekCluster {
        assert!(n >= 1, "a cluster needs at least one node");
        let per_node = if proxied { 3 } else { 2 };
        let count = u16::try_from(per_node * n).expect("a cluster of fewer than 16384 nodes");
        let base = usize::from(free_consecutive_ports(count));
        let ports: Vec<u16> = (base..base + per_node * n).map(|p| p as u16).collect();
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let dir = tempfile::Builder::new()
                    .prefix(&format!("creek-node{}-", i + 1))
                    .tempdir()
                    .expect("create a temporary node directory");
                std::fs::create_dir(dir.path().join("data")).expect("create the node's data directory");
                let id = i32::try_from(i + 1).expect("node id fits in i32");
                let listener_port = proxied.then(|| ports[2 * n + i]);
                Node {
                    id,
                    kafka_port: ports[i],
                    internal_port: ports[n + i],
                    listener_port,
                    dir,
                    joined: false,
                    child: None,
                    paused: false,
                }
            })
            .collect();
        let peers: Vec<String> = nodes.iter().map(|n| format!("{}@127.0.0.1:{}", n.id, n.internal_port)).collect();
        let mut all_settings = vec![("internal.peers".to_string(), peers.join(","))];
        all_settings.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let proxies = proxied.then(|| {
            let routes: Vec<(i32, u16, u16)> =
                nodes.iter().map(|n| (n.id, n.internal_port, n.listener_port.expect("proxied"))).collect();
            InternalProxies::start(&routes)
        });
        let mut cluster = CreekCluster { nodes, settings: all_settings, proxies };
        cluster.restart_all(&(1..=n as i32).collect::<Vec<_>>());
        cluster
    }

    /// Starts one more node, with the next id and the same settings (`internal.peers` still lists
    /// only the first nodes), so it joins the running cluster as a new broker; waits until its
    /// Kafka listener serves and returns its id.
    pub fn add_node(&mut self) -> i32 {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let base = free_consecutive_ports(2);
        let dir = tempfile::Builder::new()
            .prefix(&format!("creek-node{id}-"))
            .tempdir()
            .expect("create a temporary node directory");
        std::fs::create_dir(dir.path().join("data")).expect("create the node's data directory");
        self.nodes.push(Node {
            id,
            kafka_port: base,
            internal_port: base + 1,
            listener_port: None,
            dir,
            joined: true,
            child: None,
            paused: false,
        });
        let (child, _) = self.spawn(id).wait_ready(Instant::now() + READY_TIMEOUT);
        self.node_mut(id).child = Some(child);
        id
    }

    /// Produces `batch` to `topic`'s `partition` with acks=all at its leader, asking again
    /// (the leader as Metadata names it now) while the answer is NOT_LEADER_OR_FOLLOWER: a
    /// leader that was just elected serves only once it has confirmed its term. Returns the base
    /// offset; panics on any other error or after 30 s.
    pub fn produce_at_leader(&self, topic: &str, partition: i32, batch: Vec<u8>) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leaders = self.wait_for_leaders(topic, partition + 1, Duration::from_secs(30));
            let (leader, _) = leaders[partition as usize];
            let mut w = Wire::connect(&self.addr(leader));
            match wire::produce(&mut w, topic, partition, batch.clone(), -1) {
                (0, offset) => return offset,
                (6, _) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
                (code, _) => {
                    panic!("produce to {topic}-{partition} at node {leader}: error {code}\n{}", self.log_tails())
                }
            }
        }
    }

    /// Number of nodes, running or not.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `HOST:PORT` of node `id`'s Kafka listener.
    pub fn addr(&self, id: i32) -> String {
        self.node(id).addr()
    }

    /// Every node's Kafka listener, comma-separated: `bootstrap.servers` for a client.
    pub fn bootstrap(&self) -> String {
        self.nodes.iter().map(Node::addr).collect::<Vec<_>>().join(",")
    }

    /// Process id of node `id`, if it runs.
    pub fn pid(&self, id: i32) -> Option<u32> {
        self.node(id).child.as_ref().map(Child::id)
    }

    /// Crashes node `id` with SIGKILL and reaps it. Does nothing if it is not running.
    pub fn kill(&mut self, id: i32) {
        let node = self.node_mut(id);
        node.paused = false;
        if let Some(mut child) = node.child.take() {
            // It may have exited on its own already; both calls are then harmless.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `id` again with the same ports and data directory, after [`kill`](Self::kill).
    pub fn restart(&mut self, id: i32) {
        assert!(self.node(id).child.is_none(), "restart({id}) while node {id} still runs");
        let (child, _) = self.spawn(id).wait_ready(Instant::now() + READY_TIMEOUT);
        self.node_mut(id).child = Some(child);
    }

    /// Starts the nodes `ids` again (after [`kill`](Self::kill)), all of them before waiting for
    /// any: a node may need the others (a metadata quorum) before it serves.
    pub fn restart_all(&mut self, ids: &[i32]) {
        for &id in ids {
            assert!(self.node(id).child.is_none(), "restart_all: node {id} still runs");
        }
        let starting: Vec<(i32, Starting)> = ids.iter().map(|&id| (id, self.spawn(id))).collect();
        let deadline = Instant::now() + READY_TIMEOUT;
        for (id, s) in starting {
            let (child, _) = s.wait_ready(deadline);
            self.node_mut(id).child = Some(child);
        }
    }

    /// Stops node `id` cleanly with SIGTERM and waits for it to exit; panics if it does not exit
    /// within [`STOP_TIMEOUT`] (it is killed first) or exits with a failure.
    pub fn stop(&mut self, id: i32) {
        if self.node(id).paused {
            self.resume(id);
        }
        let Some(mut child) = self.node_mut(id).child.take() else { return };
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
        kill(pid, Signal::SIGTERM).unwrap_or_else(|e| panic!("send SIGTERM to node {id}: {e}"));
        let status = tools::wait_timeout(&mut child, STOP_TIMEOUT);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        match status {
            Some(s) if s.success() => {}
            other => panic!("node {id} did not exit cleanly on SIGTERM: {other:?}\n{}", self.log_tails()),
        }
    }

    /// Cuts node `id` off from every peer (see [`InternalProxies::isolate`]); its Kafka listener
    /// still serves. Panics unless the cluster was started with internal proxies.
    pub fn isolate(&self, id: i32) {
        self.internal_proxies().isolate(id);
    }

    /// Reconnects every node isolated with [`isolate`](Self::isolate).
    pub fn heal(&self) {
        self.internal_proxies().heal();
    }

    fn internal_proxies(&self) -> &InternalProxies {
        self.proxies.as_ref().expect("the cluster was started without internal proxies")
    }

    /// Whether node `id` runs and is not paused: worth asking.
    pub fn answers(&self, id: i32) -> bool {
        self.node(id).answers()
    }

    /// Ids of every node, running or not.
    pub fn ids(&self) -> Vec<i32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Whether node `id` runs (paused or not).
    pub fn running(&self, id: i32) -> bool {
        self.node(id).child.is_some()
    }

    /// Node `id`'s data directory (`--data-dir`); read its files only while it is stopped, or
    /// expect the tail to be mid-write.
    pub fn data_dir(&self, id: i32) -> PathBuf {
        self.node(id).data_dir()
    }

    /// Kills node `id` if it runs, empties its data directory and starts it again: a node that
    /// lost its disk.
    pub fn wipe_and_restart(&mut self, id: i32) {
        self.kill(id);
        let data = self.node(id).data_dir();
        std::fs::remove_dir_all(&data).unwrap_or_else(|e| panic!("remove {}: {e}", data.display()));
        std::fs::create_dir(&data).unwrap_or_else(|e| panic!("create {}: {e}", data.display()));
        self.restart(id);
    }

    /// Freezes node `id` with SIGSTOP: its sockets stay open but it answers nothing.
    pub fn pause(&mut self, id: i32) {
        self.signal(id, Signal::SIGSTOP);
        self.node_mut(id).paused = true;
    }

    /// Resumes node `id` after [`pause`](Self::pause) with SIGCONT.
    pub fn resume(&mut self, id: i32) {
        self.signal(id, Signal::SIGCONT);
        self.node_mut(id).paused = false;
    }

    fn signal(&self, id: i32, signal: Signal) {
        let pid = self.pid(id).unwrap_or_else(|| panic!("node {id} is not running"));
        let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits in i32"));
        kill(pid, signal).unwrap_or_else(|e| panic!("send {signal} to node {id}: {e}"));
    }

    /// The last lines of every node's log, for panic messages.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let state = match (&n.child, n.paused) {
                (None, _) => "not running",
                (Some(_), true) => "paused",
                (Some(_), false) => "running",
            };
            let _ = writeln!(out, "--- node {} ({state}), {}:", n.id, n.log_path().display());
            let _ = writeln!(out, "{}", log_tail(&n.log_path(), TAIL_LINES));
        }
        out
    }

    /// Metadata (v12) from node `id` for `topics` (`None`: all topics), or why there is none.
    pub fn metadata(&self, id: i32, topics: Option<&[&str]>) -> Result<MetadataResponse, String> {
        let addr = self.addr(id);
        let mut w = Wire::connect_timeout(&addr, ASK_TIMEOUT).map_err(|e| format!("node {id} ({addr}): {e}"))?;
        let mut req = MetadataRequest::default();
        req.topics = topics.map(|ts| {
            ts.iter()
                .map(|t| {
                    let mut rt = MetadataRequestTopic::default();
                    rt.name = Some(wire::topic_name(t));
                    rt
                })
                .collect()
        });
        req.allow_auto_topic_creation = false;
        w.try_call(ApiKey::Metadata, 12, &req)
            .ok_or_else(|| format!("node {id} ({addr}) closed or timed out on Metadata"))
    }

    /// FindCoordinator (v3, key type group) for `group` asked of node `id`: (error code,
    /// coordinator node id), or why there is no answer.
    pub fn find_group_coordinator(&self, id: i32, group: &str) -> Result<(i16, i32), String> {
        self.find_coordinator(id, KEY_TYPE_GROUP, group)
    }

    /// FindCoordinator (v3) for `key` of `key_type` (0 group, 1 transactional id) asked of node
    /// `id`: (error code, coordinator node id), or why there is no answer.
    pub fn find_coordinator(&self, id: i32, key_type: i8, key: &str) -> Result<(i16, i32), String> {
        let addr = self.addr(id);
        let mut w = Wire::connect_timeout(&addr, ASK_TIMEOUT).map_err(|e| format!("node {id} ({addr}): {e}"))?;
        let mut req = FindCoordinatorRequest::default();
        req.key = kafka_protocol::protocol::StrBytes::from_string(key.to_string());
        req.key_type = key_type;
        let resp: FindCoordinatorResponse = w
            .try_call(ApiKey::FindCoordinator, 3, &req)
            .ok_or_else(|| format!("node {id} ({addr}) closed or timed out on FindCoordinator"))?;
        Ok((resp.error_code, resp.node_id.0))
    }

    /// Waits until every running node names the same coordinator for `group` and returns it.
    /// Panics after `timeout`.
    pub fn wait_group_coordinator(&self, group: &str, timeout: Duration) -> i32 {
        self.wait_coordinator_on(&self.answering(), KEY_TYPE_GROUP, group, timeout)
    }

    /// Waits until every running node names the same coordinator for transactional id `txn_id`
    /// and returns it. Panics after `timeout`.
    pub fn wait_txn_coordinator(&self, txn_id: &str, timeout: Duration) -> i32 {
        self.wait_coordinator_on(&self.answering(), KEY_TYPE_TRANSACTION, txn_id, timeout)
    }

    /// The nodes that run and are not paused.
    fn answering(&self) -> Vec<i32> {
        self.nodes.iter().filter(|n| n.answers()).map(|n| n.id).collect()
    }

    /// Like [`wait_group_coordinator`](Self::wait_group_coordinator), asking only nodes `ids`
    /// (not an isolated one, which knows no coordinator).
    pub fn wait_group_coordinator_on(&self, ids: &[i32], group: &str, timeout: Duration) -> i32 {
        self.wait_coordinator_on(ids, KEY_TYPE_GROUP, group, timeout)
    }

    /// Waits until nodes `ids` all name the same coordinator for `key` of `key_type` and
    /// returns it. Panics after `timeout`.
    pub fn wait_coordinator_on(&self, ids: &[i32], key_type: i8, key: &str, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            let answers: Vec<Result<(i16, i32), String>> =
                ids.iter().map(|&id| self.find_coordinator(id, key_type, key)).collect();
            if let Some(Ok((0, c))) = answers.first()
                && answers.iter().all(|a| a == &Ok((0, *c)))
            {
                return *c;
            }
            if Instant::now() > deadline {
                panic!(
                    "no agreed coordinator for `{key}` (key type {key_type}) within {timeout:?}: {answers:?}\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until node `id`'s Kafka listener answers Metadata. Panics after `timeout`.
    pub fn wait_serving(&self, id: i32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let err = match self.metadata(id, Some(&[])) {
                Ok(_) => return,
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!("node {id} did not answer Metadata within {timeout:?}: {err}\n{}", self.log_tails());
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until node `id` itself reports a leader for every partition of `topic`: its
    /// replicas run and hear from their leaders (a restarted node has rejoined). Panics after
    /// `timeout`.
    pub fn wait_replicating(&self, id: i32, topic: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = match self.metadata(id, Some(&[topic])) {
                Ok(md) => {
                    let t = md.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic));
                    match t {
                        Some(t)
                            if t.error_code == 0
                                && !t.partitions.is_empty()
                                && t.partitions.iter().all(|p| p.error_code == 0 && p.leader_id.0 >= 0) =>
                        {
                            return;
                        }
                        other => format!("{other:?}"),
                    }
                }
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!(
                    "node {id} reports no leader for every partition of `{topic}` within {timeout:?}: {seen}\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The leader and leader epoch of `topic`/`partition` as the answering nodes see it now: of
    /// the answers naming a leader that runs, the one with the highest epoch (a node that has not
    /// heard of the last election yet reports an older one). `None` if no node names one.
    pub fn leader_of(&self, topic: &str, partition: i32) -> Option<(i32, i32)> {
        self.leaders_now(topic).ok()?.get(usize::try_from(partition).ok()?).copied().flatten()
    }

    /// Waits until the cluster is usable for `topic`: a node lists every running node as a broker
    /// and the topic with `partitions` partitions, each led by a running node. Returns each
    /// partition's `(leader, epoch)` (see [`leader_of`](Self::leader_of)). Panics after `timeout`,
    /// saying what it saw last.
    pub fn wait_for_leaders(&self, topic: &str, partitions: i32, timeout: Duration) -> Vec<(i32, i32)> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = match self.leaders_now(topic) {
                Ok(leaders) if leaders.len() == partitions as usize && leaders.iter().all(Option::is_some) => {
                    return leaders.into_iter().flatten().collect();
                }
                Ok(leaders) => format!("{} partitions, leaders (leader, epoch): {leaders:?}", leaders.len()),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!(
                    "no leader for every one of {partitions} partitions of `{topic}` within {timeout:?}; last seen: \
                     {seen}\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Per partition of `topic`, the best `(leader, epoch)` that the answering nodes report, from
    /// the answers that list every running node as a broker. Errors say what each node answered.
    fn leaders_now(&self, topic: &str) -> Result<Vec<Option<(i32, i32)>>, String> {
        let running: Vec<i32> = self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.id).collect();
        let mut best: Vec<Option<(i32, i32)>> = Vec::new();
        let mut complaints = Vec::new();
        let mut any = false;
        for node in self.nodes.iter().filter(|n| n.answers()) {
            let md = match self.metadata(node.id, Some(&[topic])) {
                Ok(md) => md,
                Err(e) => {
                    complaints.push(e);
                    continue;
                }
            };
            let brokers: HashSet<i32> = md.brokers.iter().map(|b| b.node_id.0).collect();
            if let Some(missing) = running.iter().find(|id| !brokers.contains(id)) {
                complaints.push(format!("node {} lists brokers {brokers:?}, not node {missing}", node.id));
                continue;
            }
            let Some(t) = md.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic)) else {
                complaints.push(format!("node {} does not list `{topic}`", node.id));
                continue;
            };
            if t.error_code != 0 {
                complaints.push(format!("node {}: `{topic}` error {}", node.id, t.error_code));
                continue;
            }
            any = true;
            for p in &t.partitions {
                let index = usize::try_from(p.partition_index).map_err(|_| "negative partition index".to_string())?;
                if best.len() <= index {
                    best.resize(index + 1, None);
                }
                let (leader, epoch) = (p.leader_id.0, p.leader_epoch);
                if p.error_code == 0 && running.contains(&leader) && best[index].is_none_or(|(_, e)| epoch > e) {
                    best[index] = Some((leader, epoch));
                }
            }
        }
        if any { Ok(best) } else { Err(format!("no usable Metadata answer: {complaints:?}")) }
    }

    /// Creates `topic` with `partitions` partitions on every node (replication factor -1), asking
    /// any running node and retrying retriable errors for up to a minute. Panics on other errors.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let deadline = Instant::now() + CREATE_TIMEOUT;
        let req = wire::create_topics_request(topic, partitions, -1, &[]);
        let mut attempts = 0u32;
        let mut last = String::from("no node was asked");
        for node in self.nodes.iter().cycle() {
            if Instant::now() > deadline {
                panic!("could not create `{topic}` within {CREATE_TIMEOUT:?}; last: {last}\n{}", self.log_tails());
            }
            if !node.answers() {
                continue;
            }
            let mut w = match Wire::connect_timeout(&node.addr(), ASK_TIMEOUT) {
                Ok(w) => w,
                Err(e) => {
                    last = format!("node {}: {e}", node.id);
                    std::thread::sleep(POLL_INTERVAL);
                    continue;
                }
            };
            attempts += 1;
            let Some(resp) = w.try_call::<_, CreateTopicsResponse>(ApiKey::CreateTopics, 7, &req) else {
                last = format!("node {} closed or timed out on CreateTopics", node.id);
                continue;
            };
            let code = resp.topics.first().map_or(-1, |t| t.error_code);
            match code {
                0 => return,
                // An earlier attempt that timed out on our side may have created it.
                TOPIC_ALREADY_EXISTS if attempts > 1 => return,
                c if CREATE_RETRIABLE.contains(&c) => last = format!("node {}: error {c}", node.id),
                c => panic!("CreateTopics `{topic}` on node {} failed with error {c}\n{}", node.id, self.log_tails()),
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        unreachable!("cycle() over a non-empty cluster never ends");
    }

    fn node(&self, id: i32) -> &Node {
        self.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    fn node_mut(&mut self, id: i32) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Spawns node `id`'s process (it must not run).
    fn spawn(&self, id: i32) -> Starting {
        let node = self.node(id);
        let listen = node.addr();
        let log = node.log_path();
        let data = node.data_dir();
        let mut marker = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("open node log");
        let _ = std::io::Write::write_all(&mut marker, format!("=== creek-tests: starting node {id}\n").as_bytes());
        let mut settings = self.settings.clone();
        if let Some(port) = node.listener_port {
            settings.push(("internal.listener".to_string(), format!("127.0.0.1:{port}")));
        }
        if node.joined {
            settings.push(("internal.listener".to_string(), format!("127.0.0.1:{}", node.internal_port)));
        }
        spawn_creek(&ServeArgs {
            node_id: id,
            listen: &listen,
            advertised: &listen,
            data_dir: &data,
            settings: &settings,
            stderr_log: Some(&log),
        })
    }
}

impl Drop for CreekCluster {
    fn drop(&mut self) {
        // A failing test's node logs are gone with their temporary directories; keep copies
        // where CREEK_TEST_KEEP_LOGS says (debugging a rare failure in a loop).
        if std::thread::panicking()
            && let Some(dir) = std::env::var_os("CREEK_TEST_KEEP_LOGS")
        {
            let dir = PathBuf::from(dir);
            let _ = std::fs::create_dir_all(&dir);
            for n in &self.nodes {
                let _ = std::fs::copy(n.log_path(), dir.join(format!("node{}.log", n.id)));
            }
        }
        let ids: Vec<i32> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            self.kill(id);
        }
    }
}

/// Milliseconds on CLOCK_MONOTONIC, the clock of Python's `time.monotonic()` on Linux, so a test
/// can compare its own instants with times a Python client prints.
pub fn monotonic_ms() -> i64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("read CLOCK_MONOTONIC");
    t.tv_sec() * 1000 + t.tv_nsec() / 1_000_000
}
