//! One shard: a table ([`Table`]: buckets and nodes) and its upkeep ([`Upkeep`]: the event
//! ring, the maintenance lock, the maintainer's counters); the keyed operations.
//!
//! # Reads
//! A read announces itself (a light read, `reclaim/light.rs`), loads the bucket array and the
//! bucket head with Acquire, walks the chain comparing the 16-bit tag before touching a key,
//! and stops at the first node of the key. No lock, no CAS, no write to shared memory except
//! the node's CLOCK counter when it is below its cap.
//!
//! # Writes
//! An insert links a new node at the head of its bucket with a CAS (retrying if the head
//! moved), then marks the node it superseded, if any. A remove marks the key's first node.
//! Both record an event for the maintainer. Nothing a writer does can make a reader wait.
//! Writers are pinned to crossbeam-epoch by their caller (`RawCache`), which also reports to
//! the listener the removals an operation made ([`Removed`]) while that pin protects them.

mod conditional;
mod expiry;

use std::borrow::Borrow;
use std::hash::BuildHasher;

pub(crate) use conditional::{Seen, Staged, Stale};

use super::maint::{Event, Notes, PassKind, TICK_SHIFT, Upkeep};
use super::reclaim::{Protected, light};
#[cfg(doc)]
use super::table::node::WRITING;
use super::table::{Idx, MARK, NEVER, Node, Table, UNINIT, bucket_of, tag_of, word_value};
use super::{Bound, Config};
use crate::listener::RemovalCause;
use crate::stats::WriteCounts;
use crate::sync::Ordering;
use crate::sync::epoch::{self, Guard};

const TICK_NS: u64 = 1 << TICK_SHIFT;

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
struct ShareOnUnwind<'a>(Option<(&'a Bound, u64)>);

impl Drop for ShareOnUnwind<'_> {
    fn drop(&mut self) {
        if let Some((bound, weight)) = self.0 {
            bound.release(weight);
        }
    }
}

/// An insert's node before it is published: released (its payload dropped, its slot freed)
/// if the insert leaves without publishing it, also when a user's `Eq` or `Clone` unwinds.
struct Unpublished<'a, K, V> {
    table: &'a Table<K, V>,
    idx: Option<Idx>,
}

impl<K, V> Drop for Unpublished<'_, K, V> {
    fn drop(&mut self) {
        if let Some(idx) = self.idx {
            // SAFETY: the node was initialised by this insert and never published (the insert
            // clears `idx` when its CAS publishes it), so nothing else can reach it.
            unsafe { self.table.arena.release(idx) };
        }
    }
}

/// How an insert treats a live value of its key, and the size bound.
#[derive(Clone, Copy)]
pub(crate) enum InsertMode<'a> {
    /// Replaces a live value; the cache has no bound.
    Upsert,
    /// Replaces a live value, holding a share of the bound before it publishes: the share of
    /// the live node of its key it replaces (claiming it, when the weights are equal), or its
    /// own, reserved through the function (which makes room if needed).
    UpsertBounded(&'a dyn Fn(u64)),
    /// Stores only if the key has no live value (whose clone is returned instead). With a
    /// bound, the caller reserved the entry's share before (and takes it back if nothing is
    /// stored).
    IfAbsent,
}

/// What an insert did.
pub(crate) enum Inserted<V> {
    /// The value was stored.
    Stored,
    /// `IfAbsent`, and the key had a live value: here is a clone of it.
    Present(V),
}

/// Removals an operation made, for the cache to report to the listener, in this order,
/// while the operation's pin still protects the nodes: those of a maintenance pass the
/// operation ran, then its own.
#[derive(Default)]
#[must_use]
pub(crate) struct Removed {
    pub(crate) pass: Notes,
    pub(crate) own: Option<(Idx, RemovalCause)>,
}

pub(crate) struct Shard<K, V> {
    pub(crate) table: Table<K, V>,
    pub(crate) upkeep: Upkeep,
}

impl<K, V> Shard<K, V>
where
    K: Eq + std::hash::Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// A shard with `buckets` buckets, room for `entries` nodes in its first arena chunk and
    /// an event ring of `ring` slots; `None` if the allocator refused the memory.
    pub(crate) fn new(buckets: usize, entries: usize, ring: usize, huge: bool) -> Option<Self> {
        Some(Self {
            table: Table::new(buckets, entries, huge)?,
            upkeep: Upkeep::new(ring),
        })
    }

    /// Pins this thread for an operation on `hash`, having first started the load of its
    /// bucket in the current array, so that the cache miss on the bucket overlaps the pin's
    /// barrier instead of following it.
    #[inline(always)]
    pub(crate) fn pin_for(&self, hash: u64) -> Guard {
        self.table.prefetch(hash);
        epoch::pin()
    }

    /// Calls `f` with the key and value of node `idx`, which an operation (or a pass) run
    /// under `guard` removed.
    pub(crate) fn with_removed<R>(
        &self,
        idx: Idx,
        _guard: &Guard,
        f: impl FnOnce(&K, &V) -> R,
    ) -> R {
        // SAFETY: the node was marked while `_guard` was held (the caller's operation, or a
        // pass that ran under it), and it is not freed before `_guard` is dropped (node.rs,
        // rule 5).
        unsafe { self.table.node(idx).with_payload(f) }
    }

    /// Whether the node's deadline is still ahead (`now` is read only if it has one).
    #[inline]
    pub(crate) fn alive<S>(node: &Node<K, V>, cfg: &Config<K, V, S>) -> bool {
        // The deadline is a single word; whichever value a racing `touch` or TTI read left is a
        // deadline the entry really had during this read. Acquire: pairs with the Release
        // store of an in-place write's deadline (`insert_in_place`), made after its value, so
        // that a reader that sees the later deadline sees the value written with it.
        let deadline = node.deadline.load(Ordering::Acquire);
        deadline == NEVER || cfg.time.now() < deadline
    }

    /// On a hit: whether the entry is alive, and if the cache has a time to idle, its
    /// deadline moved to `now + tti` (capped by its hard deadline), written at most once per
    /// tick so that a hot entry does not write its cache line on every read.
    #[inline]
    fn alive_on_hit<S>(&self, cfg: &Config<K, V, S>, idx: Idx, node: &Node<K, V>) -> bool {
        // Acquire: as in `alive`.
        let deadline = node.deadline.load(Ordering::Acquire);
        if deadline == NEVER {
            return true;
        }
        let now = cfg.time.now();
        if now >= deadline {
            return false;
        }
        if cfg.tti != NEVER {
            let mut idle = now.saturating_add(cfg.tti);
            let cap = self.table.cap.get(idx);
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

    /// Marks `node` removed (rule 3) and says whether it was alive when marked: `None` if
    /// another marker came first, else `(claimed, alive)`. A value word's node is held across
    /// the check and the mark, so that an in-place write cannot renew the entry in between
    /// (the removal would then take the renewed value, and report it as expired).
    fn mark_live<S>(node: &Node<K, V>, cfg: &Config<K, V, S>) -> Option<(bool, bool)> {
        if word_value::<V>() {
            if !node.hold() {
                return None;
            }
            let alive = Self::alive(node, cfg);
            return node.mark_held().map(|claimed| (claimed, alive));
        }
        let alive = Self::alive(node, cfg);
        node.mark().map(|claimed| (claimed, alive))
    }

    /// The weight of node `idx` (1 without a weigher).
    #[inline]
    fn weight_of<S>(&self, cfg: &Config<K, V, S>, idx: Idx) -> u64 {
        self.table.weight_of(cfg.weigher.is_some(), idx)
    }

    /// Weight of the entries admitted by the maintainer (a hint for `RawCache::make_room`).
    pub(crate) fn size(&self) -> u64 {
        self.upkeep.size()
    }

    /// Number of live entries as of the events applied so far (see `Upkeep::len`).
    pub(crate) fn len(&self) -> usize {
        self.upkeep.len()
    }

    /// Whether the timer wheel has something due: writers then offer a maintenance pass.
    #[inline]
    fn expiry_due<S>(&self, cfg: &Config<K, V, S>) -> bool {
        self.upkeep.expiry_due(|| cfg.time.now())
    }

    /// Whether a writer that has just recorded an event offers a maintenance pass: its ring
    /// position asks for one (`offer`), the timer wheel has something due, or this shard is
    /// over its part of the bound (`Bound::shard_over`).
    #[inline]
    fn wants_pass<S>(&self, cfg: &Config<K, V, S>, offer: bool) -> bool {
        offer
            || self.expiry_due(cfg)
            || cfg
                .bound
                .as_ref()
                .is_some_and(|b| b.shard_over(self.upkeep.size()))
    }

    /// Whether a writer that recorded no event (an in-place write) should offer a maintenance
    /// pass all the same: the timer wheel has something due, or the shard is over its part of
    /// the bound. Writes are what drive expiry when nobody reads, so a cache whose writes are
    /// all in place must still offer them.
    #[inline]
    pub(crate) fn upkeep_due<S>(&self, cfg: &Config<K, V, S>) -> bool {
        self.wants_pass(cfg, false)
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
        let table = &self.table;
        match own_ttl {
            Some(ttl) => table.lifetime.set(idx, ttl),
            None if table.lifetime.is_allocated(idx) => table.lifetime.set(idx, 0),
            None => {}
        }
        if cfg.tti != NEVER && cap != NEVER {
            table.cap.set(idx, cap);
        } else if table.cap.is_allocated(idx) {
            table.cap.set(idx, 0);
        }
    }

    /// Whether `key` has a live value, without counting as an access (no CLOCK bump, no idle
    /// extension, no hit or miss counted).
    pub(crate) fn contains<Q, S>(&self, cfg: &Config<K, V, S>, hash: u64, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.table.prefetch(hash);
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
        matches!(self.table.lookup(hash, key, guard),
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
        self.table.prefetch(hash);
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
        match self.table.lookup(hash, key, guard) {
            Some((idx, node, next)) if next & MARK == 0 && self.alive_on_hit(cfg, idx, node) => {
                // Only the eviction policy of a bounded cache reads the CLOCK byte, so an
                // unbounded cache's hits write nothing.
                if let Some(bound) = &cfg.bound {
                    node.touch(bound.sample(hash));
                }
                // SAFETY: found while protected (see `Table::find`).
                Some(unsafe { node.with_payload(|_, v| f(v)) })
            }
            _ => None,
        }
    }

    /// Replaces the value of `key`'s live entry in place, for a [`word_value`] type in a cache
    /// whose entries all weigh 1 and whose deadlines are set only by inserts and `touch`
    /// (no time to idle, no expiry hooks, no own lifetimes: the caller checks that): the
    /// node's value word is overwritten while holding the node ([`WRITING`]), its deadline
    /// renewed after it, and nothing else changes: no node is published or retired, and no
    /// event is recorded (the node keeps its place in the policy, its CLOCK counter and its
    /// slot in the wheel, as a replacing node would take them over; a later deadline is found
    /// when its old slot comes due).
    ///
    /// Returns the value it replaced, or `Err(value)` if it cannot be done so (no live entry,
    /// a marked or expired one, a deadline that would move earlier, or a node held through
    /// all the spins by other writers): the caller then inserts the usual way.
    ///
    /// Linearizable with the other writers: a marker that marks the node while this write
    /// holds it waits for the write before it reads the value (`Node::mark`), and the expiry
    /// checks the deadline while holding the node (`Node::mark_if_due`); if a newer node of
    /// the key was published after the lookup, this write comes before that insert, which
    /// then replaces (and reports) the value written here.
    pub(crate) fn insert_in_place<S>(
        &self,
        cfg: &Config<K, V, S>,
        hash: u64,
        key: &K,
        value: V,
        guard: &impl Protected,
    ) -> Result<V, V> {
        debug_assert!(word_value::<V>() && cfg.weigher.is_none() && cfg.tti == NEVER);
        let table = &self.table;
        let Some((idx, node, next)) = table.lookup_for_write(hash, key, guard) else {
            return Err(value);
        };
        if next & MARK != 0 {
            return Err(value);
        }
        let (deadline, _) = Self::expiry_of(cfg, cfg.ttl);
        if !node.begin_write(next) {
            return Err(value);
        }
        // Relaxed: the deadline of a value word's node, and its own lifetime, change only while
        // it is held (here, `retime`), and `begin_write`'s Acquire ordered this hold after the
        // last one. (The maintainer's expiry holds it too, `Node::mark_if_due`.)
        let old_deadline = node.deadline.load(Ordering::Relaxed);
        let expired = old_deadline != NEVER && cfg.time.now() >= old_deadline;
        // An entry with its own lifetime keeps the node path, which sets or clears it (a
        // column the in-place write does not keep).
        if expired || deadline < old_deadline || table.lifetime.is_allocated(idx) {
            // An expired entry is replaced as an expiry (by a new node), an earlier deadline
            // needs the wheel to hear of it, and an own lifetime is the node path's.
            node.end_write();
            return Err(value);
        }
        // SAFETY: a `word_value` type is 8 bytes of plain bits.
        let bits = unsafe { std::mem::transmute_copy::<V, u64>(&value) };
        // SAFETY: `V` is a `word_value` type, the node was found while protected (`guard`, see
        // `Table::find`), and we hold `WRITING`.
        let old = unsafe { node.write_word(bits) };
        if deadline != old_deadline {
            // Release: after the word, so that a reader that sees this deadline (Acquire, in
            // `alive`) sees the value written with it.
            node.deadline.store(deadline, Ordering::Release);
        }
        node.end_write();
        if let Some(bound) = &cfg.bound {
            node.written(bound.sample(hash));
        }
        cfg.stats.replaced_in_place();
        // SAFETY: as above: the bits of a `word_value`.
        Ok(unsafe { std::mem::transmute_copy::<u64, V>(&old) })
    }

    /// Inserts `key -> value` (see [`InsertMode`]), with its own time to live in ns, or the
    /// cache's default. Returns the key and value back if the shard cannot hold another node.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        hash: u64,
        key: K,
        value: V,
        own_ttl: Option<u64>,
        weight: u32,
        mode: InsertMode<'_>,
        guard: &Guard,
    ) -> Result<(Inserted<V>, Removed), (K, V)>
    where
        V: Clone,
    {
        let table = &self.table;
        // The bucket's load (a likely cache miss) overlaps the slot's allocation and
        // initialisation, which miss on their own lines.
        table.prefetch(hash);
        let Some(idx) = table.arena.alloc() else {
            return Err((key, value));
        };
        let node = table.node(idx);
        let tag = tag_of(hash);
        let (deadline, cap) = Self::expiry_of(cfg, own_ttl.unwrap_or(cfg.ttl));
        // SAFETY: `idx` was just taken from the arena, so this thread owns the slot (rule 1).
        unsafe { node.init(tag, deadline, key, value) };
        if let Some(recent) = cfg.bound.as_ref().and_then(|b| b.sample(hash)) {
            // Relaxed: the node is private; published by the Release CAS below.
            node.freq.store(recent.fresh_byte(), Ordering::Relaxed);
        }
        let mut unpublished = Unpublished {
            table,
            idx: Some(idx),
        };
        // Published with the node by the Release CAS below.
        self.set_columns(cfg, idx, own_ttl, cap);
        if cfg.weigher.is_some() {
            table.weights.set(idx, u64::from(weight));
        }
        let reserve = match mode {
            InsertMode::UpsertBounded(reserve) => Some(reserve),
            InsertMode::Upsert | InsertMode::IfAbsent => None,
        };
        let only_if_absent = matches!(mode, InsertMode::IfAbsent);
        // With `reserve`, this insert needs a share of the bound before it publishes: it takes
        // over the share of the live node of its key it replaces (claiming it), or reserves
        // its own.
        let mut share = Share::Needed;
        // Gives a held share back if a user's `Eq` panics before the node is published.
        let mut unwind = ShareOnUnwind(None);
        let superseded = loop {
            let buckets = table.current(guard);
            let bucket = buckets.bucket(hash);
            // Acquire: pairs with the Release CAS of whoever linked the current head, so that
            // `find` below sees the chain's nodes.
            let head = bucket.load(Ordering::Acquire);
            if head == UNINIT {
                table.split_bucket(
                    |k| cfg.hash(k),
                    buckets,
                    bucket_of(hash, buckets.mask()),
                    guard,
                );
                continue;
            }
            if head & MARK != 0 {
                // Frozen: a larger array has been published since we loaded this one.
                continue;
            }
            // SAFETY: we own the node (not yet published), so its payload is initialised.
            let older = unsafe { node.with_key(|k| table.find(head, tag, k, guard)) };
            let older = match older {
                Some((old_idx, old, next)) if next & MARK == 0 => {
                    if only_if_absent && Self::alive(old, cfg) {
                        // SAFETY: found while pinned (see `Table::find`).
                        let present = unsafe { old.with_payload(|_, v| v.clone()) };
                        // `unpublished` frees our node.
                        return Ok((Inserted::Present(present), Removed::default()));
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
        // Published: the share and the slot are the node's now.
        unwind.0 = None;
        unpublished.idx = None;
        let mut removed = Removed::default();
        let mut event = Event::Inserted { idx, weight, hash };
        if let Some(old_idx) = superseded {
            let old = table.node(old_idx);
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
                removed.own = Some((old_idx, cause));
                event = Event::Replaced {
                    idx,
                    old: old_idx,
                    weight,
                    hash,
                    cause,
                };
            }
        }
        let (offer, notes) = self.upkeep.record(table, cfg, event, guard);
        removed.pass = notes;
        if self.wants_pass(cfg, offer) {
            removed.pass.extend(self.try_maintain(cfg, guard));
        }
        Ok((Inserted::Stored, removed))
    }

    /// Removes `key`, returning its value if it was live; the removal is for `cause` (or
    /// `Expired` if the entry's deadline had passed).
    pub(crate) fn remove<Q, S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        hash: u64,
        key: &Q,
        cause: RemovalCause,
        guard: &Guard,
    ) -> (Option<V>, Removed)
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
        V: Clone,
    {
        // Removals reattributed to a compute that replaced the value (conditional.rs).
        let mut earlier = Notes::new();
        loop {
            let Some((idx, node, next)) = self.table.lookup(hash, key, guard) else {
                return (None, Removed::default().after(earlier));
            };
            if next & MARK != 0 {
                return (None, Removed::default().after(earlier));
            }
            if let Some((claimed, live)) = Self::mark_live(node, cfg) {
                if self.overtaken_by_compute(cfg, idx, claimed, &mut earlier, guard) {
                    // A compute replaced the value as we marked it: remove its value instead.
                    continue;
                }
                let cause = if live { cause } else { RemovalCause::Expired };
                // SAFETY: found while pinned (see `Table::find`).
                let value = live.then(|| unsafe { node.with_payload(|_, v| v.clone()) });
                let removed = self.writer_marked(cfg, idx, claimed, cause, guard);
                return (value, removed.after(earlier));
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
        guard: &Guard,
    ) -> (bool, Removed)
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let table = &self.table;
        let Some((idx, node, next)) = table.lookup(hash, key, guard) else {
            return (false, Removed::default());
        };
        if next & MARK != 0 || !Self::alive(node, cfg) {
            return (false, Removed::default());
        }
        // A value word's node is held while its lifetime and deadline change, as an in-place
        // write holds it (which reads both): neither undoes the other's.
        let held = word_value::<V>();
        if held && !node.hold() {
            return (false, Removed::default());
        }
        if held && !Self::alive(node, cfg) {
            node.end_write();
            return (false, Removed::default());
        }
        let lifetime = match own_ttl {
            Some(ttl) => {
                table.lifetime.set(idx, ttl);
                ttl
            }
            None => match table.lifetime.get(idx) {
                0 => cfg.ttl,
                own => own,
            },
        };
        if lifetime == 0 {
            // Already expired: remove it now, as an expiry.
            let removed = match if held { node.mark_held() } else { node.mark() } {
                Some(claimed) => {
                    let mut earlier = Notes::new();
                    if self.overtaken_by_compute(cfg, idx, claimed, &mut earlier, guard) {
                        // A compute replaced the value as we marked it: retime its value.
                        let (live, removed) = self.retime(cfg, hash, key, own_ttl, guard);
                        return (live, removed.after(earlier));
                    }
                    self.writer_marked(cfg, idx, claimed, RemovalCause::Expired, guard)
                }
                None => Removed::default(),
            };
            return (true, removed);
        }
        let (deadline, cap) = Self::expiry_of(cfg, lifetime);
        if cfg.tti != NEVER {
            table.cap.set(idx, if cap == NEVER { 0 } else { cap });
        }
        // Relaxed: the deadline is one word (see `alive`). A later deadline needs nothing more:
        // the wheel re-files the entry when its old slot comes due.
        let old = node.deadline.swap(deadline, Ordering::Relaxed);
        if held {
            node.end_write();
        }
        let mut removed = Removed::default();
        if deadline < old {
            let (offer, notes) = self
                .upkeep
                .record(table, cfg, Event::Rescheduled { idx }, guard);
            removed.pass = notes;
            if offer {
                removed.pass.extend(self.try_maintain(cfg, guard));
            }
        }
        (true, removed)
    }

    /// Remaining lifetime of `key`'s live entry in ns ([`NEVER`] if it does not expire).
    pub(crate) fn remaining<Q, S>(&self, cfg: &Config<K, V, S>, hash: u64, key: &Q) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let guard = self.pin_for(hash);
        let (_, node, next) = self.table.lookup(hash, key, &guard)?;
        if next & MARK != 0 {
            return None;
        }
        // Relaxed: a single word, whichever value a racing writer left (nothing is read after
        // it that it must order).
        let deadline = node.deadline.load(Ordering::Relaxed);
        if deadline == NEVER {
            return Some(NEVER);
        }
        let now = cfg.time.now();
        (now < deadline).then(|| deadline - now)
    }

    /// Like `read`, but an entry whose deadline has passed and that the maintainer has not
    /// reclaimed yet is returned once more, and removed (reported as `Expired`). The flag
    /// says which: `true` for expired.
    pub(crate) fn read_stale<Q, S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        hash: u64,
        key: &Q,
        guard: &Guard,
    ) -> (Option<(V, bool)>, Removed)
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
        V: Clone,
    {
        let Some((idx, node, next)) = self.table.lookup(hash, key, guard) else {
            return (None, Removed::default());
        };
        if next & MARK != 0 {
            return (None, Removed::default());
        }
        if self.alive_on_hit(cfg, idx, node) {
            if let Some(bound) = &cfg.bound {
                node.touch(bound.sample(hash));
            }
            // SAFETY: found while pinned (see `Table::find`).
            let value = unsafe { node.with_payload(|_, v| v.clone()) };
            return (Some((value, false)), Removed::default());
        }
        let marked = if word_value::<V>() {
            // Held across the check and the mark (see `mark_live`): an in-place write may have
            // renewed the entry since the check above, and then it is live.
            if !node.hold() {
                return (None, Removed::default());
            }
            if Self::alive(node, cfg) {
                // SAFETY: found while pinned (see `Table::find`); a value word's clone is a
                // copy (no user code while the node is held).
                let value = unsafe { node.with_payload(|_, v| v.clone()) };
                node.end_write();
                return (Some((value, false)), Removed::default());
            }
            node.mark_held()
        } else {
            node.mark()
        };
        let Some(claimed) = marked else {
            return (None, Removed::default());
        };
        let mut earlier = Notes::new();
        if self.overtaken_by_compute(cfg, idx, claimed, &mut earlier, guard) {
            // A compute replaced the value as we marked it: read its value instead.
            let (found, removed) = self.read_stale(cfg, hash, key, guard);
            return (found, removed.after(earlier));
        }
        // SAFETY: found while pinned (see `Table::find`).
        let value = unsafe { node.with_payload(|_, v| v.clone()) };
        let removed = self.writer_marked(cfg, idx, claimed, RemovalCause::Expired, guard);
        (Some((value, true)), removed)
    }

    /// Bookkeeping after a writer (not the maintainer) marked `idx` for `cause`: the weight
    /// back to the bound, an event for the maintainer, and a pass if one is due.
    fn writer_marked<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        idx: Idx,
        claimed: bool,
        cause: RemovalCause,
        guard: &Guard,
    ) -> Removed {
        self.writer_removed(cfg, idx, claimed);
        let (offer, mut pass) =
            self.upkeep
                .record(&self.table, cfg, Event::Removed { idx, cause }, guard);
        if offer || self.expiry_due(cfg) {
            pass.extend(self.try_maintain(cfg, guard));
        }
        Removed {
            pass,
            own: Some((idx, cause)),
        }
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

    /// Runs a maintenance pass if the lock is free; the removals it made.
    pub(crate) fn try_maintain<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        guard: &Guard,
    ) -> Notes {
        self.upkeep
            .with_pass(&self.table, cfg, guard, PassKind::Offered, |_| ())
            .map_or_else(Vec::new, |((), notes)| notes)
    }

    /// Runs a maintenance pass waiting for the lock, then evicts from this shard (whatever its
    /// share) until the cache's reserved weight is at most `target` or the shard has nothing
    /// left to evict (back-pressure, see `RawCache::make_room`).
    pub(crate) fn evict_to<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        target: u64,
        guard: &Guard,
    ) -> Notes {
        self.upkeep
            .with_pass(&self.table, cfg, guard, PassKind::Waited, |pass| {
                pass.evict(Some(target))
            })
            .map_or_else(Vec::new, |((), notes)| notes)
    }

    /// Runs a maintenance pass, waiting for the lock, that expires every entry whose deadline
    /// has passed and retires everything done.
    pub(crate) fn maintain<S: BuildHasher>(&self, cfg: &Config<K, V, S>, guard: &Guard) -> Notes {
        self.upkeep
            .with_pass(&self.table, cfg, guard, PassKind::Full, |_| ())
            .map_or_else(Vec::new, |((), notes)| notes)
    }

    /// The shard's write counters, after a pass that applies its pending events.
    pub(crate) fn counts<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        guard: &Guard,
    ) -> (WriteCounts, Notes) {
        self.upkeep
            .with_pass(&self.table, cfg, guard, PassKind::Waited, |pass| {
                pass.counts()
            })
            .unwrap_or_default()
    }

    /// Removes every entry (weakly consistent: entries inserted concurrently may survive).
    pub(crate) fn clear<S: BuildHasher>(&self, cfg: &Config<K, V, S>, guard: &Guard) -> Notes {
        self.upkeep
            .with_pass(&self.table, cfg, guard, PassKind::Clearing, |pass| {
                pass.mark_all(RemovalCause::Cleared)
            })
            .map_or_else(Vec::new, |((), notes)| notes)
    }

    /// Appends a clone of every live entry to `out` (a snapshot of this shard, weakly
    /// consistent with concurrent writes).
    pub(crate) fn snapshot<S: BuildHasher>(&self, cfg: &Config<K, V, S>, out: &mut Vec<(K, V)>)
    where
        K: Clone,
        V: Clone,
    {
        let guard = epoch::pin();
        let table = &self.table;
        let buckets = table.current(&guard);
        let old = table.old(&guard);
        let mut seen: Vec<Idx> = Vec::new();
        for j in 0..buckets.len() {
            // Acquire: as in `Table::start`.
            let head = buckets.at(j).load(Ordering::Acquire);
            let (head, filter) = if head == UNINIT {
                let Some(old) = old else {
                    debug_assert!(false, "uninitialised bucket without an old array");
                    continue;
                };
                // Acquire: as in `Table::start`.
                (
                    old.at(j & old.mask() as usize).load(Ordering::Acquire)
                        & super::table::IDX_MASK,
                    true,
                )
            } else {
                (head & super::table::IDX_MASK, old.is_some())
            };
            seen.clear();
            let mut cur = head;
            while cur != super::table::NIL {
                let node = table.node(cur);
                // Acquire: as in `Table::find`.
                let next = node.next.load(Ordering::Acquire);
                // SAFETY: reached through links while pinned (see `Table::find`).
                let (mine, first) = unsafe {
                    node.with_key(|k| {
                        let mine = !filter || bucket_of(cfg.hash(k), buckets.mask()) == j;
                        let first = mine
                            && !seen.iter().any(|&s| {
                                let other = table.node(s);
                                other.tag() == node.tag() && other.with_key(|ok| ok == k)
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
                cur = next & super::table::IDX_MASK;
            }
        }
    }
}
