//! Eviction: the size bound's policy (see [`policy`]), one instance per shard, driven by the
//! shard's maintainer; its ghost history of evicted keys ([`ghost`]); and the index-linked
//! lists it keeps its queues in ([`list`], shared with the timer wheel).

pub(crate) mod contest;
mod ghost;
pub(crate) mod list;
pub(crate) mod policy;
pub(crate) mod recent;

#[cfg(all(test, not(loom)))]
mod exact_model {
    //! With one shard, the cache's eviction decisions equal a reference model's: the same
    //! policy driven directly, with the same hashes, in the same order (a new key is admitted,
    //! a new value takes its key's place and count, a removed entry leaves, and when the cache
    //! is over capacity the policy names victims until it is not). The key sets must match
    //! after every operation.

    use std::collections::HashMap;
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{BuildHasher, BuildHasherDefault};

    use proptest::prelude::*;

    use super::contest::Contest;
    use super::policy::{EntryAccess, Policy};
    use crate::Cache;
    use crate::raw::FREQ_MAX;

    type Fixed = BuildHasherDefault<DefaultHasher>;

    #[derive(Clone, Debug)]
    enum Op {
        /// Get; insert on a miss (the usual cache access).
        Access(u16),
        Insert(u16),
        Remove(u16),
    }

    struct Model {
        capacity: u64,
        policy: Policy,
        /// key -> (id, value)
        map: HashMap<u16, (u32, u64)>,
        key_of: Vec<u16>,
        counter: Vec<u8>,
        hasher: Fixed,
    }

    struct Access<'a> {
        counter: &'a mut [u8],
        key_of: &'a [u16],
        hasher: &'a Fixed,
    }

    impl EntryAccess for Access<'_> {
        fn counter(&self, id: u32) -> u8 {
            self.counter[id as usize]
        }
        fn set_counter(&mut self, id: u32, value: u8) {
            self.counter[id as usize] = value;
        }
        fn hash(&self, id: u32) -> u64 {
            self.hasher.hash_one(self.key_of[id as usize])
        }
        fn stamp(&self, _: u32) -> u8 {
            // The model's caches are below the contest's smallest capacity: no estimate.
            0
        }
    }

    impl Model {
        fn new(capacity: u64) -> Self {
            Model {
                capacity,
                policy: Policy::new(capacity, false, Contest::new(capacity), 1),
                map: HashMap::new(),
                key_of: Vec::new(),
                counter: Vec::new(),
                hasher: Fixed::default(),
            }
        }

        fn fresh_id(&mut self, key: u16) -> u32 {
            self.key_of.push(key);
            self.counter.push(0);
            (self.key_of.len() - 1) as u32
        }

        fn insert(&mut self, key: u16, value: u64) {
            let id = self.fresh_id(key);
            let hash = self.hasher.hash_one(key);
            match self.map.insert(key, (id, value)) {
                // A new value for a resident key takes the old one's place and its count.
                Some((old, _)) => {
                    self.counter[id as usize] = self.counter[old as usize];
                    assert!(self.policy.replace(old, id, 1));
                }
                None => self.policy.insert(id, hash, 1),
            }
            while self.map.len() as u64 > self.capacity {
                let mut access = Access {
                    counter: &mut self.counter,
                    key_of: &self.key_of,
                    hasher: &self.hasher,
                };
                let victim = self.policy.evict_one(&mut access).expect("a victim");
                let key = self.key_of[victim as usize];
                assert_eq!(self.map.remove(&key).map(|e| e.0), Some(victim));
            }
        }

        fn get(&mut self, key: u16) -> Option<u64> {
            let (id, value) = *self.map.get(&key)?;
            let c = &mut self.counter[id as usize];
            if *c < FREQ_MAX {
                *c += 1;
            }
            Some(value)
        }

        fn remove(&mut self, key: u16) -> Option<u64> {
            let (id, value) = self.map.remove(&key)?;
            self.policy.remove(id);
            Some(value)
        }
    }

    fn op(keys: u16) -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0..keys).prop_map(Op::Access),
            2 => (0..keys).prop_map(Op::Insert),
            1 => (0..keys).prop_map(Op::Remove),
        ]
    }

    fn check(capacity: u64, ops: &[Op]) -> Result<(), TestCaseError> {
        let cache: Cache<u16, u64, Fixed> = Cache::builder()
            .shards(1)
            .max_capacity(capacity)
            .hasher(Fixed::default())
            .build()
            .unwrap();
        let mut model = Model::new(capacity);
        let mut serial = 0;
        for (step, op) in ops.iter().enumerate() {
            match *op {
                Op::Access(k) => {
                    let expected = model.get(k);
                    prop_assert_eq!(cache.get(&k), expected, "get at step {}", step);
                    if expected.is_none() {
                        serial += 1;
                        cache.insert(k, serial);
                        model.insert(k, serial);
                    }
                }
                Op::Insert(k) => {
                    serial += 1;
                    cache.insert(k, serial);
                    model.insert(k, serial);
                }
                Op::Remove(k) => {
                    prop_assert_eq!(cache.remove(&k), model.remove(k), "remove at step {}", step);
                }
            }
            let mut held: Vec<(u16, u64)> = cache.iter().collect();
            held.sort_unstable();
            let mut expected: Vec<(u16, u64)> = model.map.iter().map(|(k, e)| (*k, e.1)).collect();
            expected.sort_unstable();
            prop_assert_eq!(
                held,
                expected,
                "resident entries differ after step {} ({:?})",
                step,
                op
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn one_shard_decides_like_the_model(
            capacity in 1u64..40,
            ops in prop::collection::vec(op(120), 1..600),
        ) {
            check(capacity, &ops)?;
        }
    }

    /// A long run with a Zipf-like skew, a scan in the middle, and removals.
    #[test]
    fn long_skewed_run_matches() {
        let mut ops = Vec::new();
        let mut x = 1u64;
        for i in 0..30_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = if (10_000..14_000).contains(&i) {
                (1000 + i % 3000) as u16
            } else {
                ((x % 1000) * (x % 1000) / 1000) as u16
            };
            ops.push(match x % 50 {
                0 => Op::Remove(k),
                1..=4 => Op::Insert(k),
                _ => Op::Access(k),
            });
        }
        check(200, &ops).unwrap();
    }
}
