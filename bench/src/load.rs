//! The load generator: producers and consumers over librdkafka against any Kafka bootstrap
//! address, measuring throughput, produce-ack latency and end-to-end latency.
//!
//! Each message's first 8 bytes carry its send time (µs since the run's epoch), so consumers can
//! measure end-to-end latency without clocks leaving this process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::stats::{BrokerWatch, Latency, Progress, Report, latency_histogram};

/// How records are keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    None,
    Random,
    RoundRobin(u64),
}

impl std::str::FromStr for Keys {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Keys::None),
            "random" => Ok(Keys::Random),
            other => other
                .strip_prefix("round-robin:")
                .and_then(|n| n.parse().ok())
                .filter(|&n| n > 0)
                .map(Keys::RoundRobin)
                .ok_or_else(|| format!("keys must be none, random or round-robin:N, not {other}")),
        }
    }
}

/// One workload. Every field has a command-line flag of the same name.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub label: String,
    pub bootstrap: String,
    pub topic: String,
    pub partitions: i32,
    pub message_bytes: usize,
    /// Messages per producer phase; ignored when `duration` is set.
    pub messages: u64,
    pub duration: Option<Duration>,
    pub acks: String,
    pub compression: String,
    pub producers: usize,
    pub consumers: usize,
    pub keys: Keys,
    /// Total target rate in messages per second; 0 = as fast as possible.
    pub rate: u64,
    pub linger_ms: u64,
    pub batch_bytes: u64,
    /// Produce everything first, then time consumers reading it back (backlog drain).
    pub drain: bool,
    /// Idempotent producers (`enable.idempotence`); implied by transactions.
    pub idempotence: bool,
    /// Commit a transaction every this many messages per producer; 0 = no transactions.
    pub transaction_messages: u64,
    pub broker_pid: Option<u32>,
    /// Extra librdkafka properties for every client (`--set KEY=VALUE`), applied last.
    pub client_properties: Vec<(String, String)>,
}

/// Commits the producer's transaction. The rdkafka crate's `commit_transaction` flushes first,
/// and its flush polls in 100 ms slices that each run to the end, so every commit would cost at
/// least 100 ms of client time; deliveries are driven here in 1 ms slices instead.
fn commit(producer: &BaseProducer<Ctx>) -> anyhow::Result<()> {
    while producer.in_flight_count() > 0 {
        producer.poll(Duration::from_millis(1));
    }
    producer.commit_transaction(Duration::from_secs(60)).context("commit_transaction")
}

struct Acks {
    latency: Mutex<Histogram<u64>>,
    acked: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

struct Ctx(Arc<Acks>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Instant>) {
        match result {
            Ok(m) => {
                let us = sent.elapsed().as_micros() as u64;
                let _ = self.0.latency.lock().unwrap().record(us.max(1));
                self.0.acked.fetch_add(1, Ordering::Relaxed);
                self.0.bytes.fetch_add(m.payload_len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.0.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn client_config(w: &Workload) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &w.bootstrap);
    overrides(&mut c, w);
    c
}

/// The user's `--set` properties, applied after a client's own settings so they win.
fn overrides(c: &mut ClientConfig, w: &Workload) {
    for (k, v) in &w.client_properties {
        c.set(k, v);
    }
}

/// Creates the topic; an existing topic is fine.
pub async fn create_topic(w: &Workload) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(w).create().context("admin client")?;
    // -1: the broker's default (1 on a single node; every node in a Creek cluster).
    let topic = NewTopic::new(&w.topic, w.partitions, TopicReplication::Fixed(-1));
    let results = admin.create_topics([&topic], &AdminOptions::new()).await.context("CreateTopics")?;
    for r in results {
        if let Err((name, code)) = r {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                bail!("creating topic {name}: {code}");
            }
        }
    }
    Ok(())
}

/// Runs `count` messages (or until `deadline`) through `w.producers` producer threads.
fn produce(w: &Workload, epoch: Instant, progress: bool) -> anyhow::Result<(Report, Histogram<u64>)> {
    let acks = Arc::new(Acks {
        latency: Mutex::new(latency_histogram()),
        acked: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let start = Instant::now();
    let deadline = w.duration.map(|d| start + d);
    let per_producer = w.messages / w.producers as u64;
    let per_producer_rate = w.rate as f64 / w.producers as f64;
    let mut threads = Vec::new();
    for id in 0..w.producers {
        let mut producer = client_config(w);
        producer
            .set("acks", &w.acks)
            .set("compression.type", &w.compression)
            .set("linger.ms", w.linger_ms.to_string())
            .set("batch.size", w.batch_bytes.to_string())
            .set("enable.idempotence", (w.idempotence || w.transaction_messages > 0).to_string())
            .set("queue.buffering.max.kbytes", "262144");
        overrides(&mut producer, w);
        if w.transaction_messages > 0 {
            producer.set("transactional.id", format!("creek-bench-{}-{id}", w.name));
        }
        let producer: BaseProducer<Ctx> = producer.create_with_context(Ctx(acks.clone())).context("producer")?;
        if w.transaction_messages > 0 {
            producer.init_transactions(Duration::from_secs(30)).context("init_transactions")?;
        }
        let (w, acks) = (w.clone(), acks.clone());
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut payload = vec![b'x'; w.message_bytes.max(8)];
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (id as u64 + 1);
            let mut key = Vec::with_capacity(24);
            let began = Instant::now();
            let mut i = 0u64;
            let txn = w.transaction_messages;
            loop {
                if deadline.map_or(i >= per_producer, |d| Instant::now() >= d) {
                    break;
                }
                if txn > 0 && i % txn == 0 {
                    producer.begin_transaction().context("begin_transaction")?;
                }
                if per_producer_rate > 0.0 {
                    let due = began + Duration::from_secs_f64(i as f64 / per_producer_rate);
                    let now = Instant::now();
                    if due > now {
                        producer.poll(Duration::ZERO);
                        std::thread::sleep(due - now);
                    }
                }
                let now = Instant::now();
                payload[..8].copy_from_slice(&(now.duration_since(epoch).as_micros() as u64).to_be_bytes());
                key.clear();
                match w.keys {
                    Keys::None => {}
                    Keys::Random => {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        key.extend_from_slice(format!("key-{rng}").as_bytes());
                    }
                    Keys::RoundRobin(n) => {
                        key.extend_from_slice(format!("key-{}", (i * w.producers as u64 + id as u64) % n).as_bytes())
                    }
                }
                let mut record = BaseRecord::with_opaque_to(&w.topic, Box::new(now)).payload(&payload[..]);
                if !key.is_empty() {
                    record = record.key(&key[..]);
                }
                let mut pending = record;
                loop {
                    match producer.send(pending) {
                        Ok(()) => break,
                        Err((
                            rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                            r,
                        )) => {
                            producer.poll(Duration::from_millis(1));
                            pending = r;
                        }
                        Err((e, _)) => bail!("send: {e}"),
                    }
                }
                producer.poll(Duration::ZERO);
                i += 1;
                if txn > 0 && i % txn == 0 {
                    commit(&producer)?;
                }
            }
            if txn > 0 && i % txn != 0 {
                commit(&producer)?;
            }
            producer.flush(Duration::from_secs(60)).context("flush")?;
            let _ = acks;
            Ok(())
        }));
    }
    let mut ticker = Progress::new();
    while !threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        if progress {
            ticker.tick("produce", acks.acked.load(Ordering::Relaxed), acks.bytes.load(Ordering::Relaxed));
        }
    }
    if progress {
        ticker.done();
    }
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    }
    let elapsed = start.elapsed();
    let mut r = Report {
        name: w.name.clone(),
        label: w.label.clone(),
        bootstrap: w.bootstrap.clone(),
        phase: "produce".into(),
        messages: acks.acked.load(Ordering::Relaxed),
        bytes: acks.bytes.load(Ordering::Relaxed),
        errors: acks.errors.load(Ordering::Relaxed),
        ..Report::default()
    };
    r.finish(elapsed, None);
    let hist = acks.latency.lock().unwrap().clone();
    r.ack_latency = Some(Latency::from_histogram(&hist));
    Ok((r, hist))
}

/// Consumers read `expect` messages from the start of every partition (split across consumers).
fn consume(w: &Workload, epoch: Instant, expect: u64, progress: bool) -> anyhow::Result<Report> {
    let idle_limit = if w.duration.is_some() { Duration::from_secs(3) } else { Duration::from_secs(30) };
    let received = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(latency_histogram()));
    let start = Instant::now();
    let mut threads = Vec::new();
    for id in 0..w.consumers.max(1) {
        let mut consumer = client_config(w);
        consumer
            .set("group.id", "creek-bench-unused")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.max.bytes", "52428800")
            .set("max.partition.fetch.bytes", "4194304")
            .set("fetch.wait.max.ms", "100");
        overrides(&mut consumer, w);
        let consumer: BaseConsumer = consumer.create().context("consumer")?;
        let mut tpl = TopicPartitionList::new();
        for p in (0..w.partitions).filter(|p| *p as usize % w.consumers.max(1) == id) {
            tpl.add_partition_offset(&w.topic, p, Offset::Offset(0)).context("partition")?;
        }
        consumer.assign(&tpl).context("assign")?;
        let (received, bytes, latency) = (received.clone(), bytes.clone(), latency.clone());
        threads.push(std::thread::spawn(move || {
            let mut last = Instant::now();
            while received.load(Ordering::Relaxed) < expect && last.elapsed() < idle_limit {
                let Some(msg) = consumer.poll(Duration::from_millis(100)) else { continue };
                let Ok(msg) = msg else { continue };
                last = Instant::now();
                if let Some(p) = msg.payload() {
                    if p.len() >= 8 {
                        let sent = u64::from_be_bytes(p[..8].try_into().expect("8 bytes"));
                        let now = epoch.elapsed().as_micros() as u64;
                        let _ = latency.lock().unwrap().record(now.saturating_sub(sent).max(1));
                    }
                    bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
                }
                received.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut ticker = Progress::new();
    while !threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        if progress {
            ticker.tick("consume", received.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
        }
    }
    if progress {
        ticker.done();
    }
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("consumer thread panicked"))?;
    }
    let got = received.load(Ordering::Relaxed);
    let mut r = Report {
        name: w.name.clone(),
        label: w.label.clone(),
        bootstrap: w.bootstrap.clone(),
        phase: "consume".into(),
        messages: got,
        bytes: bytes.load(Ordering::Relaxed),
        errors: expect.saturating_sub(got),
        ..Report::default()
    };
    r.finish(start.elapsed(), None);
    r.e2e_latency = Some(Latency::from_histogram(&latency.lock().unwrap()));
    Ok(r)
}

/// Runs a workload: produce (with concurrent consumers when `consumers > 0`), or produce then a
/// timed backlog drain when `drain`. Returns one report per timed phase.
pub async fn run(w: &Workload, progress: bool) -> anyhow::Result<Vec<Report>> {
    create_topic(w).await?;
    let epoch = Instant::now();
    let w2 = w.clone();
    let reports = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Report>> {
        let w = &w2;
        if w.drain {
            let (produced, _) = produce(w, epoch, progress)?;
            let watch = w.broker_pid.map(BrokerWatch::start);
            let mut drained = consume(w, epoch, produced.messages, progress)?;
            let broker = watch.and_then(BrokerWatch::finish);
            let secs = drained.seconds;
            drained.finish(Duration::from_secs_f64(secs), broker);
            drained.e2e_latency = None; // includes the time the backlog sat; not a latency
            return Ok(vec![produced, drained]);
        }
        let watch = w.broker_pid.map(BrokerWatch::start);
        let expected =
            if w.duration.is_some() { u64::MAX } else { w.messages / w.producers as u64 * w.producers as u64 };
        let consumer = (w.consumers > 0).then(|| {
            let w = w.clone();
            std::thread::spawn(move || consume(&w, epoch, expected, false))
        });
        let (mut produced, _) = produce(w, epoch, progress)?;
        let broker = watch.and_then(BrokerWatch::finish);
        let secs = produced.seconds;
        produced.finish(Duration::from_secs_f64(secs), broker);
        let mut out = vec![produced];
        if let Some(c) = consumer {
            out.push(c.join().map_err(|_| anyhow::anyhow!("consumer panicked"))??);
        }
        Ok(out)
    })
    .await??;
    Ok(reports)
}

/// `creek-bench idle`: creates `topic` with `partitions` partitions, waits until each has a
/// leader, waits `settle`, then prints each process's CPU use (cores) and RSS over `measure`.
pub async fn idle(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    pids: &[u32],
    settle: Duration,
    measure: Duration,
) -> anyhow::Result<()> {
    let mut w = crate::presets::preset("acks1-16p", bootstrap).context("the acks1-16p preset")?;
    (w.topic, w.partitions) = (topic.to_string(), partitions);
    let started = Instant::now();
    create_topic(&w).await?;
    let admin: AdminClient<DefaultClientContext> = client_config(&w).create().context("admin client")?;
    loop {
        let md = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(30)).context("Metadata")?;
        let led = md.topics().iter().flat_map(|t| t.partitions()).filter(|p| p.leader() >= 0).count();
        if led == partitions as usize {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "only {led} of {partitions} partitions have a leader"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{partitions} partitions led after {:.1} s; settling {} s, measuring {} s",
        started.elapsed().as_secs_f64(),
        settle.as_secs(),
        measure.as_secs()
    );
    tokio::time::sleep(settle).await;
    let watches: Vec<_> = pids.iter().map(|&p| (p, BrokerWatch::start(p))).collect();
    tokio::time::sleep(measure).await;
    for (pid, watch) in watches {
        match watch.finish() {
            Some((cpu_s, peak_rss)) => println!(
                "pid {pid}: {:.3} cores, peak RSS {:.0} MiB",
                cpu_s / measure.as_secs_f64(),
                peak_rss as f64 / (1 << 20) as f64
            ),
            None => println!("pid {pid}: gone"),
        }
    }
    Ok(())
}
