//! Cache prefetch hints.
//!
//! A prefetch asks the processor to start loading a cache line that will be needed soon, so
//! that its miss overlaps other work. It is only a hint: it reads nothing in the sense of the
//! memory model, never faults whatever the address (mapped, unmapped, freed), and has no
//! effect on program behaviour, only on timing. Callers may therefore prefetch addresses they
//! could not legally dereference (a table that may already be retired), provided they compute
//! them with wrapping arithmetic. On targets without a stable prefetch intrinsic, and under
//! loom, it does nothing.

/// Starts loading the cache line that holds `*p` into every cache level.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(all(not(loom), any(target_arch = "x86_64", target_arch = "x86")))]
    {
        #[cfg(target_arch = "x86")]
        use std::arch::x86::{_MM_HINT_T0, _mm_prefetch};
        #[cfg(target_arch = "x86_64")]
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: `_mm_prefetch` is a hint: it does not access memory in the sense of the
        // memory model and never faults, whatever the address; its only requirement is SSE,
        // which every x86-64 target has (and every x86 target with `std::arch`'s SSE
        // intrinsics enabled by default).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) };
    }
    #[cfg(not(all(not(loom), any(target_arch = "x86_64", target_arch = "x86"))))]
    {
        let _ = p;
    }
}
