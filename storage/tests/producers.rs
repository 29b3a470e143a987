//! Producer state through the public log API: duplicates answered with their original offsets,
//! refusals, transactions and the aborted index, all surviving crashes, clean reopens, rolls and
//! truncation.

use creek_protocol::batch::{build_batch, build_control_batch, set_producer};
use creek_storage::{AbortedTxn, LogConfig, PartitionLog, ProducerError, StorageError};

const T0: i64 = 1_700_000_000_000;

fn batch(pid: i64, epoch: i16, seq: i32, records: usize, txn: bool) -> Vec<u8> {
    let values: Vec<(Option<&[u8]>, Option<&[u8]>)> = (0..records).map(|_| (None, Some(&b"value"[..]))).collect();
    let mut b = build_batch(0, T0, &values);
    set_producer(&mut b, pid, epoch, seq, txn);
    b
}

fn small() -> LogConfig {
    LogConfig { segment_bytes: 2_000, ..LogConfig::default() }
}

/// Appends and returns (base, last, duplicate).
fn append(log: &mut PartitionLog, mut b: Vec<u8>) -> Result<(u64, u64, bool), StorageError> {
    log.append(&mut b, 0, T0).map(|i| (i.base_offset, i.last_offset, i.duplicate))
}

#[test]
fn retried_batches_get_their_original_offsets_also_after_a_crash_and_across_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small(), T0).unwrap();
    let mut seq = 0;
    let mut acked = Vec::new();
    for _ in 0..40 {
        append(&mut log, build_batch(0, T0, &[(None, Some(b"plain"))])).unwrap(); // plain batches interleave
        let r = append(&mut log, batch(7, 0, seq, 3, false)).unwrap();
        assert!(!r.2);
        acked.push((seq, r.0, r.1));
        seq += 3;
    }
    assert!(log.segment_count() > 3, "the test must cross rolls");
    let end = log.log_end_offset();
    // Crash: no close, only what was written (the page cache survives a process crash).
    drop(log);
    let mut log = PartitionLog::open(dir.path(), small(), T0).unwrap();
    for &(s, base, last) in acked.iter().rev().take(5) {
        assert_eq!(append(&mut log, batch(7, 0, s, 3, false)).unwrap(), (base, last, true), "seq {s}");
    }
    assert_eq!(log.log_end_offset(), end, "duplicates are not written");
    // Older than the five remembered batches: no longer recognisable, so out of order.
    let (s, _, _) = acked[30];
    assert!(matches!(
        append(&mut log, batch(7, 0, s, 3, false)),
        Err(StorageError::Producer(ProducerError::OutOfOrder { .. }))
    ));
    assert!(matches!(
        append(&mut log, batch(7, 0, seq + 1, 1, false)),
        Err(StorageError::Producer(ProducerError::OutOfOrder { .. }))
    ));
    assert!(matches!(
        append(&mut log, batch(8, 0, 5, 1, false)),
        Err(StorageError::Producer(ProducerError::UnknownProducer { .. }))
    ));
    assert_eq!(log.log_end_offset(), end, "refused batches are not written");
    append(&mut log, batch(7, 0, seq, 1, false)).unwrap();
    // A clean close and reopen keep the state too.
    log.close().unwrap();
    let mut log = PartitionLog::open(dir.path(), small(), T0).unwrap();
    assert!(append(&mut log, batch(7, 0, seq, 1, false)).unwrap().2);
    assert!(matches!(
        append(&mut log, batch(7, 0, -1, 1, false)),
        Err(StorageError::Producer(ProducerError::Malformed(_)))
    ));
}

#[test]
fn aborted_transactions_are_indexed_and_bound_the_stable_offset_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small(), T0).unwrap();
    let (first, _, _) = append(&mut log, batch(5, 0, 0, 2, true)).unwrap();
    append(&mut log, batch(6, 0, 0, 1, true)).unwrap();
    append(&mut log, batch(5, 0, 2, 2, true)).unwrap();
    assert_eq!(log.first_unstable_offset(), Some(first));
    assert_eq!(log.last_stable_offset(log.log_end_offset()), first);
    let (abort_at, _, _) = append(&mut log, build_control_batch(5, 0, false, 0, T0)).unwrap();
    assert_eq!(log.first_unstable_offset(), Some(first + 2), "producer 6's transaction is still open");
    append(&mut log, build_control_batch(6, 0, true, 0, T0)).unwrap();
    assert_eq!(log.first_unstable_offset(), None);
    let aborted = vec![AbortedTxn { producer_id: 5, first_offset: first, last_offset: abort_at }];
    assert_eq!(log.aborted_transactions(0, log.log_end_offset()), aborted);
    // Fill past several rolls, with another aborted transaction later on.
    for s in 0..30 {
        append(&mut log, batch(1, 0, s, 1, false)).unwrap();
    }
    let (f2, _, _) = append(&mut log, batch(5, 1, 0, 1, true)).unwrap();
    let (a2, _, _) = append(&mut log, build_control_batch(5, 1, false, 0, T0)).unwrap();
    let all = vec![aborted[0], AbortedTxn { producer_id: 5, first_offset: f2, last_offset: a2 }];
    assert_eq!(log.aborted_transactions(0, log.log_end_offset()), all);
    // Fenced markers and batches are refused.
    assert!(matches!(
        append(&mut log, build_control_batch(5, 0, true, 0, T0)),
        Err(StorageError::Producer(ProducerError::InvalidEpoch { .. }))
    ));
    drop(log); // crash
    let log = PartitionLog::open(dir.path(), small(), T0).unwrap();
    assert_eq!(log.aborted_transactions(0, log.log_end_offset()), all);
    assert_eq!(log.aborted_transactions(f2, a2), all[1..]);
    log.close().unwrap();
    let mut log = PartitionLog::open(dir.path(), small(), T0).unwrap();
    assert_eq!(log.aborted_transactions(0, log.log_end_offset()), all);
    // Truncation removes what it cuts from producer state and the index, even after reopening.
    append(&mut log, batch(5, 2, 0, 1, true)).unwrap();
    log.truncate_to(a2).unwrap();
    assert_eq!(log.aborted_transactions(0, u64::MAX), all[..1]);
    assert_eq!(log.first_unstable_offset(), Some(f2), "the cut marker's transaction is open again");
    drop(log);
    let log = PartitionLog::open(dir.path(), small(), T0).unwrap();
    assert_eq!(log.aborted_transactions(0, u64::MAX), all[..1]);
    assert_eq!(log.first_unstable_offset(), Some(f2));
}
