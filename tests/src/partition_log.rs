//! A partition's log as batches, read from a node's segment files or with raw Fetches from its
//! leader, and the checks a replicated log must pass: replicas byte-identical over the committed
//! prefix, offsets dense, leader epochs never decreasing.

use std::path::Path;
use std::time::{Duration, Instant};

use creek_protocol::batch::{BatchView, batch_ranges};
use creek_protocol::records::DecodedBatch;

use crate::wire::{self, Wire};

/// Batch header bytes before the `batchLength` field's end: baseOffset i64, batchLength i32.
const LENGTH_END: usize = 12;

/// One stored RecordBatch v2.
#[derive(Clone, PartialEq, Eq)]
pub struct Batch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub leader_epoch: i32,
    pub control: bool,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Batch({}..={}, epoch {}, {}{} bytes)",
            self.base_offset,
            self.last_offset,
            self.leader_epoch,
            if self.control { "control, " } else { "" },
            self.bytes.len()
        )
    }
}

impl Batch {
    fn from_view(view: &BatchView<'_>) -> Batch {
        Batch {
            base_offset: view.base_offset(),
            last_offset: view.last_offset(),
            leader_epoch: view.partition_leader_epoch(),
            control: view.is_control(),
            bytes: view.as_bytes().to_vec(),
        }
    }

    /// `(offset, value)` of every data record (none for a control batch).
    pub fn values(&self) -> Vec<(i64, Option<Vec<u8>>)> {
        if self.control {
            return Vec::new();
        }
        let view = BatchView::new(&self.bytes).expect("a whole v2 batch");
        let decoded = DecodedBatch::new(view, 64 << 20).expect("decompress a stored batch");
        decoded
            .iter()
            .map(|r| {
                let r = r.expect("well-formed stored record");
                (r.offset, r.value.map(<[u8]>::to_vec))
            })
            .collect()
    }
}

/// The batches stored in `<data_dir>/<topic>-<partition>/*.log`, segment by segment in offset
/// order. A segment ends at a batch whose length field is 0 (preallocated space) or that runs past
/// the file (a tail being written).
pub fn read_segments(data_dir: &Path, topic: &str, partition: i32) -> Vec<Batch> {
    let dir = data_dir.join(format!("{topic}-{partition}"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    // 20-digit base offsets: name order is offset order.
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let mut at = 0;
        while at + LENGTH_END <= bytes.len() {
            let len = i32::from_be_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
            if len <= 0 || at + LENGTH_END + len as usize > bytes.len() {
                break;
            }
            let end = at + LENGTH_END + len as usize;
            let Ok(view) = BatchView::new(&bytes[at..end]) else { break };
            out.push(Batch::from_view(&view));
            at = end;
        }
    }
    out
}

/// The batches of a partition below `high_watermark` (the committed prefix).
pub fn committed(batches: &[Batch], high_watermark: i64) -> &[Batch] {
    let n = batches.iter().take_while(|b| b.last_offset < high_watermark).count();
    &batches[..n]
}

/// The whole partition up to its high watermark, read from `addr` (its leader) with raw Fetches:
/// `(high watermark, batches)`. Errors say which Fetch failed (a leader that moved, a node down).
pub fn fetch_log(addr: &str, topic: &str, partition: i32, limit: Duration) -> Result<(i64, Vec<Batch>), String> {
    fetch_log_from(addr, topic, partition, 0, limit)
}

/// [`fetch_log`] from offset `start` (a log start that retention moved) instead of 0.
pub fn fetch_log_from(
    addr: &str,
    topic: &str,
    partition: i32,
    start: i64,
    limit: Duration,
) -> Result<(i64, Vec<Batch>), String> {
    let mut w = Wire::connect_timeout(addr, limit).map_err(|e| format!("connect {addr}: {e}"))?;
    let mut out: Vec<Batch> = Vec::new();
    let mut offset = start;
    let mut first_hw = None;
    loop {
        let (err, hw, records) = wire::try_fetch(&mut w, topic, partition, offset, 0)
            .ok_or_else(|| format!("{addr}: no answer to Fetch at {offset}"))?;
        if err != 0 {
            return Err(format!("{addr}: Fetch at {offset}: error {err}"));
        }
        // Read up to the high watermark of the first answer; it only grows.
        let hw = *first_hw.get_or_insert(hw);
        if offset >= hw {
            return Ok((hw, out));
        }
        let ranges = batch_ranges(&records).map_err(|e| format!("{addr}: Fetch at {offset}: {e}"))?;
        if ranges.is_empty() {
            return Err(format!("{addr}: Fetch at {offset} below the high watermark {hw} returned no whole batch"));
        }
        for r in ranges {
            let view = BatchView::new(&records[r]).map_err(|e| format!("{addr}: at {offset}: {e}"))?;
            view.verify_crc().map_err(|e| format!("{addr}: batch at {}: {e}", view.base_offset()))?;
            if view.last_offset() < offset || view.base_offset() >= hw {
                continue;
            }
            offset = view.last_offset() + 1;
            out.push(Batch::from_view(&view));
        }
    }
}

/// Like [`fetch_log`], retrying for up to `limit` while the answer is an error (a leader moving).
pub fn fetch_log_retrying(
    addr: &str,
    topic: &str,
    partition: i32,
    limit: Duration,
) -> Result<(i64, Vec<Batch>), String> {
    let deadline = Instant::now() + limit;
    loop {
        match fetch_log(addr, topic, partition, Duration::from_secs(5)) {
            Ok(log) => return Ok(log),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Checks that offsets are dense (each batch starts right after the previous one ends) and that
/// leader epochs never decrease along the log.
pub fn check_dense_epochs(batches: &[Batch]) -> Result<(), String> {
    for pair in batches.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.base_offset != a.last_offset + 1 {
            return Err(format!("offsets not dense: {a:?} then {b:?}"));
        }
        if b.leader_epoch < a.leader_epoch {
            return Err(format!("leader epoch decreases: {a:?} then {b:?}"));
        }
    }
    Ok(())
}

/// Asserts that every replica holds the committed prefix (every batch below `high_watermark`)
/// and that the replicas' copies are byte-identical. `replicas` is `(node id, its batches)`.
///
/// Each replica runs retention itself, so their logs may start at different offsets: they are
/// compared from the latest start.
pub fn assert_replicas_identical(replicas: &[(i32, Vec<Batch>)], high_watermark: i64) {
    let start = replicas.iter().filter_map(|(_, b)| b.first()).map(|b| b.base_offset).max().unwrap_or(0);
    let from =
        |batches: &[Batch]| -> Vec<Batch> { batches.iter().filter(|b| b.base_offset >= start).cloned().collect() };
    let (first_id, first) = &replicas[0];
    let first = from(first);
    let reference = committed(&first, high_watermark);
    for (id, batches) in replicas {
        let batches = from(batches);
        let mine = committed(&batches, high_watermark);
        let end = mine.last().map_or(0, |b| b.last_offset + 1);
        assert_eq!(
            end,
            high_watermark,
            "node {id} holds the committed prefix only up to {end}, not the high watermark {high_watermark} \
             ({} batches; last stored: {:?})",
            batches.len(),
            batches.last()
        );
        if let Some(i) = (0..mine.len().min(reference.len())).find(|&i| mine[i] != reference[i]) {
            panic!("node {id} and node {first_id} differ at batch {i}: {:?} vs {:?}", mine[i], reference[i]);
        }
        assert_eq!(mine.len(), reference.len(), "node {id} and node {first_id}: committed batch counts");
    }
}
