//! DeleteTopics: by name (v1+) or topic id (v6), refused when `delete.topic.enable` is false. In a
//! cluster the deletion goes through the metadata group and every node applies it.

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use uuid::Uuid;

use super::alter_configs::duplicates;
use super::describe_configs::Refusal;
use super::{Ctx, Request, code, str_bytes};

/// One topic to delete as the request named it.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Target {
    Name(String),
    Id(Uuid),
    /// v6 allows a name or an id, not both and not neither.
    Both(String, Uuid),
    Neither,
}

pub(super) async fn handle(ctx: &Ctx, req: Request<DeleteTopicsRequest>) -> Option<DeleteTopicsResponse> {
    let version = req.version();
    let targets: Vec<Target> = if version >= 6 {
        req.body
            .topics
            .iter()
            .map(|t| match (&t.name, t.topic_id.is_nil()) {
                (Some(n), true) => Target::Name(n.0.to_string()),
                (None, false) => Target::Id(t.topic_id),
                (Some(n), false) => Target::Both(n.0.to_string(), t.topic_id),
                (None, true) => Target::Neither,
            })
            .collect()
    } else {
        req.body.topic_names.iter().map(|n| Target::Name(n.0.to_string())).collect()
    };
    let enabled = ctx.broker.config.read().bool("delete.topic.enable");
    let dups = duplicates(targets.iter().filter(|t| matches!(t, Target::Name(_) | Target::Id(_))).cloned());
    let mut answered = std::collections::HashSet::new();
    let mut resp = DeleteTopicsResponse::default();
    for target in targets {
        let (mut name, mut id) = match &target {
            Target::Name(n) => (Some(n.clone()), Uuid::nil()),
            Target::Id(id) => (None, *id),
            Target::Both(n, id) => (Some(n.clone()), *id),
            Target::Neither => (None, Uuid::nil()),
        };
        let outcome = if dups.contains(&target) {
            // Kafka answers a repeated name or id once, and deletes nothing for it.
            if !answered.insert(target.clone()) {
                continue;
            }
            let what = if matches!(target, Target::Id(_)) { "id" } else { "name" };
            Err((code::INVALID_REQUEST, format!("Duplicate topic {what}.")))
        } else if !enabled {
            // Before v3 there was no TOPIC_DELETION_DISABLED.
            let code = if version < 3 { code::INVALID_REQUEST } else { code::TOPIC_DELETION_DISABLED };
            Err((code, "Topic deletion is disabled.".to_string()))
        } else {
            match &target {
                Target::Both(..) => {
                    Err((code::INVALID_REQUEST, "You may not specify both topic name and topic id.".to_string()))
                }
                Target::Neither => {
                    Err((code::INVALID_REQUEST, "Either a topic name or a topic id must be given.".to_string()))
                }
                Target::Name(n) => match ctx.broker.topic(n) {
                    None => Err(unknown_topic()),
                    Some(t) => {
                        id = t.id;
                        delete(ctx, n).await
                    }
                },
                Target::Id(wanted) => match ctx.broker.topic_by_id(*wanted) {
                    None => Err((code::UNKNOWN_TOPIC_ID, "This server does not host this topic ID.".to_string())),
                    Some(t) => {
                        name = Some(t.name.clone());
                        delete(ctx, &t.name).await
                    }
                },
            }
        };
        let mut r = DeletableTopicResult::default();
        r.name = name.map(|n| TopicName(str_bytes(n)));
        r.topic_id = id;
        if let Err((code, msg)) = outcome {
            r.error_code = code;
            r.error_message = Some(str_bytes(msg));
        }
        resp.responses.push(r);
    }
    Some(resp)
}

async fn delete(ctx: &Ctx, name: &str) -> Result<(), Refusal> {
    if let Some(cluster) = ctx.broker.cluster.get() {
        // Every node stops its replicas and removes the data when the deletion applies.
        return cluster.delete_topic(&ctx.broker, name).await;
    }
    match ctx.broker.delete_topic(name) {
        Ok(true) => Ok(()),
        // Deleted by a concurrent request between the lookup and here.
        Ok(false) => Err(unknown_topic()),
        Err(e) => {
            tracing::warn!(topic = name, error = %format!("{e:#}"), "deleting topic failed");
            Err((code::KAFKA_STORAGE_ERROR, format!("{e:#}")))
        }
    }
}

fn unknown_topic() -> Refusal {
    (code::UNKNOWN_TOPIC_OR_PARTITION, "This server does not host this topic-partition.".to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kafka_protocol::messages::ApiKey;
    use kafka_protocol::messages::delete_topics_request::DeleteTopicState;

    use super::*;
    use crate::handlers::describe_configs::fixture::{broker, encodes_at_every_version, request};

    fn by_name(names: &[&str]) -> DeleteTopicsRequest {
        let mut b = DeleteTopicsRequest::default();
        b.topic_names = names.iter().map(|n| TopicName(str_bytes(*n))).collect();
        b
    }

    #[tokio::test]
    async fn delete_topics_by_name_and_id_answer_each_topic() {
        let (ctx, _dir) = broker(&[]);
        let a = ctx.broker.create_topic("a", 2, BTreeMap::new()).unwrap();
        ctx.broker.create_topic("b", 1, BTreeMap::new()).unwrap();

        let resp = handle(&ctx, request(ApiKey::DeleteTopics, 5, by_name(&["b", "nope", "x", "x"]))).await.unwrap();
        let got: Vec<_> =
            resp.responses.iter().map(|r| (r.name.as_ref().unwrap().0.to_string(), r.error_code)).collect();
        assert_eq!(got, [("b".to_string(), 0), ("nope".to_string(), 3), ("x".to_string(), 42)]);
        assert!(ctx.broker.topic("b").is_none());
        encodes_at_every_version(ApiKey::DeleteTopics, &resp);

        let state = |name: Option<&str>, id: Uuid| {
            let mut s = DeleteTopicState::default();
            s.name = name.map(|n| TopicName(str_bytes(n)));
            s.topic_id = id;
            s
        };
        let unknown = Uuid::new_v4();
        let mut body = DeleteTopicsRequest::default();
        body.topics = vec![state(None, a.id), state(None, unknown), state(Some("a"), a.id), state(None, Uuid::nil())];
        let resp = handle(&ctx, request(ApiKey::DeleteTopics, 6, body)).await.unwrap();
        let got: Vec<_> = resp
            .responses
            .iter()
            .map(|r| (r.name.as_ref().map(|n| n.0.to_string()), r.topic_id, r.error_code))
            .collect();
        assert_eq!(got[0], (Some("a".to_string()), a.id, 0), "deleted by id, answered with its name");
        assert_eq!(got[1], (None, unknown, 100));
        assert_eq!(got[2].2, 42, "name and id together");
        assert_eq!(got[3].2, 42, "neither name nor id");
        assert!(ctx.broker.topic("a").is_none());
        encodes_at_every_version(ApiKey::DeleteTopics, &resp);
    }

    #[tokio::test]
    async fn delete_topics_is_refused_when_deletion_is_disabled() {
        let (ctx, _dir) = broker(&[("delete.topic.enable", "false")]);
        ctx.broker.create_topic("a", 1, BTreeMap::new()).unwrap();
        let resp = handle(&ctx, request(ApiKey::DeleteTopics, 4, by_name(&["a"]))).await.unwrap();
        assert_eq!(resp.responses[0].error_code, code::TOPIC_DELETION_DISABLED);
        let resp = handle(&ctx, request(ApiKey::DeleteTopics, 1, by_name(&["a"]))).await.unwrap();
        assert_eq!(resp.responses[0].error_code, code::INVALID_REQUEST, "v1-2 predate TOPIC_DELETION_DISABLED");
        assert!(ctx.broker.topic("a").is_some());
    }
}
