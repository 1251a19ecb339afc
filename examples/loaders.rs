//! The loaders and computes of issue 17 against `get` and against moka, peers interleaved
//! round by round, medians:
//!
//! ```sh
//! ROUNDS=5 cargo run --release --example loaders
//! ```
//!
//! - `hit path`: `get_or_insert_with` of a resident key against `get` of the same keys (one
//!   thread, 2^16 resident `u64` keys);
//! - `herd`: 1,000 tokio tasks (a 2-worker multi-threaded runtime) ask for one missing key at
//!   once, `get_or_insert_async` against moka's `future::Cache::get_with`; the load yields a
//!   few times so that the others pile up behind it; 100 herds per round, each on a new key.
//!   Reported: herds per second and loads per herd (must be 1);
//! - `counter`: 2 threads increment random keys among 1,024 with `entry(k).and_upsert_with`,
//!   against moka's `sync::Cache` `entry(k).and_upsert_with`; the sums are checked.
//!
//! Environment: `ROUNDS` (default 5).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use evanesce::Cache;

const RESIDENT: u64 = 1 << 16;
const HIT_OPS: u64 = 4_000_000;
const HERD: usize = 1_000;
const HERDS: u64 = 100;
const COUNTER_KEYS: u64 = 1_024;
const COUNTER_OPS: u64 = 400_000;

fn key(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 29)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Millions of operations per second of `f` run `ops` times.
fn mops(ops: u64, f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    ops as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn hit_path(cache: &Cache<u64, u64>, loader: bool) -> f64 {
    mops(HIT_OPS, || {
        let mut sum = 0u64;
        for i in 0..HIT_OPS {
            let k = key(i & (RESIDENT - 1));
            sum = sum.wrapping_add(if loader {
                cache.get_or_insert_with(k, || unreachable!("every key is resident"))
            } else {
                cache.get(&k).expect("resident")
            });
        }
        std::hint::black_box(sum);
    })
}

/// One round of herds: herds per second, and loads per herd.
fn herds(rt: &tokio::runtime::Runtime, round: u64, evanesce: bool) -> (f64, f64) {
    let ours: Cache<u64, u64> = Cache::new();
    let moka: moka::future::Cache<u64, u64> = moka::future::Cache::new(1 << 20);
    let loads = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    rt.block_on(async {
        for h in 0..HERDS {
            let k = round * 1_000_000 + h;
            let mut tasks = Vec::with_capacity(HERD);
            for _ in 0..HERD {
                let (ours, moka, loads) = (ours.clone(), moka.clone(), loads.clone());
                tasks.push(tokio::spawn(async move {
                    let load = async {
                        loads.fetch_add(1, Ordering::Relaxed);
                        for _ in 0..4 {
                            tokio::task::yield_now().await;
                        }
                        k
                    };
                    if evanesce {
                        ours.get_or_insert_async(k, load).await
                    } else {
                        moka.get_with(k, load).await
                    }
                }));
            }
            for t in tasks {
                assert_eq!(t.await.expect("a task"), k);
            }
        }
    });
    let secs = start.elapsed().as_secs_f64();
    (
        HERDS as f64 / secs,
        loads.load(Ordering::Relaxed) as f64 / HERDS as f64,
    )
}

fn counter(evanesce: bool) -> f64 {
    let ours: Cache<u64, u64> = Cache::new();
    let moka: moka::sync::Cache<u64, u64> = moka::sync::Cache::new(1 << 20);
    let rate = mops(2 * COUNTER_OPS, || {
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let (ours, moka) = (&ours, &moka);
                s.spawn(move || {
                    let mut x = 0x2545_F491_4F6C_DD1D ^ (t + 1);
                    for _ in 0..COUNTER_OPS {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let k = x % COUNTER_KEYS;
                        if evanesce {
                            ours.entry(k).and_upsert_with(|n| n.map_or(1, |n| n + 1));
                        } else {
                            moka.entry(k)
                                .and_upsert_with(|e| e.map_or(1, |e| e.into_value() + 1));
                        }
                    }
                });
            }
        });
    });
    let total: u64 = if evanesce {
        ours.iter().map(|(_, n)| n).sum()
    } else {
        moka.iter().map(|(_, n)| n).sum()
    };
    assert_eq!(total, 2 * COUNTER_OPS, "an increment was lost");
    rate
}

fn main() {
    let rounds: u64 = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let cache: Cache<u64, u64> = Cache::builder()
        .initial_capacity(RESIDENT as usize)
        .build()
        .expect("a cache");
    for i in 0..RESIDENT {
        cache.insert(key(i), i);
    }
    let (mut get, mut load, mut hit_ratio) = (vec![], vec![], vec![]);
    let (mut herd_ours, mut herd_moka, mut herd_ratio) = (vec![], vec![], vec![]);
    let (mut loads_ours, mut loads_moka) = (0.0f64, 0.0f64);
    let (mut count_ours, mut count_moka, mut count_ratio) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        // Alternate which goes first, so that neither always runs on a warmer machine.
        let first = round % 2 == 0;
        let (g, l) = if first {
            let g = hit_path(&cache, false);
            (g, hit_path(&cache, true))
        } else {
            let l = hit_path(&cache, true);
            (hit_path(&cache, false), l)
        };
        get.push(g);
        load.push(l);
        hit_ratio.push(l / g);
        let ((o, lo), (m, lm)) = if first {
            let o = herds(&rt, 2 * round, true);
            (o, herds(&rt, 2 * round + 1, false))
        } else {
            let m = herds(&rt, 2 * round + 1, false);
            (herds(&rt, 2 * round, true), m)
        };
        loads_ours = loads_ours.max(lo);
        loads_moka = loads_moka.max(lm);
        herd_ours.push(o);
        herd_moka.push(m);
        herd_ratio.push(o / m);
        let (o, m) = if first {
            let o = counter(true);
            (o, counter(false))
        } else {
            let m = counter(false);
            (counter(true), m)
        };
        count_ours.push(o);
        count_moka.push(m);
        count_ratio.push(o / m);
        eprintln!(
            "round {}/{rounds}: get {g:.1} Mops/s, get_or_insert_with {l:.1}; herds/s evanesce {:.0} moka {:.0}; counter Mops/s evanesce {:.2} moka {:.2}",
            round + 1,
            herd_ours.last().unwrap(),
            herd_moka.last().unwrap(),
            count_ours.last().unwrap(),
            count_moka.last().unwrap(),
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("| benchmark | evanesce | peer | evanesce / peer (median of rounds) |");
    println!("|---|--:|--:|--:|");
    println!(
        "| hit path: `get_or_insert_with` vs `get`, Mops/s, 1 thread | {:.1} | {:.1} | {:.2}× |",
        median(&mut load),
        median(&mut get),
        median(&mut hit_ratio)
    );
    println!(
        "| herd of {HERD} tasks on one missing key, herds/s (vs moka `future::Cache::get_with`); most loads per herd: {loads_ours:.0} and {loads_moka:.0} | {:.0} | {:.0} | {:.2}× |",
        median(&mut herd_ours),
        median(&mut herd_moka),
        median(&mut herd_ratio)
    );
    println!(
        "| counter: `entry(k).and_upsert_with`, 2 threads, {COUNTER_KEYS} keys, Mops/s (vs moka `sync::Cache`) | {:.2} | {:.2} | {:.2}× |",
        median(&mut count_ours),
        median(&mut count_moka),
        median(&mut count_ratio)
    );
    println!("\n{rounds} rounds; `ROUNDS={rounds} cargo run --release --example loaders`");
}
