//! Calibration of the read path: how fast can a lookup in *this layout* be, with and without
//! crossbeam-epoch's pin, next to `evanesce` and quick_cache, in one process.
//!
//! ```text
//! cargo run --release --example read_path
//! ROUNDS=11 cargo run --release --example read_path
//! ```
//!
//! The hand-built table has evanesce's layout and nothing else: 8 shards chosen by the top
//! bits of the hash, each with 2^18 four-byte bucket heads and an array of 32-byte nodes
//! (`[deadline, next, key, value]`, cache-line aligned) threaded into chains by index, filled
//! with the same 2^19 keys in the same order. No expiry check, no CLOCK counter, no markers,
//! no growth. It is looked up three ways:
//! - `layout_pinned`: one `crossbeam_epoch::pin()` per lookup, as `Cache::get` does;
//! - `layout_fenced`: a `lock cmpxchg` and a store on a thread-private word instead (the
//!   barrier of a pin, without the rest of crossbeam's bookkeeping);
//! - `layout_bare`: no barrier (unsound for a concurrent table, shown only as the bound).
//!
//! And `evanesce_pinned` reads through [`Cache::pin`](evanesce::Cache::pin), one pin per 64
//! reads: the guard API for callers that batch their reads.
//!
//! All variants read the same pre-generated stream of Zipf(0.99) hits on one thread; rounds
//! rotate the order; the table prints medians of Mops/s and of per-round ratios to
//! quick_cache. docs/perf-log.md ("Where the read path stands") reads the result.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Zipf};

#[path = "compare.rs"]
#[allow(dead_code)]
mod compare;

use compare::{RESIDENT, ZIPF_EXPONENT, scramble};

const SHARD_BITS: u32 = 3;
const BUCKET_BITS: u32 = 18;
const NIL: u32 = u32::MAX;

/// One node: `[deadline, next, key, value]`, 32 bytes, two to a cache line.
#[repr(C, align(32))]
#[derive(Clone, Copy)]
struct Node([u64; 4]);

/// The hand-built table (see the module documentation).
struct Layout {
    buckets: Vec<Vec<u32>>,
    nodes: Vec<Vec<Node>>,
    hasher: ahash::RandomState,
}

impl Layout {
    fn new() -> Self {
        let shards = 1usize << SHARD_BITS;
        let mut t = Layout {
            buckets: (0..shards).map(|_| vec![NIL; 1 << BUCKET_BITS]).collect(),
            nodes: (0..shards)
                .map(|_| Vec::with_capacity(RESIDENT as usize))
                .collect(),
            hasher: ahash::RandomState::new(),
        };
        for rank in 0..RESIDENT {
            let key = scramble(rank);
            let (s, b) = t.place(key);
            let idx = t.nodes[s].len() as u32;
            let head = t.buckets[s][b];
            t.nodes[s].push(Node([u64::MAX, u64::from(head), key, rank]));
            t.buckets[s][b] = idx;
        }
        t
    }

    #[inline(always)]
    fn place(&self, key: u64) -> (usize, usize) {
        let h = self.hasher.hash_one(key);
        (
            (h >> (64 - SHARD_BITS)) as usize,
            (h as usize) & ((1 << BUCKET_BITS) - 1),
        )
    }

    #[inline(always)]
    fn get(&self, key: u64) -> Option<u64> {
        let (s, b) = self.place(key);
        let nodes = &self.nodes[s];
        let mut i = self.buckets[s][b];
        while i != NIL {
            let n = &nodes[i as usize].0;
            if n[2] == key {
                return Some(n[3]);
            }
            i = n[1] as u32;
        }
        None
    }
}

fn time(stream: &[u64], mut get: impl FnMut(u64) -> Option<u64>) -> f64 {
    let start = Instant::now();
    let mut sum = 0u64;
    for &k in stream {
        if let Some(v) = get(k) {
            sum = sum.wrapping_add(v);
        }
    }
    black_box(sum);
    stream.len() as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = match std::env::var("ROUNDS") {
        Ok(v) => match v.trim().parse() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("ROUNDS={v}: expected a positive integer");
                std::process::exit(2);
            }
        },
        Err(_) => 7,
    };
    let zipf = match Zipf::new(RESIDENT as f64, ZIPF_EXPONENT) {
        Ok(z) => z,
        Err(e) => {
            eprintln!("Zipf: {e}");
            std::process::exit(2);
        }
    };
    let mut rng = StdRng::seed_from_u64(7);
    let stream: Vec<u64> = (0..4_000_000)
        .map(|_| scramble(zipf.sample(&mut rng) as u64 - 1))
        .collect();

    let ev = match evanesce::Cache::<u64, u64>::builder()
        .initial_capacity(compare::CAPACITY)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("build: {e}");
            std::process::exit(2);
        }
    };
    let qc = quick_cache::sync::Cache::<u64, u64>::new(compare::CAPACITY);
    for rank in 0..RESIDENT {
        ev.insert(scramble(rank), rank);
        qc.insert(scramble(rank), rank);
    }
    let layout = Layout::new();
    // A thread-private word for `layout_fenced` (its own cache line in practice: a local).
    let word = AtomicU64::new(0);

    let names = [
        "evanesce",
        "evanesce_pinned",
        "quick_cache",
        "layout_pinned",
        "layout_fenced",
        "layout_bare",
    ];
    let mut mops: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..rounds {
        let mut this = [0.0; 6];
        for k in 0..names.len() {
            let v = (k + round) % names.len();
            this[v] = match v {
                0 => time(&stream, |k| ev.get(&k)),
                1 => {
                    let start = Instant::now();
                    let mut sum = 0u64;
                    for batch in stream.chunks(64) {
                        let pinned = ev.pin();
                        for k in batch {
                            if let Some(v) = pinned.get(k) {
                                sum = sum.wrapping_add(v);
                            }
                        }
                    }
                    black_box(sum);
                    stream.len() as f64 / start.elapsed().as_secs_f64() / 1e6
                }
                2 => time(&stream, |k| qc.get(&k)),
                3 => time(&stream, |k| {
                    let _guard = crossbeam_epoch::pin();
                    layout.get(k)
                }),
                4 => time(&stream, |k| {
                    // SeqCst: the full barrier under test (a `lock cmpxchg` on x86).
                    let _ = word.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst);
                    let found = layout.get(k);
                    // Release: the unpin-like store.
                    word.store(0, Ordering::Release);
                    found
                }),
                _ => time(&stream, |k| layout.get(k)),
            };
        }
        eprintln!(
            "round {}/{rounds}: {}",
            round + 1,
            names
                .iter()
                .zip(this)
                .map(|(n, m)| format!("{n} {m:.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        for v in 0..names.len() {
            mops[v].push(this[v]);
            ratios[v].push(this[v] / this[2]);
        }
    }
    println!("| variant | Mops/s (median) | / quick_cache (median of rounds) |");
    println!("|---|--:|--:|");
    for v in 0..names.len() {
        println!(
            "| {} | {:.1} | {:.2}× |",
            names[v],
            median(&mut mops[v]),
            median(&mut ratios[v])
        );
    }
}
