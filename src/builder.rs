//! [`CacheBuilder`]: every setting of a cache, validated when the cache is built.

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::time::Duration;

use crate::cache::Cache;
use crate::clock::TimeSource;
use crate::expiry::{Expiry, ExpiryFn};
use crate::listener::{ListenerFn, RemovalCause};
use crate::raw::{Bound, Config, Layout, NEVER, RawCache, WeigherFn};
use crate::stats::StatsCounters;

/// Shortest [`check_period`](CacheBuilder::check_period): a sweeper that runs more often
/// would keep a core busy for nothing (expired entries are invisible at once anyway; the
/// sweeper only gives their memory back).
pub const MIN_CHECK_PERIOD: Duration = Duration::from_millis(1);

/// Most shards a cache may have. A shard costs a few KiB even when empty (its event ring, its
/// first table and arena chunk), and more shards than about four per core buy nothing.
pub const MAX_SHARDS: usize = 1 << 12;

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
    /// An initial capacity so large that no shard could address it, or whose tables alone
    /// would take half of the machine's memory.
    CapacityTooLarge(usize),
    /// A duration setting of zero (named): a zero time to live or idle would make every entry
    /// expire at once, and a zero check period would make the sweeper spin.
    ZeroDuration(&'static str),
    /// `max_capacity(0)`: a cache that can hold nothing.
    ZeroCapacity,
    /// The background sweeper thread (`check_period`) could not be started.
    SweeperSpawn(String),
    /// A period shorter than [`MIN_CHECK_PERIOD`] (named): the sweeper would keep a core
    /// busy.
    PeriodTooShort(&'static str),
    /// The allocator refused the memory for the cache's first tables (an
    /// [`initial_capacity`](CacheBuilder::initial_capacity) too large for this machine).
    OutOfMemory,
    /// Both [`expire_after`](CacheBuilder::expire_after) and
    /// [`time_to_idle`](CacheBuilder::time_to_idle): express the idle time in the expiry's
    /// `expire_after_read`.
    ExpiryWithTimeToIdle,
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
            BuildError::ZeroDuration(what) => write!(f, "{what} must be longer than zero"),
            BuildError::ZeroCapacity => write!(f, "max_capacity must be at least 1"),
            BuildError::SweeperSpawn(why) => {
                write!(f, "the sweeper thread could not be started: {why}")
            }
            BuildError::PeriodTooShort(what) => {
                write!(f, "{what} must be at least {MIN_CHECK_PERIOD:?}")
            }
            BuildError::OutOfMemory => write!(
                f,
                "the memory for the cache's initial capacity could not be allocated"
            ),
            BuildError::ExpiryWithTimeToIdle => write!(
                f,
                "expire_after and time_to_idle cannot be combined: express the idle time in \
                 the expiry's expire_after_read"
            ),
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
    coarse_clock: bool,
    record_stats: bool,
    time_to_live: Option<Duration>,
    time_to_idle: Option<Duration>,
    check_period: Option<Duration>,
    max_capacity: Option<u64>,
    weigher: Option<Box<WeigherFn<K, V>>>,
    expiry: Option<Box<ExpiryFn<K, V>>>,
    huge_pages: bool,
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
            coarse_clock: true,
            record_stats: false,
            time_to_live: None,
            time_to_idle: None,
            check_period: None,
            max_capacity: None,
            weigher: None,
            expiry: None,
            huge_pages: true,
            _types: PhantomData,
        }
    }
}

impl<K, V, S> CacheBuilder<K, V, S> {
    /// Number of shards: a power of two, at most [`MAX_SHARDS`].
    ///
    /// Default: four times the available parallelism, rounded up to a power of two, and for
    /// a bounded cache at most one shard per 512 entries of capacity (rounded down to a power
    /// of two, so that every shard holds at least 512): each shard's eviction policy decides
    /// over its own entries, and a few entries per shard lose hit ratio. A cache of fewer than
    /// 1024 entries has one shard. With a
    /// [`weigher`](Self::weigher) the builder cannot know how many entries the capacity holds
    /// and counts one entry per 1024 units of weight (a session of about a kilobyte, for a
    /// store bounded by bytes); set the count here if your entries weigh much less and many
    /// threads write. Shards only spread writes (reads never contend), so fewer is never
    /// incorrect, only less parallel for writers.
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
            coarse_clock: self.coarse_clock,
            record_stats: self.record_stats,
            time_to_live: self.time_to_live,
            time_to_idle: self.time_to_idle,
            check_period: self.check_period,
            max_capacity: self.max_capacity,
            weigher: self.weigher,
            expiry: self.expiry,
            huge_pages: self.huge_pages,
            _types: PhantomData,
        }
    }

    /// Bounds the cache: at most `capacity` entries, or a total weight of `capacity` when a
    /// [`weigher`](Self::weigher) is set. Past it, the eviction policy (an adaptive,
    /// scan-resistant CLOCK) removes entries, reported as [`RemovalCause::Size`].
    ///
    /// Under concurrent inserts the weight held may pass the capacity by at most a small,
    /// fixed slack (`max(1, capacity / 64)`), whatever the number of writers: an insert that
    /// would go further makes room first. When no write is in flight,
    /// [`weighted_size`](Cache::weighted_size) is at most the capacity. An entry heavier than
    /// the whole capacity is not stored (the listener hears about it as `Size`).
    ///
    /// The capacity is a ceiling, not a reservation: tables are sized by
    /// [`initial_capacity`](Self::initial_capacity) and grow with the entries held, so any
    /// capacity (up to `u64::MAX`) is accepted and memory follows what the cache holds.
    pub fn max_capacity(mut self, capacity: u64) -> Self {
        self.max_capacity = Some(capacity);
        self
    }

    /// Weighs entries for [`max_capacity`](Self::max_capacity) (for example by their size in
    /// bytes). Called once per insert, on the inserting thread; the weight is kept with the
    /// entry, so a weigher need not be deterministic. Without it every entry weighs 1. A
    /// weight of 0 counts as 1, so that no entry escapes the bound.
    pub fn weigher(mut self, weigher: impl Fn(&K, &V) -> u32 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Box::new(weigher));
        self
    }

    /// Default time to live: an entry expires this long after it was inserted (or last given
    /// a new lifetime with [`touch`](Cache::touch) / [`set_ttl`](Cache::set_ttl)), unless it
    /// was inserted with its own ([`insert_with_ttl`](Cache::insert_with_ttl)). Default: none.
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.time_to_live = Some(ttl);
        self
    }

    /// Time to idle: an entry expires this long after it was last read (or written). Its
    /// deadline moves forward on reads at most once per tick of the coarse clock (about a
    /// millisecond), so a hot entry is not written on every read. With a time to live as
    /// well, an entry expires at whichever comes first. Default: none.
    pub fn time_to_idle(mut self, tti: Duration) -> Self {
        self.time_to_idle = Some(tti);
        self
    }

    /// Derives each entry's lifetime from the entry: `expiry` is asked when an entry is
    /// created, read or updated (see [`Expiry`], which also says how it combines with
    /// [`time_to_live`](Self::time_to_live); it cannot be combined with
    /// [`time_to_idle`](Self::time_to_idle), refused with
    /// [`BuildError::ExpiryWithTimeToIdle`]). Lifetimes given explicitly
    /// ([`insert_with_ttl`](Cache::insert_with_ttl), [`set_ttl`](Cache::set_ttl)) take
    /// precedence for the entry they are given to. Reads of a cache with an expiry call its
    /// read hook: a hit costs a virtual call more, and a write when the lifetime moves.
    pub fn expire_after(mut self, expiry: impl Expiry<K, V> + Send + Sync + 'static) -> Self {
        self.expiry = Some(Box::new(expiry));
        self
    }

    /// Runs a background thread that reclaims expired entries every `period`, so that an idle
    /// cache gives its memory back too (writes reclaim on their own, amortised). The thread
    /// holds only a weak reference: dropping the cache stops it. Default: no thread. A period
    /// shorter than [`MIN_CHECK_PERIOD`] (1 ms) is refused with
    /// [`BuildError::PeriodTooShort`].
    pub fn check_period(mut self, period: Duration) -> Self {
        self.check_period = Some(period);
        self
    }

    /// Called once for every entry that leaves the cache, with the reason.
    ///
    /// It runs on the thread whose operation removed the entry: inline at the end of
    /// `remove`, `insert` (for the value it replaced) and `clear`, and after a maintenance
    /// pass for the removals the cache makes on its own. It is never called while the value
    /// can still be returned by `get`, and never while a shard lock is held, so it may call
    /// the cache. If it panics, the cache is left consistent: the other notifications of the
    /// same batch are still delivered, then the panic resumes in the thread that triggered it
    /// (the crate's own threads, the `check_period` sweeper and the reclaimer that finishes a
    /// growth writes left half-way, drop it and carry on).
    /// Entries still in the cache when the last handle is dropped are not reported.
    pub fn eviction_listener(
        mut self,
        listener: impl Fn(&K, &V, RemovalCause) + Send + Sync + 'static,
    ) -> Self {
        self.listener = Some(Box::new(listener));
        self
    }

    /// The time source. Default: `quanta::Clock::new()`. Tests use `quanta::Clock::mock()`
    /// and move time with the mock instead of sleeping. A real (not mocked) clock's time is
    /// read from the operating system's monotonic clock (`std::time::Instant`), which quanta's
    /// TSC time can drift from by tens of parts per million.
    pub fn clock(mut self, clock: quanta::Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Whether operations that need the time read a process-wide coarse clock (default:
    /// `true`). The coarse clock is one load on the read path, refreshed every millisecond by
    /// one background thread per process (started when the first cache with deadlines needs
    /// it, stopped with the last); deadlines are then kept to within about a millisecond of
    /// real time while that thread is scheduled (a machine loaded far beyond its cores can
    /// leave it waiting; writes' maintenance passes then catch the time up, reads alone do
    /// not). With `false` this cache starts no such thread and reads the operating system's
    /// monotonic clock (`std::time::Instant`) on every operation that needs the time: about
    /// 21 ns more per read, exact deadlines, no wake-ups. Choose `false` for a cache that
    /// serves few operations a second, where a thread waking a thousand times a second costs
    /// more than the readings it saves (the npm package does, behind a Node.js server). A
    /// [`clock`](Self::clock) that is a mock is exact either way.
    pub fn coarse_clock(mut self, coarse: bool) -> Self {
        self.coarse_clock = coarse;
        self
    }

    /// Count hits and misses in [`Cache::stats`]. Off by default: counting makes every read
    /// write to memory shared with other threads. Inserts and removals are always counted.
    pub fn record_stats(mut self, record: bool) -> Self {
        self.record_stats = record;
        self
    }

    /// Whether bucket tables and node memory of 2 MiB or more are advised onto transparent
    /// huge pages (`madvise(MADV_HUGEPAGE)` on Linux; elsewhere nothing). Default: on. Large
    /// caches read faster with it (a lookup's random accesses then rarely miss the TLB);
    /// memory is committed in 2 MiB steps (at most one partly used huge page per shard's node
    /// chunk), and where the kernel compacts memory to find a huge page, the first touch of
    /// a page can take longer. Caches under 2 MiB per shard are unaffected.
    pub fn huge_pages(mut self, advise: bool) -> Self {
        self.huge_pages = advise;
        self
    }

    /// Builds the cache, or says which setting is invalid.
    pub fn build(self) -> Result<Cache<K, V, S>, BuildError>
    where
        K: Eq + Hash + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        S: BuildHasher + Send + Sync + 'static,
    {
        let parallelism = parallelism();
        let shards = match self.shards {
            Some(0) => return Err(BuildError::ZeroShards),
            Some(n) if !n.is_power_of_two() => return Err(BuildError::ShardsNotPowerOfTwo(n)),
            Some(n) if n > MAX_SHARDS => return Err(BuildError::TooManyShards(n)),
            Some(n) => n,
            // A bounded cache keeps at least MIN_SHARE entries of its capacity per shard: a
            // shard's policy decides on its own entries, and tiny shares lose hit ratio. With a
            // weigher the number of entries is unknown: entries are taken to weigh
            // WEIGHT_PER_ENTRY each.
            None => {
                let per_entry = if self.weigher.is_some() {
                    WEIGHT_PER_ENTRY
                } else {
                    1
                };
                let by_capacity = match self.max_capacity {
                    Some(c) => {
                        prev_power_of_two((c / MIN_SHARE / per_entry).max(1)).min(MAX_SHARDS as u64)
                    }
                    None => MAX_SHARDS as u64,
                } as usize;
                (parallelism * 4)
                    .next_power_of_two()
                    .min(MAX_SHARDS)
                    .min(by_capacity)
            }
        };
        if self.max_capacity == Some(0) {
            return Err(BuildError::ZeroCapacity);
        }
        // A bound is a ceiling, not a reservation: memory follows the entries held, whatever
        // the capacity. Tables are sized for `initial_capacity`, or for a cache bounded by
        // count for its capacity up to PRESIZE_MAX entries, and grow with the entries (a cache
        // bounded by count grows to the load a table pre-sized for its capacity would have, so
        // that a full cache is laid out as if pre-sized). Node memory (whose pages are
        // committed only as slots are used) is laid out for the capacity up to
        // ARENA_PRESIZE_MAX entries, so that a full cache of up to that size keeps its nodes
        // in one chunk per shard.
        let bounded_by_count = |limit: u64| match (self.max_capacity, &self.weigher) {
            (Some(c), None) => self
                .initial_capacity
                .max(usize::try_from(c.min(limit)).unwrap_or(0)),
            _ => self.initial_capacity,
        };
        let expected = bounded_by_count(PRESIZE_MAX);
        // Buckets per shard: two per expected entry, so that a pre-sized table runs at a load
        // factor of at most one half (a hit then walks 1.25 nodes on average, and a chain
        // walk's branches stay predictable; see ARCHITECTURE.md). A table that holds more
        // entries than buckets grows to the power of two that brings its load back to one
        // (one half when bounded by count).
        let per_shard = expected.div_ceil(shards);
        if per_shard > 1 << 29 {
            return Err(BuildError::CapacityTooLarge(expected));
        }
        let buckets_per_shard = (per_shard * BUCKETS_PER_ENTRY)
            .max(MIN_BUCKETS)
            .next_power_of_two();
        // Buckets are written when a table is made, so their memory is committed at once: an
        // initial capacity whose tables alone would take half the machine's memory is refused
        // here, rather than exhausting it (each shard's allocation would succeed on its own
        // under overcommit).
        let table_bytes = (shards as u64)
            .saturating_mul(buckets_per_shard as u64)
            .saturating_mul(std::mem::size_of::<u32>() as u64);
        if crate::raw::physical_memory().is_some_and(|ram| table_bytes > ram / 2) {
            return Err(BuildError::CapacityTooLarge(expected));
        }
        let nodes_per_shard = bounded_by_count(ARENA_PRESIZE_MAX).div_ceil(shards);
        let nanos = |what: &'static str, d: Option<Duration>| match d {
            None => Ok(NEVER),
            Some(d) if d.is_zero() => Err(BuildError::ZeroDuration(what)),
            Some(d) => Ok(duration_to_ns(d)),
        };
        let ttl = nanos("time_to_live", self.time_to_live)?;
        let tti = nanos("time_to_idle", self.time_to_idle)?;
        if self.expiry.is_some() && self.time_to_idle.is_some() {
            return Err(BuildError::ExpiryWithTimeToIdle);
        }
        if self.check_period.is_some_and(|d| d.is_zero()) {
            return Err(BuildError::ZeroDuration("check_period"));
        }
        if self.check_period.is_some_and(|d| d < MIN_CHECK_PERIOD) {
            return Err(BuildError::PeriodTooShort("check_period"));
        }
        let ring = RING;
        let layout = Layout {
            shards,
            buckets_per_shard,
            entries_per_shard: nodes_per_shard,
            ring,
            huge_pages: self.huge_pages,
        };
        let half_load_below = match (self.max_capacity, &self.weigher) {
            (Some(c), None) => c
                .div_ceil(shards as u64)
                .saturating_mul(BUCKETS_PER_ENTRY as u64)
                .checked_next_power_of_two()
                .unwrap_or(u64::MAX),
            _ => 0,
        };
        let cfg = Config {
            hasher: self.hasher,
            listener: self.listener,
            time: TimeSource::new(self.clock.unwrap_or_default(), self.coarse_clock),
            stats: StatsCounters::new(self.record_stats, parallelism * 2),
            drain_threshold: DRAIN_THRESHOLD,
            ttl,
            tti,
            bound: self
                .max_capacity
                .map(|c| Bound::new(c, shards, self.weigher.is_some())),
            weigher: self.weigher,
            #[cfg(not(loom))]
            growing: Default::default(),
            owner: crate::raw::new_owner(),
            half_load_below,
        };
        let mut raw = RawCache::new(layout, cfg).ok_or(BuildError::OutOfMemory)?;
        if let Some(expiry) = self.expiry {
            raw.set_expiry(expiry);
        }
        let cache = Cache::from_raw(raw);
        #[cfg(not(loom))]
        cache.register_for_help();
        #[cfg(not(loom))]
        if let Some(period) = self.check_period {
            cache
                .set_check_period(Some(period))
                .map_err(|e| BuildError::SweeperSpawn(e.to_string()))?;
        }
        Ok(cache)
    }
}

/// Entries up to which a cache bounded by count is sized for its capacity at build (about
/// 2.5 MiB of address space, of which 512 KiB of buckets are touched): small caches never grow,
/// larger ones grow as they fill.
const PRESIZE_MAX: u64 = 1 << 16;

/// Entries up to which a cache bounded by count lays out its node memory for its capacity at
/// build: address space only (32 MiB for 2^20 nodes of 32 bytes), whose pages are committed as
/// nodes are used.
const ARENA_PRESIZE_MAX: u64 = 1 << 20;

/// Smallest share of a bounded cache's capacity, in entries, a default shard count leaves
/// each shard.
const MIN_SHARE: u64 = 512;

/// The weight a default shard count assumes per entry of a weighed cache (a session of about a
/// kilobyte, for a store bounded by bytes).
const WEIGHT_PER_ENTRY: u64 = 1024;

/// Buckets of a pre-sized table per expected entry.
const BUCKETS_PER_ENTRY: usize = 2;

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
            .field("time_to_live", &self.time_to_live)
            .field("time_to_idle", &self.time_to_idle)
            .field("check_period", &self.check_period)
            .field("max_capacity", &self.max_capacity)
            .field("weigher", &self.weigher.is_some())
            .field("expire_after", &self.expiry.is_some())
            .field("huge_pages", &self.huge_pages)
            .finish_non_exhaustive()
    }
}

/// A duration in ns, saturating to "never" (`u64::MAX`).
pub(crate) fn duration_to_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(NEVER)
}

/// The largest power of two at most `n` (`n >= 1`).
fn prev_power_of_two(n: u64) -> u64 {
    1 << (u64::BITS - 1 - n.leading_zeros())
}

/// The machine's available parallelism, read once per process (on Linux it reads cgroup files,
/// which made building a small cache cost more than using it).
fn parallelism() -> usize {
    static PARALLELISM: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PARALLELISM.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
