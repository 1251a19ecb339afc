//! Interleaved throughput comparison of `evanesce` and its peers: the figures for the README.
//!
//! ```text
//! cargo run --release --example compare
//! ROUNDS=3 WORKLOADS=mixed_100,mixed_90 cargo run --release --example compare
//! ```
//!
//! Criterion (`benches/throughput.rs`) measures one cache after another, so on a shared,
//! noisy machine its ratios drift with whatever else the machine was doing at the time. This
//! program measures the caches *interleaved*: for each round, for each workload and thread
//! count, every cache runs the same pre-generated operation streams, in an order rotated from
//! one measurement to the next. At the end it prints, per workload and thread count, the
//! median Mops/s of each cache over the rounds, the ratios of evanesce to each peer and the
//! 1 -> 2 thread scaling of evanesce and quick_cache, as a Markdown table. A ratio is the median
//! of the per-round ratios (the two caches of a pair ran seconds apart, under the same machine
//! load), so it need not equal the quotient of the two medians shown.
//!
//! Environment variables (all optional):
//! - `ROUNDS` (default 7): rounds of interleaved measurements.
//! - `OPS` (default 4M; `K`/`M` suffixes accepted): length of each thread's stream, the most
//!   operations a thread runs in one measurement.
//! - `MEASURE_MS` (default 400): a measurement also ends after this long, so that slow caches
//!   (moka) take no longer than fast ones; throughput is operations done / time taken.
//! - `WORKLOADS` (default all): comma-separated subset of
//!   `get_hit,get_miss,mixed_100,mixed_90,insert,replace_hot`.
//! - `THREADS` (default `1,2`): comma-separated thread counts.
//! - `CACHES` (default all): comma-separated subset of the peers (`evanesce` always runs), e.g.
//!   `quick_cache,moka`.
//!
//! A default run takes about 3 minutes on 2 cores (more when the machine is busy), a third
//! of it building and populating caches (moka's populate and drop take about a second each).
//!
//! Workloads (u64 keys and values, a key space of 2^20 keys, 2^19 of them resident):
//! - key = `scramble(rank)`, a fixed bijection on u64, so that popular ranks land on keys spread
//!   over the whole u64 range; ranks `0..2^19` (the popular half) are inserted before timing;
//! - `get_hit`: Zipf(0.99) over the resident ranks, so every get hits;
//! - `get_miss`: uniform over ranks `2^20..2^21`, which are never inserted, so every get misses;
//! - `insert`: inserts of Zipf(0.99) ranks over the whole key space (replacements and new keys);
//! - `mixed_100`: gets of Zipf(0.99) ranks over the whole key space (about 95% hit);
//! - `mixed_90`: the same stream, each operation an insert with probability 0.1 (decided when
//!   the stream is generated);
//! - `replace_hot`: every thread inserts the same resident key (rank 0) over and over: one
//!   session written on every request, from every thread.
//!
//! Every stream is generated before timing from a seeded RNG, a different seed per thread.
//! Workloads that insert run on a freshly built and populated cache for every measurement;
//! read-only workloads share one populated cache per cache kind and round.
//!
//! This file is also the harness of `benches/throughput.rs`, which includes it as a module:
//! the workloads, the caches ([`variants`]) and the timed loop are defined once, here.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

// ---------------------------------------------------------------------------------------------
// Harness shared with benches/throughput.rs
// ---------------------------------------------------------------------------------------------

/// Number of distinct keys the Zipf streams draw from.
pub const KEY_SPACE: u64 = 1 << 20;

/// Number of keys inserted before timing: ranks `0..RESIDENT`.
pub const RESIDENT: u64 = KEY_SPACE / 2;

/// Capacity every cache is built with (pre-sized tables, or the bound of bounded caches). It is
/// the whole key space, so that no cache evicts: the measurements compare the concurrent maps.
pub const CAPACITY: usize = KEY_SPACE as usize;

/// Zipf exponent of the skewed streams.
pub const ZIPF_EXPONENT: f64 = 0.99;

/// Share of inserts in `mixed_90`.
pub const MIXED_INSERT_SHARE: f64 = 0.1;

/// A time-to-live long enough never to expire during a run, for the "TTL on" variants.
pub const LONG_TTL: Duration = Duration::from_secs(3600);

/// The key of a rank: a bijection on u64 (an offset, then xor-shifts and odd multipliers, each
/// invertible), so distinct ranks give distinct keys and consecutive ranks give unrelated ones.
pub fn scramble(rank: u64) -> u64 {
    let mut x = rank.wrapping_add(0x2545_f491_4f6c_dd1d);
    x ^= x >> 31;
    x = x.wrapping_mul(0xd6e8_feb8_6659_fd93);
    x ^= x >> 29;
    x = x.wrapping_mul(0xa076_1d64_78bd_642f);
    x ^= x >> 32;
    x
}

/// One pre-generated operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `get(key)`.
    Get(u64),
    /// `insert(key, key)`.
    Insert(u64),
}

/// A workload of the performance contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Workload {
    /// Zipf gets restricted to resident keys: all hits.
    GetHit,
    /// Uniform gets of keys that are never inserted: all misses.
    GetMiss,
    /// Zipf inserts over the whole key space.
    Insert,
    /// Zipf gets over the whole key space.
    Mixed100,
    /// Zipf operations over the whole key space, 90% gets and 10% inserts.
    Mixed90,
    /// Inserts of one resident key, from every thread: a session written on every request.
    ReplaceHot,
}

impl Workload {
    /// Every workload, in the order they are measured and reported.
    pub const ALL: [Workload; 6] = [
        Workload::GetHit,
        Workload::GetMiss,
        Workload::Mixed100,
        Workload::Mixed90,
        Workload::Insert,
        Workload::ReplaceHot,
    ];

    /// The name used in reports, group names and `WORKLOADS`.
    pub fn name(self) -> &'static str {
        match self {
            Workload::GetHit => "get_hit",
            Workload::GetMiss => "get_miss",
            Workload::Insert => "insert",
            Workload::Mixed100 => "mixed_100",
            Workload::Mixed90 => "mixed_90",
            Workload::ReplaceHot => "replace_hot",
        }
    }

    /// The workload called `name`, if any.
    pub fn from_name(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }

    /// Whether the workload changes the cache's contents (and so needs a fresh cache).
    pub fn mutates(self) -> bool {
        matches!(
            self,
            Workload::Insert | Workload::Mixed90 | Workload::ReplaceHot
        )
    }

    /// The operation stream of thread `thread`: `len` operations from an RNG seeded by the
    /// workload and the thread, so every run (and the bench) sees the same streams.
    pub fn stream(self, thread: usize, len: usize) -> Vec<Op> {
        let seed = 0xe7a4_e5ce_0000_0000 ^ ((self as u64) << 16) ^ thread as u64;
        let mut rng = StdRng::seed_from_u64(seed);
        let zipf = |n: u64| match Zipf::new(n as f64, ZIPF_EXPONENT) {
            Ok(z) => z,
            Err(e) => panic!("invalid Zipf parameters: {e}"),
        };
        // Zipf samples are ranks counted from 1.
        let rank = |z: &Zipf<f64>, rng: &mut StdRng| z.sample(rng) as u64 - 1;
        let resident = zipf(RESIDENT);
        let all = zipf(KEY_SPACE);
        (0..len)
            .map(|_| match self {
                Workload::GetHit => Op::Get(scramble(rank(&resident, &mut rng))),
                Workload::GetMiss => Op::Get(scramble(rng.random_range(KEY_SPACE..2 * KEY_SPACE))),
                Workload::Insert => Op::Insert(scramble(rank(&all, &mut rng))),
                // Rank 0: the most popular key, resident before timing.
                Workload::ReplaceHot => Op::Insert(scramble(0)),
                Workload::Mixed100 => Op::Get(scramble(rank(&all, &mut rng))),
                Workload::Mixed90 => {
                    let key = scramble(rank(&all, &mut rng));
                    if rng.random_bool(MIXED_INSERT_SHARE) {
                        Op::Insert(key)
                    } else {
                        Op::Get(key)
                    }
                }
            })
            .collect()
    }

    /// The streams of threads `0..threads`, generated in parallel.
    pub fn streams(self, threads: usize, len: usize) -> Vec<Vec<Op>> {
        thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| s.spawn(move || self.stream(t, len)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("stream generation panicked"))
                .collect()
        })
    }
}

/// The operations a cache under test offers, with u64 keys and values.
pub trait Subject: Sync {
    /// Looks `key` up.
    fn get(&self, key: u64) -> Option<u64>;
    /// Stores `value` for `key`.
    fn insert(&self, key: u64, value: u64);
    /// Finishes deferred maintenance, so it does not spill into the first measurement.
    fn settle(&self) {}
}

impl Subject for evanesce::Cache<u64, u64> {
    #[inline]
    fn get(&self, key: u64) -> Option<u64> {
        evanesce::Cache::get(self, &key)
    }
    #[inline]
    fn insert(&self, key: u64, value: u64) {
        evanesce::Cache::insert(self, key, value);
    }
    fn settle(&self) {
        self.run_pending_tasks();
    }
}

impl Subject for quick_cache::sync::Cache<u64, u64> {
    #[inline]
    fn get(&self, key: u64) -> Option<u64> {
        quick_cache::sync::Cache::get(self, &key)
    }
    #[inline]
    fn insert(&self, key: u64, value: u64) {
        quick_cache::sync::Cache::insert(self, key, value);
    }
}

impl Subject for moka::sync::Cache<u64, u64> {
    #[inline]
    fn get(&self, key: u64) -> Option<u64> {
        moka::sync::Cache::get(self, &key)
    }
    #[inline]
    fn insert(&self, key: u64, value: u64) {
        moka::sync::Cache::insert(self, key, value);
    }
    fn settle(&self) {
        self.run_pending_tasks();
    }
}

impl Subject for papaya::HashMap<u64, u64> {
    // The plain API: one pin (an epoch guard) per operation.
    #[inline]
    fn get(&self, key: u64) -> Option<u64> {
        self.pin().get(&key).copied()
    }
    #[inline]
    fn insert(&self, key: u64, value: u64) {
        self.pin().insert(key, value);
    }
}

impl Subject for dashmap::DashMap<u64, u64> {
    #[inline]
    fn get(&self, key: u64) -> Option<u64> {
        dashmap::DashMap::get(self, &key).map(|v| *v)
    }
    #[inline]
    fn insert(&self, key: u64, value: u64) {
        dashmap::DashMap::insert(self, key, value);
    }
}

/// What one timed run did.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// From the first thread's release by the barrier to the last thread's end.
    pub elapsed: Duration,
    /// Operations executed by all threads.
    pub ops: u64,
    /// Gets that found a value.
    pub hits: u64,
    /// Gets executed.
    pub gets: u64,
}

impl Run {
    /// Millions of operations per second.
    pub fn mops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// A cache under test, type-erased; the timed loop inside is monomorphised per cache.
pub trait Runnable {
    /// Inserts the resident keys (ranks `0..RESIDENT`), then lets maintenance finish.
    fn populate(&self);
    /// Runs `count` operations on each thread `t` from `streams[t]`, starting at index `start`
    /// and wrapping around at its end; all threads are released by one barrier. With a
    /// `budget`, each thread also stops once that much time has passed since its release
    /// (it looks at the clock every [`CHUNK`] operations).
    fn run(&self, streams: &[Vec<Op>], start: usize, count: u64, budget: Option<Duration>) -> Run;
}

impl<S: Subject> Runnable for S {
    fn populate(&self) {
        for rank in 0..RESIDENT {
            let key = scramble(rank);
            self.insert(key, key);
        }
        self.settle();
    }

    fn run(&self, streams: &[Vec<Op>], start: usize, count: u64, budget: Option<Duration>) -> Run {
        let barrier = Barrier::new(streams.len());
        let spans: Vec<Span> = thread::scope(|s| {
            let handles: Vec<_> = streams
                .iter()
                .map(|ops| {
                    let barrier = &barrier;
                    s.spawn(move || worker(self, ops, start, count, budget, barrier))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("worker panicked"))
                .collect()
        });
        let start = spans.iter().map(|s| s.start).min();
        let end = spans.iter().map(|s| s.end).max();
        Run {
            elapsed: match (start, end) {
                (Some(start), Some(end)) => end - start,
                _ => Duration::ZERO,
            },
            ops: spans.iter().map(|s| s.ops).sum(),
            hits: spans.iter().map(|s| s.hits).sum(),
            gets: spans.iter().map(|s| s.gets).sum(),
        }
    }
}

/// What one worker thread did, and when.
struct Span {
    start: Instant,
    end: Instant,
    ops: u64,
    hits: u64,
    gets: u64,
}

/// Operations between two looks at the clock when a run has a time budget.
pub const CHUNK: usize = 1024;

/// The timed loop of one thread.
fn worker<S: Subject>(
    cache: &S,
    ops: &[Op],
    start: usize,
    count: u64,
    budget: Option<Duration>,
    barrier: &Barrier,
) -> Span {
    assert!(!ops.is_empty(), "empty operation stream");
    barrier.wait();
    let t0 = Instant::now();
    let deadline = budget.map(|b| t0 + b);
    let (mut pos, mut left) = (start % ops.len(), count);
    let (mut hits, mut gets) = (0u64, 0u64);
    while left > 0 {
        let n = CHUNK
            .min(ops.len() - pos)
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        for op in &ops[pos..pos + n] {
            match *op {
                Op::Get(key) => {
                    gets += 1;
                    hits += u64::from(black_box(cache.get(key)).is_some());
                }
                Op::Insert(key) => cache.insert(key, key),
            }
        }
        pos = (pos + n) % ops.len();
        left -= n as u64;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    let end = Instant::now();
    Span {
        start: t0,
        end,
        ops: count - left,
        hits: black_box(hits),
        gets,
    }
}

/// A cache under test: its name and how to build it.
pub struct Variant {
    /// Name in reports and bench ids.
    pub name: &'static str,
    build: Box<dyn Fn(usize) -> Box<dyn Runnable>>,
}

impl Variant {
    /// A variant built by `build(capacity)`.
    pub fn of<S: Subject + 'static>(name: &'static str, build: fn(usize) -> S) -> Variant {
        Variant {
            name,
            build: Box::new(move |cap| Box::new(build(cap))),
        }
    }

    /// A new cache of [`CAPACITY`] holding the resident keys.
    pub fn populated(&self) -> Box<dyn Runnable> {
        let cache = (self.build)(capacity());
        cache.populate();
        cache
    }
}

/// The caches under test, evanesce first (the ratios are evanesce's to each of the others).
/// One line per variant: a "TTL on" variant is one more line.
///
/// Each uses its crate's default hasher: ahash (evanesce), foldhash (quick_cache), and std's
/// SipHash-1-3 `RandomState` (moka, papaya, dashmap), which costs those three some
/// nanoseconds per operation. Bounded caches get the whole key space as capacity, so none
/// evicts, and the maps are pre-sized to it.
pub fn variants() -> Vec<Variant> {
    if bounded_suite() {
        // The eviction issue's workloads: 2^19 entries resident in caches bounded at 2^19
        // (an insert of a key not resident evicts one), time to live on where the cache has
        // one (quick_cache has none).
        return vec![
            Variant::of("evanesce", |cap| {
                evanesce::Cache::<u64, u64>::builder()
                    .max_capacity(cap as u64)
                    .time_to_live(LONG_TTL)
                    .build()
                    .expect("valid")
            }),
            Variant::of("quick_cache", quick_cache::sync::Cache::<u64, u64>::new),
            Variant::of("moka", |cap| {
                moka::sync::Cache::<u64, u64>::builder()
                    .max_capacity(cap as u64)
                    .time_to_live(LONG_TTL)
                    .build()
            }),
        ];
    }
    vec![
        Variant::of("evanesce", |cap| {
            evanesce::Cache::<u64, u64>::builder()
                .initial_capacity(cap)
                .build()
                .expect("valid")
        }),
        Variant::of("evanesce_ttl", |cap| {
            evanesce::Cache::<u64, u64>::builder()
                .initial_capacity(cap)
                .time_to_live(LONG_TTL)
                .build()
                .expect("valid")
        }),
        Variant::of("quick_cache", quick_cache::sync::Cache::<u64, u64>::new),
        Variant::of("moka", |cap| {
            moka::sync::Cache::<u64, u64>::builder()
                .max_capacity(cap as u64)
                .build()
        }),
        Variant::of("papaya", papaya::HashMap::<u64, u64>::with_capacity),
        Variant::of("dashmap", dashmap::DashMap::<u64, u64>::with_capacity),
    ]
}

/// `SUITE=bounded`: the caches bounded at the resident count, with time to live on (the
/// eviction issue's measurement); otherwise pre-sized for the whole key space, so nothing is
/// evicted (the core issue's measurement).
pub fn bounded_suite() -> bool {
    std::env::var("SUITE").is_ok_and(|s| s == "bounded")
}

/// The capacity caches are built with (see [`bounded_suite`]).
pub fn capacity() -> usize {
    if bounded_suite() {
        RESIDENT as usize
    } else {
        CAPACITY
    }
}

// ---------------------------------------------------------------------------------------------
// The interleaved comparison
// ---------------------------------------------------------------------------------------------

/// The variant the ratios are computed for.
const SUBJECT: &str = "evanesce";
/// The variants whose 1 -> 2 thread scaling is reported.
const SCALING: [&str; 2] = ["evanesce", "quick_cache"];

struct Settings {
    rounds: usize,
    ops: usize,
    budget: Duration,
    workloads: Vec<Workload>,
    threads: Vec<usize>,
}

fn settings() -> Result<Settings, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let rounds = match var("ROUNDS") {
        Some(v) => v.trim().parse().map_err(|e| format!("ROUNDS={v}: {e}"))?,
        None => 7,
    };
    let ops = match var("OPS") {
        Some(v) => {
            parse_count(&v).ok_or_else(|| format!("OPS={v}: expected e.g. 500000, 500K, 2M"))?
        }
        None => 4_000_000,
    };
    let budget = match var("MEASURE_MS") {
        Some(v) => Duration::from_millis(
            v.trim()
                .parse()
                .map_err(|e| format!("MEASURE_MS={v}: {e}"))?,
        ),
        None => Duration::from_millis(400),
    };
    let workloads = match var("WORKLOADS") {
        Some(v) => v
            .split(',')
            .map(|n| {
                Workload::from_name(n.trim()).ok_or_else(|| {
                    let all: Vec<_> = Workload::ALL.iter().map(|w| w.name()).collect();
                    format!(
                        "WORKLOADS: unknown workload {n:?} (known: {})",
                        all.join(",")
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Workload::ALL.to_vec(),
    };
    let threads = match var("THREADS") {
        Some(v) => v
            .split(',')
            .map(|n| match n.trim().parse::<usize>() {
                Ok(t) if t > 0 => Ok(t),
                _ => Err(format!("THREADS: bad thread count {n:?}")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => vec![1, 2],
    };
    if rounds == 0 || ops == 0 || workloads.is_empty() || threads.is_empty() {
        return Err("ROUNDS, OPS, WORKLOADS and THREADS must not be zero or empty".into());
    }
    Ok(Settings {
        rounds,
        ops,
        budget,
        workloads,
        threads,
    })
}

/// `1500`, `500K`, `2M` (decimal multiples).
fn parse_count(s: &str) -> Option<usize> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1_000),
        (i, 'm' | 'M') => (&s[..i], 1_000_000),
        _ => (s, 1),
    };
    digits.trim().parse::<usize>().ok()?.checked_mul(mult)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn command_line() -> String {
    let mut cmd = String::new();
    for name in ["ROUNDS", "OPS", "MEASURE_MS", "WORKLOADS", "THREADS"] {
        if let Ok(v) = std::env::var(name) {
            let _ = write!(cmd, "{name}={v} ");
        }
    }
    let args: Vec<String> = std::env::args().collect();
    cmd + &args.join(" ")
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt_mops(m: f64) -> String {
    if m >= 10.0 {
        format!("{m:.1}")
    } else {
        format!("{m:.2}")
    }
}

/// Measurements: `(workload, threads, variant index)` to one Mops/s figure per round.
type Results = HashMap<(Workload, usize, usize), Vec<f64>>;

fn main() {
    let s = match settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("compare: {e}");
            std::process::exit(2);
        }
    };
    let mut variants = variants();
    // `CACHES=evanesce,quick_cache`: only those (evanesce, the ratios' numerator, always).
    if let Ok(keep) = std::env::var("CACHES") {
        let keep: Vec<&str> = keep.split(',').map(str::trim).collect();
        variants.retain(|v| v.name == "evanesce" || keep.contains(&v.name));
    }
    let parallelism = thread::available_parallelism().map_or(1, |n| n.get());
    let max_threads = s.threads.iter().copied().max().unwrap_or(1);

    println!("## Throughput, interleaved ({})\n", env!("CARGO_PKG_NAME"));
    println!(
        "- machine: {} ({parallelism} available threads)",
        cpu_model()
    );
    println!("- command: `{}`", command_line());
    println!(
        "- {} rounds; a measurement: {} ops per thread or {} ms, whichever ends first; \
         key space 2^20, 2^19 resident; Zipf exponent {ZIPF_EXPONENT}",
        s.rounds,
        s.ops,
        s.budget.as_millis()
    );
    if bounded_suite() {
        println!(
            "- each cache with its crate's default hasher (evanesce ahash, quick_cache foldhash, \
             moka SipHash-1-3); bounded at 2^19 entries with a 1 h time to live (evanesce, moka; \
             quick_cache has no TTL), so inserts of keys not resident evict"
        );
    } else {
        println!(
            "- each cache with its crate's default hasher (evanesce ahash, quick_cache foldhash, \
             moka/papaya/dashmap SipHash-1-3); capacity 2^20, so nothing is evicted; \
             evanesce_ttl has a 1 h time to live"
        );
    }
    println!();

    let gen_start = Instant::now();
    let streams: HashMap<Workload, Vec<Vec<Op>>> = s
        .workloads
        .iter()
        .map(|&w| (w, w.streams(max_threads, s.ops)))
        .collect();
    eprintln!("streams generated in {:.1?}", gen_start.elapsed());

    let nv = variants.len();
    let mut results: Results = HashMap::new();
    let mut hit_ratio: HashMap<(Workload, usize), Vec<f64>> = HashMap::new();
    let started = Instant::now();
    let mut measurement = 0usize;
    let (mut setup, mut timed) = (Duration::ZERO, Duration::ZERO);
    for round in 0..s.rounds {
        // Populated caches for the read-only workloads of this round, built on first use.
        let mut shared: Vec<Option<Box<dyn Runnable>>> = (0..nv).map(|_| None).collect();
        for &w in &s.workloads {
            for &t in &s.threads {
                let mut line = format!("round {}/{} {:>9}/{t}t:", round + 1, s.rounds, w.name());
                for j in 0..nv {
                    let vi = (j + measurement) % nv;
                    let setup_start = Instant::now();
                    let mut fresh = None;
                    let cache: &dyn Runnable = if w.mutates() {
                        &**fresh.insert(variants[vi].populated())
                    } else {
                        &**shared[vi].get_or_insert_with(|| variants[vi].populated())
                    };
                    setup += setup_start.elapsed();
                    let run = cache.run(&streams[&w][..t], 0, s.ops as u64, Some(s.budget));
                    timed += run.elapsed;
                    let drop_start = Instant::now();
                    drop(fresh);
                    setup += drop_start.elapsed();
                    results.entry((w, t, vi)).or_default().push(run.mops());
                    if run.gets > 0 {
                        let ratio = run.hits as f64 / run.gets as f64;
                        hit_ratio.entry((w, vi)).or_default().push(ratio);
                    }
                    let _ = write!(line, " {} {}", variants[vi].name, fmt_mops(run.mops()));
                }
                measurement += 1;
                eprintln!("{line}");
            }
        }
        let drop_start = Instant::now();
        drop(shared);
        setup += drop_start.elapsed();
    }
    eprintln!(
        "done in {:.1?}: {timed:.1?} timed, {setup:.1?} building and populating caches",
        started.elapsed()
    );

    print_table(&s, &variants, &results, &hit_ratio);
}

fn print_table(
    s: &Settings,
    variants: &[Variant],
    results: &Results,
    hit_ratio: &HashMap<(Workload, usize), Vec<f64>>,
) {
    let index = |name: &str| variants.iter().position(|v| v.name == name);
    let Some(me) = index(SUBJECT) else { return };
    let peers: Vec<usize> = (0..variants.len()).filter(|&i| i != me).collect();
    let scaled: Vec<usize> = SCALING.iter().filter_map(|n| index(n)).collect();
    let lowest = s.threads.iter().copied().min().unwrap_or(1);

    // Median of the per-round ratios a[r] / b[r].
    let paired = |a: &[f64], b: &[f64]| {
        let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
        median(&ratios)
    };

    let mut head = String::from("| workload | threads | hits |");
    let mut rule = String::from("|---|--:|--:|");
    for v in variants {
        let _ = write!(head, " {} |", v.name);
        rule.push_str("--:|");
    }
    for &p in &peers {
        let _ = write!(head, " {SUBJECT} / {} |", variants[p].name);
        rule.push_str("--:|");
    }
    let others: Vec<String> = s
        .threads
        .iter()
        .filter(|&&t| t != lowest)
        .map(|t| t.to_string())
        .collect();
    for &i in &scaled {
        let _ = write!(
            head,
            " {} {lowest}→{}t |",
            variants[i].name,
            others.join("/")
        );
        rule.push_str("--:|");
    }
    println!(
        "Median Mops/s over {} rounds (higher is better); ratios and scaling are",
        s.rounds
    );
    println!("medians of per-round ratios.\n");
    println!("{head}\n{rule}");

    let mut spread = Vec::new();
    for &w in &s.workloads {
        for &t in &s.threads {
            let hits = match hit_ratio.get(&(w, me)) {
                Some(r) => format!("{:.0}%", median(r) * 100.0),
                None => "–".to_string(),
            };
            let mut row = format!("| {} | {t} | {hits} |", w.name());
            for vi in 0..variants.len() {
                let m = &results[&(w, t, vi)];
                let _ = write!(row, " {} |", fmt_mops(median(m)));
                let lo = m.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = m.iter().copied().fold(0.0, f64::max);
                spread.push(format!(
                    "{}/{t}t {}: {}..{}",
                    w.name(),
                    variants[vi].name,
                    fmt_mops(lo),
                    fmt_mops(hi)
                ));
            }
            for &p in &peers {
                let r = paired(&results[&(w, t, me)], &results[&(w, t, p)]);
                let _ = write!(row, " {r:.2}× |");
            }
            for &i in &scaled {
                if t == lowest {
                    row.push_str(" – |");
                } else {
                    let r = paired(&results[&(w, t, i)], &results[&(w, lowest, i)]);
                    let _ = write!(row, " {r:.2}× |");
                }
            }
            println!("{row}");
        }
    }

    // Caches that should agree on the hit ratio (none evicts); a mismatch means a broken run.
    for &w in &s.workloads {
        let Some(reference) = hit_ratio.get(&(w, me)).map(|r| median(r)) else {
            continue;
        };
        for (vi, v) in variants.iter().enumerate() {
            if let Some(r) = hit_ratio.get(&(w, vi)).map(|r| median(r))
                && (r - reference).abs() > 0.01
            {
                println!(
                    "\nwarning: {}: {} hit {:.1}% but {SUBJECT} {:.1}%",
                    w.name(),
                    v.name,
                    r * 100.0,
                    reference * 100.0
                );
            }
        }
    }

    println!("\n<details><summary>Range (min..max Mops/s over the rounds)</summary>\n");
    for line in spread {
        println!("- {line}");
    }
    println!("\n</details>");
}
