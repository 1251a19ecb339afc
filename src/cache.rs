//! The public [`Cache`]: a cheap-to-clone handle over the shared core. No `unsafe` here.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::time::Duration;

use crate::builder::{CacheBuilder, duration_to_ns};
use crate::entry::{CompResult, Entry, EntrySelector, Op};
use crate::listener::RemovalCause;
use crate::loader::{Joined, Lead, Loaded, Outcome, Registry, Wait};
use crate::policy::{CapacityError, Policy};
use crate::raw::{Inserted, NEVER, RawCache, Write};
use crate::stats::Stats;
use crate::sync::Arc;
#[cfg(not(loom))]
use crate::sync::{Mutex, lock};

/// A concurrent cache. See the [crate documentation](crate) for the guarantees.
///
/// `Cache` is a handle: cloning it is cheap and every clone sees the same entries. It is
/// `Send` and `Sync`; share it between threads by cloning it (or behind an `Arc`).
pub struct Cache<K, V, S = ahash::RandomState> {
    inner: Arc<Inner<K, V, S>>,
}

struct Inner<K, V, S> {
    raw: RawCache<K, V, S>,
    /// Loads in progress (single-flight, see `loader.rs`).
    loaders: Registry<K, V>,
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
        let loaders = Registry::new(raw.shard_count() * 4);
        Self {
            inner: Arc::new(Inner {
                raw,
                loaders,
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
    ///
    /// When `V` is `u64`, `i64`, `usize`, `isize` or `f64` and the cache has no weigher, no
    /// time to idle and no [`Expiry`](crate::Expiry), a replacement overwrites the value in
    /// place (a reader sees the old value or the new one, whole, and still takes no lock);
    /// otherwise it stores a new entry in place of the old one. Either way the replacement
    /// counts as an insert and a removal in [`stats`](Self::stats), keeps the entry's standing
    /// with the eviction policy, and restarts its time to live.
    pub fn insert(&self, key: K, value: V) {
        if let Err((key, value)) = self.store(key, value, None, Write::Upsert) {
            self.refused(&key, &value);
        }
    }

    /// Weighs and stores an entry (asking the [`Expiry`](crate::Expiry), if any, for its
    /// lifetime when `ttl` is `None`). An entry heavier than the whole capacity is handed back
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
        let raw = &self.inner.raw;
        let weight = raw.weigh(&key, &value);
        if raw.too_heavy(weight) {
            if write == Write::Upsert {
                raw.remove(&key, RemovalCause::Replaced);
            }
            return Err((key, value));
        }
        let ttl = match ttl {
            None if raw.has_expiry() => raw.lifetime_for(&key, &value, raw.remaining(&key)),
            ttl => ttl,
        };
        raw.insert(key, value, ttl, weight, write)
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
    /// (zero stops the sweeper, like `None`). Stopping or replacing a sweeper waits for a
    /// sweep it has under way, so none of its work (or its listener calls) happens after this
    /// returns; from a listener that the sweep itself runs, it cannot wait, and does not. Do
    /// not call it while holding a lock that the listener takes, nor from anything the
    /// listener waits for (another cache's listener, a load it waits on): each would wait for
    /// the other.
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
        // Dropping the old sweeper stops its thread and waits for a run under way, so it is
        // dropped after the lock is released (a listener that runs in the sweep may call this
        // method, and would wait for the lock while the drop waited for it).
        let old = sweeper.take();
        let started = period
            .filter(|p| !p.is_zero())
            .map(|period| {
                let weak = Arc::downgrade(&self.inner);
                crate::periodic::Periodic::spawn("evanesce-sweep", period, move || {
                    match weak.upgrade() {
                        Some(inner) => {
                            inner.raw.run_pending_tasks();
                            true
                        }
                        None => false,
                    }
                })
            })
            .transpose();
        let result = started.map(|new| *sweeper = new);
        drop(sweeper);
        drop(old);
        result
    }

    /// The value for `key`, loading and storing it with `init` if there is none (moka's
    /// `get_with`).
    ///
    /// Single-flight: concurrent calls for the same key (matched by `Eq`), from threads or
    /// from tasks ([`get_or_insert_async`](Self::get_or_insert_async)), run one load; the others
    /// wait for it and return its value. If `init` panics, the waiters start over and one of
    /// them loads. (A concurrent plain [`insert`](Self::insert) of the key is not waited
    /// for; whichever value is stored first wins and is returned.) An `init` may ask for other
    /// keys, and even for its own (that call then loads on its own rather than wait for
    /// itself). A hit costs what [`get`](Self::get) costs.
    ///
    /// This call blocks the thread while another load of the key runs: in async code use
    /// [`get_or_insert_async`](Self::get_or_insert_async).
    pub fn get_or_insert_with(&self, key: K, init: impl FnOnce() -> V) -> V {
        if let Some(v) = self.get(&key) {
            return v;
        }
        match self.load_blocking(key, || Loaded::Value(init()), accepts_value) {
            (Outcome::Ready(v), _) => v,
            _ => unreachable!("an infallible load ends with a value"),
        }
    }

    /// [`get_or_insert_with`](Self::get_or_insert_with) with a fallible load (moka's
    /// `try_get_with`): an error is not stored, and every caller that waited for that load
    /// receives the same `Arc` of it (callers that arrive later load again). A caller waiting
    /// for a load of the same key with another error type, or an infallible one, loads on its
    /// own if that load fails.
    pub fn try_get_or_insert_with<E>(
        &self,
        key: K,
        init: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, std::sync::Arc<E>>
    where
        E: Send + Sync + 'static,
    {
        if let Some(v) = self.get(&key) {
            return Ok(v);
        }
        let (outcome, _) = self.load_blocking(key, || fallible(init()), accepts_error::<V, E>);
        outcome_to_result(outcome)
    }

    /// [`get_or_insert_with`](Self::get_or_insert_with) with an optional load (moka's
    /// `optionally_get_with`): `None` is not stored, and every caller that waited for that
    /// load receives `None`.
    pub fn optionally_get_or_insert_with(
        &self,
        key: K,
        init: impl FnOnce() -> Option<V>,
    ) -> Option<V> {
        if let Some(v) = self.get(&key) {
            return Some(v);
        }
        let (outcome, _) = self.load_blocking(key, || optional(init()), accepts_nothing);
        outcome_to_option(outcome)
    }

    /// The value for `key`, loading and storing it with the future `init` if there is none
    /// (moka's `future::Cache::get_with`, quick_cache's `get_or_insert_async`).
    ///
    /// Single-flight, as [`get_or_insert_with`](Self::get_or_insert_with): one load per key
    /// at a time, whether callers are tasks or threads; a task that waits for another's load
    /// is suspended (its executor's thread runs other tasks), never blocked. `init` is polled
    /// only by the caller that loads. Usable from any executor: nothing here depends on a
    /// runtime.
    ///
    /// Cancellation-safe: if the loading caller's future is dropped (a timeout, an aborted
    /// task) or `init` panics, the callers waiting for it start over and one of them loads;
    /// a waiting caller's future may be dropped at any time. An `init` must not wait for a
    /// load of its own key (it would wait for itself; threads are detected, tasks cannot be).
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache = evanesce::Cache::<u64, String>::new();
    /// let v = block_on(cache.get_or_insert_async(7, async { "seven".to_string() }));
    /// assert_eq!(v, "seven");
    /// assert_eq!(cache.get(&7).as_deref(), Some("seven"));
    /// ```
    pub async fn get_or_insert_async(&self, key: K, init: impl Future<Output = V>) -> V {
        if let Some(v) = self.get(&key) {
            return v;
        }
        let init = async { Loaded::Value(init.await) };
        match self.load_async(key, init, accepts_value).await {
            (Outcome::Ready(v), _) => v,
            _ => unreachable!("an infallible load ends with a value"),
        }
    }

    /// [`get_or_insert_async`](Self::get_or_insert_async) with a fallible load (moka's
    /// `try_get_with`; see [`try_get_or_insert_with`](Self::try_get_or_insert_with)).
    pub async fn try_get_or_insert_async<E>(
        &self,
        key: K,
        init: impl Future<Output = Result<V, E>>,
    ) -> Result<V, std::sync::Arc<E>>
    where
        E: Send + Sync + 'static,
    {
        if let Some(v) = self.get(&key) {
            return Ok(v);
        }
        let init = async { fallible(init.await) };
        let (outcome, _) = self.load_async(key, init, accepts_error::<V, E>).await;
        outcome_to_result(outcome)
    }

    /// [`get_or_insert_async`](Self::get_or_insert_async) with an optional load (moka's
    /// `optionally_get_with`; see
    /// [`optionally_get_or_insert_with`](Self::optionally_get_or_insert_with)).
    pub async fn optionally_get_or_insert_async(
        &self,
        key: K,
        init: impl Future<Output = Option<V>>,
    ) -> Option<V> {
        if let Some(v) = self.get(&key) {
            return Some(v);
        }
        let init = async { optional(init.await) };
        let (outcome, _) = self.load_async(key, init, accepts_nothing).await;
        outcome_to_option(outcome)
    }

    /// The entry API for `key`: loads with what they did ([`Entry`]) and atomic computes
    /// (see [`EntrySelector`] and the [module](crate::entry)).
    pub fn entry(&self, key: K) -> EntrySelector<'_, K, V, S> {
        EntrySelector::new(self, key)
    }

    /// Atomic compute on `key` (see [`EntrySelector::and_compute_with`]).
    pub(crate) fn compute(&self, key: K, f: impl FnMut(Option<&V>) -> Op<V>) -> CompResult<V> {
        self.inner.raw.compute(key, f)
    }

    /// Stores `value` unless `key` has a live value; the value the key holds, and whether it
    /// is this one.
    pub(crate) fn insert_if_absent(&self, key: K, value: V) -> Entry<V> {
        let (value, fresh) = self.store_loaded(key, value);
        Entry::new(value, fresh, false)
    }

    pub(crate) fn load_entry(&self, key: K, init: impl FnOnce() -> V) -> Entry<V> {
        if let Some(v) = self.get(&key) {
            return Entry::new(v, false, false);
        }
        match self.load_blocking(key, || Loaded::Value(init()), accepts_value) {
            (Outcome::Ready(v), fresh) => Entry::new(v, fresh, false),
            _ => unreachable!("an infallible load ends with a value"),
        }
    }

    pub(crate) fn optionally_load_entry(
        &self,
        key: K,
        init: impl FnOnce() -> Option<V>,
    ) -> Option<Entry<V>> {
        if let Some(v) = self.get(&key) {
            return Some(Entry::new(v, false, false));
        }
        let (outcome, fresh) = self.load_blocking(key, || optional(init()), accepts_nothing);
        outcome_to_option(outcome).map(|v| Entry::new(v, fresh, false))
    }

    pub(crate) fn try_load_entry<E>(
        &self,
        key: K,
        init: impl FnOnce() -> Result<V, E>,
    ) -> Result<Entry<V>, std::sync::Arc<E>>
    where
        E: Send + Sync + 'static,
    {
        if let Some(v) = self.get(&key) {
            return Ok(Entry::new(v, false, false));
        }
        let (outcome, fresh) = self.load_blocking(key, || fallible(init()), accepts_error::<V, E>);
        outcome_to_result(outcome).map(|v| Entry::new(v, fresh, false))
    }

    pub(crate) async fn load_entry_async(&self, key: K, init: impl Future<Output = V>) -> Entry<V> {
        if let Some(v) = self.get(&key) {
            return Entry::new(v, false, false);
        }
        let init = async { Loaded::Value(init.await) };
        match self.load_async(key, init, accepts_value).await {
            (Outcome::Ready(v), fresh) => Entry::new(v, fresh, false),
            _ => unreachable!("an infallible load ends with a value"),
        }
    }

    pub(crate) async fn optionally_load_entry_async(
        &self,
        key: K,
        init: impl Future<Output = Option<V>>,
    ) -> Option<Entry<V>> {
        if let Some(v) = self.get(&key) {
            return Some(Entry::new(v, false, false));
        }
        let init = async { optional(init.await) };
        let (outcome, fresh) = self.load_async(key, init, accepts_nothing).await;
        outcome_to_option(outcome).map(|v| Entry::new(v, fresh, false))
    }

    pub(crate) async fn try_load_entry_async<E>(
        &self,
        key: K,
        init: impl Future<Output = Result<V, E>>,
    ) -> Result<Entry<V>, std::sync::Arc<E>>
    where
        E: Send + Sync + 'static,
    {
        if let Some(v) = self.get(&key) {
            return Ok(Entry::new(v, false, false));
        }
        let init = async { fallible(init.await) };
        let (outcome, fresh) = self.load_async(key, init, accepts_error::<V, E>).await;
        outcome_to_result(outcome).map(|v| Entry::new(v, fresh, false))
    }

    /// The single-flight load of a thread (see `loader.rs`): the outcome this call accepts
    /// (its own load's, or one it waited for), and whether it stored the value.
    fn load_blocking(
        &self,
        mut key: K,
        init: impl FnOnce() -> Loaded<V>,
        accepts: impl Fn(&Outcome<V>) -> bool,
    ) -> (Outcome<V>, bool) {
        let raw = &self.inner.raw;
        let hash = raw.cfg.hash(&key);
        loop {
            match self
                .inner
                .loaders
                .join(hash, key, true, |k| raw.peek(k, V::clone))
            {
                Joined::Hit(v) => return (Outcome::Ready(v), false),
                Joined::Wait {
                    flight,
                    exact,
                    key: k,
                } => {
                    let outcome = flight.wait();
                    if exact && accepts(&outcome) {
                        return (outcome, false);
                    }
                    key = k;
                }
                Joined::Reentrant(k) => return self.finish_load(None, Some(k), init()),
                Joined::Lead(lead) => {
                    let loaded = init();
                    return self.finish_load(Some(lead), None, loaded);
                }
            }
        }
    }

    /// The single-flight load of a task (see `loader.rs`; as `load_blocking`).
    async fn load_async(
        &self,
        mut key: K,
        init: impl Future<Output = Loaded<V>>,
        accepts: impl Fn(&Outcome<V>) -> bool,
    ) -> (Outcome<V>, bool) {
        let raw = &self.inner.raw;
        let hash = raw.cfg.hash(&key);
        let mut init = Some(init);
        loop {
            match self
                .inner
                .loaders
                .join(hash, key, false, |k| raw.peek(k, V::clone))
            {
                Joined::Hit(v) => return (Outcome::Ready(v), false),
                Joined::Wait {
                    flight,
                    exact,
                    key: k,
                } => {
                    let outcome = Wait::new(flight).await;
                    if exact && accepts(&outcome) {
                        return (outcome, false);
                    }
                    key = k;
                }
                Joined::Reentrant(_) => unreachable!("tasks are not matched to threads"),
                Joined::Lead(lead) => {
                    let Some(init) = init.take() else {
                        unreachable!("a caller leads once: leading ends the call");
                    };
                    let loaded = init.await;
                    return self.finish_load(Some(lead), None, loaded);
                }
            }
        }
    }

    /// Ends a load: stores its value (unless the key got a live value meanwhile, which is
    /// taken instead) and hands the outcome to the flight's waiters, if it `lead`s one
    /// (otherwise `key` is the key).
    fn finish_load(
        &self,
        lead: Option<Lead<'_, K, V>>,
        key: Option<K>,
        loaded: Loaded<V>,
    ) -> (Outcome<V>, bool) {
        let (outcome, fresh) = match loaded {
            Loaded::Value(value) => {
                let (mut lead, key) = (lead, key);
                let key = match (&mut lead, key) {
                    (Some(lead), _) => lead.take_key(),
                    (None, Some(key)) => key,
                    (None, None) => unreachable!("a load without a flight has its key"),
                };
                let (value, fresh) = self.store_loaded(key, value);
                if let Some(lead) = lead {
                    lead.finish(Outcome::Ready(value.clone()));
                }
                return (Outcome::Ready(value), fresh);
            }
            Loaded::Nothing => (Outcome::Nothing, false),
            Loaded::Error(e) => (Outcome::Error(e), false),
        };
        if let Some(lead) = lead {
            lead.finish(outcome.clone());
        }
        (outcome, fresh)
    }

    /// Stores a loaded value unless `key` has a live value by then (which is returned
    /// instead); whether this value is the one the key holds.
    fn store_loaded(&self, key: K, value: V) -> (V, bool) {
        match self.store(key, value.clone(), None, Write::IfAbsent) {
            Ok(Inserted::Stored) => (value, true),
            Ok(Inserted::Present(existing)) => (existing, false),
            Err((key, refused)) => {
                self.refused(&key, &refused);
                (value, true)
            }
        }
    }

    /// Removes every entry for which `keep` returns false (quick_cache's `retain`); returns
    /// how many it removed. The listener hears each as [`RemovalCause::Explicit`].
    ///
    /// Weakly consistent, like [`iter`](Self::iter): every entry live when the call starts
    /// (and not removed or replaced meanwhile) is tested, exactly once; an entry inserted
    /// while it runs may or may not be. An entry is removed only if the value `keep` saw is
    /// still its key's value then. `keep` runs on the calling thread, with no lock held.
    pub fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) -> usize {
        self.inner.raw.retain(&mut |k, v| !keep(k, v))
    }

    /// Removes every entry for which `pred` returns true (moka's `invalidate_entries_if`, done
    /// at once rather than lazily); returns how many it removed. See [`retain`](Self::retain).
    pub fn invalidate_entries_if(&self, mut pred: impl FnMut(&K, &V) -> bool) -> usize {
        self.inner.raw.retain(&mut pred)
    }

    /// The cache's settings as they are now: capacity, time to live, time to idle.
    pub fn policy(&self) -> Policy {
        let raw = &self.inner.raw;
        let duration = |ns: u64| (ns != NEVER).then(|| Duration::from_nanos(ns));
        Policy {
            max_capacity: raw.capacity(),
            weighted: raw.cfg.weigher.is_some(),
            time_to_live: duration(raw.cfg.ttl),
            time_to_idle: duration(raw.cfg.tti),
            expiry: raw.has_expiry(),
            shards: raw.shard_count(),
        }
    }

    /// Changes the capacity of a cache built with
    /// [`max_capacity`](CacheBuilder::max_capacity). Shrinking evicts down to the new bound
    /// before it returns (the listener hears [`RemovalCause::Size`]), with readers never
    /// waiting; writes in flight may pass it by the usual slack for a moment. Growing takes
    /// effect at once.
    pub fn set_max_capacity(&self, capacity: u64) -> Result<(), CapacityError> {
        if capacity == 0 {
            return Err(CapacityError::Zero);
        }
        if self.inner.raw.set_capacity(capacity) {
            Ok(())
        } else {
            Err(CapacityError::Unbounded)
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

fn accepts_value<V>(outcome: &Outcome<V>) -> bool {
    matches!(outcome, Outcome::Ready(_))
}

fn accepts_nothing<V>(outcome: &Outcome<V>) -> bool {
    matches!(outcome, Outcome::Ready(_) | Outcome::Nothing)
}

fn accepts_error<V, E: Send + Sync + 'static>(outcome: &Outcome<V>) -> bool {
    match outcome {
        Outcome::Ready(_) => true,
        Outcome::Error(e) => e.is::<E>(),
        Outcome::Nothing | Outcome::Abandoned => false,
    }
}

fn fallible<V, E: Send + Sync + 'static>(result: Result<V, E>) -> Loaded<V> {
    match result {
        Ok(v) => Loaded::Value(v),
        Err(e) => Loaded::Error(std::sync::Arc::new(e)),
    }
}

fn optional<V>(value: Option<V>) -> Loaded<V> {
    value.map_or(Loaded::Nothing, Loaded::Value)
}

fn outcome_to_result<V, E: Send + Sync + 'static>(
    outcome: Outcome<V>,
) -> Result<V, std::sync::Arc<E>> {
    match outcome {
        Outcome::Ready(v) => Ok(v),
        Outcome::Error(e) => match e.downcast::<E>() {
            Ok(e) => Err(e),
            Err(_) => unreachable!("only an error of this type is accepted"),
        },
        Outcome::Nothing | Outcome::Abandoned => unreachable!("not accepted by a fallible load"),
    }
}

fn outcome_to_option<V>(outcome: Outcome<V>) -> Option<V> {
    match outcome {
        Outcome::Ready(v) => Some(v),
        Outcome::Nothing => None,
        Outcome::Error(_) | Outcome::Abandoned => unreachable!("not accepted by an optional load"),
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
