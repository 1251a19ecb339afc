//! The maintainer: what the holder of a shard's maintenance lock does.
//!
//! It is the single owner of the shard's bookkeeping ([`Maintainer`]): per-node flags, the
//! queue of nodes to unlink, the batch of nodes to retire, the growth in progress, the timer
//! wheel and the eviction policy. It is the only thread that changes links other than bucket
//! heads, and the only one that retires nodes (node.rs, rules 4 and 5).
//!
//! Writers hand it [`Event`]s through the shard's [`Upkeep`] (the ring, the lock, and the
//! counters the maintainer publishes), and offer it passes. A pass ([`Pass`]): apply the
//! events writers recorded (bounded, so a pass ends even under a stream of writes), expire what
//! the wheel finds due, evict while the shard is over its share of the bound, unlink what was
//! marked, advance a growth, and finally retire what is done. Removals the maintainer itself
//! makes are collected as [`Notes`] and reported to the listener by the cache after the lock
//! is released.
//!
//! - [`ring`]: the bounded event buffer from writers to the maintainer.
//! - [`lock`]: the maintenance try-lock.

mod lock;
pub(crate) mod ring;

use std::hash::BuildHasher;
use std::mem;

use crossbeam_utils::CachePadded;

use self::lock::TryLock;
pub(crate) use self::ring::Event;
use self::ring::Ring;
use super::Config;
use super::reclaim::retire;
use super::table::grow::{Growth, MAX_BUCKETS, ZIPPED};
use super::table::node::{FLAG_BITS, FREQ_MAX, LIFE_RETIRED};
use super::table::{Idx, NEVER, NIL, Table, pages};
use crate::evict::policy::{EntryAccess, Policy};
use crate::expire::wheel::Wheel;
use crate::listener::RemovalCause;
use crate::stats::{Counter, WriteCounts};
use crate::sync::epoch::Guard;
use crate::sync::{AtomicI64, AtomicU64, Ordering};

/// Per-node flags kept by the maintainer, in the node's `state` byte (see node.rs; the growth
/// owns [`ZIPPED`]).
const SEEN_INSERT: u8 = 1 << 2;
const SEEN_REMOVE: u8 = 1 << 3;
const ADMITTED: u8 = 1 << 4;
const UNLINKED: u8 = 1 << 5;
const _: () = assert!((SEEN_INSERT | SEEN_REMOVE | ADMITTED | UNLINKED) & !FLAG_BITS == 0);
const _: () = assert!((SEEN_INSERT | SEEN_REMOVE | ADMITTED | UNLINKED) & ZIPPED == 0);
const DONE: u8 = SEEN_INSERT | SEEN_REMOVE | UNLINKED;

/// Nodes retired at once by an ordinary pass (one retired function, then one deferred
/// function and one flush of the epoch's bag, per batch, not per pass): a 64th of the nodes
/// the shard's first arena chunk holds (it is sized for the shard's expected entries), between
/// [`MIN_RETIRE_BATCH`] and [`MAX_RETIRE_BATCH`]. A flush moves crossbeam's whole bag (about
/// 2 KiB) to its global queue, so it pays to retire many nodes per flush; a batch is also
/// the most unreachable nodes a shard keeps alive waiting, so small shards keep small ones.
const MIN_RETIRE_BATCH: usize = 32;
const MAX_RETIRE_BATCH: usize = 512;

/// Ticks of the coarse clock: deadlines moved by reads (time to idle) are written at most once
/// per tick, and the timer wheel files entries by tick (2^20 ns, about a millisecond).
pub(crate) const TICK_SHIFT: u32 = 20;

/// Removals a pass made, for the listener (delivered by the cache once the lock is released).
pub(crate) type Notes = Vec<(Idx, RemovalCause)>;

/// The maintainer's single-owner state (behind the shard's maintenance lock).
#[derive(Default)]
pub(crate) struct Maintainer {
    /// Marked nodes waiting to be unlinked, each with a node that may be its predecessor
    /// (the node that replaced it, or [`NIL`]; see `Table::unlink_after`).
    unlink_queue: Vec<(Idx, Idx)>,
    /// Nodes whose unlink waits for the growth in progress to finish.
    postponed: Vec<Idx>,
    /// Unlinked nodes whose events are all in: to retire at the end of the pass.
    retired: Vec<Idx>,
    /// Removals this pass made, for the listener.
    notify: Notes,
    growth: Option<Growth>,
    /// Admitted entries with a deadline, filed by deadline (created with the first one).
    wheel: Option<Wheel>,
    /// Scratch: what the wheel found expired in this pass.
    expired: Vec<Idx>,
    /// The eviction policy of a bounded cache (created with the first admission). Boxed: it
    /// is over a kilobyte (the recency estimate's counts), and a maintainer is built and moved
    /// on the stack for every shard of every cache, bounded or not.
    policy: Option<Box<Policy>>,
    /// Writes counted for `Cache::stats` (see `stats.rs`): plain counters, as only the lock
    /// holder touches them.
    counts: WriteCounts,
}

/// How a pass runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum PassKind {
    /// Offered by a writer: skipped if another thread holds the lock.
    Offered,
    /// Waits for the lock (back-pressure, making room, reading the counters).
    Waited,
    /// Waits for the lock, expires every entry whose deadline has passed (not only those in
    /// the wheel's elapsed ticks) and retires everything done (`run_pending_tasks`, `len`).
    Full,
    /// Waits for the lock and retires everything done (`clear`).
    Clearing,
}

/// A shard's upkeep: the event ring writers fill, the maintenance lock around the
/// [`Maintainer`], and the counters the maintainer publishes for writers and for `len`.
pub(crate) struct Upkeep {
    ring: Ring,
    lock: TryLock<Maintainer>,
    /// Unmarked nodes in the table, as of the events the maintainer has applied: +1 per
    /// `Inserted`, -1 per removal. Written only by the maintainer (see `len`).
    live: CachePadded<AtomicI64>,
    /// The earliest time the timer wheel may expire something ([`NEVER`] if it holds
    /// nothing): writers offer a maintenance pass once it has passed. Written by the
    /// maintainer.
    next_expiry: CachePadded<AtomicU64>,
    /// Weight of the entries the maintainer has admitted and not yet retired (a hint for
    /// choosing where to make room). Written by the maintainer.
    size: CachePadded<AtomicU64>,
}

impl Upkeep {
    /// Upkeep with an event ring of `ring` slots.
    pub(crate) fn new(ring: usize) -> Self {
        Self {
            ring: Ring::new(ring),
            lock: TryLock::new(Maintainer::default()),
            live: CachePadded::new(AtomicI64::new(0)),
            next_expiry: CachePadded::new(AtomicU64::new(NEVER)),
            size: CachePadded::new(AtomicU64::new(0)),
        }
    }

    /// Number of live entries as of the events applied so far: exact after a maintenance pass
    /// when no write is in flight (the cache's `len` runs one first).
    pub(crate) fn len(&self) -> usize {
        // Relaxed: a counter; the maintenance lock orders it after the pass that wrote it.
        self.live.load(Ordering::Relaxed).max(0) as usize
    }

    /// Weight of the entries admitted by the maintainer (see the field).
    pub(crate) fn size(&self) -> u64 {
        // Relaxed: a hint.
        self.size.load(Ordering::Relaxed)
    }

    /// Whether the timer wheel has something due at `now`: writers then offer a pass.
    #[inline]
    pub(crate) fn expiry_due(&self, now: impl FnOnce() -> u64) -> bool {
        // Relaxed: a hint written by the maintainer.
        let next = self.next_expiry.load(Ordering::Relaxed);
        next != NEVER && now() >= next
    }

    /// Hands an event to the maintainer. Returns whether this writer should offer a
    /// maintenance pass (the producer of every `drain_threshold`-th event does: a power of
    /// two, no shared counter to read), and the removals a pass made on the way: if the ring
    /// is full, the writer applies back-pressure instead (waits for the lock, drains the ring
    /// and applies the event itself).
    #[inline]
    pub(crate) fn record<K, V, S>(
        &self,
        table: &Table<K, V>,
        cfg: &Config<K, V, S>,
        event: Event,
        guard: &Guard,
    ) -> (bool, Notes)
    where
        K: Eq + std::hash::Hash + Send + Sync + 'static,
        V: Send + Sync + 'static,
        S: BuildHasher,
    {
        match self.ring.push(event) {
            Ok(pos) => ((pos + 1) & (cfg.drain_threshold - 1) == 0, Vec::new()),
            Err(event) => (false, self.record_when_full(table, cfg, event, guard)),
        }
    }

    /// Back-pressure (see [`record`](Self::record)).
    #[cold]
    #[inline(never)]
    fn record_when_full<K, V, S>(
        &self,
        table: &Table<K, V>,
        cfg: &Config<K, V, S>,
        event: Event,
        guard: &Guard,
    ) -> Notes
    where
        K: Eq + std::hash::Hash + Send + Sync + 'static,
        V: Send + Sync + 'static,
        S: BuildHasher,
    {
        self.with_pass(table, cfg, guard, PassKind::Waited, |pass| {
            pass.apply(event)
        })
        .map_or_else(Vec::new, |((), notes)| notes)
    }

    /// Runs `f` holding the maintenance lock, without a pass: a compute's check and
    /// publication (`raw/shard/conditional.rs`), which nothing that marks nodes under this
    /// lock may interleave with. `f` must not record events (a full ring would make it wait
    /// for this very lock).
    pub(crate) fn exclusive<R>(&self, f: impl FnOnce() -> R) -> R {
        self.lock.run(|_| f())
    }

    /// Runs a pass of `kind` (`None` if it is [`Offered`](PassKind::Offered) and another
    /// thread holds the lock): the events recorded so far, expiry, eviction, unlinks and a
    /// growth step, then `f` with the pass, then the retirements; once the lock is released,
    /// collects what has waited out its grace periods (retire.rs). Returns what `f` returned
    /// and the removals to report, which the caller delivers (the lock is released by then).
    pub(crate) fn with_pass<K, V, S, R>(
        &self,
        table: &Table<K, V>,
        cfg: &Config<K, V, S>,
        guard: &Guard,
        kind: PassKind,
        f: impl FnOnce(&mut Pass<'_, K, V, S>) -> R,
    ) -> Option<(R, Notes)>
    where
        K: Eq + std::hash::Hash + Send + Sync + 'static,
        V: Send + Sync + 'static,
        S: BuildHasher,
    {
        let body = |m: &mut Maintainer| {
            let mut pass = Pass {
                m,
                table,
                up: self,
                cfg,
                guard,
            };
            pass.run(kind == PassKind::Full);
            let r = f(&mut pass);
            let notes = pass.finish(matches!(kind, PassKind::Full | PassKind::Clearing));
            (r, notes)
        };
        let done = match kind {
            PassKind::Offered => self.lock.try_run(body),
            _ => Some(self.lock.run(body)),
        };
        // Moves retirements along (a `membarrier` may start a grace period, and functions
        // whose grace periods have passed may run and free memory) after the lock is
        // released: writers whose event ring fills meanwhile wait for this lock, and would
        // sleep while this thread sits in the system call or in the frees.
        if done.is_some() && retire::outstanding() {
            retire::collect(guard, false);
        }
        done
    }
}

/// One maintenance pass: the maintainer's state, and what every step needs.
pub(crate) struct Pass<'a, K, V, S> {
    m: &'a mut Maintainer,
    table: &'a Table<K, V>,
    up: &'a Upkeep,
    cfg: &'a Config<K, V, S>,
    guard: &'a Guard,
}

/// The policy's view of the shard's nodes during eviction.
struct Access<'a, K, V, S> {
    table: &'a Table<K, V>,
    cfg: &'a Config<K, V, S>,
}

impl<K, V, S> EntryAccess for Access<'_, K, V, S>
where
    K: Eq + std::hash::Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
    S: BuildHasher,
{
    fn counter(&self, id: u32) -> u8 {
        self.table.node(id).counter()
    }

    fn set_counter(&mut self, id: u32, value: u8) {
        self.table.node(id).set_counter(value);
    }

    fn stamp(&self, id: u32) -> u8 {
        self.table.node(id).stamp()
    }

    fn hash(&self, id: u32) -> u64 {
        // SAFETY: the policy only names admitted nodes that are not retired yet, and the
        // maintainer holding the lock is pinned for the whole pass.
        unsafe { self.table.node(id).with_key(|k| self.cfg.hash(k)) }
    }
}

impl<K, V, S> Pass<'_, K, V, S>
where
    K: Eq + std::hash::Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
    S: BuildHasher,
{
    /// The pass proper: applies the recorded events, expires what is due (with `exact`, every
    /// entry whose deadline has passed; otherwise those in the wheel's elapsed ticks), evicts
    /// while over the bound, unlinks, and advances a growth.
    fn run(&mut self, exact: bool) {
        for _ in 0..self.up.ring.capacity() {
            match self.up.ring.pop() {
                Some(event) => self.apply(event),
                None => break,
            }
        }
        self.expire(exact);
        self.evict(None);
        self.process_unlinks();
        self.grow();
    }

    /// The shard's write counters.
    pub(crate) fn counts(&self) -> WriteCounts {
        self.m.counts
    }

    /// Adds `delta` to the live count. Only the maintainer writes it (see `Upkeep::len`): a
    /// load and a store, with no locked instruction.
    #[inline]
    fn add_live(&self, delta: i64) {
        // Relaxed: readers of the count need no ordering (see `Upkeep::len`).
        let live = self.up.live.load(Ordering::Relaxed);
        self.up.live.store(live + delta, Ordering::Relaxed);
    }

    /// Adds `delta` to the admitted weight (maintainer only, as `add_live`).
    #[inline]
    fn add_size(&self, delta: i64) {
        if delta != 0 {
            // Relaxed: a hint for `make_room`.
            let size = self.up.size.load(Ordering::Relaxed);
            self.up
                .size
                .store(size.wrapping_add_signed(delta), Ordering::Relaxed);
        }
    }

    #[inline]
    fn has(&self, idx: Idx, flag: u8) -> bool {
        self.table.node(idx).flags() & flag != 0
    }

    #[inline]
    fn add_flags(&self, idx: Idx, flags: u8) {
        let node = self.table.node(idx);
        node.set_flags(node.flags() | flags);
    }

    #[inline]
    fn clear_flags(&self, idx: Idx, flags: u8) {
        let node = self.table.node(idx);
        node.set_flags(node.flags() & !flags);
    }

    #[inline]
    fn weight_of(&self, idx: Idx) -> u64 {
        self.table.weight_of(self.cfg.weigher.is_some(), idx)
    }

    /// Expires what the wheel finds due, and publishes when the wheel next needs a pass.
    fn expire(&mut self, exact: bool) {
        let Some(wheel) = self.m.wheel.as_mut() else {
            return;
        };
        let mut expired = mem::take(&mut self.m.expired);
        // A ticker thread that fell behind does not hold this cache's expiry back.
        self.cfg.time.catch_up();
        let now = self.cfg.time.now();
        let table = self.table;
        // Relaxed (deadline): see `Shard::alive` (shard.rs). An entry touched since it was filed reports
        // its later deadline here and is re-filed, not expired.
        wheel.advance(
            now,
            exact,
            |idx| table.node(idx).deadline.load(Ordering::Relaxed),
            |idx| expired.push(idx),
        );
        let mut next = wheel.next_expiration().unwrap_or(NEVER);
        for idx in expired.drain(..) {
            if crate::raw::table::word_value::<V>() {
                // An in-place write may renew the entry under us: check its deadline and mark
                // it in one hold of the node (see `Node::mark_if_due`).
                match table.node(idx).mark_if_due(now) {
                    Ok(Some(claimed)) => self.marked(idx, claimed, RemovalCause::Expired),
                    Ok(None) => {}
                    Err(()) => {
                        // Renewed: filed again, and writers must hear when it comes due.
                        self.schedule(idx);
                        // Relaxed: see `Shard::alive`; the renewal is ordered by the hold.
                        next = next.min(table.node(idx).deadline.load(Ordering::Relaxed));
                    }
                }
                continue;
            }
            // If someone else marked it first, their removal is the one reported.
            self.mark(idx, RemovalCause::Expired);
        }
        self.m.expired = expired;
        // Relaxed: a hint for writers (see `Upkeep::expiry_due`).
        self.up.next_expiry.store(next, Ordering::Relaxed);
    }

    /// Files `idx` in the wheel at its current deadline, if it has one.
    #[inline]
    fn schedule(&mut self, idx: Idx) {
        // Relaxed: see `Shard::alive` (shard.rs); a later move is found when the slot comes due.
        let deadline = self.table.node(idx).deadline.load(Ordering::Relaxed);
        if deadline == NEVER {
            return;
        }
        let now = &self.cfg.time;
        let wheel = self
            .m
            .wheel
            .get_or_insert_with(|| Wheel::new(TICK_SHIFT, now.now()));
        wheel.schedule(idx, deadline);
        // Relaxed: a hint (see `expire`); never later than what the wheel would report.
        // A load and a store, not a read-modify-write: only the maintainer writes it.
        if deadline < self.up.next_expiry.load(Ordering::Relaxed) {
            self.up.next_expiry.store(deadline, Ordering::Relaxed);
        }
    }

    /// Ends a pass: unlinks what is pending, retires finished nodes (in batches of
    /// [`retire_batch`](Self::retire_batch), or all of them with `retire_all`), and returns the
    /// removals to report. (What has waited out its grace periods is collected after the
    /// lock is released, in [`Upkeep::with_pass`].)
    ///
    /// Nodes waiting for a full batch stay owned by the shard (unreachable, their payloads
    /// still alive): at most a batch per shard, freed by the next explicit pass or the drop.
    fn finish(&mut self, retire_all: bool) -> Notes {
        self.process_unlinks();
        if !self.m.retired.is_empty() && (retire_all || self.m.retired.len() >= self.retire_batch())
        {
            let batch = mem::take(&mut self.m.retired);
            for &idx in &batch {
                // The node is unreachable and only the maintainer (us, holding the lock)
                // handles it until the release below, which runs after this store (the
                // retirement happens-before it).
                self.table.node(idx).set_life(LIFE_RETIRED);
            }
            let arena = self.table.arena.clone();
            // The nodes are unreachable (unlinked, all their events consumed): no new
            // reference can be made. Threads inside a read or pinned now may still hold one;
            // this runs only after they have all left (retire.rs).
            retire::retire(self.cfg.owner, move || {
                // SAFETY: retired above: initialised payloads, unreachable, each listed once,
                // and both grace periods have passed, so no thread holds a reference (node.rs,
                // rule 5).
                unsafe { arena.release_all(&batch) };
            });
        }
        if self.m.notify.is_empty() {
            // Nothing to report: keep the buffer (taking it would reallocate on the next push).
            Vec::new()
        } else {
            mem::take(&mut self.m.notify)
        }
    }

    /// Applies one event.
    pub(crate) fn apply(&mut self, event: Event) {
        match event {
            Event::Inserted { idx, weight, hash } => {
                self.m.counts[Counter::Insert as usize] += 1;
                self.add_live(1);
                self.add_flags(idx, SEEN_INSERT);
                if self.has(idx, SEEN_REMOVE) {
                    // Its removal was applied before its insertion (a remover's event overtook
                    // the inserter's): nothing would dismiss it later, so it is never admitted.
                    self.try_retire(idx);
                } else {
                    self.admit(idx, weight, hash);
                }
            }
            Event::Removed { idx, cause } => {
                self.m.counts[Counter::of(cause) as usize] += 1;
                self.add_live(-1);
                self.add_flags(idx, SEEN_REMOVE);
                self.dismiss(idx);
                self.m.unlink_queue.push((idx, NIL));
            }
            Event::Replaced {
                idx,
                old,
                weight,
                hash,
                cause,
            } => {
                // `idx`'s insertion and `old`'s removal in one (the live count does not move).
                self.m.counts[Counter::Insert as usize] += 1;
                self.m.counts[Counter::of(cause) as usize] += 1;
                let (new_node, old_node) = (self.table.node(idx), self.table.node(old));
                let new_flags = new_node.flags() | SEEN_INSERT;
                let old_flags = old_node.flags() | SEEN_REMOVE;
                if new_flags & SEEN_REMOVE != 0 {
                    // The new node was removed already (its `Removed` event overtook this
                    // one): it is never admitted, and the old one simply leaves.
                    new_node.set_flags(new_flags);
                    old_node.set_flags(old_flags);
                    self.dismiss(old);
                    self.try_retire(idx);
                } else if old_flags & ADMITTED != 0 {
                    old_node.set_flags(old_flags & !ADMITTED);
                    new_node.set_flags(new_flags | ADMITTED);
                    self.transfer(old, idx, weight, hash);
                } else {
                    // The old node's own `Inserted` has not been applied yet (it comes later,
                    // finds it removed and retires it): admit the new one as new.
                    new_node.set_flags(new_flags);
                    old_node.set_flags(old_flags);
                    self.admit(idx, weight, hash);
                }
                self.m.unlink_queue.push((old, idx));
            }
            Event::Rescheduled { idx } => {
                // The deadline moved earlier: re-file it. (A stale event about a slot that was
                // reused is harmless: re-filing an admitted entry at its own deadline is a
                // no-op in effect; an entry not yet admitted is filed when it is.)
                if self.has(idx, ADMITTED) && !self.table.node(idx).is_marked() {
                    if let Some(wheel) = self.m.wheel.as_mut() {
                        wheel.cancel(idx);
                    }
                    self.schedule(idx);
                }
            }
        }
    }

    /// Admits a node (inserted, not removed yet): into the wheel if it has a deadline, into
    /// the policy if the cache is bounded.
    fn admit(&mut self, idx: Idx, weight: u32, hash: u64) {
        // Admitted even if it is already marked: its `Removed` event comes later and
        // dismisses it. The policy thus sees every insertion and removal in the writers'
        // order, whenever the passes happen to run (its ghost history, in particular, does
        // not depend on maintenance timing).
        self.add_flags(idx, ADMITTED);
        self.schedule(idx);
        self.add_size(i64::from(weight));
        if let Some(bound) = &self.cfg.bound {
            let weighted = self.cfg.weigher.is_some();
            self.m
                .policy
                .get_or_insert_with(|| {
                    Box::new(Policy::new(
                        bound.share(),
                        weighted,
                        bound.contest.clone(),
                        bound.shards(),
                    ))
                })
                .insert(idx, hash, weight);
        }
    }

    /// The admitted node `old` was superseded by `new` (same key, not removed; the caller moved
    /// the `ADMITTED` flag): `new` takes its place in the wheel and the policy, and its access
    /// counter, so that a replaced value keeps its key's standing instead of going back to
    /// probation.
    #[inline]
    fn transfer(&mut self, old: Idx, new: Idx, weight: u32, hash: u64) {
        let old_node = self.table.node(old);
        let new_node = self.table.node(new);
        // The new node is filed at its own deadline, not in the old node's slot: the old node
        // may be filed *later* than its current deadline (a `set_ttl` that moved it earlier
        // records its `Rescheduled` event after the swap, and the event is dropped once the
        // node is removed), so its slot says nothing about the new deadline.
        // (`replace_is_filed_at_its_own_deadline` is that interleaving.)
        if let Some(wheel) = self.m.wheel.as_mut() {
            wheel.cancel(old);
        }
        self.schedule(new);
        if self.cfg.weigher.is_some() {
            let old_weight = self.weight_of(old);
            self.add_size(i64::from(weight) - old_weight as i64);
        }
        if let Some(policy) = self.m.policy.as_mut() {
            if policy.replace(old, new, weight) {
                // The write is a request of the key: the recency estimate moves it from the
                // old node's generation to the new one's.
                policy.requested(hash, old_node.stamp(), new_node.stamp());
            } else {
                policy.insert(new, hash, weight);
            }
            // The key's count is the old node's plus the hits the new one had since it was
            // published (the new node's stamp is already current).
            let counter = old_node.counter();
            if counter > 0 {
                let had = new_node.counter();
                new_node.set_counter(had.saturating_add(counter).min(FREQ_MAX));
            }
        }
    }

    /// Marks `idx` on the maintainer's own account, for `cause`. Returns whether it did (if
    /// someone else marked it first, their removal is the one reported).
    pub(crate) fn mark(&mut self, idx: Idx, cause: RemovalCause) -> bool {
        let Some(claimed) = self.table.node(idx).mark() else {
            return false;
        };
        self.marked(idx, claimed, cause);
        true
    }

    /// The bookkeeping of a removal the maintainer marked (`claimed` as `Node::mark` returned).
    fn marked(&mut self, idx: Idx, claimed: bool, cause: RemovalCause) {
        // A claimed node's share belongs to the insert replacing it (see `Bound`).
        if !claimed && let Some(bound) = &self.cfg.bound {
            bound.release(self.weight_of(idx));
        }
        self.add_live(-1);
        self.m.counts[Counter::of(cause) as usize] += 1;
        // Without a listener there is no one to tell: no note (a note is a push here and a
        // buffer the pass hands out and someone frees).
        if self.cfg.listener.is_some() {
            self.m.notify.push((idx, cause));
        }
        self.add_flags(idx, SEEN_REMOVE);
        self.dismiss(idx);
        self.m.unlink_queue.push((idx, NIL));
    }

    /// Marks every node of the table (as `cause`): `clear`.
    pub(crate) fn mark_all(&mut self, cause: RemovalCause) {
        let table = self.table;
        let buckets = table.current(self.guard);
        for j in 0..buckets.len() {
            // Acquire: as in `Table::start`.
            if buckets.at(j).load(Ordering::Acquire) == super::table::UNINIT {
                table.split_bucket(|k| self.cfg.hash(k), buckets, j, self.guard);
            }
            // Acquire: as above.
            let mut cur = buckets.at(j).load(Ordering::Acquire) & super::table::IDX_MASK;
            while cur != NIL {
                let node = table.node(cur);
                // Acquire: as in `Table::find`.
                let next = node.next.load(Ordering::Acquire);
                self.mark(cur, cause);
                cur = next & super::table::IDX_MASK;
            }
        }
    }

    /// Unlinks the queued nodes, oldest first: a replaced node's hint is the node that replaced
    /// it, which sits just in front of it only until that one is unlinked in turn, so taking
    /// a chain of replacements of one key newest first sent every unlink but the first down
    /// the slow path (a walk from the bucket past every marked node; a hot key replaced from
    /// one thread cost twice the instructions).
    fn process_unlinks(&mut self) {
        let mut queue = mem::take(&mut self.m.unlink_queue);
        while !queue.is_empty() {
            // Unlinking marks superseded nodes, which queues them: a new round for those.
            for (idx, hint) in queue.drain(..) {
                self.unlink_one(idx, hint);
            }
            mem::swap(&mut queue, &mut self.m.unlink_queue);
        }
        // Keep the larger buffer for the next pass.
        if queue.capacity() > self.m.unlink_queue.capacity() {
            self.m.unlink_queue = queue;
        }
    }

    fn unlink_one(&mut self, idx: Idx, hint: Idx) {
        // During a growth, a node of an old chain may be reachable through several links
        // (zipped chains share nodes, and an unzipping round leaves old links in place
        // until readers are past them), so its unlink waits for the growth to end. Once
        // every old chain is recorded, any other node was inserted in front of a split
        // bucket: reachable only through that bucket (its head or the nodes inserted in
        // front of it, all of its class), it is unlinked as usual, so that replaced
        // entries do not pile up in the chains while a growth runs.
        if let Some(growth) = &self.m.growth
            && (growth.is_splitting() || self.has(idx, ZIPPED))
        {
            self.m.postponed.push(idx);
            return;
        }
        let table = self.table;
        // `hint` is in a chain if it was inserted (`SEEN_INSERT`: published) and this
        // maintainer has not unlinked it (`UNLINKED`; a retired node has neither flag, and
        // a slot retired during this pin is not reused before it ends; a hint kept across
        // passes may name a slot reused since, which then reads as not inserted, or as a
        // linked node, and either way `unlink_after` looks at that node as it is now):
        // only the maintainer unlinks, so a node inserted and not unlinked is reachable.
        let after = hint != NIL
            && table.node(hint).flags() & (SEEN_INSERT | UNLINKED) == SEEN_INSERT
            && table.unlink_after(hint, idx, |older| {
                self.mark(older, RemovalCause::Replaced);
            });
        if !after {
            let guard = self.guard;
            let cfg = self.cfg;
            table.unlink(
                |k| cfg.hash(k),
                idx,
                |older| {
                    self.mark(older, RemovalCause::Replaced);
                },
                guard,
            );
        }
        let node = table.node(idx);
        let flags = node.flags() | UNLINKED;
        node.set_flags(flags);
        if flags & DONE == DONE {
            self.retire(idx, flags);
        }
    }

    /// A removed entry leaves the wheel and the policy at once (not when it is retired, which
    /// may wait for a growth to finish), so eviction never picks an entry that is already gone.
    fn dismiss(&mut self, idx: Idx) {
        if !self.has(idx, ADMITTED) {
            return;
        }
        self.clear_flags(idx, ADMITTED);
        if let Some(wheel) = self.m.wheel.as_mut() {
            wheel.cancel(idx);
        }
        // A victim the policy chose is already forgotten: `remove` ignores it.
        if let Some(policy) = self.m.policy.as_mut() {
            policy.remove(idx);
        }
        self.add_size(-(self.weight_of(idx) as i64));
    }

    fn try_retire(&mut self, idx: Idx) {
        let flags = self.table.node(idx).flags();
        if flags & DONE == DONE {
            self.retire(idx, flags);
        }
    }

    /// Nodes retired per batch (see [`MAX_RETIRE_BATCH`]).
    #[inline]
    fn retire_batch(&self) -> usize {
        (self.table.arena.first_len() / 64).clamp(MIN_RETIRE_BATCH, MAX_RETIRE_BATCH)
    }

    /// Retires `idx`, whose flags (`flags`) say it is done: unlinked, with its insertion and
    /// its removal applied.
    #[inline]
    fn retire(&mut self, idx: Idx, flags: u8) {
        debug_assert_eq!(flags & DONE, DONE);
        debug_assert!(
            flags & ADMITTED == 0,
            "retiring an entry still in the wheel/policy"
        );
        self.table.node(idx).set_flags(0);
        if self.m.retired.capacity() == 0 {
            let batch = self.retire_batch();
            self.m.retired.reserve_exact(batch);
        }
        self.m.retired.push(idx);
    }

    /// Evicts while the cache is over its capacity: in an ordinary pass only while this shard
    /// holds more than its share; with `hard_target` (back-pressure), until the cache's
    /// reserved weight is at most that, whatever this shard holds.
    pub(crate) fn evict(&mut self, hard_target: Option<u64>) {
        let cfg = self.cfg;
        let Some(bound) = &cfg.bound else {
            return;
        };
        let target = hard_target.unwrap_or(bound.capacity());
        // The policy's queue targets are proportioned to what this shard holds: its share,
        // or more (up to the whole capacity) when the keys do not spread evenly. In a cache
        // that evicts in batches, an ordinary pass sets them before and after its victims,
        // not for each: it evicts a batch (a 128th of a share) at most, during which the
        // figure moves by less than a percent, and re-proportioning the queues for each
        // victim cost 70 instructions per evicting insert. Otherwise (and when making room)
        // for each victim, as the hit-ratio table was measured (with the figure set once per
        // pass in every cache, phases at 4000 in 8 shards fell 0.3 point).
        let batches = bound.batches();
        let proportion = |policy: &mut Policy| {
            policy.set_capacity(
                bound
                    .share()
                    .max(policy.weighted_size().min(bound.capacity())),
            );
        };
        let Some(policy) = self.m.policy.as_mut() else {
            return;
        };
        proportion(policy);
        loop {
            let Some(policy) = self.m.policy.as_mut() else {
                return;
            };
            if bound.reserved() <= target
                || (hard_target.is_none() && policy.weighted_size() <= bound.floor_share())
            {
                proportion(policy);
                return;
            }
            let victim = policy.evict_one(&mut Access {
                table: self.table,
                cfg,
            });
            let Some(victim) = victim else {
                proportion(policy);
                return;
            };
            // A victim a writer removed meanwhile is simply gone (its weight was released
            // when it was marked); evict the next one.
            self.mark(victim, RemovalCause::Size);
            if (hard_target.is_some() || !batches)
                && let Some(policy) = self.m.policy.as_mut()
            {
                proportion(policy);
            }
        }
    }

    /// Advances the growth in progress, and starts one if the shard holds more entries than
    /// its load allows (at once, in the same pass, if a growth has just finished with the
    /// shard still over its load). See `table/grow.rs`.
    fn grow(&mut self) {
        let table = self.table;
        let cfg = self.cfg;
        if let Some(mut growth) = self.m.growth.take() {
            // A step runs user code (the hasher, in `split_chain`). If it panics, the growth
            // must stay recorded: a growth forgotten half-way would leave zipped chains whose
            // nodes the next pass unlinks through one in-link and frees while another still
            // links to them. `split_chain` changes nothing before its last call of user code,
            // so the state put back is consistent and the next pass redoes that chain.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                growth.step(table, &|k| cfg.hash(k), cfg.owner, self.guard)
            }));
            let done = match step {
                Ok(done) => done,
                Err(panic) => {
                    self.m.growth = Some(growth);
                    std::panic::resume_unwind(panic);
                }
            };
            if !done {
                self.m.growth = Some(growth);
                return;
            }
            for &idx in growth.nodes() {
                self.clear_flags(idx, ZIPPED);
            }
            #[cfg(not(loom))]
            {
                // Relaxed: a growth that ends needs no one to see it at once (the reclaimer only
                // stops ticking a little later).
                cfg.growing.fetch_sub(1, Ordering::Relaxed);
            }
            // The unlinks that waited for the growth: done now, before a next growth starts
            // (which would postpone them again).
            let Maintainer {
                unlink_queue,
                postponed,
                ..
            } = &mut *self.m;
            unlink_queue.extend(postponed.drain(..).map(|idx| (idx, NIL)));
            self.process_unlinks();
            // The growth's bookkeeping is freed (`growth` drops here): hand the allocator's
            // free pages back to the system (see `pages::trim`).
            drop(growth);
            pages::trim();
        }
        let buckets = table.current(self.guard);
        // Relaxed: a trigger (only the maintainer writes `live`).
        let live = self.up.live.load(Ordering::Relaxed).max(0);
        // A shard grows past a load of one; a shard of a cache bounded by count grows past a
        // load of one half while its array is smaller than a pre-sized one would be
        // (`half_load_below`), so that a full cache is laid out as if pre-sized.
        let wanted = if (buckets.len() as u64) < cfg.half_load_below {
            live.saturating_mul(2)
        } else {
            live
        };
        if wanted > buckets.len() as i64 && buckets.len() < MAX_BUCKETS {
            // The power of two that brings the load back to at most its limit (at least twice
            // the array): a shard that filled faster than it could grow catches up in one
            // growth, and its chains are then spread over as many classes as they have nodes,
            // which the unzipping separates in a few rounds (see `unzip_chain`).
            let len = usize::try_from(wanted)
                .unwrap_or(MAX_BUCKETS)
                .next_power_of_two()
                .clamp(buckets.len() * 2, MAX_BUCKETS);
            if !table.publish_larger(len, self.guard) {
                // Out of memory: keep the array (chains get longer) and try again later.
                return;
            }
            // Relaxed: as above.
            let entries = usize::try_from(self.up.live.load(Ordering::Relaxed)).unwrap_or(0);
            self.m.growth = Some(Growth::new(entries));
            #[cfg(not(loom))]
            {
                // SeqCst: the reclaimer thread finishes the growth if writes stop before it is
                // done (a chore, see `RawCache::finish_growths`); this increment and the load
                // of its running flag in `retire::wake` pair with its store of that flag and
                // its load of this count when it exits (so one of the two sees the other, see
                // `retire::retire`).
                cfg.growing.fetch_add(1, Ordering::SeqCst);
                retire::wake();
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::listener::RemovalCause;
    use crate::raw::tests::raw_with;
    use crate::raw::{RawCache, Write};
    use crate::sync::epoch;

    type Raw = RawCache<u64, u64, ahash::RandomState>;

    fn check_all(cache: &Raw, keys: impl Iterator<Item = u64>, when: &str) {
        for k in keys {
            assert_eq!(
                cache.read(&k, |v| *v),
                Some(k * 3),
                "key {k} unreadable {when}"
            );
        }
    }

    /// The interleaving of a `set_ttl` that moved a deadline earlier (swapped, its
    /// `Rescheduled` event not recorded yet) with an insert replacing that entry: the old node
    /// is still filed at its first deadline (1 h), the new one must expire at its own (10 s).
    /// When the new node took over the old node's timer slot, it stayed in memory, counted by
    /// `len`, for the hour.
    #[test]
    fn replace_is_filed_at_its_own_deadline() {
        use crate::sync::Ordering;
        const S: u64 = 1_000_000_000;
        let (clock, mock) = quanta::Clock::mock();
        let mut cache = raw_with(ahash::RandomState::with_seeds(1, 2, 3, 4), 1, 8);
        cache.cfg.time = crate::clock::TimeSource::new(clock, true);
        let shard = &cache.shards[0];
        cache
            .insert(7, 70, Some(3600 * S), 1, Write::Upsert)
            .ok()
            .unwrap();
        cache.run_pending_tasks();
        let hash = cache.cfg.hash(&7u64);
        let old = {
            let guard = epoch::pin();
            let (idx, node, _) = shard.table.lookup(hash, &7u64, &guard).unwrap();
            // The `set_ttl` thread's swap, before it records its event.
            node.deadline.store(S, Ordering::Relaxed);
            idx
        };
        cache
            .insert(7, 71, Some(10 * S), 1, Write::Upsert)
            .ok()
            .unwrap();
        {
            let guard = epoch::pin();
            // The `set_ttl` thread records its event, after the replacement's.
            let event = super::Event::Rescheduled { idx: old };
            let (_, notes) = shard.upkeep.record(&shard.table, &cache.cfg, event, &guard);
            assert!(notes.is_empty());
        }
        cache.run_pending_tasks();
        mock.increment(std::time::Duration::from_secs(11));
        assert_eq!(cache.read(&7u64, |v| *v), None);
        assert_eq!(cache.len(), 0, "an entry past its deadline is still held");
    }

    fn insert(cache: &Raw, k: u64) {
        assert!(cache.insert(k, k * 3, None, 1, Write::Upsert).is_ok());
    }

    /// A shard far over its load grows in one growth to the power of two that brings the load
    /// back to one (here 16x), and every key stays readable at every step of the growth,
    /// while inserts land in front of split buckets and removals unlink nodes mid-growth.
    #[test]
    fn growth_jumps_to_load_one_and_keys_stay_readable() {
        let cache = raw_with(ahash::RandomState::with_seeds(1, 2, 3, 4), 1, 8);
        let shard = &cache.shards[0];
        let table_len = || shard.table.current(&epoch::pin()).len();
        let growing = || shard.upkeep.lock.run(|m| m.growth.is_some());
        assert_eq!(table_len(), 8);
        // 100 inserts while the maintenance lock is held: no pass can apply them (the event
        // ring holds 128), so the first pass finds 100 entries in 8 buckets.
        shard.upkeep.lock.run(|_| {
            for k in 0..100 {
                insert(&cache, k);
            }
        });
        assert_eq!(table_len(), 8);
        check_all(&cache, 0..100, "before the growth");
        cache.run_pending_tasks();
        assert_eq!(table_len(), 128, "one growth from 8 to 128 buckets");
        check_all(&cache, 0..100, "with the new table published");
        // The next pass splits every bucket: 100 nodes (at least 13 on some old chain) over
        // 16 classes per chain, so chains are zipped between several classes.
        cache.run_pending_tasks();
        check_all(&cache, 0..100, "with every bucket split");
        assert!(
            shard
                .upkeep
                .lock
                .run(|m| m.growth.as_ref().is_some_and(|g| g.unzipping_a_chain_of(3)))
        );
        let mut next = 100;
        let mut passes = 0;
        while growing() {
            // New keys (in front of split buckets), replacements and removals mid-growth.
            for k in next..next + 8 {
                insert(&cache, k);
            }
            insert(&cache, next - 50);
            assert_eq!(
                cache.remove(&(next + 7), RemovalCause::Explicit),
                Some((next + 7) * 3)
            );
            insert(&cache, next + 7);
            next += 8;
            check_all(&cache, 0..next, "during the growth");
            epoch::pin().flush();
            cache.run_pending_tasks();
            check_all(&cache, 0..next, "after a growth pass");
            passes += 1;
            assert!(passes < 100_000, "the growth never finished");
            if passes % 64 == 0 {
                std::thread::yield_now();
            }
        }
        check_all(&cache, 0..next, "after the growth");
        assert_eq!(cache.len(), next as usize);
        assert!(table_len() >= 128);
    }

    /// A key whose `Hash` panics when a countdown (per thread) reaches zero.
    #[derive(PartialEq, Eq, Debug)]
    struct Touchy(u64);

    std::thread_local! {
        static COUNTDOWN: std::cell::Cell<i64> = const { std::cell::Cell::new(-1) };
    }

    impl std::hash::Hash for Touchy {
        fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
            COUNTDOWN.with(|c| match c.get() {
                0 => {
                    c.set(-1);
                    panic!("the user's hash panics");
                }
                n if n > 0 => c.set(n - 1),
                _ => {}
            });
            self.0.hash(h);
        }
    }

    /// A hasher that panics while a chain is being split (found in review): the growth used to
    /// be forgotten, leaving zipped chains behind whose nodes the next pass unlinked through
    /// one in-link and freed while an old chain still linked to them. Now the growth stays
    /// recorded, finishes, and every key stays readable and removable.
    #[test]
    fn a_hash_panic_mid_split_keeps_the_growth() {
        use std::panic::{AssertUnwindSafe, catch_unwind};

        use crate::raw::table::UNINIT;
        use crate::raw::{Config, Layout};
        use crate::sync::Ordering;

        let cfg = Config {
            hasher: ahash::RandomState::with_seeds(1, 2, 3, 4),
            listener: None,
            time: crate::clock::TimeSource::new(quanta::Clock::mock().0, true),
            stats: crate::stats::StatsCounters::new(false, 1),
            drain_threshold: 32,
            ttl: crate::raw::table::NEVER,
            tti: crate::raw::table::NEVER,
            bound: None,
            weigher: None,
            growing: Default::default(),
            owner: crate::raw::reclaim::retire::owner(),
            half_load_below: 0,
        };
        let layout = Layout {
            shards: 1,
            buckets_per_shard: 8,
            entries_per_shard: 0,
            ring: 128,
            huge_pages: false,
        };
        let cache: RawCache<Touchy, u64, _> = RawCache::new(layout, cfg).unwrap();
        let shard = &cache.shards[0];
        let readable = |keys: &mut dyn Iterator<Item = u64>| {
            for k in keys {
                assert_eq!(cache.read(&Touchy(k), |v| *v), Some(k), "key {k}");
            }
        };
        shard.upkeep.lock.run(|_| {
            for k in 0..100 {
                assert!(cache.insert(Touchy(k), k, None, 1, Write::Upsert).is_ok());
            }
        });
        cache.run_pending_tasks(); // publishes the larger table
        assert_eq!(shard.table.current(&epoch::pin()).len(), 128);
        // The next pass splits the chains, hashing every node: panic half-way.
        COUNTDOWN.with(|c| c.set(40));
        let pass = catch_unwind(AssertUnwindSafe(|| cache.run_pending_tasks()));
        COUNTDOWN.with(|c| c.set(-1));
        assert!(pass.is_err(), "the hasher panicked in the split");
        assert!(
            shard.upkeep.lock.run(|m| m.growth.is_some()),
            "the growth is still recorded"
        );
        readable(&mut (0..100));
        // Removals and inserts while the growth goes on, then let it finish.
        for k in (0..100).step_by(3) {
            assert_eq!(cache.remove(&Touchy(k), RemovalCause::Explicit), Some(k));
        }
        // Bounded by time: grace periods are process-wide, and other tests' reads delay them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            epoch::pin().flush();
            cache.run_pending_tasks();
            if shard.upkeep.lock.run(|m| m.growth.is_none()) {
                break;
            }
        }
        assert!(
            shard.upkeep.lock.run(|m| m.growth.is_none()),
            "the growth finished"
        );
        let guard = epoch::pin();
        assert!(
            shard.table.old(&guard).is_none(),
            "the old table is detached"
        );
        let table = shard.table.current(&guard);
        assert!((0..table.len()).all(|j| table.at(j).load(Ordering::Acquire) != UNINIT));
        drop(guard);
        // Freed slots get reused by new keys; the old keys read right, the removed stay gone.
        for k in 1000..1050 {
            assert!(cache.insert(Touchy(k), k, None, 1, Write::Upsert).is_ok());
        }
        cache.run_pending_tasks();
        readable(&mut (0..100).filter(|k| k % 3 != 0));
        readable(&mut (1000..1050));
        for k in (0..100).step_by(3) {
            assert_eq!(cache.read(&Touchy(k), |v| *v), None, "removed key {k}");
        }
    }
}
