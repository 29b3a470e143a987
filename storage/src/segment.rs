//! One segment: a file of whole batches named by its base offset, with its sparse offset and time indexes.
//!
//! The active (last) segment is written with positioned writes into space preallocated with
//! `fallocate`, and read through a read-only map of the allocated size. Sealing fsyncs it, trims
//! it to its valid length and writes its indexes; from then on everything is read through maps.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use creek_protocol::batch::{BatchView, LOG_OVERHEAD};

use crate::checkpoint::{io_err, write_file_atomic};
use crate::index::{OffsetIndex, TimeIndex};
use crate::{LogConfig, StorageError, mmap};

pub(crate) const LOG_EXT: &str = "log";
pub(crate) const INDEX_EXT: &str = "index";
pub(crate) const TIME_INDEX_EXT: &str = "timeindex";

pub(crate) fn file_name(base_offset: u64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

/// What a scan learned about one batch. `pos` is its position in the segment file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchInfo {
    pub(crate) pos: u64,
    pub(crate) len: u64,
    pub(crate) base: u64,
    pub(crate) last: u64,
    pub(crate) max_ts: i64,
    pub(crate) epoch: i32,
}

impl BatchInfo {
    pub(crate) fn of(view: &BatchView<'_>, pos: u64) -> Self {
        BatchInfo {
            pos,
            len: view.total_len() as u64,
            base: view.base_offset() as u64,
            last: view.last_offset() as u64,
            max_ts: view.max_timestamp(),
            epoch: view.partition_leader_epoch(),
        }
    }
}

/// Where a scan stopped.
#[derive(Debug)]
pub(crate) struct ScanEnd {
    /// Position after the last good batch.
    pub(crate) pos: u64,
    /// Offset after the last good batch.
    pub(crate) next_offset: u64,
    /// True if everything after `pos` is zeros (the normal end: preallocated space or EOF).
    pub(crate) clean: bool,
    /// Why the scan stopped before a clean end.
    pub(crate) reason: Option<String>,
}

/// Walks batches in `data` from `pos`, expecting dense offsets starting at `expected`, and calls
/// `on_batch` for each good one. Stops at the first partial, malformed, misnumbered or (when
/// `verify_crc`) corrupt batch, or one the segment starting at `segment_base` cannot index (relative
/// offset or position beyond `u32`). Never panics on any input.
///
/// Compaction leaves gaps where whole batches were removed, only below the cleaner's
/// `gap_limit`: a batch may start after `expected` if it starts at or below `gap_limit`.
pub(crate) fn scan(
    data: &[u8],
    mut pos: u64,
    mut expected: u64,
    segment_base: u64,
    verify_crc: bool,
    gap_limit: u64,
    mut on_batch: impl FnMut(&BatchInfo),
) -> ScanEnd {
    let stop = |pos: u64, next_offset: u64, reason: Option<String>| {
        let rest = data.get(pos as usize..).unwrap_or(&[]);
        let clean = rest.iter().all(|&b| b == 0);
        ScanEnd { pos, next_offset, clean, reason: if clean { None } else { reason } }
    };
    loop {
        let Some(rest) = data.get(pos as usize..) else {
            return stop(pos, expected, Some("position beyond data".into()));
        };
        if rest.len() < LOG_OVERHEAD || rest[..LOG_OVERHEAD].iter().all(|&b| b == 0) {
            return stop(pos, expected, Some("partial batch header".into()));
        }
        let view = match BatchView::new(rest) {
            Ok(v) => v,
            Err(e) => return stop(pos, expected, Some(e.to_string())),
        };
        let base = view.base_offset();
        let numbered = base >= 0 && (base as u64 == expected || (base as u64 > expected && base as u64 <= gap_limit));
        if !numbered {
            let why = format!("batch base offset {} where {expected} was expected", view.base_offset());
            return stop(pos, expected, Some(why));
        }
        if view.last_offset_delta() < 0 || view.last_offset() < view.base_offset() {
            return stop(pos, expected, Some("negative lastOffsetDelta".into()));
        }
        if verify_crc && let Err(e) = view.verify_crc() {
            return stop(pos, expected, Some(e.to_string()));
        }
        let info = BatchInfo::of(&view, pos);
        if info.last - segment_base > u64::from(u32::MAX) || pos + info.len > u64::from(u32::MAX) {
            // Beyond what a segment may hold (relative offsets and positions are u32).
            return stop(pos, expected, Some("batch beyond the segment's offset or size range".into()));
        }
        on_batch(&info);
        pos += info.len;
        expected = info.last + 1;
    }
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) dir: PathBuf,
    pub(crate) base_offset: u64,
    /// Offset after the last batch; `base_offset` when empty.
    pub(crate) next_offset: u64,
    /// Bytes of whole batches; everything after is zeros or beyond the end of the file.
    pub(crate) valid_len: u64,
    /// File size (valid bytes plus preallocated zeros).
    pub(crate) allocated_len: u64,
    pub(crate) file: Arc<File>,
    /// Read-only map of at least `valid_len` bytes of `file`.
    pub(crate) map: Bytes,
    pub(crate) offset_index: OffsetIndex,
    pub(crate) time_index: TimeIndex,
    /// Largest batch max timestamp, `i64::MIN` while empty.
    pub(crate) max_timestamp: i64,
    /// Base offset of the first batch holding `max_timestamp`.
    pub(crate) max_timestamp_offset: u64,
    /// Bytes appended since the last offset index entry, counting the indexed batch.
    pub(crate) bytes_since_index: u64,
    /// Wall-clock time of the first append since this segment became active (for `segment.ms`).
    pub(crate) first_append_ms: Option<i64>,
    pub(crate) sealed: bool,
}

fn classify(path: &Path, needed: u64) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |e| {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            StorageError::DiskFull { path: path.to_path_buf(), needed_bytes: needed }
        } else {
            StorageError::Io { path: path.to_path_buf(), source: e }
        }
    }
}

fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

impl Segment {
    pub(crate) fn path(&self, ext: &str) -> PathBuf {
        self.dir.join(file_name(self.base_offset, ext))
    }

    pub(crate) fn open_file(path: &Path, create_new: bool) -> Result<File, StorageError> {
        OpenOptions::new().read(true).write(true).create_new(create_new).open(path).map_err(io_err(path))
    }

    /// A segment over `file` with no batches indexed yet (used by creation and recovery).
    pub(crate) fn blank(dir: &Path, base_offset: u64, file: File, file_len: u64, map: Bytes) -> Self {
        Segment {
            dir: dir.to_path_buf(),
            base_offset,
            next_offset: base_offset,
            valid_len: 0,
            allocated_len: file_len,
            file: Arc::new(file),
            map,
            offset_index: OffsetIndex::empty(),
            time_index: TimeIndex::empty(),
            max_timestamp: i64::MIN,
            max_timestamp_offset: base_offset,
            bytes_since_index: 0,
            first_append_ms: None,
            sealed: false,
        }
    }

    /// Creates an empty active segment file. The caller fsyncs the directory.
    pub(crate) fn create(dir: &Path, base_offset: u64) -> Result<Self, StorageError> {
        let path = dir.join(file_name(base_offset, LOG_EXT));
        let file = Self::open_file(&path, true)?;
        Ok(Self::blank(dir, base_offset, file, 0, Bytes::new()))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.valid_len == 0
    }

    fn rel(&self, offset: u64) -> u32 {
        u32::try_from(offset - self.base_offset).expect("relative offset fits u32 (rolls ensure it)")
    }

    /// Updates max timestamp and indexes for a batch just written (or found by a scan) at `b.pos`.
    pub(crate) fn record_batch(&mut self, b: &BatchInfo, index_interval_bytes: u32) {
        if b.max_ts > self.max_timestamp {
            self.max_timestamp = b.max_ts;
            self.max_timestamp_offset = b.base;
        }
        if self.bytes_since_index >= u64::from(index_interval_bytes) {
            let pos = u32::try_from(b.pos).expect("segment position fits u32 (rolls ensure it)");
            self.offset_index.push(self.rel(b.base), pos);
            self.push_time_entry();
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += b.len;
    }

    /// Adds `(max timestamp, its batch)` to the time index if it grew since the last entry.
    pub(crate) fn push_time_entry(&mut self) {
        if self.max_timestamp == i64::MIN {
            return; // nothing appended yet
        }
        if self.time_index.last().is_none_or(|(t, _)| self.max_timestamp > t) {
            let rel = self.rel(self.max_timestamp_offset);
            self.time_index.push(self.max_timestamp, rel);
        }
    }

    /// Makes sure `[0, end)` is allocated on disk, growing by preallocation chunks, and remaps.
    fn ensure_allocated(&mut self, end: u64, config: &LogConfig) -> Result<(), StorageError> {
        if end <= self.allocated_len {
            return Ok(());
        }
        let path = self.path(LOG_EXT);
        let chunk = config.preallocate_chunk_bytes.min(config.segment_bytes).max(1);
        let target = self.allocated_len.saturating_add(chunk).max(end).min(config.segment_bytes.max(end));
        let mut result = mmap::fallocate(&self.file, self.allocated_len, target - self.allocated_len);
        let mut new_len = target;
        if result.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::ENOSPC)) && target > end {
            // A whole chunk does not fit; the write itself might.
            new_len = end;
            result = mmap::fallocate(&self.file, self.allocated_len, end - self.allocated_len);
        }
        match result {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                // The filesystem cannot preallocate: extend sparsely. Writes are positioned writes,
                // never through a map, so a full disk still surfaces as a write error.
                self.file.set_len(new_len).map_err(io_err(&path))?;
            }
            Err(e) => return Err(classify(&path, end - self.allocated_len)(e)),
        }
        self.allocated_len = new_len;
        self.map = mmap::map_read(&self.file, new_len).map_err(io_err(&path))?;
        Ok(())
    }

    /// Writes already-stamped batches with one positioned write at the end of valid data.
    /// `batches[i].pos` are positions within `bytes`.
    pub(crate) fn append(
        &mut self,
        bytes: &[u8],
        batches: &[BatchInfo],
        config: &LogConfig,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        assert!(!self.sealed, "append to a sealed segment");
        let start = self.valid_len;
        let end = start + bytes.len() as u64;
        self.ensure_allocated(end, config)?;
        if let Err(e) = self.file.write_all_at(bytes, start) {
            // Keep "zeros after the valid length" so recovery cannot find half of this write.
            if let Err(z) = write_zeros(&self.file, start, end) {
                tracing::error!(path = %self.path(LOG_EXT).display(), error = %z, "could not clear a failed write");
            }
            return Err(classify(&self.path(LOG_EXT), bytes.len() as u64)(e));
        }
        for b in batches {
            let b = BatchInfo { pos: b.pos + start, ..*b };
            self.record_batch(&b, config.index_interval_bytes);
            self.next_offset = b.last + 1;
        }
        self.valid_len = end;
        self.first_append_ms.get_or_insert(now_ms);
        Ok(())
    }

    fn corrupt(&self, position: u64, reason: String) -> StorageError {
        StorageError::Corrupt { path: self.path(LOG_EXT), position, reason }
    }

    /// The batch starting at `pos`, which must lie within the valid bytes.
    pub(crate) fn batch_at(&self, pos: u64) -> Result<BatchView<'_>, StorageError> {
        let data = &self.map[..self.valid_len as usize];
        match data.get(pos as usize..) {
            Some(rest) if !rest.is_empty() => BatchView::new(rest).map_err(|e| self.corrupt(pos, e.to_string())),
            _ => Err(self.corrupt(pos, "no batch at this position".into())),
        }
    }

    /// Position of the batch containing `offset` (`base_offset <= offset < next_offset`), or of
    /// the first batch after it if compaction removed it.
    pub(crate) fn position_of(&self, offset: u64) -> Result<u64, StorageError> {
        assert!(self.base_offset <= offset && offset < self.next_offset, "offset {offset} not in segment");
        let mut pos = u64::from(self.offset_index.lookup(self.rel(offset)).1);
        loop {
            let v = self.batch_at(pos)?;
            // In a compacted segment `offset` may lie in a gap: the next batch holds it.
            if v.last_offset() >= offset as i64 {
                return Ok(pos);
            }
            pos += v.total_len() as u64;
        }
    }

    /// Zero-copy bytes `[start, end)` of the valid data.
    pub(crate) fn slice(&self, start: u64, end: u64) -> Bytes {
        assert!(start <= end && end <= self.valid_len, "slice beyond valid data");
        self.map.slice(start as usize..end as usize)
    }

    /// Writes both indexes atomically (temp file + rename; the caller fsyncs the directory) and,
    /// if `map`, switches to reading them through maps.
    pub(crate) fn write_indexes(&mut self, map: bool) -> Result<(), StorageError> {
        for ext in [INDEX_EXT, TIME_INDEX_EXT] {
            let name = file_name(self.base_offset, ext);
            let bytes = if ext == INDEX_EXT { self.offset_index.bytes() } else { self.time_index.bytes() };
            write_file_atomic(&self.dir, &name, bytes)?;
            if map {
                let path = self.dir.join(&name);
                let f = File::open(&path).map_err(io_err(&path))?;
                let m = mmap::map_read(&f, bytes.len() as u64).map_err(io_err(&path))?;
                if ext == INDEX_EXT {
                    self.offset_index.set_mapped(m);
                } else {
                    self.time_index.set_mapped(m);
                }
            }
        }
        Ok(())
    }

    /// Trims the file to its valid length and fsyncs it. Only bytes past every slice handed out
    /// are dropped (readers hold slices of valid data only), so live maps stay safe.
    pub(crate) fn trim_and_sync(&mut self) -> Result<(), StorageError> {
        let path = self.path(LOG_EXT);
        if self.allocated_len != self.valid_len {
            self.file.set_len(self.valid_len).map_err(io_err(&path))?;
            self.allocated_len = self.valid_len;
        }
        self.file.sync_all().map_err(io_err(&path))
    }

    /// Seals the segment: data durable and trimmed, final time index entry, indexes written and
    /// mapped. The caller fsyncs the directory.
    pub(crate) fn seal(&mut self) -> Result<(), StorageError> {
        self.trim_and_sync()?;
        self.push_time_entry();
        self.write_indexes(true)?;
        self.sealed = true;
        self.first_append_ms = None;
        Ok(())
    }

    /// Cuts the segment at `pos` (a batch boundary, whose batch starts at `offset`): zeros the cut
    /// bytes durably (the file is never shrunk under live maps) and rebuilds the in-memory indexes.
    /// The segment becomes active again.
    pub(crate) fn truncate_at(
        &mut self,
        pos: u64,
        offset: u64,
        interval: u32,
        gap_limit: u64,
    ) -> Result<(), StorageError> {
        assert!(pos <= self.valid_len);
        let path = self.path(LOG_EXT);
        write_zeros(&self.file, pos, self.valid_len).map_err(io_err(&path))?;
        self.file.sync_data().map_err(io_err(&path))?;
        let data = self.map.clone();
        self.offset_index = OffsetIndex::empty();
        self.time_index = TimeIndex::empty();
        self.max_timestamp = i64::MIN;
        self.max_timestamp_offset = self.base_offset;
        self.bytes_since_index = 0;
        if self.sealed {
            self.first_append_ms = None;
            self.sealed = false;
        }
        let end = scan(&data[..pos as usize], 0, self.base_offset, self.base_offset, false, gap_limit, |b| {
            self.record_batch(b, interval)
        });
        if end.pos != pos || end.next_offset > offset {
            return Err(self.corrupt(end.pos, "segment unreadable below the truncation point".into()));
        }
        self.valid_len = pos;
        self.next_offset = offset;
        if pos == 0 {
            self.first_append_ms = None;
        }
        Ok(())
    }

    /// Unlinks the segment's files. Live maps keep the data readable until they are dropped.
    pub(crate) fn delete_files(&self) -> Result<(), StorageError> {
        for ext in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT, crate::producer::TXN_INDEX_EXT] {
            let path = self.path(ext);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::Io { path, source: e }),
            }
        }
        Ok(())
    }
}
