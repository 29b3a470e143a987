//! The null sink: the least a Kafka-protocol server can do for a producer and a consumer. It is
//! the ceiling Creek is measured against, with the same client, in the same run.
//!
//! It speaks ApiVersions, Metadata (every topic has `partitions` partitions), CreateTopics,
//! Produce (CRC-32C checked; one vectored write per partition into that partition's own file,
//! records not copied; acks=all answered after a group fsync per partition), ListOffsets and
//! Fetch (read back through the page cache). It keeps only where each batch went, in memory; no
//! indexes on disk, no recovery, no replication.

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use creek_protocol::batch::{BatchView, batch_ranges};
use creek_protocol::codec::{decode_body, decode_produce, encode_response};
use creek_protocol::frame::peek_frame_len;
use creek_protocol::header::parse_request_header;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const FRAME_BYTES_MAX: usize = 100 << 20;

#[derive(Clone, Copy)]
struct Stored {
    last: i64,
    pos: u64,
    len: usize,
}

/// One partition: its own file (so partitions never contend), and where its batches are.
struct PartFile {
    file: std::fs::File,
    state: Mutex<PartState>,
    synced: AtomicU64,
    sync_lock: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct PartState {
    len: u64,
    batches: Vec<Stored>,
}

/// The sink's whole state.
pub struct Sink {
    dir: std::path::PathBuf,
    partitions: i32,
    /// Partition counts from CreateTopics; other topics get `partitions`.
    topics: Mutex<HashMap<String, i32>>,
    parts: Mutex<HashMap<(String, i32), Arc<PartFile>>>,
    appended: tokio::sync::Notify,
}

impl Sink {
    /// A sink storing each partition in a file under `dir` (created if missing; a partition's
    /// file is emptied when the sink first uses it).
    pub fn open(dir: &std::path::Path, partitions: i32) -> anyhow::Result<Arc<Sink>> {
        std::fs::create_dir_all(dir)?;
        Ok(Arc::new(Sink {
            dir: dir.to_path_buf(),
            partitions,
            topics: Mutex::new(HashMap::new()),
            parts: Mutex::new(HashMap::new()),
            appended: tokio::sync::Notify::new(),
        }))
    }

    fn part(&self, topic: &str, partition: i32) -> std::io::Result<Arc<PartFile>> {
        let mut parts = self.parts.lock().unwrap();
        if let Some(p) = parts.get(&(topic.to_string(), partition)) {
            return Ok(p.clone());
        }
        let path = self.dir.join(format!("{topic}-{partition}.sink"));
        std::fs::File::create(&path)?;
        let file = std::fs::OpenOptions::new().append(true).read(true).open(path)?;
        let p = Arc::new(PartFile {
            file,
            state: Mutex::new(PartState::default()),
            synced: AtomicU64::new(0),
            sync_lock: tokio::sync::Mutex::new(()),
        });
        parts.insert((topic.to_string(), partition), p.clone());
        Ok(p)
    }

    fn existing(&self, topic: &str, partition: i32) -> Option<Arc<PartFile>> {
        self.parts.lock().unwrap().get(&(topic.to_string(), partition)).cloned()
    }

    /// Serves until the listener fails.
    pub async fn serve(self: Arc<Sink>, listener: TcpListener) -> anyhow::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let sink = self.clone();
            tokio::spawn(async move {
                let _ = sink.connection(stream).await;
            });
        }
    }

    async fn connection(&self, stream: TcpStream) -> anyhow::Result<()> {
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::with_capacity(64 * 1024, rd);
        loop {
            let mut prefix = [0u8; 4];
            rd.read_exact(&mut prefix).await?;
            let len = peek_frame_len(&prefix, FRAME_BYTES_MAX)?.expect("four bytes");
            let mut frame = BytesMut::zeroed(len);
            rd.read_exact(&mut frame).await?;
            let mut frame = frame.freeze();
            let (key, version) = {
                let mut p = &frame[..];
                (p.get_i16(), p.get_i16())
            };
            let key = ApiKey::try_from(key).map_err(|_| anyhow::anyhow!("unknown api key"))?;
            let header = parse_request_header(&mut frame, key.request_header_version(version))?;
            let corr = header.correlation_id;
            let chunks = match key {
                ApiKey::ApiVersions => respond(key, version, corr, &api_versions()),
                ApiKey::Metadata => respond(key, version, corr, &self.metadata(decode_body(frame, version)?)),
                ApiKey::CreateTopics => respond(key, version, corr, &self.create_topics(decode_body(frame, version)?)),
                ApiKey::ListOffsets => respond(key, version, corr, &self.list_offsets(decode_body(frame, version)?)),
                ApiKey::Produce => {
                    let req = decode_produce(frame, version)?;
                    let acks = req.acks;
                    let resp = self.produce(req).await?;
                    if acks == 0 {
                        continue;
                    }
                    respond(key, version, corr, &resp)
                }
                ApiKey::Fetch => respond(key, version, corr, &self.fetch(decode_body(frame, version)?, version).await?),
                other => anyhow::bail!("the sink does not serve {other:?}"),
            }?;
            for c in &chunks {
                wr.write_all(c).await?;
            }
        }
    }

    fn metadata(&self, req: MetadataRequest) -> MetadataResponse {
        let mut resp = MetadataResponse::default();
        let mut b = metadata_response::MetadataResponseBroker::default();
        b.node_id = BrokerId(0);
        b.host = StrBytes::from_static_str("127.0.0.1");
        b.port = SINK_PORT.load(Ordering::Relaxed) as i32;
        resp.brokers = vec![b];
        resp.controller_id = BrokerId(0);
        for t in req.topics.unwrap_or_default() {
            let mut mt = metadata_response::MetadataResponseTopic::default();
            let count = t.name.as_ref().and_then(|n| self.topics.lock().unwrap().get(n.0.as_str()).copied());
            mt.name = t.name;
            mt.partitions = (0..count.unwrap_or(self.partitions))
                .map(|p| {
                    let mut mp = metadata_response::MetadataResponsePartition::default();
                    mp.partition_index = p;
                    mp.leader_id = BrokerId(0);
                    mp.replica_nodes = vec![BrokerId(0)];
                    mp.isr_nodes = vec![BrokerId(0)];
                    mp
                })
                .collect();
            resp.topics.push(mt);
        }
        resp
    }

    fn create_topics(&self, req: CreateTopicsRequest) -> CreateTopicsResponse {
        let mut resp = CreateTopicsResponse::default();
        for t in req.topics {
            let count = if t.num_partitions > 0 { t.num_partitions } else { self.partitions };
            self.topics.lock().unwrap().insert(t.name.0.to_string(), count);
            let mut r = create_topics_response::CreatableTopicResult::default();
            r.name = t.name;
            resp.topics.push(r);
        }
        resp
    }

    fn end_offset(&self, topic: &str, partition: i32) -> i64 {
        self.existing(topic, partition)
            .and_then(|p| p.state.lock().unwrap().batches.last().map(|s| s.last + 1))
            .unwrap_or(0)
    }

    fn list_offsets(&self, req: ListOffsetsRequest) -> ListOffsetsResponse {
        let mut resp = ListOffsetsResponse::default();
        for t in req.topics {
            let mut tr = list_offsets_response::ListOffsetsTopicResponse::default();
            for p in t.partitions {
                let mut pr = list_offsets_response::ListOffsetsPartitionResponse::default();
                pr.partition_index = p.partition_index;
                pr.timestamp = -1;
                pr.offset = if p.timestamp == -2 { 0 } else { self.end_offset(&t.name.0, p.partition_index) };
                tr.partitions.push(pr);
            }
            tr.name = t.name;
            resp.topics.push(tr);
        }
        resp
    }

    async fn produce(&self, req: ProduceRequest) -> anyhow::Result<ProduceResponse> {
        let mut resp = ProduceResponse::default();
        let mut to_sync = Vec::new();
        for t in req.topic_data {
            let mut tr = produce_response::TopicProduceResponse::default();
            for p in t.partition_data {
                let mut pr = produce_response::PartitionProduceResponse::default();
                pr.index = p.index;
                let records = p.records.unwrap_or_default();
                match self.append(&t.name.0, p.index, &records) {
                    Ok((base, part, end)) => {
                        pr.base_offset = base;
                        to_sync.push((part, end));
                    }
                    Err(code) => pr.error_code = code,
                }
                tr.partition_responses.push(pr);
            }
            tr.name = t.name;
            resp.responses.push(tr);
        }
        self.appended.notify_waiters();
        if req.acks == -1 {
            for (part, end) in to_sync {
                sync_to(&part, end).await?;
            }
        }
        Ok(resp)
    }

    /// Validates and appends a records blob with one vectored write: the stamped base offset of
    /// each batch, then the rest of it as sent (records are not copied). Returns (base offset,
    /// the partition, its file length after the write).
    fn append(&self, topic: &str, partition: i32, records: &Bytes) -> Result<(i64, Arc<PartFile>, u64), i16> {
        let ranges = batch_ranges(records).map_err(|_| 2i16)?;
        if ranges.is_empty() {
            return Err(2);
        }
        let mut lasts = Vec::with_capacity(ranges.len());
        for r in &ranges {
            let view = BatchView::new(&records[r.clone()]).map_err(|_| 2i16)?;
            view.verify_crc().map_err(|_| 2i16)?;
            lasts.push(view.last_offset_delta() as i64);
        }
        let part = self.part(topic, partition).map_err(|_| 56i16)?;
        let mut st = part.state.lock().unwrap();
        let base = st.batches.last().map_or(0, |s| s.last + 1);
        let mut next = base;
        let heads: Vec<[u8; 8]> = lasts
            .iter()
            .map(|delta| {
                let head = next.to_be_bytes();
                next += delta + 1;
                head
            })
            .collect();
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * ranges.len());
        for (head, r) in heads.iter().zip(&ranges) {
            slices.push(IoSlice::new(head));
            slices.push(IoSlice::new(&records[r.start + 8..r.end]));
        }
        write_all_vectored(&part.file, &mut slices).map_err(|_| 56i16)?;
        let mut offset = base;
        for (r, delta) in ranges.iter().zip(&lasts) {
            let pos = st.len;
            st.batches.push(Stored { last: offset + delta, pos, len: r.len() });
            st.len += r.len() as u64;
            offset += delta + 1;
        }
        let end = st.len;
        drop(st);
        Ok((base, part, end))
    }

    async fn fetch(&self, req: FetchRequest, version: i16) -> anyhow::Result<FetchResponse> {
        let wait = Duration::from_millis(req.max_wait_ms.clamp(0, 30_000) as u64);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.appended.notified();
            let (resp, bytes) = self.read(&req, version)?;
            if bytes >= req.min_bytes.max(0) as usize || tokio::time::Instant::now() >= deadline {
                return Ok(resp);
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    fn read(&self, req: &FetchRequest, _version: i16) -> anyhow::Result<(FetchResponse, usize)> {
        let mut resp = FetchResponse::default();
        let mut total = 0usize;
        for t in &req.topics {
            let mut tr = fetch_response::FetchableTopicResponse::default();
            tr.topic = t.topic.clone();
            for p in &t.partitions {
                let mut pd = fetch_response::PartitionData::default();
                pd.partition_index = p.partition;
                let part = self.existing(&t.topic.0, p.partition);
                let state = part.as_ref().map(|p| p.state.lock().unwrap());
                let log: &[Stored] = state.as_ref().map(|s| &s.batches[..]).unwrap_or(&[]);
                let end = log.last().map_or(0, |s| s.last + 1);
                pd.high_watermark = end;
                pd.last_stable_offset = end;
                // Whole batches from the one containing fetch_offset, contiguous in the file,
                // within partition_max_bytes (the first batch always).
                let first = log.partition_point(|s| s.last < p.fetch_offset);
                let mut span: Option<(u64, usize)> = None;
                for s in &log[first..] {
                    match span {
                        None => span = Some((s.pos, s.len)),
                        Some((start, len))
                            if start + len as u64 == s.pos && len + s.len <= p.partition_max_bytes.max(0) as usize =>
                        {
                            span = Some((start, len + s.len))
                        }
                        Some(_) => break,
                    }
                }
                if let Some((pos, len)) = span {
                    let mut buf = vec![0u8; len];
                    part.as_ref().expect("a span implies a partition").file.read_exact_at(&mut buf, pos)?;
                    total += len;
                    pd.records = Some(Bytes::from(buf));
                } else {
                    pd.records = Some(Bytes::new());
                }
                tr.partitions.push(pd);
            }
            resp.responses.push(tr);
        }
        Ok((resp, total))
    }
}

/// Writes every slice (an append-mode file, so at its end), in as few `writev` calls as the
/// kernel allows.
fn write_all_vectored(mut file: &std::fs::File, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    const IOV_MAX: usize = 1024;
    while !slices.is_empty() {
        let n = std::io::Write::write_vectored(&mut file, &slices[..slices.len().min(IOV_MAX)])?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Group commit per partition: one fsync answers every acks=all write before it.
async fn sync_to(part: &Arc<PartFile>, end: u64) -> anyhow::Result<()> {
    let _one = part.sync_lock.lock().await;
    if part.synced.load(Ordering::Acquire) >= end {
        return Ok(());
    }
    let covered = part.state.lock().unwrap().len;
    let f = part.file.try_clone()?;
    tokio::task::spawn_blocking(move || f.sync_data()).await??;
    part.synced.fetch_max(covered, Ordering::AcqRel);
    Ok(())
}

/// The port clients are told to reconnect to (set by `run`).
static SINK_PORT: AtomicU64 = AtomicU64::new(0);

fn respond<T: Encodable + 'static>(key: ApiKey, version: i16, corr: i32, body: &T) -> anyhow::Result<Vec<Bytes>> {
    encode_response(key, version, corr, body).map_err(anyhow::Error::msg)
}

fn api_versions() -> ApiVersionsResponse {
    let mut resp = ApiVersionsResponse::default();
    resp.finalized_features_epoch = -1;
    for (key, min, max) in [
        (ApiKey::Produce, 3, 9),
        (ApiKey::Fetch, 4, 12),
        (ApiKey::ListOffsets, 1, 7),
        (ApiKey::Metadata, 1, 9),
        (ApiKey::ApiVersions, 0, 3),
        (ApiKey::CreateTopics, 2, 5),
    ] {
        let mut v = api_versions_response::ApiVersion::default();
        v.api_key = key as i16;
        v.min_version = min;
        v.max_version = max;
        resp.api_keys.push(v);
    }
    resp
}

/// Runs the sink on `listen` (port 0 picks one) with `partitions` per topic, writing to `path`.
pub async fn run(listen: &str, path: &std::path::Path, partitions: i32) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    SINK_PORT.store(u64::from(addr.port()), Ordering::Relaxed);
    println!("creek-bench sink ready kafka={addr}");
    Sink::open(path, partitions)?.serve(listener).await
}
