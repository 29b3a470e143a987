//! Scenario tests of the partition log through its public API: reads, recovery, indexes, retention, epochs.

use std::fs;
use std::path::{Path, PathBuf};

use creek_protocol::batch::{BatchView, build_batch};
use creek_storage::{LogConfig, PartitionLog, StorageError};

fn batch(records: usize, ts: i64) -> Vec<u8> {
    let values: Vec<Vec<u8>> = (0..records).map(|i| format!("value-{i}").into_bytes()).collect();
    let recs: Vec<_> = values.iter().map(|v| (None, Some(v.as_slice()))).collect();
    build_batch(0, ts, &recs)
}

fn small() -> LogConfig {
    LogConfig { segment_bytes: 1024, index_interval_bytes: 200, preallocate_chunk_bytes: 512, ..LogConfig::default() }
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Appends `n` batches of 3 records with timestamps 1000, 1010, ... and returns their stamped bytes.
fn fill(log: &mut PartitionLog, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut b = batch(3, 1000 + 10 * i as i64);
            log.append(&mut b, 0, 0).unwrap();
            b
        })
        .collect()
}

fn read_all(log: &PartitionLog) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = log.log_start_offset();
    while at < log.log_end_offset() {
        let r = log.read(at, 700).unwrap();
        assert!(!r.bytes.is_empty());
        out.extend_from_slice(&r.bytes);
        at = r.next_offset;
    }
    out
}

#[test]
fn partition_log_can_move_between_threads() {
    fn is_send<T: Send>() {}
    is_send::<PartitionLog>();
}

#[test]
fn fetch_inside_a_batch_returns_the_whole_batch_and_respects_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default(), 0).unwrap();
    let batches = fill(&mut log, 3);
    let r = log.read(4, 1).unwrap(); // offset 4 is the middle of the second batch (3..=5)
    assert_eq!(&r.bytes[..], &batches[1][..]);
    assert_eq!(r.next_offset, 6);
    let r = log.read(0, batches[0].len() + batches[1].len()).unwrap();
    assert_eq!(r.bytes.len(), batches[0].len() + batches[1].len());
    assert_eq!(r.next_offset, 6);
    assert_eq!(read_all(&log), batches.concat());
}

#[test]
fn reads_outside_the_log_are_errors_and_the_end_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default(), 0).unwrap();
    fill(&mut log, 2);
    let r = log.read(6, 100).unwrap();
    assert!(r.bytes.is_empty());
    assert_eq!(r.next_offset, 6);
    assert!(matches!(log.read(7, 100), Err(StorageError::OffsetOutOfRange { offset: 7, log_start: 0, log_end: 6 })));
    log.delete_records_before(3).unwrap();
    assert!(matches!(log.read(2, 100), Err(StorageError::OffsetOutOfRange { .. })));
}

#[test]
fn torn_tail_is_cut_and_flushed_data_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default(), 0).unwrap();
    let kept = fill(&mut log, 3);
    assert_eq!(log.flush().unwrap(), 9);
    let mut lost = batch(3, 5);
    log.append(&mut lost, 0, 0).unwrap();
    drop(log); // crash
    let seg = files(dir.path(), "log").pop().unwrap();
    let data_len = kept.iter().map(Vec::len).sum::<usize>() + lost.len();
    fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(data_len as u64 - 7).unwrap();

    let mut log = PartitionLog::open(dir.path(), LogConfig::default(), 0).unwrap();
    assert_eq!(log.log_end_offset(), 9);
    assert_eq!(log.flushed_offset(), 9);
    assert_eq!(read_all(&log), kept.concat());
    assert_eq!(log.append(&mut batch(1, 0), 0, 0).unwrap().base_offset, 9);
}

#[test]
fn bad_crc_in_the_tail_cuts_the_log_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default(), 0).unwrap();
    let batches = fill(&mut log, 4);
    drop(log);
    let seg = files(dir.path(), "log").pop().unwrap();
    let mut data = fs::read(&seg).unwrap();
    let at = batches[0].len() + batches[1].len() + 70; // inside the third batch's records
    data[at] ^= 0xff;
    fs::write(&seg, &data).unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default(), 0).unwrap();
    assert_eq!(log.log_end_offset(), 6);
    assert_eq!(read_all(&log), batches[..2].concat());
}

#[test]
fn corrupt_indexes_are_detected_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    let batches = fill(&mut log, 40);
    assert!(log.segment_count() > 3);
    log.close().unwrap();
    let indexes = files(dir.path(), "index");
    fs::write(&indexes[0], [1u8; 13]).unwrap(); // not whole entries
    // Well formed, but pointing at the wrong position.
    fs::write(&indexes[1], [0, 0, 0, 1, 0, 0, 0, 9]).unwrap();
    fs::write(&files(dir.path(), "timeindex")[2], [0u8; 12 * 3]).unwrap(); // not increasing
    let log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    assert_eq!(read_all(&log), batches.concat());
    for (i, b) in batches.iter().enumerate() {
        let r = log.read(3 * i as u64 + 2, 1).unwrap();
        assert_eq!(&r.bytes[..], &b[..]);
        let t = log.batch_at_timestamp(1000 + 10 * i as i64 - 5).unwrap().unwrap();
        assert_eq!(&t[..], &b[..]);
    }
    log.close().unwrap();
    // Rebuilt indexes were written back: a clean open now trusts them.
    let log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    assert_eq!(read_all(&log), batches.concat());
}

#[test]
fn missing_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    let batches = fill(&mut log, 30);
    log.close().unwrap();
    for p in files(dir.path(), "index").into_iter().chain(files(dir.path(), "timeindex")) {
        fs::remove_file(p).unwrap();
    }
    let log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    assert_eq!(read_all(&log), batches.concat());
    let max = log.max_timestamp_batch().unwrap().unwrap();
    assert_eq!(&max[..], &batches[29][..]);
    assert!(files(dir.path(), "index").len() >= log.segment_count() - 1);
}

#[test]
fn leader_epoch_cache_answers_and_survives_truncation_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default(), 0).unwrap();
    assert_eq!(log.latest_epoch(), None);
    for epoch in [1, 1, 3, 3, 6] {
        log.append(&mut batch(2, 0), epoch, 0).unwrap(); // offsets 0-1,2-3 | 4-5,6-7 | 8-9
    }
    assert_eq!(log.end_offset_for_epoch(0), None);
    assert_eq!(log.end_offset_for_epoch(1), Some((1, 4)));
    assert_eq!(log.end_offset_for_epoch(2), Some((1, 4)));
    assert_eq!(log.end_offset_for_epoch(3), Some((3, 8)));
    assert_eq!(log.end_offset_for_epoch(6), Some((6, 10)));
    assert_eq!(log.end_offset_for_epoch(9), Some((6, 10)));
    let r = log.read(8, 1).unwrap();
    assert_eq!(BatchView::new(&r.bytes).unwrap().partition_leader_epoch(), 6);
    assert!(matches!(log.append(&mut batch(1, 0), 2, 0), Err(StorageError::StaleLeaderEpoch { epoch: 2, latest: 6 })));

    assert!(matches!(log.truncate_to(7), Err(StorageError::NotBatchBoundary { offset: 7, batch_base: 6 })));
    log.truncate_to(6).unwrap();
    assert_eq!(log.latest_epoch(), Some(3));
    assert_eq!(log.end_offset_for_epoch(9), Some((3, 6)));
    drop(log); // crash: the truncation must already be durable
    let mut log = PartitionLog::open(dir.path(), LogConfig::default(), 0).unwrap();
    assert_eq!(log.log_end_offset(), 6);
    assert_eq!(log.end_offset_for_epoch(9), Some((3, 6)));
    log.append(&mut batch(1, 0), 7, 0).unwrap();
    log.delete_records_before(3).unwrap();
    assert_eq!(log.end_offset_for_epoch(1), Some((1, 4)));
    log.delete_records_before(5).unwrap();
    assert_eq!(log.end_offset_for_epoch(1), None);
    assert_eq!(log.end_offset_for_epoch(3), Some((3, 6)));
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default(), 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (5, 7));
    assert_eq!(log.end_offset_for_epoch(3), Some((3, 6)));
    assert_eq!(log.end_offset_for_epoch(7), Some((7, 7)));
}

#[test]
fn truncation_never_comes_back_even_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    let batches = fill(&mut log, 30);
    log.flush().unwrap();
    let segments = log.segment_count();
    log.truncate_to(3 * 5).unwrap();
    assert!(log.segment_count() < segments);
    assert_eq!(log.flushed_offset(), 15);
    let mut fresh = batch(1, 7);
    log.append(&mut fresh, 0, 0).unwrap();
    drop(log); // crash with the fresh batch unflushed but in the page cache
    let log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    assert_eq!(log.log_end_offset(), 16);
    assert_eq!(read_all(&log), [batches[..5].concat(), fresh].concat());
}

#[test]
fn retention_by_time_and_size_deletes_old_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { retention_ms: 10_000, ..small() };
    let mut log = PartitionLog::open(dir.path(), config.clone(), 0).unwrap();
    let batches = fill(&mut log, 30); // timestamps 1000..=1290
    let before = log.segment_count();
    assert_eq!(log.housekeeping(5_000).unwrap(), 0);
    // At 11_150, batches with max timestamp < 1150 are expired; whole segments only.
    let deleted = log.housekeeping(11_150).unwrap();
    assert!(deleted > 0 && deleted < before);
    let start = log.log_start_offset();
    let first = log.read(start, 1).unwrap();
    assert_eq!(&first.bytes[..], &batches[start as usize / 3][..]);
    assert!(BatchView::new(&first.bytes).unwrap().max_timestamp() < 1150 + 100);
    // Everything expired: the active segment is rolled and deleted too; offsets never move.
    log.housekeeping(1_000_000).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset(), log.size_bytes()), (90, 90, 0));
    assert_eq!(log.append(&mut batch(1, 0), 0, 0).unwrap().base_offset, 90);

    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { retention_bytes: 2048, retention_ms: -1, ..small() };
    let mut log = PartitionLog::open(dir.path(), config, 0).unwrap();
    fill(&mut log, 40);
    log.housekeeping(0).unwrap();
    assert!(log.size_bytes() >= 2048 && log.size_bytes() < 2048 + 1024, "size {}", log.size_bytes());
}

#[test]
fn segments_roll_by_time_and_empty_logs_do_not_roll() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_ms: 100, ..LogConfig::default() };
    let mut log = PartitionLog::open(dir.path(), config, 0).unwrap();
    log.housekeeping(1_000).unwrap();
    assert_eq!(log.segment_count(), 1);
    log.append(&mut batch(1, 0), 0, 1_000).unwrap();
    log.append(&mut batch(1, 0), 0, 1_050).unwrap();
    assert_eq!(log.segment_count(), 1);
    log.append(&mut batch(1, 0), 0, 1_100).unwrap();
    assert_eq!(log.segment_count(), 2);
    log.housekeeping(1_200).unwrap();
    assert_eq!(log.segment_count(), 3);
    assert_eq!(log.flushed_offset(), 3); // sealing fsyncs
}

#[test]
fn flush_target_group_commit_and_stale_targets() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default(), 0).unwrap();
    fill(&mut log, 2);
    let target = log.flush_target();
    fill(&mut log, 1);
    target.sync().unwrap();
    log.mark_flushed(target.covers());
    assert_eq!(log.flushed_offset(), 6);
    let stale = log.flush_target();
    log.truncate_to(3).unwrap();
    fill(&mut log, 3);
    stale.sync().unwrap();
    log.mark_flushed_target(&stale);
    assert_eq!(log.flushed_offset(), 3);
    assert_eq!(log.flush().unwrap(), 12);
}

#[test]
fn invalid_appends_are_refused_without_side_effects() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default(), 0).unwrap();
    assert!(matches!(log.append(&mut [], 0, 0), Err(StorageError::InvalidBatch(_))));
    let mut partial = batch(2, 0);
    partial.truncate(partial.len() - 1);
    assert!(matches!(log.append(&mut partial, 0, 0), Err(StorageError::InvalidBatch(_))));
    assert_eq!(log.log_end_offset(), 0);
}

#[test]
fn a_batch_larger_than_a_segment_is_stored_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes: 256, preallocate_chunk_bytes: 64, ..LogConfig::default() };
    let mut log = PartitionLog::open(dir.path(), config.clone(), 0).unwrap();
    let mut big = batch(40, 0);
    assert!(big.len() > 256);
    log.append(&mut big, 0, 0).unwrap();
    let mut two = [batch(1, 0), batch(1, 0)].concat();
    log.append(&mut two, 0, 0).unwrap();
    assert_eq!(log.segment_count(), 2);
    assert_eq!(read_all(&log), [big, two].concat());
    log.delete().unwrap();
    assert!(!dir.path().exists() || fs::read_dir(dir.path()).is_err());
}

#[test]
fn new_epochs_survive_a_crash_without_an_fsync_on_the_append_path() {
    // Goal: a new leader epoch is not fsynced when its first batch is appended, yet after a crash
    // (with or without housekeeping moving the recovery point first) OffsetForLeaderEpoch still
    // answers from the right epochs.
    for housekeeping_before_crash in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), small(), 0).unwrap();
        for _ in 0..5 {
            log.append(&mut batch(2, 1), 0, 1).unwrap();
        }
        let first_of_epoch_3 = log.log_end_offset();
        // Enough epoch-3 data to seal segments, so epoch 3 starts below the last segment, which
        // is the part of the log recovery rescans.
        for _ in 0..40 {
            log.append(&mut batch(2, 2), 3, 2).unwrap();
        }
        assert!(log.segment_count() > 3, "the test needs several sealed segments");
        log.flush().unwrap();
        if housekeeping_before_crash {
            log.housekeeping(3).unwrap();
        }
        drop(log); // a crash: no close, no clean-shutdown marker
        let log = PartitionLog::open(dir.path(), small(), 4).unwrap();
        assert_eq!(log.latest_epoch(), Some(3), "housekeeping first: {housekeeping_before_crash}");
        assert_eq!(log.end_offset_for_epoch(0), Some((0, first_of_epoch_3)));
        assert_eq!(log.end_offset_for_epoch(3), Some((3, log.log_end_offset())));
    }
}

#[test]
fn state_files_survive_reopen_and_a_crash_and_are_replaced_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    assert_eq!(log.read_state_file("vote").unwrap(), None);
    log.write_state_file("vote", b"first").unwrap();
    log.write_state_file("vote", b"second").unwrap();
    log.write_state_file("other-1", b"x").unwrap();
    fill(&mut log, 3);
    drop(log); // crash: no close
    let log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    assert_eq!(log.read_state_file("vote").unwrap().as_deref(), Some(&b"second"[..]));
    assert_eq!(log.read_state_file("other-1").unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(log.log_end_offset(), 9, "state files do not disturb recovery");
    assert!(files(dir.path(), "tmp").is_empty());
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    assert_eq!(log.read_state_file("vote").unwrap().as_deref(), Some(&b"second"[..]));
}

#[test]
#[should_panic(expected = "bad state file name")]
fn state_file_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small(), 0).unwrap();
    let _ = log.write_state_file("../escape", b"x");
}

#[test]
fn a_created_log_needs_no_checkpoint_to_survive_a_crash() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("t-0");
    let mut log = PartitionLog::create(&dir, small()).unwrap();
    assert!(PartitionLog::create(&dir, small()).is_err(), "an existing directory is refused");
    let mut b = batch(3, 1_000);
    log.append(&mut b, 0, 1_000).unwrap();
    let expected = read_all(&log);
    drop(log); // crash: no checkpoint was ever written
    let log = PartitionLog::open(&dir, small(), 2_000).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 3));
    assert_eq!(read_all(&log), expected);
    drop(log);
    // A crash that left only the directory recovers as an empty log.
    let bare = parent.path().join("t-1");
    std::fs::create_dir(&bare).unwrap();
    assert_eq!(PartitionLog::open(&bare, small(), 1_000).unwrap().log_end_offset(), 0);
}
