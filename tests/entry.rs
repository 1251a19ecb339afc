//! The entry API (atomic computes), `retain`, `policy` and `set_max_capacity`.
//!
//! The concurrent tests check linearizability through conservation laws that a lost or
//! doubled update breaks: increments by compute racing removals must add up exactly, and the
//! listener must hear every value that left, once, with its cause.
#![allow(clippy::disallowed_types)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use evanesce::{Cache, CapacityError, CompResult, Op, RemovalCause};

mod harness;
use harness::watchdog;

type Log = Arc<Mutex<Vec<(u64, u64, RemovalCause)>>>;

fn logged() -> (Cache<u64, u64>, Log) {
    let log: Log = Arc::default();
    let sink = log.clone();
    let cache = Cache::builder()
        .eviction_listener(move |k: &u64, v: &u64, cause| {
            sink.lock().unwrap().push((*k, *v, cause))
        })
        .build()
        .unwrap();
    (cache, log)
}

#[test]
fn compute_reports_what_happened() {
    let (cache, log) = logged();
    let bump = |cache: &Cache<u64, u64>| {
        cache.entry(1).and_compute_with(|v| match v {
            None => Op::Put(10),
            Some(&10) => Op::Put(11),
            Some(&11) => Op::Nop,
            Some(_) => Op::Remove,
        })
    };
    assert_eq!(bump(&cache), CompResult::Inserted(10));
    assert_eq!(bump(&cache), CompResult::ReplacedWith(11));
    assert_eq!(bump(&cache), CompResult::Unchanged(11));
    assert_eq!(cache.get(&1), Some(11));
    cache.insert(1, 12);
    assert_eq!(bump(&cache), CompResult::Removed(12));
    assert_eq!(cache.get(&1), None);
    assert_eq!(
        cache.entry(1).and_compute_with(|_| Op::Remove),
        CompResult::StillNone
    );
    assert_eq!(
        cache.entry(1).and_compute_with(|_| Op::<u64>::Nop),
        CompResult::StillNone
    );
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            (1, 10, RemovalCause::Replaced),
            (1, 11, RemovalCause::Replaced),
            (1, 12, RemovalCause::Explicit),
        ]
    );
    assert_eq!(cache.len(), 0);
}

#[test]
fn entry_loads_and_conditional_writes() {
    let cache = Cache::<&str, u32>::new();
    let e = cache.entry("a").or_insert(1);
    assert!(e.is_fresh() && !e.is_old_value_replaced());
    assert_eq!(*e.value(), 1);
    let e = cache.entry("a").or_insert(2);
    assert!(!e.is_fresh());
    assert_eq!(e.into_value(), 1);
    assert_eq!(cache.entry("b").or_default().into_value(), 0);
    assert_eq!(cache.entry("c").or_insert_with(|| 3).into_value(), 3);
    assert!(
        !cache
            .entry("c")
            .or_insert_with(|| unreachable!())
            .is_fresh()
    );

    // or_insert_with_if: replaces a live value only when asked to.
    let e = cache.entry("c").or_insert_with_if(|| 30, |v| *v == 3);
    assert!(e.is_fresh() && e.is_old_value_replaced());
    assert_eq!(cache.get("c"), Some(30));
    let e = cache
        .entry("c")
        .or_insert_with_if(|| unreachable!(), |v| *v == 3);
    assert!(!e.is_fresh());
    assert_eq!(e.into_value(), 30);

    assert_eq!(cache.entry("d").or_optionally_insert_with(|| None), None);
    assert_eq!(cache.get("d"), None);
    let e = cache
        .entry("d")
        .or_optionally_insert_with(|| Some(4))
        .unwrap();
    assert!(e.is_fresh());
    let err = cache.entry("e").or_try_insert_with(|| Err::<u32, _>("no"));
    assert_eq!(*err.unwrap_err(), "no");
    assert_eq!(
        cache
            .entry("e")
            .or_try_insert_with(|| Ok::<_, &str>(5))
            .unwrap()
            .into_value(),
        5
    );

    // remove_if / replace.
    assert_eq!(cache.entry("a").remove_if(|v| *v == 2), None);
    assert_eq!(cache.get("a"), Some(1));
    assert_eq!(cache.entry("a").remove_if(|v| *v == 1), Some(1));
    assert_eq!(cache.get("a"), None);
    assert_eq!(cache.entry("a").replace(9), None);
    assert_eq!(
        cache.get("a"),
        None,
        "replace stores nothing for an absent key"
    );
    assert_eq!(cache.entry("b").replace(7), Some(0));
    assert_eq!(cache.get("b"), Some(7));

    // and_try_compute_with: an error leaves the key alone.
    let r = cache
        .entry("b")
        .and_try_compute_with(|_| Err::<Op<u32>, _>("nope"));
    assert_eq!(r, Err("nope"));
    assert_eq!(cache.get("b"), Some(7));
    let r = cache
        .entry("b")
        .and_try_compute_with(|v| Ok::<_, ()>(Op::Put(v.unwrap() * 2)));
    assert_eq!(r, Ok(CompResult::ReplacedWith(14)));
}

/// Threads increment one counter through `and_upsert_with` while others remove it and add up
/// what they removed: every increment must be counted exactly once, in a removed value or in
/// the final one. A compute that published a value computed from a value a remover had
/// already taken (the race the handshake in `raw/shard/conditional.rs` closes) counts an
/// increment twice; a lost update counts it zero times.
#[test]
fn increments_racing_removals_add_up() {
    watchdog(Duration::from_secs(120), || {
        for round in 0..200 {
            let (cache, log) = logged();
            let removed = Arc::new(AtomicU64::new(0));
            let incrementers = 2;
            let per_thread = 2_000u64;
            let barrier = Arc::new(Barrier::new(incrementers + 2));
            let mut handles = Vec::new();
            for _ in 0..incrementers {
                let (cache, barrier) = (cache.clone(), barrier.clone());
                handles.push(thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..per_thread {
                        cache.entry(7).and_upsert_with(|n| n.map_or(1, |n| n + 1));
                    }
                }));
            }
            {
                let (cache, barrier, removed) = (cache.clone(), barrier.clone(), removed.clone());
                handles.push(thread::spawn(move || {
                    barrier.wait();
                    for i in 0..per_thread {
                        // Alternate the lookup-based removers: remove, and compute's remove_if.
                        let got = if i % 2 == 0 {
                            cache.remove(&7)
                        } else {
                            cache.entry(7).remove_if(|_| true)
                        };
                        removed.fetch_add(got.unwrap_or(0), Ordering::Relaxed);
                        if i % 64 == 0 {
                            thread::yield_now();
                        }
                    }
                }));
            }
            {
                let (cache, barrier) = (cache.clone(), barrier.clone());
                // A reader that must never see a value go backwards except to a removal's
                // fresh start (1): values only grow between removals.
                handles.push(thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..per_thread {
                        let _ = cache.get(&7);
                    }
                }));
            }
            for h in handles {
                h.join().unwrap();
            }
            let last = cache.get(&7).unwrap_or(0);
            let total = removed.load(Ordering::Relaxed) + last;
            assert_eq!(
                total,
                incrementers as u64 * per_thread,
                "round {round}: increments counted {total} times"
            );
            // The listener heard every value that left: `Replaced` ones are the increments
            // in between, `Explicit` ones the removals, and they add up.
            cache.run_pending_tasks();
            let log = log.lock().unwrap();
            let explicit: u64 = log
                .iter()
                .filter(|e| e.2 == RemovalCause::Explicit)
                .map(|e| e.1)
                .sum();
            assert_eq!(explicit, removed.load(Ordering::Relaxed), "round {round}");
            assert!(
                log.iter()
                    .all(|e| matches!(e.2, RemovalCause::Explicit | RemovalCause::Replaced)),
                "round {round}"
            );
            // Every increment produced one value; each left once (Replaced or Explicit), but
            // the one still held.
            let held = usize::from(cache.get(&7).is_some());
            assert_eq!(
                log.len() + held,
                (incrementers as u64 * per_thread) as usize
            );
        }
    });
}

/// Computes racing plain inserts and removals of a few keys, with unique values: every value
/// ever stored is either held at the end or heard by the listener exactly once.
#[test]
fn every_value_leaves_once() {
    watchdog(Duration::from_secs(120), || {
        let (cache, log) = logged();
        let next = Arc::new(AtomicU64::new(1));
        let stored = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (cache, next, stored) = (cache.clone(), next.clone(), stored.clone());
                thread::spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..5_000u64 {
                        let k = (i * 7 + t) % 5;
                        let v = next.fetch_add(1, Ordering::Relaxed);
                        match (i + t) % 6 {
                            0 => {
                                cache.insert(k, v);
                                mine.push(v);
                            }
                            1 => drop(cache.remove(&k)),
                            2 => {
                                if let CompResult::Inserted(v) | CompResult::ReplacedWith(v) =
                                    cache.entry(k).and_compute_with(|cur| match cur {
                                        Some(c) if c % 3 == 0 => Op::Remove,
                                        _ => Op::Put(v),
                                    })
                                {
                                    mine.push(v);
                                }
                            }
                            3 => drop(cache.entry(k).remove_if(|c| c % 2 == 0)),
                            4 => {
                                if cache.entry(k).or_insert(v).is_fresh() {
                                    mine.push(v);
                                }
                            }
                            _ => {
                                if cache.entry(k).replace(v).is_some() {
                                    mine.push(v);
                                }
                            }
                        }
                    }
                    stored.lock().unwrap().extend(mine);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        cache.run_pending_tasks();
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for (_, v, _) in log.lock().unwrap().iter() {
            *seen.entry(*v).or_default() += 1;
        }
        for (_, v) in cache.iter() {
            *seen.entry(v).or_default() += 1;
        }
        let stored = stored.lock().unwrap();
        for v in stored.iter() {
            assert_eq!(
                seen.get(v),
                Some(&1),
                "value {v} left {:?} times",
                seen.get(v)
            );
        }
        assert_eq!(
            seen.len(),
            stored.len(),
            "a value left that was never stored"
        );
    });
}

#[test]
fn retain_removes_what_matches_and_reports_it() {
    let (cache, log) = logged();
    for k in 0..1_000 {
        cache.insert(k, k * 10);
    }
    assert_eq!(cache.retain(|k, _| k % 3 != 0), 334);
    assert_eq!(cache.len(), 666);
    for k in 0..1_000 {
        assert_eq!(cache.get(&k).is_some(), k % 3 != 0, "key {k}");
    }
    assert_eq!(cache.invalidate_entries_if(|_, v| *v >= 5_000), 333);
    assert_eq!(cache.len(), 333);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 667);
    assert!(log.iter().all(|e| e.2 == RemovalCause::Explicit));
    assert!(log.iter().all(|e| e.1 == e.0 * 10));
}

/// `retain` racing inserts of new keys: every key inserted before the call and matching is
/// gone after it; keys inserted meanwhile are simply there or not.
#[test]
fn retain_is_weakly_consistent_with_inserts() {
    watchdog(Duration::from_secs(60), || {
        let cache = Cache::<u64, u64>::builder().shards(4).build().unwrap();
        for k in 0..20_000 {
            cache.insert(k, k);
        }
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || {
                for k in 20_000..40_000 {
                    cache.insert(k, k);
                }
            })
        };
        cache.retain(|k, _| k % 2 == 0);
        writer.join().unwrap();
        for k in 0..20_000 {
            assert_eq!(cache.get(&k).is_some(), k % 2 == 0, "key {k}");
        }
    });
}

#[test]
fn policy_reports_the_settings_and_follows_the_capacity() {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(1_000)
        .time_to_live(Duration::from_secs(60))
        .time_to_idle(Duration::from_secs(10))
        .build()
        .unwrap();
    let p = cache.policy();
    assert_eq!(p.max_capacity(), Some(1_000));
    assert_eq!(p.time_to_live(), Some(Duration::from_secs(60)));
    assert_eq!(p.time_to_idle(), Some(Duration::from_secs(10)));
    assert!(!p.is_weighted() && !p.has_expiry());
    assert!(p.shards().is_power_of_two());
    assert_eq!(cache.set_max_capacity(0), Err(CapacityError::Zero));
    assert_eq!(cache.set_max_capacity(500), Ok(()));
    assert_eq!(cache.policy().max_capacity(), Some(500));
    let unbounded = Cache::<u64, u64>::new();
    assert_eq!(unbounded.policy().max_capacity(), None);
    assert_eq!(
        unbounded.set_max_capacity(10),
        Err(CapacityError::Unbounded)
    );
}

/// Shrinking evicts down to the new bound before `set_max_capacity` returns (the listener
/// hears `Size`), and readers keep reading throughout; growing lets the cache fill again.
#[test]
fn shrinking_the_capacity_evicts_down_to_it() {
    watchdog(Duration::from_secs(60), || {
        let evicted = Arc::new(AtomicUsize::new(0));
        let counter = evicted.clone();
        let cache: Cache<u64, u64> = Cache::builder()
            .max_capacity(4_096)
            .eviction_listener(move |_, _, cause| {
                assert_eq!(cause, RemovalCause::Size);
                counter.fetch_add(1, Ordering::Relaxed);
            })
            .build()
            .unwrap();
        for k in 0..4_096 {
            cache.insert(k, k);
        }
        assert_eq!(cache.weighted_size(), 4_096);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started = Arc::new(std::sync::Barrier::new(2));
        let reader = {
            let (cache, stop, started) = (cache.clone(), stop.clone(), started.clone());
            thread::spawn(move || {
                started.wait();
                while !stop.load(Ordering::Relaxed) {
                    for k in 0..64 {
                        if let Some(v) = cache.get(&k) {
                            assert_eq!(v, k);
                        }
                    }
                }
            })
        };
        // The reader runs (on a loaded machine it may not have read yet) while the shrink
        // evicts: every value it sees is its key's.
        started.wait();
        cache.set_max_capacity(100).unwrap();
        assert!(cache.weighted_size() <= 100, "{}", cache.weighted_size());
        assert!(evicted.load(Ordering::Relaxed) >= 3_996);
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        cache.set_max_capacity(10_000).unwrap();
        for k in 10_000..18_000 {
            cache.insert(k, k);
        }
        let size = cache.weighted_size();
        assert!(size > 7_000 && size <= 10_000, "{size}");
        // A shrink within a large cache goes down to the capacity itself too.
        cache.set_max_capacity(5_000).unwrap();
        assert_eq!(cache.policy().max_capacity(), Some(5_000));
        let size = cache.weighted_size();
        assert!(size > 4_000 && size <= 5_000, "{size}");
    });
}

/// A compute on a bounded, weighed cache keeps the bound's accounting exact: replacements
/// with other weights, removals and refusals (heavier than the capacity) leave the reserved
/// weight equal to the weight held.
#[test]
fn compute_keeps_the_weight_exact() {
    let cache: Cache<u64, u32> = Cache::builder()
        .max_capacity(100)
        .weigher(|_, v: &u32| *v)
        .build()
        .unwrap();
    for k in 0..10 {
        cache.entry(k).and_upsert_with(|_| 5);
    }
    assert_eq!(cache.weighted_size(), 50);
    for k in 0..10 {
        cache.entry(k).and_upsert_with(|v| v.unwrap() + 1);
    }
    assert_eq!(cache.weighted_size(), 60);
    for k in 0..5 {
        assert_eq!(cache.entry(k).remove_if(|_| true), Some(6));
    }
    assert_eq!(cache.weighted_size(), 30);
    // Heavier than the capacity: the old value goes (as for insert), nothing is stored.
    assert_eq!(
        cache.entry(9).and_compute_with(|_| Op::Put(1_000)),
        CompResult::ReplacedWith(1_000)
    );
    assert_eq!(cache.get(&9), None);
    assert_eq!(cache.weighted_size(), 24);
}

#[test]
fn expiry_with_time_to_idle_is_refused() {
    struct E;
    impl evanesce::Expiry<u64, u64> for E {}
    let r = Cache::<u64, u64>::builder()
        .expire_after(E)
        .time_to_idle(Duration::from_secs(1))
        .build();
    assert_eq!(r.err(), Some(evanesce::BuildError::ExpiryWithTimeToIdle));
}
