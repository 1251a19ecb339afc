//! An estimate of the misses an LRU of the cache's size would have on the requests the cache
//! serves, made while it serves them: what tells the policy to switch to its recency mode
//! (see [`super::contest`] for the decision, `docs/policy-log.md`, 2026-12-07, for the
//! measurements).
//!
//! # What it counts
//! An LRU of `n` entries misses a request exactly when `n` or more distinct keys were requested
//! since the key's previous request. Time is cut into *generations*, and a histogram counts,
//! per generation, the keys whose last request fell in it: a request moves its key from the
//! generation of its previous request to the current one. The *reach* is the number of
//! generations back (from the current one) that hold as many keys as the cache, with half of
//! the oldest of them counted (its keys were requested before and after the key in question
//! alike); a request whose key was last requested beyond the reach is a miss of the LRU. A
//! generation closes once a quarter of the cache's worth of keys were first requested in it
//! ([`GENS`]). With a memory of every stamp the estimate is within 1.7% of an exact LRU's
//! misses on every synthetic workload of the hit-ratio table (measured; the unit test below
//! allows 3%).
//!
//! # Where it is kept
//! Only keys of a sample take part ([`sampled`]: one in eight up to 16,383 entries, so 256 or
//! more in a cache with the estimate; sparser above, 1,024 or more), so that the others' hits
//! stay as they were.
//! A sampled key's last generation is kept modulo 64 in the six high bits of its node's CLOCK
//! byte ([`STAMP_SHIFT`]), and in its ghost record once it is evicted; a key in neither is new.
//! A reader that hits a sampled node stamped with an older generation stores the current one
//! with its counter bump (the node's byte is the one a hit already writes, and it writes it at
//! most once per generation per key) and counts the move in its thread's stripe of [`Recent`]:
//! plain loads and stores to lines that thread alone writes (unless more threads than stripes
//! read, when a collision can lose a count, which only blurs the estimate). The maintainer
//! counts misses (it sees every insert) with the generation its ghost record gives. The
//! policies hand their counts to the contest in batches; the contest adds the readers' stripes
//! to the histogram, closes the generation when it is full, and publishes the generation and
//! the reach in one word that readers load. When hits are so many that no miss makes a policy
//! report for a whole generation, a reader closes it itself (a compare-and-swap on the word,
//! the one shared write of the read path, once per a generation's worth of that thread's first
//! requests), lengthening the reach by one: the new generation holds no key yet.
//!
//! A key untouched for 64 generations aliases (its stamp looks recent again), which makes the
//! estimate count too few distinct keys: measured with a memory that never forgets, 0.88-0.95x
//! on Zipf at 1000 entries; a cache rarely holds such a key, and a ghost record that old is
//! usually gone.

use crate::sync::{AtomicU32, Ordering};
use crossbeam_utils::CachePadded;

/// Generations per cache's worth of distinct keys (a generation closes once as many keys as
/// the cache holds, over this, were requested in it).
const GENS: u64 = 4;
/// The CLOCK byte's bits above the counter hold the generation stamp.
pub(crate) const STAMP_SHIFT: u32 = 2;
/// Generations modulo which a stamp is kept (six bits, in a node and in a ghost record).
pub(crate) const NODE_STAMPS: u32 = 64;
const STAMPS: usize = NODE_STAMPS as usize;
/// Stripes of the readers' counts.
const STRIPES: usize = 4;
/// Decay per window of the adaptive mode's trend (about four windows of memory).
const ADAPTIVE_KEEP: f64 = 0.75;
/// Decay per window of the adaptive mode's longer trend (about twenty windows).
const LONG_KEEP: f64 = 0.95;
/// Decay per window of the recency mode's trend (about ten windows).
const RECENCY_KEEP: f64 = 0.9;
/// By how much (a fraction of the misses) the other mode must be predicted to do better.
const MARGIN: f64 = 0.04;
/// Standard deviations by which the predicted misses must be below the real ones.
const Z: f64 = 2.0;
/// An early switch (within a window, [`Estimate::adaptive_early`]): the largest fraction of
/// the adaptive mode's misses the estimate may predict, and the standard deviations.
const EARLY_FRACTION: f64 = 0.25;
const Z_EARLY: f64 = 4.0;
/// An early test looks at the last `1 / EARLY_PART` of a window (its own counts, not the
/// window's so far: a window that began before a sweep's reversal would dilute them).
const EARLY_PART: u64 = 16;
/// Windows during which early switches are allowed, counted from the one in which the cache
/// first evicted (that one included): the first reversal of a sweep, after the filling cache
/// kept its first keys. Later, the
/// windows' trend decides alone (allowed throughout, the early test cost phases at 4000 two
/// points: `docs/policy-log.md`, thirteenth session).
const EARLY_WINDOWS: u32 = 4;
/// Windows not counted after a switch.
const SETTLE: u32 = 1;
/// Fewest sampled keys the cache must hold for a window to count.
const MIN_SAMPLED: u64 = 64;
/// Sampled keys a large cache is meant to hold at least: the sample is one key in eight in a
/// cache of up to 16,383 entries, and sparser in larger ones (one in 2^k from 2^(k+10)
/// entries on, one in 256 from 262,144), keeping at least this many (see [`sample_bits`]).
const SAMPLED_KEYS: u64 = 1024;
/// Sample rates, as `log2` of one in how many keys: the densest and the sparsest.
const SAMPLE_BITS_MIN: u32 = 3;
const SAMPLE_BITS_MAX: u32 = 8;

/// The sample rate (`log2` of one key in how many) for a cache of `capacity` entries, or
/// for a weighted cache (whose capacity says nothing of its entry count): one in eight.
pub(crate) fn sample_bits(capacity: u64, weighted: bool) -> u32 {
    let per = capacity / SAMPLED_KEYS;
    if weighted || per < 2 {
        return SAMPLE_BITS_MIN;
    }
    (63 - per.leading_zeros()).clamp(SAMPLE_BITS_MIN, SAMPLE_BITS_MAX)
}

/// Whether a key with `hash` takes part in an estimate sampling one key in `2^bits` (`bits`
/// in `1..64`), picked by the top bits of a mix of the hash, so that the choice does not follow
/// the bits that pick the shard, the bucket, the policy's partition or the ghost's fingerprint.
/// (The top bits of the hash times an odd constant alone follow the hash's own top bits, which
/// pick the shard: with 8 shards the sample fell on a few of them, and scan-hot at 4000 lost
/// 1.3 points.) Spatial sampling of this kind estimates an LRU's miss ratio from a fraction of
/// the keys (Waldspurger et al., SHARDS, FAST'15).
#[inline]
pub(crate) fn sampled(hash: u64, bits: u32) -> bool {
    mix(hash) < threshold(bits)
}

/// The mix [`sampled`] compares.
#[inline]
pub(crate) fn mix(hash: u64) -> u64 {
    (hash ^ (hash >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The bound below which [`mix`] samples a key at a rate of `bits` (0: none).
pub(crate) fn threshold(bits: u32) -> u64 {
    if bits == 0 { 0 } else { 1 << (64 - bits) }
}

/// What kind of request a stamp's age makes of a key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Request {
    /// Beyond the reach: a miss of the recency mode.
    New,
    /// Requested earlier within the reach, not in this generation.
    Again,
    /// Requested in this generation already: nothing to count.
    Same,
}

impl Request {
    /// The request of a key last stamped `stamp` when the generation is `now` and ages
    /// below `reach` are within it (all modulo [`NODE_STAMPS`]).
    pub(crate) fn of(stamp: u32, now: u32, reach: u32) -> Request {
        let age = now.wrapping_sub(stamp) % NODE_STAMPS;
        if age == 0 {
            Request::Same
        } else if age < reach {
            Request::Again
        } else {
            Request::New
        }
    }
}

/// One thread's counts of the requests it found stamped in an older generation (all
/// wrapping).
struct Stripe {
    /// Requests of keys beyond the reach.
    new: AtomicU32,
    /// Requests by the generation the key moved into (the reader's current one).
    into: [AtomicU32; STAMPS],
    /// Requests by the generation the key was stamped in before.
    out: [AtomicU32; STAMPS],
    /// This thread's first requests of keys in the generation `since_generation`.
    since: AtomicU32,
    since_generation: AtomicU32,
}

/// The generation and its reach, in one word so that a reader sees a pair published
/// together; and the length of a generation in one thread's first requests.
struct Clock {
    /// The generation (low 16 bits) and the reach (high 16 bits).
    word: AtomicU32,
    /// A reader moves the generation on after this many first requests of keys in a
    /// generation since it last did: the maintainer, which otherwise moves it on, hears of hits only
    /// when a miss makes it report, and a long run of hits would all land in one generation.
    span: AtomicU32,
}

/// The estimate's state that readers see: the current generation, its reach, and their
/// counts.
pub(crate) struct Recent {
    /// The sample rate ([`sample_bits`]), or 0 for a cache without the estimate (no contest).
    bits: u32,
    clock: CachePadded<Clock>,
    /// [`STRIPES`] of them, none in a cache without the estimate (about 2.5 KiB).
    stripes: Box<[CachePadded<Stripe>]>,
}

/// A load and a store of `c + 1`, not an atomic add: a stripe is one thread's (a collision
/// loses a count, which only blurs the estimate), and a hit must not pay a locked instruction.
#[inline]
fn bump(c: &AtomicU32) -> u32 {
    // Relaxed: counts for an estimate; the contest reads them with Relaxed loads.
    let n = c.load(Ordering::Relaxed).wrapping_add(1);
    c.store(n, Ordering::Relaxed);
    n
}

impl Recent {
    /// The readers' counts of moves within the reach and beyond it, summed (for tests).
    #[cfg(all(test, not(loom)))]
    fn readers(&self) -> (u32, u32) {
        let mut beyond = 0u32;
        let mut moved = 0u32;
        for stripe in &self.stripes {
            // Relaxed: counts for an estimate (see `bump`).
            beyond = beyond.wrapping_add(stripe.new.load(Ordering::Relaxed));
            for c in &stripe.out {
                moved = moved.wrapping_add(c.load(Ordering::Relaxed));
            }
        }
        (beyond, moved.wrapping_sub(beyond))
    }

    pub(crate) fn new(bits: u32) -> Self {
        debug_assert!(bits < 64);
        Recent {
            bits,
            clock: CachePadded::new(Clock {
                word: AtomicU32::new(NODE_STAMPS << 16),
                span: AtomicU32::new(16),
            }),
            stripes: (0..if bits == 0 { 0 } else { STRIPES })
                .map(|_| {
                    CachePadded::new(Stripe {
                        new: AtomicU32::new(0),
                        into: std::array::from_fn(|_| AtomicU32::new(0)),
                        out: std::array::from_fn(|_| AtomicU32::new(0)),
                        since: AtomicU32::new(0),
                        since_generation: AtomicU32::new(0),
                    })
                })
                .collect(),
        }
    }

    /// The sample rate, or 0 without the estimate.
    pub(crate) fn bits(&self) -> u32 {
        self.bits
    }

    #[inline]
    fn word(&self) -> u32 {
        // Relaxed: the clock only sorts requests for an estimate; a thread that sees the
        // previous word for a while counts a few requests in the wrong generation.
        self.clock.word.load(Ordering::Relaxed)
    }

    /// The current generation modulo [`NODE_STAMPS`], and the reach.
    #[inline]
    pub(crate) fn now(&self) -> (u32, u32) {
        let c = self.word();
        ((c & 0xFFFF) % NODE_STAMPS, c >> 16)
    }

    /// The CLOCK byte of a node inserted now (counter 0).
    #[inline]
    pub(crate) fn fresh_byte(&self) -> u8 {
        (self.now().0 << STAMP_SHIFT) as u8
    }

    /// Moves the generation on from the one in `word`, unless someone else did. The new
    /// generation holds no key yet, so every generation within the reach is one older: the
    /// reach grows by one (until the contest recomputes it).
    fn advance_from(&self, word: u32) {
        let reach = ((word >> 16) + 1).min(NODE_STAMPS);
        let next = (reach << 16) | (word.wrapping_add(1) & 0xFFFF);
        // Relaxed: see `word`; a failure means another thread moved the generation on or the
        // contest published a new reach, either of which will do.
        let _ = self
            .clock
            .word
            .compare_exchange(word, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A hit on a node whose CLOCK byte is `byte`, with a counter that saturates at
    /// `counter_max`: the byte to store, if any (the counter bumped, the stamp made current),
    /// having counted the request if the stamp was older.
    #[inline]
    pub(crate) fn hit(&self, byte: u8, counter_max: u8) -> Option<u8> {
        let word = self.word();
        let (now, reach) = ((word & 0xFFFF) % NODE_STAMPS, word >> 16);
        let stamp = u32::from(byte >> STAMP_SHIFT);
        let counter = byte & ((1 << STAMP_SHIFT) - 1);
        let bumped = counter.saturating_add(1).min(counter_max);
        let request = Request::of(stamp, now, reach);
        if request == Request::Same {
            return (bumped != counter).then_some(byte - counter + bumped);
        }
        self.refreshed(word, stamp, request);
        Some(((now << STAMP_SHIFT) as u8) | bumped)
    }

    /// Counts a hit that moved a key from generation `stamp` into the current one.
    #[cold]
    fn refreshed(&self, word: u32, stamp: u32, request: Request) {
        let now = (word & 0xFFFF) % NODE_STAMPS;
        // None in a cache without the estimate, whose hits never get here.
        let Some(stripe) = self.stripes.get(crate::sync::thread_index() % STRIPES) else {
            return;
        };
        bump(&stripe.out[stamp as usize]);
        if request == Request::New {
            bump(&stripe.new);
        }
        bump(&stripe.into[now as usize]);
        // Relaxed: see `word`.
        let generation = word & 0xFFFF;
        // Relaxed: as in `bump`.
        if stripe.since_generation.load(Ordering::Relaxed) != generation {
            stripe.since_generation.store(generation, Ordering::Relaxed);
            stripe.since.store(0, Ordering::Relaxed);
        }
        // Relaxed: see `word`.
        if bump(&stripe.since) >= self.clock.span.load(Ordering::Relaxed) {
            // A rare shared write: this thread alone saw a generation's worth of first
            // requests in it, and no miss made the maintainer move it on.
            self.advance_from(word);
        }
    }
}

/// Whether `predicted` misses (of the other mode) are below `real` ones (of the mode running)
/// by more than [`MARGIN`] and by more than [`Z`] standard deviations, taking the counts as
/// Poisson (the sampled misses are a few hundred per window in a small cache, where a trend
/// of two or three windows favouring the other mode by 8% is noise).
fn clearly_below(predicted: f64, real: f64) -> bool {
    predicted < real * (1.0 - MARGIN) && real - predicted > Z * (real + predicted).sqrt()
}

/// What a wrapping count summed over the stripes gained since `seen` (which moves to `now`), or
/// 0 if it went back: two threads that share a stripe can each load a count and store it plus
/// one, and the later store can undo the earlier thread's counts (read as a gain of almost
/// 2^32, it would have flooded the histogram; `seen` stays, so the count is caught up with).
fn forward(seen: &mut u32, now: u32) -> u64 {
    let gain = now.wrapping_sub(*seen) as i32;
    if gain > 0 {
        *seen = now;
        gain as u64
    } else {
        0
    }
}

/// Misses summed over windows with a decay per window.
#[derive(Clone, Copy, Debug, Default)]
struct Trend {
    /// The cache's own misses.
    real: f64,
    /// The estimate's (an LRU's).
    estimated: f64,
}

impl Trend {
    fn add(&mut self, keep: f64, real: u64, estimated: u64) {
        self.real = self.real * keep + real as f64;
        self.estimated = self.estimated * keep + estimated as f64;
    }

    /// The cache's misses over the estimate's (`None` before any estimate).
    fn ratio(&self) -> Option<f64> {
        (self.estimated > 0.0).then(|| self.real / self.estimated)
    }
}

/// The maintainer's side of the estimate, kept by the contest.
#[derive(Debug)]
pub(crate) struct Estimate {
    /// The generation, as far as the estimate has followed it (16 bits, like the clock's).
    generation: u32,
    /// Sampled keys whose last request was in each generation (by stamp), as far as the
    /// estimate knows.
    keys: [u64; STAMPS],
    /// The readers' counts at the last collection, summed over the stripes.
    seen_new: u32,
    seen_into: [u32; STAMPS],
    seen_out: [u32; STAMPS],
    /// First requests of sampled keys in a generation since the window began.
    window_requests: u64,
    /// Misses of the cache in this window (sampled keys).
    misses: u64,
    /// Estimated misses of an LRU in this window (sampled keys).
    estimated: u64,
    /// `window_requests`, `misses` and `estimated` where the last early test left them.
    early: [u64; 3],
    /// Windows ended since the cache first evicted (the one it first evicted in included).
    windows: u32,
    /// Entries the cache holds (the policies' reports of their counts).
    pub(crate) entries: i64,
    /// The adaptive mode against the estimate since the last switch ([`ADAPTIVE_KEEP`]),
    /// which decides the way to the recency mode.
    adaptive: Trend,
    /// The adaptive mode against the estimate over a longer past ([`LONG_KEEP`]), which
    /// predicts the adaptive mode's misses while the recency mode runs.
    adaptive_long: Trend,
    /// The recency mode against the estimate over its past windows ([`RECENCY_KEEP`]).
    recency: Trend,
    /// Windows still to skip after a switch (the switch's own transient).
    settle: u32,
    /// Whether a policy has evicted.
    full: bool,
}

impl Default for Estimate {
    fn default() -> Self {
        Estimate {
            generation: 0,
            keys: [0; STAMPS],
            seen_new: 0,
            seen_into: [0; STAMPS],
            seen_out: [0; STAMPS],
            window_requests: 0,
            misses: 0,
            estimated: 0,
            early: [0; 3],
            windows: 0,
            entries: 0,
            adaptive: Trend::default(),
            adaptive_long: Trend::default(),
            recency: Trend::default(),
            settle: 0,
            full: false,
        }
    }
}

/// A policy's counts for the estimate since its last report.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Misses {
    /// Misses.
    pub(crate) all: u64,
    /// Misses of keys beyond the reach (no ghost record, or an old one).
    pub(crate) new: u64,
    /// Misses of keys with a ghost record, by its stamp.
    pub(crate) moved: [u32; STAMPS],
    /// Misses by the generation they happened in (the new node's stamp).
    pub(crate) into: [u32; STAMPS],
    /// Whether the policy evicted.
    pub(crate) evicted: bool,
}

impl Default for Misses {
    fn default() -> Self {
        Misses {
            all: 0,
            new: 0,
            moved: [0; STAMPS],
            into: [0; STAMPS],
            evicted: false,
        }
    }
}

impl Estimate {
    /// Adds a policy's misses and the readers' counts since the last call, and publishes the
    /// clock: the generation moves on when as many keys were first requested in it as the
    /// cache holds over [`GENS`], and the reach is the number of generations back within
    /// which as many distinct keys as the cache holds were requested. Returns whether the
    /// window (`window` first requests of keys in a generation) is complete.
    pub(crate) fn add(&mut self, recent: &Recent, misses: &Misses, window: u64) -> bool {
        // Follow the generations the readers moved on to (their counts go there).
        let word = recent.word();
        let mut behind = (word & 0xFFFF).wrapping_sub(self.generation) & 0xFFFF;
        while behind > 0 {
            self.generation = (self.generation + 1) & 0xFFFF;
            self.keys[self.generation as usize % STAMPS] = 0;
            behind -= 1;
            if behind > NODE_STAMPS {
                // Everything is older than the stamps reach: skip to the clock's generation.
                self.generation = (word & 0xFFFF).wrapping_sub(NODE_STAMPS) & 0xFFFF;
                behind = NODE_STAMPS;
            }
        }
        let now = self.generation as usize % STAMPS;
        let mut new = 0u32;
        let mut into = [0u32; STAMPS];
        let mut out = [0u32; STAMPS];
        for stripe in &recent.stripes {
            // Relaxed: counts for an estimate (see `bump`).
            new = new.wrapping_add(stripe.new.load(Ordering::Relaxed));
            for g in 0..STAMPS {
                into[g] = into[g].wrapping_add(stripe.into[g].load(Ordering::Relaxed));
                out[g] = out[g].wrapping_add(stripe.out[g].load(Ordering::Relaxed));
            }
        }
        let readers_new = forward(&mut self.seen_new, new);
        let mut requests = 0;
        for g in 0..STAMPS {
            let came = forward(&mut self.seen_into[g], into[g]) + u64::from(misses.into[g]);
            let left = forward(&mut self.seen_out[g], out[g]) + u64::from(misses.moved[g]);
            requests += came;
            self.keys[g] = (self.keys[g] + came).saturating_sub(left);
        }
        self.misses += misses.all;
        self.estimated += misses.new + readers_new;
        self.full |= misses.evicted;
        self.window_requests += requests;
        let entries = self.sampled_entries(recent.bits);
        let span = (entries / GENS).max(1);
        // Relaxed: see `Recent::word`; only the contest, under its lock, writes the span.
        recent
            .clock
            .span
            .store(u32::try_from(span).unwrap_or(u32::MAX), Ordering::Relaxed);
        if self.keys[now] >= span {
            recent.advance_from(word);
            if recent.word() & 0xFFFF != word & 0xFFFF {
                self.generation = (self.generation + 1) & 0xFFFF;
                self.keys[self.generation as usize % STAMPS] = 0;
            }
        }
        let now = self.generation as usize % STAMPS;
        let mut reach = NODE_STAMPS;
        let mut sum = 0;
        for age in 0..STAMPS {
            let k = self.keys[(now + STAMPS - age) % STAMPS];
            if sum + k / 2 >= entries {
                reach = age as u32;
                break;
            }
            sum += k;
        }
        // Publish the reach with the generation (a reader may move it on meanwhile).
        let mut word = recent.word();
        loop {
            let next = (reach << 16) | (word & 0xFFFF);
            // Relaxed: see `Recent::word`.
            match recent.clock.word.compare_exchange_weak(
                word,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(w) => word = w,
            }
        }
        self.window_requests >= window
    }

    /// The sampled keys the cache holds, about, at a sample rate of `bits`.
    pub(crate) fn sampled_entries(&self, bits: u32) -> u64 {
        (u64::try_from(self.entries).unwrap_or(0) >> bits).max(16)
    }

    /// Starts a new window.
    pub(crate) fn restart(&mut self) {
        self.early = [0; 3];
        self.window_requests = 0;
        self.misses = 0;
        self.estimated = 0;
    }

    /// At the end of a window of the adaptive mode: whether the recency mode would miss less
    /// (the estimate, times what the recency mode has missed over the estimate when it last
    /// ran, at least 1, is below the adaptive mode's misses by more than [`MARGIN`], over
    /// the windows since the last switch).
    pub(crate) fn adaptive_window(&mut self, bits: u32) -> bool {
        if self.settled(bits) {
            return false;
        }
        self.adaptive
            .add(ADAPTIVE_KEEP, self.misses, self.estimated);
        self.adaptive_long
            .add(LONG_KEEP, self.misses, self.estimated);
        let rho = self.recency.ratio().unwrap_or(1.0).clamp(1.0, 2.0);
        clearly_below(self.adaptive.estimated * rho, self.adaptive.real)
    }

    /// Within a window of the adaptive mode, during the cache's first windows
    /// ([`EARLY_WINDOWS`]): whether the last `1 / EARLY_PART` of a window alone shows the
    /// recency mode far ahead (the estimate, times `rho` as in [`Self::adaptive_window`], at
    /// most [`EARLY_FRACTION`] of the adaptive mode's misses, by [`Z_EARLY`] standard
    /// deviations). At the first reversal of a back-and-forth sweep every request the adaptive
    /// mode misses is one an LRU would hit; waiting for the window's end (up to a window of
    /// requests, as many as the cache holds) let the adaptive mode's duels evict the keys the
    /// reversal asks for next (sweep at 5000, by hasher: the switch came 400 to 4,400 requests
    /// after the reversal).
    pub(crate) fn adaptive_early(&mut self, bits: u32, window: u64) -> bool {
        let [requests, misses, estimated] = self.early;
        if self.window_requests < requests + (window / EARLY_PART).max(1) {
            return false;
        }
        self.early = [self.window_requests, self.misses, self.estimated];
        if !self.full
            || self.windows >= EARLY_WINDOWS
            || self.settle > 0
            || (u64::try_from(self.entries).unwrap_or(0) >> bits) < MIN_SAMPLED
        {
            return false;
        }
        let rho = self.recency.ratio().unwrap_or(1.0).clamp(1.0, 2.0);
        let predicted = self.estimated.saturating_sub(estimated) as f64 * rho;
        let real = self.misses.saturating_sub(misses) as f64;
        predicted < real * EARLY_FRACTION && real - predicted > Z_EARLY * (real + predicted).sqrt()
    }

    /// At the end of a window of the recency mode: whether the adaptive mode would miss
    /// less (its misses over the estimate's in its longer past, times the estimate, against
    /// the recency mode's own, over its recent past, by more than [`MARGIN`]).
    pub(crate) fn recency_window(&mut self, bits: u32) -> bool {
        if self.settled(bits) {
            return false;
        }
        self.recency.add(RECENCY_KEEP, self.misses, self.estimated);
        let (Some(alpha), Some(rho)) = (self.adaptive_long.ratio(), self.recency.ratio()) else {
            return false;
        };
        rho > 1.0 + MARGIN && clearly_below(self.recency.estimated * alpha, self.recency.real)
    }

    /// Whether this window is not counted: the cache has not evicted yet (every miss is
    /// compulsory, whatever the mode), it holds too few sampled keys at the sample rate `bits`
    /// for an estimate ([`MIN_SAMPLED`]: a weighted cache of a few large entries, or one whose
    /// capacity shrank), or the window falls in the settling after a switch.
    fn settled(&mut self, bits: u32) -> bool {
        if self.full {
            self.windows = self.windows.saturating_add(1);
        }
        if !self.full || (u64::try_from(self.entries).unwrap_or(0) >> bits) < MIN_SAMPLED {
            return true;
        }
        if self.settle > 0 {
            self.settle -= 1;
            return true;
        }
        false
    }

    /// The cache switched modes (by the estimate or by the samples' contest): the adaptive
    /// mode's trend since the last switch starts over, and the next window is not counted.
    pub(crate) fn switched(&mut self) {
        self.adaptive = Trend::default();
        self.settle = SETTLE;
        self.restart();
    }
}

#[cfg(all(test, not(loom)))]
#[path = "../../tests/shapes/mod.rs"]
mod shapes;

#[cfg(all(test, not(loom)))]
mod tests {
    use super::shapes;
    use super::*;

    /// An estimate of a full cache holding 5000 sampled keys, in the middle of a window.
    fn early_estimate() -> Estimate {
        Estimate {
            entries: 5000,
            full: true,
            ..Estimate::default()
        }
    }

    /// Adds one segment of `requests` sampled requests, `misses` of them missed by the cache
    /// and `estimated` by the LRU estimate, and runs the early test.
    fn segment(est: &mut Estimate, requests: u64, misses: u64, estimated: u64) -> bool {
        est.window_requests += requests;
        est.misses += misses;
        est.estimated += estimated;
        est.adaptive_early(0, 5000)
    }

    #[test]
    fn an_early_switch_needs_a_clear_segment_in_the_first_windows() {
        let part = 5000 / EARLY_PART;
        // A segment where the cache misses what an LRU would hit: switch, even after a
        // first segment where both missed everything (a window begun before a reversal).
        let mut est = early_estimate();
        assert!(!segment(&mut est, part, part, part));
        assert!(segment(&mut est, part, part * 9 / 10, part / 10));
        // Not before a segment is complete.
        let mut est = early_estimate();
        assert!(!segment(&mut est, part / 2, part / 2, 0));
        // Not where the estimate predicts more than EARLY_FRACTION of the misses.
        let mut est = early_estimate();
        assert!(!segment(&mut est, part, part / 2, part / 4));
        // Not before the cache is full, nor after its first windows.
        let mut est = Estimate {
            full: false,
            ..early_estimate()
        };
        assert!(!segment(&mut est, part, part, 0));
        let mut est = Estimate {
            windows: EARLY_WINDOWS,
            ..early_estimate()
        };
        assert!(!segment(&mut est, part, part, 0));
        // Nor while a switch settles.
        let mut est = early_estimate();
        est.switched();
        assert!(!segment(&mut est, part, part, 0));
        // The windows that end count (the window of the first eviction among them).
        let mut est = early_estimate();
        for _ in 0..EARLY_WINDOWS {
            est.adaptive_window(0);
            est.restart();
        }
        assert!(!segment(&mut est, part, part, 0));
    }

    /// Runs the estimate over `keys` for a cache of `capacity` entries with a memory of every
    /// sampled key's stamp for 56 generations (what a cache and its ghost keep, roughly; a
    /// stamp kept longer would alias), reporting after every 16 misses of the LRU (a cache of
    /// that size misses about as often; the policies report every 16 misses).
    /// Returns the estimated misses and an LRU's real misses, both of the sampled keys.
    fn estimate_and_lru(keys: &[u64], capacity: u64) -> (u64, u64) {
        let recent = Recent::new(SAMPLE_BITS_MIN);
        let mut est = Estimate {
            entries: capacity as i64,
            ..Estimate::default()
        };
        let mut lru = lru::LruCache::new(std::num::NonZeroUsize::new(capacity as usize).unwrap());
        let mut lru_misses = 0;
        let mut memory: std::collections::HashMap<u64, (u8, u32)> = Default::default();
        let mut misses = Misses::default();
        let mut estimated = 0;
        let mut unreported = 0;
        for &k in keys {
            let in_lru = lru.get(&k).is_some();
            if !in_lru {
                lru.put(k, ());
            }
            if !sampled(k, SAMPLE_BITS_MIN) {
                continue;
            }
            lru_misses += u64::from(!in_lru);
            unreported += u64::from(!in_lru);
            let generation = est.generation;
            match memory.get_mut(&k) {
                Some((byte, at)) if generation.wrapping_sub(*at) & 0xFFFF < NODE_STAMPS - 8 => {
                    if let Some(next) = recent.hit(*byte, 3) {
                        *byte = next;
                        *at = generation;
                    }
                }
                _ => {
                    misses.all += 1;
                    misses.new += 1;
                    misses.into[recent.now().0 as usize] += 1;
                    memory.insert(k, (recent.fresh_byte(), generation));
                }
            }
            if unreported >= 16 {
                unreported = 0;
                est.add(&recent, &misses, u64::MAX);
                estimated += est.estimated;
                est.restart();
                misses = Misses::default();
            }
        }
        est.add(&recent, &misses, u64::MAX);
        (estimated + est.estimated, lru_misses)
    }

    #[test]
    fn a_hit_writes_only_when_the_byte_changes() {
        let recent = Recent::new(SAMPLE_BITS_MIN);
        let fresh = recent.fresh_byte();
        // Same generation: the counter is bumped until it saturates, then nothing is written
        // (a hot entry's reads stay free of stores).
        assert_eq!(recent.hit(fresh, 3), Some(fresh + 1));
        assert_eq!(recent.hit(fresh + 2, 3), Some(fresh + 3));
        assert_eq!(recent.hit(fresh + 3, 3), None);
        assert_eq!(recent.readers(), (0, 0), "nothing counted");
        // A new generation: the stamp is renewed once, and the move counted once.
        let word = recent.word();
        recent.advance_from(word);
        let (now, _) = recent.now();
        let next = recent.hit(fresh + 3, 3).expect("a new stamp");
        assert_eq!(u32::from(next >> STAMP_SHIFT), now);
        assert_eq!(next & 3, 3);
        assert_eq!(recent.hit(next, 3), None);
        assert_eq!(recent.readers(), (0, 1), "one move, within the reach");
    }

    #[test]
    fn requests_are_sorted_by_the_age_of_their_stamp() {
        assert_eq!(Request::of(5, 5, 8), Request::Same);
        assert_eq!(Request::of(4, 5, 8), Request::Again);
        assert_eq!(Request::of(62, 5, 8), Request::Again, "ages wrap modulo 64");
        assert_eq!(Request::of(61, 5, 8), Request::New);
        assert_eq!(
            Request::of(5, 6, 1),
            Request::New,
            "a reach of 1: only this generation"
        );
        assert_eq!(
            Request::of(7, 6, 64),
            Request::Again,
            "the whole stamp range"
        );
    }

    #[test]
    fn larger_caches_sample_fewer_keys() {
        assert_eq!(sample_bits(2048, false), 3);
        assert_eq!(sample_bits(16_383, false), 3);
        assert_eq!(sample_bits(65_536, false), 6);
        assert_eq!(sample_bits(1 << 30, false), 8);
        assert_eq!(
            sample_bits(1 << 30, true),
            3,
            "weights say nothing of the entry count"
        );
        // About one key in 2^bits is sampled in every shard: hashes that share their top bits
        // (the shard's) and vary below them.
        for bits in [3, 6] {
            for shard in 0..8u64 {
                let n = (0..1u64 << 16)
                    .filter(|&i| {
                        let low = i.wrapping_mul(0xD6E8_FEB8_6659_FD93) >> 3;
                        sampled(shard << 61 | low, bits)
                    })
                    .count();
                let expected = (1usize << 16) >> bits;
                assert!(
                    n.abs_diff(expected) < expected / 5,
                    "{n} of 65536 in shard {shard} at {bits}"
                );
            }
        }
        // A cache without the estimate samples nothing, not even a hash that mixes to 0.
        assert_eq!(Recent::new(0).bits(), 0);
        assert!(!sampled(0, 0));
        assert!(sampled(0, 3) && sampled(0, 8));
    }

    /// An estimate of a full cache of `entries` sampled keys at a rate of one in 8.
    fn full(entries: i64) -> Estimate {
        Estimate {
            entries: entries << SAMPLE_BITS_MIN,
            full: true,
            ..Estimate::default()
        }
    }

    /// Ends a window with `real` misses of the cache and `estimated` of an LRU.
    fn window(e: &mut Estimate, real: u64, estimated: u64, adaptive: bool) -> bool {
        e.misses = real;
        e.estimated = estimated;
        let switch = if adaptive {
            e.adaptive_window(SAMPLE_BITS_MIN)
        } else {
            e.recency_window(SAMPLE_BITS_MIN)
        };
        e.restart();
        switch
    }

    #[test]
    fn the_recency_mode_is_chosen_when_an_lru_would_miss_clearly_less() {
        // 10% fewer misses of a thousand: a switch at the first window.
        let mut e = full(1000);
        assert!(window(&mut e, 1000, 900, true));
        // 2% fewer: within the margin, never.
        let mut e = full(1000);
        for _ in 0..50 {
            assert!(!window(&mut e, 500, 490, true));
        }
        // 15% fewer of a hundred is noise (two standard deviations of 185 misses are 27)...
        let mut e = full(1000);
        assert!(!window(&mut e, 100, 85, true));
        // ...until the windows add up (a decay of 3/4: the sums tend to 4 windows' worth): at
        // the seventh, 346.6 and 294.6, 52 apart, two standard deviations 50.8.
        let switched = (1..20).position(|_| window(&mut e, 100, 85, true));
        assert_eq!(switched, Some(5));
    }

    #[test]
    fn windows_before_the_first_eviction_after_a_switch_or_of_a_tiny_sample_do_not_count() {
        let mut e = full(1000);
        e.full = false;
        assert!(
            !window(&mut e, 500, 100, true),
            "every miss is compulsory while it fills"
        );
        let mut e = full(MIN_SAMPLED as i64 - 1);
        assert!(!window(&mut e, 500, 100, true), "too few sampled keys");
        let mut e = full(1000);
        e.switched();
        assert!(!window(&mut e, 500, 100, true), "the switch's own window");
        assert!(window(&mut e, 500, 100, true));
    }

    #[test]
    fn the_recency_modes_excess_over_an_lru_raises_the_bar() {
        // The recency mode ran and missed 20% more than the estimate: an LRU 10% better than
        // the adaptive mode does not make the recency mode better.
        let mut e = full(1000);
        for _ in 0..20 {
            window(&mut e, 600, 500, false);
        }
        assert!(!window(&mut e, 500, 450, true));
        // 30% better does.
        let mut e2 = full(1000);
        e2.recency = e.recency;
        assert!(window(&mut e2, 500, 350, true));
    }

    #[test]
    fn the_way_back_needs_a_recency_mode_worse_than_an_lru() {
        // The adaptive mode missed 20% less than the estimate in its past.
        let mut e = full(1000);
        for _ in 0..40 {
            window(&mut e, 400, 500, true);
        }
        e.switched();
        window(&mut e, 0, 0, false); // the switch's window
        // The recency mode as good as the estimate: no way back on the estimate's word
        // (the workload may have turned; the samples' contest decides that).
        assert!(!window(&mut e, 500, 500, false));
        // The recency mode 15% over the estimate, where the adaptive mode was 20% under it:
        // back.
        let back = (0..10).position(|_| window(&mut e, 575, 500, false));
        assert!(back.is_some(), "{back:?}");
    }

    #[test]
    fn a_count_that_goes_back_adds_nothing() {
        // Two threads on one stripe: the later store undid two of the earlier thread's counts.
        let recent = Recent::new(SAMPLE_BITS_MIN);
        let mut e = full(1000);
        let count = &recent.stripes[0].into[0];
        count.store(103, Ordering::Relaxed);
        e.add(&recent, &Misses::default(), u64::MAX);
        assert_eq!(e.keys[0], 103);
        count.store(101, Ordering::Relaxed);
        e.add(&recent, &Misses::default(), u64::MAX);
        assert_eq!(e.keys[0], 103, "not 103 + 2^32 - 2");
        count.store(105, Ordering::Relaxed);
        e.add(&recent, &Misses::default(), u64::MAX);
        assert_eq!(e.keys[0], 105, "caught up from the last count seen");
    }

    #[test]
    #[cfg_attr(miri, ignore = "hundreds of thousands of requests")]
    fn the_estimate_follows_an_lru_on_every_synthetic_shape() {
        for shape in shapes::SHAPES {
            let keys = (shape.keys)();
            for &size in shape.sizes {
                let (estimated, lru) = estimate_and_lru(&keys, size);
                let ratio = estimated as f64 / lru as f64;
                assert!(
                    (0.97..=1.03).contains(&ratio),
                    "{} at {size}: estimated {estimated}, an LRU missed {lru}",
                    shape.name
                );
            }
        }
    }
}
