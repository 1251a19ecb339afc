//! Behaviour of the public API.
#![allow(clippy::disallowed_types)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use std::time::Duration;

use evanesce::{BuildError, Cache, MAX_SHARDS, MIN_CHECK_PERIOD, RemovalCause};

#[test]
fn builder_rejects_nonsense_with_typed_errors() {
    let build = |shards| {
        Cache::<u64, u64>::builder()
            .shards(shards)
            .build()
            .map(|_| ())
    };
    assert_eq!(build(0), Err(BuildError::ZeroShards));
    assert_eq!(build(3), Err(BuildError::ShardsNotPowerOfTwo(3)));
    assert_eq!(
        build(MAX_SHARDS * 2),
        Err(BuildError::TooManyShards(MAX_SHARDS * 2))
    );
    assert!(build(1).is_ok());
    assert!(build(MAX_SHARDS).is_ok());
    let huge = Cache::<u64, u64>::builder()
        .shards(1)
        .initial_capacity(usize::MAX)
        .build();
    assert_eq!(
        huge.map(|_| ()),
        Err(BuildError::CapacityTooLarge(usize::MAX))
    );
    // Errors say what is wrong.
    assert!(
        BuildError::ShardsNotPowerOfTwo(3)
            .to_string()
            .contains("power of two")
    );
}

/// Issue 12: `check_period(Duration::from_nanos(1))` made the sweeper spin a core. Periods
/// shorter than a millisecond are refused, at build and when changed later.
#[test]
fn check_periods_below_the_floor_are_refused() {
    let build = |period| {
        Cache::<u64, u64>::builder()
            .check_period(period)
            .build()
            .map(|_| ())
    };
    assert_eq!(
        build(Duration::from_nanos(1)),
        Err(BuildError::PeriodTooShort("check_period"))
    );
    assert_eq!(
        build(MIN_CHECK_PERIOD - Duration::from_nanos(1)),
        Err(BuildError::PeriodTooShort("check_period"))
    );
    assert!(build(MIN_CHECK_PERIOD).is_ok());
    assert!(
        BuildError::PeriodTooShort("check_period")
            .to_string()
            .contains("check_period must be at least 1ms")
    );
    let cache: Cache<u64, u64> = Cache::new();
    let refused = cache
        .set_check_period(Some(Duration::from_micros(10)))
        .unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
    cache.set_check_period(Some(MIN_CHECK_PERIOD)).unwrap();
    cache.set_check_period(None).unwrap();
}

#[test]
fn cache_is_a_cheap_shared_send_sync_handle() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Cache<String, Vec<u8>>>();
    let a: Cache<u64, u64> = Cache::new();
    let b = a.clone();
    a.insert(1, 1);
    assert_eq!(b.get(&1), Some(1));
    b.remove(&1);
    assert!(a.is_empty());
}

#[test]
fn borrowed_lookups() {
    let cache: Cache<String, usize> = Cache::new();
    cache.insert("alpha".to_string(), 1);
    assert_eq!(cache.get("alpha"), Some(1));
    assert!(cache.contains_key("alpha"));
    assert_eq!(cache.remove("alpha"), Some(1));
    assert_eq!(cache.get("alpha"), None);
    let bytes: Cache<Vec<u8>, u8> = Cache::new();
    bytes.insert(vec![1, 2], 3);
    assert_eq!(bytes.get(&[1u8, 2][..]), Some(3));
}

#[test]
fn listener_hears_each_removal_once_with_its_cause() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let cache: Cache<u32, String> = Cache::builder()
        .eviction_listener(move |k: &u32, v: &String, cause| {
            sink.lock().unwrap().push((*k, v.clone(), cause))
        })
        .build()
        .unwrap();
    cache.insert(1, "a".into());
    cache.insert(1, "b".into());
    cache.insert(2, "c".into());
    assert_eq!(cache.remove(&2), Some("c".into()));
    assert_eq!(cache.remove(&2), None);
    cache.insert(3, "d".into());
    cache.clear();
    cache.run_pending_tasks();
    let mut seen = log.lock().unwrap().clone();
    seen.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    assert_eq!(
        seen,
        vec![
            (1, "a".into(), RemovalCause::Replaced),
            (1, "b".into(), RemovalCause::Cleared),
            (2, "c".into(), RemovalCause::Explicit),
            (3, "d".into(), RemovalCause::Cleared),
        ]
    );
    assert!(cache.is_empty());
    assert!(RemovalCause::Size.was_evicted() && !RemovalCause::Replaced.was_evicted());
}

#[test]
fn a_panicking_listener_corrupts_nothing() {
    let cache: Cache<u32, u32> = Cache::builder()
        .eviction_listener(|k: &u32, _: &u32, _| {
            if *k == 13 {
                panic!("listener failure");
            }
        })
        .build()
        .unwrap();
    cache.insert(13, 1);
    cache.insert(14, 1);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.remove(&13)));
    assert!(caught.is_err(), "the panic reaches the caller");
    // The removal itself completed before the listener ran.
    assert_eq!(cache.get(&13), None);
    assert_eq!(cache.get(&14), Some(1));
    assert_eq!(cache.len(), 1);
    cache.insert(13, 2);
    assert_eq!(cache.get(&13), Some(2));
}

#[test]
fn stats_count_writes_always_and_reads_on_request() {
    let quiet: Cache<u8, u8> = Cache::new();
    quiet.insert(1, 1);
    quiet.get(&1);
    quiet.get(&2);
    quiet.remove(&1);
    let s = quiet.stats();
    assert_eq!((s.hits, s.misses, s.inserts, s.removals), (0, 0, 1, 1));
    let counting: Cache<u8, u8> = Cache::builder().record_stats(true).build().unwrap();
    counting.insert(1, 1);
    counting.get(&1);
    counting.get(&1);
    counting.get(&2);
    let s = counting.stats();
    assert_eq!((s.hits, s.misses), (2, 1));
    assert!((s.hit_ratio() - 2.0 / 3.0).abs() < 1e-9);
}

#[test]
fn get_or_insert_with_initialises_once_per_key_under_races() {
    let cache: Cache<u32, u64> = Cache::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let cache = cache.clone();
            let calls = calls.clone();
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                (0..200u32)
                    .map(|k| {
                        cache.get_or_insert_with(k, || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            thread::yield_now();
                            u64::from(k) * 1000 + t
                        })
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<Vec<u64>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        200,
        "one initialisation per key"
    );
    for k in 0..200usize {
        let first = results[0][k];
        assert!(
            results.iter().all(|r| r[k] == first),
            "everyone sees the same value"
        );
        assert_eq!(cache.get(&(k as u32)), Some(first));
    }
}

#[test]
fn get_or_insert_with_recovers_from_a_panicking_init() {
    let cache: Cache<u32, u32> = Cache::new();
    let boom = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cache.get_or_insert_with(5, || panic!("init failed"))
    }));
    assert!(boom.is_err());
    assert_eq!(cache.get(&5), None);
    assert_eq!(cache.get_or_insert_with(5, || 9), 9);
}

/// A value that counts live instances.
struct Counted(Arc<AtomicUsize>);
impl Counted {
    fn new(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Counted(live.clone())
    }
}
impl Clone for Counted {
    fn clone(&self) -> Self {
        Counted::new(&self.0)
    }
}
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits (up to 10 s) for retired values to be freed. The epoch is global to the process and
/// other tests run in parallel threads, so freeing may lag while they hold pins; a value that
/// is never freed is a leak and fails the test.
fn settle(live: &AtomicUsize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while live.load(Ordering::SeqCst) != 0 && std::time::Instant::now() < deadline {
        crossbeam_epoch::pin().flush();
        thread::yield_now();
    }
}

#[test]
fn every_value_is_dropped_exactly_once() {
    let live = Arc::new(AtomicUsize::new(0));
    let cache: Cache<u32, Counted> = Cache::builder().shards(2).build().unwrap();
    for i in 0..5_000 {
        cache.insert(i % 700, Counted::new(&live));
        if i % 3 == 0 {
            cache.remove(&(i % 500));
        }
    }
    cache.clear();
    for i in 0..300 {
        cache.insert(i, Counted::new(&live));
    }
    drop(cache);
    settle(&live);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

/// Replaced values are freed with no further call on the cache or the epoch, also when a
/// reader was inside a long read while they were retired: the crate's reclaimer thread moves
/// both kinds of grace period along. (Before it, what the last passes retired waited for the
/// shard's next write; a read that was in progress during the writes left thousands.)
#[test]
fn replaced_values_are_freed_without_further_calls() {
    let live = Arc::new(AtomicUsize::new(0));
    const N: u32 = 3_000;
    let cache: Cache<u32, Counted> = Cache::builder().shards(1).build().unwrap();
    for k in 0..N {
        cache.insert(k, Counted::new(&live));
    }
    // A slow reader, inside reads while the values are replaced.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (cache, stop) = (cache.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                cache.get_with(&0, |_| thread::sleep(std::time::Duration::from_millis(2)));
            }
        })
    };
    for k in 0..N {
        cache.insert(k, Counted::new(&live));
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    // Only the shard's partial batch (fewer than 32 nodes with this shard's size) may wait
    // for the next pass; everything else must go without help.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while live.load(Ordering::SeqCst) >= N as usize + 32 && std::time::Instant::now() < deadline {
        thread::sleep(std::time::Duration::from_millis(5));
    }
    let left = live.load(Ordering::SeqCst) - N as usize;
    assert!(left < 32, "{left} replaced values still alive");
    drop(cache);
    settle(&live);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

/// Dropping a cache frees what it retired at once, even while a read in progress elsewhere
/// (on another cache) holds every grace period back: nothing can reach a dropped cache's
/// memory. (Found by the `ops` fuzz target: its drop count came up short right after the
/// drop when a grace period had not completed yet.)
#[test]
fn dropping_a_cache_frees_what_it_retired_at_once() {
    let other: Cache<u32, u32> = Cache::new();
    other.insert(0, 0);
    let (entered, wait_entered) = std::sync::mpsc::channel();
    let (leave, wait_leave) = std::sync::mpsc::channel::<()>();
    let reader = thread::spawn(move || {
        other.get_with(&0, |_| {
            entered.send(()).unwrap();
            wait_leave.recv().unwrap();
        })
    });
    wait_entered.recv().unwrap();
    let live = Arc::new(AtomicUsize::new(0));
    let cache: Cache<u32, Counted> = Cache::builder().shards(1).build().unwrap();
    for round in 0..2 {
        for k in 0..1_000 {
            cache.insert(k, Counted::new(&live));
        }
        if round == 1 {
            cache.run_pending_tasks();
        }
    }
    assert!(
        live.load(Ordering::SeqCst) > 1_000,
        "the read in progress did not hold the grace periods back"
    );
    drop(cache);
    assert_eq!(live.load(Ordering::SeqCst), 0);
    leave.send(()).unwrap();
    reader.join().unwrap();
}

#[test]
fn every_value_is_dropped_exactly_once_under_concurrent_churn() {
    let live = Arc::new(AtomicUsize::new(0));
    let cache: Cache<u32, Counted> = Cache::builder().shards(4).build().unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let cache = cache.clone();
            let live = live.clone();
            thread::spawn(move || {
                for i in 0..20_000u32 {
                    let k = (i * 7 + t) % 1500;
                    match i % 5 {
                        0 => drop(cache.remove(&k)),
                        1 => drop(cache.get(&k)),
                        2 => drop(cache.get_or_insert_with(k, || Counted::new(&live))),
                        _ => cache.insert(k, Counted::new(&live)),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(cache);
    settle(&live);
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "every value dropped, none twice"
    );
}

#[test]
fn iter_is_a_snapshot_of_live_entries() {
    let cache: Cache<u32, u32> = Cache::builder().shards(4).build().unwrap();
    for i in 0..1000 {
        cache.insert(i, i);
    }
    for i in 0..1000 {
        if i % 2 == 0 {
            cache.remove(&i);
        }
    }
    let mut got: Vec<_> = cache.iter().collect();
    got.sort_unstable();
    let expected: Vec<_> = (0..1000).filter(|i| i % 2 == 1).map(|i| (i, i)).collect();
    assert_eq!(got, expected);
}

#[test]
fn pinned_reads_agree_with_plain_reads() {
    let (clock, mock) = quanta::Clock::mock();
    let cache: Cache<String, u64> = Cache::builder()
        .clock(clock)
        .record_stats(true)
        .build()
        .unwrap();
    for i in 0..500u64 {
        cache.insert(i.to_string(), i);
    }
    for i in (0..500u64).step_by(3) {
        cache.remove(i.to_string().as_str());
    }
    cache.insert_with_ttl("short".to_string(), 7, std::time::Duration::from_secs(1));
    let before = cache.stats();
    {
        let pinned = cache.pin();
        for i in 0..600u64 {
            let key = i.to_string();
            let expected = (i < 500 && i % 3 != 0).then_some(i);
            assert_eq!(pinned.get(key.as_str()), expected, "get {key}");
            assert_eq!(
                pinned.get_with(key.as_str(), |v| v * 2),
                expected.map(|v| v * 2)
            );
            assert_eq!(pinned.contains_key(key.as_str()), expected.is_some());
        }
        assert_eq!(pinned.get("short"), Some(7));
        // Expiry is exact through a pinned handle too.
        mock.increment(std::time::Duration::from_secs(1));
        assert_eq!(pinned.get("short"), None);
        assert!(!pinned.contains_key("short"));
    }
    // Hits and misses are counted as for plain reads (contains_key counts neither).
    let after = cache.stats();
    let live = (0..500u64).filter(|i| i % 3 != 0).count() as u64;
    assert_eq!(after.hits - before.hits, 2 * live + 1);
    assert_eq!(after.misses - before.misses, 2 * (600 - live) + 1);
}

/// While a `Pinned` handle lives, a replaced value stays in memory (a reader could still hold
/// it); once the handle is dropped, it is freed.
#[test]
fn a_pinned_handle_holds_back_reclamation_until_dropped() {
    let live = Arc::new(AtomicUsize::new(0));
    let cache: Cache<u32, Counted> = Cache::builder().shards(1).build().unwrap();
    cache.insert(1, Counted::new(&live));
    let pinned = cache.pin();
    let first = pinned.get_with(&1, |v| Arc::as_ptr(&v.0) as usize);
    assert!(first.is_some());
    cache.insert(1, Counted::new(&live));
    cache.run_pending_tasks();
    for _ in 0..1_000 {
        crossbeam_epoch::pin().flush();
    }
    assert_eq!(
        live.load(Ordering::SeqCst),
        2,
        "the replaced value was freed while pinned"
    );
    assert!(pinned.get(&1).is_some());
    drop(pinned);
    cache.run_pending_tasks();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while live.load(Ordering::SeqCst) != 1 && std::time::Instant::now() < deadline {
        crossbeam_epoch::pin().flush();
        thread::yield_now();
    }
    assert_eq!(
        live.load(Ordering::SeqCst),
        1,
        "the replaced value was never freed"
    );
    drop(cache);
    settle(&live);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

/// Issue 12's review: with a hasher whose hashes collide, an `init` that asks for another key
/// waited for its own computation (calls in flight are matched by hash) and hung.
#[test]
fn an_init_may_ask_for_a_colliding_key() {
    #[derive(Clone, Default)]
    struct Constant;
    impl std::hash::BuildHasher for Constant {
        type Hasher = ConstantHasher;
        fn build_hasher(&self) -> ConstantHasher {
            ConstantHasher
        }
    }
    struct ConstantHasher;
    impl std::hash::Hasher for ConstantHasher {
        fn finish(&self) -> u64 {
            42
        }
        fn write(&mut self, _: &[u8]) {}
    }
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let cache: Cache<u64, u64, Constant> = Cache::builder().hasher(Constant).build().unwrap();
        let v = cache.get_or_insert_with(1, || cache.get_or_insert_with(2, || 20) + 1);
        let _ = tx.send((v, cache.get(&1), cache.get(&2)));
    });
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("a nested get_or_insert_with hung (watchdog: 30 s)");
    assert_eq!(got, (21, Some(21), Some(20)));
}

/// Issue 12's review: a key whose `Eq` panics in the insert of `get_or_insert_with` on a
/// bounded cache kept the weight it had reserved, so 60 panics left a capacity of 64 usable
/// for a handful of entries.
#[test]
fn a_panicking_eq_gives_its_reservation_back() {
    use std::cell::Cell;
    thread_local! {
        /// `Eq` calls left before one panics (negative: never).
        static COUNTDOWN: Cell<i64> = const { Cell::new(-1) };
    }
    #[derive(Clone, Debug)]
    struct Touchy(u64);
    impl std::hash::Hash for Touchy {
        fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
            // Every key collides: each lookup compares keys (`Eq`) along one chain.
            0u64.hash(h);
        }
    }
    impl PartialEq for Touchy {
        fn eq(&self, other: &Self) -> bool {
            COUNTDOWN.with(|c| match c.get() {
                0 => {
                    c.set(-1);
                    panic!("the user's Eq panics");
                }
                n if n > 0 => c.set(n - 1),
                _ => {}
            });
            self.0 == other.0
        }
    }
    impl Eq for Touchy {}
    let cache: Cache<Touchy, u64> = Cache::builder().max_capacity(64).shards(1).build().unwrap();
    cache.insert(Touchy(0), 0);
    for k in 1..=60 {
        // Two lookups (before and after registering the call) pass; the insert's walk of the
        // chain, after the reservation, panics.
        COUNTDOWN.with(|c| c.set(2));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.get_or_insert_with(Touchy(k), || k)
        }));
        assert!(caught.is_err(), "key {k}: no panic");
    }
    COUNTDOWN.with(|c| c.set(-1));
    assert_eq!(cache.weighted_size(), 1, "weight still reserved");
    for k in 100..163 {
        cache.insert(Touchy(k), k);
    }
    assert_eq!(cache.len(), 64, "the capacity shrank");
}
