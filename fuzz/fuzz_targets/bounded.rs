//! Fuzzing the size bound: weighted inserts, reads, removals, `get_or_insert_with` and `clear`
//! on a bounded cache with one to eight shards. After every operation (single-threaded, so no
//! write is in flight): the weight held is at most the capacity and equals the sum of the
//! resident entries' weights, and a key's value is its latest one or absent (never an older
//! one). At the end every value ever inserted is either resident or was reported to the
//! listener exactly once.

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

type Value = (u64, u8);

fuzz_target!(|input: Input| {
    let capacity = u64::from(input.capacity % 2000) + 1;
    let heard: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sink = heard.clone();
    let cache: Cache<u16, Value, _> = Cache::builder()
        .shards(1 << (input.shards % 4))
        .max_capacity(capacity)
        .hasher(BuildHasherDefault::<DefaultHasher>::default())
        .weigher(|_, v: &Value| u32::from(v.1))
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
                cache.insert(k, (serial, w));
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
                let (s, _) = cache.get_or_insert_with(k, || (mine, w));
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
        let size = cache.weighted_size();
        assert!(
            size <= capacity,
            "weight {size} over capacity {capacity} at {step}"
        );
        let held: u64 = cache.iter().map(|(_, v)| u64::from(v.1)).sum();
        assert_eq!(held, size, "accounting at {step}");
    }
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
