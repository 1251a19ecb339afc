//! Counters behind [`Cache::stats`](crate::Cache::stats).
//!
//! Writes (inserts, removals, evictions, expirations) are always counted: a writer already
//! writes shared memory. Hits and misses are counted only when the cache was built with
//! [`record_stats(true)`](crate::CacheBuilder::record_stats): counting them means a write per
//! read, which is exactly what the read path avoids otherwise. Counters are striped by thread
//! over padded cache lines, so two threads rarely write the same line.

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

#[derive(Clone, Copy)]
pub(crate) enum Counter {
    Hit = 0,
    Miss,
    Insert,
    Removal,
    Eviction,
    Expiration,
}

const COUNTERS: usize = 6;

#[derive(Default)]
struct Stripe([AtomicU64; COUNTERS]);

pub(crate) struct StatsCounters {
    record_reads: bool,
    stripes: Box<[CachePadded<Stripe>]>,
}

impl StatsCounters {
    pub(crate) fn new(record_reads: bool, stripes: usize) -> Self {
        let stripes = stripes.next_power_of_two().max(1);
        Self {
            record_reads,
            stripes: (0..stripes)
                .map(|_| CachePadded::new(Stripe::default()))
                .collect(),
        }
    }

    #[inline]
    pub(crate) fn add(&self, counter: Counter, n: u64) {
        // Statistics take no part in any protocol (independent Relaxed counters); the loom
        // models skip them so that their atomics do not multiply the explored interleavings.
        if cfg!(loom) {
            return;
        }
        let stripe = &self.stripes[thread_index() & (self.stripes.len() - 1)];
        // Relaxed: independent counters, summed approximately by `snapshot`.
        stripe.0[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn read(&self, hit: bool) {
        if self.record_reads {
            self.add(if hit { Counter::Hit } else { Counter::Miss }, 1);
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let mut sum = [0u64; COUNTERS];
        for stripe in self.stripes.iter() {
            for (total, c) in sum.iter_mut().zip(stripe.0.iter()) {
                // Relaxed: see `add`.
                *total += c.load(Ordering::Relaxed);
            }
        }
        Stats {
            hits: sum[Counter::Hit as usize],
            misses: sum[Counter::Miss as usize],
            inserts: sum[Counter::Insert as usize],
            removals: sum[Counter::Removal as usize],
            evictions: sum[Counter::Eviction as usize],
            expirations: sum[Counter::Expiration as usize],
        }
    }
}
