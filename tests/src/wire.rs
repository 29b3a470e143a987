//! A minimal raw Kafka connection for tests that need byte-level control: hostile frames,
//! exact per-batch acknowledgements, and precise offsets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// One client connection speaking raw frames.
pub struct Wire {
    stream: TcpStream,
    correlation: i32,
}

impl Wire {
    pub fn connect(addr: &str) -> Wire {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream.set_nodelay(true).unwrap();
        Wire { stream, correlation: 0 }
    }

    /// Connects with a bound on connecting and on each read (`limit`), for asking brokers that may be
    /// dead or stopped; the error says what failed.
    pub fn connect_timeout(addr: &str, limit: Duration) -> std::io::Result<Wire> {
        use std::net::ToSocketAddrs;
        let sock =
            addr.to_socket_addrs()?.next().ok_or_else(|| std::io::Error::other(format!("{addr}: no address")))?;
        let stream = TcpStream::connect_timeout(&sock, limit)?;
        stream.set_read_timeout(Some(limit))?;
        stream.set_write_timeout(Some(limit))?;
        stream.set_nodelay(true)?;
        Ok(Wire { stream, correlation: 0 })
    }

    /// Writes raw bytes (a whole frame, or a hostile fragment).
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one response frame (without its length prefix); `None` if the broker closed.
    pub fn read_frame(&mut self) -> Option<Vec<u8>> {
        let mut len = [0u8; 4];
        if self.stream.read_exact(&mut len).is_err() {
            return None;
        }
        let mut frame = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut frame).ok()?;
        Some(frame)
    }

    /// Frames a request body with a header for `key`/`version`.
    pub fn frame<T: Encodable>(&mut self, key: ApiKey, version: i16, body: &T) -> Vec<u8> {
        self.correlation += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = key as i16;
        header.request_api_version = version;
        header.correlation_id = self.correlation;
        header.client_id = Some(StrBytes::from_static_str("creek-tests"));
        let mut buf = BytesMut::new();
        header.encode(&mut buf, key.request_header_version(version)).unwrap();
        body.encode(&mut buf, version).unwrap();
        let mut out = (buf.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(&buf);
        out
    }

    /// Sends a request and decodes its response; panics if the broker closes the connection.
    pub fn call<Req: Encodable, Resp: Decodable>(&mut self, key: ApiKey, version: i16, body: &Req) -> Resp {
        self.try_call(key, version, body)
            .unwrap_or_else(|| panic!("broker closed the connection on {key:?} v{version}"))
    }

    /// Like [`Wire::call`], but `None` when the broker closes the connection.
    pub fn try_call<Req: Encodable, Resp: Decodable>(&mut self, key: ApiKey, version: i16, body: &Req) -> Option<Resp> {
        let frame = self.frame(key, version, body);
        self.send_raw(&frame).ok()?;
        let resp = self.read_frame()?;
        let mut bytes = Bytes::from(resp);
        let hv = if key == ApiKey::ApiVersions { 0 } else { key.response_header_version(version) };
        let header = ResponseHeader::decode(&mut bytes, hv).unwrap();
        assert_eq!(header.correlation_id, self.correlation, "response correlation id");
        Some(Resp::decode(&mut bytes, version).unwrap())
    }

    /// True if the broker closed this connection (read returns EOF).
    pub fn closed_by_peer(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Creates a topic; returns the error code (0 on success).
pub fn create_topic(w: &mut Wire, name: &str, partitions: i32, configs: &[(&str, &str)]) -> i16 {
    let req = create_topics_request(name, partitions, 1, configs);
    let resp: CreateTopicsResponse = w.call(ApiKey::CreateTopics, 7, &req);
    resp.topics[0].error_code
}

/// A CreateTopics request (send it as v7) for one topic with a 10 s timeout.
pub fn create_topics_request(
    name: &str,
    partitions: i32,
    replication_factor: i16,
    configs: &[(&str, &str)],
) -> CreateTopicsRequest {
    let mut t = create_topics_request::CreatableTopic::default();
    t.name = topic_name(name);
    t.num_partitions = partitions;
    t.replication_factor = replication_factor;
    t.configs = configs
        .iter()
        .map(|(k, v)| {
            let mut c = create_topics_request::CreatableTopicConfig::default();
            c.name = StrBytes::from_string(k.to_string());
            c.value = Some(StrBytes::from_string(v.to_string()));
            c
        })
        .collect();
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 10_000;
    req
}

/// IncrementalAlterConfigs SET of one topic config; returns the error code.
pub fn set_topic_config(w: &mut Wire, topic: &str, name: &str, value: &str) -> i16 {
    let mut c = incremental_alter_configs_request::AlterableConfig::default();
    c.name = StrBytes::from_string(name.to_string());
    c.config_operation = 0;
    c.value = Some(StrBytes::from_string(value.to_string()));
    let mut res = incremental_alter_configs_request::AlterConfigsResource::default();
    res.resource_type = 2;
    res.resource_name = StrBytes::from_string(topic.to_string());
    res.configs = vec![c];
    let mut req = IncrementalAlterConfigsRequest::default();
    req.resources = vec![res];
    let resp: IncrementalAlterConfigsResponse = w.call(ApiKey::IncrementalAlterConfigs, 1, &req);
    resp.responses[0].error_code
}

/// DescribeConfigs of one topic config: (error code, its value and config source if described).
pub fn topic_config(w: &mut Wire, topic: &str, name: &str) -> (i16, Option<(String, i8)>) {
    let mut res = describe_configs_request::DescribeConfigsResource::default();
    res.resource_type = 2;
    res.resource_name = StrBytes::from_string(topic.to_string());
    res.configuration_keys = Some(vec![StrBytes::from_string(name.to_string())]);
    let mut req = DescribeConfigsRequest::default();
    req.resources = vec![res];
    let resp: DescribeConfigsResponse = w.call(ApiKey::DescribeConfigs, 4, &req);
    let r = &resp.results[0];
    let config = r.configs.iter().find(|c| c.name.as_str() == name);
    (r.error_code, config.map(|c| (c.value.as_ref().map(|v| v.to_string()).unwrap_or_default(), c.config_source)))
}

/// CreatePartitions growing `topic` to `count` partitions; returns the error code.
pub fn create_partitions(w: &mut Wire, topic: &str, count: i32) -> i16 {
    let mut t = create_partitions_request::CreatePartitionsTopic::default();
    t.name = topic_name(topic);
    t.count = count;
    t.assignments = None;
    let mut req = CreatePartitionsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 30_000;
    let resp: CreatePartitionsResponse = w.call(ApiKey::CreatePartitions, 3, &req);
    resp.results[0].error_code
}

/// DeleteRecords below `offset` in one partition: (error code, low watermark).
pub fn delete_records(w: &mut Wire, topic: &str, partition: i32, offset: i64) -> (i16, i64) {
    let mut p = delete_records_request::DeleteRecordsPartition::default();
    p.partition_index = partition;
    p.offset = offset;
    let mut t = delete_records_request::DeleteRecordsTopic::default();
    t.name = topic_name(topic);
    t.partitions = vec![p];
    let mut req = DeleteRecordsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 30_000;
    let resp: DeleteRecordsResponse = w.call(ApiKey::DeleteRecords, 2, &req);
    let r = &resp.topics[0].partitions[0];
    (r.error_code, r.low_watermark)
}

/// DeleteTopics of one topic by name; returns the error code.
pub fn delete_topic(w: &mut Wire, topic: &str) -> i16 {
    let mut req = DeleteTopicsRequest::default();
    req.topic_names = vec![topic_name(topic)];
    req.timeout_ms = 30_000;
    let resp: DeleteTopicsResponse = w.call(ApiKey::DeleteTopics, 4, &req);
    resp.responses[0].error_code
}

/// Produces `records` (one or more v2 batches) to a partition; returns (error code, base offset).
/// With acks=0 there is no response and `(0, -1)` is returned.
pub fn produce(w: &mut Wire, topic: &str, partition: i32, records: Vec<u8>, acks: i16) -> (i16, i64) {
    try_produce(w, topic, partition, records, acks).expect("broker closed the connection on Produce")
}

/// Like [`produce`], but `None` when the connection breaks (the broker died or closed it).
pub fn try_produce(w: &mut Wire, topic: &str, partition: i32, records: Vec<u8>, acks: i16) -> Option<(i16, i64)> {
    try_produce_timeout(w, topic, partition, records, acks, 30_000)
}

/// Like [`try_produce`], with the request's `timeout_ms` (how long the broker may wait for acks).
pub fn try_produce_timeout(
    w: &mut Wire,
    topic: &str,
    partition: i32,
    records: Vec<u8>,
    acks: i16,
    timeout_ms: i32,
) -> Option<(i16, i64)> {
    let mut p = produce_request::PartitionProduceData::default();
    p.index = partition;
    p.records = Some(Bytes::from(records));
    let mut t = produce_request::TopicProduceData::default();
    t.name = topic_name(topic);
    t.partition_data = vec![p];
    let mut req = ProduceRequest::default();
    req.acks = acks;
    req.timeout_ms = timeout_ms;
    req.topic_data = vec![t];
    if acks == 0 {
        let frame = w.frame(ApiKey::Produce, 9, &req);
        w.send_raw(&frame).ok()?;
        return Some((0, -1));
    }
    let resp: ProduceResponse = w.try_call(ApiKey::Produce, 9, &req)?;
    let pr = &resp.responses[0].partition_responses[0];
    Some((pr.error_code, pr.base_offset))
}

/// ListOffsets for one partition at `timestamp` (-1 latest, -2 earliest, ...): (error, offset).
pub fn list_offset(w: &mut Wire, topic: &str, partition: i32, timestamp: i64) -> (i16, i64) {
    let mut p = list_offsets_request::ListOffsetsPartition::default();
    p.partition_index = partition;
    p.timestamp = timestamp;
    p.current_leader_epoch = -1;
    let mut t = list_offsets_request::ListOffsetsTopic::default();
    t.name = topic_name(topic);
    t.partitions = vec![p];
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    req.topics = vec![t];
    let resp: ListOffsetsResponse = w.call(ApiKey::ListOffsets, 7, &req);
    let pr = &resp.topics[0].partitions[0];
    (pr.error_code, pr.offset)
}

/// One Fetch of a partition from `offset`: (error, high watermark, records bytes).
pub fn fetch(w: &mut Wire, topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> (i16, i64, Bytes) {
    try_fetch(w, topic, partition, offset, max_wait_ms).expect("broker closed the connection on Fetch")
}

/// Like [`fetch`], but `None` when the connection breaks or times out.
pub fn try_fetch(
    w: &mut Wire,
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
) -> Option<(i16, i64, Bytes)> {
    let req = fetch_one(topic, partition, offset, max_wait_ms, 8 << 20, 0);
    let resp: FetchResponse = w.try_call(ApiKey::Fetch, 11, &req)?;
    let pd = &resp.responses[0].partitions[0];
    Some((pd.error_code, pd.high_watermark, pd.records.clone().unwrap_or_default()))
}

/// A Fetch v11 of one partition from `offset`, at most `max_bytes` (partition and response).
fn fetch_one(
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
    max_bytes: i32,
    isolation: i8,
) -> FetchRequest {
    let mut p = fetch_request::FetchPartition::default();
    p.partition = partition;
    p.fetch_offset = offset;
    p.partition_max_bytes = max_bytes;
    p.current_leader_epoch = -1;
    p.log_start_offset = -1;
    let mut t = fetch_request::FetchTopic::default();
    t.topic = topic_name(topic);
    t.partitions = vec![p];
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_wait_ms = max_wait_ms;
    req.min_bytes = 1;
    req.max_bytes = max_bytes.saturating_mul(2);
    req.isolation_level = isolation;
    req.topics = vec![t];
    req
}

/// One record as `(key, value)`; `None` is null.
pub type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// A v2 batch of `records` stamped with an idempotent producer's id, epoch and base sequence
/// (and the transactional attribute bit if asked), with its CRC recomputed.
pub fn producer_batch(
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    transactional: bool,
    timestamp: i64,
    records: &[KeyValue<'_>],
) -> Vec<u8> {
    let mut batch = creek_protocol::batch::build_batch(0, timestamp, records);
    if transactional {
        let attributes = i16::from_be_bytes([batch[21], batch[22]]) | 0x10;
        batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    }
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&producer_epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = creek_protocol::batch::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch
}

/// The (min, max) versions the broker advertises for `key`, or `None` if it does not.
pub fn api_versions(w: &mut Wire, key: ApiKey) -> Option<(i16, i16)> {
    let req = ApiVersionsRequest::default();
    let resp: ApiVersionsResponse = w.call(ApiKey::ApiVersions, 0, &req);
    resp.api_keys.iter().find(|k| k.api_key == key as i16).map(|k| (k.min_version, k.max_version))
}

/// InitProducerId (idempotent when `transactional_id` is `None`): (error code, producer id, epoch).
/// Retries, as clients do, while the answer is retriable (COORDINATOR_LOAD_IN_PROGRESS right
/// after start, COORDINATOR_NOT_AVAILABLE, CONCURRENT_TRANSACTIONS), for up to 30 s.
/// Panics, saying so, if the broker does not advertise InitProducerId.
pub fn init_producer_id(w: &mut Wire, transactional_id: Option<&str>, transaction_timeout_ms: i32) -> (i16, i64, i16) {
    const RETRIABLE: [i16; 3] = [14, 15, 51];
    let (_, max) = api_versions(w, ApiKey::InitProducerId).expect(
        "the broker does not advertise InitProducerId (api key 22) in ApiVersions: idempotence is not implemented",
    );
    let version = max.min(4);
    let mut req = InitProducerIdRequest::default();
    req.transactional_id = transactional_id.map(|t| TransactionalId(StrBytes::from_string(t.to_string())));
    req.transaction_timeout_ms = transaction_timeout_ms;
    req.producer_id = ProducerId(-1);
    req.producer_epoch = -1;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let resp: InitProducerIdResponse = w.call(ApiKey::InitProducerId, version, &req);
        if !RETRIABLE.contains(&resp.error_code) || std::time::Instant::now() > deadline {
            return (resp.error_code, resp.producer_id.0, resp.producer_epoch);
        }
        std::thread::sleep(Duration::from_millis(50)); // a client's retry backoff
    }
}

/// One record as stored, with the fields of the batch that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The batch's base sequence plus this record's offset delta (-1 for non-idempotent batches).
    pub sequence: i32,
    pub transactional: bool,
}

/// Reads a whole partition up to its high watermark with read_uncommitted Fetches and returns
/// every data record (control batches are skipped). Panics on any error.
pub fn read_partition_records(addr: &str, topic: &str, partition: i32) -> Vec<StoredRecord> {
    use creek_protocol::batch::{BatchView, batch_ranges};
    use creek_protocol::records::DecodedBatch;
    let mut w = Wire::connect(addr);
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (err, hw, records) = fetch(&mut w, topic, partition, offset, 0);
        assert_eq!(err, 0, "fetch {topic}/{partition} at {offset}");
        if records.is_empty() || offset >= hw {
            assert!(
                offset >= hw,
                "fetch {topic}/{partition} returned nothing at {offset} below the high watermark {hw}"
            );
            return out;
        }
        // A Fetch may end with a partial batch; whole batches only.
        let ranges = batch_ranges(&records).unwrap_or_else(|e| panic!("{topic}/{partition} at {offset}: {e}"));
        assert!(!ranges.is_empty(), "{topic}/{partition} at {offset}: no whole batch in {} bytes", records.len());
        for r in ranges {
            let view = BatchView::new(&records[r]).expect("v2 batch");
            view.verify_crc().expect("stored batches keep valid CRCs");
            let next = view.last_offset() + 1;
            if !view.is_control() {
                let decoded = DecodedBatch::new(view, 64 << 20).expect("decompress a stored batch");
                for rec in decoded.iter() {
                    let rec = rec.expect("well-formed stored record");
                    if rec.offset < offset {
                        continue;
                    }
                    let delta = (rec.offset - view.base_offset()) as i32;
                    out.push(StoredRecord {
                        offset: rec.offset,
                        key: rec.key.map(<[u8]>::to_vec),
                        value: rec.value.map(<[u8]>::to_vec),
                        producer_id: view.producer_id(),
                        producer_epoch: view.producer_epoch(),
                        sequence: if view.base_sequence() < 0 { -1 } else { view.base_sequence().wrapping_add(delta) },
                        transactional: view.is_transactional(),
                    });
                }
            }
            offset = offset.max(next);
        }
    }
}

/// A read_committed Fetch of a partition from offset 0: (error, high watermark, last stable
/// offset). LSO < HW means a transaction is still open on the partition.
pub fn stable_offsets(w: &mut Wire, topic: &str, partition: i32) -> (i16, i64, i64) {
    let req = fetch_one(topic, partition, 0, 0, 1024, 1);
    let resp: FetchResponse = w.call(ApiKey::Fetch, 11, &req);
    let pd = &resp.responses[0].partitions[0];
    (pd.error_code, pd.high_watermark, pd.last_stable_offset)
}

/// One transaction marker (control batch) as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub offset: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// COMMIT (true) or ABORT (false), from the control record's key.
    pub commit: bool,
}

/// Every transaction marker of a partition, in offset order (read_uncommitted Fetches up to the
/// high watermark). Panics on any error.
pub fn read_partition_markers(addr: &str, topic: &str, partition: i32) -> Vec<Marker> {
    use creek_protocol::batch::{BatchView, batch_ranges};
    use creek_protocol::records::DecodedBatch;
    let mut w = Wire::connect(addr);
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (err, hw, records) = fetch(&mut w, topic, partition, offset, 0);
        assert_eq!(err, 0, "fetch {topic}/{partition} at {offset}");
        if records.is_empty() || offset >= hw {
            return out;
        }
        for r in batch_ranges(&records).unwrap_or_else(|e| panic!("{topic}/{partition} at {offset}: {e}")) {
            let view = BatchView::new(&records[r]).expect("v2 batch");
            let next = view.last_offset() + 1;
            if view.is_control() && view.base_offset() >= offset {
                let decoded = DecodedBatch::new(view, 1 << 20).expect("decode a control batch");
                for rec in decoded.iter() {
                    let rec = rec.expect("well-formed control record");
                    // Control record key: version i16, type i16 (0 = ABORT, 1 = COMMIT).
                    let key = rec.key.expect("control records have a key");
                    assert!(key.len() >= 4, "control record key of {} bytes", key.len());
                    out.push(Marker {
                        offset: rec.offset,
                        producer_id: view.producer_id(),
                        producer_epoch: view.producer_epoch(),
                        commit: i16::from_be_bytes([key[2], key[3]]) == 1,
                    });
                }
            }
            offset = offset.max(next);
        }
    }
}

/// OffsetFetch (v5) of `group`'s committed offsets of `topic` partitions `0..partitions`, asked of
/// the broker behind `w` (its coordinator): the top-level error code and one offset per
/// partition (-1: none committed). Partition errors count as -1.
pub fn committed_offsets(w: &mut Wire, group: &str, topic: &str, partitions: i32) -> Option<(i16, Vec<i64>)> {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse};
    let mut t = OffsetFetchRequestTopic::default();
    t.name = topic_name(topic);
    t.partition_indexes = (0..partitions).collect();
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(StrBytes::from_string(group.to_string()));
    req.topics = Some(vec![t]);
    let resp: OffsetFetchResponse = w.try_call(ApiKey::OffsetFetch, 5, &req)?;
    let mut offsets = vec![-1; partitions.max(0) as usize];
    for p in resp.topics.iter().flat_map(|t| t.partitions.iter()) {
        if let Some(slot) = usize::try_from(p.partition_index).ok().and_then(|i| offsets.get_mut(i))
            && p.error_code == 0
        {
            *slot = p.committed_offset;
        }
    }
    Some((resp.error_code, offsets))
}

/// A transactional id as DescribeTransactions shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnDescription {
    pub error_code: i16,
    /// `Ongoing`, `PrepareCommit`, ...; empty on an error.
    pub state: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

/// DescribeTransactions (v0) of `txn_id`, asked of the broker behind `w` (its coordinator).
pub fn describe_transaction(w: &mut Wire, txn_id: &str) -> Option<TxnDescription> {
    let mut req = DescribeTransactionsRequest::default();
    req.transactional_ids = vec![TransactionalId(StrBytes::from_string(txn_id.to_string()))];
    let resp: DescribeTransactionsResponse = w.try_call(ApiKey::DescribeTransactions, 0, &req)?;
    let s = resp.transaction_states.first()?;
    Some(TxnDescription {
        error_code: s.error_code,
        state: s.transaction_state.to_string(),
        producer_id: s.producer_id.0,
        producer_epoch: s.producer_epoch,
    })
}
