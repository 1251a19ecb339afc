//! The eviction policy: an adaptive two-queue CLOCK with duel admission.
//!
//! Designed and measured in a separate policy lab on the real traces of `../shared/traces`
//! (see the README's hit-ratio table and `examples/hit_ratio.rs`), then brought here.
//!
//! Single-owner (`&mut self`), index-based. The cache owns the entries; each entry
//! carries a 2-bit saturating access counter that readers bump lock-free on a hit
//! (`if c < 3 { c += 1 }`) and that this policy reads and writes during eviction.
//! Nothing else is recorded on a hit.
//!
//! # Structure
//! * SMALL: a FIFO of newly inserted entries (the probation window). Its target
//!   weight adapts between 1% and 25% of the capacity (starting at 1%).
//! * MAIN: a CLOCK ring; the ring head is the hand, new entries go just behind it.
//! * ghost: a bounded table of 32-bit records of recently evicted keys (22-bit
//!   fingerprint, where the key was evicted from, an 8-bit eviction timestamp, and
//!   whether it was a duel loser), about one record per resident entry.
//!
//! # Algorithm
//! * `insert`: the entry goes to SMALL's tail. If its hash is in the ghost (the
//!   record is removed) the entry becomes a *candidate*, with evidence 1, or 2 if
//!   the record says it already lost a duel. A record that is not a loser's also
//!   feeds the adaptation (below).
//! * `evict_one`: while SMALL is over its target (or MAIN is empty), look at SMALL's
//!   head:
//!   1. counter > 0 (hit while in SMALL): move it to MAIN, counter := 0;
//!   2. MAIN is under its target (capacity - SMALL target): move it to MAIN;
//!   3. candidate: *duel*. Of the hand's entry and the one after it, take the one with
//!      the lower counter (the hand's on a tie). If that counter < evidence, it is
//!      the victim (ghost: evicted from MAIN) and the candidate moves to MAIN with
//!      counter 1. Otherwise the hand's counter is decremented, the hand advances,
//!      and the candidate is the victim (ghost: duel loser);
//!   4. otherwise it is the victim (ghost: evicted from SMALL).
//!
//!   Otherwise, run MAIN's CLOCK: counter > 0: decrement, advance; counter 0: victim
//!   (ghost: evicted from MAIN).
//! * adaptation (ARC-like, windowed): each queue has an eviction clock (weight
//!   evicted from it so far). A ghost hit on a key evicted from SMALL at most
//!   W = 5% of capacity ago on SMALL's clock is a hit that a SMALL bigger by W would
//!   have had; likewise for MAIN on MAIN's clock. Loser records are ignored (MAIN's
//!   admission, not a queue's size, kept them out). After every 32 such events
//!   (s from SMALL, m from MAIN), SMALL's target += 2% of capacity × (s - m)/(s + m).
//!
//! Scans: scan keys enter SMALL, are never hit and never come back, so they leave
//! through SMALL's head without touching MAIN or the adaptation.
//! Loops larger than the cache: a returning key only displaces a MAIN entry that
//! went unreferenced for a whole hand lap; loop keys in MAIN are referenced every
//! lap, so MAIN keeps a stable set (near-optimal) instead of churning like LRU.

/// Sentinel for "no id".
pub(crate) const NIL: u32 = u32::MAX;
/// Saturation value of the per-entry access counter.
#[cfg(all(test, not(loom)))]
pub(crate) const COUNTER_MAX: u8 = crate::raw::FREQ_MAX;

/// SMALL's target weight bounds and start value, in 1/10000 of capacity.
const SMALL_MIN_BP: u64 = 100; // 1%
const SMALL_MAX_BP: u64 = 2500; // 25%
const SMALL_INIT_BP: u64 = 100; // 1%
/// Ghost-hit window W, in 1/10000 of capacity.
const WINDOW_BP: u64 = 500; // 5%
/// Adaptation: events per decision, and step at full imbalance (1/10000 of capacity).
const ADAPT_PERIOD: u32 = 32;
const ADAPT_STEP_BP: u64 = 200; // 2%
/// Eviction clocks are kept in epochs of capacity/EPOCHS_PER_CAPACITY weight; the
/// ghost stores 8-bit epochs, so distances up to 4× capacity are measurable.
const EPOCHS_PER_CAPACITY: u64 = 64;
/// Counter given to a candidate that wins its duel (one lap of grace).
const ADMIT_COUNTER: u8 = 1;

const Q_NONE: u8 = 0;
const Q_SMALL: u8 = 1;
const Q_MAIN: u8 = 2;
const Q_MASK: u8 = 3;
const F_CANDIDATE: u8 = 4;
const F_REPEAT: u8 = 8;
const F_FLAGS: u8 = F_CANDIDATE | F_REPEAT;

const ORIGIN_SMALL: usize = 0;
const ORIGIN_MAIN: usize = 1;

/// What the policy needs from the cache's entries during eviction.
pub(crate) trait EntryAccess {
    /// The entry's access counter (0..=COUNTER_MAX).
    fn counter(&self, id: u32) -> u8;
    /// Overwrite the entry's access counter.
    fn set_counter(&mut self, id: u32, value: u8);
    /// The key hash that was passed to `insert` for this id.
    fn hash(&self, id: u32) -> u64;
}

/// Ghost record layout (u32): bit 0 origin, bit 1 loser, bits 2..=9 epoch,
/// bits 10..=31 fingerprint (22 bits, never all zero, so 0 means empty).
const G_LOSER: u32 = 2;
const G_EPOCH_SHIFT: u32 = 2;
const G_FP_SHIFT: u32 = 10;
const BUCKET: usize = 16; // 16 × u32 = one 64-byte cache line
const GHOST_MIN_SLOTS: usize = 64;

/// Bounded history of evicted keys. Buckets of 16 fingerprints, each a FIFO
/// (newest first). The table grows with the number of resident entries; the
/// number of slots in use per bucket (`depth`) keeps the history at about one
/// record per resident entry.
struct Ghost {
    slots: Vec<u32>,
    buckets: u64,
}

impl Ghost {
    fn with_slots(n: usize) -> Self {
        let b = n.div_ceil(BUCKET).max(GHOST_MIN_SLOTS / BUCKET);
        Ghost {
            slots: vec![0; b * BUCKET],
            buckets: b as u64,
        }
    }

    fn base(&self, hash: u64) -> usize {
        ((((hash as u32) as u64) * self.buckets) >> 32) as usize * BUCKET
    }

    fn fingerprint(hash: u64) -> u32 {
        ((hash >> 42) as u32 & 0x3F_FFFF) | 1
    }

    /// Slots in use per bucket for `entries` records.
    fn depth(&self, entries: usize) -> usize {
        (entries * BUCKET)
            .div_ceil(self.slots.len())
            .clamp(1, BUCKET)
    }

    /// Remove and return the record for `hash`, if any.
    fn take(&mut self, hash: u64, depth: usize) -> Option<u32> {
        let base = self.base(hash);
        let fp = Self::fingerprint(hash);
        let b = &mut self.slots[base..base + depth];
        let i = b.iter().position(|&v| v != 0 && v >> G_FP_SHIFT == fp)?;
        let v = b[i];
        b.copy_within(i + 1.., i);
        b[depth - 1] = 0;
        Some(v)
    }

    /// Record `hash` as the newest entry of its bucket; the oldest falls out.
    fn add(&mut self, hash: u64, info: u32, depth: usize) {
        let base = self.base(hash);
        let b = &mut self.slots[base..base + BUCKET];
        b.copy_within(0..depth - 1, 1);
        b[0] = (Self::fingerprint(hash) << G_FP_SHIFT) | info;
        for v in &mut b[depth..] {
            *v = 0;
        }
    }
}

/// The eviction policy. See the module documentation.
pub(crate) struct Policy {
    capacity: u64,
    // per-id metadata
    next: Vec<u32>,
    prev: Vec<u32>,
    tag: Vec<u8>,
    /// Weight per id; `None` for a cache without a weigher, where every entry weighs 1
    /// (saving four bytes per entry).
    weight: Option<Vec<u32>>,
    // queues: SMALL head is its oldest entry; MAIN head is the CLOCK hand
    small_head: u32,
    main_head: u32,
    small_w: u64,
    main_w: u64,
    len: usize,
    // adaptation (the target is fractional so that small caches can move by less
    // than one unit of weight per decision)
    small_target: f64,
    evicted_w: [u64; 2],
    epoch_unit: u64,
    window: u64,
    events: [u32; 2],
    ghost: Ghost,
}

fn frac(capacity: u64, bp: u64) -> u64 {
    ((capacity as u128 * bp as u128) / 10_000) as u64
}

fn frac_f(capacity: u64, bp: u64) -> f64 {
    capacity as f64 * bp as f64 / 10_000.0
}

impl Policy {
    /// A policy for a cache whose total weight must stay <= `capacity`; `weighted` says
    /// whether entries carry weights (otherwise each weighs 1).
    pub(crate) fn new(capacity: u64, weighted: bool) -> Self {
        let capacity = capacity.max(1);
        Policy {
            capacity,
            next: Vec::new(),
            prev: Vec::new(),
            tag: Vec::new(),
            weight: weighted.then(Vec::new),
            small_head: NIL,
            main_head: NIL,
            small_w: 0,
            main_w: 0,
            len: 0,
            small_target: frac_f(capacity, SMALL_INIT_BP),
            evicted_w: [0; 2],
            epoch_unit: (capacity / EPOCHS_PER_CAPACITY).max(1),
            window: frac(capacity, WINDOW_BP),
            events: [0; 2],
            ghost: Ghost::with_slots(GHOST_MIN_SLOTS),
        }
    }

    /// Total weight of the entries the policy tracks.
    pub(crate) fn weighted_size(&self) -> u64 {
        self.small_w + self.main_w
    }

    /// Number of entries the policy tracks.
    #[cfg_attr(any(not(test), loom), allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg_attr(any(not(test), loom), allow(dead_code))]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[cfg_attr(any(not(test), loom), allow(dead_code))]
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Changes the capacity the queue targets are proportioned to (a shard's share of the
    /// cache's capacity follows the shard's size). Records already in the ghost keep their
    /// timestamps, which only shifts their measured distance a little.
    pub(crate) fn set_capacity(&mut self, capacity: u64) {
        let capacity = capacity.max(1);
        if capacity == self.capacity {
            return;
        }
        let scale = capacity as f64 / self.capacity as f64;
        self.capacity = capacity;
        self.epoch_unit = (capacity / EPOCHS_PER_CAPACITY).max(1);
        self.window = frac(capacity, WINDOW_BP);
        self.small_target = (self.small_target * scale).clamp(
            frac_f(capacity, SMALL_MIN_BP),
            frac_f(capacity, SMALL_MAX_BP),
        );
    }

    /// Current target weight of the SMALL queue.
    #[cfg_attr(any(not(test), loom), allow(dead_code))]
    pub(crate) fn small_target(&self) -> u64 {
        self.small_target as u64
    }

    /// Weight of id `i`.
    #[inline]
    fn w(&self, i: usize) -> u64 {
        match &self.weight {
            Some(w) => u64::from(w[i]),
            None => 1,
        }
    }

    /// A new key `id` (not currently tracked) with `hash` and `weight` was inserted.
    /// The caller sets its counter to 0 and then calls `evict_one` until
    /// `weighted_size() <= capacity()`.
    pub(crate) fn insert(&mut self, id: u32, hash: u64, weight: u32) {
        debug_assert!(id != NIL, "id u32::MAX is reserved");
        let i = id as usize;
        self.make_room_for(i);
        if self.tag[i] & Q_MASK != Q_NONE {
            // An id is reinserted only after it was removed; should that ever be broken,
            // forget the stale membership rather than corrupt the queues.
            debug_assert!(false, "id {id} inserted while still tracked");
            self.remove(id);
        }
        if let Some(w) = &mut self.weight {
            w[i] = weight;
        }
        self.tag[i] = Q_NONE;
        self.len += 1;
        if self.len > self.ghost.slots.len() {
            // Grow the history with the resident count (records are not rehashable,
            // so the old history is dropped; this happens while the cache fills).
            let n = self
                .len
                .max(self.ghost.slots.len() + self.ghost.slots.len() / 4);
            self.ghost = Ghost::with_slots(n);
        }
        let depth = self.ghost.depth(self.len);
        if let Some(g) = self.ghost.take(hash, depth) {
            if g & G_LOSER == 0 {
                self.tag[i] = F_CANDIDATE;
                self.observe(g);
            } else {
                self.tag[i] = F_CANDIDATE | F_REPEAT;
            }
        }
        self.push_tail(Q_SMALL, id);
    }

    /// Grows the per-id tables to hold id `i`.
    fn make_room_for(&mut self, i: usize) {
        if self.next.len() <= i {
            let len = (i + 1).next_power_of_two();
            self.next.resize(len, NIL);
            self.prev.resize(len, NIL);
            self.tag.resize(len, Q_NONE);
            if let Some(w) = &mut self.weight {
                w.resize(len, 0);
            }
        }
    }

    /// The key of tracked entry `old` got a new value, tracked from now on as `new` with
    /// `weight`: `new` takes `old`'s place (its queue, its position, its flags) and `old` is
    /// forgotten, without an admission, an eviction or a ghost record: a replaced value is
    /// the same key, as popular as before (the caller carries the access counter over).
    /// Returns false, changing nothing, if `old` is not tracked. The caller then evicts if
    /// the new weight put the total over capacity.
    pub(crate) fn replace(&mut self, old: u32, new: u32, weight: u32) -> bool {
        let o = old as usize;
        if o >= self.tag.len() || self.tag[o] & Q_MASK == Q_NONE || old == new {
            return false;
        }
        debug_assert!(new != NIL, "id u32::MAX is reserved");
        let n = new as usize;
        self.make_room_for(n);
        if self.tag[n] & Q_MASK != Q_NONE {
            debug_assert!(false, "id {new} replaced in while still tracked");
            self.remove(new);
        }
        let q = self.tag[o] & Q_MASK;
        let (next, prev) = (self.next[o], self.prev[o]);
        if next == old {
            self.next[n] = new;
            self.prev[n] = new;
        } else {
            self.next[n] = next;
            self.prev[n] = prev;
            self.next[prev as usize] = new;
            self.prev[next as usize] = new;
        }
        if *self.head_mut(q) == old {
            *self.head_mut(q) = new;
        }
        self.tag[n] = self.tag[o];
        self.tag[o] = Q_NONE;
        self.next[o] = NIL;
        self.prev[o] = NIL;
        if let Some(w) = &mut self.weight {
            let before = u64::from(w[o]);
            w[n] = weight;
            let total = if q == Q_SMALL {
                &mut self.small_w
            } else {
                &mut self.main_w
            };
            *total = *total - before + u64::from(weight);
        }
        true
    }

    /// `id` was removed by the cache (explicit removal, expiry, or a victim that
    /// vanished concurrently). Unknown or already removed ids are ignored.
    pub(crate) fn remove(&mut self, id: u32) {
        let i = id as usize;
        if i < self.tag.len() && self.tag[i] & Q_MASK != Q_NONE {
            self.unlink(id);
            self.tag[i] = Q_NONE;
            self.len -= 1;
        }
    }

    /// Choose a victim. The policy has already forgotten it; the caller removes it
    /// from the cache. `None` only when the policy tracks nothing.
    pub(crate) fn evict_one<A: EntryAccess + ?Sized>(&mut self, entries: &mut A) -> Option<u32> {
        // Without concurrent hits a victim is found within 3 laps of the hand; the
        // budget only guards against readers re-referencing entries faster than the
        // hand can clear them.
        let mut budget = 4 * self.len + 8;
        loop {
            budget = budget.saturating_sub(1);
            if self.small_head == NIL && self.main_head == NIL {
                return None;
            }
            if self.small_head != NIL
                && (self.small_w as f64 > self.small_target || self.main_head == NIL)
            {
                let id = self.small_head;
                let i = id as usize;
                if entries.counter(id) > 0 {
                    entries.set_counter(id, 0);
                    self.move_to_main(id);
                    continue;
                }
                let w = self.w(i);
                if (self.main_w + w) as f64 <= self.capacity as f64 - self.small_target {
                    self.move_to_main(id);
                    continue;
                }
                if self.tag[i] & F_CANDIDATE != 0 && self.main_head != NIL {
                    // Duel: the candidate's evidence is 1, or 2 if it already lost a
                    // duel and came back again. It displaces the weaker of the hand's
                    // entry and the one after it if that one's counter is below it.
                    let evidence = if self.tag[i] & F_REPEAT != 0 { 2 } else { 1 };
                    let hand = self.main_head;
                    let after = self.next[hand as usize];
                    let (ch, ca) = (entries.counter(hand), entries.counter(after));
                    let (v, cv) = if after != hand && ca < ch {
                        (after, ca)
                    } else {
                        (hand, ch)
                    };
                    if cv < evidence {
                        self.evict(v, ORIGIN_MAIN, 0, entries);
                        self.move_to_main(id);
                        entries.set_counter(id, ADMIT_COUNTER);
                        return Some(v);
                    }
                    entries.set_counter(hand, ch - 1);
                    self.main_head = after;
                    self.evict(id, ORIGIN_SMALL, G_LOSER, entries);
                    return Some(id);
                }
                self.evict(id, ORIGIN_SMALL, 0, entries);
                return Some(id);
            }
            let hand = self.main_head;
            let c = entries.counter(hand);
            if c > 0 && budget > 0 {
                entries.set_counter(hand, c - 1);
                self.main_head = self.next[hand as usize];
                continue;
            }
            self.evict(hand, ORIGIN_MAIN, 0, entries);
            return Some(hand);
        }
    }

    /// A ghost hit on a record that is not a duel loser: one adaptation event if the
    /// key was evicted at most `window` weight ago, measured on its queue's clock.
    fn observe(&mut self, g: u32) {
        let origin = (g & 1) as usize;
        let epoch = ((g >> G_EPOCH_SHIFT) & 0xFF) as u64;
        let now = (self.evicted_w[origin] / self.epoch_unit) & 0xFF;
        let distance = ((now + 256 - epoch) & 0xFF) * self.epoch_unit;
        if distance > self.window {
            return;
        }
        self.events[origin] += 1;
        let total = self.events[0] + self.events[1];
        if total >= ADAPT_PERIOD {
            let (s, m) = (
                self.events[ORIGIN_SMALL] as f64,
                self.events[ORIGIN_MAIN] as f64,
            );
            let step = frac_f(self.capacity, ADAPT_STEP_BP) * (s - m) / (s + m);
            self.small_target = (self.small_target + step).clamp(
                frac_f(self.capacity, SMALL_MIN_BP),
                frac_f(self.capacity, SMALL_MAX_BP),
            );
            self.events = [0; 2];
        }
    }

    /// Forget `id` and record it in the ghost.
    fn evict<A: EntryAccess + ?Sized>(&mut self, id: u32, origin: usize, flags: u32, entries: &A) {
        self.unlink(id);
        self.tag[id as usize] = Q_NONE;
        self.len -= 1;
        self.evicted_w[origin] += self.w(id as usize);
        let epoch = ((self.evicted_w[origin] / self.epoch_unit) & 0xFF) as u32;
        let depth = self.ghost.depth(self.len.max(1));
        self.ghost.add(
            entries.hash(id),
            origin as u32 | flags | (epoch << G_EPOCH_SHIFT),
            depth,
        );
    }

    fn move_to_main(&mut self, id: u32) {
        self.unlink(id);
        self.push_tail(Q_MAIN, id);
    }

    fn head_mut(&mut self, q: u8) -> &mut u32 {
        if q == Q_SMALL {
            &mut self.small_head
        } else {
            &mut self.main_head
        }
    }

    /// Append `id` behind the queue's head (for MAIN: just behind the hand).
    fn push_tail(&mut self, q: u8, id: u32) {
        let i = id as usize;
        let head = *self.head_mut(q);
        if head == NIL {
            self.next[i] = id;
            self.prev[i] = id;
            *self.head_mut(q) = id;
        } else {
            let tail = self.prev[head as usize];
            self.next[tail as usize] = id;
            self.prev[i] = tail;
            self.next[i] = head;
            self.prev[head as usize] = id;
        }
        // The candidate flag only lives in SMALL (set by `insert`).
        self.tag[i] = if q == Q_MAIN {
            Q_MAIN
        } else {
            (self.tag[i] & F_FLAGS) | Q_SMALL
        };
        let w = self.w(i);
        if q == Q_SMALL {
            self.small_w += w
        } else {
            self.main_w += w
        }
    }

    fn unlink(&mut self, id: u32) {
        let i = id as usize;
        let q = self.tag[i] & Q_MASK;
        let (n, p) = (self.next[i], self.prev[i]);
        if n == id {
            *self.head_mut(q) = NIL;
        } else {
            if *self.head_mut(q) == id {
                *self.head_mut(q) = n;
            }
            self.next[p as usize] = n;
            self.prev[n as usize] = p;
        }
        self.next[i] = NIL;
        self.prev[i] = NIL;
        let w = self.w(i);
        if q == Q_SMALL {
            self.small_w -= w
        } else {
            self.main_w -= w
        }
    }

    /// Check every internal invariant; panics with a description on violation.
    #[cfg_attr(any(not(any(test, fuzzing)), loom), allow(dead_code))]
    pub(crate) fn validate(&self) {
        let mut seen = vec![false; self.tag.len()];
        let mut total = 0usize;
        for (q, head, w) in [
            (Q_SMALL, self.small_head, self.small_w),
            (Q_MAIN, self.main_head, self.main_w),
        ] {
            let mut sum = 0u64;
            if head != NIL {
                let mut id = head;
                loop {
                    let i = id as usize;
                    assert!(i < self.tag.len(), "link to unknown id {id}");
                    assert!(!seen[i], "id {id} reached twice");
                    seen[i] = true;
                    assert_eq!(self.tag[i] & Q_MASK, q, "id {id} in the wrong queue");
                    assert_eq!(self.prev[self.next[i] as usize], id, "broken link at {id}");
                    if q == Q_MAIN {
                        assert_eq!(self.tag[i] & F_FLAGS, 0, "candidate flag in MAIN at {id}");
                    }
                    sum += self.w(i);
                    total += 1;
                    id = self.next[i];
                    if id == head {
                        break;
                    }
                }
            }
            assert_eq!(sum, w, "queue weight mismatch");
        }
        assert_eq!(total, self.len, "entry count mismatch");
        for (i, &t) in self.tag.iter().enumerate() {
            if t & Q_MASK == Q_NONE {
                assert!(!seen[i]);
                assert_eq!(self.next[i], NIL, "untracked id {i} still linked");
            } else {
                assert!(seen[i], "tracked id {i} not reachable");
            }
        }
        let lo = frac_f(self.capacity, SMALL_MIN_BP);
        let hi = frac_f(self.capacity, SMALL_MAX_BP);
        assert!(
            self.small_target >= lo && self.small_target <= hi,
            "small target out of range"
        );
        assert!(self.events[0] + self.events[1] < ADAPT_PERIOD);
        assert!(
            self.len <= self.ghost.slots.len(),
            "ghost smaller than the resident count"
        );
        assert_eq!(
            self.ghost.slots.len() as u64,
            self.ghost.buckets * BUCKET as u64
        );
        for &v in &self.ghost.slots {
            assert!(
                v == 0 || v & (1 << G_FP_SHIFT) != 0,
                "malformed ghost record"
            );
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn mix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    /// Minimal single-threaded cache around the policy, as `evanesce` drives it.
    struct TestCache {
        policy: Policy,
        map: HashMap<u64, u32>,
        key: Vec<u64>,
        counter: Vec<u8>,
        hash: Vec<u64>,
        weight: Vec<u32>,
        free: Vec<u32>,
    }

    struct Access<'a> {
        counter: &'a mut [u8],
        hash: &'a [u64],
    }

    impl EntryAccess for Access<'_> {
        fn counter(&self, id: u32) -> u8 {
            self.counter[id as usize]
        }
        fn set_counter(&mut self, id: u32, value: u8) {
            assert!(value <= COUNTER_MAX);
            self.counter[id as usize] = value;
        }
        fn hash(&self, id: u32) -> u64 {
            self.hash[id as usize]
        }
    }

    impl TestCache {
        fn new(capacity: u64) -> Self {
            TestCache {
                policy: Policy::new(capacity, true),
                map: HashMap::new(),
                key: vec![],
                counter: vec![],
                hash: vec![],
                weight: vec![],
                free: vec![],
            }
        }

        fn contains(&self, k: u64) -> bool {
            self.map.contains_key(&k)
        }

        /// get, then insert on miss; returns true on hit.
        fn access(&mut self, k: u64, w: u32) -> bool {
            if let Some(&id) = self.map.get(&k) {
                let c = &mut self.counter[id as usize];
                if *c < COUNTER_MAX {
                    *c += 1;
                }
                return true;
            }
            let id = self.free.pop().unwrap_or_else(|| {
                self.key.push(0);
                self.counter.push(0);
                self.hash.push(0);
                self.weight.push(0);
                (self.key.len() - 1) as u32
            });
            let i = id as usize;
            self.key[i] = k;
            self.counter[i] = 0;
            self.hash[i] = mix(k);
            self.weight[i] = w;
            self.map.insert(k, id);
            self.policy.insert(id, self.hash[i], w);
            while self.policy.weighted_size() > self.policy.capacity() {
                let mut a = Access {
                    counter: &mut self.counter,
                    hash: &self.hash,
                };
                let v = self.policy.evict_one(&mut a).expect("victim");
                self.drop_id(v);
            }
            false
        }

        /// A new value for a resident key (a fresh id taking the old one's place), with a
        /// new weight; a miss inserts. Returns whether the key was resident.
        fn update(&mut self, k: u64, w: u32) -> bool {
            let Some(&old) = self.map.get(&k) else {
                self.access(k, w);
                return false;
            };
            self.key.push(k);
            self.counter.push(self.counter[old as usize]);
            self.hash.push(mix(k));
            self.weight.push(w);
            let new = (self.key.len() - 1) as u32;
            assert!(self.policy.replace(old, new, w));
            self.map.insert(k, new);
            self.free.push(old);
            while self.policy.weighted_size() > self.policy.capacity() {
                let mut a = Access {
                    counter: &mut self.counter,
                    hash: &self.hash,
                };
                let v = self.policy.evict_one(&mut a).expect("victim");
                self.drop_id(v);
            }
            true
        }

        fn drop_id(&mut self, id: u32) {
            let k = self.key[id as usize];
            assert_eq!(self.map.remove(&k), Some(id));
            self.free.push(id);
        }

        fn remove(&mut self, k: u64) {
            if let Some(id) = self.map.get(&k).copied() {
                self.policy.remove(id);
                self.drop_id(id);
            }
        }

        fn check(&self) {
            self.policy.validate();
            assert_eq!(self.policy.len(), self.map.len());
            let w: u64 = self
                .map
                .values()
                .map(|&id| self.weight[id as usize] as u64)
                .sum();
            assert_eq!(w, self.policy.weighted_size());
            assert!(self.policy.weighted_size() <= self.policy.capacity());
        }
    }

    #[test]
    fn empty_policy_has_no_victim() {
        let mut p = Policy::new(10, true);
        let mut counter = vec![0u8; 4];
        let hash = vec![0u64; 4];
        assert_eq!(
            p.evict_one(&mut Access {
                counter: &mut counter,
                hash: &hash
            }),
            None
        );
        p.validate();
        p.insert(3, 77, 1);
        p.validate();
        assert_eq!(
            p.evict_one(&mut Access {
                counter: &mut counter,
                hash: &hash
            }),
            Some(3)
        );
        assert!(p.is_empty());
        assert_eq!(
            p.evict_one(&mut Access {
                counter: &mut counter,
                hash: &hash
            }),
            None
        );
        p.validate();
    }

    #[test]
    fn remove_is_idempotent_and_handles_vanished_victims() {
        let mut p = Policy::new(4, true);
        let mut counter = vec![0u8; 8];
        let hash: Vec<u64> = (0..8).map(mix).collect();
        for id in 0..6 {
            p.insert(id, hash[id as usize], 1);
        }
        p.validate();
        // the caller evicts; the victim "vanished concurrently" and is reported again
        let v = p
            .evict_one(&mut Access {
                counter: &mut counter,
                hash: &hash,
            })
            .unwrap();
        p.remove(v);
        p.remove(v);
        p.remove(1000); // unknown id
        p.validate();
        assert_eq!(p.len(), 5);
        // remove whatever sits under SMALL's head and MAIN's hand
        for id in 0..6 {
            p.remove(id);
            p.validate();
        }
        assert!(p.is_empty());
        assert_eq!(p.weighted_size(), 0);
    }

    #[test]
    fn random_operations_keep_invariants() {
        let mut c = TestCache::new(500);
        let mut r = 12345u64;
        for step in 0..200_000u64 {
            r = mix(r);
            let k = match r % 10 {
                0..=5 => (r >> 8) % 300,  // hot-ish
                6..=8 => (r >> 8) % 5000, // warm
                _ => 1_000_000 + step,    // one-off
            };
            let w = 1 + ((r >> 40) % 20) as u32;
            if (r >> 20) % 50 == 0 {
                c.remove(k);
            } else if (r >> 20) % 50 < 6 {
                c.update(k, w);
            } else {
                c.access(k, w);
            }
            if step % 997 == 0 {
                c.check();
            }
        }
        c.check();
    }

    /// A replaced entry keeps its place: one that reached MAIN stays there (it is not sent
    /// back to probation, where a scan would flush it), an unknown id is refused, and the
    /// weights follow the new value.
    #[test]
    fn replace_keeps_the_place_and_updates_the_weight() {
        let mut c = TestCache::new(100);
        // 30 hot keys among a stream of one-off keys: the hot ones are promoted to MAIN.
        for round in 0..20u64 {
            for k in 0..30u64 {
                c.access(k, 1);
                c.access(10_000 + round * 30 + k, 1);
            }
        }
        let in_main = |c: &TestCache, k: u64| {
            c.map
                .get(&k)
                .is_some_and(|&id| c.policy.tag[id as usize] & Q_MASK == Q_MAIN)
        };
        let hot: Vec<u64> = (0..50).filter(|&k| in_main(&c, k)).collect();
        assert!(!hot.is_empty());
        for &k in &hot {
            assert!(c.update(k, 2));
            assert!(in_main(&c, k), "key {k} left MAIN on replace");
        }
        c.check();
        // A scan of one-off keys does not flush the replaced hot keys.
        for k in 1_000..1_400u64 {
            c.access(k, 1);
        }
        for &k in &hot {
            assert!(c.contains(k), "hot key {k} flushed after its replacement");
        }
        c.check();
        assert!(!c.policy.replace(9_999, 10_000, 1));
    }

    #[test]
    fn weighted_entries_fit_and_heavy_entry_is_handled() {
        let mut c = TestCache::new(1000);
        for k in 0..5000u64 {
            c.access(k % 700, 1 + (mix(k) % 64) as u32);
            assert!(c.policy.weighted_size() <= 1000);
        }
        // an entry heavier than the whole capacity is evicted right away
        c.access(999_999, 5000);
        assert!(!c.contains(999_999));
        c.check();
    }

    #[test]
    fn scan_does_not_flush_hot_working_set() {
        let cap = 1000;
        let mut c = TestCache::new(cap);
        let hot: Vec<u64> = (0..600).collect();
        // warm: every hot key is used several times
        for _ in 0..8 {
            for &k in &hot {
                c.access(k, 1);
            }
        }
        // a long one-time scan of never-repeated keys (50x the capacity)
        for k in 0..50_000u64 {
            c.access(1_000_000 + k, 1);
        }
        let kept = hot.iter().filter(|&&k| c.contains(k)).count();
        assert!(
            kept >= hot.len() * 95 / 100,
            "only {kept} of {} hot keys survived the scan",
            hot.len()
        );
        // and the same with hot traffic mixed into the scan
        let mut r = 7u64;
        for k in 0..50_000u64 {
            c.access(2_000_000 + k, 1);
            if k % 4 == 0 {
                r = mix(r);
                c.access(hot[(r % hot.len() as u64) as usize], 1);
            }
        }
        let kept = hot.iter().filter(|&&k| c.contains(k)).count();
        assert!(
            kept >= hot.len() * 95 / 100,
            "only {kept} of {} hot keys survived the mixed scan",
            hot.len()
        );
        c.check();
    }

    #[test]
    fn loop_larger_than_cache_keeps_a_stable_set() {
        let cap = 1000u64;
        let n = 1250u64;
        let mut c = TestCache::new(cap);
        let mut hits = 0;
        let mut total = 0;
        for rep in 0..100 {
            for k in 0..n {
                let h = c.access(k, 1);
                if rep >= 20 {
                    total += 1;
                    hits += h as u32;
                }
            }
        }
        let ratio = hits as f64 / total as f64;
        // LRU and FIFO get 0 here; the optimum is (cap - 1) / n = 0.799
        assert!(ratio > 0.75, "loop hit ratio {ratio}");
        c.check();
    }

    #[test]
    fn recency_workload_grows_small_queue() {
        // Keys are used in short bursts: each new key is re-requested a few times
        // within a short distance and then never again. SMALL should grow.
        let cap = 2000u64;
        let mut c = TestCache::new(cap);
        let start = c.policy.small_target();
        let mut recent: Vec<u64> = Vec::new();
        let mut r = 99u64;
        let mut next = 0u64;
        for _ in 0..400_000 {
            r = mix(r);
            if r % 3 == 0 || recent.is_empty() {
                recent.push(next);
                next += 1;
                c.access(next - 1, 1);
            } else {
                let back = 1 + ((r >> 16) % 300) as usize;
                let k = recent[recent.len().saturating_sub(back)];
                c.access(k, 1);
            }
        }
        assert!(
            c.policy.small_target() > start * 5,
            "small target {} (start {start})",
            c.policy.small_target()
        );
        c.check();
    }

    /// Readers may re-reference entries while the hand sweeps; eviction must still
    /// terminate even if every counter always reads as saturated.
    #[test]
    fn eviction_terminates_when_everything_stays_hot() {
        struct AlwaysHot;
        impl EntryAccess for AlwaysHot {
            fn counter(&self, _: u32) -> u8 {
                COUNTER_MAX
            }
            fn set_counter(&mut self, _: u32, _: u8) {}
            fn hash(&self, id: u32) -> u64 {
                mix(id as u64)
            }
        }
        let mut p = Policy::new(100, true);
        for id in 0..150 {
            p.insert(id, mix(id as u64), 1);
            while p.weighted_size() > p.capacity() {
                let v = p.evict_one(&mut AlwaysHot).unwrap();
                assert!(v < 150);
            }
        }
        p.validate();
        assert_eq!(p.len(), 100);
    }

    #[test]
    fn ghost_forgets_old_history() {
        let mut g = Ghost::with_slots(256);
        let depth = g.depth(256);
        for k in 0..10_000u64 {
            g.add(mix(k), 0, depth);
        }
        // recent keys are found, old ones are gone
        let recent = (9_900..10_000u64)
            .filter(|&k| g.take(mix(k), depth).is_some())
            .count();
        let old = (0..1_000u64)
            .filter(|&k| g.take(mix(k), depth).is_some())
            .count();
        assert!(recent >= 95, "recent {recent}");
        assert!(old <= 2, "old {old}");
    }
}
