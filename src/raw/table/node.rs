//! The entry: one node per stored value, and its life cycle.
//!
//! # Layout
//!
//! A node is a 16-byte header followed by the key and the value, in one slot of the shard's
//! [`Arena`](super::arena::Arena) (no allocation per entry, no allocator header):
//!
//! | field      | type        | written by                          | read by                |
//! |------------|-------------|-------------------------------------|------------------------|
//! | `deadline` | `AtomicU64` | inserter, `touch`/`set_ttl`, TTI reads, in-place writers | readers, maintainer |
//! | `next`     | `AtomicU32` | inserter (before publishing), markers (bit 31), claimers (bit 30), holders (bit 29), maintainer (unlinks) | everyone |
//! | `tag`      | `u16` cell  | inserter (before publishing)         | readers (chain filter) |
//! | `freq`     | `AtomicU8`  | inserter (stamp), readers (counter bump, stamp), maintainer (CLOCK hand) | maintainer |
//! | `state`    | `AtomicU8`  | the slot's owner: inserter (life), maintainer (its flags, retire), deferred release | maintainer, shard drop |
//! | payload    | `(K, V)`    | inserter (before publishing); a value word's holder | readers (immutable while reachable, but a value word) |
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
//! # Values replaced in place
//!
//! A value of a [`word_value`] type (`u64`, `i64`, `usize`, `isize`, `f64`: 8 bytes, no
//! padding, no pointer, no drop, every bit pattern valid) is a *value word*: every access to it
//! is an atomic load or store of the payload's value field, and an insert of a live key may
//! overwrite it in place (`Shard::insert_in_place`) instead of publishing a new node. Such a
//! writer *holds* the node ([`WRITING`], bit 29 of `next`, set by a CAS on an unmarked,
//! unheld node) for a load and three stores: the value word, the deadline (Release, after the
//! word: a reader that sees the new deadline sees the value written with it) and `next`
//! itself, which releases the node. While a node is held, its holder is the only writer of
//! `next`: markers, claimers and the maintainer's relinking wait until it is released
//! ([`Node::wait_unheld`]), which is why the holder releases it with a plain store. So a
//! removal that comes after a write reads the written value (no write is lost to it). Whoever
//! decides on a value word's value or deadline and then acts holds the node across the
//! decision and the act: a compute and `retain` (the value, then the mark), `remove`,
//! `get_stale` and the expiry (whether the entry is alive, then the mark: an in-place write
//! may renew it in between), and `touch`/`set_ttl` (the entry's own lifetime and deadline,
//! which the in-place write reads). A waiter spins a while, then yields. Readers never hold,
//! wait or write anything: a value word is read with one atomic load, whole.
//!
//! # Ground rules (the entry state machine)
//!
//! 1. **Private.** A slot popped from the arena belongs to the thread that popped it. It fills
//!    the header and the payload with plain (Relaxed / `with_mut`) writes.
//! 2. **Published.** The inserter links the node at the head of its bucket chain with a
//!    Release CAS. From then on the payload is immutable (but a value word, which only the
//!    node's holder writes, see above); readers reach it through Acquire loads of links, so
//!    they see it initialised.
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
/// Bit 29 of a node's `next`: "held": a writer that overwrites the node's value word in
/// place (see [`word_value`]) holds the node for the few stores of its write (and a remover
/// that must check the value before it marks, for a load and a CAS). While it is set, only its
/// holder writes `next`: a marker, a claimer or the maintainer relinking waits those few
/// stores out (see [`Node::wait_unheld`]), so the holder releases it with a plain store. Set
/// only on an unmarked node, by a CAS; never set in a bucket word.
pub(crate) const WRITING: u32 = 1 << 29;
/// The index bits of a link.
pub(crate) const IDX_MASK: u32 = WRITING - 1;
/// The bits of a link that are not its index (`MARK`, `CLAIM`, `WRITING`): an unlink that
/// redirects a link keeps them.
pub(crate) const LINK_BITS: u32 = !IDX_MASK;
/// End of a chain.
pub(crate) const NIL: u32 = IDX_MASK;
/// A bucket of a growing table that has not been split off its old bucket yet.
pub(crate) const UNINIT: u32 = IDX_MASK - 1;
/// Number of indices an arena can hand out (all below [`UNINIT`]).
pub(crate) const MAX_NODES: u32 = UNINIT;

/// Deadline of an entry that never expires.
pub(crate) const NEVER: u64 = u64::MAX;

/// How many times an in-place writer spins on a node another writer holds before it falls
/// back to publishing a new node (under loom, few: each spin is a branch of the model, and
/// the fallback is a path the models should reach).
const WRITE_SPINS: u32 = if cfg!(loom) { 2 } else { 64 };
/// Spin hints between two looks at a node another writer holds (under loom, one: a yield).
const WRITE_BACKOFF: u32 = if cfg!(loom) { 1 } else { 32 };

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

/// Whether a value of type `V` is kept as a *value word*: a plain number of 8 bytes (`u64`,
/// `i64`, `usize`, `isize`, `f64`), which every access reads and writes with atomic operations
/// on the payload's value field, so that an insert of a live key may overwrite it in place
/// (`Shard::insert_in_place`) instead of publishing a new node. Such a value has no padding, no
/// pointer and no drop, and every bit pattern is a valid value: a reader that loads the word
/// while it is overwritten gets one value or the other, never a torn one, and an overwritten
/// value needs no retirement.
#[inline(always)]
pub(crate) fn word_value<V: 'static>() -> bool {
    use std::any::TypeId;
    use std::mem::{align_of, size_of};
    if size_of::<V>() != 8 || align_of::<V>() < align_of::<AtomicU64>() {
        return false;
    }
    let t = TypeId::of::<V>();
    t == TypeId::of::<u64>()
        || t == TypeId::of::<i64>()
        || t == TypeId::of::<usize>()
        || t == TypeId::of::<isize>()
        || t == TypeId::of::<f64>()
}

/// Waits until `link` (a node's `next`, last seen as `cur`) is not held ([`WRITING`]), and
/// returns its value then. Spins a while, then yields between looks: a holder preempted in the
/// middle of its few stores is waited for by the scheduler's clock, not by a spinning core.
#[inline]
pub(crate) fn wait_link_unheld(link: &AtomicU32, mut cur: u32) -> u32 {
    let mut spins = 0u32;
    while cur & WRITING != 0 {
        if spins < UNHELD_SPINS {
            spins += 1;
            crate::sync::spin_hint();
        } else {
            crate::sync::yield_now();
        }
        // Acquire: pairs with the holder's Release store that clears the bit, so that the
        // waiter sees what it wrote (a marker then reads the value the write left).
        cur = link.load(Ordering::Acquire);
    }
    cur
}

/// Spins of [`wait_link_unheld`] before it yields.
const UNHELD_SPINS: u32 = if cfg!(loom) { 0 } else { 256 };

/// The bits of `v` if `V` is a [`word_value`] type (0 otherwise): what a remover that
/// decided on `v` compares the value word with when it marks (see `Node::hold`).
#[inline(always)]
pub(crate) fn bits_of<V: 'static>(v: &V) -> u64 {
    if word_value::<V>() {
        // SAFETY: a `word_value` type is 8 bytes of plain bits.
        unsafe { std::mem::transmute_copy::<V, u64>(v) }
    } else {
        0
    }
}

/// One entry. See the module documentation for who may touch which field when.
#[repr(C)]
pub(crate) struct Node<K, V> {
    pub(crate) deadline: AtomicU64,
    pub(crate) next: AtomicU32,
    tag: UnsafeCell<u16>,
    pub(crate) freq: AtomicU8,
    state: AtomicU8,
    payload: UnsafeCell<MaybeUninit<(K, V)>>,
    /// Under loom, the value word of a [`word_value`] type (loom cannot treat the payload's
    /// field as an atomic); otherwise the word is the payload's value field itself.
    #[cfg(loom)]
    word: AtomicU64,
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
            #[cfg(loom)]
            word: AtomicU64::new(0),
        }
    }

    /// Fills a private node (rule 1).
    ///
    /// # Safety
    /// The caller owns the slot: it was just popped from the arena, nothing else references
    /// it, and its payload is not initialised.
    pub(crate) unsafe fn init(&self, tag: u16, deadline: u64, key: K, value: V)
    where
        V: 'static,
    {
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
        #[cfg(loom)]
        if word_value::<V>() {
            // Relaxed: published with the node. (The bits are read back by `with_payload`.)
            // SAFETY: a `word_value` type is 8 bytes of plain bits, with no padding.
            self.word.store(
                unsafe { std::mem::transmute_copy::<V, u64>(&value) },
                Ordering::Relaxed,
            );
        }
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
    pub(crate) unsafe fn swap_value(&self, value: V) -> V
    where
        V: 'static,
    {
        #[cfg(loom)]
        if word_value::<V>() {
            // Relaxed: the node is private. As in `init`.
            // SAFETY: as in `init`.
            self.word.store(
                unsafe { std::mem::transmute_copy::<V, u64>(&value) },
                Ordering::Relaxed,
            );
        }
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
    ///
    /// For a [`word_value`] type, `f` is given a copy of the value word, loaded atomically (an
    /// in-place write may be overwriting it); otherwise the value itself, which is immutable
    /// while the node is reachable.
    #[inline]
    pub(crate) unsafe fn with_payload<R>(&self, f: impl FnOnce(&K, &V) -> R) -> R
    where
        V: 'static,
    {
        if word_value::<V>() {
            // SAFETY: per this function's contract.
            let bits = unsafe { self.load_word() };
            // SAFETY: a `word_value` type is 8 bytes and every bit pattern is one of its
            // values; the bits are those of a value stored in this node (`init`, `write_word`).
            let v: V = unsafe { std::mem::transmute_copy(&bits) };
            // SAFETY: per this function's contract.
            return unsafe { self.with_key(|k| f(k, &v)) };
        }
        self.payload.with(|p| {
            let pair = p.cast::<(K, V)>();
            // SAFETY: initialised and, not being a value word, not mutated while reachable,
            // per this function's contract. The fields are borrowed apart, never the pair.
            let (k, v) = unsafe {
                (
                    &*std::ptr::addr_of!((*pair).0),
                    &*std::ptr::addr_of!((*pair).1),
                )
            };
            f(k, v)
        })
    }

    /// Runs `f` on the key (immutable while the node is reachable); never touches the value,
    /// which an in-place write may be overwriting.
    ///
    /// # Safety
    /// As for [`with_payload`](Self::with_payload).
    #[inline]
    pub(crate) unsafe fn with_key<R>(&self, f: impl FnOnce(&K) -> R) -> R {
        self.payload.with(|p| {
            let pair = p.cast::<(K, V)>();
            // SAFETY: initialised and not mutated while reachable, per this function's contract;
            // only the key's field is borrowed.
            f(unsafe { &*std::ptr::addr_of!((*pair).0) })
        })
    }

    /// The value word's atomic: the payload's value field (under loom, a field of its own).
    ///
    /// # Safety
    /// `V` is a [`word_value`] type and the payload is initialised (as for `with_payload`).
    #[cfg(not(loom))]
    #[inline(always)]
    unsafe fn word(&self) -> &AtomicU64 {
        // Every access to the value field while the node is reachable is atomic (through
        // here), and the non-atomic ones (`init`, `drop_payload`) are ordered with those by the
        // node's publication and retirement (rules 2 and 5).
        self.payload.with(|p| {
            let pair = p.cast::<(K, V)>().cast_mut();
            // SAFETY: an 8-byte field aligned for `AtomicU64` (`word_value`), in the cell.
            unsafe { AtomicU64::from_ptr(std::ptr::addr_of_mut!((*pair).1).cast::<u64>()) }
        })
    }

    #[cfg(loom)]
    #[inline(always)]
    unsafe fn word(&self) -> &AtomicU64 {
        &self.word
    }

    /// Loads the value word.
    ///
    /// # Safety
    /// As for [`word`](Self::word).
    #[inline(always)]
    unsafe fn load_word(&self) -> u64 {
        // Relaxed: the word is the value, a plain number that publishes nothing; a reader that
        // must not see an older value than a deadline it read orders that itself (the
        // deadline's Acquire load in `Shard::alive` pairs with `write_word`'s caller's
        // Release store of the deadline, made after the word).
        // SAFETY: per this function's contract.
        unsafe { self.word() }.load(Ordering::Relaxed)
    }

    /// Overwrites the value word, returning the old one.
    ///
    /// # Safety
    /// As for [`word`](Self::word), and the caller holds [`WRITING`] (see
    /// [`begin_write`](Self::begin_write)).
    #[inline]
    pub(crate) unsafe fn write_word(&self, bits: u64) -> u64 {
        debug_assert!(self.next.load(Ordering::Relaxed) & WRITING != 0);
        // SAFETY: per this function's contract.
        let word = unsafe { self.word() };
        // Relaxed: see `load_word`; the caller's release of `WRITING` (Release) publishes it to
        // markers, and its deadline store to readers. A load and a store, not a swap: only the
        // holder of `WRITING` writes the word of a published node, so nothing comes between.
        let old = word.load(Ordering::Relaxed);
        word.store(bits, Ordering::Relaxed);
        old
    }

    /// Takes the node for an in-place write: sets [`WRITING`] if the node is not marked,
    /// waiting a few spins for another writer holding it. Returns false (the caller then
    /// publishes a new node instead) if the node is marked, or still held after the spins.
    #[inline]
    pub(crate) fn begin_write(&self, hint: u32) -> bool {
        // The CAS is tried first with the caller's `hint` (the link it loaded on its way to
        // the node, usually still current), so that an uncontended hold takes the node's line
        // once, for writing.
        let mut cur = hint & !WRITING;
        let mut spins = 0;
        loop {
            if cur & MARK != 0 {
                return false;
            }
            if cur & WRITING != 0 {
                // Held by another writer, for a few stores: back off before looking again, so
                // that its stores, and its next write if it has one, find the line still in
                // its core instead of taking it back from us each time (a hot key written
                // from two threads: 0.6x quick_cache with one spin between looks, 1.5x with
                // this backoff; `docs/perf-log.md`, 2026-12-07, fourteenth session).
                spins += 1;
                if spins > WRITE_SPINS {
                    return false;
                }
                for _ in 0..WRITE_BACKOFF {
                    crate::sync::spin_hint();
                }
                // Relaxed: a hint for the CAS, which validates it.
                cur = self.next.load(Ordering::Relaxed);
                continue;
            }
            // Acquire: orders this write after the previous holder's (its release of the bit),
            // so that the deadline and word it left are the ones this writer reads and replaces.
            match self.next.compare_exchange_weak(
                cur,
                cur | WRITING,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Holds the node as an in-place writer does ([`begin_write`](Self::begin_write)), for a
    /// remover that must check the value and mark it in one step (a compute, `retain`, the
    /// expiry), waiting for other writers as long as they hold it (each for a few stores).
    /// Returns false, holding nothing, if the node is marked.
    pub(crate) fn hold(&self) -> bool {
        loop {
            // Relaxed: a hint for `begin_write`'s CAS.
            if self.begin_write(self.next.load(Ordering::Relaxed)) {
                return true;
            }
            if self.is_marked() {
                return false;
            }
            // Writers held the node through all the spins; each holds it for a few stores.
            crate::sync::yield_now();
        }
    }

    /// The value word's bits now (for a check by a holder of [`WRITING`]).
    ///
    /// # Safety
    /// As for [`with_payload`](Self::with_payload), and `V` is a [`word_value`] type.
    pub(crate) unsafe fn word_bits(&self) -> u64 {
        // SAFETY: per this function's contract.
        unsafe { self.load_word() }
    }

    /// Releases [`WRITING`] after an in-place write (or a check that decided against one).
    #[inline]
    pub(crate) fn end_write(&self) {
        // Relaxed load: while we hold the bit nobody else writes `next` (see `WRITING`).
        let cur = self.next.load(Ordering::Relaxed);
        debug_assert!(cur & WRITING != 0 && cur & MARK == 0);
        // Release: publishes the write (word, deadline) to the next holder (its Acquire CAS)
        // and to those that waited for the bit to clear (`wait_unheld`'s Acquire load).
        self.release_held(cur, cur & !WRITING);
    }

    /// The holder's store of `next` (from `cur`, which it read, to `new`). With debug
    /// assertions, a CAS that checks that nobody else wrote `next` while it was held.
    #[inline(always)]
    fn release_held(&self, cur: u32, new: u32) {
        if cfg!(debug_assertions) {
            // Release: as the store below.
            let swapped =
                self.next
                    .compare_exchange(cur, new, Ordering::Release, Ordering::Relaxed);
            assert_eq!(
                swapped,
                Ok(cur),
                "a held node's link was written by another thread"
            );
        } else {
            // Release: see the callers.
            self.next.store(new, Ordering::Release);
        }
    }

    /// Marks the node removed (as [`mark`](Self::mark)) while the caller holds [`WRITING`],
    /// releasing it in the same store; returns whether the node was claimed. (Nobody else
    /// marks a held node, so this always marks it.)
    pub(crate) fn mark_held(&self) -> Option<bool> {
        // Relaxed load: as in `end_write`.
        let cur = self.next.load(Ordering::Relaxed);
        debug_assert!(cur & WRITING != 0 && cur & MARK == 0);
        // Release: as `mark`'s CAS (the remover's earlier writes, to whoever sees the mark),
        // and as `end_write`'s. (The Acquire half of `mark`'s CAS was `begin_write`'s.)
        self.release_held(cur, (cur | MARK) & !WRITING);
        Some(cur & CLAIM != 0)
    }

    /// Waits until the node is not held ([`WRITING`]), and returns its `next` then: for
    /// whoever would write `next` (a marker, a claimer, the maintainer relinking), which may
    /// only do so with a CAS from an unheld value. A holder runs no user code and holds the
    /// node for a few stores.
    #[inline]
    pub(crate) fn wait_unheld(&self, cur: u32) -> u32 {
        wait_link_unheld(&self.next, cur)
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
            // A held node is being written in place: the write comes first, and this marker
            // then reads the value it left (so a write is never lost to a removal).
            cur = self.wait_unheld(cur);
            if cur & MARK != 0 {
                return None;
            }
            // AcqRel: Release publishes the remover's earlier writes to whoever sees the mark
            // (readers, the maintainer); Acquire orders the remover after the last link update
            // (and after the claim, if any, and the last in-place write).
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

    /// The maintainer's expiry of a node the wheel found due: marks it if its deadline is at
    /// or before `now`, checked while holding [`WRITING`], so that an in-place write cannot
    /// renew the entry between the check and the mark (the write would be lost to an expiry
    /// it came after). `Err(())` if the deadline is ahead (the entry was renewed: file it
    /// again), `Ok(None)` if another marker came first, else `Ok(Some(claimed))`.
    pub(crate) fn mark_if_due(&self, now: u64) -> Result<Option<bool>, ()> {
        if !self.hold() {
            return Ok(None);
        }
        // Relaxed: writers change the deadline only while holding `WRITING`, and our Acquire
        // in `begin_write` ordered us after the last of them.
        if self.deadline.load(Ordering::Relaxed) > now {
            self.end_write();
            return Err(());
        }
        Ok(self.mark_held())
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
            cur = self.wait_unheld(cur);
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

    /// Records an in-place write in the CLOCK byte: as a replacement by a new node does (the
    /// maintainer's `transfer`), the counter is kept and, for a sampled key, the stamp made
    /// current (the write is a request of the key).
    #[inline]
    pub(crate) fn written(&self, sample: Option<&Recent>) {
        if let Some(recent) = sample {
            // Relaxed: as in `touch`.
            let byte = self.freq.load(Ordering::Relaxed);
            if let Some(next) = recent.hit(byte, byte & COUNTER_MASK) {
                self.freq.store(next, Ordering::Relaxed);
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
