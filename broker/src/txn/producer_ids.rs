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
    next: i64,
    /// First id not covered by the durable reservation.
    reserved_end: i64,
}

impl ProducerIds {
    /// Opens the allocator in `meta_dir`, starting above the reservation on disk and above `floor`.
    pub(crate) fn open(meta_dir: &std::path::Path, floor: i64) -> anyhow::Result<ProducerIds> {
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
        let start = on_disk.max(floor.saturating_add(1)).max(0);
        Ok(ProducerIds { path, next: start, reserved_end: start })
    }

    /// The next producer id. Fails only if the reservation cannot be made durable.
    pub(crate) fn allocate(&mut self) -> anyhow::Result<i64> {
        if self.next >= self.reserved_end {
            let end = self.next.checked_add(BLOCK).context("producer ids exhausted")?;
            crate::state::write_atomically(&self.path, format!("0\n{end}\n").as_bytes())?;
            self.reserved_end = end;
        }
        let id = self.next;
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
        let mut ids = ProducerIds::open(dir.path(), -1).unwrap();
        let a: Vec<i64> = (0..3).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(a, vec![0, 1, 2]);
        // A crash: whatever was handed out, the next process starts above the reservation.
        let mut ids = ProducerIds::open(dir.path(), -1).unwrap();
        assert_eq!(ids.allocate().unwrap(), BLOCK);
        let mut ids = ProducerIds::open(dir.path(), 5 * BLOCK).unwrap();
        assert_eq!(ids.allocate().unwrap(), 5 * BLOCK + 1);
        std::fs::write(dir.path().join("producer-id-block"), "garbage").unwrap();
        assert!(ProducerIds::open(dir.path(), -1).is_err(), "a malformed file is an error, not a reset");
    }
}
