//! Long concurrent churn with invariants checked throughout. `#[ignore]`d: run with
//! `cargo test --profile stress --test stress -- --ignored --test-threads 1`
//! (optimised, with debug assertions on, one test at a time so each has the machine).
#![allow(clippy::disallowed_types)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;

use evanesce::{Cache, RemovalCause};

mod harness;
use harness::Rng;

const THREADS: u64 = 8;

fn ops_per_thread() -> u64 {
    std::env::var("STRESS_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// A value that counts its live instances (created minus dropped).
struct Tracked {
    stamp: u64,
    live: Arc<AtomicU64>,
}

impl Tracked {
    fn new(stamp: u64, live: &Arc<AtomicU64>) -> Self {
        live.fetch_add(1, Ordering::Relaxed);
        Tracked {
            stamp,
            live: live.clone(),
        }
    }
}

impl Clone for Tracked {
    fn clone(&self) -> Self {
        Tracked::new(self.stamp, &self.live)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Waits (up to 10 s) for every value to be dropped. Retired values are freed by the
/// reclaimer and crossbeam-epoch once every thread that could hold them has moved on; a thread
/// descheduled while pinned (the reclaimer in the middle of a collection, on a loaded 2-core
/// machine) delays that by milliseconds, so a fixed number of flushes is not a bound. A value
/// never freed within the deadline is a leak and fails the test.
fn settle(live: &AtomicU64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while live.load(Ordering::Relaxed) != 0 && std::time::Instant::now() < deadline {
        crossbeam_epoch::pin().flush();
        thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// Each thread owns a key range and writes increasing versions of its own keys (never
/// reading a stale one back), while all threads also fight over a small shared range
/// (replace / remove / get / get_or_insert_with races, where any value read must be one that
/// some thread wrote for that key). At the end: `len` equals the owners' models plus the
/// shared keys present, every listener call matches a removal, and after the cache is dropped
/// every value ever created has been dropped exactly once.
#[test]
#[ignore]
fn owned_and_shared_keys_under_churn() {
    let live_values = Arc::new(AtomicU64::new(0));
    let notified = Arc::new(AtomicUsize::new(0));
    let counter = notified.clone();
    let cache: Cache<u64, Tracked> = Cache::builder()
        .shards(4)
        .eviction_listener(move |_, _, cause| {
            assert!(matches!(
                cause,
                RemovalCause::Replaced | RemovalCause::Explicit | RemovalCause::Cleared
            ));
            counter.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    const OWNED: u64 = 4096;
    const SHARED: u64 = 64;
    let ops = ops_per_thread();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let cache = cache.clone();
            let live_values = live_values.clone();
            thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t + 1));
                let mut mine: HashMap<u64, u64> = HashMap::new();
                let base = 1_000_000 * (t + 1);
                for seq in 0..ops {
                    let r = rng.next();
                    let stamp = (t << 48) | seq;
                    if !r.is_multiple_of(4) {
                        let k = base + r % OWNED;
                        match (r >> 8) % 8 {
                            0..=3 => {
                                cache.insert(k, Tracked::new(stamp, &live_values));
                                mine.insert(k, stamp);
                            }
                            4 => {
                                let got = cache.remove(&k).map(|v| v.stamp);
                                assert_eq!(got, mine.remove(&k), "lost update on owned key {k}");
                            }
                            _ => {
                                let got = cache.get(&k).map(|v| v.stamp);
                                assert_eq!(
                                    got,
                                    mine.get(&k).copied(),
                                    "stale read of owned key {k}"
                                );
                            }
                        }
                    } else {
                        let k = r % SHARED;
                        let check = |v: &Tracked| {
                            let writer = v.stamp >> 48;
                            assert!(writer < THREADS, "garbage value {:#x} for {k}", v.stamp);
                        };
                        match (r >> 8) % 4 {
                            0 => cache.insert(k, Tracked::new(stamp, &live_values)),
                            1 => {
                                if let Some(v) = cache.remove(&k) {
                                    check(&v);
                                }
                            }
                            2 => {
                                let v = cache
                                    .get_or_insert_with(k, || Tracked::new(stamp, &live_values));
                                check(&v);
                            }
                            _ => {
                                if let Some(v) = cache.get(&k) {
                                    check(&v);
                                }
                            }
                        }
                    }
                }
                mine
            })
        })
        .collect();
    let mut owned_total = 0;
    let mut models = Vec::new();
    for w in workers {
        let mine = w.join().unwrap();
        owned_total += mine.len();
        models.push(mine);
    }
    for (t, mine) in models.iter().enumerate() {
        for (k, stamp) in mine {
            assert_eq!(
                cache.get(k).map(|v| v.stamp),
                Some(*stamp),
                "thread {t} key {k}"
            );
        }
    }
    let shared_present = (0..SHARED).filter(|k| cache.contains_key(k)).count();
    assert_eq!(cache.len(), owned_total + shared_present);
    assert_eq!(cache.iter().count(), owned_total + shared_present);
    let stats = cache.stats();
    cache.run_pending_tasks();
    drop(cache);
    settle(&live_values);
    assert_eq!(
        live_values.load(Ordering::Relaxed),
        0,
        "values leaked or dropped twice"
    );
    assert_eq!(notified.load(Ordering::Relaxed) as u64, stats.removals);
    eprintln!(
        "{} threads x {} ops: {} inserts, {} removals",
        THREADS, ops, stats.inserts, stats.removals
    );
}

/// Readers hammer keys whose values writers keep replacing; a reader must only ever see a
/// value that was written for that key (no torn or freed value), while tables grow from one
/// bucket under the churn.
#[test]
#[ignore]
fn readers_never_see_foreign_or_freed_values() {
    let cache: Cache<u64, Arc<(u64, u64)>> = Cache::builder()
        .shards(2)
        .initial_capacity(0)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..THREADS / 2)
        .map(|t| {
            let cache = cache.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut rng = Rng(t + 77);
                let mut hits = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let k = rng.next() % 100_000;
                    if let Some(v) = cache.get(&k) {
                        assert_eq!(v.0, k, "value of another key");
                        assert_eq!(v.1, k.wrapping_mul(31) ^ (v.1 & 0xFFFF_0000_0000_0000));
                        hits += 1;
                    }
                }
                hits
            })
        })
        .collect();
    let writers: Vec<_> = (0..THREADS / 2)
        .map(|t| {
            let cache = cache.clone();
            thread::spawn(move || {
                let mut rng = Rng(t + 1000);
                for i in 0..ops_per_thread() {
                    let k = rng.next() % 100_000;
                    if i % 5 == 0 {
                        cache.remove(&k);
                    } else {
                        let version = (i & 0xFFFF) << 48;
                        cache.insert(k, Arc::new((k, k.wrapping_mul(31) ^ version)));
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let hits: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(hits > 0);
    let n = cache.len();
    assert_eq!(cache.iter().count(), n);
}

/// Concurrent weighted writers against a bounded cache, while a monitor samples the weight
/// held: it never exceeds the capacity by more than the documented slack
/// (`max(1, capacity / 64)`), whatever the number of writers; when they stop, it is at most
/// the capacity; and every value is reported or resident exactly once.
#[test]
#[ignore]
fn the_bound_holds_under_concurrent_writers() {
    const CAPACITY: u64 = 50_000;
    let slack = (CAPACITY / 64).max(1);
    let live_values = Arc::new(AtomicU64::new(0));
    let reported = Arc::new(AtomicU64::new(0));
    let counter = reported.clone();
    let cache: Cache<u64, Tracked> = Cache::builder()
        .max_capacity(CAPACITY)
        .weigher(|_, v: &Tracked| (v.stamp % 16) as u32 + 1)
        .eviction_listener(move |_, _, _| {
            counter.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let cache = cache.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            let mut samples = 0u64;
            let mut max_seen = 0;
            while !stop.load(Ordering::Relaxed) {
                let size = cache.weighted_size();
                max_seen = max_seen.max(size);
                assert!(size <= CAPACITY + slack, "{size} > {CAPACITY} + {slack}");
                samples += 1;
                thread::yield_now();
            }
            (samples, max_seen)
        })
    };
    let inserted = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let cache = cache.clone();
            let live_values = live_values.clone();
            let inserted = inserted.clone();
            thread::spawn(move || {
                let mut rng = Rng(t * 31 + 7);
                for i in 0..ops_per_thread() / 2 {
                    let r = rng.next();
                    let k = r % 200_000;
                    match r % 10 {
                        0 => drop(cache.remove(&k)),
                        1..=3 => drop(cache.get(&k)),
                        _ => {
                            cache.insert(k, Tracked::new((t << 48) | i, &live_values));
                            inserted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (samples, max_seen) = monitor.join().unwrap();
    let size = cache.weighted_size();
    assert!(size <= CAPACITY);
    let held: u64 = cache.iter().map(|(_, v)| v.stamp % 16 + 1).sum();
    assert_eq!(held, size);
    let resident = cache.len() as u64;
    assert_eq!(
        reported.load(Ordering::Relaxed) + resident,
        inserted.load(Ordering::Relaxed)
    );
    drop(cache);
    settle(&live_values);
    assert_eq!(live_values.load(Ordering::Relaxed), 0);
    eprintln!("{samples} samples, max weight seen {max_seen} (capacity {CAPACITY}, slack {slack})");
}
