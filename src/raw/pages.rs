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

use std::alloc::Layout;

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
    #[cfg(all(target_os = "linux", not(loom)))]
    {
        // MADV_HUGEPAGE changes neither the contents nor the validity of the range, only how
        // the kernel may back it; advice taken or not is fine, so the result is ignored.
        // SAFETY: `ptr..ptr + len` is inside a live allocation the caller owns, page-aligned.
        unsafe {
            libc::madvise(ptr.cast::<libc::c_void>(), len, libc::MADV_HUGEPAGE);
        }
    }
    #[cfg(not(all(target_os = "linux", not(loom))))]
    {
        let _ = (ptr, len);
    }
}

#[cfg(all(test, target_os = "linux", not(loom)))]
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
