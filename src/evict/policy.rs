//! The eviction policy: a two-queue CLOCK with duel admission, adapting at two scales.
//!
//! Single-owner (`&mut self`), index-based: the cache owns the entries; each entry carries a
//! 2-bit saturating access counter that readers bump lock-free on a hit (`if c < 3 { c += 1 }`)
//! and that this policy reads and writes during eviction. Nothing else is recorded on a hit:
//! every signal the policy adapts on comes from inserts (misses), evictions and counters.
//!
//! # Structure
//! The capacity is split into partitions by key hash ([`Part`]): the *bulk*, and, in a cache
//! of at least 2048 entries whose shard holds at least 256, two *samples* of a sixteenth of the
//! keys and of the capacity each (see [`super::contest`]). Each partition has two queues, lists
//! of one [`Lists`]:
//! * SMALL: a FIFO of newly inserted entries (the probation window);
//! * MAIN: a CLOCK ring; its front is the hand, new entries join at the back (just behind it).
//!
//! The ghost ([`super::ghost`]), shared by the partitions, is a bounded table of 32-bit
//! records of recently evicted keys (a fingerprint, the queue the key left, an 8-bit eviction
//! timestamp, and whether it lost a duel), about one record per resident entry.
//!
//! # Eviction
//! A victim comes from the partition that holds the most weight beyond its share. There,
//! while SMALL is over its target (or MAIN is empty), look at SMALL's front:
//! 1. counter > 0 (hit while in SMALL): move it to MAIN, counter := 0;
//! 2. MAIN is under its target (the partition's capacity minus SMALL's target): move it to
//!    MAIN;
//! 3. a *candidate* (its key was in the ghost at insert: evidence 1, or 2 if it had lost a
//!    duel): *duel*. Of the hand's entry and the one after it, take the one with the lower
//!    counter (the hand's on a tie). If that counter < evidence, it is the victim and the
//!    candidate moves to MAIN with counter 1. Otherwise the hand's counter is decremented, the
//!    hand advances, and the candidate is the victim (recorded as a duel loser);
//! 4. otherwise it is the victim.
//!
//! Otherwise, run MAIN's CLOCK: counter > 0: decrement, advance; counter 0: victim.
//!
//! An entry moved to MAIN by rule 2 (a filling cache's first keys, mostly) is a *fill* entry
//! until the hand passes it. The recency mode (below) spares such an entry for [`FILL_LAPS`]
//! laps of its hand, taking its victims from SMALL's front meanwhile, and moves one requested
//! since to SMALL's back ([`Policy::fill_step`]): the adaptive mode's bet on the first keys
//! (right for loops) is what a back-and-forth sweep asks for right after its first reversal,
//! so the switch to the recency mode there does not throw the bet away just before it pays.
//!
//! # Adaptation, fine: SMALL's size from ghost hits
//! In [`Mode::Adaptive`] SMALL's target is a fraction of the partition between 1% and 25%,
//! moved ARC-style: each queue has an eviction clock (weight evicted from it so far); a ghost
//! hit on a key evicted from SMALL at most W = 5% of capacity ago on SMALL's clock is a hit that
//! a SMALL bigger by W would have had, likewise for MAIN on MAIN's clock (loser records are
//! ignored: MAIN's admission, not a queue's size, kept them out). After every 32 such events
//! (s from SMALL, m from MAIN), the fraction moves by 2% x (s - m) / (s + m). A shard of a
//! cache of n shards sees about 1/n of the events and decides after 32/n of them (at least 4,
//! with the step scaled by n/8 beyond 8 shards, at most 4x), so that the cache adapts as fast
//! per request up to 32 shards (64 shards: half as fast). During the cache's first laps (until
//! it has evicted four times its capacity) a decision takes a quarter of those events, at least
//! 4: the starting share is a prior, not a measurement (see [`WARM_LAPS`]).
//!
//! This local gradient is right where the hit ratio is concave in SMALL's size (frequency-biased
//! workloads: Zipf, loops, scans over a hot set), and blind where it is not: on back-and-forth
//! sweeps or a sliding window, MAIN's protected entries are stale, the marginal gains of the two
//! queues look equal at any small size, and only a cache that gives everything to recency (a
//! FIFO of the whole capacity, which is what LRU amounts to there) does well.
//!
//! # Adaptation, coarse: two modes
//! The policy runs in one of two modes ([`Mode`]): `Adaptive` (above), or `Recency`, where
//! SMALL's target is the whole partition, so every key goes through one FIFO. The cache
//! estimates an LRU's misses on a sample of the keys ([`super::recent`]: a generation stamp in
//! the CLOCK byte's six high bits and in the ghost record, counts by generation) and switches
//! to the recency mode when the estimate says it would miss clearly less (at the end of a
//! window of as many requests as the cache holds entries, or, during the cache's first
//! windows, as soon as a sixteenth of a window shows it far ahead); the way back is the
//! estimate's prediction or a contest between the samples, whichever comes first
//! ([`super::contest`] has the rules). The decision is the cache's: every shard follows it at
//! its next miss (its view is checked against a generation the contest publishes).
//!
//! Scans: scan keys enter SMALL, are never hit and never come back, so in `Adaptive` mode they
//! leave through SMALL's head without touching MAIN or the adaptation. Loops larger than the
//! cache: a returning key only displaces a MAIN entry that went unreferenced for a whole hand
//! lap; loop keys in MAIN are referenced every lap, so MAIN keeps a stable set (near-optimal)
//! instead of churning like LRU.

use super::contest::{Contest, Mode, Tally, View};
use super::ghost::{self, Ghost};
use super::list::Lists;
use super::recent::{self, Request};
use crate::sync::Arc;

/// SMALL's share of a partition in [`Mode::Adaptive`]: bounds and start value.
const SMALL_MIN: f64 = 0.01;
const SMALL_MAX: f64 = 0.25;
/// Ghost-hit window W, as a fraction of the capacity.
const WINDOW: f64 = 0.05;
/// Adaptation: events per decision in a cache of one shard, and step at full imbalance
/// (fraction of the capacity). A shard of a cache of `n` sees about `1/n` of the cache's
/// events and decides after `ADAPT_PERIOD / n` of them (at least [`ADAPT_PERIOD_MIN`], with a
/// larger step beyond), so that SMALL's share moves as fast per request of the cache up to 32
/// shards (half as fast at 64): with 32
/// events a decision in every shard, a cache of 8 shards followed a shifting working set 8x
/// slower than one of a single shard (docs/policy-log.md, 2026-12-06: shift at 5000 lost 2.2
/// points to one shard, about 0.1 since).
const ADAPT_PERIOD: u32 = 32;
/// Fewest events per decision: a shard deciding on every event or two (16 shards and more)
/// swung with each, which broke back-and-forth sweeps at 16 shards (15% against 36% with 4).
/// Above 8 shards the step grows instead ([`adapt_step`]): shift at 5000 entries, mean over 4
/// hashers, 16 / 32 / 64 shards: 69.73 / 69.36 / 68.19 with the step of one shard, 70.03 /
/// 70.14 / 69.68 with the larger steps (8 shards: 70.28, one: 70.46).
const ADAPT_PERIOD_MIN: u32 = 4;
/// While the policy has evicted less than `WARM_LAPS` times its capacity (the cache's first
/// laps, from an empty cache), a decision takes [`WARM_SPEEDUP`] times fewer events (but at
/// least [`ADAPT_PERIOD_MIN`]): SMALL's starting share (1%) is a prior, not a measurement, and
/// the first laps are when it costs most (sprite at 1000 entries: SMALL grew from 1% to 10%
/// over the first 4,000 misses and lost 0.3 point to LRU in the first two windows of 25). A
/// cache of 8 shards or more already decides after [`ADAPT_PERIOD_MIN`] events a shard, and is
/// unchanged (one or two events a decision swung SMALL on a loop at 8 shards: loop-synth at
/// 4000, -0.09).
const WARM_LAPS: u64 = 4;
const WARM_SPEEDUP: u32 = 4;
/// Largest factor on [`ADAPT_STEP`] (a step of 8% of the capacity, a third of SMALL's range).
const ADAPT_STEP_SCALE_MAX: f64 = 4.0;
const ADAPT_STEP: f64 = 0.02;
/// Sample misses a policy gathers before it reports them to the contest.
const REPORT_EVERY: u64 = 16;

/// Laps of the recency mode's hand a [`State::Fill`] entry is spared ([`Policy::fill_step`]).
const FILL_LAPS: u8 = 3;
/// Counter given to a candidate that wins its duel (one lap of grace).
const ADMIT_COUNTER: u8 = 1;
/// Smallest capacity of one sample partition: below it the policy has no samples.
const MIN_SAMPLE: f64 = 16.0;
/// Eviction clocks are kept in epochs of capacity/EPOCHS_PER_CAPACITY weight; the ghost stores
/// 8-bit epochs, so distances up to 4x capacity are measurable.
const EPOCHS_PER_CAPACITY: u64 = 64;

/// Adaptation events per decision in each shard of a cache of `shards` (see [`ADAPT_PERIOD`]).
fn adapt_period(shards: u64) -> u32 {
    let shards = u32::try_from(shards.max(1)).unwrap_or(u32::MAX);
    (ADAPT_PERIOD / shards).max(ADAPT_PERIOD_MIN)
}

/// The step at full imbalance in each shard of a cache of `shards`: [`ADAPT_STEP`], times what
/// the floor of [`ADAPT_PERIOD_MIN`] events a decision keeps the period from shrinking by (2 at
/// 16 shards, 4 at 32), at most [`ADAPT_STEP_SCALE_MAX`] (64 shards adapt half as fast per
/// request as one).
fn adapt_step(shards: u64) -> f64 {
    let scale = shards.max(1) as f64 * f64::from(adapt_period(shards)) / f64::from(ADAPT_PERIOD);
    ADAPT_STEP * scale.clamp(1.0, ADAPT_STEP_SCALE_MAX)
}

/// What the policy needs from the cache's entries during eviction.
pub(crate) trait EntryAccess {
    /// The entry's access counter (0..=`FREQ_MAX`).
    fn counter(&self, id: u32) -> u8;
    /// Overwrite the entry's access counter.
    fn set_counter(&mut self, id: u32, value: u8);
    /// The key hash that was passed to `insert` for this id.
    fn hash(&self, id: u32) -> u64;
    /// The generation of the entry's last request, modulo [`recent::NODE_STAMPS`] (see
    /// [`super::recent`]).
    fn stamp(&self, id: u32) -> u8;
}

/// The two queues of a partition.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Queue {
    /// The probation FIFO: new entries, oldest at the front.
    Small = 0,
    /// The CLOCK ring: the front is the hand; entries join just behind it (at the back).
    Main = 1,
}

/// The partitions of the capacity: the bulk of the keys, and two small samples of the key
/// space (by hash) that try out settings against each other.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Part {
    Bulk = 0,
    SampleA = 1,
    SampleB = 2,
}

const PARTS: [Part; 3] = [Part::Bulk, Part::SampleA, Part::SampleB];

impl Part {
    /// The list of `queue` in this partition.
    fn list(self, queue: Queue) -> usize {
        2 * self as usize + queue as usize
    }
}

/// Where a tracked id is, and what SMALL knows about its past.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Not tracked by the policy.
    Untracked,
    /// In SMALL, with no ghost record: a key seen for the first time (as far as the policy
    /// remembers).
    New,
    /// In SMALL, back after being evicted recently: a *candidate* with evidence 1.
    Returned,
    /// In SMALL, back after losing a duel: a candidate with evidence 2.
    Repeat,
    /// In MAIN.
    Main,
    /// In MAIN, moved there from SMALL because MAIN was under its target (a filling cache's
    /// first keys, mostly; also after a shrink of MAIN's share, or expirations), and not
    /// passed by the adaptive mode's hand since: the recency mode spares it for
    /// [`FILL_LAPS`] laps of its hand (see [`Policy::fill_step`]; the laps passed are counted
    /// in the [`Tag`]). A duel (which the recency mode runs only while SMALL alone is over
    /// the partition) may still evict it.
    Fill,
}

impl State {
    fn queue(self) -> Option<Queue> {
        match self {
            State::Untracked => None,
            State::New | State::Returned | State::Repeat => Some(Queue::Small),
            State::Main | State::Fill => Some(Queue::Main),
        }
    }

    /// The evidence a candidate brings to a duel (0: not a candidate).
    fn evidence(self) -> u8 {
        match self {
            State::Returned => 1,
            State::Repeat => 2,
            _ => 0,
        }
    }
}

/// An id's [`State`] (bits 0..=2) and [`Part`] (bits 3..=4) in one byte, and for a
/// [`State::Fill`] entry the laps of the recency mode's hand it was spared (bits 5..=7).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Tag(u8);

impl Tag {
    const UNTRACKED: Tag = Tag(0);

    fn new(state: State, part: Part) -> Tag {
        Tag(state as u8 | (part as u8) << 3)
    }

    fn laps(self) -> u8 {
        self.0 >> 5
    }

    fn with_laps(self, laps: u8) -> Tag {
        Tag(self.0 & 0x1F | laps << 5)
    }

    fn state(self) -> State {
        match self.0 & 7 {
            0 => State::Untracked,
            1 => State::New,
            2 => State::Returned,
            3 => State::Repeat,
            5 => State::Fill,
            _ => State::Main,
        }
    }

    fn part(self) -> Part {
        match (self.0 >> 3) & 3 {
            0 => Part::Bulk,
            1 => Part::SampleA,
            _ => Part::SampleB,
        }
    }
}

/// What a ghost record says about an evicted key (its 16 info bits: bit 0 the queue it left,
/// bit 1 whether it lost a duel, bits 2..=9 the 8-bit eviction epoch of that queue, bits
/// 10..=15 the generation of its last request modulo 64, the node's stamp, for the recency
/// estimate).
#[derive(Clone, Copy, Debug)]
struct Record {
    from: Queue,
    loser: bool,
    epoch: u8,
    stamp: u8,
}

/// Where a record's stamp bits are, in its info.
const STAMP_AT: u32 = 10;
const STAMP_MASK: u32 = 0x3F << STAMP_AT;

impl Record {
    fn pack(self) -> u32 {
        self.from as u32
            | (u32::from(self.loser) << 1)
            | (u32::from(self.epoch) << 2)
            | (u32::from(self.stamp) << STAMP_AT)
    }

    fn unpack(info: u32) -> Self {
        Record {
            from: if info & 1 == 0 {
                Queue::Small
            } else {
                Queue::Main
            },
            loser: info & 2 != 0,
            epoch: (info >> 2) as u8,
            stamp: ((info & STAMP_MASK) >> STAMP_AT) as u8,
        }
    }
}

/// One step of [`Policy::evict_one`]'s search.
enum Step {
    /// An entry moved (SMALL to MAIN, or the hand advanced); look again.
    Moved,
    /// This id is the victim.
    Victim(u32),
}

/// A partition's share of the capacity and its queues' weights.
#[derive(Clone, Copy, Default)]
struct Share {
    /// The weight this partition may hold (a fraction of the capacity: its fraction of the
    /// key space).
    capacity: f64,
    /// SMALL's target weight.
    small_target: f64,
    /// Weight held, per queue.
    weight: [u64; 2],
}

/// The eviction policy. See the module documentation.
pub(crate) struct Policy {
    capacity: u64,
    /// Fraction of the key space (and the capacity) of each sample, in 1/16: 0 (no samples,
    /// for a capacity below 256) or 1.
    sample_16ths: u64,
    /// SMALL and MAIN of each partition ([`Part::list`]).
    queues: Lists,
    /// Per id.
    tags: Vec<Tag>,
    /// Weight per id; `None` for a cache without a weigher, where every entry weighs 1
    /// (saving four bytes per entry).
    weight: Option<Vec<u32>>,
    shares: [Share; 3],
    len: usize,
    contest: Arc<Contest>,
    /// What this policy last learnt of the contest.
    view: View,
    /// The recency estimate's sample rate (the contest's, 0 without one).
    sample_bits: u32,
    /// Misses not reported yet.
    tally: Tally,
    /// The entry count last reported to the contest (in a tally).
    reported_len: i64,
    /// SMALL's share of a partition in [`Mode::Adaptive`] (the ghost adaptation's output).
    small_frac: f64,
    /// Weight evicted so far from SMALL and MAIN of the partitions in [`Mode::Adaptive`].
    evicted_w: [u64; 2],
    epoch_unit: u64,
    window: u64,
    events: [u32; 2],
    /// Adaptation events per decision (see [`ADAPT_PERIOD`]).
    adapt_period: u32,
    /// The step at full imbalance (see [`ADAPT_STEP`]).
    adapt_step: f64,
    ghost: Ghost,
}

impl Policy {
    /// A policy for a cache (or a shard of one) whose total weight must stay <= `capacity`;
    /// `weighted` says whether entries carry weights (otherwise each weighs 1); `contest` is
    /// shared by every shard of the cache, of which there are `shards`.
    pub(crate) fn new(capacity: u64, weighted: bool, contest: Arc<Contest>, shards: u64) -> Self {
        let capacity = capacity.max(1);
        // A cache too small for samples never touches the contest's lock.
        let view = if contest.enabled() {
            contest.try_view().unwrap_or(View::INITIAL)
        } else {
            View::INITIAL
        };
        let sample_bits = contest.recent.bits();
        let mut policy = Policy {
            capacity,
            sample_16ths: u64::from(contest.enabled() && capacity as f64 / 16.0 >= MIN_SAMPLE),
            queues: Lists::new(2 * PARTS.len()),
            tags: Vec::new(),
            weight: weighted.then(Vec::new),
            shares: [Share::default(); 3],
            len: 0,
            contest,
            view,
            sample_bits,
            tally: Tally::default(),
            reported_len: 0,
            small_frac: SMALL_MIN,
            evicted_w: [0; 2],
            epoch_unit: (capacity / EPOCHS_PER_CAPACITY).max(1),
            window: (capacity as f64 * WINDOW) as u64,
            events: [0; 2],
            adapt_period: adapt_period(shards),
            adapt_step: adapt_step(shards),
            ghost: Ghost::with_slots(ghost::MIN_SLOTS),
        };
        policy.apportion();
        policy
    }

    /// Sets each partition's capacity and SMALL target from the capacity, the contest's view
    /// and the adaptation.
    fn apportion(&mut self) {
        let c = self.capacity as f64;
        let sample = c * self.sample_16ths as f64 / 16.0;
        for (part, capacity) in [
            (Part::Bulk, c - 2.0 * sample),
            (Part::SampleA, sample),
            (Part::SampleB, sample),
        ] {
            let small_target = match self.mode_of(part) {
                Mode::Adaptive => capacity * self.small_frac,
                Mode::Recency => capacity,
            };
            let share = &mut self.shares[part as usize];
            share.capacity = capacity;
            share.small_target = small_target;
        }
    }

    /// The mode partition `part` runs.
    fn mode_of(&self, part: Part) -> Mode {
        match part {
            Part::Bulk => self.view.incumbent,
            Part::SampleA => self.view.samples[0],
            Part::SampleB => self.view.samples[1],
        }
    }

    /// A miss (an insert) in a sample: counted for the contest, reported in batches.
    fn sample_miss(&mut self, part: Part) {
        let sample = usize::from(part == Part::SampleB);
        self.tally.miss(sample, self.view.measuring);
    }

    /// Hands the tally to the contest (kept for later if its lock is taken), and follows the
    /// view it returns.
    fn report(&mut self) {
        let len = self.len as i64;
        self.tally.entries(len - self.reported_len);
        self.reported_len = len;
        if let Some(view) = self.contest.report(self.view, &mut self.tally)
            && view != self.view
        {
            self.view = view;
            self.apportion();
        }
    }

    /// A ghost hit on a record that is not a duel loser, in a partition in
    /// [`Mode::Adaptive`]: one adaptation event if the key was evicted at most `window`
    /// weight ago, measured on its queue's clock.
    fn observe(&mut self, r: Record) {
        let origin = r.from as usize;
        let now = (self.evicted_w[origin] / self.epoch_unit) & 0xFF;
        let distance = ((now + 256 - u64::from(r.epoch)) & 0xFF) * self.epoch_unit;
        if distance > self.window {
            return;
        }
        self.events[origin] += 1;
        let total = self.events[0] + self.events[1];
        let warm = self.evicted_w[0].saturating_add(self.evicted_w[1])
            < WARM_LAPS.saturating_mul(self.capacity);
        let period = if warm {
            (self.adapt_period / WARM_SPEEDUP).clamp(ADAPT_PERIOD_MIN, self.adapt_period)
        } else {
            self.adapt_period
        };
        if total >= period {
            let (s, m) = (self.events[0] as f64, self.events[1] as f64);
            let step = self.adapt_step * (s - m) / (s + m);
            self.small_frac = (self.small_frac + step).clamp(SMALL_MIN, SMALL_MAX);
            self.events = [0; 2];
            self.apportion();
        }
    }

    /// Whether the recency estimate samples a key with `hash`.
    #[inline]
    fn sampled(&self, hash: u64) -> bool {
        self.sample_bits != 0 && recent::sampled(hash, self.sample_bits)
    }

    /// What a ghost record of a key with `hash` holds in its stamp bits: `stamp` (the
    /// generation of its last request) for a key in the recency estimate's sample, six more
    /// bits of the hash for the others (21 bits of the hash in all, as before the stamps; in a
    /// cache of 128 shards or more, some of those six are the bits that picked the shard).
    fn stamp_field(&self, hash: u64, stamp: u8) -> u8 {
        if self.sampled(hash) {
            stamp
        } else {
            ((hash >> 52) & 0x3F) as u8
        }
    }

    /// The partition of a key with `hash`.
    fn part_of(&self, hash: u64) -> Part {
        let slot = (hash >> 32) & 15;
        if slot < self.sample_16ths {
            Part::SampleA
        } else if slot < 2 * self.sample_16ths {
            Part::SampleB
        } else {
            Part::Bulk
        }
    }

    /// Total weight of the entries the policy tracks.
    pub(crate) fn weighted_size(&self) -> u64 {
        self.shares.iter().map(|s| s.weight[0] + s.weight[1]).sum()
    }

    /// Number of entries the policy tracks.
    #[cfg(any(all(test, not(loom)), fuzzing))]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(any(all(test, not(loom)), fuzzing))]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[cfg(any(all(test, not(loom)), fuzzing))]
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Changes the capacity the partitions and queue targets are proportioned to (a shard's
    /// share of the cache's capacity follows the shard's size).
    pub(crate) fn set_capacity(&mut self, capacity: u64) {
        let capacity = capacity.max(1);
        if capacity != self.capacity {
            self.capacity = capacity;
            self.epoch_unit = (capacity / EPOCHS_PER_CAPACITY).max(1);
            self.window = (capacity as f64 * WINDOW) as u64;
            self.apportion();
        }
    }

    /// Current target weight of the bulk's SMALL queue.
    #[cfg(any(all(test, not(loom)), fuzzing))]
    pub(crate) fn small_target(&self) -> u64 {
        self.shares[Part::Bulk as usize].small_target as u64
    }

    /// Weight of id `id`.
    #[inline]
    fn w(&self, id: u32) -> u64 {
        match &self.weight {
            Some(w) => u64::from(w[id as usize]),
            None => 1,
        }
    }

    fn tag(&self, id: u32) -> Tag {
        self.tags
            .get(id as usize)
            .copied()
            .unwrap_or(Tag::UNTRACKED)
    }

    fn state(&self, id: u32) -> State {
        self.tag(id).state()
    }

    /// A new key `id` (not currently tracked) with `hash` and `weight` was inserted.
    /// The caller sets its counter to 0 and then calls `evict_one` until
    /// `weighted_size() <= capacity()`.
    pub(crate) fn insert(&mut self, id: u32, hash: u64, weight: u32) {
        self.make_room_for(id);
        if self.state(id) != State::Untracked {
            // An id is reinserted only after it was removed; should that ever be broken,
            // forget the stale membership rather than corrupt the queues.
            debug_assert!(false, "id {id} inserted while still tracked");
            self.remove(id);
        }
        if let Some(w) = &mut self.weight {
            w[id as usize] = weight;
        }
        self.len += 1;
        if self.len > self.ghost.slots() {
            // Grow the history with the resident count (records are not rehashable,
            // so the old history is dropped; this happens while the cache fills).
            let n = self.len.max(self.ghost.slots() + self.ghost.slots() / 4);
            self.ghost = Ghost::with_slots(n);
        }
        let depth = self.ghost.depth(self.len);
        let part = self.part_of(hash);
        let sampled = self.sampled(hash);
        // A key outside the estimate's sample has no stamp: its record's stamp bits hold
        // more of its hash, checked like the fingerprint.
        let check = (!sampled).then(|| u32::from(self.stamp_field(hash, 0)) << STAMP_AT);
        let record = self
            .ghost
            .take(hash, depth, STAMP_MASK, check)
            .map(Record::unpack);
        let state = match record {
            None => State::New,
            Some(r) if r.loser => State::Repeat,
            Some(r) => {
                if self.mode_of(part) == Mode::Adaptive {
                    self.observe(r);
                }
                State::Returned
            }
        };
        self.link(id, Tag::new(state, part));
        if self.contest.enabled() {
            if sampled {
                let (now, reach) = self.contest.recent.now();
                let new = record
                    .is_none_or(|r| Request::of(u32::from(r.stamp), now, reach) == Request::New);
                self.tally.estimate_miss(new, record.map(|r| r.stamp), now);
            }
            if part != Part::Bulk {
                self.sample_miss(part);
            }
            if self.tally.seen() + self.tally.misses() >= REPORT_EVERY
                || self.contest.stale(self.view)
            {
                self.report();
            }
        }
    }

    /// Grows the per-id tables to hold id `id`.
    fn make_room_for(&mut self, id: u32) {
        self.queues.reserve(id);
        let i = id as usize;
        if self.tags.len() <= i {
            let len = (i + 1).next_power_of_two();
            self.tags.resize(len, Tag::UNTRACKED);
            if let Some(w) = &mut self.weight {
                w.resize(len, 0);
            }
        }
    }

    /// The key of tracked entry `old` got a new value, tracked from now on as `new` with
    /// `weight`: `new` takes `old`'s place (its queue, its position, its state) and `old` is
    /// forgotten, without an admission, an eviction or a ghost record: a replaced value is
    /// the same key, as popular as before (the caller carries the access counter over).
    /// Returns false, changing nothing, if `old` is not tracked. The caller then evicts if
    /// the new weight put the total over capacity.
    pub(crate) fn replace(&mut self, old: u32, new: u32, weight: u32) -> bool {
        let tag = self.tag(old);
        let Some(queue) = tag.state().queue() else {
            return false;
        };
        if old == new {
            return false;
        }
        self.make_room_for(new);
        if self.state(new) != State::Untracked {
            debug_assert!(false, "id {new} replaced in while still tracked");
            self.remove(new);
        }
        self.queues.replace(old, new);
        self.tags[new as usize] = tag;
        self.tags[old as usize] = Tag::UNTRACKED;
        if let Some(w) = &mut self.weight {
            let before = u64::from(w[old as usize]);
            w[new as usize] = weight;
            let total = &mut self.shares[tag.part() as usize].weight[queue as usize];
            *total = *total - before + u64::from(weight);
        }
        true
    }

    /// A key with `hash` was requested by a write that replaced its value, moving it from
    /// generation `from` to `to` of the recency estimate (the old and the new node's stamps),
    /// if the estimate samples it. (A hit's move is counted by the reader.)
    pub(crate) fn requested(&mut self, hash: u64, from: u8, to: u8) {
        if self.sampled(hash) && from != to {
            self.tally.moved(from, to);
        }
    }

    /// `id` was removed by the cache (explicit removal, expiry, or a victim that
    /// vanished concurrently). Unknown or already removed ids are ignored.
    pub(crate) fn remove(&mut self, id: u32) {
        if self.state(id) != State::Untracked {
            self.unlink(id);
            self.len -= 1;
        }
    }

    /// Chooses a victim. The policy has already forgotten it; the caller removes it from the
    /// cache. `None` only when the policy tracks nothing.
    pub(crate) fn evict_one<A: EntryAccess + ?Sized>(&mut self, entries: &mut A) -> Option<u32> {
        let part = self.fullest()?;
        // Without concurrent hits a victim is found within 3 laps of the hand; the budget only
        // guards against readers re-referencing entries faster than the hand can clear them.
        let mut budget = 4 * self.len + 8;
        loop {
            budget = budget.saturating_sub(1);
            let step = if self.small_due(part) {
                self.small_step(part, entries)
            } else {
                self.main_step(part, entries, budget > 0)
            }?;
            if let Step::Victim(id) = step {
                return Some(id);
            }
        }
    }

    /// The non-empty partition that holds the most weight beyond its share.
    fn fullest(&self) -> Option<Part> {
        PARTS
            .into_iter()
            .filter(|&p| {
                let w = self.shares[p as usize].weight;
                w[0] + w[1] > 0
            })
            .max_by(|&a, &b| {
                let excess = |p: Part| {
                    let s = &self.shares[p as usize];
                    (s.weight[0] + s.weight[1]) as f64 - s.capacity
                };
                excess(a).total_cmp(&excess(b))
            })
    }

    /// Whether the next step looks at SMALL's front: SMALL is over its target, or MAIN is
    /// empty.
    fn small_due(&self, part: Part) -> bool {
        let share = &self.shares[part as usize];
        !self.queues.is_empty(part.list(Queue::Small))
            && (share.weight[Queue::Small as usize] as f64 > share.small_target
                || self.queues.is_empty(part.list(Queue::Main)))
    }

    /// SMALL's oldest entry leaves SMALL: to MAIN if it was hit while in SMALL or if MAIN is
    /// under its target; otherwise a candidate duels MAIN's hand, and any other entry is the
    /// victim.
    fn small_step<A: EntryAccess + ?Sized>(&mut self, part: Part, entries: &mut A) -> Option<Step> {
        let id = self.queues.front(part.list(Queue::Small))?;
        let count = entries.counter(id);
        if count > 0 {
            entries.set_counter(id, 0);
            self.move_to_main(id);
            return Some(Step::Moved);
        }
        let share = &self.shares[part as usize];
        let main_target = share.capacity - share.small_target;
        if (share.weight[Queue::Main as usize] + self.w(id)) as f64 <= main_target {
            self.unlink(id);
            self.link(id, Tag::new(State::Fill, part));
            return Some(Step::Moved);
        }
        let evidence = self.state(id).evidence();
        if evidence > 0 && !self.queues.is_empty(part.list(Queue::Main)) {
            return Some(Step::Victim(self.duel(part, id, evidence, entries)));
        }
        self.evict(id, Queue::Small, false, entries);
        Some(Step::Victim(id))
    }

    /// A candidate at SMALL's front (back from the ghost with `evidence`) against the weaker
    /// of MAIN's hand and the entry after it (the hand's on a tie): if that one's counter is
    /// below the evidence, it is evicted and the candidate joins MAIN with one lap of grace;
    /// otherwise the hand's counter is decremented, the hand advances, and the candidate is
    /// evicted as a duel loser (should it come back again, its evidence is 2). Returns the
    /// victim.
    fn duel<A: EntryAccess + ?Sized>(
        &mut self,
        part: Part,
        candidate: u32,
        evidence: u8,
        entries: &mut A,
    ) -> u32 {
        let main = part.list(Queue::Main);
        let hand = self.queues.front(main).expect("MAIN is not empty");
        let hand_count = entries.counter(hand);
        let (defender, defence) = match self.queues.next(hand) {
            Some(after) if entries.counter(after) < hand_count => (after, entries.counter(after)),
            _ => (hand, hand_count),
        };
        if defence < evidence {
            self.evict(defender, Queue::Main, false, entries);
            self.move_to_main(candidate);
            entries.set_counter(candidate, ADMIT_COUNTER);
            defender
        } else {
            entries.set_counter(hand, hand_count - 1);
            if self.state(hand) == State::Fill && self.mode_of(part) == Mode::Adaptive {
                self.tags[hand as usize] = Tag::new(State::Main, part);
            }
            self.queues.rotate(main);
            self.evict(candidate, Queue::Small, true, entries);
            candidate
        }
    }

    /// MAIN's CLOCK: the hand's entry, if referenced (and the budget lasts), loses one count
    /// and the hand advances; otherwise it is the victim.
    fn main_step<A: EntryAccess + ?Sized>(
        &mut self,
        part: Part,
        entries: &mut A,
        budget: bool,
    ) -> Option<Step> {
        let main = part.list(Queue::Main);
        let hand = self.queues.front(main)?;
        let count = entries.counter(hand);
        if self.state(hand) == State::Fill {
            if self.mode_of(part) == Mode::Recency {
                return Some(self.fill_step(part, hand, count, entries));
            }
            if count > 0 && budget {
                // The adaptive mode's hand passes it: an ordinary MAIN entry from now on.
                self.tags[hand as usize] = Tag::new(State::Main, part);
            }
        }
        if count > 0 && budget {
            entries.set_counter(hand, count - 1);
            self.queues.rotate(main);
            return Some(Step::Moved);
        }
        self.evict(hand, Queue::Main, false, entries);
        Some(Step::Victim(hand))
    }

    /// The recency mode's hand at a `Fill` entry `hand` with access counter `count`. A filling
    /// cache kept its first keys (a bet on loops, which the adaptive mode makes); when the
    /// recency mode takes over, LRU's order would evict them first, but on back-and-forth
    /// sweeps they are the keys asked for next, right after the reversal. So they are spared
    /// for [`FILL_LAPS`] laps of the hand, the victim coming from SMALL's front meanwhile
    /// (the keys that came in since); one requested since has paid the bet off and becomes an
    /// ordinary key of the recency mode's FIFO, at SMALL's back (as recent as now). (Spared
    /// like the others instead: sweep at 5000 45.18; an ordinary MAIN entry: 45.33; at SMALL's
    /// back: 45.79; `docs/policy-log.md`, thirteenth session.)
    fn fill_step<A: EntryAccess + ?Sized>(
        &mut self,
        part: Part,
        hand: u32,
        count: u8,
        entries: &mut A,
    ) -> Step {
        if count > 0 {
            entries.set_counter(hand, 0);
            self.unlink(hand);
            self.link(hand, Tag::new(State::New, part));
            return Step::Moved;
        }
        let tag = self.tag(hand);
        if tag.laps() >= FILL_LAPS {
            self.evict(hand, Queue::Main, false, entries);
            return Step::Victim(hand);
        }
        self.tags[hand as usize] = tag.with_laps(tag.laps() + 1);
        self.queues.rotate(part.list(Queue::Main));
        let Some(id) = self.queues.front(part.list(Queue::Small)) else {
            return Step::Moved;
        };
        if entries.counter(id) > 0 {
            entries.set_counter(id, 0);
            self.move_to_main(id);
            return Step::Moved;
        }
        self.evict(id, Queue::Small, false, entries);
        Step::Victim(id)
    }

    /// Forgets `id`, evicted from `from`, and records it in the ghost.
    fn evict<A: EntryAccess + ?Sized>(&mut self, id: u32, from: Queue, loser: bool, entries: &A) {
        let part = self.tag(id).part();
        self.unlink(id);
        self.len -= 1;
        self.tally.evicted();
        if self.mode_of(part) == Mode::Adaptive {
            self.evicted_w[from as usize] += self.w(id);
        }
        let epoch = ((self.evicted_w[from as usize] / self.epoch_unit) & 0xFF) as u8;
        let depth = self.ghost.depth(self.len.max(1));
        let hash = entries.hash(id);
        let record = Record {
            from,
            loser,
            epoch,
            stamp: self.stamp_field(hash, entries.stamp(id)),
        };
        self.ghost.add(hash, record.pack(), depth);
    }

    fn move_to_main(&mut self, id: u32) {
        let part = self.tag(id).part();
        self.unlink(id);
        self.link(id, Tag::new(State::Main, part));
    }

    /// Links untracked `id` at the back of its queue.
    fn link(&mut self, id: u32, tag: Tag) {
        let queue = tag.state().queue().expect("a tracked state");
        let part = tag.part();
        self.queues.push_back(part.list(queue), id);
        self.tags[id as usize] = tag;
        self.shares[part as usize].weight[queue as usize] += self.w(id);
    }

    /// Unlinks tracked `id` from its queue; it is untracked afterwards.
    fn unlink(&mut self, id: u32) {
        let tag = self.tag(id);
        let queue = tag.state().queue().expect("a tracked id");
        self.queues.unlink(id);
        self.tags[id as usize] = Tag::UNTRACKED;
        self.shares[tag.part() as usize].weight[queue as usize] -= self.w(id);
    }

    /// Checks every internal invariant; panics with a description on violation.
    #[cfg(any(all(test, not(loom)), fuzzing))]
    pub(crate) fn validate(&self) {
        let lengths = self.queues.validate();
        let mut total = 0;
        for part in PARTS {
            for queue in [Queue::Small, Queue::Main] {
                let mut sum = 0u64;
                for id in self.queues.iter(part.list(queue)) {
                    let tag = self.tag(id);
                    assert_eq!(
                        tag.state().queue(),
                        Some(queue),
                        "id {id} in the wrong queue"
                    );
                    assert_eq!(tag.part(), part, "id {id} in the wrong partition");
                    sum += self.w(id);
                }
                assert_eq!(
                    sum, self.shares[part as usize].weight[queue as usize],
                    "queue weight mismatch"
                );
                total += lengths[part.list(queue)];
            }
        }
        assert_eq!(total, self.len, "entry count mismatch");
        for (id, &t) in self.tags.iter().enumerate() {
            assert_eq!(
                t.state() != State::Untracked,
                self.queues.is_linked(id as u32),
                "id {id}: state {:?} disagrees with the lists",
                t.state()
            );
        }
        assert!(
            self.len <= self.ghost.slots(),
            "ghost smaller than the resident count"
        );
        self.ghost.validate();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Decisions per request of the whole cache, times the step: the same from 1 to 32 shards.
    #[test]
    fn the_pace_per_request_does_not_depend_on_the_shard_count_up_to_32() {
        let pace = |n: u64| adapt_step(n) / f64::from(adapt_period(n)) / n as f64;
        for n in [1, 2, 4, 8, 16, 32] {
            assert!((pace(n) - pace(1)).abs() < 1e-12, "{n} shards");
        }
        assert!((pace(64) - pace(1) / 2.0).abs() < 1e-12);
        assert_eq!(adapt_period(0), ADAPT_PERIOD);
        assert_eq!(adapt_period(u64::MAX), ADAPT_PERIOD_MIN);
        assert_eq!(adapt_step(u64::MAX), ADAPT_STEP * ADAPT_STEP_SCALE_MAX);
    }
    use crate::raw::FREQ_MAX as COUNTER_MAX;
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
        fn stamp(&self, _: u32) -> u8 {
            0
        }
    }

    impl TestCache {
        fn new(capacity: u64) -> Self {
            TestCache {
                policy: Policy::new(capacity, true, Contest::new(capacity), 1),
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
            self.evict_to_capacity();
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
            self.evict_to_capacity();
            true
        }

        /// Evicts until the policy's weight is within its capacity (every call finds a victim).
        fn evict_to_capacity(&mut self) {
            while self.policy.weighted_size() > self.policy.capacity() {
                let mut a = Access {
                    counter: &mut self.counter,
                    hash: &self.hash,
                };
                let v = self.policy.evict_one(&mut a).expect("victim");
                self.drop_id(v);
            }
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
        let mut p = Policy::new(10, true, Contest::new(10), 1);
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
        let mut p = Policy::new(4, true, Contest::new(4), 1);
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
            random_op(&mut c, r, step, (6, 300, 5000));
            if step % 997 == 0 {
                c.check();
            }
        }
        c.check();
    }

    /// One random operation drawn from `r` at `step`: a removal (1 in 50), a new value (3 in
    /// 25) or a request (the rest), of a key that is hot (`hot_tenths` in 10, one of the
    /// first `hot`), warm (one of the first `warm`, to 9 in 10) or new, weighing 1 to 20.
    fn random_op(c: &mut TestCache, r: u64, step: u64, (hot_tenths, hot, warm): (u64, u64, u64)) {
        let k = match r % 10 {
            t if t < hot_tenths => (r >> 8) % hot,
            9 => 1_000_000 + step,
            _ => (r >> 8) % warm,
        };
        let w = 1 + ((r >> 40) % 20) as u32;
        if (r >> 20).is_multiple_of(50) {
            c.remove(k);
        } else if (r >> 20) % 50 < 6 {
            c.update(k, w);
        } else {
            c.access(k, w);
        }
    }

    /// The same with the cache's mode switched every few thousand requests (fill entries
    /// spared by the recency mode, samples in either mode), weighted, with capacity changes:
    /// every eviction finds a victim and the invariants hold.
    #[test]
    fn random_operations_keep_invariants_across_mode_switches() {
        let mut c = TestCache::new(4096);
        let contest = Contest::new(4096);
        c.policy = Policy::new(4096, true, Arc::clone(&contest), 1);
        let mut r = 54321u64;
        for step in 0..200_000u64 {
            r = mix(r);
            random_op(&mut c, r, step, (5, 3000, 20_000));
            if step % 3_001 == 0 {
                contest.switch_now();
            }
            if step % 40_000 == 39_999 {
                let cap = if c.policy.capacity() == 4096 {
                    1500
                } else {
                    4096
                };
                c.policy.set_capacity(cap);
                c.evict_to_capacity();
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
                .is_some_and(|&id| c.policy.state(id) == State::Main)
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
        recency_bursts(&mut c, 400_000);
        assert!(
            c.policy.small_target() > start * 5,
            "small target {} (start {start})",
            c.policy.small_target()
        );
        c.check();
    }

    /// `requests` requests of keys used in short bursts: a third are new keys, the others
    /// repeat one of the last 300 new keys, and no key is requested after that.
    fn recency_bursts(c: &mut TestCache, requests: u64) {
        let mut recent: Vec<u64> = Vec::new();
        let (mut r, mut next) = (99u64, 0u64);
        for _ in 0..requests {
            r = mix(r);
            if r.is_multiple_of(3) || recent.is_empty() {
                recent.push(next);
                next += 1;
                c.access(next - 1, 1);
            } else {
                let back = 1 + ((r >> 16) % 300) as usize;
                c.access(recent[recent.len().saturating_sub(back)], 1);
            }
        }
    }

    /// The first laps adapt faster (`WARM_LAPS`): on the same recency-biased requests, a
    /// policy that starts empty grows SMALL further than one whose eviction clocks say it has
    /// already evicted `WARM_LAPS` times its capacity (clocks moved by whole rounds of the
    /// ghost's 8-bit epochs, so that every distance the two measure is the same).
    #[test]
    fn the_first_laps_adapt_faster() {
        let cap = 2048u64;
        let run = |seasoned: bool| {
            let mut c = TestCache::new(cap);
            if seasoned {
                let lap = 256 * c.policy.epoch_unit;
                assert!(
                    lap >= WARM_LAPS * cap,
                    "a whole round of epochs covers the warm-up"
                );
                c.policy.evicted_w = [lap, lap];
            }
            recency_bursts(&mut c, 6 * cap);
            c.check();
            c.policy.small_target()
        };
        let (fresh, seasoned) = (run(false), run(true));
        assert!(
            fresh > seasoned,
            "SMALL in the first laps {fresh}, past them {seasoned}"
        );
    }

    /// A cache of `capacity` filled with one key more than it holds: its first eviction moved
    /// SMALL's oldest entries to MAIN, under its target (`State::Fill`).
    fn filled(capacity: u64) -> TestCache {
        let mut c = TestCache::new(capacity);
        for k in 0..capacity + capacity / 100 {
            c.access(k, 1);
        }
        c
    }

    /// The recency mode spares a filling cache's first keys (`State::Fill`) for
    /// [`FILL_LAPS`] laps of its hand, taking its victims from SMALL meanwhile; then they go
    /// like any unrequested key (failed before: the recency mode evicted MAIN first).
    #[test]
    fn the_recency_mode_spares_a_filling_caches_keys_for_a_few_laps() {
        let mut c = filled(1000);
        let kept: Vec<u64> = (0..1010)
            .filter(|&k| c.contains(k) && c.policy.state(c.map[&k]) == State::Fill)
            .collect();
        assert!(kept.len() >= 950, "{} filled MAIN", kept.len());
        // The estimate switches the cache to the recency mode.
        let mut view = View::INITIAL;
        view.incumbent = Mode::Recency;
        view.samples = [Mode::Recency; 2];
        c.policy.view = view;
        c.policy.apportion();
        for k in 10_000..10_500 {
            assert!(!c.access(k, 1));
            c.check();
        }
        let lost = kept.iter().filter(|&&k| !c.contains(k)).count();
        assert_eq!(lost, 0, "kept keys evicted in the first lap");
        // One of them requested: at the hand's next pass it becomes an ordinary key of the
        // recency mode's FIFO (SMALL's back, as recent as now); the others are still spared.
        assert!(c.access(kept[0], 1));
        let mut k = 11_000;
        while c.policy.state(c.map[&kept[0]]) == State::Fill {
            c.access(k, 1);
            k += 1;
            assert!(k < 13_000, "the hand never came back to it");
        }
        assert_eq!(c.policy.state(c.map[&kept[0]]), State::New);
        assert!(
            kept[1..]
                .iter()
                .all(|&k| c.policy.state(c.map[&k]) == State::Fill)
        );
        // The others go after their laps.
        let laps = u64::from(FILL_LAPS) + 2;
        for k in 20_000..20_000 + laps * 1000 {
            c.access(k, 1);
            c.check();
        }
        let left = kept.iter().filter(|&&k| c.contains(k)).count();
        assert_eq!(
            left, 0,
            "kept keys still resident after {laps} laps of new keys"
        );
    }

    /// The adaptive mode's hand passing a fill entry makes it an ordinary MAIN entry: it is no
    /// longer a first key kept on a bet, and the recency mode does not spare it.
    #[test]
    fn the_adaptive_hand_ends_a_fill_entrys_grace() {
        let mut c = filled(1000);
        let hand = c.policy.queues.front(Part::Bulk.list(Queue::Main)).unwrap();
        let key = c.key[hand as usize];
        assert_eq!(c.policy.state(hand), State::Fill);
        // Requested, so the hand passes it (decrements its counter and moves on) instead of
        // evicting it.
        assert!(c.access(key, 1));
        // New keys requested twice reach MAIN from SMALL, and MAIN over its target runs the
        // hand.
        for k in 10_000..10_300 {
            c.access(k, 1);
            c.access(k, 1);
        }
        assert!(c.contains(key));
        assert_eq!(c.policy.state(c.map[&key]), State::Main);
    }

    /// A switch of the cache's mode reaches a policy at its next miss, not after a batch of
    /// them (failed before: a shard followed only at its next report, up to 16 sampled
    /// misses later, while its duels went on evicting the keys a reversal asks for).
    #[test]
    fn a_policy_follows_a_switch_at_its_next_miss() {
        let contest = Contest::new(4096);
        let mut p = Policy::new(4096, false, Arc::clone(&contest), 8);
        p.insert(0, mix(0), 1);
        assert_eq!(p.mode_of(Part::Bulk), Mode::Adaptive);
        contest.switch_now();
        p.insert(1, mix(1), 1);
        assert_eq!(p.mode_of(Part::Bulk), Mode::Recency);
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
            fn stamp(&self, _: u32) -> u8 {
                0
            }
        }
        let mut p = Policy::new(100, true, Contest::new(100), 1);
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
}
