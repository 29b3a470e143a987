//! Sparse per-segment indexes (offset → position, max timestamp → offset) as fixed-size big-endian entries.
//!
//! An active segment keeps its entries in a `Vec`; a sealed one reads them through a read-only map.
//! Entries are only appended (truncation rebuilds the index), so both forms share the lookups.

use bytes::Bytes;

/// `relative offset u32, position u32`.
pub(crate) const OFFSET_ENTRY_LEN: usize = 8;
/// `max timestamp so far i64, relative offset u32`.
pub(crate) const TIME_ENTRY_LEN: usize = 12;

#[derive(Debug)]
enum Store {
    Owned(Vec<u8>),
    Mapped(Bytes),
}

/// Entry bytes, owned while they can still grow, mapped once sealed.
#[derive(Debug)]
struct Entries {
    store: Store,
    entry_len: usize,
}

impl Entries {
    fn new(entry_len: usize, bytes: Vec<u8>) -> Self {
        assert!(bytes.len().is_multiple_of(entry_len), "index bytes must be whole entries");
        Entries { store: Store::Owned(bytes), entry_len }
    }
    fn mapped(entry_len: usize, bytes: Bytes) -> Self {
        assert!(bytes.len().is_multiple_of(entry_len), "index bytes must be whole entries");
        Entries { store: Store::Mapped(bytes), entry_len }
    }
    fn bytes(&self) -> &[u8] {
        match &self.store {
            Store::Owned(v) => v,
            Store::Mapped(b) => b,
        }
    }
    fn len(&self) -> usize {
        self.bytes().len() / self.entry_len
    }
    fn entry(&self, i: usize) -> &[u8] {
        &self.bytes()[i * self.entry_len..(i + 1) * self.entry_len]
    }
    fn owned(&mut self) -> &mut Vec<u8> {
        if let Store::Mapped(b) = &self.store {
            self.store = Store::Owned(b.to_vec());
        }
        match &mut self.store {
            Store::Owned(v) => v,
            Store::Mapped(_) => unreachable!("converted above"),
        }
    }
    fn set_mapped(&mut self, map: Bytes) {
        assert_eq!(map.as_ref(), self.bytes(), "mapped index must equal what was written");
        self.store = Store::Mapped(map);
    }
    /// Index of the last entry for which `le(entry)` holds, given entries sorted so that `le` is
    /// true for a prefix.
    fn last_where(&self, le: impl Fn(&[u8]) -> bool) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if le(self.entry(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Sparse map from relative offset to file position of the batch starting there.
#[derive(Debug)]
pub(crate) struct OffsetIndex(Entries);

impl OffsetIndex {
    pub(crate) fn empty() -> Self {
        OffsetIndex(Entries::new(OFFSET_ENTRY_LEN, Vec::new()))
    }
    /// Wraps bytes read from disk if they are well formed: whole entries, both fields strictly
    /// increasing, positions below `data_len`.
    /// The result keeps reading `bytes` (a map) until it is appended to.
    pub(crate) fn parse(bytes: Bytes, data_len: u64) -> Option<Self> {
        if !bytes.len().is_multiple_of(OFFSET_ENTRY_LEN) {
            return None;
        }
        let idx = OffsetIndex(Entries::mapped(OFFSET_ENTRY_LEN, bytes));
        let mut prev: Option<(u32, u32)> = None;
        for i in 0..idx.len() {
            let (rel, pos) = idx.entry(i);
            if u64::from(pos) >= data_len || prev.is_some_and(|(r, p)| rel <= r || pos <= p) {
                return None;
            }
            prev = Some((rel, pos));
        }
        Some(idx)
    }
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
    pub(crate) fn entry(&self, i: usize) -> (u32, u32) {
        let e = self.0.entry(i);
        (u32_at(e, 0), u32_at(e, 4))
    }
    pub(crate) fn last(&self) -> Option<(u32, u32)> {
        self.len().checked_sub(1).map(|i| self.entry(i))
    }
    pub(crate) fn push(&mut self, rel: u32, pos: u32) {
        if let Some((r, p)) = self.last() {
            assert!(rel > r && pos > p, "offset index must grow: ({r},{p}) then ({rel},{pos})");
        }
        let v = self.0.owned();
        v.extend_from_slice(&rel.to_be_bytes());
        v.extend_from_slice(&pos.to_be_bytes());
    }
    /// The last entry at or below `rel`, or `(0, 0)`: where to start scanning for `rel`.
    pub(crate) fn lookup(&self, rel: u32) -> (u32, u32) {
        match self.0.last_where(|e| u32_at(e, 0) <= rel) {
            Some(i) => self.entry(i),
            None => (0, 0),
        }
    }
    pub(crate) fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }
    pub(crate) fn set_mapped(&mut self, map: Bytes) {
        self.0.set_mapped(map);
    }
}

/// Sparse map from "largest timestamp so far" to the relative offset of the batch holding it.
///
/// Invariant: for each entry `(t, rel)`, the batch at `rel` has max timestamp `t` and no earlier
/// batch in the segment has a larger one. So every batch up to and including `rel` is `<= t`.
#[derive(Debug)]
pub(crate) struct TimeIndex(Entries);

impl TimeIndex {
    pub(crate) fn empty() -> Self {
        TimeIndex(Entries::new(TIME_ENTRY_LEN, Vec::new()))
    }
    /// Wraps bytes read from disk if they are whole entries with both fields strictly increasing.
    pub(crate) fn parse(bytes: Bytes) -> Option<Self> {
        if !bytes.len().is_multiple_of(TIME_ENTRY_LEN) {
            return None;
        }
        let idx = TimeIndex(Entries::mapped(TIME_ENTRY_LEN, bytes));
        let mut prev: Option<(i64, u32)> = None;
        for i in 0..idx.len() {
            let (ts, rel) = idx.entry(i);
            if prev.is_some_and(|(t, r)| ts <= t || rel <= r) {
                return None;
            }
            prev = Some((ts, rel));
        }
        Some(idx)
    }
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
    pub(crate) fn entry(&self, i: usize) -> (i64, u32) {
        let e = self.0.entry(i);
        (i64_at(e, 0), u32_at(e, 8))
    }
    pub(crate) fn last(&self) -> Option<(i64, u32)> {
        self.len().checked_sub(1).map(|i| self.entry(i))
    }
    pub(crate) fn push(&mut self, ts: i64, rel: u32) {
        if let Some((t, r)) = self.last() {
            assert!(ts > t && rel > r, "time index must grow: ({t},{r}) then ({ts},{rel})");
        }
        let v = self.0.owned();
        v.extend_from_slice(&ts.to_be_bytes());
        v.extend_from_slice(&rel.to_be_bytes());
    }
    /// Relative offset of the last entry with timestamp `< ts`: every batch up to it is older
    /// than `ts`, so a search for the first batch `>= ts` may start there.
    pub(crate) fn last_below(&self, ts: i64) -> Option<u32> {
        self.0.last_where(|e| i64_at(e, 0) < ts).map(|i| self.entry(i).1)
    }
    pub(crate) fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }
    pub(crate) fn set_mapped(&mut self, map: Bytes) {
        self.0.set_mapped(map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_lookup_finds_last_entry_at_or_below() {
        let mut idx = OffsetIndex::empty();
        idx.push(10, 100);
        idx.push(20, 200);
        assert_eq!(idx.lookup(5), (0, 0));
        assert_eq!(idx.lookup(10), (10, 100));
        assert_eq!(idx.lookup(25), (20, 200));
    }

    #[test]
    fn malformed_index_bytes_are_refused() {
        assert!(OffsetIndex::parse(Bytes::from(vec![0; 7]), 100).is_none());
        let mut b = Vec::new();
        for (r, p) in [(5u32, 50u32), (4, 60)] {
            b.extend_from_slice(&r.to_be_bytes());
            b.extend_from_slice(&p.to_be_bytes());
        }
        assert!(OffsetIndex::parse(Bytes::from(b), 100).is_none());
        assert!(TimeIndex::parse(Bytes::from(vec![0; 13])).is_none());
    }

    #[test]
    fn time_lookup_returns_last_entry_strictly_older() {
        let mut idx = TimeIndex::empty();
        idx.push(100, 0);
        idx.push(200, 5);
        assert_eq!(idx.last_below(100), None);
        assert_eq!(idx.last_below(150), Some(0));
        assert_eq!(idx.last_below(1000), Some(5));
    }
}
