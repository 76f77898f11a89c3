//! The binary's allocator: mimalloc 3, called the way its fast path wants, and tuned.
//!
//! Every request allocates (header maps, buffers, futures) and frees on the same thread soon
//! after; mimalloc's thread-local free lists make that cheaper than glibc's malloc (README
//! "Performance"). This module is part of the binaries only (`src/main.rs`, and
//! `examples/hyper_floor.rs` through `#[path]`, so the floor keeps the same allocator): the
//! library forbids `unsafe`.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The largest alignment every mimalloc block has when its size is a multiple of it: block
/// sizes are multiples of 8, of 16 from 16 bytes up, and a page's first block sits on
/// 16 bytes (`MI_MAX_ALIGN_SIZE`, `MI_PAGE_MIN_START_BLOCK_ALIGN`).
const NATURAL_ALIGN: usize = 16;

/// mimalloc as the global allocator, without the detour the `mimalloc` crate takes.
///
/// The crate sends every allocation through `mi_malloc_aligned`. In mimalloc 3 that call only
/// takes the plain path when the rounded size is a power of two; a 48- or 80-byte future takes
/// the over-allocating generic path instead (callgrind: 4.6 such calls per proxied request,
/// 1.2k instructions; the same report upstream: purpleprotocol/mimalloc_rust#170). A Rust
/// layout's size is a multiple of its alignment, so for alignments up to [`NATURAL_ALIGN`]
/// plain `mi_malloc` already gives an aligned block; larger alignments (tokio's 128-byte
/// task cells) still go the aligned way.
pub struct MiMalloc;

/// Whether a plain (unaligned) mimalloc call returns memory aligned enough for `layout`.
fn plain_is_aligned(size: usize, align: usize) -> bool {
    align <= NATURAL_ALIGN && size % align == 0
}

// SAFETY: every method forwards to the mimalloc call with the same contract (a block of at
// least `size` bytes aligned to `layout.align()`, freed by `mi_free`); the plain calls are
// only used where `plain_is_aligned` holds, and the unit tests check that claim.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if plain_is_aligned(layout.size(), layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if plain_is_aligned(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from one of the allocation calls above.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl; `ptr` came from one of the allocation calls above.
        unsafe {
            if plain_is_aligned(new_size, layout.align()) {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e`; the Rust bindings name it only for
/// mimalloc 2. The unit test below checks the index still means that option.
const MI_OPTION_PURGE_DELAY: mi::mi_option_t = 15;

/// How long mimalloc keeps an empty page before returning it to the OS, in milliseconds.
///
/// Measured under 64 busy connections (docs/performance-log.md): with no delay, every returned
/// page that is wanted again a moment later comes back through a page fault, about one
/// fault per proxied request and 5 µs of kernel time per request (a quarter of the proxy's
/// CPU); with 100 ms, 0.02–0.05 faults per request and a peak RSS of 14.5 MiB, against
/// 13.5 MiB with no delay and 15.2 MiB with mimalloc's default of 1 s.
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Sets mimalloc's purge delay to [`PURGE_DELAY_MS`] (its default is 1 s).
pub fn tune() {
    // SAFETY: sets one of mimalloc's process-wide integer options; any value is valid for it.
    unsafe { mi::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tune_sets_the_purge_delay() {
        // mimalloc 3's default purge delay is 1,000 ms, a default the options around index 15
        // do not have: this fails if the index names another option after an upgrade.
        // SAFETY: reads a process-wide integer option.
        let before = unsafe { mi::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            before, 1000,
            "option {MI_OPTION_PURGE_DELAY} is not the purge delay"
        );
        tune();
        // SAFETY: as above.
        let after = unsafe { mi::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(after, PURGE_DELAY_MS);
    }

    /// Every layout a Rust type can have (size a multiple of the alignment) up to a few pages
    /// and 4 KiB alignment gets a block aligned as asked, through each entry point, with
    /// several blocks alive at once so that blocks past a page's first are checked too.
    #[test]
    fn every_block_is_aligned_as_its_layout_asks() {
        let allocator = MiMalloc;
        let mut align = 1;
        while align <= 4096 {
            for size in (align..=3 * 4096).step_by(align) {
                let layout = Layout::from_size_align(size, align).expect("valid layout");
                let mut live = Vec::new();
                for round in 0..4 {
                    // SAFETY: `layout` has a non-zero size; each block is freed below.
                    let ptr = unsafe {
                        match round {
                            0 | 1 => allocator.alloc(layout),
                            2 => allocator.alloc_zeroed(layout),
                            _ => {
                                let small = Layout::from_size_align(align, align).expect("valid");
                                allocator.realloc(allocator.alloc(small), small, size)
                            }
                        }
                    };
                    assert!(!ptr.is_null(), "size {size} align {align}");
                    assert_eq!(
                        ptr as usize % align,
                        0,
                        "size {size} align {align} round {round}"
                    );
                    if round == 2 {
                        // SAFETY: the block is `size` bytes long and was zeroed.
                        let bytes = unsafe { std::slice::from_raw_parts(ptr, size) };
                        assert!(bytes.iter().all(|&b| b == 0), "size {size} not zeroed");
                    }
                    live.push(ptr);
                }
                for ptr in live {
                    // SAFETY: allocated above with `layout` (or reallocated to its size).
                    unsafe { allocator.dealloc(ptr, layout) };
                }
            }
            align *= 2;
        }
    }

    #[test]
    fn plain_calls_only_for_natural_alignments() {
        assert!(plain_is_aligned(48, 16));
        assert!(plain_is_aligned(24, 8));
        assert!(plain_is_aligned(1, 1));
        assert!(
            !plain_is_aligned(24, 16),
            "a 24-byte block may sit at 8 mod 16"
        );
        assert!(!plain_is_aligned(128, 128), "tokio's task cells");
    }
}
