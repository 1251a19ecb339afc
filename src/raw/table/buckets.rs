//! A shard's bucket array.
//!
//! Buckets are `u32` links (4 bytes per bucket) to the first node of a chain threaded through
//! the nodes' `next` fields. A table is one 64-byte-aligned allocation of `len` buckets
//! (`len` a power of two), and the shard holds it as a *tagged* word: the address with
//! `log2(len)` in its six low bits. A reader therefore computes its bucket's address from the
//! single word it loads, with no dependent load of the length.
//!
//! Tables are reclaimed like nodes: a replaced table is retired (`retire.rs`) and freed once
//! no thread inside a read or pinned can hold it.
//!
//! A table never changes size; growing a shard publishes a new table a power-of-two multiple
//! of the size whose buckets start as [`UNINIT`](super::node::UNINIT) and are split lazily off
//! the old table's chains (see grow.rs).

use std::alloc::{Layout, handle_alloc_error};
use std::marker::PhantomData;

use super::pages;
use super::prefetch::prefetch;
use crate::sync::AtomicU32;

const ALIGN: usize = 64;
const SHIFT_BITS: usize = ALIGN - 1;

/// Bucket of a hash in a table of `mask + 1` buckets: the low 32 bits of the hash. (The shard
/// is chosen by the top bits and the chain tag by bits 32..48.)
#[inline]
pub(crate) fn bucket_of(hash: u64, mask: u32) -> usize {
    (hash as u32 & mask) as usize
}

/// Asks the processor to start loading the bucket of `hash` in the table whose word is
/// `word`, before the caller pins (a pin is a full barrier: loads after it cannot start
/// early, but a prefetch issued before it proceeds while it runs).
///
/// `word` may be stale and its table already freed: the address is computed with wrapping
/// arithmetic and only prefetched (see [`prefetch`]), never dereferenced. The lookup that
/// follows loads the bucket properly, under the pin.
#[inline(always)]
pub(crate) fn prefetch_bucket(word: usize, hash: u64) {
    let shift = (word & SHIFT_BITS) as u32;
    let mask = ((1u64 << shift) - 1) as u32;
    let base = (word & !SHIFT_BITS) as *const AtomicU32;
    prefetch(base.wrapping_add(bucket_of(hash, mask)));
}

/// The layout of a table of `len` buckets: cache-line aligned, and huge-page aligned when it
/// spans a huge page (whether or not it was advised, so that `free_buckets` needs no flag).
fn layout(len: usize) -> Layout {
    match pages::layout(len * std::mem::size_of::<AtomicU32>(), ALIGN, true) {
        Some(layout) => layout,
        None => handle_alloc_error(Layout::new::<AtomicU32>()),
    }
}

/// Allocates a table of `len` (a power of two, at most 2^31) buckets, all set to `fill`, and
/// returns its tagged word; with `huge`, a table of a huge page or more is advised onto huge
/// pages. The caller owns it until it publishes it. `None` if the allocator refused the memory
/// (the caller reports it, or does without the larger table): never an abort.
pub(crate) fn new_buckets(len: usize, fill: u32, huge: bool) -> Option<usize> {
    debug_assert!(len.is_power_of_two() && len <= 1 << 31);
    let layout = layout(len);
    // SAFETY: the layout has a non-zero size (len >= 1); freed by `free_buckets` with it.
    let base = unsafe { pages::alloc(layout, false) } as *mut AtomicU32;
    if base.is_null() {
        return None;
    }
    if huge {
        pages::advise(base.cast(), layout);
    }
    for i in 0..len {
        // SAFETY: `i < len`, inside the allocation; the memory is uninitialised, so `write`.
        unsafe { base.add(i).write(AtomicU32::new(fill)) };
    }
    Some(base as usize | len.trailing_zeros() as usize)
}

/// Frees a table made by [`new_buckets`].
///
/// # Safety
/// `word` came from `new_buckets`, is freed once, and no thread can access the table any more
/// (it was retired and its grace periods passed, or the shard is dropped).
pub(crate) unsafe fn free_buckets(word: usize) {
    let table = Buckets::<'static> {
        word,
        _life: PhantomData,
    };
    let len = table.len();
    let base = (word & !SHIFT_BITS) as *mut AtomicU32;
    for i in 0..len {
        // SAFETY: initialised by `new_buckets`, and no one else accesses it (contract above).
        unsafe { std::ptr::drop_in_place(base.add(i)) };
    }
    // SAFETY: allocated by `new_buckets` with this layout, freed once (contract).
    unsafe { pages::dealloc(base as *mut u8, layout(len)) };
}

/// A borrowed table, valid for `'g` (the guard under which its word was loaded).
#[derive(Clone, Copy)]
pub(crate) struct Buckets<'g> {
    word: usize,
    _life: PhantomData<&'g [AtomicU32]>,
}

impl<'g> Buckets<'g> {
    /// Views a table word.
    ///
    /// # Safety
    /// `word` came from [`new_buckets`] and the table is not freed before `'g` ends: it was
    /// loaded under a guard (light.rs, `Protected`) that lives for `'g` and is retired only
    /// through `retire.rs`, or the caller owns it.
    #[inline]
    pub(crate) unsafe fn from_word(word: usize) -> Buckets<'g> {
        debug_assert!(word & !SHIFT_BITS != 0);
        Buckets {
            word,
            _life: PhantomData,
        }
    }

    #[inline]
    pub(crate) fn word(self) -> usize {
        self.word
    }

    #[inline]
    fn shift(self) -> u32 {
        (self.word & SHIFT_BITS) as u32
    }

    #[inline]
    pub(crate) fn len(self) -> usize {
        1 << self.shift()
    }

    #[inline]
    pub(crate) fn mask(self) -> u32 {
        ((1u64 << self.shift()) - 1) as u32
    }

    /// Bucket `i` (`i < len`).
    #[inline]
    pub(crate) fn at(self, i: usize) -> &'g AtomicU32 {
        debug_assert!(i < self.len());
        let base = (self.word & !SHIFT_BITS) as *const AtomicU32;
        // SAFETY: `i < len` (callers mask indices with `mask`), the table holds `len`
        // initialised buckets, and it lives for 'g (see `from_word`).
        unsafe { &*base.add(i) }
    }

    #[inline]
    pub(crate) fn bucket(self, hash: u64) -> &'g AtomicU32 {
        self.at(bucket_of(hash, self.mask()))
    }
}

#[cfg(all(test, target_os = "linux", not(loom), not(miri)))]
mod tests {
    use super::*;
    use crate::raw::table::node::NIL;

    /// A table of a huge page or more is huge-page aligned, and advised only when asked.
    #[test]
    fn large_tables_are_advised_onto_huge_pages() {
        // 2^20 buckets: 4 MiB.
        let advised = new_buckets(1 << 20, NIL, true).unwrap();
        let plain = new_buckets(1 << 20, NIL, false).unwrap();
        for word in [advised, plain] {
            assert_eq!((word & !SHIFT_BITS) % pages::HUGE_PAGE, 0);
        }
        assert!(pages::tests::advised(advised & !SHIFT_BITS));
        assert!(!pages::tests::advised(plain & !SHIFT_BITS));
        // SAFETY: made above, never shared, freed once.
        unsafe {
            free_buckets(advised);
            free_buckets(plain);
        }
    }
}
