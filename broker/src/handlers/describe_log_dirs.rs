//! DescribeLogDirs: the one log directory (the data directory) with every hosted partition's
//! size, and (v4) the volume's total and usable bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};

use super::{Ctx, Request, str_bytes};

/// Kafka's UNKNOWN_VOLUME_BYTES.
const VOLUME_BYTES_UNKNOWN: i64 = -1;

pub(super) async fn handle(ctx: &Ctx, req: Request<DescribeLogDirsRequest>) -> Option<DescribeLogDirsResponse> {
    let version = req.version();
    let broker = &ctx.broker;
    // Which partitions: all when `topics` is null; otherwise the requested ones this node hosts
    // (unknown ones are left out, as Kafka does), each once.
    let wanted: BTreeMap<String, Option<BTreeSet<i32>>> = match req.body.topics {
        None => broker.topics().iter().map(|t| (t.name.clone(), None)).collect(),
        Some(topics) => {
            let mut m: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
            for t in topics {
                m.entry(t.topic.0.to_string()).or_default().extend(t.partitions);
            }
            m.into_iter().map(|(name, p)| (name, Some(p))).collect()
        }
    };
    let mut dir = DescribeLogDirsResult::default();
    for (name, partitions) in wanted {
        let Some(topic) = broker.topic(&name) else { continue };
        let mut tr = DescribeLogDirsTopic::default();
        tr.name = TopicName(str_bytes(name));
        for part in topic.partitions.read().iter() {
            if partitions.as_ref().is_some_and(|p| !p.contains(&part.index)) {
                continue;
            }
            let mut pr = DescribeLogDirsPartition::default();
            pr.partition_index = part.index;
            pr.partition_size = part.log.lock().size_bytes() as i64;
            pr.offset_lag = 0;
            pr.is_future_key = false;
            tr.partitions.push(pr);
        }
        if !tr.partitions.is_empty() {
            dir.topics.push(tr);
        }
    }
    let data_dir = broker.data_dir();
    let data_dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    dir.log_dir = str_bytes(data_dir.to_string_lossy().into_owned());
    (dir.total_bytes, dir.usable_bytes) = (VOLUME_BYTES_UNKNOWN, VOLUME_BYTES_UNKNOWN);
    if version >= 4 {
        let path = data_dir.clone();
        if let Ok(Some((total, usable))) = tokio::task::spawn_blocking(move || volume_bytes(&path)).await {
            (dir.total_bytes, dir.usable_bytes) = (total, usable);
        }
    }
    let mut resp = DescribeLogDirsResponse::default();
    resp.results.push(dir);
    Some(resp)
}

/// The total and available bytes of the volume holding `dir`, from POSIX `df -Pk`: std has no
/// statvfs and the workspace denies `unsafe`. `None` when `df` is missing or says something else.
fn volume_bytes(dir: &Path) -> Option<(i64, i64)> {
    let out = std::process::Command::new("df").arg("-Pk").arg(dir).stdin(std::process::Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_df(&String::from_utf8_lossy(&out.stdout))
}

/// Parses `df -P` output (1024-byte blocks): `Filesystem 1024-blocks Used Available Capacity
/// Mounted-on`. The capacity column (ending in `%`) anchors the others, so spaces in the device
/// or mount point do not matter.
fn parse_df(text: &str) -> Option<(i64, i64)> {
    let line = text.lines().nth(1)?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let cap = fields.iter().position(|f| f.ends_with('%'))?;
    let blocks = |i: usize| -> Option<i64> { fields.get(i)?.parse::<i64>().ok()?.checked_mul(1024) };
    Some((blocks(cap.checked_sub(3)?)?, blocks(cap.checked_sub(1)?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn df_output_gives_total_and_usable_bytes() {
        let text = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n\
                    /dev/my disk      1000000   400000    600000      40% /mnt/my data\n";
        assert_eq!(parse_df(text), Some((1_024_000_000, 614_400_000)));
        assert_eq!(parse_df("Filesystem 1024-blocks Used Available Capacity Mounted on\n"), None);
        assert_eq!(parse_df("garbage\nno numbers here\n"), None);
    }

    #[test]
    fn df_runs_on_this_machine_or_answers_unknown() {
        // Either real numbers (total >= usable >= 0) or None; never a panic.
        if let Some((total, usable)) = volume_bytes(Path::new(".")) {
            assert!(total >= usable && usable >= 0, "{total} {usable}");
        }
    }
}

#[cfg(test)]
mod handler_tests {
    use std::collections::BTreeMap;

    use creek_protocol::batch::build_batch;
    use kafka_protocol::messages::ApiKey;
    use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;

    use super::*;
    use crate::handlers::describe_configs::fixture::{broker, encodes_at_every_version, request};

    #[tokio::test]
    async fn describe_log_dirs_reports_hosted_partition_sizes() {
        let (ctx, _dir) = broker(&[]);
        let a = ctx.broker.create_topic("a", 2, BTreeMap::new()).unwrap();
        ctx.broker.create_topic("b", 1, BTreeMap::new()).unwrap();
        let mut batch = build_batch(0, 1_000, &[(None, Some(b"hello".as_slice()))]);
        let len = batch.len() as i64;
        a.partition(1).unwrap().log.lock().append(&mut batch, 0, 1_000).unwrap();

        let mut all = DescribeLogDirsRequest::default();
        all.topics = None;
        let resp = handle(&ctx, request(ApiKey::DescribeLogDirs, 4, all)).await.unwrap();
        assert_eq!(resp.results.len(), 1);
        let dir = &resp.results[0];
        let sizes: Vec<(String, i32, i64)> = dir
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), p.partition_index, p.partition_size)))
            .collect();
        assert_eq!(sizes, [("a".to_string(), 0, 0), ("a".to_string(), 1, len), ("b".to_string(), 0, 0)]);
        assert!(Path::new(dir.log_dir.as_str()).is_absolute());
        assert!(dir.total_bytes == -1 || dir.total_bytes >= dir.usable_bytes);
        encodes_at_every_version(ApiKey::DescribeLogDirs, &resp);

        let ask = |name: &str, parts: Vec<i32>| {
            let mut t = DescribableLogDirTopic::default();
            t.topic = TopicName(str_bytes(name));
            t.partitions = parts;
            t
        };
        let mut body = DescribeLogDirsRequest::default();
        body.topics = Some(vec![ask("a", vec![1, 7]), ask("nope", vec![0]), ask("a", vec![1])]);
        let resp = handle(&ctx, request(ApiKey::DescribeLogDirs, 1, body)).await.unwrap();
        let topics = &resp.results[0].topics;
        assert_eq!(topics.len(), 1, "unknown topics and partitions are left out");
        assert_eq!(topics[0].partitions.iter().map(|p| p.partition_index).collect::<Vec<_>>(), [1]);
        let resp = handle(&ctx, request(ApiKey::DescribeLogDirs, 2, DescribeLogDirsRequest::default())).await.unwrap();
        assert!(resp.results[0].topics.is_empty(), "an empty list asks for nothing");
    }
}
