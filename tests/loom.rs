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

use evanesce::{Cache, RemovalCause};
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
    model(|| {
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
    let (clock, mock) = quanta::Clock::mock();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = log.clone();
    let cache = Cache::builder()
        .shards(1)
        .clock(clock)
        .hasher(Fixed::default())
        .eviction_listener(move |k: &u64, v: &u64, c| sink.lock().unwrap().push((*k, *v, c)))
        .build()
        .unwrap();
    (cache, mock, log)
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
