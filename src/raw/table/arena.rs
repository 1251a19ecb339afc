//! Node memory of one shard: slots addressed by `u32` index.
//!
//! Why not `Box` per node: an allocator rounds a 32-byte node up to a 48-byte chunk (glibc),
//! and pointer links are 8 bytes where indices are 4. The arena stores nodes back to back in
//! chunks of geometrically growing size (`F`, `2F`, `4F`, …, where the first chunk `F` is
//! sized for the shard's expected entries and allocated up front), so:
//! - the directory of chunks never moves or grows (at most [`NCHUNKS`] pointers, allocated
//!   once), and mapping an index to its node is a leading-zeros count, a shift and one load of
//!   a directory entry that stays in cache;
//! - memory is committed as it is used: a chunk's untouched pages are never resident.
//!
//! Free slots form a Treiber stack threaded through the nodes' `next` fields; the head carries
//! a version in its upper 32 bits so that a pop cannot succeed on a stale head (ABA).
//! Slots come back to the stack only through [`Arena::release`], which runs from the function
//! the maintainer retired (`retire.rs`): by then no thread holds a reference to the node (see
//! the ground rules in [`node`](super::node)).
//!
//! The arena never shrinks while the cache lives: a shard's node memory is its peak number of
//! simultaneous entries (live entries plus those awaiting their grace period), and slots are
//! reused.

use std::alloc::{Layout, handle_alloc_error};
use std::ptr;

use super::node::{IDX_MASK, Idx, LIFE_LIVE, MAX_NODES, NIL, Node};
use super::pages;
use super::prefetch::prefetch;
use crate::sync::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering, avoid_stripe, preferred_stripe,
};
use crossbeam_utils::CachePadded;

/// log2 of the smallest first chunk.
#[cfg(not(loom))]
const MIN_SHIFT: u32 = 5;
#[cfg(loom)]
const MIN_SHIFT: u32 = 1;
/// Enough chunks to address [`MAX_NODES`] slots with the smallest first chunk: chunk `c` holds
/// `first << c` slots.
pub(crate) const NCHUNKS: usize = (32 - MIN_SHIFT) as usize;

/// Alignment of a chunk: a cache line, so that a node whose size divides 64 never straddles
/// two lines (a 32-byte node at the allocator's usual 16-byte offset would straddle every
/// other time, and a lookup would then miss on two lines).
const CHUNK_ALIGN: usize = 64;

/// The node slots of one shard.
pub(crate) struct Arena<K, V> {
    /// Chunk 0, allocated up front and sized for the shard's expected entries, so that most
    /// lookups find their node at `first + idx` without loading a directory entry.
    first: *mut Node<K, V>,
    /// log2 of chunk 0's length.
    first_shift: u32,
    /// Chunk 0's length (`1 << first_shift`, kept so that `node` needs no shift).
    first_len: u32,
    /// Whether chunks of a huge page or more are advised onto huge pages (see `pages`).
    huge: bool,
    chunks: [AtomicPtr<Node<K, V>>; NCHUNKS],
    /// Slots `0..fresh` have been handed out at least once (and their headers initialised).
    fresh: AtomicU32,
    /// Free stack heads, each `(version << 32) | idx` (see [`FREE_STACKS`]).
    free: [CachePadded<AtomicU64>; FREE_STACKS],
    /// Which free stack the next batch goes to (round robin).
    next_stack: AtomicU32,
}

/// Free stacks per arena. A thread pops from the stack it prefers first (`preferred_stripe`,
/// which moves on when a CAS there fails: another thread pops from it too), then from the
/// others, and batches are pushed to the stacks in turn, so two threads writing to one shard
/// each take slots from their own cache line: with one stack, its CAS was a fifth of a hot
/// key's replacement from two threads (`perf`), and two stacks took that workload from
/// 0.15-0.17x to 0.26-0.30x quick_cache (docs/perf-log.md, 2026-12-06). Each stack is a
/// versioned Treiber stack on its own, and a slot is on at most one of them.
const FREE_STACKS: usize = 2;

// SAFETY: the arena hands out shared references to nodes to any thread; a node holds a K and a
// V that readers on any thread access by reference and that the thread running the deferred
// release drops, so both must be Send and Sync. `first` is an owned allocation like the others.
unsafe impl<K: Send + Sync, V: Send + Sync> Send for Arena<K, V> {}
// SAFETY: as above.
unsafe impl<K: Send + Sync, V: Send + Sync> Sync for Arena<K, V> {}

impl<K, V> Arena<K, V> {
    /// An arena whose first chunk holds at least `expected` slots; with `huge`, its chunks of
    /// a huge page or more are advised onto huge pages. `None` if the allocator refused the
    /// first chunk.
    pub(crate) fn new(expected: usize, huge: bool) -> Option<Self> {
        // A quarter of slack: shards are not all equally loaded, and a slot stays taken for a
        // grace period after its entry is removed.
        let slack = expected.saturating_add(expected / 4);
        let first_shift = slack
            .next_power_of_two()
            .trailing_zeros()
            .clamp(MIN_SHIFT, 30);
        let mut arena = Self {
            first: ptr::null_mut(),
            first_shift,
            first_len: 1 << first_shift,
            huge,
            chunks: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            fresh: AtomicU32::new(0),
            free: std::array::from_fn(|_| CachePadded::new(AtomicU64::new(NIL as u64))),
            next_stack: AtomicU32::new(0),
        };
        arena.first = arena.ensure_chunk(0)?;
        Some(arena)
    }

    /// Slots in the first chunk (sized for the shard's expected entries).
    pub(crate) fn first_len(&self) -> usize {
        self.first_len as usize
    }

    /// Whether this arena's large chunks are advised onto huge pages (tables follow it).
    pub(crate) fn huge(&self) -> bool {
        self.huge
    }

    /// Chunk number and offset of slot `idx`.
    #[inline]
    fn locate(&self, idx: Idx) -> (usize, usize) {
        let n = idx as u64 + (1 << self.first_shift);
        let chunk = 63 - n.leading_zeros() - self.first_shift;
        let offset = n - ((1 << self.first_shift) << chunk);
        (chunk as usize, offset as usize)
    }

    fn chunk_len(&self, chunk: usize) -> usize {
        (1usize << self.first_shift) << chunk
    }

    fn chunk_layout(&self, chunk: usize) -> Layout {
        let layout = Layout::array::<Node<K, V>>(self.chunk_len(chunk))
            .ok()
            .and_then(|array| {
                pages::layout(array.size(), array.align().max(CHUNK_ALIGN), self.huge)
            });
        match layout {
            Some(layout) => layout,
            // Unreachable for any node size that fits in memory: chunk sizes are bounded by
            // MAX_NODES slots. Treat like an allocation failure rather than panicking.
            None => handle_alloc_error(Layout::new::<Node<K, V>>()),
        }
    }

    /// The node in slot `idx`.
    ///
    /// `idx` must have been handed out by [`alloc`](Self::alloc) of this arena (every index
    /// found in a link or an event was); this is checked in debug builds.
    #[inline]
    pub(crate) fn node(&self, idx: Idx) -> &Node<K, V> {
        self.node_at::<false>(idx)
    }

    /// [`node`](Self::node), reaching the later chunks inline (`INLINE`) or through a cold
    /// call. Lookups inline it: a cache that grew without an `initial_capacity` finds most of
    /// its nodes beyond chunk 0 (a read of such a cache cost about 200 instructions through the
    /// call against 144 in a pre-sized one, and 166 inlined: callgrind inside
    /// `RawCache::read`, `examples/write_path.rs get_hit_grown`). An insert's own chain walk keeps the call: inlined there, it cost a
    /// replacement in chunk 0 about 60 instructions of register pressure.
    #[inline(always)]
    pub(crate) fn node_at<const INLINE: bool>(&self, idx: Idx) -> &Node<K, V> {
        debug_assert!(
            idx < self.fresh.load(Ordering::Relaxed),
            "index {idx} never allocated"
        );
        if idx < self.first_len {
            // SAFETY: chunk 0 is allocated at construction and holds `first_len` slots;
            // `idx` was handed out by `alloc`, which initialised its header.
            return unsafe { &*self.first.add(idx as usize) };
        }
        if INLINE {
            self.node_in_chunk(idx)
        } else {
            self.node_slow(idx)
        }
    }

    #[cold]
    fn node_slow(&self, idx: Idx) -> &Node<K, V> {
        self.node_in_chunk(idx)
    }

    /// The node of `idx`, in any chunk.
    #[inline(always)]
    fn node_in_chunk(&self, idx: Idx) -> &Node<K, V> {
        let (chunk, offset) = self.locate(idx);
        // Acquire: pairs with the Release CAS that installed the chunk. (The link or event
        // through which the caller learned `idx` already orders this load after the install;
        // Acquire makes that explicit and costs nothing on x86.)
        let base = self.chunks[chunk].load(Ordering::Acquire);
        debug_assert!(!base.is_null());
        // SAFETY: `idx` was handed out by `alloc`, which installed its chunk (never freed before
        // the arena) and initialised the header of slot `offset` before returning the index;
        // `offset < first << chunk` by construction of `locate`.
        unsafe { &*base.add(offset) }
    }

    /// Takes a free slot: a recycled one if any (from this thread's free stack first), else a
    /// never-used one. The slot's header is initialised and its payload is vacant. `None` when
    /// the shard holds [`MAX_NODES`] slots, or needs a new chunk that the allocator refused.
    #[inline]
    pub(crate) fn alloc(&self) -> Option<Idx> {
        let home = preferred_stripe() % FREE_STACKS;
        for k in 0..FREE_STACKS {
            let stack = (home + k) % FREE_STACKS;
            let (idx, contended) = self.pop(&self.free[stack]);
            if contended && k == 0 {
                // Another thread pops from this thread's stack: one of them moves on.
                avoid_stripe(stack);
            }
            if idx.is_some() {
                return idx;
            }
        }
        self.alloc_fresh()
    }

    /// Pops a slot from the free stack `free`, if it holds one; and whether a CAS failed on
    /// the way (another thread changed the stack meanwhile).
    #[inline]
    fn pop(&self, free: &AtomicU64) -> (Option<Idx>, bool) {
        let mut contended = false;
        // Acquire: pairs with the Release CAS in `release`, so that the previous occupant's
        // payload drop and the free-list link are visible before the slot is reused.
        let mut head = free.load(Ordering::Acquire);
        loop {
            let idx = head as u32;
            if idx == NIL {
                return (None, contended);
            }
            // Relaxed: the slot is on this free stack, so its `next` holds the stack link,
            // written before the push's Release CAS we acquired. If another thread popped the
            // slot in the meantime (to use it, or to push it onto another stack later), the
            // value may be anything, but then the version of this stack changed and the CAS
            // below fails.
            let next = self.node(idx).next.load(Ordering::Relaxed) & IDX_MASK;
            let new = (((head >> 32) + 1) << 32) | next as u64;
            // Acquire on success: as for the load above. Acquire on failure: the new head is
            // about to be used the same way.
            match free.compare_exchange_weak(head, new, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => {
                    // The next allocation reads the new top's link: start its load now, so
                    // that the miss overlaps this insert's own work instead of the next one's.
                    if next != NIL {
                        prefetch(self.node(next));
                    }
                    return (Some(idx), contended);
                }
                Err(actual) => {
                    contended = true;
                    head = actual;
                }
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn alloc_fresh(&self) -> Option<Idx> {
        // Relaxed: the counter only hands out distinct indices; the slot's memory is made
        // visible to other threads by the links through which they later reach it.
        let mut fresh = self.fresh.load(Ordering::Relaxed);
        loop {
            if fresh >= MAX_NODES {
                return None;
            }
            // The slot's chunk exists before the slot is handed out: an index below `fresh`
            // always has its memory (`drop` and `node` rely on it), even when an allocation
            // fails. (Chunk 0 exists from the start.)
            if fresh >= self.first_len {
                let (chunk, _) = self.locate(fresh);
                self.ensure_chunk(chunk)?;
            }
            match self.fresh.compare_exchange_weak(
                fresh,
                fresh + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => fresh = actual,
            }
        }
        let idx = fresh;
        let slot = if idx < self.first_len {
            // SAFETY: chunk 0 holds `first_len` slots and lives as long as the arena.
            unsafe { self.first.add(idx as usize) }
        } else {
            let (chunk, offset) = self.locate(idx);
            // Acquire: pairs with the Release CAS that installed the chunk (ensured above, by
            // us or by the thread whose chunk won; chunks are never freed before the arena).
            let base = self.chunks[chunk].load(Ordering::Acquire);
            debug_assert!(!base.is_null());
            // SAFETY: `offset` is inside the chunk (by construction of `locate`).
            unsafe { base.add(offset) }
        };
        // SAFETY: `slot` is inside its chunk (above); slot `idx` was never handed out before (the
        // counter is monotonic), so no one else accesses this memory, and it holds no value
        // to drop.
        unsafe { slot.write(Node::vacant()) };
        Some(idx)
    }

    /// Chunk `chunk`, allocated and installed if it is not yet; `None` if the allocator
    /// refused the memory.
    fn ensure_chunk(&self, chunk: usize) -> Option<*mut Node<K, V>> {
        // Acquire: pairs with the Release CAS below (by whichever thread installed the chunk).
        let cur = self.chunks[chunk].load(Ordering::Acquire);
        if !cur.is_null() {
            return Some(cur);
        }
        let layout = self.chunk_layout(chunk);
        // SAFETY: the layout has a non-zero size (a node has a 16-byte header); freed with it,
        // below or in `drop`.
        let fresh = unsafe { pages::alloc(layout, false) } as *mut Node<K, V>;
        if fresh.is_null() {
            return None;
        }
        pages::advise(fresh.cast(), layout);
        // Release on success: publishes the allocation to every thread that later loads the
        // pointer. Acquire on failure: we will use the winner's chunk.
        match self.chunks[chunk].compare_exchange(
            ptr::null_mut(),
            fresh,
            Ordering::Release,
            Ordering::Acquire,
        ) {
            Ok(_) => Some(fresh),
            Err(winner) => {
                // SAFETY: `fresh` was allocated above with this layout and never shared.
                unsafe { pages::dealloc(fresh as *mut u8, layout) };
                Some(winner)
            }
        }
    }

    /// Drops the payload of slot `idx` and returns the slot to this thread's free stack.
    ///
    /// # Safety
    /// The slot's payload is initialised and no other thread can reach the node (rule 5 of
    /// [`node`](super::node)): the caller runs from the retired function of the node
    /// (`retire.rs`, after both grace periods), or has exclusive access to the shard.
    pub(crate) unsafe fn release(&self, idx: Idx) {
        let node = self.node(idx);
        // SAFETY: initialised and unreachable, per this function's contract.
        unsafe { node.drop_payload() };
        let free = &self.free[preferred_stripe() % FREE_STACKS];
        // Relaxed: the Release CAS below publishes this load's consequences.
        let mut head = free.load(Ordering::Relaxed);
        loop {
            // Relaxed: published by the Release CAS.
            node.next.store(head as u32, Ordering::Relaxed);
            let new = (((head >> 32) + 1) << 32) | idx as u64;
            // Release: pairs with the Acquire in `alloc`; the payload drop and the link above
            // happen before the slot is reused.
            match free.compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }

    /// [`release`](Self::release) for a batch of slots, returned to a free stack (each in
    /// turn) with one compare-and-swap: the slots are chained through their `next` links in
    /// batch order and the chain is pushed whole.
    ///
    /// # Safety
    /// As for [`release`](Self::release), for every slot of `batch` (each listed once).
    pub(crate) unsafe fn release_all(&self, batch: &[Idx]) {
        let (Some(&first), Some(&last)) = (batch.first(), batch.last()) else {
            return;
        };
        for pair in batch.windows(2) {
            let node = self.node(pair[0]);
            // SAFETY: initialised and unreachable, per this function's contract.
            unsafe { node.drop_payload() };
            // Relaxed: published by the Release CAS below.
            node.next.store(pair[1], Ordering::Relaxed);
        }
        let tail = self.node(last);
        // SAFETY: as above.
        unsafe { tail.drop_payload() };
        // Relaxed: only spreads batches over the stacks.
        let turn = self.next_stack.fetch_add(1, Ordering::Relaxed) as usize;
        let free = &self.free[turn % FREE_STACKS];
        // Relaxed: the Release CAS below publishes this load's consequences.
        let mut head = free.load(Ordering::Relaxed);
        loop {
            // Relaxed: published by the Release CAS.
            tail.next.store(head as u32, Ordering::Relaxed);
            let new = (((head >> 32) + 1) << 32) | first as u64;
            // Release: pairs with the Acquire in `alloc`, as in `release`.
            match free.compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }

    /// Number of slots ever handed out (`0..allocated()` are initialised headers).
    pub(crate) fn allocated(&self) -> u32 {
        self.fresh.load(Ordering::Acquire)
    }

    /// Drops the payload of every slot still holding one (`life == LIVE`).
    ///
    /// Called when the shard is dropped: retired slots are `RETIRED` and dropped by their
    /// retired functions, free slots hold nothing.
    ///
    /// # Safety
    /// No other thread can reach any `LIVE` node: the last cache handle is being dropped, so
    /// no operation is in flight, and deferred functions only touch `RETIRED` slots.
    pub(crate) unsafe fn drop_live_payloads(&self) {
        for idx in 0..self.allocated() {
            let node = self.node(idx);
            // SAFETY: exclusive access to the shard (this function's contract).
            if node.life() == LIFE_LIVE {
                // SAFETY: a LIVE slot's payload is initialised; no other thread can reach it,
                // per this function's contract.
                unsafe { node.drop_payload() };
            }
        }
    }
}

/// A per-node `u64` that most caches never need (a per-entry TTL, a hard expiry cap), stored
/// beside the arena in chunks of the same geometry, allocated only when a value is first
/// written into the chunk. A chunk starts zeroed, and 0 is each column's "default" value, so
/// a node whose chunk is absent reads as 0 without any allocation.
pub(crate) struct Column {
    first_shift: u32,
    /// Whether any chunk was ever installed: most caches never write a column, and then
    /// `is_allocated` is one load.
    any: AtomicBool,
    chunks: [AtomicPtr<AtomicU64>; NCHUNKS],
}

impl Column {
    pub(crate) fn new<K, V>(arena: &Arena<K, V>) -> Self {
        Self {
            first_shift: arena.first_shift,
            any: AtomicBool::new(false),
            chunks: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        }
    }

    fn locate(&self, idx: Idx) -> (usize, usize) {
        let n = idx as u64 + (1 << self.first_shift);
        let chunk = 63 - n.leading_zeros() - self.first_shift;
        let offset = n - ((1 << self.first_shift) << chunk);
        (chunk as usize, offset as usize)
    }

    fn layout(&self, chunk: usize) -> Layout {
        match Layout::array::<AtomicU64>((1usize << self.first_shift) << chunk) {
            Ok(layout) => layout,
            Err(_) => handle_alloc_error(Layout::new::<AtomicU64>()),
        }
    }

    /// The value for node `idx` (0 if never written in its chunk).
    #[inline]
    pub(crate) fn get(&self, idx: Idx) -> u64 {
        let (chunk, offset) = self.locate(idx);
        // Acquire: pairs with the Release CAS that installed the chunk.
        let base = self.chunks[chunk].load(Ordering::Acquire);
        if base.is_null() {
            return 0;
        }
        // SAFETY: an installed chunk holds `first << chunk` initialised atomics and lives as
        // long as the column; `offset` is within it by construction of `locate`.
        let cell = unsafe { &*base.add(offset) };
        // Relaxed: the value's writer published the node (or the value) through the orderings
        // of the operation that stored it (see the callers).
        cell.load(Ordering::Relaxed)
    }

    /// Whether node `idx`'s chunk exists (so that a stale value could be in it).
    #[inline]
    pub(crate) fn is_allocated(&self, idx: Idx) -> bool {
        // Relaxed: a stale value for `idx` was written after its chunk was installed (and
        // `any` set before that), by a thread whose writes reached us through the orderings
        // that handed us the slot; coherence then shows us `any` set.
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let (chunk, _) = self.locate(idx);
        // Acquire: as in `get`.
        !self.chunks[chunk].load(Ordering::Acquire).is_null()
    }

    /// Stores the value for node `idx`, allocating its chunk if needed.
    pub(crate) fn set(&self, idx: Idx, value: u64) {
        let (chunk, offset) = self.locate(idx);
        // Acquire: as in `get`.
        let mut base = self.chunks[chunk].load(Ordering::Acquire);
        if base.is_null() {
            base = self.install(chunk);
        }
        // SAFETY: as in `get`.
        let cell = unsafe { &*base.add(offset) };
        // Relaxed: see `get`.
        cell.store(value, Ordering::Relaxed);
    }

    fn install(&self, chunk: usize) -> *mut AtomicU64 {
        let layout = self.layout(chunk);
        let len = (1usize << self.first_shift) << chunk;
        #[cfg(not(loom))]
        // SAFETY: non-zero size; freed in `drop` with this layout. All-zero bytes are a valid
        // `AtomicU64` holding 0, so zeroed memory is initialised (and its pages are committed
        // only when written).
        let fresh = unsafe { pages::alloc(layout, true) } as *mut AtomicU64;
        #[cfg(loom)]
        // SAFETY: non-zero size; every element is initialised below (loom's atomics are objects
        // that must be constructed).
        let fresh = unsafe { pages::alloc(layout, false) } as *mut AtomicU64;
        if fresh.is_null() {
            handle_alloc_error(layout);
        }
        #[cfg(loom)]
        for i in 0..len {
            // SAFETY: inside the fresh allocation.
            unsafe { fresh.add(i).write(AtomicU64::new(0)) };
        }
        let _ = len;
        // Relaxed: see `is_allocated`; set before the chunk is published.
        self.any.store(true, Ordering::Relaxed);
        // Release on success: publishes the zeroed chunk. Acquire on failure: we use the winner's.
        match self.chunks[chunk].compare_exchange(
            ptr::null_mut(),
            fresh,
            Ordering::Release,
            Ordering::Acquire,
        ) {
            Ok(_) => fresh,
            Err(winner) => {
                // SAFETY: allocated above with this layout and never shared.
                unsafe { pages::dealloc(fresh as *mut u8, layout) };
                winner
            }
        }
    }
}

impl Drop for Column {
    fn drop(&mut self) {
        for chunk in 0..NCHUNKS {
            // Relaxed: `&mut self`, nothing runs concurrently.
            let base = self.chunks[chunk].load(Ordering::Relaxed);
            if !base.is_null() {
                let len = (1usize << self.first_shift) << chunk;
                for i in 0..len {
                    // SAFETY: initialised (see `install`); no other access remains.
                    unsafe { ptr::drop_in_place(base.add(i)) };
                }
                // SAFETY: allocated in `install` with this layout, freed once (`&mut self`).
                unsafe { pages::dealloc(base as *mut u8, self.layout(chunk)) };
            }
        }
    }
}

impl<K, V> Drop for Arena<K, V> {
    fn drop(&mut self) {
        // Relaxed: `&mut self`, nothing runs concurrently (loom's atomics have no `get_mut`).
        let allocated = self.fresh.load(Ordering::Relaxed);
        for chunk in 0..NCHUNKS {
            // Relaxed: as above.
            let base = self.chunks[chunk].load(Ordering::Relaxed);
            if base.is_null() {
                continue;
            }
            let len = self.chunk_len(chunk);
            let start = (len - (1 << self.first_shift)) as u64;
            let used = (allocated as u64).saturating_sub(start).min(len as u64) as usize;
            for offset in 0..used {
                // SAFETY: slots below `allocated` have initialised headers, in this chunk.
                let node = unsafe { &*base.add(offset) };
                // The chunk goes back to the allocator whole (ASan builds: see `Node::poison_payload`).
                node.unpoison_payload();
                // SAFETY: every payload has been dropped by now (see `drop_live_payloads` and
                // `release`), so dropping the header (its atomics) is all that is left.
                unsafe { ptr::drop_in_place(base.add(offset)) };
            }
            // SAFETY: allocated in `ensure_chunk` with this layout, freed once (`&mut self`).
            unsafe { pages::dealloc(base as *mut u8, self.chunk_layout(chunk)) };
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A first chunk of a huge page or more is huge-page aligned and, on Linux, carries the
    /// MADV_HUGEPAGE advice (the `hg` flag of its mapping); without `huge` it carries neither.
    #[test]
    #[cfg(not(miri))]
    fn large_chunks_are_advised_onto_huge_pages() {
        // 2^17 slots of 32 bytes: a 4 MiB first chunk.
        let entries = 100_000;
        let advised: Arena<u64, u64> = Arena::new(entries, true).unwrap();
        let plain: Arena<u64, u64> = Arena::new(entries, false).unwrap();
        assert_eq!(advised.first as usize % pages::HUGE_PAGE, 0);
        #[cfg(target_os = "linux")]
        {
            assert!(pages::tests::advised(advised.first as usize));
            assert!(!pages::tests::advised(plain.first as usize));
        }
        let small: Arena<u64, u64> = Arena::new(100, true).unwrap();
        assert_eq!(small.chunk_layout(0).align(), CHUNK_ALIGN);
    }

    #[test]
    fn locate_is_dense_and_geometric() {
        let (sizes, indices): (&[usize], u32) = if cfg!(miri) {
            (&[0, 31, 32, 33, 1000], 300)
        } else {
            (&[0, 31, 32, 33, 1000, 1 << 20], 10_000)
        };
        for &expected_entries in sizes {
            let arena: Arena<u64, u64> = Arena::new(expected_entries, false).unwrap();
            let mut expected = (0usize, 0usize);
            for idx in 0..indices {
                let got = arena.locate(idx);
                assert_eq!(got, expected, "idx {idx}");
                expected.1 += 1;
                if expected.1 == arena.chunk_len(expected.0) {
                    expected = (expected.0 + 1, 0);
                }
            }
            let (c, o) = arena.locate(MAX_NODES - 1);
            assert!(c < NCHUNKS);
            assert!(o < arena.chunk_len(c));
        }
    }

    /// A 32-byte node (`Cache<u64, u64>`) never straddles two cache lines, in any chunk: a
    /// lookup that reaches it misses on one line, not two. (Chunks used to come at the
    /// allocator's 16-byte alignment, which put every other node across a line boundary.)
    #[test]
    fn nodes_never_straddle_a_cache_line() {
        assert_eq!(std::mem::size_of::<Node<u64, u64>>(), 32);
        let sizes: &[usize] = if cfg!(miri) {
            &[0, 100]
        } else {
            &[0, 1000, 100_000]
        };
        for &expected_entries in sizes {
            let arena: Arena<u64, u64> = Arena::new(expected_entries, false).unwrap();
            for _ in 0..(expected_entries * 2).max(300) {
                let idx = arena.alloc().unwrap();
                let start = arena.node(idx) as *const Node<u64, u64> as usize;
                let end = start + std::mem::size_of::<Node<u64, u64>>() - 1;
                assert_eq!(
                    start / 64,
                    end / 64,
                    "node {idx} at {start:#x} straddles a line"
                );
            }
        }
    }

    #[test]
    fn slots_beyond_the_first_chunk() {
        let arena: Arena<u64, u64> = Arena::new(0, false).unwrap();
        let idx: Vec<u32> = (0..200).map(|_| arena.alloc().unwrap()).collect();
        for (i, &x) in idx.iter().enumerate() {
            // SAFETY: private slots.
            unsafe { arena.node(x).init(0, 0, i as u64, i as u64 * 3) };
        }
        for (i, &x) in idx.iter().enumerate() {
            // SAFETY: initialised above, owned by this test.
            let v = unsafe { arena.node(x).with_payload(|k, v| (*k, *v)) };
            assert_eq!(v, (i as u64, i as u64 * 3));
        }
        for &x in &idx {
            // SAFETY: initialised, owned by this test.
            unsafe { arena.release(x) };
        }
    }

    #[test]
    fn alloc_release_reuses_slots() {
        let arena: Arena<u64, String> = Arena::new(0, false).unwrap();
        let a = arena.alloc().unwrap();
        let b = arena.alloc().unwrap();
        assert_ne!(a, b);
        // SAFETY: private slots.
        unsafe {
            arena.node(a).init(1, 0, 1, "a".into());
            arena.node(b).init(2, 0, 2, "b".into());
            arena.release(a);
        }
        assert_eq!(arena.alloc(), Some(a));
        // SAFETY: b is live and owned by this test.
        unsafe { arena.release(b) };
        assert_eq!(arena.allocated(), 2);
    }

    /// AddressSanitizer builds (`scripts/sanitizers.sh`): a released slot's payload is
    /// poisoned until the slot is taken and filled again, so a stale access to a recycled
    /// slot is reported (the slot never goes back to the allocator, whose own poisoning would
    /// otherwise catch it).
    #[cfg(evanesce_asan)]
    #[test]
    fn a_released_payload_is_poisoned_until_taken_again() {
        let arena: Arena<u64, String> = Arena::new(0, false).unwrap();
        let a = arena.alloc().unwrap();
        // SAFETY: private slot, initialised once and released once.
        unsafe {
            arena.node(a).init(1, 0, 1, "a".into());
            assert!(!arena.node(a).payload_poisoned());
            arena.release(a);
        }
        assert!(arena.node(a).payload_poisoned());
        let batch: Vec<u32> = (0..3).map(|_| arena.alloc().unwrap()).collect();
        assert_eq!(batch[0], a);
        // SAFETY: private slots, initialised once and released once.
        unsafe {
            for &x in &batch {
                arena.node(x).init(0, 0, u64::from(x), format!("v{x}"));
                assert!(!arena.node(x).payload_poisoned());
            }
            arena.release_all(&batch);
        }
        assert!(batch.iter().all(|&x| arena.node(x).payload_poisoned()));
    }

    /// The death test behind the one above: reading a released slot's payload is reported by
    /// AddressSanitizer (`scripts/sanitizers.sh` runs it and expects `use-after-poison`).
    #[cfg(evanesce_asan)]
    #[test]
    #[ignore = "a death test: scripts/sanitizers.sh runs it and expects ASan's report"]
    fn a_stale_read_of_a_recycled_slot_is_reported() {
        let arena: Arena<u64, String> = Arena::new(0, false).unwrap();
        let a = arena.alloc().unwrap();
        // SAFETY: private slot, initialised once and released once. The read after the
        // release is the bug this test plants on purpose: ASan stops the process there.
        let len = unsafe {
            arena.node(a).init(1, 0, 1, "a".into());
            arena.release(a);
            arena
                .node(a)
                .with_payload(|_, v| std::ptr::read_volatile(&v.len()))
        };
        panic!("the stale read was not reported (it read a length of {len})");
    }

    /// A batch goes back whole: every payload is dropped once, every slot is handed out
    /// again (the batch in its order), and no fresh slot is needed.
    #[test]
    fn a_released_batch_is_reused_whole() {
        let arena: Arena<u64, String> = Arena::new(0, false).unwrap();
        let lone = arena.alloc().unwrap();
        let batch: Vec<u32> = (0..70).map(|_| arena.alloc().unwrap()).collect();
        // SAFETY: private slots, initialised once, released once below.
        unsafe {
            arena.node(lone).init(0, 0, 0, "lone".into());
            arena.release(lone);
            for &x in &batch {
                arena.node(x).init(0, 0, u64::from(x), format!("v{x}"));
            }
            arena.release_all(&batch);
        }
        let fresh = arena.allocated();
        let again: Vec<u32> = (0..71).map(|_| arena.alloc().unwrap()).collect();
        // The lone slot went to this thread's stack, the batch to the first stack in turn:
        // the batch comes out in its order, before or after the lone slot.
        let in_batch: Vec<u32> = again.iter().copied().filter(|&x| x != lone).collect();
        assert_eq!(in_batch, batch);
        assert!(again.contains(&lone));
        assert_eq!(arena.allocated(), fresh, "a fresh slot was handed out");
        for &x in &again {
            assert_eq!(arena.node(x).life(), crate::raw::table::node::LIFE_FREE);
        }
    }

    /// Batches go to the free stacks in turn, and a thread takes from every stack before it
    /// takes a never-used slot: nothing freed is stranded on a stack the thread does not prefer.
    #[test]
    fn batches_spread_over_the_stacks_and_all_come_back() {
        let arena: Arena<u64, u64> = Arena::new(0, false).unwrap();
        let batches: Vec<Vec<u32>> = (0..2)
            .map(|_| (0..10).map(|_| arena.alloc().unwrap()).collect())
            .collect();
        // SAFETY: private slots, initialised once, released once below.
        unsafe {
            for b in &batches {
                for &x in b {
                    arena.node(x).init(0, 0, u64::from(x), 0);
                }
                arena.release_all(b);
            }
        }
        let on_stack = |i: usize| arena.free[i].load(Ordering::Relaxed) as u32 != NIL;
        assert!(on_stack(0) && on_stack(1), "both stacks hold a batch");
        let fresh = arena.allocated();
        let mut again: Vec<u32> = (0..20).map(|_| arena.alloc().unwrap()).collect();
        again.sort_unstable();
        let mut all: Vec<u32> = batches.concat();
        all.sort_unstable();
        assert_eq!(again, all);
        assert_eq!(arena.allocated(), fresh, "a fresh slot was handed out");
    }
}
