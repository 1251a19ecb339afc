//! The unsafe core: a sharded table of epoch-reclaimed nodes, and its maintenance.
//!
//! Everything `unsafe` in the crate lives under this module; [`RawCache`] exposes a safe
//! interface to the facade in `cache.rs`.
//!
//! - [`node`]: the entry layout and its state machine (the ground rules every other file
//!   refers to).
//! - [`arena`]: node memory of a shard, `u32`-indexed, recycled through the epoch.
//! - [`table`]: a shard's bucket array.
//! - [`shard`]: reads, inserts, removals, growth.
//! - [`maint`]: the maintainer (single owner of a shard's bookkeeping).
//! - [`ring`]: the bounded buffer of events from writers to the maintainer.
//! - [`lock`]: the maintenance try-lock.

pub(crate) mod arena;
pub(crate) mod lock;
pub(crate) mod maint;
pub(crate) mod node;
pub(crate) mod ring;
pub(crate) mod shard;
pub(crate) mod table;

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

use crate::clock::TimeSource;
use crate::listener::ListenerFn;
use crate::stats::StatsCounters;
use shard::{Inserted, Shard};

/// Settings and services shared by the shards of one cache.
pub(crate) struct Config<K, V, S> {
    pub(crate) hasher: S,
    pub(crate) listener: Option<Box<ListenerFn<K, V>>>,
    pub(crate) time: TimeSource,
    pub(crate) stats: StatsCounters,
    /// Waiting events at which a writer offers a maintenance pass.
    pub(crate) drain_threshold: usize,
}

impl<K, V, S: BuildHasher> Config<K, V, S> {
    #[inline]
    pub(crate) fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }
}

/// What the builder decided.
pub(crate) struct Layout {
    pub(crate) shards: usize,
    pub(crate) buckets_per_shard: usize,
    pub(crate) ring: usize,
}

pub(crate) struct RawCache<K, V, S> {
    shards: Box<[Shard<K, V>]>,
    shard_bits: u32,
    pub(crate) cfg: Config<K, V, S>,
}

impl<K, V, S> RawCache<K, V, S>
where
    K: Eq + Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
    S: BuildHasher,
{
    pub(crate) fn new(layout: Layout, cfg: Config<K, V, S>) -> Self {
        debug_assert!(layout.shards.is_power_of_two());
        Self {
            shards: (0..layout.shards)
                .map(|_| Shard::new(layout.buckets_per_shard, layout.ring))
                .collect(),
            shard_bits: layout.shards.trailing_zeros(),
            cfg,
        }
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Shard<K, V> {
        let i = if self.shard_bits == 0 { 0 } else { (hash >> (64 - self.shard_bits)) as usize };
        &self.shards[i]
    }

    #[inline]
    pub(crate) fn read<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.cfg.hash(key);
        self.shard(hash).read(&self.cfg, hash, key, f)
    }

    /// Stores `key -> value`; returns them back if the shard cannot hold another node.
    pub(crate) fn insert(
        &self,
        key: K,
        value: V,
        deadline: u64,
        weight: u32,
        only_if_absent: bool,
    ) -> Result<Inserted<V>, (K, V)>
    where
        V: Clone,
    {
        let hash = self.cfg.hash(&key);
        self.shard(hash).insert(&self.cfg, hash, key, value, deadline, weight, only_if_absent)
    }

    pub(crate) fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let hash = self.cfg.hash(key);
        self.shard(hash).remove(&self.cfg, hash, key)
    }

    /// Applies every shard's pending events, then sums the live counts.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard.maintain(&self.cfg);
                shard.len()
            })
            .sum()
    }

    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            shard.clear(&self.cfg);
        }
    }

    pub(crate) fn run_pending_tasks(&self) {
        for shard in self.shards.iter() {
            shard.maintain(&self.cfg);
        }
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// A snapshot of shard `i`'s live entries.
    pub(crate) fn snapshot_shard(&self, i: usize, out: &mut Vec<(K, V)>)
    where
        K: Clone,
        V: Clone,
    {
        self.shards[i].snapshot(&self.cfg, out);
    }
}
