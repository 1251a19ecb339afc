//! Expiry: exact visibility, per-entry lifetimes, touch, idle time, reclamation without reads.
//! Time is a `quanta` mock moved by the tests (no sleeping), except for the sweeper test,
//! which needs a real clock and a real thread.
#![allow(clippy::disallowed_types)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evanesce::{BuildError, Cache, CacheBuilder, RemovalCause};
use quanta::Mock;

type Log = Arc<Mutex<Vec<(u32, u32, RemovalCause)>>>;

fn mocked(ttl: Option<u64>, tti: Option<u64>) -> (Cache<u32, u32>, Arc<Mock>, Log) {
    let (clock, mock) = quanta::Clock::mock();
    let log: Log = Arc::default();
    let sink = log.clone();
    let mut b: CacheBuilder<u32, u32> = Cache::builder()
        .shards(2)
        .clock(clock)
        .eviction_listener(move |k: &u32, v: &u32, c| sink.lock().unwrap().push((*k, *v, c)));
    if let Some(ms) = ttl {
        b = b.time_to_live(Duration::from_millis(ms));
    }
    if let Some(ms) = tti {
        b = b.time_to_idle(Duration::from_millis(ms));
    }
    (b.build().unwrap(), mock, log)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn causes(log: &Log) -> Vec<(u32, u32, RemovalCause)> {
    let mut v = log.lock().unwrap().clone();
    v.sort_by_key(|e| (e.0, e.1));
    v
}

#[test]
fn visible_strictly_before_the_deadline() {
    let (cache, mock, log) = mocked(Some(100), None);
    cache.insert(1, 10);
    mock.increment(ms(99));
    assert_eq!(cache.get(&1), Some(10));
    assert!(cache.contains_key(&1));
    assert_eq!(cache.len(), 1);
    mock.increment(Duration::from_nanos(999_999));
    assert_eq!(cache.get(&1), Some(10), "1 ns before the deadline");
    mock.increment(Duration::from_nanos(1));
    assert_eq!(cache.get(&1), None, "at the deadline");
    assert!(!cache.contains_key(&1));
    assert_eq!(cache.iter().count(), 0);
    assert_eq!(cache.len(), 0, "len never counts an expired entry");
    assert_eq!(causes(&log), vec![(1, 10, RemovalCause::Expired)]);
}

#[test]
fn own_ttl_overrides_the_default_and_touch_restarts_it() {
    let (cache, mock, _log) = mocked(Some(1000), None);
    cache.insert_with_ttl(1, 1, ms(50));
    cache.insert(2, 2);
    mock.increment(ms(40));
    assert!(cache.touch(&1), "restarts its own 50 ms");
    assert!(cache.touch(&2), "restarts the default 1000 ms");
    mock.increment(ms(40));
    assert_eq!(cache.get(&1), Some(1), "80 ms after insert, 40 after touch");
    assert_eq!(cache.ttl(&1), Some(ms(10)));
    mock.increment(ms(10));
    assert_eq!(cache.get(&1), None);
    assert!(!cache.touch(&1), "an expired entry is never brought back");
    assert_eq!(cache.ttl(&2), Some(ms(950)));
    assert_eq!(cache.ttl(&3), None);
}

#[test]
fn set_ttl_moves_the_deadline_both_ways() {
    let (cache, mock, log) = mocked(None, None);
    cache.insert(1, 1);
    assert_eq!(cache.ttl(&1), Some(Duration::MAX), "no deadline");
    assert!(cache.set_ttl(&1, ms(30)));
    assert_eq!(cache.ttl(&1), Some(ms(30)));
    assert!(cache.set_ttl(&1, ms(10)), "earlier");
    mock.increment(ms(10));
    // Reclaimed by a write's maintenance, without reading key 1 again.
    cache.insert(2, 2);
    cache.run_pending_tasks();
    assert_eq!(causes(&log), vec![(1, 1, RemovalCause::Expired)]);
    assert!(!cache.set_ttl(&1, ms(10)));
    cache.insert(3, 3);
    assert!(cache.set_ttl(&3, Duration::ZERO), "zero expires it now");
    assert_eq!(cache.get(&3), None);
    assert_eq!(causes(&log).len(), 2);
    // `touch` uses the lifetime `set_ttl` gave the entry.
    assert!(cache.set_ttl(&2, ms(20)));
    mock.increment(ms(15));
    assert!(cache.touch(&2));
    mock.increment(ms(15));
    assert_eq!(cache.get(&2), Some(2));
}

#[test]
fn zero_ttl_stores_nothing_and_tells_the_listener() {
    let (cache, _mock, log) = mocked(None, None);
    cache.insert(1, 1);
    cache.insert_with_ttl(1, 2, Duration::ZERO);
    cache.insert_with_ttl(5, 5, Duration::ZERO);
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.get(&5), None);
    assert!(cache.is_empty());
    assert_eq!(
        causes(&log),
        vec![
            (1, 1, RemovalCause::Replaced),
            (1, 2, RemovalCause::Expired),
            (5, 5, RemovalCause::Expired)
        ]
    );
}

#[test]
fn stale_read_returns_an_expired_value_once() {
    let (cache, mock, log) = mocked(Some(10), None);
    cache.insert(1, 7);
    assert_eq!(cache.get_stale(&1), Some(7), "live: an ordinary read");
    mock.increment(ms(10));
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.get_stale(&1), Some(7), "expired, not yet reclaimed");
    assert_eq!(cache.get_stale(&1), None, "then gone");
    cache.run_pending_tasks();
    assert_eq!(
        causes(&log),
        vec![(1, 7, RemovalCause::Expired)],
        "reported once"
    );
}

#[test]
fn time_to_idle_moves_forward_on_reads_capped_by_the_ttl() {
    let (cache, mock, _log) = mocked(Some(100), Some(30));
    cache.insert(1, 1);
    for _ in 0..3 {
        mock.increment(ms(20));
        assert_eq!(cache.get(&1), Some(1), "kept alive by reads");
    }
    mock.increment(ms(29));
    assert_eq!(cache.get(&1), Some(1));
    // 89 ms: the next read would give 119 but the time to live caps it at 100.
    assert_eq!(cache.ttl(&1), Some(ms(11)));
    mock.increment(ms(11));
    assert_eq!(cache.get(&1), None, "time to live reached despite reads");
    cache.insert(2, 2);
    mock.increment(ms(30));
    assert_eq!(cache.get(&2), None, "idle for 30 ms");
    // touch restarts both the idle time and the hard cap: kept alive by reads until 80 ms,
    // touched there, the entry lives until 180 ms (not 100) if it keeps being read.
    cache.insert(3, 3);
    for _ in 0..4 {
        mock.increment(ms(20));
        assert_eq!(cache.get(&3), Some(3));
    }
    assert!(cache.touch(&3));
    for _ in 0..4 {
        mock.increment(ms(20));
        assert_eq!(cache.get(&3), Some(3), "past the first cap");
    }
    mock.increment(ms(19));
    assert_eq!(cache.get(&3), Some(3), "179 ms");
    mock.increment(ms(1));
    assert_eq!(cache.get(&3), None, "180 ms: the restarted cap");
}

#[test]
fn time_to_idle_alone_never_caps() {
    let (cache, mock, _log) = mocked(None, Some(10));
    cache.insert(1, 1);
    for _ in 0..100 {
        mock.increment(ms(9));
        assert_eq!(cache.get(&1), Some(1));
    }
    mock.increment(ms(10));
    assert_eq!(cache.get(&1), None);
}

#[test]
fn expired_entries_are_reclaimed_by_writes_without_reads() {
    let (cache, mock, log) = mocked(Some(5), None);
    for i in 0..1000 {
        cache.insert(i, i);
    }
    mock.increment(ms(6));
    // Writes to other keys drive maintenance (amortised); no read of the old keys.
    for i in 1000..1100 {
        cache.insert(i, i);
    }
    cache.run_pending_tasks();
    assert_eq!(log.lock().unwrap().len(), 1000);
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .all(|e| e.2 == RemovalCause::Expired)
    );
    assert_eq!(cache.len(), 100);
    assert_eq!(cache.stats().expirations, 1000);
}

#[test]
fn zero_durations_are_rejected() {
    let ttl = Cache::<u8, u8>::builder()
        .time_to_live(Duration::ZERO)
        .build();
    assert_eq!(
        ttl.map(|_| ()),
        Err(BuildError::ZeroDuration("time_to_live"))
    );
    let tti = Cache::<u8, u8>::builder()
        .time_to_idle(Duration::ZERO)
        .build();
    assert_eq!(
        tti.map(|_| ()),
        Err(BuildError::ZeroDuration("time_to_idle"))
    );
    let sweep = Cache::<u8, u8>::builder()
        .check_period(Duration::ZERO)
        .build();
    assert_eq!(
        sweep.map(|_| ()),
        Err(BuildError::ZeroDuration("check_period"))
    );
    // Huge durations mean "never".
    let (cache, mock, _) = mocked(None, None);
    cache.insert_with_ttl(1, 1, Duration::MAX);
    mock.increment(Duration::from_secs(1 << 40));
    assert_eq!(cache.get(&1), Some(1));
}

fn sweeper_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| t.ok())
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|name| name.trim() == "evanesce-sweep")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Real time: entries with a 50 ms time to live are gone, and reported as expired, within a
/// bounded time, with no call on the cache at all; the sweeper thread ends with the cache.
#[test]
fn check_period_reclaims_an_idle_cache_and_stops_with_it() {
    let log: Log = Arc::default();
    let sink = log.clone();
    let cache: Cache<u32, u32> = Cache::builder()
        .time_to_live(ms(50))
        .check_period(ms(10))
        .eviction_listener(move |k: &u32, v: &u32, c| sink.lock().unwrap().push((*k, *v, c)))
        .build()
        .unwrap();
    for i in 0..500 {
        cache.insert(i, i);
    }
    let start = Instant::now();
    while log.lock().unwrap().len() < 500 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(ms(5));
    }
    let elapsed = start.elapsed();
    assert_eq!(
        log.lock().unwrap().len(),
        500,
        "not reclaimed after {elapsed:?}"
    );
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .all(|e| e.2 == RemovalCause::Expired)
    );
    if cfg!(target_os = "linux") {
        assert!(sweeper_threads() >= 1);
    }
    let weak_probe = Arc::new(());
    let probe = Arc::downgrade(&weak_probe);
    cache.insert(9, 9);
    drop(weak_probe);
    drop(cache);
    // The thread is woken by the drop and exits without another pass.
    let start = Instant::now();
    while cfg!(target_os = "linux")
        && sweeper_threads() > 0
        && start.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(ms(1));
    }
    if cfg!(target_os = "linux") {
        assert_eq!(sweeper_threads(), 0, "the sweeper outlived its cache");
    }
    assert!(probe.upgrade().is_none());
}

/// Whether the calling thread is a cache's sweeper.
fn on_the_sweeper() -> bool {
    std::thread::current().name() == Some("evanesce-sweep")
}

/// Stopping the sweeper (`set_check_period(None)`, the session store's `stop_interval`)
/// returns only once a run under way has ended: nothing of the sweep happens after it. The
/// listener keeps the sweep's run going until the stop has been called (the stopping thread
/// says so just before it calls); the run's end is recorded, and must precede the stop's return.
#[test]
fn stopping_the_sweeper_waits_for_a_run_under_way() {
    let (in_run_tx, in_run) = std::sync::mpsc::channel::<()>();
    let in_run_tx = Mutex::new(in_run_tx);
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let run_ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stopping_in_listener, ended) = (stopping.clone(), run_ended.clone());
    let cache: Cache<u32, u32> = Cache::builder()
        .time_to_live(ms(20))
        .coarse_clock(false)
        .eviction_listener(move |_, _, _| {
            if !on_the_sweeper() || ended.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let _ = in_run_tx.lock().unwrap().send(());
            while !stopping_in_listener.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(ms(1));
            }
            // Time for a stop that does not wait to return before this run ends.
            std::thread::sleep(ms(100));
            ended.store(true, std::sync::atomic::Ordering::SeqCst);
        })
        .build()
        .unwrap();
    cache.insert(1, 1);
    cache.set_check_period(Some(ms(5))).unwrap();
    in_run
        .recv_timeout(Duration::from_secs(60))
        .expect("the sweeper never expired the entry");
    let (done_tx, done) = std::sync::mpsc::channel();
    let stopper = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            stopping.store(true, std::sync::atomic::Ordering::SeqCst);
            cache.set_check_period(None).unwrap();
            let _ = done_tx.send(run_ended.load(std::sync::atomic::Ordering::SeqCst));
        })
    };
    // A watchdog, not a timing assertion: a stop that deadlocked would never answer.
    let ended_first = done
        .recv_timeout(Duration::from_secs(60))
        .expect("stopping the sweeper hung");
    stopper.join().unwrap();
    assert!(
        ended_first,
        "the stop returned while the sweep's run went on"
    );
}

/// A cache with a sweeper dropped by a thread-local's destructor as its thread exits: the
/// sweeper's stop finds out whether it runs on the sweeper's own thread without
/// `thread::current()`, which can panic there (and a panic in a thread-local destructor aborts
/// the process; rust-lang/rust#116933 on macOS). Linux ran it before too: this guards the path.
#[test]
fn a_cache_with_a_sweeper_can_be_dropped_by_a_thread_local_destructor() {
    struct Holder(Option<Cache<u32, u32>>);
    impl Drop for Holder {
        fn drop(&mut self) {
            drop(self.0.take());
        }
    }
    thread_local! {
        static HELD: std::cell::RefCell<Holder> = const { std::cell::RefCell::new(Holder(None)) };
    }
    std::thread::spawn(move || {
        let cache: Cache<u32, u32> = Cache::builder()
            .time_to_live(ms(10))
            .check_period(ms(1))
            .build()
            .unwrap();
        cache.insert(1, 1);
        HELD.with(|held| held.borrow_mut().0 = Some(cache));
        // The thread ends; its thread-locals are destroyed, the cache with them (a panic
        // there would abort this test's process).
    })
    .join()
    .expect("the thread (and its thread-local destructors) ended cleanly");
}

/// A listener that runs in the sweep may stop or restart the sweeper (which cannot wait for
/// its own run), also while another thread is stopping it (and waiting for that run).
#[test]
fn a_listener_in_the_sweep_may_stop_or_restart_the_sweeper() {
    let cache_slot: Arc<std::sync::OnceLock<Cache<u32, u32>>> = Arc::default();
    let slot = cache_slot.clone();
    let (heard_tx, heard) = std::sync::mpsc::channel::<u32>();
    let heard_tx = Mutex::new(heard_tx);
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping_in_listener = stopping.clone();
    let cache: Cache<u32, u32> = Cache::builder()
        .time_to_live(ms(10))
        .coarse_clock(false)
        .eviction_listener(move |k: &u32, _, _| {
            if !on_the_sweeper() {
                return;
            }
            let cache = slot.get().expect("set before the sweeper starts");
            // Key 1 restarts the sweeper, key 2 stops it, from inside the sweep's run; key 4
            // restarts it once another thread has begun to stop it.
            match *k {
                1 => cache.set_check_period(Some(ms(5))).unwrap(),
                2 => cache.set_check_period(None).unwrap(),
                4 => {
                    let _ = heard_tx.lock().unwrap().send(0);
                    while !stopping_in_listener.load(std::sync::atomic::Ordering::SeqCst) {
                        std::thread::sleep(ms(1));
                    }
                    std::thread::sleep(ms(20));
                    cache.set_check_period(Some(ms(5))).unwrap();
                }
                _ => {}
            }
            let _ = heard_tx.lock().unwrap().send(*k);
        })
        .build()
        .unwrap();
    assert!(cache_slot.set(cache.clone()).is_ok());
    let watchdog = Duration::from_secs(60);
    cache.insert(1, 1);
    cache.set_check_period(Some(ms(5))).unwrap();
    assert_eq!(heard.recv_timeout(watchdog), Ok(1), "the restart hung");
    cache.insert(2, 2);
    assert_eq!(heard.recv_timeout(watchdog), Ok(2), "the stop hung");
    // (Whether a sweeper stopped from inside its run runs again cannot be told apart here
    // from the rest of that run, which goes on after the stop and may expire more.)
    cache.set_check_period(Some(ms(5))).unwrap();
    cache.insert(4, 4);
    assert_eq!(heard.recv_timeout(watchdog), Ok(0));
    let stopper = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            stopping.store(true, std::sync::atomic::Ordering::SeqCst);
            cache.set_check_period(None).unwrap();
        })
    };
    assert_eq!(
        heard.recv_timeout(watchdog),
        Ok(4),
        "stop and restart deadlocked"
    );
    stopper.join().unwrap();
    cache.set_check_period(None).unwrap();
    // The listener's slot keeps a handle of its own cache: that cycle leaks, with the test.
    drop(cache);
}

/// `coarse_clock(false)`: real time read on every operation, so an entry is served until its
/// deadline and never after it, with no ticker behind it (the clock module's unit test checks
/// that no ticker is leased).
#[test]
fn a_precise_clock_expires_entries_at_their_deadline_in_real_time() {
    let cache: Cache<u32, u32> = Cache::builder().coarse_clock(false).build().unwrap();
    for round in 0..20u32 {
        let ttl = ms(5 + u64::from(round % 3));
        // The deadline is taken inside `insert_with_ttl`: between these two instants, plus ttl.
        let before_insert = Instant::now();
        cache.insert_with_ttl(round, round, ttl);
        let after_insert = Instant::now();
        loop {
            let past_deadline = after_insert.elapsed() >= ttl;
            let got = cache.get(&round);
            if got.is_none() {
                assert!(before_insert.elapsed() >= ttl, "gone before its deadline");
            }
            if past_deadline {
                assert_eq!(got, None, "served after its {ttl:?} deadline");
                break;
            }
        }
    }
}
