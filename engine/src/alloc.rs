//! A global allocator for the binaries that keeps large blocks on memory that is already
//! faulted in, and asks Linux for transparent huge pages for them.
//!
//! A request that hits the prefix cache copies the matched KV buffers (50 MB for 2,000 tokens
//! of the default model, about 1 MB per layer and head group) into fresh memory. With glibc's
//! defaults each such block is its own `mmap`, returned to the kernel when freed, and every
//! first touch of a 4 KiB page is a page fault: a million faults in a load, a cold 2,000-token
//! prompt and one warm edit, and a fifth of that warm request's time to first token.
//!
//! So, on glibc, blocks of up to 32 MiB come from the heap (`M_MMAP_THRESHOLD`), the heap grows
//! 32 MiB at a time (`M_TOP_PAD`) and keeps up to 256 MiB of freed memory for reuse
//! (`M_TRIM_THRESHOLD`); and blocks of [`HUGE_BLOCK`] bytes or more are advised to use huge
//! pages (`MADV_HUGEPAGE`, which counts where `transparent_hugepage/enabled` is `madvise`, the
//! default of many distributions: one fault per 2 MiB). The same run then takes 85,000 faults.
//! glibc's `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` does something alike, but only when set
//! before the process starts.
//!
//! Install it in a binary with `#[global_allocator] static A: HugePageAlloc = HugePageAlloc;`.

use std::alloc::{GlobalAlloc, Layout, System};

/// [`System`] with glibc's heap tuned once, and `madvise(MADV_HUGEPAGE)` on blocks of
/// [`HUGE_BLOCK`] bytes or more.
pub struct HugePageAlloc;

/// Blocks from this size on are advised, with the huge pages around them: the heap they lie
/// in is one mapping, so its 2 MiB pages can be huge although the block is smaller.
pub const HUGE_BLOCK: usize = 256 << 10;

/// Sets glibc's heap parameters, once, before the first allocation.
fn tune_heap() {
    static TUNED: std::sync::Once = std::sync::Once::new();
    TUNED.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: `mallopt` only sets allocator parameters; it allocates nothing through us.
        // A refused value leaves glibc's default, which is only slower.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TOP_PAD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        }
    });
}

#[cfg(target_os = "linux")]
fn advise(ptr: *mut u8, size: usize) {
    const HUGE_PAGE: usize = 2 << 20;
    let start = (ptr as usize) & !(HUGE_PAGE - 1);
    let end = (ptr as usize + size).next_multiple_of(HUGE_PAGE);
    if end > start {
        // SAFETY: the advice only changes how the kernel backs pages, never their contents,
        // so it may cover the block's neighbours too. Where part of the range is unmapped the
        // kernel advises the rest and reports ENOMEM; any failure leaves ordinary pages.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise(_: *mut u8, _: usize) {}

// SAFETY: every call is passed to `System` unchanged; `advise` touches no memory.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        tune_heap();
        // SAFETY: the caller's contract is `System`'s.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() && layout.size() >= HUGE_BLOCK {
            advise(ptr, layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        tune_heap();
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() && layout.size() >= HUGE_BLOCK {
            advise(ptr, layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() && new_size >= HUGE_BLOCK {
            advise(new, new_size);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of every size round-trip their contents through the allocator, and a large
    /// zeroed block is zero (the advice must never change contents).
    #[test]
    fn allocations_keep_their_contents() {
        for size in [
            1,
            64,
            4095,
            4096,
            HUGE_BLOCK - 1,
            HUGE_BLOCK,
            3 * HUGE_BLOCK + 17,
        ] {
            let layout = Layout::from_size_align(size, 64).expect("layout");
            // SAFETY: the layout is non-zero; each block is freed with its own layout.
            unsafe {
                let zeroed = HugePageAlloc.alloc_zeroed(layout);
                assert!(!zeroed.is_null());
                assert!(
                    std::slice::from_raw_parts(zeroed, size)
                        .iter()
                        .all(|&b| b == 0)
                );
                HugePageAlloc.dealloc(zeroed, layout);
                let block = HugePageAlloc.alloc(layout);
                assert!(!block.is_null());
                for i in (0..size).step_by(997) {
                    *block.add(i) = (i % 251) as u8;
                }
                let grown = HugePageAlloc.realloc(block, layout, size * 2);
                assert!(!grown.is_null());
                for i in (0..size).step_by(997) {
                    assert_eq!(*grown.add(i), (i % 251) as u8, "size {size}, byte {i}");
                }
                HugePageAlloc.dealloc(grown, Layout::from_size_align(size * 2, 64).expect("l"));
            }
        }
    }

    /// Blocks of up to 32 MiB come from the heap, where freed memory stays for reuse, not
    /// from a mapping of their own that `free` hands back to the kernel (glibc's default from
    /// 128 KiB, raised only as far as blocks already freed).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn blocks_up_to_32_mib_come_from_the_heap() {
        // glibc keeps a block's size just before it, with bit 1 set for a mapped block.
        const IS_MMAPPED: usize = 2;
        for (size, mapped) in [(24 << 20, false), (48 << 20, true)] {
            let layout = Layout::from_size_align(size, 8).expect("layout");
            // SAFETY: the word before a block from malloc is its size field; the block is
            // freed with its own layout.
            unsafe {
                let block = HugePageAlloc.alloc(layout);
                assert!(!block.is_null());
                let header = (block as *const usize).sub(1).read();
                HugePageAlloc.dealloc(block, layout);
                assert_eq!(header & IS_MMAPPED != 0, mapped, "{size} bytes");
            }
        }
    }
}
