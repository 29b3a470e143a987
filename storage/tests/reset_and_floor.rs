//! Scenario tests of starting a log over at an offset (`reset_to`, crash-safe) and of the retention floor.

use std::fs;
use std::path::Path;

use creek_protocol::batch::{build_batch, build_control_batch, set_producer};
use creek_storage::{LogConfig, PartitionLog, StorageError};

fn batch(records: usize, ts: i64) -> Vec<u8> {
    let values: Vec<Vec<u8>> = (0..records).map(|i| format!("value-{i}").into_bytes()).collect();
    let recs: Vec<_> = values.iter().map(|v| (None, Some(v.as_slice()))).collect();
    build_batch(0, ts, &recs)
}

fn small() -> LogConfig {
    LogConfig { segment_bytes: 1024, index_interval_bytes: 200, preallocate_chunk_bytes: 512, ..LogConfig::default() }
}

/// Appends `n` batches of 3 records (timestamps 1000, 1010, ...) at leader epoch 3, one of them
/// from an idempotent producer and one an open transaction, so the log has producer state,
/// an aborted index, epochs and several segments.
fn fill(log: &mut PartitionLog, n: usize) {
    for i in 0..n {
        let mut b = batch(3, 1000 + 10 * i as i64);
        match i {
            1 => set_producer(&mut b, 7, 0, 0, false),
            2 => set_producer(&mut b, 8, 0, 0, true),
            _ => {}
        }
        log.append(&mut b, 3, 0).unwrap();
        if i == 3 {
            log.append(&mut build_control_batch(8, 0, false, 0, 0), 3, 0).unwrap();
            let mut b = batch(1, 0);
            set_producer(&mut b, 9, 0, 0, true);
            log.append(&mut b, 3, 0).unwrap();
        }
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

/// What a fresh empty log at `offset` must look like to a user, and that it takes appends there.
fn assert_empty_at(log: &mut PartitionLog, offset: u64) {
    assert_eq!((log.log_start_offset(), log.log_end_offset(), log.flushed_offset()), (offset, offset, offset));
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.size_bytes(), 0);
    assert_eq!(log.latest_epoch(), None);
    assert!(log.producers().is_empty());
    assert_eq!(log.first_unstable_offset(), None);
    assert!(log.aborted_transactions(0, u64::MAX).is_empty());
    assert!(log.read(offset, 1 << 20).unwrap().bytes.is_empty());
    if offset > 0 {
        assert!(matches!(log.read(offset - 1, 1 << 20), Err(StorageError::OffsetOutOfRange { .. })));
    }
}

/// The files of an empty log at `offset`: one segment named by it, no snapshot, no aborted
/// index, no compaction or reset leftovers; the caller's state file kept.
fn assert_files_of_empty_log(dir: &Path, offset: u64) {
    let names = names(dir);
    let stem = format!("{offset:020}");
    for n in &names {
        assert!(
            !n.ends_with(".snapshot") && !n.ends_with(".txnindex") && !n.contains("reset") && !n.contains("cleaner"),
            "leftover {n} in {names:?}"
        );
        if n.ends_with(".log") {
            assert_eq!(n, &format!("{stem}.log"), "{names:?}");
        }
    }
    assert!(names.contains(&"raft-vote.state".to_string()), "state files are the caller's: {names:?}");
}

#[test]
fn reset_past_the_end_starts_an_empty_log_there_that_takes_appends() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    fill(&mut log, 30);
    log.write_state_file("raft-vote", b"kept").unwrap();
    assert!(log.segment_count() > 3 && log.latest_epoch() == Some(3) && log.first_unstable_offset().is_some());
    let stale = log.flush_target();

    log.reset_to(1_000).unwrap();
    assert_empty_at(&mut log, 1_000);
    assert_files_of_empty_log(dir.path(), 1_000);
    log.mark_flushed_target(&stale); // a target from before the reset is ignored
    assert_eq!(log.flushed_offset(), 1_000);
    // Epochs start over: an epoch below the old one is accepted; producers start over too.
    let mut b = batch(2, 5);
    set_producer(&mut b, 7, 0, 0, false);
    let info = log.append(&mut b, 1, 5).unwrap();
    assert_eq!((info.base_offset, info.last_offset, info.duplicate), (1_000, 1_001, false));
    assert_eq!(log.end_offset_for_epoch(1), Some((1, 1_002)));
    assert_eq!(&log.read(1_000, 1 << 20).unwrap().bytes[..], &b[..]);

    // Clean reopen keeps the new log.
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (1_000, 1_002));
    assert_eq!(&log.read(1_000, 1 << 20).unwrap().bytes[..], &b[..]);
    assert_eq!(log.read_state_file("raft-vote").unwrap().as_deref(), Some(&b"kept"[..]));
}

#[test]
fn reset_inside_or_below_the_log_discards_every_batch() {
    for offset in [0, 7, 45] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), small(), 0).unwrap();
        fill(&mut log, 30);
        log.write_state_file("raft-vote", b"kept").unwrap();
        log.delete_records_before(20).unwrap();
        log.reset_to(offset).unwrap();
        assert_empty_at(&mut log, offset);
        assert_files_of_empty_log(dir.path(), offset);
        assert_eq!(log.append(&mut batch(1, 0), 0, 0).unwrap().base_offset, offset);
    }
}

#[test]
fn a_crash_right_after_a_reset_returns_keeps_the_new_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    fill(&mut log, 30);
    log.write_state_file("raft-vote", b"kept").unwrap();
    log.reset_to(500).unwrap();
    drop(log); // crash: no close, nothing appended
    let mut log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    assert_empty_at(&mut log, 500);
    assert_files_of_empty_log(dir.path(), 500);

    let mut b = batch(3, 0);
    log.append(&mut b, 2, 0).unwrap();
    log.flush().unwrap();
    drop(log); // crash after a flushed append at the new start
    let log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (500, 503));
    assert_eq!(&log.read(500, 1 << 20).unwrap().bytes[..], &b[..]);
}

#[test]
fn a_crash_after_the_reset_commit_point_is_finished_by_recovery() {
    // Crash states past the commit point: right after it (nothing deleted yet), and part-way
    // through deleting (the oldest segment and every producer snapshot already gone).
    for partial in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), small(), 0).unwrap();
        fill(&mut log, 30);
        log.write_state_file("raft-vote", b"kept").unwrap();
        log.reset_to_interrupted(40).unwrap(); // inside the old log: nothing but the marker says "reset"
        drop(log);
        if partial {
            let first = names(dir.path()).into_iter().find(|n| n.ends_with(".log")).unwrap();
            fs::remove_file(dir.path().join(first)).unwrap();
            for n in names(dir.path()).into_iter().filter(|n| n.ends_with(".snapshot")) {
                fs::remove_file(dir.path().join(n)).unwrap();
            }
        }
        let mut log = PartitionLog::open(dir.path(), small(), 0).unwrap();
        assert_empty_at(&mut log, 40);
        assert_files_of_empty_log(dir.path(), 40);
        assert_eq!(log.read_state_file("raft-vote").unwrap().as_deref(), Some(&b"kept"[..]));
        assert_eq!(log.append(&mut batch(1, 0), 0, 0).unwrap().base_offset, 40);
    }
}

#[test]
fn a_crash_before_the_reset_commit_point_keeps_the_old_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    fill(&mut log, 30);
    log.flush().unwrap();
    let (start, end, bytes) = (log.log_start_offset(), log.log_end_offset(), log.size_bytes());
    drop(log);
    // The marker was being written: only its temporary file exists.
    fs::write(dir.path().join("log-reset.tmp"), "0\n40\n").unwrap();
    let log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset(), log.size_bytes()), (start, end, bytes));
    assert_eq!(log.latest_epoch(), Some(3));
    assert!(!names(dir.path()).iter().any(|n| n.contains("reset")));
}

#[test]
fn retention_by_time_and_size_stops_at_the_retention_floor() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { retention_ms: 10_000, ..small() };
    let mut log = PartitionLog::open(dir.path(), config, 0).unwrap();
    fill(&mut log, 30);
    let end = log.log_end_offset();
    assert_eq!(log.retention_floor(), u64::MAX, "no floor by default");
    log.set_retention_floor(40);
    // Everything is expired, but only segments ending at or below 40 may go.
    assert!(log.housekeeping(1_000_000).unwrap() > 0);
    let start = log.log_start_offset();
    assert!(start > 0 && start <= 40, "log start {start}");
    assert!(!log.read(start, 1 << 20).unwrap().bytes.is_empty());
    log.set_retention_floor(0);
    assert_eq!(log.housekeeping(2_000_000).unwrap(), 0, "a lower floor deletes nothing more");
    // Without a floor the rest expires, the active segment included.
    log.set_retention_floor(u64::MAX);
    log.housekeeping(2_000_000).unwrap();
    assert_eq!((log.log_start_offset(), log.size_bytes()), (end, 0));

    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { retention_bytes: 0, retention_ms: -1, ..small() };
    let mut log = PartitionLog::open(dir.path(), config, 0).unwrap();
    fill(&mut log, 30);
    log.set_retention_floor(40);
    assert!(log.housekeeping(0).unwrap() > 0);
    let start = log.log_start_offset();
    assert!(start > 0 && start <= 40, "log start {start}");
    log.set_retention_floor(u64::MAX);
    log.housekeeping(0).unwrap();
    assert!(log.log_start_offset() > 40);
}

#[test]
fn delete_records_is_refused_above_the_retention_floor() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    fill(&mut log, 30);
    log.set_retention_floor(30);
    assert!(matches!(log.delete_records_before(31), Err(StorageError::AboveRetentionFloor { offset: 31, floor: 30 })));
    assert_eq!(log.log_start_offset(), 0, "a refused request changes nothing");
    assert_eq!(log.delete_records_before(30).unwrap(), 30);
    log.set_retention_floor(u64::MAX);
    assert_eq!(log.delete_records_before(60).unwrap(), 60);
}
