//! Counters behind [`Cache::stats`](crate::Cache::stats).
//!
//! Writes (inserts, removals, evictions, expirations) are always counted, by each shard's
//! maintainer as it applies the writers' events (plain counters under its lock, so a write
//! costs no extra atomic instruction); [`Cache::stats`](crate::Cache::stats) applies what is
//! pending first, as `len` does. Hits and misses are counted only when the cache was built
//! with [`record_stats(true)`](crate::CacheBuilder::record_stats): counting them means a write
//! per read, which is exactly what the read path avoids otherwise. They are counted by the
//! readers, striped by thread over padded cache lines, so two threads rarely write the same
//! line.

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, Ordering, thread_index};

/// A snapshot of a cache's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lookups that found a live entry (counted only with `record_stats(true)`).
    pub hits: u64,
    /// Lookups that found nothing (counted only with `record_stats(true)`).
    pub misses: u64,
    /// Values stored (new keys and replacements).
    pub inserts: u64,
    /// Entries removed by a call (`remove`, `clear`, replacement by an insert).
    pub removals: u64,
    /// Entries the eviction policy removed because the cache was over capacity.
    pub evictions: u64,
    /// Entries removed because their deadline passed.
    pub expirations: u64,
}

impl Stats {
    /// `hits / (hits + misses)`, or 0 when nothing was counted.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// The write counters a shard's maintainer keeps (indices into [`WriteCounts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counter {
    Insert = 0,
    Removal,
    Eviction,
    Expiration,
}

/// A shard's write counters, in [`Counter`] order.
pub(crate) type WriteCounts = [u64; 4];

/// Striped read counters: hits, misses.
const COUNTERS: usize = 2;
const HIT: usize = 0;
const MISS: usize = 1;

#[derive(Default)]
struct Stripe([AtomicU64; COUNTERS]);

pub(crate) struct StatsCounters {
    record_reads: bool,
    stripes: Box<[CachePadded<Stripe>]>,
    /// Values replaced in place (`Shard::insert_in_place`), each an insert and a removal that
    /// no maintainer hears of: one counter per live thread (`live_index`), which only its
    /// owner writes (a plain load and store, no locked instruction on a write that has only
    /// one other), and one that the threads past those share.
    in_place: Box<[CachePadded<AtomicU64>]>,
    in_place_shared: CachePadded<AtomicU64>,
}

impl StatsCounters {
    pub(crate) fn new(record_reads: bool, stripes: usize) -> Self {
        let stripes = stripes.next_power_of_two().max(1);
        Self {
            record_reads,
            stripes: (0..stripes)
                .map(|_| CachePadded::new(Stripe::default()))
                .collect(),
            in_place: (0..stripes)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
            in_place_shared: CachePadded::new(AtomicU64::new(0)),
        }
    }

    #[inline]
    pub(crate) fn read(&self, hit: bool) {
        // Statistics take no part in any protocol (independent Relaxed counters); the loom
        // models skip them so that their atomics do not multiply the explored interleavings.
        if self.record_reads && !cfg!(loom) {
            let stripe = &self.stripes[thread_index() & (self.stripes.len() - 1)];
            // Relaxed: independent counters, summed approximately by `snapshot`.
            stripe.0[if hit { HIT } else { MISS }].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a value replaced in place (always: writes are always counted).
    #[inline]
    pub(crate) fn replaced_in_place(&self) {
        if cfg!(loom) {
            return;
        }
        // Relaxed: see `read`.
        match crate::sync::live_index().and_then(|i| self.in_place.get(i)) {
            // Only this thread writes its counter (`live_index`), so nothing comes between the
            // load and the store.
            Some(mine) => mine.store(mine.load(Ordering::Relaxed) + 1, Ordering::Relaxed),
            None => {
                self.in_place_shared.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The counters: the read counters summed over the stripes, the write counters as given
    /// (summed over the shards by the caller).
    pub(crate) fn snapshot(&self, writes: WriteCounts) -> Stats {
        let mut sum = [0u64; COUNTERS];
        for stripe in self.stripes.iter() {
            for (total, c) in sum.iter_mut().zip(stripe.0.iter()) {
                // Relaxed: see `read`.
                *total += c.load(Ordering::Relaxed);
            }
        }
        // Relaxed: see `read`.
        let in_place = self.in_place_shared.load(Ordering::Relaxed)
            + self
                .in_place
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum::<u64>();
        Stats {
            hits: sum[HIT],
            misses: sum[MISS],
            inserts: writes[Counter::Insert as usize] + in_place,
            removals: writes[Counter::Removal as usize] + in_place,
            evictions: writes[Counter::Eviction as usize],
            expirations: writes[Counter::Expiration as usize],
        }
    }
}

impl Counter {
    /// The counter of a removal for `cause`.
    pub(crate) fn of(cause: crate::listener::RemovalCause) -> Counter {
        use crate::listener::RemovalCause;
        match cause {
            RemovalCause::Expired => Counter::Expiration,
            RemovalCause::Size => Counter::Eviction,
            _ => Counter::Removal,
        }
    }
}
