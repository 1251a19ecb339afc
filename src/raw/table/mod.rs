//! A shard's table: nodes in an arena, chained from a bucket array that grows without making
//! anyone wait.
//!
//! - [`node`]: the entry layout and its state machine (the ground rules every other file
//!   refers to).
//! - [`arena`]: node memory of a shard, `u32`-indexed, recycled through reclamation; and
//!   [`Column`]s of per-node metadata beside it.
//! - [`pages`]: large allocations (mapped directly, on huge pages where advised).
//! - [`buckets`]: a bucket array ([`Buckets`]), one allocation, viewed through a tagged word.
//! - [`chain`]: walking, linking into and unlinking from a bucket's chain.
//! - [`grow`]: publishing a larger bucket array, splitting and unzipping the chains, the
//!   round rule and its proof.
//! - [`prefetch`]: cache prefetch hints.
//!
//! It uses reclamation (`raw::reclaim`) for what it retires and knows nothing of the
//! maintainer, the eviction policy or expiry: a caller that unlinks hears about superseded
//! nodes through a closure.

pub(crate) mod arena;
pub(crate) mod buckets;
pub(crate) mod chain;
pub(crate) mod grow;
pub(crate) mod node;
pub(crate) mod pages;
pub(crate) mod prefetch;

pub(crate) use arena::{Arena, Column};
pub(crate) use buckets::{Buckets, bucket_of};
pub(crate) use node::{IDX_MASK, Idx, MARK, NEVER, NIL, Node, UNINIT, bits_of, word_value};

use buckets::{free_buckets, new_buckets, prefetch_bucket};

use super::reclaim::Protected;
use crate::sync::{Arc, AtomicU32, AtomicUsize, Ordering};

/// The chain tag of a hash: bits 32..48 (the bucket uses the low bits, the shard the top ones).
#[inline]
pub(crate) fn tag_of(hash: u64) -> u16 {
    (hash >> 32) as u16
}

/// One shard's table: its bucket arrays (the current one, and during a growth the one being
/// split), its node memory, and the per-node metadata that lives beside the nodes.
pub(crate) struct Table<K, V> {
    /// The current bucket array's tagged word (see buckets.rs).
    buckets: AtomicUsize,
    /// While growing: the tagged word of the bucket array being split (its chains back the
    /// new array's uninitialised buckets). Zero otherwise.
    old: AtomicUsize,
    pub(crate) arena: Arc<Arena<K, V>>,
    /// Per-entry time to live set by `insert_with_ttl` / `set_ttl` (0: the cache's default),
    /// so that `touch` restarts an entry with its own lifetime.
    pub(crate) lifetime: Column,
    /// With a time to idle and a time to live: the entry's hard deadline (0: none), which
    /// idle extensions never pass.
    pub(crate) cap: Column,
    /// With a weigher: each entry's weight (written before the node is published).
    pub(crate) weights: Column,
    /// The node a compute of this shard is replacing, from before it checks that the node is
    /// its key's live value until it has marked it ([`NIL`] otherwise); written only by the
    /// holder of the shard's maintenance lock. See `raw/shard/conditional.rs`.
    pub(crate) computing: AtomicU32,
    /// Per node: 1 when a compute published the node's successor, computed from the node's
    /// value, and found the node marked by a lookup-based remover that had raced it (see
    /// [`overtaken`](Self::overtaken)). 0 otherwise, and again once that remover has read it.
    pub(crate) overtaken: Column,
}

impl<K, V> Table<K, V> {
    /// A table of `buckets` buckets with room for `entries` nodes in its first arena chunk;
    /// `None` if the allocator refused the memory.
    pub(crate) fn new(buckets: usize, entries: usize, huge: bool) -> Option<Self> {
        let arena = Arena::new(entries, huge)?;
        let words = new_buckets(buckets, NIL, huge)?;
        Some(Self {
            buckets: AtomicUsize::new(words),
            old: AtomicUsize::new(0),
            lifetime: Column::new(&arena),
            cap: Column::new(&arena),
            weights: Column::new(&arena),
            computing: AtomicU32::new(NIL),
            overtaken: Column::new(&arena),
            arena: Arc::new(arena),
        })
    }

    /// The node in slot `idx`.
    #[inline]
    pub(crate) fn node(&self, idx: Idx) -> &Node<K, V> {
        self.arena.node(idx)
    }

    /// The node in slot `idx`, its later chunks reached inline or not (see
    /// [`Arena::node_at`](arena::Arena::node_at)).
    #[inline(always)]
    pub(crate) fn node_at<const INLINE: bool>(&self, idx: Idx) -> &Node<K, V> {
        self.arena.node_at::<INLINE>(idx)
    }

    /// The current bucket array.
    #[inline]
    pub(crate) fn current<'g>(&self, _guard: &'g impl Protected) -> Buckets<'g> {
        // Acquire: pairs with the Release store that published the array (construction or
        // growth), so its buckets are initialised.
        let word = self.buckets.load(Ordering::Acquire);
        // A replaced array is freed only after grace periods of both kinds that began after it
        // became unreachable from here (retire.rs), and `_guard` protects this thread.
        // SAFETY: never zero while the table lives, made by `new_buckets`; outlives the borrow.
        unsafe { Buckets::from_word(word) }
    }

    /// Starts the load of `hash`'s bucket in the current array (see [`prefetch_bucket`]).
    #[inline(always)]
    pub(crate) fn prefetch(&self, hash: u64) {
        // Relaxed: the word is only used as an address to prefetch, never dereferenced.
        prefetch_bucket(self.buckets.load(Ordering::Relaxed), hash);
    }

    /// Whether a growth is in progress (the old array is still attached).
    #[cfg(not(loom))]
    pub(crate) fn is_growing(&self) -> bool {
        // Relaxed: a hint (see `RawCache::finish_growths`).
        self.old.load(Ordering::Relaxed) != 0
    }

    /// The array being split, during a growth.
    #[inline]
    pub(crate) fn old<'g>(&self, _guard: &'g impl Protected) -> Option<Buckets<'g>> {
        // Acquire: pairs with the Release store in `publish_larger`, which set `old` before
        // publishing the new array.
        let word = self.old.load(Ordering::Acquire);
        if word == 0 {
            return None;
        }
        // SAFETY: made by `new_buckets`; cleared and retired (retire.rs) only once no bucket of
        // the current array is uninitialised and a grace period has passed, so a protected
        // thread that can still need it keeps it alive.
        Some(unsafe { Buckets::from_word(word) })
    }

    /// For a writer that found node `idx` by looking its key up and has just marked it (a
    /// remove, an expiring `set_ttl`, a stale read, `retain`): whether a compute replaced the
    /// node, with a value computed from it, while the mark was being made. Then the removal
    /// is that compute's replacement (the caller reports it as `Replaced` and looks again).
    ///
    /// The handshake with `raw/shard/conditional.rs`: the compute stores the node's index in
    /// [`computing`](Self::computing), fences, and only then checks that the node is unmarked;
    /// this writer has marked it and fences before loading `computing`. Of two SeqCst fences
    /// one comes first: either the compute sees the mark (and does not publish), or this load
    /// sees the compute's store or a later one. It waits while the compute is at work on the
    /// node; the compute records its outcome in [`overtaken`](Self::overtaken) before it
    /// clears `computing` (Release), so once `computing` names another node (Acquire), the
    /// outcome is visible.
    pub(crate) fn overtaken(&self, idx: Idx) -> bool {
        // SeqCst fence: the mark this writer just made comes before the load below (Dekker
        // with the compute's store and fence; see above).
        crate::sync::fence(Ordering::SeqCst);
        // Acquire: pairs with the compute's Release store that clears it (its outcome first).
        while self.computing.load(Ordering::Acquire) == idx {
            // The compute holds the shard's maintenance lock and is between two of its own
            // steps (no waiting, no user code but `Eq` and `Hash`): it finishes shortly.
            crate::sync::yield_now();
        }
        if !self.overtaken.is_allocated(idx) || self.overtaken.get(idx) == 0 {
            return false;
        }
        // Only the node's marker (this writer) reads or clears its entry, and it does so
        // before the node can be retired, so the slot's next occupant starts from 0.
        self.overtaken.set(idx, 0);
        true
    }

    /// The weight of node `idx`: its recorded weight if the cache is `weighted`, else 1.
    #[inline]
    pub(crate) fn weight_of(&self, weighted: bool, idx: Idx) -> u64 {
        if weighted { self.weights.get(idx) } else { 1 }
    }
}

impl<K, V> Drop for Table<K, V> {
    fn drop(&mut self) {
        for slot in [&self.buckets, &self.old] {
            // Relaxed: `&mut self`, nothing runs concurrently.
            let word = slot.swap(0, Ordering::Relaxed);
            if word != 0 {
                // SAFETY: the table owns its current and old arrays (a replaced one is owned by
                // its retired function instead), and no other thread uses it any more.
                unsafe { free_buckets(word) };
            }
        }
        // SAFETY: no operation is in flight (the last cache handle is being dropped); retired
        // nodes are `RETIRED` and dropped by their retired functions (retire.rs).
        unsafe { self.arena.drop_live_payloads() };
    }
}
