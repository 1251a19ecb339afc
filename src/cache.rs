//! The public [`Cache`]: a cheap-to-clone handle over the shared core. No `unsafe` here.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::time::Duration;

use crate::builder::{CacheBuilder, duration_to_ns};
use crate::listener::RemovalCause;
use crate::raw::{Inserted, NEVER, RawCache, Write};
use crate::stats::Stats;
use crate::sync::{Arc, Condvar, Mutex, lock};

/// A concurrent cache. See the [crate documentation](crate) for the guarantees.
///
/// `Cache` is a handle: cloning it is cheap and every clone sees the same entries. It is
/// `Send` and `Sync`; share it between threads by cloning it (or behind an `Arc`).
pub struct Cache<K, V, S = ahash::RandomState> {
    inner: Arc<Inner<K, V, S>>,
}

/// In-flight `get_or_insert_with` initialisations of one stripe, by key hash.
type PendingList = Mutex<Vec<(u64, Arc<Pending>)>>;

struct Inner<K, V, S> {
    raw: RawCache<K, V, S>,
    /// `get_or_insert_with` calls that are computing a value, striped by hash (see there).
    pending: Box<[PendingList]>,
    /// The background sweeper, if one runs (see `set_check_period`).
    #[cfg(not(loom))]
    sweeper: Mutex<Option<crate::periodic::Periodic>>,
}

#[cfg(not(loom))]
impl<K, V, S> crate::raw::Chore for Inner<K, V, S>
where
    K: Eq + Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
    S: BuildHasher + Send + Sync,
{
    fn run(&self) -> bool {
        self.raw.finish_growths()
    }
}

/// One in-flight `get_or_insert_with` initialisation that others wait for.
struct Pending {
    done: Mutex<bool>,
    cv: Condvar,
    /// The thread running the initialisation: an `init` that asks for another key whose
    /// hash is the same (a colliding hasher) must not wait for itself.
    owner: std::thread::ThreadId,
}

impl Pending {
    fn wait(&self) {
        let mut done = lock(&self.done);
        while !*done {
            done = match self.cv.wait(done) {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
    }
}

/// Unregisters an in-flight initialisation and wakes its waiters, also if `init` panics.
struct PendingGuard<'a> {
    list: &'a PendingList,
    me: Arc<Pending>,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(self.list).retain(|(_, p)| !Arc::ptr_eq(p, &self.me));
        *lock(&self.me.done) = true;
        self.me.cv.notify_all();
    }
}

impl<K, V, S> Clone for Cache<K, V, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> Cache<K, V, ahash::RandomState>
where
    K: Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A builder with default settings.
    pub fn builder() -> CacheBuilder<K, V> {
        CacheBuilder::new()
    }

    /// An unbounded cache with default settings.
    pub fn new() -> Self {
        match Self::builder().build() {
            Ok(cache) => cache,
            // The default settings are valid by construction.
            Err(e) => unreachable!("default settings rejected: {e}"),
        }
    }
}

impl<K, V> Default for Cache<K, V, ahash::RandomState>
where
    K: Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    pub(crate) fn from_raw(raw: RawCache<K, V, S>) -> Self {
        let pending = (0..raw.shard_count())
            .map(|_| Mutex::new(Vec::new()))
            .collect();
        Self {
            inner: Arc::new(Inner {
                raw,
                pending,
                #[cfg(not(loom))]
                sweeper: Mutex::new(None),
            }),
        }
    }

    /// A clone of the value stored for `key`, if it is live.
    ///
    /// Lock-free: no lock, no compare-and-swap, no memory barrier on Linux (see the crate
    /// documentation, "Progress"), and no write to memory shared with other threads (unless
    /// stats are recorded).
    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.raw.read(key, V::clone)
    }

    /// Runs `f` on the value stored for `key`, if it is live, without cloning it; like
    /// [`get`](Self::get) in every other respect (it counts as a use of the entry).
    ///
    /// `f` runs inside the read: memory retired meanwhile, by any cache, is not freed until it
    /// returns, so keep it short (decoding the value is fine; waiting for I/O is not). `f` may
    /// use the cache.
    #[inline]
    pub fn get_with<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.raw.read(key, f)
    }

    /// Whether `key` has a live value. Lock-free, like [`get`](Self::get); it does not count
    /// as a use of the entry (for the eviction policy, time to idle or hit statistics).
    #[inline]
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.raw.contains(key)
    }

    /// Pins this thread once for a batch of reads: reads through the returned [`Pinned`]
    /// behave exactly like [`get`](Self::get), [`get_with`](Self::get_with) and
    /// [`contains_key`](Self::contains_key), but do not pin and unpin the thread each time.
    ///
    /// Every plain read announces itself to the memory reclaimer (two stores to a per-thread
    /// slot, no barrier); reads through one `Pinned` skip even that, and make one
    /// crossbeam-epoch pin (a full memory barrier) for the whole batch. On large batches this
    /// is the fastest way to read (`cargo run --release --example read_path` measures both).
    ///
    /// While a `Pinned` lives, no memory retired by any cache of this process is freed (the
    /// epoch cannot advance past this thread): removed and replaced entries wait. Hold it for
    /// a batch (a loop over keys, the lookups of one request), never across a wait, I/O or an
    /// `.await`. It is not `Send`, so it cannot leave the thread; dropping it unpins.
    ///
    /// ```
    /// let cache = evanesce::Cache::<u64, u64>::new();
    /// for k in 0..100 {
    ///     cache.insert(k, k * 2);
    /// }
    /// let pinned = cache.pin();
    /// let total: u64 = (0..100).filter_map(|k| pinned.get(&k)).sum();
    /// assert_eq!(total, 9900);
    /// ```
    #[inline]
    pub fn pin(&self) -> Pinned<'_, K, V, S> {
        Pinned {
            cache: self,
            guard: crate::sync::epoch::pin(),
        }
    }

    /// Stores `value` for `key`, replacing any previous value (which the eviction listener
    /// hears about as [`RemovalCause::Replaced`]). It expires after the cache's
    /// [`time_to_live`](CacheBuilder::time_to_live) / [`time_to_idle`](CacheBuilder::time_to_idle),
    /// if any.
    pub fn insert(&self, key: K, value: V) {
        if let Err((key, value)) = self.store(key, value, None, Write::Upsert) {
            self.refused(&key, &value);
        }
    }

    /// Weighs and stores an entry. An entry heavier than the whole capacity is handed back
    /// (after removing any previous value of the key, which it replaces), as is one the shard
    /// cannot address.
    #[inline]
    fn store(
        &self,
        key: K,
        value: V,
        ttl: Option<u64>,
        write: Write,
    ) -> Result<Inserted<V>, (K, V)> {
        let cfg = &self.inner.raw.cfg;
        // A zero weight counts as one: otherwise such entries would escape the bound (any
        // number of them fit in any capacity).
        let weight = cfg
            .weigher
            .as_ref()
            .map_or(1, |weigh| weigh(&key, &value).max(1));
        if cfg
            .bound
            .as_ref()
            .is_some_and(|b| u64::from(weight) > b.capacity)
        {
            if write == Write::Upsert {
                self.inner.raw.remove(&key, RemovalCause::Replaced);
            }
            return Err((key, value));
        }
        self.inner.raw.insert(key, value, ttl, weight, write)
    }

    /// Stores `value` for `key` with its own time to live (which [`touch`](Self::touch)
    /// restarts). A zero `ttl` means "already expired": nothing is stored, a previous value
    /// of the key is removed (reported as [`RemovalCause::Replaced`]), and the listener hears
    /// about `value` as [`RemovalCause::Expired`]. `Duration::MAX` means "never expires".
    pub fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            self.inner.raw.remove(&key, RemovalCause::Replaced);
            if let Some(listener) = &self.inner.raw.cfg.listener {
                listener(&key, &value, RemovalCause::Expired);
            }
            return;
        }
        let ttl = duration_to_ns(ttl);
        if let Err((key, value)) = self.store(key, value, Some(ttl), Write::Upsert) {
            self.refused(&key, &value);
        }
    }

    /// Removes `key`, returning its value if it was live.
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.raw.remove(key, RemovalCause::Explicit)
    }

    /// Restarts `key`'s lifetime without rewriting its value: its own time to live (from
    /// [`insert_with_ttl`](Self::insert_with_ttl) or [`set_ttl`](Self::set_ttl)) or the
    /// cache's [`time_to_live`](CacheBuilder::time_to_live) counts again from now, and its
    /// idle time restarts. Returns false, and brings nothing back, if `key` has no live entry.
    pub fn touch<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.raw.retime(key, None)
    }

    /// Gives `key` a new time to live, counted from now (and kept as its own, for
    /// [`touch`](Self::touch)). A zero `ttl` expires the entry now (reported as
    /// [`RemovalCause::Expired`]). Returns false if `key` has no live entry.
    pub fn set_ttl<Q>(&self, key: &Q, ttl: Duration) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.raw.retime(key, Some(duration_to_ns(ttl)))
    }

    /// The remaining lifetime of `key`'s live entry: `None` if there is none,
    /// `Some(Duration::MAX)` if it never expires.
    pub fn ttl<Q>(&self, key: &Q) -> Option<Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.raw.remaining(key).map(|ns| {
            if ns == NEVER {
                Duration::MAX
            } else {
                Duration::from_nanos(ns)
            }
        })
    }

    /// Like [`get`](Self::get), but if `key`'s entry has expired and has not been reclaimed
    /// yet, its value is returned once more and the entry is removed (reported as
    /// [`RemovalCause::Expired`]); a second call finds nothing. For callers that prefer a
    /// stale value to none (memorystore's `stale` option).
    pub fn get_stale<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.raw.read_stale(key).map(|(value, _)| value)
    }

    /// [`get_stale`](Self::get_stale), also saying whether the value was expired (and this
    /// call removed it; only one caller gets an expired value).
    // Its caller is the session store, which is not built without its feature or under loom.
    #[cfg(all(feature = "session", not(loom)))]
    pub(crate) fn get_stale_flagged<Q>(&self, key: &Q) -> Option<(V, bool)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.raw.read_stale(key)
    }

    /// Lets the crate's reclaimer thread finish growths that writes leave half-way (see
    /// `raw/reclaim/retire.rs`).
    #[cfg(not(loom))]
    pub(crate) fn register_for_help(&self)
    where
        S: Send + Sync + 'static,
    {
        let weak: crate::sync::Weak<dyn crate::raw::Chore> =
            Arc::downgrade(&self.inner) as crate::sync::Weak<Inner<K, V, S>>;
        crate::raw::register_chore(self.inner.raw.cfg.growing.clone(), weak);
    }

    /// Starts, restarts with a new period, or (with `None`) stops the background sweeper
    /// that reclaims expired entries every `period` (see
    /// [`check_period`](CacheBuilder::check_period)). Fails if the thread cannot be spawned,
    /// or (with [`InvalidInput`](std::io::ErrorKind::InvalidInput), changing nothing) if
    /// `period` is shorter than [`MIN_CHECK_PERIOD`](crate::MIN_CHECK_PERIOD) and not zero
    /// (zero stops the sweeper, like `None`).
    #[cfg(not(loom))]
    pub fn set_check_period(&self, period: Option<Duration>) -> std::io::Result<()>
    where
        S: Send + Sync + 'static,
    {
        if let Some(p) = period
            && !p.is_zero()
            && p < crate::MIN_CHECK_PERIOD
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "check_period must be at least {:?}",
                    crate::MIN_CHECK_PERIOD
                ),
            ));
        }
        let mut sweeper = lock(&self.inner.sweeper);
        // Dropping the old sweeper stops its thread.
        *sweeper = None;
        if let Some(period) = period.filter(|p| !p.is_zero()) {
            let weak = Arc::downgrade(&self.inner);
            *sweeper = Some(crate::periodic::Periodic::spawn(
                "evanesce-sweep",
                period,
                move || match weak.upgrade() {
                    Some(inner) => {
                        inner.raw.run_pending_tasks();
                        true
                    }
                    None => false,
                },
            )?);
        }
        Ok(())
    }

    /// The value for `key`, computing and storing it with `init` if there is none.
    ///
    /// Concurrent calls for the same key run `init` once: the others wait for it and return
    /// its value. If `init` panics, one of the waiters runs its own `init` instead. (A
    /// concurrent plain [`insert`](Self::insert) of the key is not waited for; whichever
    /// value is stored first wins and is returned.) Calls are matched by the key's hash: two
    /// keys whose hashes collide wait for each other, except that an `init` may call this
    /// for another key of the same hash (that call then computes on its own).
    pub fn get_or_insert_with(&self, key: K, init: impl FnOnce() -> V) -> V {
        let raw = &self.inner.raw;
        let hash = raw.cfg.hash(&key);
        let list = &self.inner.pending[hash as usize % self.inner.pending.len()];
        let me = loop {
            if let Some(v) = self.get(&key) {
                return v;
            }
            let mut pending = lock(list);
            let current = std::thread::current().id();
            if let Some((_, other)) = pending.iter().find(|(h, _)| *h == hash) {
                if other.owner == current {
                    // This thread's own `init` (for a key of the same hash) asks: waiting
                    // would wait for itself. Compute without the single-flight guarantee.
                    drop(pending);
                    return self.init_and_store(key, init);
                }
                let other = other.clone();
                drop(pending);
                other.wait();
                continue;
            }
            let me = Arc::new(Pending {
                done: Mutex::new(false),
                cv: Condvar::new(),
                owner: current,
            });
            pending.push((hash, me.clone()));
            break me;
        };
        let _registered = PendingGuard { list, me };
        // A call that finished between our lookup and our registration stored its value.
        if let Some(v) = self.get(&key) {
            return v;
        }
        self.init_and_store(key, init)
    }

    /// Runs `init` and stores its value unless `key` has a live value by then (which is
    /// returned instead).
    fn init_and_store(&self, key: K, init: impl FnOnce() -> V) -> V {
        let value = init();
        match self.store(key, value.clone(), None, Write::IfAbsent) {
            Ok(Inserted::Stored) => value,
            Ok(Inserted::Present(existing)) => existing,
            Err((key, refused)) => {
                self.refused(&key, &refused);
                value
            }
        }
    }

    /// The entry is heavier than the whole capacity, or its shard cannot address another node
    /// (2^31 per shard): it is not stored, and the listener is told, as for an entry evicted
    /// at once.
    fn refused(&self, key: &K, value: &V) {
        if let Some(listener) = &self.inner.raw.cfg.listener {
            listener(key, value, RemovalCause::Size);
        }
    }

    /// Number of live entries: never counts an entry whose deadline has passed.
    ///
    /// It first applies each shard's pending writes and expires what is due (taking each
    /// shard's maintenance lock in turn, so it may wait for a pass in progress), then sums.
    /// Exact when no write is in flight; under concurrent writes it counts each shard as of
    /// its own moment.
    pub fn len(&self) -> usize {
        self.inner.raw.len()
    }

    /// The total weight of the entries (their number without a weigher) for a cache with a
    /// [`max_capacity`](CacheBuilder::max_capacity); the number of entries otherwise.
    ///
    /// Like [`len`](Self::len) it first applies pending writes, expires what is due and
    /// evicts down to the capacity, so when no write is in flight it is exact and at most
    /// the capacity.
    pub fn weighted_size(&self) -> u64 {
        self.inner.raw.weighted_size()
    }

    /// Whether [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every entry; the listener hears about each as [`RemovalCause::Cleared`].
    ///
    /// Weakly consistent: entries inserted while `clear` runs may survive it. Like
    /// [`run_pending_tasks`](Self::run_pending_tasks), it waits up to 10 ms for reads in
    /// progress before handing the memory on.
    pub fn clear(&self) {
        self.inner.raw.clear();
    }

    /// Runs every shard's pending maintenance now (applying recorded writes, unlinking and
    /// reclaiming removed entries, advancing a growth), waiting for a shard's maintenance
    /// lock if another thread holds it. The cache runs maintenance on its own as writes
    /// happen; this is for tests and for callers that want it done at a moment of their
    /// choosing.
    ///
    /// Removed entries are freed once no read that could still hold them is in progress: this
    /// waits up to 10 ms for the reads in progress on other threads to end (a read is
    /// normally well under a microsecond; one that runs a long [`get_with`](Self::get_with)
    /// closure makes it wait the whole 10 ms), then hands the memory to the epoch, which frees
    /// it shortly after (a background thread of the crate sees to it).
    pub fn run_pending_tasks(&self) {
        self.inner.raw.run_pending_tasks();
    }

    /// The counters. Hits and misses are counted only with
    /// [`record_stats(true)`](CacheBuilder::record_stats).
    pub fn stats(&self) -> Stats {
        self.inner.raw.stats()
    }

    /// Iterates over clones of the live entries.
    ///
    /// Weakly consistent: each shard is snapshotted when the iterator reaches it, so an entry
    /// present during the whole iteration is yielded exactly once, one inserted or removed
    /// meanwhile may or may not be, and no entry is ever yielded twice or after it was
    /// removed before the iterator reached its shard.
    pub fn iter(&self) -> Iter<K, V, S>
    where
        K: Clone,
    {
        Iter {
            cache: self.clone(),
            next_shard: 0,
            buffer: Vec::new().into_iter(),
        }
    }
}

/// Iterator over a [`Cache`]'s entries; see [`Cache::iter`].
pub struct Iter<K, V, S> {
    cache: Cache<K, V, S>,
    next_shard: usize,
    buffer: std::vec::IntoIter<(K, V)>,
}

impl<K, V, S> Iterator for Iter<K, V, S>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    type Item = (K, V);

    fn next(&mut self) -> Option<(K, V)> {
        loop {
            if let Some(item) = self.buffer.next() {
                return Some(item);
            }
            let raw = &self.cache.inner.raw;
            if self.next_shard >= raw.shard_count() {
                return None;
            }
            let mut buffer = Vec::new();
            raw.snapshot_shard(self.next_shard, &mut buffer);
            self.next_shard += 1;
            self.buffer = buffer.into_iter();
        }
    }
}

impl<K, V, S> fmt::Debug for Cache<K, V, S>
where
    K: Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("len", &self.len())
            .field("shards", &self.inner.raw.shard_count())
            .finish_non_exhaustive()
    }
}

/// A thread pinned once for a batch of reads of one cache; made by [`Cache::pin`].
///
/// Reads through it are those of the cache ([`get`](Self::get) is [`Cache::get`], and so on),
/// without a pin each. See [`Cache::pin`] for what holding it costs.
///
/// It stays on the thread that pinned (it is neither `Send` nor `Sync`):
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// let cache = evanesce::Cache::<u64, u64>::new();
/// send(cache.pin());
/// ```
pub struct Pinned<'c, K, V, S = ahash::RandomState> {
    cache: &'c Cache<K, V, S>,
    guard: crate::sync::epoch::Guard,
}

impl<K, V, S> Pinned<'_, K, V, S>
where
    K: Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// As [`Cache::get`].
    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.cache.inner.raw.read_in(key, V::clone, &self.guard)
    }

    /// As [`Cache::get_with`].
    #[inline]
    pub fn get_with<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.cache.inner.raw.read_in(key, f, &self.guard)
    }

    /// As [`Cache::contains_key`].
    #[inline]
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.cache.inner.raw.contains_in(key, &self.guard)
    }
}

impl<K, V, S> fmt::Debug for Pinned<'_, K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pinned").finish_non_exhaustive()
    }
}
