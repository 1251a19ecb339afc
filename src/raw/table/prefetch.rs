//! Cache prefetch hints.
//!
//! A prefetch asks the processor to start loading a cache line that will be needed soon, so
//! that its miss overlaps other work. It is only a hint: it reads nothing in the sense of the
//! memory model, never faults whatever the address (mapped, unmapped, freed), and has no
//! effect on program behaviour, only on timing. Callers may therefore prefetch addresses they
//! could not legally dereference (a table that may already be retired), provided they compute
//! them with wrapping arithmetic. On targets without a stable prefetch intrinsic (or 32-bit x86
//! without SSE), and under loom, it does nothing.

/// Starts loading the cache line that holds `*p` into every cache level.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(all(
        not(loom),
        any(
            target_arch = "x86_64",
            all(target_arch = "x86", target_feature = "sse")
        )
    ))]
    {
        #[cfg(target_arch = "x86")]
        use std::arch::x86::{_MM_HINT_T0, _mm_prefetch};
        #[cfg(target_arch = "x86_64")]
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch never faults and reads nothing, whatever the address; it needs
        // only SSE, which the cfg above guarantees (x86-64 always has it).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) };
    }
    #[cfg(not(all(
        not(loom),
        any(
            target_arch = "x86_64",
            all(target_arch = "x86", target_feature = "sse")
        )
    )))]
    {
        let _ = p;
    }
}

/// Starts loading the cache line that holds `*p` for writing (x86's `prefetchw`): the line
/// arrives exclusive, so that a read-modify-write soon after does not have to ask the other
/// cores for it a second time. Otherwise as [`prefetch`].
#[inline(always)]
pub(crate) fn prefetch_write<T>(p: *const T) {
    #[cfg(all(not(loom), target_arch = "x86_64"))]
    {
        use std::arch::x86_64::{_MM_HINT_ET0, _mm_prefetch};
        // SAFETY: as in `prefetch`; `prefetchw` is executed as a no-op by processors without
        // it.
        unsafe { _mm_prefetch::<_MM_HINT_ET0>(p as *const i8) };
    }
    #[cfg(not(all(not(loom), target_arch = "x86_64")))]
    {
        prefetch(p);
    }
}
