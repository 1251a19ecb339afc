//! Differential fuzzing of `evanesce::Cache`'s expiry against a model with deadlines.
//!
//! A mock clock (`quanta::Clock::mock()`) is moved by `Advance` operations; the model keeps
//! each key's value, deadline and own lifetime, and every answer of the cache (`get`,
//! `get_stale`, `remove`, `touch`, `set_ttl`, `ttl`, `len`) is compared with it at once. At
//! the end, after a maintenance pass has reclaimed everything due, the listener must have
//! heard exactly the model's removals with the model's causes (each once).
//!
//! One freedom is allowed: an expired entry may already have been reclaimed by a maintenance
//! pass a write ran, so `get_stale` of an expired key may return its value or nothing; either
//! way it is gone afterwards and reported once as expired.

#![no_main]

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evanesce::{Cache, RemovalCause};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

const NEVER: u64 = u64::MAX;

#[derive(Arbitrary, Debug)]
struct Input {
    shards: u8,
    /// Default time to live in ms (`% 64`; 0 means none).
    default_ttl: u8,
    ops: Vec<Op>,
}

/// Lifetimes in ms; 255 means `Duration::MAX` (never).
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    Insert(u8),
    InsertTtl(u8, u8),
    Get(u8),
    GetStale(u8),
    Remove(u8),
    Touch(u8),
    SetTtl(u8, u8),
    Ttl(u8),
    Advance(u8),
    Len,
    RunPendingTasks,
}

#[derive(Clone, Copy)]
struct Entry {
    value: u64,
    deadline: u64,
    own: Option<u64>,
}

struct Model {
    now: u64,
    default_ttl: u64,
    map: HashMap<u8, Entry>,
    removed: Vec<(u8, u64, RemovalCause)>,
}

fn ns(ms: u8) -> u64 {
    if ms == 255 {
        NEVER
    } else {
        u64::from(ms) * 1_000_000
    }
}

fn duration(ms: u8) -> Duration {
    if ms == 255 {
        Duration::MAX
    } else {
        Duration::from_millis(u64::from(ms))
    }
}

impl Model {
    fn deadline(&self, lifetime: u64) -> u64 {
        if lifetime == NEVER {
            NEVER
        } else {
            self.now.saturating_add(lifetime)
        }
    }
    fn live(&self, k: u8) -> Option<Entry> {
        self.map.get(&k).copied().filter(|e| self.now < e.deadline)
    }
    fn settle(&mut self, k: u8) -> Option<Entry> {
        match self.map.get(&k).copied() {
            Some(e) if self.now >= e.deadline => {
                self.map.remove(&k);
                self.removed.push((k, e.value, RemovalCause::Expired));
                None
            }
            other => other,
        }
    }
    fn settle_all(&mut self) {
        let keys: Vec<u8> = self.map.keys().copied().collect();
        for k in keys {
            self.settle(k);
        }
    }
    fn put(&mut self, k: u8, value: u64, own: Option<u64>) {
        if let Some(old) = self.settle(k) {
            self.removed.push((k, old.value, RemovalCause::Replaced));
        }
        let lifetime = own.unwrap_or(self.default_ttl);
        self.map.insert(
            k,
            Entry {
                value,
                deadline: self.deadline(lifetime),
                own,
            },
        );
    }
}

type Log = Arc<Mutex<Vec<(u8, u64, RemovalCause)>>>;

fuzz_target!(|input: Input| {
    let (clock, mock) = quanta::Clock::mock();
    let heard: Log = Arc::default();
    let sink = heard.clone();
    let mut builder = Cache::builder()
        .shards(1 << (input.shards % 3))
        .clock(clock)
        .hasher(BuildHasherDefault::<DefaultHasher>::default())
        .eviction_listener(move |k: &u8, v: &u64, c| sink.lock().unwrap().push((*k, *v, c)));
    let default_ms = input.default_ttl % 64;
    if default_ms > 0 {
        builder = builder.time_to_live(Duration::from_millis(u64::from(default_ms)));
    }
    let cache: Cache<u8, u64, _> = builder.build().unwrap();
    let mut model = Model {
        now: 0,
        default_ttl: if default_ms > 0 {
            ns(default_ms)
        } else {
            NEVER
        },
        map: HashMap::new(),
        removed: Vec::new(),
    };
    let mut serial = 0u64;
    for (step, op) in input.ops.iter().enumerate() {
        match *op {
            Op::Insert(k) => {
                serial += 1;
                cache.insert(k % 16, serial);
                model.put(k % 16, serial, None);
            }
            Op::InsertTtl(k, ms) => {
                let k = k % 16;
                serial += 1;
                cache.insert_with_ttl(k, serial, duration(ms));
                if ms == 0 {
                    if let Some(old) = model.settle(k) {
                        model.map.remove(&k);
                        model.removed.push((k, old.value, RemovalCause::Replaced));
                    }
                    model.removed.push((k, serial, RemovalCause::Expired));
                } else {
                    model.put(k, serial, Some(ns(ms)));
                }
            }
            Op::Get(k) => {
                let k = k % 16;
                assert_eq!(
                    cache.get(&k),
                    model.live(k).map(|e| e.value),
                    "get at {step}"
                );
            }
            Op::GetStale(k) => {
                let k = k % 16;
                let got = cache.get_stale(&k);
                match model.map.get(&k).copied() {
                    Some(e) if model.now >= e.deadline => {
                        assert!(got.is_none() || got == Some(e.value), "get_stale at {step}");
                        model.map.remove(&k);
                        model.removed.push((k, e.value, RemovalCause::Expired));
                    }
                    other => assert_eq!(got, other.map(|e| e.value), "get_stale at {step}"),
                }
            }
            Op::Remove(k) => {
                let k = k % 16;
                let expected = model.settle(k).map(|e| {
                    model.map.remove(&k);
                    model.removed.push((k, e.value, RemovalCause::Explicit));
                    e.value
                });
                assert_eq!(cache.remove(&k), expected, "remove at {step}");
            }
            Op::Touch(k) => {
                let k = k % 16;
                let expected = model.live(k);
                if let Some(e) = expected {
                    let deadline = model.deadline(e.own.unwrap_or(model.default_ttl));
                    model.map.insert(k, Entry { deadline, ..e });
                }
                assert_eq!(cache.touch(&k), expected.is_some(), "touch at {step}");
            }
            Op::SetTtl(k, ms) => {
                let k = k % 16;
                let expected = model.live(k);
                if let Some(e) = expected {
                    if ms == 0 {
                        model.map.remove(&k);
                        model.removed.push((k, e.value, RemovalCause::Expired));
                    } else {
                        let deadline = model.deadline(ns(ms));
                        model.map.insert(
                            k,
                            Entry {
                                deadline,
                                own: Some(ns(ms)),
                                ..e
                            },
                        );
                    }
                }
                assert_eq!(
                    cache.set_ttl(&k, duration(ms)),
                    expected.is_some(),
                    "set_ttl at {step}"
                );
            }
            Op::Ttl(k) => {
                let k = k % 16;
                let expected = model.live(k).map(|e| {
                    if e.deadline == NEVER {
                        Duration::MAX
                    } else {
                        Duration::from_nanos(e.deadline - model.now)
                    }
                });
                assert_eq!(cache.ttl(&k), expected, "ttl at {step}");
            }
            Op::Advance(ms) => {
                let ms = u64::from(ms % 64);
                mock.increment(Duration::from_millis(ms));
                model.now += ms * 1_000_000;
            }
            Op::Len => {
                let expected = model
                    .map
                    .values()
                    .filter(|e| model.now < e.deadline)
                    .count();
                assert_eq!(cache.len(), expected, "len at {step}");
                model.settle_all();
            }
            Op::RunPendingTasks => {
                cache.run_pending_tasks();
                model.settle_all();
            }
        }
    }
    cache.run_pending_tasks();
    model.settle_all();
    assert_eq!(cache.len(), model.map.len());
    let mut expected = model.removed;
    let mut got = heard.lock().unwrap().clone();
    expected.sort_by_key(|e| (e.0, e.1, e.2 as u8));
    got.sort_by_key(|e| (e.0, e.1, e.2 as u8));
    assert_eq!(got, expected, "the listener's removals");
});
