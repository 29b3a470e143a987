//! The leader epoch cache: where each leader epoch's batches start, for OffsetForLeaderEpoch and truncation.

/// `(epoch, start offset)` entries, strictly increasing in both. Only epochs that have at least
/// one batch in the log are present.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct EpochCache {
    entries: Vec<(i32, u64)>,
}

impl EpochCache {
    pub(crate) fn from_entries(entries: Vec<(i32, u64)>) -> Self {
        assert!(entries.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1), "epoch entries must increase");
        EpochCache { entries }
    }
    pub(crate) fn entries(&self) -> &[(i32, u64)] {
        &self.entries
    }
    pub(crate) fn latest(&self) -> Option<i32> {
        self.entries.last().map(|e| e.0)
    }
    /// Records that a batch of `epoch` starts at `offset`. Returns true if the cache changed.
    /// Negative epochs (no leader epoch) are not tracked; older epochs than the latest are the
    /// caller's error and must have been refused before.
    pub(crate) fn assign(&mut self, epoch: i32, offset: u64) -> bool {
        if epoch < 0 {
            return false;
        }
        match self.entries.last() {
            Some(&(e, o)) if epoch <= e => {
                assert!(epoch == e, "epoch {epoch} after {e}");
                assert!(offset >= o, "offset {offset} before epoch start {o}");
                false
            }
            Some(&(_, o)) => {
                assert!(offset > o, "new epoch must start after the previous one");
                self.entries.push((epoch, offset));
                true
            }
            None => {
                self.entries.push((epoch, offset));
                true
            }
        }
    }
    /// Forgets epochs that start at or after `offset` (the log was truncated there).
    pub(crate) fn truncate_from_end(&mut self, offset: u64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|&(_, o)| o < offset);
        before != self.entries.len()
    }
    /// The log now starts at `offset`: entries starting below it collapse into one that starts at
    /// `offset` (the epoch of the batch holding `offset`), unless an entry starts exactly there or
    /// the log is empty (`offset == log_end`: only epochs with batches are kept).
    pub(crate) fn truncate_from_start(&mut self, offset: u64, log_end: u64) -> bool {
        let below = self.entries.iter().take_while(|&&(_, o)| o < offset).count();
        if below == 0 {
            return false;
        }
        let last_below = self.entries[below - 1].0;
        self.entries.drain(..below);
        if offset < log_end && self.entries.first().is_none_or(|&(_, o)| o != offset) {
            self.entries.insert(0, (last_below, offset));
        }
        true
    }
    /// OffsetForLeaderEpoch: the largest epoch `<= epoch` and where it ends (the next epoch's start,
    /// or `log_end` for the latest).
    pub(crate) fn end_offset_for(&self, epoch: i32, log_end: u64) -> Option<(i32, u64)> {
        let i = self.entries.iter().rposition(|&(e, _)| e <= epoch)?;
        let end = self.entries.get(i + 1).map_or(log_end, |&(_, o)| o);
        Some((self.entries[i].0, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_offset_for_leader_epoch_like_kafka() {
        let mut c = EpochCache::default();
        assert!(c.assign(1, 0));
        assert!(!c.assign(1, 5));
        assert!(c.assign(3, 10));
        assert_eq!(c.end_offset_for(0, 20), None);
        assert_eq!(c.end_offset_for(1, 20), Some((1, 10)));
        assert_eq!(c.end_offset_for(2, 20), Some((1, 10)));
        assert_eq!(c.end_offset_for(3, 20), Some((3, 20)));
        assert_eq!(c.end_offset_for(9, 20), Some((3, 20)));
        c.truncate_from_start(12, 20);
        assert_eq!(c.entries(), &[(3, 12)]);
        c.truncate_from_end(12);
        assert_eq!(c.latest(), None);
    }
}
