//! An allocation budget for decoding untrusted request bodies.
//!
//! `kafka-protocol` 0.18 sizes vectors straight from array lengths on the wire
//! (`Vec::with_capacity(n)`), so four bytes can ask for hundreds of gigabytes and abort the
//! process. We cannot change that code, so we bound its effect from the outside:
//!
//! * [`BudgetAllocator`] wraps the system allocator. While a [`Budget`] is active on the current
//!   thread, it counts the bytes allocated; past the budget it marks the thread *exhausted*.
//!   Allocations of [`HUGE_BYTES`] or more (on any thread) are served by an anonymous
//!   `MAP_NORESERVE` mapping, which costs address space, not memory, until touched.
//! * [`GuardedBuf`] is the buffer the decoder reads from. Once the thread is exhausted it reports
//!   no bytes remaining, so the decoder fails at its very next read, before it can touch the huge
//!   allocation.
//!
//! The binary (and every test or fuzz binary that decodes requests) must install
//! [`BudgetAllocator`] as its `#[global_allocator]`; [`allocator_installed`] checks that.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ops::Range;

use bytes::{Buf, Bytes};
use kafka_protocol::protocol::buf::ByteBuf;

/// Allocations at least this large bypass malloc and get a lazily backed mapping.
pub const HUGE_BYTES: usize = 1 << 30;

thread_local! {
    /// Bytes left in the active budget; `usize::MAX` when none is active.
    static LEFT: Cell<usize> = const { Cell::new(usize::MAX) };
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static EXHAUSTED: Cell<bool> = const { Cell::new(false) };
    static SEEN: Cell<bool> = const { Cell::new(false) };
}

fn charge(bytes: usize) {
    // `try_with` so an allocation during thread teardown never panics.
    let _ = ACTIVE.try_with(|active| {
        let _ = SEEN.try_with(|s| s.set(true));
        if active.get() {
            let _ = LEFT.try_with(|left| {
                if bytes > left.get() {
                    left.set(0);
                    let _ = EXHAUSTED.try_with(|e| e.set(true));
                } else {
                    left.set(left.get() - bytes);
                }
            });
        }
    });
}

/// The global allocator that enforces decode budgets. See the module docs.
pub struct BudgetAllocator;

fn page_aligned(layout: Layout) -> bool {
    layout.align() <= 4096
}

unsafe fn map_huge(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions; the kernel
    // returns MAP_FAILED on error, which we turn into null (an ordinary allocation failure).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED { std::ptr::null_mut() } else { p.cast() }
}

// SAFETY: every method forwards to `System` or to mmap/munmap with matching sizes: a block is
// mapped exactly when its layout size is >= HUGE_BYTES and page alignment suffices, and
// `dealloc` receives the same layout, so it takes the same branch as the allocation did.
unsafe impl GlobalAlloc for BudgetAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        if layout.size() >= HUGE_BYTES && page_aligned(layout) {
            // SAFETY: see map_huge.
            unsafe { map_huge(layout.size()) }
        } else {
            // SAFETY: caller upholds GlobalAlloc's contract for `layout`.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        if layout.size() >= HUGE_BYTES && page_aligned(layout) {
            // SAFETY: anonymous mappings are zero-filled.
            unsafe { map_huge(layout.size()) }
        } else {
            // SAFETY: caller upholds GlobalAlloc's contract for `layout`.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= HUGE_BYTES && page_aligned(layout) {
            // SAFETY: this block came from map_huge with this size.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: this block came from System with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_huge = layout.size() >= HUGE_BYTES && page_aligned(layout);
        let new_huge = new_size >= HUGE_BYTES && page_aligned(layout);
        if !old_huge && !new_huge {
            charge(new_size.saturating_sub(layout.size()));
            // SAFETY: caller upholds GlobalAlloc's contract; both sizes take the System branch.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `new_size` is non-zero and fits the alignment per GlobalAlloc's contract.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as in alloc.
        let new_ptr = unsafe { self.alloc(new_layout) };
        if !new_ptr.is_null() {
            // SAFETY: both blocks are valid for the copied length and do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size)) };
            // SAFETY: `ptr` was allocated with `layout` by this allocator.
            unsafe { self.dealloc(ptr, layout) };
        }
        new_ptr
    }
}

/// True once any allocation on this thread went through [`BudgetAllocator`]; used to refuse to
/// decode untrusted input in a binary that forgot to install it.
pub fn allocator_installed() -> bool {
    // Once this thread has seen an allocation through us, no probe is needed again.
    if SEEN.with(Cell::get) {
        return true;
    }
    let probe = Box::new(0u8);
    drop(probe);
    SEEN.with(Cell::get)
}

/// An active allocation budget for the current thread. Dropping it ends the budget.
pub struct Budget {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Budget {
    /// Starts a budget of `bytes` on this thread. Budgets do not nest.
    pub fn start(bytes: usize) -> Budget {
        assert!(!ACTIVE.with(Cell::get), "allocation budgets do not nest");
        LEFT.with(|l| l.set(bytes));
        EXHAUSTED.with(|e| e.set(false));
        ACTIVE.with(|a| a.set(true));
        Budget { _not_send: std::marker::PhantomData }
    }

    /// True if the budget was exceeded at any point.
    pub fn exhausted(&self) -> bool {
        EXHAUSTED.with(Cell::get)
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(false));
        LEFT.with(|l| l.set(usize::MAX));
    }
}

fn exhausted() -> bool {
    EXHAUSTED.with(Cell::get) && ACTIVE.with(Cell::get)
}

/// A buffer that runs dry as soon as the active budget is exhausted.
pub struct GuardedBuf {
    inner: Bytes,
}

impl GuardedBuf {
    pub fn new(inner: Bytes) -> Self {
        GuardedBuf { inner }
    }
    /// Bytes not consumed by the decoder.
    pub fn into_inner(self) -> Bytes {
        self.inner
    }
}

impl Buf for GuardedBuf {
    fn remaining(&self) -> usize {
        if exhausted() { 0 } else { self.inner.remaining() }
    }
    fn chunk(&self) -> &[u8] {
        if exhausted() { &[] } else { self.inner.chunk() }
    }
    fn advance(&mut self, cnt: usize) {
        self.inner.advance(cnt.min(self.inner.remaining()))
    }
}

impl ByteBuf for GuardedBuf {
    fn peek_bytes(&mut self, r: Range<usize>) -> Bytes {
        self.inner.slice(r)
    }
    fn get_bytes(&mut self, size: usize) -> Bytes {
        self.inner.split_to(size)
    }
    fn try_peek_bytes(&mut self, r: Range<usize>) -> Result<Bytes, kafka_protocol::protocol::buf::NotEnoughBytesError> {
        if self.remaining() < r.end || r.start > r.end {
            Err(kafka_protocol::protocol::buf::NotEnoughBytesError)
        } else {
            Ok(self.inner.slice(r))
        }
    }
    fn try_get_bytes(&mut self, size: usize) -> Result<Bytes, kafka_protocol::protocol::buf::NotEnoughBytesError> {
        if self.remaining() < size {
            Err(kafka_protocol::protocol::buf::NotEnoughBytesError)
        } else {
            Ok(self.inner.split_to(size))
        }
    }
}
