//! The contest between the policy's two modes, shared by every shard of one cache.
//!
//! Each shard's policy sets aside two *samples*: the keys whose hash falls in one of two
//! sixteenths of the hash space, each with its own queues and a sixteenth of the shard's
//! capacity (a cache in miniature that sees a sixteenth of the traffic, and so misses about as
//! often as the whole cache would in the same mode). Most of the time both samples run the
//! mode the rest of the cache runs (the *incumbent*). Now and then a *contest* runs: sample A
//! runs one mode and sample B the other for a round, then they swap for a second round (so
//! that a sample whose keys happen to be easier favours neither mode), and each round counts
//! the samples' misses in its second half (once the samples have settled into their modes).
//! If the challenger missed less over the two rounds by more than two standard deviations of
//! the difference, it becomes the incumbent, and every shard switches. A challenger that
//! trails by that much after the first round is dropped at once; one that leads by twice that
//! (four standard deviations) after the first round wins at once, without the swapped round:
//! a lead that large is beyond the difference between the samples' own keys that the swap is
//! there to cancel (up to 9% of their misses where it was measured, about two standard
//! deviations at a round's counts), and a switch a round earlier pays where the regime
//! changes.
//!
//! A contest the incumbent wins is followed by a rest of 1, 3, then 7 rounds (at most 3 while
//! the recency mode holds; reset when the incumbent changes), so a settled cache spends little
//! of its samples on the losing mode. A rest of the adaptive mode is cut to its current round
//! when a policy reports that its small queue has just reached the largest share the mode gives
//! it ([`Tally::strain`]; a strain during a contest shortens the rest after it): rounds are
//! counted in misses, so a rest of 7 rounds begun in a frequency phase could outlast most of
//! the recency phase after it (alternating regimes, one shard: 22% against LRU's 52% with one
//! hasher). Not cut at once: a contest at every strain made the cache of one hasher swing
//! between the modes on back-and-forth sweeps. `docs/policy-log.md` has the figures.
//!
//! Misses are the only signal, and the maintainer sees every one (an insert), so nothing is
//! recorded on a hit. The samples of all shards count together: a round ends after
//! `capacity / 4` sample misses across the cache (four times the samples' capacity). Each
//! policy adds its counts in batches of 16 under a try-lock: a maintainer that finds the lock
//! taken keeps its counts for its next batch instead of waiting. Caches below 2048 entries
//! have no samples and stay in the adaptive mode (a sample of fewer than 128 entries is too
//! noisy, and trying the other mode costs more there than it can win).
//!
//! A known weakness: rounds are counted in misses, so on a workload with scans most rounds end,
//! and most samples switch mode, inside a scan. A sample switched to the adaptive mode there
//! fills MAIN with the scan's keys (MAIN is under its target) and relearns the hot set more
//! slowly than the recency mode's FIFO after the scan, and the contest measures that transient
//! rather than the mode (scans over a hot set pick the recency mode, which loses 5 points
//! there). `docs/policy-log.md` records the changes measured against it.

use crate::sync::{Arc, Mutex};

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
    /// Whether the adaptive mode strained towards recency (see [`Tally::strain`]).
    strained: bool,
}

impl View {
    /// The view of a new contest.
    pub(crate) const INITIAL: View = View {
        generation: 0,
        incumbent: Mode::Adaptive,
        samples: [Mode::Adaptive, Mode::Recency],
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

    /// Records that SMALL has just reached the largest share the adaptive mode gives it: a
    /// rest of the adaptive mode is cut to its current round (see the module documentation).
    pub(crate) fn strain(&mut self) {
        self.strained = true;
    }

    /// Misses recorded so far.
    pub(crate) fn seen(&self) -> u64 {
        self.seen
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
    /// A strain reported during a contest of the adaptive mode: the rest after it, if the
    /// incumbent wins, is one round.
    strained: bool,
}

/// Smallest capacity with a contest: two samples of at least 128 entries in all (below that
/// a sample is too noisy, and trying out the other mode costs more than it can win).
const MIN_CAPACITY: u64 = 2048;
/// Longest rest between two contests, in rounds.
const MAX_REST: u64 = 7;
/// Longest rest while the recency mode holds: it is the mode that fails badly when the
/// workload turns (a loop or a scan over a hot set), so it is challenged more often.
const MAX_REST_RECENCY: u64 = 3;
/// Standard deviations by which a challenger must win (and by which it loses early).
const Z: f64 = 2.0;
/// Standard deviations by which a challenger that leads after the first round wins at once.
const Z_EARLY: f64 = 4.0;

/// The contest shared by the policies of one cache (see the module documentation).
pub(crate) struct Contest {
    /// Whether the cache is large enough for samples (see [`MIN_CAPACITY`]).
    enabled: bool,
    state: Mutex<State>,
}

impl Contest {
    /// The contest of a cache of `capacity` (its total weight bound).
    pub(crate) fn new(capacity: u64) -> Arc<Contest> {
        Arc::new(Contest {
            enabled: capacity >= MIN_CAPACITY,
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
                strained: false,
            }),
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

    /// The current view, if the lock is free.
    pub(crate) fn try_view(&self) -> Option<View> {
        self.state.try_lock().ok().map(|s| s.view())
    }

    /// Adds `tally`, taken under `view`, to the round (dropped if the round has ended since),
    /// ending the round if it is complete. Returns the view to follow from now on, or `None`
    /// (keeping the tally for later) if the lock is taken.
    pub(crate) fn report(&self, view: View, tally: &mut Tally) -> Option<View> {
        let mut s = self.state.try_lock().ok()?;
        if tally.strained && s.incumbent == Mode::Adaptive {
            // The rest ends after the current round (not at once: a contest run at every
            // strain made a sweep's cache swing between the modes, see the module docs); a
            // strain during a contest shortens the rest that follows it.
            if s.rest > 0 {
                s.rest = s.rest.min(1);
            } else {
                s.strained = true;
            }
        }
        if view.generation == s.generation {
            s.seen += tally.seen;
            s.counted[0] += tally.counted[0];
            s.counted[1] += tally.counted[1];
            if s.seen >= s.round_len {
                s.end_round();
            }
        }
        *tally = Tally::default();
        Some(s.view())
    }
}

impl State {
    /// The challenger becomes the incumbent; a new contest starts at once.
    fn switch(&mut self) {
        self.strained = false;
        self.incumbent = self.incumbent.other();
        self.backoff = 0;
        self.round = 0;
        self.first = [0; 2];
    }

    fn view(&self) -> View {
        let challenger = self.incumbent.other();
        let samples = if self.rest > 0 {
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
            measuring: self.rest == 0 && self.seen >= self.round_len / 2,
        }
    }

    fn end_round(&mut self) {
        self.generation += 1;
        self.seen = 0;
        let counted = std::mem::take(&mut self.counted);
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
        let longest = match self.incumbent {
            Mode::Adaptive => MAX_REST,
            Mode::Recency => MAX_REST_RECENCY,
        };
        self.backoff = (2 * self.backoff + 1).min(longest);
        self.rest = if std::mem::take(&mut self.strained) {
            1
        } else {
            self.backoff
        };
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
        assert!(view.measuring || contest.state.lock().unwrap().rest > 0);
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

    #[test]
    fn a_clearly_better_challenger_takes_over() {
        let contest = Contest::new(100_000);
        let v = contest.try_view().unwrap();
        assert_eq!(v.incumbent, Mode::Adaptive);
        assert_eq!(v.samples, [Mode::Adaptive, Mode::Recency]);
        // Round 0: B runs the challenger and misses less (by 3 standard deviations: not enough
        // to win at once); round 1: swapped, A misses less.
        let v = round(&contest, 1000, 880);
        assert_eq!(v.incumbent, Mode::Adaptive);
        assert_eq!(v.samples, [Mode::Recency, Mode::Adaptive]);
        let v = round(&contest, 880, 1000);
        assert_eq!(v.incumbent, Mode::Recency);
        // A new contest starts at once, the other way round.
        assert_eq!(v.samples, [Mode::Recency, Mode::Adaptive]);
    }

    #[test]
    fn a_tie_keeps_the_incumbent_and_rests_longer_each_time() {
        let contest = Contest::new(100_000);
        let mut rests = Vec::new();
        for _ in 0..5 {
            round(&contest, 1000, 1000);
            let v = round(&contest, 1000, 1000);
            assert_eq!(v.incumbent, Mode::Adaptive);
            let rest = contest.state.lock().unwrap().rest;
            rests.push(rest);
            // Both samples run the incumbent while resting, and nothing is counted.
            for _ in 0..rest {
                let v = contest.try_view().unwrap();
                assert_eq!(v.samples, [Mode::Adaptive; 2]);
                round(&contest, 0, 0);
            }
        }
        assert_eq!(rests, [1, 3, 7, 7, 7]);
    }

    #[test]
    fn the_recency_mode_is_challenged_more_often() {
        let contest = Contest::new(100_000);
        assert_eq!(round(&contest, 1000, 700).incumbent, Mode::Recency);
        let mut rests = Vec::new();
        for _ in 0..4 {
            round(&contest, 1000, 1000);
            round(&contest, 1000, 1000);
            let rest = contest.state.lock().unwrap().rest;
            rests.push(rest);
            for _ in 0..rest {
                assert_eq!(contest.try_view().unwrap().samples, [Mode::Recency; 2]);
                round(&contest, 0, 0);
            }
        }
        assert_eq!(rests, [1, 3, 3, 3]);
    }

    #[test]
    fn a_challenger_far_ahead_wins_after_one_round() {
        let contest = Contest::new(100_000);
        // 300 fewer misses of 1,700: 7 standard deviations.
        let v = round(&contest, 1000, 700);
        assert_eq!(v.incumbent, Mode::Recency);
        assert_eq!(
            v.samples,
            [Mode::Recency, Mode::Adaptive],
            "a new contest at once"
        );
        assert_eq!(contest.state.lock().unwrap().rest, 0);
        // Just under 4 standard deviations (160 of 1,840, sd 42.9): the swapped round decides.
        let contest = Contest::new(100_000);
        let v = round(&contest, 1000, 840);
        assert_eq!(v.incumbent, Mode::Adaptive);
        assert_eq!(
            v.samples,
            [Mode::Recency, Mode::Adaptive],
            "round 1, swapped"
        );
    }

    #[test]
    fn a_strained_adaptive_mode_cuts_the_rest_to_one_round() {
        let contest = Contest::new(100_000);
        // Three contests the incumbent wins: rests of 1, 3, then 7 rounds.
        for rest in [1, 3, 7] {
            round(&contest, 1000, 1000);
            round(&contest, 1000, 1000);
            assert_eq!(contest.state.lock().unwrap().rest, rest);
            if rest < 7 {
                for _ in 0..rest {
                    round(&contest, 0, 0);
                }
            }
        }
        let resting = contest.try_view().unwrap();
        assert_eq!(resting.samples, [Mode::Adaptive; 2]);
        let mut tally = Tally::default();
        tally.miss(0, false);
        tally.strain();
        let v = contest.report(resting, &mut tally).unwrap();
        assert_eq!(v, resting, "the current round goes on");
        assert_eq!(contest.state.lock().unwrap().rest, 1);
        assert_eq!(tally.seen(), 0, "the tally is spent");
        // The round ends: the contest starts.
        let v = round(&contest, 0, 0);
        assert_eq!(v.samples, [Mode::Adaptive, Mode::Recency]);
        // During a contest a strain changes nothing at once, but the rest after the contest,
        // which the incumbent wins, is one round (the backoff was at 7).
        let mut tally = Tally::default();
        tally.strain();
        assert_eq!(contest.report(v, &mut tally).unwrap(), v);
        assert_eq!(contest.state.lock().unwrap().rest, 0);
        round(&contest, 1000, 1000);
        round(&contest, 1000, 1000);
        assert_eq!(contest.state.lock().unwrap().rest, 1);
        round(&contest, 0, 0);
        round(&contest, 1000, 1000);
        round(&contest, 1000, 1000);
        assert_eq!(
            contest.state.lock().unwrap().rest,
            7,
            "the strain was used once"
        );
        // While the recency mode holds, a strain changes nothing.
        let recency = Contest::new(100_000);
        assert_eq!(round(&recency, 1000, 700).incumbent, Mode::Recency);
        round(&recency, 1000, 1000);
        round(&recency, 1000, 1000);
        round(&recency, 0, 0);
        round(&recency, 1000, 1000);
        round(&recency, 1000, 1000);
        assert_eq!(recency.state.lock().unwrap().rest, 3);
        let resting = recency.try_view().unwrap();
        assert_eq!(resting.samples, [Mode::Recency; 2]);
        let mut tally = Tally::default();
        tally.strain();
        assert_eq!(recency.report(resting, &mut tally).unwrap(), resting);
        assert_eq!(recency.state.lock().unwrap().rest, 3);
    }

    #[test]
    fn a_clearly_worse_challenger_is_dropped_after_one_round() {
        let contest = Contest::new(100_000);
        let v = round(&contest, 500, 1000);
        assert_eq!(v.incumbent, Mode::Adaptive);
        assert_eq!(v.samples, [Mode::Adaptive; 2], "resting");
        assert_eq!(contest.state.lock().unwrap().rest, 1);
    }

    #[test]
    fn counts_from_an_ended_round_are_dropped() {
        let contest = Contest::new(100_000);
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
