//! The unsafe core: a sharded table of reclaimed nodes, and its maintenance.
//!
//! Everything `unsafe` in the crate lives under this module; [`RawCache`] exposes a safe
//! interface to the facade in `cache.rs`, and is the only part that talks to the listener and
//! to the read counters. The submodules depend on each other one way:
//!
//! ```text
//! reclaim  <-  table  <-  maint  <-  shard  <-  RawCache (this file)
//!                           |
//!                           +-> evict (the policy), expire (the timer wheel)
//! ```
//!
//! - [`reclaim`]: when memory readers may still hold can be freed (light reads,
//!   crossbeam-epoch, the retirement queue and its reclaimer thread); knows nothing of keys,
//!   values, tables or growth.
//! - [`table`]: a shard's nodes (arena, node layout and state machine), bucket arrays,
//!   chains, and growth.
//! - [`maint`]: the maintainer (single owner of a shard's bookkeeping), its event ring and
//!   lock; drives expiry, eviction, unlinks, growth and retirement.
//! - [`shard`]: a table and its upkeep; the keyed operations.

mod maint;
mod reclaim;
mod shard;
mod table;

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

use crate::clock::TimeSource;
use crate::entry::{CompResult, Op};
use crate::expiry::ExpiryFn;
use crate::listener::{ListenerFn, RemovalCause};
use crate::stats::StatsCounters;
use crate::sync::epoch::{self, Guard};
use maint::Notes;
#[cfg(not(loom))]
pub(crate) use reclaim::Chore;
use reclaim::{light, retire};
pub(crate) use shard::Inserted;
use shard::{InsertMode, Removed, Seen, Shard, Staged, Stale};
pub(crate) use table::NEVER;
#[cfg(all(test, not(loom)))]
pub(crate) use table::node::FREQ_MAX;
pub(crate) use table::pages::physical_memory;

/// A new name for a cache in the retirement queue (its [`Config::owner`]).
pub(crate) fn new_owner() -> u64 {
    retire::owner()
}

/// Registers `chore`, with its count of pending work, for the reclaimer thread to run while
/// that count is not zero (see `reclaim/retire.rs`).
#[cfg(not(loom))]
pub(crate) fn register_chore(
    pending: crate::sync::Arc<crate::sync::AtomicUsize>,
    chore: crate::sync::Weak<dyn Chore>,
) {
    retire::register(pending, chore);
}

/// Longest an explicit pass waits for reads in progress (see `retire::settle`).
const LIGHT_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// Settings and services shared by the shards of one cache.
pub(crate) struct Config<K, V, S> {
    pub(crate) hasher: S,
    pub(crate) listener: Option<Box<ListenerFn<K, V>>>,
    pub(crate) time: TimeSource,
    pub(crate) stats: StatsCounters,
    /// Waiting events at which a writer offers a maintenance pass.
    pub(crate) drain_threshold: usize,
    /// Default time to live, in ns ([`NEVER`]: none).
    pub(crate) ttl: u64,
    /// Time to idle, in ns ([`NEVER`]: none).
    pub(crate) tti: u64,
    /// The size bound, if any (also present, unbounded, when a weigher is set, so that the
    /// weighted size is tracked).
    pub(crate) bound: Option<Bound>,
    /// Weighs an entry (`None`: every entry weighs 1).
    pub(crate) weigher: Option<Box<WeigherFn<K, V>>>,
    /// Shards of this cache with a growth in progress: the pending work of the cache's chore
    /// (`RawCache::finish_growths`), which the reclaimer thread runs while this is not zero.
    #[cfg(not(loom))]
    pub(crate) growing: crate::sync::Arc<crate::sync::AtomicUsize>,
    /// This cache's name in the retirement queue ([`retire::owner`]): what it retired and is
    /// not freed yet can be freed at once when it is dropped.
    pub(crate) owner: u64,
    /// A shard whose array has fewer buckets than this grows at a load of one half (else at a
    /// load of one): for a cache bounded by count, the buckets a shard pre-sized for its share
    /// of the capacity would have (two per entry), so that a full cache is laid out as if
    /// pre-sized; 0 otherwise.
    pub(crate) half_load_below: u64,
}

/// The weigher as stored by the cache.
pub(crate) type WeigherFn<K, V> = dyn Fn(&K, &V) -> u32 + Send + Sync + 'static;

/// A cache's size bound and the weight it accounts against it.
///
/// Writers *reserve* an entry's weight before they publish it (a CAS loop that never takes
/// the total above `capacity + slack`), and the weight is released when the entry is marked
/// removed, by whoever marks it. An insert that replaces a live node of the same weight does
/// neither: it *claims* that node first (a bit in the node's link, set with a CAS only on an
/// unmarked, unclaimed node) and so takes over its share, and whoever later marks a claimed
/// node releases nothing. So a replacement touches this shared counter not at all, and
/// `reserved` is the weight of the unmarked, unclaimed entries plus the shares held by inserts
/// in flight (each claimed node's share counted once, for the insert that claimed it, which
/// publishes with no exit in between): it never exceeds `capacity + slack`, however many
/// writers there are. Maintenance passes evict while `reserved > capacity`; a writer that
/// would go past the slack makes room itself first (back-pressure).
pub(crate) struct Bound {
    /// The capacity, and below the figures derived from it, each in its own word so that
    /// [`set_capacity`](Self::set_capacity) can change them while writers run: each is read
    /// on its own (Relaxed), and a writer that reads a capacity from before a change and a
    /// slack from after it only lets the total pass the new capacity by the larger of the two
    /// slacks for as long as its insert lasts.
    capacity: crate::sync::AtomicU64,
    slack: crate::sync::AtomicU64,
    /// Each shard's nominal share of the capacity (`capacity / shards`, at least 1), which
    /// sizes its policy's queues.
    share: crate::sync::AtomicU64,
    /// `capacity / shards`, rounded down (0 when there are more shards than capacity): an
    /// ordinary pass evicts only in a shard that holds more than this, so shards share the
    /// capacity evenly when keys spread evenly, a shard may hold all of it when they do not,
    /// and the shares never add up to more than the capacity (a shard at its share never has
    /// to leave the cache over it).
    floor_share: crate::sync::AtomicU64,
    /// How far over the capacity the weight held may go before a writer offers a pass for it:
    /// half the slack for a single-shard cache of 4096 or more (eviction in batches: an
    /// evicting insert cost about 3,000 instructions with a pass per insert, 2,100 with
    /// batches), none otherwise (each insert over the bound is evicted for at once, which the
    /// exact model of `src/evict/mod.rs` follows step by step). Not with several shards: the
    /// pass a writer offers evicts from its own shard only, so a batch is taken from whichever
    /// shard triggered it, and the hit ratio fell by up to 4 points (Zipf 0.6 at 10,000
    /// entries in 8 shards: 28.1% against 32.3%; even a batch of 10 cost 2 points).
    batch: crate::sync::AtomicU64,
    /// With several shards, how far past its floor share a shard's own admitted weight may
    /// go before its writers offer a pass for the bound (`share / 128`; 0 with one shard,
    /// which batches by `batch`). The trigger is the shard's own excess, so each shard evicts
    /// its own overflow and the shares stay even (the global batch above took a batch from
    /// whichever shard triggered it); a shard at or under its floor share is never offered a
    /// pass for the bound, which would evict nothing there. The shards' batches add up to
    /// `capacity / 128`, half the slack.
    shard_batch: crate::sync::AtomicU64,
    /// The number of shards the figures above are derived for.
    shards: u64,
    pub(crate) reserved: crossbeam_utils::CachePadded<crate::sync::AtomicU64>,
    /// The eviction policies' contest between their modes, shared by every shard.
    pub(crate) contest: crate::sync::Arc<crate::evict::contest::Contest>,
    /// Keys whose hash mixes below this are in the recency estimate's sample (0 without an
    /// estimate: none), read on every hit without following the contest's pointer.
    sample_below: u64,
}

impl Bound {
    pub(crate) fn new(capacity: u64, shards: usize, weighted: bool) -> Self {
        let bound = Self {
            capacity: crate::sync::AtomicU64::new(0),
            slack: crate::sync::AtomicU64::new(0),
            share: crate::sync::AtomicU64::new(0),
            floor_share: crate::sync::AtomicU64::new(0),
            batch: crate::sync::AtomicU64::new(0),
            shard_batch: crate::sync::AtomicU64::new(0),
            shards: shards as u64,
            reserved: crossbeam_utils::CachePadded::new(crate::sync::AtomicU64::new(0)),
            contest: crate::evict::contest::Contest::for_cache(capacity, weighted),
            sample_below: 0,
        };
        let bound = Self {
            sample_below: crate::evict::recent::threshold(bound.contest.recent.bits()),
            ..bound
        };
        bound.set_capacity(capacity);
        bound
    }

    /// The recency estimate, if it samples a key with `hash` (`evict/recent.rs`).
    #[inline]
    pub(crate) fn sample(&self, hash: u64) -> Option<&crate::evict::recent::Recent> {
        (crate::evict::recent::mix(hash) < self.sample_below).then_some(&self.contest.recent)
    }

    /// Changes the capacity (and the figures derived from it: slack, batch, shares, and the
    /// length of the policies' contest rounds). Entries over a smaller capacity are evicted by
    /// the passes that follow (`RawCache::set_capacity` runs them at once).
    pub(crate) fn set_capacity(&self, capacity: u64) {
        use crate::sync::Ordering::Relaxed;
        // Relaxed: each figure is read on its own by writers and passes, which re-check the
        // counter they act on (see the field's documentation).
        self.slack.store((capacity / 64).max(1), Relaxed);
        self.batch.store(
            if capacity >= 1 << 12 && self.shards == 1 {
                capacity / 128
            } else {
                0
            },
            Relaxed,
        );
        self.shard_batch.store(
            if self.shards > 1 && capacity / self.shards >= 1 << 12 {
                capacity / self.shards / 128
            } else {
                0
            },
            Relaxed,
        );
        self.share.store((capacity / self.shards).max(1), Relaxed);
        self.floor_share.store(capacity / self.shards, Relaxed);
        self.capacity.store(capacity, Relaxed);
        self.contest.set_capacity(capacity);
    }

    /// The capacity: entries, or total weight with a weigher.
    #[inline]
    pub(crate) fn capacity(&self) -> u64 {
        // Relaxed: see `set_capacity`.
        self.capacity.load(crate::sync::Ordering::Relaxed)
    }

    /// How far concurrent inserts may take the reserved weight past the capacity.
    #[inline]
    pub(crate) fn slack(&self) -> u64 {
        // Relaxed: see `set_capacity`.
        self.slack.load(crate::sync::Ordering::Relaxed)
    }

    /// The number of shards the capacity is shared by.
    #[inline]
    pub(crate) fn shards(&self) -> u64 {
        self.shards
    }

    /// Each shard's nominal share of the capacity (see the field).
    #[inline]
    pub(crate) fn share(&self) -> u64 {
        // Relaxed: see `set_capacity`.
        self.share.load(crate::sync::Ordering::Relaxed)
    }

    /// `capacity / shards`, rounded down (see the field).
    #[inline]
    pub(crate) fn floor_share(&self) -> u64 {
        // Relaxed: see `set_capacity`.
        self.floor_share.load(crate::sync::Ordering::Relaxed)
    }

    /// How far over the capacity a writer lets the weight go before it offers a pass (see the
    /// field).
    #[inline]
    pub(crate) fn batch(&self) -> u64 {
        // Relaxed: see `set_capacity`.
        self.batch.load(crate::sync::Ordering::Relaxed)
    }

    /// The weight reserved now (a counter: exact when no write is in flight).
    #[inline]
    pub(crate) fn reserved(&self) -> u64 {
        // Relaxed: a counter; decisions based on it are re-checked by the CAS in `reserve`.
        self.reserved.load(crate::sync::Ordering::Relaxed)
    }

    /// Whether a writer should offer a maintenance pass for the bound: the weight held is
    /// over the capacity by more than `batch`. Passes offered every few events evict what is
    /// over the capacity in between, so a large cache evicts in batches instead of running a
    /// pass per insert, and the weight held never passes `capacity + slack` (writers make
    /// room themselves before that).
    #[inline]
    pub(crate) fn over(&self) -> bool {
        self.reserved() > self.capacity().saturating_add(self.batch())
    }

    /// Whether a writer of a shard whose policy holds `shard_size` should offer a pass for the
    /// bound: the cache is [`over`](Self::over), and with several shards this shard holds
    /// more than its floor share by more than its batch (see `shard_batch`).
    #[inline]
    pub(crate) fn shard_over(&self, shard_size: u64) -> bool {
        // Relaxed: see `set_capacity`.
        let batch = self.shard_batch.load(crate::sync::Ordering::Relaxed);
        self.over() && (batch == 0 || shard_size > self.floor_share().saturating_add(batch))
    }

    /// Whether the cache evicts in batches (`batch` or `shard_batch` is not zero).
    #[inline]
    pub(crate) fn batches(&self) -> bool {
        // Relaxed: see `set_capacity`.
        self.batch() > 0 || self.shard_batch.load(crate::sync::Ordering::Relaxed) > 0
    }

    /// Releases `weight` (called by whoever marks an entry removed, exactly once).
    #[inline]
    pub(crate) fn release(&self, weight: u64) {
        // Relaxed: see `reserved`.
        self.reserved
            .fetch_sub(weight, crate::sync::Ordering::Relaxed);
    }
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
    /// Whether large tables and arena chunks are advised onto huge pages.
    pub(crate) huge_pages: bool,
    pub(crate) ring: usize,
}

pub(crate) struct RawCache<K, V, S> {
    shards: Box<[Shard<K, V>]>,
    shard_bits: u32,
    pub(crate) cfg: Config<K, V, S>,
    /// The user's per-entry expiry, if any (`set_expiry`): its read hook makes reads take
    /// `Shard::read_hooked`, its create and update hooks decide inserts' lifetimes.
    expiry: Option<Box<ExpiryFn<K, V>>>,
    /// Whether an insert of a live key may overwrite its value in place
    /// (`Shard::insert_in_place`): the values are value words (`table::word_value`), every
    /// entry weighs 1, and deadlines move only on inserts and `touch` (no time to idle, no
    /// expiry hooks).
    in_place: bool,
}

/// A share of the bound reserved for an insert: given back when dropped unless `kept` (the
/// insert published its node, which holds the share from then on).
struct Reservation<'a> {
    bound: &'a Bound,
    weight: u64,
    kept: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.bound.release(self.weight);
        }
    }
}

/// Whether an insert replaces a live value of its key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// Replace it (an upsert).
    Upsert,
    /// Store only if the key has no live value.
    IfAbsent,
}

impl<K, V, S> RawCache<K, V, S>
where
    K: Eq + Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
    S: BuildHasher,
{
    /// The cache `layout` describes; `None` if the allocator refused its first tables.
    pub(crate) fn new(layout: Layout, cfg: Config<K, V, S>) -> Option<Self> {
        debug_assert!(layout.shards.is_power_of_two());
        // Once per process: decides how reads order themselves with reclamation (light.rs).
        light::init();
        Some(Self {
            shards: (0..layout.shards)
                .map(|_| {
                    Shard::new(
                        layout.buckets_per_shard,
                        layout.entries_per_shard,
                        layout.ring,
                        layout.huge_pages,
                    )
                })
                .collect::<Option<_>>()?,
            shard_bits: layout.shards.trailing_zeros(),
            in_place: table::word_value::<V>() && cfg.weigher.is_none() && cfg.tti == NEVER,
            cfg,
            expiry: None,
        })
    }

    /// Sets the per-entry expiry (at build, before the cache is shared).
    pub(crate) fn set_expiry(&mut self, expiry: Box<ExpiryFn<K, V>>) {
        self.expiry = Some(expiry);
        self.in_place = false;
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

    /// Reports to the listener what `shard` removed under `guard`: a pass's removals, then an
    /// operation's own (a panic in the listener goes to the caller once all are delivered).
    fn deliver(&self, shard: &Shard<K, V>, notes: Notes, guard: &Guard) {
        let Some(listener) = &self.cfg.listener else {
            return;
        };
        if !notes.is_empty() {
            crate::listener::deliver_all(notes, |(idx, cause)| {
                shard.with_removed(idx, guard, |k, v| listener(k, v, cause))
            });
        }
    }

    /// [`deliver`](Self::deliver) for what an operation removed. Inlined to its first test:
    /// without a listener an operation has nothing to report (its notes are empty, never
    /// allocated), and a call per write to find that out cost about 17 instructions
    /// (`examples/write_path.rs`).
    #[inline(always)]
    fn report(&self, shard: &Shard<K, V>, removed: Removed, guard: &Guard) {
        if self.cfg.listener.is_some() {
            self.report_to_listener(shard, removed, guard);
        }
    }

    #[inline(never)]
    fn report_to_listener(&self, shard: &Shard<K, V>, removed: Removed, guard: &Guard) {
        let Some(listener) = &self.cfg.listener else {
            return;
        };
        self.deliver(shard, removed.pass, guard);
        if let Some((idx, cause)) = removed.own {
            shard.with_removed(idx, guard, |k, v| listener(k, v, cause));
        }
    }

    #[inline]
    pub(crate) fn read<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.cfg.hash(key);
        if let Some(expiry) = &self.expiry {
            let shard = self.shard(hash);
            return light::read(|guard| self.read_hooked(shard, &**expiry, hash, key, f, guard));
        }
        let found = self.shard(hash).read(&self.cfg, hash, key, f);
        self.cfg.stats.read(found.is_some());
        found
    }

    /// A read through `Shard::read_hooked` (a cache with an expiry), and the event for a
    /// deadline it moved earlier, recorded once the read is over.
    #[cold]
    fn read_hooked<Q, R>(
        &self,
        shard: &Shard<K, V>,
        expiry: &ExpiryFn<K, V>,
        hash: u64,
        key: &Q,
        f: impl FnOnce(&V) -> R,
        guard: &impl reclaim::Protected,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (found, moved) = shard.read_hooked(&self.cfg, expiry, hash, key, f, guard);
        self.cfg.stats.read(found.is_some());
        if let Some(idx) = moved {
            let guard = epoch::pin();
            let removed = shard.reschedule(&self.cfg, idx, &guard);
            self.report(shard, removed, &guard);
        }
        found
    }

    /// A read that counts as nothing (no statistics, no expiry hook, no idle extension of
    /// its own): the loaders' second look.
    pub(crate) fn peek<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.cfg.hash(key);
        let shard = self.shard(hash);
        let guard = shard.pin_for(hash);
        shard.observe(&self.cfg, hash, key, &guard, |v| v.map(f)).1
    }

    pub(crate) fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.cfg.hash(key);
        self.shard(hash).contains(&self.cfg, hash, key)
    }

    /// [`read`](Self::read) under a guard the caller holds (no pin of its own).
    #[inline]
    pub(crate) fn read_in<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R, guard: &Guard) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.cfg.hash(key);
        if let Some(expiry) = &self.expiry {
            let shard = self.shard(hash);
            return self.read_hooked(shard, &**expiry, hash, key, f, guard);
        }
        let found = self.shard(hash).read_in(&self.cfg, hash, key, f, guard);
        self.cfg.stats.read(found.is_some());
        found
    }

    /// [`contains`](Self::contains) under a guard the caller holds.
    #[inline]
    pub(crate) fn contains_in<Q>(&self, key: &Q, guard: &Guard) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.cfg.hash(key);
        self.shard(hash).contains_in(&self.cfg, hash, key, guard)
    }

    /// Stores `key -> value` with a per-entry time to live in ns (`None`: the cache's
    /// default); returns them back if the shard cannot hold another node.
    #[inline]
    pub(crate) fn insert(
        &self,
        key: K,
        value: V,
        ttl: Option<u64>,
        weight: u32,
        write: Write,
    ) -> Result<Inserted<V>, (K, V)>
    where
        V: Clone,
    {
        let hash = self.cfg.hash(&key);
        let shard = self.shard(hash);
        let cfg = &self.cfg;
        let mut value = value;
        if self.in_place && ttl.is_none() && matches!(write, Write::Upsert) {
            // In a light read, as a lookup: no crossbeam pin (a full barrier) for a write that
            // publishes and retires nothing.
            let attempt = light::read(|guard| shard.insert_in_place(cfg, hash, &key, value, guard));
            match attempt {
                Ok(old) => {
                    if let Some(listener) = &cfg.listener {
                        listener(&key, &old, RemovalCause::Replaced);
                    }
                    if shard.upkeep_due(cfg) {
                        let guard = epoch::pin();
                        let notes = shard.try_maintain(cfg, &guard);
                        self.deliver(shard, notes, &guard);
                    }
                    return Ok(Inserted::Stored);
                }
                Err(back) => value = back,
            }
        }
        let guard = shard.pin_for(hash);
        let result = match (&cfg.bound, write) {
            (None, Write::Upsert) => shard.insert(
                cfg,
                hash,
                key,
                value,
                ttl,
                weight,
                InsertMode::Upsert,
                &guard,
            ),
            (None, Write::IfAbsent) => shard.insert(
                cfg,
                hash,
                key,
                value,
                ttl,
                weight,
                InsertMode::IfAbsent,
                &guard,
            ),
            // The shard reserves when it needs to (not when it replaces a node of the same
            // weight, whose share it takes over).
            (Some(bound), Write::Upsert) => {
                let reserve = |w: u64| self.reserve(bound, w);
                shard.insert(
                    cfg,
                    hash,
                    key,
                    value,
                    ttl,
                    weight,
                    InsertMode::UpsertBounded(&reserve),
                    &guard,
                )
            }
            (Some(bound), Write::IfAbsent) => {
                self.reserve(bound, u64::from(weight));
                // Given back unless the node is published, also if a user's `Eq` or `Clone`
                // unwinds out of the insert.
                let mut reserved = Reservation {
                    bound,
                    weight: u64::from(weight),
                    kept: false,
                };
                let result = shard.insert(
                    cfg,
                    hash,
                    key,
                    value,
                    ttl,
                    weight,
                    InsertMode::IfAbsent,
                    &guard,
                );
                reserved.kept = matches!(result, Ok((Inserted::Stored, _)));
                result
            }
        };
        result.map(|(inserted, removed)| {
            self.report(shard, removed, &guard);
            inserted
        })
    }

    /// Reserves `weight` against the bound, making room first if the total would pass
    /// `capacity + slack`. The caller checked `weight <= capacity`.
    fn reserve(&self, bound: &Bound, weight: u64) {
        // Relaxed: the counter only has to be exact, not ordered with anything else.
        let mut current = bound.reserved.load(crate::sync::Ordering::Relaxed);
        loop {
            if current.saturating_add(weight) > bound.capacity().saturating_add(bound.slack()) {
                self.make_room(bound, weight);
                current = bound.reserved.load(crate::sync::Ordering::Relaxed);
                continue;
            }
            match bound.reserved.compare_exchange_weak(
                current,
                current + weight,
                crate::sync::Ordering::Relaxed,
                crate::sync::Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Back-pressure: evicts until `weight` fits under the capacity, from the shards in order
    /// of the weight they hold (largest first, each after a pass that applies its pending
    /// events), moving on to the next while the cache is still over. Every shard gives what
    /// it holds if need be, so when this returns with the cache still over, the excess is
    /// weight reserved by inserts in flight on other threads, which publish (and become
    /// evictable) without waiting for anyone: the caller's retry then makes progress.
    ///
    /// (Evicting from the largest shard only, down to the global target, could give nothing
    /// back: a shard's admitted size leaves out its pending events, and a shard holding less
    /// than the excess emptied and stopped. With a few heavy entries per shard the caller
    /// then spun forever; `tests/bounded.rs`, `few_heavy_entries_per_shard_never_hang`.)
    #[cold]
    fn make_room(&self, bound: &Bound, weight: u64) {
        let target = bound.capacity().saturating_sub(weight);
        let mut order: Vec<usize> = (0..self.shards.len()).collect();
        order.sort_unstable_by_key(|&i| std::cmp::Reverse(self.shards[i].size()));
        let guard = epoch::pin();
        for i in order {
            let shard = &self.shards[i];
            let notes = shard.evict_to(&self.cfg, target, &guard);
            self.deliver(shard, notes, &guard);
            if bound.reserved() <= target {
                return;
            }
        }
        crate::sync::yield_now();
    }

    /// The weight of the entries held (for a bounded or weighed cache), after applying pending
    /// events and expiring what is due; otherwise the number of entries.
    pub(crate) fn weighted_size(&self) -> u64 {
        match &self.cfg.bound {
            Some(bound) => {
                self.run_pending_tasks();
                bound.reserved()
            }
            None => self.len() as u64,
        }
    }

    /// Removes `key`; the listener hears `cause` (or `Expired` if it had expired meanwhile).
    pub(crate) fn remove<Q>(&self, key: &Q, cause: RemovalCause) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let hash = self.cfg.hash(key);
        let shard = self.shard(hash);
        let guard = shard.pin_for(hash);
        let (value, removed) = shard.remove(&self.cfg, hash, key, cause, &guard);
        self.report(shard, removed, &guard);
        value
    }

    /// Restarts `key`'s expiry: with `ttl` (ns, which becomes the entry's own), or with the
    /// entry's own or the cache's default when `None`. False if `key` has no live entry.
    pub(crate) fn retime<Q>(&self, key: &Q, ttl: Option<u64>) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.cfg.hash(key);
        let shard = self.shard(hash);
        let guard = shard.pin_for(hash);
        let (live, removed) = shard.retime(&self.cfg, hash, key, ttl, &guard);
        self.report(shard, removed, &guard);
        live
    }

    /// Remaining lifetime of `key` in ns ([`NEVER`] if it does not expire).
    pub(crate) fn remaining<Q>(&self, key: &Q) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.cfg.hash(key);
        self.shard(hash).remaining(&self.cfg, hash, key)
    }

    /// The live value of `key`, or its expired value if that is not reclaimed yet (which this
    /// call then removes; only one caller gets it). The flag says which: `true` for expired.
    pub(crate) fn read_stale<Q>(&self, key: &Q) -> Option<(V, bool)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        if self.expiry.is_some()
            && let Some(v) = self.read(key, V::clone)
        {
            return Some((v, false));
        }
        let hash = self.cfg.hash(key);
        let shard = self.shard(hash);
        let guard = shard.pin_for(hash);
        let (found, removed) = shard.read_stale(&self.cfg, hash, key, &guard);
        self.cfg.stats.read(found.is_some());
        self.report(shard, removed, &guard);
        found
    }

    /// The weight of an entry (1 without a weigher; a zero weight counts as one, so that no
    /// entry escapes the bound).
    pub(crate) fn weigh(&self, key: &K, value: &V) -> u32 {
        self.cfg
            .weigher
            .as_ref()
            .map_or(1, |weigh| weigh(key, value).max(1))
    }

    /// Whether an entry of `weight` is heavier than the whole capacity (it is then not stored).
    pub(crate) fn too_heavy(&self, weight: u32) -> bool {
        self.cfg
            .bound
            .as_ref()
            .is_some_and(|b| u64::from(weight) > b.capacity())
    }

    /// The own lifetime (ns) the expiry gives a value written for `key`; `None` for the cache's
    /// default (no expiry set, or the hook said "no expiry", which the time to live caps).
    /// `old` is the remaining lifetime of the live value it replaces (`Some(NEVER)`: one that
    /// does not expire), `None` if there is none.
    pub(crate) fn lifetime_for(&self, key: &K, value: &V, old: Option<u64>) -> Option<u64> {
        let expiry = self.expiry.as_ref()?;
        let given = match old {
            None => expiry.expire_after_create(key, value),
            Some(remaining) => {
                let remaining =
                    (remaining != table::NEVER).then(|| std::time::Duration::from_nanos(remaining));
                expiry.expire_after_update(key, value, remaining)
            }
        };
        given.map(|d| crate::builder::duration_to_ns(d).min(self.cfg.ttl))
    }

    /// Whether the cache has an expiry (its inserts then ask it for their lifetimes).
    pub(crate) fn has_expiry(&self) -> bool {
        self.expiry.is_some()
    }

    /// Atomic compute on `key` (see `raw/shard/conditional.rs` for the protocol): `f` is
    /// given the key's live value (or `None`) and decides; the decision takes effect only if
    /// the value is still the key's when it is published, otherwise `f` runs again on the
    /// new one. `f` runs with this thread pinned and no lock held.
    pub(crate) fn compute(&self, key: K, mut f: impl FnMut(Option<&V>) -> Op<V>) -> CompResult<V>
    where
        V: Clone,
    {
        let cfg = &self.cfg;
        let hash = cfg.hash(&key);
        let shard = self.shard(hash);
        let mut staged = Staged::new(&shard.table, key);
        loop {
            let guard = shard.pin_for(hash);
            let (seen, (op, current)) = staged.with_key(|k| {
                shard.observe(cfg, hash, k, &guard, |v| {
                    let op = f(v);
                    // The current value, for the result (`Unchanged`, `Removed`).
                    let current = match op {
                        Op::Put(_) => None,
                        Op::Nop | Op::Remove => v.cloned(),
                    };
                    (op, current)
                })
            });
            let now = || cfg.time.now();
            match (op, seen) {
                // Reading needs no lock: the value `f` saw was the key's at the observation.
                (Op::Nop, _) | (Op::Remove, None) => {
                    return match current {
                        Some(v) => CompResult::Unchanged(v),
                        None => CompResult::StillNone,
                    };
                }
                (Op::Remove, Some(old)) => {
                    let Ok(removed) = self.remove_current(
                        shard,
                        &staged,
                        hash,
                        old,
                        RemovalCause::Explicit,
                        &guard,
                    ) else {
                        continue;
                    };
                    self.report(shard, removed, &guard);
                    match current {
                        Some(v) => return CompResult::Removed(v),
                        None => unreachable!("a removed value was observed"),
                    }
                }
                (Op::Put(value), seen) => {
                    let result = match seen {
                        Some(_) => CompResult::ReplacedWith(value.clone()),
                        None => CompResult::Inserted(value.clone()),
                    };
                    let weight = staged.with_key(|k| self.weigh(k, &value));
                    let own_ttl = staged.with_key(|k| {
                        let old = seen.map(|seen| {
                            let d = seen.deadline;
                            if d == table::NEVER {
                                table::NEVER
                            } else {
                                d.saturating_sub(now())
                            }
                        });
                        self.lifetime_for(k, &value, old)
                    });
                    // The share of the bound, reserved before the lock is taken (making room
                    // takes maintenance locks), given back if this attempt does not publish.
                    let heavy = self.too_heavy(weight);
                    let mut reserved = cfg.bound.as_ref().filter(|_| !heavy).map(|bound| {
                        self.reserve(bound, u64::from(weight));
                        Reservation {
                            bound,
                            weight: u64::from(weight),
                            kept: false,
                        }
                    });
                    let staged_value = if heavy {
                        Err(value)
                    } else {
                        staged.stage(value, hash)
                    };
                    if let Err(value) = staged_value {
                        // Heavier than the capacity, or the shard cannot address another node:
                        // as for `insert`, the previous value goes and the new one is evicted
                        // at once.
                        drop(reserved);
                        if let Some(old) = seen {
                            match self.remove_current(
                                shard,
                                &staged,
                                hash,
                                old,
                                RemovalCause::Replaced,
                                &guard,
                            ) {
                                Ok(removed) => self.report(shard, removed, &guard),
                                Err(Stale) => continue,
                            }
                        }
                        if let Some(listener) = &cfg.listener {
                            staged.with_key(|k| listener(k, &value, RemovalCause::Size));
                        }
                        return result;
                    }
                    let published = shard.upkeep.exclusive(|| {
                        shard.publish(cfg, hash, &mut staged, seen, own_ttl, weight, &guard)
                    });
                    let Ok(published) = published else {
                        continue;
                    };
                    if let Some(r) = reserved.as_mut() {
                        r.kept = true;
                    }
                    let removed = shard.published(cfg, published, &guard);
                    self.report(shard, removed, &guard);
                    return result;
                }
            }
        }
    }

    /// Removes `old` for `cause` if it is still the staged key's live value (under the shard's
    /// maintenance lock, see `publish`); the removals to report.
    fn remove_current(
        &self,
        shard: &Shard<K, V>,
        staged: &Staged<'_, K, V>,
        hash: u64,
        old: Seen,
        cause: RemovalCause,
        guard: &Guard,
    ) -> Result<Removed, Stale> {
        let claimed = shard.upkeep.exclusive(|| {
            staged.with_key(|k| shard.remove_current(&self.cfg, hash, k, old, guard))
        })?;
        Ok(shard.removed_current(&self.cfg, old.idx, claimed, cause, guard))
    }

    /// Removes every live entry for which `pred` is true (`Explicit`); returns how many this
    /// call removed. Weakly consistent (see `Shard::retain`).
    pub(crate) fn retain(&self, pred: &mut dyn FnMut(&K, &V) -> bool) -> usize {
        let mut count = 0;
        for shard in self.shards.iter() {
            let guard = epoch::pin();
            let removed = shard.retain(&self.cfg, pred, &guard);
            count += removed
                .pass
                .iter()
                .filter(|(_, cause)| *cause == RemovalCause::Explicit)
                .count();
            self.report(shard, removed, &guard);
        }
        count
    }

    /// Changes the capacity of a bounded cache, then evicts down to a smaller one (readers
    /// never wait; writers of a shard being evicted from wait for its pass at most). `false`
    /// for a cache without a bound.
    pub(crate) fn set_capacity(&self, capacity: u64) -> bool {
        let Some(bound) = &self.cfg.bound else {
            return false;
        };
        bound.set_capacity(capacity);
        // Inserts in flight may hold reservations over the new capacity for a moment (they
        // publish and become evictable without waiting): a few rounds take what they left.
        // Down to the capacity itself, not to `over`'s batch above it.
        for _ in 0..4 {
            if bound.reserved() <= bound.capacity() {
                break;
            }
            self.make_room(bound, 0);
        }
        true
    }

    /// The capacity of a bounded cache.
    pub(crate) fn capacity(&self) -> Option<u64> {
        self.cfg.bound.as_ref().map(Bound::capacity)
    }

    /// Applies every shard's pending events and expires what is due, then sums the live
    /// counts.
    pub(crate) fn len(&self) -> usize {
        let guard = epoch::pin();
        self.shards
            .iter()
            .map(|shard| {
                // No wait for reads in progress here: `len` only needs the count.
                let notes = shard.maintain(&self.cfg, &guard);
                self.deliver(shard, notes, &guard);
                shard.len()
            })
            .sum()
    }

    /// The counters, after applying every shard's pending events (so the write counters are
    /// exact when no write is in flight).
    pub(crate) fn stats(&self) -> crate::stats::Stats {
        let mut writes = [0u64; 4];
        let guard = epoch::pin();
        for shard in self.shards.iter() {
            let (counts, notes) = shard.counts(&self.cfg, &guard);
            self.deliver(shard, notes, &guard);
            for (total, n) in writes.iter_mut().zip(counts) {
                *total += n;
            }
        }
        self.cfg.stats.snapshot(writes)
    }

    pub(crate) fn clear(&self) {
        {
            let guard = epoch::pin();
            for shard in self.shards.iter() {
                let notes = shard.clear(&self.cfg, &guard);
                self.deliver(shard, notes, &guard);
            }
        }
        retire::settle(LIGHT_WAIT);
    }

    /// Runs a pass on every shard, then waits a little for the reads in progress to end (one
    /// light grace period for them all), so that what the passes retired goes on to be freed
    /// now (see `retire::settle`).
    pub(crate) fn run_pending_tasks(&self) {
        {
            let guard = epoch::pin();
            for shard in self.shards.iter() {
                let notes = shard.maintain(&self.cfg, &guard);
                self.deliver(shard, notes, &guard);
            }
        }
        retire::settle(LIGHT_WAIT);
    }

    /// The cache's chore for the reclaimer thread (`reclaim::Chore`): runs a maintenance pass
    /// (if its lock is free) on every shard that is growing, so that a growth writes left
    /// half-way finishes; returns whether one still is.
    #[cfg(not(loom))]
    pub(crate) fn finish_growths(&self) -> bool {
        // SeqCst: see `retire::retire` (the reclaimer's exit check comes through here); passes
        // re-check everything under the shard's lock.
        if self.cfg.growing.load(crate::sync::Ordering::SeqCst) == 0 {
            return false;
        }
        let guard = epoch::pin();
        for shard in self.shards.iter() {
            if shard.table.is_growing() {
                let notes = shard.try_maintain(&self.cfg, &guard);
                self.deliver(shard, notes, &guard);
            }
        }
        self.cfg.growing.load(crate::sync::Ordering::SeqCst) != 0
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

impl<K, V, S> Drop for RawCache<K, V, S> {
    fn drop(&mut self) {
        // Nothing can reach this cache's memory any more (this is the last handle, and no
        // operation is in flight): what it retired and what still waits for a grace period is
        // freed now, before the shards (whose arenas the functions hold) go.
        retire::release_owner(self.cfg.owner);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::{Ordering, epoch};

    /// Every figure derived from the capacity follows a change of it, the batch included: a
    /// large single-shard cache shrunk below 4096 evicts for each insert over the bound again,
    /// and a small one grown past it batches (a cache of several shards never batches).
    #[test]
    fn a_change_of_capacity_updates_its_derived_figures() {
        let bound = Bound::new(100_000, 4, false);
        assert_eq!(
            (
                bound.slack(),
                bound.batch(),
                bound.share(),
                bound.floor_share()
            ),
            (1_562, 0, 25_000, 25_000)
        );
        bound.set_capacity(100);
        assert_eq!(
            (bound.capacity(), bound.slack(), bound.batch()),
            (100, 1, 0)
        );
        assert_eq!((bound.share(), bound.floor_share()), (25, 25));
        bound.set_capacity(2);
        assert_eq!((bound.share(), bound.floor_share()), (1, 0));
        // Batches in a single-shard cache only, from 4096 on, whichever way it got there.
        let single = Bound::new(100, 1, false);
        assert_eq!(single.batch(), 0);
        single.set_capacity(8_192);
        assert_eq!((single.batch(), single.slack()), (64, 128));
        single.reserved.store(8_192 + 64, Ordering::Relaxed);
        assert!(!single.over());
        single.reserved.store(8_192 + 65, Ordering::Relaxed);
        assert!(single.over());
        single.set_capacity(4_095);
        assert_eq!(single.batch(), 0);
        assert!(single.over());
        assert!(
            single.shard_over(0),
            "one shard: the cache's excess is the shard's"
        );
        // Several shards batch per shard from shares of 4096 on: a writer offers a pass for the
        // bound only when its own shard holds more than its floor share plus a 128th of it.
        let sharded = Bound::new(8 * 4_096, 8, false);
        assert_eq!(sharded.batch(), 0);
        assert!(sharded.batches());
        sharded.reserved.store(8 * 4_096 + 1, Ordering::Relaxed);
        assert!(!sharded.shard_over(4_096 + 32));
        assert!(sharded.shard_over(4_096 + 33));
        sharded.reserved.store(8 * 4_096, Ordering::Relaxed);
        assert!(
            !sharded.shard_over(4_096 + 33),
            "not while the cache is within its bound"
        );
        // Smaller shares: every writer offers a pass while the cache is over, as before.
        sharded.set_capacity(8 * 4_095);
        assert!(!sharded.batches());
        sharded.reserved.store(8 * 4_095 + 1, Ordering::Relaxed);
        assert!(sharded.shard_over(0));
    }

    fn raw(shards: usize, buckets: usize) -> RawCache<u64, u64, ahash::RandomState> {
        raw_with(ahash::RandomState::new(), shards, buckets)
    }

    /// A cache of `shards` shards of `buckets` buckets hashing with `hasher` (a 128-event
    /// ring, a pass offered every 32 events), for white-box tests here and in submodules.
    pub(super) fn raw_with(
        hasher: ahash::RandomState,
        shards: usize,
        buckets: usize,
    ) -> RawCache<u64, u64, ahash::RandomState> {
        let layout = Layout {
            shards,
            buckets_per_shard: buckets,
            entries_per_shard: 0,
            ring: 128,
            huge_pages: false,
        };
        let cfg = Config {
            hasher,
            listener: None,
            time: TimeSource::new(quanta::Clock::mock().0, true),
            stats: StatsCounters::new(false, 1),
            drain_threshold: 32,
            ttl: table::NEVER,
            tti: table::NEVER,
            bound: None,
            weigher: None,
            growing: Default::default(),
            owner: retire::owner(),
            half_load_below: 0,
        };
        RawCache::new(layout, cfg).unwrap()
    }

    /// A replacement takes over the share of the bound of the node it replaces (it claims the
    /// node, and whoever marks a claimed node gives nothing back), so it touches the shared
    /// counter not at all; racing with removals, inserts and replacements of the same keys
    /// from other threads, the reserved weight still equals the live entries once quiet, and
    /// never passed the capacity plus the slack meanwhile.
    #[test]
    fn replacements_take_over_their_share_of_the_bound() {
        let mut cache = raw(2, 8);
        cache.cfg.bound = Some(Bound::new(64, 2, false));
        let cache = std::sync::Arc::new(cache);
        let bound = || cache.cfg.bound.as_ref().unwrap();
        for k in 0..16u64 {
            cache.insert(k, k, None, 1, Write::Upsert).ok().unwrap();
        }
        let before = bound().reserved();
        let (rounds, ops) = if cfg!(miri) { (3, 200) } else { (100, 20_000) };
        for round in 0..rounds {
            for k in 0..16u64 {
                cache.insert(k, round, None, 1, Write::Upsert).ok().unwrap();
            }
        }
        // Replacements alone: not one unit reserved or released.
        assert_eq!(bound().reserved(), before);
        let threads: Vec<_> = (0..3u64)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    let bound = cache.cfg.bound.as_ref().unwrap();
                    for i in 0..ops {
                        let k = (i * 7 + t) % 24;
                        match (i + t) % 5 {
                            0 => drop(cache.remove(&k, RemovalCause::Explicit)),
                            _ => drop(cache.insert(k, i, None, 1, Write::Upsert)),
                        }
                        assert!(bound.reserved() <= bound.capacity() + bound.slack());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        cache.run_pending_tasks();
        assert_eq!(bound().reserved(), cache.len() as u64);
    }

    /// An insert of a live key of a `u64` cache overwrites the value in the node it finds: the
    /// same node keeps the key. An insert with its own lifetime
    /// publishes a new node (lifetimes are per node, in a column the in-place write does not
    /// keep).
    #[test]
    fn a_replacement_of_a_word_value_keeps_its_node() {
        assert!(table::word_value::<u64>() && table::word_value::<f64>());
        assert!(!table::word_value::<u32>() && !table::word_value::<(u32, u32)>());
        assert!(!table::word_value::<&'static u64>() && !table::word_value::<Box<u64>>());
        let cache = raw(1, 8);
        assert!(cache.in_place);
        let hash = cache.cfg.hash(&7u64);
        let node_of = |cache: &RawCache<u64, u64, _>| {
            let guard = epoch::pin();
            cache.shards[0].table.lookup(hash, &7u64, &guard).unwrap().0
        };
        cache.insert(7, 70, None, 1, Write::Upsert).ok().unwrap();
        let first = node_of(&cache);
        cache.insert(7, 71, None, 1, Write::Upsert).ok().unwrap();
        assert_eq!(cache.read(&7, |v| *v), Some(71));
        assert_eq!(node_of(&cache), first);
        cache
            .insert(7, 72, Some(1 << 40), 1, Write::Upsert)
            .ok()
            .unwrap();
        assert_eq!(cache.read(&7, |v| *v), Some(72));
        assert_ne!(node_of(&cache), first);
    }

    /// An unbounded cache has no eviction policy, so a hit writes nothing, not even the CLOCK
    /// counter (it used to bump it to its cap: a store to the node's line on the first hits).
    #[test]
    fn an_unbounded_hit_writes_nothing() {
        let cache = raw(1, 8);
        cache.insert(7, 70, None, 1, Write::Upsert).ok().unwrap();
        for _ in 0..5 {
            assert_eq!(cache.read(&7, |v| *v), Some(70));
        }
        let hash = cache.cfg.hash(&7u64);
        let guard = epoch::pin();
        let (_, node, _) = cache.shards[0].table.lookup(hash, &7u64, &guard).unwrap();
        // Relaxed: single-threaded test.
        assert_eq!(node.freq.load(Ordering::Relaxed), 0);
    }

    /// Growth runs to completion: after enough passes (each needing a grace period between
    /// unzipping rounds), the table has grown and no old table is left.
    #[test]
    fn growth_completes_and_retires_the_old_table() {
        let cache = raw(1, 8);
        let n: u64 = if cfg!(miri) { 300 } else { 10_000 };
        let grown = (n as usize).next_power_of_two() / 2;
        for k in 0..n {
            cache.insert(k, k, None, 1, Write::Upsert).ok().unwrap();
        }
        let shard = &cache.shards[0];
        // Grace periods are process-wide: other tests' threads holding a pin or a light read
        // delay them, so the loop is bounded by time rather than by passes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            cache.run_pending_tasks();
            epoch::pin().flush();
            let guard = epoch::pin();
            if shard.table.old(&guard).is_none() && shard.table.current(&guard).len() >= grown {
                break;
            }
        }
        let guard = epoch::pin();
        assert!(
            shard.table.old(&guard).is_none(),
            "growth still in progress"
        );
        assert!(
            shard.table.current(&guard).len() >= grown,
            "{}",
            shard.table.current(&guard).len()
        );
        drop(guard);
        for k in 0..n {
            assert_eq!(cache.read(&k, |v| *v), Some(k));
        }
        assert_eq!(cache.len(), n as usize);
    }
}
