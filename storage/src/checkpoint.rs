//! Small crash-safe state files in the partition directory: recovery point, log start, leader epochs.
//!
//! Each file is text, starts with a format version line, and is replaced atomically
//! (write a temporary file, fsync, rename, fsync the directory). A missing or malformed file
//! reads as `None`; callers then fall back to the conservative choice.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use crate::StorageError;

pub(crate) const RECOVERY_POINT: &str = "recovery-point";
pub(crate) const LOG_START_OFFSET: &str = "log-start-offset";
pub(crate) const LEADER_EPOCH: &str = "leader-epoch-checkpoint";
pub(crate) const CLEAN_SHUTDOWN: &str = "clean-shutdown";
/// Present while a [`crate::PartitionLog::reset_to`] is under way: the commit point of a reset.
pub(crate) const LOG_RESET: &str = "log-reset";
pub(crate) const VERSION: &str = "0";

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io { path: path.to_path_buf(), source }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Replaces `dir/name` with `contents` atomically. The caller decides when to fsync the directory
/// (`sync_dir`), so several files can share one directory sync.
pub(crate) fn write_file_atomic(dir: &Path, name: &str, contents: &[u8]) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(contents).and_then(|_| f.sync_all()).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))
}

pub(crate) fn write_u64(dir: &Path, name: &str, value: u64) -> Result<(), StorageError> {
    write_file_atomic(dir, name, format!("{VERSION}\n{value}\n").as_bytes())?;
    sync_dir(dir)
}

/// Reads the contents of a checkpoint; `None` if missing, unreadable or of another version.
pub(crate) fn read_lines(dir: &Path, name: &str) -> Option<Vec<String>> {
    let path = dir.join(name);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable checkpoint ignored");
            return None;
        }
    };
    let mut lines = text.lines().map(str::to_owned);
    if lines.next().as_deref() != Some(VERSION) {
        tracing::warn!(path = %path.display(), "checkpoint with unknown version ignored");
        return None;
    }
    Some(lines.collect())
}

pub(crate) fn read_u64(dir: &Path, name: &str) -> Option<u64> {
    let lines = read_lines(dir, name)?;
    match lines.as_slice() {
        [v] => v.trim().parse().ok(),
        _ => None,
    }
    .or_else(|| {
        tracing::warn!(dir = %dir.display(), name, "malformed checkpoint ignored");
        None
    })
}

/// `(epoch, start offset)` pairs, strictly increasing in both.
pub(crate) fn read_epochs(dir: &Path) -> Option<Vec<(i32, u64)>> {
    let lines = read_lines(dir, LEADER_EPOCH)?;
    let parse = || -> Option<Vec<(i32, u64)>> {
        let (count, rest) = lines.split_first()?;
        let count: usize = count.trim().parse().ok()?;
        if rest.len() != count {
            return None;
        }
        let mut out: Vec<(i32, u64)> = Vec::with_capacity(count);
        for line in rest {
            let (e, o) = line.trim().split_once(' ')?;
            let (e, o): (i32, u64) = (e.parse().ok()?, o.parse().ok()?);
            if e < 0 || out.last().is_some_and(|&(pe, po)| e <= pe || o <= po) {
                return None;
            }
            out.push((e, o));
        }
        Some(out)
    };
    parse().or_else(|| {
        tracing::warn!(dir = %dir.display(), "malformed leader epoch checkpoint ignored");
        None
    })
}

pub(crate) fn write_epochs(dir: &Path, entries: &[(i32, u64)]) -> Result<(), StorageError> {
    let mut text = format!("{VERSION}\n{}\n", entries.len());
    for (e, o) in entries {
        text.push_str(&format!("{e} {o}\n"));
    }
    write_file_atomic(dir, LEADER_EPOCH, text.as_bytes())?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_garbage_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        write_u64(dir.path(), RECOVERY_POINT, 42).unwrap();
        assert_eq!(read_u64(dir.path(), RECOVERY_POINT), Some(42));
        write_epochs(dir.path(), &[(1, 0), (3, 10)]).unwrap();
        assert_eq!(read_epochs(dir.path()), Some(vec![(1, 0), (3, 10)]));
        fs::write(dir.path().join(LEADER_EPOCH), "0\n2\n1 0\n").unwrap();
        assert_eq!(read_epochs(dir.path()), None);
        fs::write(dir.path().join(RECOVERY_POINT), "junk").unwrap();
        assert_eq!(read_u64(dir.path(), RECOVERY_POINT), None);
        assert_eq!(read_u64(dir.path(), LOG_START_OFFSET), None);
    }
}
