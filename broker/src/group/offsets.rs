//! Committed offsets of every group, in memory, with Kafka 2.1+ expiry (`offsets.retention.minutes`).
//! Pure: the coordinator persists each change to `__consumer_offsets` before applying it here.

use std::collections::{BTreeMap, HashMap};

/// One committed offset (offset commit value version 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Committed {
    pub(crate) offset: i64,
    pub(crate) leader_epoch: i32,
    pub(crate) metadata: String,
    pub(crate) commit_ms: i64,
}

/// (topic, partition) → committed offset, per group.
#[derive(Debug, Default)]
pub(crate) struct Offsets {
    groups: HashMap<String, BTreeMap<(String, i32), Committed>>,
}

impl Offsets {
    pub(crate) fn commit(&mut self, group: &str, topic: &str, partition: i32, c: Committed) {
        self.groups.entry(group.to_string()).or_default().insert((topic.to_string(), partition), c);
    }

    pub(crate) fn get(&self, group: &str, topic: &str, partition: i32) -> Option<&Committed> {
        self.groups.get(group)?.get(&(topic.to_string(), partition))
    }

    /// Every committed offset of `group`, ordered by topic and partition.
    pub(crate) fn of_group(&self, group: &str) -> impl Iterator<Item = (&(String, i32), &Committed)> {
        self.groups.get(group).into_iter().flatten()
    }

    pub(crate) fn groups(&self) -> impl Iterator<Item = &String> {
        self.groups.keys()
    }

    pub(crate) fn remove(&mut self, group: &str, topic: &str, partition: i32) -> bool {
        let Some(g) = self.groups.get_mut(group) else { return false };
        let removed = g.remove(&(topic.to_string(), partition)).is_some();
        if g.is_empty() {
            self.groups.remove(group);
        }
        removed
    }

    /// Forgets every offset of `group`, returning their keys.
    pub(crate) fn remove_group(&mut self, group: &str) -> Vec<(String, i32)> {
        self.groups.remove(group).map(|g| g.into_keys().collect()).unwrap_or_default()
    }

    /// Offsets of `group` past retention: counted from `empty_since_ms` when the group is empty
    /// (Kafka 2.1+), from each commit's own time for standalone commits (`None`).
    pub(crate) fn expired(
        &self,
        group: &str,
        empty_since_ms: Option<i64>,
        retention_ms: i64,
        now_ms: i64,
    ) -> Vec<(String, i32)> {
        self.of_group(group)
            .filter(|(_, c)| empty_since_ms.unwrap_or(c.commit_ms).saturating_add(retention_ms) <= now_ms)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(offset: i64, commit_ms: i64) -> Committed {
        Committed { offset, leader_epoch: 3, metadata: "m".into(), commit_ms }
    }

    #[test]
    fn expiry_counts_from_emptiness_or_from_the_commit() {
        // Goal: standalone commits expire by commit time; an empty group's from when it emptied.
        let mut o = Offsets::default();
        o.commit("g", "t", 0, c(5, 1000));
        o.commit("g", "t", 1, c(6, 5000));
        assert_eq!(o.expired("g", None, 2000, 3000), vec![("t".to_string(), 0)]);
        assert!(o.expired("g", Some(10_000), 2000, 11_999).is_empty());
        assert_eq!(o.expired("g", Some(10_000), 2000, 12_000).len(), 2);
        assert!(o.remove("g", "t", 0));
        assert_eq!(o.get("g", "t", 1).unwrap().offset, 6);
        assert_eq!(o.remove_group("g"), vec![("t".to_string(), 1)]);
        assert_eq!(o.of_group("g").count(), 0);
    }
}
