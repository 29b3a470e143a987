//! Producer id allocation: ids never repeat, also across restarts and crashes.
//!
//! Ids are handed out from blocks: before the first id of a block is used, the end of the block
//! is written durably to `<data>/meta/producer-id-block`, so after any crash allocation resumes
//! above every id that may have been handed out. The ids seen in `__transaction_state` raise the
//! floor too (a lost or older file cannot make an id repeat).

use std::path::PathBuf;

use anyhow::Context;

/// Ids reserved per durable write.
const BLOCK: i64 = 1_000;

pub(crate) struct ProducerIds {
    path: PathBuf,
    /// In a cluster every node allocates (InitProducerId goes to any broker): node `lane` of
    /// `lanes` hands out only the ids `k * lanes + lane`, so no two nodes hand out the same id.
    /// A single node is lane 0 of 1.
    lane: i64,
    lanes: i64,
    next: i64,
    /// First id not covered by the durable reservation.
    reserved_end: i64,
}

impl ProducerIds {
    /// Opens the allocator in `meta_dir`, starting above the reservation on disk and above `floor`.
    pub(crate) fn open(
        meta_dir: &std::path::Path,
        floor: i64,
        (lane, lanes): (i64, i64),
    ) -> anyhow::Result<ProducerIds> {
        anyhow::ensure!(lanes >= 1 && (0..lanes).contains(&lane), "producer id lane {lane} of {lanes}");
        let path = meta_dir.join("producer-id-block");
        let on_disk = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse::<i64>().ok())
                .with_context(|| format!("{} is malformed", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // The reservation counts this node's own sequence; `floor` is a real id.
        let start = on_disk.max(floor.div_euclid(lanes).saturating_add(1)).max(0);
        Ok(ProducerIds { path, lane, lanes, next: start, reserved_end: start })
    }

    /// Makes every later id larger than `floor`, a real id seen elsewhere (a cluster node that
    /// loads a `__transaction_state` partition holding ids other nodes handed out).
    pub(crate) fn raise_floor(&mut self, floor: i64) {
        self.next = self.next.max(floor.div_euclid(self.lanes).saturating_add(1));
    }

    /// The next producer id. Fails only if the reservation cannot be made durable.
    pub(crate) fn allocate(&mut self) -> anyhow::Result<i64> {
        if self.next >= self.reserved_end {
            let end = self.next.checked_add(BLOCK).context("producer ids exhausted")?;
            crate::state::write_atomically(&self.path, format!("0\n{end}\n").as_bytes())?;
            self.reserved_end = end;
        }
        let id = self
            .next
            .checked_mul(self.lanes)
            .and_then(|i| i.checked_add(self.lane))
            .context("producer ids exhausted")?;
        self.next += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_never_repeat_across_reopens_and_respect_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = ProducerIds::open(dir.path(), -1, (0, 1)).unwrap();
        let a: Vec<i64> = (0..3).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(a, vec![0, 1, 2]);
        // A crash: whatever was handed out, the next process starts above the reservation.
        let mut ids = ProducerIds::open(dir.path(), -1, (0, 1)).unwrap();
        assert_eq!(ids.allocate().unwrap(), BLOCK);
        let mut ids = ProducerIds::open(dir.path(), 5 * BLOCK, (0, 1)).unwrap();
        assert_eq!(ids.allocate().unwrap(), 5 * BLOCK + 1);
        std::fs::write(dir.path().join("producer-id-block"), "garbage").unwrap();
        assert!(ProducerIds::open(dir.path(), -1, (0, 1)).is_err(), "a malformed file is an error, not a reset");
    }

    #[test]
    fn a_raised_floor_moves_allocation_above_ids_seen_elsewhere() {
        // Goal: a node that loads transactions of another node's ids never hands out one at or
        // below them (the state machine asserts it), and stays in its own lane.
        let dir = tempfile::tempdir().unwrap();
        let mut ids = ProducerIds::open(dir.path(), -1, (1, 3)).unwrap();
        assert_eq!(ids.allocate().unwrap(), 1);
        ids.raise_floor(3_000);
        let id = ids.allocate().unwrap();
        assert!(id > 3_000 && id % 3 == 1, "{id}");
        ids.raise_floor(10);
        assert!(ids.allocate().unwrap() > id, "a lower floor changes nothing");
        // Past the reservation on disk: the next open starts above what was handed out.
        let last = ids.allocate().unwrap();
        let mut reopened = ProducerIds::open(dir.path(), -1, (1, 3)).unwrap();
        assert!(reopened.allocate().unwrap() > last);
    }

    #[test]
    fn cluster_nodes_hand_out_disjoint_ids() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut seen = std::collections::HashSet::new();
        for (lane, dir) in dirs.iter().enumerate() {
            let mut ids = ProducerIds::open(dir.path(), 10, (lane as i64, 3)).unwrap();
            for _ in 0..2_500 {
                let id = ids.allocate().unwrap();
                assert!(id > 10, "ids start above the floor");
                assert_eq!(id % 3, lane as i64);
                assert!(seen.insert(id), "id {id} handed out twice");
            }
        }
    }
}
