//! ElectLeaders: hand partitions back to their preferred (first) replica. In a cluster each
//! partition's leader transfers its Raft leadership to that replica (`Cluster::elect_preferred`);
//! Raft has no unclean election, so type 1 only reports whether a leader exists. A single node is
//! every partition's only replica: nothing to elect.

use std::time::Duration;

use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};

use super::{Ctx, Request, code, str_bytes};

const ELECTION_TYPE_PREFERRED: i8 = 0;
const ELECTION_TYPE_UNCLEAN: i8 = 1;
const PREFERRED_LEADER_NOT_AVAILABLE: i16 = 80;
const ELIGIBLE_LEADERS_NOT_AVAILABLE: i16 = 83;
const ELECTION_NOT_NEEDED: i16 = 84;
/// The longest ElectLeaders waits for elections, whatever the request's timeout says.
const WAIT_MAX: Duration = Duration::from_secs(30);

pub(super) async fn handle(ctx: &Ctx, req: Request<ElectLeadersRequest>) -> Option<ElectLeadersResponse> {
    let version = req.version();
    let body = req.body;
    // v0 has no election type: preferred.
    let election_type = if version == 0 { ELECTION_TYPE_PREFERRED } else { body.election_type };
    let wait = Duration::from_millis(body.timeout_ms.max(0) as u64).min(WAIT_MAX);
    let wanted: Vec<(String, Vec<i32>)> = match body.topic_partitions {
        Some(list) => list.into_iter().map(|t| (t.topic.0.to_string(), t.partitions)).collect(),
        // null: every partition of every topic.
        None => ctx
            .broker
            .topics()
            .iter()
            .filter(|t| !t.name.starts_with("__"))
            .map(|t| (t.name.clone(), (0..t.partition_count() as i32).collect()))
            .collect(),
    };
    let cluster = ctx.broker.cluster.get();
    let mut resp = ElectLeadersResponse::default();
    for (name, partitions) in wanted {
        let topic = ctx.broker.topic(&name);
        let mut tr = ReplicaElectionResult::default();
        tr.topic = TopicName(str_bytes(name.clone()));
        for index in partitions {
            let partition = topic.as_ref().and_then(|t| t.partition(index));
            let replica = partition.as_ref().and_then(|p| p.replica.get());
            let (error, message) = match (partition, cluster, replica) {
                (None, ..) => (code::UNKNOWN_TOPIC_OR_PARTITION, "This server does not host this topic-partition."),
                (Some(_), _, Some(r)) if election_type == ELECTION_TYPE_UNCLEAN => match r.leader() {
                    Some(_) => (ELECTION_NOT_NEEDED, "The partition has a leader; Raft elects no unclean ones."),
                    None => (ELIGIBLE_LEADERS_NOT_AVAILABLE, "No replica can lead yet; Raft elects no unclean ones."),
                },
                (Some(_), Some(c), Some(r)) if election_type == ELECTION_TYPE_PREFERRED => {
                    preferred_outcome(c.elect_preferred(&r, wait).await)
                }
                (Some(_), _, _) if !(ELECTION_TYPE_PREFERRED..=ELECTION_TYPE_UNCLEAN).contains(&election_type) => {
                    (code::INVALID_REQUEST, "Unknown election type.")
                }
                // Hosted by other nodes: their leader hands over.
                (Some(_), Some(c), None) if c.hosted_elsewhere(&name, index) => {
                    if election_type == ELECTION_TYPE_UNCLEAN {
                        match c.remote_leader(&name, index) {
                            Some(_) => {
                                (ELECTION_NOT_NEEDED, "The partition has a leader; Raft elects no unclean ones.")
                            }
                            None => (
                                ELIGIBLE_LEADERS_NOT_AVAILABLE,
                                "No replica can lead yet; Raft elects no unclean ones.",
                            ),
                        }
                    } else {
                        preferred_outcome(c.elect_preferred_elsewhere(&name, index, wait).await)
                    }
                }
                // A single node (or an internal topic in a cluster): one replica, which leads.
                (Some(_), ..) => (ELECTION_NOT_NEEDED, "The partition's only replica leads it."),
            };
            let mut pr = PartitionResult::default();
            pr.partition_id = index;
            pr.error_code = error;
            pr.error_message = (!message.is_empty()).then(|| str_bytes(message));
            tr.partition_result.push(pr);
        }
        resp.replica_election_results.push(tr);
    }
    Some(resp)
}
/// The answer to a preferred election whose outcome is `code` (see `Cluster::elect_preferred`).
fn preferred_outcome(result: i16) -> (i16, &'static str) {
    match result {
        0 => (code::NONE, ""),
        ELECTION_NOT_NEEDED => (ELECTION_NOT_NEEDED, "The preferred replica already leads."),
        code::REQUEST_TIMED_OUT => {
            (code::REQUEST_TIMED_OUT, "The preferred replica did not take over within the timeout.")
        }
        _ => (PREFERRED_LEADER_NOT_AVAILABLE, "The preferred replica is down or not caught up."),
    }
}
