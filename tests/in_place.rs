//! Values replaced in place (`u64` values: an insert of a live key overwrites the node's value
//! word instead of publishing a new node), racing every other writer of the same keys: inserts
//! that fall back to a new node, computes, removes, `retain`, the maintainer's evictions and
//! expiries, and readers.
//!
//! The check is a conservation law that a lost, doubled or torn write breaks: every value
//! written is unique, and each one ends either reported once to the listener (replaced,
//! removed, evicted or expired) or still in the cache; a reader only ever sees values that
//! were written for its key. A watchdog fails a run that hangs.
#![allow(clippy::disallowed_types)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use evanesce::{Cache, Op, RemovalCause};

mod harness;
use harness::{Rng, watchdog};

/// A unique value for `key`, written by thread `thread` as its `seq`th write: the key is in the
/// low 16 bits, so a reader can tell a value of another key (or a torn one).
fn value(thread: u64, seq: u64, key: u64) -> u64 {
    (thread << 56) | (seq << 16) | key
}

type Reports = Arc<Mutex<Vec<(u64, u64, RemovalCause)>>>;

/// A one-shard cache of `u64` values on a mock clock, with a time to live of `ttl_ms` (if any)
/// and a listener recording `(key, value, cause)`.
fn logged(ttl_ms: Option<u64>) -> (Cache<u64, u64>, Arc<quanta::Mock>, Reports) {
    let (clock, mock) = quanta::Clock::mock();
    let reports: Reports = Arc::default();
    let sink = reports.clone();
    let mut builder = Cache::builder().shards(1).clock(clock).eviction_listener(
        move |k: &u64, v: &u64, cause| {
            sink.lock().unwrap().push((*k, *v, cause));
        },
    );
    if let Some(ms) = ttl_ms {
        builder = builder.time_to_live(Duration::from_millis(ms));
    }
    (builder.build().unwrap(), mock, reports)
}

struct Setup {
    keys: u64,
    capacity: Option<u64>,
    ttl: Option<Duration>,
    shards: usize,
}

/// Threads 0 and 1 only insert (in place when they can; a node held too long by the other
/// makes them publish a new node); thread 2 mixes inserts with computes, removes and
/// `retain`; thread 3 reads. Returns what each check found wrong, if anything.
fn race(setup: Setup, ops: u64) {
    let reports: Reports = Arc::default();
    let sink = reports.clone();
    let mut builder =
        Cache::builder()
            .shards(setup.shards)
            .eviction_listener(move |k: &u64, v: &u64, cause| {
                sink.lock().unwrap().push((*k, *v, cause));
            });
    if let Some(capacity) = setup.capacity {
        builder = builder.max_capacity(capacity);
    }
    if let Some(ttl) = setup.ttl {
        builder = builder.time_to_live(ttl);
    }
    let cache: Arc<Cache<u64, u64>> = Arc::new(builder.build().unwrap());
    let keys = setup.keys;
    let written: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let foreign = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(4));
    let mut writers = Vec::new();
    for thread in 0..3u64 {
        let (cache, written, start) = (cache.clone(), written.clone(), start.clone());
        writers.push(thread::spawn(move || {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (thread + 1));
            let mut mine = Vec::new();
            start.wait();
            for seq in 0..ops {
                let key = rng.next() % keys;
                let v = value(thread, seq, key);
                if thread < 2 {
                    cache.insert(key, v);
                    mine.push(v);
                    continue;
                }
                match rng.next() % 8 {
                    0 => {
                        // A compute that replaces whatever it saw: it must not overwrite a
                        // value written in place after it looked.
                        cache.entry(key).and_compute_with(|_| Op::Put(v));
                        mine.push(v);
                    }
                    1 => {
                        cache.remove(&key);
                    }
                    2 if seq % 64 == 0 => {
                        // Removes the values of even sequence numbers among a few keys: a value
                        // written in place after the test must be left alone.
                        cache.retain(|k, v| k % 7 != key % 7 || (v >> 16) & 1 == 1);
                    }
                    3 => {
                        cache.entry(key).and_compute_with(|old| match old {
                            Some(_) => Op::Remove,
                            None => Op::Nop,
                        });
                    }
                    _ => {
                        cache.insert(key, v);
                        mine.push(v);
                    }
                }
            }
            written.lock().unwrap().extend(mine);
        }));
    }
    let reader = {
        let (cache, stop, foreign, start) =
            (cache.clone(), stop.clone(), foreign.clone(), start.clone());
        thread::spawn(move || {
            let mut rng = Rng(42);
            start.wait();
            while !stop.load(Ordering::Relaxed) {
                let key = rng.next() % keys;
                if let Some(v) = cache.get(&key)
                    && v & 0xFFFF != key
                {
                    foreign.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    if let Some(ttl) = setup.ttl {
        // Past every deadline, so that the pass below expires (and reports) every value still
        // held: one that expired between the pass and the walk below would be neither
        // reported nor present.
        thread::sleep(ttl * 5);
    }
    cache.run_pending_tasks();

    assert_eq!(
        foreign.load(Ordering::Relaxed),
        0,
        "a reader saw another key's value"
    );
    let written: HashSet<u64> = written.lock().unwrap().iter().copied().collect();
    let mut accounted: HashMap<u64, &'static str> = HashMap::new();
    for (k, v, cause) in reports.lock().unwrap().iter() {
        assert_eq!(v & 0xFFFF, *k, "the listener got another key's value");
        assert!(
            written.contains(v),
            "the listener got a value nobody wrote: {v:#x}"
        );
        let previous = accounted.insert(*v, "reported");
        assert!(
            previous.is_none(),
            "{v:#x} reported twice (last as {cause:?})"
        );
    }
    for (k, v) in cache.iter() {
        assert_eq!(v & 0xFFFF, k, "the cache holds another key's value");
        let previous = accounted.insert(v, "present");
        assert!(
            previous.is_none(),
            "{v:#x} is present and was reported as {previous:?}"
        );
    }
    let lost: Vec<_> = written
        .iter()
        .filter(|v| !accounted.contains_key(v))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} written values were neither reported nor present (first: {:#x})",
        lost.len(),
        written.len(),
        lost[0]
    );
    assert_eq!(accounted.len(), written.len());
}

#[test]
fn in_place_writes_race_every_other_writer_of_a_hot_key() {
    watchdog(Duration::from_secs(120), || {
        race(
            Setup {
                keys: 1,
                capacity: None,
                ttl: None,
                shards: 1,
            },
            400_000,
        )
    });
}

#[test]
fn in_place_writes_race_every_other_writer_over_a_few_keys() {
    watchdog(Duration::from_secs(120), || {
        race(
            Setup {
                keys: 16,
                capacity: None,
                ttl: None,
                shards: 2,
            },
            400_000,
        )
    });
}

#[test]
fn in_place_writes_race_evictions() {
    watchdog(Duration::from_secs(120), || {
        race(
            Setup {
                keys: 64,
                capacity: Some(16),
                ttl: None,
                shards: 1,
            },
            400_000,
        )
    });
}

#[test]
fn in_place_writes_race_expiry() {
    watchdog(Duration::from_secs(120), || {
        race(
            Setup {
                keys: 8,
                capacity: Some(1000),
                ttl: Some(Duration::from_millis(2)),
                shards: 1,
            },
            400_000,
        )
    });
}

/// An insert of a live key in a cache of `u64` values is one insert and one replacement in the
/// statistics, as when it publishes a new node, and the listener hears the old value.
#[test]
fn an_in_place_write_counts_and_reports_as_a_replacement() {
    let (cache, _mock, reports) = logged(None);
    cache.insert(1, 10);
    cache.insert(1, 11);
    cache.insert(1, 12);
    assert_eq!(cache.get(&1), Some(12));
    cache.run_pending_tasks();
    let stats = cache.stats();
    assert_eq!((stats.inserts, stats.removals), (3, 2));
    assert_eq!(
        *reports.lock().unwrap(),
        vec![
            (1, 10, RemovalCause::Replaced),
            (1, 11, RemovalCause::Replaced)
        ]
    );
    assert_eq!(cache.len(), 1);
}

/// A write that renews an entry's deadline keeps it alive past the old one (and the expiry,
/// which finds the entry in the wheel at its old deadline, files it again), while an entry
/// nobody renewed expires, reported as such.
#[test]
fn an_in_place_write_renews_the_deadline() {
    let (cache, mock, reports) = logged(Some(300));
    cache.insert(1, 1);
    cache.insert(2, 2);
    mock.increment(Duration::from_millis(200));
    cache.insert(1, 3);
    mock.increment(Duration::from_millis(200));
    cache.run_pending_tasks();
    assert_eq!(cache.get(&1), Some(3), "renewed at 200 ms: alive at 400 ms");
    assert_eq!(cache.get(&2), None, "not renewed: expired at 300 ms");
    mock.increment(Duration::from_millis(200));
    cache.run_pending_tasks();
    assert_eq!(cache.get(&1), None, "expired at 500 ms");
    assert_eq!(
        *reports.lock().unwrap(),
        vec![
            (1, 1, RemovalCause::Replaced),
            (2, 2, RemovalCause::Expired),
            (1, 3, RemovalCause::Expired)
        ]
    );
}

/// An insert over an entry that has expired but is not reclaimed yet does not bring the old
/// entry back: it replaces it as an expiry (a new node), as any insert does.
#[test]
fn an_insert_over_an_expired_entry_reports_the_expiry() {
    let (cache, mock, reports) = logged(Some(100));
    cache.insert(1, 1);
    mock.increment(Duration::from_millis(150));
    cache.insert(1, 2);
    cache.run_pending_tasks();
    assert_eq!(cache.get(&1), Some(2));
    assert_eq!(
        *reports.lock().unwrap(),
        vec![(1, 1, RemovalCause::Expired)]
    );
}

/// Writes are what drive expiry when nobody reads: a cache whose writes all overwrite values
/// in place (they record no event) still offers the maintenance pass that expires an entry
/// nobody touches. (The in-place write first offered none: the idle entry stayed, unreported.)
#[test]
fn in_place_writes_still_drive_expiry() {
    let (cache, mock, reports) = logged(Some(100));
    cache.insert(1, 10);
    mock.increment(Duration::from_millis(60));
    cache.insert(2, 20);
    // The maintainer admits both and learns when the first deadline comes.
    cache.run_pending_tasks();
    // Key 1's deadline has passed, key 2's has not: its writes overwrite it in place.
    mock.increment(Duration::from_millis(60));
    cache.insert(2, 21);
    cache.insert(2, 22);
    // Not `run_pending_tasks`: only the writes may have run the pass.
    cache.insert(2, 23);
    assert!(
        reports
            .lock()
            .unwrap()
            .contains(&(1, 10, RemovalCause::Expired)),
        "the idle entry was not expired by the writes: {:?}",
        reports.lock().unwrap()
    );
    assert_eq!(cache.get(&2), Some(23));
}
