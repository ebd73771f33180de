//! The plugin's global allocator in wasm: a bump arena, for a process that lives for one
//! call.
//!
//! rekon runs every call in a fresh instance and throws its memory away afterwards, so a
//! general-purpose allocator's bookkeeping (dlmalloc's bins, coalescing on free) buys
//! nothing. This allocator hands out memory from a 1 MiB static arena by bumping an
//! offset; `dealloc` and `realloc` of the most recent allocation work in place (so a
//! growing `String` or `Vec` stays where it is), other frees are no-ops. When the arena is
//! full it falls back to the system allocator, so a call that needs more memory behaves as
//! before.
//!
//! Because the arena is a zero-initialised static it lies in the module's `.bss`: it is
//! part of the instance's initial memory, so a typical call never executes `memory.grow`
//! (whose page-protection changes, made again for every fresh instance, cost the host two
//! `mprotect` calls and a TLB shootdown per call), and untouched arena pages are never
//! faulted in. BENCHMARKS.md has the figures (`cargo bench -p rekon-tests --bench call`).
//!
//! Enabled by the default `arena` feature on `wasm32`; a plugin that wants its own
//! `#[global_allocator]` disables the SDK's default features. Native builds (unit tests)
//! keep the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

const SIZE: usize = 1 << 20;

#[repr(C, align(16))]
struct Space(UnsafeCell<[u8; SIZE]>);

// SAFETY: the bytes are only reached through pointers `Arena` hands out, each range to
// one owner at a time; wasm32 guests are single-threaded.
unsafe impl Sync for Space {}

static SPACE: Space = Space(UnsafeCell::new([0; SIZE]));

/// A bump allocator over a static arena, falling back to [`System`] when full.
pub struct Arena {
    /// Offset of the first free byte in the arena.
    top: AtomicUsize,
}

impl Arena {
    /// An empty arena.
    pub const fn new() -> Self {
        Self {
            top: AtomicUsize::new(0),
        }
    }

    fn base() -> usize {
        SPACE.0.get() as usize
    }

    /// The offset of `ptr` in the arena, if it points into it.
    fn offset(ptr: *mut u8) -> Option<usize> {
        (ptr as usize)
            .checked_sub(Self::base())
            .filter(|&o| o < SIZE)
    }
}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: `alloc` returns either a range of the arena no live allocation overlaps (the
// offset only grows past it, and shrinks only when its last allocation is freed) aligned
// as asked, or what `System` returns; `dealloc` and `realloc` send `System`'s pointers
// back to `System` and only ever move the top back over the arena's last allocation.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let top = self.top.load(Relaxed);
        let start = (Self::base() + top).next_multiple_of(layout.align()) - Self::base();
        match start.checked_add(layout.size()) {
            Some(end) if end <= SIZE => {
                self.top.store(end, Relaxed);
                (Self::base() + start) as *mut u8
            }
            // SAFETY: forwarded with the caller's layout.
            _ => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match Self::offset(ptr) {
            Some(start) => {
                if start + layout.size() == self.top.load(Relaxed) {
                    self.top.store(start, Relaxed);
                }
            }
            // SAFETY: not an arena pointer, so `System` allocated it with `layout`.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if let Some(start) = Self::offset(ptr)
            && start + layout.size() == self.top.load(Relaxed)
            && start + new_size <= SIZE
        {
            // The last allocation grows or shrinks in place.
            self.top.store(start + new_size, Relaxed);
            return ptr;
        }
        // SAFETY: `new_size` with the old alignment is a valid layout (the caller's
        // contract for `realloc`).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as for `alloc`.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both ranges are valid for the smaller size and do not overlap (`new`
            // is a fresh allocation while `ptr` is live).
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            // SAFETY: `ptr` was allocated here with `layout`.
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}
