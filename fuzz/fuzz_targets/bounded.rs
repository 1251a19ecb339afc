//! Fuzzing the size bound: weighted inserts, reads, removals, `get_or_insert_with` and `clear`
//! on a bounded cache with one to eight shards, tiny capacities (down to one) and weights up to
//! past the capacity as well as light ones. After every operation (single-threaded, so no
//! write is in flight): the resident entries weigh at most the capacity plus its slack, and a
//! key's value is its latest one or absent (never an older one). Whether the weight held is
//! at most the capacity and equals the sum of the resident entries' weights is checked after
//! every operation in some runs, and only at explicit maintenance in others: checking runs a
//! maintenance pass, which would otherwise do the inserts' back-pressure work for them (the
//! livelock of issue 12 hid behind it). At the end every value ever inserted is either resident
//! or was reported to the listener exactly once. Every insert must return: run with a libFuzzer
//! `-timeout` so that a hang is a failure.

#![no_main]

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex};

use evanesce::Cache;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    shards: u8,
    capacity: u16,
    /// Capacities of 1 to 64 instead of 1 to 2000.
    tiny: bool,
    /// Weights scaled to the capacity (up to 1.25 times it) instead of 0 to 255.
    heavy: bool,
    /// Check the quiet bound after every operation (which runs maintenance).
    check_each: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    Insert(u16, u8),
    Get(u16),
    Remove(u16),
    GetOrInsertWith(u16, u8),
    Clear,
    RunPendingTasks,
}

/// (serial, weight).
type Value = (u64, u32);

/// The weight the cache counts for a value (a zero weight counts as one).
fn weight(v: &Value) -> u64 {
    u64::from(v.1.max(1))
}

fuzz_target!(|input: Input| {
    let capacity = if input.tiny {
        u64::from(input.capacity % 64) + 1
    } else {
        u64::from(input.capacity % 2000) + 1
    };
    let slack = (capacity / 64).max(1);
    let weigh = |w: u8| -> u32 {
        if input.heavy {
            (u64::from(w) * (capacity + capacity / 4) / 255) as u32
        } else {
            u32::from(w)
        }
    };
    let heard: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sink = heard.clone();
    let cache: Cache<u16, Value, _> = Cache::builder()
        .shards(1 << (input.shards % 4))
        .max_capacity(capacity)
        .hasher(BuildHasherDefault::<DefaultHasher>::default())
        .weigher(|_, v: &Value| v.1)
        .eviction_listener(move |_: &u16, v: &Value, _| sink.lock().unwrap().push(v.0))
        .build()
        .unwrap();
    let mut latest: HashMap<u16, u64> = HashMap::new();
    let mut created: Vec<(u16, u64)> = Vec::new();
    let mut serial = 0u64;
    for (step, op) in input.ops.iter().enumerate() {
        match *op {
            Op::Insert(k, w) => {
                serial += 1;
                let k = k % 512;
                cache.insert(k, (serial, weigh(w)));
                latest.insert(k, serial);
                created.push((k, serial));
            }
            Op::Get(k) => {
                let k = k % 512;
                if let Some((s, _)) = cache.get(&k) {
                    assert_eq!(Some(s), latest.get(&k).copied(), "older value at {step}");
                }
            }
            Op::Remove(k) => {
                let k = k % 512;
                if let Some((s, _)) = cache.remove(&k) {
                    assert_eq!(Some(s), latest.get(&k).copied(), "older value at {step}");
                }
                latest.remove(&k);
            }
            Op::GetOrInsertWith(k, w) => {
                let k = k % 512;
                serial += 1;
                let mine = serial;
                let (s, _) = cache.get_or_insert_with(k, || (mine, weigh(w)));
                if s == mine {
                    latest.insert(k, mine);
                    created.push((k, mine));
                } else {
                    assert_eq!(Some(s), latest.get(&k).copied(), "older value at {step}");
                }
            }
            Op::Clear => {
                cache.clear();
                latest.clear();
            }
            Op::RunPendingTasks => cache.run_pending_tasks(),
        }
        // Without maintenance: what is resident stays within the capacity plus the slack.
        let held: u64 = cache.iter().map(|(_, v)| weight(&v)).sum();
        assert!(
            held <= capacity + slack,
            "{held} resident over capacity {capacity} + slack {slack} at {step}"
        );
        if input.check_each || matches!(op, Op::RunPendingTasks) {
            check_quiet(&cache, capacity, step);
        }
    }
    check_quiet(&cache, capacity, usize::MAX);
    let resident: HashMap<u16, u64> = cache.iter().map(|(k, v)| (k, v.0)).collect();
    for (k, s) in &resident {
        assert_eq!(
            Some(*s),
            latest.get(k).copied(),
            "an older value is resident"
        );
    }
    let mut reports: HashMap<u64, usize> = HashMap::new();
    for s in heard.lock().unwrap().iter() {
        *reports.entry(*s).or_default() += 1;
    }
    for (k, s) in created {
        let reported = reports.get(&s).copied().unwrap_or(0);
        let is_resident = resident.get(&k) == Some(&s);
        assert_eq!(
            reported + usize::from(is_resident),
            1,
            "value {s} of key {k}"
        );
    }
});

/// With no write in flight, after maintenance: the weight held is at most the capacity and is
/// the sum of the resident entries' weights.
fn check_quiet<S: std::hash::BuildHasher>(cache: &Cache<u16, Value, S>, capacity: u64, step: usize) {
    let size = cache.weighted_size();
    assert!(
        size <= capacity,
        "weight {size} over capacity {capacity} at {step}"
    );
    let held: u64 = cache.iter().map(|(_, v)| weight(&v)).sum();
    assert_eq!(held, size, "accounting at {step}");
}
