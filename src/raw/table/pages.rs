//! Large allocations (bucket tables, arena chunks) on transparent huge pages.
//!
//! A lookup touches a bucket and a node at random places in memory that is tens of megabytes
//! large; with 4 KiB pages most of those touches also miss the TLB, and the page walk adds
//! another dependent miss. An allocation of at least [`HUGE_PAGE`] bytes is therefore aligned
//! to a huge page and, on Linux, advised with `madvise(MADV_HUGEPAGE)`, so that the kernel
//! backs it with 2 MiB pages where transparent huge pages are enabled (`always` or `madvise`
//! in `/sys/kernel/mm/transparent_hugepage/enabled`). It is only advice: where the kernel
//! declines, nothing changes but speed.
//!
//! The cost is residency in 2 MiB steps: a huge page is committed on its first touch. Arena
//! chunks fill from their start, so a chunk holds at most one partly used huge page; tables
//! are written whole when created. `CacheBuilder::huge_pages(false)` turns the advice off.
//!
//! Allocations of at least [`MAP_MIN`] bytes are mapped from the kernel directly ([`alloc`],
//! [`dealloc`]) on Linux: freeing one gives its memory back to the system at once. Through the
//! C allocator, a freed table of a growth stayed resident (glibc raises its mapping threshold
//! after such a free, and serves later large requests from a heap it does not shrink), which
//! cost a cache that grew to a million entries about 5 bytes per entry.

use std::alloc::Layout;

/// Smallest allocation mapped from the kernel directly (where that is done at all).
pub(crate) const MAP_MIN: usize = 256 << 10;

/// Whether allocations of `layout` are mapped from the kernel directly.
fn mapped(layout: Layout) -> bool {
    // Not in AddressSanitizer builds: the allocator's memory is what ASan tracks.
    cfg!(all(
        target_os = "linux",
        not(loom),
        not(miri),
        not(evanesce_asan)
    )) && layout.size() >= MAP_MIN
}

/// Allocates `layout` (zeroed if `zeroed`); null if the system refused. Large layouts (see
/// [`MAP_MIN`]) are fresh anonymous mappings, which are zeroed anyway.
///
/// # Safety
/// `layout` has a non-zero size; the memory is freed only with [`dealloc`] and this layout.
pub(crate) unsafe fn alloc(layout: Layout, zeroed: bool) -> *mut u8 {
    if mapped(layout) {
        return map(layout);
    }
    if zeroed {
        // SAFETY: non-zero size (contract).
        unsafe { std::alloc::alloc_zeroed(layout) }
    } else {
        // SAFETY: non-zero size (contract).
        unsafe { std::alloc::alloc(layout) }
    }
}

/// Frees memory from [`alloc`].
///
/// # Safety
/// `ptr` came from [`alloc`] with `layout`, is not null, and is freed once; nothing uses it
/// afterwards.
pub(crate) unsafe fn dealloc(ptr: *mut u8, layout: Layout) {
    if mapped(layout) {
        #[cfg(all(target_os = "linux", not(loom), not(miri)))]
        // SAFETY: `map` mapped exactly `rounded(layout.size())` bytes at `ptr` (contract); the
        // range is unmapped once and nothing refers to it any more.
        unsafe {
            libc::munmap(ptr.cast(), rounded(layout.size()));
        }
        return;
    }
    // SAFETY: allocated by the global allocator with this layout (contract).
    unsafe { std::alloc::dealloc(ptr, layout) }
}

/// Gives the C allocator's free pages back to the system, where that allocator keeps them
/// (glibc). Called when a growth ends: its bookkeeping (the recorded chains, a few hundred
/// kilobytes to megabytes) was freed into the allocator's heap, where glibc keeps it resident
/// once an earlier free has raised its mapping threshold; a cache that grew to a million
/// entries kept about 5 bytes per entry that way. A growth ends a few dozen times in a
/// cache's life at most, and trimming walks only the allocator's free lists.
pub(crate) fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu", not(loom), not(miri)))]
    // SAFETY: `malloc_trim` only returns free memory of the allocator to the system; it
    // touches no memory in use and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The machine's physical memory in bytes, where the system says (Linux); `None` otherwise.
pub(crate) fn physical_memory() -> Option<u64> {
    #[cfg(all(target_os = "linux", not(loom), not(miri)))]
    {
        // SAFETY: `sysconf` reads system configuration values; it takes an integer and touches
        // no memory of ours.
        let (pages, size) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if pages > 0 && size > 0 {
            return (pages as u64).checked_mul(size as u64);
        }
    }
    None
}

/// `size` rounded up to whole small pages.
#[cfg(all(target_os = "linux", not(loom), not(miri)))]
fn rounded(size: usize) -> usize {
    const PAGE: usize = 4096;
    size.div_ceil(PAGE) * PAGE
}

/// Maps `layout.size()` bytes aligned to `layout.align()` (a mapping is page-aligned; a larger
/// alignment is had by mapping more and unmapping the excess on both sides). Null if refused.
#[cfg(all(target_os = "linux", not(loom), not(miri)))]
fn map(layout: Layout) -> *mut u8 {
    let size = rounded(layout.size());
    let extra = layout.align().saturating_sub(4096);
    let Some(total) = size.checked_add(extra) else {
        return std::ptr::null_mut();
    };
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing; it touches
    // no memory of ours.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    let start = base as usize;
    let aligned = start.next_multiple_of(layout.align().max(4096));
    let head = aligned - start;
    let tail = total - head - size;
    // SAFETY: both ranges are page-aligned parts of the mapping just made, outside the
    // `size` bytes kept at `aligned`, and nothing refers to them.
    unsafe {
        if head > 0 {
            libc::munmap(base, head);
        }
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
    }
    aligned as *mut u8
}

#[cfg(not(all(target_os = "linux", not(loom), not(miri))))]
fn map(_layout: Layout) -> *mut u8 {
    unreachable!("mapped() is false off Linux")
}

/// Size of a transparent huge page on x86-64 and most 64-bit Linux configurations.
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// The layout for `size` bytes aligned to `align`: aligned to a huge page as well if `huge`
/// and the allocation spans at least one. `None` if the size overflows.
pub(crate) fn layout(size: usize, align: usize, huge: bool) -> Option<Layout> {
    let align = if huge && size >= HUGE_PAGE {
        align.max(HUGE_PAGE)
    } else {
        align
    };
    Layout::from_size_align(size, align).ok()
}

/// Advises the kernel to back the whole huge pages of a fresh allocation `ptr` made with
/// `layout` (from [`layout`]) with huge pages. Does nothing if the layout is not huge-page
/// aligned, off Linux, and under loom.
pub(crate) fn advise(ptr: *mut u8, layout: Layout) {
    if layout.align() < HUGE_PAGE {
        return;
    }
    // Whole huge pages only: the advice never reaches memory past the allocation.
    let len = layout.size() & !(HUGE_PAGE - 1);
    #[cfg(all(target_os = "linux", not(loom), not(miri)))]
    {
        // MADV_HUGEPAGE changes neither the contents nor the validity of the range, only how
        // the kernel may back it; advice taken or not is fine, so the result is ignored.
        // SAFETY: `ptr..ptr + len` is inside a live allocation the caller owns, page-aligned.
        unsafe {
            libc::madvise(ptr.cast::<libc::c_void>(), len, libc::MADV_HUGEPAGE);
        }
    }
    #[cfg(not(all(target_os = "linux", not(loom), not(miri))))]
    {
        let _ = (ptr, len);
    }
}

#[cfg(all(test, target_os = "linux", not(loom), not(miri)))]
pub(crate) mod tests {
    /// The `VmFlags` line of the mapping of `/proc/self/smaps` that contains `addr`.
    pub(crate) fn vm_flags(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = first.split_once('-')
                && let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = (lo..hi).contains(&addr);
                continue;
            }
            if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return Some(flags.to_string());
            }
        }
        None
    }

    /// Whether the mapping holding `addr` carries the MADV_HUGEPAGE advice ("hg").
    pub(crate) fn advised(addr: usize) -> bool {
        vm_flags(addr).is_some_and(|f| f.split_whitespace().any(|w| w == "hg"))
    }

    #[test]
    fn small_or_unadvised_layouts_keep_their_alignment() {
        assert_eq!(super::layout(4096, 64, true).unwrap().align(), 64);
        assert_eq!(
            super::layout(super::HUGE_PAGE, 64, false).unwrap().align(),
            64
        );
        assert_eq!(
            super::layout(super::HUGE_PAGE, 64, true).unwrap().align(),
            super::HUGE_PAGE
        );
    }
}
