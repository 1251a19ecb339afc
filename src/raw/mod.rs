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
use crate::listener::{ListenerFn, RemovalCause};
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
    /// Default time to live, in ns ([`NEVER`](node::NEVER): none).
    pub(crate) ttl: u64,
    /// Time to idle, in ns ([`NEVER`](node::NEVER): none).
    pub(crate) tti: u64,
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
    /// Expected entries per shard (sizes the arena's first chunk).
    pub(crate) entries_per_shard: usize,
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
                .map(|_| {
                    Shard::new(
                        layout.buckets_per_shard,
                        layout.entries_per_shard,
                        layout.ring,
                    )
                })
                .collect(),
            shard_bits: layout.shards.trailing_zeros(),
            cfg,
        }
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Shard<K, V> {
        let i = if self.shard_bits == 0 {
            0
        } else {
            (hash >> (64 - self.shard_bits)) as usize
        };
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

    /// Stores `key -> value` with a per-entry time to live in ns (`None`: the cache's
    /// default); returns them back if the shard cannot hold another node.
    pub(crate) fn insert(
        &self,
        key: K,
        value: V,
        ttl: Option<u64>,
        weight: u32,
        only_if_absent: bool,
    ) -> Result<Inserted<V>, (K, V)>
    where
        V: Clone,
    {
        let hash = self.cfg.hash(&key);
        self.shard(hash)
            .insert(&self.cfg, hash, key, value, ttl, weight, only_if_absent)
    }

    /// Removes `key`; the listener hears `cause` (or `Expired` if it had expired meanwhile).
    pub(crate) fn remove<Q>(&self, key: &Q, cause: RemovalCause) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let hash = self.cfg.hash(key);
        self.shard(hash).remove(&self.cfg, hash, key, cause)
    }

    /// Restarts `key`'s expiry: with `ttl` (ns, which becomes the entry's own), or with the
    /// entry's own or the cache's default when `None`. False if `key` has no live entry.
    pub(crate) fn retime<Q>(&self, key: &Q, ttl: Option<u64>) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.cfg.hash(key);
        self.shard(hash).retime(&self.cfg, hash, key, ttl)
    }

    /// Remaining lifetime of `key` in ns ([`NEVER`](node::NEVER) if it does not expire).
    pub(crate) fn remaining<Q>(&self, key: &Q) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.cfg.hash(key);
        self.shard(hash).remaining(&self.cfg, hash, key)
    }

    /// Like `read`, but an expired entry not yet reclaimed is returned once and removed.
    pub(crate) fn read_stale<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let hash = self.cfg.hash(key);
        self.shard(hash).read_stale(&self.cfg, hash, key)
    }

    /// Applies every shard's pending events and expires what is due, then sums the live
    /// counts.
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::epoch;

    fn raw(shards: usize, buckets: usize) -> RawCache<u64, u64, ahash::RandomState> {
        let layout = Layout {
            shards,
            buckets_per_shard: buckets,
            entries_per_shard: 0,
            ring: 128,
        };
        let cfg = Config {
            hasher: ahash::RandomState::new(),
            listener: None,
            time: TimeSource::new(quanta::Clock::mock().0),
            stats: StatsCounters::new(false, 1),
            drain_threshold: 32,
            ttl: node::NEVER,
            tti: node::NEVER,
        };
        RawCache::new(layout, cfg)
    }

    /// Growth runs to completion: after enough passes (each needing a grace period between
    /// unzip steps), the table has doubled repeatedly and no old table is left.
    #[test]
    fn growth_completes_and_retires_the_old_table() {
        let cache = raw(1, 8);
        for k in 0..10_000u64 {
            cache.insert(k, k, None, 1, false).ok().unwrap();
        }
        let shard = &cache.shards[0];
        for _ in 0..10_000 {
            cache.run_pending_tasks();
            epoch::pin().flush();
            let guard = epoch::pin();
            if shard.old_table(&guard).is_none() && shard.current(&guard).len() >= 8192 {
                break;
            }
        }
        let guard = epoch::pin();
        assert!(
            shard.old_table(&guard).is_none(),
            "growth still in progress"
        );
        assert!(
            shard.current(&guard).len() >= 8192,
            "{}",
            shard.current(&guard).len()
        );
        drop(guard);
        for k in 0..10_000u64 {
            assert_eq!(cache.read(&k, |v| *v), Some(k));
        }
        assert_eq!(cache.len(), 10_000);
    }
}
