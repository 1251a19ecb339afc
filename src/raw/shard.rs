//! One shard: a bucket table, the arena of its nodes, the event ring and the maintainer.
//!
//! # Reads
//! `get` pins an epoch guard, loads the table and the bucket head with Acquire, walks the
//! chain comparing the 16-bit tag before touching a key, and stops at the first node of the
//! key. No lock, no CAS, no write to shared memory except the node's CLOCK counter when it is
//! below its cap.
//!
//! # Writes
//! An insert links a new node at the head of its bucket with a CAS (retrying if the head
//! moved), then marks the node it superseded, if any. A remove marks the key's first node.
//! Both record an event for the maintainer. Nothing a writer does can make a reader wait.
//!
//! # Growing
//! When a shard holds more entries than buckets, its maintainer publishes a table large enough
//! to bring the load back to at most one: `2^k` times as large (`k >= 1`), whose buckets are
//! [`UNINIT`]. Old bucket `b` feeds the new buckets `b + i * old_len` for `i < 2^k` (its
//! *classes*): readers of an uninitialised bucket read the old bucket's chain (a superset of
//! theirs), and the first thread that needs to link into a new bucket (a writer, or the
//! maintainer) *splits* it: it freezes the old bucket head (so no insert can land in the old
//! table any more) and points the new bucket at the first node of the old chain that hashes
//! to it. Chains are then shared ("zipped") between the buckets of one old bucket; readers
//! skip the other classes' nodes by key. Finally the maintainer "unzips" the chains in rounds
//! separated by grace periods (after Triplett, McKenney and Walpole, "Resizable, scalable,
//! concurrent hash tables via relativistic programming", 2011, generalised to many classes):
//! in a round, a link is redirected past the nodes of every class that has no reader
//! positioned on it (see `Shard::unzip_chain` in maint.rs for the argument). No reader ever
//! waits, and writers never wait either: the only writer-visible state is an uninitialised
//! bucket, which the writer initialises itself.

use std::borrow::Borrow;
use std::hash::BuildHasher;

use crossbeam_utils::CachePadded;

use super::Config;
use super::arena::{Arena, Column};
use super::light::{self, Protected};
use super::lock::TryLock;
use super::maint::Maint;
use super::node::{IDX_MASK, Idx, MARK, NEVER, NIL, Node, UNINIT};
use super::ring::{Event, EventKind, Ring};
use super::table::{Table, bucket_of, free_table, new_table, prefetch_bucket};
use crate::listener::RemovalCause;
use crate::stats::Counter;
use crate::sync::epoch::{self, Guard};
use crate::sync::{Arc, AtomicI64, AtomicU64, AtomicUsize, Ordering};

/// The chain tag of a hash: bits 32..48 (the bucket uses the low bits, the shard the top ones).
#[inline]
pub(crate) fn tag_of(hash: u64) -> u16 {
    (hash >> 32) as u16
}

/// Where a lookup started (see [`Shard::unchanged`]).
pub(crate) struct Start {
    table: usize,
    bucket: u32,
    old: u32,
}

/// Whether an insert into a bounded cache holds its share of the bound yet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Share {
    Needed,
    /// Reserved, or taken over from the node it replaces (claimed).
    Held,
}

/// A share of the bound an insert holds before it publishes its node: released if the insert
/// unwinds (a user's `Eq` panicking in the chain walk), so that a panic does not shrink the
/// capacity.
struct ShareOnUnwind<'a>(Option<(&'a super::Bound, u64)>);

impl Drop for ShareOnUnwind<'_> {
    fn drop(&mut self) {
        if let Some((bound, weight)) = self.0 {
            bound.release(weight);
        }
    }
}

/// What an insert did.
pub(crate) enum Inserted<V> {
    /// The value was stored.
    Stored,
    /// `only_if_absent` was set and the key had a live value: here is a clone of it.
    Present(V),
}

pub(crate) struct Shard<K, V> {
    /// The current table's tagged word (see table.rs).
    pub(super) table: AtomicUsize,
    /// While growing: the tagged word of the table being split (its chains back the new
    /// table's uninitialised buckets). Zero otherwise.
    pub(super) old: AtomicUsize,
    pub(super) arena: Arc<Arena<K, V>>,
    pub(super) ring: Ring,
    pub(super) maint: TryLock<Maint>,
    /// Unmarked nodes in the table, as of the events the maintainer has applied: +1 per
    /// `Inserted`, -1 per removal. Written only by the maintainer (see `len`).
    pub(super) live: CachePadded<AtomicI64>,
    /// The earliest time the timer wheel may expire something ([`NEVER`] if it holds
    /// nothing): writers offer a maintenance pass once it has passed. Written by the
    /// maintainer.
    pub(super) next_expiry: CachePadded<AtomicU64>,
    /// Per-entry time to live set by `insert_with_ttl` / `set_ttl` (0: the cache's default),
    /// so that `touch` restarts an entry with its own lifetime.
    pub(super) lifetime: Column,
    /// With a time to idle and a time to live: the entry's hard deadline (0: none), which
    /// idle extensions never pass.
    pub(super) cap: Column,
    /// With a weigher: each entry's weight (written before the node is published).
    pub(super) weights: Column,
    /// Weight of the entries the maintainer has admitted and not yet retired (a hint for
    /// choosing where to make room). Written by the maintainer.
    pub(super) size: CachePadded<AtomicU64>,
}

/// Ticks of the coarse clock: deadlines moved by reads (time to idle) are written at most once
/// per tick, and the timer wheel files entries by tick (2^20 ns, about a millisecond).
pub(crate) const TICK_SHIFT: u32 = 20;
const TICK_NS: u64 = 1 << TICK_SHIFT;

impl<K, V> Shard<K, V>
where
    K: Eq + std::hash::Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// A shard with `buckets` buckets and room for `entries` nodes in its first chunk; `None`
    /// if the allocator refused the memory.
    pub(crate) fn new(buckets: usize, entries: usize, ring: usize, huge: bool) -> Option<Self> {
        let arena = Arena::new(entries, huge)?;
        let table = new_table(buckets, NIL, huge)?;
        Some(Self {
            table: AtomicUsize::new(table),
            old: AtomicUsize::new(0),
            lifetime: Column::new(&arena),
            cap: Column::new(&arena),
            weights: Column::new(&arena),
            size: CachePadded::new(AtomicU64::new(0)),
            arena: Arc::new(arena),
            ring: Ring::new(ring),
            maint: TryLock::new(Maint::default()),
            live: CachePadded::new(AtomicI64::new(0)),
            next_expiry: CachePadded::new(AtomicU64::new(NEVER)),
        })
    }

    /// The current table.
    #[inline]
    pub(super) fn current<'g>(&self, _guard: &'g impl Protected) -> Table<'g> {
        // Acquire: pairs with the Release store that published the table (construction or
        // growth), so its buckets are initialised.
        let word = self.table.load(Ordering::Acquire);
        // A replaced table is freed only after grace periods of both kinds that began after it
        // became unreachable from here (retire.rs), and `_guard` protects this thread.
        // SAFETY: never zero while the shard lives, made by `new_table`; outlives the borrow.
        unsafe { Table::from_word(word) }
    }

    /// Pins this thread for an operation on `hash`, having first started the load of its
    /// bucket in the current table, so that the cache miss on the bucket overlaps the pin's
    /// barrier instead of following it.
    #[inline(always)]
    fn pin_for(&self, hash: u64) -> Guard {
        self.prefetch(hash);
        epoch::pin()
    }

    /// Starts the load of `hash`'s bucket in the current table (see [`prefetch_bucket`]).
    /// Reads (light, with no barrier to overlap) gain a little from it too: the bucket's miss
    /// starts before the announcement's stores.
    #[inline(always)]
    fn prefetch(&self, hash: u64) {
        // Relaxed: the word is only used as an address to prefetch, never dereferenced.
        prefetch_bucket(self.table.load(Ordering::Relaxed), hash);
    }

    /// Whether a growth is in progress (the old table is still attached).
    #[cfg(not(loom))]
    pub(crate) fn is_growing(&self) -> bool {
        // Relaxed: a hint (see `RawCache::help_growths`).
        self.old.load(Ordering::Relaxed) != 0
    }

    /// The table being split, during a growth.
    #[inline]
    pub(super) fn old_table<'g>(&self, _guard: &'g impl Protected) -> Option<Table<'g>> {
        // Acquire: pairs with the Release store in `publish_larger`, which set `old` before
        // publishing the new table.
        let word = self.old.load(Ordering::Acquire);
        if word == 0 {
            return None;
        }
        // SAFETY: made by `new_table`; cleared and retired (retire.rs) only once no bucket of
        // the current table is uninitialised and a grace period has passed, so a protected
        // thread that can still need it keeps it alive.
        Some(unsafe { Table::from_word(word) })
    }

    /// Where a lookup of `hash` starts: the first node of its chain, and a [`Start`] to
    /// validate an "absent" answer with. An uninitialised bucket reads the old table's chain
    /// (a superset: it also holds the sibling bucket's nodes, which the key comparison skips).
    #[inline]
    pub(super) fn start(&self, hash: u64, guard: &impl Protected) -> (u32, Start) {
        let table = self.current(guard);
        // Acquire: pairs with the Release CAS that linked the head node (insert, unlink or
        // bucket split), so the node's contents are visible.
        let bucket = table.bucket(hash).load(Ordering::Acquire);
        let mut start = Start {
            table: table.word(),
            bucket,
            old: 0,
        };
        if bucket != UNINIT {
            return (bucket & IDX_MASK, start);
        }
        match self.old_table(guard) {
            Some(old) => {
                // Acquire: as above. The frozen bit may be set; it is not part of the index.
                start.old = old.bucket(hash).load(Ordering::Acquire);
                (start.old & IDX_MASK, start)
            }
            None => {
                debug_assert!(false, "uninitialised bucket without an old table");
                (NIL, start)
            }
        }
    }

    /// Whether nothing was linked in front of the chain since `start`: the table, the bucket
    /// head and (for an uninitialised bucket) the old head are unchanged.
    ///
    /// A lookup that started from a head loaded *before* an insert of its key can walk into
    /// the node that insert superseded (already marked, or even unlinked). So "absent" is
    /// only an answer if the head did not move meanwhile (no node was linked in front, or
    /// every such node has been removed again, so the key was absent at some point of the
    /// lookup); otherwise the lookup starts over. Indices cannot be reused while we are
    /// protected (`guard`), so an unchanged head is the same node.
    #[inline]
    pub(super) fn unchanged(&self, start: &Start, hash: u64, guard: &impl Protected) -> bool {
        let table = self.current(guard);
        if table.word() != start.table {
            return false;
        }
        // Acquire: as in `start`.
        let bucket = table.bucket(hash).load(Ordering::Acquire);
        if bucket != start.bucket {
            return false;
        }
        if bucket != UNINIT {
            return true;
        }
        // Acquire: as in `start`.
        self.old_table(guard)
            .is_some_and(|old| old.bucket(hash).load(Ordering::Acquire) == start.old)
    }

    /// The first node of `key` (marked or not), from a chain head that is current enough: if
    /// it is live, it was `key`'s value at some point of the call; if it is marked or there is
    /// none, `key` was absent at some point of the call (see [`unchanged`](Self::unchanged)).
    #[inline]
    pub(super) fn lookup<'a, Q>(
        &'a self,
        hash: u64,
        key: &Q,
        guard: &impl Protected,
    ) -> Option<(Idx, &'a Node<K, V>, u32)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        loop {
            let (head, start) = self.start(hash, guard);
            let found = self.find(head, tag_of(hash), key, guard);
            if matches!(found, Some((_, _, next)) if next & MARK == 0)
                || self.unchanged(&start, hash, guard)
            {
                return found;
            }
        }
    }

    /// The first node of `key` in the chain starting at `head` (marked or not), with the value
    /// of its `next` link as read.
    ///
    /// The caller is protected (`guard`: pinned to crossbeam-epoch or inside a light read)
    /// and reached `head` through an Acquire load.
    #[inline]
    pub(super) fn find<'a, Q>(
        &'a self,
        head: u32,
        tag: u16,
        key: &Q,
        _guard: &impl Protected,
    ) -> Option<(Idx, &'a Node<K, V>, u32)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let mut cur = head;
        while cur != NIL {
            let node = self.arena.node(cur);
            // Acquire: pairs with the Release CAS that linked the successor (so its contents
            // are visible when we follow the link) and with the AcqRel CAS that set the mark.
            let next = node.next.load(Ordering::Acquire);
            // The node was reached through links while protected: it is initialised (the
            // Acquire load of the link that led here orders its publication before) and cannot
            // be freed or reused before `_guard` is dropped (node.rs, rules 2 and 5).
            // SAFETY: as just said, for the tag.
            let node_tag = unsafe { node.tag() };
            if node_tag == tag
                // SAFETY: as just said, for the payload.
                && unsafe { node.with_payload(|k, _| k.borrow() == key) }
            {
                return Some((cur, node, next));
            }
            cur = next & IDX_MASK;
        }
        None
    }

    /// Whether the node's deadline is still ahead (`now` is read only if it has one).
    #[inline]
    pub(super) fn alive<S>(node: &Node<K, V>, cfg: &Config<K, V, S>) -> bool {
        // Relaxed: the deadline is a single word; whichever value a racing `touch` or TTI read
        // left is a deadline the entry really had during this read.
        let deadline = node.deadline.load(Ordering::Relaxed);
        deadline == NEVER || cfg.time.now() < deadline
    }

    /// On a hit: whether the entry is alive, and if the cache has a time to idle, its
    /// deadline moved to `now + tti` (capped by its hard deadline), written at most once per
    /// tick so that a hot entry does not write its cache line on every read.
    #[inline]
    fn alive_on_hit<S>(&self, cfg: &Config<K, V, S>, idx: Idx, node: &Node<K, V>) -> bool {
        // Relaxed: as in `alive`.
        let deadline = node.deadline.load(Ordering::Relaxed);
        if deadline == NEVER {
            return true;
        }
        let now = cfg.time.now();
        if now >= deadline {
            return false;
        }
        if cfg.tti != NEVER {
            let mut idle = now.saturating_add(cfg.tti);
            let cap = self.cap.get(idx);
            if cap != 0 {
                idle = idle.min(cap);
            }
            if idle >= deadline.saturating_add(TICK_NS) {
                // Relaxed: a later deadline needs no event (the wheel re-files lazily); a lost
                // race with another extension or a `touch` leaves one of their deadlines.
                node.deadline.store(idle, Ordering::Relaxed);
            }
        }
        true
    }

    /// What a hit records: the CLOCK bump (only the eviction policy of a bounded cache reads
    /// the counter, so an unbounded cache's hits write nothing) and the hit counter.
    #[inline]
    fn record_hit<S>(cfg: &Config<K, V, S>, node: &Node<K, V>) {
        if cfg.bound.is_some() {
            node.touch_freq();
        }
        cfg.stats.read(true);
    }

    /// The weight of node `idx` (1 without a weigher).
    #[inline]
    pub(super) fn weight_of<S>(&self, cfg: &Config<K, V, S>, idx: Idx) -> u64 {
        if cfg.weigher.is_some() {
            self.weights.get(idx)
        } else {
            1
        }
    }

    /// Weight of the entries admitted by the maintainer (see the field).
    pub(crate) fn size(&self) -> u64 {
        // Relaxed: a hint.
        self.size.load(Ordering::Relaxed)
    }

    /// Whether the timer wheel has something due: writers then offer a maintenance pass.
    #[inline]
    fn expiry_due<S>(&self, cfg: &Config<K, V, S>) -> bool {
        // Relaxed: a hint written by the maintainer.
        let next = self.next_expiry.load(Ordering::Relaxed);
        next != NEVER && cfg.time.now() >= next
    }

    /// The expiry of a new entry: `(deadline, hard cap)` for a lifetime in ns.
    fn expiry_of<S>(cfg: &Config<K, V, S>, lifetime: u64) -> (u64, u64) {
        if lifetime == NEVER && cfg.tti == NEVER {
            return (NEVER, NEVER);
        }
        cfg.time.ensure_ticking();
        let now = cfg.time.now();
        let cap = if lifetime == NEVER {
            NEVER
        } else {
            now.saturating_add(lifetime)
        };
        let deadline = if cfg.tti == NEVER {
            cap
        } else {
            now.saturating_add(cfg.tti).min(cap)
        };
        (deadline, cap)
    }

    /// Records node `idx`'s own lifetime and hard cap in the columns (clearing what a previous
    /// occupant of the slot left there).
    fn set_columns<S>(&self, cfg: &Config<K, V, S>, idx: Idx, own_ttl: Option<u64>, cap: u64) {
        match own_ttl {
            Some(ttl) => self.lifetime.set(idx, ttl),
            None if self.lifetime.is_allocated(idx) => self.lifetime.set(idx, 0),
            None => {}
        }
        if cfg.tti != NEVER && cap != NEVER {
            self.cap.set(idx, cap);
        } else if self.cap.is_allocated(idx) {
            self.cap.set(idx, 0);
        }
    }

    /// Whether `key` has a live value, without counting as an access (no CLOCK bump, no idle
    /// extension, no hit or miss counted).
    pub(crate) fn contains<Q, S>(&self, cfg: &Config<K, V, S>, hash: u64, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.prefetch(hash);
        light::read(|guard| self.contains_in(cfg, hash, key, guard))
    }

    /// [`contains`](Self::contains) under a guard the caller holds.
    #[inline]
    pub(crate) fn contains_in<Q, S>(
        &self,
        cfg: &Config<K, V, S>,
        hash: u64,
        key: &Q,
        guard: &impl Protected,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        matches!(self.lookup(hash, key, guard),
            Some((_, node, next)) if next & MARK == 0 && Self::alive(node, cfg))
    }

    /// Runs `f` on the live value of `key`, if any.
    #[inline]
    pub(crate) fn read<Q, S, R>(
        &self,
        cfg: &Config<K, V, S>,
        hash: u64,
        key: &Q,
        f: impl FnOnce(&V) -> R,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.prefetch(hash);
        light::read(|guard| self.read_in(cfg, hash, key, f, guard))
    }

    /// [`read`](Self::read) under a guard the caller holds.
    #[inline]
    pub(crate) fn read_in<Q, S, R>(
        &self,
        cfg: &Config<K, V, S>,
        hash: u64,
        key: &Q,
        f: impl FnOnce(&V) -> R,
        guard: &impl Protected,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        match self.lookup(hash, key, guard) {
            Some((idx, node, next)) if next & MARK == 0 && self.alive_on_hit(cfg, idx, node) => {
                if cfg.hit_work {
                    Self::record_hit(cfg, node);
                }
                // SAFETY: found while protected (see `find`).
                Some(unsafe { node.with_payload(|_, v| f(v)) })
            }
            _ => {
                cfg.stats.read(false);
                None
            }
        }
    }

    /// Inserts `key -> value` (or, with `only_if_absent`, only if `key` has no live value),
    /// with its own time to live in ns, or the cache's default.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        hash: u64,
        key: K,
        value: V,
        own_ttl: Option<u64>,
        weight: u32,
        only_if_absent: bool,
        reserve: Option<&dyn Fn(u64)>,
    ) -> Result<Inserted<V>, (K, V)>
    where
        V: Clone,
    {
        let guard = self.pin_for(hash);
        let Some(idx) = self.arena.alloc() else {
            return Err((key, value));
        };
        let node = self.arena.node(idx);
        let tag = tag_of(hash);
        let (deadline, cap) = Self::expiry_of(cfg, own_ttl.unwrap_or(cfg.ttl));
        // SAFETY: `idx` was just taken from the arena, so this thread owns the slot (rule 1).
        unsafe { node.init(tag, deadline, key, value) };
        // Published with the node by the Release CAS below.
        self.set_columns(cfg, idx, own_ttl, cap);
        if cfg.weigher.is_some() {
            self.weights.set(idx, u64::from(weight));
        }
        // With `reserve` (a bounded cache, and not `only_if_absent`, whose caller reserved
        // already), this insert needs a share of the bound before it publishes: it takes over
        // the share of the live node of its key it replaces (claiming it), or reserves its own.
        let mut share = Share::Needed;
        // Gives a held share back if a user's `Eq` panics before the node is published.
        let mut unwind = ShareOnUnwind(None);
        let superseded = loop {
            let table = self.current(&guard);
            let bucket = table.bucket(hash);
            // Acquire: pairs with the Release CAS of whoever linked the current head, so that
            // `find` below sees the chain's nodes.
            let head = bucket.load(Ordering::Acquire);
            if head == UNINIT {
                self.split_bucket(cfg, table, bucket_of(hash, table.mask()), &guard);
                continue;
            }
            if head & MARK != 0 {
                // Frozen: a larger table has been published since we loaded this one.
                continue;
            }
            // SAFETY: we own the node (not yet published), so its payload is initialised.
            let older = unsafe { node.with_payload(|k, _| self.find(head, tag, k, &guard)) };
            let older = match older {
                Some((old_idx, old, next)) if next & MARK == 0 => {
                    if only_if_absent && Self::alive(old, cfg) {
                        // SAFETY: found while pinned (see `find`).
                        let present = unsafe { old.with_payload(|_, v| v.clone()) };
                        // SAFETY: the node was never published, so nothing else can reach it.
                        unsafe { self.arena.release(idx) };
                        return Ok(Inserted::Present(present));
                    }
                    if share == Share::Needed
                        && reserve.is_some()
                        && self.weight_of(cfg, old_idx) == u64::from(weight)
                        && old.claim()
                    {
                        share = Share::Held;
                        unwind.0 = cfg.bound.as_ref().map(|b| (b, u64::from(weight)));
                    }
                    Some(old_idx)
                }
                _ => None,
            };
            if share == Share::Needed
                && let Some(reserve) = reserve
            {
                reserve(u64::from(weight));
                share = Share::Held;
                unwind.0 = cfg.bound.as_ref().map(|b| (b, u64::from(weight)));
            }
            // Relaxed: published by the Release CAS below.
            node.next.store(head, Ordering::Relaxed);
            // Release: publishes the node's contents (rule 2); pairs with the Acquire loads of
            // bucket heads by readers and writers.
            if bucket
                .compare_exchange(head, idx, Ordering::Release, Ordering::Relaxed)
                .is_ok()
            {
                break older;
            }
        };
        // Published: the share is the node's now.
        unwind.0 = None;
        let mut removed = None;
        let mut event = Event {
            idx,
            kind: EventKind::Inserted,
            weight,
            hash,
            old: 0,
            removal: Counter::Removal,
        };
        if let Some(old_idx) = superseded {
            let old = self.arena.node(old_idx);
            let cause = if Self::alive(old, cfg) {
                RemovalCause::Replaced
            } else {
                RemovalCause::Expired
            };
            // Whoever wins the mark reports the removal; if a remove or the maintainer got
            // there first, this insert replaced nothing. One event tells the maintainer both
            // (the new node takes the old one's place in its bookkeeping).
            if let Some(claimed) = old.mark() {
                self.writer_removed(cfg, old_idx, claimed);
                removed = Some((old_idx, cause));
                event.kind = EventKind::Replaced;
                event.old = old_idx;
                event.removal = Counter::of(cause);
            }
        }
        let offer = self.record(cfg, event, &guard);
        if offer || self.expiry_due(cfg) || cfg.bound.as_ref().is_some_and(|b| b.over()) {
            self.try_maintain(cfg, &guard);
        }
        if let Some((old_idx, cause)) = removed {
            self.notify(cfg, old_idx, cause, &guard);
        }
        Ok(Inserted::Stored)
    }

    /// Removes `key`, returning its value if it was live; the listener hears `cause` (or
    /// `Expired` if the entry's deadline had passed).
    pub(crate) fn remove<Q, S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        hash: u64,
        key: &Q,
        cause: RemovalCause,
    ) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
        V: Clone,
    {
        let guard = self.pin_for(hash);
        loop {
            let (idx, node, next) = self.lookup(hash, key, &guard)?;
            if next & MARK != 0 {
                return None;
            }
            let live = Self::alive(node, cfg);
            if let Some(claimed) = node.mark() {
                let cause = if live { cause } else { RemovalCause::Expired };
                // SAFETY: found while pinned (see `find`).
                let value = live.then(|| unsafe { node.with_payload(|_, v| v.clone()) });
                if self.on_writer_marked(cfg, idx, claimed, cause, &guard) || self.expiry_due(cfg) {
                    self.try_maintain(cfg, &guard);
                }
                self.notify(cfg, idx, cause, &guard);
                return value;
            }
            // Lost the race for the mark: another remove, an insert that superseded the node,
            // or the maintainer. Look again: a newer node may have taken its place.
        }
    }

    /// Restarts the expiry of `key`'s live entry: with `own_ttl` (which becomes the entry's
    /// own lifetime), or with its own lifetime, or the cache's default. A lifetime of zero
    /// expires the entry now. Returns false if `key` has no live entry (an expired one is
    /// never brought back).
    pub(crate) fn retime<Q, S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        hash: u64,
        key: &Q,
        own_ttl: Option<u64>,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let guard = self.pin_for(hash);
        let Some((idx, node, next)) = self.lookup(hash, key, &guard) else {
            return false;
        };
        if next & MARK != 0 || !Self::alive(node, cfg) {
            return false;
        }
        let lifetime = match own_ttl {
            Some(ttl) => {
                self.lifetime.set(idx, ttl);
                ttl
            }
            None => match self.lifetime.get(idx) {
                0 => cfg.ttl,
                own => own,
            },
        };
        if lifetime == 0 {
            // Already expired: remove it now, as an expiry.
            if let Some(claimed) = node.mark() {
                if self.on_writer_marked(cfg, idx, claimed, RemovalCause::Expired, &guard) {
                    self.try_maintain(cfg, &guard);
                }
                self.notify(cfg, idx, RemovalCause::Expired, &guard);
            }
            return true;
        }
        let (deadline, cap) = Self::expiry_of(cfg, lifetime);
        if cfg.tti != NEVER {
            self.cap.set(idx, if cap == NEVER { 0 } else { cap });
        }
        // Relaxed: the deadline is one word (see `alive`). A later deadline needs nothing more:
        // the wheel re-files the entry when its old slot comes due.
        let old = node.deadline.swap(deadline, Ordering::Relaxed);
        if deadline < old
            && self.record(
                cfg,
                Event {
                    idx,
                    kind: EventKind::Rescheduled,
                    weight: 0,
                    hash: 0,
                    old: 0,
                    removal: Counter::Removal,
                },
                &guard,
            )
        {
            self.try_maintain(cfg, &guard);
        }
        true
    }

    /// Remaining lifetime of `key`'s live entry in ns ([`NEVER`] if it does not expire).
    pub(crate) fn remaining<Q, S>(&self, cfg: &Config<K, V, S>, hash: u64, key: &Q) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let guard = self.pin_for(hash);
        let (_, node, next) = self.lookup(hash, key, &guard)?;
        if next & MARK != 0 {
            return None;
        }
        // Relaxed: as in `alive`.
        let deadline = node.deadline.load(Ordering::Relaxed);
        if deadline == NEVER {
            return Some(NEVER);
        }
        let now = cfg.time.now();
        (now < deadline).then(|| deadline - now)
    }

    /// Like `read`, but an entry whose deadline has passed and that the maintainer has not
    /// reclaimed yet is returned once more, and removed (reported as `Expired`).
    pub(crate) fn read_stale<Q, S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        hash: u64,
        key: &Q,
    ) -> Option<(V, bool)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
        V: Clone,
    {
        let guard = self.pin_for(hash);
        let Some((idx, node, next)) = self.lookup(hash, key, &guard) else {
            cfg.stats.read(false);
            return None;
        };
        if next & MARK != 0 {
            cfg.stats.read(false);
            return None;
        }
        if self.alive_on_hit(cfg, idx, node) {
            Self::record_hit(cfg, node);
            // SAFETY: found while pinned (see `find`).
            return Some((unsafe { node.with_payload(|_, v| v.clone()) }, false));
        }
        let Some(claimed) = node.mark() else {
            cfg.stats.read(false);
            return None;
        };
        cfg.stats.read(true);
        // SAFETY: found while pinned (see `find`).
        let value = unsafe { node.with_payload(|_, v| v.clone()) };
        if self.on_writer_marked(cfg, idx, claimed, RemovalCause::Expired, &guard) {
            self.try_maintain(cfg, &guard);
        }
        self.notify(cfg, idx, RemovalCause::Expired, &guard);
        Some((value, true))
    }

    /// Bookkeeping after a writer (not the maintainer) marked `idx`. Returns whether to offer
    /// a maintenance pass (see [`record`](Self::record)).
    fn on_writer_marked<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        idx: Idx,
        claimed: bool,
        cause: RemovalCause,
        guard: &Guard,
    ) -> bool {
        self.writer_removed(cfg, idx, claimed);
        self.record(
            cfg,
            Event {
                idx,
                kind: EventKind::Removed,
                weight: 0,
                hash: 0,
                old: 0,
                removal: Counter::of(cause),
            },
            guard,
        )
    }

    /// What a writer that marked `idx` owes at once: the entry's weight back to the bound,
    /// unless the node was `claimed` (its share then belongs to the insert replacing it). (The
    /// removal is counted by the maintainer, from the event.)
    #[inline]
    fn writer_removed<S>(&self, cfg: &Config<K, V, S>, idx: Idx, claimed: bool) {
        if !claimed && let Some(bound) = &cfg.bound {
            bound.release(self.weight_of(cfg, idx));
        }
    }

    /// Hands an event to the maintainer. Returns whether this writer should offer a
    /// maintenance pass: the producer of every `drain_threshold`-th event does (a power of
    /// two; no shared counter to read). If the ring is full, applies back-pressure instead:
    /// waits for the maintenance lock, drains the ring and applies the event directly.
    #[inline]
    pub(super) fn record<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        event: Event,
        guard: &Guard,
    ) -> bool {
        match self.ring.push(event) {
            Ok(pos) => (pos + 1) & (cfg.drain_threshold - 1) == 0,
            Err(event) => {
                self.record_when_full(cfg, event, guard);
                false
            }
        }
    }

    /// Back-pressure (see [`record`](Self::record)).
    #[cold]
    #[inline(never)]
    fn record_when_full<S: BuildHasher>(&self, cfg: &Config<K, V, S>, event: Event, guard: &Guard) {
        let notes = self.maint.run(|m| {
            self.pass(m, cfg, guard, false);
            self.apply(m, cfg, event, guard);
            self.finish_pass(m, cfg, guard, false)
        });
        self.deliver(cfg, notes, guard);
    }

    /// Runs a maintenance pass if the lock is free.
    pub(crate) fn try_maintain<S: BuildHasher>(&self, cfg: &Config<K, V, S>, guard: &Guard) {
        if let Some(notes) = self.maint.try_run(|m| {
            self.pass(m, cfg, guard, false);
            self.finish_pass(m, cfg, guard, false)
        }) {
            self.deliver(cfg, notes, guard);
        }
    }

    /// Runs a maintenance pass waiting for the lock, then evicts from this shard (whatever its
    /// share) until the cache's reserved weight is at most `target` or the shard has nothing
    /// left to evict (back-pressure, see `RawCache::make_room`).
    pub(crate) fn evict_to<S: BuildHasher>(&self, cfg: &Config<K, V, S>, target: u64) {
        let guard = epoch::pin();
        let notes = self.maint.run(|m| {
            self.pass(m, cfg, &guard, false);
            self.evict(m, cfg, Some(target), &guard);
            self.finish_pass(m, cfg, &guard, false)
        });
        self.deliver(cfg, notes, &guard);
    }

    /// Runs a maintenance pass, waiting for the lock, and expires every entry whose deadline
    /// has passed.
    pub(crate) fn maintain<S: BuildHasher>(&self, cfg: &Config<K, V, S>) {
        let guard = epoch::pin();
        let notes = self.maint.run(|m| {
            self.pass(m, cfg, &guard, true);
            self.finish_pass(m, cfg, &guard, true)
        });
        self.deliver(cfg, notes, &guard);
    }

    /// The shard's write counters, after a pass that applies its pending events.
    pub(crate) fn counts<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
    ) -> crate::stats::WriteCounts {
        let guard = epoch::pin();
        let (counts, notes) = self.maint.run(|m| {
            self.pass(m, cfg, &guard, false);
            let notes = self.finish_pass(m, cfg, &guard, false);
            (m.counts, notes)
        });
        self.deliver(cfg, notes, &guard);
        counts
    }

    /// Calls the listener for one entry (inline, after the removal is complete).
    pub(super) fn notify<S>(
        &self,
        cfg: &Config<K, V, S>,
        idx: Idx,
        cause: RemovalCause,
        _guard: &Guard,
    ) {
        if let Some(listener) = &cfg.listener {
            let node = self.arena.node(idx);
            // SAFETY: the node was marked by this thread while pinned, and it is not freed
            // before `_guard` (held since then) is dropped (rule 5).
            unsafe { node.with_payload(|k, v| listener(k, v, cause)) };
        }
    }

    /// Calls the listener for the removals a maintenance pass made, outside the lock.
    pub(super) fn deliver<S>(
        &self,
        cfg: &Config<K, V, S>,
        notes: Vec<(Idx, RemovalCause)>,
        guard: &Guard,
    ) {
        if notes.is_empty() || cfg.listener.is_none() {
            return;
        }
        crate::listener::deliver_all(notes, |(idx, cause)| self.notify(cfg, idx, cause, guard));
    }

    /// Number of live entries as of the events applied so far: exact after a maintenance pass
    /// when no write is in flight (the cache's `len` runs one first).
    pub(crate) fn len(&self) -> usize {
        // Relaxed: a counter; the maintenance lock orders it after the pass that wrote it.
        self.live.load(Ordering::Relaxed).max(0) as usize
    }

    /// Appends a clone of every live entry to `out` (a snapshot of this shard, weakly
    /// consistent with concurrent writes).
    pub(crate) fn snapshot<S: BuildHasher>(&self, cfg: &Config<K, V, S>, out: &mut Vec<(K, V)>)
    where
        K: Clone,
        V: Clone,
    {
        let guard = epoch::pin();
        let table = self.current(&guard);
        let old = self.old_table(&guard);
        let mut seen: Vec<Idx> = Vec::new();
        for j in 0..table.len() {
            // Acquire: as in `chain_head`.
            let head = table.at(j).load(Ordering::Acquire);
            let (head, filter) = if head == UNINIT {
                let Some(old) = old else {
                    debug_assert!(false, "uninitialised bucket without an old table");
                    continue;
                };
                // Acquire: as in `chain_head`.
                (
                    old.at(j & old.mask() as usize).load(Ordering::Acquire) & IDX_MASK,
                    true,
                )
            } else {
                (head & IDX_MASK, old.is_some())
            };
            seen.clear();
            let mut cur = head;
            while cur != NIL {
                let node = self.arena.node(cur);
                // Acquire: as in `find`.
                let next = node.next.load(Ordering::Acquire);
                // SAFETY: reached through links while pinned (see `find`).
                let (mine, first) = unsafe {
                    node.with_payload(|k, _| {
                        let mine = !filter || bucket_of(cfg.hash(k), table.mask()) == j;
                        let first = mine
                            && !seen.iter().any(|&s| {
                                let other = self.arena.node(s);
                                other.tag() == node.tag() && other.with_payload(|ok, _| ok == k)
                            });
                        (mine, first)
                    })
                };
                if mine && first {
                    seen.push(cur);
                    if next & MARK == 0 && Self::alive(node, cfg) {
                        // SAFETY: as above.
                        out.push(unsafe { node.with_payload(|k, v| (k.clone(), v.clone())) });
                    }
                }
                cur = next & IDX_MASK;
            }
        }
    }

    /// Splits bucket `j` of a growing table off its old bucket (idempotent; any thread).
    pub(super) fn split_bucket<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        table: Table<'_>,
        j: usize,
        guard: &Guard,
    ) {
        let Some(old) = self.old_table(guard) else {
            debug_assert!(false, "uninitialised bucket without an old table");
            return;
        };
        let b = j & old.mask() as usize;
        // AcqRel: freezing makes every later insert CAS on this old head fail (so the chain we
        // walk is final); Acquire also makes the nodes linked before visible.
        let head = old.at(b).fetch_or(MARK, Ordering::AcqRel) & IDX_MASK;
        let mut cur = head;
        while cur != NIL {
            let node = self.arena.node(cur);
            // SAFETY: reached through links while pinned (see `find`).
            let hash = unsafe { node.with_payload(|k, _| cfg.hash(k)) };
            if bucket_of(hash, table.mask()) == j {
                break;
            }
            // Acquire: as in `find`.
            cur = node.next.load(Ordering::Acquire) & IDX_MASK;
        }
        // Release: publishes the chain to readers of the new bucket. If another thread split
        // the bucket first it stored the same value (the frozen chain is final), so a
        // failure changes nothing.
        let _ = table
            .at(j)
            .compare_exchange(UNINIT, cur, Ordering::Release, Ordering::Relaxed);
    }

    /// Publishes a table of `len` buckets, a power-of-two multiple of the current table's
    /// (called by the maintainer, see "Growing").
    /// Publishes a table of `len` buckets in front of the current one (which becomes the old
    /// table). False, changing nothing, if the allocator refused the memory: the shard then
    /// keeps its table (longer chains, never an abort) and a later pass tries again.
    pub(super) fn publish_larger(&self, len: usize, guard: &Guard) -> bool {
        let current = self.current(guard);
        debug_assert!(len > current.len() && len.is_power_of_two());
        let Some(table) = new_table(len, UNINIT, self.arena.huge()) else {
            return false;
        };
        // Release: the old table stays reachable for readers of uninitialised buckets; pairs
        // with the Acquire in `old_table`. Stored before the new table is published, so anyone
        // who sees the new table sees its old one.
        self.old.store(current.word(), Ordering::Release);
        // Release: publishes the new table; pairs with the Acquire loads in `current`.
        self.table.store(table, Ordering::Release);
        true
    }
}

impl<K, V> Drop for Shard<K, V> {
    fn drop(&mut self) {
        for slot in [&self.table, &self.old] {
            // Relaxed: `&mut self`, nothing runs concurrently.
            let word = slot.swap(0, Ordering::Relaxed);
            if word != 0 {
                // SAFETY: the shard owns its current and old tables (a replaced one is owned by
                // its retired function instead), and no other thread uses the shard any more.
                unsafe { free_table(word) };
            }
        }
        // SAFETY: no operation is in flight (we are dropping the last handle); retired nodes
        // are `RETIRED` and dropped by their retired functions (retire.rs).
        unsafe { self.arena.drop_live_payloads() };
    }
}
