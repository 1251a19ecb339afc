//! The `Expiry` trait: lifetimes derived from the entry on create, read and update, with a
//! mock clock (no sleeping: time moves only when a test moves it).
#![allow(clippy::disallowed_types)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use evanesce::{Cache, Expiry, RemovalCause};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

type Log = Arc<Mutex<Vec<(u64, u64, RemovalCause)>>>;

/// A cache with `expiry`, a mock clock and a listener recording what leaves.
fn cache_with(
    expiry: impl Expiry<u64, u64> + Send + Sync + 'static,
    ttl: Option<Duration>,
) -> (Cache<u64, u64>, Arc<quanta::Mock>, Log) {
    let (clock, mock) = quanta::Clock::mock();
    let log: Log = Arc::default();
    let sink = log.clone();
    let mut builder = Cache::builder()
        .clock(clock)
        .expire_after(expiry)
        .eviction_listener(move |k: &u64, v: &u64, c| sink.lock().unwrap().push((*k, *v, c)));
    if let Some(ttl) = ttl {
        builder = builder.time_to_live(ttl);
    }
    (builder.build().unwrap(), mock, log)
}

/// Lifetimes by value: the value is its lifetime in seconds on create; 0 means none.
struct ByValue;
impl Expiry<u64, u64> for ByValue {
    fn expire_after_create(&self, _: &u64, v: &u64) -> Option<Duration> {
        (*v != 0).then(|| secs(*v))
    }
}

#[test]
fn create_gives_each_entry_its_lifetime() {
    let (cache, mock, log) = cache_with(ByValue, None);
    cache.insert(1, 10);
    cache.insert(2, 20);
    cache.insert(3, 0);
    assert_eq!(cache.ttl(&1), Some(secs(10)));
    assert_eq!(
        cache.ttl(&3),
        Some(Duration::MAX),
        "None from the hook: no expiry"
    );
    mock.increment(secs(10));
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.get(&2), Some(20));
    mock.increment(secs(1_000));
    assert_eq!(cache.get(&2), None);
    assert_eq!(cache.get(&3), Some(0));
    cache.run_pending_tasks();
    let mut heard = log.lock().unwrap().clone();
    heard.sort_unstable_by_key(|e| e.0);
    assert_eq!(
        heard,
        vec![
            (1, 10, RemovalCause::Expired),
            (2, 20, RemovalCause::Expired)
        ]
    );
}

/// A time to live caps every lifetime a hook gives, and stands for "no expiry".
#[test]
fn time_to_live_caps_the_hooks() {
    let (cache, mock, _) = cache_with(ByValue, Some(secs(30)));
    cache.insert(1, 10);
    cache.insert(2, 100);
    cache.insert(3, 0);
    assert_eq!(cache.ttl(&1), Some(secs(10)));
    assert_eq!(cache.ttl(&2), Some(secs(30)));
    assert_eq!(cache.ttl(&3), Some(secs(30)));
    mock.increment(secs(30));
    assert_eq!(cache.get(&2), None);
    assert_eq!(cache.get(&3), None);
}

/// The update hook is given the replaced value's remaining lifetime; the default keeps it.
#[test]
fn update_is_given_the_remaining_lifetime() {
    struct Seen(Arc<Mutex<Vec<Option<Duration>>>>);
    impl Expiry<u64, u64> for Seen {
        fn expire_after_create(&self, _: &u64, _: &u64) -> Option<Duration> {
            Some(secs(100))
        }
        fn expire_after_update(
            &self,
            _: &u64,
            v: &u64,
            remaining: Option<Duration>,
        ) -> Option<Duration> {
            self.0.lock().unwrap().push(remaining);
            // Odd values keep the remaining lifetime, even ones restart at 50 s.
            if v % 2 == 1 {
                remaining
            } else {
                Some(secs(50))
            }
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (cache, mock, log) = cache_with(Seen(seen.clone()), None);
    cache.insert(1, 1);
    mock.increment(secs(40));
    cache.insert(1, 3);
    assert_eq!(cache.ttl(&1), Some(secs(60)), "kept the remaining lifetime");
    mock.increment(secs(10));
    cache.insert(1, 4);
    assert_eq!(cache.ttl(&1), Some(secs(50)), "restarted");
    // Through the entry API too.
    mock.increment(secs(5));
    cache.entry(1).and_upsert_with(|v| v.unwrap() + 1);
    assert_eq!(cache.ttl(&1), Some(secs(45)));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some(secs(60)), Some(secs(50)), Some(secs(45))]
    );
    // A key whose value expired is created anew (the create hook), not updated.
    mock.increment(secs(45));
    assert_eq!(cache.get(&1), None);
    cache.insert(1, 6);
    assert_eq!(cache.ttl(&1), Some(secs(100)));
    assert_eq!(seen.lock().unwrap().len(), 3);
    cache.run_pending_tasks();
    let causes: Vec<_> = log.lock().unwrap().iter().map(|e| (e.1, e.2)).collect();
    assert_eq!(
        causes,
        vec![
            (1, RemovalCause::Replaced),
            (3, RemovalCause::Replaced),
            (4, RemovalCause::Replaced),
            (5, RemovalCause::Expired)
        ]
    );
}

/// A read hook that slides the lifetime (a time to idle by hand), shortens it, or moves it
/// by less than a tick (not written: a hot entry is not rewritten on every read).
#[test]
fn read_moves_the_lifetime() {
    struct OnRead;
    impl Expiry<u64, u64> for OnRead {
        fn expire_after_create(&self, _: &u64, _: &u64) -> Option<Duration> {
            Some(secs(10))
        }
        fn expire_after_read(
            &self,
            k: &u64,
            _: &u64,
            remaining: Option<Duration>,
        ) -> Option<Duration> {
            match k {
                1 => Some(secs(10)),
                2 => Some(Duration::ZERO),
                _ => remaining.map(|r| r + Duration::from_micros(10)),
            }
        }
    }
    let (cache, mock, log) = cache_with(OnRead, None);
    for k in 1..=3 {
        cache.insert(k, k);
    }
    // Key 1 slides: read every 6 s, it outlives its first 10 s by far.
    for _ in 0..5 {
        mock.increment(secs(6));
        assert_eq!(cache.get(&1), Some(1));
    }
    assert_eq!(cache.ttl(&1), Some(secs(10)));
    mock.increment(secs(10));
    assert_eq!(cache.get(&1), None);
    // Keys 2 and 3, never read, expired with their first lifetimes; each is heard once.
    cache.run_pending_tasks();
    let mut heard = log.lock().unwrap().clone();
    heard.sort_unstable_by_key(|e| e.0);
    assert_eq!(
        heard,
        vec![
            (1, 1, RemovalCause::Expired),
            (2, 2, RemovalCause::Expired),
            (3, 3, RemovalCause::Expired)
        ]
    );
    let (cache, mock, _) = cache_with(OnRead, None);
    for k in 1..=3 {
        cache.insert(k, k);
    }
    // Key 2: the read that returns zero still gets the value; the entry is gone after it.
    assert_eq!(cache.get(&2), Some(2));
    assert_eq!(cache.get(&2), None);
    // Key 3: moves of 10 µs are under a tick, so never written: its lifetime stays.
    for _ in 0..1_000 {
        assert_eq!(cache.get(&3), Some(3));
    }
    assert_eq!(cache.ttl(&3), Some(secs(10)));
    mock.increment(secs(10));
    assert_eq!(cache.get(&3), None);
}

/// Reads that do not count as uses do not call the read hook.
#[test]
fn peeks_do_not_call_the_read_hook() {
    struct Counting(Arc<Mutex<u32>>);
    impl Expiry<u64, u64> for Counting {
        fn expire_after_read(
            &self,
            _: &u64,
            _: &u64,
            remaining: Option<Duration>,
        ) -> Option<Duration> {
            *self.0.lock().unwrap() += 1;
            remaining
        }
    }
    let calls = Arc::new(Mutex::new(0));
    let (cache, _, _) = cache_with(Counting(calls.clone()), None);
    cache.insert(1, 1);
    assert!(cache.contains_key(&1));
    assert_eq!(cache.iter().count(), 1);
    assert_eq!(cache.ttl(&1), Some(Duration::MAX));
    assert_eq!(*calls.lock().unwrap(), 0);
    assert_eq!(cache.get(&1), Some(1));
    assert_eq!(cache.get_or_insert_with(1, || unreachable!()), 1);
    assert_eq!(*calls.lock().unwrap(), 2);
}

#[test]
fn policy_reports_an_expiry() {
    let (cache, _, _) = cache_with(ByValue, Some(secs(30)));
    let policy = cache.policy();
    assert!(policy.has_expiry());
    assert_eq!(policy.time_to_live(), Some(secs(30)));
    assert_eq!(policy.time_to_idle(), None);
    assert!(!Cache::<u64, u64>::new().policy().has_expiry());
}
