//! The entry API: loads and atomic computes on one key ([`Cache::entry`]).
//!
//! Every write here is linearizable with every other operation on the key (get, insert,
//! remove, other computes): a compute's function is given the key's live value and its
//! decision takes effect only if that value is still the key's when it is published;
//! otherwise the function runs again on the new value. So a function may run more than once
//! (never concurrently with itself): keep it free of side effects beyond its result, as for
//! papaya's or `AtomicU64::fetch_update`'s. Functions run with no lock held, and may use the
//! cache (a call that writes the same key makes the compute run again).
//!
//! Reads never wait for a compute, and a compute waits for no reader. Publishing takes the
//! key's shard maintenance lock for a few instructions (never while your function runs),
//! which is also what keeps it exact against the cache's own removals (expiry, eviction,
//! `clear`): a value that the cache removes while a compute publishes its replacement is
//! either removed before (the compute runs again on nothing) or replaced (the listener hears
//! `Replaced`).
//!
//! One difference with moka: a value whose deadline falls in the instant between a compute's
//! last check and its publication (a few instructions under that lock) is still replaced as a
//! live value.

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use crate::cache::Cache;

/// What an [`and_compute_with`](EntrySelector::and_compute_with) function decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op<V> {
    /// Leave the key as it is.
    Nop,
    /// Store this value (inserting or replacing).
    Put(V),
    /// Remove the key's value (nothing if it has none).
    Remove,
}

/// What an [`and_compute_with`](EntrySelector::and_compute_with) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompResult<V> {
    /// The key had no live value; this one was stored.
    Inserted(V),
    /// The key's live value was left as it was (here it is).
    Unchanged(V),
    /// The key's live value was replaced by this one (the listener heard the old one as
    /// `Replaced`).
    ReplacedWith(V),
    /// The key's live value (here it is) was removed (`Explicit`).
    Removed(V),
    /// The key had no live value, and still has none.
    StillNone,
}

impl<V> CompResult<V> {
    /// The value the key holds after the compute (`None` if it holds none).
    pub fn into_value(self) -> Option<V> {
        match self {
            CompResult::Inserted(v) | CompResult::Unchanged(v) | CompResult::ReplacedWith(v) => {
                Some(v)
            }
            CompResult::Removed(_) | CompResult::StillNone => None,
        }
    }
}

/// A value returned by the entry API, with what the call did to get it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<V> {
    value: V,
    fresh: bool,
    replaced: bool,
}

impl<V> Entry<V> {
    pub(crate) fn new(value: V, fresh: bool, replaced: bool) -> Self {
        Self {
            value,
            fresh,
            replaced,
        }
    }

    /// The value.
    pub fn value(&self) -> &V {
        &self.value
    }

    /// The value, by value.
    pub fn into_value(self) -> V {
        self.value
    }

    /// Whether this call stored the value (rather than finding it, or receiving it from a
    /// concurrent load of the same key).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Whether this call replaced a live value of the key.
    pub fn is_old_value_replaced(&self) -> bool {
        self.replaced
    }
}

/// One key of a [`Cache`], for a load or an atomic compute; made by [`Cache::entry`].
#[must_use = "an entry selector does nothing until one of its methods is called"]
pub struct EntrySelector<'c, K, V, S> {
    cache: &'c Cache<K, V, S>,
    key: K,
}

impl<'c, K, V, S> EntrySelector<'c, K, V, S>
where
    K: Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    pub(crate) fn new(cache: &'c Cache<K, V, S>, key: K) -> Self {
        Self { cache, key }
    }

    /// The key's live value, or `default` stored if it has none.
    pub fn or_insert(self, default: V) -> Entry<V> {
        self.cache.insert_if_absent(self.key, default)
    }

    /// The key's live value, or `V::default()` stored if it has none.
    pub fn or_default(self) -> Entry<V>
    where
        V: Default,
    {
        self.or_insert(V::default())
    }

    /// The key's live value, or `init`'s, loaded once for all concurrent callers (as
    /// [`Cache::get_or_insert_with`]).
    pub fn or_insert_with(self, init: impl FnOnce() -> V) -> Entry<V> {
        self.cache.load_entry(self.key, init)
    }

    /// As [`or_insert_with`](Self::or_insert_with), but also replaces a live value for which
    /// `replace_if` returns true (with `init`'s value; `init` runs at most once, and for a
    /// replacement outside single-flight, as a compute).
    pub fn or_insert_with_if(
        self,
        init: impl FnOnce() -> V,
        mut replace_if: impl FnMut(&V) -> bool,
    ) -> Entry<V> {
        let mut init = Some(init);
        let mut made: Option<V> = None;
        let result = self.cache.compute(self.key, |current| match current {
            Some(v) if !replace_if(v) => crate::Op::Nop,
            _ => {
                let value = match made.take() {
                    Some(v) => v,
                    None => match init.take() {
                        Some(init) => init(),
                        None => unreachable!("a made value is kept until it is stored"),
                    },
                };
                made = Some(value.clone());
                crate::Op::Put(value)
            }
        });
        match result {
            CompResult::Unchanged(v) => Entry::new(v, false, false),
            CompResult::Inserted(v) => Entry::new(v, true, false),
            CompResult::ReplacedWith(v) => Entry::new(v, true, true),
            CompResult::Removed(_) | CompResult::StillNone => {
                unreachable!("this compute only keeps or puts")
            }
        }
    }

    /// The key's live value, or `init`'s if it returns one (loaded once for all concurrent
    /// callers, as [`Cache::optionally_get_or_insert_with`]).
    pub fn or_optionally_insert_with(self, init: impl FnOnce() -> Option<V>) -> Option<Entry<V>> {
        self.cache.optionally_load_entry(self.key, init)
    }

    /// The key's live value, or `init`'s if it succeeds (loaded once for all concurrent
    /// callers; an error is shared with every caller waiting for the same load, as
    /// [`Cache::try_get_or_insert_with`]).
    pub fn or_try_insert_with<E>(
        self,
        init: impl FnOnce() -> Result<V, E>,
    ) -> Result<Entry<V>, Arc<E>>
    where
        E: Send + Sync + 'static,
    {
        self.cache.try_load_entry(self.key, init)
    }

    /// [`or_insert_with`](Self::or_insert_with) with an async load (as
    /// [`Cache::get_or_insert_async`]).
    pub async fn or_insert_with_async(self, init: impl Future<Output = V>) -> Entry<V> {
        self.cache.load_entry_async(self.key, init).await
    }

    /// [`or_optionally_insert_with`](Self::or_optionally_insert_with) with an async load.
    pub async fn or_optionally_insert_with_async(
        self,
        init: impl Future<Output = Option<V>>,
    ) -> Option<Entry<V>> {
        self.cache.optionally_load_entry_async(self.key, init).await
    }

    /// [`or_try_insert_with`](Self::or_try_insert_with) with an async load.
    pub async fn or_try_insert_with_async<E>(
        self,
        init: impl Future<Output = Result<V, E>>,
    ) -> Result<Entry<V>, Arc<E>>
    where
        E: Send + Sync + 'static,
    {
        self.cache.try_load_entry_async(self.key, init).await
    }

    /// Atomically stores `f`'s value, given the key's live value (`None` if it has none):
    /// inserts or replaces. `f` may run more than once (see the [module](crate::entry)).
    ///
    /// ```
    /// let cache = evanesce::Cache::<&str, u64>::new();
    /// let hits = cache.entry("hits").and_upsert_with(|n| n.map_or(1, |n| n + 1));
    /// assert_eq!(*hits.value(), 1);
    /// assert_eq!(cache.entry("hits").and_upsert_with(|n| n.map_or(1, |n| n + 1)).into_value(), 2);
    /// ```
    pub fn and_upsert_with(self, mut f: impl FnMut(Option<&V>) -> V) -> Entry<V> {
        match self
            .cache
            .compute(self.key, |current| crate::Op::Put(f(current)))
        {
            CompResult::Inserted(v) => Entry::new(v, true, false),
            CompResult::ReplacedWith(v) => Entry::new(v, true, true),
            _ => unreachable!("this compute always puts"),
        }
    }

    /// Atomically decides what becomes of the key, given its live value (`None` if it has
    /// none): keep it, put a value, or remove it; returns what happened. `f` may run more
    /// than once (see the [module](crate::entry)).
    ///
    /// ```
    /// use evanesce::{CompResult, Op};
    /// let cache = evanesce::Cache::<&str, u32>::new();
    /// // A rate limiter: up to 2 tokens per key.
    /// let take = || cache.entry("client").and_compute_with(|used| match used {
    ///     None => Op::Put(1),
    ///     Some(&n) if n < 2 => Op::Put(n + 1),
    ///     Some(_) => Op::Nop,
    /// });
    /// assert_eq!(take(), CompResult::Inserted(1));
    /// assert_eq!(take(), CompResult::ReplacedWith(2));
    /// assert_eq!(take(), CompResult::Unchanged(2));
    /// ```
    pub fn and_compute_with(self, f: impl FnMut(Option<&V>) -> Op<V>) -> CompResult<V> {
        self.cache.compute(self.key, f)
    }

    /// [`and_compute_with`](Self::and_compute_with) with a fallible function: an error leaves
    /// the key as it is and is returned.
    pub fn and_try_compute_with<E>(
        self,
        mut f: impl FnMut(Option<&V>) -> Result<Op<V>, E>,
    ) -> Result<CompResult<V>, E> {
        let mut error = None;
        let result = self.cache.compute(self.key, |current| match f(current) {
            Ok(op) => {
                error = None;
                op
            }
            Err(e) => {
                error = Some(e);
                Op::Nop
            }
        });
        match error {
            Some(e) => Err(e),
            None => Ok(result),
        }
    }

    /// Atomically removes the key's live value if `pred` returns true for it; returns the
    /// removed value.
    pub fn remove_if(self, mut pred: impl FnMut(&V) -> bool) -> Option<V> {
        match self.cache.compute(self.key, |current| match current {
            Some(v) if pred(v) => Op::Remove,
            _ => Op::Nop,
        }) {
            CompResult::Removed(v) => Some(v),
            _ => None,
        }
    }

    /// Atomically replaces the key's live value with `value`, only if it has one; returns the
    /// replaced value (`None`, and nothing stored, if the key had none).
    pub fn replace(self, value: V) -> Option<V> {
        let mut old = None;
        let result = self.cache.compute(self.key, |current| match current {
            Some(v) => {
                old = Some(v.clone());
                // A clone per attempt: the compute may run this again.
                Op::Put(value.clone())
            }
            None => Op::Nop,
        });
        match result {
            CompResult::ReplacedWith(_) => old,
            _ => None,
        }
    }
}
