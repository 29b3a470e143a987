//! The crate's only `unsafe`: read-only file maps, `fallocate` and `syncfs`, each behind a safe function.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use bytes::Bytes;

/// Maps the first `len` bytes of `file` read-only and shares the map as `Bytes` (zero-copy).
///
/// Callers must only ever slice bytes that were written before the map is read and that the file
/// keeps: storage files only grow while mapped, shrink only below bytes nobody may slice (the
/// preallocated zero tail), and are unlinked rather than truncated when deleted.
pub(crate) fn map_read(file: &File, len: u64) -> io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let len = usize::try_from(len).map_err(|_| io::Error::other("file too large to map"))?;
    // SAFETY: the map is read-only (PROT_READ, MAP_SHARED) and `len` does not exceed the file's
    // current size (callers pass the size they just allocated or measured). Creek never writes
    // through a map and never truncates a mapped file below bytes handed out as slices (see the
    // doc comment above), so the slices stay valid for the lifetime of the map; external
    // modification of the files is outside the contract, as for any mmap-based store.
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
    Ok(Bytes::from_owner(map))
}

/// Allocates `[offset, offset + len)` of `file` on disk, extending its size if needed, so later
/// positioned writes into that range cannot fail for lack of space.
pub(crate) fn fallocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let off = libc::off_t::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::other("length too large"))?;
    loop {
        // SAFETY: fallocate(2) takes only integers and a file descriptor that `file` owns and
        // keeps open for the duration of the call; no memory is shared with the kernel.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, off, len) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `syncfs(2)` on the filesystem holding `path`: writes back every dirty page of that
/// filesystem, waits for it, and flushes the device cache.
pub(crate) fn sync_filesystem(path: &std::path::Path) -> std::io::Result<()> {
    let d = File::open(path)?;
    // SAFETY: `d` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
