//! Which of the policy's two modes the cache runs, decided for every shard of one cache.
//!
//! **To the recency mode: the estimate.** The cache estimates the misses an LRU of its size
//! would have on the same requests ([`super::recent`], on a sample of the keys), window by
//! window (a window: as many first requests of sampled keys in a generation as the cache holds
//! sampled keys; none counts before the first eviction). While the adaptive mode runs, when
//! the estimate, times what the recency mode was seen to miss over the estimate when it last
//! ran (between 1 and 2: the recency mode is a FIFO with second chances, which misses 12-15% more
//! than an LRU on a shifting Zipf working set), is below the adaptive mode's own misses by more
//! than 4% and by two standard deviations, summed over the windows since the last switch with
//! a decay of 3/4 per window, every shard switches. The window after any switch is not counted
//! (it measures the switch). The samples below no longer challenge the adaptive mode: sampled
//! shadows of the two modes measure the switch as much as the mode (`docs/policy-log.md`,
//! 2026-12-07), where the estimate, with a memory of every stamp, is within 1.7% of an exact
//! LRU on every synthetic workload of the hit-ratio table.
//!
//! **Back to the adaptive mode: the estimate and the samples.** While the recency mode runs
//! there is no estimate of the adaptive mode's misses, so two rules bring it back, whichever
//! fires first. The estimate's: the adaptive mode's misses over the estimate's in its longer
//! past (a decay of 0.95 a window), times the estimate, against the recency mode's own misses
//! (a decay of 0.9), by 4% and two standard deviations, and only where the recency mode misses
//! more than 4% over the estimate (where it does as well as an LRU, only a workload that
//! turned can make the adaptive mode better, and its past says nothing of that). A working set
//! that jumps makes the adaptive mode relearn for a window or two, where an LRU does better;
//! the recency mode then misses more than the adaptive mode did before, and this brings the
//! cache back. And a contest. Each shard's policy sets aside two *samples*: the keys whose
//! hash falls in one of two sixteenths of the hash space, each with its own queues and a
//! sixteenth of the shard's capacity (a cache in miniature that sees a sixteenth of the
//! traffic, and so misses about as often as the whole cache would in the same mode). While the
//! adaptive mode holds, both samples run it. While the recency mode holds, a *contest* runs
//! now and then: sample A runs one mode and sample B the other for a round, then they swap for
//! a second round (so that a sample whose keys happen to be easier favours neither mode), and
//! each round counts the samples' misses in its second half (once the samples have settled
//! into their modes). If the adaptive mode missed less over the two rounds by more than two
//! standard deviations of the difference, every shard switches back. A challenger that trails
//! by that much after the first round is dropped at once; one that leads by twice that (four
//! standard deviations) after the first round wins at once, without the swapped round. A
//! contest the recency mode wins is followed by a rest of 1, then 3 rounds. (The alternating
//! workload needs the contest: it turns from a sweep to a loop, where the adaptive mode's past
//! says nothing.)
//!
//! Misses are the only signal the samples give, and the maintainer sees every one (an
//! insert). The samples of all shards count together: a round ends after `capacity / 4`
//! sample misses across the cache (four times the samples' capacity). Each policy adds its
//! counts in batches of 16 under a try-lock: a maintainer that finds the lock taken keeps its
//! counts for its next batch instead of waiting. Caches below 2048 entries have no samples and
//! no estimate, and stay in the adaptive mode (a sample of fewer than 128 entries is too
//! noisy, and trying the other mode costs more there than it can win).

use super::recent::{Estimate, Misses, Recent};
use crate::sync::{Arc, AtomicU64, Mutex, Ordering};
use crossbeam_utils::CachePadded;

/// A mode of the policy.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// SMALL at the size the ghost adaptation gives it (1% to 25% of the capacity): a
    /// frequency-biased cache, scan- and loop-resistant.
    Adaptive,
    /// SMALL at the whole capacity: one FIFO of every key (an entry found hit at its front
    /// passes through MAIN, and leaves next unless it is hit again). Where recency alone
    /// predicts reuse (back-and-forth sweeps, a sliding window) this does as well as LRU.
    Recency,
}

impl Mode {
    fn other(self) -> Mode {
        match self {
            Mode::Adaptive => Mode::Recency,
            Mode::Recency => Mode::Adaptive,
        }
    }
}

/// What a policy needs to know of the contest: the modes its partitions run, and whether
/// misses count now.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct View {
    /// Changes whenever a round ends (counts taken under an older view are dropped).
    generation: u64,
    /// The mode of the bulk of the cache.
    pub(crate) incumbent: Mode,
    /// The modes of samples A and B.
    pub(crate) samples: [Mode; 2],
    /// Whether the samples' misses count (second half of a contest round).
    pub(crate) measuring: bool,
}

/// Misses a policy has seen in its samples since it last reported them.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Tally {
    /// Misses in samples A and B.
    seen: u64,
    /// Misses in samples A and B that count (see [`View::measuring`]).
    counted: [u64; 2],
    /// Misses in every partition, for the recency estimate (see [`super::recent`]).
    misses: Misses,
    /// Change in the policy's entry count.
    entries: i64,
}

impl View {
    /// The view of a new contest.
    pub(crate) const INITIAL: View = View {
        generation: 0,
        incumbent: Mode::Adaptive,
        samples: [Mode::Adaptive; 2],
        measuring: false,
    };
}

impl Tally {
    /// Records a miss in sample `sample` (0 for A, 1 for B).
    pub(crate) fn miss(&mut self, sample: usize, measuring: bool) {
        self.seen += 1;
        if measuring {
            self.counted[sample] += 1;
        }
    }

    /// Misses recorded so far.
    pub(crate) fn seen(&self) -> u64 {
        self.seen
    }

    /// Records a miss for the recency estimate: `new` if its key was beyond the estimate's
    /// reach; `stamp`, the generation its ghost record says it was last requested in; `now`,
    /// the current one (modulo 64).
    pub(crate) fn estimate_miss(&mut self, new: bool, stamp: Option<u8>, now: u32) {
        self.misses.all += 1;
        self.misses.new += u64::from(new);
        if let Some(s) = stamp {
            self.misses.moved[usize::from(s)] += 1;
        }
        self.misses.into[now as usize] += 1;
    }

    /// Records a sampled key's move from generation `from` to `to` (modulo 64) by a request
    /// that was not a miss.
    pub(crate) fn moved(&mut self, from: u8, to: u8) {
        self.misses.moved[usize::from(from) % 64] += 1;
        self.misses.into[usize::from(to) % 64] += 1;
    }

    /// Records that the policy evicted (the cache is full).
    pub(crate) fn evicted(&mut self) {
        self.misses.evicted = true;
    }

    /// Misses recorded for the estimate so far.
    pub(crate) fn misses(&self) -> u64 {
        self.misses.all
    }

    /// Records a change in the reporting policy's entry count.
    pub(crate) fn entries(&mut self, delta: i64) {
        self.entries += delta;
    }
}

#[derive(Debug)]
struct State {
    /// Sample misses per round, across the cache.
    round_len: u64,
    generation: u64,
    incumbent: Mode,
    /// 0 or 1 during a contest (sample A runs the incumbent in round 0, the challenger in
    /// round 1).
    round: u8,
    /// Rounds left before the next contest.
    rest: u64,
    /// The rest after the next contest the incumbent wins.
    backoff: u64,
    /// Sample misses this round.
    seen: u64,
    /// Counted misses of samples A and B this round.
    counted: [u64; 2],
    /// Counted misses of the incumbent and the challenger in round 0.
    first: [u64; 2],
    /// The recency estimate's counts and trends.
    estimate: Estimate,
}

/// Smallest capacity with a contest: two samples of at least 128 entries in all (below that
/// a sample is too noisy, and trying out the other mode costs more than it can win).
const MIN_CAPACITY: u64 = 2048;
/// Longest rest between two contests, in rounds: the recency mode is the one that fails
/// badly when the workload turns (a loop or a scan over a hot set), so it is challenged often.
const MAX_REST: u64 = 3;
/// Standard deviations by which a challenger must win (and by which it loses early).
const Z: f64 = 2.0;
/// Standard deviations by which a challenger that leads after the first round wins at once.
const Z_EARLY: f64 = 4.0;

/// The contest shared by the policies of one cache (see the module documentation).
pub(crate) struct Contest {
    /// Whether the cache is large enough for samples (see [`MIN_CAPACITY`]).
    enabled: bool,
    /// What readers see of the recency estimate.
    pub(crate) recent: Recent,
    state: Mutex<State>,
    /// The state's generation as of its last change (a copy outside the lock): a policy
    /// whose view is older reports at its next miss instead of after a batch of them
    /// ([`Contest::stale`]), so that a switch reaches every shard within a few requests (at
    /// its first miss that finds the lock free). On a line of its own: every policy reads it
    /// on every miss, and every report writes the lock's line.
    published: CachePadded<AtomicU64>,
}

impl Contest {
    /// The contest of a cache of `capacity` entries.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn new(capacity: u64) -> Arc<Contest> {
        Self::for_cache(capacity, false)
    }

    /// The contest of a cache of `capacity` (its total weight bound, with `weighted`).
    pub(crate) fn for_cache(capacity: u64, weighted: bool) -> Arc<Contest> {
        let enabled = capacity >= MIN_CAPACITY;
        Arc::new(Contest {
            enabled,
            recent: Recent::new(if enabled {
                super::recent::sample_bits(capacity, weighted)
            } else {
                0
            }),
            state: Mutex::new(State {
                round_len: capacity / 4,
                generation: 0,
                incumbent: Mode::Adaptive,
                round: 0,
                rest: 0,
                backoff: 0,
                seen: 0,
                counted: [0; 2],
                first: [0; 2],
                estimate: Estimate::default(),
            }),
            published: CachePadded::new(AtomicU64::new(0)),
        })
    }

    /// Follows a change of the cache's capacity (`Cache::set_max_capacity`): rounds last
    /// `capacity / 4` sample misses of the new capacity from the next report on. Whether the
    /// contest runs stays as the cache was built (a cache built too small for samples has
    /// none, and the policies of a larger one keep their sample partitions, proportioned to
    /// the new capacity).
    pub(crate) fn set_capacity(&self, capacity: u64) {
        if self.enabled {
            let mut s = crate::sync::lock(&self.state);
            s.round_len = (capacity / 4).max(1);
        }
    }

    /// Whether the policies keep samples and run the contest.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `view` is older than the contest's (a hint: the view itself is read under
    /// the lock, by [`Contest::report`]).
    pub(crate) fn stale(&self, view: View) -> bool {
        // Relaxed: a hint only; the state it summarises is read under the mutex, which orders
        // it. Pairs with nothing.
        self.published.load(Ordering::Relaxed) != view.generation
    }

    /// Switches the cache's mode, as the estimate would at a report.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn switch_now(&self) {
        let mut s = self.state.lock().unwrap();
        s.switch_by_estimate();
        self.published.store(s.generation, Ordering::Relaxed);
    }

    /// The current view, if the lock is free.
    pub(crate) fn try_view(&self) -> Option<View> {
        self.state.try_lock().ok().map(|s| s.view())
    }

    /// Adds `tally`, taken under `view`, to the round (dropped if the round has ended since),
    /// ending the round if it is complete. Returns the view to follow from now on, or `None`
    /// (keeping the tally for later) if the lock is taken.
    pub(crate) fn report(&self, view: View, tally: &mut Tally) -> Option<View> {
        let mut s = self.state.try_lock().ok()?;
        if view.generation == s.generation {
            s.seen += tally.seen;
            s.counted[0] += tally.counted[0];
            s.counted[1] += tally.counted[1];
            if s.seen >= s.round_len {
                s.end_round();
            }
        }
        s.estimate.entries += tally.entries;
        let window = s.estimate.sampled_entries(self.recent.bits());
        let done = s.estimate.add(&self.recent, &tally.misses, window);
        let bits = self.recent.bits();
        if done {
            let switch = match s.incumbent {
                Mode::Adaptive => s.estimate.adaptive_window(bits),
                Mode::Recency => s.estimate.recency_window(bits),
            };
            s.estimate.restart();
            if switch {
                s.switch_by_estimate();
            }
        } else if s.incumbent == Mode::Adaptive && s.estimate.adaptive_early(bits, window) {
            s.switch_by_estimate();
        }
        *tally = Tally::default();
        if self.published.load(Ordering::Relaxed) != s.generation {
            // Relaxed: see `stale`; written only under the state's lock.
            self.published.store(s.generation, Ordering::Relaxed);
        }
        Some(s.view())
    }
}

impl State {
    /// The estimate switches the cache: counts taken under the old view are dropped with the
    /// round, and the challenger becomes the incumbent.
    fn switch_by_estimate(&mut self) {
        self.generation += 1;
        self.seen = 0;
        self.counted = [0; 2];
        self.rest = 0;
        self.switch();
    }

    /// The challenger becomes the incumbent; a new contest starts at once.
    fn switch(&mut self) {
        self.estimate.switched();
        self.incumbent = self.incumbent.other();
        self.backoff = 0;
        self.round = 0;
        self.first = [0; 2];
    }

    fn view(&self) -> View {
        let challenger = self.incumbent.other();
        // The recency estimate decides when to leave the adaptive mode; the samples only
        // decide the way back.
        let rest = self.rest > 0 || self.incumbent == Mode::Adaptive;
        let samples = if rest {
            [self.incumbent; 2]
        } else if self.round == 0 {
            [self.incumbent, challenger]
        } else {
            [challenger, self.incumbent]
        };
        View {
            generation: self.generation,
            incumbent: self.incumbent,
            samples,
            measuring: !rest && self.seen >= self.round_len / 2,
        }
    }

    fn end_round(&mut self) {
        self.generation += 1;
        self.seen = 0;
        let counted = std::mem::take(&mut self.counted);
        if self.incumbent == Mode::Adaptive {
            return;
        }
        if self.rest > 0 {
            self.rest -= 1;
            return;
        }
        // [incumbent, challenger] this round.
        let (inc, ch) = if self.round == 0 {
            (counted[0], counted[1])
        } else {
            (counted[1], counted[0])
        };
        let sd = ((inc + ch) as f64).sqrt();
        if self.round == 0 {
            if inc as f64 - ch as f64 > Z_EARLY * sd {
                self.switch();
                return;
            }
            if ch as f64 - inc as f64 <= Z * sd {
                self.round = 1;
                self.first = [inc, ch];
                return;
            }
        } else {
            let (inc, ch) = (inc + self.first[0], ch + self.first[1]);
            if inc as f64 - ch as f64 > Z * ((inc + ch) as f64).sqrt() {
                self.switch();
                return;
            }
        }
        // The incumbent stays: rest before the next contest.
        self.round = 0;
        self.first = [0; 2];
        self.backoff = (2 * self.backoff + 1).min(MAX_REST);
        self.rest = self.backoff;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Reports `a` and `b` misses of samples A and B over one whole round, half of them in
    /// the measured half; returns the view afterwards.
    fn round(contest: &Contest, a: u64, b: u64) -> View {
        let len = contest.state.lock().unwrap().round_len;
        let mut view = contest.try_view().unwrap();
        assert!(!view.measuring);
        // First half: not counted.
        let mut tally = Tally::default();
        for i in 0..len / 2 {
            tally.miss((i % 2) as usize, view.measuring);
        }
        view = contest.report(view, &mut tally).unwrap();
        assert!(
            view.measuring
                || contest.state.lock().unwrap().rest > 0
                || view.incumbent == Mode::Adaptive
        );
        // Second half: a and b counted misses, the rest of the round's misses spread evenly.
        let total = len - len / 2;
        let mut tally = Tally::default();
        for i in 0..total {
            let sample = if i < a {
                0
            } else if i < a + b {
                1
            } else {
                (i % 2) as usize
            };
            tally.miss(sample, view.measuring && i < a + b);
        }
        contest.report(view, &mut tally).unwrap()
    }

    /// A contest whose incumbent is the recency mode, with a contest starting.
    fn recency() -> Arc<Contest> {
        let contest = Contest::new(100_000);
        contest.state.lock().unwrap().switch();
        contest
    }

    #[test]
    fn a_view_older_than_the_contest_is_stale() {
        let contest = Contest::new(100_000);
        let before = contest.try_view().unwrap();
        assert!(!contest.stale(before));
        contest.state.lock().unwrap().switch_by_estimate();
        // Published by the next report (a switch by the estimate happens in one, which
        // publishes it at once).
        let after = contest.report(before, &mut Tally::default()).unwrap();
        assert_eq!(after.incumbent, Mode::Recency);
        assert!(contest.stale(before));
        assert!(!contest.stale(after));
    }

    #[test]
    fn the_adaptive_mode_is_not_challenged_by_the_samples() {
        let contest = Contest::new(100_000);
        for _ in 0..20 {
            let v = round(&contest, 1000, 100);
            assert_eq!(v.incumbent, Mode::Adaptive);
            assert_eq!(v.samples, [Mode::Adaptive; 2]);
            assert!(!v.measuring);
        }
        // Even counts that claim sample B missed far less end no contest.
        let len = contest.state.lock().unwrap().round_len;
        for _ in 0..4 {
            let view = contest.try_view().unwrap();
            let mut tally = Tally::default();
            for i in 0..len {
                tally.miss(usize::from(i % 10 == 0), true);
            }
            let v = contest.report(view, &mut tally).unwrap();
            assert_eq!(v.incumbent, Mode::Adaptive);
        }
    }

    #[test]
    fn the_estimate_switches_the_cache_to_the_recency_mode() {
        let contest = Contest::new(100_000);
        let mut view = contest.try_view().unwrap();
        // A full cache whose misses an LRU would all have hit (every key requested again
        // within the reach).
        let mut tally = Tally::default();
        tally.entries(100_000);
        tally.evicted();
        for _ in 0..20_000 {
            view = contest.report(view, &mut tally).unwrap();
            if view.incumbent == Mode::Recency {
                break;
            }
            for _ in 0..16 {
                tally.estimate_miss(false, Some(1), 0);
            }
        }
        assert_eq!(view.incumbent, Mode::Recency);
        // A contest starts at once (the samples try the adaptive mode).
        assert_eq!(view.samples, [Mode::Recency, Mode::Adaptive]);
    }

    #[test]
    fn a_clearly_better_challenger_takes_over() {
        let contest = recency();
        let v = contest.try_view().unwrap();
        assert_eq!(v.incumbent, Mode::Recency);
        assert_eq!(v.samples, [Mode::Recency, Mode::Adaptive]);
        // Round 0: B runs the challenger and misses less (by 3 standard deviations: not enough
        // to win at once); round 1: swapped, A misses less.
        let v = round(&contest, 1000, 880);
        assert_eq!(v.incumbent, Mode::Recency);
        assert_eq!(v.samples, [Mode::Adaptive, Mode::Recency]);
        let v = round(&contest, 880, 1000);
        assert_eq!(v.incumbent, Mode::Adaptive);
        // Back in the adaptive mode, the samples run it.
        assert_eq!(v.samples, [Mode::Adaptive; 2]);
    }

    #[test]
    fn a_tie_keeps_the_incumbent_and_rests_longer_each_time() {
        let contest = recency();
        let mut rests = Vec::new();
        for _ in 0..4 {
            round(&contest, 1000, 1000);
            let v = round(&contest, 1000, 1000);
            assert_eq!(v.incumbent, Mode::Recency);
            let rest = contest.state.lock().unwrap().rest;
            rests.push(rest);
            // Both samples run the incumbent while resting, and nothing is counted.
            for _ in 0..rest {
                let v = contest.try_view().unwrap();
                assert_eq!(v.samples, [Mode::Recency; 2]);
                round(&contest, 0, 0);
            }
        }
        assert_eq!(rests, [1, 3, 3, 3]);
    }

    #[test]
    fn a_challenger_far_ahead_wins_after_one_round() {
        let contest = recency();
        // 300 fewer misses of 1,700: 7 standard deviations.
        let v = round(&contest, 1000, 700);
        assert_eq!(v.incumbent, Mode::Adaptive);
        // Just under 4 standard deviations (160 of 1,840, sd 42.9): the swapped round decides.
        let contest = recency();
        let v = round(&contest, 1000, 840);
        assert_eq!(v.incumbent, Mode::Recency);
        assert_eq!(
            v.samples,
            [Mode::Adaptive, Mode::Recency],
            "round 1, swapped"
        );
    }

    #[test]
    fn a_clearly_worse_challenger_is_dropped_after_one_round() {
        let contest = recency();
        let v = round(&contest, 500, 1000);
        assert_eq!(v.incumbent, Mode::Recency);
        assert_eq!(v.samples, [Mode::Recency; 2], "resting");
        assert_eq!(contest.state.lock().unwrap().rest, 1);
    }

    #[test]
    fn counts_from_an_ended_round_are_dropped() {
        let contest = recency();
        let stale = contest.try_view().unwrap();
        round(&contest, 1000, 1000);
        let mut tally = Tally::default();
        for _ in 0..10 {
            tally.miss(0, true);
        }
        let v = contest.report(stale, &mut tally).unwrap();
        assert_eq!(tally.seen(), 0, "the tally is spent either way");
        assert_eq!(contest.state.lock().unwrap().seen, 0);
        assert_eq!(v, contest.try_view().unwrap());
    }

    #[test]
    fn small_caches_have_no_contest() {
        assert!(!Contest::new(MIN_CAPACITY - 1).enabled());
        assert!(Contest::new(MIN_CAPACITY).enabled());
        // A round is a quarter of the capacity in sample misses: four times the samples'
        // capacity, so that the half that counts comes after they settled into their modes.
        assert_eq!(Contest::new(4096).state.lock().unwrap().round_len, 1024);
        assert_eq!(Contest::new(40_000).state.lock().unwrap().round_len, 10_000);
    }

    #[test]
    fn rounds_follow_a_change_of_capacity() {
        let contest = Contest::new(4096);
        contest.set_capacity(40_000);
        assert_eq!(contest.state.lock().unwrap().round_len, 10_000);
        contest.set_capacity(2);
        assert_eq!(contest.state.lock().unwrap().round_len, 1);
        assert!(contest.enabled());
        // A contest that never ran stays off.
        let off = Contest::new(100);
        off.set_capacity(1 << 20);
        assert!(!off.enabled());
        assert_eq!(off.state.lock().unwrap().round_len, 25);
    }
}
