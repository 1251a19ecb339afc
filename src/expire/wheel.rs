//! Hierarchical timer wheel that drives the reclamation of expired entries.
//!
//! Each cache shard owns one [`Wheel`]. It is only used through `&mut self` by the thread that
//! currently holds the shard, so it needs no atomics and no `unsafe`, and it never reads a clock:
//! every time is passed in, in nanoseconds since the cache started (`u64::MAX` meaning "never").
//! The wheel only decides *when to look* at an entry; the cache keeps the real deadlines and
//! hands them back through the `deadline_of` callback of [`Wheel::advance`].
//!
//! # Layout
//!
//! Time is cut into ticks of `1 << tick_shift` ns. The wheel has [`LEVELS`] levels of
//! [`SLOTS`] slots; a slot of level `L` spans `64^L` ticks, so the levels together cover one
//! *epoch* of `2^36` ticks (the tick numbers that agree on every bit above bit 35). The wheel
//! keeps a current tick `e`. An entry due at tick `t >= e` is filed at level
//! [`level_for`]`(e, t)`, the highest 6-bit digit in which `t` and `e` differ, in the slot given
//! by `t`'s digit at that level ([`slot_for`]). Consequently, between calls:
//!
//! * every occupied slot of level 0 is at or after `e`'s digit, and every occupied slot of a
//!   level `L >= 1` is strictly after `e`'s digit at `L`: slots never wrap around, so the lowest
//!   set bit of a level's occupancy bitmap is the next slot of that level to come due;
//! * any occupied slot of a lower level comes due before any occupied slot of a higher level,
//!   so the next slot to process is the lowest set bit of the lowest non-empty level.
//!
//! Two more lists complete the wheel:
//!
//! * the *overflow* list is the farthest slot: it holds the entries due in a later epoch (the
//!   deadlines beyond the wheel's range). It comes due at the start of the next epoch, when its
//!   entries are re-filed at their current deadline;
//! * the *due* list holds the entries scheduled with a deadline that had already passed (at or
//!   before the latest `now` the wheel has seen); the next [`Wheel::advance`] of either kind
//!   handles them.
//!
//! Every list is one of the circular doubly-linked lists of a [`Lists`] (the index-linked
//! lists the eviction policy uses too): entry `id` owns one `[prev, next]` node (8 bytes per
//! id, nothing else), and when an unlink leaves a list empty, [`Lists::unlink`] names the list
//! whose occupancy bit must be cleared; so [`Wheel::cancel`] is O(1) without a per-entry slot
//! field.

use crate::evict::list::{self, Lists};

/// Bits of a tick number consumed by one level.
const SLOT_BITS: u32 = 6;
/// Slots per level.
const SLOTS: usize = 1 << SLOT_BITS;
/// Mask of one level's digit.
const SLOT_MASK: u64 = SLOTS as u64 - 1;
/// Number of levels: `LEVELS * SLOT_BITS` = 36 bits of ticks per epoch.
const LEVELS: usize = 6;
/// Bits of tick covered by all the levels together (one epoch).
const EPOCH_BITS: u32 = SLOT_BITS * LEVELS as u32;
/// Mask of the tick bits inside one epoch.
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;
/// List index of the overflow list (entries due in a later epoch: the farthest slot).
const OVERFLOW: usize = LEVELS * SLOTS;
/// List index of the due list (entries whose deadline had passed when they were scheduled).
const DUE: usize = OVERFLOW + 1;
/// Number of lists: the level slots, the overflow list and the due list.
const LISTS: usize = DUE + 1;
/// Largest entry id the wheel accepts.
pub(crate) const MAX_ID: u32 = list::MAX_ID;

/// Level at which an entry due at tick `when` is filed while the wheel's current tick is
/// `elapsed` (callers guarantee `when >= elapsed`).
///
/// It is the index of the highest 6-bit digit in which the two tick numbers differ (0 when they
/// are equal), or [`LEVELS`] when they differ above bit 35, i.e. when `when` lies in a later
/// epoch: such an entry goes to the overflow list.
fn level_for(elapsed: u64, when: u64) -> usize {
    // Or-ing in the low digit makes equal ticks land on level 0 and keeps the value non-zero.
    let differing = (elapsed ^ when) | SLOT_MASK;
    let top_bit = u64::BITS - 1 - differing.leading_zeros();
    ((top_bit / SLOT_BITS) as usize).min(LEVELS)
}

/// Slot (0..64) of tick `when` at `level`: its 6-bit digit at that level.
fn slot_for(when: u64, level: usize) -> usize {
    ((when >> (level as u32 * SLOT_BITS)) & SLOT_MASK) as usize
}

/// A hierarchical timer wheel over `u32` entry ids (see the module documentation).
///
/// Contract with the caller:
///
/// * the deadline an id is scheduled with must never be later than the deadline `deadline_of`
///   returns for it afterwards. Moving a deadline later needs no call at all (the entry is
///   re-filed lazily when its slot comes due); moving it earlier needs [`Wheel::cancel`] then
///   [`Wheel::schedule`] with the new deadline;
/// * the deadline `deadline_of` returns must be stored by the time of the next
///   [`Wheel::advance`] (storing it before or after calling `schedule` is the same, since the
///   callbacks only run inside `advance`);
/// * `deadline_of(id)` must answer for every id that is scheduled: [`Wheel::cancel`] an id
///   before its entry is freed or the id is given to another entry (ids are reused);
/// * ids are expected to be dense: the link table grows to the largest id ever scheduled
///   (8 bytes per id).
///
/// Breaking the first rule (a current deadline earlier than the filed one) is not unsound: the
/// entry is merely expired late, when the slot of the filed deadline comes due.
pub(crate) struct Wheel {
    /// A tick is `1 << tick_shift` ns.
    tick_shift: u32,
    /// Current tick. Outside `advance` it equals `now >> tick_shift`; inside, it moves through
    /// the start ticks of the slots being processed.
    elapsed: u64,
    /// Latest time (ns) the wheel has been given, by `new` or `advance`.
    now: u64,
    /// Number of scheduled entries.
    len: usize,
    /// Per level, bit `s` is set iff slot `s` of that level is non-empty.
    occupied: [u64; LEVELS],
    /// The level slots (list `level * SLOTS + slot`), the overflow list and the due list.
    lists: Lists,
}

impl Wheel {
    /// Creates an empty wheel with ticks of `1 << tick_shift` ns whose current time is `now`
    /// (ns).
    ///
    /// # Panics
    ///
    /// If `tick_shift >= 64`.
    pub(crate) fn new(tick_shift: u32, now: u64) -> Wheel {
        assert!(tick_shift < u64::BITS, "tick_shift must be below 64");
        Wheel {
            tick_shift,
            elapsed: now >> tick_shift,
            now,
            len: 0,
            occupied: [0; LEVELS],
            lists: Lists::new(LISTS),
        }
    }

    /// Files `id` to come due at `deadline` (ns).
    ///
    /// A deadline at or before the latest `now` the wheel has seen goes to the due list, which
    /// the next [`Wheel::advance`] (exact or not) handles; a deadline in a later epoch than the
    /// current one (beyond `2^36` ticks) goes to the overflow list and is re-filed when the wheel
    /// reaches that epoch. `u64::MAX` (never) is accepted but never expires.
    ///
    /// `id` must not be scheduled already (checked by a debug assertion; in release builds the
    /// entry is moved instead). Grows the link table if `id` is beyond it; otherwise O(1) and
    /// allocation-free.
    ///
    /// # Panics
    ///
    /// If `id > MAX_ID` (`2^31 - 1`).
    pub(crate) fn schedule(&mut self, id: u32, deadline: u64) {
        assert!(id <= MAX_ID, "wheel ids must be below 2^31");
        self.lists.reserve(id);
        let already = self.lists.is_linked(id);
        debug_assert!(!already, "id {id} is already scheduled");
        if already {
            self.unlink(id);
        } else {
            self.len += 1;
        }
        let list = self.list_for(deadline);
        self.push_back(list, id);
    }

    /// Removes `id` from the wheel if it is scheduled, in O(1). Returns whether it was
    /// scheduled.
    pub(crate) fn cancel(&mut self, id: u32) -> bool {
        if !self.is_scheduled(id) {
            return false;
        }
        self.unlink(id);
        self.len -= 1;
        true
    }

    /// Whether `id` is scheduled (filed in some slot or list of the wheel).
    pub(crate) fn is_scheduled(&self, id: u32) -> bool {
        self.lists.is_linked(id)
    }

    /// Advances the wheel to `now` (ns) and expires what has come due.
    ///
    /// Every scheduled entry whose slot is processed is unlinked and `deadline_of(id)` is asked
    /// for its *current* deadline `d`. If `d <= now`, the entry stays unscheduled and is passed
    /// to `expired(id)` (after it is fully unlinked). Otherwise it is re-filed at `d` (which
    /// cascades it to a lower level, or puts it back in the same slot of the current tick).
    /// `deadline_of` may be asked more than once about the same id during one call.
    ///
    /// Guarantees, writing `tick(x) = x >> tick_shift` and `now' = min(now, u64::MAX - 1)` (so
    /// that a deadline of `u64::MAX` never expires), for a `now` not earlier than the one of the
    /// previous call:
    ///
    /// * `expired` is only called for ids whose current deadline is `<= now'`, once each;
    /// * `exact == false` (cheap, amortised path): afterwards, every scheduled entry with a
    ///   current deadline `<= now'` has `tick(deadline) == tick(now')`: everything due in an
    ///   earlier tick has been expired. So has every entry of the due list (scheduled with a
    ///   deadline at or before the latest `now` seen) whose current deadline is `<= now'`,
    ///   whatever its tick. Other entries due in the current tick are expired only if met while
    ///   cascading a higher-level slot; the rest are left for a later call;
    /// * `exact == true`: additionally, the entries filed in the slot of the current tick are
    ///   examined, so that afterwards no scheduled entry has a current deadline `<= now'`. This
    ///   costs O(entries filed in the current tick) even when nothing expires.
    ///
    /// Empty slots are skipped through the occupancy bitmaps, so a jump of any size costs
    /// O(LEVELS) per processed slot plus O(1) per processed entry. An entry is processed at
    /// most `LEVELS + 2` times per call (the due list, each level it cascades down through, and
    /// the current tick's slot when `exact`), and over its life about once per level per epoch
    /// plus once per lazy deadline move that its slot comes due before.
    ///
    /// An earlier `now` than the previous call's is tolerated (nothing panics, nothing with a
    /// current deadline `> now'` is expired) but does not move the wheel back.
    pub(crate) fn advance(
        &mut self,
        now: u64,
        exact: bool,
        mut deadline_of: impl FnMut(u32) -> u64,
        mut expired: impl FnMut(u32),
    ) {
        let now = now.min(u64::MAX - 1);
        self.now = self.now.max(now);
        let target = self.now >> self.tick_shift;

        // Drain the due list while the current tick is still the old one: an entry whose
        // deadline moved later is re-filed relative to it, like everything else in the wheel,
        // and cascades with the rest below.
        self.drain(DUE, now, &mut deadline_of, &mut expired);

        // Process, in time order, every slot that comes due before `target`: a level-0 slot
        // whose tick is over (`start < target`), a higher-level slot or the overflow list as
        // soon as it starts (`start <= target`), which cascades it into lower levels.
        while let Some((list, start)) = self.next_occupied() {
            let comes_due = if list < SLOTS {
                start < target
            } else {
                start <= target
            };
            if !comes_due {
                break;
            }
            // The overflow list is only next when every level is empty: the wheel can then jump
            // straight to `target` instead of walking epoch after epoch.
            self.elapsed = if list == OVERFLOW { target } else { start };
            self.drain(list, now, &mut deadline_of, &mut expired);
        }
        // Every occupied slot now starts at or after `target` (strictly after, above level 0),
        // so moving the current tick there keeps every entry's level and slot valid.
        self.elapsed = target;

        if exact {
            // Level-0 entries all lie in the current 64-tick block at or after `target`, so this
            // slot holds exactly the entries filed at tick `target`.
            let list = slot_for(target, 0);
            self.drain(list, now, &mut deadline_of, &mut expired);
        }
    }

    /// A time (ns) from which [`Wheel::advance`] might expire something, or `None` if nothing
    /// is scheduled.
    ///
    /// The value is the start of the earliest non-empty slot: it is at least the start of the
    /// current tick, and at most the start of the tick of every scheduled entry's current
    /// deadline, except that when the due list is non-empty it is the start of the current tick
    /// (those entries are expirable right away). It is a lower bound, not a promise: the slot may
    /// only hold entries whose deadline moved later, or be a higher-level slot that merely
    /// cascades. An exact advance to the returned time processes that slot; a non-exact one
    /// processes a level-0 slot only once its tick is over (one tick later). O(LEVELS).
    pub(crate) fn next_expiration(&self) -> Option<u64> {
        if !self.list_is_empty(DUE) {
            return Some(self.elapsed << self.tick_shift);
        }
        self.next_occupied()
            .map(|(_, start)| start << self.tick_shift)
    }

    // Test and fuzz support (the invariant checks of the proptest model and fuzz target).
    #[cfg_attr(any(not(any(test, fuzzing)), loom), allow(dead_code))]
    /// Number of scheduled entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    // Test and fuzz support (the invariant checks of the proptest model and fuzz target).
    #[cfg_attr(any(not(any(test, fuzzing)), loom), allow(dead_code))]
    /// Whether no entry is scheduled.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks the structural invariants, panicking with a message on the first violation.
    /// For tests and fuzzing; O(LISTS + size of the link table).
    ///
    /// * outside `advance`, the current tick is the tick of the latest `now`;
    /// * the lists are well formed ([`Lists::validate`]: every scheduled id is in exactly one
    ///   list) and hold `len` entries in all;
    /// * a level's occupancy bit is set iff its slot is non-empty;
    /// * no occupied slot lies in the past: at level 0 no slot before the current tick's digit
    ///   is occupied, at a level `L >= 1` no slot up to and including the current tick's digit
    ///   at `L` is (so slots never wrap around);
    /// * the overflow list is empty if the current epoch is the last one the tick range has.
    #[cfg(any(all(test, not(loom)), fuzzing))]
    pub(crate) fn validate(&self) {
        assert!(
            self.tick_shift < u64::BITS,
            "tick_shift {}",
            self.tick_shift
        );
        assert_eq!(
            self.elapsed,
            self.now >> self.tick_shift,
            "current tick is not the tick of the latest now"
        );
        let lengths = self.lists.validate();
        assert_eq!(lengths.len(), LISTS, "wrong number of lists");
        for (list, &in_list) in lengths.iter().enumerate() {
            if list < OVERFLOW {
                let bit = (self.occupied[list / SLOTS] >> (list % SLOTS)) & 1 == 1;
                assert_eq!(bit, in_list > 0, "occupancy bit of list {list} is wrong");
            }
        }
        assert_eq!(
            lengths.iter().sum::<usize>(),
            self.len,
            "len does not match the lists"
        );
        for (level, &bits) in self.occupied.iter().enumerate() {
            let digit = slot_for(self.elapsed, level);
            let first_allowed = if level == 0 { digit } else { digit + 1 };
            let past = 1u64
                .checked_shl(first_allowed as u32)
                .map_or(u64::MAX, |b| b - 1);
            assert_eq!(
                bits & past,
                0,
                "level {level} has an occupied slot at or before the current tick (digit {digit})"
            );
        }
        if !self.list_is_empty(OVERFLOW) {
            assert!(
                (self.elapsed | EPOCH_MASK) < u64::MAX >> self.tick_shift,
                "overflow entries although no later epoch exists"
            );
        }
    }

    /// [`Wheel::validate`], plus the timing invariant given the current deadlines: every entry
    /// outside the due list sits in a slot that starts no later than the tick of its current
    /// deadline, so the slot comes due no later than the entry does. (Entries whose deadline
    /// moved later sit in an earlier slot than their deadline's, which is allowed: they are
    /// re-filed when it comes due.) The due list may hold any deadline.
    #[cfg(any(all(test, not(loom)), fuzzing))]
    pub(crate) fn validate_deadlines(&self, mut deadline_of: impl FnMut(u32) -> u64) {
        self.validate();
        for list in 0..DUE {
            let start = self.list_start(list);
            for cur in self.lists.iter(list) {
                let deadline = deadline_of(cur);
                let tick = deadline >> self.tick_shift;
                assert!(
                    start <= tick,
                    "id {cur} (deadline {deadline}, tick {tick}) sits in list {list}, which \
                     starts at tick {start}, after its deadline"
                );
            }
        }
    }

    /// List in which an entry with `deadline` is filed, relative to the current tick.
    fn list_for(&self, deadline: u64) -> usize {
        if deadline <= self.now {
            return DUE;
        }
        // `deadline > now` implies a tick at or after the current one; `max` keeps a violated
        // assumption from ever filing into a slot of the past.
        let when = (deadline >> self.tick_shift).max(self.elapsed);
        match level_for(self.elapsed, when) {
            LEVELS => OVERFLOW,
            level => level * SLOTS + slot_for(when, level),
        }
    }

    /// First tick of the range list `list` (a level slot or the overflow list) covers,
    /// relative to the current tick.
    fn list_start(&self, list: usize) -> u64 {
        if list == OVERFLOW {
            // Only called with overflow entries present, so a later epoch exists.
            return (self.elapsed | EPOCH_MASK).saturating_add(1);
        }
        let level = list / SLOTS;
        let low_bits = level as u32 * SLOT_BITS;
        let block = (1u64 << (low_bits + SLOT_BITS)) - 1;
        (self.elapsed & !block) | (((list % SLOTS) as u64) << low_bits)
    }

    /// The earliest non-empty slot (or the overflow list) and its start tick.
    fn next_occupied(&self) -> Option<(usize, u64)> {
        let list = match self.occupied.iter().position(|&bits| bits != 0) {
            Some(level) => level * SLOTS + self.occupied[level].trailing_zeros() as usize,
            None if !self.list_is_empty(OVERFLOW) => OVERFLOW,
            None => return None,
        };
        Some((list, self.list_start(list)))
    }

    /// Whether list `list` holds no entry.
    fn list_is_empty(&self, list: usize) -> bool {
        self.lists.is_empty(list)
    }

    /// Detaches list `list` and processes its entries: expires those whose current deadline is
    /// `<= now`, re-files the others (possibly into the same list, which is fresh by then).
    fn drain(
        &mut self,
        list: usize,
        now: u64,
        deadline_of: &mut impl FnMut(u32) -> u64,
        expired: &mut impl FnMut(u32),
    ) {
        if self.lists.is_empty(list) {
            return;
        }
        let mut chain = self.lists.detach(list);
        self.clear_occupied(list);
        // Each entry leaves the detached chain before it is re-filed, so re-filing into this
        // same list (fresh by then) cannot loop.
        while let Some(id) = self.lists.pop_detached(&mut chain) {
            let deadline = deadline_of(id);
            if deadline <= now {
                self.len -= 1;
                expired(id);
            } else {
                let to = self.list_for(deadline);
                self.push_back(to, id);
            }
        }
    }

    /// Links unscheduled entry `id` at the end of list `list` and marks the list occupied.
    fn push_back(&mut self, list: usize, id: u32) {
        self.lists.push_back(list, id);
        if list < OVERFLOW {
            self.occupied[list / SLOTS] |= 1 << (list % SLOTS);
        }
    }

    /// Unlinks scheduled entry `id` from its list (leaving `len` alone), clearing the list's
    /// occupancy bit if it becomes empty.
    fn unlink(&mut self, id: u32) {
        if let Some(emptied) = self.lists.unlink(id) {
            self.clear_occupied(emptied);
        }
    }

    /// Clears the occupancy bit of list `list` (a no-op for the overflow and due lists).
    fn clear_occupied(&mut self, list: usize) {
        if list < OVERFLOW {
            self.occupied[list / SLOTS] &= !(1 << (list % SLOTS));
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// Advances `wheel` with deadlines from `deadlines`, returning the expired ids (sorted) and
    /// checking that none is reported twice and that each was unlinked.
    fn advance(
        wheel: &mut Wheel,
        now: u64,
        exact: bool,
        deadlines: &BTreeMap<u32, u64>,
    ) -> Vec<u32> {
        let mut out = Vec::new();
        wheel.advance(
            now,
            exact,
            |id| {
                *deadlines
                    .get(&id)
                    .expect("deadline_of asked about an unknown id")
            },
            |id| out.push(id),
        );
        let len = out.len();
        out.sort_unstable();
        out.dedup();
        assert_eq!(out.len(), len, "an id was expired twice");
        for &id in &out {
            assert!(!wheel.is_scheduled(id));
        }
        out
    }

    /// Reference `level_for`: compares the 6-bit digits from the top one down.
    fn level_for_reference(elapsed: u64, when: u64) -> usize {
        for level in (0..=10).rev() {
            let shift = 6 * level as u32;
            if (elapsed >> shift) != (when >> shift) {
                return level.min(LEVELS);
            }
        }
        0
    }

    #[test]
    fn level_for_examples() {
        assert_eq!(level_for(0, 0), 0);
        assert_eq!(level_for(0, 63), 0);
        assert_eq!(level_for(0, 64), 1);
        assert_eq!(level_for(63, 64), 1);
        assert_eq!(level_for(64, 127), 0);
        assert_eq!(level_for(64, 128), 1);
        assert_eq!(level_for(0, 4095), 1);
        assert_eq!(level_for(0, 4096), 2);
        assert_eq!(level_for(0, (1 << 30) - 1), 4);
        assert_eq!(level_for(0, 1 << 30), 5);
        assert_eq!(level_for(0, EPOCH_MASK), 5);
        assert_eq!(level_for(0, 1 << 36), LEVELS);
        assert_eq!(level_for(EPOCH_MASK, 1 << 36), LEVELS);
        assert_eq!(level_for(1 << 36, (1 << 36) + 5), 0);
        assert_eq!(level_for(0, u64::MAX), LEVELS);
        assert_eq!(level_for(u64::MAX - 1, u64::MAX), 0);
        assert_eq!(level_for(u64::MAX, u64::MAX), 0);
        assert_eq!(slot_for(0b101_000011, 0), 3);
        assert_eq!(slot_for(0b101_000011, 1), 5);
        assert_eq!(slot_for(u64::MAX, 5), 63);
    }

    proptest! {
        #[test]
        fn level_for_matches_reference(elapsed in any::<u64>(), delta in any::<u64>(), bits in 0u32..64) {
            let when = elapsed.saturating_add(delta >> bits);
            prop_assert_eq!(level_for(elapsed, when), level_for_reference(elapsed, when));
        }
    }

    #[test]
    fn new_wheel_is_empty() {
        for shift in [0, 20, 63] {
            let wheel = Wheel::new(shift, 12345);
            wheel.validate();
            assert_eq!(wheel.len(), 0);
            assert!(wheel.is_empty());
            assert_eq!(wheel.next_expiration(), None);
            assert!(!wheel.is_scheduled(0));
            assert!(!wheel.is_scheduled(MAX_ID));
        }
    }

    #[test]
    #[should_panic(expected = "tick_shift")]
    fn new_rejects_shift_64() {
        let _ = Wheel::new(64, 0);
    }

    #[test]
    #[should_panic(expected = "below 2^31")]
    fn schedule_rejects_sentinel_ids() {
        Wheel::new(0, 0).schedule(MAX_ID + 1, 10);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "already scheduled")]
    fn schedule_twice_is_caught() {
        let mut wheel = Wheel::new(0, 0);
        wheel.schedule(1, 10);
        wheel.schedule(1, 20);
    }

    #[test]
    fn schedule_and_cancel() {
        let mut wheel = Wheel::new(0, 0);
        let deadlines = [
            (0u32, 5u64),
            (1, 64),
            (2, 5000),
            (3, 1 << 35),
            (4, 1 << 40),
            (9, 5),
        ];
        for (id, deadline) in deadlines {
            wheel.schedule(id, deadline);
            wheel.validate_deadlines(|x| deadlines.iter().find(|d| d.0 == x).unwrap().1);
        }
        assert_eq!(wheel.len(), 6);
        assert!(wheel.is_scheduled(4) && !wheel.is_scheduled(5) && !wheel.is_scheduled(1000));
        assert_eq!(wheel.next_expiration(), Some(5));
        assert!(wheel.cancel(0));
        assert!(!wheel.cancel(0));
        assert!(!wheel.cancel(7));
        assert!(!wheel.cancel(1_000_000));
        wheel.validate();
        assert_eq!(wheel.next_expiration(), Some(5));
        assert!(wheel.cancel(9));
        // Next is the level-1 slot of 64: it starts at 64.
        assert_eq!(wheel.next_expiration(), Some(64));
        for id in [1, 2, 3, 4] {
            assert!(wheel.cancel(id));
            wheel.validate();
        }
        assert!(wheel.is_empty());
        assert_eq!(wheel.occupied, [0; LEVELS]);
        assert_eq!(wheel.next_expiration(), None);
    }

    #[test]
    fn expires_at_the_deadline_exact_and_amortised() {
        for shift in [0u32, 3, 20] {
            let tick = 1u64 << shift;
            for deadline in [
                1,
                tick - 1,
                tick,
                5 * tick + tick / 2,
                64 * tick,
                70_000 * tick + 1,
            ] {
                let deadline = deadline.max(1);
                let deadlines = BTreeMap::from([(7u32, deadline)]);
                let mut wheel = Wheel::new(shift, 0);
                wheel.schedule(7, deadline);
                assert!(wheel.next_expiration().unwrap() <= deadline >> shift << shift);
                // Just before the deadline nothing expires, exact or not.
                assert!(advance(&mut wheel, deadline - 1, true, &deadlines).is_empty());
                wheel.validate_deadlines(|_| deadline);
                assert!(advance(&mut wheel, deadline - 1, false, &deadlines).is_empty());
                assert_eq!(wheel.next_expiration(), Some(deadline >> shift << shift));
                // At the deadline the non-exact path expires the entry only if it was still in
                // a higher-level slot (which starts, hence cascades, at this tick); from a
                // level-0 slot it waits for the end of the tick...
                let mut amortised = wheel_clone(&wheel);
                let cascades = amortised.occupied[0] == 0;
                let expired = advance(&mut amortised, deadline, false, &deadlines);
                let tick_end = (deadline | (tick - 1)) + 1;
                if cascades {
                    assert_eq!(expired, vec![7]);
                } else {
                    assert!(expired.is_empty());
                    assert_eq!(
                        advance(&mut amortised, tick_end - 1, false, &deadlines),
                        Vec::<u32>::new()
                    );
                    assert_eq!(
                        advance(&mut amortised, tick_end, false, &deadlines),
                        vec![7]
                    );
                }
                amortised.validate();
                // ... while the exact path expires it right away.
                assert_eq!(advance(&mut wheel, deadline, true, &deadlines), vec![7]);
                wheel.validate();
                assert!(wheel.is_empty());
                assert_eq!(wheel.next_expiration(), None);
            }
        }
    }

    /// A copy of a wheel, for trying two paths from the same state.
    fn wheel_clone(wheel: &Wheel) -> Wheel {
        Wheel {
            tick_shift: wheel.tick_shift,
            elapsed: wheel.elapsed,
            now: wheel.now,
            len: wheel.len,
            occupied: wheel.occupied,
            lists: wheel.lists.clone(),
        }
    }

    #[test]
    fn past_and_present_deadlines_go_to_the_due_list() {
        let shift = 20;
        let now = 10 << shift | 12345;
        let mut wheel = Wheel::new(shift, now);
        let deadlines = BTreeMap::from([(0u32, 0u64), (1, now - 1), (2, now), (3, now + 1)]);
        for (&id, &deadline) in &deadlines {
            wheel.schedule(id, deadline);
        }
        wheel.validate_deadlines(|id| deadlines[&id]);
        assert_eq!(wheel.next_expiration(), Some(10 << shift));
        // Even a non-exact advance to the same time expires what was already due.
        assert_eq!(advance(&mut wheel, now, false, &deadlines), vec![0, 1, 2]);
        wheel.validate();
        assert!(wheel.is_scheduled(3));
        assert_eq!(advance(&mut wheel, now + 1, true, &deadlines), vec![3]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn exact_only_expires_what_is_due_in_the_current_tick() {
        let shift = 20;
        let base = 5 << shift;
        let mut wheel = Wheel::new(shift, base);
        let deadlines = BTreeMap::from([(0u32, base + 10), (1, base + 20), (2, base + 30)]);
        for (&id, &deadline) in &deadlines {
            wheel.schedule(id, deadline);
        }
        assert_eq!(
            advance(&mut wheel, base + 20, false, &deadlines),
            Vec::<u32>::new()
        );
        assert_eq!(advance(&mut wheel, base + 20, true, &deadlines), vec![0, 1]);
        wheel.validate_deadlines(|id| deadlines[&id]);
        assert_eq!(wheel.len(), 1);
        assert_eq!(
            advance(&mut wheel, base + 29, true, &deadlines),
            Vec::<u32>::new()
        );
        assert_eq!(advance(&mut wheel, base + 30, true, &deadlines), vec![2]);
    }

    #[test]
    fn lazy_reschedule_refiles_instead_of_expiring() {
        for shift in [0u32, 20] {
            let tick = 1u64 << shift;
            let mut deadlines = BTreeMap::from([(1u32, 100 * tick), (2, 100 * tick)]);
            let mut wheel = Wheel::new(shift, 0);
            wheel.schedule(1, 100 * tick);
            wheel.schedule(2, 100 * tick);
            // Entry 1 moves later without telling the wheel.
            deadlines.insert(1, 10_000 * tick);
            assert_eq!(advance(&mut wheel, 200 * tick, false, &deadlines), vec![2]);
            wheel.validate_deadlines(|id| deadlines[&id]);
            assert!(wheel.is_scheduled(1));
            assert!(wheel.next_expiration().unwrap() <= 10_000 * tick);
            assert!(wheel.next_expiration().unwrap() > 200 * tick);
            assert_eq!(
                advance(&mut wheel, 10_000 * tick - 1, true, &deadlines),
                Vec::<u32>::new()
            );
            assert_eq!(
                advance(&mut wheel, 10_000 * tick, true, &deadlines),
                vec![1]
            );
        }
    }

    #[test]
    fn ids_are_reused_after_cancel_and_expiry() {
        let mut wheel = Wheel::new(0, 0);
        let mut deadlines = BTreeMap::new();
        for round in 0..5u64 {
            let now = round * 1000;
            deadlines.insert(3u32, now + 10);
            wheel.schedule(3, now + 10);
            assert!(wheel.cancel(3));
            deadlines.insert(3, now + 20);
            wheel.schedule(3, now + 20);
            wheel.validate_deadlines(|id| deadlines[&id]);
            assert_eq!(advance(&mut wheel, now + 500, false, &deadlines), vec![3]);
            assert!(!wheel.is_scheduled(3));
            wheel.validate();
        }
        assert_eq!(wheel.lists.ids(), 4);
    }

    #[test]
    fn far_future_deadlines_go_through_the_overflow_list() {
        // tick_shift 0: an epoch is 2^36 ns, about 69 s.
        let mut wheel = Wheel::new(0, 7);
        let far = [
            (1u32, 1u64 << 36),
            (2, 5 << 36 | 99),
            (3, 1 << 50),
            (4, u64::MAX - 1),
        ];
        let deadlines: BTreeMap<u32, u64> = far.into_iter().collect();
        let mut calls = 0usize;
        for (&id, &deadline) in &deadlines {
            wheel.schedule(id, deadline);
        }
        assert!(!wheel.list_is_empty(OVERFLOW));
        assert_eq!(wheel.next_expiration(), Some(1 << 36));
        wheel.validate_deadlines(|id| deadlines[&id]);
        let mut expired = Vec::new();
        for &(id, deadline) in &far {
            let mut step = |now: u64, exact: bool| {
                let mut out = Vec::new();
                wheel.advance(
                    now,
                    exact,
                    |x| {
                        calls += 1;
                        deadlines[&x]
                    },
                    |x| out.push(x),
                );
                wheel.validate_deadlines(|x| deadlines[&x]);
                out
            };
            assert!(step(deadline - 1, true).is_empty());
            assert_eq!(step(deadline, true), vec![id]);
            expired.push(id);
        }
        assert!(wheel.is_empty());
        // Each entry is looked at a bounded number of times, not once per epoch crossed.
        assert!(calls <= 4 * 4 * (LEVELS + 2), "{calls} deadline_of calls");
    }

    #[test]
    fn huge_jumps_skip_empty_slots() {
        let shift = 20;
        let hour = 3_600_000_000_000u64;
        let mut wheel = Wheel::new(shift, 0);
        let mut deadlines = BTreeMap::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for id in 0..10_000u32 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let deadline = 1 + (state >> 11) % (48 * hour);
            deadlines.insert(id, deadline);
            wheel.schedule(id, deadline);
        }
        wheel.validate_deadlines(|id| deadlines[&id]);
        let mut calls = 0usize;
        let mut expired = 0usize;
        for now in [hour, 30 * hour, 1_000 * hour, u64::MAX / 2] {
            wheel.advance(
                now,
                false,
                |id| {
                    calls += 1;
                    deadlines[&id]
                },
                |_| expired += 1,
            );
            wheel.validate_deadlines(|id| deadlines[&id]);
            let due = deadlines
                .values()
                .filter(|&&d| d >> shift < now >> shift)
                .count();
            assert_eq!(expired, due);
        }
        assert!(wheel.is_empty());
        assert!(calls <= 10_000 * (LEVELS + 1), "{calls} deadline_of calls");
    }

    #[test]
    fn tick_shift_zero_and_top_of_range() {
        for shift in [0u32, 1, 20, 40, 63] {
            let start = u64::MAX - (3 << 40);
            let mut wheel = Wheel::new(shift, start);
            let deadlines = BTreeMap::from([
                (0u32, start + 1),
                (1, u64::MAX - (1 << 40)),
                (2, u64::MAX - 1),
                (3, u64::MAX),
                (4, start),
            ]);
            for (&id, &deadline) in &deadlines {
                wheel.schedule(id, deadline);
            }
            wheel.validate_deadlines(|id| deadlines[&id]);
            let mut all = Vec::new();
            for now in [
                start + 1,
                u64::MAX - (1 << 40),
                u64::MAX - 2,
                u64::MAX - 1,
                u64::MAX,
            ] {
                all.extend(advance(&mut wheel, now, true, &deadlines));
                wheel.validate_deadlines(|id| deadlines[&id]);
                let next = wheel.next_expiration();
                assert!(next.is_some());
            }
            all.sort_unstable();
            // `u64::MAX` means never: still scheduled even after advance(u64::MAX).
            assert_eq!(all, vec![0, 1, 2, 4]);
            assert!(wheel.is_scheduled(3));
            assert_eq!(
                advance(&mut wheel, u64::MAX, false, &deadlines),
                Vec::<u32>::new()
            );
            assert!(wheel.cancel(3));
            wheel.validate();
        }
    }

    #[test]
    fn time_going_backwards_is_tolerated() {
        let mut wheel = Wheel::new(4, 1000);
        let deadlines = BTreeMap::from([(0u32, 500u64), (1, 990), (2, 1500)]);
        for (&id, &deadline) in &deadlines {
            wheel.schedule(id, deadline);
        }
        assert_eq!(advance(&mut wheel, 600, true, &deadlines), vec![0]);
        wheel.validate_deadlines(|id| deadlines[&id]);
        assert_eq!(
            advance(&mut wheel, 100, true, &deadlines),
            Vec::<u32>::new()
        );
        wheel.validate_deadlines(|id| deadlines[&id]);
        assert_eq!(advance(&mut wheel, 1500, true, &deadlines), vec![1, 2]);
        wheel.validate();
    }

    #[test]
    fn links_grow_on_demand() {
        let mut wheel = Wheel::new(20, 0);
        wheel.schedule(100_000, 1 << 30);
        assert_eq!(wheel.lists.ids(), 100_001);
        wheel.schedule(5, 1 << 30);
        assert_eq!(wheel.lists.ids(), 100_001);
        assert!(wheel.is_scheduled(100_000) && wheel.is_scheduled(5));
        wheel.validate();
        assert_eq!(std::mem::size_of::<[u32; 2]>(), 8);
    }

    /// One step of the model test.
    #[derive(Clone, Debug)]
    enum Op {
        /// Schedule `id` (cancelling it first if scheduled) at a deadline of the given kind.
        Schedule { id: u32, kind: u8, raw: u64 },
        /// Cancel `id`.
        Cancel { id: u32 },
        /// Move `id`'s deadline later, lazily (only the oracle changes).
        Later { id: u32, kind: u8, raw: u64 },
        /// Move `id`'s deadline earlier: cancel + schedule.
        Earlier { id: u32, kind: u8, raw: u64 },
        /// Advance the time.
        Advance { kind: u8, raw: u64, exact: bool },
    }

    /// `ticks` ticks in ns, saturating.
    fn ticks(ticks: u64, shift: u32) -> u64 {
        if ticks > u64::MAX >> shift {
            u64::MAX
        } else {
            ticks << shift
        }
    }

    /// A duration (ns) from `from`, of a kind chosen by `kind`, from `raw` random bits.
    fn duration(kind: u8, raw: u64, shift: u32, from: u64) -> u64 {
        match kind % 8 {
            0 => 0,
            1 => raw % (1 << shift).max(2), // within a tick
            2 => ticks(raw % 130, shift).saturating_add(raw % 7), // a few ticks
            3 => ticks(raw % (1 << 14), shift), // levels 1 and 2
            4 => ticks(raw >> (raw % 64), shift), // anything, far beyond an epoch
            5 => ticks(raw % (1 << 38), shift), // around the epoch size
            _ => {
                // Up to the next boundary of a level's slots, give or take 1 ns: the edge cases
                // where a slot starts exactly at the target tick.
                let bits = shift + 6 * (raw % 7) as u32;
                let next = (from >> bits.min(63))
                    .checked_add(1)
                    .and_then(|b| b.checked_shl(bits))
                    .filter(|_| bits < 64)
                    .unwrap_or(u64::MAX);
                let target = match (raw >> 8) % 3 {
                    0 => next.saturating_sub(1),
                    1 => next,
                    _ => next.saturating_add(1),
                };
                target.saturating_sub(from)
            }
        }
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        let id = 0u32..40;
        prop_oneof![
            4 => (id.clone(), any::<u8>(), any::<u64>())
                .prop_map(|(id, kind, raw)| Op::Schedule { id, kind, raw }),
            1 => id.clone().prop_map(|id| Op::Cancel { id }),
            2 => (id.clone(), any::<u8>(), any::<u64>())
                .prop_map(|(id, kind, raw)| Op::Later { id, kind, raw }),
            1 => (id, any::<u8>(), any::<u64>())
                .prop_map(|(id, kind, raw)| Op::Earlier { id, kind, raw }),
            3 => (any::<u8>(), any::<u64>(), any::<bool>())
                .prop_map(|(kind, raw, exact)| Op::Advance { kind, raw, exact }),
        ]
    }

    fn shift_strategy() -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(0u32),
            Just(1),
            Just(6),
            Just(20),
            Just(40),
            Just(63),
            0u32..64
        ]
    }

    fn start_strategy() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            any::<u64>(),
            (0u64..1 << 40).prop_map(|x| u64::MAX - x),
            (0u64..1 << 20).prop_map(|x| (1 << 36) - x),
        ]
    }

    /// Runs `ops` against a wheel and a model of the scheduled deadlines.
    fn run_model(shift: u32, start: u64, ops: &[Op]) {
        let mut wheel = Wheel::new(shift, start);
        // Model: id -> current deadline, plus the same set indexed by deadline.
        let mut current: BTreeMap<u32, u64> = BTreeMap::new();
        let mut by_deadline: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
        let mut now = start;
        let remove = |by: &mut BTreeMap<u64, BTreeSet<u32>>, deadline: u64, id: u32| {
            let set = by.get_mut(&deadline).unwrap();
            assert!(set.remove(&id));
            if set.is_empty() {
                by.remove(&deadline);
            }
        };
        for op in ops {
            match *op {
                Op::Schedule { id, kind, raw } => {
                    let deadline = if kind & 0xe0 == 0 {
                        now.saturating_sub(duration(kind, raw, shift, now))
                    } else {
                        now.saturating_add(duration(kind, raw, shift, now))
                    };
                    if let Some(old) = current.remove(&id) {
                        remove(&mut by_deadline, old, id);
                        assert!(wheel.cancel(id));
                    }
                    wheel.schedule(id, deadline);
                    current.insert(id, deadline);
                    by_deadline.entry(deadline).or_default().insert(id);
                }
                Op::Cancel { id } => {
                    let was = current.remove(&id);
                    if let Some(old) = was {
                        remove(&mut by_deadline, old, id);
                    }
                    assert_eq!(wheel.cancel(id), was.is_some());
                }
                Op::Later { id, kind, raw } => {
                    if let Some(old) = current.get(&id).copied() {
                        let new = old.saturating_add(duration(kind, raw, shift, old));
                        remove(&mut by_deadline, old, id);
                        current.insert(id, new);
                        by_deadline.entry(new).or_default().insert(id);
                    }
                }
                Op::Earlier { id, kind, raw } => {
                    if let Some(old) = current.get(&id).copied() {
                        let new = old.saturating_sub(duration(kind, raw, shift, old));
                        assert!(wheel.cancel(id));
                        assert!(!wheel.is_scheduled(id));
                        wheel.schedule(id, new);
                        remove(&mut by_deadline, old, id);
                        current.insert(id, new);
                        by_deadline.entry(new).or_default().insert(id);
                    }
                }
                Op::Advance { kind, raw, exact } => {
                    now = now.saturating_add(duration(kind, raw, shift, now));
                    let effective = now.min(u64::MAX - 1);
                    let expired = advance(&mut wheel, now, exact, &current);
                    for &id in &expired {
                        let deadline = current.remove(&id).expect("expired an unscheduled id");
                        assert!(
                            deadline <= effective,
                            "expired id {id} due at {deadline} > {now}"
                        );
                        remove(&mut by_deadline, deadline, id);
                    }
                    // Everything the model still has due must be in the current tick (never,
                    // after an exact advance).
                    for (&deadline, ids) in by_deadline.range(..=effective) {
                        assert!(
                            !exact && deadline >> shift == effective >> shift,
                            "ids {ids:?} due at {deadline} survived advance({now}, {exact})"
                        );
                    }
                }
            }
            wheel.validate_deadlines(|id| current[&id]);
            assert_eq!(wheel.len(), current.len());
            for id in 0..40 {
                assert_eq!(wheel.is_scheduled(id), current.contains_key(&id));
            }
            let tick_start = |t: u64| t >> shift << shift;
            match wheel.next_expiration() {
                None => assert!(current.is_empty()),
                Some(next) => {
                    let (&earliest, _) = by_deadline.iter().next().expect("Some on empty");
                    assert!(
                        next >= tick_start(wheel.now),
                        "{next} before the current tick"
                    );
                    assert!(
                        next <= tick_start(earliest).max(tick_start(wheel.now)),
                        "next_expiration {next} after the earliest deadline {earliest}"
                    );
                }
            }
        }
        // Draining everything that can expire leaves exactly the never-expiring entries.
        let expired = advance(&mut wheel, u64::MAX, true, &current);
        wheel.validate();
        assert_eq!(
            expired,
            current
                .iter()
                .filter(|e| *e.1 < u64::MAX)
                .map(|e| *e.0)
                .collect::<Vec<_>>()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn model(shift in shift_strategy(), start in start_strategy(),
                 ops in proptest::collection::vec(op_strategy(), 1..200)) {
            run_model(shift, start, &ops);
        }
    }
}
