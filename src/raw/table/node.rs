//! The entry: one node per stored value, and its life cycle.
//!
//! # Layout
//!
//! A node is a 16-byte header followed by the key and the value, in one slot of the shard's
//! [`Arena`](super::arena::Arena) (no allocation per entry, no allocator header):
//!
//! | field      | type        | written by                          | read by                |
//! |------------|-------------|-------------------------------------|------------------------|
//! | `deadline` | `AtomicU64` | inserter, `touch`/`set_ttl`, TTI reads | readers, maintainer |
//! | `next`     | `AtomicU32` | inserter (before publishing), markers (bit 31), claimers (bit 30), maintainer (unlinks) | everyone |
//! | `tag`      | `u16` cell  | inserter (before publishing)         | readers (chain filter) |
//! | `freq`     | `AtomicU8`  | inserter (stamp), readers (counter bump, stamp), maintainer (CLOCK hand) | maintainer |
//! | `state`    | `AtomicU8`  | the slot's owner: inserter (life), maintainer (its flags, retire), deferred release | maintainer, shard drop |
//! | payload    | `(K, V)`    | inserter (before publishing)         | readers (immutable while reachable) |
//!
//! `tag` is a plain cell, not an atomic: it is written only while no other thread can reach
//! the node (before publication), so the ordering that publishes the node orders that write
//! too (and loom checks that it does). `state` holds the slot's life (free, live, retired) in
//! its two low bits and the maintainer's bookkeeping flags for the entry above them, next to
//! the node's other fields, so that applying an event touches the node's line and no side
//! table. It is written by one party at a time (the inserter while the slot is private, the
//! maintainer under the shard's lock while the node is published, the deferred release once
//! it is retired) but it is an atomic because the maintainer may *read* it for a stale index
//! while another thread owns the slot. `freq` is the only field a *reader* writes, so it has
//! its own byte: a reader's store can never clobber anything else. It holds the CLOCK counter
//! in its two low bits and the generation of the entry's last request (the recency estimate's
//! stamp, `evict/recent.rs`) in the six above.
//!
//! For `Cache<u64, u64>` a node is 32 bytes.
//!
//! # Ground rules (the entry state machine)
//!
//! 1. **Private.** A slot popped from the arena belongs to the thread that popped it. It fills
//!    the header and the payload with plain (Relaxed / `with_mut`) writes.
//! 2. **Published.** The inserter links the node at the head of its bucket chain with a
//!    Release CAS. From then on the payload is immutable; readers reach it through Acquire
//!    loads of links, so they see it initialised.
//! 3. **Marked (logically removed).** Exactly one thread wins the CAS that sets [`MARK`] in the
//!    node's `next`: that thread is the entry's remover. It gives the entry's share of the size
//!    bound back (unless the node is [`CLAIM`]ed), reports the removal (listener, event for the
//!    maintainer, which keeps the live count) and nothing else. A reader that finds the
//!    node as the *first* node of its key in the chain treats the key as absent. The mark is
//!    never cleared while the node is reachable.
//! 4. **Unlinked.** Only the shard's maintainer (the holder of the shard's maintenance lock)
//!    changes links other than bucket heads, so only it unlinks nodes, one at a time, with a
//!    CAS on the predecessor's link. Before unlinking a marked node it marks every later node
//!    of the same key (such a node is an older value that a newer insert superseded), so that
//!    unlinking never uncovers an older value.
//! 5. **Retired.** Once the maintainer has applied both the node's insertion and its removal
//!    (its `Inserted` or `Replaced` event, and its `Removed` event or the `Replaced` event of
//!    the node that superseded it, or its own marking; in either order) and the node is unlinked, no new reference to it can be
//!    made: it is not reachable from any bucket head, and events about it have all been
//!    consumed. The maintainer retires it (`retire.rs`): after a light grace period (every
//!    read in progress at the time has ended, `light.rs`) and then a crossbeam-epoch one
//!    (every thread pinned at the time has unpinned), a deferred function drops the payload
//!    and pushes the slot onto the free list, so no reader or writer still holds it.
//!
//! The key invariant that makes replacement linearizable: **the first node of a key in its
//! chain is the key's current state** (its value, or absence if it is marked). Inserts
//! always go to the head, so a newer value always precedes older ones.

use std::mem::MaybeUninit;

use crate::evict::recent::{Recent, STAMP_SHIFT};
use crate::sync::{AtomicU8, AtomicU32, AtomicU64, Ordering, UnsafeCell};

/// AddressSanitizer's manual poisoning interface (the runtime provides these in sanitizer
/// builds; see `Node::poison_payload`).
#[cfg(evanesce_asan)]
mod asan {
    use std::ffi::c_void;
    unsafe extern "C" {
        pub(super) fn __asan_poison_memory_region(addr: *const c_void, size: usize);
        pub(super) fn __asan_unpoison_memory_region(addr: *const c_void, size: usize);
        #[cfg(test)]
        pub(super) fn __asan_address_is_poisoned(addr: *const c_void) -> std::ffi::c_int;
    }
}

/// Index of a node in its shard's arena.
pub(crate) type Idx = u32;

/// Bit 31 of a link: in a node's `next`, "this node is marked removed"; in a bucket head of a
/// table being split, "frozen: insert into the new table instead".
pub(crate) const MARK: u32 = 1 << 31;
/// Bit 30 of a node's `next`: "claimed": an insert that is replacing this node has taken over
/// its share of the size bound's reservation (see `Bound` in `raw/mod.rs`), so whoever marks
/// it must not give that share back. Never set in a bucket word. Set at most once, on an
/// unmarked node, and never cleared while the node is reachable.
pub(crate) const CLAIM: u32 = 1 << 30;
/// The index bits of a link.
pub(crate) const IDX_MASK: u32 = CLAIM - 1;
/// The bits of a link that are not its index (`MARK`, `CLAIM`): an unlink that redirects a
/// link keeps them.
pub(crate) const LINK_BITS: u32 = !IDX_MASK;
/// End of a chain.
pub(crate) const NIL: u32 = IDX_MASK;
/// A bucket of a growing table that has not been split off its old bucket yet.
pub(crate) const UNINIT: u32 = IDX_MASK - 1;
/// Number of indices an arena can hand out (all below [`UNINIT`]).
pub(crate) const MAX_NODES: u32 = UNINIT;

/// Deadline of an entry that never expires.
pub(crate) const NEVER: u64 = u64::MAX;

/// Saturation value of the CLOCK reference counter.
pub(crate) const FREQ_MAX: u8 = 3;
/// The CLOCK byte's bits that hold the counter; the others hold the recency estimate's
/// generation stamp (`evict/recent.rs`).
const COUNTER_MASK: u8 = (1 << STAMP_SHIFT) - 1;
const _: () = assert!(FREQ_MAX <= COUNTER_MASK);

/// Life values in the low bits of `state` (debug checks, and the cache's drop, which frees
/// every `LIVE` payload).
pub(crate) const LIFE_FREE: u8 = 0;
pub(crate) const LIFE_LIVE: u8 = 1;
pub(crate) const LIFE_RETIRED: u8 = 2;
const LIFE_MASK: u8 = 3;
/// The bits of `state` the maintainer's flags may use (see `raw/maint` and `table/grow.rs`).
pub(crate) const FLAG_BITS: u8 = !LIFE_MASK;

/// One entry. See the module documentation for who may touch which field when.
#[repr(C)]
pub(crate) struct Node<K, V> {
    pub(crate) deadline: AtomicU64,
    pub(crate) next: AtomicU32,
    tag: UnsafeCell<u16>,
    pub(crate) freq: AtomicU8,
    state: AtomicU8,
    payload: UnsafeCell<MaybeUninit<(K, V)>>,
}

impl<K, V> Node<K, V> {
    /// A free node (no payload).
    pub(crate) fn vacant() -> Self {
        Self {
            deadline: AtomicU64::new(NEVER),
            next: AtomicU32::new(NIL),
            tag: UnsafeCell::new(0),
            freq: AtomicU8::new(0),
            state: AtomicU8::new(LIFE_FREE),
            payload: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// Fills a private node (rule 1).
    ///
    /// # Safety
    /// The caller owns the slot: it was just popped from the arena, nothing else references
    /// it, and its payload is not initialised.
    pub(crate) unsafe fn init(&self, tag: u16, deadline: u64, key: K, value: V) {
        self.unpoison_payload();
        // Relaxed: the node is private; these stores are published by the Release CAS that
        // links the node (rule 2).
        self.deadline.store(deadline, Ordering::Relaxed);
        self.next.store(NIL, Ordering::Relaxed);
        self.freq.store(0, Ordering::Relaxed);
        debug_assert_eq!(self.life(), LIFE_FREE);
        self.set_life(LIFE_LIVE);
        self.tag.with_mut(|t| {
            // SAFETY: the caller owns the slot, so nothing else accesses its cells.
            unsafe { *t = tag };
        });
        self.payload.with_mut(|p| {
            // SAFETY: the caller owns the slot (no other access, per this function's contract).
            unsafe { (*p).write((key, value)) };
        });
    }

    /// Replaces the value of a node the caller owns (rule 1), returning the old one: a compute
    /// keeps its key in one private node across attempts, and only the value changes.
    ///
    /// # Safety
    /// The caller owns the slot (taken from the arena, initialised by [`init`](Self::init),
    /// never published).
    pub(crate) unsafe fn swap_value(&self, value: V) -> V {
        self.payload.with_mut(|p| {
            // SAFETY: exclusive access to an initialised payload, per this function's contract.
            let (_, v) = unsafe { (*p).assume_init_mut() };
            std::mem::replace(v, value)
        })
    }

    /// Runs `f` on the key and value.
    ///
    /// # Safety
    /// The payload is initialised and stays so for the call: the node is published and the
    /// caller is protected (pinned, or inside a light read) since it reached the node through
    /// a link (rule 5), or the caller owns the node.
    #[inline]
    pub(crate) unsafe fn with_payload<R>(&self, f: impl FnOnce(&K, &V) -> R) -> R {
        self.payload.with(|p| {
            // SAFETY: initialised and not mutated while reachable, per this function's contract.
            let (k, v) = unsafe { (*p).assume_init_ref() };
            f(k, v)
        })
    }

    /// Drops the payload in place.
    ///
    /// # Safety
    /// The payload is initialised, and no other thread can reach the node any more (it was
    /// retired and its grace period has passed, or the whole shard is being dropped).
    pub(crate) unsafe fn drop_payload(&self) {
        self.payload.with_mut(|p| {
            // SAFETY: exclusive access to an initialised payload, per this function's contract.
            unsafe { (*p).assume_init_drop() };
        });
        self.set_life(LIFE_FREE);
        self.poison_payload();
    }

    /// In AddressSanitizer builds (`--cfg evanesce_asan`, see `scripts/sanitizers.sh`): marks
    /// the payload of a free slot as unaddressable, so that a stale access to a recycled slot
    /// (which goes back to the arena's free list, never to the allocator) is reported as
    /// `use-after-poison`. The header stays addressable: the free list's link lives in `next`,
    /// and the maintainer may read a stale index's flags by design. Nothing otherwise.
    #[inline(always)]
    pub(crate) fn poison_payload(&self) {
        #[cfg(evanesce_asan)]
        self.payload.with(|p| {
            // SAFETY: the range is this slot's payload, inside a live arena chunk; poisoning
            // only changes ASan's shadow memory.
            unsafe { asan::__asan_poison_memory_region(p.cast(), std::mem::size_of::<(K, V)>()) }
        });
    }

    /// Undoes [`poison_payload`](Self::poison_payload) (when a slot is taken again, and before
    /// its chunk is freed).
    #[inline(always)]
    pub(crate) fn unpoison_payload(&self) {
        #[cfg(evanesce_asan)]
        self.payload.with(|p| {
            // SAFETY: as in `poison_payload`.
            unsafe { asan::__asan_unpoison_memory_region(p.cast(), std::mem::size_of::<(K, V)>()) }
        });
    }

    /// Whether the payload is poisoned (AddressSanitizer builds only; for tests).
    #[cfg(all(test, evanesce_asan))]
    pub(crate) fn payload_poisoned(&self) -> bool {
        self.payload.with(|p| {
            // SAFETY: queries ASan's shadow memory only.
            unsafe { asan::__asan_address_is_poisoned(p.cast()) != 0 }
        })
    }

    /// The chain tag (16 bits of the key's hash).
    ///
    /// # Safety
    /// As for [`with_payload`](Self::with_payload): the node is published and the caller is
    /// protected since it reached it, or the caller owns it (the tag is written only before
    /// publication).
    #[inline]
    pub(crate) unsafe fn tag(&self) -> u16 {
        self.tag.with(|t| {
            // SAFETY: no concurrent write, per this function's contract.
            unsafe { *t }
        })
    }

    /// The slot's life state (`LIFE_*`).
    pub(crate) fn life(&self) -> u8 {
        // Relaxed: whoever reads it owns the slot or the shard (see the module documentation),
        // so the orderings that handed it over order this load.
        self.state.load(Ordering::Relaxed) & LIFE_MASK
    }

    /// Sets the slot's life state, clearing the maintainer's flags (a slot changes life only
    /// when it is allocated, retired or released, and carries no flags across).
    pub(crate) fn set_life(&self, life: u8) {
        // Relaxed: as in `life`.
        self.state.store(life, Ordering::Relaxed);
    }

    /// The maintainer's flags (`FLAG_BITS` of `state`). Only the maintainer calls this, and
    /// `set_flags`; for an index it holds no event about (a stale one) the answer is whatever
    /// the slot's current owner left, which the maintainer must tolerate.
    #[inline]
    pub(crate) fn flags(&self) -> u8 {
        // Relaxed: the maintainer's own writes are ordered by its lock; a stale index's value
        // is only a hint (see above).
        self.state.load(Ordering::Relaxed) & FLAG_BITS
    }

    /// Sets the maintainer's flags, keeping the life bits. Maintainer only, on a published node
    /// that it has not retired (one it holds an event or a growth record about), so no other
    /// thread writes `state` meanwhile.
    #[inline]
    pub(crate) fn set_flags(&self, flags: u8) {
        debug_assert_eq!(flags & !FLAG_BITS, 0);
        // Relaxed: as in `flags`. A load and a store, not a read-modify-write: no one else
        // writes the byte while the maintainer may (see the module documentation).
        let life = self.state.load(Ordering::Relaxed) & LIFE_MASK;
        self.state.store(life | flags, Ordering::Relaxed);
    }

    /// Whether the node is marked removed.
    #[inline]
    pub(crate) fn is_marked(&self) -> bool {
        // Acquire: pairs with the AcqRel CAS that set the mark, so that a thread which sees the
        // mark also sees what the remover did before marking.
        self.next.load(Ordering::Acquire) & MARK != 0
    }

    /// Tries to mark the node removed (rule 3). Returns `None` if another thread marked it
    /// first, else whether it was [`CLAIM`]ed (then its share of the bound belongs to the
    /// replacing insert, and the marker must not release it).
    pub(crate) fn mark(&self) -> Option<bool> {
        // Relaxed first load: only a hint for the CAS below, which validates it.
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            if cur & MARK != 0 {
                return None;
            }
            // AcqRel: Release publishes the remover's earlier writes to whoever sees the mark
            // (readers, the maintainer); Acquire orders the remover after the last link update
            // (and after the claim, if any).
            match self.next.compare_exchange_weak(
                cur,
                cur | MARK,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(cur & CLAIM != 0),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Claims the node's share of the bound for an insert replacing it: sets [`CLAIM`] if the
    /// node is neither marked nor claimed. Returns whether this call set it.
    pub(crate) fn claim(&self) -> bool {
        // Relaxed first load: a hint for the CAS.
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            if cur & (MARK | CLAIM) != 0 {
                return false;
            }
            // Relaxed: the claim publishes nothing; what matters is that exactly one of the
            // claim and the mark comes first in the link's modification order, which the CAS
            // on one word decides (a marker reads the claim in the value it replaces).
            match self.next.compare_exchange_weak(
                cur,
                cur | CLAIM,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Records a hit in the CLOCK byte: the counter bumped (saturating at [`FREQ_MAX`]) and,
    /// for a key the recency estimate samples (`sample`), its generation stamp made current; a
    /// Relaxed load and a store only if the byte changes, so an entry with its counter
    /// saturated (and its stamp current) causes no write at all.
    #[inline]
    pub(crate) fn touch(&self, sample: Option<&Recent>) {
        match sample {
            Some(recent) => self.touch_sampled(recent),
            // Relaxed: the byte is a hint for the eviction policy; a lost update between two
            // racing readers (or against the CLOCK hand) only changes the policy's estimate.
            None => {
                let byte = self.freq.load(Ordering::Relaxed);
                if byte & COUNTER_MASK < FREQ_MAX {
                    self.freq.store(byte + 1, Ordering::Relaxed);
                }
            }
        }
    }

    /// [`touch`](Self::touch) for a sampled key: out of line, the common hit's code stays as
    /// it was.
    #[inline(never)]
    fn touch_sampled(&self, recent: &Recent) {
        // Relaxed: as in `touch`.
        let byte = self.freq.load(Ordering::Relaxed);
        if let Some(next) = recent.hit(byte, FREQ_MAX) {
            self.freq.store(next, Ordering::Relaxed);
        }
    }

    /// The CLOCK counter (the low bits of the CLOCK byte).
    #[inline]
    pub(crate) fn counter(&self) -> u8 {
        // Relaxed: a hint (see `touch`).
        self.freq.load(Ordering::Relaxed) & COUNTER_MASK
    }

    /// Sets the CLOCK counter, keeping the stamp.
    #[inline]
    pub(crate) fn set_counter(&self, value: u8) {
        debug_assert!(value <= FREQ_MAX);
        // Relaxed: a hint (see `touch`).
        let byte = self.freq.load(Ordering::Relaxed);
        let next = (byte & !COUNTER_MASK) | value;
        if byte & !COUNTER_MASK == 0 {
            // No stamp (a key outside the estimate's sample, or one stamped 0): a hit between
            // the load and the store is lost, which only keeps the entry colder than it was.
            self.freq.store(next, Ordering::Relaxed);
        } else {
            // A sampled key: a hit that renewed the stamp in between must not be undone (the
            // next hit would count the key's move again). Relaxed, as above; if a hit changed
            // the byte, its counter stays (warmer) with its stamp.
            let _ = self
                .freq
                .compare_exchange(byte, next, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The generation stamp (the high bits of the CLOCK byte).
    #[inline]
    pub(crate) fn stamp(&self) -> u8 {
        // Relaxed: a hint (see `touch`).
        self.freq.load(Ordering::Relaxed) >> STAMP_SHIFT
    }
}
