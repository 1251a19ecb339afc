//! The single-flight loaders on a multi-threaded tokio runtime (and threads): one load per
//! missing key whatever the number of callers, cancellation, errors shared with every
//! waiter, matching by key rather than by hash. Every test runs under a timeout that fails it
//! (a hang is a failure).
#![allow(clippy::disallowed_types)]

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use evanesce::Cache;
use tokio::sync::Notify;

const LIMIT: Duration = Duration::from_secs(60);

/// Runs `f` on a fresh multi-threaded runtime, failing if it takes longer than [`LIMIT`].
fn run<F: Future<Output = ()> + Send + 'static>(f: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, f)
            .await
            .expect("timed out (hang)")
    });
}

/// `f`, counting in `arrived` the first time it returns `Pending`: a caller of the async
/// loaders is then inside the key's flight (waiting for it, or leading it and inside its
/// load). A load that waits for every caller to have arrived this way ends with all of them
/// waiting for it, however late a task is polled (a load that only slept "long enough" did
/// not, on a loaded machine: a task polled after it ended started a second load).
async fn arrive<F: Future>(f: F, arrived: &AtomicUsize) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut counted = false;
    std::future::poll_fn(move |cx| {
        let poll = f.as_mut().poll(cx);
        if poll.is_pending() && !counted {
            counted = true;
            arrived.fetch_add(1, Ordering::SeqCst);
        }
        poll
    })
    .await
}

/// Inside a load: returns once `n` callers have [`arrive`]d (the leader among them).
async fn until_arrived(arrived: &AtomicUsize, n: usize) {
    while arrived.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[test]
fn a_thousand_tasks_run_the_loader_once() {
    run(async {
        let cache = Cache::<u64, Arc<String>>::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(tokio::sync::Barrier::new(1_000));
        let tasks: Vec<_> = (0..1_000)
            .map(|_| {
                let (cache, calls, start) = (cache.clone(), calls.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    cache
                        .get_or_insert_async(42, async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            // Long enough that every task arrives while the load runs.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Arc::new("loaded".to_string())
                        })
                        .await
                })
            })
            .collect();
        let mut values = Vec::new();
        for t in tasks {
            values.push(t.await.unwrap());
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the loader ran more than once"
        );
        // Every task got the one value (the same allocation: handed out, not reloaded).
        assert!(values.iter().all(|v| Arc::ptr_eq(v, &values[0])));
        assert_eq!(
            cache.get(&42).as_deref().map(String::as_str),
            Some("loaded")
        );
    });
}

/// Threads and tasks asking for one key share one load.
#[test]
fn threads_and_tasks_share_one_load() {
    run(async {
        let cache = Cache::<u64, u64>::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let leader = {
            let (cache, calls, release) = (cache.clone(), calls.clone(), release.clone());
            tokio::spawn(async move {
                cache
                    .get_or_insert_async(1, async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        7
                    })
                    .await
            })
        };
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                std::thread::spawn(move || {
                    cache.get_or_insert_with(1, || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        99
                    })
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        release.notify_one();
        assert_eq!(leader.await.unwrap(), 7);
        for t in threads {
            assert_eq!(t.join().unwrap(), 7);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    });
}

/// The loading task is aborted mid-load: the waiters are not stuck, one of them loads.
#[test]
fn a_cancelled_loader_is_retried() {
    run(async {
        let cache = Cache::<u64, u64>::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let first = {
            let (cache, calls) = (cache.clone(), calls.clone());
            tokio::spawn(async move {
                cache
                    .get_or_insert_async(5, async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // Never finishes on its own.
                        std::future::pending::<()>().await;
                        0
                    })
                    .await
            })
        };
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_insert_async(5, async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            55
                        })
                        .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        for w in waiters {
            assert_eq!(w.await.unwrap(), 55);
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "one abandoned load, one retry"
        );
        assert_eq!(cache.get(&5), Some(55));
    });
}

/// A timeout around the loading call (its future dropped): the next caller loads.
#[test]
fn a_timed_out_loader_leaves_no_stuck_key() {
    run(async {
        let cache = Cache::<u64, u64>::new();
        let slow = cache.get_or_insert_async(9, async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            1
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(20), slow)
                .await
                .is_err()
        );
        let v = cache.get_or_insert_async(9, async { 2 }).await;
        assert_eq!(v, 2);
    });
}

/// Waiting futures dropped before the load ends: the load still completes for the rest.
#[test]
fn dropped_waiters_do_not_disturb_the_load() {
    run(async {
        let cache = Cache::<u64, u64>::new();
        let release = Arc::new(Notify::new());
        let started = Arc::new(AtomicUsize::new(0));
        let leader = {
            let (cache, release, started) = (cache.clone(), release.clone(), started.clone());
            tokio::spawn(async move {
                cache
                    .get_or_insert_async(3, async {
                        started.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        33
                    })
                    .await
            })
        };
        while started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..20 {
            let waiter = cache.get_or_insert_async(3, async { unreachable!("single-flight") });
            assert!(
                tokio::time::timeout(Duration::from_millis(1), waiter)
                    .await
                    .is_err()
            );
        }
        let survivor = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_insert_async(3, async { unreachable!("single-flight") })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        release.notify_one();
        assert_eq!(leader.await.unwrap(), 33);
        assert_eq!(survivor.await.unwrap(), 33);
    });
}

#[derive(Debug)]
struct LoadError(u32);

/// A failing load's error reaches every waiter, once, as the same `Arc`; it is not cached:
/// the next caller loads again.
#[test]
fn an_error_reaches_every_waiter_once() {
    run(async {
        let cache = Cache::<u64, u64>::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(tokio::sync::Barrier::new(100));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (cache, calls, arrived, start) =
                    (cache.clone(), calls.clone(), arrived.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    let load = cache.try_get_or_insert_async(8, async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // Fails only once every caller waits for it.
                        until_arrived(&arrived, 100).await;
                        Err::<u64, _>(LoadError(500))
                    });
                    arrive(load, &arrived).await
                })
            })
            .collect();
        let mut errors = Vec::new();
        for t in tasks {
            errors.push(t.await.unwrap().unwrap_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])));
        assert_eq!(errors[0].0, 500);
        // One error object, held by the 100 callers and nobody else.
        assert_eq!(Arc::strong_count(&errors[0]), 100);
        assert_eq!(cache.get(&8), None);
        let ok = cache
            .try_get_or_insert_async(8, async { Ok::<_, LoadError>(80) })
            .await
            .unwrap();
        assert_eq!(ok, 80);
    });
}

/// An optional load's `None` reaches every waiter and is not stored.
#[test]
fn nothing_reaches_every_waiter() {
    run(async {
        let cache = Cache::<u64, u64>::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (cache, calls, arrived) = (cache.clone(), calls.clone(), arrived.clone());
                tokio::spawn(async move {
                    let load = cache.optionally_get_or_insert_async(4, async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // Finds nothing only once every caller waits for it.
                        until_arrived(&arrived, 50).await;
                        None
                    });
                    arrive(load, &arrived).await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), None);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get(&4), None);
    });
}

/// A waiter of another kind does not take an outcome it cannot return: an infallible caller
/// waiting for a failing load loads on its own.
#[test]
fn an_infallible_waiter_loads_after_a_failed_load() {
    run(async {
        let cache = Cache::<u64, u64>::new();
        let release = Arc::new(Notify::new());
        let started = Arc::new(AtomicUsize::new(0));
        let failing = {
            let (cache, release, started) = (cache.clone(), release.clone(), started.clone());
            tokio::spawn(async move {
                cache
                    .try_get_or_insert_async(6, async {
                        started.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        Err::<u64, _>("down")
                    })
                    .await
            })
        };
        while started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let infallible = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get_or_insert_async(6, async { 66 }).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        release.notify_one();
        assert_eq!(*failing.await.unwrap().unwrap_err(), "down");
        assert_eq!(infallible.await.unwrap(), 66);
    });
}

/// A hasher that sends every key to the same hash.
#[derive(Clone, Default)]
struct Colliding;

impl BuildHasher for Colliding {
    type Hasher = Constant;
    fn build_hasher(&self) -> Constant {
        Constant
    }
}

struct Constant;

impl Hasher for Constant {
    fn finish(&self) -> u64 {
        0x5eed
    }
    fn write(&mut self, _: &[u8]) {}
}

/// Loads are matched by key, not by hash: two keys whose hashes collide load at the same
/// time. Each load waits until the other has started: if one waited for the other's flight,
/// neither would start (the watchdog fails the test).
#[test]
fn colliding_keys_load_independently() {
    let cache: Cache<u64, u64, Colliding> = Cache::builder().hasher(Colliding).build().unwrap();
    let both = Arc::new(Barrier::new(2));
    let (tx, rx) = std::sync::mpsc::channel();
    for k in [1u64, 2] {
        let (cache, both, tx) = (cache.clone(), both.clone(), tx.clone());
        std::thread::spawn(move || {
            let v = cache.get_or_insert_with(k, || {
                both.wait();
                k * 100
            });
            tx.send((k, v)).unwrap();
        });
    }
    let mut got: Vec<_> = (0..2)
        .map(|_| {
            rx.recv_timeout(LIMIT)
                .expect("colliding keys waited for each other")
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, vec![(1, 100), (2, 200)]);
}

/// The same with tasks on one runtime.
#[test]
fn colliding_keys_load_independently_async() {
    run(async {
        let cache: Cache<u64, u64, Colliding> = Cache::builder().hasher(Colliding).build().unwrap();
        let both = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = [1u64, 2]
            .into_iter()
            .map(|k| {
                let (cache, both) = (cache.clone(), both.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_insert_async(k, async {
                            both.wait().await;
                            k * 100
                        })
                        .await
                })
            })
            .collect();
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        got.sort_unstable();
        assert_eq!(got, vec![100, 200]);
    });
}

/// A panicking synchronous load: its waiters start over and one of them loads.
#[test]
fn a_panicking_loader_hands_over() {
    let cache = Cache::<u64, u64>::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(Barrier::new(2));
    let leader = {
        let (cache, calls, started) = (cache.clone(), calls.clone(), started.clone());
        std::thread::spawn(move || {
            cache.get_or_insert_with(2, || {
                calls.fetch_add(1, Ordering::SeqCst);
                started.wait();
                std::thread::sleep(Duration::from_millis(50));
                panic!("the load fails");
            })
        })
    };
    started.wait();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (cache, calls) = (cache.clone(), calls.clone());
        std::thread::spawn(move || {
            tx.send(cache.get_or_insert_with(2, || {
                calls.fetch_add(1, Ordering::SeqCst);
                22
            }))
            .unwrap()
        });
    }
    assert!(leader.join().is_err());
    assert_eq!(rx.recv_timeout(LIMIT).expect("waiter stuck"), 22);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// An init that asks for its own key (a thread) loads on its own instead of waiting for
/// itself.
#[test]
fn a_reentrant_init_does_not_wait_for_itself() {
    let cache = Cache::<u64, u64>::new();
    let inner = cache.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tx.send(cache.get_or_insert_with(1, || inner.get_or_insert_with(1, || 10) + 1))
            .unwrap()
    });
    // The inner load stored 10 first; the outer one finds it there and returns it.
    assert_eq!(rx.recv_timeout(LIMIT).expect("waited for itself"), 10);
}

/// The fallible and optional synchronous forms.
#[test]
fn synchronous_fallible_and_optional_loads() {
    let cache = Cache::<&str, u32>::new();
    let err = cache.try_get_or_insert_with("a", || Err::<u32, _>(LoadError(1)));
    assert_eq!(err.unwrap_err().0, 1);
    assert_eq!(cache.get("a"), None);
    assert_eq!(
        cache
            .try_get_or_insert_with("a", || Ok::<_, LoadError>(1))
            .unwrap(),
        1
    );
    assert_eq!(
        cache
            .try_get_or_insert_with("a", || Err::<u32, _>(LoadError(2)))
            .unwrap(),
        1,
        "a hit does not load"
    );
    assert_eq!(cache.optionally_get_or_insert_with("b", || None), None);
    assert_eq!(
        cache.optionally_get_or_insert_with("b", || Some(2)),
        Some(2)
    );
    assert_eq!(cache.optionally_get_or_insert_with("b", || None), Some(2));
}

/// Loads through the entry API say whether they stored the value.
#[test]
fn entry_loads_report_freshness() {
    run(async {
        let cache = Cache::<u64, u64>::new();
        let e = cache.entry(1).or_insert_with_async(async { 10 }).await;
        assert!(e.is_fresh());
        let e = cache.entry(1).or_insert_with_async(async { 11 }).await;
        assert!(!e.is_fresh());
        assert_eq!(e.into_value(), 10);
        let e = cache
            .entry(2)
            .or_try_insert_with_async(async { Err::<u64, _>(3u8) })
            .await;
        assert_eq!(*e.unwrap_err(), 3);
        let e = cache
            .entry(2)
            .or_optionally_insert_with_async(async { Some(20) })
            .await
            .unwrap();
        assert!(e.is_fresh());
    });
}

/// The futures are `Send` (spawnable on a multi-threaded runtime) when the key, value and load
/// are.
#[test]
fn futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let cache = Cache::<String, Arc<str>>::new();
    let f = cache.get_or_insert_async("k".into(), async { Arc::from("v") });
    send(&f);
    let f = cache.try_get_or_insert_async("k".into(), async {
        Ok::<_, std::io::Error>(Arc::from("v"))
    });
    send(&f);
    let f = cache
        .entry("k".into())
        .or_insert_with_async(async { Arc::from("v") });
    send(&f);
}
