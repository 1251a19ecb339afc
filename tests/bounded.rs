//! The size bound: exact counts when quiet, weights, heavy entries, scan resistance, fair
//! sharing of the capacity between shards, and the listener's `Size` reports.
#![allow(clippy::disallowed_types)]

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use evanesce::{BuildError, Cache, RemovalCause};
use proptest::prelude::*;

type Log = Arc<Mutex<Vec<(u64, RemovalCause)>>>;

fn counting(capacity: u64) -> (Cache<u64, u64>, Log) {
    let log: Log = Arc::default();
    let sink = log.clone();
    let cache = Cache::builder()
        .max_capacity(capacity)
        .eviction_listener(move |k: &u64, _: &u64, c| sink.lock().unwrap().push((*k, c)))
        .build()
        .unwrap();
    (cache, log)
}

#[test]
fn holds_exactly_its_capacity_when_quiet() {
    let (cache, log) = counting(10);
    for i in 0..15 {
        cache.insert(i, i);
    }
    assert_eq!(cache.len(), 10);
    assert_eq!(cache.weighted_size(), 10);
    assert_eq!(
        log.lock()
            .unwrap()
            .iter()
            .filter(|e| e.1 == RemovalCause::Size)
            .count(),
        5
    );
    assert_eq!(cache.stats().evictions, 5);
    // memorystore's tests: destroying one leaves 9; 10 sets, 2 destroys, 2 sets give 10.
    let present: Vec<u64> = (0..15).filter(|k| cache.contains_key(k)).collect();
    cache.remove(&present[0]);
    assert_eq!(cache.len(), 9);
    let (cache, _) = counting(10);
    for i in 0..10 {
        cache.insert(i, i);
    }
    cache.remove(&0);
    cache.remove(&1);
    cache.insert(10, 10);
    cache.insert(11, 11);
    assert_eq!(cache.len(), 10);
    for k in 2..12 {
        assert!(
            cache.contains_key(&k),
            "{k} should still be there (nothing was evicted)"
        );
    }
}

/// The default shard count leaves every shard at least 512 entries of a bounded cache's
/// capacity (a shard's policy decides on its own entries, and small shares lose hit ratio):
/// rounded up to a power of two, a capacity of 4,000 got 8 shards of 500.
#[test]
fn default_shards_leave_each_at_least_512_entries() {
    for capacity in [
        512u64, 1_000, 1_023, 1_024, 2_000, 2_500, 4_000, 4_096, 5_000, 9_000,
    ] {
        let cache: Cache<u64, u64> = Cache::builder().max_capacity(capacity).build().unwrap();
        let shards = cache.policy().shards() as u64;
        assert!(shards.is_power_of_two());
        assert!(
            capacity / shards >= 512,
            "{shards} shards for {capacity} entries"
        );
    }
    let tiny: Cache<u64, u64> = Cache::builder().max_capacity(100).build().unwrap();
    assert_eq!(tiny.policy().shards(), 1);
}

#[test]
fn zero_capacity_is_rejected() {
    let err = Cache::<u8, u8>::builder()
        .max_capacity(0)
        .build()
        .map(|_| ());
    assert_eq!(err, Err(BuildError::ZeroCapacity));
}

#[test]
fn weights_are_bounded_and_heavy_entries_refused() {
    let log: Arc<Mutex<Vec<(u32, RemovalCause)>>> = Arc::default();
    let sink = log.clone();
    let cache: Cache<u32, Vec<u8>> = Cache::builder()
        .max_capacity(1000)
        .weigher(|_, v: &Vec<u8>| v.len() as u32)
        .eviction_listener(move |k: &u32, _: &Vec<u8>, c| sink.lock().unwrap().push((*k, c)))
        .build()
        .unwrap();
    for i in 0..500u32 {
        cache.insert(i % 300, vec![0; 1 + (i as usize * 7) % 50]);
        cache.run_pending_tasks();
        assert!(cache.weighted_size() <= 1000);
    }
    let held: u64 = cache.iter().map(|(_, v)| v.len() as u64).sum();
    assert_eq!(held, cache.weighted_size());
    // Heavier than the whole capacity: not stored, and the listener hears it as `Size`
    // (and the value it would have replaced as `Replaced`).
    cache.insert(7, vec![1]);
    log.lock().unwrap().clear();
    cache.insert(7, vec![0; 1001]);
    assert_eq!(cache.get(&7), None);
    let heard = log.lock().unwrap().clone();
    assert!(heard.contains(&(7, RemovalCause::Size)), "{heard:?}");
    assert!(heard.contains(&(7, RemovalCause::Replaced)), "{heard:?}");
    assert_eq!(cache.get_or_insert_with(8, || vec![0; 2000]).len(), 2000);
    assert_eq!(cache.get(&8), None, "too heavy to keep");
}

#[test]
fn a_scan_does_not_evict_the_working_set() {
    let cache: Cache<u64, u64> = Cache::builder().max_capacity(2000).build().unwrap();
    let hot: Vec<u64> = (0..1000).collect();
    for _ in 0..5 {
        for &k in &hot {
            if cache.get(&k).is_none() {
                cache.insert(k, k);
            }
        }
    }
    // A one-time scan of 100,000 never-repeated keys, with the hot set still in use.
    for k in 0..100_000u64 {
        let scan = 1_000_000 + k;
        if cache.get(&scan).is_none() {
            cache.insert(scan, scan);
        }
        if k % 10 == 0 {
            let h = hot[(k as usize / 10) % hot.len()];
            if cache.get(&h).is_none() {
                cache.insert(h, h);
            }
        }
    }
    cache.run_pending_tasks();
    let kept = hot.iter().filter(|k| cache.contains_key(k)).count();
    // Each hot key comes back once per 10,000 scan keys, far beyond the capacity: under LRU
    // none would survive. Here 941 to 992 did over 50 runs (the hash seeds, and with them how
    // the hot keys spread over the shards, vary from run to run); the bound leaves a margin.
    assert!(
        kept >= 900,
        "only {kept} of 1000 hot keys survived a 100k-key scan"
    );
    assert!(cache.len() <= 2000);
}

/// A new value for a popular key keeps the key's standing: a working set that was rewritten
/// survives eviction pressure as well as one that was not. (When a replacement entered the
/// cache like a new key, with no hits on record, every rewritten key was evicted here, and
/// none of the untouched ones.)
#[test]
fn rewritten_hot_keys_keep_their_standing() {
    let survivors = |rewrite: bool| {
        let cache: Cache<u64, u64> = Cache::builder()
            .shards(1)
            .max_capacity(1000)
            .build()
            .unwrap();
        let hot: Vec<u64> = (0..300).collect();
        // Popular keys, among a stream of others that also reach the main queue.
        for round in 0..6u64 {
            for &k in &hot {
                if cache.get(&k).is_none() {
                    cache.insert(k, k);
                }
            }
            for j in 0..300u64 {
                let k = 10_000 + round * 300 + j;
                cache.insert(k, k);
                cache.get(&k);
            }
        }
        if rewrite {
            for &k in &hot {
                cache.insert(k, k + 1);
            }
        }
        // Pressure: keys that are used twice (promoted out of probation), none of the hot set.
        for j in 0..1500u64 {
            let k = 1_000_000 + j;
            cache.insert(k, k);
            cache.get(&k);
        }
        cache.run_pending_tasks();
        hot.iter().filter(|&&k| cache.contains_key(&k)).count()
    };
    let (kept, rewritten) = (survivors(false), survivors(true));
    assert!(
        kept >= 250,
        "only {kept} of 300 hot keys survived untouched"
    );
    assert!(
        rewritten + 15 >= kept,
        "{rewritten} of 300 rewritten hot keys survived, against {kept} untouched"
    );
}

/// A hasher that leaves the top bits (the shard) at zero: every key lands in shard 0.
#[derive(Clone, Default)]
struct AllInOneShard;
struct LowBits(u64);
impl Hasher for LowBits {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9) & 0x0000_FFFF_FFFF_FFFF
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
}
impl BuildHasher for AllInOneShard {
    type Hasher = LowBits;
    fn build_hasher(&self) -> LowBits {
        LowBits(0)
    }
}

#[test]
fn shards_share_the_capacity_when_keys_are_skewed() {
    let cache: Cache<u64, u64, AllInOneShard> = Cache::builder()
        .max_capacity(4000)
        .shards(8)
        .hasher(AllInOneShard)
        .build()
        .unwrap();
    for k in 0..20_000u64 {
        cache.insert(k, k);
    }
    // Every key is in one shard; with a fixed per-shard split it would hold 500.
    let len = cache.len();
    assert!(
        len >= 3900,
        "a skewed key distribution left the capacity unused: {len}"
    );
    assert!(len <= 4000);
    // And with a good hasher the shards fill evenly up to the capacity.
    let even: Cache<u64, u64> = Cache::builder()
        .max_capacity(4000)
        .shards(8)
        .build()
        .unwrap();
    for k in 0..20_000u64 {
        even.insert(k, k);
    }
    assert_eq!(even.len(), 4000);
}

#[test]
fn eviction_and_expiry_together() {
    let (clock, mock) = quanta::Clock::mock();
    let expired = Arc::new(AtomicUsize::new(0));
    let evicted = Arc::new(AtomicUsize::new(0));
    let (e1, e2) = (expired.clone(), evicted.clone());
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(100)
        .time_to_live(std::time::Duration::from_millis(10))
        .clock(clock)
        .eviction_listener(move |_: &u64, _: &u64, c| match c {
            RemovalCause::Expired => drop(e1.fetch_add(1, Ordering::SeqCst)),
            RemovalCause::Size => drop(e2.fetch_add(1, Ordering::SeqCst)),
            _ => {}
        })
        .build()
        .unwrap();
    for k in 0..150 {
        cache.insert(k, k);
    }
    assert_eq!(cache.len(), 100);
    assert_eq!(evicted.load(Ordering::SeqCst), 50);
    mock.increment(std::time::Duration::from_millis(10));
    assert_eq!(cache.len(), 0);
    assert_eq!(expired.load(Ordering::SeqCst), 100, "expired, not evicted");
    let mut seen = HashSet::new();
    for k in 200..260 {
        cache.insert(k, k);
        seen.insert(k);
    }
    assert_eq!(cache.len(), 60, "expired weight was given back");
}

/// Found by the `bounded` fuzz target: capacity 1, two shards, a refused heavy entry, then two
/// entries of weight 1 and one of weight 0 (which counts as 1): the weight held must never
/// exceed the capacity.
#[test]
fn weight_never_exceeds_a_capacity_of_one() {
    use std::collections::hash_map::DefaultHasher;
    use std::hash::BuildHasherDefault;
    let cache: Cache<u16, (u64, u8), _> = Cache::builder()
        .shards(2)
        .max_capacity(1)
        .hasher(BuildHasherDefault::<DefaultHasher>::default())
        .weigher(|_, v: &(u64, u8)| u32::from(v.1))
        .eviction_listener(|_: &u16, _: &(u64, u8), _| {})
        .build()
        .unwrap();
    let check = |step: &str| {
        let size = cache.weighted_size();
        assert!(size <= 1, "weight {size} over capacity 1 after {step}");
        // A zero weight counts as one.
        let held: u64 = cache.iter().map(|(_, v)| u64::from(v.1.max(1))).sum();
        assert_eq!(held, size, "accounting after {step}");
    };
    for serial in 1..=3 {
        cache.insert(267, (serial, 11));
        check("a refused heavy insert");
    }
    cache.run_pending_tasks();
    check("a pass");
    cache.insert(257, (4, 1));
    check("insert 257");
    cache.insert(267, (5, 1));
    check("insert 267");
    cache.insert(0, (6, 0));
    check("insert 0 (weight 0)");
}

/// Runs `f` on its own thread and fails the test if it does not finish within `secs`: a hang
/// must fail the test, not stall the run. (The stuck thread is left behind; the test process
/// ends with the failure.)
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(value) => value,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not finish within {secs} s (a hang)")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// Inserts `keys` distinct keys of weight `weight` into a cache of `capacity` with `shards`
/// shards (`None`: the builder's default) and checks that every insert returns and the weight
/// held stays within the bound.
fn heavy_inserts(capacity: u64, weight: u32, shards: Option<usize>, keys: u64) {
    let what =
        format!("{keys} inserts of weight {weight} into capacity {capacity}, shards {shards:?}");
    within(30, &what.clone(), move || {
        let mut builder = Cache::builder()
            .max_capacity(capacity)
            .weigher(move |_: &u64, _: &u64| weight);
        if let Some(n) = shards {
            builder = builder.shards(n);
        }
        let cache: Cache<u64, u64> = builder.build().unwrap();
        // No call between the inserts: a `weighted_size` or `run_pending_tasks` would run
        // the maintenance that the inserts themselves must get right.
        for k in 0..keys {
            cache.insert(k, k);
        }
        let held = cache.weighted_size();
        assert!(held <= capacity, "{what}: weight {held} over the capacity");
        let held: u64 = cache.iter().count() as u64 * u64::from(weight);
        assert_eq!(held, cache.weighted_size(), "{what}: accounting");
        assert!(
            cache.len() as u64 >= capacity / u64::from(weight) / 2,
            "{what}: the cache emptied itself"
        );
    });
}

/// Issue 12: `make_room` evicted from the largest shard down to a global target, so with a few
/// heavy entries per shard it found nothing to give and spun forever (the ~11th insert).
#[test]
fn few_heavy_entries_per_shard_never_hang() {
    heavy_inserts(5000, 488, None, 100);
    heavy_inserts(5000, 488, Some(2), 100);
    heavy_inserts(5000, 488, Some(4), 100);
    heavy_inserts(2000, 100, None, 100);
    heavy_inserts(1000, 100, Some(8), 100);
}

/// Issue 12: a weigher that returns 0 escaped the bound (200,000 entries in a capacity of 10).
/// A zero weight counts as one.
#[test]
fn zero_weights_count_as_one() {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(10)
        .weigher(|_, _| 0)
        .build()
        .unwrap();
    for k in 0..200_000 {
        cache.insert(k, k);
    }
    assert_eq!(cache.weighted_size(), 10);
    assert_eq!(cache.len(), 10);
}

/// Issue 12: the session store's `max_bytes` with a few sessions per shard hung the same way.
#[test]
fn a_byte_bound_of_a_few_sessions_never_hangs() {
    use evanesce::session::{Cookie, MemoryStore, Session};
    within(30, "max_bytes(20_000) with ~450-byte sessions", || {
        let store = MemoryStore::builder().max_bytes(20_000).build().unwrap();
        let mut session = Session::with_cookie(Cookie::expiring_in(
            std::time::Duration::from_secs(3600),
            store.now(),
        ));
        session.insert("data", "x".repeat(300));
        for i in 0..1000 {
            store.set(&format!("session-{i:06}"), &session).unwrap();
        }
        assert!(store.length() >= 20, "{} sessions held", store.length());
        assert!(store.length() <= 20_000 / 300);
    });
}

/// Writers on several threads inserting heavy entries into a small bound: every insert
/// returns (back-pressure makes progress when the weight over the bound is held by other
/// threads' inserts in flight), and the bound holds when they are done.
#[test]
fn concurrent_heavy_inserts_never_hang() {
    for (capacity, weight, shards) in [
        (5000u64, 488u32, 8usize),
        (1000, 100, 8),
        (300, 100, 4),
        (1, 1, 8),
    ] {
        let what = format!("4 threads, capacity {capacity}, weight {weight}, {shards} shards");
        within(30, &what.clone(), move || {
            let cache: Cache<u64, u64> = Cache::builder()
                .max_capacity(capacity)
                .shards(shards)
                .weigher(move |_, _| weight)
                .build()
                .unwrap();
            std::thread::scope(|s| {
                for t in 0..4u64 {
                    let cache = &cache;
                    s.spawn(move || {
                        for k in 0..20_000 {
                            cache.insert(t << 32 | k, k);
                        }
                    });
                }
            });
            assert!(cache.weighted_size() <= capacity, "{what}: over the bound");
        });
    }
}

/// A weight distribution for the proptest below: each key's weight from its index.
#[derive(Clone, Debug)]
enum Weights {
    /// Every entry weighs this.
    Fixed(u32),
    /// Weights cycle through these.
    Cycle(Vec<u32>),
}

impl Weights {
    fn of(&self, k: u64) -> u32 {
        match self {
            Weights::Fixed(w) => *w,
            Weights::Cycle(ws) => ws[(k % ws.len() as u64) as usize],
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Issue 12: whatever the capacity, the weights (from zero to past the capacity), the
    /// shard count and the number of keys, every insert returns (a watchdog fails a hang),
    /// what is resident never passes the capacity plus its slack, and once quiet the weight
    /// held is at most the capacity and is the sum of what is resident.
    #[test]
    fn every_insert_returns_and_the_bound_holds(
        capacity in prop_oneof![1u64..16, 16u64..600, 600u64..20_000],
        weights in prop_oneof![
            (0u32..1200).prop_map(Weights::Fixed),
            prop::collection::vec(0u32..1200, 1..8).prop_map(Weights::Cycle),
        ],
        shards in prop::sample::select(vec![None, Some(1usize), Some(2), Some(4), Some(8), Some(16)]),
        keys in 1u64..600,
    ) {
        let what = format!("capacity {capacity}, weights {weights:?}, shards {shards:?}, {keys} keys");
        within(30, &what.clone(), move || {
            let w = weights.clone();
            let mut builder = Cache::builder()
                .max_capacity(capacity)
                .weigher(move |k: &u64, _: &u64| w.of(*k));
            if let Some(n) = shards {
                builder = builder.shards(n);
            }
            let cache: Cache<u64, u64> = builder.build().unwrap();
            let slack = (capacity / 64).max(1);
            let held = |cache: &Cache<u64, u64>| -> u64 {
                cache.iter().map(|(k, _)| u64::from(weights.of(k).max(1))).sum()
            };
            for k in 0..keys {
                cache.insert(k, k);
                let resident = held(&cache);
                assert!(resident <= capacity + slack, "{what}: {resident} resident after key {k}");
                if u64::from(weights.of(k)) > capacity {
                    assert!(!cache.contains_key(&k), "{what}: heavier than the capacity, yet stored");
                }
            }
            let size = cache.weighted_size();
            assert!(size <= capacity, "{what}: weight {size} once quiet");
            assert_eq!(held(&cache), size, "{what}: accounting");
        });
    }
}

/// A cache bounded by count beyond what the builder sizes up front grows as it fills (issue
/// 12: memory follows the entries) and still holds exactly its capacity when quiet.
#[test]
fn a_large_bound_grows_and_holds_exactly_its_capacity() {
    let (cache, log) = counting(150_000);
    for k in 0..400_000 {
        cache.insert(k, k);
    }
    assert_eq!(cache.len(), 150_000);
    assert_eq!(cache.weighted_size(), 150_000);
    let held = cache.iter().count();
    assert_eq!(held, 150_000);
    let evicted = log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.1 == RemovalCause::Size)
        .count();
    assert_eq!(evicted, 250_000);
    // Recent keys are found (the table is whole after its growths).
    assert!((399_000..400_000).filter(|k| cache.contains_key(k)).count() > 900);
}

// ---------------------------------------------------------------------------------------------
// Adaptation: on each synthetic shape of `tests/shapes`, the bound's hit ratio is within a
// stated margin of the better of two reference policies implemented here, exact LRU and
// perfect LFU with aging (which counts every key's uses, resident or not). Everything is
// deterministic: seeded workloads, a fixed hasher, one thread. The margins are what the policy
// achieves on these (short) workloads, rounded up by about a point: the adaptation needs a few
// rounds of its contest to switch modes, and perfect LFU remembers more than any bounded
// policy can. Each test also checks that its shape favours the peer it is meant to.

mod shapes;

mod reference {
    //! The peer policies the adaptation is measured against.

    use std::collections::{BTreeSet, HashMap};

    /// Hit ratio of `policy` on `keys`.
    pub fn ratio(
        keys: &[u64],
        capacity: usize,
        policy: fn(&[u64], usize, &mut dyn FnMut(bool)),
    ) -> f64 {
        let mut hits = 0u64;
        policy(keys, capacity, &mut |hit| hits += u64::from(hit));
        hits as f64 / keys.len() as f64
    }

    /// Exact LRU: evicts the key used least recently. Reports each request's outcome.
    pub fn lru(keys: &[u64], capacity: usize, outcome: &mut dyn FnMut(bool)) {
        let mut stamp_of: HashMap<u64, u64> = HashMap::new();
        let mut by_stamp: BTreeSet<(u64, u64)> = BTreeSet::new();
        for (now, &k) in keys.iter().enumerate() {
            let now = now as u64;
            if let Some(old) = stamp_of.insert(k, now) {
                by_stamp.remove(&(old, k));
                outcome(true);
            } else {
                outcome(false);
                if stamp_of.len() > capacity {
                    let (_, victim) = by_stamp.pop_first().expect("a resident key");
                    stamp_of.remove(&victim);
                }
            }
            by_stamp.insert((now, k));
        }
    }

    /// Perfect LFU with aging: every key's uses are counted, resident or not; a missed key
    /// replaces the resident key with the fewest uses (the least recently used among those)
    /// only if it has more uses than that one, so a loop larger than the cache keeps a fixed
    /// subset. Every `10 x capacity` requests every count is halved, so that what was popular
    /// long ago fades. Reports each request's outcome.
    pub fn lfu(keys: &[u64], capacity: usize, outcome: &mut dyn FnMut(bool)) {
        let mut count: HashMap<u64, u64> = HashMap::new();
        let mut stamp: HashMap<u64, u64> = HashMap::new(); // resident keys
        let mut order: BTreeSet<(u64, u64, u64)> = BTreeSet::new(); // (count, stamp, key)
        let age_every = 10 * capacity as u64;
        for (now, &k) in keys.iter().enumerate() {
            let now = now as u64;
            if now > 0 && now.is_multiple_of(age_every) {
                count.retain(|_, c| {
                    *c /= 2;
                    *c > 0
                });
                order = stamp
                    .iter()
                    .map(|(&key, &s)| (*count.entry(key).or_insert(1), s, key))
                    .collect();
            }
            let c = count.entry(k).or_insert(0);
            let before = *c;
            *c += 1;
            let c = *c;
            if let Some(s) = stamp.get_mut(&k) {
                outcome(true);
                order.remove(&(before.max(1), *s, k));
                *s = now;
                order.insert((c, now, k));
                continue;
            }
            outcome(false);
            if stamp.len() == capacity {
                let &(least, _, victim) = order.first().expect("a resident key");
                if c <= least {
                    continue;
                }
                order.pop_first();
                stamp.remove(&victim);
            }
            stamp.insert(k, now);
            order.insert((c, now, k));
        }
    }
}

/// A bounded cache of `shards` shards with hasher `seed` ([`shapes::Seeded`]: the same keys
/// fall in the same shards and samples on every little-endian machine). With one shard the
/// outcome is exactly repeatable: with several, the shards' policies share one contest, and
/// the order in which their maintenance passes report to it may vary with other threads (the
/// reclaimer).
fn seeded(capacity: u64, shards: usize, seed: u64) -> Cache<u64, u64, shapes::Seeded> {
    Cache::builder()
        .max_capacity(capacity)
        .shards(shards)
        .hasher(shapes::Seeded(seed))
        .build()
        .unwrap()
}

/// Hit ratio of a one-shard cache with the fixed hasher, driven the usual way (get, insert on
/// a miss).
fn evanesce_hit_ratio(keys: &[u64], capacity: u64) -> f64 {
    let hits = hits_with(&seeded(capacity, 1, 0), keys);
    hits.iter().filter(|&&h| h).count() as f64 / keys.len() as f64
}

/// Checks that evanesce is within `margin` (a fraction: 0.01 is one point) of the better of
/// LRU and LFU on `keys` at `capacity`; returns (evanesce, LRU, LFU).
fn within_margin_of_best(name: &str, keys: &[u64], capacity: u64, margin: f64) -> (f64, f64, f64) {
    let ev = evanesce_hit_ratio(keys, capacity);
    let lru = reference::ratio(keys, capacity as usize, reference::lru);
    let lfu = reference::ratio(keys, capacity as usize, reference::lfu);
    let best = lru.max(lfu);
    eprintln!(
        "{name} at {capacity}: evanesce {:.2}%, LRU {:.2}%, LFU {:.2}%",
        100.0 * ev,
        100.0 * lru,
        100.0 * lfu
    );
    assert!(
        ev >= best - margin,
        "{name} at {capacity}: evanesce {:.2}% is more than {:.1} points below the best peer \
         (LRU {:.2}%, LFU {:.2}%)",
        100.0 * ev,
        100.0 * margin,
        100.0 * lru,
        100.0 * lfu
    );
    (ev, lru, lfu)
}

#[test]
fn adapts_to_back_and_forth_sweeps() {
    // Recency wins: LRU hits about capacity / range; a frequency filter collapses here.
    // (Before the contest, the policy stayed frequency-biased here and hit about 15%.)
    let keys = shapes::sweep(8_000, 12, 0.05, 11);
    let (ev, lru, lfu) = within_margin_of_best("sweep", &keys, 4_000, 0.035);
    assert!(lru > lfu + 0.1, "the shape favours recency");
    assert!(ev > 0.4, "evanesce {ev}");
}

/// At a sweep's first reversal a filling cache holds the range's first keys, where an LRU
/// holds the last ones. The reversal first asks for the keys this cache no longer holds, then
/// for the keys it kept: those must still be there when asked for (the recency
/// mode spares a filling cache's keys for a few laps, and the estimate switches to it within
/// the window, not at its end). Before: 911 hits with the first hasher against LRU's 4,682
/// (the kept keys went to the adaptive mode's duels and to the recency mode's first
/// evictions); now 3,770-4,002 with the four hashers.
#[test]
fn a_sweeps_first_reversal_finds_the_keys_the_filling_cache_kept() {
    let keys = shapes::sweep(10_000, 2, 0.05, 1);
    let backward = 10_000..20_000;
    let lru = reference_hits(&keys, 5_000, false)[backward.clone()]
        .iter()
        .filter(|&&h| h)
        .count();
    for seed in 0..4 {
        let hits = hits_with(&seeded(5_000, 8, seed), &keys)[backward.clone()]
            .iter()
            .filter(|&&h| h)
            .count();
        eprintln!("hasher {seed}: {hits} hits on the first backward pass, LRU {lru}");
        assert!(
            hits * 10 >= lru * 6,
            "hasher {seed}: {hits} hits on the first backward pass, LRU {lru}"
        );
    }
}

#[test]
fn adapts_to_a_sliding_window() {
    let keys = shapes::sliding_window(300_000, 8_000, 8, 12);
    let (_, lru, lfu) = within_margin_of_best("window", &keys, 4_000, 0.02);
    assert!(lru > lfu + 0.1, "the shape favours recency");
}

#[test]
fn adapts_to_loops() {
    // Frequency wins: LRU hits nothing, LFU keeps a fixed subset.
    let keys = shapes::looped(5_000, 40);
    let (_, lru, lfu) = within_margin_of_best("loop", &keys, 4_000, 0.025);
    assert!(lfu > lru + 0.5, "the shape favours frequency");
}

#[test]
fn adapts_to_zipf_at_several_skews() {
    for (skew, seed) in [(0.6, 13), (0.8, 14), (1.0, 15), (1.2, 16)] {
        let keys = shapes::zipf(50_000, skew, 200_000, seed);
        let (_, lru, lfu) = within_margin_of_best(&format!("zipf {skew}"), &keys, 4_000, 0.025);
        assert!(lfu > lru, "the shape favours frequency");
    }
}

#[test]
fn adapts_to_scans_over_a_hot_set() {
    let keys = shapes::scan_hot(3_000, 0.8, 30_000, 15_000, 8, 17);
    let (_, lru, lfu) = within_margin_of_best("scan over hot set", &keys, 2_500, 0.05);
    assert!(lfu > lru + 0.03, "the shape favours frequency");
}

#[test]
fn adapts_to_a_shifting_working_set() {
    let keys = shapes::shift(4, 60_000, 20_000, 0.9, 18);
    within_margin_of_best("shift", &keys, 4_000, 0.02);
}

/// Regimes that alternate (frequency, recency, loop, 100,000 requests each, twice): the cache
/// follows every change. Over the second half of each phase, averaged over 8 hashers (the
/// contest's decisions, and so when the cache follows, depend on which keys fall in its
/// samples), evanesce is within 2 points of the better of LRU and LFU in a frequency phase,
/// within 2 of LRU in a recency phase, and within 7 of perfect LFU in a loop phase (which
/// remembers every key's count and gets about 80%, the optimum; LRU hits nothing there); and
/// with every hasher within 5 of LRU in a recency phase. Failed before (issue 14): the
/// contest rested for up to 7 rounds counted in misses, and a rest begun in a frequency phase
/// could outlast most of the recency phase after it (the second recency phase: 40% on
/// average, 22% with one hasher, against LRU's 52%).
#[test]
fn re_adapts_when_the_regime_changes() {
    let (unit, phase) = (4_000u64, 100_000usize);
    let keys = shapes::phases(unit, phase, 2, 19);
    let phases = keys.len() / phase;
    let share = |v: &[bool]| v.iter().filter(|&&h| h).count() as f64 / v.len() as f64;
    let late = |i: usize| i * phase + phase / 2..(i + 1) * phase;
    let lru = reference_hits(&keys, unit as usize, false);
    let lfu = reference_hits(&keys, unit as usize, true);
    let mut sums = vec![0.0; phases];
    let hashers = 8;
    for seed in 0..hashers {
        let hit = hits_with(&seeded(unit, 1, seed), &keys);
        for (i, sum) in sums.iter_mut().enumerate() {
            let (ev, l) = (share(&hit[late(i)]), share(&lru[late(i)]));
            *sum += ev;
            if i % 3 == 1 {
                assert!(
                    ev >= l - 0.05,
                    "hasher {seed}, phase {i} (recency): evanesce {:.1}% against LRU {:.1}%",
                    100.0 * ev,
                    100.0 * l
                );
            }
        }
    }
    for (i, name) in ["frequency", "recency", "loop"]
        .iter()
        .cycle()
        .take(phases)
        .enumerate()
    {
        let ev = sums[i] / hashers as f64;
        let (l, f) = (share(&lru[late(i)]), share(&lfu[late(i)]));
        eprintln!(
            "phase {i} ({name}), second half: evanesce {:.1}% (mean of {hashers} hashers), LRU \
             {:.1}%, LFU {:.1}%",
            100.0 * ev,
            100.0 * l,
            100.0 * f
        );
        let ok = match *name {
            "frequency" => ev >= l.max(f) - 0.02,
            "recency" => ev >= l - 0.02 && l > f,
            _ => ev >= f - 0.07 && l < 0.01,
        };
        assert!(
            ok,
            "phase {i} ({name}): evanesce {:.1}% against LRU {:.1}% and LFU {:.1}%",
            100.0 * ev,
            100.0 * l,
            100.0 * f
        );
    }
}

/// Per-request outcomes (hit or not) of `cache`, driven the usual way (get, insert on a
/// miss); checks the bound afterwards.
fn hits_with(cache: &Cache<u64, u64, shapes::Seeded>, keys: &[u64]) -> Vec<bool> {
    let hits = keys
        .iter()
        .map(|&k| {
            cache.get(&k).is_some() || {
                cache.insert(k, k);
                false
            }
        })
        .collect();
    let capacity = cache.policy().max_capacity().expect("bounded");
    assert!(cache.weighted_size() <= capacity);
    hits
}

/// Per-request outcomes (hit or not) of a reference policy.
fn reference_hits(keys: &[u64], capacity: usize, lfu: bool) -> Vec<bool> {
    let mut out = Vec::with_capacity(keys.len());
    let policy = if lfu { reference::lfu } else { reference::lru };
    policy(keys, capacity, &mut |hit| out.push(hit));
    out
}

/// Checks that `hits` over `keys` (a cache of 8 shards at `capacity`) is at most a point below
/// one shard's hit ratio on the same keys.
fn assert_within_a_point_of_one_shard(name: &str, hits: u64, keys: &[u64], capacity: u64) {
    let many = hits as f64 / keys.len() as f64;
    let one = evanesce_hit_ratio(keys, capacity);
    eprintln!(
        "{name} at {capacity}: 8 shards {:.2}%, one shard {:.2}%",
        100.0 * many,
        100.0 * one
    );
    assert!(
        many >= one - 0.01,
        "{name}: {:.2}% with 8 shards, {:.2}% with one",
        100.0 * many,
        100.0 * one
    );
}

/// The default shard count costs at most a point of hit ratio against one shard on a Zipf
/// workload (10,000 entries, 8 shards). Failed before: eviction in batches, where the pass a
/// writer offers evicts a whole batch from its own shard, lost 4 points here (28.1% against
/// 32.4% in the hit-ratio example).
#[test]
fn several_shards_lose_at_most_a_point_to_one() {
    let keys = shapes::zipf(100_000, 0.6, 400_000, 21);
    let capacity = 10_000;
    // 8: what the default builder picks for this capacity (the hit-ratio table's column).
    let sharded: Cache<u64, u64> = Cache::builder()
        .max_capacity(capacity)
        .shards(8)
        .build()
        .unwrap();
    let mut hits = 0u64;
    for &k in &keys {
        if sharded.get(&k).is_some() {
            hits += 1;
        } else {
            sharded.insert(k, k);
        }
    }
    assert_within_a_point_of_one_shard("zipf 0.6", hits, &keys, capacity);
}

/// A working set that jumps to new keys: 8 shards (the default for this capacity on a 2-core
/// machine) follow it as fast as one, on average over four hashers. Failed before (issue 14):
/// each shard moved SMALL's share after 32 ghost events of its own, so a cache of 8 shards
/// adapted 8 times slower per request than a cache of one and lost about 2 points here
/// (68.0-68.5% against 70.6%, most of it in the window after each jump).
#[test]
fn several_shards_follow_a_shifting_working_set_as_fast_as_one() {
    let keys = shapes::shift(6, 100_000, 20_000, 0.9, 3);
    let capacity = 5_000;
    let hashers = 4;
    let mean = |shards: usize| {
        let mut hits = 0;
        for seed in 0..hashers {
            let cache = seeded(capacity, shards, seed);
            hits += hits_with(&cache, &keys).iter().filter(|&&h| h).count();
        }
        hits as f64 / (hashers as usize * keys.len()) as f64
    };
    let (many, one) = (mean(8), mean(1));
    eprintln!(
        "shift at {capacity}, mean of {hashers} hashers: 8 shards {:.2}%, one shard {:.2}%",
        100.0 * many,
        100.0 * one
    );
    assert!(
        many >= one - 0.01,
        "shift: {:.2}% with 8 shards, {:.2}% with one",
        100.0 * many,
        100.0 * one
    );
}

/// Caches with shares of 4096 or more evict in batches per shard (issue 16: a pass per
/// evicting insert cost a quarter of its instructions): each shard evicts its own overflow,
/// so the shares stay even and the hit ratio stays within a point of one shard's (a batch
/// taken from whichever shard triggered it lost 4 points at 10,000 entries), and the cache
/// holds exactly its capacity when quiet, with every eviction reported.
#[test]
fn shards_that_evict_in_batches_keep_the_hit_ratio_and_the_bound() {
    let keys = shapes::zipf(200_000, 0.8, 600_000, 23);
    let capacity = 40_000;
    let evicted = Arc::new(AtomicUsize::new(0));
    let sink = evicted.clone();
    let sharded: Cache<u64, u64, _> = Cache::builder()
        .max_capacity(capacity)
        .shards(8)
        .hasher(std::hash::BuildHasherDefault::<
            std::collections::hash_map::DefaultHasher,
        >::default())
        .eviction_listener(move |_: &u64, _: &u64, cause| {
            if cause == RemovalCause::Size {
                sink.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build()
        .unwrap();
    let (mut hits, mut inserts) = (0u64, 0usize);
    for (i, &k) in keys.iter().enumerate() {
        if sharded.get(&k).is_some() {
            hits += 1;
        } else {
            sharded.insert(k, k);
            inserts += 1;
        }
        if i % 5_000 == 0 {
            // Between passes (none forced): what is resident stays within the slack.
            let held = sharded.iter().count() as u64;
            assert!(held <= capacity + capacity / 64, "{held} resident at {i}");
        }
    }
    assert_within_a_point_of_one_shard("zipf 0.8", hits, &keys, capacity);
    assert_eq!(sharded.len(), capacity as usize);
    assert_eq!(sharded.weighted_size(), capacity);
    assert_eq!(evicted.load(Ordering::Relaxed), inserts - capacity as usize);
}

/// The same from two threads inserting distinct keys: the bound holds when quiet, and no
/// insert is lost or evicted twice.
#[test]
fn concurrent_batching_shards_hold_exactly_their_capacity() {
    let log: Log = Arc::default();
    let sink = log.clone();
    // 8 shards of 8,192: batches of 64 per shard, whatever the machine's core count.
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(1 << 16)
        .shards(8)
        .eviction_listener(move |k: &u64, _: &u64, c| sink.lock().unwrap().push((*k, c)))
        .build()
        .unwrap();
    let cache = Arc::new(cache);
    within(120, "concurrent inserts", {
        let cache = cache.clone();
        move || {
            std::thread::scope(|s| {
                for t in 0..2u64 {
                    let cache = &cache;
                    s.spawn(move || {
                        for i in 0..150_000u64 {
                            cache.insert(t << 32 | i, i);
                        }
                    });
                }
            })
        }
    });
    assert_eq!(cache.len(), 1 << 16);
    assert_eq!(cache.weighted_size(), 1 << 16);
    let log = log.lock().unwrap();
    let evicted: HashSet<u64> = log
        .iter()
        .filter(|e| e.1 == RemovalCause::Size)
        .map(|e| e.0)
        .collect();
    assert_eq!(evicted.len(), 300_000 - (1 << 16));
    assert_eq!(log.len(), evicted.len(), "an entry was reported twice");
}
