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
use super::node::{IDX_MASK, Idx, LIFE_RETIRED, MARK, NEVER, NIL, UNINIT};
use super::ring::{Event, EventKind};
use super::shard::{Shard, TICK_SHIFT, tag_of};
use super::table::{Table, bucket_of, free_table};
use crate::evict::policy::{EntryAccess, Policy};
use crate::expire::wheel::Wheel;
use crate::listener::RemovalCause;
use crate::stats::Counter;
use crate::sync::epoch::Guard;
use crate::sync::{Arc, AtomicBool, Ordering};

/// Per-node flags kept by the maintainer.
const SEEN_INSERT: u8 = 1;
const SEEN_REMOVE: u8 = 2;
const ADMITTED: u8 = 4;
const UNLINKED: u8 = 8;
/// During growth: the node belongs to the upper sibling bucket.
const HIGH: u8 = 16;
const DONE: u8 = SEEN_INSERT | SEEN_REMOVE | UNLINKED;

/// Retired nodes handed to the epoch at once by an ordinary pass (one deferred function and
/// one flush of the epoch's bag per batch, not per pass).
const RETIRE_BATCH: usize = 64;

/// How many buckets one pass splits, classifies or unzips during a growth.
const GROWTH_BUDGET: usize = 4096;
/// Largest table of one shard.
const MAX_BUCKETS: usize = 1 << 30;

#[derive(Default)]
pub(crate) struct Maint {
    /// Flags per node index (grown on demand).
    flags: Vec<u8>,
    /// Marked nodes waiting to be unlinked.
    unlink_queue: Vec<Idx>,
    /// Nodes whose unlink waits for the growth in progress to finish.
    postponed: Vec<Idx>,
    /// Unlinked nodes whose events are all in: to hand to the epoch at the end of the pass.
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

impl Maint {
    fn flags(&mut self, idx: Idx) -> &mut u8 {
        let i = idx as usize;
        if i >= self.flags.len() {
            self.flags.resize((i + 1).next_power_of_two(), 0);
        }
        &mut self.flags[i]
    }

    fn has(&self, idx: Idx, flag: u8) -> bool {
        self.flags.get(idx as usize).is_some_and(|f| f & flag != 0)
    }
}

enum Phase {
    /// Every bucket of the new table gets split off its old bucket.
    Splitting,
    /// Each node of the old chains is classified (lower or upper sibling).
    Classifying,
    /// The zipped chains are separated, one link per chain per grace period.
    Unzipping,
}

struct Growth {
    phase: Phase,
    /// Next bucket to process in the current sweep.
    progress: usize,
    /// Set by an epoch-deferred function once every thread pinned at its creation unpinned.
    grace: Option<Arc<AtomicBool>>,
    /// Per old bucket: where the remaining alternations of its chain start (NIL when done).
    cursors: Vec<u32>,
    /// Whether the current unzip sweep redirected any link.
    stepped: bool,
}

/// Starts a grace period: the returned flag turns true once every thread that is pinned now
/// has unpinned.
fn start_grace(guard: &Guard) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let done = flag.clone();
    // Release: pairs with the Acquire in `grace_over`.
    guard.defer(move || done.store(true, Ordering::Release));
    guard.flush();
    flag
}

fn grace_over(flag: &AtomicBool) -> bool {
    // Acquire: pairs with the Release in the deferred function.
    flag.load(Ordering::Acquire)
}

impl<K, V> Shard<K, V>
where
    K: Eq + std::hash::Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
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
        self.next_expiry.fetch_min(deadline, Ordering::Relaxed);
    }

    /// Ends a pass: unlinks what is pending, hands finished nodes to the epoch (in batches of
    /// [`RETIRE_BATCH`], or all of them with `retire_all`), and returns the removals to report.
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
        if !m.retired.is_empty() && (retire_all || m.retired.len() >= RETIRE_BATCH) {
            let batch = mem::take(&mut m.retired);
            for &idx in &batch {
                // SAFETY: the node is unreachable and only the maintainer (us, holding the lock)
                // handles it until the deferred release below, which the epoch runs after
                // this store (the defer happens-before its execution).
                unsafe { self.arena.node(idx).set_life(LIFE_RETIRED) };
            }
            let arena = self.arena.clone();
            // The nodes are unreachable (unlinked, all their events consumed): no new reference
            // can be made. Threads pinned now may still hold one; the epoch runs this only after
            // they have all unpinned.
            guard.defer(move || {
                for idx in batch {
                    // SAFETY: retired above: initialised payload, unreachable, and the grace
                    // period has passed, so no thread holds a reference (node.rs, rule 5).
                    unsafe { arena.release(idx) };
                }
            });
            // Hand the batch to the global queue now: left in this thread's local bag, it would
            // wait until this thread defers or pins many more times, which an idle thread never
            // does. From the queue, any thread's next collection frees it.
            guard.flush();
        }
        mem::take(&mut m.notify)
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
                // Relaxed: only the maintainer writes `live` (see `Shard::len`).
                self.live.fetch_add(1, Ordering::Relaxed);
                *m.flags(idx) |= SEEN_INSERT;
                if m.has(idx, SEEN_REMOVE) {
                    // Its removal was applied before its insertion (a remover's event overtook
                    // the inserter's): nothing would dismiss it later, so it is never admitted.
                    self.try_retire(m, cfg, idx);
                } else {
                    // Admitted even if it is already marked: its `Removed` event comes later and
                    // dismisses it. The policy thus sees every insertion and removal in the
                    // writers' order, whenever the passes happen to run (its ghost history, in
                    // particular, does not depend on maintenance timing).
                    *m.flags(idx) |= ADMITTED;
                    self.schedule(m, cfg, idx);
                    // Relaxed: only the maintainer writes it (a hint for `make_room`).
                    self.size
                        .fetch_add(u64::from(event.weight), Ordering::Relaxed);
                    if let Some(bound) = &cfg.bound {
                        m.policy
                            .get_or_insert_with(|| Policy::new(bound.share, cfg.weigher.is_some()))
                            .insert(idx, event.hash, event.weight);
                    }
                }
            }
            EventKind::Removed => {
                // Relaxed: as above.
                self.live.fetch_sub(1, Ordering::Relaxed);
                *m.flags(idx) |= SEEN_REMOVE;
                self.dismiss(m, cfg, idx);
                m.unlink_queue.push(idx);
            }
            EventKind::Rescheduled => {
                // The deadline moved earlier: re-file it. (A stale event about a slot that was
                // reused is harmless: re-filing an admitted entry at its own deadline is a
                // no-op in effect; an entry not yet admitted is filed when it is.)
                if m.has(idx, ADMITTED) && !self.arena.node(idx).is_marked() {
                    if let Some(wheel) = m.wheel.as_mut() {
                        wheel.cancel(idx);
                    }
                    self.schedule(m, cfg, idx);
                }
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
        if !self.arena.node(idx).mark() {
            return false;
        }
        if let Some(bound) = &cfg.bound {
            bound.release(self.weight_of(cfg, idx));
        }
        // Relaxed: only the maintainer writes `live` (see `Shard::len`).
        self.live.fetch_sub(1, Ordering::Relaxed);
        cfg.stats.add(
            match cause {
                RemovalCause::Expired => Counter::Expiration,
                RemovalCause::Size => Counter::Eviction,
                _ => Counter::Removal,
            },
            1,
        );
        m.notify.push((idx, cause));
        *m.flags(idx) |= SEEN_REMOVE;
        self.dismiss(m, cfg, idx);
        m.unlink_queue.push(idx);
        true
    }

    fn process_unlinks<S: BuildHasher>(&self, m: &mut Maint, cfg: &Config<K, V, S>, guard: &Guard) {
        while let Some(idx) = m.unlink_queue.pop() {
            if m.growth.is_some() {
                m.postponed.push(idx);
                continue;
            }
            self.unlink(m, cfg, idx, guard);
            *m.flags(idx) |= UNLINKED;
            self.try_retire(m, cfg, idx);
        }
    }

    /// A removed entry leaves the wheel and the policy at once (not when it is retired, which
    /// may wait for a growth to finish), so eviction never picks an entry that is already gone.
    fn dismiss<S>(&self, m: &mut Maint, cfg: &Config<K, V, S>, idx: Idx) {
        if !m.has(idx, ADMITTED) {
            return;
        }
        *m.flags(idx) &= !ADMITTED;
        if let Some(wheel) = m.wheel.as_mut() {
            wheel.cancel(idx);
        }
        // A victim the policy chose is already forgotten: `remove` ignores it.
        if let Some(policy) = m.policy.as_mut() {
            policy.remove(idx);
        }
        // Relaxed: see `apply`.
        self.size
            .fetch_sub(self.weight_of(cfg, idx), Ordering::Relaxed);
    }

    fn try_retire<S>(&self, m: &mut Maint, _cfg: &Config<K, V, S>, idx: Idx) {
        let flags = *m.flags(idx);
        if flags & DONE == DONE {
            debug_assert!(
                flags & ADMITTED == 0,
                "retiring an entry still in the wheel/policy"
            );
            *m.flags(idx) = 0;
            m.retired.push(idx);
        }
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
                || (hard_target.is_none() && policy.weighted_size() <= bound.share)
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
                    let new = (pred_val & MARK) | (next & IDX_MASK);
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

    /// Advances the growth of the shard, or starts one if the shard holds more entries than
    /// buckets. See "Growing" in shard.rs.
    fn grow<S: BuildHasher>(&self, m: &mut Maint, cfg: &Config<K, V, S>, guard: &Guard) {
        let table = self.current(guard);
        let Some(mut growth) = m.growth.take() else {
            // Relaxed: a trigger.
            if self.live.load(Ordering::Relaxed) > table.len() as i64 && table.len() < MAX_BUCKETS {
                self.publish_larger(guard);
                m.growth = Some(Growth {
                    phase: Phase::Splitting,
                    progress: 0,
                    grace: None,
                    cursors: Vec::new(),
                    stepped: false,
                });
            }
            return;
        };
        if let Some(flag) = &growth.grace {
            if !grace_over(flag) {
                // Help the epoch along: this thread's deferred functions join the global queue.
                guard.flush();
                m.growth = Some(growth);
                return;
            }
            growth.grace = None;
        }
        let Some(old) = self.old_table(guard) else {
            debug_assert!(false, "growth without an old table");
            return;
        };
        let done = match growth.phase {
            Phase::Splitting => {
                let end = (growth.progress + GROWTH_BUDGET).min(table.len());
                for j in growth.progress..end {
                    // Acquire: as in `Table::chain_head`.
                    if table.at(j).load(Ordering::Acquire) == UNINIT {
                        self.split_bucket(cfg, table, j, guard);
                    }
                }
                growth.progress = end;
                if end == table.len() {
                    growth.phase = Phase::Classifying;
                    growth.progress = 0;
                    growth.cursors = Vec::with_capacity(old.len());
                }
                false
            }
            Phase::Classifying => {
                let end = (growth.progress + GROWTH_BUDGET).min(old.len());
                for b in growth.progress..end {
                    let head = self.classify(m, cfg, table, old, b, guard);
                    growth.cursors.push(head);
                }
                growth.progress = end;
                if end == old.len() {
                    // No unzipping may start while a reader can still be walking from an old
                    // head or an uninitialised bucket: wait one grace period.
                    growth.phase = Phase::Unzipping;
                    growth.progress = 0;
                    growth.stepped = false;
                    growth.grace = Some(start_grace(guard));
                }
                false
            }
            Phase::Unzipping => {
                let end = (growth.progress + GROWTH_BUDGET).min(old.len());
                for b in growth.progress..end {
                    if self.unzip_step(m, &mut growth.cursors[b]) {
                        growth.stepped = true;
                    }
                }
                growth.progress = end;
                if end == old.len() {
                    if growth.stepped {
                        growth.progress = 0;
                        growth.stepped = false;
                        growth.grace = Some(start_grace(guard));
                        false
                    } else {
                        true
                    }
                } else {
                    false
                }
            }
        };
        if !done {
            m.growth = Some(growth);
            return;
        }
        // Every bucket is split and every chain unzipped; readers have not been able to reach
        // the old table's heads for a grace period (no bucket is uninitialised). Detach it.
        // AcqRel: Acquire to own the pointer we retire; Release orders our unzipping before it.
        let old = self.old.swap(0, Ordering::AcqRel);
        // SAFETY: the old table is unreachable from now on (see above); threads pinned now may
        // still hold it, and the epoch runs this only after they have all unpinned. The closure
        // owns the table (nothing else frees it).
        unsafe { guard.defer_unchecked(move || free_table(old)) };
        m.unlink_queue.append(&mut m.postponed);
    }

    /// Records, for each node of old chain `b`, which sibling bucket it belongs to; returns
    /// the chain's head.
    fn classify<S: BuildHasher>(
        &self,
        m: &mut Maint,
        cfg: &Config<K, V, S>,
        table: Table<'_>,
        old: Table<'_>,
        b: usize,
        _guard: &Guard,
    ) -> u32 {
        // Acquire: as in `Table::chain_head` (the head is frozen: it no longer changes).
        let head = old.at(b).load(Ordering::Acquire) & IDX_MASK;
        let mut cur = head;
        while cur != NIL {
            let node = self.arena.node(cur);
            // SAFETY: reached through links while pinned.
            let hash = unsafe { node.with_payload(|k, _| cfg.hash(k)) };
            let flags = m.flags(cur);
            if bucket_of(hash, table.mask()) != b {
                *flags |= HIGH;
            } else {
                *flags &= !HIGH;
            }
            // Acquire: as in `Shard::find`.
            cur = node.next.load(Ordering::Acquire) & IDX_MASK;
        }
        head
    }

    /// Redirects the first link of the remaining chain at `cursor` that leads from one sibling
    /// bucket's node to the other's, past the other's run. Returns whether it did.
    fn unzip_step(&self, m: &Maint, cursor: &mut u32) -> bool {
        let high = |i: u32| m.has(i, HIGH);
        let mut x = *cursor;
        while x != NIL {
            let x_node = self.arena.node(x);
            // Acquire: as in `Shard::find`.
            let x_next = x_node.next.load(Ordering::Acquire);
            let y = x_next & IDX_MASK;
            if y == NIL {
                break;
            }
            if high(x) != high(y) {
                // The run of the other sibling starts at y; skip to the next node of x's own.
                let mut z = y;
                while z != NIL && high(z) != high(x) {
                    // Acquire: as in `Shard::find`.
                    z = self.arena.node(z).next.load(Ordering::Acquire) & IDX_MASK;
                }
                let mut cur = x_next;
                loop {
                    // Release: as for an unlink (readers following the new link see z).
                    // Only the mark bit can change under us (a writer marking x).
                    match x_node.next.compare_exchange_weak(
                        cur,
                        (cur & MARK) | z,
                        Ordering::Release,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => break,
                        Err(actual) => cur = actual,
                    }
                }
                // The next alternation is at the end of y's run.
                *cursor = y;
                return true;
            }
            x = y;
        }
        *cursor = NIL;
        false
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
