//! One handler per Kafka API, and the table that both dispatches requests and generates the
//! ApiVersions response, so the broker advertises exactly what it implements.

use std::sync::Arc;

use bytes::Bytes;
use creek_protocol::codec::{decode_request, encode_response};
use creek_protocol::header::RequestHeader;
use kafka_protocol::messages::ApiKey;

use crate::flusher::Flusher;
use crate::group::coordinator::GroupCoordinator;
use crate::state::Broker;
use crate::txn::coordinator::TxnCoordinator;

mod add_offsets_to_txn;
mod add_partitions_to_txn;
mod alter_configs;
mod api_versions;
mod consumer_group_describe;
mod consumer_group_heartbeat;
mod create_partitions;
mod create_topics;
mod delete_groups;
mod delete_records;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod describe_groups;
mod describe_log_dirs;
mod describe_producers;
mod describe_transactions;
mod elect_leaders;
mod end_txn;
mod fetch;
mod find_coordinator;
mod heartbeat;
mod incremental_alter_configs;
mod init_producer_id;
mod join_group;
pub(crate) mod leader_hints;
mod leave_group;
mod list_groups;
mod list_offsets;
mod list_transactions;
mod metadata;
mod offset_commit;
mod offset_delete;
mod offset_fetch;
mod offset_for_leader_epoch;
mod partition_reassignments;
mod produce;
mod sync_group;
mod txn_offset_commit;
mod unregister_broker;

pub(crate) use api_versions::unsupported_version_response;

/// Kafka error codes used as response values.
pub(crate) mod code {
    pub(crate) const NONE: i16 = 0;
    pub(crate) const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub(crate) const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub(crate) const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub(crate) const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub(crate) const NOT_COORDINATOR: i16 = 16;
    pub(crate) const ILLEGAL_GENERATION: i16 = 22;
    pub(crate) const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub(crate) const INVALID_GROUP_ID: i16 = 24;
    pub(crate) const UNKNOWN_MEMBER_ID: i16 = 25;
    pub(crate) const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub(crate) const REBALANCE_IN_PROGRESS: i16 = 27;
    pub(crate) const NON_EMPTY_GROUP: i16 = 68;
    pub(crate) const GROUP_ID_NOT_FOUND: i16 = 69;
    pub(crate) const MEMBER_ID_REQUIRED: i16 = 79;
    pub(crate) const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub(crate) const FENCED_INSTANCE_ID: i16 = 82;
    pub(crate) const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
    pub(crate) const CORRUPT_MESSAGE: i16 = 2;
    pub(crate) const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub(crate) const LEADER_NOT_AVAILABLE: i16 = 5;
    pub(crate) const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub(crate) const NOT_CONTROLLER: i16 = 41;
    pub(crate) const REQUEST_TIMED_OUT: i16 = 7;
    pub(crate) const MESSAGE_TOO_LARGE: i16 = 10;
    pub(crate) const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub(crate) const INVALID_REQUIRED_ACKS: i16 = 21;
    pub(crate) const UNSUPPORTED_VERSION: i16 = 35;
    pub(crate) const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub(crate) const INVALID_PARTITIONS: i16 = 37;
    pub(crate) const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub(crate) const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub(crate) const INVALID_CONFIG: i16 = 40;
    pub(crate) const INVALID_REQUEST: i16 = 42;
    pub(crate) const POLICY_VIOLATION: i16 = 44;
    pub(crate) const TOPIC_DELETION_DISABLED: i16 = 73;
    pub(crate) const FENCED_LEADER_EPOCH: i16 = 74;
    pub(crate) const UNKNOWN_LEADER_EPOCH: i16 = 75;
    pub(crate) const KAFKA_STORAGE_ERROR: i16 = 56;
    pub(crate) const INVALID_RECORD: i16 = 87;
    pub(crate) const UNKNOWN_TOPIC_ID: i16 = 100;
    pub(crate) const NO_REASSIGNMENT_IN_PROGRESS: i16 = 85;
    pub(crate) const BROKER_ID_NOT_REGISTERED: i16 = 102;
    pub(crate) const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub(crate) const UNKNOWN_PRODUCER_ID: i16 = 59;
    pub(crate) const TRANSACTION_COORDINATOR_FENCED: i16 = 52;
    pub(crate) const UNSTABLE_OFFSET_COMMIT: i16 = 88;
}

/// What a handler can reach.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) broker: Arc<Broker>,
    pub(crate) flusher: Flusher,
    pub(crate) groups: Arc<GroupCoordinator>,
    pub(crate) txns: Arc<TxnCoordinator>,
    /// The client's address, set per connection (`None` outside a connection, in tests).
    pub(crate) peer: Option<std::net::SocketAddr>,
}

impl Ctx {
    /// The client host as Kafka shows it in group descriptions: `/` and the peer's IP.
    pub(crate) fn client_host(&self) -> String {
        self.peer.map(|p| format!("/{}", p.ip())).unwrap_or_default()
    }
}

/// A decoded request with its header and the frame it was decoded from (Produce reclaims the
/// frame to stamp batches in place; other handlers ignore it).
pub(crate) struct Request<T> {
    pub(crate) header: RequestHeader,
    pub(crate) body: T,
    pub(crate) frame: Bytes,
}

impl<T> Request<T> {
    pub(crate) fn version(&self) -> i16 {
        self.header.api_version
    }
}

/// What to do after a request.
pub(crate) enum Outcome {
    /// The response frame as chunks to write in order (records are shared, not copied).
    Reply(Vec<Bytes>),
    /// acks=0 produce: no response is sent.
    NoReply,
    /// The request was malformed or not servable: log and close the connection, as Kafka does.
    Close(String),
}

macro_rules! apis {
    ($( $key:ident: $min:literal..=$max:literal => $req:ty, $handler:path; )*) => {
        /// Every implemented API with the versions this broker serves.
        pub(crate) const APIS: &[(ApiKey, i16, i16)] = &[$((ApiKey::$key, $min, $max)),*];

        /// Decodes the body, runs the handler and encodes its response.
        pub(crate) async fn dispatch(ctx: &Ctx, key: ApiKey, header: RequestHeader, body: Bytes) -> Outcome {
            let version = header.api_version;
            match key {
                $(ApiKey::$key => {
                    let frame = body.clone();
                    let req: $req = match decode_request(key, body, version) {
                        Ok(r) => r,
                        Err(e) => return Outcome::Close(format!("{key:?} v{version}: {e}")),
                    };
                    let correlation_id = header.correlation_id;
                    match $handler(ctx, Request { header, body: req, frame }).await {
                        Some(resp) => match encode_response(key, version, correlation_id, &resp) {
                            Ok(bytes) => Outcome::Reply(bytes),
                            Err(e) => Outcome::Close(format!("encoding response: {e}")),
                        },
                        None => Outcome::NoReply,
                    }
                })*
                _ => Outcome::Close(format!("API {key:?} is not implemented")),
            }
        }
    };
}

apis! {
    Produce: 0..=11 => kafka_protocol::messages::ProduceRequest, produce::handle;
    Fetch: 4..=16 => kafka_protocol::messages::FetchRequest, fetch::handle;
    ListOffsets: 1..=9 => kafka_protocol::messages::ListOffsetsRequest, list_offsets::handle;
    Metadata: 0..=12 => kafka_protocol::messages::MetadataRequest, metadata::handle;
    ApiVersions: 0..=4 => kafka_protocol::messages::ApiVersionsRequest, api_versions::handle;
    CreateTopics: 2..=7 => kafka_protocol::messages::CreateTopicsRequest, create_topics::handle;
    DeleteTopics: 1..=6 => kafka_protocol::messages::DeleteTopicsRequest, delete_topics::handle;
    DeleteRecords: 0..=2 => kafka_protocol::messages::DeleteRecordsRequest, delete_records::handle;
    OffsetForLeaderEpoch: 2..=4 => kafka_protocol::messages::OffsetForLeaderEpochRequest, offset_for_leader_epoch::handle;
    DescribeConfigs: 1..=4 => kafka_protocol::messages::DescribeConfigsRequest, describe_configs::handle;
    AlterConfigs: 0..=2 => kafka_protocol::messages::AlterConfigsRequest, alter_configs::handle;
    DescribeLogDirs: 1..=4 => kafka_protocol::messages::DescribeLogDirsRequest, describe_log_dirs::handle;
    CreatePartitions: 0..=3 => kafka_protocol::messages::CreatePartitionsRequest, create_partitions::handle;
    IncrementalAlterConfigs: 0..=1 => kafka_protocol::messages::IncrementalAlterConfigsRequest, incremental_alter_configs::handle;
    DescribeCluster: 0..=1 => kafka_protocol::messages::DescribeClusterRequest, describe_cluster::handle;
    ElectLeaders: 0..=2 => kafka_protocol::messages::ElectLeadersRequest, elect_leaders::handle;
    AlterPartitionReassignments: 0..=1 => kafka_protocol::messages::AlterPartitionReassignmentsRequest, partition_reassignments::alter;
    ListPartitionReassignments: 0..=0 => kafka_protocol::messages::ListPartitionReassignmentsRequest, partition_reassignments::list;
    UnregisterBroker: 0..=0 => kafka_protocol::messages::UnregisterBrokerRequest, unregister_broker::handle;
    FindCoordinator: 0..=6 => kafka_protocol::messages::FindCoordinatorRequest, find_coordinator::handle;
    JoinGroup: 0..=9 => kafka_protocol::messages::JoinGroupRequest, join_group::handle;
    SyncGroup: 0..=5 => kafka_protocol::messages::SyncGroupRequest, sync_group::handle;
    Heartbeat: 0..=4 => kafka_protocol::messages::HeartbeatRequest, heartbeat::handle;
    LeaveGroup: 0..=5 => kafka_protocol::messages::LeaveGroupRequest, leave_group::handle;
    OffsetCommit: 2..=9 => kafka_protocol::messages::OffsetCommitRequest, offset_commit::handle;
    OffsetFetch: 1..=9 => kafka_protocol::messages::OffsetFetchRequest, offset_fetch::handle;
    ListGroups: 0..=5 => kafka_protocol::messages::ListGroupsRequest, list_groups::handle;
    DescribeGroups: 0..=5 => kafka_protocol::messages::DescribeGroupsRequest, describe_groups::handle;
    DeleteGroups: 0..=2 => kafka_protocol::messages::DeleteGroupsRequest, delete_groups::handle;
    OffsetDelete: 0..=0 => kafka_protocol::messages::OffsetDeleteRequest, offset_delete::handle;
    ConsumerGroupHeartbeat: 0..=1 => kafka_protocol::messages::ConsumerGroupHeartbeatRequest, consumer_group_heartbeat::handle;
    ConsumerGroupDescribe: 0..=1 => kafka_protocol::messages::ConsumerGroupDescribeRequest, consumer_group_describe::handle;
    InitProducerId: 0..=5 => kafka_protocol::messages::InitProducerIdRequest, init_producer_id::handle;
    AddPartitionsToTxn: 0..=4 => kafka_protocol::messages::AddPartitionsToTxnRequest, add_partitions_to_txn::handle;
    AddOffsetsToTxn: 0..=4 => kafka_protocol::messages::AddOffsetsToTxnRequest, add_offsets_to_txn::handle;
    EndTxn: 0..=4 => kafka_protocol::messages::EndTxnRequest, end_txn::handle;
    TxnOffsetCommit: 0..=4 => kafka_protocol::messages::TxnOffsetCommitRequest, txn_offset_commit::handle;
    DescribeProducers: 0..=0 => kafka_protocol::messages::DescribeProducersRequest, describe_producers::handle;
    DescribeTransactions: 0..=0 => kafka_protocol::messages::DescribeTransactionsRequest, describe_transactions::handle;
    ListTransactions: 0..=2 => kafka_protocol::messages::ListTransactionsRequest, list_transactions::handle;
}

/// The versions served for `key`, if it is implemented.
pub(crate) fn supported(key: ApiKey) -> Option<(i16, i16)> {
    APIS.iter().find(|(k, _, _)| *k == key).map(|&(_, min, max)| (min, max))
}

/// `Some(s)` as the protocol's string type.
pub(crate) fn str_bytes(s: impl Into<String>) -> kafka_protocol::protocol::StrBytes {
    kafka_protocol::protocol::StrBytes::from_string(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_versions_are_within_what_the_codec_supports() {
        for &(key, min, max) in APIS {
            let codec = key.valid_versions();
            assert!(min <= max, "{key:?}");
            assert!(max <= codec.max, "{key:?} advertises v{max} beyond the codec's v{}", codec.max);
            // Produce v0-2 go through the v3 shim.
            assert!(min >= codec.min || key == ApiKey::Produce, "{key:?} min v{min} below codec");
        }
        assert_eq!(supported(ApiKey::Produce), Some((0, 11)), "librdkafka relies on Produce min 0");
    }
}

#[cfg(test)]
mod wire_versions_test;

#[cfg(test)]
mod group_wire_test;
#[cfg(test)]
mod txn_wire_test;

/// The Kafka error code a producer gets for a batch its partition's producer state refuses.
pub(crate) fn producer_error_code(e: &creek_storage::ProducerError) -> i16 {
    use creek_storage::ProducerError;
    match e {
        ProducerError::InvalidEpoch { .. } => crate::txn::state::INVALID_PRODUCER_EPOCH,
        ProducerError::OutOfOrder { .. } => code::OUT_OF_ORDER_SEQUENCE_NUMBER,
        ProducerError::UnknownProducer { .. } => code::UNKNOWN_PRODUCER_ID,
        ProducerError::InvalidTxnState { .. } => crate::txn::state::INVALID_TXN_STATE,
        ProducerError::CoordinatorFenced { .. } => code::TRANSACTION_COORDINATOR_FENCED,
        ProducerError::Malformed(_) => code::INVALID_RECORD,
    }
}
