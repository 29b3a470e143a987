//! CreatePartitions: grows topics, checking counts and manual assignments; validate_only; one
//! result per requested topic, in request order. In a cluster the new partitions go through the
//! metadata group and every node opens them and starts their replicas.

use std::collections::HashSet;

use kafka_protocol::messages::create_partitions_request::CreatePartitionsAssignment;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use super::alter_configs::duplicates;
use super::describe_configs::Refusal;
use super::{Ctx, Request, code, str_bytes};

/// Largest partition count a topic may grow to, as in CreateTopics, so a typo cannot fill the
/// disk with files.
const PARTITIONS_MAX: i32 = 10_000;

pub(super) async fn handle(ctx: &Ctx, req: Request<CreatePartitionsRequest>) -> Option<CreatePartitionsResponse> {
    let body = req.body;
    let node_id = ctx.broker.config.read().node_id;
    let dups = duplicates(body.topics.iter().map(|t| t.name.0.to_string()));
    let mut answered = HashSet::new();
    let mut resp = CreatePartitionsResponse::default();
    for t in body.topics {
        let name = t.name.0.to_string();
        let outcome = if dups.contains(&name) {
            // Kafka answers a repeated topic once, and grows none of its copies.
            if !answered.insert(name.clone()) {
                continue;
            }
            Err((code::INVALID_REQUEST, "Duplicate topic name.".to_string()))
        } else {
            grow(ctx, &name, t.count, t.assignments.as_deref(), node_id, body.validate_only).await
        };
        let mut r = CreatePartitionsTopicResult::default();
        r.name = t.name;
        if let Err((code, msg)) = outcome {
            r.error_code = code;
            r.error_message = Some(str_bytes(msg));
        }
        resp.results.push(r);
    }
    Some(resp)
}

async fn grow(
    ctx: &Ctx,
    name: &str,
    count: i32,
    assignments: Option<&[CreatePartitionsAssignment]>,
    node_id: i32,
    validate_only: bool,
) -> Result<(), Refusal> {
    let topic = ctx.broker.topic(name).ok_or_else(|| {
        (code::UNKNOWN_TOPIC_OR_PARTITION, "This server does not host this topic-partition.".to_string())
    })?;
    let have = topic.partition_count() as i32;
    check_count(name, have, count)?;
    if let Some(cluster) = ctx.broker.cluster.get() {
        // The metadata group places the new partitions; every node opens them.
        let assignments = match assignments {
            Some(a) => Some(check_cluster_assignments(a, (count - have) as usize)?),
            None => None,
        };
        if validate_only {
            return Ok(());
        }
        cluster.add_partitions(&ctx.broker, name, count as usize, assignments).await?;
        tracing::info!(topic = name, from = have, to = count, "added partitions in the cluster");
        return Ok(());
    }
    if let Some(a) = assignments {
        check_assignments(a, (count - have) as usize, node_id)?;
    }
    if validate_only {
        return Ok(());
    }
    ctx.broker.add_partitions(&topic, count as u32).map_err(|e| {
        tracing::warn!(topic = name, error = %format!("{e:#}"), "adding partitions failed");
        (code::KAFKA_STORAGE_ERROR, format!("{e:#}"))
    })?;
    tracing::info!(topic = name, from = have, to = count, "added partitions");
    Ok(())
}

fn check_count(name: &str, have: i32, count: i32) -> Result<(), Refusal> {
    if count < have {
        return Err((
            code::INVALID_PARTITIONS,
            format!("The topic {name} currently has {have} partition(s); {count} would not be an increase."),
        ));
    }
    if count == have {
        return Err((code::INVALID_PARTITIONS, format!("Topic already has {have} partition(s).")));
    }
    if count > PARTITIONS_MAX {
        return Err((
            code::INVALID_PARTITIONS,
            format!("Number of partitions must be at most {PARTITIONS_MAX}, got {count}"),
        ));
    }
    Ok(())
}

/// A cluster's manual assignments: one per new partition, as node ids (the cluster checks that
/// each names every node).
fn check_cluster_assignments(
    assignments: &[CreatePartitionsAssignment],
    added: usize,
) -> Result<Vec<Vec<u64>>, Refusal> {
    if assignments.len() != added {
        return Err((
            code::INVALID_REPLICA_ASSIGNMENT,
            format!(
                "Attempted to add {added} additional partition(s), but only {} assignment(s) were specified.",
                assignments.len()
            ),
        ));
    }
    assignments
        .iter()
        .map(|a| {
            a.broker_ids
                .iter()
                .map(|b| {
                    u64::try_from(b.0)
                        .map_err(|_| (code::INVALID_REPLICA_ASSIGNMENT, format!("{} is not a broker id", b.0)))
                })
                .collect()
        })
        .collect()
}

/// Manual assignments: one per new partition, each a non-empty list of distinct, known brokers.
/// This node is the only broker, so every list is exactly `[node_id]`.
fn check_assignments(assignments: &[CreatePartitionsAssignment], added: usize, node_id: i32) -> Result<(), Refusal> {
    let invalid = |msg: String| Err((code::INVALID_REPLICA_ASSIGNMENT, msg));
    if assignments.len() != added {
        return invalid(format!(
            "Attempted to add {added} additional partition(s), but only {} assignment(s) were specified.",
            assignments.len()
        ));
    }
    for a in assignments {
        if a.broker_ids.is_empty() {
            return invalid("The manual partition assignment includes an empty replica list.".to_string());
        }
        let mut seen = HashSet::new();
        for b in &a.broker_ids {
            if !seen.insert(b.0) {
                return invalid(format!("The manual partition assignment includes the broker {} more than once.", b.0));
            }
            if b.0 != node_id {
                return invalid(format!(
                    "The manual partition assignment includes broker {}, but no such broker is registered.",
                    b.0
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(ids: &[i32]) -> CreatePartitionsAssignment {
        let mut a = CreatePartitionsAssignment::default();
        a.broker_ids = ids.iter().map(|&i| i.into()).collect();
        a
    }

    #[test]
    fn counts_must_grow_within_the_limit() {
        assert_eq!(check_count("t", 3, 2).unwrap_err().0, code::INVALID_PARTITIONS);
        let (c, msg) = check_count("t", 3, 3).unwrap_err();
        assert_eq!((c, msg.as_str()), (code::INVALID_PARTITIONS, "Topic already has 3 partition(s)."));
        assert_eq!(check_count("t", 3, -1).unwrap_err().0, code::INVALID_PARTITIONS);
        assert_eq!(check_count("t", 3, PARTITIONS_MAX + 1).unwrap_err().0, code::INVALID_PARTITIONS);
        assert!(check_count("t", 3, 4).is_ok());
    }

    #[test]
    fn assignments_must_place_each_new_partition_on_this_node() {
        assert!(check_assignments(&[assignment(&[1]), assignment(&[1])], 2, 1).is_ok());
        for bad in [
            vec![assignment(&[1])],                      // too few
            vec![assignment(&[1]), assignment(&[])],     // empty replica list
            vec![assignment(&[1]), assignment(&[2])],    // unknown broker
            vec![assignment(&[1]), assignment(&[1, 1])], // duplicate broker
        ] {
            assert_eq!(check_assignments(&bad, 2, 1).unwrap_err().0, code::INVALID_REPLICA_ASSIGNMENT);
        }
    }
}

#[cfg(test)]
mod handler_tests {
    use std::collections::BTreeMap;

    use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
    use kafka_protocol::messages::{ApiKey, TopicName};

    use super::*;
    use crate::handlers::describe_configs::fixture::{broker, encodes_at_every_version, request};

    fn topic(name: &str, count: i32, assignments: Option<Vec<Vec<i32>>>) -> CreatePartitionsTopic {
        let mut t = CreatePartitionsTopic::default();
        t.name = TopicName(str_bytes(name));
        t.count = count;
        t.assignments = assignments.map(|a| {
            a.into_iter()
                .map(|ids| {
                    let mut x = CreatePartitionsAssignment::default();
                    x.broker_ids = ids.into_iter().map(Into::into).collect();
                    x
                })
                .collect()
        });
        t
    }

    #[tokio::test]
    async fn create_partitions_returns_every_topic_in_request_order() {
        let (ctx, _dir) = broker(&[]);
        let a = ctx.broker.create_topic("a", 1, BTreeMap::new()).unwrap();
        let b = ctx.broker.create_topic("b", 2, BTreeMap::new()).unwrap();
        let mut body = CreatePartitionsRequest::default();
        body.validate_only = true;
        body.topics = vec![topic("a", 3, None)];
        let resp = handle(&ctx, request(ApiKey::CreatePartitions, 3, body)).await.unwrap();
        assert_eq!(resp.results[0].error_code, 0);
        assert_eq!(a.partition_count(), 1, "validate_only changes nothing");

        let mut body = CreatePartitionsRequest::default();
        body.topics = vec![
            topic("nope", 2, None),
            topic("a", 3, None),
            topic("b", 2, None),
            topic("b", 4, Some(vec![vec![1], vec![2]])),
            topic("c", 2, None),
            topic("c", 3, None),
        ];
        ctx.broker.create_topic("c", 1, BTreeMap::new()).unwrap();
        let resp = handle(&ctx, request(ApiKey::CreatePartitions, 3, body)).await.unwrap();
        let got: Vec<_> = resp.results.iter().map(|r| (r.name.0.to_string(), r.error_code)).collect();
        let want = [("nope", 3), ("a", 0), ("b", 42), ("c", 42)];
        assert_eq!(got, want.map(|(n, c)| (n.to_string(), c)));
        assert_eq!((a.partition_count(), b.partition_count()), (3, 2));
        encodes_at_every_version(ApiKey::CreatePartitions, &resp);

        let mut body = CreatePartitionsRequest::default();
        body.topics = vec![topic("b", 2, None), topic("b2", 1, None), topic("a", 4, Some(vec![vec![2]]))];
        ctx.broker.create_topic("b2", 3, BTreeMap::new()).unwrap();
        let resp = handle(&ctx, request(ApiKey::CreatePartitions, 0, body)).await.unwrap();
        let codes: Vec<i16> = resp.results.iter().map(|r| r.error_code).collect();
        assert_eq!(codes, [37, 37, 39]);
        assert!(resp.results[1].error_message.as_deref().unwrap().contains("would not be an increase"));
    }
}
