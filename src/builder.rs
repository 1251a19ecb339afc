//! [`CacheBuilder`]: every setting of a cache, validated when the cache is built.

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;

use crate::cache::Cache;
use crate::clock::TimeSource;
use crate::listener::{ListenerFn, RemovalCause};
use crate::raw::{Config, Layout, RawCache};
use crate::stats::StatsCounters;

/// Most shards a cache may have (the shard is chosen by the top bits of the hash, and bits
/// 32..48 are the chain tag).
pub const MAX_SHARDS: usize = 1 << 16;

/// Why [`CacheBuilder::build`] refused its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// `shards(0)`.
    ZeroShards,
    /// The shard count must be a power of two (the shard is a slice of the hash's bits).
    ShardsNotPowerOfTwo(usize),
    /// More than [`MAX_SHARDS`] shards.
    TooManyShards(usize),
    /// An initial capacity so large that no shard could address it.
    CapacityTooLarge(usize),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::ZeroShards => write!(f, "a cache needs at least one shard"),
            BuildError::ShardsNotPowerOfTwo(n) => {
                write!(f, "the shard count must be a power of two, got {n}")
            }
            BuildError::TooManyShards(n) => {
                write!(f, "at most {MAX_SHARDS} shards are supported, got {n}")
            }
            BuildError::CapacityTooLarge(n) => write!(f, "initial capacity {n} is too large"),
        }
    }
}

impl std::error::Error for BuildError {}

/// Builds a [`Cache`]. Obtained from [`Cache::builder`].
///
/// ```
/// use evanesce::Cache;
///
/// let cache: Cache<String, u64> = Cache::builder().initial_capacity(1_000).build()?;
/// cache.insert("a".to_string(), 1);
/// assert_eq!(cache.get("a"), Some(1));
/// # Ok::<(), evanesce::BuildError>(())
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct CacheBuilder<K, V, S = ahash::RandomState> {
    shards: Option<usize>,
    initial_capacity: usize,
    hasher: S,
    listener: Option<Box<ListenerFn<K, V>>>,
    clock: Option<quanta::Clock>,
    record_stats: bool,
    _types: PhantomData<fn(K, V)>,
}

impl<K, V> CacheBuilder<K, V, ahash::RandomState> {
    pub(crate) fn new() -> Self {
        Self {
            shards: None,
            initial_capacity: 0,
            hasher: ahash::RandomState::new(),
            listener: None,
            clock: None,
            record_stats: false,
            _types: PhantomData,
        }
    }
}

impl<K, V, S> CacheBuilder<K, V, S> {
    /// Number of shards: a power of two, at most [`MAX_SHARDS`]. Default: four times the
    /// available parallelism, rounded up to a power of two.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Number of entries to size the tables for up front, so that the cache does not grow
    /// until it holds more. Default 0 (tables start small and grow without blocking readers).
    pub fn initial_capacity(mut self, entries: usize) -> Self {
        self.initial_capacity = entries;
        self
    }

    /// The hasher. Default: `ahash::RandomState`.
    pub fn hasher<S2>(self, hasher: S2) -> CacheBuilder<K, V, S2> {
        CacheBuilder {
            shards: self.shards,
            initial_capacity: self.initial_capacity,
            hasher,
            listener: self.listener,
            clock: self.clock,
            record_stats: self.record_stats,
            _types: PhantomData,
        }
    }

    /// Called once for every entry that leaves the cache, with the reason.
    ///
    /// It runs on the thread whose operation removed the entry: inline at the end of
    /// `remove`, `insert` (for the value it replaced) and `clear`, and after a maintenance
    /// pass for the removals the cache makes on its own. It is never called while the value
    /// can still be returned by `get`, and never while a shard lock is held, so it may call
    /// the cache. If it panics, the cache is left consistent: the other notifications of the
    /// same batch are still delivered, then the panic resumes in the thread that triggered it.
    /// Entries still in the cache when the last handle is dropped are not reported.
    pub fn eviction_listener(
        mut self,
        listener: impl Fn(&K, &V, RemovalCause) + Send + Sync + 'static,
    ) -> Self {
        self.listener = Some(Box::new(listener));
        self
    }

    /// The time source. Default: `quanta::Clock::new()`. Tests use `quanta::Clock::mock()`
    /// and move time with the mock instead of sleeping.
    pub fn clock(mut self, clock: quanta::Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Count hits and misses in [`Cache::stats`]. Off by default: counting makes every read
    /// write to memory shared with other threads. Inserts and removals are always counted.
    pub fn record_stats(mut self, record: bool) -> Self {
        self.record_stats = record;
        self
    }

    /// Builds the cache, or says which setting is invalid.
    pub fn build(self) -> Result<Cache<K, V, S>, BuildError>
    where
        K: Eq + Hash + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        S: BuildHasher,
    {
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = match self.shards {
            Some(0) => return Err(BuildError::ZeroShards),
            Some(n) if !n.is_power_of_two() => return Err(BuildError::ShardsNotPowerOfTwo(n)),
            Some(n) if n > MAX_SHARDS => return Err(BuildError::TooManyShards(n)),
            Some(n) => n,
            None => (parallelism * 4).next_power_of_two().min(MAX_SHARDS),
        };
        // Buckets per shard: at least the expected entries (load factor at most one).
        let per_shard = self.initial_capacity.div_ceil(shards);
        if per_shard > 1 << 30 {
            return Err(BuildError::CapacityTooLarge(self.initial_capacity));
        }
        let buckets_per_shard = per_shard.max(MIN_BUCKETS).next_power_of_two();
        let ring = RING;
        let layout = Layout { shards, buckets_per_shard, ring };
        let cfg = Config {
            hasher: self.hasher,
            listener: self.listener,
            time: TimeSource::new(self.clock.unwrap_or_default()),
            stats: StatsCounters::new(self.record_stats, parallelism * 2),
            drain_threshold: DRAIN_THRESHOLD,
        };
        Ok(Cache::from_raw(RawCache::new(layout, cfg)))
    }
}

/// Smallest table of a shard.
#[cfg(not(loom))]
const MIN_BUCKETS: usize = 8;
#[cfg(loom)]
const MIN_BUCKETS: usize = 1;

/// Events a shard buffers between maintenance passes.
#[cfg(not(loom))]
const RING: usize = 128;
#[cfg(loom)]
const RING: usize = 4;

/// Waiting events at which a writer offers a maintenance pass. Under loom, only a full ring
/// (back-pressure), a growth or an explicit `run_pending_tasks` runs maintenance, which keeps
/// the models small while still covering maintenance racing with writers and readers.
#[cfg(not(loom))]
const DRAIN_THRESHOLD: usize = RING / 4;
#[cfg(loom)]
const DRAIN_THRESHOLD: usize = RING;

impl<K, V, S> fmt::Debug for CacheBuilder<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("shards", &self.shards)
            .field("initial_capacity", &self.initial_capacity)
            .field("eviction_listener", &self.listener.is_some())
            .field("record_stats", &self.record_stats)
            .finish_non_exhaustive()
    }
}
