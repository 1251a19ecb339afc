//! Model-based test: random operation sequences applied to a `Cache` and to a `HashMap`,
//! compared after every operation.
//!
//! Keys come from a small domain so that re-inserts, replacements, removals of present and
//! absent keys, long chains and table growth all happen; the caches are built with one to four
//! shards and tables of one to eight buckets so that several growths (split, classify, unzip)
//! run during a sequence.

use std::collections::HashMap;

use evanesce::{Cache, CompResult};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Insert(u8, u32),
    Get(u8),
    ContainsKey(u8),
    Remove(u8),
    GetOrInsertWith(u8, u32),
    /// A fallible load: `Ok(v)` if the flag is set, else an error (nothing stored).
    TryGetOrInsertWith(u8, u32, bool),
    /// An optional load: `Some(v)` if the flag is set, else `None` (nothing stored).
    OptionallyGetOrInsertWith(u8, u32, bool),
    /// `and_upsert_with`: add the delta to the value (or store it).
    Upsert(u8, u32),
    /// `and_compute_with`: by the selector mod 3, keep, put the value, or remove.
    Compute(u8, u32, u8),
    /// `remove_if`: remove if the value is below the bound.
    RemoveIf(u8, u32),
    /// `replace`: only if the key has a value.
    Replace(u8, u32),
    /// `retain`: keep the entries whose key plus value is not a multiple of the modulus.
    Retain(u32),
    Clear,
    Len,
    Iter,
    RunPendingTasks,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..24;
    prop_oneof![
        8 => (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
        6 => key.clone().prop_map(Op::Get),
        2 => key.clone().prop_map(Op::ContainsKey),
        4 => key.clone().prop_map(Op::Remove),
        3 => (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::GetOrInsertWith(k, v)),
        1 => (key.clone(), any::<u32>(), any::<bool>())
            .prop_map(|(k, v, ok)| Op::TryGetOrInsertWith(k, v, ok)),
        1 => (key.clone(), any::<u32>(), any::<bool>())
            .prop_map(|(k, v, some)| Op::OptionallyGetOrInsertWith(k, v, some)),
        3 => (key.clone(), 0u32..1_000).prop_map(|(k, d)| Op::Upsert(k, d)),
        3 => (key.clone(), any::<u32>(), any::<u8>()).prop_map(|(k, v, sel)| Op::Compute(k, v, sel)),
        2 => (key.clone(), any::<u32>()).prop_map(|(k, t)| Op::RemoveIf(k, t)),
        2 => (key, any::<u32>()).prop_map(|(k, v)| Op::Replace(k, v)),
        1 => (2u32..5).prop_map(Op::Retain),
        1 => Just(Op::Clear),
        2 => Just(Op::Len),
        2 => Just(Op::Iter),
        1 => Just(Op::RunPendingTasks),
    ]
}

fn check(shards: usize, capacity: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let cache: Cache<u8, u32> = Cache::builder()
        .shards(shards)
        .initial_capacity(capacity)
        .build()
        .unwrap();
    let mut model: HashMap<u8, u32> = HashMap::new();
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Insert(k, v) => {
                cache.insert(k, v);
                model.insert(k, v);
            }
            Op::Get(k) => {
                // Odd steps read through `get_with` (no clone), even ones through `get`.
                let got = if step % 2 == 1 {
                    cache.get_with(&k, |v| *v)
                } else {
                    cache.get(&k)
                };
                prop_assert_eq!(got, model.get(&k).copied(), "step {}", step)
            }
            Op::ContainsKey(k) => {
                prop_assert_eq!(
                    cache.contains_key(&k),
                    model.contains_key(&k),
                    "step {}",
                    step
                )
            }
            Op::Remove(k) => prop_assert_eq!(cache.remove(&k), model.remove(&k), "step {}", step),
            Op::GetOrInsertWith(k, v) => {
                let expected = *model.entry(k).or_insert(v);
                prop_assert_eq!(cache.get_or_insert_with(k, || v), expected, "step {}", step);
            }
            Op::TryGetOrInsertWith(k, v, ok) => {
                let expected = match model.get(&k) {
                    Some(&old) => Ok(old),
                    None if ok => {
                        model.insert(k, v);
                        Ok(v)
                    }
                    None => Err(()),
                };
                let got = cache
                    .try_get_or_insert_with(k, || if ok { Ok(v) } else { Err(()) })
                    .map_err(|_| ());
                prop_assert_eq!(got, expected, "step {}", step);
            }
            Op::OptionallyGetOrInsertWith(k, v, some) => {
                let expected = match model.get(&k) {
                    Some(&old) => Some(old),
                    None if some => {
                        model.insert(k, v);
                        Some(v)
                    }
                    None => None,
                };
                let got = cache.optionally_get_or_insert_with(k, || some.then_some(v));
                prop_assert_eq!(got, expected, "step {}", step);
            }
            Op::Upsert(k, d) => {
                let new = model.get(&k).map_or(d, |v| v.wrapping_add(d));
                model.insert(k, new);
                let got = cache
                    .entry(k)
                    .and_upsert_with(|v| v.map_or(d, |v| v.wrapping_add(d)))
                    .into_value();
                prop_assert_eq!(got, new, "step {}", step);
            }
            Op::Compute(k, v, sel) => {
                let expected = match (sel % 3, model.get(&k).copied()) {
                    (0, Some(old)) => CompResult::Unchanged(old),
                    (1, Some(_)) => {
                        model.insert(k, v);
                        CompResult::ReplacedWith(v)
                    }
                    (1, None) => {
                        model.insert(k, v);
                        CompResult::Inserted(v)
                    }
                    (_, Some(old)) => {
                        model.remove(&k);
                        CompResult::Removed(old)
                    }
                    // Keep or remove on nothing.
                    (_, None) => CompResult::StillNone,
                };
                let got = cache.entry(k).and_compute_with(|_| match sel % 3 {
                    0 => evanesce::Op::Nop,
                    1 => evanesce::Op::Put(v),
                    _ => evanesce::Op::Remove,
                });
                prop_assert_eq!(got, expected, "step {}", step);
            }
            Op::RemoveIf(k, t) => {
                let expected = match model.get(&k) {
                    Some(&old) if old < t => model.remove(&k),
                    _ => None,
                };
                prop_assert_eq!(
                    cache.entry(k).remove_if(|&v| v < t),
                    expected,
                    "step {}",
                    step
                );
            }
            Op::Replace(k, v) => {
                let expected = model.get_mut(&k).map(|old| std::mem::replace(old, v));
                prop_assert_eq!(cache.entry(k).replace(v), expected, "step {}", step);
            }
            Op::Retain(m) => {
                let keep = |k: &u8, v: &u32| (u32::from(*k).wrapping_add(*v)) % m != 0;
                let before = model.len();
                model.retain(|k, v| keep(k, v));
                prop_assert_eq!(cache.retain(keep), before - model.len(), "step {}", step);
            }
            Op::Clear => {
                cache.clear();
                model.clear();
            }
            Op::Len => prop_assert_eq!(cache.len(), model.len(), "step {}", step),
            Op::Iter => {
                let items: Vec<(u8, u32)> = cache.iter().collect();
                let seen: HashMap<u8, u32> = items.iter().copied().collect();
                prop_assert_eq!(items.len(), seen.len(), "duplicate key at step {}", step);
                prop_assert_eq!(&seen, &model, "step {}", step);
            }
            Op::RunPendingTasks => cache.run_pending_tasks(),
        }
    }
    prop_assert_eq!(cache.len(), model.len());
    for k in 0..24 {
        prop_assert_eq!(cache.get(&k), model.get(&k).copied());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn behaves_like_a_hashmap(
        shards in prop::sample::select(vec![1usize, 2, 4]),
        capacity in 0usize..8,
        ops in prop::collection::vec(op(), 1..300),
    ) {
        check(shards, capacity, &ops)?;
    }
}

/// Growth in the middle of a long run: many distinct keys through one shard, interleaved
/// with removals, with the model checked at every step.
#[test]
fn growth_under_churn_keeps_every_key() {
    let cache: Cache<u32, u32> = Cache::builder().shards(1).build().unwrap();
    let mut model = HashMap::new();
    for i in 0..20_000u32 {
        cache.insert(i, i.wrapping_mul(7));
        model.insert(i, i.wrapping_mul(7));
        if i % 3 == 0 {
            let k = i / 2;
            assert_eq!(cache.remove(&k), model.remove(&k), "remove {k} at {i}");
        }
        if i % 997 == 0 {
            for k in 0..=i {
                assert_eq!(cache.get(&k), model.get(&k).copied(), "get {k} at {i}");
            }
        }
    }
    assert_eq!(cache.len(), model.len());
    let mut items: Vec<_> = cache.iter().collect();
    items.sort_unstable();
    let mut expected: Vec<_> = model.into_iter().collect();
    expected.sort_unstable();
    assert_eq!(items, expected);
}

mod expiry {
    //! The same idea with time: per-entry lifetimes, touch, set_ttl, stale reads and a mock
    //! clock that the sequence advances. The model keeps each key's value, deadline and own
    //! lifetime; the cache must answer exactly like it at every step, and at the end (after
    //! reclaiming everything due) the listener must have heard exactly the model's removals,
    //! with the model's causes.
    #![allow(clippy::disallowed_types)]

    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use evanesce::{Cache, RemovalCause};
    use proptest::prelude::*;

    const NEVER: u64 = u64::MAX;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, u32),
        InsertTtl(u8, u32, u64),
        Get(u8),
        GetStale(u8),
        Remove(u8),
        Touch(u8),
        SetTtl(u8, u64),
        Ttl(u8),
        Advance(u64),
        Len,
        RunPendingTasks,
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = 0u8..12;
        let ttl = prop_oneof![0u64..3, 1u64..40, Just(u64::MAX)];
        prop_oneof![
            4 => (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            4 => (key.clone(), any::<u32>(), ttl.clone()).prop_map(|(k, v, t)| Op::InsertTtl(k, v, t)),
            5 => key.clone().prop_map(Op::Get),
            2 => key.clone().prop_map(Op::GetStale),
            2 => key.clone().prop_map(Op::Remove),
            2 => key.clone().prop_map(Op::Touch),
            2 => (key.clone(), ttl).prop_map(|(k, t)| Op::SetTtl(k, t)),
            2 => key.prop_map(Op::Ttl),
            4 => prop_oneof![0u64..3, 0u64..50].prop_map(Op::Advance),
            1 => Just(Op::Len),
            1 => Just(Op::RunPendingTasks),
        ]
    }

    #[derive(Clone, Copy)]
    struct Entry {
        value: u32,
        deadline: u64,
        /// Own lifetime in ns (None: the cache's default).
        own: Option<u64>,
    }

    struct Model {
        now: u64,
        default_ttl: u64,
        map: HashMap<u8, Entry>,
        removed: Vec<(u8, u32, RemovalCause)>,
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
        /// Drops `k`'s entry if it expired (reporting it), returning the live one if any.
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
        /// Reclaims every expired entry (what an exact maintenance pass does).
        fn settle_all(&mut self) {
            let keys: Vec<u8> = self.map.keys().copied().collect();
            for k in keys {
                self.settle(k);
            }
        }
        fn put(&mut self, k: u8, value: u32, own: Option<u64>) {
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

    fn ns(ms: u64) -> u64 {
        if ms == u64::MAX {
            NEVER
        } else {
            ms * 1_000_000
        }
    }

    fn check(default_ttl_ms: Option<u64>, ops: &[Op]) -> Result<(), TestCaseError> {
        let (clock, mock) = quanta::Clock::mock();
        let heard: Arc<Mutex<Vec<(u8, u32, RemovalCause)>>> = Arc::default();
        let sink = heard.clone();
        let mut builder = Cache::builder()
            .shards(2)
            .clock(clock)
            .eviction_listener(move |k: &u8, v: &u32, c| sink.lock().unwrap().push((*k, *v, c)));
        if let Some(ms) = default_ttl_ms {
            builder = builder.time_to_live(Duration::from_millis(ms));
        }
        let cache: Cache<u8, u32> = builder.build().unwrap();
        let mut model = Model {
            now: 0,
            default_ttl: default_ttl_ms.map_or(NEVER, ns),
            map: HashMap::new(),
            removed: Vec::new(),
        };
        for (step, op) in ops.iter().enumerate() {
            match *op {
                Op::Insert(k, v) => {
                    cache.insert(k, v);
                    model.put(k, v, None);
                }
                Op::InsertTtl(k, v, ttl) => {
                    let d = if ttl == u64::MAX {
                        Duration::MAX
                    } else {
                        Duration::from_millis(ttl)
                    };
                    cache.insert_with_ttl(k, v, d);
                    if ttl == 0 {
                        if let Some(old) = model.settle(k) {
                            model.map.remove(&k);
                            model.removed.push((k, old.value, RemovalCause::Replaced));
                        }
                        model.removed.push((k, v, RemovalCause::Expired));
                    } else {
                        model.put(k, v, Some(ns(ttl)));
                    }
                }
                Op::Get(k) => {
                    let expected = model.live(k).map(|e| e.value);
                    let got = if step % 2 == 1 {
                        cache.get_with(&k, |v| *v)
                    } else {
                        cache.get(&k)
                    };
                    prop_assert_eq!(got, expected, "get at step {}", step);
                }
                Op::GetStale(k) => {
                    let got = cache.get_stale(&k);
                    match model.map.get(&k).copied() {
                        Some(e) if model.now >= e.deadline => {
                            // Expired: returned once if not reclaimed yet; a maintenance pass
                            // run by an earlier write may have reclaimed it already. Either
                            // way it is gone now, reported once as expired.
                            prop_assert!(
                                got.is_none() || got == Some(e.value),
                                "get_stale of an expired entry at step {}: {:?}",
                                step,
                                got
                            );
                            model.map.remove(&k);
                            model.removed.push((k, e.value, RemovalCause::Expired));
                        }
                        other => {
                            prop_assert_eq!(
                                got,
                                other.map(|e| e.value),
                                "get_stale at step {}",
                                step
                            )
                        }
                    }
                }
                Op::Remove(k) => {
                    let expected = model.settle(k).map(|e| {
                        model.map.remove(&k);
                        model.removed.push((k, e.value, RemovalCause::Explicit));
                        e.value
                    });
                    prop_assert_eq!(cache.remove(&k), expected, "remove at step {}", step);
                }
                Op::Touch(k) => {
                    let expected = model.live(k).is_some();
                    if let Some(e) = model.live(k) {
                        let lifetime = e.own.unwrap_or(model.default_ttl);
                        let deadline = model.deadline(lifetime);
                        model.map.insert(k, Entry { deadline, ..e });
                    }
                    prop_assert_eq!(cache.touch(&k), expected, "touch at step {}", step);
                }
                Op::SetTtl(k, ttl) => {
                    let d = if ttl == u64::MAX {
                        Duration::MAX
                    } else {
                        Duration::from_millis(ttl)
                    };
                    let expected = model.live(k).is_some();
                    if let Some(e) = model.live(k) {
                        if ttl == 0 {
                            model.map.remove(&k);
                            model.removed.push((k, e.value, RemovalCause::Expired));
                        } else {
                            let own = Some(ns(ttl));
                            model.map.insert(
                                k,
                                Entry {
                                    deadline: model.deadline(ns(ttl)),
                                    own,
                                    ..e
                                },
                            );
                        }
                    }
                    prop_assert_eq!(cache.set_ttl(&k, d), expected, "set_ttl at step {}", step);
                }
                Op::Ttl(k) => {
                    let expected = model.live(k).map(|e| {
                        if e.deadline == NEVER {
                            Duration::MAX
                        } else {
                            Duration::from_nanos(e.deadline - model.now)
                        }
                    });
                    prop_assert_eq!(cache.ttl(&k), expected, "ttl at step {}", step);
                }
                Op::Advance(ms) => {
                    mock.increment(Duration::from_millis(ms));
                    model.now += ns(ms);
                }
                Op::Len => {
                    let expected = model
                        .map
                        .values()
                        .filter(|e| model.now < e.deadline)
                        .count();
                    prop_assert_eq!(cache.len(), expected, "len at step {}", step);
                    model.settle_all();
                }
                Op::RunPendingTasks => {
                    cache.run_pending_tasks();
                    model.settle_all();
                }
            }
        }
        // Reclaim everything due, then compare every removal the listener heard.
        cache.run_pending_tasks();
        model.settle_all();
        let mut expected = model.removed.clone();
        let mut got = heard.lock().unwrap().clone();
        expected.sort_by_key(|e| (e.0, e.1, e.2 as u8));
        got.sort_by_key(|e| (e.0, e.1, e.2 as u8));
        prop_assert_eq!(got, expected);
        prop_assert_eq!(cache.len(), model.map.len());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn expires_like_the_model(
            default_ttl in prop_oneof![Just(None), (1u64..60).prop_map(Some)],
            ops in prop::collection::vec(op(), 1..200),
        ) {
            check(default_ttl, &ops)?;
        }
    }
}

mod bounded {
    //! Many shards and a weighted bound: the weak properties. After every operation (when no
    //! write is in flight) the weight held is at most the capacity and equals the sum of the
    //! resident entries' weights; a key's value is its latest one or absent, never an older
    //! one; and every value is, at the end, either resident or reported to the listener
    //! exactly once.
    #![allow(clippy::disallowed_types)]

    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use evanesce::{Cache, RemovalCause};
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u16, u8),
        Get(u16),
        Remove(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u16..400, 1u8..20).prop_map(|(k, w)| Op::Insert(k, w)),
            5 => (0u16..400).prop_map(Op::Get),
            1 => (0u16..400).prop_map(Op::Remove),
        ]
    }

    fn check(shards: usize, capacity: u64, ops: &[Op]) -> Result<(), TestCaseError> {
        let heard: Arc<Mutex<Vec<(u16, u64, RemovalCause)>>> = Arc::default();
        let sink = heard.clone();
        // Values are (serial, weight): serials are unique, so an older value is recognisable.
        let cache: Cache<u16, (u64, u8)> = Cache::builder()
            .shards(shards)
            .max_capacity(capacity)
            .weigher(|_, v: &(u64, u8)| u32::from(v.1))
            .eviction_listener(move |k: &u16, v: &(u64, u8), c| {
                sink.lock().unwrap().push((*k, v.0, c))
            })
            .build()
            .unwrap();
        let mut latest: HashMap<u16, u64> = HashMap::new();
        let mut created = Vec::new();
        for (step, op) in ops.iter().enumerate() {
            match *op {
                Op::Insert(k, w) => {
                    let serial = step as u64 + 1;
                    cache.insert(k, (serial, w));
                    latest.insert(k, serial);
                    created.push((k, serial));
                }
                Op::Get(k) => {
                    if let Some((serial, _)) = cache.get(&k) {
                        prop_assert_eq!(Some(serial), latest.get(&k).copied(), "stale value");
                    }
                }
                Op::Remove(k) => {
                    if let Some((serial, _)) = cache.remove(&k) {
                        prop_assert_eq!(Some(serial), latest.get(&k).copied(), "stale value");
                    }
                    latest.remove(&k);
                }
            }
            let size = cache.weighted_size();
            prop_assert!(
                size <= capacity,
                "weight {} over capacity {} at step {}",
                size,
                capacity,
                step
            );
            let held: u64 = cache.iter().map(|(_, v)| u64::from(v.1)).sum();
            prop_assert_eq!(held, size, "accounting at step {}", step);
        }
        let resident: HashMap<u16, u64> = cache.iter().map(|(k, v)| (k, v.0)).collect();
        for (k, serial) in &resident {
            prop_assert_eq!(
                Some(*serial),
                latest.get(k).copied(),
                "an older value is resident"
            );
        }
        let heard = heard.lock().unwrap().clone();
        let mut reports: HashMap<u64, usize> = HashMap::new();
        for (_, serial, _) in &heard {
            *reports.entry(*serial).or_default() += 1;
        }
        for (k, serial) in created {
            let reported = reports.get(&serial).copied().unwrap_or(0);
            let is_resident = resident.get(&k) == Some(&serial);
            prop_assert_eq!(
                reported + usize::from(is_resident),
                1,
                "value {} of key {}",
                serial,
                k
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn bound_and_values_hold_with_many_shards(
            shards in prop::sample::select(vec![1usize, 2, 4, 8]),
            capacity in 20u64..400,
            ops in prop::collection::vec(op(), 1..500),
        ) {
            check(shards, capacity, &ops)?;
        }
    }
}
