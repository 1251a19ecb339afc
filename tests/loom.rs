//! loom models of the lock-free protocols.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom --cfg crossbeam_loom" cargo test --release --test loom`
//!
//! Under `cfg(loom)` every atomic of the crate and of crossbeam-epoch is loom's, a shard has
//! one bucket and a 4-slot event ring, and the arena's first chunk holds 2 nodes, so these
//! tiny programs reach the interesting states (full ring, chained nodes, a growth, a second
//! arena chunk). Each model is bounded in code (preemption bound 2).
//!
//! Values are `loom::sync::Arc`s: at the end of every execution loom drops its lazy statics
//! (crossbeam-epoch's global collector among them, which runs the deferred frees still
//! pending) and then fails the model if any loom `Arc` is still alive, so "every value is
//! dropped, exactly once" is checked in every explored interleaving.
#![cfg(loom)]
#![allow(clippy::disallowed_types)]

use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};

use evanesce::{Cache, CompResult, Op, RemovalCause};
use loom::sync::Arc;
use loom::thread;

fn model(f: impl Fn() + Sync + Send + 'static) {
    model_with(loom::model::Builder::new(), f);
}

/// [`model`] with a builder set up by the caller (e.g. more branches for a longer model).
fn model_with(mut builder: loom::model::Builder, f: impl Fn() + Sync + Send + 'static) {
    builder.preemption_bound = Some(2);
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    builder.check(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        f()
    });
    if std::env::var_os("LOOM_COUNT").is_some() {
        eprintln!("explored {} executions", runs.load(Ordering::Relaxed));
    }
}

/// Runs `f` on a loom thread with a 1 MiB stack, and waits for it: a model's own thread has
/// loom's default of 32 KiB, which a compute and a pass in one call can overflow.
fn on_big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    // In words (loom passes the size to its coroutines, which count in `usize`s).
    thread::Builder::new()
        .stack_size((1 << 20) / std::mem::size_of::<usize>())
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// loom replays schedules, so every run of a model must hash the same way: a fixed-key hasher
/// instead of the default randomly seeded one.
type Fixed = BuildHasherDefault<DefaultHasher>;

fn builder<V: Clone + Send + Sync + 'static>() -> evanesce::CacheBuilder<u64, V, Fixed> {
    let (clock, _mock) = quanta::Clock::mock();
    Cache::builder()
        .shards(1)
        .clock(clock)
        .hasher(Fixed::default())
}

fn cache<V: Clone + Send + Sync + 'static>() -> Cache<u64, V, Fixed> {
    builder().build().unwrap()
}

#[test]
fn insert_publishes_to_get() {
    model(|| {
        let cache = cache::<u64>();
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || cache.insert(1, 10))
        };
        // Either the insert has not happened yet, or its value is fully visible.
        let seen = cache.get(&1);
        assert!(seen.is_none() || seen == Some(10));
        writer.join().unwrap();
        assert_eq!(cache.get(&1), Some(10));
        assert_eq!(cache.len(), 1);
    });
}

#[test]
fn replace_vs_get_sees_old_or_new() {
    model(|| {
        let cache = cache::<Arc<u64>>();
        cache.insert(1, Arc::new(1));
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || cache.insert(1, Arc::new(2)))
        };
        // Reading the value touches the node's payload: loom reports a race if the reader
        // could see freed or uninitialised memory.
        let seen = cache.get(&1).map(|v| *v);
        assert!(seen == Some(1) || seen == Some(2), "{seen:?}");
        writer.join().unwrap();
        assert_eq!(cache.get(&1).map(|v| *v), Some(2));
        assert_eq!(cache.len(), 1);
        // Both values must be dropped exactly once by the end of the execution (loom checks).
    });
}

/// A light read (no barrier of its own) against a replacement whose old value is reclaimed
/// at once: the pass that `len` runs retires the old node and collects (a light grace period
/// started and polled, what it covers handed to the epoch), and the flushes let the epoch free
/// it while the reader may still be inside its read. loom reports a race if the old value's
/// payload is dropped while the reader clones it. (`len` rather than `run_pending_tasks`:
/// the latter waits for the grace period with yields, which lets loom run the reader to the
/// end of its read first; with `len` nothing stands between the retirement and the frees but
/// the grace period itself. Collecting without it fails this model.)
#[test]
fn replace_and_reclaim_vs_get() {
    model(|| {
        let cache = cache::<Arc<u64>>();
        cache.insert(1, Arc::new(1));
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || {
                cache.insert(1, Arc::new(2));
                assert_eq!(cache.len(), 1);
                crossbeam_epoch::pin().flush();
                crossbeam_epoch::pin().flush();
            })
        };
        let seen = cache.get(&1).map(|v| *v);
        assert!(seen == Some(1) || seen == Some(2), "{seen:?}");
        writer.join().unwrap();
        // The old value may still wait for its grace period (the writer's pass found this
        // thread inside its read): reclaim it, so that loom's leak check sees it dropped.
        cache.run_pending_tasks();
    });
}

#[test]
fn remove_vs_get() {
    model(|| {
        let cache = cache::<u64>();
        cache.insert(1, 10);
        let remover = {
            let cache = cache.clone();
            thread::spawn(move || cache.remove(&1))
        };
        let seen = cache.get(&1);
        assert!(seen.is_none() || seen == Some(10));
        assert_eq!(remover.join().unwrap(), Some(10));
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.len(), 0);
    });
}

#[test]
fn two_inserts_of_one_key_leave_one() {
    model(|| {
        let replaced = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = replaced.clone();
        let cache = builder::<Arc<u64>>()
            .eviction_listener(move |_, _, cause| {
                assert_eq!(cause, RemovalCause::Replaced);
                counter.fetch_add(1, Ordering::SeqCst);
            })
            .build()
            .unwrap();
        let other = {
            let cache = cache.clone();
            thread::spawn(move || cache.insert(7, Arc::new(1)))
        };
        cache.insert(7, Arc::new(2));
        other.join().unwrap();
        let v = cache.get(&7).map(|v| *v);
        assert!(v == Some(1) || v == Some(2));
        assert_eq!(cache.len(), 1);
        cache.run_pending_tasks();
        assert_eq!(
            replaced.load(Ordering::SeqCst),
            1,
            "the loser is reported once"
        );
        // Exactly one node survives in the table; loom checks that both values are dropped
        // exactly once by the end of the execution (nothing leaks, nothing freed twice).
    });
}

#[test]
fn growth_vs_get_and_insert() {
    // As for the four-way growth below: a growth is many atomic operations in one execution,
    // and each insert of a `u64` value first tries an in-place write (a light read and a
    // lookup), which takes this model past loom's default bound on branches.
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 20_000;
    model_with(builder, || {
        let cache = cache::<u64>();
        // One bucket: the second key makes the shard grow (publish a two-bucket table whose
        // buckets are split lazily); the get and the insert race with that.
        cache.insert(1, 10);
        let grower = {
            let cache = cache.clone();
            thread::spawn(move || {
                cache.insert(2, 20);
                cache.run_pending_tasks();
            })
        };
        assert_eq!(cache.get(&1), Some(10));
        cache.insert(3, 30);
        grower.join().unwrap();
        cache.run_pending_tasks();
        assert_eq!(cache.get(&1), Some(10));
        assert_eq!(cache.get(&2), Some(20));
        assert_eq!(cache.get(&3), Some(30));
        assert_eq!(cache.len(), 3);
    });
}

#[test]
fn four_way_growth_vs_get_and_insert() {
    // A growth runs many atomic operations in one execution (splitting, unzipping, the epoch):
    // more than loom's default bound on branches per execution.
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 20_000;
    model_with(builder, || {
        let cache = cache::<u64>();
        // One bucket and a 4-slot ring: the 4th insert's pass finds 4 entries in one bucket
        // and grows straight to 4 buckets. With this fixed hasher, keys 5, 3, 2, 1 (the chain,
        // newest first) go to new buckets 0, 2, 2, 1 (three classes, one of them a run of
        // two), and key 7 to bucket 3 (no node yet: its writer splits it off the frozen chain
        // or finds it split). The get and the insert race with the split and the unzipping.
        for k in [1, 2, 3] {
            cache.insert(k, k * 10);
        }
        let grower = {
            let cache = cache.clone();
            thread::spawn(move || {
                cache.insert(5, 50);
                cache.run_pending_tasks();
                cache.run_pending_tasks();
            })
        };
        assert_eq!(cache.get(&2), Some(20));
        cache.insert(7, 70);
        grower.join().unwrap();
        cache.run_pending_tasks();
        for k in [1, 2, 3, 5, 7] {
            assert_eq!(cache.get(&k), Some(k * 10));
        }
        assert_eq!(cache.len(), 5);
    });
}

#[test]
fn remove_vs_maintenance_reports_once() {
    model(|| {
        let reports = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = reports.clone();
        let cache = builder::<u64>()
            .eviction_listener(move |_, _, _| {
                counter.fetch_add(1, Ordering::SeqCst);
            })
            .build()
            .unwrap();
        cache.insert(1, 10);
        cache.insert(2, 20);
        let remover = {
            let cache = cache.clone();
            thread::spawn(move || {
                cache.remove(&1);
            })
        };
        cache.run_pending_tasks();
        remover.join().unwrap();
        cache.run_pending_tasks();
        assert_eq!(reports.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.get(&2), Some(20));
    });
}

/// A cache with a mock clock (moved by the model between steps) and a listener recording
/// `(key, value, cause)`.
#[allow(clippy::type_complexity)]
fn timed() -> (
    Cache<u64, u64, Fixed>,
    std::sync::Arc<quanta::Mock>,
    std::sync::Arc<std::sync::Mutex<Vec<(u64, u64, RemovalCause)>>>,
) {
    timed_with(None)
}

/// [`timed`] with a time to live.
#[allow(clippy::type_complexity)]
fn timed_with_ttl(
    ttl: std::time::Duration,
) -> (
    Cache<u64, u64, Fixed>,
    std::sync::Arc<quanta::Mock>,
    std::sync::Arc<std::sync::Mutex<Vec<(u64, u64, RemovalCause)>>>,
) {
    timed_with(Some(ttl))
}

#[allow(clippy::type_complexity)]
fn timed_with(
    ttl: Option<std::time::Duration>,
) -> (
    Cache<u64, u64, Fixed>,
    std::sync::Arc<quanta::Mock>,
    std::sync::Arc<std::sync::Mutex<Vec<(u64, u64, RemovalCause)>>>,
) {
    let (clock, mock) = quanta::Clock::mock();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = log.clone();
    let mut builder = Cache::builder()
        .shards(1)
        .clock(clock)
        .hasher(Fixed::default())
        .eviction_listener(move |k: &u64, v: &u64, c| sink.lock().unwrap().push((*k, *v, c)));
    if let Some(ttl) = ttl {
        builder = builder.time_to_live(ttl);
    }
    (builder.build().unwrap(), mock, log)
}

fn ms(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n)
}

#[test]
fn touch_vs_expiry_never_reclaims_early() {
    model(|| {
        let (cache, mock, log) = timed();
        cache.insert_with_ttl(1, 10, ms(10));
        mock.increment(ms(8));
        let toucher = {
            let cache = cache.clone();
            thread::spawn(move || cache.touch(&1))
        };
        // The clock passes the old deadline while the touch may or may not have happened, and
        // a maintenance pass expires what it finds due.
        mock.increment(ms(4));
        cache.run_pending_tasks();
        let touched = toucher.join().unwrap();
        if touched {
            // The touch happened before the old deadline: the entry lives until 8 + 10 ms.
            assert_eq!(
                cache.get(&1),
                Some(10),
                "a touched entry was reclaimed early"
            );
            assert!(log.lock().unwrap().is_empty());
        } else {
            assert_eq!(cache.get(&1), None);
        }
        cache.run_pending_tasks();
        let expired = log.lock().unwrap().len();
        assert_eq!(
            expired,
            usize::from(!touched),
            "reported once, and only if expired"
        );
    });
}

#[test]
fn replace_vs_expiry_never_removes_the_new_value() {
    model(|| {
        let (cache, mock, log) = timed();
        cache.insert_with_ttl(1, 10, ms(10));
        mock.increment(ms(10));
        // The old value has expired but is not reclaimed; a replacement races with the pass
        // that reclaims it.
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || cache.insert_with_ttl(1, 20, ms(1000)))
        };
        cache.run_pending_tasks();
        writer.join().unwrap();
        cache.run_pending_tasks();
        assert_eq!(
            cache.get(&1),
            Some(20),
            "the old deadline removed the new value"
        );
        assert_eq!(*log.lock().unwrap(), vec![(1, 10, RemovalCause::Expired)]);
    });
}

#[test]
fn remove_vs_expiry_reports_once() {
    model(|| {
        let (cache, mock, log) = timed();
        cache.insert_with_ttl(1, 10, ms(10));
        cache.insert(2, 20);
        mock.increment(ms(10));
        let remover = {
            let cache = cache.clone();
            thread::spawn(move || cache.remove(&1))
        };
        cache.run_pending_tasks();
        assert_eq!(
            remover.join().unwrap(),
            None,
            "an expired entry is not returned"
        );
        cache.run_pending_tasks();
        assert_eq!(*log.lock().unwrap(), vec![(1, 10, RemovalCause::Expired)]);
        assert_eq!(cache.get(&2), Some(20));
    });
}

/// A compute racing a lookup-based remove of the same key (the Dekker handshake of
/// `raw/shard/conditional.rs`: `Table::computing` and `Table::overtaken`). Linearizable either
/// way round, with no lost update and each value that leaves heard once: remove first (it
/// returns 10, the compute inserts 1 into the empty key) or compute first (it replaces 10 by
/// 11, the remove returns 11 and the key ends empty). The state this excludes is the compute
/// missing the remover's mark and publishing 11 while the remove reports 10 as removed: then
/// the remove returned a value the compute had already replaced.
///
/// Fails with the handshake broken: with `Table::overtaken` returning false (a remover never
/// learns it was overtaken), or with either of its SeqCst fences removed (the compute's in
/// `Announce::new`, the remover's in `Table::overtaken`), loom finds
/// `(ReplacedWith(11), Some(10))`.
#[test]
fn compute_vs_remove_is_linearizable() {
    model(|| {
        let (cache, _mock, log) = timed();
        cache.insert(1, 10);
        let remover = {
            let cache = cache.clone();
            thread::spawn(move || cache.remove(&1))
        };
        let computed = cache
            .entry(1)
            .and_compute_with(|v| Op::Put(v.map_or(1, |v| v + 1)));
        let removed = remover.join().unwrap();
        cache.run_pending_tasks();
        let mut heard = log.lock().unwrap().clone();
        heard.sort_by_key(|&(k, v, _)| (k, v));
        match (&computed, removed) {
            // The compute, then the remove.
            (CompResult::ReplacedWith(11), Some(11)) => {
                assert_eq!(cache.get(&1), None);
                assert_eq!(
                    heard,
                    vec![
                        (1, 10, RemovalCause::Replaced),
                        (1, 11, RemovalCause::Explicit)
                    ]
                );
            }
            // The remove, then the compute.
            (CompResult::Inserted(1), Some(10)) => {
                assert_eq!(cache.get(&1), Some(1));
                assert_eq!(heard, vec![(1, 10, RemovalCause::Explicit)]);
            }
            other => panic!("not linearizable: {other:?}, heard {heard:?}"),
        }
    });
}

/// Two computes incrementing one key: neither increment is lost (each publishes only if the
/// value it was given is still the key's first live node, and otherwise runs again on the
/// newer value), and each replaced value is heard once, as `Replaced`.
///
/// Fails with the check broken: with `Shard::publish` accepting a value that is no longer
/// first (its `f == o` test dropped), loom finds the key at 1 instead of 2.
#[test]
fn two_computes_lose_no_increment() {
    // Each compute of a `u64` value holds the node it replaces while it checks the value and
    // publishes (`hold_if_word`): more branches than loom's default bound.
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 20_000;
    model_with(builder, || {
        let (cache, _mock, log) = timed();
        cache.insert(1, 0);
        let incr = |cache: &Cache<u64, u64, Fixed>| {
            cache
                .entry(1)
                .and_upsert_with(|v| v.map_or(100, |v| v + 1))
                .into_value()
        };
        let other = {
            let cache = cache.clone();
            thread::spawn(move || incr(&cache))
        };
        let mine = incr(&cache);
        let theirs = other.join().unwrap();
        let mut seen = [mine, theirs];
        seen.sort_unstable();
        assert_eq!(
            seen,
            [1, 2],
            "each compute saw the other's value or none of it"
        );
        assert_eq!(cache.get(&1), Some(2), "an increment was lost");
        cache.run_pending_tasks();
        let mut heard = log.lock().unwrap().clone();
        heard.sort_by_key(|&(k, v, _)| (k, v));
        assert_eq!(
            heard,
            vec![
                (1, 0, RemovalCause::Replaced),
                (1, 1, RemovalCause::Replaced)
            ]
        );
    });
}

/// A compute storing a value while a thread reads its key: the reader sees nothing or the
/// new value, whole (the compute initialises its node before the compare-and-swap that
/// publishes it). The key starts empty, so that nothing but that compare-and-swap orders the
/// node's initialisation before the read (when the compute replaces a value, the SeqCst
/// fence of its announcement to removers does too); the value is dropped once (loom's leak
/// check on its `Arc`).
///
/// Fails with the publication broken: with `Shard::publish`'s compare-and-swap Relaxed
/// instead of Release, loom reports the reader's access to the value as a race with its
/// initialisation.
#[test]
fn compute_vs_get_sees_nothing_or_the_whole_value() {
    model(|| {
        on_big_stack(|| {
            let cache = cache::<Arc<u64>>();
            let reader = {
                let cache = cache.clone();
                thread::spawn(move || cache.get(&1).map(|v| *v))
            };
            let computed = cache
                .entry(1)
                .and_upsert_with(|v| Arc::new(v.map_or(7, |v| **v + 1)));
            assert_eq!(*computed.into_value(), 7);
            let seen = reader.join().unwrap();
            assert!(seen.is_none() || seen == Some(7), "{seen:?}");
            assert_eq!(cache.get(&1).map(|v| *v), Some(7));
        })
    });
}

/// A compute racing an insert of the same key: the insert either comes first (the compute
/// runs on its value: 20 becomes 21) or replaces the compute's value (11 is replaced by 20);
/// never a compute that publishes 11, computed from 10, over the insert's 20.
///
/// Fails with the check broken: with `Shard::publish` accepting a value that is no longer
/// first (its `f == o` test dropped), loom finds the key at 11 with 20 heard as replaced.
#[test]
fn compute_vs_insert_is_linearizable() {
    model(|| {
        on_big_stack(|| {
            let (cache, _mock, log) = timed();
            cache.insert(1, 10);
            let writer = {
                let cache = cache.clone();
                thread::spawn(move || cache.insert(1, 20))
            };
            let computed = cache
                .entry(1)
                .and_compute_with(|v| Op::Put(v.map_or(1, |v| v + 1)));
            writer.join().unwrap();
            cache.run_pending_tasks();
            let mut heard = log.lock().unwrap().clone();
            heard.sort_by_key(|&(k, v, _)| (k, v));
            let final_value = cache.get(&1);
            match computed {
                // The compute, then the insert.
                CompResult::ReplacedWith(11) => {
                    assert_eq!(final_value, Some(20));
                    assert_eq!(
                        heard,
                        vec![
                            (1, 10, RemovalCause::Replaced),
                            (1, 11, RemovalCause::Replaced)
                        ]
                    );
                }
                // The insert, then the compute.
                CompResult::ReplacedWith(21) => {
                    assert_eq!(final_value, Some(21));
                    assert_eq!(
                        heard,
                        vec![
                            (1, 10, RemovalCause::Replaced),
                            (1, 20, RemovalCause::Replaced)
                        ]
                    );
                }
                other => panic!("not linearizable: {other:?}, {final_value:?}, heard {heard:?}"),
            }
        })
    });
}

/// `retain` (a lookup-based remover too: it tests a value, then marks it) racing a compute
/// that replaces the value it tests. Either retain removes 10 (counted, heard as `Explicit`)
/// and the compute inserts into the empty key, or the compute's 11 survives (retain keeps
/// it: its test was of 10, and a value replaced since is left alone) and 10 is heard as
/// `Replaced`, once.
///
/// Fails with the handshake broken (`Table::overtaken` returning false): loom finds 10
/// heard as `Explicit` and counted while the compute replaced it with 11.
#[test]
fn retain_vs_compute_hears_each_value_once() {
    model(|| {
        on_big_stack(|| {
            let (cache, _mock, log) = timed();
            cache.insert(1, 10);
            let remover = {
                let cache = cache.clone();
                thread::spawn(move || cache.invalidate_entries_if(|_, &v| v == 10))
            };
            let computed = cache
                .entry(1)
                .and_compute_with(|v| Op::Put(v.map_or(1, |v| v + 1)));
            let removed = remover.join().unwrap();
            cache.run_pending_tasks();
            let heard = log.lock().unwrap().clone();
            match (&computed, removed) {
                (CompResult::Inserted(1), 1) => {
                    assert_eq!(cache.get(&1), Some(1));
                    assert_eq!(heard, vec![(1, 10, RemovalCause::Explicit)]);
                }
                (CompResult::ReplacedWith(11), 0) => {
                    assert_eq!(cache.get(&1), Some(11));
                    assert_eq!(heard, vec![(1, 10, RemovalCause::Replaced)]);
                }
                other => panic!("not linearizable: {other:?}, heard {heard:?}"),
            }
        })
    });
}

/// Two threads ask for one missing key at once: the load runs once, and both get its value.
/// A caller that finds no flight looks in the cache again, holding the registry's stripe,
/// before it registers its own; a leader leaves the registry only after storing its value.
/// So a second load can only start once the first value is gone, which nothing here does.
///
/// Fails with that second look dropped (`Registry::join` not calling `hit`): loom finds the
/// second caller loading again after the first left.
#[test]
fn two_loaders_load_once() {
    model(|| {
        let loads = std::sync::Arc::new(AtomicUsize::new(0));
        let cache = cache::<u64>();
        let load = {
            let loads = loads.clone();
            move |cache: &Cache<u64, u64, Fixed>| {
                cache.get_or_insert_with(1, || 10 + loads.fetch_add(1, Ordering::SeqCst) as u64)
            }
        };
        let other = {
            let (cache, load) = (cache.clone(), load.clone());
            thread::spawn(move || load(&cache))
        };
        let mine = load(&cache);
        assert_eq!(other.join().unwrap(), mine);
        assert_eq!(mine, 10);
        assert_eq!(loads.load(Ordering::SeqCst), 1, "the load ran twice");
        assert_eq!(cache.get(&1), Some(10));
    });
}

/// Polls `f` once with a waker that does nothing; returns its output if it was ready.
fn poll_once<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// The single-flight handover: an async load whose future is dropped mid-load (a cancelled
/// task) while a thread waits for it. The thread is woken, starts over, loads itself, and the
/// key ends with its value; or it led first, and the dropped future's caller was the waiter
/// (its waker withdrawn), or it found the value. A key left with a flight that nobody runs
/// would leave the thread waiting forever, which loom reports as a deadlock.
///
/// Fails with the handover broken: with `Lead`'s `Drop` not ending the flight (no
/// `Outcome::Abandoned`), loom reports the waiting thread deadlocked.
#[test]
fn a_dropped_loader_hands_over_to_its_waiter() {
    model(|| {
        let cache = cache::<u64>();
        let waiter = {
            let cache = cache.clone();
            thread::spawn(move || cache.get_or_insert_with(1, || 2))
        };
        // A load that never finishes, dropped after one poll (leading or waiting by then).
        let polled = poll_once(cache.get_or_insert_async(1, std::future::pending()));
        assert!(polled.is_none() || polled == Some(2));
        assert_eq!(waiter.join().unwrap(), 2);
        assert_eq!(cache.get(&1), Some(2));
    });
}

/// The handover to a task: the waiter is a task on `loom::future::block_on`, which parks
/// its thread until its waker is woken, so a waiting task that the handover does not wake
/// is a deadlock too. (A load that panics hands over the same way, through the same `Drop`,
/// but a panic ends a loom execution, so only the dropped future is modelled.)
///
/// Fails with the handover broken, as above (loom reports the parked task deadlocked).
#[test]
fn a_dropped_loader_wakes_a_waiting_task() {
    model(|| {
        let cache = cache::<u64>();
        let waiter = {
            let cache = cache.clone();
            thread::spawn(move || loom::future::block_on(cache.get_or_insert_async(1, async { 2 })))
        };
        let polled = poll_once(cache.get_or_insert_async(1, std::future::pending()));
        assert!(polled.is_none() || polled == Some(2));
        assert_eq!(waiter.join().unwrap(), 2);
        assert_eq!(cache.get(&1), Some(2));
    });
}

/// Two inserts of one key in a cache of `u64` values, which both try to overwrite the live
/// node's value in place: they take the node in turn (or one gives up after its spins and
/// publishes a new node), and either way one value survives and the other is heard replaced,
/// once, as are the value they found.
#[test]
fn two_in_place_writes_of_one_key_leave_one() {
    model(|| {
        let (cache, _mock, log) = timed();
        cache.insert(1, 10);
        let other = {
            let cache = cache.clone();
            thread::spawn(move || cache.insert(1, 20))
        };
        cache.insert(1, 30);
        other.join().unwrap();
        cache.run_pending_tasks();
        let last = cache.get(&1).expect("a value survives");
        let first = if last == 20 { 30 } else { 20 };
        assert!(last == 20 || last == 30, "{last}");
        assert_eq!(
            *log.lock().unwrap(),
            vec![
                (1, 10, RemovalCause::Replaced),
                (1, first, RemovalCause::Replaced)
            ]
        );
        assert_eq!(cache.len(), 1);
    });
}

/// An in-place write racing a remove of its key: either the write comes first (the remove
/// returns and reports the written value) or the remove does (the write finds the node marked
/// and inserts a new one). A remover that marks the node while the write holds it waits for
/// the write, so no written value is lost.
#[test]
fn in_place_write_vs_remove_loses_nothing() {
    model(|| {
        let (cache, _mock, log) = timed();
        cache.insert(1, 10);
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || cache.insert(1, 20))
        };
        let removed = cache.remove(&1);
        writer.join().unwrap();
        cache.run_pending_tasks();
        let heard = log.lock().unwrap().clone();
        match removed {
            // The remove, then the write (into an absent key).
            Some(10) => {
                assert_eq!(cache.get(&1), Some(20));
                assert_eq!(heard, vec![(1, 10, RemovalCause::Explicit)]);
            }
            // The write, then the remove.
            Some(20) => {
                assert_eq!(cache.get(&1), None);
                assert_eq!(
                    heard,
                    vec![
                        (1, 10, RemovalCause::Replaced),
                        (1, 20, RemovalCause::Explicit)
                    ]
                );
            }
            other => panic!("not linearizable: removed {other:?}, heard {heard:?}"),
        }
    });
}

/// An in-place write of a node while the maintainer unlinks the node behind it in the chain
/// (one bucket under loom: key 1's node links to key 2's): the holder of an in-place write is
/// the only writer of its node's link, so the unlink waits for it, and the write's release
/// cannot undo the unlink. (With the unlink not waiting, the release wrote the old link back:
/// key 2's node, retired and freed, was linked again.)
#[test]
fn in_place_write_vs_unlink_behind_it() {
    model(|| {
        let (cache, _mock, log) = timed();
        cache.insert(2, 20);
        cache.insert(1, 10);
        cache.remove(&2);
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || cache.insert(1, 11))
        };
        // The pass unlinks key 2's node through key 1's.
        cache.run_pending_tasks();
        writer.join().unwrap();
        cache.run_pending_tasks();
        assert_eq!(cache.get(&1), Some(11));
        assert_eq!(cache.get(&2), None);
        assert_eq!(cache.iter().collect::<Vec<_>>(), vec![(1, 11)]);
        assert_eq!(cache.len(), 1);
        assert_eq!(
            *log.lock().unwrap(),
            vec![
                (2, 20, RemovalCause::Explicit),
                (1, 10, RemovalCause::Replaced)
            ]
        );
    });
}

/// An in-place write racing a `set_ttl` of its key: the two serialize on the node (both hold
/// it), so the entry ends with the lifetime of whichever came last, and `touch` (which restarts
/// the entry's own lifetime, or the cache's) gives the same remaining time as before it. With
/// the in-place write checking the entry's own lifetime before it held the node, loom finds
/// the `set_ttl` lost: the deadline of the cache's lifetime with the own lifetime of the
/// `set_ttl`, which the next `touch` brings back.
#[test]
fn in_place_write_vs_set_ttl() {
    model(|| {
        let (clock, _mock) = quanta::Clock::mock();
        let cache = Cache::builder()
            .shards(1)
            .clock(clock)
            .hasher(Fixed::default())
            .time_to_live(ms(500))
            .build()
            .unwrap();
        cache.insert(1u64, 10u64);
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || cache.insert(1, 20))
        };
        assert!(cache.set_ttl(&1, ms(200)));
        writer.join().unwrap();
        let before = cache.ttl(&1).expect("live");
        assert!(cache.touch(&1));
        assert_eq!(cache.ttl(&1), Some(before), "touch changed the lifetime");
        assert_eq!(cache.get(&1), Some(20));
    });
}

/// A remove of an entry whose deadline passes as an in-place write renews it: the remove
/// decides whether the entry is alive while it holds the node, so it either removes the
/// renewed value (returned, `Explicit`) or finds the old one expired before the write (which
/// then stores a new entry). It never removes the renewed value as expired. The clock moves
/// in the model (the main thread), between the writer's check of the deadline and the
/// remover's.
#[test]
fn in_place_write_vs_remove_at_the_deadline() {
    model(|| {
        let (cache, mock, log) = timed_with_ttl(ms(10));
        cache.insert(1, 10);
        mock.increment(ms(9));
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || cache.insert(1, 20))
        };
        // Past the first deadline (deadlines are kept in ticks of about a millisecond).
        mock.increment(ms(2));
        let removed = cache.remove(&1);
        writer.join().unwrap();
        cache.run_pending_tasks();
        let heard = log.lock().unwrap().clone();
        assert!(
            !heard.contains(&(1, 20, RemovalCause::Expired)),
            "a renewed value was removed as expired: removed {removed:?}, heard {heard:?}"
        );
        match removed {
            Some(20) => assert_eq!(cache.get(&1), None),
            None => assert_eq!(cache.get(&1), Some(20)),
            other => panic!("removed {other:?}, heard {heard:?}"),
        }
    });
}
