//! The maintainer: what the holder of a shard's maintenance lock does.
//!
//! It is the single owner of the shard's bookkeeping ([`Maint`]): per-node flags, the queue of
//! nodes to unlink, the batch of nodes to retire, the growth state (and, in later layers, the
//! timer wheel and the eviction policy). It is the only thread that changes links other than
//! bucket heads, and the only one that retires nodes (node.rs, rules 4 and 5).
//!
//! A pass: apply the events writers recorded (bounded, so a pass ends even under a stream of
//! writes), unlink what was marked, advance a growth, retire what is done. Removals the
//! maintainer itself makes are collected and reported to the listener after the lock is
//! released.

use std::hash::BuildHasher;
use std::mem;

use super::Config;
use super::node::{
    FLAG_BITS, FREQ_MAX, IDX_MASK, Idx, LIFE_RETIRED, LINK_BITS, MARK, NEVER, NIL, UNINIT,
};
use super::ring::{Event, EventKind};
use super::shard::{Shard, TICK_SHIFT, tag_of};
use super::table::{Table, bucket_of, free_table};
use super::{light, retire};
use crate::evict::policy::{EntryAccess, Policy};
use crate::expire::wheel::Wheel;
use crate::listener::RemovalCause;
use crate::stats::{Counter, WriteCounts};
use crate::sync::epoch::Guard;
use crate::sync::{Arc, AtomicBool, Ordering};

/// Per-node flags kept by the maintainer, in the node's `state` byte (see node.rs).
const SEEN_INSERT: u8 = 1 << 2;
const SEEN_REMOVE: u8 = 1 << 3;
const ADMITTED: u8 = 1 << 4;
const UNLINKED: u8 = 1 << 5;
/// During growth: the node is on one of the old table's (frozen) chains. Its unlink waits for
/// the growth to end; a node without the flag (inserted in front of a new bucket after it was
/// split) can be unlinked at once.
const ZIPPED: u8 = 1 << 6;
const _: () = assert!((SEEN_INSERT | SEEN_REMOVE | ADMITTED | UNLINKED | ZIPPED) & !FLAG_BITS == 0);
const DONE: u8 = SEEN_INSERT | SEEN_REMOVE | UNLINKED;

/// Nodes retired at once by an ordinary pass (one retired function, then one deferred
/// function and one flush of the epoch's bag, per batch, not per pass): a 64th of the nodes
/// the shard's first arena chunk holds (it is sized for the shard's expected entries), between
/// [`MIN_RETIRE_BATCH`] and [`MAX_RETIRE_BATCH`]. A flush moves crossbeam's whole bag (about
/// 2 KiB) to its global queue, so it pays to retire many nodes per flush; a batch is also
/// the most unreachable nodes a shard keeps alive waiting, so small shards keep small ones.
const MIN_RETIRE_BATCH: usize = 32;
const MAX_RETIRE_BATCH: usize = 512;

/// Work (nodes visited plus buckets initialised) one pass spends on a growth, beyond the
/// chain it is in the middle of.
const GROWTH_BUDGET: usize = 16384;
/// Most nodes one link skips per unzipping round (bounds a round's cost on a pathological
/// chain; skipping fewer is as safe, see `unzip_chain`).
const MAX_SKIP: u32 = 256;
/// Largest table of one shard.
const MAX_BUCKETS: usize = 1 << 30;

#[derive(Default)]
pub(crate) struct Maint {
    /// Marked nodes waiting to be unlinked, each with a node that may be its predecessor
    /// (the node that replaced it, or [`NIL`]; see `unlink`).
    unlink_queue: Vec<(Idx, Idx)>,
    /// Nodes whose unlink waits for the growth in progress to finish.
    postponed: Vec<Idx>,
    /// Unlinked nodes whose events are all in: to retire at the end of the pass.
    retired: Vec<Idx>,
    /// Removals this pass made, for the listener.
    notify: Vec<(Idx, RemovalCause)>,
    growth: Option<Growth>,
    /// Admitted entries with a deadline, filed by deadline (created with the first one).
    wheel: Option<Wheel>,
    /// Scratch: what the wheel found expired in this pass.
    expired: Vec<Idx>,
    /// The eviction policy of a bounded cache (created with the first admission).
    policy: Option<Policy>,
    /// Writes counted for `Cache::stats` (see `stats.rs`): plain counters, as only the
    /// lock holder touches them.
    pub(super) counts: WriteCounts,
}

/// The policy's view of the shard's nodes during eviction.
struct Access<'a, K, V, S> {
    shard: &'a Shard<K, V>,
    cfg: &'a Config<K, V, S>,
}

impl<K, V, S> EntryAccess for Access<'_, K, V, S>
where
    K: Eq + std::hash::Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
    S: BuildHasher,
{
    fn counter(&self, id: u32) -> u8 {
        // Relaxed: the CLOCK counter is a hint (see `Node::touch_freq`).
        self.shard.arena.node(id).freq.load(Ordering::Relaxed)
    }

    fn set_counter(&mut self, id: u32, value: u8) {
        // Relaxed: as above; a concurrent hit may overwrite it, which only keeps it warmer.
        self.shard
            .arena
            .node(id)
            .freq
            .store(value, Ordering::Relaxed);
    }

    fn hash(&self, id: u32) -> u64 {
        // SAFETY: the policy only names admitted nodes that are not retired yet, and the
        // maintainer holding the lock is pinned for the whole pass.
        unsafe {
            self.shard
                .arena
                .node(id)
                .with_payload(|k, _| self.cfg.hash(k))
        }
    }
}

enum Phase {
    /// Every old chain is frozen and recorded, and the new buckets it feeds are split off it.
    Splitting,
    /// The zipped chains are separated, one round per grace period.
    Unzipping,
}

/// A growth in progress: the old table's chains, recorded when they were frozen.
struct Growth {
    phase: Phase,
    /// Next old bucket to split.
    progress: usize,
    /// The grace period between two steps, if one is running (see [`Grace`]).
    grace: Option<Grace>,
    /// The nodes of the old chains, chain after chain, each chain in its frozen order.
    nodes: Vec<Idx>,
    /// Per node (as in `nodes`): position in its chain of the first node of its class (its
    /// new bucket). Two nodes of a chain have one class iff these are equal.
    first: Vec<u32>,
    /// Per node: its link as the maintainer last set it, as a position in its chain (the
    /// chain's length for NIL). Only the maintainer changes these links' index bits.
    next: Vec<u32>,
    /// Chains (start in `nodes`, length) still to go through the current round.
    zipped: Vec<(u32, u32)>,
    /// Chains that went through the current round and are still zipped.
    unzipped: Vec<(u32, u32)>,
    scratch: Scratch,
}

/// Buffers reused from one chain to the next.
#[derive(Default)]
struct Scratch {
    /// The chain being split: (node, class), gathered before any growth state changes.
    walked: Vec<(Idx, u32)>,
    firsts: Vec<u32>,
    child: Vec<u32>,
    sibling: Vec<u32>,
    enter: Vec<u32>,
    leave: Vec<u32>,
    stack: Vec<u32>,
    target: Vec<u32>,
}

impl Growth {
    /// A growth of a shard holding about `entries` entries: the per-node records are sized for
    /// them up front (a few more come from inserts during the split), so that they are not
    /// reallocated while they fill (each reallocation left a freed buffer in the allocator's
    /// heap, about 3 bytes per entry of a cache that grew to a million).
    fn new(entries: usize) -> Self {
        let room = entries + entries / 8;
        Growth {
            phase: Phase::Splitting,
            progress: 0,
            grace: None,
            nodes: Vec::with_capacity(room),
            first: Vec::with_capacity(room),
            next: Vec::with_capacity(room),
            zipped: Vec::new(),
            unzipped: Vec::new(),
            scratch: Scratch::default(),
        }
    }
}

/// A grace period of both kinds: over once every thread that is pinned to crossbeam-epoch
/// now has unpinned, and every light read in progress now has ended.
struct Grace {
    /// Set by an epoch-deferred function.
    pinned: Arc<AtomicBool>,
    /// The light grace period's token (light.rs).
    light: u64,
}

/// Starts a grace period (after the writes it must separate from later ones).
fn start_grace(guard: &Guard) -> Grace {
    let flag = Arc::new(AtomicBool::new(false));
    let done = flag.clone();
    // Release: pairs with the Acquire in `grace_over`.
    guard.defer(move || done.store(true, Ordering::Release));
    guard.flush();
    Grace {
        pinned: flag,
        light: light::token(),
    }
}

fn grace_over(grace: &Grace) -> bool {
    // Acquire: pairs with the Release in the deferred function.
    grace.pinned.load(Ordering::Acquire) && light::advance(grace.light, false)
}

impl<K, V> Shard<K, V>
where
    K: Eq + std::hash::Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Adds `delta` to the live count. Only the maintainer writes it (see `Shard::len`): a
    /// load and a store, with no locked instruction.
    #[inline]
    fn add_live(&self, delta: i64) {
        // Relaxed: readers of the count need no ordering (see `Shard::len`).
        let live = self.live.load(Ordering::Relaxed);
        self.live.store(live + delta, Ordering::Relaxed);
    }

    /// Adds `delta` to the admitted weight (maintainer only, as `add_live`).
    #[inline]
    fn add_size(&self, delta: i64) {
        if delta != 0 {
            // Relaxed: a hint for `make_room`.
            let size = self.size.load(Ordering::Relaxed);
            self.size
                .store(size.wrapping_add_signed(delta), Ordering::Relaxed);
        }
    }

    #[inline]
    fn has(&self, idx: Idx, flag: u8) -> bool {
        self.arena.node(idx).flags() & flag != 0
    }

    #[inline]
    fn add_flags(&self, idx: Idx, flags: u8) {
        let node = self.arena.node(idx);
        node.set_flags(node.flags() | flags);
    }

    #[inline]
    fn clear_flags(&self, idx: Idx, flags: u8) {
        let node = self.arena.node(idx);
        node.set_flags(node.flags() & !flags);
    }

    /// One maintenance pass (the lock is held by the caller). With `exact`, every entry whose
    /// deadline has passed is expired; otherwise only those in the wheel's elapsed ticks.
    pub(super) fn pass<S: BuildHasher>(
        &self,
        m: &mut Maint,
        cfg: &Config<K, V, S>,
        guard: &Guard,
        exact: bool,
    ) {
        for _ in 0..self.ring.capacity() {
            match self.ring.pop() {
                Some(event) => self.apply(m, cfg, event, guard),
                None => break,
            }
        }
        self.expire(m, cfg, exact);
        self.evict(m, cfg, None, guard);
        self.process_unlinks(m, cfg, guard);
        self.grow(m, cfg, guard);
    }

    /// Expires what the wheel finds due, and publishes when the wheel next needs a pass.
    fn expire<S>(&self, m: &mut Maint, cfg: &Config<K, V, S>, exact: bool) {
        let Some(wheel) = m.wheel.as_mut() else {
            return;
        };
        let mut expired = std::mem::take(&mut m.expired);
        let now = cfg.time.now();
        // Relaxed (deadline): see `Shard::alive`. An entry touched since it was filed reports
        // its later deadline here and is re-filed, not expired.
        wheel.advance(
            now,
            exact,
            |idx| self.arena.node(idx).deadline.load(Ordering::Relaxed),
            |idx| expired.push(idx),
        );
        let next = wheel.next_expiration().unwrap_or(NEVER);
        for idx in expired.drain(..) {
            // If someone else marked it first, their removal is the one reported.
            self.maint_mark(m, cfg, idx, RemovalCause::Expired);
        }
        m.expired = expired;
        // Relaxed: a hint for writers (see `Shard::expiry_due`).
        self.next_expiry.store(next, Ordering::Relaxed);
    }

    /// Files `idx` in the wheel at its current deadline, if it has one.
    #[inline]
    fn schedule<S>(&self, m: &mut Maint, cfg: &Config<K, V, S>, idx: Idx) {
        // Relaxed: see `Shard::alive`; a later move is found when the slot comes due.
        let deadline = self.arena.node(idx).deadline.load(Ordering::Relaxed);
        if deadline == NEVER {
            return;
        }
        let wheel = m
            .wheel
            .get_or_insert_with(|| Wheel::new(TICK_SHIFT, cfg.time.now()));
        wheel.schedule(idx, deadline);
        // Relaxed: a hint (see `expire`); never later than what the wheel would report.
        // A load and a store, not a read-modify-write: only the maintainer writes it.
        if deadline < self.next_expiry.load(Ordering::Relaxed) {
            self.next_expiry.store(deadline, Ordering::Relaxed);
        }
    }

    /// Ends a pass: unlinks what is pending, retires finished nodes (in batches of
    /// [`retire_batch`](Self::retire_batch), or all of them with `retire_all`), collects what
    /// has waited out its grace periods (retire.rs), and returns the removals to report.
    ///
    /// Nodes waiting for a full batch stay owned by the shard (unreachable, their payloads
    /// still alive): at most a batch per shard, freed by the next explicit pass or the drop.
    pub(super) fn finish_pass<S: BuildHasher>(
        &self,
        m: &mut Maint,
        cfg: &Config<K, V, S>,
        guard: &Guard,
        retire_all: bool,
    ) -> Vec<(Idx, RemovalCause)> {
        self.process_unlinks(m, cfg, guard);
        if !m.retired.is_empty() && (retire_all || m.retired.len() >= self.retire_batch()) {
            let batch = mem::take(&mut m.retired);
            for &idx in &batch {
                // SAFETY: the node is unreachable and only the maintainer (us, holding the lock)
                // handles it until the release below, which runs after this store (the
                // retirement happens-before it).
                self.arena.node(idx).set_life(LIFE_RETIRED);
            }
            let arena = self.arena.clone();
            // The nodes are unreachable (unlinked, all their events consumed): no new
            // reference can be made. Threads inside a read or pinned now may still hold one;
            // this runs only after they have all left (retire.rs).
            retire::retire(cfg.owner, move || {
                // SAFETY: retired above: initialised payloads, unreachable, each listed once,
                // and both grace periods have passed, so no thread holds a reference (node.rs,
                // rule 5).
                unsafe { arena.release_all(&batch) };
            });
        }
        if retire::outstanding() {
            retire::collect(guard, false);
        }
        if m.notify.is_empty() {
            // Nothing to report: keep the buffer (taking it would reallocate on the next push).
            Vec::new()
        } else {
            mem::take(&mut m.notify)
        }
    }

    /// Applies one event.
    pub(super) fn apply<S: BuildHasher>(
        &self,
        m: &mut Maint,
        cfg: &Config<K, V, S>,
        event: Event,
        _guard: &Guard,
    ) {
        let idx = event.idx;
        match event.kind {
            EventKind::Inserted => {
                m.counts[Counter::Insert as usize] += 1;
                self.add_live(1);
                self.add_flags(idx, SEEN_INSERT);
                if self.has(idx, SEEN_REMOVE) {
                    // Its removal was applied before its insertion (a remover's event overtook
                    // the inserter's): nothing would dismiss it later, so it is never admitted.
                    self.try_retire(m, cfg, idx);
                } else {
                    self.admit(m, cfg, idx, event.weight, event.hash);
                }
            }
            EventKind::Removed => {
                m.counts[event.removal as usize] += 1;
                self.add_live(-1);
                self.add_flags(idx, SEEN_REMOVE);
                self.dismiss(m, cfg, idx);
                m.unlink_queue.push((idx, NIL));
            }
            EventKind::Replaced => {
                // `idx`'s insertion and `old`'s removal in one (the live count does not move).
                m.counts[Counter::Insert as usize] += 1;
                m.counts[event.removal as usize] += 1;
                let old = event.old;
                let (new_node, old_node) = (self.arena.node(idx), self.arena.node(old));
                let new_flags = new_node.flags() | SEEN_INSERT;
                let old_flags = old_node.flags() | SEEN_REMOVE;
                if new_flags & SEEN_REMOVE != 0 {
                    // The new node was removed already (its `Removed` event overtook this
                    // one): it is never admitted, and the old one simply leaves.
                    new_node.set_flags(new_flags);
                    old_node.set_flags(old_flags);
                    self.dismiss(m, cfg, old);
                    self.try_retire(m, cfg, idx);
                } else if old_flags & ADMITTED != 0 {
                    old_node.set_flags(old_flags & !ADMITTED);
                    new_node.set_flags(new_flags | ADMITTED);
                    self.transfer(m, cfg, old, idx, event.weight, event.hash);
                } else {
                    // The old node's own `Inserted` has not been applied yet (it comes later,
                    // finds it removed and retires it): admit the new one as new.
                    new_node.set_flags(new_flags);
                    old_node.set_flags(old_flags);
                    self.admit(m, cfg, idx, event.weight, event.hash);
                }
                m.unlink_queue.push((old, idx));
            }
            EventKind::Rescheduled => {
                // The deadline moved earlier: re-file it. (A stale event about a slot that was
                // reused is harmless: re-filing an admitted entry at its own deadline is a
                // no-op in effect; an entry not yet admitted is filed when it is.)
                if self.has(idx, ADMITTED) && !self.arena.node(idx).is_marked() {
                    if let Some(wheel) = m.wheel.as_mut() {
                        wheel.cancel(idx);
                    }
                    self.schedule(m, cfg, idx);
                }
            }
        }
    }

    /// Admits a node (inserted, not removed yet): into the wheel if it has a deadline, into
    /// the policy if the cache is bounded.
    fn admit<S>(&self, m: &mut Maint, cfg: &Config<K, V, S>, idx: Idx, weight: u32, hash: u64) {
        // Admitted even if it is already marked: its `Removed` event comes later and
        // dismisses it. The policy thus sees every insertion and removal in the writers'
        // order, whenever the passes happen to run (its ghost history, in particular, does
        // not depend on maintenance timing).
        self.add_flags(idx, ADMITTED);
        self.schedule(m, cfg, idx);
        self.add_size(i64::from(weight));
        if let Some(bound) = &cfg.bound {
            m.policy
                .get_or_insert_with(|| {
                    Policy::new(bound.share, cfg.weigher.is_some(), bound.contest.clone())
                })
                .insert(idx, hash, weight);
        }
    }

    /// The admitted node `old` was superseded by `new` (same key, not removed; the caller moved
    /// the `ADMITTED` flag): `new` takes its place in the wheel and the policy, and its access
    /// counter, so that a replaced value keeps its key's standing instead of going back to
    /// probation.
    #[inline]
    fn transfer<S>(
        &self,
        m: &mut Maint,
        cfg: &Config<K, V, S>,
        old: Idx,
        new: Idx,
        weight: u32,
        hash: u64,
    ) {
        let old_node = self.arena.node(old);
        let new_node = self.arena.node(new);
        // The new node is filed at its own deadline, not in the old node's slot: the old node
        // may be filed *later* than its current deadline (a `set_ttl` that moved it earlier
        // records its `Rescheduled` event after the swap, and the event is dropped once the
        // node is removed), so its slot says nothing about the new deadline.
        // (`replace_is_filed_at_its_own_deadline` is that interleaving.)
        if let Some(wheel) = m.wheel.as_mut() {
            wheel.cancel(old);
        }
        self.schedule(m, cfg, new);
        if cfg.weigher.is_some() {
            let old_weight = self.weight_of(cfg, old);
            self.add_size(i64::from(weight) - old_weight as i64);
        }
        if let Some(policy) = m.policy.as_mut() {
            if !policy.replace(old, new, weight) {
                policy.insert(new, hash, weight);
            }
            // Relaxed: the CLOCK counter is a hint (see `Node::touch_freq`). The key's count
            // is the old node's plus the hits the new one had since it was published.
            let counter = old_node.freq.load(Ordering::Relaxed);
            if counter > 0 {
                let had = new_node.freq.load(Ordering::Relaxed);
                new_node
                    .freq
                    .store(had.saturating_add(counter).min(FREQ_MAX), Ordering::Relaxed);
            }
        }
    }

    /// Marks `idx` on the maintainer's own account. Returns whether it did.
    pub(super) fn maint_mark<S>(
        &self,
        m: &mut Maint,
        cfg: &Config<K, V, S>,
        idx: Idx,
        cause: RemovalCause,
    ) -> bool {
        let Some(claimed) = self.arena.node(idx).mark() else {
            return false;
        };
        // A claimed node's share belongs to the insert replacing it (see `Bound`).
        if !claimed && let Some(bound) = &cfg.bound {
            bound.release(self.weight_of(cfg, idx));
        }
        self.add_live(-1);
        m.counts[Counter::of(cause) as usize] += 1;
        m.notify.push((idx, cause));
        self.add_flags(idx, SEEN_REMOVE);
        self.dismiss(m, cfg, idx);
        m.unlink_queue.push((idx, NIL));
        true
    }

    fn process_unlinks<S: BuildHasher>(&self, m: &mut Maint, cfg: &Config<K, V, S>, guard: &Guard) {
        while let Some((idx, hint)) = m.unlink_queue.pop() {
            // During a growth, a node of an old chain may be reachable through several links
            // (zipped chains share nodes, and an unzipping round leaves old links in place
            // until readers are past them), so its unlink waits for the growth to end. Once
            // every old chain is recorded, any other node was inserted in front of a split
            // bucket: reachable only through that bucket (its head or the nodes inserted in
            // front of it, all of its class), it is unlinked as usual, so that replaced
            // entries do not pile up in the chains while a growth runs.
            if let Some(growth) = &m.growth
                && (matches!(growth.phase, Phase::Splitting) || self.has(idx, ZIPPED))
            {
                m.postponed.push(idx);
                continue;
            }
            if !self.unlink_after(m, cfg, hint, idx, guard) {
                self.unlink(m, cfg, idx, guard);
            }
            let node = self.arena.node(idx);
            let flags = node.flags() | UNLINKED;
            node.set_flags(flags);
            if flags & DONE == DONE {
                self.retire(m, idx, flags);
            }
        }
    }

    /// A removed entry leaves the wheel and the policy at once (not when it is retired, which
    /// may wait for a growth to finish), so eviction never picks an entry that is already gone.
    fn dismiss<S>(&self, m: &mut Maint, cfg: &Config<K, V, S>, idx: Idx) {
        if !self.has(idx, ADMITTED) {
            return;
        }
        self.clear_flags(idx, ADMITTED);
        if let Some(wheel) = m.wheel.as_mut() {
            wheel.cancel(idx);
        }
        // A victim the policy chose is already forgotten: `remove` ignores it.
        if let Some(policy) = m.policy.as_mut() {
            policy.remove(idx);
        }
        self.add_size(-(self.weight_of(cfg, idx) as i64));
    }

    fn try_retire<S>(&self, m: &mut Maint, _cfg: &Config<K, V, S>, idx: Idx) {
        let flags = self.arena.node(idx).flags();
        if flags & DONE == DONE {
            self.retire(m, idx, flags);
        }
    }

    /// Nodes retired per batch (see [`MAX_RETIRE_BATCH`]).
    #[inline]
    fn retire_batch(&self) -> usize {
        (self.arena.first_len() / 64).clamp(MIN_RETIRE_BATCH, MAX_RETIRE_BATCH)
    }

    /// Retires `idx`, whose flags (`flags`) say it is done: unlinked, with its insertion and
    /// its removal applied.
    #[inline]
    fn retire(&self, m: &mut Maint, idx: Idx, flags: u8) {
        debug_assert_eq!(flags & DONE, DONE);
        debug_assert!(
            flags & ADMITTED == 0,
            "retiring an entry still in the wheel/policy"
        );
        self.arena.node(idx).set_flags(0);
        if m.retired.capacity() == 0 {
            m.retired.reserve_exact(self.retire_batch());
        }
        m.retired.push(idx);
    }

    /// Evicts while the cache is over its capacity: in an ordinary pass only while this shard
    /// holds more than its share; with `hard_target` (back-pressure), until the cache's
    /// reserved weight is at most that, whatever this shard holds.
    pub(super) fn evict<S: BuildHasher>(
        &self,
        m: &mut Maint,
        cfg: &Config<K, V, S>,
        hard_target: Option<u64>,
        _guard: &Guard,
    ) {
        let Some(bound) = &cfg.bound else {
            return;
        };
        let target = hard_target.unwrap_or(bound.capacity);
        loop {
            let Some(policy) = m.policy.as_mut() else {
                return;
            };
            // The policy's queue targets are proportioned to what this shard holds: its
            // share, or more (up to the whole capacity) when the keys do not spread evenly.
            policy.set_capacity(bound.share.max(policy.weighted_size().min(bound.capacity)));
            if bound.reserved() <= target
                || (hard_target.is_none() && policy.weighted_size() <= bound.floor_share)
            {
                return;
            }
            let victim = policy.evict_one(&mut Access { shard: self, cfg });
            let Some(victim) = victim else {
                return;
            };
            // A victim a writer removed meanwhile is simply gone (its weight was released
            // when it was marked); evict the next one.
            self.maint_mark(m, cfg, victim, RemovalCause::Size);
        }
    }

    /// Unlinks the marked node `idx` through `pred`, if `pred` is a node in a chain whose link
    /// leads to `idx` (typically the node that replaced `idx`, inserted just in front of it),
    /// without hashing the key or walking the chain from its bucket. Returns false if that
    /// cannot be done (the caller then unlinks the usual way).
    ///
    /// `pred` is in a chain if it was inserted (`SEEN_INSERT`: published) and this maintainer
    /// has not unlinked it (`UNLINKED`; a retired node has neither flag, and a slot retired
    /// during this pin is not reused before it ends; a hint kept across passes may name a slot
    /// reused since, which then reads as not inserted, or as a linked node, and either way the
    /// test below is about that node as it is now): only the maintainer unlinks, so a node
    /// inserted and not unlinked is reachable. Its link
    /// leads to `idx` if its index bits say so; then `pred` is `idx`'s predecessor, the one an
    /// unlink from the bucket would have found (`idx` is not on a zipped chain: the caller
    /// postpones those), and the same CAS unlinks it.
    fn unlink_after<S: BuildHasher>(
        &self,
        m: &mut Maint,
        cfg: &Config<K, V, S>,
        pred: Idx,
        idx: Idx,
        guard: &Guard,
    ) -> bool {
        if pred == NIL || self.arena.node(pred).flags() & (SEEN_INSERT | UNLINKED) != SEEN_INSERT {
            return false;
        }
        let node = self.arena.node(idx);
        debug_assert!(node.is_marked());
        let link = &self.arena.node(pred).next;
        // Acquire: as in `Shard::find` (pairs with the CAS that set this link).
        let pred_val = link.load(Ordering::Acquire);
        if pred_val & IDX_MASK != idx {
            return false;
        }
        // Acquire: as in `Shard::find`.
        let next = node.next.load(Ordering::Acquire);
        // SAFETY: the node is in its chain (only this thread unlinks) and we are pinned.
        let tag = unsafe { node.tag() };
        self.mark_superseded(m, cfg, idx, tag, next & IDX_MASK, guard);
        // Release: as in `unlink`. Fails if a writer marked `pred` meanwhile: the caller then
        // walks the chain.
        link.compare_exchange(
            pred_val,
            (pred_val & LINK_BITS) | (next & IDX_MASK),
            Ordering::Release,
            Ordering::Relaxed,
        )
        .is_ok()
    }

    /// Unlinks the marked node `idx` from its chain (node.rs, rule 4).
    fn unlink<S: BuildHasher>(
        &self,
        m: &mut Maint,
        cfg: &Config<K, V, S>,
        idx: Idx,
        guard: &Guard,
    ) {
        let node = self.arena.node(idx);
        debug_assert!(node.is_marked());
        // SAFETY: the node is in the table (only this thread unlinks), and we are pinned.
        let hash = unsafe { node.with_payload(|k, _| cfg.hash(k)) };
        let tag = tag_of(hash);
        'retry: loop {
            let table = self.current(guard);
            let bucket = table.bucket(hash);
            let mut pred = bucket;
            // Acquire: pairs with the Release CAS that linked the head node.
            let mut pred_val = pred.load(Ordering::Acquire);
            debug_assert!(
                pred_val != UNINIT && pred_val & MARK == 0,
                "unlink during growth"
            );
            let mut cur = pred_val & IDX_MASK;
            while cur != NIL {
                let cur_node = self.arena.node(cur);
                // Acquire: as in `Shard::find`.
                let next = cur_node.next.load(Ordering::Acquire);
                if cur == idx {
                    // Older nodes of the same key behind this one were superseded by a newer
                    // insert; unlinking this one must not uncover them: mark them first.
                    self.mark_superseded(m, cfg, idx, tag, next & IDX_MASK, guard);
                    // Only the maintainer changes the index bits of a link other than a bucket
                    // head, so `next`'s index is still current (its mark bit is set anyway).
                    let new = (pred_val & LINK_BITS) | (next & IDX_MASK);
                    // Release: readers that load the new link must see the successor's
                    // contents; they were published to us by the Acquire loads above, and
                    // Release passes that on. Fails if an insert moved the head or the
                    // predecessor was marked meanwhile: walk again.
                    if pred
                        .compare_exchange(pred_val, new, Ordering::Release, Ordering::Relaxed)
                        .is_ok()
                    {
                        return;
                    }
                    continue 'retry;
                }
                pred = &cur_node.next;
                pred_val = next;
                cur = next & IDX_MASK;
            }
            debug_assert!(false, "marked node {idx} not found in its chain");
            return;
        }
    }

    /// Marks (as `Replaced`) the unmarked nodes after `from` that hold the same key as `idx`.
    fn mark_superseded<S: BuildHasher>(
        &self,
        m: &mut Maint,
        cfg: &Config<K, V, S>,
        idx: Idx,
        tag: u16,
        from: u32,
        _guard: &Guard,
    ) {
        let node = self.arena.node(idx);
        let mut cur = from;
        while cur != NIL {
            let other = self.arena.node(cur);
            // Acquire: as in `Shard::find`.
            let next = other.next.load(Ordering::Acquire);
            if next & MARK == 0
                // SAFETY: both nodes are in the chain and we are pinned.
                && unsafe { other.tag() } == tag
                // SAFETY: both nodes are in the chain and we are pinned.
                && unsafe { node.with_payload(|k, _| other.with_payload(|ok, _| ok == k)) }
            {
                self.maint_mark(m, cfg, cur, RemovalCause::Replaced);
            }
            cur = next & IDX_MASK;
        }
    }

    /// Advances the growth in progress, and starts one if the shard holds more entries than
    /// buckets (at once, in the same pass, if a growth has just finished with the shard
    /// still over its load). See "Growing" in shard.rs.
    fn grow<S: BuildHasher>(&self, m: &mut Maint, cfg: &Config<K, V, S>, guard: &Guard) {
        if let Some(mut growth) = m.growth.take() {
            // A step runs user code (the hasher, in `split_chain`). If it panics, the growth
            // must stay recorded: a growth forgotten half-way would leave zipped chains whose
            // nodes the next pass unlinks through one in-link and frees while another still
            // links to them. `split_chain` changes nothing before its last call of user code,
            // so the state put back is consistent and the next pass redoes that chain.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.advance_growth(cfg, &mut growth, guard)
            }));
            let done = match step {
                Ok(done) => done,
                Err(panic) => {
                    m.growth = Some(growth);
                    std::panic::resume_unwind(panic);
                }
            };
            if !done {
                m.growth = Some(growth);
                return;
            }
            for &idx in &growth.nodes {
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
            m.unlink_queue
                .extend(m.postponed.drain(..).map(|idx| (idx, NIL)));
            self.process_unlinks(m, cfg, guard);
            // The growth's bookkeeping is freed (`growth` drops here): hand the allocator's
            // free pages back to the system (see `pages::trim`).
            drop(growth);
            super::pages::trim();
        }
        let table = self.current(guard);
        // Relaxed: a trigger (only the maintainer writes `live`). `load_shift` is 1 for a cache
        // bounded by count (a load of at most one half, as a table pre-sized for the capacity
        // has), 0 otherwise (at most one).
        let live = self.live.load(Ordering::Relaxed).max(0) << cfg.load_shift;
        if live > table.len() as i64 && table.len() < MAX_BUCKETS {
            // The power of two that brings the load back to at most its limit (at least twice
            // the table): a shard that filled faster than it could grow catches up in one
            // growth, and its chains are then spread over as many classes as they have nodes,
            // which the unzipping separates in a few rounds (see `unzip_chain`).
            let len = usize::try_from(live)
                .unwrap_or(MAX_BUCKETS)
                .next_power_of_two()
                .clamp(table.len() * 2, MAX_BUCKETS);
            if !self.publish_larger(len, guard) {
                // Out of memory: keep the table (chains get longer) and try again later.
                return;
            }
            m.growth = Some(Growth::new(
                usize::try_from(self.live.load(Ordering::Relaxed)).unwrap_or(0),
            ));
            #[cfg(not(loom))]
            {
                // SeqCst: the reclaimer thread finishes the growth if writes stop before it is
                // done; this increment and the load of its running flag in `retire::wake` pair
                // with its store of that flag and its load of this count when it exits (so one
                // of the two sees the other, see `retire::retire`).
                cfg.growing.fetch_add(1, Ordering::SeqCst);
                retire::wake();
            }
        }
    }

    /// One step of the growth: returns true once it is complete (the old table detached).
    fn advance_growth<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        growth: &mut Growth,
        guard: &Guard,
    ) -> bool {
        if let Some(grace) = &growth.grace {
            if !grace_over(grace) {
                // Help the epoch along: this thread's deferred functions join the global queue.
                guard.flush();
                return false;
            }
            growth.grace = None;
        }
        let table = self.current(guard);
        let Some(old) = self.old_table(guard) else {
            debug_assert!(false, "growth without an old table");
            return true;
        };
        match growth.phase {
            Phase::Splitting => {
                let mut work = 0;
                while growth.progress < old.len() && work < GROWTH_BUDGET {
                    work += self.split_chain(cfg, growth, table, old, growth.progress, guard);
                    growth.progress += 1;
                }
                if growth.progress < old.len() {
                    return false;
                }
                // Every bucket is initialised and every old chain recorded. No link may be
                // redirected while a reader can still be walking an old chain from its head
                // (through the old table, or an uninitialised bucket), and the old table may
                // not be detached while a reader that loaded an uninitialised bucket can still
                // look it up: wait one grace period, even if no chain needs unzipping.
                growth.phase = Phase::Unzipping;
                growth.grace = Some(start_grace(guard));
                false
            }
            Phase::Unzipping => {
                // One round: every chain still zipped gets all the redirections that are
                // safe now (possibly over several passes, never two rounds of one chain
                // within a grace period).
                let mut work = 0;
                while work < GROWTH_BUDGET {
                    let Some((start, len)) = growth.zipped.pop() else {
                        break;
                    };
                    work += len as usize;
                    if !self.unzip_chain(growth, start as usize, len as usize) {
                        growth.unzipped.push((start, len));
                    }
                }
                if !growth.zipped.is_empty() {
                    return false;
                }
                if growth.unzipped.is_empty() {
                    // Every chain is separated: done, with no further grace period (readers
                    // still on a redirected link are safe whatever they read next, see
                    // `unzip_chain`; the old table is freed through the epoch).
                    self.detach_old(cfg.owner);
                    return true;
                }
                mem::swap(&mut growth.zipped, &mut growth.unzipped);
                growth.grace = Some(start_grace(guard));
                false
            }
        }
    }

    /// Detaches the old table once every bucket is split and every chain unzipped: readers
    /// have not been able to reach the old table's heads for a grace period (no bucket is
    /// uninitialised). It is freed after grace periods of both kinds (retire.rs).
    fn detach_old(&self, owner: u64) {
        // AcqRel: Acquire to own the pointer we retire; Release orders our unzipping before it.
        let old = self.old.swap(0, Ordering::AcqRel);
        // SAFETY: the old table is unreachable from now on (see above); threads inside a read
        // or pinned now may still hold it, and this runs only after they have all left. The
        // closure owns the table (nothing else frees it).
        retire::retire(owner, move || unsafe { free_table(old) });
    }

    /// Splits every bucket of the new table fed by old bucket `b` (the new buckets
    /// `b + i * old.len()`): freezes the old head, records the frozen chain (its nodes in
    /// order, flagged [`ZIPPED`], and for each the position of the first node of its class,
    /// i.e. of its new bucket), and points each new bucket at the first node of its class
    /// (NIL if none), as `Shard::split_bucket` would. Returns the work done.
    #[allow(clippy::too_many_arguments)]
    fn split_chain<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        growth: &mut Growth,
        table: Table<'_>,
        old: Table<'_>,
        b: usize,
        _guard: &Guard,
    ) -> usize {
        let shift = old.len().trailing_zeros();
        let ways = table.len() / old.len();
        // AcqRel: as in `Shard::split_bucket` (freezes the chain; Acquire makes the nodes
        // linked before visible).
        let head = old.at(b).fetch_or(MARK, Ordering::AcqRel) & IDX_MASK;
        // First the walk, with the user's hasher: if it panics, no growth state has changed
        // yet (freezing the head again is harmless), and the next pass redoes this chain.
        let walked = &mut growth.scratch.walked;
        walked.clear();
        let mut cur = head;
        while cur != NIL {
            let node = self.arena.node(cur);
            // SAFETY: reached through links while pinned (the frozen chain is final; none of
            // its nodes is unlinked before the growth ends).
            let hash = unsafe { node.with_payload(|k, _| cfg.hash(k)) };
            walked.push((cur, (bucket_of(hash, table.mask()) >> shift) as u32));
            // Acquire: as in `Shard::find`.
            cur = node.next.load(Ordering::Acquire) & IDX_MASK;
        }
        let start = growth.nodes.len();
        // Per class of this chain (`i` for new bucket `b + i * old.len()`): the position of
        // its first node.
        let firsts = &mut growth.scratch.firsts;
        firsts.clear();
        firsts.resize(ways, NIL);
        for &(cur, class) in &growth.scratch.walked {
            let class = class as usize;
            let pos = (growth.nodes.len() - start) as u32;
            if firsts[class] == NIL {
                firsts[class] = pos;
            }
            growth.nodes.push(cur);
            growth.first.push(firsts[class]);
            growth.next.push(pos + 1);
            self.add_flags(cur, ZIPPED);
        }
        let len = growth.nodes.len() - start;
        for (i, &first) in firsts.iter().enumerate() {
            let target = if first == NIL {
                NIL
            } else {
                growth.nodes[start + first as usize]
            };
            // Release: publishes the chain to readers of the new bucket, as in
            // `Shard::split_bucket`; a writer that split it first stored the same node (the
            // first of its class in the frozen chain), so a failure changes nothing.
            let _ = table.at(b + (i << shift)).compare_exchange(
                UNINIT,
                target,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
        let chain = start..start + len;
        let zipped = growth.next[chain.clone()]
            .iter()
            .zip(&growth.first[chain.clone()])
            .any(|(&next, &first)| {
                (next as usize) < len && growth.first[start + next as usize] != first
            });
        // A chain whose links already join nodes of one class needs no unzipping round.
        if zipped {
            growth.zipped.push((start as u32, len as u32));
        }
        len + ways
    }

    /// One unzipping round over the chain at `start..start + len` of `growth.nodes`: redirects
    /// every link that may be redirected now, and returns whether the chain is separated
    /// (every link joins two nodes of one class, or ends the chain).
    ///
    /// # Why this is safe
    ///
    /// Write `G` for the chain's links as they were when the grace period that precedes this
    /// round began (the rounds are separated by grace periods, and the first one follows the
    /// last split). Every thread now walking the chain is a reader of one new bucket (class)
    /// `c` that entered it at the first node of `c` (where the bucket head, or the nodes
    /// inserted in front of it, lead) and has followed links of `G`, or links written by this
    /// round. Let `S(x)` be the classes whose first node reaches `x` through `G`: only
    /// readers of those classes can be at `x`. The round sets the link of `x` to the first
    /// node `w` after `x` along `G` whose class is in `S(x)` (or NIL): it skips only nodes of
    /// classes with no reader at `x`.
    ///
    /// A reader of class `c` at a node `x` of its path in `G` (so `c` is in `S(x)`) reads
    /// either the old link, and stays on its path in `G`, or the new one: then it lands on
    /// `w`, which is on the same path (the path of `c` from `x` is `x`'s walk along `G`),
    /// having skipped no node of `c`. By induction it never leaves its path in `G`, which
    /// holds all the nodes of `c` (inductively again: no round skips a node of `c` on a path
    /// of `c`), whichever mix of old and new links it reads: each round is safe alone, and
    /// the grace period between rounds makes every reader of the next one start from the
    /// links this one left. The same holds for writers (which walk chains like readers) and
    /// for the maintainer's own walks.
    ///
    /// Progress: if no link changes, every path holds nodes of one class only (take the
    /// earliest node `z` that is foreign on some path, of class `e`, with predecessor `y`
    /// on that path: `y` is not foreign, and `e` in `S(y)` makes `y` a foreign node of the
    /// path of `e`, earlier than `z`). So a chain is done once its links join nodes of one
    /// class, checked after each round; the round that separates the last chain needs no
    /// grace period after it. With two classes this is the classic unzip (one alternation
    /// per round); with as many classes as nodes, as a growth to a load of one makes them,
    /// chains of hundreds of nodes separate in a handful of rounds.
    fn unzip_chain(&self, growth: &mut Growth, start: usize, len: usize) -> bool {
        let nodes = &growth.nodes[start..start + len];
        let first = &growth.first[start..start + len];
        let next = &mut growth.next[start..start + len];
        let sc = &mut growth.scratch;
        let nil = len as u32;
        let idx_at = |pos: u32| if pos == nil { NIL } else { nodes[pos as usize] };
        if cfg!(debug_assertions) {
            for (x, &pos) in next.iter().enumerate() {
                // Acquire: as in `Shard::find`. Only the maintainer changes these index bits.
                let actual = self.arena.node(nodes[x]).next.load(Ordering::Acquire) & IDX_MASK;
                assert_eq!(
                    actual,
                    idx_at(pos),
                    "unzip: a link moved under the maintainer"
                );
            }
        }
        round_targets(first, next, sc);
        for x in 0..len {
            let y = sc.target[x];
            if y == next[x] {
                continue;
            }
            let link = &self.arena.node(nodes[x]).next;
            let new = idx_at(y);
            let mut cur = idx_at(next[x]);
            loop {
                // Release: as for an unlink (readers following the new link see the node it
                // leads to). Only the mark and claim bits can change under us (a writer marking
                // or claiming x), and they are kept.
                match link.compare_exchange_weak(
                    cur,
                    (cur & LINK_BITS) | new,
                    Ordering::Release,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(actual) => {
                        debug_assert_eq!(
                            actual & IDX_MASK,
                            cur & IDX_MASK,
                            "a zipped link changed under the maintainer"
                        );
                        cur = actual;
                    }
                }
            }
            next[x] = y;
        }
        next.iter()
            .enumerate()
            .all(|(x, &y)| y == nil || first[y as usize] == first[x])
    }

    /// Removes every entry (weakly consistent: entries inserted concurrently may survive).
    pub(crate) fn clear<S: BuildHasher>(&self, cfg: &Config<K, V, S>) {
        let guard = crate::sync::epoch::pin();
        let notes = self.maint.run(|m| {
            self.pass(m, cfg, &guard, false);
            let table = self.current(&guard);
            for j in 0..table.len() {
                // Acquire: as in `Table::chain_head`.
                if table.at(j).load(Ordering::Acquire) == UNINIT {
                    self.split_bucket(cfg, table, j, &guard);
                }
                // Acquire: as above.
                let mut cur = table.at(j).load(Ordering::Acquire) & IDX_MASK;
                while cur != NIL {
                    let node = self.arena.node(cur);
                    // Acquire: as in `Shard::find`.
                    let next = node.next.load(Ordering::Acquire);
                    self.maint_mark(m, cfg, cur, RemovalCause::Cleared);
                    cur = next & IDX_MASK;
                }
            }
            self.finish_pass(m, cfg, &guard, true)
        });
        self.deliver(cfg, notes, &guard);
    }
}

/// The targets of one unzipping round over a chain (positions; `first.len()` is NIL): in
/// `sc.target`, for each node `x`, the first node after it along the links `next` whose class
/// (`first`) has a reader that can be on `x` (see `unzip_chain`); at most [`MAX_SKIP`] nodes
/// ahead. A pure function of the chain, so that tests can check it against plain
/// link-following.
fn round_targets(first: &[u32], next: &[u32], sc: &mut Scratch) {
    let len = first.len();
    let nil = len as u32;
    // `G` as a forest of in-trees (each node's parent is its successor, the root is the
    // end of the chain), numbered by a depth-first walk: `a` reaches `x` iff `a` lies in
    // `x`'s subtree, i.e. enter[x] <= enter[a] < leave[x].
    sc.child.clear();
    sc.child.resize(len + 1, NIL);
    sc.sibling.clear();
    sc.sibling.resize(len, NIL);
    for x in (0..len).rev() {
        let parent = next[x] as usize;
        sc.sibling[x] = sc.child[parent];
        sc.child[parent] = x as u32;
    }
    sc.enter.clear();
    sc.enter.resize(len + 1, 0);
    sc.leave.clear();
    sc.leave.resize(len + 1, 0);
    sc.stack.clear();
    sc.stack.push(nil);
    let mut clock = 1;
    while let Some(&v) = sc.stack.last() {
        let c = sc.child[v as usize];
        if c == NIL {
            sc.leave[v as usize] = clock;
            sc.stack.pop();
        } else {
            sc.child[v as usize] = sc.sibling[c as usize];
            sc.enter[c as usize] = clock;
            clock += 1;
            sc.stack.push(c);
        }
    }
    let reaches = |a: u32, x: usize| {
        sc.enter[x] <= sc.enter[a as usize] && sc.enter[a as usize] < sc.leave[x]
    };
    sc.target.clear();
    for x in 0..len {
        let mut y = next[x];
        let mut hops = 0;
        // Skip the nodes whose class has no reader at `x` (bounded, so that a round costs
        // at most MAX_SKIP steps per node; a shorter skip is as safe).
        while y != nil && !reaches(first[y as usize], x) && hops < MAX_SKIP {
            y = next[y as usize];
            hops += 1;
        }
        sc.target.push(y);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::listener::RemovalCause;
    use crate::raw::RawCache;
    use crate::raw::tests::raw_with;
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
        use crate::raw::ring::{Event, EventKind};
        use crate::stats::Counter;
        use crate::sync::Ordering;
        const S: u64 = 1_000_000_000;
        let (clock, mock) = quanta::Clock::mock();
        let mut cache = raw_with(ahash::RandomState::with_seeds(1, 2, 3, 4), 1, 8);
        cache.cfg.time = crate::clock::TimeSource::new(clock);
        let shard = &cache.shards[0];
        cache.insert(7, 70, Some(3600 * S), 1, false).ok().unwrap();
        cache.run_pending_tasks();
        let hash = cache.cfg.hash(&7u64);
        let old = {
            let guard = epoch::pin();
            let (idx, node, _) = shard.lookup(hash, &7u64, &guard).unwrap();
            // The `set_ttl` thread's swap, before it records its event.
            node.deadline.store(S, Ordering::Relaxed);
            idx
        };
        cache.insert(7, 71, Some(10 * S), 1, false).ok().unwrap();
        {
            let guard = epoch::pin();
            // The `set_ttl` thread records its event, after the replacement's.
            let event = Event {
                idx: old,
                kind: EventKind::Rescheduled,
                weight: 0,
                hash: 0,
                old: 0,
                removal: Counter::Removal,
            };
            shard.record(&cache.cfg, event, &guard);
        }
        cache.run_pending_tasks();
        mock.increment(std::time::Duration::from_secs(11));
        assert_eq!(cache.read(&7u64, |v| *v), None);
        assert_eq!(cache.len(), 0, "an entry past its deadline is still held");
    }

    fn insert(cache: &Raw, k: u64) {
        assert!(cache.insert(k, k * 3, None, 1, false).is_ok());
    }

    /// A shard far over its load grows in one growth to the power of two that brings the load
    /// back to one (here 16x), and every key stays readable at every step of the growth,
    /// while inserts land in front of split buckets and removals unlink nodes mid-growth.
    #[test]
    fn growth_jumps_to_load_one_and_keys_stay_readable() {
        let cache = raw_with(ahash::RandomState::with_seeds(1, 2, 3, 4), 1, 8);
        let shard = &cache.shards[0];
        let table_len = || shard.current(&epoch::pin()).len();
        let growing = || shard.maint.run(|m| m.growth.is_some());
        assert_eq!(table_len(), 8);
        // 100 inserts while the maintenance lock is held: no pass can apply them (the event
        // ring holds 128), so the first pass finds 100 entries in 8 buckets.
        shard.maint.run(|_| {
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
        assert!(shard.maint.run(|m| m.growth.as_ref().is_some_and(|g| {
            matches!(g.phase, super::Phase::Unzipping) && g.zipped.iter().any(|&(_, len)| len >= 3)
        })));
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

        use crate::raw::node::UNINIT;
        use crate::raw::{Config, Layout};
        use crate::sync::Ordering;

        let cfg = Config {
            hasher: ahash::RandomState::with_seeds(1, 2, 3, 4),
            listener: None,
            time: crate::clock::TimeSource::new(quanta::Clock::mock().0),
            stats: crate::stats::StatsCounters::new(false, 1),
            drain_threshold: 32,
            ttl: crate::raw::node::NEVER,
            tti: crate::raw::node::NEVER,
            bound: None,
            weigher: None,
            hit_work: false,
            growing: Default::default(),
            owner: crate::raw::retire::owner(),
            load_shift: 0,
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
        shard.maint.run(|_| {
            for k in 0..100 {
                assert!(cache.insert(Touchy(k), k, None, 1, false).is_ok());
            }
        });
        cache.run_pending_tasks(); // publishes the larger table
        assert_eq!(shard.current(&epoch::pin()).len(), 128);
        // The next pass splits the chains, hashing every node: panic half-way.
        COUNTDOWN.with(|c| c.set(40));
        let pass = catch_unwind(AssertUnwindSafe(|| cache.run_pending_tasks()));
        COUNTDOWN.with(|c| c.set(-1));
        assert!(pass.is_err(), "the hasher panicked in the split");
        assert!(
            shard.maint.run(|m| m.growth.is_some()),
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
            if shard.maint.run(|m| m.growth.is_none()) {
                break;
            }
        }
        assert!(
            shard.maint.run(|m| m.growth.is_none()),
            "the growth finished"
        );
        let guard = epoch::pin();
        assert!(
            shard.old_table(&guard).is_none(),
            "the old table is detached"
        );
        let table = shard.current(&guard);
        assert!((0..table.len()).all(|j| table.at(j).load(Ordering::Acquire) != UNINIT));
        drop(guard);
        // Freed slots get reused by new keys; the old keys read right, the removed stay gone.
        for k in 1000..1050 {
            assert!(cache.insert(Touchy(k), k, None, 1, false).is_ok());
        }
        cache.run_pending_tasks();
        readable(&mut (0..100).filter(|k| k % 3 != 0));
        readable(&mut (1000..1050));
        for k in (0..100).step_by(3) {
            assert_eq!(cache.read(&Touchy(k), |v| *v), None, "removed key {k}");
        }
    }

    /// Positions reached from `a` by following `next` (a chain of `next.len()` nodes).
    fn path(next: &[u32], a: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut x = a;
        while (x as usize) < next.len() {
            out.push(x);
            x = next[x as usize];
        }
        out
    }

    /// Unzips a chain whose nodes have the given classes, round after round, checking every
    /// round against plain link-following (not the depth-first numbering `round_targets`
    /// uses): a link only moves forward along the current links, past nodes of classes
    /// whose readers cannot be on it; every class's path from its first node still holds all
    /// its nodes; the chain ends pure, with one in-link per node, within `len` rounds.
    fn unzip_by_rounds(classes: &[u8], max_skip_check: bool) {
        let len = classes.len();
        let nil = len as u32;
        let first: Vec<u32> = classes
            .iter()
            .map(|c| classes.iter().position(|d| d == c).unwrap() as u32)
            .collect();
        let mut next: Vec<u32> = (1..=len as u32).collect();
        let mut sc = super::Scratch::default();
        let mut rounds = 0;
        loop {
            let pure = (0..len).all(|x| next[x] == nil || first[next[x] as usize] == first[x]);
            if pure {
                break;
            }
            rounds += 1;
            assert!(rounds <= len, "no progress: {classes:?}");
            super::round_targets(&first, &next, &mut sc);
            let target = sc.target.clone();
            for x in 0..len {
                // The classes whose readers can be on x: those whose first node reaches x.
                let readers: Vec<u32> = (0..len as u32)
                    .filter(|&a| first[a as usize] == a && path(&next, a).contains(&(x as u32)))
                    .map(|a| first[a as usize])
                    .collect();
                let along = path(&next, x as u32);
                let t = target[x];
                assert!(
                    t == nil || along.contains(&t),
                    "target not ahead along the links: {classes:?} x={x}"
                );
                // Every node skipped (strictly between x and t) is of a class without a
                // reader on x.
                for &y in along.iter().skip(1).take_while(|&&y| y != t) {
                    assert!(
                        !readers.contains(&first[y as usize]),
                        "skips a node of a class with a reader on it: {classes:?} x={x} y={y}"
                    );
                }
                if max_skip_check && t != next[x] {
                    assert!(
                        t == nil || readers.contains(&first[t as usize]) || {
                            // Stopped by MAX_SKIP: exactly that many hops.
                            along.iter().position(|&y| y == t) == Some(super::MAX_SKIP as usize + 1)
                        }
                    );
                }
            }
            next = target;
            for c in 0..len as u32 {
                if first[c as usize] == c {
                    let reached = path(&next, c);
                    for y in 0..len as u32 {
                        if first[y as usize] == c {
                            assert!(reached.contains(&y), "class {c} lost node {y}: {classes:?}");
                        }
                    }
                }
            }
        }
        // Pure: every node has one in-link (its class predecessor), except each class's first.
        let mut in_links = vec![0; len];
        for x in 0..len {
            if next[x] != nil {
                in_links[next[x] as usize] += 1;
            }
        }
        for y in 0..len {
            let expected = usize::from(first[y] != y as u32);
            assert_eq!(in_links[y], expected, "in-links of {y}: {classes:?}");
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "safe code, exhaustive: hours under Miri")]
    fn every_small_chain_unzips_safely() {
        // Every chain of up to 7 nodes over up to 4 classes.
        for len in 1..=7usize {
            let total = 4usize.pow(len as u32);
            for code in 0..total {
                let mut c = code;
                let classes: Vec<u8> = (0..len)
                    .map(|_| {
                        let d = (c % 4) as u8;
                        c /= 4;
                        d
                    })
                    .collect();
                unzip_by_rounds(&classes, true);
            }
        }
    }

    proptest::proptest! {
        #[test]
        #[cfg_attr(miri, ignore = "safe code: hours under Miri")]
        fn random_chains_unzip_safely(
            classes in proptest::collection::vec(0u8..16, 1..60)
        ) {
            unzip_by_rounds(&classes, true);
        }
    }
}
